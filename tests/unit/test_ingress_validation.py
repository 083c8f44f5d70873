from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi import FastAPI
from pydantic import ValidationError
from starlette.testclient import TestClient

from ingress.models import CreatePaymentRequest, within_settings
from ingress.problems import MEDIA_TYPE
from ingress.validation import (
    GENERIC_MESSAGE,
    REDACTED_SEGMENT,
    describe_errors,
    install_validation_handlers,
    validation_problem,
)
from ledger import limits
from ledger.config import Settings

PAN = "4111111111111111"
EMAIL = "ada@example.com"


def make_app() -> FastAPI:
    app = FastAPI()
    install_validation_handlers(app)
    settings = Settings(amount_minor_max=1_000)

    @app.post("/payments", status_code=202)
    async def create(payload: CreatePaymentRequest) -> dict[str, str]:
        return {"currency": payload.currency}

    @app.post("/bounded", status_code=202)
    async def bounded(payload: CreatePaymentRequest) -> dict[str, int]:
        return {"amount_minor": within_settings(payload, settings).amount_minor}

    return app


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(make_app())


def valid(**changes: Any) -> dict[str, Any]:
    return {"provider": "stripe", "amount_minor": 1050, "currency": "EUR", **changes}


def post(client: TestClient, document: Any, path: str = "/payments") -> Any:
    return client.post(
        path, content=json.dumps(document), headers={"content-type": "application/json"}
    )


def assert_problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == MEDIA_TYPE
    document: dict[str, Any] = response.json()
    assert document["type"] == f"/problems/{slug}"
    assert document["status"] == status
    return document


def test_valid_request_passes(client: TestClient) -> None:
    response = post(client, valid())
    assert response.status_code == 202
    assert response.json() == {"currency": "EUR"}


def test_wrong_type_is_422_problem_without_the_input(client: TestClient) -> None:
    response = post(client, valid(amount_minor=PAN))
    document = assert_problem(response, 422, "validation-error")
    assert document["errors"] == [
        {"field": "amount_minor", "message": "Input should be a valid integer", "type": "int_type"}
    ]
    assert document["error_count"] == 1
    assert document["instance"] == "/payments"
    assert PAN not in response.text


@pytest.mark.parametrize(
    "document",
    [
        valid(currency=PAN),
        valid(provider=PAN),  # literal_error lists the allowed values, not the input
        valid(description=int(PAN)),
        valid(metadata={"order": int(PAN)}),
        valid(metadata={PAN: "x" * 501}),  # a key that is a card number
        valid(metadata={"p" + PAN: "x" * 501}),  # one that contains one
        valid(metadata={PAN + "x" * 40: "v"}),  # a key that is itself invalid
        valid(**{PAN: "unknown field"}),
        valid(customer={"reference": "c", "email": PAN}),
        valid(customer={"reference": PAN * 5}),
        valid(customer={"reference": "c", "address": {"country": PAN}}),
        valid(customer={"reference": "c", "phone": PAN}),
        [PAN],
        PAN,
    ],
)
def test_card_number_is_never_echoed(client: TestClient, document: Any) -> None:
    response = post(client, document)
    assert_problem(response, 422, "validation-error")
    assert PAN not in response.text
    assert PAN[-8:] not in response.text


@pytest.mark.parametrize(
    "document",
    [
        valid(currency=EMAIL),
        valid(amount_minor=EMAIL),
        valid(customer={"reference": "c", "email": "ada@@example.com"}),
        valid(customer={"reference": "c", "name": ["Ada", EMAIL]}),
        valid(metadata={EMAIL: "x" * 501}),
        valid(**{EMAIL: 1}),
    ],
)
def test_email_is_never_echoed(client: TestClient, document: Any) -> None:
    response = post(client, document)
    assert_problem(response, 422, "validation-error")
    assert "ada@" not in response.text
    assert "example.com" not in response.text


def test_field_paths(client: TestClient) -> None:
    document = valid(
        metadata={"order": "x" * 501},
        customer={"reference": "c", "address": {"country": "XX"}},
        surprise=True,
    )
    errors = assert_problem(post(client, document), 422, "validation-error")["errors"]
    assert {error["field"]: error["type"] for error in errors} == {
        "metadata.order": "string_too_long",
        "customer.address.country": "country_unknown",
        "surprise": "extra_forbidden",
    }


def test_invalid_key_is_redacted_and_labelled(client: TestClient) -> None:
    errors = assert_problem(post(client, valid(metadata={"k" * 41: "v"})), 422, "validation-error")[
        "errors"
    ]
    assert errors == [
        {
            "field": "metadata.*",
            "message": "Key: String should have at most 40 characters",
            "type": "string_too_long",
        }
    ]


def test_missing_body(client: TestClient) -> None:
    response = client.post("/payments")
    errors = assert_problem(response, 422, "validation-error")["errors"]
    assert errors == [{"field": "(body)", "message": "Field required", "type": "missing"}]


@pytest.mark.parametrize(
    "raw",
    [b'{"amount_minor": ' + PAN.encode() + b",", b"{", b"not json", b'{"a": 1} trailing'],
)
def test_malformed_json_is_400(client: TestClient, raw: bytes) -> None:
    response = client.post("/payments", content=raw, headers={"content-type": "application/json"})
    document = assert_problem(response, 400, "malformed-json")
    assert "errors" not in document
    assert PAN not in response.text


def test_configured_bound_checked_with_within_settings(client: TestClient) -> None:
    assert post(client, valid(amount_minor=1_000), "/bounded").status_code == 202
    response = post(client, valid(amount_minor=1_001), "/bounded")
    errors = assert_problem(response, 422, "validation-error")["errors"]
    assert errors == [
        {
            "field": "amount_minor",
            "message": "Input should be less than or equal to 1000",
            "type": "less_than_equal",
        }
    ]


def test_pydantic_validation_error_messages_are_not_trusted() -> None:
    # A validator's ValueError text is whatever it said, possibly the input.
    errors = [{"type": "value_error", "loc": ("field",), "msg": f"Value error, bad {PAN}"}]
    assert describe_errors(errors) == [
        {"field": "field", "message": GENERIC_MESSAGE, "type": "value_error"}
    ]


@pytest.mark.parametrize(
    ("segment", "shown"),
    [
        ("order", "order"),
        ("order_id-2", "order_id-2"),
        (3, "3"),
        (PAN, REDACTED_SEGMENT),
        ("card" + PAN, REDACTED_SEGMENT),
        ("ref123456789", REDACTED_SEGMENT),  # nine digits in a row
        ("ref12345678", "ref12345678"),
        (EMAIL, REDACTED_SEGMENT),
        ("two words", REDACTED_SEGMENT),
        ("x" * 65, REDACTED_SEGMENT),
        ("", REDACTED_SEGMENT),
    ],
)
def test_path_segments(segment: str | int, shown: str) -> None:
    errors = [{"type": "string_type", "loc": ("body", "metadata", segment), "msg": "m"}]
    assert describe_errors(errors, strip_body=True)[0]["field"] == f"metadata.{shown}"


def test_only_fastapi_errors_lose_their_body_prefix() -> None:
    errors = [{"type": "missing", "loc": ("body", "x"), "msg": "Field required"}]
    assert describe_errors(errors, strip_body=True)[0]["field"] == "x"
    assert describe_errors(errors)[0]["field"] == "body.x"


def test_error_list_is_bounded_and_counted() -> None:
    errors = [
        {"type": "missing", "loc": ("f", i), "msg": "Field required"}
        for i in range(limits.VALIDATION_ERRORS_LISTED_MAX + 5)
    ]
    body = validation_problem(errors).body()
    assert len(body["errors"]) == limits.VALIDATION_ERRORS_LISTED_MAX
    assert body["error_count"] == limits.VALIDATION_ERRORS_LISTED_MAX + 5
    assert f"the first {limits.VALIDATION_ERRORS_LISTED_MAX} are listed" in body["detail"]


def test_manual_validation_error_from_json() -> None:
    with pytest.raises(ValidationError) as caught:
        CreatePaymentRequest.model_validate_json(b'{"amount_minor": 4111111111111111')
    problem = validation_problem(caught.value.errors(include_input=False))
    assert problem.status == 400
    assert problem.slug == "malformed-json"


def test_openapi_schema_states_the_constraints() -> None:
    openapi = make_app().openapi()
    assert openapi["openapi"].startswith("3.1")
    schemas = openapi["components"]["schemas"]
    payment = schemas["CreatePaymentRequest"]
    assert payment["additionalProperties"] is False
    amount = payment["properties"]["amount_minor"]
    assert amount["exclusiveMinimum"] == 0
    assert amount["maximum"] == limits.AMOUNT_MINOR_CEILING
    assert payment["properties"]["provider"]["enum"] == ["stripe", "paypal", "coinbase"]
    assert payment["properties"]["metadata"]["maxProperties"] == limits.METADATA_ENTRIES_MAX
    description = payment["properties"]["description"]["anyOf"][0]
    assert description["maxLength"] == limits.DESCRIPTION_CHARS_MAX
    assert schemas["CustomerDetails"]["additionalProperties"] is False
    assert schemas["Address"]["additionalProperties"] is False

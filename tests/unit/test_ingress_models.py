from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from ingress.models import (
    SINGLE_LINE_PATTERN,
    AcceptedResponse,
    Address,
    CancelRequest,
    CaptureRequest,
    CreatePaymentRequest,
    CustomerDetails,
    RefundRequest,
    StrictModel,
    within_settings,
)
from ledger import limits
from ledger.config import Settings

VALID: dict[str, Any] = {
    "provider": "stripe",
    "amount_minor": 1050,
    "currency": "EUR",
    "capture_method": "manual",
    "description": "Order 17\ntwo lines",
    "metadata": {"order": "17"},
    "customer": {
        "reference": "cus-42",
        "email": "ada@example.com",
        "name": "Ada Lovelace",
        "address": {
            "line1": "12 St James's Square",
            "line2": None,
            "city": "London",
            "postal_code": "SW1Y 4JH",
            "state": None,
            "country": "GB",
        },
    },
}


def body(**changes: Any) -> dict[str, Any]:
    document = copy.deepcopy(VALID)
    document.update(changes)
    return document


def customer(**changes: Any) -> dict[str, Any]:
    details = copy.deepcopy(VALID["customer"])
    details.update(changes)
    return details


def errors_of(
    model: type[BaseModel], data: Any, **kwargs: Any
) -> list[tuple[tuple[Any, ...], str]]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data, **kwargs)
    return [(error["loc"], error["type"]) for error in caught.value.errors()]


def test_valid_request_validates() -> None:
    payment = CreatePaymentRequest.model_validate(VALID)
    assert payment.amount_minor == 1050
    assert payment.customer is not None
    assert payment.customer.address is not None
    assert payment.customer.address.country == "GB"


def test_defaults() -> None:
    payment = CreatePaymentRequest.model_validate(
        {"provider": "paypal", "amount_minor": 1, "currency": "JPY"}
    )
    assert payment.capture_method == "automatic"
    assert payment.metadata == {}
    assert payment.customer is None
    assert payment.description is None


def test_valid_request_from_json() -> None:
    import json

    payment = CreatePaymentRequest.model_validate_json(json.dumps(VALID))
    assert payment.currency == "EUR"


@pytest.mark.parametrize(
    ("amount", "error_type"),
    [
        (0, "greater_than"),
        (-1, "greater_than"),
        (10.0, "int_type"),  # a float, even a whole one
        (10.5, "int_type"),
        ("100", "int_type"),  # no coercion from strings
        (True, "int_type"),  # nor from booleans
        (None, "int_type"),
        (limits.AMOUNT_MINOR_CEILING + 1, "less_than_equal"),
    ],
)
def test_amount_is_a_positive_integer(amount: Any, error_type: str) -> None:
    assert errors_of(CreatePaymentRequest, body(amount_minor=amount)) == [
        (("amount_minor",), error_type)
    ]


def test_float_amount_refused_in_json_too() -> None:
    with pytest.raises(ValidationError) as caught:
        CreatePaymentRequest.model_validate_json(
            '{"provider": "stripe", "amount_minor": 100.0, "currency": "EUR"}'
        )
    assert caught.value.errors()[0]["type"] == "int_type"


def test_amount_is_bounded_by_configured_max_in_context() -> None:
    settings = Settings(amount_minor_max=5_000)
    context = {"settings": settings}
    assert CreatePaymentRequest.model_validate(body(amount_minor=5_000), context=context)
    assert errors_of(CreatePaymentRequest, body(amount_minor=5_001), context=context) == [
        (("amount_minor",), "less_than_equal")
    ]
    assert errors_of(CaptureRequest, {"amount_minor": 5_001}, context=context) == [
        (("amount_minor",), "less_than_equal")
    ]
    assert errors_of(RefundRequest, {"amount_minor": 5_001}, context=context) == [
        (("amount_minor",), "less_than_equal")
    ]
    # Without a context only the static ceiling applies.
    assert CreatePaymentRequest.model_validate(body(amount_minor=5_001))


def test_default_configured_max() -> None:
    settings = Settings()
    assert settings.amount_minor_max == 99_999_999
    context = {"settings": settings}
    assert CreatePaymentRequest.model_validate(body(amount_minor=99_999_999), context=context)
    assert errors_of(CreatePaymentRequest, body(amount_minor=100_000_000), context=context)


def test_within_settings_rechecks_a_validated_payload() -> None:
    settings = Settings(amount_minor_max=5_000)
    payment = CreatePaymentRequest.model_validate(body(amount_minor=6_000))
    with pytest.raises(ValidationError) as caught:
        within_settings(payment, settings)
    assert [(e["loc"], e["type"]) for e in caught.value.errors()] == [
        (("amount_minor",), "less_than_equal")
    ]
    fine = CreatePaymentRequest.model_validate(VALID)
    assert within_settings(fine, settings) == fine
    assert within_settings(CaptureRequest(), settings) == CaptureRequest()


@pytest.mark.parametrize(
    ("currency", "error_type"),
    [
        ("XYZ", "currency_unknown"),
        ("XTS", "currency_unknown"),  # test code: no minor unit
        ("XAU", "currency_unknown"),  # gold
        ("HRK", "currency_unknown"),  # withdrawn
        ("eur", "string_pattern_mismatch"),
        ("Eur", "string_pattern_mismatch"),
        ("EURO", "string_pattern_mismatch"),
        ("", "string_pattern_mismatch"),
        (978, "string_type"),
    ],
)
def test_currency_is_a_known_upper_case_code(currency: Any, error_type: str) -> None:
    assert errors_of(CreatePaymentRequest, body(currency=currency)) == [(("currency",), error_type)]


@pytest.mark.parametrize("field", ["provider", "amount_minor", "currency"])
def test_required_fields(field: str) -> None:
    document = body()
    del document[field]
    assert errors_of(CreatePaymentRequest, document) == [((field,), "missing")]


@pytest.mark.parametrize(
    ("field", "value"),
    [("provider", "adyen"), ("provider", "Stripe"), ("capture_method", "later")],
)
def test_enumerations(field: str, value: str) -> None:
    assert errors_of(CreatePaymentRequest, body(**{field: value})) == [((field,), "literal_error")]


def test_description_length() -> None:
    at_limit = "d" * limits.DESCRIPTION_CHARS_MAX
    assert CreatePaymentRequest.model_validate(body(description=at_limit))
    assert errors_of(CreatePaymentRequest, body(description=at_limit + "d")) == [
        (("description",), "string_too_long")
    ]


def test_control_characters_refused() -> None:
    assert errors_of(CreatePaymentRequest, body(description="nul\x00byte")) == [
        (("description",), "string_pattern_mismatch")
    ]
    assert errors_of(CreatePaymentRequest, body(customer=customer(name="two\nlines"))) == [
        (("customer", "name"), "string_pattern_mismatch")
    ]


def test_metadata_entry_count() -> None:
    at_limit = {f"k{i}": "v" for i in range(limits.METADATA_ENTRIES_MAX)}
    assert CreatePaymentRequest.model_validate(body(metadata=at_limit))
    over = {**at_limit, "one_more": "v"}
    assert errors_of(CreatePaymentRequest, body(metadata=over)) == [(("metadata",), "too_long")]


def test_metadata_key_too_long() -> None:
    key = "k" * (limits.METADATA_KEY_CHARS_MAX + 1)
    assert CreatePaymentRequest.model_validate(body(metadata={key[:-1]: "v"}))
    assert errors_of(CreatePaymentRequest, body(metadata={key: "v"})) == [
        (("metadata", key, "[key]"), "string_too_long")
    ]


def test_metadata_empty_key() -> None:
    assert errors_of(CreatePaymentRequest, body(metadata={"": "v"})) == [
        (("metadata", "", "[key]"), "string_too_short")
    ]


def test_metadata_value_too_long() -> None:
    value = "v" * limits.METADATA_VALUE_CHARS_MAX
    assert CreatePaymentRequest.model_validate(body(metadata={"order": value}))
    assert errors_of(CreatePaymentRequest, body(metadata={"order": value + "v"})) == [
        (("metadata", "order"), "string_too_long")
    ]


@pytest.mark.parametrize("value", [17, 1.5, None, ["a"], {"a": "b"}])
def test_metadata_values_are_strings(value: Any) -> None:
    assert errors_of(CreatePaymentRequest, body(metadata={"order": value})) == [
        (("metadata", "order"), "string_type")
    ]


def test_unknown_field_at_top_level() -> None:
    assert errors_of(CreatePaymentRequest, body(capture_metod="manual")) == [
        (("capture_metod",), "extra_forbidden")
    ]


@pytest.mark.parametrize(
    ("data", "loc"),
    [
        (body(customer=customer(phone="+44")), ("customer", "phone")),
        (
            body(customer=customer(address={"country": "GB", "zip": "1"})),
            ("customer", "address", "zip"),
        ),
    ],
)
def test_unknown_nested_fields(data: dict[str, Any], loc: tuple[str, ...]) -> None:
    assert errors_of(CreatePaymentRequest, data) == [(loc, "extra_forbidden")]


@pytest.mark.parametrize(
    "model", [CaptureRequest, RefundRequest, CancelRequest, CustomerDetails, Address]
)
def test_every_model_forbids_unknown_fields(model: type[BaseModel]) -> None:
    data: dict[str, Any] = {"reference": "r"} if model is CustomerDetails else {}
    data["surprise"] = 1
    assert errors_of(model, data) == [(("surprise",), "extra_forbidden")]


def test_every_model_is_strict_and_closed() -> None:
    for model in (
        CreatePaymentRequest,
        CustomerDetails,
        Address,
        CaptureRequest,
        RefundRequest,
        CancelRequest,
        AcceptedResponse,
    ):
        assert issubclass(model, StrictModel)
        assert model.model_config.get("extra") == "forbid"
        assert model.model_config.get("strict") is True


def test_customer_without_reference() -> None:
    details = customer()
    del details["reference"]
    assert errors_of(CreatePaymentRequest, body(customer=details)) == [
        (("customer", "reference"), "missing")
    ]


@pytest.mark.parametrize(
    ("reference", "error_type"),
    [("", "string_too_short"), ("r" * 65, "string_too_long"), (42, "string_type")],
)
def test_customer_reference_bounds(reference: Any, error_type: str) -> None:
    assert errors_of(CreatePaymentRequest, body(customer=customer(reference=reference))) == [
        (("customer", "reference"), error_type)
    ]


def test_customer_with_reference_only() -> None:
    payment = CreatePaymentRequest.model_validate(body(customer={"reference": "cus-1"}))
    assert payment.customer == CustomerDetails(reference="cus-1")


@pytest.mark.parametrize(
    "email",
    [
        "not-an-email",
        "4111111111111111",
        "two@@example.com",
        "a@localhost",
        "a b@example.com",
        "Ada <ada@example.com>",
        "a..b@example.com",
        "",
    ],
)
def test_bad_email(email: str) -> None:
    assert errors_of(CreatePaymentRequest, body(customer=customer(email=email))) == [
        (("customer", "email"), "email_invalid")
    ]


def test_email_too_long() -> None:
    email = "a" * 64 + "@" + ("b" * 60 + ".") * 4 + "com"
    assert len(email) > limits.EMAIL_CHARS_MAX
    assert errors_of(CreatePaymentRequest, body(customer=customer(email=email))) == [
        (("customer", "email"), "string_too_long")
    ]


def test_email_domain_is_normalized() -> None:
    payment = CreatePaymentRequest.model_validate(body(customer=customer(email="Ada@EXAMPLE.com")))
    assert payment.customer is not None
    assert payment.customer.email == "Ada@example.com"


@pytest.mark.parametrize(
    ("country", "error_type"),
    [
        ("gb", "string_pattern_mismatch"),
        ("GBR", "string_pattern_mismatch"),
        ("XX", "country_unknown"),
        ("UK", "country_unknown"),
    ],
)
def test_country(country: str, error_type: str) -> None:
    address = {"country": country}
    assert errors_of(CreatePaymentRequest, body(customer=customer(address=address))) == [
        (("customer", "address", "country"), error_type)
    ]


def test_name_length() -> None:
    assert errors_of(CreatePaymentRequest, body(customer=customer(name="n" * 201))) == [
        (("customer", "name"), "string_too_long")
    ]


@pytest.mark.parametrize("model", [CaptureRequest, RefundRequest])
def test_follow_up_amounts(model: type[BaseModel]) -> None:
    assert model.model_validate({}).amount_minor is None  # type: ignore[attr-defined]
    assert model.model_validate({"amount_minor": 5}).amount_minor == 5  # type: ignore[attr-defined]
    for bad, error_type in (
        (0, "greater_than"),
        (-5, "greater_than"),
        (5.0, "int_type"),
        ("5", "int_type"),
    ):
        assert errors_of(model, {"amount_minor": bad}) == [(("amount_minor",), error_type)]


@pytest.mark.parametrize("model", [RefundRequest, CancelRequest])
def test_reason_length(model: type[BaseModel]) -> None:
    assert model.model_validate({"reason": "r" * limits.REASON_CHARS_MAX})
    assert errors_of(model, {"reason": "r" * (limits.REASON_CHARS_MAX + 1)}) == [
        (("reason",), "string_too_long")
    ]


def test_accepted_response() -> None:
    response = AcceptedResponse(payment_id="pay_1", event_id="0190-e")
    assert response.model_dump(mode="json") == {
        "payment_id": "pay_1",
        "event_id": "0190-e",
        "status": "accepted",
        "links": {"payment": "/v1/payments/pay_1"},
    }


def test_models_are_immutable() -> None:
    payment = CreatePaymentRequest.model_validate(VALID)
    with pytest.raises(ValidationError):
        payment.amount_minor = 1  # type: ignore[misc]


def test_json_schema_states_the_constraints() -> None:
    schema = CreatePaymentRequest.model_json_schema()
    properties = schema["properties"]
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"provider", "amount_minor", "currency"}
    assert properties["amount_minor"]["type"] == "integer"
    assert properties["amount_minor"]["exclusiveMinimum"] == 0
    assert properties["amount_minor"]["maximum"] == limits.AMOUNT_MINOR_CEILING
    assert properties["provider"]["enum"] == ["stripe", "paypal", "coinbase"]
    assert properties["capture_method"]["enum"] == ["automatic", "manual"]
    assert "EUR" in properties["currency"]["enum"]
    assert "XTS" not in properties["currency"]["enum"]
    assert properties["currency"]["pattern"] == "^[A-Z]{3}$"
    metadata = properties["metadata"]
    assert metadata["maxProperties"] == limits.METADATA_ENTRIES_MAX
    assert metadata["propertyNames"]["maxLength"] == limits.METADATA_KEY_CHARS_MAX
    assert metadata["additionalProperties"]["maxLength"] == limits.METADATA_VALUE_CHARS_MAX
    assert metadata["propertyNames"]["pattern"] == SINGLE_LINE_PATTERN
    assert "patternProperties" not in metadata
    customer_schema = schema["$defs"]["CustomerDetails"]
    assert customer_schema["additionalProperties"] is False
    assert customer_schema["required"] == ["reference"]
    assert customer_schema["properties"]["reference"]["maxLength"] == 64
    assert schema["$defs"]["Address"]["additionalProperties"] is False

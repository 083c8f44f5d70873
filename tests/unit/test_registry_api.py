"""The registry's Confluent-compatible read API, through Starlette's test client."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from ingress.registry_api import create_registry_app, registry_routes
from ledger.errors import SchemaError, UnknownSchemaError
from ledger.registry import FileSchemaRegistry, RegisteredSchema

CONFLUENT_JSON = "application/vnd.schemaregistry.v1+json"
SUBJECT = "payledger.commands-value"
# Stored and served as written: whitespace, key order, non-ASCII doc and all.
PAYMENT = """{
  "type": "record", "name": "Payment", "namespace": "payledger",
  "doc": "Überweisung: 支付",
  "fields": [{"name": "id", "type": "string"}]
}"""
PAYMENT_V2 = json.dumps(
    {
        "type": "record",
        "name": "Payment",
        "namespace": "payledger",
        "fields": [
            {"name": "id", "type": "string"},
            {"name": "note", "type": ["null", "string"], "default": None},
        ],
    }
)
PRIMITIVE = '"string"'


@pytest.fixture
def registry(tmp_path: Path) -> FileSchemaRegistry:
    registry = FileSchemaRegistry(tmp_path)
    assert registry.register(SUBJECT, PAYMENT) == 1
    assert registry.register(SUBJECT, PAYMENT_V2) == 2
    assert registry.register("other-value", PRIMITIVE) == 3
    assert registry.register("other-value", PAYMENT) == 1
    return registry


@pytest.fixture
def client(registry: FileSchemaRegistry) -> Iterator[TestClient]:
    with TestClient(create_registry_app(registry)) as client:
        yield client


def confluent(response: httpx.Response, status: int = 200) -> object:
    """The JSON body, after checking the status and Confluent's content type."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == CONFLUENT_JSON
    return response.json()


def error(response: httpx.Response, status: int, code: int) -> str:
    body = confluent(response, status)
    assert isinstance(body, dict)
    assert set(body) == {"error_code", "message"}
    assert body["error_code"] == code
    message = body["message"]
    assert isinstance(message, str)
    return message


# --- schemas ---------------------------------------------------------------------------------


def test_schema_by_id(client: TestClient) -> None:
    # No "schemaType" for Avro, as Confluent does.
    assert confluent(client.get("/schemas/ids/1")) == {"schema": PAYMENT}
    assert confluent(client.get("/schemas/ids/3")) == {"schema": PRIMITIVE}


def test_raw_schema_by_id_is_the_registered_text(client: TestClient) -> None:
    response = client.get("/schemas/ids/1/schema")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONFLUENT_JSON
    assert response.content == PAYMENT.encode("utf-8")
    assert client.get("/schemas/ids/3/schema").content == b'"string"'


@pytest.mark.parametrize("path", ["/schemas/ids/{}", "/schemas/ids/{}/schema"])
@pytest.mark.parametrize(
    "schema_id",
    ["4", "0", "-1", "abc", "1.0", "%EF%BC%91", "99999999999", "2147483648", "%20"],
    ids=["unknown", "zero", "negative", "word", "float", "fullwidth-1", "huge", "int32+1", "space"],
)
def test_unknown_or_invalid_schema_id(client: TestClient, path: str, schema_id: str) -> None:
    message = error(client.get(path.format(schema_id)), 404, 40403)
    assert message.startswith("Schema ") and message.endswith(" not found")


def test_schema_types(client: TestClient) -> None:
    assert confluent(client.get("/schemas/types")) == ["AVRO"]


# --- subjects and versions -------------------------------------------------------------------


def test_subjects(client: TestClient) -> None:
    assert confluent(client.get("/subjects")) == ["other-value", SUBJECT]


def test_versions(client: TestClient) -> None:
    assert confluent(client.get(f"/subjects/{SUBJECT}/versions")) == [1, 2]
    assert confluent(client.get("/subjects/other-value/versions")) == [1, 2]


@pytest.mark.parametrize(
    ("version", "expected_version", "schema_id", "schema"),
    [
        ("1", 1, 1, PAYMENT),
        ("2", 2, 2, PAYMENT_V2),
        ("latest", 2, 2, PAYMENT_V2),
        ("-1", 2, 2, PAYMENT_V2),
    ],
)
def test_subject_version(
    client: TestClient, version: str, expected_version: int, schema_id: int, schema: str
) -> None:
    assert confluent(client.get(f"/subjects/{SUBJECT}/versions/{version}")) == {
        "subject": SUBJECT,
        "version": expected_version,
        "id": schema_id,
        "schema": schema,
    }
    raw = client.get(f"/subjects/{SUBJECT}/versions/{version}/schema")
    assert raw.status_code == 200
    assert raw.headers["content-type"] == CONFLUENT_JSON
    assert raw.content == schema.encode("utf-8")


def test_the_same_schema_in_another_subject(client: TestClient) -> None:
    assert confluent(client.get("/subjects/other-value/versions/2")) == {
        "subject": "other-value",
        "version": 2,
        "id": 1,
        "schema": PAYMENT,
    }


@pytest.mark.parametrize(
    "path",
    ["/subjects/nope/versions", "/subjects/nope/versions/1", "/subjects/nope/versions/latest",
     "/subjects/nope/versions/1/schema"],
)  # fmt: skip
def test_unknown_subject(client: TestClient, path: str) -> None:
    assert error(client.get(path), 404, 40401) == "Subject 'nope' not found."


@pytest.mark.parametrize("suffix", ["", "/schema"])
def test_unknown_version(client: TestClient, suffix: str) -> None:
    response = client.get(f"/subjects/{SUBJECT}/versions/3{suffix}")
    assert error(response, 404, 40402) == "Version 3 not found."


@pytest.mark.parametrize("suffix", ["", "/schema"])
@pytest.mark.parametrize(
    "version", ["abc", "0", "-2", "1.5", "2147483648", "99999999999", "LATEST", "%EF%BC%91"]
)
def test_invalid_version(client: TestClient, version: str, suffix: str) -> None:
    for subject in (SUBJECT, "nope"):  # checked before the subject is looked up, as Confluent
        message = error(client.get(f"/subjects/{subject}/versions/{version}{suffix}"), 422, 42202)
        assert "is not a valid version id" in message


def test_subjects_that_need_percent_encoding(registry: FileSchemaRegistry) -> None:
    subject = "a/b c?-value"
    registry.register(subject, PRIMITIVE)
    with TestClient(create_registry_app(registry)) as client:
        assert subject in confluent(client.get("/subjects"))  # type: ignore[operator]
        assert confluent(client.get("/subjects/a%2Fb%20c%3F-value/versions")) == [1]
        body = confluent(client.get("/subjects/a%2Fb%20c%3F-value/versions/latest"))
        assert body == {"subject": subject, "version": 1, "id": 3, "schema": PRIMITIVE}


def test_config(client: TestClient) -> None:
    assert confluent(client.get("/config")) == {"compatibilityLevel": "BACKWARD_TRANSITIVE"}


def test_query_parameters_sent_by_confluent_clients_are_ignored(client: TestClient) -> None:
    assert confluent(client.get("/schemas/ids/1?subject=x&format=&fetchMaxId=false")) == {
        "schema": PAYMENT
    }
    assert confluent(client.get(f"/subjects/{SUBJECT}/versions/1?deleted=False"))


# --- what the app adds around the routes -----------------------------------------------------


def test_unknown_paths_are_confluent_errors(client: TestClient) -> None:
    assert error(client.get("/nope"), 404, 404) == "HTTP 404 Not Found"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_writes_are_not_served(client: TestClient, method: str) -> None:
    response = client.request(method, f"/subjects/{SUBJECT}/versions", json={"schema": PAYMENT})
    assert error(response, 405, 405) == "HTTP 405 Method Not Allowed"
    assert "GET" in response.headers["allow"]


def test_the_routes_work_mounted_in_another_app(registry: FileSchemaRegistry) -> None:
    app = Starlette(routes=[Mount("/registry", routes=registry_routes(registry))])
    with TestClient(app) as client:
        assert confluent(client.get("/registry/schemas/ids/2")) == {"schema": PAYMENT_V2}
        assert error(client.get("/registry/subjects/nope/versions"), 404, 40401)


# --- a registry that fails or is slow --------------------------------------------------------


class BrokenRegistry:
    """A registry whose store is damaged: every call fails, but not with 'unknown'."""

    def register(self, subject: str, schema: str) -> int:
        raise SchemaError("disk on fire")

    def schema_by_id(self, schema_id: int) -> str:
        raise SchemaError("disk on fire")

    def subjects(self) -> list[str]:
        raise SchemaError("disk on fire")

    def versions(self, subject: str) -> list[int]:
        raise SchemaError("disk on fire")

    def get_version(self, subject: str, version: int | Literal["latest"]) -> RegisteredSchema:
        raise SchemaError("disk on fire")

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    "path",
    ["/schemas/ids/1", "/schemas/ids/1/schema", "/subjects", "/subjects/s/versions",
     "/subjects/s/versions/1", "/subjects/s/versions/latest/schema"],
)  # fmt: skip
def test_a_failing_store_is_a_confluent_store_error(path: str) -> None:
    with TestClient(create_registry_app(BrokenRegistry())) as client:
        message = error(client.get(path), 500, 50001)
    assert "disk on fire" in message


class RacingRegistry(BrokenRegistry):
    """Lists a version, then cannot find it: as if deleted in between (external registries)."""

    def versions(self, subject: str) -> list[int]:
        return [1]

    def get_version(self, subject: str, version: int | Literal["latest"]) -> RegisteredSchema:
        raise UnknownSchemaError("gone")


def test_a_version_that_vanishes_mid_request_is_not_found() -> None:
    with TestClient(create_registry_app(RacingRegistry())) as client:
        assert error(client.get("/subjects/s/versions/1"), 404, 40402) == "Version 1 not found."


class SlowRegistry(BrokenRegistry):
    """``schema_by_id`` blocks until released, like a cold read from a slow disk."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def schema_by_id(self, schema_id: int) -> str:
        self.entered.set()
        self.release.wait(timeout=5)
        return PRIMITIVE


async def test_a_blocking_registry_call_does_not_stall_the_event_loop() -> None:
    registry = SlowRegistry()
    transport = httpx.ASGITransport(app=create_registry_app(registry))
    async with httpx.AsyncClient(transport=transport, base_url="http://registry") as client:
        slow = asyncio.create_task(client.get("/schemas/ids/1"))
        try:
            assert await asyncio.to_thread(registry.entered.wait, 5)
            # If schema_by_id ran on the event loop, nothing else could be served until
            # it returned, and it only returns once released (or after 5 s).
            other = await asyncio.wait_for(client.get("/schemas/types"), timeout=2)
            assert other.json() == ["AVRO"]
            assert not slow.done()
        finally:
            registry.release.set()
        assert (await slow).json() == {"schema": PRIMITIVE}

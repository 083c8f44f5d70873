"""The built-in registry's read API, served by real uvicorn, read by Confluent's own client.

confluent-kafka's ``SchemaRegistryClient`` and ``AvroDeserializer`` are the reference
consumers: if they can fetch our schemas and decode Confluent wire-format bytes with them,
so can any Confluent-compatible consumer. ``HttpSchemaRegistry`` is checked against the same
server. Needs no Kafka: only a free localhost port.
"""

from __future__ import annotations

import io
import json
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from ingress.registry_api import create_registry_app
from ledger.errors import SchemaError, UnknownSchemaError
from ledger.registry import FileSchemaRegistry, HttpSchemaRegistry, value_subject
from tests.support.servers import serve_in_thread

pytestmark = pytest.mark.integration

TOPIC = "payledger.payment-events"
SUBJECT = value_subject(TOPIC)

PAYMENT_V1 = json.dumps(
    {
        "type": "record",
        "name": "Payment",
        "namespace": "payledger",
        "fields": [
            {"name": "id", "type": "string"},
            {
                "name": "amount",
                "type": {"type": "bytes", "logicalType": "decimal", "precision": 18, "scale": 2},
            },
            {
                "name": "currency",
                "type": {"type": "enum", "name": "Currency", "symbols": ["EUR", "USD"]},
            },
            {"name": "tags", "type": {"type": "map", "values": "string"}},
        ],
    },
    indent=2,
)
PAYMENT_V2 = json.dumps(
    {
        **json.loads(PAYMENT_V1),
        "fields": [
            *json.loads(PAYMENT_V1)["fields"],
            {"name": "note", "type": ["null", "string"], "default": None},
        ],
    }
)
PAYMENT = {
    "id": "pay-1",
    "amount": Decimal("1234.56"),
    "currency": "EUR",
    "tags": {"channel": "web", "ü": "ß"},
}


@dataclass
class Server:
    url: str
    registry: FileSchemaRegistry
    directory: Path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Real uvicorn on a free port, in a thread, over a FileSchemaRegistry."""
    directory = tmp_path_factory.mktemp("registry")
    registry = FileSchemaRegistry(directory)
    with serve_in_thread(create_registry_app(registry)) as url:
        yield Server(url, registry, directory)


@pytest.fixture
def confluent(server: Server) -> Iterator[SchemaRegistryClient]:
    client = SchemaRegistryClient({"url": server.url})
    yield client
    client.close()


@pytest.fixture(scope="module")
def ids(server: Server) -> dict[str, int]:
    # Registered through a second registry object on the same directory, like a producer
    # process would, after the server has started: the server must pick them up.
    producer = FileSchemaRegistry(server.directory)
    return {
        "v1": producer.register(SUBJECT, PAYMENT_V1),
        "v2": producer.register(SUBJECT, PAYMENT_V2),
        "string": producer.register("plain-value", '"string"'),
        "v1-again": producer.register("copy-value", PAYMENT_V1),
    }


def wire_bytes(schema_id: int, schema: str, value: Any) -> bytes:
    """Confluent wire format: magic 0, 4-byte big-endian schema id, schemaless Avro."""
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(json.loads(schema)), value)
    return struct.pack(">bI", 0, schema_id) + body.getvalue()


def test_same_schema_same_id(ids: dict[str, int]) -> None:
    assert ids["v1-again"] == ids["v1"]
    assert len({ids["v1"], ids["v2"], ids["string"]}) == 3


def test_confluent_client_gets_a_schema_by_id(
    confluent: SchemaRegistryClient, ids: dict[str, int]
) -> None:
    schema = confluent.get_schema(ids["v1"])
    assert schema.schema_str == PAYMENT_V1
    assert schema.schema_type == "AVRO"
    assert confluent.get_schema(ids["string"]).schema_str == '"string"'


def test_confluent_client_gets_subjects_and_versions(
    confluent: SchemaRegistryClient, ids: dict[str, int]
) -> None:
    assert set(confluent.get_subjects()) == {SUBJECT, "plain-value", "copy-value"}
    assert confluent.get_versions(SUBJECT) == [1, 2]

    first = confluent.get_version(SUBJECT, 1)
    assert (first.subject, first.version, first.schema_id) == (SUBJECT, 1, ids["v1"])
    assert first.schema.schema_str == PAYMENT_V1

    latest = confluent.get_latest_version(SUBJECT)
    assert (latest.subject, latest.version, latest.schema_id) == (SUBJECT, 2, ids["v2"])
    assert latest.schema.schema_str == PAYMENT_V2


@pytest.mark.parametrize(
    ("call", "status", "code"),
    [
        (lambda client: client.get_schema(999), 404, 40403),
        (lambda client: client.get_versions("nope-value"), 404, 40401),
        (lambda client: client.get_version(SUBJECT, 9), 404, 40402),
    ],
    ids=["schema", "subject", "version"],
)
def test_confluent_client_sees_confluent_errors(
    confluent: SchemaRegistryClient, ids: dict[str, int], call: Any, status: int, code: int
) -> None:
    with pytest.raises(SchemaRegistryError) as raised:
        call(confluent)
    assert (raised.value.http_status_code, raised.value.error_code) == (status, code)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_avro_deserializer_decodes_wire_format(
    confluent: SchemaRegistryClient, ids: dict[str, int], version: str
) -> None:
    schema = PAYMENT_V1 if version == "v1" else PAYMENT_V2
    value = PAYMENT if version == "v1" else {**PAYMENT, "note": "second try"}
    data = wire_bytes(ids[version], schema, value)

    deserializer = AvroDeserializer(confluent)
    assert deserializer(data, SerializationContext(TOPIC, MessageField.VALUE)) == value


def test_avro_deserializer_resolves_old_data_with_a_newer_reader_schema(
    confluent: SchemaRegistryClient, ids: dict[str, int]
) -> None:
    # The writer schema (v1) comes from our registry; the new field gets its default.
    data = wire_bytes(ids["v1"], PAYMENT_V1, PAYMENT)
    deserializer = AvroDeserializer(confluent, schema_str=PAYMENT_V2)
    decoded = deserializer(data, SerializationContext(TOPIC, MessageField.VALUE))
    assert decoded == {**PAYMENT, "note": None}


def test_avro_deserializer_refuses_an_unknown_schema_id(
    confluent: SchemaRegistryClient, ids: dict[str, int]
) -> None:
    data = wire_bytes(999, PAYMENT_V1, PAYMENT)
    with pytest.raises(SchemaRegistryError) as raised:
        AvroDeserializer(confluent)(data, SerializationContext(TOPIC, MessageField.VALUE))
    assert raised.value.error_code == 40403


# --- our own HTTP client against the same server -----------------------------------------


@pytest.fixture
def http_registry(server: Server) -> Iterator[HttpSchemaRegistry]:
    with HttpSchemaRegistry(server.url) as registry:
        yield registry


def test_http_registry_reads(http_registry: HttpSchemaRegistry, ids: dict[str, int]) -> None:
    assert http_registry.schema_by_id(ids["v1"]) == PAYMENT_V1
    assert http_registry.subjects() == sorted([SUBJECT, "plain-value", "copy-value"])
    assert http_registry.versions(SUBJECT) == [1, 2]
    first = http_registry.get_version(SUBJECT, 1)
    assert (first.version, first.schema_id, first.schema) == (1, ids["v1"], PAYMENT_V1)
    latest = http_registry.get_version(SUBJECT, "latest")
    assert (latest.version, latest.schema_id, latest.schema) == (2, ids["v2"], PAYMENT_V2)


def test_http_registry_unknowns(http_registry: HttpSchemaRegistry, ids: dict[str, int]) -> None:
    with pytest.raises(UnknownSchemaError, match="Schema 999 not found"):
        http_registry.schema_by_id(999)
    with pytest.raises(UnknownSchemaError, match="Subject 'nope-value' not found"):
        http_registry.versions("nope-value")
    with pytest.raises(UnknownSchemaError, match="Version 9 not found"):
        http_registry.get_version(SUBJECT, 9)


def test_http_registry_register_is_refused_by_the_read_only_api(
    http_registry: HttpSchemaRegistry,
) -> None:
    with pytest.raises(SchemaError, match="405") as raised:
        http_registry.register(SUBJECT, PAYMENT_V1)
    assert not isinstance(raised.value, UnknownSchemaError)


def test_http_registry_reports_a_registry_that_is_not_there() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago, and nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with (
        HttpSchemaRegistry(f"http://127.0.0.1:{port}", timeout_s=2) as registry,
        pytest.raises(SchemaError, match="cannot reach the schema registry"),
    ):
        registry.schema_by_id(1)

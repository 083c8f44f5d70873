"""The schema registry: the file-backed store, the HTTP client's requests, the factory."""

from __future__ import annotations

import json
import multiprocessing
import queue
import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import ledger.registry
from ledger.config import Settings
from ledger.errors import (
    ConfigurationError,
    IncompatibleSchemaError,
    SchemaError,
    UnknownSchemaError,
)
from ledger.limits import SCHEMA_BYTES_MAX
from ledger.registry import (
    FileSchemaRegistry,
    HttpSchemaRegistry,
    RegisteredSchema,
    open_registry,
    schema_identity,
    value_subject,
)

SUBJECT = "payledger.commands-value"
OTHER_SUBJECT = "payledger.payment-events-value"


def record(name: str, *fields: dict[str, Any], **extra: Any) -> str:
    document = {"type": "record", "name": name, "fields": list(fields), **extra}
    return json.dumps(document, ensure_ascii=False)


def field(name: str, type_: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, **extra}


PAYMENT = record("Payment", field("id", "string"), namespace="payledger")
PAYMENT_V2 = record(
    "Payment",
    field("id", "string"),
    field("note", ["null", "string"], default=None),
    namespace="payledger",
)
REFUND = record("Refund", field("payment", "string"), namespace="payledger")


def decimal_schema(precision: int, scale: int) -> str:
    amount = {"type": "bytes", "logicalType": "decimal", "precision": precision, "scale": scale}
    return record("Amount", field("amount", amount))


@pytest.fixture
def registry(tmp_path: Path) -> FileSchemaRegistry:
    return FileSchemaRegistry(tmp_path / "registry")


# --- ids -------------------------------------------------------------------------------


def test_ids_start_at_one_and_increase(registry: FileSchemaRegistry) -> None:
    assert registry.register(SUBJECT, PAYMENT) == 1
    assert registry.register(SUBJECT, PAYMENT_V2) == 2
    assert registry.register(OTHER_SUBJECT, REFUND) == 3


def test_ids_are_stable_across_reopen(tmp_path: Path) -> None:
    first = FileSchemaRegistry(tmp_path)
    ids = {schema: first.register(SUBJECT, schema) for schema in (PAYMENT, PAYMENT_V2)}

    reopened = FileSchemaRegistry(tmp_path)
    for schema, schema_id in ids.items():
        assert reopened.schema_by_id(schema_id) == schema
        assert reopened.register(SUBJECT, schema) == schema_id
    assert reopened.register(OTHER_SUBJECT, REFUND) == 3
    assert reopened.versions(SUBJECT) == [1, 2]


def test_same_schema_gets_the_same_id_in_every_subject(registry: FileSchemaRegistry) -> None:
    registry.register(SUBJECT, REFUND)
    schema_id = registry.register(SUBJECT, PAYMENT)
    assert registry.register(OTHER_SUBJECT, PAYMENT) == schema_id
    assert registry.get_version(OTHER_SUBJECT, 1) == RegisteredSchema(
        OTHER_SUBJECT, 1, schema_id, PAYMENT
    )
    assert registry.versions(OTHER_SUBJECT) == [1]


def test_registering_again_returns_the_id_and_adds_no_version(registry: FileSchemaRegistry) -> None:
    first = registry.register(SUBJECT, PAYMENT)
    registry.register(SUBJECT, PAYMENT_V2)
    # Any earlier version counts, not just the latest (as in Confluent).
    assert registry.register(SUBJECT, PAYMENT) == first
    assert registry.versions(SUBJECT) == [1, 2]
    assert registry.get_version(SUBJECT, "latest").schema == PAYMENT_V2


def test_canonically_equal_texts_share_an_id_and_the_first_text_is_served(
    registry: FileSchemaRegistry,
) -> None:
    original = PAYMENT
    reformatted = json.dumps(json.loads(PAYMENT), indent=4, sort_keys=True)
    qualified = record("payledger.Payment", field("id", "string", doc="the payment id"))
    schema_id = registry.register(SUBJECT, original)
    assert registry.register(SUBJECT, reformatted) == schema_id
    assert registry.register(OTHER_SUBJECT, qualified) == schema_id
    assert registry.versions(SUBJECT) == [1]
    assert registry.schema_by_id(schema_id) == original


@pytest.mark.parametrize(
    ("first", "second"),
    [
        # Equal Parsing Canonical Forms, but data written with one is misread with the other.
        (decimal_schema(10, 2), decimal_schema(12, 4)),
        (
            record("T", field("at", "long")),
            record("T", field("at", {"type": "long", "logicalType": "timestamp-millis"})),
        ),
        # Adding a default is a new version, or readers would never see it.
        (record("R", field("n", "int")), record("R", field("n", "int", default=0))),
    ],
    ids=["decimal-scale", "logical-type", "default"],
)
def test_what_the_canonical_form_strips_still_distinguishes_schemas(
    registry: FileSchemaRegistry, first: str, second: str
) -> None:
    assert registry.register(SUBJECT, first) == 1
    assert registry.register(SUBJECT, second) == 2
    assert registry.schema_by_id(2) == second
    assert registry.versions(SUBJECT) == [1, 2]


# --- versions and lookups ----------------------------------------------------------------


def test_versions_and_latest(registry: FileSchemaRegistry) -> None:
    v1 = registry.register(SUBJECT, PAYMENT)
    v2 = registry.register(SUBJECT, PAYMENT_V2)
    assert registry.subjects() == [SUBJECT]
    assert registry.versions(SUBJECT) == [1, 2]
    assert registry.get_version(SUBJECT, 1) == RegisteredSchema(SUBJECT, 1, v1, PAYMENT)
    assert registry.get_version(SUBJECT, 2) == RegisteredSchema(SUBJECT, 2, v2, PAYMENT_V2)
    assert registry.get_version(SUBJECT, "latest") == RegisteredSchema(SUBJECT, 2, v2, PAYMENT_V2)


def test_subjects_are_sorted(registry: FileSchemaRegistry) -> None:
    for subject in ("c-value", "a-value", "b-value"):
        registry.register(subject, PAYMENT)
    assert registry.subjects() == ["a-value", "b-value", "c-value"]


@pytest.mark.parametrize("schema_id", [0, -1, 2, 10**12])
def test_unknown_schema_id(registry: FileSchemaRegistry, schema_id: int) -> None:
    registry.register(SUBJECT, PAYMENT)
    with pytest.raises(UnknownSchemaError, match=f"Schema {schema_id} not found"):
        registry.schema_by_id(schema_id)


def test_unknown_subject(registry: FileSchemaRegistry) -> None:
    registry.register(SUBJECT, PAYMENT)
    with pytest.raises(UnknownSchemaError, match="Subject 'nope' not found"):
        registry.versions("nope")
    with pytest.raises(UnknownSchemaError, match="Subject 'nope' not found"):
        registry.get_version("nope", 1)
    with pytest.raises(UnknownSchemaError, match="Subject 'nope' not found"):
        registry.get_version("nope", "latest")


@pytest.mark.parametrize("version", [0, -1, 2])
def test_unknown_version(registry: FileSchemaRegistry, version: int) -> None:
    registry.register(SUBJECT, PAYMENT)
    with pytest.raises(UnknownSchemaError, match=f"Version {version} not found"):
        registry.get_version(SUBJECT, version)


def test_an_empty_registry_knows_nothing_and_reading_creates_nothing(tmp_path: Path) -> None:
    directory = tmp_path / "registry"
    registry = FileSchemaRegistry(directory)
    assert registry.subjects() == []
    with pytest.raises(UnknownSchemaError):
        registry.schema_by_id(1)
    with pytest.raises(UnknownSchemaError):
        registry.get_version(SUBJECT, "latest")
    assert not directory.exists()


# --- invalid input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "schema",
    [
        "",
        "{not json",
        '{"type": "nope"}',
        '{"type": "record", "fields": []}',  # no name
        '{"type": "fixed", "name": "F"}',  # no size: fastavro raises a bare KeyError
        '{"type": "array"}',
        '{"type": "record", "name": "R", "fields": [{"name": "x", "type": "Undefined"}]}',
        '{"type": "record", "name": "R", "fields": [{"name": "n", "type": "int", "default": "x"}]}',
        "42",
        "null",
        "[" * 50_000 + "]" * 50_000,  # nesting deeper than the parser's recursion limit
    ],
    ids=[
        "empty", "not-json", "unknown-type", "no-name", "no-size", "no-items",
        "undefined-name", "bad-default", "number", "null", "deep",
    ],
)  # fmt: skip
def test_unparseable_schemas_are_rejected_and_nothing_is_stored(
    registry: FileSchemaRegistry, schema: str
) -> None:
    with pytest.raises(SchemaError) as raised:
        registry.register(SUBJECT, schema)
    assert not isinstance(raised.value, UnknownSchemaError)
    assert registry.subjects() == []
    assert not registry.directory.exists()


def padded(size_bytes: int, filler: str = "x") -> str:
    """A valid schema of exactly ``size_bytes`` UTF-8 bytes, padded in its doc."""
    empty = record("Padded", field("x", "int"), doc="")
    room = size_bytes - len(empty.encode("utf-8"))
    per_char = len(filler.encode("utf-8"))
    doc = filler * (room // per_char) + "x" * (room % per_char)
    schema = record("Padded", field("x", "int"), doc=doc)
    assert len(schema.encode("utf-8")) == size_bytes
    return schema


def test_a_schema_at_the_size_limit_is_accepted(registry: FileSchemaRegistry) -> None:
    schema = padded(SCHEMA_BYTES_MAX)
    schema_id = registry.register(SUBJECT, schema)
    assert FileSchemaRegistry(registry.directory).schema_by_id(schema_id) == schema


@pytest.mark.parametrize("filler", ["x", "é"], ids=["ascii", "two-byte"])
def test_a_schema_over_the_size_limit_is_rejected(
    registry: FileSchemaRegistry, filler: str
) -> None:
    # With "é" the text has fewer characters than the limit: the limit is in bytes.
    schema = padded(SCHEMA_BYTES_MAX + 2, filler)
    with pytest.raises(SchemaError, match="over the limit"):
        registry.register(SUBJECT, schema)
    assert not registry.directory.exists()


@pytest.mark.parametrize("subject", ["", "line\nbreak", "nul\x00"])
def test_invalid_subjects_are_rejected(registry: FileSchemaRegistry, subject: str) -> None:
    with pytest.raises(SchemaError, match="invalid subject"):
        registry.register(subject, PAYMENT)
    assert not registry.directory.exists()


def test_non_ascii_schema_text_round_trips(tmp_path: Path) -> None:
    schema = record("Zahlung", field("betrag", "long"), doc="Überweisung: 支付")
    schema_id = FileSchemaRegistry(tmp_path).register(SUBJECT, schema)
    assert FileSchemaRegistry(tmp_path).schema_by_id(schema_id) == schema


# --- several registry objects on one directory -------------------------------------------


def test_two_registries_on_one_directory_see_each_others_registrations(tmp_path: Path) -> None:
    producer, server = FileSchemaRegistry(tmp_path), FileSchemaRegistry(tmp_path)
    assert server.subjects() == []  # the server has looked at the (empty) store already

    payment = producer.register(SUBJECT, PAYMENT)
    assert server.schema_by_id(payment) == PAYMENT
    assert server.subjects() == [SUBJECT]
    assert server.get_version(SUBJECT, "latest").schema_id == payment

    v2 = server.register(SUBJECT, PAYMENT_V2)
    refund = server.register(OTHER_SUBJECT, REFUND)
    assert (payment, v2, refund) == (1, 2, 3)
    assert producer.versions(SUBJECT) == [1, 2]
    assert producer.get_version(SUBJECT, 2).schema == PAYMENT_V2
    assert producer.get_version(SUBJECT, "latest").schema_id == v2
    assert producer.subjects() == [SUBJECT, OTHER_SUBJECT]
    # The producer's in-memory view was stale, but it must not hand out id 2 again.
    assert producer.register(OTHER_SUBJECT, decimal_schema(10, 2)) == 4
    assert producer.register(OTHER_SUBJECT, PAYMENT_V2) == v2


def test_a_cached_schema_is_served_without_touching_the_disk(
    registry: FileSchemaRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema_id = registry.register(SUBJECT, PAYMENT)
    reader = FileSchemaRegistry(registry.directory)
    assert reader.schema_by_id(schema_id) == PAYMENT  # the first call reads the disk

    def no_io(*args: object, **kwargs: object) -> object:
        raise AssertionError("disk I/O on a cached lookup")

    # Patched for this block only: pytest itself needs the disk around the test.
    with monkeypatch.context() as patch:
        for name in ("stat", "open", "fstat"):
            patch.setattr(ledger.registry.os, name, no_io)
        patch.setattr(Path, "open", no_io)
        patch.setattr(Path, "read_bytes", no_io)
        served = [reader.schema_by_id(schema_id) for _ in range(3)]
    assert served == [PAYMENT] * 3


def test_the_schema_cache_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = FileSchemaRegistry(tmp_path)
    schemas = [record(f"R{i}", field("x", "int")) for i in range(5)]
    ids = [writer.register(SUBJECT, schema) for schema in schemas]

    monkeypatch.setattr(ledger.registry, "SCHEMA_CACHE_ENTRIES_MAX", 2)
    reader = FileSchemaRegistry(tmp_path)
    for _ in range(2):
        for schema_id, schema in zip(ids, schemas, strict=True):
            assert reader.schema_by_id(schema_id) == schema  # evicted ones are read again
    assert len(reader._texts) == 2


def test_a_damaged_index_is_a_schema_error_not_an_unknown_schema(tmp_path: Path) -> None:
    FileSchemaRegistry(tmp_path).register(SUBJECT, PAYMENT)
    (tmp_path / "index.json").write_text('{"format": 1, "schemas": [')
    registry = FileSchemaRegistry(tmp_path)
    with pytest.raises(SchemaError, match="damaged") as raised:
        registry.schema_by_id(1)
    assert not isinstance(raised.value, UnknownSchemaError)
    with pytest.raises(SchemaError, match="damaged"):
        registry.register(SUBJECT, REFUND)


def test_a_missing_schema_file_is_a_schema_error(tmp_path: Path) -> None:
    FileSchemaRegistry(tmp_path).register(SUBJECT, PAYMENT)
    (tmp_path / "schemas" / "000001.avsc").unlink()
    with pytest.raises(SchemaError, match="missing or damaged") as raised:
        FileSchemaRegistry(tmp_path).schema_by_id(1)
    assert not isinstance(raised.value, UnknownSchemaError)


# --- concurrency ---------------------------------------------------------------------------

CONCURRENT_SUBJECTS = ["a-value", "b-value", "c-value"]
CONCURRENT_SCHEMAS = [
    PAYMENT,
    PAYMENT_V2,
    REFUND,
    decimal_schema(10, 2),
    decimal_schema(12, 4),
    # Many more, so the writers of several processes overlap, not take turns.
    *[record(f"Generated{n}", field("x", "int")) for n in range(16)],
]
# Canonically equal to PAYMENT: must get PAYMENT's id whichever text is registered first.
PAYMENT_REFORMATTED = json.dumps(json.loads(PAYMENT), indent=2)


def register_shuffled(registry: FileSchemaRegistry, seed: int) -> list[tuple[str, str, int]]:
    work = [(s, schema) for s in CONCURRENT_SUBJECTS for schema in CONCURRENT_SCHEMAS]
    work += [(s, PAYMENT_REFORMATTED) for s in CONCURRENT_SUBJECTS]
    random.Random(seed).shuffle(work)
    return [(subject, schema, registry.register(subject, schema)) for subject, schema in work]


def check_concurrent_outcome(directory: Path, results: list[list[tuple[str, str, int]]]) -> None:
    ids: dict[str, set[int]] = {}
    for outcome in results:
        for _subject, schema, schema_id in outcome:
            ids.setdefault(schema, set()).add(schema_id)
    assert all(len(seen) == 1 for seen in ids.values()), ids
    by_schema = {schema: seen.pop() for schema, seen in ids.items()}
    assert sorted(set(by_schema.values())) == list(range(1, len(CONCURRENT_SCHEMAS) + 1))
    assert by_schema[PAYMENT_REFORMATTED] == by_schema[PAYMENT]

    # What is on disk agrees, parses, and holds every schema once per subject.
    json.loads((directory / "index.json").read_text())
    fresh = FileSchemaRegistry(directory)
    assert fresh.subjects() == CONCURRENT_SUBJECTS
    for subject in CONCURRENT_SUBJECTS:
        versions = [fresh.get_version(subject, v) for v in fresh.versions(subject)]
        assert sorted(v.schema_id for v in versions) == sorted(set(by_schema.values()))
    for schema in CONCURRENT_SCHEMAS:
        assert schema_identity(fresh.schema_by_id(by_schema[schema])) == schema_identity(schema)
    leftovers = [p.name for p in directory.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_concurrent_registration_from_threads(tmp_path: Path) -> None:
    shared = FileSchemaRegistry(tmp_path)
    # Half the threads share one registry object, half have their own (like processes do).
    registries = [shared if n % 2 else FileSchemaRegistry(tmp_path) for n in range(8)]
    start = threading.Barrier(len(registries))
    results: list[list[tuple[str, str, int]]] = [[] for _ in registries]
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            start.wait(timeout=30)
            results[n] = register_shuffled(registries[n], seed=n)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(registries))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    expected = len(CONCURRENT_SUBJECTS) * (len(CONCURRENT_SCHEMAS) + 1)
    assert all(len(outcome) == expected for outcome in results)
    check_concurrent_outcome(tmp_path, results)


ROUNDS = 3  # a lost race is likely, not certain, in one round: several make it near sure


def _register_in_child(directory: str, seed: int, start: Any, results: Any) -> None:
    """Runs in a spawned process: a fresh interpreter, its own FileSchemaRegistry per round."""
    try:
        outcomes = []
        for round_ in range(ROUNDS):
            registry = FileSchemaRegistry(Path(directory) / f"round-{round_}")
            start.wait(30)  # every process starts each round together
            outcomes.append(register_shuffled(registry, seed * ROUNDS + round_))
        results.put((seed, outcomes))
    except BaseException as error:
        results.put((seed, repr(error)))


def test_concurrent_registration_from_processes(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    workers = 4
    start, results = context.Barrier(workers), context.Queue()
    processes = [
        context.Process(target=_register_in_child, args=(str(tmp_path), seed, start, results))
        for seed in range(workers)
    ]
    for process in processes:
        process.start()
    try:
        outcomes = [results.get(timeout=120) for _ in processes]
    except queue.Empty:
        pytest.fail("a registering process did not report back")
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join()
            process.close()
        results.close()
        results.join_thread()
    failures = [outcome for _, outcome in outcomes if isinstance(outcome, str)]
    assert failures == []
    for round_ in range(ROUNDS):
        per_process = [outcome[round_] for _, outcome in outcomes]
        check_concurrent_outcome(tmp_path / f"round-{round_}", per_process)


# --- the HTTP client, against a fake transport --------------------------------------------

Handler = Callable[[httpx.Request], httpx.Response]
CONFLUENT_JSON = "application/vnd.schemaregistry.v1+json"


class Recorder:
    """A fake registry server: answers with ``handler`` and keeps every request."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)


@pytest.fixture
def http_registry() -> Iterator[Callable[..., tuple[HttpSchemaRegistry, Recorder]]]:
    opened: list[HttpSchemaRegistry] = []

    def make(
        handler: Handler, url: str = "http://registry.test:8081"
    ) -> tuple[HttpSchemaRegistry, Recorder]:
        recorder = Recorder(handler)
        client = HttpSchemaRegistry(url, transport=httpx.MockTransport(recorder))
        opened.append(client)
        return client, recorder

    yield make
    for client in opened:
        client.close()


def reply(status: int, body: object) -> Handler:
    """Answer every request with ``body``: JSON, or as is if it is a string."""
    if isinstance(body, str):
        return lambda request: httpx.Response(status, text=body)
    return lambda request: httpx.Response(status, json=body)


def test_http_register_posts_the_schema_in_confluent_form(http_registry: Any) -> None:
    client, server = http_registry(reply(200, {"id": 42}), url="http://registry.test/prefix/")
    assert client.register("a/b c-value", PAYMENT) == 42
    (request,) = server.requests
    assert request.method == "POST"
    assert request.url.raw_path == b"/prefix/subjects/a%2Fb%20c-value/versions"
    assert request.headers["content-type"] == CONFLUENT_JSON
    assert CONFLUENT_JSON in request.headers["accept"]
    assert json.loads(request.content) == {"schema": PAYMENT}


def test_http_register_is_cached(http_registry: Any) -> None:
    client, server = http_registry(reply(200, {"id": 7}))
    assert client.register(SUBJECT, PAYMENT) == 7
    assert client.register(SUBJECT, PAYMENT) == 7
    assert len(server.requests) == 1
    client.register(OTHER_SUBJECT, PAYMENT)  # another subject is another registration
    assert len(server.requests) == 2


def test_http_register_rejects_a_bad_schema_without_asking(http_registry: Any) -> None:
    client, server = http_registry(reply(200, {"id": 1}))
    with pytest.raises(SchemaError):
        client.register(SUBJECT, '{"type": "nope"}')
    with pytest.raises(SchemaError, match="over the limit"):
        client.register(SUBJECT, padded(SCHEMA_BYTES_MAX + 1))
    assert server.requests == []


def test_http_schema_by_id_is_fetched_once(http_registry: Any) -> None:
    client, server = http_registry(reply(200, {"schema": PAYMENT}))
    assert client.schema_by_id(5) == PAYMENT
    assert client.schema_by_id(5) == PAYMENT
    (request,) = server.requests
    assert (request.method, request.url.path) == ("GET", "/schemas/ids/5")


def test_http_reads(http_registry: Any) -> None:
    answers = {
        "/subjects": ["b-value", "a-value"],
        "/subjects/a-value/versions": [1, 2],
        "/subjects/a-value/versions/latest": {
            "subject": "a-value", "version": 2, "id": 9, "schema": PAYMENT_V2,
        },
    }  # fmt: skip

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=answers[request.url.path])

    client, server = http_registry(handler)
    assert client.subjects() == ["a-value", "b-value"]
    assert client.versions("a-value") == [1, 2]
    assert client.get_version("a-value", "latest") == RegisteredSchema("a-value", 2, 9, PAYMENT_V2)
    # The id learnt from get_version is cached.
    assert client.schema_by_id(9) == PAYMENT_V2
    assert len(server.requests) == 3


def confluent_error(code: int, message: str) -> dict[str, object]:
    return {"error_code": code, "message": message}


@pytest.mark.parametrize(
    ("status", "body", "error", "message"),
    [
        (404, confluent_error(40401, "Subject 'x' not found."), UnknownSchemaError, "Subject 'x'"),
        (404, confluent_error(40402, "Version 3 not found."), UnknownSchemaError, "Version 3"),
        (404, confluent_error(40403, "Schema 5 not found"), UnknownSchemaError, "Schema 5"),
        (409, confluent_error(409, "incompatible"), IncompatibleSchemaError, "incompatible"),
        (422, confluent_error(42201, "Invalid schema"), SchemaError, "422.*42201.*Invalid"),
        (500, confluent_error(50001, "store down"), SchemaError, "500.*store down"),
        (503, "<html>busy</html>", SchemaError, "503"),
        # A 404 without a Confluent code is a wrong URL, not a missing schema.
        (404, "<html>no such page</html>", SchemaError, "404"),
    ],
    ids=["40401", "40402", "40403", "409", "422", "500", "503-html", "404-html"],
)
def test_http_errors_are_mapped(
    http_registry: Any, status: int, body: object, error: type[Exception], message: str
) -> None:
    client, _ = http_registry(reply(status, body))
    with pytest.raises(SchemaError, match=message) as raised:
        client.schema_by_id(5)
    assert type(raised.value) is error


@pytest.mark.parametrize(
    "body",
    [{"schema": 5}, {"nothing": "here"}, [PAYMENT], {"schema": PAYMENT, "schemaType": "PROTOBUF"}],
    ids=["not-a-string", "missing", "not-an-object", "protobuf"],
)
def test_http_malformed_replies_are_schema_errors(http_registry: Any, body: object) -> None:
    client, _ = http_registry(reply(200, body))
    with pytest.raises(SchemaError) as raised:
        client.schema_by_id(5)
    assert not isinstance(raised.value, UnknownSchemaError)


def test_http_reply_that_is_not_json(http_registry: Any) -> None:
    client, _ = http_registry(lambda request: httpx.Response(200, text="<html>"))
    with pytest.raises(SchemaError, match="not JSON"):
        client.subjects()


@pytest.mark.parametrize(
    ("failure", "message"),
    [
        (httpx.ConnectError("connection refused"), "cannot reach the schema registry"),
        (httpx.ReadTimeout("timed out"), "did not answer within 5.0s"),
    ],
    ids=["connect", "timeout"],
)
def test_http_network_failures_are_schema_errors(
    http_registry: Any, failure: Exception, message: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise failure

    client, _ = http_registry(handler, url="http://user:s3cret@registry.test:8081")
    with pytest.raises(SchemaError, match=message) as raised:
        client.schema_by_id(1)
    assert "registry.test:8081/schemas/ids/1" in str(raised.value)
    assert "s3cret" not in str(raised.value)
    assert "s3cret" not in repr(client)


@pytest.mark.parametrize("url", ["registry:8081", "ftp://registry", "http://"])
def test_http_registry_needs_an_http_url(url: str) -> None:
    with pytest.raises(ConfigurationError):
        HttpSchemaRegistry(url)


# --- the factory and the subject naming ----------------------------------------------------


def test_open_registry_is_file_backed_by_default(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, schema_registry_url=None)
    registry = open_registry(settings)
    assert isinstance(registry, FileSchemaRegistry)
    assert registry.directory == settings.registry_dir


def test_open_registry_uses_an_external_registry_when_configured(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, schema_registry_url="http://registry.test:8081")
    registry = open_registry(settings)
    try:
        assert isinstance(registry, HttpSchemaRegistry)
        assert "registry.test:8081" in repr(registry)
    finally:
        registry.close()


def test_value_subject_follows_the_topic_name_strategy() -> None:
    assert value_subject("payledger.commands") == "payledger.commands-value"

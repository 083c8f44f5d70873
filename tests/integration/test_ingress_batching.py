"""Group commit of POST /v1/payments (ingress/batching.py), through real HTTP, Kafka and Postgres.

The cases only a batch has: two requests with one key in one batch, one
request failing while its neighbours are accepted, one broker failure failing
the whole batch, a key held by another batch in flight, and many concurrent
creates. A recorder wraps the batcher to see which requests shared a batch;
a longer batching window makes requests sent a few milliseconds apart share one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import psycopg
import pytest
from aiokafka.errors import KafkaTimeoutError

from ingress import batching
from ingress.batching import CreateBatcher, CreateIntent
from ingress.customer_keys import CustomerKeys, erased_problem
from ledger.publisher import Publisher
from ledger.sealing import customer_reference
from ledger.topics import TopicRole
from tests.integration import test_ingress
from tests.integration.test_ingress import Ingress, _merchant, _records, _verifier, create_body

pytestmark = pytest.mark.integration

ingress = test_ingress.ingress  # the fixture: a served app with its own topics and merchant

WIDE_WINDOW_S = 0.3  # requests sent within this of the batch's first one join it
SPACING_S = 0.03  # between requests that must reach the batcher in a known order


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The Idempotency-Keys of every batch the ingress ran, in order."""
    seen: list[list[str]] = []
    process = CreateBatcher._process

    async def recording(self: CreateBatcher, batch: list[CreateIntent]) -> None:
        seen.append([intent.idempotency_key for intent in batch])
        await process(self, batch)

    monkeypatch.setattr(CreateBatcher, "_process", recording)
    return seen


@pytest.fixture
def wide_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batching, "CREATE_BATCH_WINDOW_S", WIDE_WINDOW_S)


def _client(ingress: Ingress) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=ingress.url,
        headers={"Authorization": f"Bearer {ingress.api_key}"},
        timeout=30,
        limits=httpx.Limits(max_connections=400),
    )


def _in_order(
    ingress: Ingress, requests: list[tuple[str, dict[str, Any]]], spacing_s: float = SPACING_S
) -> list[httpx.Response]:
    """POST each (key, body) ``spacing_s`` after the previous one, all in flight together."""

    async def run() -> list[httpx.Response]:
        async with _client(ingress) as client:

            async def one(index: int, key: str, body: dict[str, Any]) -> httpx.Response:
                await asyncio.sleep(index * spacing_s)
                return await client.post(
                    "/v1/payments", json=body, headers={"Idempotency-Key": key}
                )

            return await asyncio.gather(
                *(one(i, key, body) for i, (key, body) in enumerate(requests))
            )

    return asyncio.run(run())


def _rows(ingress: Ingress, query: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(ingress.settings.dsn()) as connection:
        return connection.execute(query, params).fetchall()


def _event_ids(ingress: Ingress, expected: int) -> list[str]:
    verifier = _verifier(ingress.settings)
    records = _records(ingress.settings, TopicRole.COMMANDS, expected)
    return [verifier.open(record.value).event_id for record in records]


def test_one_key_twice_in_one_batch_makes_one_command(
    ingress: Ingress, batches: list[list[str]], wide_window: None
) -> None:
    first, again, other_body, neighbour = _in_order(
        ingress,
        [
            ("twice", create_body()),
            ("twice", create_body()),
            ("twice", create_body(amount_minor=999)),
            ("neighbour", create_body()),
        ],
    )
    # One batch, holding the key once: the later requests followed the first.
    assert [sorted(batch) for batch in batches] == [["neighbour", "twice"]]
    assert first.status_code == 202 and "idempotent-replayed" not in first.headers
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert other_body.status_code == 409
    assert other_body.json()["type"] == "/problems/idempotency-key-reused"
    assert neighbour.status_code == 202
    assert sorted(_event_ids(ingress, 2)) == sorted(
        [first.json()["event_id"], neighbour.json()["event_id"]]
    )


def test_a_failing_request_fails_alone(
    ingress: Ingress, batches: list[list[str]], wide_window: None, monkeypatch
) -> None:
    with httpx.Client(
        base_url=ingress.url, headers={"Authorization": f"Bearer {ingress.api_key}"}, timeout=30
    ) as client:
        earlier = client.post(
            "/v1/payments", json=create_body(), headers={"Idempotency-Key": "old"}
        )
    assert earlier.status_code == 202
    # The key's record expires; the payment it made stays.
    _rows(
        ingress,
        "UPDATE idempotency_keys SET expires_at = now() - interval '1 second'"
        " WHERE merchant_id = %s AND idempotency_key = 'old' RETURNING 1",
        ingress.merchant_id,
    )
    seal = CustomerKeys.seal
    erased_ref = customer_reference(ingress.merchant_id, "gone")

    async def seal_or_erased(self: CustomerKeys, merchant_id: str, ref: str, plaintext: bytes):
        if ref == erased_ref:  # as if the customer had been erased
            raise erased_problem()
        return await seal(self, merchant_id, ref, plaintext)

    monkeypatch.setattr(CustomerKeys, "seal", seal_or_erased)
    gone = create_body(customer={"reference": "gone", "email": "x@example.com"})
    responses = _in_order(
        ingress,
        [
            ("fresh-1", create_body()),
            ("old", create_body()),
            ("erased", gone),
            ("fresh-2", create_body()),
        ],
    )
    fresh_1, old, erased, fresh_2 = responses
    assert sorted(batches[-1]) == ["erased", "fresh-1", "fresh-2", "old"]
    assert old.status_code == 409, old.text
    assert old.json()["type"] == "/problems/payment-exists"
    assert erased.status_code == 410, erased.text
    assert fresh_1.status_code == fresh_2.status_code == 202
    # The failed requests left no key behind: a retry meets the same answer, not a replay.
    assert (
        _rows(
            ingress,
            "SELECT idempotency_key FROM idempotency_keys WHERE merchant_id = %s"
            " AND idempotency_key IN ('old', 'erased')",
            ingress.merchant_id,
        )
        == []
    )
    (retried,) = _in_order(ingress, [("old", create_body())])
    assert retried.status_code == 409
    assert retried.json()["type"] == "/problems/payment-exists"
    event_ids = _event_ids(ingress, 3)
    assert sorted(event_ids) == sorted(r.json()["event_id"] for r in (earlier, fresh_1, fresh_2))


def test_a_broker_failure_fails_the_whole_batch_and_commits_nothing(
    ingress: Ingress, batches: list[list[str]], wide_window: None, monkeypatch
) -> None:
    send = Publisher.send
    broken = True

    async def send_or_fail(self: Publisher, topic: str, envelope: Any, trace: Any = None):
        future = await send(self, topic, envelope, trace)
        if broken and envelope.payload.idempotency_key == "doomed":
            failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            failed.set_exception(KafkaTimeoutError())
            return failed
        return future

    monkeypatch.setattr(Publisher, "send", send_or_fail)
    keys = ["bystander-1", "doomed", "bystander-2"]
    down = _in_order(ingress, [(key, create_body()) for key in keys])
    assert sorted(batches[-1]) == sorted(keys)
    assert [r.status_code for r in down] == [503, 503, 503]
    assert all(int(r.headers["Retry-After"]) > 0 for r in down)
    assert (
        _rows(ingress, "SELECT 1 FROM idempotency_keys WHERE merchant_id = %s", ingress.merchant_id)
        == []
    )
    assert (
        _rows(ingress, "SELECT 1 FROM ingress_payments WHERE merchant_id = %s", ingress.merchant_id)
        == []
    )
    broken = False
    retried = _in_order(ingress, [(key, create_body()) for key in keys])
    assert [r.status_code for r in retried] == [202, 202, 202]
    # The bystanders' first commands may be on the log too, under the same event ids.
    records = _event_ids(ingress, 3)
    assert set(records) == {r.json()["event_id"] for r in retried}


def test_a_key_in_another_batch_in_flight_waits_then_replays(
    ingress: Ingress, batches: list[list[str]], monkeypatch
) -> None:
    publish: Callable[..., Awaitable[Any]] = CreateBatcher._publish
    slow_s = 0.5

    async def slow_publish(self: CreateBatcher, ready: list[Any]) -> Any:
        if any(intent.idempotency_key == "slow" for intent, _ in ready):
            await asyncio.sleep(slow_s)
        return await publish(self, ready)

    monkeypatch.setattr(CreateBatcher, "_publish", slow_publish)
    started = time.monotonic()
    first, second = _in_order(
        ingress, [("slow", create_body()), ("slow", create_body())], spacing_s=0.15
    )
    assert time.monotonic() - started >= slow_s
    assert batches == [["slow"], ["slow"]]  # the second came while the first was in flight
    assert first.status_code == second.status_code == 202
    assert "idempotent-replayed" not in first.headers
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.json() == first.json()
    assert _event_ids(ingress, 1) == [first.json()["event_id"]]


def test_many_concurrent_creates_are_batched_into_distinct_commands(
    ingress: Ingress, batches: list[list[str]]
) -> None:
    count = 300
    # A merchant whose rate limit lets the burst through.
    merchant_id, api_key = _merchant(ingress.settings, rate_per_s=10_000.0, burst=100_000)
    ingress = dataclasses.replace(ingress, merchant_id=merchant_id, api_key=api_key)
    responses = _in_order(
        ingress, [(f"many-{i}", create_body()) for i in range(count)], spacing_s=0.0
    )
    assert {r.status_code for r in responses} == {202}, {r.text for r in responses}
    assert len({r.json()["payment_id"] for r in responses}) == count
    assert sum(len(batch) for batch in batches) == count
    assert max(len(batch) for batch in batches) > 1  # they did share transactions
    event_ids = _event_ids(ingress, count)
    assert len(event_ids) == count
    assert set(event_ids) == {r.json()["event_id"] for r in responses}

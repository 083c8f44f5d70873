"""The stream worker on real Kafka with the deliveries a real provider makes: reordered,
duplicated, not allowed, and not ours at all.

One worker (a subprocess, as in ``test_streams_slice``) serves the whole module
on its own topic prefix and state directory; every test has payment ids of its
own. Webhooks are Stripe deliveries signed, verified and normalized as the
ingress does it; commands are signed envelopes as the ingress publishes them;
poison records go on the topics raw. The worker's calls to stripe-mock go
through a gate that a test can close to hold a capture call. Whatever the worker emits is read back
``read_committed`` and must verify for an auditor that trusts the root key
alone and learns event keys from the keys topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import struct
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from ledger.codec import EnvelopeCodec
from ledger.config import Settings
from ledger.envelope import (
    AuditFact,
    CaptureMethod,
    CommandKind,
    DeadLetter,
    Envelope,
    Money,
    PaymentCommand,
    PaymentEvent,
    PaymentEventKind,
    PostingSide,
    Provider,
    ProviderEvent,
    new_envelope,
)
from ledger.errors import InvalidEnvelope, Reason
from ledger.keys import KeyRing
from ledger.keystore import ActiveSigner, KeyStore, endorsement_to_json
from ledger.payments import machine
from ledger.payments.machine import RejectReason
from ledger.payments.status import PaymentStatus
from ledger.registry import FileSchemaRegistry
from ledger.signing import FileSigner
from ledger.topics import TopicRole, topic_name, topic_specs
from ledger.verify import Verifier
from streams import agents
from streams import state as state_codec
from streams.app import APP_NAME, TABLE_NAME
from streams.provision import provision_topics
from streams.publisher import Published, Publisher, kafka_publisher
from tests.support.servers import serve_in_thread
from tests.support.streams import running_worker, stripe_delivery

pytestmark = pytest.mark.integration

WEBHOOK_SECRET = "whsec_streams_robustness_test"
# Patient: the machine is shared, and a worker's transactions commit in intervals.
READ_TIMEOUT_S = 120.0
# How long a capture call is held for a webhook to be applied meanwhile: well
# within the call's tries (``limits.PROVIDER_CALL_ATTEMPTS_MAX`` of ``provider_timeout_s``).
IN_FLIGHT_WAIT_S = 30.0
WORKER_SOURCE = "/payledger/streams"
K = PaymentEventKind
S = PaymentStatus


# ---- one worker for the module ----------------------------------------------


class StripeGate:
    """Between the worker and stripe-mock: forwards every call; holds captures while closed.

    An ASGI app, served in a thread of its own: the test closes and opens it
    with ``threading`` events, and ``held`` tells that a capture is waiting.
    """

    _HOP_BY_HOP = frozenset(
        {"connection", "content-encoding", "content-length", "transfer-encoding"}
    )

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.opened = threading.Event()
        self.opened.set()
        self.held = threading.Event()

    def close(self) -> None:
        self.held.clear()
        self.opened.clear()

    def open(self) -> None:
        self.opened.set()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        if scope["path"].endswith("/capture") and not self.opened.is_set():
            self.held.set()
            # In a thread of the server's loop: the test opens the gate from its own.
            await asyncio.to_thread(self.opened.wait, READ_TIMEOUT_S)
        query = scope["query_string"].decode()
        url = f"{self.upstream}{scope['path']}" + (f"?{query}" if query else "")
        headers = [
            (name.decode(), value.decode())
            for name, value in scope["headers"]
            if name.decode().lower() not in {"host", *self._HOP_BY_HOP}
        ]
        async with httpx.AsyncClient(timeout=30.0) as client:
            response = await client.request(scope["method"], url, headers=headers, content=body)
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": [
                    (name.encode(), value.encode())
                    for name, value in response.headers.items()
                    if name.lower() not in self._HOP_BY_HOP
                ]
                + [(b"content-length", str(len(response.content)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": response.content})


@pytest.fixture(scope="module")
def stripe_gate(provider_mocks: Settings) -> Iterator[tuple[StripeGate, int]]:
    gate = StripeGate(provider_mocks.stripe_base_url())
    with serve_in_thread(gate) as url:
        try:
            yield gate, int(url.rsplit(":", 1)[1])
        finally:
            gate.open()


@pytest.fixture(scope="module")
async def settings(
    tmp_path_factory: pytest.TempPathFactory,
    provider_mocks: Settings,
    stripe_gate: tuple[StripeGate, int],
) -> Settings:
    settings = provider_mocks.model_copy(
        update={
            "topic_prefix": f"r{uuid.uuid4().hex[:10]}.",
            "state_dir": tmp_path_factory.mktemp("streams-robustness"),
            # The worker calls stripe-mock through the gate.
            "stripe_mock_port": stripe_gate[1],
        }
    )
    report = await provision_topics(settings)
    assert report.ok, report.mismatches
    # The key this module signs with (shared through the state directory).
    # The worker would learn it from the keys topic anyway, as the keys test
    # below shows.
    KeyStore(settings).active_key()
    return settings


@pytest.fixture(scope="module")
def worker(settings: Settings) -> Iterator[None]:
    with running_worker(settings):
        yield


@dataclass
class Ledger:
    """The module's view of the worker's topics: publish signed or raw, read back verified."""

    settings: Settings
    store: KeyStore
    codec: EnvelopeCodec
    signer: ActiveSigner
    publisher: Publisher
    raw: AIOKafkaProducer
    verifier: Verifier

    def topic(self, role: TopicRole) -> str:
        return topic_name(self.settings, role)

    async def publish(self, role: TopicRole, envelope: Envelope) -> Published:
        return await self.publisher.publish(self.topic(role), envelope)

    async def send_raw(self, role: TopicRole, key: bytes, value: bytes) -> Any:
        return await self.raw.send_and_wait(self.topic(role), value, key=key)

    def wire(self, role: TopicRole, envelope: Envelope, signer: Any = None) -> bytes:
        """The record the publisher would send, signed by ``signer`` (the active key by default)."""
        active, _ = self.signer.current()
        return self.codec.encode(envelope, signer or active, self.topic(role))[1]

    async def open(self, wire: bytes) -> Envelope:
        """Verified as an auditor would; keys endorsed since the last look are learned first."""
        try:
            return self.verifier.open(wire)
        except InvalidEnvelope as error:
            if error.reason is not Reason.UNKNOWN_KEY:
                raise
        self.verifier = await _auditor(self.settings, self.store, self.codec)
        return self.verifier.open(wire)

    async def read(
        self,
        role: TopicRole,
        keys: Collection[bytes],
        until: Callable[[list[Envelope]], bool],
    ) -> list[Envelope]:
        """The verified records with one of ``keys``, in offset order per partition.

        Reads until ``until`` holds, then on to the end of every partition as
        it is at that moment, so that nothing already committed is missed.
        """
        topic = self.topic(role)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap_servers(),
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        await consumer.start()
        found: list[Envelope] = []
        try:
            partitions = _partitions(self.settings, role)
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            async with asyncio.timeout(READ_TIMEOUT_S):
                while True:
                    batch = await consumer.getmany(*partitions, timeout_ms=500)
                    for records in batch.values():
                        for record in records:
                            if record.key in keys:
                                found.append(await self.open(record.value))
                    if until(found) and await _at_end(consumer, partitions):
                        return found
        except TimeoutError:
            raise AssertionError(
                f"{topic}: still waiting after {READ_TIMEOUT_S}s for {sorted(keys)};"
                f" found {[e.event_type for e in found]}\n{self.worker_log()}"
            ) from None
        finally:
            await consumer.stop()

    async def payment_events(self, payment_id: str, count: int) -> list[Envelope]:
        """The payment's events once there are at least ``count``, by sequence."""
        found = await self.read(
            TopicRole.PAYMENT_EVENTS, {payment_id.encode()}, lambda found: len(found) >= count
        )
        for envelope in found:
            assert isinstance(envelope.payload, PaymentEvent)
            assert envelope.producer == WORKER_SOURCE
        return sorted(found, key=lambda e: e.sequence)

    async def rejections(
        self, payment_id: str, event_ids: Collection[str]
    ) -> tuple[dict[str, DeadLetter], dict[str, AuditFact]]:
        """The dead letter and the audit fact of each rejected input, by its event id."""
        key = {payment_id.encode()}
        letters = await self.read(
            TopicRole.REJECTED,
            key,
            lambda found: set(event_ids) <= {_letter(e).original_event_id for e in found},
        )
        facts = await self.read(
            TopicRole.AUDIT_FACTS,
            key,
            lambda found: set(event_ids) <= {_fact(e).details.get("event_id") for e in found},
        )
        for envelope in (*letters, *facts):
            assert envelope.producer == WORKER_SOURCE
            assert envelope.aggregate_id == payment_id
        by_letter = {_letter(e).original_event_id: _letter(e) for e in letters}
        by_fact = {_fact(e).details["event_id"]: _fact(e) for e in facts}
        assert len(by_letter) == len(letters), "one dead letter per rejected input"
        assert len(by_fact) == len(facts), "one audit fact per rejected input"
        return by_letter, by_fact  # type: ignore[return-value]

    async def changelog(self, payment_id: str, until: Callable[[state_codec.Entry], bool]) -> None:
        """Wait until the payments table holds an entry for the payment that passes ``until``."""
        topic = f"{self.settings.topic_prefix}{APP_NAME}-{TABLE_NAME}-changelog"
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=self.settings.bootstrap_servers(),
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        await consumer.start()
        seen: list[state_codec.Entry] = []
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                while True:
                    batch = await consumer.getmany(timeout_ms=500)
                    for records in batch.values():
                        for record in records:
                            if record.key == payment_id.encode() and record.value:
                                seen.append(state_codec.loads_entry(record.value))
                    if any(until(entry) for entry in seen):
                        return
        except TimeoutError:
            raise AssertionError(
                f"no such table entry for {payment_id}: {seen}\n{self.worker_log()}"
            ) from None
        finally:
            await consumer.stop()

    def worker_log(self) -> str:
        path = self.settings.state_dir / "worker.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def _partitions(settings: Settings, role: TopicRole) -> list[TopicPartition]:
    """Every partition of a role's topic, as provisioned."""
    (spec,) = [spec for spec in topic_specs(settings) if spec.role is role]
    return [TopicPartition(spec.name, n) for n in range(spec.partitions)]


async def _at_end(consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> bool:
    # For a read_committed consumer the end is the last stable offset.
    ends = await consumer.end_offsets(partitions)
    for partition in partitions:
        if await consumer.position(partition) < ends[partition]:
            return False
    return True


async def _auditor(settings: Settings, store: KeyStore, codec: EnvelopeCodec) -> Verifier:
    """A verifier that starts from the root alone and learns keys from the keys topic."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers(),
        isolation_level="read_committed",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    values: list[bytes] = []
    try:
        partitions = _partitions(settings, TopicRole.KEYS)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        async with asyncio.timeout(READ_TIMEOUT_S):
            while not (values and await _at_end(consumer, partitions)):
                batch = await consumer.getmany(*partitions, timeout_ms=500)
                values.extend(r.value for records in batch.values() for r in records)
    finally:
        await consumer.stop()
    verifier = Verifier(codec, KeyRing([store.trusted_root()]))
    for value in values:
        verifier.admit_endorsement(value)
    return verifier


@pytest.fixture(scope="module")
async def ledger(settings: Settings, worker: None) -> AsyncIterator[Ledger]:
    store = KeyStore(settings)
    codec = EnvelopeCodec(FileSchemaRegistry(settings.registry_dir))
    signer = ActiveSigner(store)
    raw = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers(), acks="all")
    async with kafka_publisher(settings, codec, signer, source="/payledger/test") as publisher:
        await raw.start()
        try:
            verifier = await _auditor(settings, store, codec)
            ledger = Ledger(settings, store, codec, signer, publisher, raw, verifier)
            # Every test starts with the worker up: its topics (the table's
            # changelog among them) exist, and it has applied a CREATE.
            started, _ = new_payment()
            await ledger.publish(TopicRole.COMMANDS, command(started, CommandKind.CREATE, 1, 1000))
            await ledger.payment_events(started, 1)
            yield ledger
        finally:
            await raw.stop()


# ---- what goes in ---------------------------------------------------------------


def new_payment() -> tuple[str, str]:
    """A payment id and its PaymentIntent's id, both unique to the caller."""
    tag = uuid.uuid4().hex[:12]
    return f"pay_{tag}", f"pi_{tag}"


def command(
    payment_id: str,
    kind: CommandKind,
    n: int,
    amount: int | None = None,
    *,
    capture: CaptureMethod = CaptureMethod.AUTOMATIC,
) -> Envelope:
    create = kind is CommandKind.CREATE
    return new_envelope(
        event_type=f"payment.command.{kind.value.lower()}",
        aggregate_id=payment_id,
        sequence=n,
        producer="payledger/test",
        payload=PaymentCommand(
            command=kind,
            merchant_id="mer_42",
            idempotency_key=f"idem-{payment_id}-{n}",
            provider=Provider.STRIPE,
            amount=Money(amount, "USD") if amount is not None else None,
            capture_method=capture if create else None,
            description="streams robustness" if create else None,
        ),
    )


def intent(intent_id: str, status: str, **counters: int) -> dict[str, Any]:
    return {
        "id": intent_id,
        "object": "payment_intent",
        "amount": 1000,
        "currency": "usd",
        "status": status,
        **counters,
    }


def charge(intent_id: str, refunded: int) -> dict[str, Any]:
    """The charge of ``intent_id`` with ``refunded`` as Stripe's running total refunded."""
    return {
        "id": intent_id.replace("pi_", "ch_", 1),
        "object": "charge",
        "amount": 1000,
        "currency": "usd",
        "status": "succeeded",
        "payment_intent": intent_id,
        "amount_refunded": refunded,
    }


def webhook(payment_id: str, event_type: str, obj: dict[str, Any], created: int) -> Envelope:
    return stripe_delivery(payment_id, event_type, obj, secret=WEBHOOK_SECRET, created=created)


def redelivered(envelope: Envelope) -> Envelope:
    """Stripe sending the same event again: a new delivery, the same provider event id."""
    payload = envelope.payload
    assert isinstance(payload, ProviderEvent)
    return new_envelope(
        event_type=envelope.event_type,
        aggregate_id=envelope.aggregate_id,
        sequence=envelope.sequence,
        producer=envelope.producer,
        occurred_at=envelope.occurred_at,
        payload=dataclasses.replace(payload, received_at=datetime.now(UTC)),
    )


def provider_time() -> int:
    """A base for the provider's ``created`` times of one test, safely in the past."""
    return int(time.time()) - 600


# ---- what comes out -------------------------------------------------------------


def _letter(envelope: Envelope) -> DeadLetter:
    assert isinstance(envelope.payload, DeadLetter), envelope.payload
    return envelope.payload


def _fact(envelope: Envelope) -> AuditFact:
    assert isinstance(envelope.payload, AuditFact), envelope.payload
    return envelope.payload


def payloads(events: list[Envelope]) -> list[PaymentEvent]:
    found = [e.payload for e in events]
    assert all(isinstance(p, PaymentEvent) for p in found)
    return found  # type: ignore[return-value]


def assert_timeline(events: list[Envelope]) -> None:
    """Sequence numbers 1..n without a gap; every event's postings balance per currency;
    refunds never exceed the capture, which never exceeds the authorization."""
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    for event in payloads(events):
        assert 0 <= event.refunded_minor <= event.captured_minor <= event.authorized_minor
        for currency in {p.currency for p in event.postings}:
            side = {PostingSide.DEBIT: 0, PostingSide.CREDIT: 0}
            for posting in event.postings:
                if posting.currency == currency:
                    side[posting.side] += posting.amount_minor
            assert side[PostingSide.DEBIT] == side[PostingSide.CREDIT] > 0, event


def assert_stale(event: PaymentEvent, before: PaymentEvent, provider_event_type: str) -> None:
    """Recorded in the timeline as stale, and nothing about the payment changed."""
    assert event.stale
    assert event.provider_event_type == provider_event_type
    assert event.note is not None
    assert event.note.startswith("stale:"), event.note
    assert event.status_before is event.status_after is before.status_after
    assert event.postings == ()
    assert event.amount is None
    assert (
        event.authorized_minor,
        event.captured_minor,
        event.refunded_minor,
    ) == (before.authorized_minor, before.captured_minor, before.refunded_minor)


async def assert_rejected(
    ledger: Ledger,
    letter: DeadLetter,
    fact: AuditFact,
    published: Published,
    reason: RejectReason,
    status: PaymentStatus,
) -> None:
    """The dead letter points at the exact record and says why; the audit fact says it too."""
    envelope = published.envelope
    assert letter.error_class == machine.DEAD_LETTER_ERROR_CLASS
    assert letter.reason == reason.value, letter
    assert letter.detail
    assert (letter.original_topic, letter.original_partition, letter.original_offset) == (
        published.topic,
        published.partition,
        published.offset,
    )
    assert letter.original_event_id == envelope.event_id
    assert letter.original_event_type == envelope.event_type
    assert letter.original_bytes is not None
    assert hashlib.sha256(letter.original_bytes).digest() == letter.original_sha256
    assert await ledger.open(letter.original_bytes) == envelope
    assert fact.fact_type == machine.REJECTED_FACT_TYPE
    assert fact.subject == envelope.aggregate_id
    assert fact.reason == reason.value
    assert fact.details["event_id"] == envelope.event_id
    assert fact.details["event_type"] == envelope.event_type
    assert fact.details["status"] == status.value


async def assert_no_rejections(ledger: Ledger, payment_id: str) -> None:
    key = {payment_id.encode()}
    nothing = lambda found: True  # noqa: E731 - read to the end
    assert await ledger.read(TopicRole.REJECTED, key, nothing) == []
    assert await ledger.read(TopicRole.AUDIT_FACTS, key, nothing) == []


C = TopicRole.COMMANDS
W = TopicRole.PROVIDER_EVENTS


# ---- out of order -----------------------------------------------------------------


async def test_a_late_processing_after_succeeded_is_recorded_stale_and_changes_nothing(
    ledger: Ledger,
) -> None:
    payment_id, intent_id = new_payment()
    t0 = provider_time()
    await ledger.publish(C, command(payment_id, CommandKind.CREATE, 1, 1000))
    await ledger.payment_events(payment_id, 1)
    await ledger.publish(
        W,
        webhook(
            payment_id,
            "payment_intent.succeeded",
            intent(intent_id, "succeeded", amount_received=1000),
            t0 + 2,
        ),
    )
    await ledger.payment_events(payment_id, 2)
    late = await ledger.publish(
        W, webhook(payment_id, "payment_intent.processing", intent(intent_id, "processing"), t0 + 1)
    )
    events = await ledger.payment_events(payment_id, 3)

    assert_timeline(events)
    assert len(events) == 3, [e.event_type for e in events]
    created, captured, stale = payloads(events)
    assert [created.kind, captured.kind] == [K.CREATED, K.CAPTURED]
    assert captured.status_after is S.SUCCEEDED
    assert captured.captured_minor == 1000
    assert events[2].event_type == machine.STALE_EVENT_TYPE
    assert events[2].causation_id == late.envelope.event_id
    assert stale.kind is K.STATUS_CHANGED
    assert_stale(stale, captured, "payment_intent.processing")
    assert stale.status_after is S.SUCCEEDED
    await assert_no_rejections(ledger, payment_id)


async def test_refund_totals_out_of_order_never_go_backwards_nor_beyond_the_capture(
    ledger: Ledger,
) -> None:
    payment_id, intent_id = new_payment()
    t0 = provider_time()
    await ledger.publish(C, command(payment_id, CommandKind.CREATE, 1, 1000))
    await ledger.payment_events(payment_id, 1)
    succeeded = intent(intent_id, "succeeded", amount_received=1000)
    await ledger.publish(W, webhook(payment_id, "payment_intent.succeeded", succeeded, t0 + 1))
    await ledger.payment_events(payment_id, 2)
    # Stripe sent the 200 total, then the 600 total; the 600 arrives first.
    await ledger.publish(W, webhook(payment_id, "charge.refunded", charge(intent_id, 600), t0 + 3))
    await ledger.payment_events(payment_id, 3)
    await ledger.publish(W, webhook(payment_id, "charge.refunded", charge(intent_id, 200), t0 + 2))
    await ledger.payment_events(payment_id, 4)
    # A total beyond the capture: 500 more with 400 refundable.
    beyond = await ledger.publish(
        W, webhook(payment_id, "charge.refunded", charge(intent_id, 1100), t0 + 4)
    )
    letters, facts = await ledger.rejections(payment_id, {beyond.envelope.event_id})
    await ledger.publish(W, webhook(payment_id, "charge.refunded", charge(intent_id, 1000), t0 + 5))
    events = await ledger.payment_events(payment_id, 5)

    assert_timeline(events)
    assert len(events) == 5, [e.event_type for e in events]
    _, captured, first, late, rest = payloads(events)
    assert (first.kind, first.amount, first.refunded_minor) == (K.REFUNDED, Money(600, "USD"), 600)
    assert first.status_after is S.PARTIALLY_REFUNDED
    assert events[3].event_type == machine.STALE_EVENT_TYPE
    assert late.kind is K.REFUNDED
    assert_stale(late, first, "charge.refunded")
    assert (rest.kind, rest.amount, rest.refunded_minor) == (K.REFUNDED, Money(400, "USD"), 1000)
    assert rest.status_after is S.REFUNDED
    refunded = [p.refunded_minor for p in payloads(events)]
    assert refunded == sorted(refunded), "the refunded total never goes backwards"
    assert max(refunded) == captured.captured_minor == 1000
    await assert_rejected(
        ledger,
        letters[beyond.envelope.event_id],
        facts[beyond.envelope.event_id],
        beyond,
        RejectReason.AMOUNT_EXCEEDS_BOUND,
        S.PARTIALLY_REFUNDED,
    )


async def test_a_webhook_before_its_create_is_held_then_applied_right_after_it(
    ledger: Ledger,
) -> None:
    payment_id, intent_id = new_payment()
    t0 = provider_time()
    processing = await ledger.publish(
        W, webhook(payment_id, "payment_intent.processing", intent(intent_id, "processing"), t0 + 1)
    )
    capturable = await ledger.publish(
        W,
        webhook(
            payment_id,
            "payment_intent.amount_capturable_updated",
            intent(intent_id, "requires_capture", amount_capturable=1000),
            t0 + 2,
        ),
    )
    # Delivered again while held: not held twice.
    await ledger.publish(W, processing.envelope)
    held_ids = [
        p.envelope.payload.provider_event_id  # type: ignore[union-attr]
        for p in (processing, capturable)
    ]
    await ledger.changelog(
        payment_id,
        lambda entry: (
            entry.state is None
            and [h.provider_event_id for h in entry.held] == held_ids
            and [h.offset for h in entry.held] == [processing.offset, capturable.offset]
        ),
    )
    create = await ledger.publish(
        C, command(payment_id, CommandKind.CREATE, 1, 1000, capture=CaptureMethod.MANUAL)
    )
    events = await ledger.payment_events(payment_id, 3)
    assert len(events) == 3, [e.event_type for e in events]
    assert [e.causation_id for e in events] == [
        create.envelope.event_id,
        processing.envelope.event_id,
        capturable.envelope.event_id,
    ]
    created, processed, authorized = payloads(events)
    assert created.kind is K.CREATED
    assert (processed.kind, processed.status_after) == (K.STATUS_CHANGED, S.PROCESSING)
    assert (authorized.kind, authorized.status_after) == (K.AUTHORIZED, S.AUTHORIZED)
    assert authorized.authorized_minor == 1000

    # The payment goes on from there, the redelivery changing nothing on the way.
    await ledger.publish(C, command(payment_id, CommandKind.CAPTURE, 2, 1000))
    await ledger.payment_events(payment_id, 4)
    await ledger.publish(
        W,
        webhook(
            payment_id,
            "payment_intent.succeeded",
            intent(intent_id, "succeeded", amount_received=1000),
            t0 + 3,
        ),
    )
    events = await ledger.payment_events(payment_id, 5)
    assert_timeline(events)
    assert len(events) == 5, [e.event_type for e in events]
    kinds = [p.kind for p in payloads(events)]
    assert kinds == [K.CREATED, K.STATUS_CHANGED, K.AUTHORIZED, K.CAPTURE_REQUESTED, K.CAPTURED]
    assert payloads(events)[-1].status_after is S.SUCCEEDED
    await assert_no_rejections(ledger, payment_id)


# ---- duplicates -------------------------------------------------------------------


async def test_duplicate_deliveries_and_commands_have_exactly_one_effect(ledger: Ledger) -> None:
    payment_id, intent_id = new_payment()
    t0 = provider_time()
    create = command(payment_id, CommandKind.CREATE, 1, 1000)
    for _ in range(2):
        await ledger.publish(C, create)
    await ledger.payment_events(payment_id, 1)
    succeeded = webhook(
        payment_id,
        "payment_intent.succeeded",
        intent(intent_id, "succeeded", amount_received=1000),
        t0 + 1,
    )
    again = redelivered(succeeded)
    for envelope in (succeeded, succeeded, again):
        await ledger.publish(W, envelope)
    await ledger.payment_events(payment_id, 2)
    refund = command(payment_id, CommandKind.REFUND, 2, 300)
    for _ in range(2):
        await ledger.publish(C, refund)
    await ledger.payment_events(payment_id, 3)
    # Each of these follows the duplicates on their partition: once it has its
    # effect, the duplicates before it were processed.
    await ledger.publish(W, webhook(payment_id, "charge.refunded", charge(intent_id, 300), t0 + 2))
    await ledger.payment_events(payment_id, 4)
    await ledger.publish(C, command(payment_id, CommandKind.REFUND, 3, 100))
    await ledger.payment_events(payment_id, 5)
    await ledger.publish(W, webhook(payment_id, "charge.refunded", charge(intent_id, 400), t0 + 3))
    events = await ledger.payment_events(payment_id, 6)

    assert_timeline(events)
    assert len(events) == 6, [e.event_type for e in events]
    kinds = [p.kind for p in payloads(events)]
    assert kinds == [
        K.CREATED,
        K.CAPTURED,
        K.REFUND_REQUESTED,
        K.REFUNDED,
        K.REFUND_REQUESTED,
        K.REFUNDED,
    ]
    causes = [e.causation_id for e in events]
    assert causes.count(create.event_id) == 1
    assert causes.count(succeeded.event_id) == 1
    assert again.event_id not in causes
    assert causes.count(refund.event_id) == 1
    last = payloads(events)[-1]
    assert (last.captured_minor, last.refunded_minor) == (1000, 400)
    assert last.status_after is S.PARTIALLY_REFUNDED
    assert payloads(events)[2].amount == Money(300, "USD")
    await assert_no_rejections(ledger, payment_id)


# ---- not allowed --------------------------------------------------------------------


async def test_commands_and_events_not_allowed_are_dead_lettered_and_change_nothing(
    ledger: Ledger,
) -> None:
    payment_id, intent_id = new_payment()
    t0 = provider_time()
    await ledger.publish(C, command(payment_id, CommandKind.CREATE, 1, 1000))
    await ledger.payment_events(payment_id, 1)
    succeeded = intent(intent_id, "succeeded", amount_received=1000)
    await ledger.publish(W, webhook(payment_id, "payment_intent.succeeded", succeeded, t0 + 1))
    await ledger.payment_events(payment_id, 2)

    # An automatic capture that succeeded takes no CAPTURE; no refund beyond the capture.
    capture = await ledger.publish(C, command(payment_id, CommandKind.CAPTURE, 2, 500))
    too_much = await ledger.publish(C, command(payment_id, CommandKind.REFUND, 3, 1500))
    beyond = await ledger.publish(
        W, webhook(payment_id, "charge.refunded", charge(intent_id, 1200), t0 + 2)
    )
    rejected = (capture, too_much, beyond)
    letters, facts = await ledger.rejections(payment_id, {p.envelope.event_id for p in rejected})
    assert len(letters) == len(facts) == 3
    for published, reason in zip(
        rejected,
        (
            RejectReason.COMMAND_NOT_ALLOWED,
            RejectReason.AMOUNT_EXCEEDS_BOUND,
            RejectReason.AMOUNT_EXCEEDS_BOUND,
        ),
        strict=True,
    ):
        event_id = published.envelope.event_id
        await assert_rejected(
            ledger, letters[event_id], facts[event_id], published, reason, S.SUCCEEDED
        )

    # The payment kept its state: the next legal inputs take the next sequence numbers.
    refund = await ledger.publish(C, command(payment_id, CommandKind.REFUND, 4, 400))
    await ledger.payment_events(payment_id, 3)
    await ledger.publish(W, webhook(payment_id, "charge.refunded", charge(intent_id, 400), t0 + 3))
    events = await ledger.payment_events(payment_id, 4)
    assert_timeline(events)
    assert len(events) == 4, [e.event_type for e in events]
    _, captured, requested, refunded = payloads(events)
    assert events[2].causation_id == refund.envelope.event_id
    assert (requested.kind, requested.amount) == (K.REFUND_REQUESTED, Money(400, "USD"))
    assert requested.status_before is requested.status_after is S.SUCCEEDED
    assert (requested.captured_minor, requested.refunded_minor) == (1000, 0)
    assert (refunded.kind, refunded.refunded_minor) == (K.REFUNDED, 400)
    assert refunded.status_after is S.PARTIALLY_REFUNDED
    assert captured.captured_minor == 1000


async def test_a_canceled_payment_is_never_captured(ledger: Ledger) -> None:
    payment_id, intent_id = new_payment()
    t0 = provider_time()
    await ledger.publish(
        C, command(payment_id, CommandKind.CREATE, 1, 1000, capture=CaptureMethod.MANUAL)
    )
    await ledger.payment_events(payment_id, 1)
    capturable = intent(intent_id, "requires_capture", amount_capturable=1000)
    await ledger.publish(
        W, webhook(payment_id, "payment_intent.amount_capturable_updated", capturable, t0 + 1)
    )
    await ledger.payment_events(payment_id, 2)
    await ledger.publish(
        W, webhook(payment_id, "payment_intent.canceled", intent(intent_id, "canceled"), t0 + 2)
    )
    await ledger.payment_events(payment_id, 3)

    # Money after the cancel is not a transition the table allows.
    succeeded = await ledger.publish(
        W,
        webhook(
            payment_id,
            "payment_intent.succeeded",
            intent(intent_id, "succeeded", amount_received=1000),
            t0 + 3,
        ),
    )
    capture = await ledger.publish(C, command(payment_id, CommandKind.CAPTURE, 2, 1000))
    ids = {succeeded.envelope.event_id, capture.envelope.event_id}
    letters, facts = await ledger.rejections(payment_id, ids)
    assert len(letters) == len(facts) == 2
    for published, reason in (
        (succeeded, RejectReason.ILLEGAL_TRANSITION),
        (capture, RejectReason.COMMAND_NOT_ALLOWED),
    ):
        event_id = published.envelope.event_id
        await assert_rejected(
            ledger, letters[event_id], facts[event_id], published, reason, S.CANCELED
        )

    # An authorization delivered after the cancel moves no money and would go
    # backwards: it is recorded as stale, with the next sequence number.
    late = await ledger.publish(
        W, webhook(payment_id, "payment_intent.amount_capturable_updated", capturable, t0 + 1)
    )
    events = await ledger.payment_events(payment_id, 4)
    assert_timeline(events)
    assert len(events) == 4, [e.event_type for e in events]
    _, authorized, canceled, stale = payloads(events)
    assert (authorized.kind, authorized.status_after) == (K.AUTHORIZED, S.AUTHORIZED)
    assert (canceled.kind, canceled.status_after) == (K.CANCELED, S.CANCELED)
    assert events[3].causation_id == late.envelope.event_id
    assert stale.kind is K.AUTHORIZED
    assert_stale(stale, canceled, "payment_intent.amount_capturable_updated")
    assert stale.status_after is S.CANCELED
    assert stale.captured_minor == 0


# ---- poison -------------------------------------------------------------------------


async def test_poison_records_are_dead_lettered_and_the_worker_keeps_going(
    ledger: Ledger,
) -> None:
    run = uuid.uuid4().hex[:8]
    t0 = provider_time()
    unendorsed = FileSigner.generate()
    sent: dict[bytes, tuple[Reason, TopicRole, bytes, Any]] = {}
    for role in (C, W):
        prefix = f"poison-{run}-{role.value}"
        payment_id = f"{prefix}-valid"
        if role is C:
            valid = command(payment_id, CommandKind.CREATE, 1, 1000)
        else:
            obj = intent(f"pi_{run}", "succeeded", amount_received=1000)
            valid = webhook(payment_id, "payment_intent.succeeded", obj, t0)
        wire = ledger.wire(role, valid)
        flipped = bytearray(wire)
        flipped[-1] ^= 0x01  # the signature is the record's tail
        poison = {
            "magic": (Reason.BAD_MAGIC, b"\x01" + wire[1:]),
            "signature": (Reason.BAD_SIGNATURE, bytes(flipped)),
            "schema": (
                Reason.UNKNOWN_SCHEMA,
                wire[:1] + struct.pack(">I", 0x7FFF_FF00) + wire[5:],
            ),
            "key": (Reason.UNKNOWN_KEY, ledger.wire(role, valid, unendorsed)),
            "truncated": (Reason.TRUNCATED, wire[: len(wire) // 2]),
        }
        for name, (reason, value) in poison.items():
            key = f"{prefix}-{name}".encode()
            sent[key] = (reason, role, value, await ledger.send_raw(role, key, value))

    # A valid payment after the poison records completes.
    payment_id, intent_id = new_payment()
    await ledger.publish(C, command(payment_id, CommandKind.CREATE, 1, 1000))
    await ledger.payment_events(payment_id, 1)
    await ledger.publish(
        W,
        webhook(
            payment_id,
            "payment_intent.succeeded",
            intent(intent_id, "succeeded", amount_received=1000),
            t0 + 1,
        ),
    )
    events = await ledger.payment_events(payment_id, 2)
    assert_timeline(events)
    assert len(events) == 2
    assert payloads(events)[-1].status_after is S.SUCCEEDED

    letters = await ledger.read(
        TopicRole.REJECTED,
        set(sent),
        lambda found: {e.aggregate_id.encode() for e in found} == set(sent),
    )
    by_key: dict[bytes, list[Envelope]] = {}
    for envelope in letters:
        by_key.setdefault(envelope.aggregate_id.encode(), []).append(envelope)
    outcome = {
        key.decode(): (len(found), _letter(found[0]).reason) for key, found in by_key.items()
    }
    assert outcome == {key.decode(): (1, reason.value) for key, (reason, *_) in sent.items()}
    for key, (_, role, value, metadata) in sent.items():
        (envelope,) = by_key[key]
        letter = _letter(envelope)
        assert envelope.producer == WORKER_SOURCE
        assert letter.error_class == agents.POISON_ERROR_CLASS == "invalid-envelope"
        assert (letter.original_topic, letter.original_partition, letter.original_offset) == (
            ledger.topic(role),
            metadata.partition,
            metadata.offset,
        )
        assert letter.original_bytes == value
        assert letter.original_sha256 == hashlib.sha256(value).digest()
        assert letter.original_event_id is None
        assert letter.detail


# ---- keys ---------------------------------------------------------------------------


async def test_a_record_signed_by_a_key_endorsed_after_the_worker_started_is_applied(
    ledger: Ledger,
) -> None:
    # The worker is up, its key ring read: it has applied a CREATE.
    started, _ = new_payment()
    await ledger.publish(C, command(started, CommandKind.CREATE, 1, 1000))
    await ledger.payment_events(started, 1)
    # Then another process (the ingress) rotates: a new key, endorsed by the root,
    # in the shared key directory; its publisher announces it on the keys topic.
    settings = ledger.settings
    directory = settings.keys_dir / "event"
    rotated = FileSigner.generate()
    rotated.save(directory / f"{rotated.key_id}.seed")
    endorsement = ledger.store.root().endorse(
        rotated,
        not_before=datetime.now(UTC),
        lifetime=timedelta(seconds=settings.signing_key_lifetime_s),
    )
    (directory / f"{rotated.key_id}.json").write_text(
        json.dumps(endorsement_to_json(endorsement), indent=2) + "\n"
    )
    ingress = ActiveSigner(KeyStore(settings))
    assert ingress.current()[0].key_id == rotated.key_id

    payment_id, _ = new_payment()
    first = command(payment_id, CommandKind.CREATE, 1, 1000)
    async with kafka_publisher(
        settings, ledger.codec, ingress, source="/payledger/ingress"
    ) as publisher:
        await publisher.publish(ledger.topic(C), first)
    # The same payment's CREATE again, signed by the key the worker started
    # with: whichever of the two the worker applies, exactly one is applied.
    second = command(payment_id, CommandKind.CREATE, 2, 1000)
    await ledger.publish(C, second)
    (created,) = await ledger.payment_events(payment_id, 1)
    assert created.causation_id == first.event_id, "the CREATE signed by the new key was refused"


# ---- a webhook while its command calls the provider ---------------------------------


async def test_a_webhook_applied_while_its_command_calls_the_provider_is_not_lost(
    ledger: Ledger, stripe_gate: tuple[StripeGate, int]
) -> None:
    gate, _ = stripe_gate
    payment_id, intent_id = new_payment()
    t0 = provider_time()
    await ledger.publish(
        C, command(payment_id, CommandKind.CREATE, 1, 1000, capture=CaptureMethod.MANUAL)
    )
    await ledger.payment_events(payment_id, 1)
    capturable = intent(intent_id, "requires_capture", amount_capturable=1000)
    await ledger.publish(
        W, webhook(payment_id, "payment_intent.amount_capturable_updated", capturable, t0 + 1)
    )
    await ledger.payment_events(payment_id, 2)

    gate.close()
    try:
        await ledger.publish(C, command(payment_id, CommandKind.CAPTURE, 2, 1000))
        assert await asyncio.to_thread(gate.held.wait, READ_TIMEOUT_S), "no capture call"
        # Stripe's webhook of the capture arrives while the capture call is in flight.
        succeeded = await ledger.publish(
            W,
            webhook(
                payment_id,
                "payment_intent.succeeded",
                intent(intent_id, "succeeded", amount_received=1000),
                t0 + 2,
            ),
        )
        # A worker that applies it now does so within the wait; one that waits for
        # the command applies it after the gate opens. Shorter than the call's tries.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(IN_FLIGHT_WAIT_S):
                await ledger.read(
                    TopicRole.PAYMENT_EVENTS,
                    {payment_id.encode()},
                    lambda found: succeeded.envelope.event_id in {e.causation_id for e in found},
                )
    finally:
        gate.open()
    events = await ledger.payment_events(payment_id, 4)
    assert_timeline(events)
    assert sorted(p.kind for p in payloads(events)) == sorted(
        [K.CREATED, K.AUTHORIZED, K.CAPTURE_REQUESTED, K.CAPTURED]
    )
    assert max(payloads(events), key=lambda p: p.captured_minor).captured_minor == 1000

    # The table kept both: the capture is there to refund.
    await ledger.publish(C, command(payment_id, CommandKind.REFUND, 3, 1000))
    events = await ledger.payment_events(payment_id, 5)
    assert_timeline(events)
    refund = payloads(events)[-1]
    assert (refund.kind, refund.captured_minor) == (K.REFUND_REQUESTED, 1000)

"""The stream worker end to end on a Stripe manual-capture payment, provider calls included.

CREATE (manual) -> authorization webhook -> partial CAPTURE -> capture webhook
-> partial REFUND -> refund webhook -> REFUND of the rest -> refund webhook.
The worker runs as a subprocess against the session's Kafka and stripe-mock
(as in ``test_streams_slice``); every capture and refund is a real call to
stripe-mock, and none may fail.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ledger.codec import EnvelopeCodec
from ledger.config import Settings
from ledger.envelope import (
    AuditFact,
    CaptureMethod,
    CommandKind,
    Envelope,
    Money,
    PaymentCommand,
    PaymentEvent,
    PaymentEventKind,
    PostingSide,
    Provider,
    new_envelope,
)
from ledger.keystore import ActiveSigner, KeyStore
from ledger.payments.status import PaymentStatus
from ledger.registry import FileSchemaRegistry
from ledger.topics import TopicRole, topic_name
from streams.provision import provision_topics
from streams.publisher import kafka_publisher
from tests.integration.test_envelope_kafka import auditor, read_all
from tests.support.streams import running_worker, stripe_delivery

pytestmark = pytest.mark.integration

WEBHOOK_SECRET = "whsec_streams_flows_test"
INTENT = "pi_flows"
CHARGE = "ch_flows"


@pytest.fixture
async def settings(tmp_path: Path, provider_mocks: Settings) -> Settings:
    settings = provider_mocks.model_copy(
        update={"topic_prefix": f"s{uuid.uuid4().hex[:10]}.", "state_dir": tmp_path}
    )
    report = await provision_topics(settings)
    assert report.ok, report.mismatches
    return settings


@pytest.fixture
def worker(settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    with running_worker(settings) as process:
        yield process


def command(payment_id: str, kind: CommandKind, n: int, amount: int | None = None) -> Envelope:
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
            capture_method=CaptureMethod.MANUAL if kind is CommandKind.CREATE else None,
            description="streams flows" if kind is CommandKind.CREATE else None,
        ),
    )


def webhook(payment_id: str, event_type: str, obj: dict[str, Any], created: int) -> Envelope:
    return stripe_delivery(payment_id, event_type, obj, secret=WEBHOOK_SECRET, created=created)


def intent(status: str, **counters: int) -> dict[str, Any]:
    return {
        "id": INTENT,
        "object": "payment_intent",
        "amount": 1000,
        "currency": "usd",
        "status": status,
        **counters,
    }


def charge(refunded: int) -> dict[str, Any]:
    return {
        "id": CHARGE,
        "object": "charge",
        "amount": 1000,
        "currency": "usd",
        "status": "succeeded",
        "payment_intent": INTENT,
        "amount_refunded": refunded,
    }


async def test_manual_capture_partial_capture_partial_then_full_refund(
    settings: Settings, worker
) -> None:
    store = KeyStore(settings)
    registry = FileSchemaRegistry(settings.registry_dir)
    commands = topic_name(settings, TopicRole.COMMANDS)
    webhooks = topic_name(settings, TopicRole.PROVIDER_EVENTS)
    events_topic = topic_name(settings, TopicRole.PAYMENT_EVENTS)
    payment_id = f"pay_{uuid.uuid4().hex[:12]}"
    t0 = int(time.time())
    # Built when published: an envelope is recorded after the key that signs it exists.
    steps: list[tuple[str, Callable[[], Envelope]]] = [
        (commands, lambda: command(payment_id, CommandKind.CREATE, 1, 1000)),
        (
            webhooks,
            lambda: webhook(
                payment_id,
                "payment_intent.amount_capturable_updated",
                intent("requires_capture", amount_capturable=1000),
                t0 + 1,
            ),
        ),
        (commands, lambda: command(payment_id, CommandKind.CAPTURE, 2, 600)),
        (
            webhooks,
            lambda: webhook(
                payment_id,
                "payment_intent.succeeded",
                intent("succeeded", amount_received=600),
                t0 + 2,
            ),
        ),
        (commands, lambda: command(payment_id, CommandKind.REFUND, 3, 200)),
        (webhooks, lambda: webhook(payment_id, "charge.refunded", charge(200), t0 + 3)),
        (commands, lambda: command(payment_id, CommandKind.REFUND, 4)),
        (webhooks, lambda: webhook(payment_id, "charge.refunded", charge(600), t0 + 4)),
    ]
    async with kafka_publisher(
        settings, EnvelopeCodec(registry), ActiveSigner(store), source="/payledger/test"
    ) as publisher:
        for done, (topic, build) in enumerate(steps, start=1):
            await publisher.publish(topic, build())
            # Commands and webhooks are on different topics: one step at a time.
            await read_all(settings, events_topic, done)

    verifier = await auditor(settings, store, registry)
    opened = [verifier.open(r.value) for r in await read_all(settings, events_topic, len(steps))]
    ours = sorted((e for e in opened if e.aggregate_id == payment_id), key=lambda e: e.sequence)
    assert [e.sequence for e in ours] == list(range(1, len(steps) + 1))
    payloads = [e.payload for e in ours]
    assert all(isinstance(p, PaymentEvent) for p in payloads)
    kinds = [p.kind for p in payloads]  # type: ignore[union-attr]
    K = PaymentEventKind
    assert kinds == [
        K.CREATED,
        K.AUTHORIZED,
        K.CAPTURE_REQUESTED,
        K.CAPTURED,
        K.REFUND_REQUESTED,
        K.REFUNDED,
        K.REFUND_REQUESTED,
        K.REFUNDED,
    ], kinds
    last = payloads[-1]
    assert isinstance(last, PaymentEvent)
    assert last.status_after is PaymentStatus.REFUNDED
    assert (last.authorized_minor, last.captured_minor, last.refunded_minor) == (1000, 600, 600)
    assert payloads[6].amount == Money(400, "USD"), "a refund without an amount: the rest"  # type: ignore[union-attr]
    postings = [posting for p in payloads for posting in p.postings]  # type: ignore[union-attr]
    assert postings
    for currency in {p.currency for p in postings}:
        side = {PostingSide.DEBIT: 0, PostingSide.CREDIT: 0}
        for posting in postings:
            if posting.currency == currency:
                side[posting.side] += posting.amount_minor
        assert side[PostingSide.DEBIT] == side[PostingSide.CREDIT] > 0
    # Every provider call (create, capture, two refunds) succeeded at stripe-mock.
    facts = [
        verifier.open(r.value).payload
        for r in await read_all(settings, topic_name(settings, TopicRole.AUDIT_FACTS), 0)
    ]
    failed = [f for f in facts if isinstance(f, AuditFact) and f.subject == payment_id]
    assert failed == [], (settings.state_dir / "worker.log").read_text()[-4000:]

"""The stream worker end to end on a Stripe manual-capture payment, provider calls included.

CREATE (manual) -> authorization webhook -> partial CAPTURE -> capture webhook
-> partial REFUND -> refund webhook -> REFUND of the rest -> refund webhook.
The worker runs as a subprocess against the session's Kafka and stripe-mock
(as in ``test_streams_slice``); every capture and refund is a real call to
stripe-mock, and none may fail.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ingress.webhooks import stripe as stripe_webhooks
from ledger import limits
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
from tests.support.webhooks import stripe_header

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
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
    env = {
        **os.environ,
        "PAYLEDGER_TOPIC_PREFIX": settings.topic_prefix,
        "PAYLEDGER_STATE_DIR": str(settings.state_dir),
        "PAYLEDGER_STRIPE_MOCK_PORT": str(settings.stripe_mock_port),
        "PAYLEDGER_STRIPE_MOCK_HTTPS_PORT": str(settings.stripe_mock_https_port),
        "PAYLEDGER_PAYPAL_MOCK_PORT": str(settings.paypal_mock_port),
        "PAYLEDGER_PAYPAL_MOCK_ORDERS_PORT": str(settings.paypal_mock_orders_port),
        "PAYLEDGER_PAYPAL_MOCK_PAYMENTS_PORT": str(settings.paypal_mock_payments_port),
        "PAYLEDGER_COINBASE_MOCK_PORT": str(settings.coinbase_mock_port),
    }
    log = (settings.state_dir / "worker.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "streams.worker"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=limits.STREAMS_SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail("the worker did not stop on SIGTERM")
        finally:
            log.close()
        assert code in (0, -signal.SIGTERM), (settings.state_dir / "worker.log").read_text()


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
    """A signed, verified and normalized Stripe delivery, as ingress records it."""
    body = json.dumps(
        {
            "id": f"evt_{uuid.uuid4().hex[:16]}",
            "object": "event",
            "type": event_type,
            "created": created,
            "livemode": False,
            "data": {"object": {**obj, "metadata": {"payledger_payment_id": payment_id}}},
        }
    ).encode()
    header = stripe_header(WEBHOOK_SECRET, int(time.time()), body)
    stripe_webhooks.verify(
        header, body, secrets=[WEBHOOK_SECRET.encode()], now=datetime.now(UTC), tolerance_s=300
    )
    event = stripe_webhooks.normalize(body)
    return new_envelope(
        event_type=event.envelope_type,
        aggregate_id=event.aggregate_id(),
        sequence=1,
        producer="/payledger/ingress",
        occurred_at=event.occurred_at,
        payload=event.provider_event(
            received_at=datetime.now(UTC), body_sha256=hashlib.sha256(body).digest()
        ),
    )


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

"""The stream worker end to end: a signed CREATE, a Stripe webhook, a poison record.

The worker runs as a subprocess (``python -m streams.worker``) against a fresh
topic prefix, the session's Kafka and stripe-mock; it shares the test's key
directory, and everything it emits must verify for an auditor that starts
from the root key and learns event keys from the keys topic.
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
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from ingress.webhooks import stripe as stripe_webhooks
from ledger import limits
from ledger.codec import EnvelopeCodec
from ledger.config import Settings
from ledger.envelope import (
    CaptureMethod,
    CommandKind,
    DeadLetter,
    Envelope,
    Money,
    PaymentCommand,
    PaymentEvent,
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
WEBHOOK_SECRET = "whsec_streams_slice_test"


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


def create(payment_id: str) -> Envelope:
    return new_envelope(
        event_type="payment.command.create",
        aggregate_id=payment_id,
        sequence=1,
        producer="payledger/test",
        payload=PaymentCommand(
            command=CommandKind.CREATE,
            merchant_id="mer_42",
            idempotency_key=f"idem-{payment_id}",
            provider=Provider.STRIPE,
            amount=Money(1050, "USD"),
            capture_method=CaptureMethod.AUTOMATIC,
            description="streams slice",
        ),
    )


def succeeded(payment_id: str) -> Envelope:
    """A signed, verified and normalized Stripe delivery, as ingress records it."""
    body = json.dumps(
        {
            "id": f"evt_{uuid.uuid4().hex[:16]}",
            "object": "event",
            "type": "payment_intent.succeeded",
            "created": int(time.time()),
            "livemode": False,
            "data": {
                "object": {
                    "id": "pi_slice",
                    "object": "payment_intent",
                    "amount": 1050,
                    "amount_received": 1050,
                    "currency": "usd",
                    "status": "succeeded",
                    "metadata": {"payledger_payment_id": payment_id},
                }
            },
        }
    ).encode()
    now = int(time.time())
    header = stripe_header(WEBHOOK_SECRET, now, body)
    from datetime import UTC, datetime

    stripe_webhooks.verify(
        header, body, secrets=[WEBHOOK_SECRET.encode()], now=datetime.now(UTC), tolerance_s=300
    )
    event = stripe_webhooks.normalize(body)
    received_at = datetime.now(UTC)
    return new_envelope(
        event_type=event.envelope_type,
        aggregate_id=event.aggregate_id(),
        sequence=1,
        producer="/payledger/ingress",
        occurred_at=event.occurred_at,
        payload=event.provider_event(
            received_at=received_at, body_sha256=hashlib.sha256(body).digest()
        ),
    )


async def test_create_then_webhook_then_poison(settings: Settings, worker) -> None:
    store = KeyStore(settings)
    registry = FileSchemaRegistry(settings.registry_dir)
    publisher = kafka_publisher(
        settings, EnvelopeCodec(registry), ActiveSigner(store), source="/payledger/test"
    )
    commands = topic_name(settings, TopicRole.COMMANDS)
    payment_id = f"pay_{uuid.uuid4().hex[:12]}"
    after_poison = f"pay_{uuid.uuid4().hex[:12]}"
    async with publisher:
        await publisher.publish(commands, create(payment_id))
        # A webhook follows the provider call: wait until the payment exists.
        await read_all(settings, topic_name(settings, TopicRole.PAYMENT_EVENTS), 1)
        await publisher.publish(
            topic_name(settings, TopicRole.PROVIDER_EVENTS), succeeded(payment_id)
        )
    raw = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers(), acks="all")
    await raw.start()
    try:
        await raw.send_and_wait(
            commands, b"\x00garbage, not an envelope", key=after_poison.encode()
        )
    finally:
        await raw.stop()
    async with kafka_publisher(
        settings, EnvelopeCodec(registry), ActiveSigner(store), source="/payledger/test"
    ) as publisher:
        await publisher.publish(commands, create(after_poison))

    verifier = await auditor(settings, store, registry)
    events_topic = topic_name(settings, TopicRole.PAYMENT_EVENTS)
    opened = [verifier.open(r.value) for r in await read_all(settings, events_topic, 3)]
    ours = sorted((e for e in opened if e.aggregate_id == payment_id), key=lambda e: e.sequence)
    assert [e.sequence for e in ours] == list(range(1, len(ours) + 1))
    assert len(ours) == 2, [e.event_type for e in ours]
    payloads = [e.payload for e in ours]
    assert all(isinstance(p, PaymentEvent) for p in payloads)
    assert payloads[-1].status_after is PaymentStatus.SUCCEEDED
    postings = [posting for p in payloads for posting in p.postings]
    assert postings, "a capture moves money"
    for currency in {p.currency for p in postings}:
        side = {PostingSide.DEBIT: 0, PostingSide.CREDIT: 0}
        for posting in postings:
            if posting.currency == currency:
                side[posting.side] += posting.amount_minor
        assert side[PostingSide.DEBIT] == side[PostingSide.CREDIT] > 0
    # The command after the poison record was processed too.
    assert [e.sequence for e in opened if e.aggregate_id == after_poison] == [1]

    rejected = [
        verifier.open(r.value)
        for r in await read_all(settings, topic_name(settings, TopicRole.REJECTED), 1)
    ]
    (letter,) = [e.payload for e in rejected]
    assert isinstance(letter, DeadLetter)
    assert letter.original_topic == commands
    assert letter.reason
    assert letter.original_bytes == b"\x00garbage, not an envelope"

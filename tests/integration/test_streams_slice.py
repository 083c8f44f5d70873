"""The stream worker end to end: a signed CREATE, a Stripe webhook, a poison record.

The worker runs as a subprocess (``python -m streams.worker``) against a fresh
topic prefix, the session's Kafka and stripe-mock; it shares the test's key
directory, and everything it emits must verify for an auditor that starts
from the root key and learns event keys from the keys topic.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

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
from tests.support.streams import running_worker, succeeded_intent

pytestmark = pytest.mark.integration

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
    with running_worker(settings) as process:
        yield process


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
    return succeeded_intent(payment_id, "pi_slice", secret=WEBHOOK_SECRET)


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

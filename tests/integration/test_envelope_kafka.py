"""Signed envelopes through a real Kafka broker, verified the way an auditor would.

The verifier in these tests trusts only the root key: every event key it
accepts comes from an endorsement it read back from the keys topic.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from ledger.cloudevents import header_value
from ledger.codec import EnvelopeCodec
from ledger.config import Settings
from ledger.errors import InvalidEnvelope, Reason
from ledger.keys import KeyRing
from ledger.keystore import ActiveSigner, KeyStore
from ledger.registry import FileSchemaRegistry
from ledger.signing import FileSigner
from ledger.topics import TopicRole, topic_name
from ledger.verify import Verifier
from streams.provision import provision_topics
from streams.publisher import Publisher, kafka_publisher
from tests.support import events

pytestmark = pytest.mark.integration

READ_TIMEOUT_S = 30.0


@pytest.fixture
async def settings(tmp_path: Path) -> Settings:
    # A fresh topic prefix and key directory per test; the broker is the session's.
    settings = Settings(topic_prefix=f"e{uuid.uuid4().hex[:10]}.", state_dir=tmp_path)
    report = await provision_topics(settings)
    assert report.ok, report.mismatches
    return settings


@pytest.fixture
def store(settings: Settings) -> KeyStore:
    return KeyStore(settings)


@pytest.fixture
def registry(settings: Settings) -> FileSchemaRegistry:
    return FileSchemaRegistry(settings.registry_dir)


@pytest.fixture
async def publisher(
    settings: Settings, store: KeyStore, registry: FileSchemaRegistry
) -> AsyncIterator[Publisher]:
    publisher = kafka_publisher(
        settings,
        EnvelopeCodec(registry),
        ActiveSigner(store),
        source="/payledger/test",
        transactional_id=f"test-{uuid.uuid4().hex}",
    )
    await publisher.start()
    yield publisher
    await publisher.stop()


async def read_all(settings: Settings, topic: str, expected: int) -> list:
    """Every committed record of a topic from offset 0, waiting for at least ``expected``."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.bootstrap_servers(),
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    records: list = []
    try:
        async with asyncio.timeout(READ_TIMEOUT_S):
            while len(records) < expected:
                batch = await consumer.getmany(timeout_ms=500)
                for messages in batch.values():
                    records.extend(messages)
        # Whatever else is there arrives within a short extra wait.
        batch = await consumer.getmany(timeout_ms=1000)
        for messages in batch.values():
            records.extend(messages)
    finally:
        await consumer.stop()
    return records


async def auditor(settings: Settings, store: KeyStore, registry) -> Verifier:
    """A verifier that starts from the root alone and learns keys from the keys topic."""
    verifier = Verifier(EnvelopeCodec(registry), KeyRing([store.trusted_root()]))
    for record in await read_all(settings, topic_name(settings, TopicRole.KEYS), 1):
        verifier.admit_endorsement(record.value)
    return verifier


async def test_committed_records_verify_and_aborted_ones_are_invisible(
    settings, store, registry, publisher
) -> None:
    topic = topic_name(settings, TopicRole.COMMANDS)
    committed = [events.create_command(payment_id=f"pay_{n}") for n in range(5)]
    async with publisher.transaction():
        published = await publisher.publish_many(topic, committed)
    aborted = events.create_command(payment_id="pay_aborted")
    with pytest.raises(RuntimeError, match="abort"):
        async with publisher.transaction():
            await publisher.publish(topic, aborted)
            raise RuntimeError("abort this transaction")
    async with publisher.transaction():
        last = await publisher.publish(topic, events.create_command(payment_id="pay_after"))

    verifier = await auditor(settings, store, registry)
    records = await read_all(settings, topic, 6)
    opened = [verifier.open(record.value) for record in records]
    ids = {envelope.event_id for envelope in opened}
    assert ids == {p.envelope.event_id for p in published} | {last.envelope.event_id}
    assert aborted.event_id not in ids
    by_id = {envelope.event_id: envelope for envelope in opened}
    for item in published:
        assert by_id[item.envelope.event_id] == item.envelope
    for record in records:
        envelope = by_id[header_value(record.headers, "ce_id").decode()]
        assert record.key == envelope.aggregate_id.encode()
        assert header_value(record.headers, "ce_type") == envelope.event_type.encode()
        assert header_value(record.headers, "ce_specversion") == b"1.0"
        assert header_value(record.headers, "traceparent") is not None


async def test_a_flipped_byte_in_a_stored_record_fails(
    settings, store, registry, publisher
) -> None:
    source = topic_name(settings, TopicRole.COMMANDS)
    target = topic_name(settings, TopicRole.REJECTED)
    async with publisher.transaction():
        await publisher.publish(source, events.create_command())
    original = (await read_all(settings, source, 1))[0].value
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 0x01
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers(), acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(target, bytes(tampered), key=b"pay_0001")
    finally:
        await producer.stop()
    stored = (await read_all(settings, target, 1))[0].value
    assert stored == bytes(tampered)
    verifier = await auditor(settings, store, registry)
    verifier.open(original)
    with pytest.raises(InvalidEnvelope) as caught:
        verifier.open(stored)
    assert caught.value.reason in (Reason.BAD_SIGNATURE, Reason.MALFORMED)


async def test_a_record_signed_by_an_unendorsed_key_fails(
    settings, store, registry, publisher
) -> None:
    topic = topic_name(settings, TopicRole.COMMANDS)
    codec = EnvelopeCodec(registry)
    _, forged = codec.encode(events.create_command(), FileSigner.generate(), topic)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers(), acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        await producer.send_and_wait(topic, forged, key=b"pay_0001")
    finally:
        await producer.stop()
    verifier = await auditor(settings, store, registry)
    (record,) = await read_all(settings, topic, 1)
    with pytest.raises(InvalidEnvelope) as caught:
        verifier.open(record.value)
    assert caught.value.reason is Reason.UNKNOWN_KEY


async def test_a_forged_endorsement_on_the_keys_topic_is_refused(settings, store, registry) -> None:
    # An attacker with write access to Kafka but not to the root key.
    rogue_store = KeyStore(settings.model_copy(update={"state_dir": settings.state_dir / "rogue"}))
    rogue = kafka_publisher(
        settings, EnvelopeCodec(registry), ActiveSigner(rogue_store), source="/rogue"
    )
    await rogue.start()
    await rogue.stop()
    verifier = Verifier(EnvelopeCodec(registry), KeyRing([store.trusted_root()]))
    (record,) = await read_all(settings, topic_name(settings, TopicRole.KEYS), 1)
    with pytest.raises(InvalidEnvelope) as caught:
        verifier.admit_endorsement(record.value)
    assert caught.value.reason is Reason.BAD_ENDORSEMENT
    assert len(verifier.keyring) == 0

"""The worker's state against real Kafka: keys learnt while it runs, table changes that commit.

* Event keys rotate while workers run: a record signed by a key endorsed after
  the worker started is verified once the worker has read its endorsement from
  the keys topic; a key whose endorsement does not verify stays unknown and its
  record is dead-lettered (``unknown-key``).
* Every payment whose domain events are committed has its table change
  committed too: after a clean stop, the table's changelog (read_committed)
  holds each payment at the sequence of its last committed event, and a
  restarted worker applies the next webhook instead of holding it. Those
  webhooks sit on provider-events partitions the group never committed on
  (they were empty during the first run): the restarted worker must read them
  from their beginning, not from wherever a fetch made before its seek left
  them (``streams/recovery.py``).
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from ledger.codec import EnvelopeCodec
from ledger.config import Settings
from ledger.endorsements import endorsement_envelope
from ledger.envelope import (
    CaptureMethod,
    CommandKind,
    DeadLetter,
    Envelope,
    Money,
    PaymentCommand,
    PaymentEvent,
    Provider,
    new_envelope,
    utc_now,
)
from ledger.errors import InvalidEnvelope, Reason
from ledger.keys import KeyRing
from ledger.keystore import ActiveSigner, KeyStore
from ledger.payments.status import PaymentStatus
from ledger.registry import FileSchemaRegistry
from ledger.signing import FileSigner
from ledger.topics import TopicRole, topic_name
from ledger.verify import Verifier
from streams import state as state_codec
from streams.app import APP_NAME, TABLE_NAME
from streams.provision import provision_topics
from streams.publisher import kafka_publisher
from tests.integration.test_envelope_kafka import auditor, read_all
from tests.support.streams import running_worker, succeeded_intent

pytestmark = pytest.mark.integration

WEBHOOK_SECRET = "whsec_streams_state_test"
PAYMENTS = 150


@pytest.fixture
async def settings(tmp_path: Path, provider_mocks: Settings) -> Settings:
    settings = provider_mocks.model_copy(
        update={"topic_prefix": f"s{uuid.uuid4().hex[:10]}.", "state_dir": tmp_path}
    )
    report = await provision_topics(settings)
    assert report.ok, report.mismatches
    return settings


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
            description="streams state",
        ),
    )


async def publish_raw(settings: Settings, records: list[tuple[str, bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers(), acks="all")
    await producer.start()
    try:
        for topic, key, value in records:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def test_keys_endorsed_after_start_are_learnt_and_forged_ones_are_not(
    settings: Settings,
) -> None:
    store = KeyStore(settings)
    registry = FileSchemaRegistry(settings.registry_dir)
    codec = EnvelopeCodec(registry)
    commands = topic_name(settings, TopicRole.COMMANDS)
    keys_topic = topic_name(settings, TopicRole.KEYS)
    events_topic = topic_name(settings, TopicRole.PAYMENT_EVENTS)
    first, rotated, forged = (f"pay_{uuid.uuid4().hex[:12]}" for _ in range(3))
    with running_worker(settings):
        # A first payment under the key the worker could have read at start.
        async with kafka_publisher(
            settings, codec, ActiveSigner(store), source="/payledger/test"
        ) as publisher:
            await publisher.publish(commands, create(first))
        await read_all(settings, events_topic, 1)

        # Now a new key, endorsed by our root, announced on the keys topic.
        new_key = FileSigner.generate()
        endorsement = store.root().endorse(
            new_key, not_before=utc_now(), lifetime=timedelta(hours=1)
        )
        _, announcement = codec.encode(
            endorsement_envelope(endorsement, "/payledger/test"), new_key, keys_topic
        )
        # And a key endorsed by a root nobody trusts, announced the same way.
        stranger = FileSigner.generate()
        other_root = KeyStore(
            settings.model_copy(update={"state_dir": settings.state_dir / "elsewhere"})
        ).root()
        foreign = other_root.endorse(stranger, not_before=utc_now(), lifetime=timedelta(hours=1))
        _, foreign_announcement = codec.encode(
            endorsement_envelope(foreign, "/payledger/test"), stranger, keys_topic
        )
        _, by_new_key = codec.encode(create(rotated), new_key, commands)
        _, by_stranger = codec.encode(create(forged), stranger, commands)
        await publish_raw(
            settings,
            [
                (keys_topic, endorsement.key_id.encode(), announcement),
                (keys_topic, foreign.key_id.encode(), foreign_announcement),
                (commands, rotated.encode(), by_new_key),
                (commands, forged.encode(), by_stranger),
            ],
        )
        events = await read_all(settings, events_topic, 2)
        rejected = await read_all(settings, topic_name(settings, TopicRole.REJECTED), 1)

    # An auditor: the root alone, then every endorsement on the keys topic that verifies.
    verifier = Verifier(codec, KeyRing([store.trusted_root()]))
    refused = []
    for record in await read_all(settings, keys_topic, 3):
        try:
            verifier.admit_endorsement(record.value)
        except InvalidEnvelope as error:
            refused.append((record.key, error.reason))
    assert refused == [(foreign.key_id.encode(), Reason.BAD_ENDORSEMENT)]
    opened = [verifier.open(r.value) for r in events]
    assert sorted(e.aggregate_id for e in opened) == sorted([first, rotated])
    letters = [verifier.open(r.value) for r in rejected]
    assert [e.aggregate_id for e in letters] == [forged]
    (letter,) = [e.payload for e in letters]
    assert isinstance(letter, DeadLetter)
    assert (letter.error_class, letter.reason) == ("invalid-envelope", "unknown-key")


async def _created_then_stopped(settings: Settings, ids: list[str]) -> dict[str, state_codec.Entry]:
    """Run a worker over CREATEs for ``ids``, stop it; return the table as its changelog holds it."""
    store = KeyStore(settings)
    registry = FileSchemaRegistry(settings.registry_dir)
    commands = topic_name(settings, TopicRole.COMMANDS)
    events_topic = topic_name(settings, TopicRole.PAYMENT_EVENTS)
    with running_worker(settings):
        async with kafka_publisher(
            settings, EnvelopeCodec(registry), ActiveSigner(store), source="/payledger/test"
        ) as publisher:
            await publisher.publish_many(commands, [create(p) for p in ids])
        await read_all(settings, events_topic, len(ids))
    # Stopped with SIGTERM right after the last event committed.
    changelog = f"{settings.topic_prefix}{APP_NAME}-{TABLE_NAME}-changelog"
    table: dict[str, state_codec.Entry] = {}
    for record in await read_all(settings, changelog, len(ids)):
        table[record.key.decode()] = state_codec.loads_entry(record.value)
    return table


async def _webhooks(
    settings: Settings, table: dict[str, state_codec.Entry], ids: list[str]
) -> None:
    store = KeyStore(settings)
    registry = FileSchemaRegistry(settings.registry_dir)
    async with kafka_publisher(
        settings, EnvelopeCodec(registry), ActiveSigner(store), source="/payledger/test"
    ) as publisher:
        await publisher.publish_many(
            topic_name(settings, TopicRole.PROVIDER_EVENTS),
            [succeeded_intent(p, table[p].provider_ref or "", secret=WEBHOOK_SECRET) for p in ids],
        )


async def _all_succeeded(settings: Settings, ids: list[str]) -> None:
    store = KeyStore(settings)
    registry = FileSchemaRegistry(settings.registry_dir)
    events_topic = topic_name(settings, TopicRole.PAYMENT_EVENTS)
    records = await read_all(settings, events_topic, 2 * len(ids))
    verifier = await auditor(settings, store, registry)
    last: dict[str, PaymentEvent] = {}
    for record in records:
        envelope = verifier.open(record.value)
        assert isinstance(envelope.payload, PaymentEvent)
        if envelope.sequence == 2:
            last[envelope.aggregate_id] = envelope.payload
    assert sorted(last) == sorted(ids)
    assert {event.status_after for event in last.values()} == {PaymentStatus.SUCCEEDED}


async def test_table_changes_commit_with_their_events(settings: Settings) -> None:
    ids = [f"pay_{uuid.uuid4().hex[:12]}" for _ in range(PAYMENTS)]
    table = await _created_then_stopped(settings, ids)
    missing = [p for p in ids if p not in table or table[p].state is None]
    assert missing == [], f"{len(missing)} payments created without their table change"
    assert {table[p].state.sequence for p in ids} == {1}  # type: ignore[union-attr]
    assert all(table[p].provider_ref for p in ids), "the PaymentIntent id is kept"


async def test_a_restarted_worker_applies_the_webhooks_waiting_for_it(settings: Settings) -> None:
    ids = [f"pay_{uuid.uuid4().hex[:12]}" for _ in range(PAYMENTS)]
    table = await _created_then_stopped(settings, ids)
    await _webhooks(settings, table, ids)
    with running_worker(settings):
        await _all_succeeded(settings, ids)

"""The anchoring worker against the real Kafka and Postgres.

Signed events go to several ledger topics (and one record that is no
envelope at all to the rejected topic); the worker appends every one of them
to the Merkle log in Postgres and checkpoints it. Then, from Postgres and
Kafka alone:

- every committed record of every ledger topic is exactly one leaf, each
  partition's records in offset order, and each leaf is the record's;
- inclusion proofs served by the store verify against the signed checkpoint;
- successive checkpoints are consistent, and the checkpoints topic holds them;
- killed with SIGKILL mid-run and restarted, the worker's log has the size and
  root of a fresh rebuild over the same records read back from Kafka.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from psycopg import sql

from anchoring import pgstore
from anchoring.publication import CheckpointEncoder
from anchoring.worker import UNDECODABLE_EVENT_ID, Worker, leaf_of, ledger_topics
from ledger.codec import EnvelopeCodec
from ledger.config import Settings
from ledger.envelope import Envelope
from ledger.keystore import ActiveSigner, KeyStore
from ledger.registry import FileSchemaRegistry
from ledger.tlog.checkpoint import verify_checkpoint, verify_log_growth
from ledger.tlog.keys import load_or_create_anchoring_key
from ledger.tlog.leaf import LeafRecord
from ledger.tlog.merkle import EMPTY_ROOT, verify_inclusion
from ledger.tlog.tree import MerkleTree
from ledger.topics import TopicRole, topic_name
from streams.provision import provision_topics
from streams.publisher import Published, kafka_publisher
from tests.support import events
from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.integration

WAIT_TIMEOUT_S = 300.0
SHUTDOWN_TIMEOUT_S = 60.0
POLL_S = 0.05


@pytest.fixture
async def settings(tmp_path: Path) -> AsyncIterator[Settings]:
    settings = Settings(
        topic_prefix=f"a{uuid.uuid4().hex[:10]}.",
        state_dir=tmp_path,
        anchoring_schema=f"at_{uuid.uuid4().hex[:12]}",
        anchoring_checkpoint_every_events=40,
        anchoring_checkpoint_interval_s=1.0,
        anchoring_batch_records=25,
    )
    report = await provision_topics(settings)
    assert report.ok, report.mismatches
    KeyStore(settings).active_key()
    yield settings
    async with await psycopg.AsyncConnection.connect(settings.dsn(), autocommit=True) as c:
        await c.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(settings.anchoring_schema)
            )
        )


# Publishing and reading back ------------------------------------------------------


async def publish(
    settings: Settings, role: TopicRole, envelopes: Sequence[Envelope]
) -> list[Published]:
    async with kafka_publisher(
        settings,
        EnvelopeCodec(FileSchemaRegistry(settings.registry_dir)),
        ActiveSigner(KeyStore(settings)),
        source="payledger/test",
    ) as publisher:
        return await publisher.publish_many(topic_name(settings, role), envelopes)


async def send_raw(settings: Settings, role: TopicRole, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers(), acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic_name(settings, role), value, key=b"raw", partition=1)
    finally:
        await producer.stop()


async def mixed_events(settings: Settings, count: int) -> dict[str, str]:
    """``count`` events over three ledger topics; returns event id by 'topic/partition/offset'."""
    published: list[Published] = []
    thirds = max(count // 3, 1)
    published += await publish(
        settings,
        TopicRole.COMMANDS,
        [events.create_command(payment_id=f"pay_{uuid.uuid4().hex[:10]}") for _ in range(thirds)],
    )
    published += await publish(
        settings,
        TopicRole.PROVIDER_EVENTS,
        [events.provider_event(payment_id=f"pay_{uuid.uuid4().hex[:10]}") for _ in range(thirds)],
    )
    published += await publish(
        settings, TopicRole.AUDIT_FACTS, [events.audit_fact() for _ in range(count - 2 * thirds)]
    )
    return {f"{p.topic}/{p.partition}/{p.offset}": p.envelope.event_id for p in published}


async def read_ledger(settings: Settings) -> dict[tuple[str, int, int], bytes]:
    """Every committed record of the ledger topics, from offset 0 to their ends now."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers(),
        isolation_level="read_committed",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    found: dict[tuple[str, int], bytes] = {}
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in ledger_topics(settings)
            for p in range(settings.topic_partitions)
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        async with asyncio.timeout(WAIT_TIMEOUT_S):
            while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        found[(record.topic, record.partition, record.offset)] = record.value or b""
    finally:
        await consumer.stop()
    return found


async def read_checkpoints_topic(settings: Settings, expected: int) -> list[dict]:
    consumer = AIOKafkaConsumer(
        topic_name(settings, TopicRole.CHECKPOINTS),
        bootstrap_servers=settings.bootstrap_servers(),
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    encoder = CheckpointEncoder(
        FileSchemaRegistry(settings.registry_dir), topic_name(settings, TopicRole.CHECKPOINTS)
    )
    await consumer.start()
    records: list[dict] = []
    try:
        async with asyncio.timeout(WAIT_TIMEOUT_S):
            while len(records) < expected:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    records += [encoder.decode(record.value or b"") for record in batch]
    finally:
        await consumer.stop()
    return records


# The log in Postgres ------------------------------------------------------------------


def log_size(settings: Settings) -> int:
    try:
        with pgstore.connect(settings.dsn(), settings.anchoring_schema) as connection:
            return pgstore.PostgresTreeStore(connection, settings.anchoring_schema).size()
    except psycopg.errors.UndefinedTable:
        return 0  # not migrated yet


def published_checkpoint(settings: Settings) -> pgstore.StoredCheckpoint | None:
    try:
        with pgstore.connect(settings.dsn(), settings.anchoring_schema) as connection:
            store = pgstore.PostgresTreeStore(connection, settings.anchoring_schema)
            latest = store.latest_checkpoint()
    except psycopg.errors.UndefinedTable:
        return None
    return latest if latest is not None and latest.published_at is not None else None


async def until(condition, alive=None) -> None:
    async with asyncio.timeout(WAIT_TIMEOUT_S):
        while not await asyncio.to_thread(condition):
            if alive is not None:
                alive()
            await asyncio.sleep(POLL_S)


def check_log(settings: Settings, kafka: dict[tuple[str, int, int], bytes]) -> MerkleTree:
    """The log is every Kafka record once, partitions in offset order, and rebuilds the same."""
    codec = EnvelopeCodec(FileSchemaRegistry(settings.registry_dir))
    with pgstore.opened(settings.dsn(), settings.anchoring_schema) as store:
        tree = MerkleTree(store)
        records = store.leaf_records(0, tree.size)
        positions = [(r.topic, r.partition, r.offset) for r in records]
        assert len(positions) == len(set(positions)), "a record is in the log twice"
        assert set(positions) == set(kafka), "the log and the topics differ"
        last: dict[tuple[str, int], int] = {}
        for topic, partition, offset in positions:
            assert last.get((topic, partition), -1) < offset, "a partition out of order"
            last[(topic, partition)] = offset
        # A fresh rebuild: the same records, read back from Kafka, in the log's order.
        rebuilt = MerkleTree()
        fresh = [
            leaf_of(_Record(topic, partition, offset, kafka[(topic, partition, offset)]), codec)
            for topic, partition, offset in positions
        ]
        assert fresh == records
        rebuilt.append_many([leaf.to_bytes() for leaf in fresh])
        assert (tree.size, tree.root()) == (rebuilt.size, rebuilt.root())
        # The tree read back through proofs, against a memory copy.
        size = tree.size
        copy = MerkleTree()
        copy.append_many([leaf.to_bytes() for leaf in records])
        for index in {0, size // 3, size - 1}:
            assert tree.inclusion_proof(index, size) == copy.inclusion_proof(index, size)
        return copy


class _Record:
    def __init__(self, topic: str, partition: int, offset: int, value: bytes) -> None:
        self.topic, self.partition, self.offset, self.value = topic, partition, offset, value


def check_checkpoints(settings: Settings, tree: MerkleTree, records: Sequence[LeafRecord]) -> list:
    """Every stored checkpoint verifies, extends the previous one, and proves the leaves."""
    key = load_or_create_anchoring_key(settings, settings.anchoring_origin).public
    with pgstore.opened(settings.dsn(), settings.anchoring_schema) as store:
        stored = store.checkpoints()
        pg_tree = MerkleTree(store)
        previous_size, previous_root = 0, EMPTY_ROOT
        for checkpoint in stored:
            verified = verify_checkpoint(checkpoint.note, key)
            assert (verified.size, verified.root_hash) == (checkpoint.size, checkpoint.root_hash)
            assert verified.root_hash == tree.root(verified.size)
            assert checkpoint.previous_size == previous_size
            verify_log_growth(previous_size, previous_root, verified, checkpoint.consistency_proof)
            previous_size, previous_root = checkpoint.size, checkpoint.root_hash
        last = stored[-1]
        for index in range(0, last.size, max(last.size // 25, 1)):
            verify_inclusion(
                index,
                last.size,
                tree.leaf_hash(index),
                pg_tree.inclusion_proof(index, last.size),
                last.root_hash,
            )
        # By event id, as the ingress serves it.
        some = next(r for r in records if r.event_id != UNDECODABLE_EVENT_ID)
        (index,) = store.leaf_indexes(some.event_id)
        verify_inclusion(
            index,
            last.size,
            tree.leaf_hash(index),
            pg_tree.inclusion_proof(index, last.size),
            last.root_hash,
        )
    return stored


# Tests ---------------------------------------------------------------------------------


async def test_every_record_of_every_ledger_topic_is_a_leaf_and_checkpoints_prove_them(
    settings: Settings,
) -> None:
    event_ids = await mixed_events(settings, 150)
    await send_raw(settings, TopicRole.REJECTED, b"not an envelope at all")
    total = len(event_ids) + 1
    stop = asyncio.Event()
    hook = RecordingHook()
    worker = Worker(settings, hooks=[hook])
    task = asyncio.create_task(worker.run(stop))
    try:
        await until(lambda: log_size(settings) >= total, alive=lambda: _alive(task))
        # More events after the first checkpoints: the log goes on growing.
        event_ids |= await mixed_events(settings, 30)
        total += 30
        await until(
            lambda: (c := published_checkpoint(settings)) is not None and c.size == total,
            alive=lambda: _alive(task),
        )
        await until(lambda: hook.seen and hook.seen[-1] == total, alive=lambda: _alive(task))
    finally:
        stop.set()
        await asyncio.wait_for(task, SHUTDOWN_TIMEOUT_S)
    assert worker.totals.undecodable == 1
    kafka = await read_ledger(settings)
    assert len(kafka) == total
    tree = check_log(settings, kafka)
    with pgstore.opened(settings.dsn(), settings.anchoring_schema) as store:
        records = store.leaf_records(0, tree.size)
    for record in records:
        expected = event_ids.get(f"{record.topic}/{record.partition}/{record.offset}")
        assert record.event_id == (expected or UNDECODABLE_EVENT_ID)
    (raw,) = [r for r in records if r.topic == topic_name(settings, TopicRole.REJECTED)]
    assert raw == LeafRecord.of(
        raw.topic, 1, raw.offset, UNDECODABLE_EVENT_ID, b"not an envelope at all"
    )

    stored = check_checkpoints(settings, tree, records)
    assert len(stored) >= 2
    # The count bounds every checkpoint: never more than 40 new leaves.
    assert all(0 < c.size - c.previous_size <= 40 for c in stored)
    # The hook saw every checkpoint once, in order, though its first call failed.
    assert hook.failures == 1
    assert hook.seen == [c.size for c in stored]
    assert hook.leaves == [c.size - c.previous_size for c in stored]
    on_topic = await read_checkpoints_topic(settings, len(stored))
    assert [r["tree_size"] for r in on_topic][: len(stored)] == [c.size for c in stored]
    assert [r["note"] for r in on_topic][: len(stored)] == [c.note for c in stored]


class RecordingHook:
    """A checkpoint hook that fails its first call, then records what it is given."""

    name = "recording"

    def __init__(self) -> None:
        self.failures = 0
        self.seen: list[int] = []
        self.leaves: list[int] = []

    async def checkpoint_stored(self, checkpoint: pgstore.StoredCheckpoint, log_view) -> None:
        if not self.failures:
            self.failures += 1
            raise RuntimeError("the first call fails")
        leaves = await log_view.leaf_records(checkpoint.previous_size, checkpoint.size)
        self.seen.append(checkpoint.size)
        self.leaves.append(len(leaves))


def _alive(task: asyncio.Task) -> None:
    if task.done():
        raise AssertionError(f"the worker stopped: {task.exception()!r}")


def anchoring_process(settings: Settings) -> ServiceProcess:
    """``python -m anchoring.worker`` run by the test, so that it can be killed outright."""
    env = {
        **os.environ,
        "PAYLEDGER_TOPIC_PREFIX": settings.topic_prefix,
        "PAYLEDGER_STATE_DIR": str(settings.state_dir),
        "PAYLEDGER_POSTGRES_PORT": str(settings.postgres_port),
        "PAYLEDGER_ANCHORING_SCHEMA": settings.anchoring_schema,
        "PAYLEDGER_ANCHORING_CHECKPOINT_EVERY_EVENTS": "40",
        "PAYLEDGER_ANCHORING_CHECKPOINT_INTERVAL_S": "1",
        # Small batches: many transactions, so the kill lands between and in them.
        "PAYLEDGER_ANCHORING_BATCH_RECORDS": "5",
    }
    return ServiceProcess("anchoring", ["-m", "anchoring.worker"], env, settings.state_dir)


async def test_sigkill_mid_run_then_restart_equals_a_fresh_rebuild(settings: Settings) -> None:
    event_ids = await mixed_events(settings, 450)
    await send_raw(settings, TopicRole.REJECTED, b"\x00\x00\x00\x00")
    total = len(event_ids) + 1
    worker = anchoring_process(settings)
    try:
        worker.start()
        await until(lambda: log_size(settings) >= total // 3, alive=worker.alive)
        worker.kill()
        killed_at = log_size(settings)
        assert killed_at < total, "the kill must find work left to do"

        event_ids |= await mixed_events(settings, 60)
        total += 60
        worker.start()
        await until(
            lambda: (c := published_checkpoint(settings)) is not None and c.size == total,
            alive=worker.alive,
        )
        assert worker.terminate() == 0, worker.logs()
    finally:
        worker.cleanup()
    kafka = await read_ledger(settings)
    assert len(kafka) == total
    tree = check_log(settings, kafka)
    assert tree.size == total
    with pgstore.opened(settings.dsn(), settings.anchoring_schema) as store:
        records = store.leaf_records(0, tree.size)
    check_checkpoints(settings, tree, records)

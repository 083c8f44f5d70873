"""Merkle log throughput, each figure beside its limit measured in the same run.

1. leaves appended per second (leaf hash + interior nodes + store) vs raw hashlib
   SHA-256 of the same leaf bytes, once each: the limit (target: >= 200,000 leaves/s
   and >= 0.3x of the limit)
2. inclusion and consistency proofs generated and verified per second, at the full
   size, vs raw hashlib SHA-256 of as many 65-byte node inputs as a proof verification
   hashes (the limit of verification)
3. the worker end to end, against Kafka and Postgres: ``python -m anchoring.worker``
   (hooks off) drains a backlog of signed envelopes published in advance on the
   ledger topics of this run: records/s from Kafka into Postgres (read_committed,
   leaves, tree nodes and positions in one transaction per chunk), first commit to
   last, beside the in-memory append of (1) as a ratio
4. checkpoint latency: signed envelopes published paced at a fixed rate into the
   idle worker; per event, from its producer send acknowledged (acks=all: the event
   committed) to the first checkpoint covering its leaf read back from the
   checkpoints topic by a read_committed consumer of this process; p50, p99, max,
   split into its stages (leaf appended and checkpoint signed and stored, then
   published, then read back) with the times the worker records in Postgres

Keys and registry live in a scratch state directory of this run; its topics
(prefix ``bench<run>.``) are deleted and its schema dropped at the end. The stack
is started when not running and stopped again if this run started it.

Usage: python bench/anchoring.py [--count N] [--proofs N] [--backlog N] [--rate R]
       [--seconds S] [--interval T] [--every N] [--skip-kafka]
Figures only: this script asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import hashlib
import math
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent

if __name__ == "__main__":
    # Run as a script, this directory comes first on sys.path and this file
    # would shadow the ``anchoring`` package: put the repository first instead.
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH_DIR]
    sys.path.insert(0, os.fspath(ROOT))

from bench.common import BenchError, bench_stack, child_env, say
from ledger.tlog.leaf import LeafRecord
from ledger.tlog.merkle import verify_consistency, verify_inclusion
from ledger.tlog.tree import MerkleTree

REPEATS = 3


def best_rate(count: int, run: Callable[[], None]) -> float:
    """Operations per second: the best of a few runs, so noise from a shared machine hurts least."""
    rates = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        run()
        rates.append(count / (time.perf_counter() - started))
    return max(rates)


def line(name: str, value: float, unit: str, note: str = "") -> None:
    print(f"  {name:<48} {value:>12,.0f} {unit:<10} {note}")


def sample_records(count: int) -> list[LeafRecord]:
    topics = ["payledger.commands", "payledger.payment-events", "payledger.provider-events"]
    generator = random.Random(6)
    return [
        LeafRecord(
            topics[index % 3],
            index % 6,
            index // 6,
            str(
                uuid.UUID(int=generator.getrandbits(128), version=4)
            ),  # the same 36-character text as a UUIDv7
            hashlib.sha256(b"record %d" % index).digest(),
        )
        for index in range(count)
    ]


def bench_append(count: int) -> tuple[MerkleTree, float]:
    """The tree of ``count`` leaves, and the rate of ``append_many`` (leaves/s)."""
    records = sample_records(count)
    leaves = [record.to_bytes() for record in records]
    sha256 = hashlib.sha256

    def raw_hashlib() -> None:
        for leaf in leaves:
            sha256(leaf).digest()

    def encode_leaves() -> None:
        for record in records:
            record.to_bytes()

    def append_batch() -> None:
        MerkleTree().append_many(leaves)

    def append_one_by_one() -> None:
        tree = MerkleTree()
        for leaf in leaves:
            tree.append(leaf)

    limit = best_rate(count, raw_hashlib)
    batch = best_rate(count, append_batch)
    single = best_rate(count, append_one_by_one)
    encode = best_rate(count, encode_leaves)
    size = sum(map(len, leaves)) / count
    print(
        f"\nAppend, one core, {count:,} leaves of {size:.0f} bytes on average (best of {REPEATS})"
    )
    line("limit: raw hashlib SHA-256 of the leaf bytes", limit, "leaves/s")
    line(
        "payledger append_many (one batch)",
        batch,
        "leaves/s",
        f"ratio {batch / limit:.2f}x (target >= 0.3x and >= 200,000/s)",
    )
    line("payledger append (one call per leaf)", single, "leaves/s", f"ratio {single / limit:.2f}x")
    line("leaf bytes encoding (LeafRecord.to_bytes)", encode, "leaves/s")
    tree = MerkleTree()
    tree.append_many(leaves)
    return tree, batch


def bench_proofs(tree: MerkleTree, count: int) -> None:
    size = tree.size
    generator = random.Random(9)
    indexes = [generator.randrange(size) for _ in range(count)]
    firsts = [generator.randrange(1, size) for _ in range(count)]
    root = tree.root()
    old_roots = [tree.root(first) for first in firsts]
    leaf_hashes = [tree.leaf_hash(index) for index in indexes]

    inclusion: list[list[bytes]] = []
    consistency: list[list[bytes]] = []

    def generate_inclusion() -> None:
        inclusion[:] = [tree.inclusion_proof(index) for index in indexes]

    def generate_consistency() -> None:
        consistency[:] = [tree.consistency_proof(first) for first in firsts]

    def verify_inclusions() -> None:
        for index, leaf, proof in zip(indexes, leaf_hashes, inclusion, strict=True):
            verify_inclusion(index, size, leaf, proof, root)

    def verify_consistencies() -> None:
        for first, old_root, proof in zip(firsts, old_roots, consistency, strict=True):
            verify_consistency(first, size, old_root, root, proof)

    inclusion_generated = best_rate(count, generate_inclusion)
    consistency_generated = best_rate(count, generate_consistency)
    inclusion_verified = best_rate(count, verify_inclusions)
    consistency_verified = best_rate(count, verify_consistencies)

    # Verification hashes one 65-byte node input per proof hash (a consistency
    # proof: up to two). The limit does exactly that many raw hashes.
    inclusion_hashes = sum(map(len, inclusion)) / count
    consistency_hashes = sum(2 * len(proof) for proof in consistency) / count
    node_inputs = [b"\x01" + bytes(64)] * 100_000
    sha256 = hashlib.sha256

    def raw_node_hashes() -> None:
        for data in node_inputs:
            sha256(data).digest()

    node_rate = best_rate(len(node_inputs), raw_node_hashes)
    print(
        f"\nProofs at size {size:,}, {count:,} random leaves and earlier sizes (best of {REPEATS}); "
        f"{inclusion_hashes:.1f} hashes per inclusion proof, {consistency_hashes / 2:.1f} per consistency proof"
    )
    line("raw hashlib SHA-256 of 65-byte node inputs", node_rate, "hashes/s")
    line("inclusion proofs generated", inclusion_generated, "proofs/s")
    inclusion_limit = node_rate / inclusion_hashes
    line(
        "inclusion proofs verified",
        inclusion_verified,
        "proofs/s",
        f"ratio {inclusion_verified / inclusion_limit:.2f}x of raw hashing of its nodes",
    )
    line("consistency proofs generated", consistency_generated, "proofs/s")
    consistency_limit = node_rate / consistency_hashes
    line(
        "consistency proofs verified",
        consistency_verified,
        "proofs/s",
        f"ratio {consistency_verified / consistency_limit:.2f}x of raw hashing of its nodes",
    )


# --- the worker against Kafka and Postgres -------------------------------------------------


PUBLISH_CHUNK = 2_000
DRAIN_POLL_S = 0.02
PACE_TICK_S = 0.002
WAIT_TIMEOUT_S = 300.0
WATCH_POLL_MS = 100


class WorkerProcess:
    """``python -m anchoring.worker`` with this run's settings; stopped with SIGTERM."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.argv = [sys.executable, "-m", "anchoring.worker"]
        self.env, self.log_path = env, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        say("worker: starting")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    def check(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise BenchError(f"the worker exited with {self.process.returncode}:\n{self.tail()}")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            say(f"worker: stopping (SIGTERM, pid {self.process.pid})")
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                say("worker: did not stop on SIGTERM, killing it")
                self.process.kill()
                self.process.wait()
        self.process = None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class LogTables:
    """The worker's tables, read on a connection of this process."""

    def __init__(self, dsn: str, schema: str) -> None:
        self.dsn, self.schema = dsn, schema
        self.connection: Any = None

    async def open(self) -> None:
        import psycopg

        self.connection = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)

    async def _rows(self, query: str, *params: object) -> list[tuple[Any, ...]]:
        import psycopg
        from psycopg import sql

        statement = sql.SQL(query).format(schema=sql.Identifier(self.schema))
        try:
            cursor = await self.connection.execute(statement, params)
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
            return []  # not migrated yet
        return list(await cursor.fetchall())

    async def positions(self) -> dict[tuple[str, int], int]:
        rows = await self._rows(
            "SELECT topic, partition, next_offset FROM {schema}.consumed_positions"
        )
        return {(topic, partition): offset for topic, partition, offset in rows}

    async def leaf_indexes(self, start: int) -> dict[tuple[str, int, int], int]:
        rows = await self._rows(
            'SELECT topic, partition, "offset", leaf_index FROM {schema}.leaves'
            " WHERE leaf_index >= %s",
            start,
        )
        return {(topic, partition, offset): index for topic, partition, offset, index in rows}

    async def checkpoints(self) -> dict[int, tuple[float, float]]:
        """Tree size -> (stored, published), epoch seconds."""
        rows = await self._rows(
            "SELECT tree_size, created_at, published_at FROM {schema}.checkpoints"
        )
        return {
            size: (created.timestamp(), math.nan if published is None else published.timestamp())
            for size, created, published in rows
        }

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()


@dataclass(frozen=True, slots=True)
class Seen:
    """A checkpoint record read back from the checkpoints topic."""

    size: int
    at: float  # time.monotonic()
    wall: float  # time.time()


class CheckpointWatcher:
    """Every record of the checkpoints topic, read_committed, with the time it was read."""

    def __init__(self, settings: Any, topic: str) -> None:
        self.settings, self.topic = settings, topic
        self.seen: list[Seen] = []
        self._consumer: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap_servers(),
            client_id="payledger-bench-anchoring",
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
        )
        await self._consumer.start()
        await self._consumer.topics()  # the cluster's metadata, so partitions are known
        partitions = self._consumer.partitions_for_topic(self.topic) or {0}
        self._consumer.assign([TopicPartition(self.topic, p) for p in sorted(partitions)])
        self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=WATCH_POLL_MS)
            at, wall = time.monotonic(), time.time()
            for records in batches.values():
                self.seen += [Seen(int(r.key), at, wall) for r in records if r.key]

    def largest(self) -> int:
        if self._task is not None and self._task.done():
            self._task.result()  # its error, if it failed
        return max((seen.size for seen in self.seen), default=0)

    def first_seen(self) -> list[Seen]:
        """The first record of each size, smallest first."""
        firsts: dict[int, Seen] = {}
        for seen in self.seen:
            firsts.setdefault(seen.size, seen)
        return [firsts[size] for size in sorted(firsts)]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()


def sample_envelopes(count: int, prefix: str) -> list[tuple[Any, Any]]:
    """(topic role, unsigned envelope): payment commands and provider events, alternately."""
    from ledger.topics import TopicRole
    from tests.support import events

    made: list[tuple[Any, Any]] = []
    for index in range(count):
        payment = f"pay_{prefix}{index:07d}"
        if index % 2:
            made.append((TopicRole.PROVIDER_EVENTS, events.provider_event(payment_id=payment)))
        else:
            made.append(
                (TopicRole.COMMANDS, events.create_command(payment, amount_minor=100 + index))
            )
    return made


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


@dataclass
class Drain:
    records: int = 0
    publish_rate: float = 0.0
    first_commit_s: float = 0.0  # from the worker's start
    last_commit_s: float = 0.0
    at_first: int = 0  # records committed when the first commit was seen
    checkpoints: int = 0

    @property
    def rate(self) -> float:
        span = self.last_commit_s - self.first_commit_s
        return (self.records - self.at_first) / span if span > 0 else 0.0


@dataclass
class Latency:
    target_rate: float
    sent: int = 0
    send_span_s: float = 0.0
    checkpoints: int = 0
    total_ms: list[float] = field(default_factory=list)
    stored_ms: list[float] = field(default_factory=list)  # ack -> checkpoint stored
    # stored -> marked published in Postgres, once its Kafka transaction committed
    published_ms: list[float] = field(default_factory=list)
    read_ms: list[float] = field(default_factory=list)  # marked published -> read back
    leaves_per_checkpoint: float = 0.0
    checkpoint_gap_s: float = 0.0

    @property
    def rate(self) -> float:
        return (self.sent - 1) / self.send_span_s if self.send_span_s > 0 else 0.0


@dataclass
class EndToEnd:
    drain: Drain = field(default_factory=Drain)
    latency: Latency | None = None


async def drain_backlog(
    publisher: Any,
    settings: Any,
    worker: WorkerProcess,
    tables: LogTables,
    envelopes: Sequence[tuple[Any, Any]],
) -> Drain:
    from ledger.topics import topic_name

    result = Drain(records=len(envelopes))
    ends: dict[tuple[str, int], int] = {}
    started = time.perf_counter()
    by_topic: dict[str, list[Any]] = {}
    for role, envelope in envelopes:
        by_topic.setdefault(topic_name(settings, role), []).append(envelope)
    for topic, batch in by_topic.items():
        for start in range(0, len(batch), PUBLISH_CHUNK):
            for record in await publisher.publish_many(topic, batch[start : start + PUBLISH_CHUNK]):
                where = (record.topic, record.partition)
                ends[where] = max(ends.get(where, 0), record.offset + 1)
    result.publish_rate = len(envelopes) / (time.perf_counter() - started)
    say(f"published the backlog at {result.publish_rate:,.0f} events/s; draining it")

    started = time.monotonic()
    worker.start()
    deadline = started + WAIT_TIMEOUT_S
    while True:
        worker.check()
        committed = await tables.positions()
        now = time.monotonic() - started
        done = sum(min(committed.get(where, 0), end) for where, end in ends.items())
        if done and not result.first_commit_s:
            result.first_commit_s, result.at_first = now, done
        if done >= result.records:
            result.last_commit_s = now
            break
        if time.monotonic() > deadline:
            raise BenchError(f"the worker committed {done:,} of {result.records:,}")
        await asyncio.sleep(DRAIN_POLL_S)
    result.checkpoints = len(await tables.checkpoints())
    return result


async def paced_latency(
    publisher: Any,
    settings: Any,
    worker: WorkerProcess,
    tables: LogTables,
    watcher: CheckpointWatcher,
    envelopes: Sequence[tuple[Any, Any]],
    rate: float,
    before: int,
) -> Latency:
    """``envelopes`` at ``rate``/s into the idle worker, whose log holds ``before`` leaves."""
    from ledger.topics import topic_name

    result = Latency(target_rate=rate)
    count = len(envelopes)
    acked_at = [math.nan] * count
    acked_wall = [math.nan] * count

    def on_ack(index: int, future: asyncio.Future[Any]) -> None:
        acked_at[index], acked_wall[index] = time.monotonic(), time.time()

    acks: list[asyncio.Future[Any]] = []
    sent_at: list[float] = []
    started = time.monotonic()
    index = 0
    while index < count:
        due = min(count, int((time.monotonic() - started) * rate) + 1)
        while index < due:
            role, envelope = envelopes[index]
            ack = await publisher.send(topic_name(settings, role), envelope)
            ack.add_done_callback(lambda future, i=index: on_ack(i, future))
            acks.append(ack)
            sent_at.append(time.monotonic())
            index += 1
        worker.check()
        await asyncio.sleep(PACE_TICK_S)
    result.sent = count
    result.send_span_s = sent_at[-1] - sent_at[0]
    metadata = await asyncio.gather(*acks)
    await asyncio.sleep(0)  # the done callbacks run

    wanted = before + count
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while watcher.largest() < wanted:
        worker.check()
        if time.monotonic() > deadline:
            raise BenchError(f"no checkpoint of size {wanted:,} read back")
        await asyncio.sleep(DRAIN_POLL_S)

    leaves = await tables.leaf_indexes(before)
    stored = await tables.checkpoints()
    firsts = [seen for seen in watcher.first_seen() if seen.size > before]
    sizes = [seen.size for seen in firsts]
    for i, record in enumerate(metadata):
        leaf = leaves.get((record.topic, record.partition, record.offset))
        if leaf is None:
            raise BenchError(f"no leaf for {record.topic}:{record.partition}:{record.offset}")
        seen = firsts[bisect.bisect_right(sizes, leaf)]
        created, published = stored[seen.size]
        result.total_ms.append(1e3 * (seen.at - acked_at[i]))
        result.stored_ms.append(1e3 * (created - acked_wall[i]))
        result.published_ms.append(1e3 * (published - created))
        result.read_ms.append(1e3 * (seen.wall - published))
    covering = [seen for seen in firsts if seen.size <= wanted]
    result.checkpoints = len(covering)
    result.leaves_per_checkpoint = count / max(len(covering), 1)
    if len(covering) > 1:
        result.checkpoint_gap_s = (covering[-1].at - covering[0].at) / (len(covering) - 1)
    return result


async def end_to_end(
    settings: Any, args: argparse.Namespace, run_id: str, scratch: Path
) -> EndToEnd:
    from ledger.codec import EnvelopeCodec
    from ledger.keystore import ActiveSigner, KeyStore
    from ledger.registry import FileSchemaRegistry
    from ledger.topics import TopicRole, topic_name
    from streams.publisher import kafka_publisher

    results = EndToEnd()
    say(f"building {args.backlog:,} + {round(args.rate * args.seconds):,} envelopes")
    backlog = sample_envelopes(args.backlog, f"{run_id}b")
    paced = sample_envelopes(max(1, round(args.rate * args.seconds)), f"{run_id}p")
    keystore = KeyStore(settings)
    keystore.active_key()
    env = child_env(settings)
    worker = WorkerProcess(env, scratch / "worker.log")
    tables = LogTables(settings.dsn(), settings.anchoring_schema)
    watcher = CheckpointWatcher(settings, topic_name(settings, TopicRole.CHECKPOINTS))
    registry = FileSchemaRegistry(settings.registry_dir)
    publisher = kafka_publisher(
        settings, EnvelopeCodec(registry), ActiveSigner(keystore), source="/payledger/bench"
    )
    try:
        await publisher.start()
        await tables.open()
        await watcher.start()
        results.drain = await drain_backlog(publisher, settings, worker, tables, backlog)
        say(f"worker drained the backlog: {results.drain.rate:,.0f} records/s")
        if args.seconds > 0:
            say(f"latency: {len(paced):,} events at {args.rate:,.0f}/s into the idle worker")
            results.latency = await paced_latency(
                publisher, settings, worker, tables, watcher, paced, args.rate, len(backlog)
            )
    finally:
        try:
            worker.stop()
            for closing in (watcher.stop, tables.close, publisher.stop):
                try:
                    await closing()
                except (Exception, asyncio.CancelledError) as error:
                    say(f"while stopping: {error!r}")
            registry.close()
            keystore.close()
        finally:
            # Whatever failed above: this run's topics and schema never outlive it.
            if args.keep:
                say(f"kept topics {settings.topic_prefix}* and schema {settings.anchoring_schema}")
            else:
                await drop_schema(settings.dsn(), settings.anchoring_schema)
                await delete_topics(settings)
    return results


async def drop_schema(dsn: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as connection:
        await connection.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name))
        )
    say(f"dropped this run's schema {name}")


async def delete_topics(settings: Any) -> None:
    """Every topic of this run (its prefix)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers())
    await admin.start()
    try:
        ours = [t for t in await admin.list_topics() if t.startswith(settings.topic_prefix)]
        if ours:
            await admin.delete_topics(ours)
            say(f"deleted this run's {len(ours)} topics")
    finally:
        await admin.close()


def report_end_to_end(
    results: EndToEnd, args: argparse.Namespace, in_memory: float, settings: Any
) -> None:
    d = results.drain
    print(
        f"\nWorker end to end (python -m anchoring.worker, hooks off, batches of"
        f" {args.batch_records}), {d.records:,} signed envelopes published in advance on the"
        f" commands and provider-events topics ({settings.topic_partitions} partitions each)"
    )
    line("published (sign, encode, produce; this process)", d.publish_rate, "events/s")
    line(
        "appended, Kafka -> Postgres, first commit to last",
        d.rate,
        "records/s",
        f"{d.records - d.at_first:,} records in {d.last_commit_s - d.first_commit_s:.2f} s,"
        f" {d.checkpoints} checkpoints meanwhile",
    )
    line(
        "  from the worker's start (start-up included)",
        d.records / d.last_commit_s if d.last_commit_s else 0.0,
        "records/s",
        f"first commit {d.first_commit_s:.2f} s after the start",
    )
    line(
        "in-memory append_many, from (1)",
        in_memory,
        "leaves/s",
        f"ratio end to end / in memory {d.rate / in_memory:.3f}x",
    )

    lat = results.latency
    if lat is None:
        return
    every, interval = args.every, args.interval
    by_count_s = every / args.rate
    bound = (
        f"the interval: {interval:g} s < {every:,} events at {args.rate:,.0f}/s ({by_count_s:.1f} s)"
        if interval <= by_count_s
        else f"the count: {every:,} events at {args.rate:,.0f}/s ({by_count_s:.2f} s) < {interval:g} s"
    )
    print(
        f"\nCheckpoint latency: {lat.sent:,} events published paced into the idle worker;"
        f" per event, producer send acknowledged -> first checkpoint covering its leaf read"
        f" back from the checkpoints topic (read_committed)"
    )
    print(f"  cadence: every {every:,} events or {interval:g} s, whichever first; bound by {bound}")
    line(
        "target rate / achieved publish rate",
        lat.rate,
        "events/s",
        f"target {lat.target_rate:,.0f}/s",
    )
    line(
        "checkpoints covering them",
        lat.checkpoints,
        "",
        f"{lat.leaves_per_checkpoint:,.0f} leaves each, one every {lat.checkpoint_gap_s:.2f} s",
    )
    stats = f"p99 {percentile(lat.total_ms, 99):,.0f} ms, max {max(lat.total_ms):,.0f} ms"
    line("checkpoint latency p50", percentile(lat.total_ms, 50), "ms", stats)
    for name, values in (
        ("  ack -> leaf appended, checkpoint signed+stored", lat.stored_ms),
        ("  stored -> marked published after Kafka commit", lat.published_ms),
        ("  marked published -> read back (this process)", lat.read_ms),
    ):
        line(
            name,
            percentile(values, 50),
            "ms p50",
            f"p99 {percentile(values, 99):,.0f} ms, max {max(values):,.0f} ms",
        )
    print(
        f"  bound: an event waits for the next checkpoint, at most {min(interval, by_count_s):g} s"
        f" after the previous one, plus the worker's poll and fetch, the signature"
        f" (Ed25519 + ML-DSA-87) and the checkpoint's Kafka transaction"
    )


def run_end_to_end(args: argparse.Namespace, run_id: str, in_memory: float) -> None:
    import logging

    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    updates = {
        "anchoring_schema": f"bench_{run_id}_log",
        "anchoring_checkpoint_every_events": args.every,
        "anchoring_checkpoint_interval_s": args.interval,
        "anchoring_batch_records": args.batch_records,
        "anchoring_ipfs_enabled": False,
        "ots_direct_enabled": False,
        "ots_calendar_urls": [],
    }
    with bench_stack(
        run_id, keep_stack=args.keep_stack, scratch_prefix="bench-anchoring-", updates=updates
    ) as (_, bench_settings, scratch):
        results = asyncio.run(end_to_end(bench_settings, args, run_id, scratch))
        report_end_to_end(results, args, in_memory, bench_settings)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--proofs", type=int, default=20_000)
    parser.add_argument(
        "--backlog", type=int, default=100_000, help="records drained by the worker"
    )
    parser.add_argument("--rate", type=float, default=500.0, help="paced events/s")
    parser.add_argument("--seconds", type=float, default=20.0, help="0: no latency phase")
    parser.add_argument("--interval", type=float, default=1.0, help="checkpoint every T seconds")
    parser.add_argument("--every", type=int, default=1_000, help="... or every N events")
    parser.add_argument("--batch-records", type=int, default=500, help="the worker's setting")
    parser.add_argument("--skip-kafka", action="store_true", help="in-memory figures only")
    parser.add_argument("--keep-stack", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep this run's topics and schema")
    arguments = parser.parse_args()
    overall = time.monotonic()
    run_id = uuid.uuid4().hex[:8]
    tree, in_memory = bench_append(arguments.count)
    bench_proofs(tree, arguments.proofs)
    if not arguments.skip_kafka:
        run_end_to_end(arguments, run_id, in_memory)
    print(f"\n(bench run {run_id}, {os.cpu_count()} cores, {time.monotonic() - overall:.0f} s)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as error:
        print(f"bench/anchoring.py: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)

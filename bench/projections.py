"""Projection applier throughput and lag, beside the database floor, in one run.

In one run, against the same Kafka and Postgres:

1. applied: N signed payment events (Stripe, PayPal and Coinbase payments of
   several events each, driven through the state machine as the tests do:
   ``tests.integration.test_projections_invariants.mixed_payments``) are
   published in advance on a payment-events topic of this run; then the real
   applier (``python -m projections.worker``) projects them into a fresh
   schema with its exactly-once guarantee (one transaction per poll batch:
   rows, processed events and consumer positions together). events/s is
   counted from the first commit to the last, as seen by polling the
   committed consumer positions.
2. where the applier's time goes, each stage measured apart on the same
   records in this process while the applier idles: read (``Reader.poll``,
   read_committed), decode+verify (``Reader.candidates``), plan and rows
   (``plan.plan_batch``, i.e. ``projections.rows``), and the SQL of each batch
   (lock, lookups, writes, deferred checks, positions, commit) replayed with
   ``projections.store`` into a second fresh schema, batch for batch.
3. the database floor: the same rows (the plans of step 2) COPYed into tables
   with no keys, constraints, indexes or triggers (``CREATE TABLE .. AS ..
   WITH NO DATA``), all in one transaction; best of a few runs. The ratio
   applied / floor is the share of the plain write speed that the
   exactly-once projection keeps.
4. lag: new payments' events published at half of the rate of (1), paced,
   for some seconds, into the idle applier; per event, from when it was
   handed to the producer to the first poll that sees the consumer position
   committed past it (so its rows are visible), p50/p99.

Keys and registry live in a scratch state directory of this run; its topics
(prefix ``bench<run>.``) are deleted and its schemas dropped at the end. The
stack is started when not running and stopped again if this run started it.

Usage: python bench/projections.py [--events 50000] [--batch-records 500] [--lag-seconds 10]
Figures only: this script asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import math
import operator
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent

if __name__ == "__main__":
    # Run as a script, this directory comes first on sys.path and this file
    # would shadow the ``projections`` package: put the repository first instead.
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH_DIR]
    sys.path.insert(0, os.fspath(ROOT))

from bench.common import BenchError, bench_stack, child_env, say

TARGET_EVENTS_PER_S = 10_000
TARGET_FLOOR_RATIO = 0.3
EVENTS_PER_PAYMENT_GUESS = 5
PUBLISH_CHUNK = 2_000
DRAIN_POLL_S = 0.02
LAG_POLL_S = 0.01
PACE_TICK_S = 0.002
WAIT_TIMEOUT_S = 300.0
FLOOR_REPEATS = 3
TABLES = ("payments", "payment_fees", "payment_events", "ledger_entries", "processed_events")


# --- the applier as a process -------------------------------------------------------------------


class ApplierProcess:
    """``python -m projections.worker`` with this run's settings; stopped with SIGTERM."""

    def __init__(self, env: dict[str, str], schema: str, batch_records: int, log: Path) -> None:
        self.argv = [
            sys.executable,
            "-m",
            "projections.worker",
            "--schema",
            schema,
            "--batch-records",
            str(batch_records),
        ]
        self.env, self.log_path = env, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        say("applier: starting")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    def check(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise BenchError(f"the applier exited with {self.process.returncode}:\n{self.tail()}")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            say(f"applier: stopping (SIGTERM, pid {self.process.pid})")
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                say("applier: did not stop on SIGTERM, killing it")
                self.process.kill()
                self.process.wait()
        self.process = None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Positions:
    """The consumer positions the applier committed, read on a connection of this process."""

    def __init__(self, dsn: str, schema: str, topic: str) -> None:
        self.dsn, self.schema, self.topic = dsn, schema, topic
        self.connection: Any = None

    async def open(self) -> None:
        from projections import store

        self.connection = await store.connect(self.dsn, self.schema)

    async def read(self) -> dict[int, int]:
        import psycopg

        try:
            cursor = await self.connection.execute(
                "SELECT partition, next_offset FROM consumer_positions WHERE topic = %s",
                (self.topic,),
            )
        except psycopg.errors.UndefinedTable:
            return {}  # not migrated yet
        return dict(await cursor.fetchall())

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()


# --- records in -----------------------------------------------------------------------------------


def payment_events(count: int, prefix: str, seed: str) -> tuple[list[Any], int]:
    """Unsigned envelopes of whole payments, about ``count`` of them; and how many payments."""
    from tests.integration.test_projections_invariants import mixed_payments

    payments = mixed_payments(math.ceil(count / EVENTS_PER_PAYMENT_GUESS), prefix=prefix, seed=seed)
    envelopes: list[Any] = []
    used = 0
    for payment in payments:
        if len(envelopes) >= count:
            break
        envelopes += payment.envelopes()
        used += 1
    return envelopes, used


async def publish_backlog(publisher: Any, topic: str, envelopes: Sequence[Any]) -> list[Any]:
    published = []
    for start in range(0, len(envelopes), PUBLISH_CHUNK):
        published += await publisher.publish_many(topic, envelopes[start : start + PUBLISH_CHUNK])
    return published


def ends_of(published: Sequence[Any]) -> dict[int, int]:
    ends: dict[int, int] = {}
    for record in published:
        ends[record.partition] = max(ends.get(record.partition, 0), record.offset + 1)
    return ends


def row_kinds() -> dict[str, type]:
    """Table -> the row dataclass the applier writes to it (its fields are the columns)."""
    from projections.rows import EntryRow, EventRow, FeeRow, PaymentRow, ProcessedRow

    kinds = (PaymentRow, FeeRow, EventRow, EntryRow, ProcessedRow)
    return dict(zip(TABLES, kinds, strict=True))


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
    return ordered[index]


# --- 1. the applier draining a backlog --------------------------------------------------------------


@dataclass
class Drain:
    events: int = 0
    first_commit_s: float = 0.0  # from the applier's start
    last_commit_s: float = 0.0
    at_first: int = 0  # records committed when the first commit was seen
    batches: int = 0

    @property
    def rate(self) -> float:
        span = self.last_commit_s - self.first_commit_s
        return (self.events - self.at_first) / span if span > 0 else 0.0


async def drain(applier: ApplierProcess, positions: Positions, ends: dict[int, int]) -> Drain:
    total = sum(ends.values())
    result = Drain(events=total)
    started = time.monotonic()
    applier.start()
    deadline = started + WAIT_TIMEOUT_S
    while True:
        applier.check()
        committed = await positions.read()
        now = time.monotonic() - started
        done = sum(min(committed.get(p, 0), end) for p, end in ends.items())
        if done and not result.first_commit_s:
            result.first_commit_s, result.at_first = now, done
        if all(committed.get(p, 0) >= end for p, end in ends.items()):
            result.last_commit_s = now
            break
        if time.monotonic() > deadline:
            raise BenchError(f"the applier committed {done:,} of {total:,} in {WAIT_TIMEOUT_S:g} s")
        await asyncio.sleep(DRAIN_POLL_S)
    cursor = await positions.connection.execute(
        "SELECT count(DISTINCT applied_at) FROM processed_events"
    )
    (result.batches,) = await cursor.fetchone()
    return result


# --- 2. where the time goes -------------------------------------------------------------------------


@dataclass
class Stages:
    records: int = 0
    polls: int = 0
    read_s: float = 0.0
    verify_s: float = 0.0
    plan_s: float = 0.0
    sql_lookup_s: float = 0.0  # load_known: what the database knows of the batch
    sql_write_s: float = 0.0  # write_plan: one statement per table
    sql_check_s: float = 0.0  # check_now: the deferred constraint triggers
    sql_commit_s: float = 0.0  # begin, advisory lock, positions, commit
    rows: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)

    @property
    def sql_s(self) -> float:
        return self.sql_lookup_s + self.sql_write_s + self.sql_check_s + self.sql_commit_s


async def stages(settings: Any, topic: str, batch_records: int, schema: str, total: int) -> Stages:
    """The applier's steps, one after another over the same records, each timed."""
    from ledger.codec import EnvelopeCodec
    from ledger.keys import KeyRing
    from ledger.keystore import KeyStore
    from ledger.registry import open_registry
    from ledger.verify import Verifier
    from projections import store
    from projections.keys import keys_follower
    from projections.migrations import migrate
    from projections.plan import lookup, next_offsets, plan_batch
    from projections.reader import Reader
    from projections.rows import Projected

    async def never(seconds: float) -> bool:
        await asyncio.sleep(seconds)
        return False

    result = Stages()
    keystore = KeyStore(settings)
    verifier = Verifier(EnvelopeCodec(open_registry(settings)), KeyRing([keystore.trusted_root()]))
    reader = Reader(
        settings,
        verifier,
        keys_follower(settings, verifier),
        topic=topic,
        batch_records=batch_records,
        pause=never,
    )
    batches: list[list[Any]] = []
    await reader.start()
    try:
        await reader.seek({})
        started = time.perf_counter()
        while result.records < total:
            records = await reader.poll()
            if records:
                batches.append(records)
                result.records += len(records)
        result.read_s = time.perf_counter() - started
        result.polls = len(batches)
        started = time.perf_counter()
        candidates = [await reader.candidates(batch) for batch in batches]
        result.verify_s = time.perf_counter() - started
    finally:
        await reader.stop()
        keystore.close()
    if not all(isinstance(c, Projected) for batch in candidates for c in batch):
        raise BenchError("a record did not verify as a payment event")

    await migrate(settings.dsn(), schema)
    connection = await store.connect(settings.dsn(), schema)
    getters = {
        table: operator.attrgetter(*(f.name for f in fields(kind)))
        for table, kind in row_kinds().items()
    }
    rows: dict[str, list[tuple[Any, ...]]] = {table: [] for table in TABLES}
    try:
        for batch in candidates:
            begun = time.perf_counter()
            async with connection.transaction():
                await store.lock_schema(connection, schema)
                locked = time.perf_counter()
                known = await store.load_known(connection, lookup(batch))
                looked_up = time.perf_counter()
                plan = plan_batch(batch, known)
                planned = time.perf_counter()
                async with connection.transaction():
                    await store.write_plan(connection, plan)
                    written = time.perf_counter()
                    await store.check_now(connection)
                checked = time.perf_counter()
                await store.write_positions(connection, next_offsets(batch))
            result.plan_s += planned - looked_up
            result.sql_lookup_s += looked_up - locked
            result.sql_write_s += written - planned
            result.sql_check_s += checked - written
            result.sql_commit_s += (locked - begun) + (time.perf_counter() - checked)
            for table, made in zip(
                TABLES,
                (plan.payments, plan.fees, plan.events, plan.entries, plan.processed),
                strict=True,
            ):
                rows[table] += map(getters[table], made)
    finally:
        await connection.close()
    result.rows = rows
    return result


# --- 3. the database floor ---------------------------------------------------------------------------


def floor(dsn: str, source: str, target: str, rows: dict[str, list[tuple[Any, ...]]]) -> float:
    """Seconds for the best of FLOOR_REPEATS: every row COPYed into bare tables, one transaction."""
    import psycopg
    from psycopg import sql

    columns = {table: [f.name for f in fields(kind)] for table, kind in row_kinds().items()}
    best = math.inf
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(target)))
        for _ in range(FLOOR_REPEATS):
            for table in TABLES:
                connection.execute(
                    sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(target, table))
                )
                # Columns and types only: no keys, constraints, defaults, indexes or triggers.
                connection.execute(
                    sql.SQL("CREATE TABLE {} AS TABLE {} WITH NO DATA").format(
                        sql.Identifier(target, table), sql.Identifier(source, table)
                    )
                )
            started = time.perf_counter()
            with connection.transaction(), connection.cursor() as cursor:
                for table in TABLES:
                    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
                        sql.Identifier(target, table),
                        sql.SQL(", ").join(map(sql.Identifier, columns[table])),
                    )
                    with cursor.copy(statement) as copy:
                        for row in rows[table]:
                            copy.write_row(row)
            best = min(best, time.perf_counter() - started)
    return best


# --- 4. lag at half the rate ---------------------------------------------------------------------------


@dataclass
class Lag:
    target_rate: float
    sent: int = 0
    send_span_s: float = 0.0
    lags_ms: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return (self.sent - 1) / self.send_span_s if self.send_span_s > 0 else 0.0


async def lag(
    publisher: Any,
    topic: str,
    envelopes: Sequence[Any],
    rate: float,
    applier: ApplierProcess,
    positions: Positions,
) -> Lag:
    result = Lag(target_rate=rate)
    history: list[tuple[float, dict[int, int]]] = []
    sending = True

    async def poll() -> None:
        while True:
            committed = await positions.read()
            history.append((time.monotonic(), committed))
            if (
                not sending
                and pending_ends
                and all(committed.get(p, 0) >= end for p, end in pending_ends.items())
            ):
                return
            await asyncio.sleep(LAG_POLL_S)

    pending_ends: dict[int, int] = {}
    poller = asyncio.create_task(poll())
    sent_at: list[float] = []
    acks: list[asyncio.Future[Any]] = []
    started = time.monotonic()
    try:
        index = 0
        while index < len(envelopes):
            due = min(len(envelopes), int((time.monotonic() - started) * rate) + 1)
            while index < due:
                acks.append(await publisher.send(topic, envelopes[index]))
                sent_at.append(time.monotonic())
                index += 1
            await asyncio.sleep(PACE_TICK_S)
        result.sent = len(sent_at)
        result.send_span_s = sent_at[-1] - sent_at[0]
        metadata = await asyncio.gather(*acks)
        sending = False
        for record in metadata:
            pending_ends[record.partition] = max(
                pending_ends.get(record.partition, 0), record.offset + 1
            )
        async with asyncio.timeout(WAIT_TIMEOUT_S):
            while not poller.done():
                applier.check()
                await asyncio.sleep(0.1)
        poller.result()
    finally:
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller
    # Each event: the first poll that saw its partition's position past its offset
    # (positions never move back, so each partition's history is sorted).
    times = [t for t, _ in history]
    by_partition = {p: [committed.get(p, 0) for _, committed in history] for p in pending_ends}
    for when, record in zip(sent_at, metadata, strict=True):
        index = bisect.bisect_right(by_partition[record.partition], record.offset)
        if index == len(times):
            raise BenchError(f"offset {record.offset} of partition {record.partition} never seen")
        result.lags_ms.append(1e3 * (times[index] - when))
    return result


# --- the run ---------------------------------------------------------------------------------------


@dataclass
class Results:
    events: int = 0
    payments: int = 0
    publish_rate: float = 0.0
    drain: Drain = field(default_factory=Drain)
    stages: Stages = field(default_factory=Stages)
    floor_s: float = 0.0
    lag: Lag | None = None
    lag_payments: int = 0


async def run(settings: Any, args: argparse.Namespace, run_id: str, scratch: Path) -> Results:
    from ledger.codec import EnvelopeCodec
    from ledger.keystore import ActiveSigner, KeyStore
    from ledger.registry import FileSchemaRegistry
    from ledger.topics import TopicRole, topic_name
    from streams.publisher import kafka_publisher

    topic = topic_name(settings, TopicRole.PAYMENT_EVENTS)
    dsn = settings.dsn()
    applied, replayed, bare = (f"bench_{run_id}_{n}" for n in ("applied", "replay", "floor"))
    results = Results()
    # The signing key first: events are recorded after it exists, as in the stream worker.
    keystore = KeyStore(settings)
    keystore.active_key()

    say(f"building about {args.events:,} payment events with the state machine")
    envelopes, results.payments = payment_events(args.events, f"pay_{run_id}_b", "bench-backlog")
    results.events = len(envelopes)

    env = child_env(settings)
    applier = ApplierProcess(env, applied, args.batch_records, scratch / "applier.log")
    positions = Positions(dsn, applied, topic)
    registry = FileSchemaRegistry(settings.registry_dir)
    publisher = kafka_publisher(
        settings, EnvelopeCodec(registry), ActiveSigner(keystore), source="/payledger/streams"
    )
    await publisher.start()
    await positions.open()
    try:
        say(f"publishing {results.events:,} events of {results.payments:,} payments")
        started = time.perf_counter()
        published = await publish_backlog(publisher, topic, envelopes)
        results.publish_rate = len(published) / (time.perf_counter() - started)
        ends = ends_of(published)

        results.drain = await drain(applier, positions, ends)
        say(f"applier drained the backlog: {results.drain.rate:,.0f} events/s")

        say("stages: read, verify, plan and SQL, one after another, while the applier idles")
        results.stages = await stages(settings, topic, args.batch_records, replayed, results.events)
        say("floor: COPY of the same rows into bare tables")
        results.floor_s = await asyncio.to_thread(floor, dsn, replayed, bare, results.stages.rows)

        if args.lag_seconds > 0 and results.drain.rate > 0:
            rate = results.drain.rate / 2
            wanted = max(1, round(rate * args.lag_seconds))
            lag_envelopes, results.lag_payments = payment_events(
                wanted, f"pay_{run_id}_l", "bench-lag"
            )
            say(f"lag: {len(lag_envelopes):,} events at {rate:,.0f}/s into the idle applier")
            results.lag = await lag(publisher, topic, lag_envelopes, rate, applier, positions)
    finally:
        applier.stop()
        for closing in (positions.close(), publisher.stop()):
            try:
                await closing
            except Exception as error:
                say(f"while stopping: {error}")
        registry.close()
        keystore.close()
        if args.keep:
            say(f"kept topics {settings.topic_prefix}* and schemas {applied}, {replayed}, {bare}")
        else:
            await drop_schemas(dsn, (applied, replayed, bare))
            await delete_topics(settings)
    return results


async def drop_schemas(dsn: str, names: Sequence[str]) -> None:
    import psycopg
    from psycopg import sql

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as connection:
        for name in names:
            await connection.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name))
            )
    say(f"dropped this run's schemas {', '.join(names)}")


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


# --- report -----------------------------------------------------------------------------------------


def line(name: str, value: str, note: str = "") -> None:
    print(f"  {name:<50} {value:>16}  {note}".rstrip())


def report(r: Results, args: argparse.Namespace) -> None:
    d, s = r.drain, r.stages
    print(
        f"\nProjection applier (python -m projections.worker, --batch-records {args.batch_records}),"
        f" {r.events:,} events of {r.payments:,} mixed payments published in advance"
    )
    line("published (sign, encode, produce; this process)", f"{r.publish_rate:,.0f} events/s")
    line(
        "applied, exactly once, first commit to last",
        f"{d.rate:,.0f} events/s",
        f"{d.events - d.at_first:,} events in {d.last_commit_s - d.first_commit_s:.2f} s,"
        f" {d.batches:,} transactions of {d.events / max(d.batches, 1):,.0f} events on average",
    )
    line(
        "  from the applier's start (start-up included)",
        f"{d.events / d.last_commit_s:,.0f} events/s",
        f"first commit {d.first_commit_s:.2f} s after the start",
    )
    row_count = sum(len(rows) for rows in s.rows.values())
    floor_rows = row_count / r.floor_s if r.floor_s else 0.0
    floor_events = r.events / r.floor_s if r.floor_s else 0.0
    print(
        f"\nDatabase floor: the same {row_count:,} rows ("
        + ", ".join(f"{table} {len(rows):,}" for table, rows in s.rows.items())
        + f") COPYed into bare tables in one transaction (best of {FLOOR_REPEATS})"
    )
    line("COPY", f"{floor_rows:,.0f} rows/s", f"{r.floor_s:.2f} s")
    line("  as events", f"{floor_events:,.0f} events/s")
    ratio = d.rate / floor_events if floor_events else 0.0
    line(
        "applied events/s",
        f"{d.rate:,.0f} /s",
        f"target >= {TARGET_EVENTS_PER_S:,}: {'met' if d.rate >= TARGET_EVENTS_PER_S else 'MISSED'}",
    )
    line(
        "ratio applied / floor",
        f"{ratio:.2f}x",
        f"target >= {TARGET_FLOOR_RATIO}x: {'met' if ratio >= TARGET_FLOOR_RATIO else 'MISSED'}",
    )

    print(
        f"\nWhere the applier's time goes: its steps run one after another in this process on"
        f" the same {s.records:,} records ({s.polls:,} polls)"
    )
    per_event = 1e6 / d.rate if d.rate else 0.0
    steps = (
        ("read: Reader.poll (read_committed)", s.read_s),
        ("decode + verify: Reader.candidates", s.verify_s),
        ("plan + rows: plan_batch (projections.rows)", s.plan_s),
        ("SQL: lock, lookups, writes, checks, positions, commit", s.sql_s),
    )
    sql_parts = (
        ("  lookups (store.load_known)", s.sql_lookup_s),
        ("  writes (store.write_plan, balances trigger)", s.sql_write_s),
        ("  deferred checks (entries_balanced triggers)", s.sql_check_s),
        ("  begin, lock, positions, commit", s.sql_commit_s),
    )
    total_s = sum(seconds for _, seconds in steps)
    for name, seconds in (*steps, *sql_parts):
        line(
            name,
            f"{1e6 * seconds / s.records:,.1f} us/event",
            f"{seconds / total_s:.0%} of the steps" if total_s else "",
        )
    line("sum of the steps", f"{1e6 * total_s / s.records:,.1f} us/event",
         f"= {s.records / total_s:,.0f} events/s one step after another")  # fmt: skip
    line("the applier, measured in (1)", f"{per_event:,.1f} us/event")
    line("SQL alone (the constrained schema), as events/s", f"{s.records / s.sql_s:,.0f} /s",
         f"{s.records / s.sql_s / floor_events:.2f}x of the floor" if floor_events else "")  # fmt: skip

    if r.lag is not None:
        lag = r.lag
        print(
            f"\nLag at half the applied rate: {lag.sent:,} events of {r.lag_payments:,} payments"
            f" published paced into the idle applier, handed to the producer -> consumer"
            f" position committed past them (polled every {1e3 * LAG_POLL_S:.0f} ms)"
        )
        line("target rate / achieved publish rate",
             f"{lag.target_rate:,.0f} / {lag.rate:,.0f}", "events/s")  # fmt: skip
        line("projection lag", f"p50 {percentile(lag.lags_ms, 50):,.0f} ms",
             f"p99 {percentile(lag.lags_ms, 99):,.0f} ms,"
             f" max {max(lag.lags_ms):,.0f} ms")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=50_000, help="backlog size, about")
    parser.add_argument("--batch-records", type=int, default=500, help="the applier's option")
    parser.add_argument("--lag-seconds", type=float, default=10.0, help="0: no lag phase")
    parser.add_argument("--keep-stack", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep this run's topics and schemas")
    args = parser.parse_args()

    import logging

    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    overall = time.monotonic()
    run_id = uuid.uuid4().hex[:8]
    with bench_stack(run_id, keep_stack=args.keep_stack, scratch_prefix="bench-projections-") as (
        settings,
        bench_settings,
        scratch,
    ):
        results = asyncio.run(run(bench_settings, args, run_id, scratch))
        report(results, args)
        print(
            f"\n(bench run {run_id}, topics {bench_settings.topic_prefix}*,"
            f" {settings.topic_partitions} partitions, {os.cpu_count()} cores,"
            f" {time.monotonic() - overall:.0f} s)"
        )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as error:
        print(f"bench/projections.py: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)

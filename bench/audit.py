"""Auditor throughput: events fully verified per second, beside libsodium in the same run.

In one run, against the same Kafka, Postgres and (when it starts) Kubo:

1. the log: about N records (``--events``, default 200,000) of whole payments
   (Stripe, PayPal and Coinbase payments of several events each, driven
   through the state machine as the tests do:
   ``tests.integration.test_projections_invariants.mixed_payments``), each
   payment's events on the payment-events topic, sequence 1..n, keyed by the
   payment id; beside each payment one create command and one provider event
   on their topics. Every record is a real signed envelope with CloudEvents
   headers. Two processes build, sign and produce half of the payments each,
   after this process published the signing key's endorsement on the keys
   topic. Then the anchoring worker (``python -m anchoring.worker``, a
   checkpoint every ``--every`` leaves or ``--interval`` seconds) makes every
   record a leaf and signs checkpoints, and with Kubo publishes each
   checkpoint and its leaf bundle to IPFS (a Kubo of this run, offline, on a
   free port; with ``--no-ipfs``, or when Kubo does not start, the anchors stay
   unpublished and the auditor has no CID to check: the figures are printed
   anyway). No timestamps: no Bitcoin node is started.
2. the limit: raw libsodium Ed25519 verification
   (``nacl.bindings.crypto_sign_open``, the call ``ledger.signing.verify_ed25519``
   makes) of the very signatures of the log, over the messages they sign, in
   one process (the one-core figure) and in two processes verifying half each,
   started together (the two-core limit; best of ``LIMIT_REPEATS``).
3. the auditor: ``anchoring.auditor.audit_log`` over the whole log from offset
   0, with one worker process and then with two: wall seconds, events/s, CPU
   seconds of this process and its children (and of the Kafka broker
   meanwhile, when it runs here), and the seconds of each stage as the
   auditor reports them. The ratio is two-worker events/s over the two-core
   limit (target ``TARGET_RATIO``). On a machine others load too, wall
   seconds move from run to run; CPU seconds barely do, so the auditor's CPU
   per record is printed beside libsodium's CPU per signature as well.
4. where a record's time goes: the first ``--breakdown`` ledger records read
   again in this process, and the CPU time of each step of their check: the
   Kafka read, decoding, the signature chain (beside ``crypto_sign_open``
   alone on the same signatures), the rest of ``LogChecker.feed``, and the
   leaf side (SHA-256 of each value, indexed), the steps in turn on each
   ``BREAKDOWN_CHUNK`` records; and the start-up of one spawned worker
   process that imports the auditor.

The log is clean, so the report must hold no finding: a finding makes the
figures meaningless, and the bench prints the first few and exits 1.

Keys and registry live in a scratch state directory of this run; its topics
(prefix ``bench<run>.``) are deleted and its schema dropped at the end. The
stack is started when not running and stopped again if this run started it.

Usage: python bench/audit.py [--events 200000] [--every 10000] [--interval 5]
       [--breakdown 50000] [--no-ipfs] [--keep-stack] [--keep]
Figures only: this script asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing
import multiprocessing.synchronize
import os
import resource
import socket
import struct
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent

if __name__ == "__main__":
    # Run as a script, this directory comes first on sys.path and its files
    # would shadow the ``anchoring`` and ``projections`` packages: put the
    # repository first instead (worker processes inherit this path).
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH_DIR]
    sys.path.insert(0, os.fspath(ROOT))

from bench.anchoring import LogTables, WorkerProcess, delete_topics, drop_schema
from bench.common import BenchError, bench_stack, child_env, say

if TYPE_CHECKING:
    from anchoring.auditor import LogAudit
    from ledger.audit import Record
    from ledger.config import Settings
    from ledger.envelope import Envelope

TARGET_RATIO = 0.6
WORKERS_MAX = 2  # the machine's cores: signing, the limit and the auditor use both
# Records per payment: its payment events (about 5.1 in the mix of scenarios),
# one create command and one provider event. Only a first guess: each
# process builds more payments until it has its share of records.
RECORDS_PER_PAYMENT_GUESS = 7
PRODUCE_CHUNK = 2_000  # records signed and sent before their acknowledgements are awaited
LIMIT_REPEATS = 3
BREAKDOWN_CHUNK = 1_000  # records per round of the step-by-step timing
FINDINGS_SHOWN_MAX = 10
DRAIN_POLL_S = 0.2
WAIT_TIMEOUT_S = 600.0
SOURCE = "/payledger/bench-audit"
KUBO_ATTEMPTS_MAX = 2  # each on a port free a moment before
LENGTH = struct.Struct(">I")  # the length prefix of one signed message in a limit file


def spawn_pool(
    workers: int, barrier: multiprocessing.synchronize.Barrier | None = None
) -> ProcessPoolExecutor:
    """Fresh interpreters (never a fork of this process, whose event loop and
    client threads may run); each gets ``barrier`` to start timed work together."""
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_set_barrier, initargs=(barrier,)
    )


# The barrier of this worker process, set by the pool's initializer.
_barriers: list[multiprocessing.synchronize.Barrier] = []


def _set_barrier(barrier: multiprocessing.synchronize.Barrier | None) -> None:
    _barriers[:] = [] if barrier is None else [barrier]


# --- 1. the log -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SliceJob:
    """What one process builds, signs and produces: about ``records_wanted`` records."""

    settings: Settings
    index: int
    records_wanted: int
    prefix: str
    seed_path: Path  # the event key's seed (file signer backend)
    limit_path: Path  # where the signed messages go, for the libsodium limit


@dataclass
class SliceResult:
    payments: int = 0
    records: dict[str, int] = field(default_factory=dict)  # topic -> records
    ends: dict[tuple[str, int], int] = field(default_factory=dict)  # next offset per partition
    build_s: float = 0.0
    sign_s: float = 0.0
    produce_s: float = 0.0  # from the first send to the last acknowledgement, signing included


def slice_envelopes(job: SliceJob) -> tuple[list[tuple[str, Envelope]], int]:
    """(topic, unsigned envelope) of whole payments, at least ``records_wanted``; and how
    many payments."""
    from ledger.topics import TopicRole, topic_name
    from tests.integration.test_projections_invariants import mixed_payments
    from tests.support import events

    commands = topic_name(job.settings, TopicRole.COMMANDS)
    provider_events = topic_name(job.settings, TopicRole.PROVIDER_EVENTS)
    payment_events = topic_name(job.settings, TopicRole.PAYMENT_EVENTS)
    made: list[tuple[str, Envelope]] = []
    payments = 0
    # Recorded now, as the ingress records them: a key only signs inside its validity.
    now = datetime.now(UTC)
    round_index = 0
    while len(made) < job.records_wanted:
        missing = job.records_wanted - len(made)
        batch = mixed_payments(
            math.ceil(missing / RECORDS_PER_PAYMENT_GUESS),
            prefix=f"{job.prefix}{job.index}r{round_index}_",
            seed=f"bench-audit-{job.index}-{round_index}",
        )
        for payment in batch:
            if len(made) >= job.records_wanted:
                break
            first = payment.events[0].payload
            made.append(
                (
                    commands,
                    events.create_command(
                        payment.payment_id, now=now, amount_minor=first.payment_amount.amount_minor
                    ),
                )
            )
            made.append((provider_events, events.provider_event(payment.payment_id, now=now)))
            made += [(payment_events, envelope) for envelope in payment.envelopes()]
            payments += 1
        round_index += 1
    return made, payments


def build_slice(job: SliceJob) -> SliceResult:
    """In a worker process: build, sign and produce one slice of the log."""
    return asyncio.run(_build_slice(job))


async def _build_slice(job: SliceJob) -> SliceResult:
    from aiokafka import AIOKafkaProducer

    from ledger.cloudevents import TraceContext, kafka_headers
    from ledger.codec import EnvelopeCodec
    from ledger.publisher import producer_options
    from ledger.registry import FileSchemaRegistry
    from ledger.signing import FileSigner

    result = SliceResult()
    started = time.perf_counter()
    made, result.payments = slice_envelopes(job)
    result.build_s = time.perf_counter() - started

    registry = FileSchemaRegistry(job.settings.registry_dir)
    codec = EnvelopeCodec(registry)
    signer = FileSigner.load(job.seed_path)
    registry_url = job.settings.registry_url()
    producer = AIOKafkaProducer(
        **producer_options(job.settings, client_id=f"payledger-bench-audit-{job.index}")
    )
    await producer.start()
    try:
        with job.limit_path.open("wb") as limit:
            started = time.perf_counter()
            for start in range(0, len(made), PRODUCE_CHUNK):
                acks = []
                for topic, envelope in made[start : start + PRODUCE_CHUNK]:
                    signing = time.perf_counter()
                    prepared = codec.prepare(envelope, signer.key_id, topic)
                    signature = signer.sign(prepared.message)
                    signed, wire = codec.seal(prepared, signature)
                    result.sign_s += time.perf_counter() - signing
                    # libsodium's combined form, as verify_ed25519 hands it over.
                    signed_message = signature + prepared.message
                    limit.write(LENGTH.pack(len(signed_message)) + signed_message)
                    headers = kafka_headers(
                        signed,
                        source=SOURCE,
                        trace=TraceContext.new(),
                        dataschema=f"{registry_url}/schemas/ids/{codec.schema_id(topic)}",
                    )
                    acks.append(
                        await producer.send(
                            topic, wire, key=signed.aggregate_id.encode(), headers=headers
                        )
                    )
                for metadata in await asyncio.gather(*acks):
                    where = (metadata.topic, metadata.partition)
                    result.ends[where] = max(result.ends.get(where, 0), metadata.offset + 1)
                    result.records[metadata.topic] = result.records.get(metadata.topic, 0) + 1
            result.produce_s = time.perf_counter() - started
    finally:
        await producer.stop()
        registry.close()
    return result


@dataclass
class Log:
    records: int = 0  # on the ledger topics: the leaves of the Merkle log
    payments: int = 0
    by_topic: dict[str, int] = field(default_factory=dict)
    ends: dict[tuple[str, int], int] = field(default_factory=dict)
    build_s: float = 0.0  # wall, both processes
    slices: list[SliceResult] = field(default_factory=list)
    limit_paths: list[Path] = field(default_factory=list)
    public_key: bytes = b""
    checkpoints: int = 0
    published: int = 0  # checkpoints whose CIDs are announced on the checkpoints topic
    drain_s: float = 0.0  # worker start -> last checkpoint (and its anchors) stored


async def publish_endorsement(settings: Settings) -> tuple[Path, bytes]:
    """The event key's endorsement on the keys topic, acknowledged; (its seed file, public key)."""
    from aiokafka import AIOKafkaProducer

    from ledger.codec import EnvelopeCodec
    from ledger.endorsements import endorsement_envelope
    from ledger.keystore import KeyStore
    from ledger.publisher import producer_options
    from ledger.registry import FileSchemaRegistry
    from ledger.topics import TopicRole, topic_name

    keystore = KeyStore(settings)
    registry = FileSchemaRegistry(settings.registry_dir)
    codec = EnvelopeCodec(registry)
    producer = AIOKafkaProducer(
        **producer_options(settings, client_id="payledger-bench-audit-keys")
    )
    try:
        active = keystore.active_key()
        keys_topic = topic_name(settings, TopicRole.KEYS)
        _, wire = codec.encode(
            endorsement_envelope(active.endorsement, SOURCE), active.signer, keys_topic
        )
        # Every topic's schema registered here, once, before the slices look it up.
        for role in (TopicRole.COMMANDS, TopicRole.PROVIDER_EVENTS, TopicRole.PAYMENT_EVENTS):
            codec.schema_id(topic_name(settings, role))
        await producer.start()
        await producer.send_and_wait(keys_topic, wire, key=active.endorsement.key_id.encode())
    finally:
        await producer.stop()
        registry.close()
        keystore.close()
    key_id = active.endorsement.key_id
    return settings.keys_dir / "event" / f"{key_id}.seed", active.signer.public_key


async def build_log(settings: Settings, events: int, run_id: str, scratch: Path) -> Log:
    log = Log()
    seed_path, log.public_key = await publish_endorsement(settings)
    workers = WORKERS_MAX
    shares = [events // workers + (1 if i < events % workers else 0) for i in range(workers)]
    jobs = [
        SliceJob(settings, i, share, f"pay_{run_id}_", seed_path, scratch / f"limit-{i}.bin")
        for i, share in enumerate(shares)
    ]
    log.limit_paths = [job.limit_path for job in jobs]
    say(f"log: {workers} processes build, sign and produce {events:,} records of whole payments")
    started = time.perf_counter()
    loop = asyncio.get_running_loop()
    with spawn_pool(workers) as pool:
        log.slices = list(
            await asyncio.gather(*(loop.run_in_executor(pool, build_slice, job) for job in jobs))
        )
    log.build_s = time.perf_counter() - started
    for part in log.slices:
        log.payments += part.payments
        for topic, count in part.records.items():
            log.by_topic[topic] = log.by_topic.get(topic, 0) + count
        for where, end in part.ends.items():
            log.ends[where] = max(log.ends.get(where, 0), end)
    log.records = sum(log.by_topic.values())
    say(f"log: {log.records:,} records of {log.payments:,} payments in {log.build_s:.1f} s")
    return log


async def anchor_log(settings: Settings, log: Log, ipfs: bool, scratch: Path) -> None:
    """Run the anchoring worker until a checkpoint covers every record (and is on IPFS)."""
    worker = WorkerProcess(child_env(settings), scratch / "anchoring-worker.log")
    tables = LogTables(settings.dsn(), settings.anchoring_schema)
    await tables.open()
    started = time.monotonic()
    worker.start()
    try:
        deadline = started + WAIT_TIMEOUT_S
        while True:
            worker.check()
            positions = await tables.positions()
            done = sum(min(positions.get(where, 0), end) for where, end in log.ends.items())
            checkpoints = await tables.checkpoints()
            published = await announced(tables) if ipfs else set()
            covered = log.records in checkpoints and not math.isnan(checkpoints[log.records][1])
            if done >= log.records and covered and (not ipfs or published >= set(checkpoints)):
                break
            if time.monotonic() > deadline:
                raise BenchError(
                    f"the anchoring worker appended {done:,} of {log.records:,} records,"
                    f" {len(checkpoints)} checkpoints, {len(published)} on IPFS:\n{worker.tail()}"
                )
            await asyncio.sleep(DRAIN_POLL_S)
        log.drain_s = time.monotonic() - started
        log.checkpoints, log.published = len(checkpoints), len(published)
    finally:
        worker.stop()
        await tables.close()


async def announced(tables: LogTables) -> set[int]:
    """Tree sizes whose anchored record (CIDs) is on the checkpoints topic."""
    import psycopg
    from psycopg import sql

    statement = sql.SQL(
        "SELECT tree_size FROM {}.checkpoint_announcements WHERE bundle_cid IS NOT NULL"
    ).format(sql.Identifier(tables.schema))
    try:
        cursor = await tables.connection.execute(statement)
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
        return set()  # not migrated yet
    return {size for (size,) in await cursor.fetchall()}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def kubo_of_the_run(settings: Settings, wanted: bool) -> Iterator[Settings]:
    """The run's settings with ``anchoring_ipfs_enabled`` set when a Kubo of this run
    (its state dir, a free port) answers; it is stopped at the end."""
    from ledger.infra.kubo import kubo_down, kubo_up

    for attempt in range(1, KUBO_ATTEMPTS_MAX + 1 if wanted else 1):
        kubo = settings.model_copy(
            update={"kubo_api_port": free_port(), "anchoring_ipfs_enabled": True}
        )
        try:
            kubo_up(kubo, say)
        except Exception as error:  # the figures do not need IPFS: say why and go on
            say(f"kubo: did not start, attempt {attempt} of {KUBO_ATTEMPTS_MAX}: {error}")
            continue
        try:
            yield kubo
        finally:
            kubo_down(kubo, say)
        return
    if wanted:
        say("kubo: the anchors stay unpublished")
    yield settings.model_copy(update={"anchoring_ipfs_enabled": False})


# --- 2. the limit: libsodium alone ----------------------------------------------------------------


def read_signed_messages(path: Path) -> list[bytes]:
    data = path.read_bytes()
    messages = []
    position = 0
    while position < len(data):
        (length,) = LENGTH.unpack_from(data, position)
        position += LENGTH.size
        messages.append(data[position : position + length])
        position += length
    return messages


@dataclass(frozen=True, slots=True)
class Verified:
    """One process's share of a limit run."""

    signatures: int
    started: float  # time.monotonic(), comparable between processes
    ended: float
    cpu_s: float  # the process's CPU time over the loop


def verify_signed_messages(paths: Sequence[Path], public_key: bytes) -> Verified:
    """In a worker process: raw libsodium over every signed message of ``paths``."""
    import nacl.bindings

    messages = [message for path in paths for message in read_signed_messages(path)]
    crypto_sign_open = nacl.bindings.crypto_sign_open
    for barrier in _barriers:
        barrier.wait()  # every process loaded its messages: start together
    cpu, started = time.process_time(), time.monotonic()
    for message in messages:
        crypto_sign_open(message, public_key)
    return Verified(len(messages), started, time.monotonic(), time.process_time() - cpu)


def limit_run(paths: Sequence[Path], public_key: bytes, processes: int) -> tuple[float, float]:
    """(signatures/s, CPU seconds per signature) of ``processes`` processes verifying
    their share of ``paths`` at once."""
    shares = [list(paths[i::processes]) for i in range(processes)]
    context = multiprocessing.get_context("spawn")
    with spawn_pool(processes, context.Barrier(processes)) as pool:
        results = list(pool.map(verify_signed_messages, shares, [public_key] * processes))
    count = sum(result.signatures for result in results)
    span = max(result.ended for result in results) - min(result.started for result in results)
    return count / span, sum(result.cpu_s for result in results) / count


@dataclass
class Limit:
    one_core: float = 0.0
    two_cores: float = 0.0
    two_cores_all: list[float] = field(default_factory=list)
    cpu_s_per_signature: float = 0.0  # the least of every run: the machine's own cost


def measure_limit(log: Log) -> Limit:
    limit = Limit()
    say("limit: raw libsodium verification of the log's signatures, one process")
    limit.one_core, cpu = limit_run(log.limit_paths, log.public_key, 1)
    cpus = [cpu]
    say(f"limit: two processes, half each, best of {LIMIT_REPEATS}")
    for _ in range(LIMIT_REPEATS):
        rate, cpu = limit_run(log.limit_paths, log.public_key, WORKERS_MAX)
        limit.two_cores_all.append(rate)
        cpus.append(cpu)
    limit.two_cores = max(limit.two_cores_all)
    limit.cpu_s_per_signature = min(cpus)
    say(f"limit: {limit.one_core:,.0f} sig/s on one core, {limit.two_cores:,.0f} on two")
    return limit


# --- 3. the auditor -------------------------------------------------------------------------------


@dataclass
class AuditRun:
    workers: int
    records: int  # the ledger records of the log, each fully verified
    wall_s: float
    cpu_s: float  # this process and the worker processes it waited for
    broker_cpu_s: float  # the Kafka broker's, serving the reads
    audit: LogAudit

    @property
    def rate(self) -> float:
        return self.records / self.wall_s if self.wall_s > 0 else 0.0


def broker_pid(stack_settings: Settings) -> int | None:
    """The Kafka broker's process id, when this machine runs it (the embedded stack)."""
    from ledger.infra.stack import Stack

    for status in Stack(stack_settings).status():
        if status.name == "kafka" and status.pid is not None:
            return status.pid
    return None


def process_cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of another process so far (0 when unknown)."""
    if pid is None:
        return 0.0
    try:
        # Past the command name in parentheses: field 3 (state) first; utime, stime are 14, 15.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


async def run_auditor(
    settings: Settings, workers: int, ipfs: bool, records: int, broker: int | None
) -> AuditRun:
    from anchoring.auditor import AuditOptions, audit_log
    from ledger.keystore import load_trusted_root
    from ledger.tlog.keys import load_anchoring_public_key

    options = AuditOptions(
        roots=(load_trusted_root(settings.keys_dir / "root.json"),),
        anchoring_key=load_anchoring_public_key(settings.keys_dir / "anchoring.json"),
        workers=workers,
        ipfs=ipfs,
        bitcoin=False,
    )
    say(f"auditor: {workers} worker{'s' if workers > 1 else ''}")
    cpu, broker_cpu = cpu_seconds(), process_cpu_seconds(broker)
    started = time.perf_counter()
    audit = await audit_log(settings, options)
    wall = time.perf_counter() - started
    broker_cpu = process_cpu_seconds(broker) - broker_cpu
    say(f"auditor: {records / wall:,.0f} events/s, {len(audit.report.findings)} findings")
    return AuditRun(workers, records, wall, cpu_seconds() - cpu, broker_cpu, audit)


# --- 4. where a record's time goes ----------------------------------------------------------------


@dataclass
class Breakdown:
    """The steps of checking one record, each timed over the same records in this process."""

    records: int = 0
    read_s: float = 0.0  # Kafka, read_committed, into Record objects
    decode_s: float = 0.0  # EnvelopeCodec.decode: wire format, Avro
    verify_s: float = 0.0  # Verifier.verify: event key -> endorsement -> root, Ed25519
    libsodium_s: float = 0.0  # crypto_sign_open alone on the same signatures
    feed_s: float = 0.0  # LogChecker.feed: decode, verify and every streaming check
    index_s: float = 0.0  # SHA-256 of the value and RecordIndex.add: the leaf side
    startup_s: float = 0.0  # a spawned worker process importing the auditor (wall)

    @property
    def checks_s(self) -> float:
        """What ``feed`` does beyond decoding and verifying: decode and verify timed
        apart run colder than inside ``feed``, so this can come out below zero,
        which says the checks cost less than that difference, not that they are free."""
        return self.feed_s - self.decode_s - self.verify_s


async def read_records(settings: Settings, topics: Sequence[str], wanted: int) -> list[Record]:
    """Up to ``wanted`` records of ``topics``, every partition from offset 0, read_committed."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    from ledger.audit import Record

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers())
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    assigned = [
        TopicPartition(entry["topic"], partition["partition"])
        for entry in described
        for partition in entry["partitions"]
    ]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers(),
        client_id="payledger-bench-audit",
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    try:
        consumer.assign(assigned)
        ends = await consumer.end_offsets(assigned)
        for tp in assigned:
            await consumer.seek_to_beginning(tp)
        remaining = {tp for tp in assigned if ends[tp] > 0}
        records: list[Record] = []
        while remaining and len(records) < wanted:
            batches = await consumer.getmany(*remaining, timeout_ms=500, max_records=5_000)
            for tp, batch in batches.items():
                records += [
                    Record(r.topic, r.partition, r.offset, r.key, r.value or b"")
                    for r in batch
                    if r.offset < ends[tp]
                ]
            remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp]}
        return records[:wanted]
    finally:
        await consumer.stop()


def import_auditor() -> None:
    """In a fresh worker process: what each audit worker imports before its first record."""
    import anchoring.auditor  # noqa: F401


async def measure_breakdown(settings: Settings, sample: int) -> Breakdown:
    """CPU seconds of this process per step. Chunk by chunk, every step in turn, so
    a change in the load others put on the machine touches every step alike."""
    import hashlib

    import nacl.bindings

    from anchoring.worker import LEDGER_ROLES
    from ledger.audit import LogChecker
    from ledger.audit.anchors import RecordIndex
    from ledger.codec import EnvelopeCodec
    from ledger.keys import KeyRing
    from ledger.keystore import load_trusted_root
    from ledger.registry import open_registry
    from ledger.topics import TopicRole, topic_name
    from ledger.verify import Verifier

    result = Breakdown()
    keys_topic = topic_name(settings, TopicRole.KEYS)
    payments_topic = topic_name(settings, TopicRole.PAYMENT_EVENTS)
    keys = await read_records(settings, [keys_topic], sample)
    started = time.process_time()
    ledger_topics = [topic_name(settings, role) for role in LEDGER_ROLES]
    records = await read_records(settings, ledger_topics, sample)
    result.read_s = time.process_time() - started
    result.records = len(records)

    registry = open_registry(settings)
    root = load_trusted_root(settings.keys_dir / "root.json")

    def verifier() -> Verifier:
        made = Verifier(EnvelopeCodec(registry), KeyRing([root]))
        for record in keys:
            made.admit_endorsement(record.value)
        return made

    try:
        decoding, checking = verifier(), verifier()
        checker = LogChecker(verifier(), payment_events_topic=payments_topic, keys_topic=keys_topic)
        index = RecordIndex()
        sha256 = hashlib.sha256
        crypto_sign_open = nacl.bindings.crypto_sign_open
        clock = time.process_time
        for start in range(0, len(records), BREAKDOWN_CHUNK):
            chunk = records[start : start + BREAKDOWN_CHUNK]
            started = clock()
            decoded = [decoding.codec.decode(record.value) for record in chunk]
            result.decode_s += clock() - started

            started = clock()
            for one in decoded:
                checking.verify(one)
            result.verify_s += clock() - started

            public_keys = [
                checking.keyring.endorsement(one.envelope.signing_key_id).public_key
                for one in decoded
            ]
            signed = [one.envelope.signature + one.signed_message for one in decoded]
            started = clock()
            for message, public_key in zip(signed, public_keys, strict=True):
                crypto_sign_open(message, public_key)
            result.libsodium_s += clock() - started

            started = clock()
            for record in chunk:
                checker.feed(record)
            result.feed_s += clock() - started

            started = clock()
            for record in chunk:
                index.add(
                    record.topic,
                    record.partition,
                    record.offset,
                    None,
                    sha256(record.value).digest(),
                )
            result.index_s += clock() - started
    finally:
        registry.close()

    started = time.perf_counter()
    with spawn_pool(1) as pool:
        pool.submit(import_auditor).result()
    result.startup_s = time.perf_counter() - started
    return result


# --- the run --------------------------------------------------------------------------------------


@dataclass
class Results:
    log: Log = field(default_factory=Log)
    ipfs: bool = False
    limit: Limit = field(default_factory=Limit)
    audits: list[AuditRun] = field(default_factory=list)
    breakdown: Breakdown | None = None


async def run(
    settings: Settings, args: argparse.Namespace, run_id: str, scratch: Path, broker: int | None
) -> Results:
    # The auditor is what is measured: fail before the slow phases if it cannot load.
    import anchoring.auditor  # noqa: F401

    results = Results()
    try:
        with kubo_of_the_run(settings, not args.no_ipfs) as settings:
            results.ipfs = settings.anchoring_ipfs_enabled
            results.log = await build_log(settings, args.events, run_id, scratch)
            say(
                f"anchoring: every record a leaf, a checkpoint every {args.every:,} leaves"
                f" or {args.interval:g} s{', on IPFS' if results.ipfs else ''}"
            )
            await anchor_log(settings, results.log, results.ipfs, scratch)
            say(
                f"anchoring: {results.log.checkpoints} checkpoints"
                f" ({results.log.published} on IPFS) in {results.log.drain_s:.1f} s"
            )
            results.limit = await asyncio.to_thread(measure_limit, results.log)
            for workers in (1, WORKERS_MAX):
                results.audits.append(
                    await run_auditor(settings, workers, results.ipfs, results.log.records, broker)
                )
            if args.breakdown > 0:
                say(f"breakdown: each step of a record's check, over {args.breakdown:,} records")
                results.breakdown = await measure_breakdown(settings, args.breakdown)
    finally:
        if args.keep:
            say(f"kept topics {settings.topic_prefix}* and schema {settings.anchoring_schema}")
        else:
            await drop_schema(settings.dsn(), settings.anchoring_schema)
            await delete_topics(settings)
    return results


# --- report ---------------------------------------------------------------------------------------


def line(name: str, value: str, note: str = "") -> None:
    print(f"  {name:<52} {value:>18}  {note}".rstrip())


def report(r: Results, args: argparse.Namespace) -> int:
    """Print the figures; the exit code (1 when the clean log gave a finding)."""
    log, limit = r.log, r.limit
    print(
        f"\nThe log: {log.records:,} records of {log.payments:,} payments ("
        + ", ".join(
            f"{topic.rsplit('.', 1)[-1]} {count:,}" for topic, count in log.by_topic.items()
        )
        + "), plus the key's endorsement on the keys topic"
    )
    sign_s = sum(part.sign_s for part in log.slices)
    line(
        "built, signed and produced by two processes",
        f"{log.records / log.build_s:,.0f} records/s",
        f"{log.build_s:.1f} s wall; signing {sign_s:.1f} s of CPU in all",
    )
    line(
        "anchored: leaves, checkpoints, IPFS",
        f"{log.checkpoints} checkpoints",
        f"{log.published} published on IPFS" if r.ipfs else "not on IPFS (no Kubo)",
    )

    print(
        f"\nThe limit: raw libsodium Ed25519 verification (crypto_sign_open) of the log's"
        f" {log.records:,} signatures"
    )
    line("one process", f"{limit.one_core:,.0f} sig/s")
    line(
        f"two processes, half each (best of {LIMIT_REPEATS})",
        f"{limit.two_cores:,.0f} sig/s",
        ", ".join(f"{rate:,.0f}" for rate in limit.two_cores_all),
    )

    print("\nThe auditor (anchoring.auditor.audit_log), the whole log from offset 0")
    for run_ in r.audits:
        utilisation = run_.cpu_s / run_.wall_s if run_.wall_s else 0.0
        limit_for = limit.one_core if run_.workers == 1 else limit.two_cores
        line(
            f"{run_.workers} worker{'s' if run_.workers > 1 else ''}: events fully verified",
            f"{run_.rate:,.0f} events/s",
            f"{run_.records:,} records in {run_.wall_s:.1f} s;"
            f" {run_.cpu_s:.1f} s CPU ({utilisation:.2f} cores);"
            f" Kafka broker {run_.broker_cpu_s:.1f} s CPU meanwhile;"
            f" {run_.rate / limit_for:.2f}x of {run_.workers}-core libsodium",
        )
    if r.audits:
        best = r.audits[-1]
        ratio = best.rate / limit.two_cores if limit.two_cores else 0.0
        line(
            "ratio: two-worker auditor / two-core libsodium",
            f"{ratio:.2f}x",
            f"target >= {TARGET_RATIO}x: {'met' if ratio >= TARGET_RATIO else 'MISSED'}",
        )
        if len(r.audits) > 1 and r.audits[0].rate:
            line("speed-up, two workers over one", f"{best.rate / r.audits[0].rate:.2f}x")
        # CPU seconds barely move when others load the machine; wall seconds do.
        limit_us = 1e6 * limit.cpu_s_per_signature
        for run_ in r.audits:
            audit_us = 1e6 * run_.cpu_s / run_.records
            line(
                f"CPU per record, {run_.workers} worker{'s' if run_.workers > 1 else ''}",
                f"{audit_us:,.1f} us",
                f"libsodium {limit_us:,.1f} us per signature: {limit_us / audit_us:.2f}x",
            )

    for run_ in r.audits:
        print(
            f"\nWhere the time goes, {run_.workers} worker{'s' if run_.workers > 1 else ''}"
            f" (wall seconds per stage, as the auditor reports them)"
        )
        for stage, seconds in run_.audit.seconds.items():
            line(stage, f"{seconds:,.2f} s", f"{seconds / run_.wall_s:.0%} of the wall time")
        signatures_s = log.records * limit.cpu_s_per_signature
        line(
            "CPU of the run: of which raw Ed25519 (libsodium)",
            f"{signatures_s:,.2f} s",
            f"{signatures_s / run_.cpu_s:.0%} of {run_.cpu_s:.1f} s CPU" if run_.cpu_s else "",
        )

    if r.breakdown is not None:
        report_breakdown(r, r.breakdown)

    status = 0
    for run_ in r.audits:
        audit_report = run_.audit.report
        found = len(audit_report.findings) + audit_report.findings_dropped
        print(
            f"\nReport, {run_.workers} worker{'s' if run_.workers > 1 else ''}:"
            f" {found:,} findings, {len(audit_report.errors)} errors,"
            f" {audit_report.redeliveries:,} redeliveries, exit code {audit_report.exit_code}"
        )
        checked = ", ".join(
            f"{check.value} {count:,}" for check, count in sorted(audit_report.checked.items())
        )
        print(f"  checked: {checked}")
        if audit_report.facts:
            print("  facts: " + ", ".join(f"{k} {v}" for k, v in audit_report.facts.items()))
        # The ledger records, and the endorsement on the keys topic.
        if audit_report.records not in (log.records, log.records + 1):
            print(f"  RECORDS: {audit_report.records:,} read, the log holds {log.records:,}")
            status = 1
        for finding in audit_report.findings[:FINDINGS_SHOWN_MAX]:
            print(
                f"  FINDING {finding.check.value}/{finding.reason} at {finding.topic}"
                f":{finding.partition}:{finding.offset} event {finding.event_id}: {finding.detail}"
                + (f" ({finding.where})" if finding.where else "")
            )
        for error in audit_report.errors[:FINDINGS_SHOWN_MAX]:
            print(f"  error (a check could not run): {error}")
        if found:
            status = 1
    if status:
        print("\nThe clean log gave findings: the figures above do not measure a passing audit.")
    return status


def report_breakdown(r: Results, b: Breakdown) -> None:
    print(
        f"\nWhere a record's time goes: CPU time of each step over the same {b.records:,} ledger"
        f" records, in one process, the steps in turn on each {BREAKDOWN_CHUNK:,} records"
    )
    if not b.records:
        print("  no record read")
        return
    steps = (
        ("read: aiokafka, read_committed, into Records", b.read_s),
        ("decode: wire format and Avro (EnvelopeCodec.decode)", b.decode_s),
        ("verify: signature chain (Verifier.verify)", b.verify_s),
        ("  of which raw libsodium (crypto_sign_open alone)", b.libsodium_s),
        ("feed: LogChecker.feed, decode + verify + every check", b.feed_s),
        ("  checks: feed less decode and verify timed apart", b.checks_s),
        ("index: SHA-256 of the value, RecordIndex.add", b.index_s),
    )
    total_s = b.read_s + b.feed_s + b.index_s
    for name, seconds in steps:
        share = f"{seconds / total_s:.0%} of the steps" if total_s else ""
        line(name, f"{1e6 * seconds / b.records:,.1f} us/record", share)
    line(
        "sum: read + feed + index",
        f"{1e6 * total_s / b.records:,.1f} us/record",
        f"= {b.records / total_s:,.0f} records/s on one core" if total_s else "",
    )
    line("one audit worker process: spawn and imports", f"{b.startup_s:,.2f} s")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000, help="records in the log, about")
    parser.add_argument("--every", type=int, default=10_000, help="checkpoint every N leaves")
    parser.add_argument("--interval", type=float, default=5.0, help="... or every T seconds")
    parser.add_argument(
        "--breakdown", type=int, default=50_000, help="records timed step by step; 0: none"
    )
    parser.add_argument("--no-ipfs", action="store_true", help="no Kubo: anchors unpublished")
    parser.add_argument("--keep-stack", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep this run's topics and schema")
    args = parser.parse_args()
    if args.events < 1:
        parser.error("--events must be at least 1")

    import logging

    from ledger.config import SignerBackend

    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    overall = time.monotonic()
    run_id = uuid.uuid4().hex[:8]
    updates = {
        "anchoring_schema": f"bench_{run_id}_log",
        "anchoring_checkpoint_every_events": args.every,
        "anchoring_checkpoint_interval_s": args.interval,
        "ots_direct_enabled": False,
        "ots_calendar_urls": [],
        "signer_backend": SignerBackend.FILE,  # the signing processes load the key's seed
    }
    with bench_stack(
        run_id, keep_stack=args.keep_stack, scratch_prefix="bench-audit-", updates=updates
    ) as (settings, bench_settings, scratch):
        broker = broker_pid(settings)
        results = asyncio.run(run(bench_settings, args, run_id, scratch, broker))
        status = report(results, args)
        print(
            f"\n(bench run {run_id}, topics {bench_settings.topic_prefix}*,"
            f" {settings.topic_partitions} partitions, {os.cpu_count()} cores,"
            f" {time.monotonic() - overall:.0f} s)"
        )
    return status


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as error:
        print(f"bench/audit.py: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)

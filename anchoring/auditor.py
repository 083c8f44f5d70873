"""The auditor's pass: every ledger record from offset 0, every checkpoint, every anchor.

``audit_log`` needs Kafka (and the schema registry the records name), the
trusted root's public keys and the anchoring public key; with ``ipfs`` the
Kubo node that serves the published bytes, with ``bitcoin`` the Bitcoin node
whose block headers the timestamps are checked against. It trusts nothing
else: not the operator's Postgres, not the ingress.

**Order.** The keys topic first (an event key is trusted only once its
endorsement was read), then the checkpoints topic, then the end offsets of
the ledger topics are fixed (``read_committed``: the last stable offsets),
then the ledger topics are read from their first offset to those ends.
Reading the checkpoints before fixing the ends means every leaf a checkpoint
covers names a record inside the range read: the anchoring worker appends
only records it read ``read_committed`` before it signs.

**Both cores.** The ledger partitions are shared among ``workers``
processes, each a ``LogChecker`` over whole partitions (a payment's events
share one partition, so every per-payment check stays inside one process),
balanced by record count. Each returns its report, its replayed balances,
its index of records (position -> event id and value digest, for the Merkle
log's completeness) and what only the whole log can tell: which payments it
saw on which partition and which event ids it saw, merged here (a payment on
two partitions, an event id used twice across processes). The parent reads
the keys and checkpoints topics, and while the workers read it fetches the
anchors from IPFS and checks everything the ``AnchorChecker`` can check
without a record (signatures, chain, CIDs, bundles, roots, timestamps); once
the workers are done it matches the leaves with the records.

Consumers use the consumer group ``group_id`` (visible to the operator's lag
tools as the auditor's) with explicit assignment, and never commit: each
run starts again from offset 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import multiprocessing
import os
import queue
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from anchoring.bitcoin import BitcoinRpc
from anchoring.ipfs import IpfsError, KuboClient
from anchoring.publication import CheckpointEncoder
from anchoring.worker import LEDGER_ROLES
from ledger.audit import Balances, Check, Finding, LogChecker, Record, Report
from ledger.audit.anchors import AnchorChecker, CheckpointRecord, RecordIndex
from ledger.codec import EnvelopeCodec
from ledger.config import Settings
from ledger.errors import InvalidEnvelope, LedgerError, SchemaError
from ledger.keys import KeyRing, TrustedRoot
from ledger.registry import open_registry
from ledger.tlog.cid import Cid
from ledger.tlog.keys import AnchoringPublicKey
from ledger.topics import TopicRole, topic_name
from ledger.verify import Verifier

GROUP_ID_DEFAULT: Final = "payledger-audit"
KAFKA_TIMEOUT_S: Final = 30.0
# One fetch: records per getmany call and how long it waits for them.
FETCH_RECORDS_MAX: Final = 5_000
FETCH_TIMEOUT_MS: Final = 500
# A read that makes no progress for this long while records remain is stuck.
STALL_TIMEOUT_S: Final = 120.0
# Records between two progress reports of a worker process.
PROGRESS_EVERY: Final = 2_000
IPFS_CONCURRENCY: Final = 8
# A worker process's garbage collector: the youngest generation collected
# every 100,000 allocations instead of 700 (see ``_check_slice``).
GC_THRESHOLDS: Final = (100_000, 50, 100)


class AuditError(LedgerError):
    """The audit could not run (Kafka unreachable, a topic missing, a worker failed)."""


class Progress(Protocol):
    """What the command line shows while the audit runs."""

    def stage(self, name: str, total: int | None) -> None: ...

    def advance(self, count: int) -> None: ...


@dataclass(frozen=True, slots=True)
class AuditOptions:
    roots: tuple[TrustedRoot, ...]
    anchoring_key: AnchoringPublicKey | None  # None: the checkpoints are not checked
    workers: int = 2
    ipfs: bool = True
    bitcoin: bool = False
    group_id: str = GROUP_ID_DEFAULT


@dataclass(slots=True)
class LogAudit:
    report: Report
    balances: Balances
    ends: dict[str, dict[int, int]]  # topic -> partition -> offset past the last record read
    seconds: dict[str, float] = field(default_factory=dict)  # wall seconds per stage


@dataclass(frozen=True, slots=True)
class _Slice:
    """One worker's share: (topic, partition, first offset, end offset) to read."""

    ranges: tuple[tuple[str, int, int, int], ...]

    @property
    def records(self) -> int:
        return sum(end - start for _, _, start, end in self.ranges)


@dataclass(frozen=True, slots=True)
class _Job:
    """What one worker process needs (pickled to it)."""

    settings: Settings
    options: AuditOptions
    key_values: tuple[bytes, ...]  # the keys topic's records, admitted before any event
    piece: _Slice
    payments_topic: str
    keys_topic: str


@dataclass(slots=True)
class _SliceResult:
    report: Report
    balances: Balances
    index: RecordIndex
    payment_partitions: dict[str, int]
    event_ids: set[str]
    last_offsets: dict[tuple[str, int], int]  # the last record read on each partition


# The pass ---------------------------------------------------------------------


async def audit_log(
    settings: Settings, options: AuditOptions, progress: Progress | None = None
) -> LogAudit:
    """Read and check the whole log; the report says what was found and what could not run."""
    audit = _Pass(settings, options, progress)
    try:
        return await audit.run()
    finally:
        audit.close()


class _Pass:
    """One audit: its topics, its report and what each stage took."""

    def __init__(
        self, settings: Settings, options: AuditOptions, progress: Progress | None
    ) -> None:
        self.settings = settings
        self.options = options
        self.progress = progress
        self.report = Report()
        self.seconds: dict[str, float] = {}
        self.ledger_topics = [topic_name(settings, role) for role in LEDGER_ROLES]
        self.keys_topic = topic_name(settings, TopicRole.KEYS)
        self.checkpoints_topic = topic_name(settings, TopicRole.CHECKPOINTS)
        self.payments_topic = topic_name(settings, TopicRole.PAYMENT_EVENTS)
        self.registry = open_registry(settings)
        self.rpc = BitcoinRpc.from_settings(settings) if options.bitcoin else None

    def close(self) -> None:
        self.registry.close()
        if self.rpc is not None:
            self.rpc.close()

    async def run(self) -> LogAudit:
        started = time.perf_counter()
        partitions = await _partitions(
            self.settings, [*self.ledger_topics, self.keys_topic, self.checkpoints_topic]
        )
        keys = await self._keys(partitions[self.keys_topic])
        self.seconds["keys"] = time.perf_counter() - started

        started = time.perf_counter()
        checkpoints = await self._checkpoints(partitions[self.checkpoints_topic])
        self.seconds["checkpoints"] = time.perf_counter() - started

        # The anchors need no record: they are fetched and checked while the
        # worker processes read the records (with whatever CPU they leave).
        anchors: AnchorChecker | None = None
        anchoring: asyncio.Task[Report] | None = None
        if self.options.anchoring_key is None:
            self.report.facts["checkpoints_not_checked"] = len(checkpoints)
        else:
            anchors = AnchorChecker(
                self.options.anchoring_key,
                checkpoints_topic=self.checkpoints_topic,
                headers=self.rpc,
            )
            for checkpoint in checkpoints:
                anchors.add(checkpoint)
            anchoring = asyncio.create_task(
                _check_anchors(self.settings, self.options, anchors, self.seconds)
            )

        started = time.perf_counter()
        try:
            index, balances, ends = await self._records(partitions, keys)
        except BaseException:
            if anchoring is not None:
                anchoring.cancel()
                with contextlib.suppress(BaseException):
                    await anchoring
            raise
        self.seconds["records"] = time.perf_counter() - started

        if anchors is not None and anchoring is not None:
            started = time.perf_counter()
            await self._leaves(anchors, anchoring, index, len(checkpoints))
            self.seconds["leaves"] = time.perf_counter() - started
        return LogAudit(self.report, balances, ends, self.seconds)

    async def _keys(self, partitions: Sequence[int]) -> list[Record]:
        """The keys topic, checked: its endorsements are what every worker trusts."""
        keys = await _read_all(self.settings, self.options.group_id, self.keys_topic, partitions)
        _stage(self.progress, "keys", len(keys))
        verifier = Verifier(EnvelopeCodec(self.registry), KeyRing(list(self.options.roots)))
        checker = LogChecker(
            verifier, payment_events_topic=self.payments_topic, keys_topic=self.keys_topic
        )
        for record in keys:
            checker.feed(record)
        self.report.merge(checker.finish())
        return keys

    async def _checkpoints(self, partitions: Sequence[int]) -> list[CheckpointRecord]:
        wires = await _read_all(
            self.settings, self.options.group_id, self.checkpoints_topic, partitions
        )
        encoder = CheckpointEncoder(self.registry, self.checkpoints_topic)
        return _decode_checkpoints(encoder, wires, self.report)

    async def _records(
        self, partitions: Mapping[str, list[int]], keys: Sequence[Record]
    ) -> tuple[RecordIndex, Balances, dict[str, dict[int, int]]]:
        """Every ledger record, read and checked by the worker processes, then merged."""
        bounds = await _bounds(self.settings, self.options.group_id, self.ledger_topics, partitions)
        _log_starts(bounds, self.report)
        slices = _slices(bounds, self.options.workers)
        if self.progress is not None:  # in offsets: a little more than the records
            self.progress.stage("records", sum(piece.records for piece in slices))
        key_values = tuple(record.value for record in keys)
        jobs = [
            _Job(
                self.settings,
                self.options,
                key_values,
                piece,
                self.payments_topic,
                self.keys_topic,
            )
            for piece in slices
        ]
        results = await _run_slices(jobs, self.progress)
        index = RecordIndex()
        balances = Balances()
        _merge_slices(results, self.report, index, balances, self.payments_topic)
        # Records, not offsets: transaction markers take offsets too.
        self.report.facts["ledger_records"] = sum(result.report.records for result in results)
        return index, balances, _reached(bounds, results)

    async def _leaves(
        self,
        anchors: AnchorChecker,
        anchoring: asyncio.Task[Report],
        index: RecordIndex,
        checkpoint_records: int,
    ) -> None:
        if self.progress is not None:
            self.progress.stage("anchors", None)
        self.report.merge(await anchoring)
        leaves = await asyncio.to_thread(anchors.check_leaves, index)
        self.report.merge(leaves)
        if index and not leaves.facts.get("leaves_checked"):
            # Nothing found, and nothing matched either: with no bundle
            # published yet, completeness is unchecked, not verified.
            self.report.error(
                f"{len(index):,} ledger records not matched with the Merkle log:"
                f" no leaf bundle is published yet ({checkpoint_records} checkpoint records)"
            )


def _stage(progress: Progress | None, name: str, done: int) -> None:
    if progress is not None:
        progress.stage(name, done)
        progress.advance(done)


async def _check_anchors(
    settings: Settings, options: AuditOptions, anchors: AnchorChecker, seconds: dict[str, float]
) -> Report:
    """Fetch what the checkpoints announce on IPFS and check everything but the leaves.

    Returns a report of the errors that stopped a check (IPFS or the Bitcoin
    node unreachable); the checker keeps its findings for ``check_leaves``.
    """
    report = Report()
    started = time.perf_counter()
    wanted = anchors.content_wanted()
    content: dict[str, bytes] = {}
    unavailable: dict[str, str] = {}
    if wanted and not options.ipfs:
        report.error(f"{len(wanted)} IPFS publications not fetched (IPFS checks off)")
    elif wanted:
        await _fetch_all(settings, wanted, content, unavailable)
        if unavailable and not content:
            # Nothing at all came back: the node, not the publications, is missing.
            first = next(iter(unavailable.values()))
            report.error(f"IPFS: none of {len(wanted)} publications could be fetched: {first}")
            unavailable.clear()
    seconds["ipfs"] = time.perf_counter() - started
    started = time.perf_counter()
    await asyncio.to_thread(anchors.check_anchors, content, unavailable)
    seconds["anchors"] = time.perf_counter() - started
    return report


async def _fetch_all(
    settings: Settings,
    cids: Sequence[str],
    content: dict[str, bytes],
    unavailable: dict[str, str],
) -> None:
    """Fetch every CID's bytes, unchecked (the checker recomputes each CID)."""
    gate = asyncio.Semaphore(IPFS_CONCURRENCY)
    async with KuboClient.from_settings(settings) as kubo:

        async def one(text: str) -> None:
            async with gate:
                try:
                    content[text] = await kubo.fetch(Cid.parse(text))
                except IpfsError as error:
                    unavailable[text] = str(error)
                except LedgerError as error:  # not a CID at all
                    unavailable[text] = str(error)

        await asyncio.gather(*(one(text) for text in dict.fromkeys(cids)))


# Kafka ------------------------------------------------------------------------


def _consumer(settings: Settings, group_id: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers(),
        client_id="payledger-audit",
        group_id=group_id,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )


async def _partitions(settings: Settings, topics: Sequence[str]) -> dict[str, list[int]]:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers(), client_id="payledger-audit"
    )
    try:
        async with asyncio.timeout(KAFKA_TIMEOUT_S):
            await admin.start()
            # Metadata of all topics: naming ours could auto-create one.
            described = await admin.describe_topics()
    except (KafkaError, TimeoutError, OSError) as error:
        raise AuditError(f"Kafka at {settings.bootstrap_servers()}: {error!r}") from error
    finally:
        await admin.close()
    found = {
        entry["topic"]: sorted(p["partition"] for p in entry["partitions"])
        for entry in described
        if entry["partitions"]
    }
    missing = [topic for topic in topics if topic not in found]
    if missing:
        raise AuditError(f"topics missing: {', '.join(missing)}")
    return {topic: found[topic] for topic in topics}


async def _bounds(
    settings: Settings, group_id: str, topics: Sequence[str], partitions: Mapping[str, list[int]]
) -> dict[str, dict[int, tuple[int, int]]]:
    """Topic -> partition -> (first offset, last stable offset) now."""
    wanted = [TopicPartition(topic, p) for topic in topics for p in partitions[topic]]
    consumer = _consumer(settings, group_id)
    try:
        async with asyncio.timeout(KAFKA_TIMEOUT_S):
            await consumer.start()
            starts = await consumer.beginning_offsets(wanted)
            ends = await consumer.end_offsets(wanted)
    except (KafkaError, TimeoutError, OSError) as error:
        raise AuditError(f"Kafka offsets: {error!r}") from error
    finally:
        await consumer.stop()
    bounds: dict[str, dict[int, tuple[int, int]]] = {topic: {} for topic in topics}
    for tp in wanted:
        bounds[tp.topic][tp.partition] = (starts[tp], ends[tp])
    return bounds


async def _read_all(
    settings: Settings, group_id: str, topic: str, partitions: Sequence[int]
) -> list[Record]:
    """Every record of a (small) topic from its first offset to its end now."""
    records: list[Record] = []
    async for batch in _read(
        settings, group_id, [(topic, p, 0, None) for p in partitions], FETCH_TIMEOUT_MS
    ):
        records.extend(batch)
    return records


async def _read(
    settings: Settings,
    group_id: str,
    ranges: Sequence[tuple[str, int, int, int | None]],
    timeout_ms: int,
) -> Any:
    """Batches of records of each (topic, partition) from its first offset to ``end``.

    ``end`` None: the end offset when the read starts. An async generator of
    lists of ``Record``; raises ``AuditError`` when Kafka stops answering.
    """
    consumer = _consumer(settings, group_id)
    try:
        async with asyncio.timeout(KAFKA_TIMEOUT_S):
            await consumer.start()
        assigned = [TopicPartition(topic, p) for topic, p, _, _ in ranges]
        consumer.assign(assigned)
        async with asyncio.timeout(KAFKA_TIMEOUT_S):
            known_ends = await consumer.end_offsets(assigned)
        ends = {
            TopicPartition(topic, p): (known_ends[TopicPartition(topic, p)] if end is None else end)
            for topic, p, _, end in ranges
        }
        remaining = set()
        for tp in assigned:
            await consumer.seek_to_beginning(tp)
            if await consumer.position(tp) < ends[tp]:
                remaining.add(tp)
        last_progress = time.monotonic()
        while remaining:
            batches = await consumer.getmany(
                *remaining, timeout_ms=timeout_ms, max_records=FETCH_RECORDS_MAX
            )
            out: list[Record] = []
            for tp, records in batches.items():
                end = ends[tp]
                out.extend(
                    Record(r.topic, r.partition, r.offset, r.key, r.value or b"")
                    for r in records
                    if r.offset < end
                )
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
            if out:
                last_progress = time.monotonic()
                yield out
            elif time.monotonic() - last_progress > STALL_TIMEOUT_S:
                stuck = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(remaining))
                raise AuditError(f"no records for {STALL_TIMEOUT_S:.0f} s from {stuck}")
    except (KafkaError, TimeoutError, OSError) as error:
        raise AuditError(f"Kafka read: {error!r}") from error
    finally:
        await consumer.stop()


def _log_starts(bounds: Mapping[str, Mapping[int, tuple[int, int]]], report: Report) -> None:
    """Ledger topics keep every record: a first offset above 0 means records were deleted."""
    for topic, spans in bounds.items():
        for partition, (start, _) in sorted(spans.items()):
            if start > 0:
                report.add(
                    Finding(
                        topic,
                        partition,
                        start,
                        None,
                        Check.LEAF,
                        "log-start-moved",
                        f"offsets 0 to {start - 1} are gone from a retain-forever topic",
                    )
                )


def _decode_checkpoints(
    encoder: CheckpointEncoder, records: Iterable[Record], report: Report
) -> list[CheckpointRecord]:
    checkpoints = []
    for record in records:
        try:
            fields = encoder.decode(record.value)
            checkpoints.append(
                CheckpointRecord(
                    partition=record.partition,
                    offset=record.offset,
                    event_id=str(fields["event_id"]),
                    origin=fields["origin"],
                    tree_size=fields["tree_size"],
                    root_hash=bytes(fields["root_hash"]),
                    note=fields["note"],
                    previous_size=fields["previous_size"],
                    consistency_proof=tuple(bytes(h) for h in fields["consistency_proof"]),
                    checkpoint_cid=fields["checkpoint_cid"],
                    bundle_cid=fields["bundle_cid"],
                    timestamp_proof=fields["timestamp_proof"],
                )
            )
        except (SchemaError, LedgerError, ValueError, KeyError, TypeError, EOFError) as error:
            report.add(
                Finding(
                    record.topic,
                    record.partition,
                    record.offset,
                    None,
                    Check.CHECKPOINT,
                    "undecodable",
                    f"not an io.payledger.Checkpoint record: {error}",
                )
            )
    return checkpoints


# Worker processes ---------------------------------------------------------------


def _slices(bounds: Mapping[str, Mapping[int, tuple[int, int]]], workers: int) -> list[_Slice]:
    """Whole partitions shared among ``workers``, the largest first to the least loaded."""
    spans = sorted(
        (
            (topic, partition, start, end)
            for topic, partitions in bounds.items()
            for partition, (start, end) in partitions.items()
            if end > start
        ),
        key=lambda span: span[3] - span[2],
        reverse=True,
    )
    shares: list[list[tuple[str, int, int, int]]] = [[] for _ in range(max(1, workers))]
    loads = [0] * len(shares)
    for span in spans:
        lightest = loads.index(min(loads))
        shares[lightest].append(span)
        loads[lightest] += span[3] - span[2]
    return [_Slice(tuple(share)) for share in shares if share]


async def _run_slices(jobs: Sequence[_Job], progress: Progress | None) -> list[_SliceResult]:
    """Run each job in a process of its own; the progress bar follows their counts."""
    if not jobs:
        return []
    # Spawned, not forked: this process runs an event loop and Kafka threads.
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        done: queue.Queue[int] = manager.Queue()
        with ProcessPoolExecutor(len(jobs), mp_context=context) as pool:
            futures: list[Future[_SliceResult]] = [
                pool.submit(_check_slice, job, done) for job in jobs
            ]
            waiting = asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
            while not waiting.done():
                await asyncio.wait({waiting}, timeout=0.2)
                _drain(done, progress)
            _drain(done, progress)
            try:
                return await waiting
            except AuditError:
                raise
            except Exception as error:  # a worker process died: say which way
                raise AuditError(f"an audit worker failed: {error!r}") from error


def _drain(done: queue.Queue[int], progress: Progress | None) -> None:
    while True:
        try:
            count = done.get_nowait()
        except queue.Empty:
            return
        if progress is not None:
            progress.advance(count)


def _check_slice(job: _Job, done: queue.Queue[int]) -> _SliceResult:
    """One worker process: read and check whole partitions (runs in a child process)."""
    # The checker keeps a small object per payment event for the whole run:
    # Python's cyclic collector would walk all of them again and again as
    # they pile up, though they form no cycle. Collect rarely instead.
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    return asyncio.run(_check_slice_async(job, done))


async def _check_slice_async(job: _Job, done: queue.Queue[int]) -> _SliceResult:
    registry = open_registry(job.settings)
    try:
        verifier = Verifier(EnvelopeCodec(registry), KeyRing(list(job.options.roots)))
        for value in job.key_values:
            # The parent reports on the keys topic; here only the keys it admits matter.
            with contextlib.suppress(InvalidEnvelope):
                verifier.admit_endorsement(value)
        checker = LogChecker(
            verifier, payment_events_topic=job.payments_topic, keys_topic=job.keys_topic
        )
        index = RecordIndex()
        sha256 = hashlib.sha256
        feed = checker.feed
        add = index.add
        pending = 0
        last: dict[tuple[str, int], int] = {}
        ranges = [(topic, p, start, end) for topic, p, start, end in job.piece.ranges]
        async for batch in _read(job.settings, job.options.group_id, ranges, FETCH_TIMEOUT_MS):
            for record in batch:
                # Offsets rise within a partition: the last one written is the last read.
                last[record.topic, record.partition] = record.offset
                event_id = feed(record)
                add(
                    record.topic,
                    record.partition,
                    record.offset,
                    event_id,
                    sha256(record.value).digest(),
                )
            pending += len(batch)
            if pending >= PROGRESS_EVERY:
                done.put(pending)
                pending = 0
        if pending:
            done.put(pending)
        report = checker.finish()
        return _SliceResult(
            report,
            checker.balances,
            index,
            checker.payment_partitions(),
            checker.event_ids(),
            last,
        )
    finally:
        registry.close()


def _merge_slices(
    results: Sequence[_SliceResult],
    report: Report,
    index: RecordIndex,
    balances: Balances,
    payments_topic: str,
) -> None:
    seen_partition: dict[str, int] = {}
    seen_ids: set[str] = set()
    for result in results:
        report.merge(result.report)
        index.merge(result.index)
        balances.merge(result.balances)
        for payment_id, partition in result.payment_partitions.items():
            earlier = seen_partition.setdefault(payment_id, partition)
            if earlier != partition:
                detail = f"{payment_id} has events on partitions {earlier} and {partition}"
                report.add(
                    Finding(
                        payments_topic,
                        partition,
                        -1,
                        None,
                        Check.PARTITION,
                        "split-partition",
                        detail,
                    )
                )
        reused = seen_ids & result.event_ids
        for event_id in sorted(reused):
            report.add(
                Finding(
                    payments_topic,
                    -1,
                    -1,
                    event_id,
                    Check.EVENT_ID,
                    "reused",
                    "event id on more than one partition",
                )
            )
        seen_ids |= result.event_ids


def _reached(
    bounds: Mapping[str, Mapping[int, tuple[int, int]]], results: Sequence[_SliceResult]
) -> dict[str, dict[int, int]]:
    """Topic -> partition -> the offset past the last record read (its first offset if none).

    Not the end offsets: a transactional producer's commit marker may follow
    the last record, and a reader (the projections) stores the offset past
    the last record it applied, never past a marker.
    """
    last: dict[tuple[str, int], int] = {}
    for result in results:
        last.update(result.last_offsets)
    return {
        topic: {
            partition: last[topic, partition] + 1 if (topic, partition) in last else start
            for partition, (start, _) in spans.items()
        }
        for topic, spans in bounds.items()
    }


def cpu_workers() -> int:
    """Worker processes by default: one per core this process may run on."""
    return max(1, len(os.sched_getaffinity(0)))


__all__ = [
    "GROUP_ID_DEFAULT",
    "AuditError",
    "AuditOptions",
    "LogAudit",
    "Progress",
    "audit_log",
    "cpu_workers",
]

"""The anchoring worker: each ledger record a leaf of one Merkle log, checkpoints on a cadence.

``python -m anchoring.worker`` (or ``payledger anchoring run``). Exits 0 on
SIGTERM or SIGINT once the batch in flight is committed.

**What is logged.** The ledger topics (``LEDGER_ROLES``): commands, provider
events, payment events, audit facts and rejected records. Not the keys topic:
it is compacted, so its old records disappear and no one could recompute the
leaves that held them. Not the checkpoints topic: the log would then commit
to its own checkpoints, and every checkpoint would make the log grow again.

**Reading.** One consumer, ``isolation_level=read_committed``, every partition
of those topics assigned explicitly and sought to the positions Postgres holds
(the beginning where it holds none): the positions committed with the leaves
are the only truth. Kafka's committed offsets of the worker's consumer group
(``CONSUMER_GROUP``) are written in each checkpoint's Kafka transaction, so
lag tools see how far the log has read; the worker never reads them.

**Leaves.** One per record, in the order consumed (within a partition, offset
order): ``ledger.tlog.leaf.LeafRecord`` of the topic, partition, offset, the
envelope's event id and SHA-256 of the value. The event id comes from
decoding the envelope without checking its signature: the log commits to what
the topics hold, valid or not (verifying is the auditor's and the
projections' job, and would make the log wait on the keys topic). A record
that does not decode (no envelope, an unknown schema, an empty value) still
becomes a leaf, with ``UNDECODABLE_EVENT_ID`` (never a UUID) as its event id,
so the log covers every record.

**Batches.** Each chunk of a poll is one Postgres transaction holding its
leaves, the tree nodes they complete and the positions past them
(``pgstore.PostgresTreeStore.append_batch``). After any failure the chunk is
dropped, the tree reopened from Postgres and the consumer sought back to the
stored positions: no gap and no repeat, whatever the crash.

**Checkpoints.** Once ``anchoring_checkpoint_every_events`` leaves were
appended since the last checkpoint, or ``anchoring_checkpoint_interval_s``
passed since it, whichever comes first, and only when the log grew (chunks
are cut so a count-triggered checkpoint holds exactly that many new leaves).
A checkpoint is signed with the anchoring key (Ed25519 + ML-DSA-87), checked
against the previous one with its consistency proof, and stored; then
published on the checkpoints topic in a Kafka transaction (``publication``),
then handed to each ``CheckpointHook`` (IPFS, timestamps), each of which is
recorded in Postgres once it finished, and retried until it does.

**Anchored records.** With the IPFS hook, the timestamp hook or both
(``anchoring.hooks``), a checkpoint whose CIDs and complete proof are stored
is published again on the checkpoints topic, same key, with those fields
filled and an event id of its own (``publication.anchored_event_id``), then
recorded as announced (``checkpoint_announcements``), in a Kafka
transaction like the first record. A crash between the two publishes it
again, with the same key and event id. Hooks with scheduled
work (upgrading pending proofs) are ticked every ``hooks.TICK_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final, TypeAlias, TypeVar

import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from anchoring import pgstore
from anchoring.hooks import IPFS_HOOK, TICK_S, TIMESTAMP_HOOK, PeriodicHook, close_hooks
from anchoring.pgstore import UNAVAILABLE, Anchors, PostgresTreeStore, StoredCheckpoint
from anchoring.publication import CheckpointEncoder
from anchoring.writer import Cadence, CheckpointHook, Clock, LogView, LogWriter
from ledger.codec import EnvelopeCodec
from ledger.config import Settings
from ledger.errors import InfrastructureError, InvalidEnvelope
from ledger.publisher import producer_options
from ledger.registry import open_registry
from ledger.tlog.keys import AnchoringKey, load_or_create_anchoring_key
from ledger.tlog.leaf import UNDECODABLE_EVENT_ID, LeafRecord
from ledger.tlog.tree import MerkleTree
from ledger.topics import TopicRole, topic_name

log = logging.getLogger(__name__)

LEDGER_ROLES: Final = (
    TopicRole.COMMANDS,
    TopicRole.PROVIDER_EVENTS,
    TopicRole.PAYMENT_EVENTS,
    TopicRole.AUDIT_FACTS,
    TopicRole.REJECTED,
)
CONSUMER_GROUP: Final = "payledger-anchoring"
CLIENT_ID: Final = "payledger-anchoring"

# How long one poll waits for records before the loop looks at its clock and stop flag.
POLL_TIMEOUT_MS: Final = 250
PARTITION_DISCOVERY_TIMEOUT_S: Final = 30.0
_DISCOVERY_POLL_S: Final = 0.2
# Waiting for the broker to take one checkpoint.
PUBLISH_TIMEOUT_S: Final = 30.0
# Waits between tries while Postgres, Kafka or a hook fails: doubled each time, capped.
RETRY_BACKOFF_BASE_S: Final = 0.2
RETRY_BACKOFF_MAX_S: Final = 5.0
# Checkpoints handed to one hook per round.
HOOK_BATCH_MAX: Final = 100

_T = TypeVar("_T")
Record: TypeAlias = ConsumerRecord[bytes, bytes]


def ledger_topics(settings: Settings) -> list[str]:
    return [topic_name(settings, role) for role in LEDGER_ROLES]


def leaf_of(record: Record, codec: EnvelopeCodec) -> LeafRecord:
    """The leaf of one consumed record (see the module docstring for the event id)."""
    value = record.value or b""
    try:
        event_id = codec.decode(value).envelope.event_id
    except InvalidEnvelope:
        event_id = UNDECODABLE_EVENT_ID
    return LeafRecord.of(record.topic, record.partition, record.offset, event_id, value)


def backoff_s(attempt: int) -> float:
    """The wait after failed try number ``attempt`` (1-based)."""
    return min(RETRY_BACKOFF_BASE_S * 2.0 ** (attempt - 1), RETRY_BACKOFF_MAX_S)


# The worker ------------------------------------------------------------------


@dataclass(slots=True)
class Totals:
    """What the worker did since it started, for its logs and for tests."""

    batches: int = 0
    leaves: int = 0
    undecodable: int = 0
    checkpoints: int = 0
    published: int = 0
    announced: int = 0
    retries: int = 0


class Worker:
    """Appends every ledger record to the log until ``run``'s stop flag is set."""

    def __init__(
        self,
        settings: Settings,
        *,
        hooks: Sequence[CheckpointHook] = (),
        clock: Clock = time.monotonic,
    ) -> None:
        self._settings = settings
        self._schema = pgstore.check_schema_name(settings.anchoring_schema)
        self._hooks = tuple(hooks)
        if len({hook.name for hook in self._hooks}) != len(self._hooks):
            raise ValueError("two checkpoint hooks share a name")
        self._clock = clock
        self._topics = ledger_topics(settings)
        self._checkpoints_topic = topic_name(settings, TopicRole.CHECKPOINTS)
        self._stop = asyncio.Event()
        self._hooks_wanted = asyncio.Event()
        # Set when a hook stored something: anchored records may be due.
        self._announce_wanted = True
        names = {hook.name for hook in self._hooks}
        self._announce_cids = IPFS_HOOK in names
        self._announce_timestamp = TIMESTAMP_HOOK in names
        # Postgres, the tree, decoding and signing run on this one thread, in order.
        self._database = ThreadPoolExecutor(max_workers=1, thread_name_prefix="anchoring-db")
        self._store: PostgresTreeStore | None = None
        self._writer: LogWriter | None = None
        self._partitions: list[TopicPartition] = []
        self.totals = Totals()

    # Running -----------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Append batches until ``stop`` is set; the batch in flight is finished first."""
        self._stop = stop
        settings = self._settings
        key = load_or_create_anchoring_key(settings, settings.anchoring_origin)
        registry = open_registry(settings)
        codec = EnvelopeCodec(registry)
        encoder = CheckpointEncoder(registry, self._checkpoints_topic)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers(),
            client_id=CLIENT_ID,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            # A stored position the log does not have is an error to see, never
            # a silent jump; partitions without one are sought to the beginning.
            auto_offset_reset="none",
        )
        producer = AIOKafkaProducer(
            **producer_options(
                settings,
                client_id=CLIENT_ID,
                # One writer per log: a second worker on the same log fences the first.
                transactional_id=f"{settings.topic_prefix}anchoring.{self._schema}",
            )
        )
        hooks_task: asyncio.Task[None] | None = None
        try:
            self._partitions = await self._discover()
            await consumer.start()
            await producer.start()
            consumer.assign(self._partitions)
            if not await self._reopen(consumer, key):
                return
            hooks_task = asyncio.create_task(self._run_hooks())
            await self._loop(consumer, producer, encoder, codec, key)
        finally:
            if hooks_task is not None:
                hooks_task.cancel()
                await asyncio.gather(hooks_task, return_exceptions=True)
            await consumer.stop()
            await producer.stop()
            await self._db(self._close)
            self._database.shutdown(wait=True)
        log.info("anchoring worker stopped: %s", self.totals)

    async def _loop(
        self,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        encoder: CheckpointEncoder,
        codec: EnvelopeCodec,
        key: AnchoringKey,
    ) -> None:
        publish_attempt = 0
        unpublished = True  # checkpoints stored by an earlier run may wait
        while not self._stop.is_set():
            if unpublished or self._announce_wanted:
                if await self._publish_pending(producer, encoder):
                    unpublished, publish_attempt = False, 0
                else:
                    publish_attempt += 1
                    if await self._pause(backoff_s(publish_attempt)):
                        return
            batches = await consumer.getmany(
                timeout_ms=POLL_TIMEOUT_MS, max_records=self._settings.anchoring_batch_records
            )
            records = [
                record
                for tp in sorted(batches, key=lambda tp: (tp.topic, tp.partition))
                for record in batches[tp]
            ]
            try:
                made = await self._db(self._take, records, codec)
            except UNAVAILABLE as error:
                log.warning("batch of %d records not committed: %r", len(records), error)
                self.totals.retries += 1
                if not await self._reopen(consumer, key):
                    return
                unpublished = True
                continue
            for stored in made:
                log.info("checkpoint at tree size %d", stored.size)
            self.totals.checkpoints += len(made)
            unpublished = unpublished or bool(made)
        if unpublished or self._announce_wanted:
            # The checkpoints of the last batch, once, before the process exits.
            await self._publish_pending(producer, encoder)

    # Publication ---------------------------------------------------------------

    async def _publish_pending(
        self, producer: AIOKafkaProducer, encoder: CheckpointEncoder
    ) -> bool:
        """Publish every stored checkpoint not published yet; False when that failed."""
        try:
            pending, positions = await self._db(self._unpublished)
        except UNAVAILABLE as error:
            log.warning("cannot read the checkpoints to publish: %r", error)
            return False
        offsets = {TopicPartition(t, p): offset for (t, p), offset in positions.items()}
        for stored in pending:
            value = encoder.encode(stored)
            try:
                async with asyncio.timeout(PUBLISH_TIMEOUT_S), producer.transaction():
                    await producer.send_and_wait(
                        self._checkpoints_topic,
                        value,
                        key=str(stored.size).encode(),
                        headers=encoder.headers(stored),
                    )
                    await producer.send_offsets_to_transaction(offsets, CONSUMER_GROUP)
            except (KafkaError, TimeoutError) as error:
                log.warning("checkpoint %d not published: %r", stored.size, error)
                return False
            try:
                await self._db(self._mark_published, stored.size)
            except UNAVAILABLE as error:
                # Published again later, under the same key and event id.
                log.warning("checkpoint %d published, not recorded: %r", stored.size, error)
                return False
            self.totals.published += 1
        if pending:
            self._hooks_wanted.set()
        return await self._announce_pending(producer, encoder)

    async def _announce_pending(
        self, producer: AIOKafkaProducer, encoder: CheckpointEncoder
    ) -> bool:
        """Publish the anchored record of every checkpoint anchored since; False on failure."""
        if not self._announce_wanted:
            return True
        # Cleared before reading: a hook that stores something meanwhile sets it again.
        self._announce_wanted = False
        try:
            anchored = await self._db(self._anchored)
        except UNAVAILABLE as error:
            log.warning("cannot read the anchored checkpoints: %r", error)
            self._announce_wanted = True
            return False
        for stored, anchors in anchored:
            try:
                async with asyncio.timeout(PUBLISH_TIMEOUT_S), producer.transaction():
                    await producer.send_and_wait(
                        self._checkpoints_topic,
                        encoder.encode(stored, anchors),
                        key=str(stored.size).encode(),
                        headers=encoder.headers(stored, anchors),
                    )
                await self._db(self._mark_announced, stored.size, anchors)
            except (KafkaError, TimeoutError, *UNAVAILABLE) as error:
                # Announced again later, under the same event id.
                log.warning("anchored checkpoint %d not announced: %r", stored.size, error)
                self._announce_wanted = True
                return False
            self.totals.announced += 1
        if len(anchored) >= HOOK_BATCH_MAX:
            self._announce_wanted = True  # more may wait
        return True

    # Hooks ---------------------------------------------------------------------

    async def _run_hooks(self) -> None:
        """Offer each hook the published checkpoints it has not finished with, until cancelled."""
        view = _View(self)
        attempt = 0
        periodic = [hook for hook in self._hooks if isinstance(hook, PeriodicHook)]
        while True:
            self._hooks_wanted.clear()
            failed = False
            for hook in self._hooks:
                failed = not await self._run_hook(hook, view) or failed
            for hook in periodic:
                try:
                    if await hook.tick():
                        self._announce_wanted = True
                except Exception:
                    log.exception("hook %s failed its scheduled work", hook.name)
                    failed = True
            attempt = attempt + 1 if failed else 0
            timeout = backoff_s(attempt) if failed else (TICK_S if periodic else None)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hooks_wanted.wait(), timeout=timeout)

    async def _run_hook(self, hook: CheckpointHook, view: LogView) -> bool:
        try:
            pending = await self._db(self._pending_for_hook, hook.name)
        except UNAVAILABLE:
            return False
        for stored in pending:
            try:
                await hook.checkpoint_stored(stored, view)
                await self._db(self._hook_done, hook.name, stored.size)
                self._announce_wanted = True
            except Exception:
                # A hook is a plug-in: whatever it raises, it is offered the
                # checkpoint again later, and the log goes on meanwhile.
                log.exception("hook %s failed on checkpoint %d", hook.name, stored.size)
                return False
        return True

    # Opening -------------------------------------------------------------------

    async def _discover(self) -> list[TopicPartition]:
        """Every partition of the ledger topics, from the cluster's metadata."""
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self._settings.bootstrap_servers(), client_id=CLIENT_ID
        )
        await admin.start()
        try:
            async with asyncio.timeout(PARTITION_DISCOVERY_TIMEOUT_S):
                while True:
                    # Metadata of all topics: naming ours could auto-create them
                    # with the broker's defaults instead of payledger's spec.
                    found = {
                        topic["topic"]: sorted(p["partition"] for p in topic["partitions"])
                        for topic in await admin.describe_topics()
                        if topic["topic"] in self._topics and topic["partitions"]
                    }
                    if len(found) == len(self._topics):
                        return [TopicPartition(t, p) for t in self._topics for p in found[t]]
                    await asyncio.sleep(_DISCOVERY_POLL_S)
        except TimeoutError:
            raise InfrastructureError(
                f"the ledger topics have no partitions after {PARTITION_DISCOVERY_TIMEOUT_S:.0f}s:"
                " run `payledger topics provision`"
            ) from None
        finally:
            await admin.close()

    async def _reopen(self, consumer: AIOKafkaConsumer, key: AnchoringKey) -> bool:
        """The tree from Postgres, the consumer at the stored positions; False when stopping."""
        attempt = 0
        while True:
            if attempt and await self._pause(backoff_s(attempt)):
                return False
            attempt += 1
            try:
                positions = await self._db(self._open, key)
            except UNAVAILABLE as error:
                log.warning("Postgres unavailable (%r); try %d", error, attempt)
                continue
            break
        for tp in self._partitions:
            offset = positions.get((tp.topic, tp.partition))
            if offset is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, offset)
        return True

    async def _pause(self, seconds: float) -> bool:
        """Wait ``seconds`` unless asked to stop first; True when asked to stop."""
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
        except TimeoutError:
            return False
        return True

    async def _db(self, function: Callable[..., _T], *args: object) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._database, function, *args)

    # On the database thread ------------------------------------------------------

    def _open(self, key: AnchoringKey) -> dict[tuple[str, int], int]:
        self._close()
        connection = pgstore.connect(self._settings.dsn(), self._schema)
        try:
            pgstore.migrate(connection, self._schema)
            store = PostgresTreeStore(connection, self._schema)
            tree = MerkleTree(store)
            latest = store.latest_checkpoint()
            positions = store.positions()
        except BaseException:
            connection.close()
            raise
        settings = self._settings
        cadence = Cadence(
            settings.anchoring_checkpoint_every_events,
            settings.anchoring_checkpoint_interval_s,
            0 if latest is None else latest.size,
            self._clock,
        )
        self._store, self._writer = store, LogWriter(store, tree, key, cadence)
        log.info(
            "anchoring into schema %s: %d leaves, last checkpoint at %d",
            self._schema,
            tree.size,
            cadence.last_size,
        )
        return positions

    def _close(self) -> None:
        if self._store is not None:
            self._store.connection.close()
        self._store = self._writer = None

    def _opened(self) -> tuple[PostgresTreeStore, LogWriter]:
        if self._store is None or self._writer is None:
            # A failed batch closed the log; the loop reopens it first.
            raise psycopg.OperationalError("the log is not open")
        return self._store, self._writer

    def _take(self, records: Sequence[Record], codec: EnvelopeCodec) -> list[StoredCheckpoint]:
        """A poll's records into the log (and the checkpoints due); on error the log is closed."""
        _, writer = self._opened()
        leaves = [leaf_of(record, codec) for record in records]
        before = writer.tree.size
        try:
            made = writer.append(leaves)
        except BaseException:
            # The tree may be ahead of what committed: it is read again from Postgres.
            self._close()
            raise
        self.totals.batches += 1 if leaves else 0
        self.totals.leaves += writer.tree.size - before
        self.totals.undecodable += sum(leaf.event_id == UNDECODABLE_EVENT_ID for leaf in leaves)
        return made

    def _unpublished(self) -> tuple[list[StoredCheckpoint], dict[tuple[str, int], int]]:
        store, _ = self._opened()
        return store.unpublished_checkpoints(), store.positions()

    def _mark_published(self, size: int) -> None:
        self._opened()[0].mark_published(size)

    def _pending_for_hook(self, hook: str) -> list[StoredCheckpoint]:
        return self._opened()[0].checkpoints_pending_hook(hook, HOOK_BATCH_MAX)

    def _hook_done(self, hook: str, size: int) -> None:
        self._opened()[0].mark_hook_done(hook, size)

    def _anchored(self) -> list[tuple[StoredCheckpoint, Anchors]]:
        return self._opened()[0].anchored_unannounced(
            cids=self._announce_cids, timestamp=self._announce_timestamp, limit=HOOK_BATCH_MAX
        )

    def _mark_announced(self, size: int, anchors: Anchors) -> None:
        self._opened()[0].mark_announced(size, anchors)

    def leaf_records(self, start: int, end: int) -> list[LeafRecord]:
        return self._opened()[0].leaf_records(start, end)


class _View:
    """The log as hooks see it: reads run on the worker's database thread."""

    __slots__ = ("_worker",)

    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    async def leaf_records(self, start: int, end: int) -> list[LeafRecord]:
        worker = self._worker
        return await worker._db(worker.leaf_records, start, end)


async def run_until_signalled(
    settings: Settings, *, hooks: Sequence[CheckpointHook] = ()
) -> Totals:
    """Run a worker until SIGTERM or SIGINT; returns what it did."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    worker = Worker(settings, hooks=hooks)
    try:
        await worker.run(stop)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await close_hooks(hooks)
    return worker.totals


def main() -> None:
    from anchoring.commands import run  # noqa: PLC0415 - the CLI is the composition root

    run(prog_name="python -m anchoring.worker")


if __name__ == "__main__":
    main()

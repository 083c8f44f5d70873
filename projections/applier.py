"""The applier: payment-events into one Postgres schema, each event exactly once.

Per poll batch, ONE Postgres transaction holds the events' rows, their
``processed_events`` rows and the consumer positions, so a crash at any
point leaves either all of a batch or none of it, and the restarted applier
resumes from the positions committed with the rows (see ``reader``). Inside:

1. an advisory lock for the schema (``store.lock_schema``);
2. what the database knows of the batch's event ids, sequences and payments,
   and the plan (``plan.plan_batch``): apply, duplicate or conflict;
3. the rows, in a savepoint, with the deferred checks run at its end. If the
   database refuses them (a constraint the event breaks), the savepoint is
   undone and the batch applied one event at a time, each in a savepoint of
   its own, so the one refused event is found and every other one applied;
4. the positions, past every record of the batch;
5. the audit facts and dead letters of the records not applied, published and
   acknowledged before the commit: a crash after publishing and before the
   commit only publishes them again, under the same event ids (``facts``).

When Postgres (or Kafka, for a fact) cannot be used, the batch is dropped,
not committed: after a pause (bounded exponential backoff) the applier
reconnects and seeks back to the positions Postgres holds, so nothing is
skipped and nothing doubled. SIGTERM or SIGINT sets the stop flag: the batch
in flight finishes its transaction, and ``run`` returns.

The next batch is polled, decoded and verified (``Reader.candidates``, on the
reader's own thread) while the current batch's transaction runs, so the
signature checks and the SQL use both cores. Batches still apply one after
another in the order read; a batch read ahead is dropped, never committed,
when the current one fails or the applier stops, and read again from the
positions Postgres holds.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

import psycopg
from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import KafkaError

from ledger.codec import EnvelopeCodec
from ledger.config import Settings
from ledger.envelope import NOTE_CHARS_MAX, utc_now
from ledger.keys import KeyRing
from ledger.keystore import ActiveSigner, KeyStore
from ledger.publisher import Publisher, producer_options
from ledger.registry import open_registry
from ledger.topics import TopicRole, topic_name
from ledger.verify import Verifier
from projections import facts, limits, store
from projections.keys import keys_follower
from projections.migrations import migrate_on
from projections.plan import BatchPlan, Candidate, Unusable, lookup, next_offsets, plan_batch
from projections.reader import Reader, Stopping, backoff_s
from projections.rows import Projected

log = logging.getLogger(__name__)

# Kafka could not take an audit fact or dead letter: retried like Postgres.
_PUBLISH_FAILED: Final = (KafkaError, TimeoutError)


@dataclass(slots=True)
class Totals:
    """What the applier did since it started, for its logs and for tests."""

    batches: int = 0
    applied: int = 0
    duplicates: int = 0
    conflicts: int = 0
    rejected: int = 0
    retries: int = 0


@dataclass(frozen=True, slots=True)
class BatchResult:
    plans: tuple[BatchPlan, ...]
    refused: tuple[Unusable, ...] = field(default=())


class Applier:
    """Projects the payment-events topic into ``schema`` until ``run``'s stop flag is set."""

    def __init__(
        self,
        settings: Settings,
        schema: str,
        *,
        batch_records: int = limits.BATCH_RECORDS_DEFAULT,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if not 1 <= batch_records <= limits.BATCH_RECORDS_MAX:
            raise ValueError(f"batch_records must be 1 to {limits.BATCH_RECORDS_MAX}")
        self._settings = settings
        self._schema = schema
        self._batch_records = batch_records
        self._clock = clock
        self._stop = asyncio.Event()
        self.totals = Totals()

    async def run(self, stop: asyncio.Event) -> None:
        """Apply batches until ``stop`` is set; the batch in flight is finished first."""
        self._stop = stop
        keystore = KeyStore(self._settings)
        registry = open_registry(self._settings)
        # Records are decoded on the reader's thread: the publisher has a codec
        # (and schema cache) of its own.
        verifier = Verifier(EnvelopeCodec(registry), KeyRing([keystore.trusted_root()]))
        publisher = self._publisher(keystore, EnvelopeCodec(registry))
        reader = self._reader(verifier)
        try:
            await publisher.start()
            await reader.start()
            connection = await self._reconnect(reader, None)
            if connection is None:
                return
            try:
                await self._loop(reader, publisher, connection)
            finally:
                await connection.close()
        except Stopping:
            log.info("stopped while waiting")
        finally:
            await reader.stop()
            await publisher.stop()
            keystore.close()
        log.info("applier stopped: %s", self.totals)

    def _publisher(self, keystore: KeyStore, codec: EnvelopeCodec) -> Publisher:
        """Where audit facts and dead letters go (a rebuild replaces it: see ``rebuild``)."""
        producer = AIOKafkaProducer(
            **producer_options(self._settings, client_id="payledger-projections")
        )
        return Publisher(
            self._settings,
            codec,
            ActiveSigner(keystore, self._clock),
            producer,
            source=facts.SOURCE,
        )

    def _reader(self, verifier: Verifier) -> Reader:
        """The payment-events consumer (a rebuild replaces it with one that stops at an end)."""
        return Reader(
            self._settings,
            verifier,
            keys_follower(self._settings, verifier),
            topic=topic_name(self._settings, TopicRole.PAYMENT_EVENTS),
            batch_records=self._batch_records,
            pause=self._pause,
        )

    async def _loop(
        self, reader: Reader, publisher: Publisher, connection: store.Connection
    ) -> None:
        # The next batch is read and verified (``_read``: the reader's thread)
        # while this one's transaction runs; batches still apply one after
        # another, in the order read.
        ahead: asyncio.Task[_Read] | None = None
        try:
            while not self._stop.is_set() and not self._finished():
                if ahead is None:
                    ahead = asyncio.create_task(_read(reader))
                records, candidates = await ahead
                ahead = None
                if not records:
                    continue
                ahead = asyncio.create_task(_read(reader))
                try:
                    result = await self._project(connection, publisher, candidates)
                except (*store.UNAVAILABLE, *_PUBLISH_FAILED) as error:
                    log.warning("batch of %d records not committed: %r", len(records), error)
                    self.totals.retries += 1
                    # What was read ahead is read again from the stored positions.
                    await _discard(ahead)
                    ahead = None
                    reconnected = await self._reconnect(reader, connection)
                    if reconnected is None:
                        return
                    connection = reconnected
                    continue
                self._count(result)
        finally:
            if ahead is not None:
                await _discard(ahead)

    def _finished(self) -> bool:
        """Nothing more to apply once the batch in flight is committed (never, live)."""
        return False

    async def _project(
        self,
        connection: store.Connection,
        publisher: Publisher,
        candidates: Sequence[Candidate],
    ) -> BatchResult:
        """One batch, one transaction: rows, processed events, positions; facts before commit."""
        async with connection.transaction():
            await store.lock_schema(connection, self._schema)
            result = await self._write(connection, candidates)
            await store.write_positions(connection, next_offsets(candidates))
            conflicts = tuple(c for plan in result.plans for c in plan.conflicts)
            unusable = tuple(u for plan in result.plans for u in plan.unusable) + result.refused
            for message in facts.outgoing(conflicts, unusable, self._clock()):
                async with asyncio.timeout(limits.PUBLISH_TIMEOUT_S):
                    await publisher.publish(
                        topic_name(self._settings, message.role), message.envelope
                    )
        return result

    async def _write(
        self, connection: store.Connection, candidates: Sequence[Candidate]
    ) -> BatchResult:
        try:
            return BatchResult((await _apply_in_savepoint(connection, candidates),))
        except store.REFUSED as error:
            log.warning(
                "the database refused a batch of %d records (%s); applying them one by one",
                len(candidates),
                _first_line(error),
            )
        plans: list[BatchPlan] = []
        refused: list[Unusable] = []
        for candidate in candidates:
            try:
                plans.append(await _apply_in_savepoint(connection, [candidate]))
            except store.REFUSED as error:
                # Only a projected event writes rows, so only one can be refused.
                assert isinstance(candidate, Projected)
                refused.append(_refusal(candidate, error))
        return BatchResult(tuple(plans), tuple(refused))

    async def _reconnect(
        self, reader: Reader, broken: store.Connection | None
    ) -> store.Connection | None:
        """A migrated connection and the reader at its stored positions; None when stopping."""
        if broken is not None:
            await broken.close()
        attempt = 0
        while True:
            if attempt and await self._pause(backoff_s(attempt)):
                return None
            attempt += 1
            try:
                connection = await store.connect(self._settings.dsn(), self._schema)
            except store.UNAVAILABLE as error:
                log.warning("Postgres unavailable (%s); try %d", _first_line(error), attempt)
                continue
            try:
                await migrate_on(connection, self._schema)
                positions = await store.stored_positions(connection, reader.topic)
            except store.UNAVAILABLE as error:
                log.warning("Postgres unavailable (%s); try %d", _first_line(error), attempt)
                await connection.close()
                continue
            await reader.seek(positions)
            log.info("projecting %s into schema %s from %s", reader.topic, self._schema, positions)
            return connection

    async def _pause(self, seconds: float) -> bool:
        """Wait ``seconds`` unless asked to stop first; True when asked to stop."""
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
        except TimeoutError:
            return False
        return True

    def _count(self, result: BatchResult) -> None:
        totals = self.totals
        totals.batches += 1
        for plan in result.plans:
            totals.applied += len(plan.applied)
            totals.duplicates += len(plan.duplicates)
            totals.conflicts += len(plan.conflicts)
            totals.rejected += len(plan.unusable)
            for conflict in plan.conflicts:
                projected = conflict.projected
                log.error(
                    "conflicting duplicate %s (%s, sequence %d) at %s: %s, already %s",
                    projected.event_id,
                    projected.payment_id,
                    projected.sequence,
                    projected.position,
                    conflict.reason.value,
                    conflict.existing,
                )
            for unusable in plan.unusable:
                log.warning(
                    "record at %s not projected: %s (%s)",
                    unusable.position,
                    unusable.reason,
                    unusable.detail,
                )
            for gap in plan.out_of_order:
                log.warning(
                    "payment %s: sequence %d applied where %d was next",
                    gap.payment_id,
                    gap.found,
                    gap.expected,
                )
        totals.rejected += len(result.refused)
        for refused in result.refused:
            log.error("event at %s refused by the database: %s", refused.position, refused.detail)


_Read = tuple[list[ConsumerRecord[bytes, bytes]], list[Candidate]]


async def _read(reader: Reader) -> _Read:
    """The next batch of records, and what each of them is."""
    records = await reader.poll()
    return records, await reader.candidates(records)


async def _discard(task: asyncio.Task[_Read]) -> None:
    """Cancel a batch read ahead and wait for it: the reader is free again."""
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled():
        task.exception()  # what it read, or why it could not, is dropped


async def _apply_in_savepoint(
    connection: store.Connection, candidates: Sequence[Candidate]
) -> BatchPlan:
    """Plan and write in a savepoint; a refusal (``store.REFUSED``) undoes only that."""
    async with connection.transaction():
        plan = plan_batch(candidates, await store.load_known(connection, lookup(candidates)))
        await store.write_plan(connection, plan)
        await store.check_now(connection)
    return plan


def _refusal(projected: Projected, error: psycopg.Error) -> Unusable:
    """The record of an event the database refused, named by the constraint it broke."""
    return Unusable(
        position=projected.position,
        record_sha256=projected.record_sha256,
        value=projected.value,
        key=projected.payment_id.encode(),
        error_class=facts.REFUSED_ERROR_CLASS,
        reason=error.diag.constraint_name or error.sqlstate or type(error).__name__,
        detail=_first_line(error)[:NOTE_CHARS_MAX],
        envelope=projected.envelope,
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


async def run_until_signalled(
    settings: Settings, schema: str, *, batch_records: int = limits.BATCH_RECORDS_DEFAULT
) -> Totals:
    """Run an applier until SIGTERM or SIGINT; returns what it did."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    applier = Applier(settings, schema, batch_records=batch_records)
    try:
        await applier.run(stop)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return applier.totals

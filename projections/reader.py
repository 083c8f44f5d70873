"""Reading payment-events for the applier: every partition, from Postgres's positions.

The consumer has no group and commits nothing to Kafka: where to resume is
stored in Postgres, in the transaction of the rows (``consumer_positions``),
so the two can never disagree. It is assigned every partition of the topic
and positioned with ``seek`` on what Postgres says -- or at the beginning of
a partition Postgres has no position for -- and reads with
``isolation_level=read_committed``, so records of aborted stream
transactions are never seen.

Each record becomes a ``plan.Candidate``: decoded and verified (event ->
signing key -> endorsement -> root), the key learnt from the keys topic when
it is new (``ledger.keyfeed.KeysFollower``), and checked to carry a payment
event of the payment it is keyed by. ``candidates`` does a batch of them on
one thread of the reader's, so the applier can write one batch while the
next is verified.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Final

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from ledger.config import Settings
from ledger.envelope import Envelope, PaymentEvent
from ledger.errors import InfrastructureError, InvalidEnvelope, Reason
from ledger.keyfeed import KeysFollower
from ledger.verify import Verifier
from projections import limits
from projections.facts import INVALID_ERROR_CLASS, UNPROJECTABLE_ERROR_CLASS
from projections.plan import Candidate, Unusable
from projections.rows import Position, Projected

log = logging.getLogger(__name__)

NOT_A_PAYMENT_EVENT: Final = "not-a-payment-event"
WRONG_AGGREGATE: Final = "wrong-aggregate"
_DISCOVERY_POLL_S: Final = 0.2

# Waits ``seconds`` unless asked to stop first; True when asked to stop.
Pause = Callable[[float], Awaitable[bool]]


class Stopping(Exception):
    """Raised out of a wait when the process was asked to stop."""


class Reader:
    """One consumer of the payment-events topic, and the verification of its records."""

    def __init__(
        self,
        settings: Settings,
        verifier: Verifier,
        keys: KeysFollower,
        *,
        topic: str,
        batch_records: int,
        pause: Pause,
    ) -> None:
        self._settings = settings
        self._verifier = verifier
        self._keys = keys
        self.topic = topic
        self._batch_records = batch_records
        self._pause = pause
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: list[TopicPartition] = []
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._settings.bootstrap_servers(),
            client_id="payledger-projections",
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            # A stored position the log does not have (a topic recreated or
            # truncated) is an error to see, never a silent jump elsewhere;
            # partitions without one are sought to their beginning explicitly.
            auto_offset_reset="none",
        )
        self._partitions = await self._discover()
        await consumer.start()
        self._consumer = consumer
        consumer.assign(self._partitions)
        await self._catch_up_keys()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        await self._keys.stop()
        if self._executor is not None:
            executor, self._executor = self._executor, None
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)

    async def _discover(self) -> list[TopicPartition]:
        """Every partition of the topic, from the cluster's metadata."""
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self._settings.bootstrap_servers(),
            client_id="payledger-projections",
        )
        await admin.start()
        try:
            async with asyncio.timeout(limits.PARTITION_DISCOVERY_TIMEOUT_S):
                while True:
                    # Metadata of all topics: naming ours could auto-create it
                    # with the broker's defaults instead of payledger's spec.
                    for topic in await admin.describe_topics():
                        if topic["topic"] == self.topic and topic["partitions"]:
                            found = sorted(p["partition"] for p in topic["partitions"])
                            return [TopicPartition(self.topic, p) for p in found]
                    await asyncio.sleep(_DISCOVERY_POLL_S)
        except TimeoutError:
            raise InfrastructureError(
                f"topic {self.topic} has no partitions after"
                f" {limits.PARTITION_DISCOVERY_TIMEOUT_S:.0f}s: run `payledger topics provision`"
            ) from None
        finally:
            await admin.close()

    async def seek(self, positions: dict[int, int]) -> None:
        """Read next from ``positions`` (partition -> next offset), or from the beginning."""
        consumer = self._started()
        for tp in self._partitions:
            offset = positions.get(tp.partition)
            if offset is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, offset)

    async def poll(self) -> list[ConsumerRecord[bytes, bytes]]:
        """The next batch, partition by partition, each in offset order; may be empty."""
        batches = await self._started().getmany(
            timeout_ms=limits.POLL_TIMEOUT_MS, max_records=self._batch_records
        )
        return [
            record for tp in sorted(batches, key=lambda tp: tp.partition) for record in batches[tp]
        ]

    async def candidates(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> list[Candidate]:
        """``candidate`` of each record, in order, decoded and verified on the reader's thread.

        libsodium releases the GIL while it checks a signature, so the thread
        works beside the event loop (the applier writing the previous batch).
        A record signed by a key not known yet is judged again here, on the
        loop, once the keys topic has been read (``candidate``).
        """
        if not records:
            return []
        known = await asyncio.get_running_loop().run_in_executor(
            self._judging(), self._judge_known, records
        )
        return [
            candidate if candidate is not None else await self.candidate(record)
            for record, candidate in zip(records, known, strict=True)
        ]

    async def candidate(self, record: ConsumerRecord[bytes, bytes]) -> Candidate:
        try:
            envelope = await self._open(record.value or b"")
        except InvalidEnvelope as error:
            return judged(record, error)
        return judged(record, envelope)

    def _judge_known(
        self, records: Sequence[ConsumerRecord[bytes, bytes]]
    ) -> list[Candidate | None]:
        """Each record judged with the keys known now; None where its key is not known yet."""
        found: list[Candidate | None] = []
        for record in records:
            try:
                envelope = self._verifier.open(record.value or b"")
            except InvalidEnvelope as error:
                found.append(None if error.reason is Reason.UNKNOWN_KEY else judged(record, error))
                continue
            found.append(judged(record, envelope))
        return found

    def _judging(self) -> ThreadPoolExecutor:
        """The one thread that decodes and verifies: batches are judged one after another."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="verify")
        return self._executor

    async def _open(self, value: bytes) -> Envelope:
        """Decode and verify; a key not known yet is looked for on the keys topic first."""
        try:
            return self._verifier.open(value)
        except InvalidEnvelope as error:
            if error.reason is not Reason.UNKNOWN_KEY or not await self._catch_up_keys():
                raise
        return self._verifier.open(value)

    async def _catch_up_keys(self) -> int:
        """New endorsements from the keys topic, waiting out a broker that does not answer.

        The record waiting on it stays unjudged meanwhile: dead-lettering a
        valid event because the keys topic could not be read would lose it.
        """
        attempt = 1
        while True:
            try:
                return await self._keys.catch_up()
            except (TimeoutError, KafkaError) as error:
                wait = backoff_s(attempt)
                log.warning("cannot read the keys topic (%r); retrying in %.1fs", error, wait)
                if await self._pause(wait):
                    raise Stopping from error
                attempt += 1

    def _started(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("the reader is not started")
        return self._consumer


def judged(record: ConsumerRecord[bytes, bytes], opened: Envelope | InvalidEnvelope) -> Candidate:
    """What becomes of a record, given its verified envelope or why it did not verify."""
    value = record.value or b""
    digest = hashlib.sha256(value).digest()
    position = Position(record.topic, record.partition, record.offset)

    def unusable(
        error_class: str, reason: str, detail: str, envelope: Envelope | None = None
    ) -> Unusable:
        return Unusable(position, digest, value, record.key, error_class, reason, detail, envelope)

    if isinstance(opened, InvalidEnvelope):
        return unusable(INVALID_ERROR_CLASS, opened.reason.value, str(opened))
    payload = opened.payload
    if not isinstance(payload, PaymentEvent):
        detail = f"payload is {type(payload).__name__}"
        return unusable(UNPROJECTABLE_ERROR_CLASS, NOT_A_PAYMENT_EVENT, detail, opened)
    if payload.payment_id != opened.aggregate_id:
        detail = f"event of {payload.payment_id} keyed by {opened.aggregate_id}"
        return unusable(UNPROJECTABLE_ERROR_CLASS, WRONG_AGGREGATE, detail, opened)
    return Projected(position, digest, value, opened, payload)


def backoff_s(attempt: int) -> float:
    """The wait after failed try number ``attempt`` (1-based): doubled each time, capped."""
    return min(
        limits.RETRY_BACKOFF_BASE_S * 2.0 ** (attempt - 1),
        limits.RETRY_BACKOFF_MAX_S,
    )

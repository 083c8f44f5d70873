"""What the stream worker knows of event keys: it follows the keys topic.

A record signed by a key the worker has not seen yet is normal: the ingress
(or another worker) rotated its key after this worker started, and published
the new key's endorsement on the keys topic before its first record signed
with it. So before a record is called UNKNOWN_KEY, ``KeysFollower.catch_up``
reads the keys topic (``read_committed``) up to its end offsets and admits
every endorsement that verifies against the trusted root; the caller then
verifies the record again, once.

A keys-topic record that does not verify (forged, not signed by its own key,
not endorsed by our root) is logged and skipped, never admitted: the key it
names stays unknown and records signed with it are dead-lettered. The
follower keeps its position, so each catch-up reads only what is new.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from ledger.config import Settings
from ledger.errors import InvalidEnvelope
from ledger.topics import TopicRole, topic_name
from ledger.verify import Verifier

log = logging.getLogger(__name__)

# One catch-up waits at most this long for the broker before the record is
# judged with the keys known so far (and dead-lettered as UNKNOWN_KEY).
CATCH_UP_TIMEOUT_S = 10.0
_FETCH_TIMEOUT_MS = 200


class KeysFollower:
    """Reads the keys topic into a ``Verifier``'s key ring, on demand."""

    def __init__(self, settings: Settings, verifier: Verifier) -> None:
        self._settings = settings
        self._verifier = verifier
        self._topic = topic_name(settings, TopicRole.KEYS)
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()
        self.admitted = 0
        self.refused = 0

    async def _start(self) -> AIOKafkaConsumer:
        """Connect, subscribed (without a group: every partition) from the beginning."""
        consumer = AIOKafkaConsumer(
            self._topic,
            bootstrap_servers=self._settings.bootstrap_servers(),
            client_id="payledger-streams-keys",
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
        )
        await consumer.start()
        self._consumer = consumer
        return consumer

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def catch_up(self) -> int:
        """Admit what the keys topic holds up to its current end; return how many were new.

        The first call connects. Raises ``TimeoutError`` (or aiokafka's errors)
        when the broker does not answer in time: the record waiting on it is
        then not judged at all, rather than wrongly dead-lettered.
        """
        async with self._lock:
            before = self.admitted
            async with asyncio.timeout(CATCH_UP_TIMEOUT_S):
                consumer = self._consumer or await self._start()
                while not consumer.assignment():  # until the metadata names the partitions
                    self._admit_all(await consumer.getmany(timeout_ms=_FETCH_TIMEOUT_MS))
                # read_committed: the end is the last stable offset.
                ends = await consumer.end_offsets(list(consumer.assignment()))
                while await self._behind(consumer, ends):
                    self._admit_all(await consumer.getmany(timeout_ms=_FETCH_TIMEOUT_MS))
            return self.admitted - before

    def _admit_all(self, batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        for records in batches.values():
            for record in records:
                self._admit(record.value or b"", record.partition, record.offset)

    @staticmethod
    async def _behind(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
        for tp, end in ends.items():
            if await consumer.position(tp) < end:
                return True
        return False

    def _admit(self, value: bytes, partition: int, offset: int) -> None:
        try:
            endorsement = self._verifier.admit_endorsement(value)
        except InvalidEnvelope as error:
            self.refused += 1
            log.warning(
                "keys topic record %s[%d]@%d refused: %s", self._topic, partition, offset, error
            )
            return
        self.admitted += 1
        log.debug("admitted event key %s", endorsement.key_id)

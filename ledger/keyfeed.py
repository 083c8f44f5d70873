"""Following the keys topic: event keys endorsed after a process started.

A record signed by a key a process has not seen yet is normal: the ingress
(or a worker) rotated its key after this process started, and published the
new key's endorsement on the keys topic before its first record signed with
it. So before a record is called UNKNOWN_KEY, ``KeysFollower.catch_up`` reads
the keys topic (``read_committed``) up to its end offsets and admits every
endorsement that verifies against the trusted root; the caller then verifies
the record again, once.

A keys-topic record that does not verify (forged, not signed by its own key,
not endorsed by our root) is logged and skipped, never admitted: the key it
names stays unknown. The follower keeps its position, so each catch-up reads
only what is new.

The Kafka consumer is made by the service that uses the follower (``ledger``
imports no Kafka client): anything shaped like ``aiokafka.AIOKafkaConsumer``
subscribed to the keys topic without a group, from the earliest offset, with
``isolation_level="read_committed"`` (``keys_consumer_options``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from ledger.config import Settings
from ledger.errors import InvalidEnvelope
from ledger.verify import Verifier

log = logging.getLogger(__name__)

# One catch-up waits at most this long for the broker before the caller is
# told (TimeoutError): the record waiting on it is then not judged at all.
CATCH_UP_TIMEOUT_S = 10.0
FETCH_TIMEOUT_MS = 200


class KeysRecord(Protocol):
    partition: int
    offset: int
    value: bytes | None


class KeysConsumer(Protocol):
    """The part of ``aiokafka.AIOKafkaConsumer`` the follower uses."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def assignment(self) -> Any: ...

    async def end_offsets(self, partitions: list[Any]) -> Mapping[Any, int]: ...

    async def position(self, partition: Any) -> int: ...

    async def getmany(self, *, timeout_ms: int) -> Mapping[Any, Sequence[KeysRecord]]: ...


def keys_consumer_options(settings: Settings, *, client_id: str) -> dict[str, Any]:
    """Keyword arguments for the consumer a ``KeysFollower`` reads with (after the topic)."""
    return {
        "bootstrap_servers": settings.bootstrap_servers(),
        "client_id": client_id,
        "group_id": None,
        "enable_auto_commit": False,
        "isolation_level": "read_committed",
        "auto_offset_reset": "earliest",
    }


class KeysFollower:
    """Reads the keys topic into a ``Verifier``'s key ring, on demand."""

    def __init__(
        self,
        topic: str,
        verifier: Verifier,
        new_consumer: Callable[[], KeysConsumer],
    ) -> None:
        self._topic = topic
        self._verifier = verifier
        self._new_consumer = new_consumer
        self._consumer: KeysConsumer | None = None
        self._lock = asyncio.Lock()
        self.admitted = 0
        self.refused = 0

    async def _start(self) -> KeysConsumer:
        consumer = self._new_consumer()
        await consumer.start()
        self._consumer = consumer
        return consumer

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def catch_up(self) -> int:
        """Admit what the keys topic holds up to its current end; return how many were new.

        The first call connects. Raises ``TimeoutError`` (or the Kafka
        client's errors) when the broker does not answer in time: the record
        waiting on it is then not judged at all, rather than wrongly
        dead-lettered.
        """
        async with self._lock:
            before = self.admitted
            async with asyncio.timeout(CATCH_UP_TIMEOUT_S):
                consumer = self._consumer or await self._start()
                while not consumer.assignment():  # until the metadata names the partitions
                    self._admit_all(await consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS))
                # read_committed: the end is the last stable offset.
                ends = await consumer.end_offsets(list(consumer.assignment()))
                while await self._behind(consumer, ends):
                    self._admit_all(await consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS))
            return self.admitted - before

    @staticmethod
    async def _behind(consumer: KeysConsumer, ends: Mapping[Any, int]) -> bool:
        for partition, end in ends.items():
            if await consumer.position(partition) < end:
                return True
        return False

    def _admit_all(self, batches: Mapping[Any, Sequence[KeysRecord]]) -> None:
        for records in batches.values():
            for record in records:
                self._admit(record.value or b"", record.partition, record.offset)

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

"""Sign, encode and produce envelopes: idempotent, ``acks=all``, optionally transactional.

``Publisher`` holds no Kafka client of its own: the service passes a producer
(aiokafka's ``AIOKafkaProducer`` fits ``RecordProducer`` as it is), built from
``producer_options`` so every service configures it the same way.

Every record gets the Confluent wire-format envelope as its value, the
aggregate id as its key (so one payment's events stay in one partition, in
order) and CloudEvents binary-mode headers with a ``traceparent``.

Before the first record signed by a new event key, the key's endorsement is
published on the keys topic and acknowledged, so a consumer that reads the
keys topic first can always verify what follows.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from ledger.cloudevents import TraceContext, kafka_headers
from ledger.codec import EnvelopeCodec
from ledger.config import Settings
from ledger.endorsements import endorsement_envelope
from ledger.envelope import Envelope, KeyEndorsement
from ledger.keystore import ActiveSigner
from ledger.signing import Signer
from ledger.topics import TopicRole, topic_name

PRODUCER_REQUEST_TIMEOUT_MS = 30_000
PRODUCER_LINGER_MS = 5
PRODUCER_MAX_BATCH_BYTES = 1_048_576


class RecordMetadataLike(Protocol):
    topic: str
    partition: int
    offset: int


class RecordProducer(Protocol):
    """The part of a Kafka producer the publisher uses (aiokafka's, structurally)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(
        self, topic: str, value: bytes, *, key: bytes, headers: list[tuple[str, bytes]]
    ) -> asyncio.Future[Any]: ...

    async def send_and_wait(
        self, topic: str, value: bytes, *, key: bytes, headers: list[tuple[str, bytes]]
    ) -> Any: ...

    def transaction(self) -> Any: ...


def producer_options(
    settings: Settings, *, client_id: str, transactional_id: str | None = None
) -> dict[str, Any]:
    """Keyword arguments for ``aiokafka.AIOKafkaProducer``: durable and idempotent."""
    return {
        "bootstrap_servers": settings.bootstrap_servers(),
        "client_id": client_id,
        "acks": "all",
        "enable_idempotence": True,
        "transactional_id": transactional_id,
        "linger_ms": PRODUCER_LINGER_MS,
        "max_batch_size": PRODUCER_MAX_BATCH_BYTES,
        "request_timeout_ms": PRODUCER_REQUEST_TIMEOUT_MS,
    }


@dataclass(frozen=True, slots=True)
class Published:
    envelope: Envelope  # as signed
    topic: str
    partition: int
    offset: int


class Publisher:
    """One producer per process; safe to share between coroutines of one event loop."""

    def __init__(
        self,
        settings: Settings,
        codec: EnvelopeCodec,
        signer: ActiveSigner,
        producer: RecordProducer,
        *,
        source: str,
        transactional: bool = False,
    ) -> None:
        self._settings = settings
        self._codec = codec
        self._signer = signer
        self._source = source
        self._keys_topic = topic_name(settings, TopicRole.KEYS)
        self._registry_url = settings.registry_url()
        self._producer = producer
        self._endorsement_lock = asyncio.Lock()
        self._transactional = transactional

    async def start(self) -> None:
        await self._producer.start()
        # Publish the active key's endorsement at every start: the record is
        # deterministic, so a repeat is harmless, and a crash between making a
        # key and publishing its endorsement can never leave it unpublished.
        endorsement = self._signer.endorsement()
        if self._transactional:
            # A transactional producer sends nothing outside a transaction.
            async with self._producer.transaction():
                await self._publish_endorsement(endorsement)
        else:
            await self._publish_endorsement(endorsement)

    async def stop(self) -> None:
        await self._producer.stop()

    async def __aenter__(self) -> Publisher:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """Everything published inside commits together or not at all."""
        async with self._producer.transaction():
            yield

    async def _publish_endorsement(self, endorsement: KeyEndorsement) -> None:
        async with self._endorsement_lock:
            signer, _ = self._signer.current()
            envelope = endorsement_envelope(endorsement, self._source)
            _, wire = self._codec.encode(envelope, signer, self._keys_topic)
            await self._producer.send_and_wait(
                self._keys_topic,
                wire,
                key=endorsement.key_id.encode(),
                headers=self._headers(envelope, TraceContext.new(), self._keys_topic),
            )

    def _headers(
        self, envelope: Envelope, trace: TraceContext, topic: str
    ) -> list[tuple[str, bytes]]:
        schema_id = self._codec.schema_id(topic)
        return kafka_headers(
            envelope,
            source=self._source,
            trace=trace,
            dataschema=f"{self._registry_url}/schemas/ids/{schema_id}",
        )

    async def _current_signer(self) -> Signer:
        signer, new_endorsement = self._signer.current()
        if new_endorsement is not None:
            await self._publish_endorsement(new_endorsement)
        return signer

    async def _sign(self, topic: str, envelope: Envelope) -> tuple[Envelope, bytes]:
        return self._codec.encode(envelope, await self._current_signer(), topic)

    async def send(
        self, topic: str, envelope: Envelope, trace: TraceContext | None = None
    ) -> asyncio.Future[Any]:
        """Sign and enqueue one record; await the returned future for the broker's ack."""
        signed, wire = await self._sign(topic, envelope)
        future: asyncio.Future[Any] = await self._producer.send(
            topic,
            wire,
            key=envelope.aggregate_id.encode(),
            headers=self._headers(signed, trace or TraceContext.new(), topic),
        )
        return future

    async def publish(
        self, topic: str, envelope: Envelope, trace: TraceContext | None = None
    ) -> Published:
        """Sign, produce and wait until the broker acknowledged the write (acks=all)."""
        signed, wire = await self._sign(topic, envelope)
        metadata: RecordMetadataLike = await self._producer.send_and_wait(
            topic,
            wire,
            key=envelope.aggregate_id.encode(),
            headers=self._headers(signed, trace or TraceContext.new(), topic),
        )
        return Published(signed, metadata.topic, metadata.partition, metadata.offset)

    async def publish_many(
        self, topic: str, envelopes: Sequence[Envelope], trace: TraceContext | None = None
    ) -> list[Published]:
        """Sign and produce a batch, pipelined, and wait for every acknowledgement.

        Records are handed to the producer as they are signed and acknowledged
        together at the end; one key signs the whole batch.
        """
        signer = await self._current_signer()
        trace = trace or TraceContext.new()
        acks: list[asyncio.Future[Any]] = []
        sealed: list[Envelope] = []
        for envelope in envelopes:
            prepared = self._codec.prepare(envelope, signer.key_id, topic)
            signed, wire = self._codec.seal(prepared, signer.sign(prepared.message))
            sealed.append(signed)
            acks.append(
                await self._producer.send(
                    topic,
                    wire,
                    key=signed.aggregate_id.encode(),
                    headers=self._headers(signed, trace.child(), topic),
                )
            )
        results = await asyncio.gather(*acks)
        return [
            Published(envelope, metadata.topic, metadata.partition, metadata.offset)
            for envelope, metadata in zip(sealed, results, strict=True)
        ]

"""The signing publisher over aiokafka, for the stream processors and tools."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer

from ledger.codec import EnvelopeCodec
from ledger.config import Settings
from ledger.keystore import ActiveSigner
from ledger.publisher import Published, Publisher, producer_options

__all__ = ["Published", "Publisher", "kafka_publisher"]


def kafka_publisher(
    settings: Settings,
    codec: EnvelopeCodec,
    signer: ActiveSigner,
    *,
    source: str,
    transactional_id: str | None = None,
) -> Publisher:
    """A publisher on a new aiokafka producer; ``start()`` it before use."""
    producer = AIOKafkaProducer(
        **producer_options(
            settings,
            client_id=f"payledger-{source.strip('/').replace('/', '-')}",
            transactional_id=transactional_id,
        )
    )
    return Publisher(
        settings,
        codec,
        signer,
        producer,
        source=source,
        transactional=transactional_id is not None,
    )

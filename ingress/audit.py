"""Audit facts from one-off commands (CLI), published and acknowledged before returning."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer

from ledger.codec import EnvelopeCodec
from ledger.config import Settings
from ledger.envelope import AuditFact, new_envelope, new_event_id
from ledger.keystore import ActiveSigner, KeyStore
from ledger.publisher import Published, Publisher, producer_options
from ledger.registry import open_registry
from ledger.topics import TopicRole, topic_name


async def publish_audit_fact(settings: Settings, fact: AuditFact, *, source: str) -> Published:
    """Sign and publish one audit fact on the audit-facts topic; wait for the broker's ack."""
    store = KeyStore(settings)
    registry = open_registry(settings)
    producer = AIOKafkaProducer(**producer_options(settings, client_id="payledger-admin"))
    publisher = Publisher(
        settings, EnvelopeCodec(registry), ActiveSigner(store), producer, source=source
    )
    try:
        # Start first: it may make a new signing key, and the fact must be
        # recorded inside that key's validity window.
        await publisher.start()
        event_id = new_event_id()
        envelope = new_envelope(
            event_id=event_id,
            event_type=f"audit.{fact.fact_type}",
            aggregate_id=event_id,
            sequence=1,
            producer=source,
            payload=fact,
        )
        return await publisher.publish(topic_name(settings, TopicRole.AUDIT_FACTS), envelope)
    finally:
        await publisher.stop()
        registry.close()
        store.close()

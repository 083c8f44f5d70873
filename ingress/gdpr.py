"""Erasure of a customer's personal data (GDPR Art. 17) by crypto-shredding.

``forget_customer`` destroys the customer's data key in Postgres and records
an ``AuditFact(fact_type="customer.erased")`` on the audit-facts topic
(event type ``audit.customer.erased``, aggregate id the customer ref). Every
ciphertext sealed under that key, in every topic, replica and backup, is then
unreadable, while every signature, hash and proof over it still verifies.

Order: the key is destroyed in a Postgres transaction that commits only
after the broker acknowledged the audit fact (``acks=all``).

* Kafka down before or during the publish: the transaction rolls back,
  nothing is destroyed, the caller sees an error and runs it again. An
  erasure never happens without its audit fact.
* Postgres fails to commit after the ack (a crash in that instant): the fact
  is on the log but the key still exists. The caller sees an error; running
  it again destroys the key and publishes the fact again under the same
  event id (derived from the customer ref and the data key id), so consumers
  that deduplicate by event id see one erasure. An auditor can detect the
  state meanwhile: a ``customer.erased`` fact whose key still opens.
* Publishing first and destroying after would leave the same window open on
  every Postgres failure, not only a crash between ack and commit;
  destroying first would lose the fact whenever Kafka is down.

Running ingress processes may keep a cached copy of the key for up to
``CUSTOMER_KEY_CACHE_TTL_S`` (see ``ingress.customer_keys``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from psycopg_pool import AsyncConnectionPool

from ingress import db
from ingress.customer_keys import ErasedKey, destroy_data_key
from ledger import limits
from ledger.codec import EnvelopeCodec
from ledger.config import Settings
from ledger.envelope import AuditFact, Envelope, derived_event_id, new_envelope
from ledger.errors import EncodingError, InfrastructureError
from ledger.keystore import ActiveSigner, KeyStore
from ledger.publisher import Published, Publisher, producer_options
from ledger.registry import open_registry
from ledger.sealing import check_customer_ref
from ledger.topics import TopicRole, topic_name

ERASURE_FACT_TYPE = "customer.erased"
ERASURE_EVENT_TYPE = f"audit.{ERASURE_FACT_TYPE}"
DEFAULT_REASON = "erasure of the customer's personal data requested (GDPR Art. 17)"
SOURCE = "/payledger/gdpr"
ACTOR_CHARS_MAX = 200


@dataclass(frozen=True, slots=True)
class Erasure:
    """A completed erasure: the key destroyed and the fact the broker acknowledged."""

    key: ErasedKey
    published: Published


def erasure_envelope(erased: ErasedKey, *, actor: str, reason: str) -> Envelope:
    """The unsigned ``audit.customer.erased`` event for one destroyed key."""
    fact = AuditFact(
        fact_type=ERASURE_FACT_TYPE,
        actor=actor,
        subject=erased.customer_ref,
        reason=reason,
        details={
            "merchant_id": erased.merchant_id,
            "data_key_id": erased.data_key_id,
            "master_key_id": erased.master_key_id,
        },
    )
    return new_envelope(
        # Stable across retries of the same erasure (see the module doc).
        event_id=derived_event_id(ERASURE_EVENT_TYPE, erased.customer_ref, erased.data_key_id),
        event_type=ERASURE_EVENT_TYPE,
        aggregate_id=erased.customer_ref,
        sequence=1,
        producer=SOURCE,
        payload=fact,
    )


async def erase_customer(
    settings: Settings, customer_ref: str, *, actor: str, reason: str | None = None
) -> Erasure | None:
    """Destroy the customer's data key and publish the erasure fact; None if already erased.

    Raises ``UnknownCustomer`` for a ref that never had a key and
    ``InfrastructureError`` when the fact was not acknowledged (then nothing
    was destroyed; see the module doc for the one exception).
    """
    check_customer_ref(customer_ref)
    if not 0 < len(actor) <= ACTOR_CHARS_MAX:
        raise EncodingError(f"actor must be 1 to {ACTOR_CHARS_MAX} characters")
    topic = topic_name(settings, TopicRole.AUDIT_FACTS)
    store = KeyStore(settings)
    registry = open_registry(settings)
    publisher = Publisher(
        settings,
        EnvelopeCodec(registry),
        ActiveSigner(store),
        AIOKafkaProducer(**producer_options(settings, client_id="payledger-gdpr")),
        source=SOURCE,
    )
    pool: AsyncConnectionPool = AsyncConnectionPool(
        settings.dsn(),
        min_size=1,
        max_size=1,
        timeout=db.POOL_TIMEOUT_S,
        open=False,
        kwargs={"connect_timeout": db.CONNECT_TIMEOUT_S},
    )
    published: list[Published] = []

    async def publish(erased: ErasedKey) -> None:
        envelope = erasure_envelope(erased, actor=actor, reason=reason or DEFAULT_REASON)
        try:
            async with asyncio.timeout(limits.ERASURE_PUBLISH_TIMEOUT_S):
                published.append(await publisher.publish(topic, envelope))
        except (KafkaError, OSError, TimeoutError) as error:
            raise InfrastructureError(
                f"the erasure fact for {erased.customer_ref} was not acknowledged by Kafka "
                f"({error!r}); nothing was erased, run it again"
            ) from error

    try:
        # Kafka first: when it is down, fail before any row is locked.
        try:
            async with asyncio.timeout(limits.ERASURE_PUBLISH_TIMEOUT_S):
                await publisher.start()
        except (KafkaError, OSError, TimeoutError) as error:
            raise InfrastructureError(
                f"cannot reach Kafka to record the erasure ({error!r}); nothing was erased"
            ) from error
        await pool.open(wait=True)
        erased = await destroy_data_key(pool, customer_ref, before_commit=publish)
    finally:
        # Safe after a failed start too, and needed: it closes the connections.
        await publisher.stop()
        await pool.close()
        registry.close()
        store.close()
    if erased is None:
        return None
    return Erasure(erased, published[0])


async def forget_customer(
    settings: Settings, customer_ref: str, *, actor: str, reason: str | None = None
) -> bool:
    """Erase the customer (see ``erase_customer``): True now, False if already erased."""
    return await erase_customer(settings, customer_ref, actor=actor, reason=reason) is not None

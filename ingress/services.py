"""The objects one ingress process shares between requests, built once in the app's lifespan."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request

from ingress.auth import Authenticator
from ingress.customer_keys import CustomerKeys
from ingress.problems import Problem
from ingress.ratelimit import RateLimiter
from ledger.config import Settings
from ledger.envelope import AuditFact, Envelope, new_envelope, new_event_id, utc_now
from ledger.publisher import Published, Publisher
from ledger.topics import TopicRole, topic_name

if TYPE_CHECKING:
    from ingress.batching import CreateBatcher

PUBLISH_RETRY_AFTER_S = 5


@dataclass
class Services:
    settings: Settings
    pool: AsyncConnectionPool
    publisher: Publisher
    authenticator: Authenticator
    rate_limiter: RateLimiter
    customer_keys: CustomerKeys
    clock: Callable[[], datetime] = utc_now
    source: str = "/payledger/ingress"
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # Group commit for POST /v1/payments; set in the app's lifespan.
    creates: CreateBatcher | None = None

    def topic(self, role: TopicRole) -> str:
        return topic_name(self.settings, role)

    async def publish(self, role: TopicRole, envelope: Envelope) -> Published:
        """Publish and wait for the broker's ack, within a bounded time, or raise 503.

        A timeout does not prove the record was lost (the producer may still
        deliver it); callers derive event ids from the request's idempotency
        key, so a retry after a 503 yields the same event id and consumers
        drop the duplicate.
        """
        try:
            async with asyncio.timeout(self.settings.publish_timeout_s):
                return await self.publisher.publish(self.topic(role), envelope)
        except Exception as error:
            if is_unavailable(error):
                raise unavailable(error) from error
            raise

    async def audit(
        self,
        fact_type: str,
        *,
        actor: str,
        subject: str,
        reason: str | None = None,
        digest: bytes | None = None,
        details: dict[str, str] | None = None,
    ) -> Published:
        fact = AuditFact(
            fact_type=fact_type,
            actor=actor,
            subject=subject,
            reason=reason,
            digest=digest,
            details=details or {},
        )
        # Each fact is its own aggregate: facts about one subject come from many
        # places, so no single writer could number them in sequence.
        event_id = new_event_id()
        envelope = new_envelope(
            event_id=event_id,
            event_type=f"audit.{fact_type}",
            aggregate_id=event_id,
            sequence=1,
            producer=self.source,
            payload=fact,
            now=self.clock(),
        )
        return await self.publish(TopicRole.AUDIT_FACTS, envelope)


def is_unavailable(error: BaseException) -> bool:
    """Whether ``error`` means the broker could not take a record (timeout, network, Kafka)."""
    if isinstance(error, (TimeoutError, OSError, ConnectionError)):
        return True
    # aiokafka raises its own KafkaError tree; this module stays free of it.
    return type(error).__module__.startswith("aiokafka")


def unavailable(error: BaseException) -> Problem:
    return Problem(
        503,
        "ledger-unavailable",
        "The ledger is unavailable",
        "the event could not be durably recorded; retry with the same Idempotency-Key",
        headers={"Retry-After": str(PUBLISH_RETRY_AFTER_S)},
    )


async def services(request: Request) -> Services:
    # async: FastAPI would run a plain function in its thread pool, per request.
    found: Services = request.app.state.services
    return found

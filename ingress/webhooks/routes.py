"""``POST /v1/webhooks/{stripe,paypal,coinbase}``: verify, dedupe, publish, then answer.

For every delivery, in order:

1. Read the raw body, at most ``WEBHOOK_BODY_BYTES_MAX`` bytes (413 beyond).
2. Verify it exactly as the provider specifies, then read the event from it.
   A failure is answered 400 ``webhook-verification-failed`` (or
   ``webhook-malformed`` for an authentic body we cannot read) and becomes a
   ``webhook.rejected`` audit fact with the body's SHA-256; nothing else is
   stored. The response never says which check failed; the audit fact does.
3. In one Postgres transaction: take the aggregate's next sequence number,
   record the delivery (provider, event id) and publish the ``ProviderEvent``
   envelope, waiting for the broker's ack; commit only then. A publish that
   fails or times out rolls the transaction back and is answered 503 with
   Retry-After, so the provider redelivers and nothing half-done remains.
4. A delivery whose event id is already recorded is answered 200 and
   publishes nothing.

The publish happens inside the transaction, so a crash between the broker's
ack and the commit leaves an event on Kafka with no row here: the retry
publishes it again with the same event id (derived from the provider's event
id), which consumers drop as a duplicate. Holding the sequence row's lock
across the publish also makes sequence order equal partition order for
each aggregate.

Nothing here answers 500: an unexpected failure is logged and answered 503,
which providers retry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, cast

import psycopg
from fastapi import APIRouter
from psycopg_pool import AsyncConnectionPool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ingress.problems import Problem
from ingress.webhooks import coinbase, paypal, stripe
from ingress.webhooks.errors import MalformedEvent, WebhookVerificationError
from ingress.webhooks.events import NormalizedEvent
from ingress.webhooks.paypal import PayPalHeaders
from ingress.webhooks.paypal_certs import PayPalCertificates
from ledger import limits
from ledger.config import Settings
from ledger.envelope import AuditFact, Envelope, Provider, new_envelope, new_event_id, utc_now
from ledger.errors import EncodingError
from ledger.publisher import Publisher
from ledger.topics import TopicRole, topic_name

log = logging.getLogger("payledger.ingress.webhooks")

PRODUCER = "/payledger/ingress"
REJECTED_FACT = "webhook.rejected"
# Provider events get event ids derived from (provider, provider event id),
# so a delivery published twice (ack received, commit lost) is one event id.
_EVENT_NAMESPACE = uuid.UUID("3c9d8a4e-61f2-4b7a-9e05-2d4c8b1f7a63")
# An unverified body's claimed event id goes into the audit fact only if it is
# plainly an id; anything else is recorded as "unknown".
_SUBJECT = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")

# Verify a delivery's headers and body; returns the id that must be unique per
# delivery besides the event id (PayPal's transmission id), or None.
Verify = Callable[[Headers, bytes], Awaitable[str | None]]


@dataclasses.dataclass(frozen=True, slots=True)
class _Provider:
    provider: Provider
    verify: Verify
    normalize: Callable[[bytes], NormalizedEvent]
    guess_event_id: Callable[[bytes], str | None]


def webhook_router(
    *,
    settings: Settings,
    publisher: Publisher | None = None,
    pool: AsyncConnectionPool | None = None,
    clock: Callable[[], datetime] = utc_now,
    paypal_certificates: PayPalCertificates | None = None,
    publish_timeout_s: float = limits.WEBHOOK_PUBLISH_TIMEOUT_S,
) -> APIRouter:
    """The three webhook endpoints.

    ``publisher`` must not be transactional (concurrent requests each publish
    on their own). ``publisher`` and ``pool`` may be left out when the app
    builds them in its lifespan, after the routes: they are then taken at
    request time from ``request.app.state.services`` (its ``publisher`` and
    ``pool`` attributes).
    """
    certificates = (
        PayPalCertificates(clock=clock) if paypal_certificates is None else paypal_certificates
    )
    stripe_secrets = [s.get_secret_value().encode() for s in settings.stripe_webhook_secrets]
    coinbase_secrets = [s.get_secret_value().encode() for s in settings.coinbase_webhook_secrets]
    paypal_ids = list(settings.paypal_webhook_ids)

    async def verify_stripe(headers: Headers, body: bytes) -> str | None:
        stripe.verify(
            _single(headers, "stripe-signature"),
            body,
            secrets=stripe_secrets,
            now=clock(),
            tolerance_s=settings.stripe_webhook_tolerance_s,
        )
        return None

    async def verify_paypal(headers: Headers, body: bytes) -> str | None:
        values = PayPalHeaders.from_lookup(lambda name: _single(headers, name))
        await paypal.verify(
            values,
            body,
            webhook_ids=paypal_ids,
            certificates=certificates,
            now=clock(),
            tolerance_s=settings.paypal_webhook_tolerance_s,
        )
        return values.transmission_id

    async def verify_coinbase(headers: Headers, body: bytes) -> str | None:
        coinbase.verify(_single(headers, "x-cc-webhook-signature"), body, secrets=coinbase_secrets)
        return None

    handler = _Handler(settings, publisher, pool, clock, publish_timeout_s)
    router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
    for spec in (
        _Provider(Provider.STRIPE, verify_stripe, stripe.normalize, stripe.guess_event_id),
        _Provider(Provider.PAYPAL, verify_paypal, paypal.normalize, paypal.guess_event_id),
        _Provider(Provider.COINBASE, verify_coinbase, coinbase.normalize, coinbase.guess_event_id),
    ):
        router.add_api_route(
            f"/{spec.provider.value.lower()}",
            handler.endpoint(spec),
            methods=["POST"],
            response_model=None,
            summary=f"Receive a {spec.provider.value.title()} webhook delivery",
        )
    return router


class _Handler:
    def __init__(
        self,
        settings: Settings,
        publisher: Publisher | None,
        pool: AsyncConnectionPool | None,
        clock: Callable[[], datetime],
        publish_timeout_s: float,
    ) -> None:
        self._publisher = publisher
        self._pool = pool
        self._clock = clock
        self._publish_timeout_s = publish_timeout_s
        self._events_topic = topic_name(settings, TopicRole.PROVIDER_EVENTS)
        self._audit_topic = topic_name(settings, TopicRole.AUDIT_FACTS)

    def endpoint(self, spec: _Provider) -> Callable[[Request], Awaitable[Response]]:
        async def receive(request: Request) -> Response:
            try:
                return await self._receive(request, spec)
            except Problem as problem:
                return problem.response(instance=request.url.path)
            except Exception:
                log.exception("%s webhook: unexpected failure", spec.provider.value)
                return _unavailable().response(instance=request.url.path)

        return receive

    async def _receive(self, request: Request, spec: _Provider) -> Response:
        body = await self._read_body(request, spec)
        digest = hashlib.sha256(body).digest()
        try:
            unique_id = await spec.verify(request.headers, body)
        except WebhookVerificationError as error:
            if error.retryable:
                log.warning("%s webhook: cannot verify now: %s", spec.provider.value, error.reason)
                raise _unavailable() from None
            await self._reject(request, spec, error.reason, digest, body)
            raise _verification_failed() from None
        try:
            event = spec.normalize(body)
            # Build once outside the transaction: an event our envelope cannot
            # carry is malformed, not a reason to make the provider retry.
            template = self._envelope(event, digest, sequence=1)
        except (MalformedEvent, EncodingError) as error:
            reason = error.reason if isinstance(error, MalformedEvent) else f"unencodable: {error}"
            await self._reject(request, spec, reason, digest, body)
            raise _malformed() from None
        outcome = await self._record(request, event, template, digest, unique_id)
        if outcome == "replayed-transmission":
            await self._reject(request, spec, outcome, digest, body)
            raise _verification_failed()
        return JSONResponse({"status": outcome, "provider_event_id": event.event_id})

    async def _read_body(self, request: Request, spec: _Provider) -> bytes:
        declared = request.headers.get("content-length", "")
        too_large = declared.isdigit() and int(declared) > limits.WEBHOOK_BODY_BYTES_MAX
        body = bytearray()
        if not too_large:
            async for chunk in request.stream():
                body.extend(chunk)
                if len(body) > limits.WEBHOOK_BODY_BYTES_MAX:
                    too_large = True
                    break
        if too_large:
            # No digest: the body was not read whole, and hashing a prefix
            # would name a body nobody sent.
            await self._audit(request, spec.provider, "unknown", "body-too-large", None)
            raise Problem(
                413,
                "webhook-too-large",
                "Webhook body too large",
                f"the body exceeds {limits.WEBHOOK_BODY_BYTES_MAX} bytes",
                limit_bytes=limits.WEBHOOK_BODY_BYTES_MAX,
            )
        return bytes(body)

    def _envelope(self, event: NormalizedEvent, digest: bytes, *, sequence: int) -> Envelope:
        received_at = self._clock()
        event_id = str(uuid.uuid5(_EVENT_NAMESPACE, f"{event.provider.value}\x00{event.event_id}"))
        return Envelope(
            event_id=event_id,
            event_type=event.envelope_type,
            aggregate_id=event.aggregate_id(),
            sequence=sequence,
            occurred_at=event.occurred_at or received_at,
            recorded_at=received_at,
            producer=PRODUCER,
            correlation_id=event_id,
            payload=event.provider_event(received_at=received_at, body_sha256=digest),
        )

    async def _record(
        self,
        request: Request,
        event: NormalizedEvent,
        template: Envelope,
        digest: bytes,
        unique_id: str | None,
    ) -> str:
        """``"recorded"``, ``"duplicate"`` or ``"replayed-transmission"``."""
        publisher, pool = self._publisher_of(request), self._pool_of(request)
        provider = event.provider.value
        try:
            async with pool.connection() as connection:
                conflict = False
                async with connection.transaction():
                    sequence = await _next_sequence(connection, template.aggregate_id)
                    envelope = dataclasses.replace(template, sequence=sequence)
                    cursor = await connection.execute(
                        "INSERT INTO webhook_deliveries (provider, provider_event_id, body_sha256,"
                        " received_at, transmission_id, event_id, aggregate_id, sequence)"
                        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                        " ON CONFLICT DO NOTHING RETURNING 1",
                        (
                            provider,
                            event.event_id,
                            digest,
                            envelope.recorded_at,
                            unique_id,
                            envelope.event_id,
                            envelope.aggregate_id,
                            sequence,
                        ),
                    )
                    if await cursor.fetchone() is None:
                        conflict = True
                        # Undo the sequence increment; the block ends here.
                        raise psycopg.Rollback()
                    await self._publish(publisher, self._events_topic, envelope)
                if not conflict:
                    return "recorded"
                cursor = await connection.execute(
                    "SELECT body_sha256 FROM webhook_deliveries"
                    " WHERE provider = %s AND provider_event_id = %s",
                    (provider, event.event_id),
                )
                recorded = await cursor.fetchone()
                if recorded is None:
                    return "replayed-transmission"
                if bytes(recorded[0]) != digest:
                    # Authentic, yet a different body for a recorded event: kept
                    # out of the ledger (the first body stands) but worth a look.
                    log.warning(
                        "%s webhook: event %s redelivered with another body",
                        provider,
                        event.event_id,
                    )
                return "duplicate"
        except (psycopg.Error, TimeoutError) as error:
            # psycopg_pool.PoolTimeout is a psycopg.OperationalError.
            log.warning("%s webhook: Postgres unavailable: %s", provider, type(error).__name__)
            raise _unavailable() from None

    async def _reject(
        self, request: Request, spec: _Provider, reason: str, digest: bytes, body: bytes
    ) -> None:
        log.info("%s webhook rejected: %s", spec.provider.value, reason)
        await self._audit(request, spec.provider, _subject(spec, body), reason, digest)

    async def _audit(
        self,
        request: Request,
        provider: Provider,
        subject: str,
        reason: str,
        digest: bytes | None,
    ) -> None:
        """Publish the ``webhook.rejected`` fact, or answer 503: no rejection goes unrecorded."""
        fact = AuditFact(
            fact_type=REJECTED_FACT,
            actor=provider.value.lower(),
            subject=subject,
            reason=reason,
            digest=digest,
        )
        # Each fact is its own aggregate (sequence 1): rejections have no
        # single writer that could number them.
        event_id = new_event_id()
        envelope = new_envelope(
            event_type=f"audit.{REJECTED_FACT}",
            aggregate_id=event_id,
            sequence=1,
            producer=PRODUCER,
            payload=fact,
            correlation_id=event_id,
            now=self._clock(),
        )
        await self._publish(self._publisher_of(request), self._audit_topic, envelope)

    async def _publish(self, publisher: Publisher, topic: str, envelope: Envelope) -> None:
        try:
            async with asyncio.timeout(self._publish_timeout_s):
                await publisher.publish(topic, envelope)
        except Exception as error:
            # aiokafka raises its own error tree and timeouts; this module
            # stays free of it. Whatever the cause, nothing was acknowledged.
            log.warning("webhook publish to %s failed: %s", topic, type(error).__name__)
            raise _unavailable() from None

    def _publisher_of(self, request: Request) -> Publisher:
        if self._publisher is not None:
            return self._publisher
        publisher = _from_services(request, "publisher")
        if publisher is None:
            raise _unavailable()
        return cast(Publisher, publisher)

    def _pool_of(self, request: Request) -> AsyncConnectionPool:
        if self._pool is not None:
            return self._pool
        pool = _from_services(request, "pool")
        if pool is None:
            raise _unavailable()
        return cast(AsyncConnectionPool, pool)


async def _next_sequence(connection: psycopg.AsyncConnection[Any], aggregate_id: str) -> int:
    cursor = await connection.execute(
        "INSERT INTO provider_event_sequences (aggregate_id, last_sequence) VALUES (%s, 1)"
        " ON CONFLICT (aggregate_id) DO UPDATE"
        " SET last_sequence = provider_event_sequences.last_sequence + 1"
        " RETURNING last_sequence",
        (aggregate_id,),
    )
    row = await cursor.fetchone()
    assert row is not None  # INSERT ... RETURNING always returns the row
    sequence: int = row[0]
    return sequence


def _from_services(request: Request, name: str) -> object:
    services = getattr(request.app.state, "services", None)
    return getattr(services, name, None)


def _single(headers: Headers, name: str) -> str | None:
    """The one value of header ``name``; a repeated signature header is ambiguous, so refused."""
    values = headers.getlist(name)
    if len(values) > 1:
        raise WebhookVerificationError(f"malformed-header: {name} repeated")
    return values[0] if values else None


def _subject(spec: _Provider, body: bytes) -> str:
    try:
        claimed = spec.guess_event_id(body)
    except MalformedEvent:
        return "unknown"
    return claimed if claimed is not None and _SUBJECT.match(claimed) else "unknown"


def _verification_failed() -> Problem:
    return Problem(
        400,
        "webhook-verification-failed",
        "Webhook verification failed",
        "the delivery's signature, time or certificate did not verify",
    )


def _malformed() -> Problem:
    return Problem(
        400,
        "webhook-malformed",
        "Webhook event malformed",
        "the delivery verified but its body is not an event this endpoint can read",
    )


def _unavailable() -> Problem:
    return Problem(
        503,
        "ledger-unavailable",
        "The ledger is unavailable",
        "the delivery could not be recorded now; redeliver it later",
        headers={"Retry-After": str(limits.WEBHOOK_RETRY_AFTER_S)},
    )

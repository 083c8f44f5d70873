"""What the stream agents do with one record, apart from Faust: decide, call, emit.

``Processor.command`` and ``Processor.provider_event`` each take one record
read from their topic and:

1. decode and verify it (a poison record -- undecodable, unknown schema id,
   bad or unknown signature -- becomes a ``DeadLetter`` on the rejected topic
   and nothing else happens);
2. apply the state machine to the payment's state, read from the table;
3. for an accepted CREATE, call the payment's provider with an idempotency key
   derived from the command's event id, retrying timeouts and 5xx with bounded
   exponential backoff (``ledger.limits.PROVIDER_*``);
4. emit the decision: its payment events on payment-events, or for a
   rejection a ``DeadLetter`` on rejected and an ``AuditFact`` on audit-facts;
   and write the new state back to the table.

Records are emitted through ``Emit``: in the Faust app, the app's own
transactional producer, so they commit together with the consumed offset and
the table's changelog. Every emitted record is signed with the active key;
before the first record signed by a key, its endorsement goes on the keys
topic in the same transaction.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from datetime import datetime

import ledger.envelope as envelope_module
from ledger import limits
from ledger.cloudevents import TraceContext, header_value, kafka_headers
from ledger.codec import EnvelopeCodec
from ledger.config import Settings
from ledger.endorsements import endorsement_envelope
from ledger.envelope import (
    AuditFact,
    CommandKind,
    DeadLetter,
    Envelope,
    PaymentCommand,
    Provider,
    derived_event_id,
    utc_now,
)
from ledger.errors import InvalidEnvelope
from ledger.keystore import ActiveSigner
from ledger.payments import machine
from ledger.payments.machine import Decision, Outcome, PaymentState
from ledger.topics import TopicRole, topic_name
from ledger.verify import Verifier
from streams import state as state_codec
from streams.providers import (
    CreatePayment,
    Operation,
    PaymentProvider,
    ProviderError,
    ProviderResult,
    derive_idempotency_key,
    provider_for,
)
from streams.providers.base import FailureKind

log = logging.getLogger(__name__)

SOURCE = "/payledger/streams"
POISON_ERROR_CLASS = "invalid-envelope"
PROVIDER_FAILED_FACT_TYPE = "payment.provider-call-failed"

Headers = list[tuple[str, bytes]]
# (topic, key, value, headers) -> awaitable broker acknowledgement (or None).
Emit = Callable[[str, bytes, bytes, Headers], Awaitable[object]]
# The payment table: payment id (bytes) -> serialized PaymentState (bytes).
Table = MutableMapping[bytes, bytes]


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed record, as the agent saw it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Headers


def backoff_s(attempt: int) -> float:
    """The wait after failed try number ``attempt`` (1-based), capped."""
    return min(
        limits.PROVIDER_RETRY_BACKOFF_BASE_S * 2.0 ** (attempt - 1),
        limits.PROVIDER_RETRY_BACKOFF_MAX_S,
    )


async def call_with_retries(
    call: Callable[[], Awaitable[ProviderResult]],
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> ProviderResult:
    """Run ``call`` until it succeeds, fails for good, or runs out of tries.

    Only retryable failures (timeouts, connection errors, 429, 5xx) are tried
    again; the caller passes the same idempotency key each time.
    """
    attempt = 1
    while True:
        try:
            return await call()
        except ProviderError as error:
            if not error.retryable or attempt >= limits.PROVIDER_CALL_ATTEMPTS_MAX:
                raise
            wait = backoff_s(attempt)
            if error.retry_after_s is not None:
                wait = min(max(wait, error.retry_after_s), limits.PROVIDER_RETRY_BACKOFF_MAX_S)
            log.warning(
                "provider call failed (try %d), retrying in %.2fs: %s", attempt, wait, error
            )
            await sleep(wait)
            attempt += 1


class Processor:
    """Shared by both agents of one worker; holds no per-payment state of its own."""

    def __init__(
        self,
        settings: Settings,
        codec: EnvelopeCodec,
        verifier: Verifier,
        signer: ActiveSigner,
        *,
        providers: Callable[[Provider], PaymentProvider] | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._settings = settings
        self._codec = codec
        self._verifier = verifier
        self._signer = signer
        self._clock = clock
        self._make_provider = providers or (lambda p: provider_for(settings, p))
        self._providers: dict[Provider, PaymentProvider] = {}
        self._announced: set[str] = set()
        self._registry_url = settings.registry_url()
        self.topics = {role: topic_name(settings, role) for role in TopicRole}

    async def aclose(self) -> None:
        for provider in self._providers.values():
            await provider.aclose()
        self._providers.clear()

    # The two agents ---------------------------------------------------------

    async def command(self, record: Record, table: Table, emit: Emit) -> Outcome | None:
        return await self._process(record, table, emit, machine.apply_command)

    async def provider_event(self, record: Record, table: Table, emit: Emit) -> Outcome | None:
        return await self._process(record, table, emit, machine.apply_provider_event)

    async def _process(
        self,
        record: Record,
        table: Table,
        emit: Emit,
        apply: Callable[[PaymentState | None, Envelope], Decision],
    ) -> Outcome | None:
        trace = TraceContext.parse(header_value(record.headers, "traceparent"))
        trace = trace.child() if trace else TraceContext.new()
        try:
            envelope = self._verifier.open(record.value)
        except InvalidEnvelope as error:
            await self._poison(record, error, emit, trace)
            return None
        key = envelope.aggregate_id.encode()
        stored = table.get(key)
        before = state_codec.loads(stored) if stored is not None else None
        decision = apply(before, envelope)
        if decision.outcome is Outcome.REJECTED:
            assert decision.rejection is not None
            await self._reject(record, envelope, decision, emit, trace)
            return decision.outcome
        if decision.outcome is Outcome.DUPLICATE:
            return decision.outcome
        if isinstance(envelope.payload, PaymentCommand):
            await self._call_provider(envelope, envelope.payload, decision, emit, trace)
        topic = self.topics[TopicRole.PAYMENT_EVENTS]
        for event in decision.events:
            await self._emit(topic, event.envelope(producer=SOURCE, now=self._clock()), emit, trace)
        assert decision.state is not None
        # A new value, never the stored one changed in place.
        table[key] = state_codec.dumps(decision.state)
        return decision.outcome

    # Provider calls ---------------------------------------------------------

    async def _call_provider(
        self,
        command: Envelope,
        payload: PaymentCommand,
        decision: Decision,
        emit: Emit,
        trace: TraceContext,
    ) -> None:
        """CREATE only in this slice; capture, cancel and refund are recorded, not yet called."""
        if payload.command is not CommandKind.CREATE or decision.state is None:
            return
        state = decision.state
        provider = self._provider(state.provider)
        try:
            key = derive_idempotency_key(command.event_id)
            request = CreatePayment(
                payment_id=state.payment_id,
                amount=state.money(state.amount_minor),
                capture_method=state.capture_method,
                description=payload.description,
            )
            result = await call_with_retries(lambda: provider.create(request, idempotency_key=key))
        except (ProviderError, ValueError) as error:
            if isinstance(error, ValueError):
                error = ProviderError(
                    state.provider, Operation.CREATE, FailureKind.INVALID_INPUT, str(error)
                )
            log.error("create at %s failed for %s: %s", state.provider, state.payment_id, error)
            fact = AuditFact(
                fact_type=PROVIDER_FAILED_FACT_TYPE,
                actor=state.provider.value.lower(),
                subject=state.payment_id,
                reason=error.kind.value,
                details={"detail": error.detail[:500], "event_id": command.event_id},
            )
            await self._emit_fact(fact, command, "provider-call-failed", emit, trace)
            return
        log.info(
            "created %s at %s: %s (%s)", state.payment_id, state.provider, result.ref, result.status
        )

    def _provider(self, provider: Provider) -> PaymentProvider:
        if provider not in self._providers:
            self._providers[provider] = self._make_provider(provider)
        return self._providers[provider]

    # Rejections and poison --------------------------------------------------

    async def _reject(
        self,
        record: Record,
        envelope: Envelope,
        decision: Decision,
        emit: Emit,
        trace: TraceContext,
    ) -> None:
        rejection = decision.rejection
        assert rejection is not None
        letter = machine.dead_letter(
            rejection,
            envelope,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            original=record.value,
        )
        await self._emit_dead_letter(letter, record, envelope.aggregate_id, envelope, emit, trace)
        fact = machine.audit_fact(rejection, envelope, decision.state)
        await self._emit_fact(fact, envelope, "rejected", emit, trace)

    async def _poison(
        self, record: Record, error: InvalidEnvelope, emit: Emit, trace: TraceContext
    ) -> None:
        log.warning(
            "poison record %s[%d]@%d: %s", record.topic, record.partition, record.offset, error
        )
        import hashlib  # noqa: PLC0415 - only poison needs it

        letter = DeadLetter(
            original_topic=record.topic,
            original_partition=record.partition,
            original_offset=record.offset,
            original_sha256=hashlib.sha256(record.value).digest(),
            original_bytes=(
                record.value
                if len(record.value) <= envelope_module.DEAD_LETTER_ORIGINAL_BYTES_MAX
                else None
            ),
            error_class=POISON_ERROR_CLASS,
            reason=error.reason.value,
            detail=str(error)[: envelope_module.NOTE_CHARS_MAX],
        )
        await self._emit_dead_letter(letter, record, _aggregate_of(record), None, emit, trace)

    async def _emit_dead_letter(  # noqa: PLR0917 - one call site, all arguments named by role
        self,
        letter: DeadLetter,
        record: Record,
        aggregate_id: str,
        cause: Envelope | None,
        emit: Emit,
        trace: TraceContext,
    ) -> None:
        now = self._clock()
        event_id = derived_event_id(
            "dead-letter", record.topic, str(record.partition), str(record.offset)
        )
        envelope = Envelope(
            event_id=event_id,
            event_type=f"dead-letter.{letter.error_class}",
            aggregate_id=aggregate_id,
            # The rejected topic has no per-payment order: the source offset, 1-based.
            sequence=record.offset + 1,
            occurred_at=now,
            recorded_at=now,
            producer=SOURCE,
            correlation_id=cause.correlation_id if cause else event_id,
            causation_id=cause.event_id if cause else None,
            payload=letter,
        )
        await self._emit(self.topics[TopicRole.REJECTED], envelope, emit, trace)

    async def _emit_fact(
        self, fact: AuditFact, cause: Envelope, kind: str, emit: Emit, trace: TraceContext
    ) -> None:
        now = self._clock()
        event_id = derived_event_id("audit", kind, cause.event_id)
        envelope = Envelope(
            event_id=event_id,
            event_type=f"audit.{fact.fact_type}",
            aggregate_id=fact.subject[: limits.AGGREGATE_ID_CHARS_MAX],
            sequence=1,
            occurred_at=now,
            recorded_at=now,
            producer=SOURCE,
            correlation_id=cause.correlation_id,
            causation_id=cause.event_id,
            payload=fact,
        )
        await self._emit(self.topics[TopicRole.AUDIT_FACTS], envelope, emit, trace)

    # Signing and emitting ---------------------------------------------------

    async def _emit(self, topic: str, envelope: Envelope, emit: Emit, trace: TraceContext) -> None:
        signer, _ = self._signer.current()
        if signer.key_id not in self._announced:
            # Before the first record signed by this key: its endorsement, in
            # the same transaction. Deterministic, so a repeat is harmless.
            keys_topic = self.topics[TopicRole.KEYS]
            endorsement = self._signer.endorsement()
            announcement = endorsement_envelope(endorsement, SOURCE)
            signed, wire = self._codec.encode(announcement, signer, keys_topic)
            await emit(
                keys_topic,
                endorsement.key_id.encode(),
                wire,
                self._headers(signed, trace.child(), keys_topic),
            )
            self._announced.add(signer.key_id)
        signed, wire = self._codec.encode(envelope, signer, topic)
        await emit(
            topic, envelope.aggregate_id.encode(), wire, self._headers(signed, trace.child(), topic)
        )

    def _headers(self, envelope: Envelope, trace: TraceContext, topic: str) -> Headers:
        schema_id = self._codec.schema_id(topic)
        return kafka_headers(
            envelope,
            source=SOURCE,
            trace=trace,
            dataschema=f"{self._registry_url}/schemas/ids/{schema_id}",
        )


def _aggregate_of(record: Record) -> str:
    """The record key when it is a usable aggregate id, else where the record is."""
    if record.key:
        try:
            text = record.key.decode("utf-8")
        except UnicodeDecodeError:
            text = ""
        if 0 < len(text) <= limits.AGGREGATE_ID_CHARS_MAX and text.isprintable():
            return text
    return f"poison:{record.partition}:{record.offset}"

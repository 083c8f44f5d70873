"""What the stream agents do with one record, apart from Faust: decide, call, emit.

``Processor.command`` and ``Processor.provider_event`` each take one record
read from their topic and:

1. decode and verify it (a poison record -- undecodable, unknown schema id,
   bad or unknown signature -- becomes a ``DeadLetter`` on the rejected topic
   and nothing else happens); a signing key the worker does not know yet is
   first looked for on the keys topic (``KeySource.catch_up``), since keys
   rotate while workers run;
2. apply the state machine to the payment's state, read from the table
   (a ``streams.state.Entry``: the state, the provider's references, and any
   held provider events);
3. for an accepted command, call the payment's provider -- CREATE, CAPTURE,
   CANCEL or REFUND -- with an idempotency key derived from the command's
   event id (``derive_idempotency_key(event_id)`` for CREATE,
   ``derive_idempotency_key(event_id, operation)`` for the others), against
   the references earlier calls returned (see below), retrying timeouts, 429
   and 5xx with bounded exponential backoff (``ledger.limits.PROVIDER_*``).
   For an applied provider event whose rule names a follow-up call
   (``transitions.follow_up``: PayPal's approved order is authorized, or
   captured, by the merchant's side), make that call the same way, its key
   derived from the event's id and the operation. A call that fails for good
   (non-retryable, or out of tries) is published as an ``AuditFact``
   ``payment.provider-call-failed`` on audit-facts and a ``DeadLetter`` of
   the command or event (error class ``provider-call-failed``) on rejected;
   the ``*_REQUESTED`` or provider event's payment event stands, followed by
   a ``NOTED`` payment event that says which call failed and why (the
   merchant sees it in the payment's timeline), and the merchant sends a new
   command (a replay of the same one is a duplicate);
4. emit the decision: its payment events on payment-events, or for a
   rejection a ``DeadLetter`` on rejected and an ``AuditFact`` on audit-facts;
   and write the new entry back to the table.

A provider event read before its payment's CREATE (the machine's retryable
rejection) is not dead-lettered: it is held in the payment's entry and
applied right after the CREATE, in the order read. At most
``limits.STREAMS_HELD_EVENTS_PER_PAYMENT_MAX`` events and
``STREAMS_HELD_EVENT_BYTES_PER_PAYMENT_MAX`` wire bytes are held per payment;
one beyond either bound, and a held event that still does not apply after the
CREATE, gets a dead letter and an audit fact like any rejection. A
redelivery of a held provider event id is not held twice. Held events of a
payment whose CREATE never comes stay in the table.

The references each call returns are kept in the entry by what they name
(``ProviderResult.ref_kind``): the payment (what create returned), an
authorization, and each capture with its amount and what was refunded of it
(PayPal keeps these as objects of their own; Stripe and Coinbase return the
payment's reference from every call). Capture and cancel go against the
authorization if there is one, else the payment; a capture of part of an
authorization keeps the rest open unless it takes all that is left. A refund
goes against the captures kept, oldest first, each for at most what is left
of it (one call per capture, keys ``refund``, ``refund-2``, ...); one they
cannot cover is refused before any call. With no captures kept, it goes
against the payment.

Records are emitted through ``Emit``: in the Faust app, the app's own
transactional producer, so they commit together with the consumed offset and
the table's changelog. Every emitted record is signed with the active key;
before the first record signed by a key, its endorsement goes on the keys
topic in the same transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal, Protocol

from aiokafka.errors import KafkaError

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
    Money,
    PaymentCommand,
    Provider,
    ProviderEvent,
    derived_event_id,
    utc_now,
)
from ledger.errors import InvalidEnvelope, Reason
from ledger.keystore import ActiveSigner
from ledger.payments import machine, transitions
from ledger.payments.machine import Decision, Outcome, PaymentState
from ledger.payments.transitions import FollowUp
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
from streams.providers.base import FailureKind, RefKind, SeparateAuthorization, unsupported

log = logging.getLogger(__name__)

SOURCE = "/payledger/streams"
POISON_ERROR_CLASS = "invalid-envelope"
PROVIDER_FAILED_FACT_TYPE = "payment.provider-call-failed"
PROVIDER_FAILED_ERROR_CLASS = "provider-call-failed"
# What ``Processor`` returns for a provider event held until its payment's CREATE.
HELD: Final = "held"
_HOLD_FULL = (
    f"not held: the payment already holds {limits.STREAMS_HELD_EVENTS_PER_PAYMENT_MAX} events"
    f" or {limits.STREAMS_HELD_EVENT_BYTES_PER_PAYMENT_MAX} bytes"
)

Headers = list[tuple[str, bytes]]
# (topic, key, value, headers) -> awaitable broker acknowledgement (or None).
Emit = Callable[[str, bytes, bytes, Headers], Awaitable[object]]


class KeySource(Protocol):
    """Where endorsements published after start come from (``ledger.keyfeed.KeysFollower``)."""

    async def catch_up(self) -> int:
        """Admit new endorsements into the verifier's ring; return how many."""
        ...


class Table(Protocol):
    """The payment table: payment id (bytes) -> serialized ``streams.state.Entry`` (bytes).

    ``put`` returns once the change is on its way to the table's changelog on
    the source record's transaction (in the Faust app), so that two changes
    of one payment reach the changelog in the order they were made.
    """

    def get(self, key: bytes) -> bytes | None: ...

    async def put(self, key: bytes, value: bytes) -> None: ...


class MemoryTable(dict[bytes, bytes]):
    """A ``Table`` in memory, for tools and tests."""

    async def put(self, key: bytes, value: bytes) -> None:
        self[key] = value


class PaymentLocks:
    """One ``asyncio.Lock`` per payment id, alive only while someone holds or awaits it."""

    def __init__(self) -> None:
        self._locks: dict[bytes, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: bytes) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


# The outcome of one record: None for a poison record, HELD for a held one.
Result = Outcome | Literal["held"] | None

_OPERATIONS = {
    CommandKind.CREATE: Operation.CREATE,
    CommandKind.CAPTURE: Operation.CAPTURE,
    CommandKind.CANCEL: Operation.CANCEL,
    CommandKind.REFUND: Operation.REFUND,
}
_FOLLOW_UPS = {FollowUp.AUTHORIZE: Operation.AUTHORIZE, FollowUp.CAPTURE: Operation.CAPTURE}


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
        keys: KeySource | None = None,
    ) -> None:
        self._settings = settings
        self._keys = keys
        self._locks = PaymentLocks()
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

    async def command(self, record: Record, table: Table, emit: Emit) -> Result:
        return await self._process(record, table, emit, machine.apply_command)

    async def provider_event(self, record: Record, table: Table, emit: Emit) -> Result:
        return await self._process(record, table, emit, machine.apply_provider_event)

    async def _process(
        self,
        record: Record,
        table: Table,
        emit: Emit,
        apply: Callable[[PaymentState | None, Envelope], Decision],
    ) -> Result:
        trace = TraceContext.parse(header_value(record.headers, "traceparent"))
        trace = trace.child() if trace else TraceContext.new()
        try:
            envelope = await self._open(record.value)
        except InvalidEnvelope as error:
            await self._poison(record, error, emit, trace)
            return None
        key = envelope.aggregate_id.encode()
        # One payment's records, from either agent, one at a time: a webhook
        # read while its payment's command waits on the provider must see the
        # state that command writes, and write after it (see the module doc).
        async with self._locks.hold(key):
            return await self._apply(record, envelope, key, table, emit, apply, trace)

    async def _apply(  # noqa: PLR0917 - one call site, all arguments named by role
        self,
        record: Record,
        envelope: Envelope,
        key: bytes,
        table: Table,
        emit: Emit,
        apply: Callable[[PaymentState | None, Envelope], Decision],
        trace: TraceContext,
    ) -> Result:
        stored = table.get(key)
        entry = state_codec.loads_entry(stored) if stored is not None else state_codec.Entry()
        decision = apply(entry.state, envelope)
        if decision.outcome is Outcome.REJECTED:
            assert decision.rejection is not None
            if decision.rejection.retryable and entry.state is None:
                held = _hold(record, envelope, entry)
                if held is not None:
                    if held is not entry:
                        await table.put(key, state_codec.dumps_entry(held))
                    log.info("holding %s until %s is created", envelope.event_id, key.decode())
                    return HELD
                decision = dataclasses.replace(
                    decision,
                    rejection=dataclasses.replace(
                        decision.rejection,
                        detail=f"{decision.rejection.detail}; {_HOLD_FULL}"[
                            : envelope_module.NOTE_CHARS_MAX
                        ],
                        retryable=False,
                    ),
                )
            await self._reject(record, envelope, decision, emit, trace)
            return decision.outcome
        if decision.outcome is Outcome.DUPLICATE:
            return decision.outcome
        assert decision.state is not None
        # The decision's events first: a call that fails for good is reported
        # by a payment event of its own, after them (see _run_calls).
        await self._emit_events(decision, emit, trace)
        # The references and held events carry over; the calls below add to them.
        after = dataclasses.replace(entry, state=decision.state)
        if isinstance(envelope.payload, PaymentCommand):
            after = await self._call_provider(
                record, envelope, envelope.payload, decision, after, emit, trace
            )
        else:
            after = await self._follow_up(record, envelope, decision, after, emit, trace)
        if entry.state is None and entry.held:
            after = await self._release(after, emit, trace)
        # A new value, never the stored one changed in place.
        await table.put(key, state_codec.dumps_entry(after))
        return decision.outcome

    async def _open(self, wire: bytes) -> Envelope:
        """Decode and verify; a key not known yet is looked for on the keys topic first."""
        try:
            return self._verifier.open(wire)
        except InvalidEnvelope as error:
            if error.reason is not Reason.UNKNOWN_KEY or self._keys is None:
                raise
            if not await self._catch_up_keys():
                raise
        return self._verifier.open(wire)

    async def _catch_up_keys(self) -> int:
        """New endorsements from the keys topic; waits out a broker that does not answer.

        The record stays unjudged meanwhile: dead-lettering it because the
        keys topic could not be read would lose a valid command.
        """
        assert self._keys is not None
        attempt = 1
        while True:
            try:
                return await self._keys.catch_up()
            except (TimeoutError, KafkaError) as error:
                wait = backoff_s(attempt)
                log.warning("cannot read the keys topic (%r); retrying in %.2fs", error, wait)
                await asyncio.sleep(wait)
                attempt += 1

    async def _emit_events(self, decision: Decision, emit: Emit, trace: TraceContext) -> None:
        topic = self.topics[TopicRole.PAYMENT_EVENTS]
        for event in decision.events:
            await self._emit(topic, event.envelope(producer=SOURCE, now=self._clock()), emit, trace)

    async def _release(
        self, entry: state_codec.Entry, emit: Emit, trace: TraceContext
    ) -> state_codec.Entry:
        """Apply the held provider events, in the order read, right after the CREATE.

        Each is verified again; one that does not apply now (or no longer
        verifies) gets its dead letter and audit fact as if just read. One
        that applies gets its follow-up call, as if just read.
        """
        for held in entry.held:
            record = Record(
                topic=held.topic,
                partition=held.partition,
                offset=held.offset,
                key=None,
                value=held.value,
                headers=[],
            )
            try:
                envelope = self._verifier.open(held.value)
            except InvalidEnvelope as error:
                await self._poison(record, error, emit, trace)
                continue
            decision = machine.apply_provider_event(entry.state, envelope)
            if decision.outcome is Outcome.REJECTED:
                await self._reject(record, envelope, decision, emit, trace)
                continue
            if decision.outcome is Outcome.DUPLICATE:
                continue
            await self._emit_events(decision, emit, trace)
            entry = dataclasses.replace(entry, state=decision.state)
            entry = await self._follow_up(record, envelope, decision, entry, emit, trace)
        return dataclasses.replace(entry, held=())

    # Provider calls ---------------------------------------------------------

    async def _call_provider(  # noqa: PLR0917 - one call site, all arguments named by role
        self,
        record: Record,
        command: Envelope,
        payload: PaymentCommand,
        decision: Decision,
        entry: state_codec.Entry,
        emit: Emit,
        trace: TraceContext,
    ) -> state_codec.Entry:
        """Make the provider calls an accepted command asks for; return the entry to keep.

        The keys are derived from the command's event id, so a redelivered
        command (after a crash, before its offset committed) repeats the same
        calls and the provider answers them with the first outcome. A call
        that fails for good becomes an ``AuditFact``
        (``payment.provider-call-failed``) and a ``DeadLetter`` of the
        command; the recorded ``*_REQUESTED`` event stays, the references kept
        so far stay, and the merchant may send a new command.
        """
        state = decision.state
        assert state is not None
        operation = _OPERATIONS[payload.command]
        amount = decision.events[0].payload.amount if decision.events else None

        def plan() -> list[_Call]:
            if operation is Operation.CREATE:
                request = CreatePayment(
                    payment_id=state.payment_id,
                    amount=state.money(state.amount_minor),
                    capture_method=state.capture_method,
                    description=payload.description,
                )
                return [_Call(operation, derive_idempotency_key(command.event_id), create=request)]
            return _plan(command.event_id, operation, state, entry, amount)

        return await self._run_calls(record, command, state, entry, operation, plan, emit, trace)

    async def _follow_up(  # noqa: PLR0917 - two call sites, all arguments named by role
        self,
        record: Record,
        event: Envelope,
        decision: Decision,
        entry: state_codec.Entry,
        emit: Emit,
        trace: TraceContext,
    ) -> state_codec.Entry:
        """Make the call the provider event's rule asks for next, if any; return the entry.

        ``transitions.follow_up`` names it by the payment's capture method
        (PayPal's approved order: authorize it, or capture it). It is made for
        an event that applied or was recorded, not for a stale one, and only
        while the payment has no authorization or capture reference: once one
        of them is kept, the call was made. Its key is derived from the
        event's id and the operation, and it is retried and fails like a
        command's call (audit fact and dead letter of the event, which stands).
        """
        state = decision.state
        payload = event.payload
        if (
            state is None
            or not isinstance(payload, ProviderEvent)
            or decision.outcome not in (Outcome.APPLIED, Outcome.RECORDED)
        ):
            return entry
        call = transitions.follow_up(payload, state.capture_method)
        if call is None:
            return entry
        if entry.authorization_ref is not None or entry.captures:
            log.info(
                "no %s of %s after %s: it was made already",
                call,
                state.payment_id,
                payload.provider_event_id,
            )
            return entry
        operation = _FOLLOW_UPS[call]

        def plan() -> list[_Call]:
            return _plan(event.event_id, operation, state, entry, None)

        return await self._run_calls(record, event, state, entry, operation, plan, emit, trace)

    async def _run_calls(  # noqa: PLR0917 - internal, all arguments named by role
        self,
        record: Record,
        cause: Envelope,
        state: PaymentState,
        entry: state_codec.Entry,
        operation: Operation,
        plan: Callable[[], list[_Call]],
        emit: Emit,
        trace: TraceContext,
    ) -> state_codec.Entry:
        """Plan the calls for ``operation``, make them in order, keep what each returns.

        A call that fails for good stops the rest: its audit fact and dead
        letter are published, and the entry keeps what the calls before it
        returned (a refund of several captures may stop part way).
        """
        provider = self._provider(state.provider)
        calls: list[_Call] = []
        done = 0
        try:
            calls = plan()
            for call in calls:
                result = await call_with_retries(_invoke(provider, call))
                log.info(
                    "%s of %s at %s: %s (%s)",
                    call.operation,
                    state.payment_id,
                    state.provider,
                    result.ref,
                    result.status,
                )
                entry = _kept(entry, state, call, result)
                done += 1
        except (ProviderError, ValueError) as error:
            if isinstance(error, ValueError):
                error = ProviderError(
                    state.provider, operation, FailureKind.INVALID_INPUT, str(error)
                )
            if done:
                error = _after_parts(error, calls, done)
            await self._provider_failed(record, cause, state, error, emit, trace)
            # And in the payment's own timeline, where the merchant reads it.
            assert entry.state is not None
            failed = machine.provider_call_failed(
                entry.state,
                cause,
                f"{error.operation.value} at {state.provider.value.lower()}: "
                f"{error.kind.value}: {error.detail}",
            )
            await self._emit_events(failed, emit, trace)
            entry = dataclasses.replace(entry, state=failed.state)
        return entry

    async def _provider_failed(  # noqa: PLR0917 - one call site, all arguments named by role
        self,
        record: Record,
        cause: Envelope,
        state: PaymentState,
        error: ProviderError,
        emit: Emit,
        trace: TraceContext,
    ) -> None:
        log.error(
            "%s at %s failed for %s: %s", error.operation, state.provider, state.payment_id, error
        )
        details = {
            "detail": error.detail[:500],
            "event_id": cause.event_id,
            "operation": error.operation.value,
            "retryable": str(error.retryable).lower(),
        }
        if error.status_code is not None:
            details["status_code"] = str(error.status_code)
        fact = AuditFact(
            fact_type=PROVIDER_FAILED_FACT_TYPE,
            actor=state.provider.value.lower(),
            subject=state.payment_id,
            reason=error.kind.value,
            details=details,
        )
        await self._emit_fact(fact, cause, "provider-call-failed", emit, trace)
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
            original_event_id=cause.event_id,
            original_event_type=cause.event_type,
            error_class=PROVIDER_FAILED_ERROR_CLASS,
            reason=error.kind.value,
            detail=str(error)[: envelope_module.NOTE_CHARS_MAX],
        )
        await self._emit_dead_letter(letter, record, state.payment_id, cause, emit, trace)

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


@dataclass(frozen=True, slots=True)
class _Call:
    """One provider call to make: what, with which key, against which reference."""

    operation: Operation
    key: str
    ref: str | None = None  # None for a create
    amount: Money | None = None
    final: bool = True  # a capture: it closes the authorization
    capture: int | None = None  # a refund: the index of its capture in Entry.captures
    create: CreatePayment | None = None


def _plan(
    event_id: str,
    operation: Operation,
    state: PaymentState,
    entry: state_codec.Entry,
    amount: Money | None,
) -> list[_Call]:
    """The calls that make ``operation`` for the payment, against the references kept.

    Capture and cancel go against the authorization when the provider keeps
    one of its own, else against the payment; so does a follow-up authorize.
    A capture is final when it takes all that is left of what was authorized.
    A refund goes against the captures the provider keeps of their own, if
    any: the oldest first, each for at most what is left of it, one call per
    capture (keys ``refund``, ``refund-2``, ...); a refund that the captures
    kept cannot cover is refused before any call. Without such captures it
    goes against the payment.
    """
    if operation is Operation.REFUND and entry.captures:
        return _refund_plan(event_id, state, entry, amount)
    key = derive_idempotency_key(event_id, operation.value)
    ref = entry.provider_ref
    if operation in (Operation.CAPTURE, Operation.CANCEL) and entry.authorization_ref is not None:
        ref = entry.authorization_ref
    if ref is None:
        raise ProviderError(
            state.provider,
            operation,
            FailureKind.INVALID_INPUT,
            "no provider reference for this payment (its create call failed)",
        )
    final = True
    if operation is Operation.CAPTURE and amount is not None:
        captured = max(state.captured_minor, sum(c.amount_minor for c in entry.captures))
        final = captured + amount.amount_minor >= state.authorized_minor
    return [_Call(operation, key, ref, amount, final=final)]


def _refund_plan(
    event_id: str, state: PaymentState, entry: state_codec.Entry, amount: Money | None
) -> list[_Call]:
    refundable = sum(capture.refundable_minor for capture in entry.captures)
    wanted = refundable if amount is None else amount.amount_minor
    calls: list[_Call] = []
    left = wanted
    for index, capture in enumerate(entry.captures):
        take = min(left, capture.refundable_minor)
        if take <= 0:
            continue
        step = Operation.REFUND.value if not calls else f"{Operation.REFUND.value}-{len(calls) + 1}"
        calls.append(
            _Call(
                Operation.REFUND,
                derive_idempotency_key(event_id, step),
                capture.ref,
                state.money(take),
                capture=index,
            )
        )
        left -= take
        if left == 0:
            break
    if left > 0 or not calls:
        raise ProviderError(
            state.provider,
            Operation.REFUND,
            FailureKind.INVALID_INPUT,
            f"a refund of {wanted} with {refundable} left to refund of the "
            f"{len(entry.captures)} captures made: nothing was sent",
        )
    return calls


def _invoke(provider: PaymentProvider, call: _Call) -> Callable[[], Awaitable[ProviderResult]]:
    """The call, ready to be tried (again) with the same key."""
    key, ref, amount = call.key, call.ref, call.amount
    if call.operation is Operation.CREATE:
        request = call.create
        assert request is not None
        return lambda: provider.create(request, idempotency_key=key)
    assert ref is not None
    if call.operation is Operation.AUTHORIZE:
        if not isinstance(provider, SeparateAuthorization):
            raise unsupported(
                provider.provider, call.operation, "the provider has no authorize call"
            )
        return lambda: provider.authorize(ref, idempotency_key=key)
    if call.operation is Operation.CAPTURE:
        if isinstance(provider, SeparateAuthorization):
            final = call.final
            return lambda: provider.capture(ref, amount, idempotency_key=key, final=final)
        return lambda: provider.capture(ref, amount, idempotency_key=key)
    if call.operation is Operation.REFUND:
        return lambda: provider.refund(ref, amount, idempotency_key=key)
    return lambda: provider.cancel(ref, idempotency_key=key)


def _kept(
    entry: state_codec.Entry, state: PaymentState, call: _Call, result: ProviderResult
) -> state_codec.Entry:
    """``entry`` with what a successful call returned, by what its reference names."""
    if call.capture is not None:  # a refund of one capture kept
        refunded = _reported(result, state, call.amount)
        captures = list(entry.captures)
        capture = captures[call.capture]
        captures[call.capture] = dataclasses.replace(
            capture, refunded_minor=capture.refunded_minor + refunded
        )
        return dataclasses.replace(entry, captures=tuple(captures))
    if result.ref_kind is RefKind.AUTHORIZATION:
        return dataclasses.replace(entry, authorization_ref=result.ref)
    if result.ref_kind is RefKind.CAPTURE:
        if call.operation is not Operation.CAPTURE:
            return entry
        captured = _reported(
            result,
            state,
            call.amount
            or state.money(state.amount_minor - sum(c.amount_minor for c in entry.captures)),
        )
        capture = state_codec.CaptureRef(ref=result.ref, amount_minor=captured)
        return dataclasses.replace(entry, captures=(*entry.captures, capture))
    return dataclasses.replace(entry, provider_ref=result.ref)


def _reported(result: ProviderResult, state: PaymentState, asked: Money | None) -> int:
    """The amount the provider says it moved, when it says so readably; else what was asked."""
    if (
        result.amount is not None
        and result.amount.currency == state.currency
        and result.amount.amount_minor > 0
    ):
        return result.amount.amount_minor
    return asked.amount_minor if asked is not None else 0


def _after_parts(error: ProviderError, calls: list[_Call], done: int) -> ProviderError:
    """``error`` of call ``done + 1`` of several, saying what the calls before it did."""
    moved = sum(call.amount.amount_minor for call in calls[:done] if call.amount is not None)
    wanted = sum(call.amount.amount_minor for call in calls if call.amount is not None)
    return ProviderError(
        error.provider,
        error.operation,
        error.kind,
        f"call {done + 1} of {len(calls)} failed after {moved} of {wanted} went through: "
        f"{error.detail}",
        status_code=error.status_code,
        provider_code=error.provider_code,
        retryable=error.retryable,
        retry_after_s=error.retry_after_s,
    )


def _hold(record: Record, envelope: Envelope, entry: state_codec.Entry) -> state_codec.Entry | None:
    """The entry with this early provider event held; ``entry`` itself if it already is.

    None when the hold is full (``limits.STREAMS_HELD_EVENTS_*``): the caller
    dead-letters the event with an audit fact, as any rejection.
    """
    payload = envelope.payload
    if not isinstance(payload, ProviderEvent):
        return None
    if any(h.provider_event_id == payload.provider_event_id for h in entry.held):
        return entry  # a redelivery of an event already held
    if (
        len(entry.held) >= limits.STREAMS_HELD_EVENTS_PER_PAYMENT_MAX
        or entry.held_bytes + len(record.value) > limits.STREAMS_HELD_EVENT_BYTES_PER_PAYMENT_MAX
    ):
        return None
    held = state_codec.HeldEvent(
        provider_event_id=payload.provider_event_id,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        value=record.value,
    )
    return dataclasses.replace(entry, held=(*entry.held, held))


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

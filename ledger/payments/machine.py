"""The payment state machine: pure functions from (state, input event) to a ``Decision``.

Two inputs, both signed envelopes read from the log:

* ``apply_command``: a merchant's ``PaymentCommand``. CREATE makes the
  payment; CAPTURE, CANCEL and REFUND are checked against the state and the
  provider's command table and recorded as ``*_REQUESTED`` events. They move
  no money: the agent calls the provider, and the money moves when the
  provider says it did.
* ``apply_provider_event``: a verified ``ProviderEvent``, read through its
  provider's table (``transitions``) into a ``Transition``, then applied.

Every accepted input becomes exactly one ``PaymentEvent`` with the payment's
next sequence number (``Outcome.APPLIED``, ``RECORDED`` or ``STALE``).
An input that was seen before is a ``DUPLICATE``: nothing is emitted. An
input that is not allowed is ``REJECTED``: nothing is emitted, the payment
keeps its state, and the agent publishes a dead letter and an audit fact
(``dead_letter``, ``audit_fact``).

The rules, in the order they are checked for a provider event:

1. A provider event id seen before is a duplicate. A money movement (a PayPal
   capture, refund or reversal id) seen before under another event id is
   recorded and moves nothing: nothing moves twice.
2. Money is bounded: captured <= authorized (the payment amount when capture
   and authorization are one step), refunded + charged back + held for a
   dispute <= captured, fees given back <= fees taken. An event beyond a
   bound is rejected. Running totals from the provider (Stripe's
   ``amount_received`` and ``amount_refunded``) that are lower than ours are
   older deliveries: stale.
3. The status after a money movement is derived from the totals
   (``derived_status``); an explicit status change comes from the table.
   A change to another status must be in the provider's ``ALLOWED`` table.
   If it is not: an event that moves no money and would move the payment
   backwards (``status.is_backwards``) is stale; anything else is rejected.
   An allowed status change whose event happened (provider time) before the
   event that set the current status is stale too.

Nothing here does I/O or reads a clock: the same inputs give the same
decisions, payloads and event ids, so an auditor replaying the commands and
provider events can compare every payment event with the one on the log.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Final

from ledger.envelope import (
    DEAD_LETTER_ORIGINAL_BYTES_MAX,
    NOTE_CHARS_MAX,
    AuditFact,
    CaptureMethod,
    CommandKind,
    DeadLetter,
    Envelope,
    Money,
    PaymentCommand,
    PaymentEvent,
    PaymentEventKind,
    Posting,
    Provider,
    ProviderEvent,
    derived_event_id,
)
from ledger.payments import postings as rules
from ledger.payments.postings import LedgerInvariantError, PaymentAccounts
from ledger.payments.status import INITIAL, PaymentStatus, is_backwards
from ledger.payments.transitions import (
    COMMANDS,
    MappingError,
    Transition,
    is_allowed,
    map_event,
    status_key,
)

S = PaymentStatus
K = PaymentEventKind

# How many ids one payment remembers to recognise duplicates. A payment that
# reaches a bound rejects further input of that kind (an error someone sees,
# never a forgotten id). They belong in ``ledger.limits``.
PROVIDER_EVENT_IDS_PER_PAYMENT_MAX: Final = 1_000
COMMAND_EVENT_IDS_PER_PAYMENT_MAX: Final = 1_000
MOVEMENT_KEYS_PER_PAYMENT_MAX: Final = 1_000

EVENT_TYPE_PREFIX: Final = "payment."
STALE_EVENT_TYPE: Final = "payment.stale"
REJECTED_FACT_TYPE: Final = "payment.rejected"
DEAD_LETTER_ERROR_CLASS: Final = "payment-rejected"


# The note of the payment event that reports a provider call failed for good.
PROVIDER_CALL_FAILED_NOTE: Final = "provider call failed"


class Outcome(StrEnum):
    APPLIED = "applied"  # status, money or totals changed; one event emitted
    RECORDED = "recorded"  # accepted, nothing to change; one event emitted
    STALE = "stale"  # out of order; one event emitted with stale=True, nothing changed
    DUPLICATE = "duplicate"  # seen before; nothing emitted, state unchanged
    REJECTED = "rejected"  # not allowed; nothing emitted, state unchanged


class RejectReason(StrEnum):
    NOT_A_COMMAND = "not-a-command"
    NOT_A_PROVIDER_EVENT = "not-a-provider-event"
    UNKNOWN_PAYMENT = "unknown-payment"
    PAYMENT_EXISTS = "payment-exists"
    INVALID_COMMAND = "invalid-command"
    COMMAND_NOT_ALLOWED = "command-not-allowed"
    WRONG_PAYMENT = "wrong-payment"
    WRONG_MERCHANT = "wrong-merchant"
    WRONG_PROVIDER = "wrong-provider"
    WRONG_PROVIDER_OBJECT = "wrong-provider-object"
    CURRENCY_MISMATCH = "currency-mismatch"
    UNMAPPED_EVENT = "unmapped-event"
    UNHANDLED_EVENT = "unhandled-event"
    MISSING_OBJECT_ID = "missing-object-id"
    BAD_AMOUNT = "bad-amount"
    MISSING_AMOUNT = "missing-amount"
    ILLEGAL_TRANSITION = "illegal-transition"
    AMOUNT_EXCEEDS_BOUND = "amount-exceeds-bound"
    DISPUTE_CONFLICT = "dispute-conflict"
    LIMIT_EXCEEDED = "limit-exceeded"


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: RejectReason
    detail: str
    # The input may apply later (a provider event that arrived before the
    # payment's CREATE): the agent may hold and retry it instead of dead-lettering.
    retryable: bool = False


@dataclass(frozen=True, slots=True)
class PaymentState:
    """Everything the machine knows about one payment. Amounts in the payment's minor units."""

    payment_id: str
    merchant_id: str
    provider: Provider
    currency: str
    amount_minor: int
    capture_method: CaptureMethod
    status: PaymentStatus
    sequence: int  # of the last payment event emitted
    authorized_minor: int = 0
    captured_minor: int = 0
    refunded_minor: int = 0
    disputed_minor: int = 0  # held by the provider for the open dispute
    charged_back_minor: int = 0
    suspense_minor: int = 0  # crypto received, not resolved
    fees: tuple[Money, ...] = ()  # net fees, one entry per currency, sorted
    capture_final: bool = False  # no further capture is possible
    dispute_id: str | None = None  # the open dispute, or the last one closed
    dispute_open: bool = False
    provider_object_id: str | None = None  # PaymentIntent, order or charge id
    status_since: datetime | None = None  # provider time of the event that set the status
    seen_provider_event_ids: tuple[str, ...] = ()
    seen_command_event_ids: tuple[str, ...] = ()
    seen_movement_keys: tuple[str, ...] = ()

    @property
    def accounts(self) -> PaymentAccounts:
        return PaymentAccounts(self.merchant_id, self.provider)

    @property
    def capturable_minor(self) -> int:
        """What a capture may still take from the authorization."""
        if self.capture_final:
            return 0
        return self.authorized_minor - self.captured_minor

    @property
    def refundable_minor(self) -> int:
        """Captured, not refunded, not charged back, not held for a dispute."""
        return (
            self.captured_minor
            - self.refunded_minor
            - self.charged_back_minor
            - self.disputed_minor
        )

    def money(self, amount_minor: int) -> Money:
        return Money(amount_minor, self.currency)

    def fee_in(self, currency: str) -> int:
        return next((fee.amount_minor for fee in self.fees if fee.currency == currency), 0)


@dataclass(frozen=True, slots=True)
class DomainEvent:
    """A payment event to publish: the payload and what its envelope needs, clock aside."""

    event_id: str
    event_type: str
    sequence: int
    payload: PaymentEvent
    causation_id: str
    correlation_id: str
    occurred_at: datetime

    def envelope(self, *, producer: str, now: datetime) -> Envelope:
        """The unsigned envelope, recorded at ``now``."""
        return Envelope(
            event_id=self.event_id,
            event_type=self.event_type,
            aggregate_id=self.payload.payment_id,
            sequence=self.sequence,
            occurred_at=self.occurred_at,
            recorded_at=now,
            producer=producer,
            correlation_id=self.correlation_id,
            causation_id=self.causation_id,
            payload=self.payload,
        )


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    state: PaymentState | None  # the new state; the input state itself when unchanged
    events: tuple[DomainEvent, ...] = ()
    rejection: Rejection | None = None


def derived_status(state: PaymentState) -> PaymentStatus:
    """The status the money says, once something was captured (else the current status)."""
    if state.dispute_open:
        return S.DISPUTED
    if state.captured_minor == 0:
        return state.status
    if not state.capture_final:
        return S.PARTIALLY_CAPTURED
    returned = state.refunded_minor + state.charged_back_minor
    if returned == 0:
        return S.SUCCEEDED
    if returned >= state.captured_minor:
        return S.REFUNDED
    return S.PARTIALLY_REFUNDED


# --------------------------------------------------------------------------
# Commands.


def apply_command(state: PaymentState | None, command: Envelope) -> Decision:
    """Check one merchant command against the payment and record it."""
    payload = command.payload
    if not isinstance(payload, PaymentCommand):
        return _reject(state, RejectReason.NOT_A_COMMAND, f"payload is {type(payload).__name__}")
    if state is None:
        if payload.command is not CommandKind.CREATE:
            return _reject(
                state, RejectReason.UNKNOWN_PAYMENT, f"{payload.command.value} before CREATE"
            )
        return _create(command, payload)
    if command.event_id in state.seen_command_event_ids:
        return Decision(Outcome.DUPLICATE, state)
    problem = _command_problem(state, command, payload)
    if problem is not None:
        return _reject(state, *problem)
    if payload.command is CommandKind.CAPTURE:
        capturable = state.capturable_minor
        amount = capturable if payload.amount is None else payload.amount.amount_minor
        if not 0 < amount <= capturable:
            return _reject(
                state,
                RejectReason.AMOUNT_EXCEEDS_BOUND,
                f"capture of {amount} with {capturable} capturable",
            )
        kind = K.CAPTURE_REQUESTED
    elif payload.command is CommandKind.REFUND:
        refundable = state.refundable_minor
        amount = refundable if payload.amount is None else payload.amount.amount_minor
        if not 0 < amount <= refundable:
            return _reject(
                state,
                RejectReason.AMOUNT_EXCEEDS_BOUND,
                f"refund of {amount} with {refundable} refundable",
            )
        kind = K.REFUND_REQUESTED
    else:  # CANCEL
        if state.captured_minor > 0:
            return _reject(
                state, RejectReason.COMMAND_NOT_ALLOWED, "cancel after a capture: refund instead"
            )
        amount = 0
        kind = K.CANCEL_REQUESTED
    after = dataclasses.replace(
        state,
        sequence=state.sequence + 1,
        seen_command_event_ids=(*state.seen_command_event_ids, command.event_id),
    )
    event = _event(
        state,
        after,
        command,
        kind,
        amount=state.money(amount) if amount else None,
        note=payload.reason,
        command_event_id=command.event_id,
    )
    return Decision(Outcome.RECORDED, after, (event,))


def provider_call_failed(state: PaymentState, command: Envelope, detail: str) -> Decision:
    """The payment event that tells the merchant a command's provider call failed for good.

    The command's own event (CREATED, CAPTURE_REQUESTED, ...) stands; this
    ``NOTED`` event follows it with the next sequence number. It moves no
    money and changes no status: after a timeout the provider may yet have
    acted, and only its webhooks move the payment. The note starts with
    ``PROVIDER_CALL_FAILED_NOTE`` and says which call failed and why.
    """
    after = dataclasses.replace(state, sequence=state.sequence + 1)
    event = _event(
        state,
        after,
        command,
        K.NOTED,
        note=f"{PROVIDER_CALL_FAILED_NOTE}: {detail}",
        command_event_id=command.event_id,
    )
    return Decision(Outcome.RECORDED, after, (event,))


def _create(command: Envelope, payload: PaymentCommand) -> Decision:
    if payload.provider is None or payload.amount is None:
        return _reject(None, RejectReason.INVALID_COMMAND, "CREATE needs a provider and an amount")
    if payload.amount.amount_minor <= 0:
        return _reject(None, RejectReason.INVALID_COMMAND, "the amount must be positive")
    state = PaymentState(
        payment_id=command.aggregate_id,
        merchant_id=payload.merchant_id,
        provider=payload.provider,
        currency=payload.amount.currency,
        amount_minor=payload.amount.amount_minor,
        capture_method=payload.capture_method or CaptureMethod.AUTOMATIC,
        status=INITIAL,
        sequence=1,
        seen_command_event_ids=(command.event_id,),
    )
    payment_event = PaymentEvent(
        payment_id=state.payment_id,
        merchant_id=state.merchant_id,
        provider=state.provider,
        kind=K.CREATED,
        status_before=None,
        status_after=state.status,
        amount=payload.amount,
        payment_amount=payload.amount,
        command_event_id=command.event_id,
    )
    return Decision(Outcome.APPLIED, state, (_domain_event(state, command, payment_event),))


def _command_problem(
    state: PaymentState, command: Envelope, payload: PaymentCommand
) -> tuple[RejectReason, str] | None:
    if command.aggregate_id != state.payment_id:
        return RejectReason.WRONG_PAYMENT, f"command for {command.aggregate_id}"
    if payload.merchant_id != state.merchant_id:
        return RejectReason.WRONG_MERCHANT, "the payment belongs to another merchant"
    if payload.command is CommandKind.CREATE:
        return RejectReason.PAYMENT_EXISTS, "the payment was already created"
    if payload.provider is not None and payload.provider is not state.provider:
        return RejectReason.WRONG_PROVIDER, f"the payment is with {state.provider.value}"
    if payload.amount is not None and payload.amount.currency != state.currency:
        return RejectReason.CURRENCY_MISMATCH, f"the payment is in {state.currency}"
    if len(state.seen_command_event_ids) >= COMMAND_EVENT_IDS_PER_PAYMENT_MAX:
        return RejectReason.LIMIT_EXCEEDED, (
            f"more than {COMMAND_EVENT_IDS_PER_PAYMENT_MAX} commands for one payment"
        )
    if state.status not in COMMANDS[state.provider][payload.command]:
        return RejectReason.COMMAND_NOT_ALLOWED, (
            f"{payload.command.value} is not allowed for a {state.provider.value} payment "
            f"in {state.status.value}"
        )
    return None


# --------------------------------------------------------------------------
# Provider events.


@dataclass(frozen=True, slots=True)
class _Effect:
    """What a transition would do, before the status rules decide whether it may."""

    after: PaymentState  # totals and flags changed; status set to ``target``
    kind: PaymentEventKind
    amount: Money | None = None
    postings: tuple[Posting, ...] = ()
    moves_money: bool = False
    older: bool = False  # provably an older delivery (a running total below ours)
    note: str | None = None


def apply_provider_event(state: PaymentState | None, event: Envelope) -> Decision:
    """Apply one verified provider event to the payment."""
    payload = event.payload
    if not isinstance(payload, ProviderEvent):
        return _reject(
            state, RejectReason.NOT_A_PROVIDER_EVENT, f"payload is {type(payload).__name__}"
        )
    if state is None:
        return _reject(
            None,
            RejectReason.UNKNOWN_PAYMENT,
            f"{payload.provider.value} event {payload.provider_event_id} before the payment exists",
            retryable=True,
        )
    if payload.provider is not state.provider:
        return _reject(state, RejectReason.WRONG_PROVIDER, f"the payment is with {state.provider}")
    if payload.provider_event_id in state.seen_provider_event_ids:
        return Decision(Outcome.DUPLICATE, state)
    if len(state.seen_provider_event_ids) >= PROVIDER_EVENT_IDS_PER_PAYMENT_MAX:
        return _reject(
            state,
            RejectReason.LIMIT_EXCEEDED,
            f"more than {PROVIDER_EVENT_IDS_PER_PAYMENT_MAX} provider events for one payment",
        )
    try:
        transition = map_event(payload, state.currency)
    except MappingError as error:
        return _reject(state, RejectReason(error.reason), error.detail)
    bound = transition.payment_object_id
    if bound is not None and state.provider_object_id not in (None, bound):
        return _reject(
            state,
            RejectReason.WRONG_PROVIDER_OBJECT,
            f"event names {bound}, the payment is {state.provider_object_id}",
        )
    if transition.movement_key is not None:
        if transition.movement_key in state.seen_movement_keys:
            return _accept(
                state,
                state,
                event,
                payload,
                outcome=Outcome.RECORDED,
                kind=transition.kind,
                note=f"{transition.movement_key} was already applied",
            )
        if len(state.seen_movement_keys) >= MOVEMENT_KEYS_PER_PAYMENT_MAX:
            return _reject(
                state,
                RejectReason.LIMIT_EXCEEDED,
                f"more than {MOVEMENT_KEYS_PER_PAYMENT_MAX} money movements for one payment",
            )
    effect = _EFFECTS[transition.kind](state, transition)
    if isinstance(effect, Rejection):
        return Decision(Outcome.REJECTED, state, rejection=effect)
    return _decide(state, event, payload, transition, effect)


def _decide(
    state: PaymentState,
    event: Envelope,
    payload: ProviderEvent,
    transition: Transition,
    effect: _Effect,
) -> Decision:
    target = effect.after.status
    if effect.older:
        return _stale(state, event, payload, effect.kind, target)
    if target is not state.status:
        if not is_allowed(state.provider, state.status, target):
            if not effect.moves_money and is_backwards(state.status, target):
                return _stale(state, event, payload, effect.kind, target)
            return _reject(
                state,
                RejectReason.ILLEGAL_TRANSITION,
                f"{state.provider.value} does not allow {state.status.value} -> {target.value}"
                f" ({payload.provider_event_type})",
            )
        older = state.status_since is not None and event.occurred_at < state.status_since
        if not effect.moves_money and older:
            return _stale(state, event, payload, effect.kind, target)
    after = effect.after
    if target is not state.status:
        after = dataclasses.replace(after, status_since=event.occurred_at)
    if transition.payment_object_id is not None and after.provider_object_id is None:
        after = dataclasses.replace(after, provider_object_id=transition.payment_object_id)
    if transition.movement_key is not None and effect.moves_money:
        after = dataclasses.replace(
            after, seen_movement_keys=(*after.seen_movement_keys, transition.movement_key)
        )
    changed = _facts(after) != _facts(state)
    return _accept(
        state,
        after,
        event,
        payload,
        outcome=Outcome.APPLIED if changed else Outcome.RECORDED,
        kind=effect.kind,
        amount=effect.amount,
        postings=effect.postings,
        note=effect.note,
    )


def _facts(state: PaymentState) -> tuple[object, ...]:
    """What an APPLIED event changes: the status, the money and the dispute."""
    return (
        state.status,
        state.authorized_minor,
        state.captured_minor,
        state.refunded_minor,
        state.disputed_minor,
        state.charged_back_minor,
        state.suspense_minor,
        state.fees,
        state.capture_final,
        state.dispute_open,
        state.dispute_id,
    )


# Each effect returns the state it would lead to (status = its target) or a rejection.

_Result = _Effect | Rejection


def _status_changed(state: PaymentState, t: Transition) -> _Result:
    if t.status is None:
        raise LedgerInvariantError(f"rule {t.key} changes status but names none")
    return _Effect(dataclasses.replace(state, status=t.status), K.STATUS_CHANGED)


def _noted(state: PaymentState, t: Transition) -> _Result:
    return _Effect(state, K.NOTED)


def _authorized(state: PaymentState, t: Transition) -> _Result:
    authorized = state.amount_minor if t.amount is None else t.amount.amount_minor
    if authorized > state.amount_minor:
        return _bound(f"authorization of {authorized} for a payment of {state.amount_minor}")
    after = dataclasses.replace(
        state,
        status=S.AUTHORIZED,
        authorized_minor=max(state.authorized_minor, authorized),
        capture_final=False,
    )
    return _Effect(after, K.AUTHORIZED, amount=state.money(authorized))


def _captured(state: PaymentState, t: Transition) -> _Result:
    older = False
    if t.cumulative:
        total = state.amount_minor if t.amount is None else t.amount.amount_minor
        delta = total - state.captured_minor
        if delta < 0:
            older, delta = True, 0
    else:
        if t.amount is None:
            raise LedgerInvariantError(f"rule {t.key} captures a delta without an amount")
        delta = t.amount.amount_minor
    captured = state.captured_minor + delta
    authorized = state.authorized_minor
    if delta > 0:
        if state.capture_final and state.captured_minor > 0:
            return _bound(f"capture of {delta} after the final capture")
        if authorized == 0:  # authorization and capture in one step
            if captured > state.amount_minor:
                return _bound(f"capture to {captured} of a payment of {state.amount_minor}")
            authorized = captured
        elif captured > authorized:
            return _bound(f"capture to {captured} with {authorized} authorized")
    # Crypto already received into suspense (an earlier unresolved payment) is
    # part of this capture, not new money.
    from_suspense = min(delta, state.suspense_minor)
    after = dataclasses.replace(
        state,
        authorized_minor=authorized,
        captured_minor=captured,
        suspense_minor=state.suspense_minor - from_suspense,
        capture_final=state.capture_final or t.final_capture or captured >= authorized,
    )
    postings = rules.funds_resolved(
        state.accounts, state.money(from_suspense), state.money(delta - from_suspense)
    )
    if t.fee is not None and t.fee.amount_minor > 0:
        after = dataclasses.replace(after, fees=_add_fee(after.fees, t.fee))
        postings += rules.fee_charged(state.accounts, t.fee)
    after = dataclasses.replace(after, status=derived_status(after))
    return _Effect(
        after,
        K.CAPTURED,
        amount=state.money(delta) if delta else None,
        postings=postings,
        moves_money=bool(postings),
        older=older,
    )


def _canceled(state: PaymentState, t: Transition) -> _Result:
    if state.captured_minor == 0:
        return _Effect(dataclasses.replace(state, status=S.CANCELED), K.CANCELED)
    # A void after partial captures closes the capture; the rest is released.
    after = dataclasses.replace(state, capture_final=True)
    return _Effect(dataclasses.replace(after, status=derived_status(after)), K.CANCELED)


def _refunded(state: PaymentState, t: Transition) -> _Result:
    if t.amount is None:
        raise LedgerInvariantError(f"rule {t.key} refunds without an amount")
    older = False
    if t.cumulative:
        delta = t.amount.amount_minor - state.refunded_minor
        if delta < 0:
            older, delta = True, 0
    else:
        delta = t.amount.amount_minor
    if delta > state.refundable_minor:
        return _bound(f"refund of {delta} with {state.refundable_minor} refundable")
    after = dataclasses.replace(state, refunded_minor=state.refunded_minor + delta)
    postings: tuple[Posting, ...] = rules.refund(state.accounts, state.money(delta))
    if t.fee is not None and t.fee.amount_minor > 0 and delta > 0:
        if t.fee.amount_minor > state.fee_in(t.fee.currency):
            return _bound(f"fee of {t.fee.amount_minor} {t.fee.currency} given back, not taken")
        after = dataclasses.replace(after, fees=_add_fee(after.fees, t.fee, sign=-1))
        postings += rules.fee_returned(state.accounts, t.fee)
    after = dataclasses.replace(after, status=derived_status(after))
    return _Effect(
        after,
        K.REFUNDED,
        amount=state.money(delta) if delta else None,
        postings=postings,
        moves_money=bool(postings),
        older=older,
    )


def _dispute_opened(state: PaymentState, t: Transition) -> _Result:
    if state.dispute_open:
        # Without a dispute id (not every normalizer reads one) it is taken as the same dispute.
        if t.dispute_id is None or t.dispute_id == state.dispute_id:
            return _Effect(state, K.DISPUTE_OPENED, note="dispute already open")
        return Rejection(
            RejectReason.DISPUTE_CONFLICT,
            f"dispute {t.dispute_id} while {state.dispute_id} is open",
        )
    if t.dispute_id is not None and t.dispute_id == state.dispute_id:
        return _Effect(state, K.DISPUTE_OPENED, older=True, note="dispute already closed")
    if not t.hold:
        held = 0
    elif t.amount is None:  # PayPal does not say: all that could be disputed
        held = state.refundable_minor
    else:
        held = t.amount.amount_minor
    if held > state.refundable_minor:
        return _bound(f"dispute of {held} with {state.refundable_minor} refundable")
    after = dataclasses.replace(
        state, dispute_open=True, dispute_id=t.dispute_id, disputed_minor=held
    )
    postings = rules.dispute_opened(state.accounts, state.money(held))
    return _Effect(
        dataclasses.replace(after, status=derived_status(after)),
        K.DISPUTE_OPENED,
        amount=state.money(held) if held else None,
        postings=postings,
        moves_money=bool(postings),
        note=None if t.hold else "inquiry: no funds withdrawn",
    )


def _dispute_won(state: PaymentState, t: Transition) -> _Result:
    if not state.dispute_open:
        # Closed already, or closed before we saw it open: remember the id so
        # that a late DISPUTE_OPENED for it is stale.
        dispute_id = t.dispute_id or state.dispute_id
        return _Effect(dataclasses.replace(state, dispute_id=dispute_id), K.DISPUTE_WON)
    if t.dispute_id is not None and state.dispute_id not in (None, t.dispute_id):
        return Rejection(
            RejectReason.DISPUTE_CONFLICT, f"{t.dispute_id} won while {state.dispute_id} is open"
        )
    held = state.disputed_minor
    after = dataclasses.replace(state, dispute_open=False, disputed_minor=0)
    postings = rules.dispute_won(state.accounts, state.money(held))
    return _Effect(
        dataclasses.replace(after, status=derived_status(after)),
        K.DISPUTE_WON,
        amount=state.money(held) if held else None,
        postings=postings,
        moves_money=bool(postings),
    )


def _dispute_lost(state: PaymentState, t: Transition) -> _Result:
    if not state.dispute_open and t.dispute_id is not None and t.dispute_id == state.dispute_id:
        return _Effect(state, K.DISPUTE_LOST, note="dispute already closed")
    if state.dispute_open and t.dispute_id is not None and state.dispute_id != t.dispute_id:
        return Rejection(
            RejectReason.DISPUTE_CONFLICT, f"{t.dispute_id} lost while {state.dispute_id} is open"
        )
    held = state.disputed_minor if state.dispute_open else 0
    if t.amount is not None:
        lost = t.amount.amount_minor
    else:
        lost = held if held > 0 else state.refundable_minor
    if lost > held + state.refundable_minor:
        return _bound(f"dispute lost for {lost} with {held + state.refundable_minor} at stake")
    after = dataclasses.replace(
        state,
        dispute_open=False,
        dispute_id=t.dispute_id or state.dispute_id,
        disputed_minor=0,
        charged_back_minor=state.charged_back_minor + lost,
    )
    postings = rules.dispute_lost(state.accounts, state.money(lost), state.money(held))
    return _Effect(
        dataclasses.replace(after, status=derived_status(after)),
        K.DISPUTE_LOST,
        amount=state.money(lost) if lost else None,
        postings=postings,
        moves_money=bool(postings),
    )


def _fee_charged(state: PaymentState, t: Transition) -> _Result:
    if t.fee is None or t.fee.amount_minor == 0:
        return _Effect(state, K.NOTED)
    postings = rules.fee_charged(state.accounts, t.fee)
    after = dataclasses.replace(state, fees=_add_fee(state.fees, t.fee))
    return _Effect(after, K.FEE_CHARGED, amount=t.fee, postings=postings, moves_money=True)


def _funds_unresolved(state: PaymentState, t: Transition) -> _Result:
    """Crypto paid, not as asked. ``t.amount`` is everything paid so far, if known."""
    unresolved = dataclasses.replace(state, status=S.UNRESOLVED)
    note = f"unresolved: {t.context or 'OTHER'}"
    if t.amount is None:
        return _Effect(unresolved, K.FUNDS_UNRESOLVED, note=f"{note}, amount paid unknown")
    paid = t.amount.amount_minor
    received = state.captured_minor + state.suspense_minor
    if paid < received:
        return _Effect(unresolved, K.FUNDS_UNRESOLVED, older=True, note=note)
    captured = state.captured_minor
    if t.context == "OVERPAID":  # the price is paid in full; only the excess is unresolved
        captured = max(captured, min(paid, state.amount_minor))
    suspense = paid - captured
    to_payable = captured - state.captured_minor
    from_suspense = max(0, state.suspense_minor - suspense)
    postings = rules.funds_resolved(
        state.accounts, state.money(from_suspense), state.money(to_payable - from_suspense)
    ) + rules.funds_unresolved(state.accounts, state.money(max(0, suspense - state.suspense_minor)))
    after = dataclasses.replace(
        unresolved,
        captured_minor=captured,
        authorized_minor=max(state.authorized_minor, captured),
        suspense_minor=suspense,
    )
    delta = paid - received
    return _Effect(
        after,
        K.FUNDS_UNRESOLVED,
        amount=state.money(delta) if delta else None,
        postings=postings,
        moves_money=bool(postings),
        note=note,
    )


def _funds_resolved(state: PaymentState, t: Transition) -> _Result:
    """The merchant accepted every crypto payment received: all of it becomes a capture."""
    received = state.captured_minor + state.suspense_minor
    paid = received if t.amount is None else t.amount.amount_minor
    if paid < received:
        return _bound(f"resolved for {paid} with {received} received")
    if paid == 0:
        return Rejection(RejectReason.MISSING_AMOUNT, "resolved, and no amount paid is known")
    direct = paid - received
    postings = rules.funds_resolved(
        state.accounts, state.money(state.suspense_minor), state.money(direct)
    )
    after = dataclasses.replace(
        state,
        captured_minor=paid,
        authorized_minor=max(state.authorized_minor, paid),
        suspense_minor=0,
        capture_final=True,
    )
    moved = state.suspense_minor + direct
    return _Effect(
        dataclasses.replace(after, status=derived_status(after)),
        K.FUNDS_RESOLVED,
        amount=state.money(moved) if moved else None,
        postings=postings,
        moves_money=bool(postings),
    )


_EFFECTS: Final[dict[PaymentEventKind, Callable[[PaymentState, Transition], _Result]]] = {
    K.STATUS_CHANGED: _status_changed,
    K.NOTED: _noted,
    K.AUTHORIZED: _authorized,
    K.CAPTURED: _captured,
    K.CANCELED: _canceled,
    K.REFUNDED: _refunded,
    K.DISPUTE_OPENED: _dispute_opened,
    K.DISPUTE_WON: _dispute_won,
    K.DISPUTE_LOST: _dispute_lost,
    K.FEE_CHARGED: _fee_charged,
    K.FUNDS_UNRESOLVED: _funds_unresolved,
    K.FUNDS_RESOLVED: _funds_resolved,
}


def _bound(detail: str) -> Rejection:
    return Rejection(RejectReason.AMOUNT_EXCEEDS_BOUND, detail)


def _add_fee(fees: tuple[Money, ...], fee: Money, sign: int = 1) -> tuple[Money, ...]:
    totals = {money.currency: money.amount_minor for money in fees}
    totals[fee.currency] = totals.get(fee.currency, 0) + sign * fee.amount_minor
    return tuple(Money(amount, currency) for currency, amount in sorted(totals.items()) if amount)


# --------------------------------------------------------------------------
# Building decisions and events.


def _reject(
    state: PaymentState | None, reason: RejectReason, detail: str, *, retryable: bool = False
) -> Decision:
    return Decision(Outcome.REJECTED, state, rejection=Rejection(reason, _clip(detail), retryable))


def _stale(
    state: PaymentState,
    event: Envelope,
    payload: ProviderEvent,
    kind: PaymentEventKind,
    target: PaymentStatus,
) -> Decision:
    note = f"stale: {payload.provider_event_type} ({target.value}) after {state.status.value}"
    return _accept(
        state, state, event, payload, outcome=Outcome.STALE, kind=kind, note=note, stale=True
    )


def _accept(
    before: PaymentState,
    after: PaymentState,
    event: Envelope,
    payload: ProviderEvent,
    *,
    outcome: Outcome,
    kind: PaymentEventKind,
    amount: Money | None = None,
    postings: tuple[Posting, ...] = (),
    note: str | None = None,
    stale: bool = False,
) -> Decision:
    """Record the provider event as seen and emit its one payment event."""
    after = dataclasses.replace(
        after,
        sequence=before.sequence + 1,
        seen_provider_event_ids=(*before.seen_provider_event_ids, payload.provider_event_id),
    )
    emitted = _event(
        before,
        after,
        event,
        kind,
        amount=amount,
        postings=postings,
        note=note,
        stale=stale,
        provider=payload,
    )
    return Decision(outcome, after, (emitted,))


def _event(
    before: PaymentState,
    after: PaymentState,
    cause: Envelope,
    kind: PaymentEventKind,
    *,
    amount: Money | None = None,
    postings: tuple[Posting, ...] = (),
    note: str | None = None,
    stale: bool = False,
    command_event_id: str | None = None,
    provider: ProviderEvent | None = None,
) -> DomainEvent:
    _check(before, after, postings)
    payload = PaymentEvent(
        payment_id=after.payment_id,
        merchant_id=after.merchant_id,
        provider=after.provider,
        kind=kind,
        status_before=before.status,
        status_after=after.status,
        stale=stale,
        amount=amount,
        payment_amount=after.money(after.amount_minor),
        authorized_minor=after.authorized_minor,
        captured_minor=after.captured_minor,
        refunded_minor=after.refunded_minor,
        disputed_minor=after.disputed_minor,
        charged_back_minor=after.charged_back_minor,
        suspense_minor=after.suspense_minor,
        fees=after.fees,
        command_event_id=command_event_id,
        provider_event_id=provider.provider_event_id if provider else None,
        provider_event_type=provider.provider_event_type if provider else None,
        provider_object_id=provider.provider_object_id if provider else None,
        provider_status=status_key(provider) if provider else None,
        note=None if note is None else _clip(note),
        postings=postings,
    )
    return _domain_event(after, cause, payload)


def _domain_event(state: PaymentState, cause: Envelope, payload: PaymentEvent) -> DomainEvent:
    sequence = state.sequence
    event_type = STALE_EVENT_TYPE if payload.stale else EVENT_TYPE_PREFIX + payload.kind.lower()
    return DomainEvent(
        event_id=derived_event_id("payment-event", state.payment_id, str(sequence), cause.event_id),
        event_type=event_type,
        sequence=sequence,
        payload=payload,
        causation_id=cause.event_id,
        correlation_id=cause.correlation_id,
        occurred_at=cause.occurred_at,
    )


def _check(before: PaymentState, after: PaymentState, postings: tuple[Posting, ...]) -> None:
    """The ledger invariants, checked on every event; a failure is a bug (survives -O)."""
    rules.check_balanced(postings)
    if after.sequence != before.sequence + 1:
        raise LedgerInvariantError("sequence must grow by exactly one per event")
    if not 0 <= after.captured_minor <= after.authorized_minor:
        raise LedgerInvariantError("captured must stay within authorized")
    for name in ("refunded_minor", "disputed_minor", "charged_back_minor", "suspense_minor"):
        if getattr(after, name) < 0:
            raise LedgerInvariantError(f"{name} went negative")
    if after.refunded_minor + after.charged_back_minor + after.disputed_minor > (
        after.captured_minor
    ):
        raise LedgerInvariantError("refunded, charged back and held must stay within captured")
    # The postings move each account by exactly the change in its running total.
    moved = rules.balances(postings)
    accounts, currency = after.accounts, after.currency
    expected = {
        accounts.payable: after.captured_minor - before.captured_minor,
        accounts.refunds: after.refunded_minor - before.refunded_minor,
        accounts.chargebacks: after.charged_back_minor - before.charged_back_minor,
        accounts.dispute_hold: after.disputed_minor - before.disputed_minor,
        accounts.suspense: after.suspense_minor - before.suspense_minor,
    }
    for account, change in expected.items():
        if moved.get((account, currency), 0) != change:
            raise LedgerInvariantError(f"postings on {account} disagree with the totals")
    currencies = {fee.currency for fee in (*before.fees, *after.fees)}
    for fee_currency in currencies:
        change = after.fee_in(fee_currency) - before.fee_in(fee_currency)
        if moved.get((accounts.fees, fee_currency), 0) != change:
            raise LedgerInvariantError("postings on the fees account disagree with the totals")


def _clip(text: str) -> str:
    """A note for people, cut visibly (the full input stays on its topic)."""
    if len(text) <= NOTE_CHARS_MAX:
        return text
    return text[: NOTE_CHARS_MAX - 1] + "…"


# --------------------------------------------------------------------------
# What the agent publishes for a rejection.


def audit_fact(rejection: Rejection, cause: Envelope, state: PaymentState | None) -> AuditFact:
    """The audit fact of a rejected command or provider event."""
    payload = cause.payload
    if isinstance(payload, PaymentCommand):
        actor = payload.merchant_id
    elif isinstance(payload, ProviderEvent):
        actor = payload.provider.value.lower()
    else:
        actor = cause.producer
    details = {
        "detail": rejection.detail,
        "event_id": cause.event_id,
        "event_type": cause.event_type,
    }
    if state is not None:
        details["status"] = state.status.value
    return AuditFact(
        fact_type=REJECTED_FACT_TYPE,
        actor=actor,
        subject=state.payment_id if state is not None else cause.aggregate_id,
        reason=rejection.reason.value,
        details=details,
    )


def dead_letter(
    rejection: Rejection,
    cause: Envelope,
    *,
    topic: str,
    partition: int,
    offset: int,
    original: bytes,
) -> DeadLetter:
    """The dead letter of a rejected input: where it is, its digest, and a copy if small."""
    return DeadLetter(
        original_topic=topic,
        original_partition=partition,
        original_offset=offset,
        original_sha256=hashlib.sha256(original).digest(),
        original_bytes=original if len(original) <= DEAD_LETTER_ORIGINAL_BYTES_MAX else None,
        original_event_id=cause.event_id,
        original_event_type=cause.event_type,
        error_class=DEAD_LETTER_ERROR_CLASS,
        reason=rejection.reason.value,
        detail=rejection.detail,
    )

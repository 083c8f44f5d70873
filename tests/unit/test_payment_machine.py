"""The payment state machine: happy paths per provider, rejections, duplicates, stale events,
and random sequences checked against the ledger invariants."""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from ledger.codec import EnvelopeCodec
from ledger.envelope import (
    DEAD_LETTER_ORIGINAL_BYTES_MAX,
    CaptureMethod,
    CommandKind,
    Envelope,
    Money,
    PaymentCommand,
    PaymentEvent,
    PaymentEventKind,
    Posting,
    Provider,
    ProviderEvent,
    new_envelope,
)
from ledger.payments import machine, postings
from ledger.payments.machine import (
    Decision,
    Outcome,
    PaymentState,
    RejectReason,
    apply_command,
    apply_provider_event,
)
from ledger.payments.status import DOCUMENTED_EXCEPTIONS, PaymentStatus, is_backwards
from ledger.payments.transitions import ALLOWED
from ledger.signing import FileSigner
from tests.support.fakes import MemoryRegistry

S = PaymentStatus
K = PaymentEventKind
T0 = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
OBJECT = {Provider.STRIPE: "pi_1", Provider.PAYPAL: "ORDER-1", Provider.COINBASE: "charge-1"}


class Payment:
    """One payment driven through the machine; every decision is checked on the way."""

    def __init__(
        self,
        provider: Provider,
        *,
        amount: int = 1000,
        currency: str = "EUR",
        capture: CaptureMethod = CaptureMethod.AUTOMATIC,
        payment_id: str = "pay_1",
        merchant_id: str = "mer_1",
    ) -> None:
        self.provider = provider
        self.currency = currency
        self.payment_id = payment_id
        self.merchant_id = merchant_id
        self.counter = 0
        self.state: PaymentState | None = None
        self.emitted: list[machine.DomainEvent] = []
        decision = self.command(CommandKind.CREATE, Money(amount, currency), capture_method=capture)
        assert decision.outcome is Outcome.APPLIED

    # Inputs ------------------------------------------------------------

    def command_envelope(
        self, kind: CommandKind, amount: Money | None = None, **fields: object
    ) -> Envelope:
        self.counter += 1
        return new_envelope(
            event_type=f"payment.command.{kind.value.lower()}",
            aggregate_id=self.payment_id,
            sequence=self.counter,
            producer="payledger/ingress",
            now=T0 + timedelta(seconds=self.counter),
            payload=PaymentCommand(
                command=kind,
                merchant_id=fields.pop("merchant_id", self.merchant_id),  # type: ignore[arg-type]
                idempotency_key=f"idem-{self.counter}",
                provider=self.provider,
                amount=amount,
                **fields,  # type: ignore[arg-type]
            ),
        )

    def provider_envelope(
        self,
        event_type: str,
        status: str | None = None,
        *,
        amount: int | Money | None = None,
        fee: Money | None = None,
        fields: dict[str, str] | None = None,
        object_id: str | None = None,
        event_id: str | None = None,
        at: datetime | None = None,
    ) -> Envelope:
        self.counter += 1
        if isinstance(amount, int):
            amount = Money(amount, self.currency)
        return new_envelope(
            event_type=f"provider.{self.provider.value.lower()}.{event_type}",
            aggregate_id=self.payment_id,
            sequence=self.counter,
            producer="payledger/ingress",
            now=T0 + timedelta(seconds=self.counter),
            occurred_at=at or T0 + timedelta(seconds=self.counter),
            payload=ProviderEvent(
                provider=self.provider,
                provider_event_id=event_id or f"evt_{self.counter}",
                provider_event_type=event_type,
                received_at=T0,
                body_sha256=hashlib.sha256(str(self.counter).encode()).digest(),
                provider_object_id=object_id or OBJECT[self.provider],
                status=status,
                amount=amount,
                fee=fee,
                fields=fields or {},
            ),
        )

    def command(
        self, kind: CommandKind, amount: Money | int | None = None, **kw: object
    ) -> Decision:
        if isinstance(amount, int):
            amount = Money(amount, self.currency)
        return self.send(self.command_envelope(kind, amount, **kw))

    def event(self, event_type: str, status: str | None = None, **kw: object) -> Decision:
        return self.send(self.provider_envelope(event_type, status, **kw))  # type: ignore[arg-type]

    def send(self, envelope: Envelope) -> Decision:
        before = self.state
        if isinstance(envelope.payload, PaymentCommand):
            decision = apply_command(before, envelope)
        else:
            decision = apply_provider_event(before, envelope)
        check_decision(before, decision)
        self.state = decision.state
        self.emitted.extend(decision.events)
        check_cumulative(self.state, self.emitted)
        return decision

    # Reading -------------------------------------------------------------

    @property
    def status(self) -> PaymentStatus:
        assert self.state is not None
        return self.state.status

    @property
    def s(self) -> PaymentState:
        assert self.state is not None
        return self.state

    def last(self) -> PaymentEvent:
        return self.emitted[-1].payload


def check_decision(before: PaymentState | None, decision: Decision) -> None:
    """What holds for every decision, whatever the input."""
    if decision.outcome in (Outcome.DUPLICATE, Outcome.REJECTED):
        assert decision.state is before, "the payment keeps its state"
        assert decision.events == ()
        assert (decision.rejection is not None) == (decision.outcome is Outcome.REJECTED)
        return
    assert decision.rejection is None
    assert len(decision.events) == 1
    after = decision.state
    assert after is not None
    event = decision.events[0]
    payload = event.payload
    expected_sequence = 1 if before is None else before.sequence + 1
    assert event.sequence == after.sequence == expected_sequence
    assert payload.status_after is after.status
    # The running totals on the event are the new state's.
    assert payload.captured_minor == after.captured_minor
    assert payload.authorized_minor == after.authorized_minor
    assert payload.refunded_minor == after.refunded_minor
    assert payload.disputed_minor == after.disputed_minor
    assert payload.charged_back_minor == after.charged_back_minor
    assert payload.suspense_minor == after.suspense_minor
    assert payload.fees == after.fees
    # Bounds.
    assert 0 <= after.captured_minor <= after.authorized_minor
    assert after.refunded_minor + after.charged_back_minor + after.disputed_minor <= (
        after.captured_minor
    )
    assert min(after.refunded_minor, after.disputed_minor, after.suspense_minor) >= 0
    postings.check_balanced(payload.postings)
    if before is None:
        return
    assert payload.status_before is before.status
    if decision.outcome is Outcome.STALE:
        assert payload.stale
        assert payload.postings == ()
        assert _money_of(after) == _money_of(before)
        assert after.status is before.status
    if decision.outcome is Outcome.RECORDED:
        assert payload.postings == ()
        assert _money_of(after) == _money_of(before)
        assert after.status is before.status
    if after.status is not before.status:
        pair = (before.status, after.status)
        assert pair in ALLOWED[after.provider], pair
        assert not is_backwards(*pair) or pair in DOCUMENTED_EXCEPTIONS, f"backwards: {pair}"


def _money_of(state: PaymentState) -> tuple[object, ...]:
    return (
        state.authorized_minor,
        state.captured_minor,
        state.refunded_minor,
        state.disputed_minor,
        state.charged_back_minor,
        state.suspense_minor,
        state.fees,
    )


def check_cumulative(state: PaymentState | None, emitted: list[machine.DomainEvent]) -> None:
    """Summing every posting of the payment gives its running totals."""
    if state is None:
        return
    legs: list[Posting] = [leg for event in emitted for leg in event.payload.postings]
    balance = postings.balances(legs)
    accounts, currency = state.accounts, state.currency
    assert balance.get((accounts.payable, currency), 0) == state.captured_minor
    assert balance.get((accounts.refunds, currency), 0) == state.refunded_minor
    assert balance.get((accounts.chargebacks, currency), 0) == state.charged_back_minor
    assert balance.get((accounts.dispute_hold, currency), 0) == state.disputed_minor
    assert balance.get((accounts.suspense, currency), 0) == state.suspense_minor
    for fee in state.fees:
        assert balance.get((accounts.fees, fee.currency), 0) == fee.amount_minor
    # The provider clearing account holds what was collected, net of what left it.
    fees_here = state.fee_in(currency)
    assert balance.get((accounts.clearing, currency), 0) == (
        state.captured_minor
        + state.suspense_minor
        - state.refunded_minor
        - state.charged_back_minor
        - state.disputed_minor
        - fees_here
    )
    sequences = [event.sequence for event in emitted]
    assert sequences == list(range(1, len(emitted) + 1)), "gapless, from 1"
    assert len({event.event_id for event in emitted}) == len(emitted)


def postings_of(decision: Decision) -> list[tuple[str, str, int]]:
    return [
        (leg.account, leg.side.value, leg.amount_minor)
        for event in decision.events
        for leg in event.payload.postings
    ]


# --------------------------------------------------------------------------
# Stripe


def stripe_authorized(amount: int = 1000) -> Payment:
    payment = Payment(Provider.STRIPE, amount=amount, capture=CaptureMethod.MANUAL)
    payment.event("payment_intent.created", "requires_payment_method", amount=amount)
    payment.event(
        "payment_intent.amount_capturable_updated",
        "requires_capture",
        amount=amount,
        fields={"amount_capturable": str(amount)},
    )
    assert payment.status is S.AUTHORIZED
    return payment


def stripe_succeeded(amount: int = 1000) -> Payment:
    payment = Payment(Provider.STRIPE, amount=amount)
    payment.event("payment_intent.created", "requires_payment_method", amount=amount)
    payment.event(
        "payment_intent.succeeded",
        "succeeded",
        amount=amount,
        fields={"amount_received": str(amount)},
    )
    assert payment.status is S.SUCCEEDED
    return payment


def test_create_starts_awaiting_a_payment_method() -> None:
    payment = Payment(Provider.STRIPE)
    assert payment.status is S.AWAITING_PAYMENT_METHOD
    assert payment.s.sequence == 1
    first = payment.last()
    assert first.kind is K.CREATED
    assert first.status_before is None
    assert first.amount == Money(1000, "EUR")
    assert payment.emitted[0].event_type == "payment.created"


def test_stripe_automatic_capture() -> None:
    payment = Payment(Provider.STRIPE)
    payment.event("payment_intent.created", "requires_payment_method", amount=1000)
    payment.event("payment_intent.requires_action", "requires_action", amount=1000)
    assert payment.status is S.REQUIRES_CUSTOMER_ACTION
    payment.event("payment_intent.processing", "processing", amount=1000)
    assert payment.status is S.PROCESSING
    decision = payment.event(
        "payment_intent.succeeded", "succeeded", amount=1000, fields={"amount_received": "1000"}
    )
    assert decision.outcome is Outcome.APPLIED
    assert payment.status is S.SUCCEEDED
    assert (payment.s.authorized_minor, payment.s.captured_minor) == (1000, 1000)
    assert payment.s.provider_object_id == "pi_1"
    assert postings_of(decision) == [
        ("provider:stripe:clearing", "DEBIT", 1000),
        ("merchant:mer_1:payable", "CREDIT", 1000),
    ]
    assert decision.events[0].event_type == "payment.captured"


def test_stripe_manual_capture() -> None:
    payment = stripe_authorized()
    assert payment.s.authorized_minor == 1000
    assert payment.last().postings == (), "an authorization moves no money"
    requested = payment.command(CommandKind.CAPTURE)
    assert requested.outcome is Outcome.RECORDED
    assert payment.last().kind is K.CAPTURE_REQUESTED
    assert payment.last().amount == Money(1000, "EUR"), "no amount: the remainder"
    assert payment.status is S.AUTHORIZED, "a command moves no money and no status"
    payment.event(
        "payment_intent.succeeded", "succeeded", amount=1000, fields={"amount_received": "1000"}
    )
    assert payment.status is S.SUCCEEDED
    assert payment.s.captured_minor == 1000


def test_stripe_partial_capture_releases_the_rest() -> None:
    payment = stripe_authorized()
    assert payment.command(CommandKind.CAPTURE, 600).outcome is Outcome.RECORDED
    payment.event(
        "payment_intent.succeeded", "succeeded", amount=1000, fields={"amount_received": "600"}
    )
    assert payment.status is S.SUCCEEDED
    assert (payment.s.authorized_minor, payment.s.captured_minor) == (1000, 600)
    assert payment.s.capturable_minor == 0
    refused = payment.command(CommandKind.CAPTURE, 100)
    assert refused.rejection is not None
    assert refused.rejection.reason is RejectReason.COMMAND_NOT_ALLOWED


def test_stripe_partial_then_full_refund() -> None:
    payment = stripe_succeeded()
    assert payment.command(CommandKind.REFUND, 300).outcome is Outcome.RECORDED
    first = payment.event(
        "charge.refunded",
        "succeeded",
        amount=1000,
        object_id="ch_1",
        fields={"amount_refunded": "300", "payment_intent": "pi_1"},
    )
    assert payment.status is S.PARTIALLY_REFUNDED
    assert postings_of(first) == [
        ("merchant:mer_1:refunds", "DEBIT", 300),
        ("provider:stripe:clearing", "CREDIT", 300),
    ]
    # amount_refunded is the running total: the second refund moves 700.
    second = payment.event(
        "charge.refunded",
        "succeeded",
        amount=1000,
        object_id="ch_1",
        fields={"amount_refunded": "1000", "payment_intent": "pi_1"},
    )
    assert payment.status is S.REFUNDED
    assert second.events[0].payload.amount == Money(700, "EUR")
    assert payment.s.refunded_minor == 1000
    assert payment.command(CommandKind.REFUND).rejection is not None


def test_stripe_older_refund_total_is_stale() -> None:
    payment = stripe_succeeded()
    payment.event(
        "charge.refunded", "succeeded", object_id="ch_1", fields={"amount_refunded": "500"}
    )
    late = payment.event(
        "charge.refunded", "succeeded", object_id="ch_1", fields={"amount_refunded": "200"}
    )
    assert late.outcome is Outcome.STALE
    assert payment.s.refunded_minor == 500


def test_stripe_cancel() -> None:
    payment = stripe_authorized()
    assert payment.command(CommandKind.CANCEL, reason="out of stock").outcome is Outcome.RECORDED
    assert payment.last().kind is K.CANCEL_REQUESTED
    assert payment.last().note == "out of stock"
    payment.event("payment_intent.canceled", "canceled")
    assert payment.status is S.CANCELED
    assert payment.s.captured_minor == 0
    # Nothing moves a canceled payment any more.
    late = payment.event(
        "payment_intent.succeeded", "succeeded", amount=1000, fields={"amount_received": "1000"}
    )
    assert late.rejection is not None
    assert late.rejection.reason is RejectReason.ILLEGAL_TRANSITION
    assert payment.status is S.CANCELED
    assert payment.event("payment_intent.processing", "processing").outcome is Outcome.STALE


def test_stripe_failed_attempt_then_success() -> None:
    payment = Payment(Provider.STRIPE)
    payment.event("payment_intent.processing", "processing")
    payment.event("payment_intent.payment_failed", "requires_payment_method")
    assert payment.status is S.FAILED
    payment.event(
        "payment_intent.succeeded", "succeeded", amount=1000, fields={"amount_received": "1000"}
    )
    assert payment.status is S.SUCCEEDED


def test_an_allowed_change_older_than_the_current_status_is_stale() -> None:
    payment = Payment(Provider.STRIPE)
    payment.event(
        "payment_intent.payment_failed", "requires_payment_method", at=T0 + timedelta(minutes=5)
    )
    # FAILED -> PROCESSING is allowed (a retry), but this processing happened before the failure.
    late = payment.event("payment_intent.processing", "processing", at=T0 + timedelta(minutes=1))
    assert late.outcome is Outcome.STALE
    assert payment.status is S.FAILED


def test_stripe_dispute_opened_then_won() -> None:
    payment = stripe_succeeded()
    opened = payment.event(
        "charge.dispute.created",
        "needs_response",
        amount=1000,
        object_id="du_1",
        fields={"payment_intent": "pi_1"},
    )
    assert payment.status is S.DISPUTED
    assert payment.s.disputed_minor == 1000
    assert postings_of(opened) == [
        ("merchant:mer_1:dispute_hold", "DEBIT", 1000),
        ("provider:stripe:clearing", "CREDIT", 1000),
    ]
    assert payment.command(CommandKind.REFUND).rejection is not None, (
        "held funds are not refundable"
    )
    won = payment.event(
        "charge.dispute.closed",
        "won",
        amount=1000,
        object_id="du_1",
        fields={"payment_intent": "pi_1"},
    )
    assert payment.status is S.SUCCEEDED
    assert payment.s.disputed_minor == 0
    assert postings_of(won) == [
        ("provider:stripe:clearing", "DEBIT", 1000),
        ("merchant:mer_1:dispute_hold", "CREDIT", 1000),
    ]
    # A late created for the closed dispute is stale.
    late = payment.event("charge.dispute.created", "needs_response", amount=1000, object_id="du_1")
    assert late.outcome is Outcome.STALE
    assert payment.status is S.SUCCEEDED


def test_stripe_dispute_lost_after_a_partial_refund() -> None:
    payment = stripe_succeeded()
    payment.event(
        "charge.refunded", "succeeded", object_id="ch_1", fields={"amount_refunded": "200"}
    )
    payment.event("charge.dispute.created", "needs_response", amount=800, object_id="du_1")
    assert payment.status is S.DISPUTED
    lost = payment.event("charge.dispute.closed", "lost", amount=800, object_id="du_1")
    assert payment.status is S.REFUNDED
    assert (payment.s.charged_back_minor, payment.s.disputed_minor) == (800, 0)
    assert postings_of(lost) == [
        ("merchant:mer_1:chargebacks", "DEBIT", 800),
        ("merchant:mer_1:dispute_hold", "CREDIT", 800),
    ]


def test_stripe_inquiry_holds_nothing() -> None:
    payment = stripe_succeeded()
    opened = payment.event(
        "charge.dispute.created", "warning_needs_response", amount=1000, object_id="du_1"
    )
    assert payment.status is S.DISPUTED
    assert postings_of(opened) == []
    assert payment.last().note == "inquiry: no funds withdrawn"
    payment.event("charge.dispute.closed", "warning_closed", amount=1000, object_id="du_1")
    assert payment.status is S.SUCCEEDED


def test_a_second_dispute_while_one_is_open_is_rejected() -> None:
    payment = stripe_succeeded()
    payment.event("charge.dispute.created", "needs_response", amount=500, object_id="du_1")
    decision = payment.event(
        "charge.dispute.created", "needs_response", amount=500, object_id="du_2"
    )
    assert decision.rejection is not None
    assert decision.rejection.reason is RejectReason.DISPUTE_CONFLICT


def test_stripe_fee_from_an_expanded_balance_transaction() -> None:
    payment = stripe_succeeded()
    fee = payment.event(
        "charge.succeeded",
        "succeeded",
        object_id="ch_1",
        fee=Money(59, "EUR"),
        fields={"payment_intent": "pi_1"},
    )
    assert fee.outcome is Outcome.APPLIED
    assert payment.s.fees == (Money(59, "EUR"),)
    assert postings_of(fee) == [
        ("merchant:mer_1:fees", "DEBIT", 59),
        ("provider:stripe:clearing", "CREDIT", 59),
    ]
    # charge.updated for the same charge carries the same fee: not taken twice.
    again = payment.event("charge.updated", "succeeded", object_id="ch_1", fee=Money(59, "EUR"))
    assert again.outcome is Outcome.RECORDED
    assert payment.s.fees == (Money(59, "EUR"),)
    # Without the fee, a charge event is only noted.
    noted = payment.event("charge.captured", "succeeded", object_id="ch_2")
    assert noted.outcome is Outcome.RECORDED
    assert payment.last().kind is K.NOTED


def test_a_fee_in_another_currency_balances_in_that_currency() -> None:
    payment = stripe_succeeded()
    decision = payment.event(
        "charge.succeeded", "succeeded", object_id="ch_1", fee=Money(64, "USD")
    )
    legs = decision.events[0].payload.postings
    assert {leg.currency for leg in legs} == {"USD"}
    assert payment.s.fees == (Money(64, "USD"),)


# --------------------------------------------------------------------------
# PayPal


def paypal_authorized(amount: int = 1000) -> Payment:
    payment = Payment(Provider.PAYPAL, amount=amount, capture=CaptureMethod.MANUAL)
    payment.event("CHECKOUT.ORDER.APPROVED", "APPROVED", amount=amount)
    assert payment.status is S.PROCESSING
    payment.event(
        "PAYMENT.AUTHORIZATION.CREATED",
        "CREATED",
        amount=amount,
        object_id="AUTH-1",
        fields={"order_id": "ORDER-1"},
    )
    assert payment.status is S.AUTHORIZED
    return payment


def paypal_capture(
    payment: Payment, capture_id: str, amount: int, *, final: bool, fee: int = 0
) -> Decision:
    return payment.event(
        "PAYMENT.CAPTURE.COMPLETED",
        "COMPLETED",
        amount=amount,
        fee=Money(fee, "EUR") if fee else None,
        object_id=capture_id,
        fields={"order_id": "ORDER-1", "final_capture": "true" if final else "false"},
    )


def test_paypal_partial_captures_accumulate() -> None:
    payment = paypal_authorized()
    assert payment.command(CommandKind.CAPTURE, 400).outcome is Outcome.RECORDED
    first = paypal_capture(payment, "CAP-1", 400, final=False, fee=20)
    assert payment.status is S.PARTIALLY_CAPTURED
    assert payment.s.captured_minor == 400
    assert postings_of(first) == [
        ("provider:paypal:clearing", "DEBIT", 400),
        ("merchant:mer_1:payable", "CREDIT", 400),
        ("merchant:mer_1:fees", "DEBIT", 20),
        ("provider:paypal:clearing", "CREDIT", 20),
    ]
    assert payment.s.capturable_minor == 600
    too_much = payment.command(CommandKind.CAPTURE, 700)
    assert too_much.rejection is not None
    assert too_much.rejection.reason is RejectReason.AMOUNT_EXCEEDS_BOUND
    over = paypal_capture(payment, "CAP-2", 700, final=False)
    assert over.rejection is not None
    assert over.rejection.reason is RejectReason.AMOUNT_EXCEEDS_BOUND
    paypal_capture(payment, "CAP-3", 600, final=True, fee=30)
    assert payment.status is S.SUCCEEDED
    assert payment.s.captured_minor == 1000
    assert payment.s.fees == (Money(50, "EUR"),)


def test_paypal_refunds_give_fees_back() -> None:
    payment = paypal_authorized()
    paypal_capture(payment, "CAP-1", 1000, final=True, fee=50)
    refund = payment.event(
        "PAYMENT.CAPTURE.REFUNDED",
        "COMPLETED",
        amount=400,
        fee=Money(20, "EUR"),
        object_id="REF-1",
        fields={"order_id": "ORDER-1"},
    )
    assert payment.status is S.PARTIALLY_REFUNDED
    assert payment.s.fees == (Money(30, "EUR"),)
    assert postings_of(refund) == [
        ("merchant:mer_1:refunds", "DEBIT", 400),
        ("provider:paypal:clearing", "CREDIT", 400),
        ("provider:paypal:clearing", "DEBIT", 20),
        ("merchant:mer_1:fees", "CREDIT", 20),
    ]
    payment.event("PAYMENT.CAPTURE.REFUNDED", "COMPLETED", amount=600, object_id="REF-2")
    assert payment.status is S.REFUNDED


def test_paypal_same_capture_under_another_event_id_moves_nothing() -> None:
    payment = paypal_authorized()
    paypal_capture(payment, "CAP-1", 400, final=False)
    again = paypal_capture(payment, "CAP-1", 400, final=False)
    assert again.outcome is Outcome.RECORDED
    assert payment.s.captured_minor == 400
    assert payment.last().note == "capture:CAP-1 was already applied"


def test_paypal_void_after_a_partial_capture_closes_the_capture() -> None:
    payment = paypal_authorized()
    paypal_capture(payment, "CAP-1", 300, final=False)
    payment.event("PAYMENT.AUTHORIZATION.VOIDED", "VOIDED", object_id="AUTH-1")
    assert payment.status is S.SUCCEEDED
    assert payment.s.capturable_minor == 0


def test_paypal_authorization_voided_cancels() -> None:
    payment = paypal_authorized()
    payment.command(CommandKind.CANCEL)
    payment.event("PAYMENT.AUTHORIZATION.VOIDED", "VOIDED", object_id="AUTH-1")
    assert payment.status is S.CANCELED


def test_paypal_uncaptured_approval_expires() -> None:
    payment = Payment(Provider.PAYPAL)
    payment.event("CHECKOUT.ORDER.APPROVED", "APPROVED", amount=1000)
    payment.event("CHECKOUT.PAYMENT-APPROVAL.REVERSED", "VOIDED")
    assert payment.status is S.EXPIRED
    late = payment.event("CHECKOUT.ORDER.APPROVED", "APPROVED", amount=1000)
    assert late.outcome is Outcome.STALE


def test_paypal_capture_order_without_authorization() -> None:
    payment = Payment(Provider.PAYPAL)
    payment.event("CHECKOUT.ORDER.APPROVED", "APPROVED", amount=1000)
    payment.event("PAYMENT.CAPTURE.PENDING", "PENDING", amount=1000, object_id="CAP-1")
    assert payment.status is S.PROCESSING
    paypal_capture(payment, "CAP-1", 1000, final=True)
    assert payment.status is S.SUCCEEDED
    assert payment.s.authorized_minor == 1000


@pytest.mark.parametrize(
    ("outcome", "status", "charged_back"),
    [
        ("RESOLVED_SELLER_FAVOUR", S.SUCCEEDED, 0),
        ("CANCELED_BY_BUYER", S.SUCCEEDED, 0),
        ("RESOLVED_BUYER_FAVOUR", S.REFUNDED, 1000),
        ("ACCEPTED", S.REFUNDED, 1000),
    ],
)
def test_paypal_dispute_outcomes(outcome: str, status: PaymentStatus, charged_back: int) -> None:
    payment = paypal_authorized()
    paypal_capture(payment, "CAP-1", 1000, final=True)
    # PayPal's dispute event carries no amount the normalizer reads: all of it is held.
    payment.event("CUSTOMER.DISPUTE.CREATED", "OPEN", object_id="PP-D-1")
    assert payment.status is S.DISPUTED
    assert payment.s.disputed_minor == 1000
    payment.event(
        "CUSTOMER.DISPUTE.RESOLVED",
        "RESOLVED",
        object_id="PP-D-1",
        fields={"outcome_code": outcome},
    )
    assert payment.status is status
    assert payment.s.charged_back_minor == charged_back
    assert payment.s.disputed_minor == 0


def test_paypal_dispute_updates_and_restatements_change_nothing() -> None:
    payment = paypal_authorized()
    paypal_capture(payment, "CAP-1", 1000, final=True)
    payment.event("CUSTOMER.DISPUTE.CREATED", "OPEN", object_id="PP-D-1")
    assert payment.event(
        "CUSTOMER.DISPUTE.UPDATED", "UNDER_REVIEW", object_id="PP-D-1"
    ).outcome is (Outcome.RECORDED)
    # The same dispute announced again (a normalizer may not read its id): not held twice.
    envelope = payment.provider_envelope("CUSTOMER.DISPUTE.CREATED", "OPEN")
    without_id = dataclasses.replace(
        envelope, payload=dataclasses.replace(envelope.payload, provider_object_id=None)
    )
    again = payment.send(without_id)
    assert again.outcome is Outcome.RECORDED
    assert payment.s.disputed_minor == 1000


def test_paypal_dispute_without_an_outcome_is_not_guessed() -> None:
    payment = paypal_authorized()
    paypal_capture(payment, "CAP-1", 1000, final=True)
    payment.event("CUSTOMER.DISPUTE.CREATED", "OPEN", object_id="PP-D-1")
    decision = payment.event("CUSTOMER.DISPUTE.RESOLVED", "RESOLVED", object_id="PP-D-1")
    assert decision.rejection is not None
    assert decision.rejection.reason is RejectReason.UNHANDLED_EVENT
    assert payment.status is S.DISPUTED


def test_paypal_capture_reversed_is_a_chargeback() -> None:
    payment = paypal_authorized()
    paypal_capture(payment, "CAP-1", 1000, final=True)
    reversed_ = payment.event(
        "PAYMENT.CAPTURE.REVERSED", "COMPLETED", amount=250, object_id="REV-1"
    )
    assert payment.status is S.PARTIALLY_REFUNDED
    assert payment.s.charged_back_minor == 250
    assert postings_of(reversed_) == [
        ("merchant:mer_1:chargebacks", "DEBIT", 250),
        ("provider:paypal:clearing", "CREDIT", 250),
    ]


def test_paypal_capture_denied_fails_the_payment() -> None:
    payment = paypal_authorized()
    payment.event("PAYMENT.CAPTURE.DENIED", "DECLINED", amount=1000, object_id="CAP-1")
    assert payment.status is S.FAILED


# --------------------------------------------------------------------------
# Coinbase Commerce


def coinbase(
    status: str, context: str | None = None, paid: str | None = None, **kw: object
) -> dict[str, object]:
    fields = {}
    if context:
        fields["context"] = context
    if paid is not None:
        fields["paid_local_amount"] = paid
    return {"status": status, "fields": fields, "amount": 1000, **kw}


def test_coinbase_paid_as_asked() -> None:
    payment = Payment(Provider.COINBASE)
    payment.event("charge:created", **coinbase("NEW"))
    payment.event("charge:pending", **coinbase("PENDING"))
    assert payment.status is S.PROCESSING
    confirmed = payment.event("charge:confirmed", **coinbase("COMPLETED"))
    assert payment.status is S.SUCCEEDED
    assert (payment.s.authorized_minor, payment.s.captured_minor) == (1000, 1000)
    assert postings_of(confirmed) == [
        ("provider:coinbase:clearing", "DEBIT", 1000),
        ("merchant:mer_1:payable", "CREDIT", 1000),
    ]


def test_coinbase_underpaid_then_resolved() -> None:
    payment = Payment(Provider.COINBASE)
    payment.event("charge:created", **coinbase("NEW"))
    payment.event("charge:pending", **coinbase("PENDING"))
    under = payment.event("charge:failed", **coinbase("UNRESOLVED", "UNDERPAID", "9.50"))
    assert payment.status is S.UNRESOLVED
    assert (payment.s.captured_minor, payment.s.suspense_minor) == (0, 950)
    assert postings_of(under) == [
        ("provider:coinbase:clearing", "DEBIT", 950),
        ("merchant:mer_1:suspense", "CREDIT", 950),
    ]
    assert payment.last().provider_status == "UNRESOLVED/UNDERPAID"
    resolved = payment.event("charge:resolved", **coinbase("RESOLVED", paid="9.50"))
    assert payment.status is S.SUCCEEDED
    assert (payment.s.captured_minor, payment.s.suspense_minor) == (950, 0)
    assert postings_of(resolved) == [
        ("merchant:mer_1:suspense", "DEBIT", 950),
        ("merchant:mer_1:payable", "CREDIT", 950),
    ]


def test_coinbase_overpaid_keeps_the_excess_in_suspense() -> None:
    payment = Payment(Provider.COINBASE)
    payment.event("charge:pending", **coinbase("PENDING"))
    over = payment.event("charge:confirmed", **coinbase("UNRESOLVED", "OVERPAID", "12.00"))
    assert payment.status is S.UNRESOLVED
    assert (payment.s.captured_minor, payment.s.suspense_minor) == (1000, 200)
    assert sorted(postings_of(over)) == sorted(
        [
            ("provider:coinbase:clearing", "DEBIT", 1000),
            ("merchant:mer_1:payable", "CREDIT", 1000),
            ("provider:coinbase:clearing", "DEBIT", 200),
            ("merchant:mer_1:suspense", "CREDIT", 200),
        ]
    )
    payment.event("charge:resolved", **coinbase("RESOLVED", paid="12.00"))
    assert payment.status is S.SUCCEEDED
    assert (payment.s.captured_minor, payment.s.suspense_minor) == (1200, 0)


def test_coinbase_underpaid_topped_up_to_overpaid() -> None:
    payment = Payment(Provider.COINBASE)
    payment.event("charge:failed", **coinbase("UNRESOLVED", "UNDERPAID", "5.00"))
    payment.event("charge:failed", **coinbase("UNRESOLVED", "OVERPAID", "11.00"))
    assert (payment.s.captured_minor, payment.s.suspense_minor) == (1000, 100)
    older = payment.event("charge:failed", **coinbase("UNRESOLVED", "UNDERPAID", "5.00"))
    assert older.outcome is Outcome.STALE


def test_coinbase_expired_then_paid_late() -> None:
    payment = Payment(Provider.COINBASE)
    payment.event("charge:created", **coinbase("NEW"))
    payment.event("charge:failed", **coinbase("EXPIRED"))
    assert payment.status is S.EXPIRED
    late = payment.event("charge:delayed", **coinbase("UNRESOLVED", "DELAYED", "10.00"))
    assert late.outcome is Outcome.APPLIED
    assert payment.status is S.UNRESOLVED
    assert payment.s.suspense_minor == 1000
    payment.event("charge:resolved", **coinbase("RESOLVED"))
    assert payment.status is S.SUCCEEDED
    assert payment.s.captured_minor == 1000


def test_coinbase_unresolved_without_the_amount_paid_moves_nothing() -> None:
    payment = Payment(Provider.COINBASE)
    payment.event("charge:failed", **coinbase("UNRESOLVED", "MULTIPLE"))
    assert payment.status is S.UNRESOLVED
    assert payment.last().postings == ()
    assert "amount paid unknown" in (payment.last().note or "")
    decision = payment.event("charge:resolved", **coinbase("RESOLVED"))
    assert decision.rejection is not None
    assert decision.rejection.reason is RejectReason.MISSING_AMOUNT


def test_coinbase_canceled_and_commands() -> None:
    payment = Payment(Provider.COINBASE)
    assert payment.command(CommandKind.CANCEL).outcome is Outcome.RECORDED
    payment.event("charge:created", **coinbase("CANCELED"))
    assert payment.status is S.CANCELED
    other = Payment(Provider.COINBASE, payment_id="pay_2")
    other.event("charge:confirmed", **coinbase("COMPLETED"))
    refused = other.command(CommandKind.REFUND)
    assert refused.rejection is not None
    assert refused.rejection.reason is RejectReason.COMMAND_NOT_ALLOWED


def test_coinbase_completed_after_an_unresolved_payment_uses_the_suspense() -> None:
    payment = Payment(Provider.COINBASE)
    payment.event("charge:pending", **coinbase("UNRESOLVED", "UNDERPAID", "4.00"))
    payment.event("charge:confirmed", **coinbase("COMPLETED"))
    assert payment.status is S.SUCCEEDED
    assert (payment.s.captured_minor, payment.s.suspense_minor) == (1000, 0)


# --------------------------------------------------------------------------
# Duplicates, stale events, rejections


def test_a_provider_event_seen_before_changes_nothing() -> None:
    payment = Payment(Provider.STRIPE)
    envelope = payment.provider_envelope(
        "payment_intent.succeeded", "succeeded", amount=1000, fields={"amount_received": "1000"}
    )
    assert payment.send(envelope).outcome is Outcome.APPLIED
    state = payment.state
    again = payment.send(envelope)
    assert again.outcome is Outcome.DUPLICATE
    assert again.state is state
    # The same provider event id in a new envelope (redelivered, republished).
    redelivered = payment.provider_envelope(
        "payment_intent.succeeded",
        "succeeded",
        amount=1000,
        fields={"amount_received": "1000"},
        event_id=envelope.payload.provider_event_id,  # type: ignore[union-attr]
    )
    assert payment.send(redelivered).outcome is Outcome.DUPLICATE


def test_a_command_seen_before_changes_nothing() -> None:
    payment = stripe_succeeded()
    envelope = payment.command_envelope(CommandKind.REFUND, Money(100, "EUR"))
    assert payment.send(envelope).outcome is Outcome.RECORDED
    assert payment.send(envelope).outcome is Outcome.DUPLICATE


def test_late_processing_after_succeeded_is_stale() -> None:
    payment = stripe_succeeded()
    state = payment.s
    stale = payment.event("payment_intent.processing", "processing")
    assert stale.outcome is Outcome.STALE
    event = stale.events[0]
    assert event.event_type == "payment.stale"
    assert event.payload.stale
    assert event.payload.status_before is event.payload.status_after is S.SUCCEEDED
    assert event.payload.note == "stale: payment_intent.processing (PROCESSING) after SUCCEEDED"
    assert payment.s.status is S.SUCCEEDED
    assert payment.s.sequence == state.sequence + 1, "recorded in the timeline"
    assert _money_of(payment.s) == _money_of(state)


def test_a_late_authorization_after_the_capture_is_stale() -> None:
    payment = stripe_succeeded()
    late = payment.event(
        "payment_intent.amount_capturable_updated",
        "requires_capture",
        fields={"amount_capturable": "1000"},
    )
    assert late.outcome is Outcome.STALE


@pytest.mark.parametrize(
    ("setup", "event_type", "status", "kwargs", "reason"),
    [
        # A dispute before anything was captured: no status allows it, and nothing can be held.
        ("authorized", "charge.dispute.created", "warning_needs_response", {"amount": 500}, RejectReason.ILLEGAL_TRANSITION),
        ("authorized", "charge.dispute.created", "needs_response", {"amount": 500}, RejectReason.AMOUNT_EXCEEDS_BOUND),
        # A refund beyond what was captured.
        ("succeeded", "charge.refunded", "succeeded", {"fields": {"amount_refunded": "1001"}}, RejectReason.AMOUNT_EXCEEDS_BOUND),
        # A capture beyond the authorization (or the payment amount).
        ("authorized", "payment_intent.succeeded", "succeeded", {"fields": {"amount_received": "1001"}}, RejectReason.AMOUNT_EXCEEDS_BOUND),
        ("authorized", "payment_intent.amount_capturable_updated", "requires_capture", {"fields": {"amount_capturable": "1500"}}, RejectReason.AMOUNT_EXCEEDS_BOUND),
        # An event type nobody mapped, and one that is never applied automatically.
        ("succeeded", "customer.created", None, {}, RejectReason.UNMAPPED_EVENT),
        ("succeeded", "refund.failed", "failed", {}, RejectReason.UNHANDLED_EVENT),
        # Amounts in another currency than the payment's.
        ("succeeded", "charge.dispute.created", "needs_response", {"amount": Money(5, "USD")}, RejectReason.CURRENCY_MISMATCH),
        # Another PaymentIntent than the payment's.
        ("succeeded", "payment_intent.canceled", "canceled", {"object_id": "pi_other"}, RejectReason.WRONG_PROVIDER_OBJECT),
        # A refund whose amount the normalizer could not convert.
        ("succeeded", "charge.refunded", "succeeded", {"fields": {"amount_unconverted": "5 ISK"}}, RejectReason.MISSING_AMOUNT),
    ],
)  # fmt: skip
def test_illegal_events_are_rejected_and_change_nothing(
    setup: str, event_type: str, status: str | None, kwargs: dict[str, object], reason: RejectReason
) -> None:
    payment = stripe_authorized() if setup == "authorized" else stripe_succeeded()
    state = payment.state
    decision = payment.event(event_type, status, **kwargs)
    assert decision.outcome is Outcome.REJECTED
    assert decision.rejection is not None
    assert decision.rejection.reason is reason, decision.rejection
    assert not decision.rejection.retryable
    assert payment.state is state


def test_a_provider_event_before_the_payment_exists_may_be_retried() -> None:
    payment = Payment(Provider.STRIPE)
    envelope = payment.provider_envelope("payment_intent.created", "requires_payment_method")
    decision = apply_provider_event(None, envelope)
    assert decision.outcome is Outcome.REJECTED
    assert decision.rejection is not None
    assert decision.rejection.reason is RejectReason.UNKNOWN_PAYMENT
    assert decision.rejection.retryable


def test_an_event_of_another_provider_is_rejected() -> None:
    stripe = Payment(Provider.STRIPE)
    paypal = Payment(Provider.PAYPAL)
    decision = apply_provider_event(
        stripe.s, paypal.provider_envelope("CHECKOUT.ORDER.APPROVED", "APPROVED")
    )
    assert decision.rejection is not None
    assert decision.rejection.reason is RejectReason.WRONG_PROVIDER


@pytest.mark.parametrize(
    ("kind", "amount", "extra", "reason"),
    [
        (CommandKind.CREATE, 1000, {}, RejectReason.PAYMENT_EXISTS),
        (CommandKind.CAPTURE, None, {}, RejectReason.COMMAND_NOT_ALLOWED),
        (CommandKind.REFUND, None, {}, RejectReason.COMMAND_NOT_ALLOWED),
        (CommandKind.CANCEL, None, {"merchant_id": "mer_2"}, RejectReason.WRONG_MERCHANT),
        (CommandKind.CANCEL, Money(5, "USD"), {}, RejectReason.CURRENCY_MISMATCH),
    ],
)
def test_commands_not_allowed_in_the_state(
    kind: CommandKind, amount: int | Money | None, extra: dict[str, object], reason: RejectReason
) -> None:
    payment = Payment(Provider.STRIPE)
    state = payment.state
    decision = payment.command(kind, amount, **extra)
    assert decision.rejection is not None
    assert decision.rejection.reason is reason
    assert payment.state is state


def test_commands_are_bounded() -> None:
    payment = stripe_authorized()
    over = payment.command(CommandKind.CAPTURE, 1001)
    assert over.rejection is not None
    assert over.rejection.reason is RejectReason.AMOUNT_EXCEEDS_BOUND
    zero = payment.command(CommandKind.CAPTURE, 0)
    assert zero.rejection is not None
    payment.event("payment_intent.succeeded", "succeeded", fields={"amount_received": "1000"})
    cancel = payment.command(CommandKind.CANCEL)
    assert cancel.rejection is not None
    assert cancel.rejection.reason is RejectReason.COMMAND_NOT_ALLOWED
    refund = payment.command(CommandKind.REFUND, 1001)
    assert refund.rejection is not None
    assert refund.rejection.reason is RejectReason.AMOUNT_EXCEEDS_BOUND
    payment.command(CommandKind.REFUND)
    assert payment.last().amount == Money(1000, "EUR"), "no amount: all that is refundable"


def test_a_command_before_create_and_a_create_without_amount() -> None:
    payment = Payment(Provider.STRIPE)
    envelope = payment.command_envelope(CommandKind.CAPTURE)
    decision = apply_command(None, envelope)
    assert decision.rejection is not None
    assert decision.rejection.reason is RejectReason.UNKNOWN_PAYMENT
    create = payment.command_envelope(CommandKind.CREATE)
    decision = apply_command(None, create)
    assert decision.rejection is not None
    assert decision.rejection.reason is RejectReason.INVALID_COMMAND


def test_inputs_of_the_wrong_payload_type() -> None:
    payment = Payment(Provider.STRIPE)
    command = payment.command_envelope(CommandKind.CANCEL)
    event = payment.provider_envelope("payment_intent.processing", "processing")
    assert (
        apply_provider_event(payment.s, command).rejection.reason
        is RejectReason.NOT_A_PROVIDER_EVENT
    )  # type: ignore[union-attr]
    assert apply_command(payment.s, event).rejection.reason is RejectReason.NOT_A_COMMAND  # type: ignore[union-attr]


def test_seen_ids_are_bounded_by_named_limits() -> None:
    payment = Payment(Provider.STRIPE)
    full = dataclasses.replace(
        payment.s,
        seen_provider_event_ids=tuple(
            f"old_{i}" for i in range(machine.PROVIDER_EVENT_IDS_PER_PAYMENT_MAX)
        ),
        seen_command_event_ids=tuple(
            f"cmd_{i}" for i in range(machine.COMMAND_EVENT_IDS_PER_PAYMENT_MAX)
        ),
    )
    event = apply_provider_event(
        full, payment.provider_envelope("payment_intent.processing", "processing")
    )
    assert event.rejection is not None
    assert event.rejection.reason is RejectReason.LIMIT_EXCEEDED
    command = apply_command(full, payment.command_envelope(CommandKind.CANCEL))
    assert command.rejection is not None
    assert command.rejection.reason is RejectReason.LIMIT_EXCEEDED


# --------------------------------------------------------------------------
# Events, envelopes, dead letters


def test_payment_events_are_deterministic_and_encode() -> None:
    first, second = stripe_succeeded(), stripe_succeeded()
    # Same inputs (ids aside from the command's fresh UUIDv7): same payloads.
    assert [e.payload.kind for e in first.emitted] == [e.payload.kind for e in second.emitted]
    codec = EnvelopeCodec(MemoryRegistry())
    signer = FileSigner(bytes(32))
    for emitted in first.emitted:
        envelope = emitted.envelope(producer="payledger/streams", now=T0)
        assert envelope.aggregate_id == "pay_1"
        assert envelope.sequence == emitted.sequence
        assert envelope.causation_id is not None
        signed, wire = codec.encode(envelope, signer, "payledger.payment-events")
        assert codec.decode(wire).envelope == signed


def test_the_same_input_gives_the_same_event_ids() -> None:
    payment = stripe_authorized()
    envelope = payment.provider_envelope(
        "payment_intent.succeeded", "succeeded", fields={"amount_received": "1000"}
    )
    one = apply_provider_event(payment.s, envelope)
    two = apply_provider_event(payment.s, envelope)
    assert one == two
    assert one.events[0].event_id == two.events[0].event_id


def test_dead_letter_and_audit_fact_of_a_rejection() -> None:
    payment = stripe_succeeded()
    envelope = payment.provider_envelope(
        "charge.refunded", "succeeded", fields={"amount_refunded": "5000"}
    )
    decision = apply_provider_event(payment.s, envelope)
    assert decision.rejection is not None
    fact = machine.audit_fact(decision.rejection, envelope, payment.s)
    assert fact.fact_type == "payment.rejected"
    assert fact.actor == "stripe"
    assert fact.subject == "pay_1"
    assert fact.reason == "amount-exceeds-bound"
    assert fact.details["status"] == "SUCCEEDED"
    original = b"\x00" + b"x" * 100
    letter = machine.dead_letter(
        decision.rejection,
        envelope,
        topic="payledger.provider-events",
        partition=3,
        offset=42,
        original=original,
    )
    assert letter.original_sha256 == hashlib.sha256(original).digest()
    assert letter.original_bytes == original
    assert (letter.original_partition, letter.original_offset) == (3, 42)
    assert letter.reason == "amount-exceeds-bound"
    big = b"x" * (DEAD_LETTER_ORIGINAL_BYTES_MAX + 1)
    too_big = machine.dead_letter(
        decision.rejection, envelope, topic="t", partition=0, offset=0, original=big
    )
    assert too_big.original_bytes is None
    assert too_big.original_sha256 == hashlib.sha256(big).digest()
    codec = EnvelopeCodec(MemoryRegistry())
    wrapped = new_envelope(
        event_type="payment.dead-letter",
        aggregate_id="pay_1",
        sequence=1,
        producer="t",
        payload=letter,
    )
    signed, wire = codec.encode(wrapped, FileSigner(bytes(32)), "payledger.rejected")
    assert codec.decode(wire).envelope == signed


# --------------------------------------------------------------------------
# Random sequences: the invariants hold whatever arrives, in whatever order.


def _random_inputs(payment: Payment, rng: random.Random) -> Iterator[Envelope]:
    """Plausible and implausible inputs for the payment's provider, with repeats."""
    sent: list[Envelope] = []
    amount = payment.s.amount_minor

    def some() -> int:
        return rng.choice(
            [
                0,
                1,
                amount // 3,
                amount // 2,
                amount - 1,
                amount,
                amount + 1,
                rng.randint(0, 2 * amount),
            ]
        )

    while True:
        roll = rng.random()
        if sent and roll < 0.1:
            yield rng.choice(sent)  # a duplicate delivery
            continue
        if roll < 0.25:
            kind = rng.choice([CommandKind.CAPTURE, CommandKind.CANCEL, CommandKind.REFUND])
            value = rng.choice([None, some()])
            envelope = payment.command_envelope(
                kind, None if value in (None, 0) else Money(value, payment.currency)
            )
        else:
            at = T0 + timedelta(seconds=rng.randint(0, 10_000))
            envelope = payment.provider_envelope(
                at=at, **_random_provider_event(payment.provider, rng, some)
            )
        sent.append(envelope)
        yield envelope


def _random_provider_event(provider: Provider, rng: random.Random, some) -> dict[str, object]:  # type: ignore[no-untyped-def]
    if provider is Provider.STRIPE:
        choice = rng.choice(
            [
                ("payment_intent.created", "requires_payment_method", {}),
                ("payment_intent.requires_action", "requires_action", {}),
                ("payment_intent.processing", "processing", {}),
                ("payment_intent.payment_failed", "requires_payment_method", {}),
                ("payment_intent.canceled", "canceled", {}),
                (
                    "payment_intent.amount_capturable_updated",
                    "requires_capture",
                    {"amount_capturable": str(some())},
                ),
                ("payment_intent.succeeded", "succeeded", {"amount_received": str(some())}),
                ("charge.refunded", "succeeded", {"amount_refunded": str(some())}),
                (
                    "charge.dispute.created",
                    rng.choice(["needs_response", "warning_needs_response"]),
                    {},
                ),
                ("charge.dispute.closed", rng.choice(["won", "lost", "warning_closed"]), {}),
                ("charge.succeeded", "succeeded", {}),
            ]
        )
        event_type, status, fields = choice
        object_id = {"charge.dispute.created": "du_1", "charge.dispute.closed": "du_1"}.get(
            event_type, "pi_1"
        )
        if event_type.startswith("charge.") and "dispute" not in event_type:
            object_id = f"ch_{rng.randint(1, 2)}"
        fee = (
            Money(rng.randint(1, 50), rng.choice(["EUR", "USD"]))
            if event_type == "charge.succeeded"
            else None
        )
        return {
            "event_type": event_type,
            "status": status,
            "fields": fields,
            "amount": some(),
            "object_id": object_id,
            "fee": fee,
        }
    if provider is Provider.PAYPAL:
        event_type, status = rng.choice(
            [
                ("CHECKOUT.ORDER.APPROVED", "APPROVED"),
                ("CHECKOUT.PAYMENT-APPROVAL.REVERSED", "VOIDED"),
                ("PAYMENT.AUTHORIZATION.CREATED", "CREATED"),
                ("PAYMENT.AUTHORIZATION.VOIDED", "VOIDED"),
                ("PAYMENT.CAPTURE.COMPLETED", "COMPLETED"),
                ("PAYMENT.CAPTURE.PENDING", "PENDING"),
                ("PAYMENT.CAPTURE.DENIED", "DECLINED"),
                ("PAYMENT.CAPTURE.REFUNDED", "COMPLETED"),
                ("PAYMENT.CAPTURE.REVERSED", "COMPLETED"),
                ("CUSTOMER.DISPUTE.CREATED", "OPEN"),
                ("CUSTOMER.DISPUTE.RESOLVED", "RESOLVED"),
            ]
        )
        fields = {"order_id": "ORDER-1", "final_capture": rng.choice(["true", "false"])}
        if event_type == "CUSTOMER.DISPUTE.RESOLVED":
            fields["outcome_code"] = rng.choice(["RESOLVED_SELLER_FAVOUR", "RESOLVED_BUYER_FAVOUR"])
        object_id = {
            "CHECKOUT.ORDER.APPROVED": "ORDER-1",
            "CHECKOUT.PAYMENT-APPROVAL.REVERSED": "ORDER-1",
            "CUSTOMER.DISPUTE.CREATED": "PP-D-1",
            "CUSTOMER.DISPUTE.RESOLVED": "PP-D-1",
        }.get(event_type, f"OBJ-{rng.randint(1, 4)}")
        fee = None
        if (
            event_type in ("PAYMENT.CAPTURE.COMPLETED", "PAYMENT.CAPTURE.REFUNDED")
            and rng.random() < 0.5
        ):
            fee = Money(rng.randint(1, 40), "EUR")
        amount = None if event_type.startswith("CUSTOMER.") else some()
        return {
            "event_type": event_type,
            "status": status,
            "fields": fields,
            "amount": amount,
            "object_id": object_id,
            "fee": fee,
        }
    status, context = rng.choice(
        [
            ("NEW", None), ("PENDING", None), ("COMPLETED", None), ("EXPIRED", None),
            ("CANCELED", None), ("RESOLVED", None), ("UNRESOLVED", "UNDERPAID"),
            ("UNRESOLVED", "OVERPAID"), ("UNRESOLVED", "DELAYED"), ("UNRESOLVED", "MULTIPLE"),
        ]
    )  # fmt: skip
    fields = {"context": context} if context else {}
    if rng.random() < 0.8:
        fields["paid_local_amount"] = f"{some() / 100:.2f}"
    return {
        "event_type": rng.choice(["charge:pending", "charge:failed", "charge:confirmed"]),
        "status": status,
        "fields": fields,
        "amount": 1000,
        "object_id": "charge-1",
    }


@pytest.mark.parametrize("provider", list(Provider), ids=lambda p: p.value)
def test_random_sequences_keep_every_invariant(provider: Provider) -> None:
    rng = random.Random(f"payledger-{provider.value}")
    outcomes: dict[Outcome, int] = {}
    statuses: set[PaymentStatus] = set()
    for run in range(150):
        payment = Payment(
            provider, payment_id=f"pay_{run}", capture=rng.choice(list(CaptureMethod))
        )
        inputs = _random_inputs(payment, rng)
        for _ in range(rng.randint(5, 40)):
            decision = payment.send(next(inputs))  # check_decision and check_cumulative run here
            outcomes[decision.outcome] = outcomes.get(decision.outcome, 0) + 1
            statuses.add(payment.status)
    # The walk reached every kind of outcome and a good part of the status model.
    assert set(outcomes) == set(Outcome), outcomes
    assert len(statuses) >= 6, statuses


def test_a_failed_provider_call_is_a_payment_event_that_moves_nothing() -> None:
    payment = Payment(Provider.STRIPE, capture=CaptureMethod.MANUAL)
    payment.event("payment_intent.amount_capturable_updated", fields={"amount_capturable": "1000"})
    capture = payment.command_envelope(CommandKind.CAPTURE, Money(600, "EUR"))
    requested = payment.send(capture)
    before = payment.s
    decision = machine.provider_call_failed(before, capture, "capture at stripe: timeout")
    check_decision(before, decision)
    (event,) = decision.events
    assert decision.outcome is Outcome.RECORDED
    assert event.sequence == requested.events[0].sequence + 1 == before.sequence + 1
    assert event.payload.kind is PaymentEventKind.NOTED
    assert event.payload.postings == ()
    assert (event.payload.status_before, event.payload.status_after) == (
        PaymentStatus.AUTHORIZED,
        PaymentStatus.AUTHORIZED,
    )
    assert event.payload.note == "provider call failed: capture at stripe: timeout"
    assert event.payload.command_event_id == capture.event_id
    assert event.causation_id == capture.event_id
    assert event.event_id not in {e.event_id for e in payment.emitted}
    # The payment goes on from there: the provider's webhook still applies.
    payment.state = decision.state
    payment.emitted.extend(decision.events)
    applied = payment.event("payment_intent.succeeded", fields={"amount_received": "600"})
    assert applied.events[0].sequence == event.sequence + 1
    assert payment.s.captured_minor == 600

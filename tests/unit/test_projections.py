"""Rows of the read models built from real payment events, and the payment driver the
projection tests share.

Payment events here are emitted by the state machine (``ledger.payments.machine``)
from merchant commands and provider events, as the stream worker emits them, so
the rows are checked against the shapes the log really carries.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from ledger.envelope import (
    CaptureMethod,
    CommandKind,
    Envelope,
    Money,
    PaymentCommand,
    PaymentEvent,
    PaymentEventKind,
    Provider,
    ProviderEvent,
    new_envelope,
    utc_now,
)
from ledger.payments import machine
from ledger.payments.machine import DomainEvent, Outcome, PaymentState
from ledger.payments.status import PaymentStatus
from projections import rows, store
from projections.rows import Position, Projected

T0 = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
TOPIC = "test.payment-events"
STREAMS = "/payledger/streams"
OBJECT = {Provider.STRIPE: "pi_1", Provider.PAYPAL: "ORDER-1", Provider.COINBASE: "charge-1"}


class Driver:
    """One payment driven through the state machine; keeps every payment event it emits."""

    def __init__(
        self,
        payment_id: str,
        provider: Provider,
        *,
        merchant_id: str = "mer_proj",
        amount: int = 1000,
        currency: str = "EUR",
        capture: CaptureMethod = CaptureMethod.AUTOMATIC,
    ) -> None:
        self.payment_id = payment_id
        self.provider = provider
        self.merchant_id = merchant_id
        self.currency = currency
        self.counter = 0
        self.state: PaymentState | None = None
        self.events: list[DomainEvent] = []
        self.command(CommandKind.CREATE, Money(amount, currency), capture_method=capture)

    def command(self, kind: CommandKind, amount: Money | int | None = None, **fields: object):
        if isinstance(amount, int):
            amount = Money(amount, self.currency)
        self.counter += 1
        envelope = new_envelope(
            event_type=f"payment.command.{kind.value.lower()}",
            aggregate_id=self.payment_id,
            sequence=self.counter,
            producer="payledger/ingress",
            now=T0 + timedelta(seconds=self.counter),
            payload=PaymentCommand(
                command=kind,
                merchant_id=self.merchant_id,
                idempotency_key=f"idem-{self.payment_id}-{self.counter}",
                provider=self.provider,
                amount=amount,
                **fields,  # type: ignore[arg-type]
            ),
        )
        return self._apply(machine.apply_command(self.state, envelope))

    def event(
        self,
        event_type: str,
        status: str | None = None,
        *,
        amount: int | None = None,
        fee: Money | None = None,
        fields: dict[str, str] | None = None,
        object_id: str | None = None,
    ):
        self.counter += 1
        envelope = new_envelope(
            event_type=f"provider.{self.provider.value.lower()}.{event_type}",
            aggregate_id=self.payment_id,
            sequence=self.counter,
            producer="payledger/ingress",
            now=T0 + timedelta(seconds=self.counter),
            payload=ProviderEvent(
                provider=self.provider,
                provider_event_id=f"evt_{self.payment_id}_{self.counter}",
                provider_event_type=event_type,
                received_at=T0,
                body_sha256=hashlib.sha256(f"{self.payment_id}/{self.counter}".encode()).digest(),
                provider_object_id=object_id or OBJECT[self.provider],
                status=status,
                amount=None if amount is None else Money(amount, self.currency),
                fee=fee,
                fields=fields or {},
            ),
        )
        return self._apply(machine.apply_provider_event(self.state, envelope))

    def _apply(self, decision: machine.Decision) -> machine.Decision:
        assert decision.outcome in (Outcome.APPLIED, Outcome.RECORDED, Outcome.STALE), decision
        self.state = decision.state
        self.events.extend(decision.events)
        return decision

    @property
    def final(self) -> PaymentState:
        assert self.state is not None
        return self.state

    def envelopes(self, now: datetime | None = None) -> list[Envelope]:
        """The unsigned envelopes, as the stream worker records them (from ``now`` on).

        Recorded now by default, as the worker does: a signing key only signs
        what is recorded inside its validity.
        """
        start = now or utc_now()
        return [
            event.envelope(producer=STREAMS, now=start + timedelta(milliseconds=n))
            for n, event in enumerate(self.events)
        ]


def stripe_with_fee_and_refund(payment_id: str, merchant_id: str = "mer_proj") -> Driver:
    """Captured 10.00 EUR, a 0.59 EUR fee, 3.00 EUR refunded: PARTIALLY_REFUNDED."""
    payment = Driver(payment_id, Provider.STRIPE, merchant_id=merchant_id)
    payment.event("payment_intent.created", "requires_payment_method", amount=1000)
    payment.event(
        "payment_intent.succeeded", "succeeded", amount=1000, fields={"amount_received": "1000"}
    )
    payment.event(
        "charge.succeeded",
        "succeeded",
        object_id="ch_1",
        fee=Money(59, "EUR"),
        fields={"payment_intent": "pi_1"},
    )
    payment.command(CommandKind.REFUND, 300)
    payment.event(
        "charge.refunded",
        "succeeded",
        amount=1000,
        object_id="ch_1",
        fields={"amount_refunded": "300", "payment_intent": "pi_1"},
    )
    assert payment.final.status is PaymentStatus.PARTIALLY_REFUNDED
    return payment


def paypal_captured_with_fees(payment_id: str, merchant_id: str = "mer_proj") -> Driver:
    """Authorized and captured 10.00 USD (fee 0.50), 4.00 refunded (0.20 of the fee back)."""
    payment = Driver(
        payment_id,
        Provider.PAYPAL,
        merchant_id=merchant_id,
        currency="USD",
        capture=CaptureMethod.MANUAL,
    )
    payment.event("CHECKOUT.ORDER.APPROVED", "APPROVED", amount=1000)
    payment.event(
        "PAYMENT.AUTHORIZATION.CREATED",
        "CREATED",
        amount=1000,
        object_id="AUTH-1",
        fields={"order_id": "ORDER-1"},
    )
    payment.command(CommandKind.CAPTURE, 1000)
    payment.event(
        "PAYMENT.CAPTURE.COMPLETED",
        "COMPLETED",
        amount=1000,
        fee=Money(50, "USD"),
        object_id="CAP-1",
        fields={"order_id": "ORDER-1", "final_capture": "true"},
    )
    payment.event(
        "PAYMENT.CAPTURE.REFUNDED",
        "COMPLETED",
        amount=400,
        fee=Money(20, "USD"),
        object_id="REF-1",
        fields={"order_id": "ORDER-1"},
    )
    assert payment.final.status is PaymentStatus.PARTIALLY_REFUNDED
    return payment


def coinbase_underpaid_then_resolved(payment_id: str, merchant_id: str = "mer_proj") -> Driver:
    """Crypto paid 9.50 of 10.00 EUR: held in suspense, then accepted as the sale."""
    payment = Driver(payment_id, Provider.COINBASE, merchant_id=merchant_id)

    def charge(event_type: str, status: str, context: str | None = None, paid: str | None = None):
        fields = {"context": context} if context else {}
        if paid is not None:
            fields["paid_local_amount"] = paid
        payment.event(event_type, status, amount=1000, fields=fields)

    charge("charge:created", "NEW")
    charge("charge:pending", "PENDING")
    charge("charge:failed", "UNRESOLVED", "UNDERPAID", "9.50")
    assert payment.final.suspense_minor == 950
    charge("charge:resolved", "RESOLVED", paid="9.50")
    assert payment.final.status is PaymentStatus.SUCCEEDED
    return payment


def stripe_succeeded(payment_id: str, merchant_id: str = "mer_proj", amount: int = 1050) -> Driver:
    """The common case: created, then captured at once (automatic capture)."""
    payment = Driver(payment_id, Provider.STRIPE, merchant_id=merchant_id, amount=amount)
    payment.event(
        "payment_intent.succeeded",
        "succeeded",
        amount=amount,
        fields={"amount_received": str(amount)},
    )
    assert payment.final.status is PaymentStatus.SUCCEEDED
    return payment


SCENARIOS: tuple[Callable[[str], Driver], ...] = (
    stripe_with_fee_and_refund,
    paypal_captured_with_fees,
    coinbase_underpaid_then_resolved,
)


def projected(
    envelope: Envelope, offset: int = 0, partition: int = 0, *, value: bytes = b""
) -> Projected:
    """A projected record of ``envelope``; its digest comes from ``value`` (or the event id)."""
    assert isinstance(envelope.payload, PaymentEvent)
    value = value or envelope.event_id.encode()
    return Projected(
        Position(TOPIC, partition, offset),
        hashlib.sha256(value).digest(),
        value,
        envelope,
        envelope.payload,
    )


# Rows -----------------------------------------------------------------------


def test_the_created_event_row() -> None:
    payment = stripe_succeeded("pay_rows_1")
    created = projected(payment.envelopes()[0], offset=7, partition=3)
    row = rows.event_row(created)
    envelope = created.envelope
    assert row.event_id == envelope.event_id
    assert (row.payment_id, row.merchant_id, row.provider) == ("pay_rows_1", "mer_proj", "STRIPE")
    assert (row.sequence, row.kind, row.event_type) == (1, "CREATED", "payment.created")
    assert row.status_before is None
    assert row.status_after == "AWAITING_PAYMENT_METHOD"
    assert (row.amount_minor, row.amount_currency) == (1050, "EUR")
    assert (row.payment_amount_minor, row.currency) == (1050, "EUR")
    assert row.postings_count == 0
    assert row.command_event_id == envelope.causation_id
    assert (row.source_topic, row.source_partition, row.source_offset) == (TOPIC, 3, 7)
    assert row.signature_status == rows.SIGNATURE_VERIFIED
    assert (row.occurred_at, row.recorded_at) == (envelope.occurred_at, envelope.recorded_at)
    assert rows.entry_rows(created) == ()


def test_a_capture_with_its_postings_and_totals() -> None:
    payment = stripe_succeeded("pay_rows_2")
    captured = projected(payment.envelopes()[1], offset=8)
    row = rows.event_row(captured)
    assert (row.kind, row.status_before, row.status_after) == (
        "CAPTURED",
        "AWAITING_PAYMENT_METHOD",
        "SUCCEEDED",
    )
    assert (row.authorized_minor, row.captured_minor, row.refunded_minor) == (1050, 1050, 0)
    assert row.provider_object_id == "pi_1"
    assert row.provider_event_type == "payment_intent.succeeded"
    assert row.postings_count == 2
    assert rows.entry_rows(captured) == (
        rows.EntryRow(captured.event_id, 0, "provider:stripe:clearing", "DEBIT", 1050, "EUR"),
        rows.EntryRow(captured.event_id, 1, "merchant:mer_proj:payable", "CREDIT", 1050, "EUR"),
    )


def test_payment_and_fee_rows_follow_the_newest_event() -> None:
    payment = stripe_with_fee_and_refund("pay_rows_3")
    newest = projected(payment.envelopes()[-1])
    row = rows.payment_row(newest, created_at=T0, provider_object_id="pi_1")
    state = payment.final
    assert row.status == "PARTIALLY_REFUNDED"
    assert (row.currency, row.amount_minor) == ("EUR", 1000)
    assert (row.captured_minor, row.refunded_minor) == (state.captured_minor, state.refunded_minor)
    assert row.last_sequence == len(payment.events) == state.sequence
    assert (row.created_at, row.updated_at) == (T0, newest.envelope.recorded_at)
    assert rows.fee_rows(newest) == (rows.FeeRow("pay_rows_3", "EUR", 59),)


def test_a_fee_returned_reduces_the_net_fee_row() -> None:
    payment = paypal_captured_with_fees("pay_rows_4")
    refund = projected(payment.envelopes()[-1])
    assert rows.fee_rows(refund) == (rows.FeeRow("pay_rows_4", "USD", 30),)
    legs = {(e.account, e.side, e.amount_minor) for e in rows.entry_rows(refund)}
    assert ("merchant:mer_proj:fees", "CREDIT", 20) in legs


def test_every_stale_or_recorded_event_still_gets_its_row() -> None:
    payment = stripe_with_fee_and_refund("pay_rows_5")
    refund_requested = next(
        e for e in payment.envelopes() if e.payload.kind is PaymentEventKind.REFUND_REQUESTED
    )
    row = rows.event_row(projected(refund_requested))
    assert (row.amount_minor, row.amount_currency, row.postings_count) == (300, "EUR", 0)
    assert row.status_before == row.status_after == "SUCCEEDED"


def test_the_sql_columns_are_the_row_fields() -> None:
    pairs = (
        (store._EVENT_TYPES, rows.EventRow),
        (store._ENTRY_TYPES, rows.EntryRow),
        (store._PAYMENT_TYPES, rows.PaymentRow),
        (store._FEE_TYPES, rows.FeeRow),
        (store._PROCESSED_TYPES, rows.ProcessedRow),
    )
    for types, row_type in pairs:
        assert tuple(types) == tuple(f.name for f in dataclasses.fields(row_type)), row_type
    assert set(store._PAYMENT_FOLLOWS) <= set(store._PAYMENT_TYPES)

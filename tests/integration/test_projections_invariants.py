"""The ledger's invariants over a large mixed run, projected by the real applier.

Ten thousand payments -- Stripe, PayPal and Coinbase; automatic and manual
capture; partial captures and refunds; fees, one in another currency than its
payment's; disputes won and lost; PayPal reversals; Coinbase under- and
overpayment; EUR, USD, GBP and JPY (zero-decimal) -- are driven through the
state machine (``ledger.payments.machine``) in this process, signed and
published on payment-events, and projected into a schema of the test's own by
the applier (``projections.applier``, in this process too). Driving them
through the real stream worker instead would take minutes for ten thousand
payments, too long for CI; the machine is the code the worker runs, and the
worker's own path is tested end to end in test_streams_*.

Then, with SQL over the projection:

- per currency, the debits of all ledger entries equal their credits, and the
  account balances sum to zero;
- each payment's totals are what its events imply: computed here from the
  postings the test published (the running totals of ACCOUNTS.md: captured
  from the merchant payable, refunded from refunds, ...), and equal to its
  last event's totals;
- each payment's net per account and currency is the sum of its own postings;
- every event was applied once: processed events = events published, and each
  payment's sequences are 1..n with ``last_sequence`` = n.
"""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from ledger.codec import EnvelopeCodec
from ledger.config import Settings
from ledger.currencies import from_minor_units
from ledger.envelope import CaptureMethod, CommandKind, Envelope, Money, PostingSide, Provider
from ledger.keystore import ActiveSigner, KeyStore
from ledger.payments.status import PaymentStatus
from ledger.registry import FileSchemaRegistry
from streams.provision import provision_topics
from streams.publisher import Published, kafka_publisher
from tests.integration.test_projections_applier import (
    drop_schema,
    ends_of,
    events_topic,
    project,
    query,
)
from tests.unit.test_projections import STREAMS, Driver

pytestmark = pytest.mark.integration

PAYMENTS = 10_000
CURRENCIES = ("EUR", "USD", "GBP", "JPY")
MERCHANTS = 7
PUBLISH_CHUNK = 2_000
S = PaymentStatus

# The mixed payments ------------------------------------------------------------------------


@dataclass
class Mix:
    """Chooses what varies between payments of one scenario: merchant, currency, amounts."""

    rng: random.Random

    def merchant(self) -> str:
        return f"mer_inv_{self.rng.randrange(MERCHANTS)}"

    def currency(self) -> str:
        return self.rng.choice(CURRENCIES)

    def amount(self) -> int:
        return self.rng.randint(200, 250_000)

    def part(self, whole: int) -> int:
        """Strictly between 0 and ``whole``."""
        return self.rng.randint(1, whole - 1)


Scenario = Callable[[str, Mix], Driver]


def _driver(
    payment_id: str,
    mix: Mix,
    provider: Provider,
    *,
    currency: str | None = None,
    capture: CaptureMethod = CaptureMethod.AUTOMATIC,
) -> Driver:
    return Driver(
        payment_id,
        provider,
        merchant_id=mix.merchant(),
        amount=mix.amount(),
        currency=currency or mix.currency(),
        capture=capture,
    )


def _expect(payment: Driver, status: PaymentStatus) -> Driver:
    # The scenario did what it is named for, or the machine changed under it.
    assert payment.final.status is status, (payment.payment_id, payment.final.status)
    return payment


# Stripe: the PaymentIntent and its charge are per payment.


def _stripe_ids(payment: Driver) -> tuple[str, str, dict[str, str]]:
    pi, charge = f"pi_{payment.payment_id}", f"ch_{payment.payment_id}"
    return pi, charge, {"payment_intent": pi}


def _stripe_paid(payment: Driver, amount: int, fee: Money | None) -> None:
    pi, charge, of_pi = _stripe_ids(payment)
    payment.event("payment_intent.created", "requires_payment_method", amount=amount, object_id=pi)
    payment.event(
        "payment_intent.succeeded",
        "succeeded",
        amount=amount,
        object_id=pi,
        fields={"amount_received": str(amount)},
    )
    if fee is not None:
        payment.event("charge.succeeded", "succeeded", object_id=charge, fee=fee, fields=of_pi)


def stripe_automatic_with_fee(payment_id: str, mix: Mix) -> Driver:
    payment = _driver(payment_id, mix, Provider.STRIPE)
    amount = payment.final.amount_minor
    _stripe_paid(payment, amount, Money(1 + amount // 40, payment.currency))
    return _expect(payment, S.SUCCEEDED)


def stripe_fee_in_another_currency(payment_id: str, mix: Mix) -> Driver:
    """A EUR payment whose fee Stripe reports in USD: its two legs balance in USD."""
    payment = _driver(payment_id, mix, Provider.STRIPE, currency="EUR")
    _stripe_paid(payment, payment.final.amount_minor, Money(mix.rng.randint(30, 900), "USD"))
    return _expect(payment, S.SUCCEEDED)


def stripe_manual_partial_capture_partial_refund(payment_id: str, mix: Mix) -> Driver:
    payment = _driver(payment_id, mix, Provider.STRIPE, capture=CaptureMethod.MANUAL)
    amount = payment.final.amount_minor
    pi, charge, of_pi = _stripe_ids(payment)
    payment.event(
        "payment_intent.amount_capturable_updated",
        "requires_capture",
        amount=amount,
        object_id=pi,
        fields={"amount_capturable": str(amount)},
    )
    captured = mix.part(amount)
    payment.command(CommandKind.CAPTURE, captured)
    payment.event(
        "payment_intent.succeeded",
        "succeeded",
        amount=amount,
        object_id=pi,
        fields={"amount_received": str(captured)},
    )
    payment.event(
        "charge.succeeded",
        "succeeded",
        object_id=charge,
        fee=Money(1 + captured // 35, payment.currency),
        fields=of_pi,
    )
    refunded = mix.part(captured) if captured > 1 else 0
    if refunded:
        payment.command(CommandKind.REFUND, refunded)
        payment.event(
            "charge.refunded",
            "succeeded",
            amount=amount,
            object_id=charge,
            fields={"amount_refunded": str(refunded), **of_pi},
        )
    return _expect(payment, S.PARTIALLY_REFUNDED if refunded else S.SUCCEEDED)


def stripe_refunded_in_two(payment_id: str, mix: Mix) -> Driver:
    payment = _driver(payment_id, mix, Provider.STRIPE)
    amount = payment.final.amount_minor
    _stripe_paid(payment, amount, None)
    _, charge, of_pi = _stripe_ids(payment)
    for total in (mix.part(amount), amount):  # amount_refunded is Stripe's running total
        payment.event(
            "charge.refunded",
            "succeeded",
            amount=amount,
            object_id=charge,
            fields={"amount_refunded": str(total), **of_pi},
        )
    return _expect(payment, S.REFUNDED)


def _stripe_disputed(payment_id: str, mix: Mix, outcome: str, status: PaymentStatus) -> Driver:
    payment = _driver(payment_id, mix, Provider.STRIPE)
    amount = payment.final.amount_minor
    _stripe_paid(payment, amount, Money(1 + amount // 50, payment.currency))
    dispute, of_pi = f"du_{payment_id}", {"payment_intent": f"pi_{payment_id}"}
    payment.event(
        "charge.dispute.created", "needs_response", amount=amount, object_id=dispute, fields=of_pi
    )
    assert payment.final.disputed_minor == amount
    payment.event("charge.dispute.closed", outcome, amount=amount, object_id=dispute, fields=of_pi)
    return _expect(payment, status)


def stripe_dispute_won(payment_id: str, mix: Mix) -> Driver:
    return _stripe_disputed(payment_id, mix, "won", S.SUCCEEDED)


def stripe_dispute_lost(payment_id: str, mix: Mix) -> Driver:
    return _stripe_disputed(payment_id, mix, "lost", S.REFUNDED)


def stripe_canceled(payment_id: str, mix: Mix) -> Driver:
    payment = _driver(payment_id, mix, Provider.STRIPE, capture=CaptureMethod.MANUAL)
    amount = payment.final.amount_minor
    pi = f"pi_{payment_id}"
    payment.event(
        "payment_intent.amount_capturable_updated",
        "requires_capture",
        amount=amount,
        object_id=pi,
        fields={"amount_capturable": str(amount)},
    )
    payment.command(CommandKind.CANCEL, reason="out of stock")
    payment.event("payment_intent.canceled", "canceled", object_id=pi)
    return _expect(payment, S.CANCELED)


# PayPal: the order, authorization, captures and refunds are per payment.


def _paypal_authorized(payment_id: str, mix: Mix) -> Driver:
    payment = _driver(payment_id, mix, Provider.PAYPAL, capture=CaptureMethod.MANUAL)
    amount = payment.final.amount_minor
    order = f"ORDER-{payment_id}"
    payment.event("CHECKOUT.ORDER.APPROVED", "APPROVED", amount=amount, object_id=order)
    payment.event(
        "PAYMENT.AUTHORIZATION.CREATED",
        "CREATED",
        amount=amount,
        object_id=f"AUTH-{payment_id}",
        fields={"order_id": order},
    )
    return payment


def _paypal_capture(payment: Driver, number: int, amount: int, *, final: bool, fee: int) -> None:
    payment.event(
        "PAYMENT.CAPTURE.COMPLETED",
        "COMPLETED",
        amount=amount,
        fee=Money(fee, payment.currency) if fee else None,
        object_id=f"CAP-{number}-{payment.payment_id}",
        fields={
            "order_id": f"ORDER-{payment.payment_id}",
            "final_capture": "true" if final else "false",
        },
    )


def paypal_partial_captures_and_refund(payment_id: str, mix: Mix) -> Driver:
    """Two captures (each with a fee), then a refund that gives part of the fees back."""
    payment = _paypal_authorized(payment_id, mix)
    amount = payment.final.amount_minor
    first = mix.part(amount)
    payment.command(CommandKind.CAPTURE, first)
    _paypal_capture(payment, 1, first, final=False, fee=1 + first // 30)
    assert payment.final.status is S.PARTIALLY_CAPTURED
    payment.command(CommandKind.CAPTURE)
    _paypal_capture(payment, 2, amount - first, final=True, fee=1 + (amount - first) // 30)
    refund = mix.part(amount)
    fee_back = min(payment.final.fee_in(payment.currency), 1 + refund // 60)
    payment.command(CommandKind.REFUND, refund)
    payment.event(
        "PAYMENT.CAPTURE.REFUNDED",
        "COMPLETED",
        amount=refund,
        fee=Money(fee_back, payment.currency),
        object_id=f"REF-{payment_id}",
        fields={"order_id": f"ORDER-{payment_id}"},
    )
    return _expect(payment, S.PARTIALLY_REFUNDED)


def paypal_dispute_lost(payment_id: str, mix: Mix) -> Driver:
    payment = _paypal_authorized(payment_id, mix)
    amount = payment.final.amount_minor
    payment.command(CommandKind.CAPTURE)
    _paypal_capture(payment, 1, amount, final=True, fee=1 + amount // 30)
    dispute = f"PP-D-{payment_id}"
    payment.event("CUSTOMER.DISPUTE.CREATED", "OPEN", object_id=dispute)
    assert payment.final.disputed_minor == amount
    payment.event("CUSTOMER.DISPUTE.UPDATED", "UNDER_REVIEW", object_id=dispute)
    payment.event(
        "CUSTOMER.DISPUTE.RESOLVED",
        "RESOLVED",
        object_id=dispute,
        fields={"outcome_code": "RESOLVED_BUYER_FAVOUR"},
    )
    return _expect(payment, S.REFUNDED)


def paypal_captured_then_reversed(payment_id: str, mix: Mix) -> Driver:
    """Automatic capture (an order captured without an authorization), then a reversal."""
    payment = _driver(payment_id, mix, Provider.PAYPAL)
    amount = payment.final.amount_minor
    order = f"ORDER-{payment_id}"
    payment.event("CHECKOUT.ORDER.APPROVED", "APPROVED", amount=amount, object_id=order)
    _paypal_capture(payment, 1, amount, final=True, fee=0)
    payment.event(
        "PAYMENT.CAPTURE.REVERSED",
        "COMPLETED",
        amount=mix.part(amount),
        object_id=f"REV-{payment_id}",
        fields={"order_id": order},
    )
    return _expect(payment, S.PARTIALLY_REFUNDED)


# Coinbase: the charge is per payment; the amount paid is a decimal in the local currency.


def _coinbase(
    payment: Driver, event_type: str, status: str, context: str | None = None, paid: int = 0
) -> None:
    fields = {"context": context} if context else {}
    if paid:
        fields["paid_local_amount"] = from_minor_units(paid, payment.currency)
    payment.event(
        event_type,
        status,
        amount=payment.final.amount_minor,
        object_id=f"charge-{payment.payment_id}",
        fields=fields,
    )


def coinbase_paid(payment_id: str, mix: Mix) -> Driver:
    payment = _driver(payment_id, mix, Provider.COINBASE)
    _coinbase(payment, "charge:created", "NEW")
    _coinbase(payment, "charge:pending", "PENDING")
    _coinbase(payment, "charge:confirmed", "COMPLETED")
    return _expect(payment, S.SUCCEEDED)


def coinbase_underpaid_then_resolved(payment_id: str, mix: Mix) -> Driver:
    payment = _driver(payment_id, mix, Provider.COINBASE)
    paid = mix.part(payment.final.amount_minor)
    _coinbase(payment, "charge:created", "NEW")
    _coinbase(payment, "charge:pending", "PENDING")
    _coinbase(payment, "charge:failed", "UNRESOLVED", "UNDERPAID", paid)
    assert payment.final.suspense_minor == paid
    _coinbase(payment, "charge:resolved", "RESOLVED", paid=paid)
    return _expect(payment, S.SUCCEEDED)


def coinbase_overpaid(payment_id: str, mix: Mix) -> Driver:
    """The excess stays in suspense; half the time the merchant resolves it."""
    payment = _driver(payment_id, mix, Provider.COINBASE)
    amount = payment.final.amount_minor
    paid = amount + mix.rng.randint(1, amount)
    _coinbase(payment, "charge:pending", "PENDING")
    _coinbase(payment, "charge:confirmed", "UNRESOLVED", "OVERPAID", paid)
    assert (payment.final.captured_minor, payment.final.suspense_minor) == (amount, paid - amount)
    if mix.rng.random() < 0.5:
        return _expect(payment, S.UNRESOLVED)
    _coinbase(payment, "charge:resolved", "RESOLVED", paid=paid)
    return _expect(payment, S.SUCCEEDED)


def coinbase_expired(payment_id: str, mix: Mix) -> Driver:
    payment = _driver(payment_id, mix, Provider.COINBASE)
    _coinbase(payment, "charge:created", "NEW")
    _coinbase(payment, "charge:failed", "EXPIRED")
    return _expect(payment, S.EXPIRED)


MIXED: tuple[Scenario, ...] = (
    stripe_automatic_with_fee,
    stripe_automatic_with_fee,
    stripe_fee_in_another_currency,
    stripe_manual_partial_capture_partial_refund,
    stripe_refunded_in_two,
    stripe_dispute_won,
    stripe_dispute_lost,
    stripe_canceled,
    paypal_partial_captures_and_refund,
    paypal_dispute_lost,
    paypal_captured_then_reversed,
    coinbase_paid,
    coinbase_underpaid_then_resolved,
    coinbase_overpaid,
    coinbase_expired,
)


def mixed_payments(count: int, *, prefix: str, seed: str = "payledger-invariants") -> list[Driver]:
    """``count`` payments, the scenarios in turn, each with its own random merchant,
    currency and amounts (reproducible from ``seed``)."""
    mix = Mix(random.Random(seed))
    return [MIXED[i % len(MIXED)](f"{prefix}{i:06d}", mix) for i in range(count)]


async def publish_signed(settings: Settings, envelopes: Sequence[Envelope]) -> list[Published]:
    """Sign with the settings' keys (the stream worker's role) and publish on payment-events."""
    store = KeyStore(settings)
    registry = FileSchemaRegistry(settings.registry_dir)
    published: list[Published] = []
    async with kafka_publisher(
        settings, EnvelopeCodec(registry), ActiveSigner(store), source=STREAMS
    ) as publisher:
        for start in range(0, len(envelopes), PUBLISH_CHUNK):
            chunk = envelopes[start : start + PUBLISH_CHUNK]
            published += await publisher.publish_many(events_topic(settings), chunk)
    registry.close()
    store.close()
    return published


# What the events imply, computed here from what the test published ------------------------

Net = dict[tuple[str, str, str], int]  # (payment, account, currency) -> debits - credits


def nets_of(payments: Sequence[Driver]) -> Net:
    nets: Net = defaultdict(int)
    for payment in payments:
        for event in payment.events:
            for leg in event.payload.postings:
                signed = leg.amount_minor if leg.side is PostingSide.DEBIT else -leg.amount_minor
                nets[(payment.payment_id, leg.account, leg.currency)] += signed
    return dict(nets)


def implied_row(payment: Driver, nets: Net) -> tuple[object, ...]:
    """The payment's row as its postings imply it (ACCOUNTS.md, "Running totals")."""
    merchant, currency = f"merchant:{payment.merchant_id}", payment.currency

    def net(account: str) -> int:
        return nets.get((payment.payment_id, f"{merchant}:{account}", currency), 0)

    newest = payment.events[-1].payload
    return (
        newest.status_after.value,
        currency,
        newest.payment_amount.amount_minor,
        newest.authorized_minor,  # a memo: no posting moves it
        -net("payable"),
        net("refunds"),
        net("dispute_hold"),
        net("chargebacks"),
        -net("suspense"),
        len(payment.events),
    )


def last_event_row(payment: Driver) -> tuple[object, ...]:
    newest = payment.events[-1]
    event = newest.payload
    return (
        event.status_after.value,
        event.payment_amount.currency,
        event.payment_amount.amount_minor,
        event.authorized_minor,
        event.captured_minor,
        event.refunded_minor,
        event.disputed_minor,
        event.charged_back_minor,
        event.suspense_minor,
        newest.sequence,
    )


# The test -------------------------------------------------------------------------------------


@pytest.fixture
async def settings(tmp_path: Path) -> Settings:
    """A topic prefix and keys of this test's own."""
    settings = Settings(topic_prefix=f"p{uuid.uuid4().hex[:10]}.", state_dir=tmp_path)
    report = await provision_topics(settings)
    assert report.ok, report.mismatches
    KeyStore(settings).active_key()
    return settings


@pytest.fixture
async def schema(settings: Settings) -> AsyncIterator[str]:
    """A schema of this test's own, dropped (with everything in it) at the end."""
    name = f"pt_{uuid.uuid4().hex[:12]}"
    yield name
    await drop_schema(settings.dsn(), name)


async def test_the_ledger_balances_and_every_payment_is_what_its_events_imply(
    settings: Settings, schema: str
) -> None:
    payments = mixed_payments(PAYMENTS, prefix=f"pay_{uuid.uuid4().hex[:8]}_")
    envelopes = [envelope for payment in payments for envelope in payment.envelopes()]
    published = await publish_signed(settings, envelopes)
    assert len(published) == len(envelopes)
    applier = await project(settings, schema, ends_of(published), batch_records=1_000)
    totals = applier.totals
    assert (totals.applied, totals.duplicates, totals.conflicts, totals.rejected) == (
        len(envelopes),
        0,
        0,
        0,
    )
    dsn = settings.dsn()
    nets = nets_of(payments)

    # The run is as mixed as it claims to be.
    finals = [p.final for p in payments]
    assert {p.provider for p in payments} == set(Provider)
    assert {p.currency for p in payments} == set(CURRENCIES)
    assert {f.capture_method for f in finals} == set(CaptureMethod)
    assert {
        S.SUCCEEDED,
        S.PARTIALLY_REFUNDED,
        S.REFUNDED,
        S.CANCELED,
        S.UNRESOLVED,
        S.EXPIRED,
    } <= {f.status for f in finals}
    assert any(0 < f.captured_minor < f.authorized_minor for f in finals)  # partial captures
    for total in ("refunded_minor", "charged_back_minor", "suspense_minor"):
        assert any(getattr(f, total) for f in finals), total
    assert any(fee.currency != f.currency for f in finals for fee in f.fees)

    # Per currency, all debits equal all credits; the balances sum to zero.
    expected: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for payment in payments:
        for event in payment.events:
            for leg in event.payload.postings:
                sums = expected[leg.currency]
                sums[0 if leg.side is PostingSide.DEBIT else 1] += leg.amount_minor
                sums[2] += 1
    assert set(expected) == set(CURRENCIES)
    sides = await query(
        dsn,
        schema,
        "SELECT currency,"
        " sum(amount_minor) FILTER (WHERE side = 'DEBIT'),"
        " sum(amount_minor) FILTER (WHERE side = 'CREDIT'),"
        " count(*) FROM ledger_entries GROUP BY currency",
    )
    assert {currency: [d, c, n] for currency, d, c, n in sides} == expected
    for currency, debits, credits, _ in sides:
        assert debits == credits > 0, currency
    balances = await query(
        dsn,
        schema,
        "SELECT currency, sum(balance_minor), sum(debit_minor), sum(credit_minor),"
        " sum(entries_count) FROM account_balances GROUP BY currency",
    )
    assert {currency: [b, d, c, n] for currency, b, d, c, n in balances} == {
        currency: [0, *sums] for currency, sums in expected.items()
    }

    # Each payment: its totals are what its postings imply, and its last event's.
    rows = {
        row[0]: row[1:]
        for row in await query(
            dsn,
            schema,
            "SELECT payment_id, status, currency, amount_minor, authorized_minor, captured_minor,"
            " refunded_minor, disputed_minor, charged_back_minor, suspense_minor, last_sequence"
            " FROM payments",
        )
    }
    assert len(rows) == len(payments)
    for payment in payments:
        implied = implied_row(payment, nets)
        assert implied == last_event_row(payment), payment.payment_id
        assert rows[payment.payment_id] == implied, payment.payment_id

    # Each payment's net per account and currency is the sum of its own postings.
    found = await query(
        dsn,
        schema,
        "SELECT e.payment_id, l.account, l.currency,"
        " sum(CASE l.side WHEN 'DEBIT' THEN l.amount_minor ELSE -l.amount_minor END)"
        " FROM ledger_entries AS l JOIN payment_events AS e USING (event_id)"
        " GROUP BY e.payment_id, l.account, l.currency",
    )
    assert {(p, a, c): n for p, a, c, n in found} == nets
    fees = await query(dsn, schema, "SELECT payment_id, currency, amount_minor FROM payment_fees")
    assert sorted(fees) == sorted(
        (payment, currency, net)
        for (payment, account, currency), net in nets.items()
        if account.endswith(":fees") and net
    )

    # Every event applied once; each payment's sequences are 1..n.
    assert await query(dsn, schema, "SELECT count(*) FROM processed_events") == [(len(envelopes),)]
    sequences = await query(
        dsn,
        schema,
        "SELECT e.payment_id, count(*), min(e.sequence), max(e.sequence), p.last_sequence"
        " FROM payment_events AS e JOIN payments AS p USING (payment_id)"
        " GROUP BY e.payment_id, p.last_sequence",
    )
    assert sorted(sequences) == sorted(
        (p.payment_id, len(p.events), 1, len(p.events), len(p.events)) for p in payments
    )

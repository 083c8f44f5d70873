"""Payment-event envelopes of whole payments, legal by the transition tables.

``lifecycle`` gives the events the stream processor emits for one Stripe
payment with manual capture: created, authorized, captured (money moves from
the provider's clearing account to what the merchant is owed) and the
provider's fee, sequences 1 to 4, postings balanced per currency.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ledger.envelope import (
    Envelope,
    Money,
    PaymentEvent,
    PaymentEventKind,
    Posting,
    PostingSide,
    Provider,
    new_envelope,
)
from ledger.payments.status import PaymentStatus

K = PaymentEventKind
S = PaymentStatus
D, C = PostingSide.DEBIT, PostingSide.CREDIT


def payment_event(
    payment_id: str,
    merchant_id: str,
    amount: Money,
    sequence: int,
    kind: PaymentEventKind,
    before: PaymentStatus | None,
    after: PaymentStatus,
    postings: tuple[Posting, ...] = (),
    *,
    provider: Provider = Provider.STRIPE,
    now: datetime | None = None,
    step: timedelta = timedelta(milliseconds=1),
    event_id: str | None = None,
) -> Envelope:
    """One payment event, recorded ``step`` times its sequence number after ``now``."""
    payload = PaymentEvent(
        payment_id=payment_id,
        merchant_id=merchant_id,
        provider=provider,
        kind=kind,
        status_before=before,
        status_after=after,
        payment_amount=amount,
        postings=postings,
    )
    return new_envelope(
        event_type=f"payment.{kind.lower()}",
        aggregate_id=payment_id,
        sequence=sequence,
        producer="payledger/streams",
        payload=payload,
        # Now by default: the signing key must be valid when the event is recorded.
        now=(now or datetime.now(UTC)) + step * sequence,
        event_id=event_id,
    )


def lifecycle(
    payment_id: str,
    merchant_id: str = "mer_audit",
    amount_minor: int = 1_050,
    currency: str = "EUR",
    fee_minor: int = 45,
    now: datetime | None = None,
) -> list[Envelope]:
    amount = Money(amount_minor, currency)
    clearing = "provider:stripe:clearing"

    def event(
        sequence: int,
        kind: PaymentEventKind,
        before: PaymentStatus | None,
        after: PaymentStatus,
        *legs: tuple[str, PostingSide, int],
    ) -> Envelope:
        postings = tuple(Posting(account, side, minor, currency) for account, side, minor in legs)
        return payment_event(
            payment_id, merchant_id, amount, sequence, kind, before, after, postings, now=now
        )

    return [
        event(1, K.CREATED, None, S.AWAITING_PAYMENT_METHOD),
        event(2, K.AUTHORIZED, S.AWAITING_PAYMENT_METHOD, S.AUTHORIZED),
        event(
            3,
            K.CAPTURED,
            S.AUTHORIZED,
            S.SUCCEEDED,
            (clearing, D, amount_minor),
            (f"merchant:{merchant_id}:payable", C, amount_minor),
        ),
        event(
            4,
            K.FEE_CHARGED,
            S.SUCCEEDED,
            S.SUCCEEDED,
            (f"merchant:{merchant_id}:fees", D, fee_minor),
            (clearing, C, fee_minor),
        ),
    ]

"""Sample envelopes of every payload type, built the way producers build them."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from ledger.envelope import (
    AuditFact,
    CaptureMethod,
    CommandKind,
    Envelope,
    Money,
    PaymentCommand,
    Provider,
    ProviderEvent,
    SealedData,
    new_envelope,
)

T0 = datetime(2026, 11, 23, 12, 0, 0, 123456, tzinfo=UTC)


def create_command(
    payment_id: str = "pay_0001", sequence: int = 1, now: datetime = T0, amount_minor: int = 1050
) -> Envelope:
    return new_envelope(
        event_type="payment.command.create",
        aggregate_id=payment_id,
        sequence=sequence,
        producer="payledger/ingress",
        now=now,
        payload=PaymentCommand(
            command=CommandKind.CREATE,
            merchant_id="mer_42",
            idempotency_key="idem-1",
            provider=Provider.STRIPE,
            amount=Money(amount_minor, "EUR"),
            capture_method=CaptureMethod.MANUAL,
            description="Order 1234",
            metadata={"order": "1234", "channel": "web"},
            customer=SealedData("cus_9", "dk_1", "XChaCha20-Poly1305", b"n" * 24, b"c" * 40),
        ),
    )


def provider_event(payment_id: str = "pay_0001", now: datetime = T0) -> Envelope:
    return new_envelope(
        event_type="provider.stripe.payment_intent.succeeded",
        aggregate_id=payment_id,
        sequence=2,
        producer="payledger/ingress",
        now=now,
        payload=ProviderEvent(
            provider=Provider.STRIPE,
            provider_event_id="evt_1",
            provider_event_type="payment_intent.succeeded",
            received_at=now - timedelta(seconds=1),
            body_sha256=hashlib.sha256(b"{}").digest(),
            provider_object_id="pi_1",
            status="succeeded",
            amount=Money(1050, "EUR"),
            fee=Money(45, "EUR"),
            fields={"livemode": "false"},
        ),
    )


def audit_fact(now: datetime = T0) -> Envelope:
    return new_envelope(
        event_type="audit.webhook.rejected",
        aggregate_id="webhook-stripe",
        sequence=1,
        producer="payledger/ingress",
        now=now,
        payload=AuditFact(
            fact_type="webhook.rejected",
            actor="stripe",
            subject="evt_forged",
            reason="signature mismatch",
            digest=hashlib.sha256(b"forged").digest(),
        ),
    )

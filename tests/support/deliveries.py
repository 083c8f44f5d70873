"""PayPal and Coinbase Commerce deliveries as the ingress records them (Stripe: ``streams.py``).

Each builder writes the provider's JSON body, signs it the provider's way and
checks that signature with the ingress verifier, runs the ingress normalizer
on it and wraps the ``NormalizedEvent`` in an envelope exactly as
``tests.support.streams.stripe_delivery`` does.

How each provider's events name our payment, as the normalizers read them:

* PayPal: ``custom_id``, which the adapter sets on the order's purchase unit;
  authorizations, captures and refunds carry it as their own ``custom_id``,
  orders in ``purchase_units[0]``. Payment-level events bind to the order id
  (the order's ``id``, or ``supplementary_data.related_ids.order_id`` of an
  authorization or capture).
* Coinbase: ``metadata.payledger_payment_id`` of the charge, which the adapter
  sets when it creates the charge; the charge id binds the payment.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from ingress.webhooks import coinbase as coinbase_webhooks
from ingress.webhooks import paypal as paypal_webhooks
from ingress.webhooks.events import NormalizedEvent
from ledger.currencies import from_minor_units
from ledger.envelope import Envelope, Money, new_envelope
from tests.support.webhooks import Issued, coinbase_header, make_leaf, make_root, paypal_headers

PAYPAL_WEBHOOK_ID = "1JE4291016473214C"
COINBASE_API_VERSION = "2018-03-22"


def recorded(event: NormalizedEvent, body: bytes) -> Envelope:
    """A normalized delivery, wrapped as the ingress publishes it."""
    return new_envelope(
        event_type=event.envelope_type,
        aggregate_id=event.aggregate_id(),
        sequence=1,
        producer="/payledger/ingress",
        occurred_at=event.occurred_at,
        payload=event.provider_event(
            received_at=datetime.now(UTC), body_sha256=hashlib.sha256(body).digest()
        ),
    )


def rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# ---- PayPal -----------------------------------------------------------------------


def paypal_money(money: Money) -> dict[str, str]:
    return {
        "currency_code": money.currency,
        "value": from_minor_units(money.amount_minor, money.currency),
    }


@cache
def _paypal_signer() -> Issued:
    """The key and certificate that sign this process's PayPal deliveries."""
    now = datetime.now(UTC)
    root = make_root(
        "payledger test root",
        not_before=now - timedelta(days=1),
        not_after=now + timedelta(days=30),
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return make_leaf(
        root, not_before=now - timedelta(days=1), not_after=now + timedelta(days=30), key=key
    )


def paypal_delivery(
    event_type: str, resource: dict[str, Any], *, resource_type: str, at: datetime
) -> Envelope:
    """A PayPal webhook (``{"id": "WH-...", "event_type", "resource"}``), signed and normalized."""
    body = json.dumps(
        {
            "id": f"WH-{uuid.uuid4().hex[:17].upper()}",
            "event_version": "1.0",
            "create_time": rfc3339(at),
            "resource_type": resource_type,
            "resource_version": "2.0",
            "event_type": event_type,
            "summary": f"{event_type} (payledger test)",
            "resource": resource,
        }
    ).encode()
    signer = _paypal_signer()
    assert isinstance(signer.key, rsa.RSAPrivateKey)
    sent = rfc3339(datetime.now(UTC))
    headers = paypal_headers(
        signer.key,
        body=body,
        webhook_id=PAYPAL_WEBHOOK_ID,
        transmission_id=str(uuid.uuid4()),
        time=sent,
    )
    transmission = paypal_webhooks.parse_transmission(
        paypal_webhooks.PayPalHeaders.from_lookup(lambda name: headers.get(name.upper())),
        now=datetime.now(UTC),
        tolerance_s=300,
    )
    paypal_webhooks.verify_signature(
        transmission, body, webhook_ids=[PAYPAL_WEBHOOK_ID], certificate=signer.certificate
    )
    return recorded(paypal_webhooks.normalize(body), body)


def paypal_order(
    order_id: str, payment_id: str, amount: Money, *, status: str, intent: str
) -> dict[str, Any]:
    """An Orders v2 order, as CHECKOUT.ORDER.* events carry it."""
    return {
        "id": order_id,
        "intent": intent,
        "status": status,
        "purchase_units": [
            {"reference_id": "default", "custom_id": payment_id, "amount": paypal_money(amount)}
        ],
    }


def paypal_authorization(
    authorization_id: str, order_id: str, payment_id: str, amount: Money, *, status: str
) -> dict[str, Any]:
    """A Payments v2 authorization, as PAYMENT.AUTHORIZATION.* events carry it."""
    return {
        "id": authorization_id,
        "status": status,
        "amount": paypal_money(amount),
        "custom_id": payment_id,
        "supplementary_data": {"related_ids": {"order_id": order_id}},
    }


def paypal_capture(
    capture_id: str,
    order_id: str,
    authorization_id: str | None,
    payment_id: str,
    amount: Money,
    *,
    fee: Money,
    final_capture: bool,
) -> dict[str, Any]:
    """A completed capture with its ``seller_receivable_breakdown`` (PAYMENT.CAPTURE.COMPLETED)."""
    net = Money(amount.amount_minor - fee.amount_minor, amount.currency)
    related = {"order_id": order_id}
    if authorization_id is not None:  # a capture of an authorization, not of the order
        related["authorization_id"] = authorization_id
    return {
        "id": capture_id,
        "status": "COMPLETED",
        "amount": paypal_money(amount),
        "final_capture": final_capture,
        "custom_id": payment_id,
        "seller_receivable_breakdown": {
            "gross_amount": paypal_money(amount),
            "paypal_fee": paypal_money(fee),
            "net_amount": paypal_money(net),
        },
        "supplementary_data": {"related_ids": related},
    }


def paypal_refund(refund_id: str, payment_id: str, amount: Money, *, fee: Money) -> dict[str, Any]:
    """A completed refund; ``paypal_fee`` is the part of the fee PayPal gives back."""
    net = Money(amount.amount_minor - fee.amount_minor, amount.currency)
    return {
        "id": refund_id,
        "status": "COMPLETED",
        "amount": paypal_money(amount),
        "custom_id": payment_id,
        "seller_payable_breakdown": {
            "gross_amount": paypal_money(amount),
            "paypal_fee": paypal_money(fee),
            "net_amount": paypal_money(net),
        },
    }


def paypal_dispute(
    dispute_id: str,
    payment_id: str,
    capture_id: str,
    amount: Money,
    *,
    status: str,
    outcome: str | None = None,
) -> dict[str, Any]:
    """A Customer Disputes v1 dispute about the capture ``capture_id`` (CUSTOMER.DISPUTE.*)."""
    dispute: dict[str, Any] = {
        "dispute_id": dispute_id,
        "reason": "MERCHANDISE_OR_SERVICE_NOT_RECEIVED",
        "status": status,
        "dispute_amount": paypal_money(amount),
        "dispute_life_cycle_stage": "CHARGEBACK",
        "dispute_channel": "INTERNAL",
        "disputed_transactions": [
            {
                "seller_transaction_id": capture_id,
                "custom": payment_id,
                "seller_protection_eligible": False,
            }
        ],
    }
    if outcome is not None:
        dispute["dispute_outcome"] = {"outcome_code": outcome}
    return dispute


# ---- Coinbase Commerce --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CryptoPayment:
    """One payment the customer sent to a charge, valued in the charge's local currency."""

    local: Money
    status: str = "CONFIRMED"
    crypto_amount: str = "0.00010000"
    crypto_currency: str = "BTC"


def coinbase_charge(
    charge: dict[str, Any],
    timeline: list[tuple[str, str | None]],
    payments: list[CryptoPayment],
    *,
    at: datetime,
) -> dict[str, Any]:
    """``charge`` (as the Coinbase API answers it) after the customer paid ``payments``.

    ``timeline`` entries are ``(status, context)``; the ones given replace the
    charge's own, each a second apart, the last at ``at``.
    """
    entries = []
    for n, (status, context) in enumerate(timeline):
        entry = {"time": rfc3339(at - timedelta(seconds=len(timeline) - 1 - n)), "status": status}
        if context is not None:
            entry["context"] = context
        entries.append(entry)
    return {
        **charge,
        "timeline": entries,
        "payments": [
            {
                "network": "bitcoin",
                "transaction_id": uuid.uuid4().hex,
                "status": payment.status,
                "value": {
                    "local": {
                        "amount": from_minor_units(
                            payment.local.amount_minor, payment.local.currency
                        ),
                        "currency": payment.local.currency,
                    },
                    "crypto": {
                        "amount": payment.crypto_amount,
                        "currency": payment.crypto_currency,
                    },
                },
            }
            for payment in payments
        ],
    }


def coinbase_delivery(
    event_type: str, charge: dict[str, Any], *, secret: str, at: datetime
) -> Envelope:
    """A Coinbase Commerce webhook about ``charge``, signed, verified and normalized."""
    body = json.dumps(
        {
            "id": int(uuid.uuid4().int % 1_000_000_000),
            "scheduled_for": rfc3339(at),
            "attempt_number": 1,
            "event": {
                "id": str(uuid.uuid4()),
                "resource": "event",
                "type": event_type,
                "api_version": COINBASE_API_VERSION,
                "created_at": rfc3339(at),
                "data": charge,
            },
        }
    ).encode()
    coinbase_webhooks.verify(coinbase_header(secret, body), body, secrets=[secret.encode()])
    return recorded(coinbase_webhooks.normalize(body), body)

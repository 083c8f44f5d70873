"""Coinbase Commerce webhooks: ``X-CC-Webhook-Signature`` and the charge-event normalizer.

The header is the hex HMAC-SHA256 of the raw body, keyed with the endpoint's
shared secret (coinbase-commerce-python's ``WebhookSignature``). Nothing
signed carries a time, so a captured delivery verifies forever: replays are
stopped only by the route's dedupe on the event id, and a replayed event can
never be anything but a duplicate of one already recorded.

Amounts: a charge is priced in the merchant's local fiat currency and in each
crypto currency. ``Money`` is ISO 4217 with integer minor units, and crypto
currencies (BTC, ETH, USDC) are not ISO 4217 and have no agreed minor unit,
so ``amount`` is the local fiat price only; the crypto value of the latest
payment travels as exact decimal text in ``fields`` (``crypto_amount``,
``crypto_currency``), never as a float. What the customer paid, in the local
currency, is ``fields["paid_local_amount"]``: the exact decimal sum of the
confirmed payments' ``value.local`` (left out when one of them is unreadable
or in another currency: a partial sum would be a guess).

Our payment id is ``metadata.payledger_payment_id``, the key the Coinbase
adapter sets on the charge it creates (``payment_id`` is read when that is
absent).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal, localcontext
from typing import Any

from ingress.webhooks import events
from ingress.webhooks.errors import MalformedEvent, WebhookVerificationError
from ingress.webhooks.events import NormalizedEvent
from ledger import limits
from ledger.envelope import Provider

_HEX_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DECIMAL = re.compile(r"^[0-9]{1,20}(\.[0-9]{1,18})?$")
# Enough digits that any sum of such decimals within the field limits is exact.
_SUM_DIGITS = 80
# A payment whose status is given and is not this one has not arrived yet.
_CONFIRMED = "CONFIRMED"


def signature(secret: bytes, body: bytes) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(header: str | None, body: bytes, *, secrets: Sequence[bytes]) -> None:
    """Return if ``header`` is the signature of ``body`` under one of ``secrets``."""
    if not secrets:
        raise WebhookVerificationError("not-configured")
    if header is None:
        raise WebhookVerificationError("missing-header: X-CC-Webhook-Signature")
    if len(header) > limits.WEBHOOK_HEADER_CHARS_MAX or not _HEX_SHA256.match(header):
        raise WebhookVerificationError("malformed-header: not a hex SHA-256")
    candidate = header.encode()
    if not any(hmac.compare_digest(signature(s, body).encode(), candidate) for s in secrets):
        raise WebhookVerificationError("no-matching-signature")


def guess_event_id(body: bytes) -> str | None:
    """The event id of an unverified body, for the audit fact only; never trusted."""
    return events.text(events.child(events.parse_object(body), "event"), "id")


def normalize(body: bytes) -> NormalizedEvent:
    """A verified delivery: ``{"id": <delivery>, "event": {"id", "type", "data": <charge>}}``.

    The event id (not the delivery id, which changes per attempt) is what
    identifies the event across retries.
    """
    document = events.parse_object(body)
    event = events.child(document, "event")
    if event is None:
        raise MalformedEvent("missing-field: event")
    charge = events.child(event, "data")
    fields: dict[str, str] = {}
    events.put(fields, "code", events.text(charge, "code"))
    events.put(fields, "api_version", events.text(event, "api_version"))
    status, context = _latest_status(charge)
    events.put(fields, "context", context)
    payments = charge.get("payments") if charge is not None else None
    if isinstance(payments, list) and payments:
        fields["payment_count"] = str(len(payments))
        latest = payments[-1] if isinstance(payments[-1], dict) else None
        crypto = events.child(events.child(latest, "value"), "crypto")
        events.put(fields, "crypto_amount", events.text(crypto, "amount"))
        events.put(fields, "crypto_currency", events.text(crypto, "currency"))
        events.put(fields, "network", events.text(latest, "network"))
    local = events.child(events.child(charge, "pricing"), "local")
    events.put(fields, "paid_local_amount", _paid_local(payments, events.text(local, "currency")))
    metadata = events.child(charge, "metadata")
    payment_id = events.text(metadata, "payledger_payment_id") or events.text(
        metadata, "payment_id"
    )
    return NormalizedEvent(
        provider=Provider.COINBASE,
        event_id=events.required_text(event, "id"),
        event_type=events.event_type(event, "type"),
        object_id=events.text(charge, "id"),
        payment_id=events.payment_id(payment_id),
        status=status,
        amount=events.decimal_money(
            local, value_key="amount", currency_key="currency", fields=fields, name="amount"
        ),
        occurred_at=events.timestamp(events.text(event, "created_at")),
        fields=fields,
    )


def _paid_local(payments: object, currency: str | None) -> str | None:
    """The exact sum of the confirmed payments in the local ``currency``, as decimal text.

    ``None`` when no payment is confirmed, the charge has no local currency,
    or a confirmed payment's local value is missing, not a plain decimal, or
    in another currency.
    """
    if not isinstance(payments, list) or currency is None:
        return None
    total: Decimal | None = None
    for payment in payments:
        if not isinstance(payment, dict):
            return None
        status = events.text(payment, "status")
        if status is not None and status != _CONFIRMED:
            continue
        value = events.child(events.child(payment, "value"), "local")
        amount = events.text(value, "amount")
        if amount is None or not _DECIMAL.match(amount):
            return None
        if events.text(value, "currency") != currency:
            return None
        with localcontext(prec=_SUM_DIGITS):
            total = Decimal(amount) if total is None else total + Decimal(amount)
    return None if total is None else format(total, "f")


def _latest_status(charge: Mapping[str, Any] | None) -> tuple[str | None, str | None]:
    """The status and context (``UNDERPAID``, ``OVERPAID``...) of the last timeline entry."""
    timeline = charge.get("timeline") if charge is not None else None
    if not isinstance(timeline, list) or not timeline or not isinstance(timeline[-1], dict):
        return None, None
    latest = timeline[-1]
    return events.text(latest, "status"), events.text(latest, "context")

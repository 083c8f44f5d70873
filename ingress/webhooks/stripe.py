"""Stripe webhooks: the ``Stripe-Signature`` scheme and the event normalizer.

Stripe signs ``f"{t}."`` followed by the raw body with HMAC-SHA256, keyed
with the endpoint's signing secret (the whole ``whsec_...`` string), and
sends ``Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...][,v0=...]``.
Several ``v1`` entries appear while Stripe rolls a secret; any one matching
is enough. This follows stripe-python's ``WebhookSignature.verify_header``
and is stricter in three ways: a timestamp too far in the *future* is refused
too (stripe-python only refuses old ones), a header with a repeated ``t`` or
an item that is not ``key=value`` is refused instead of read leniently, and
the header and its number of signatures are bounded.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from ingress.webhooks import events
from ingress.webhooks.errors import WebhookVerificationError
from ingress.webhooks.events import NormalizedEvent
from ledger import currencies, limits
from ledger.envelope import Money, Provider
from ledger.errors import EncodingError

SCHEME = "v1"
# Unix seconds as Stripe writes them: ASCII digits, no sign, no padding.
_TIMESTAMP = re.compile(r"^[1-9][0-9]{0,11}$")
_HEX_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Stripe's currency units (docs.stripe.com/currencies): amounts are integers
# in these many decimal digits; every other currency has two.
# fmt: off
_STRIPE_ZERO_DECIMAL = frozenset({
    "BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA",
    "PYG", "RWF", "UGX", "VND", "VUV", "XAF", "XOF", "XPF",
})
# fmt: on
_STRIPE_THREE_DECIMAL = frozenset({"BHD", "JOD", "KWD", "OMR", "TND"})
_STRIPE_AMBIGUOUS = frozenset({"ISK", "UGX"})


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The hex ``v1`` signature Stripe computes for ``body`` sent at ``timestamp``."""
    return hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def parse_header(header: str) -> tuple[int, list[str]]:
    """``(t, [v1 signatures])`` from a ``Stripe-Signature`` value, or the error."""
    if len(header) > limits.WEBHOOK_HEADER_CHARS_MAX:
        raise WebhookVerificationError("malformed-header: too long")
    timestamps: list[str] = []
    candidates: list[str] = []
    for item in header.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise WebhookVerificationError("malformed-header: item is not key=value")
        if key == "t":
            timestamps.append(value)
        elif key == SCHEME:
            candidates.append(value)
        # Other schemes (v0 is Stripe's test-mode scheme) are not ours to trust.
    if len(timestamps) != 1 or not _TIMESTAMP.match(timestamps[0]):
        raise WebhookVerificationError("malformed-header: need exactly one integer t")
    if not candidates:
        raise WebhookVerificationError("malformed-header: no v1 signature")
    if len(candidates) > limits.STRIPE_SIGNATURES_MAX:
        raise WebhookVerificationError("malformed-header: too many signatures")
    return int(timestamps[0]), candidates


def verify(
    header: str | None,
    body: bytes,
    *,
    secrets: Sequence[bytes],
    now: datetime,
    tolerance_s: int,
) -> None:
    """Return if ``body`` was signed by one of ``secrets`` within ``tolerance_s`` of ``now``.

    The signature is checked before the timestamp, as Stripe does, so a
    stale but authentic delivery is told apart from a forged one in the
    audit trail.
    """
    if not secrets:
        raise WebhookVerificationError("not-configured")
    if header is None:
        raise WebhookVerificationError("missing-header: Stripe-Signature")
    timestamp, candidates = parse_header(header)
    # A candidate that is not 64 lower-case hex digits never matches; which
    # one matched is no secret, only the comparison itself must be constant-time.
    shaped = [c.encode() for c in candidates if _HEX_SHA256.match(c)]
    expected = [signature(secret, timestamp, body).encode() for secret in secrets]
    if not any(hmac.compare_digest(e, c) for e in expected for c in shaped):
        raise WebhookVerificationError("no-matching-signature")
    age_s = now.timestamp() - timestamp
    if age_s > tolerance_s:
        raise WebhookVerificationError("stale-timestamp")
    if -age_s > tolerance_s:
        raise WebhookVerificationError("future-timestamp")


def guess_event_id(body: bytes) -> str | None:
    """The event id of an unverified body, for the audit fact only; never trusted."""
    return events.text(events.parse_object(body), "id")


def normalize(body: bytes) -> NormalizedEvent:
    """A verified Stripe event (``{"id": "evt_...", "type": ..., "data": {"object": ...}}``)."""
    document = events.parse_object(body)
    event_id = events.required_text(document, "id")
    event_type = events.event_type(document, "type")
    obj = events.child(events.child(document, "data"), "object")
    fields: dict[str, str] = {}
    events.put(fields, "object", events.text(obj, "object"))
    events.put(fields, "api_version", events.text(document, "api_version"))
    livemode = document.get("livemode")
    if isinstance(livemode, bool):
        fields["livemode"] = "true" if livemode else "false"
    # Charges and refunds name their PaymentIntent: the agent joins on it.
    events.put(fields, "payment_intent", events.text(obj, "payment_intent"))
    for counter in ("amount_received", "amount_capturable", "amount_refunded"):
        value = events.integer(obj, counter)
        if value is not None:
            fields[counter] = str(value)
    error = events.child(obj, "last_payment_error")
    events.put(fields, "failure_code", events.text(obj, "failure_code"))
    events.put(fields, "last_payment_error_code", events.text(error, "code"))
    return NormalizedEvent(
        provider=Provider.STRIPE,
        event_id=event_id,
        event_type=event_type,
        object_id=events.text(obj, "id"),
        payment_id=events.payment_id(
            events.text(events.child(obj, "metadata"), "payledger_payment_id")
        ),
        status=events.text(obj, "status"),
        amount=_money(obj, "amount", "currency", fields, "amount"),
        fee=_money(events.child(obj, "balance_transaction"), "fee", "currency", fields, "fee"),
        occurred_at=events.epoch_seconds(events.integer(document, "created")),
        fields=fields,
    )


def _money(
    obj: Mapping[str, Any] | None,
    amount_key: str,
    currency_key: str,
    fields: dict[str, str],
    name: str,
) -> Money | None:
    """A Stripe amount as ISO 4217 minor units, exactly, or ``None`` with the raw text kept.

    Stripe amounts are integers in Stripe's smallest unit, which is the ISO
    4217 minor unit except where Stripe's zero-decimal list disagrees with
    ISO (MGA: Stripe 0 digits, ISO 2), so the amount is rescaled by the
    difference. For ISK and UGX Stripe has changed its representation over
    time (two-decimal "for backwards compatibility"), so their amounts are
    not guessed. The balance transaction is an object (with its fee) only
    when the event was sent with it expanded; otherwise the fee is unknown.
    """
    amount = events.integer(obj, amount_key)
    currency = events.text(obj, currency_key)
    if amount is None or currency is None:
        return None
    code = currency.upper()
    try:
        if code in _STRIPE_AMBIGUOUS:
            raise EncodingError(f"Stripe's unit for {code} is ambiguous")
        shift = currencies.exponent(code) - _stripe_exponent(code)
        if shift >= 0:
            minor = amount * 10**shift
        elif amount % 10**-shift == 0:
            minor = amount // 10**-shift
        else:
            raise EncodingError(f"{amount} is not a whole number of {code} minor units")
        return Money(minor, code)
    except EncodingError:
        fields[f"{name}_unconverted"] = f"{amount} {currency}"
        return None


def _stripe_exponent(code: str) -> int:
    if code in _STRIPE_ZERO_DECIMAL:
        return 0
    return 3 if code in _STRIPE_THREE_DECIMAL else 2

"""PayPal webhooks: the offline (self-verification) scheme and the event normalizer.

PayPal signs, with the private key of the certificate at ``PAYPAL-CERT-URL``,
the message ``f"{transmission_id}|{transmission_time}|{webhook_id}|{crc32}"``,
where ``transmission_id`` and ``transmission_time`` are the header values as
sent, ``webhook_id`` is the id of our webhook registration (not sent: we
know it, which is what binds a delivery to our endpoint) and ``crc32`` is the
unsigned decimal CRC-32 of the raw body. The algorithm, in
``PAYPAL-AUTH-ALGO``, must be ``SHA256withRSA`` (RSASSA-PKCS1-v1_5 with
SHA-256); the signature is base64 in ``PAYPAL-TRANSMISSION-SIG``.

CRC-32 is not a cryptographic digest: a body crafted to the same CRC verifies
under a captured signature. That needs a delivery to our endpoint observed
in clear (it travels over TLS) and a transmission time still inside the
window; and the route records each transmission id once, so a captured
signature cannot be used again after the genuine delivery was recorded.
"""

from __future__ import annotations

import base64
import binascii
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.hashes import SHA256

from ingress.webhooks import events
from ingress.webhooks.errors import WebhookVerificationError
from ingress.webhooks.events import NormalizedEvent
from ingress.webhooks.paypal_certs import PayPalCertificates
from ledger import limits
from ledger.envelope import Provider

AUTH_ALGO = "SHA256withRSA"
# Field sizes from PayPal's verify-webhook-signature schema (notifications v1).
_TRANSMISSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,50}$")
_TRANSMISSION_TIME_CHARS_MAX = 100
_TRANSMISSION_SIG_CHARS_MAX = 500

HEADER_NAMES = (
    "paypal-transmission-id",
    "paypal-transmission-time",
    "paypal-transmission-sig",
    "paypal-cert-url",
    "paypal-auth-algo",
)


@dataclass(frozen=True, slots=True)
class PayPalHeaders:
    """The five signature headers of a delivery, as received (``None`` when absent)."""

    transmission_id: str | None
    transmission_time: str | None
    transmission_sig: str | None
    cert_url: str | None
    auth_algo: str | None

    @classmethod
    def from_lookup(cls, get: Callable[[str], str | None]) -> PayPalHeaders:
        values = [get(name) for name in HEADER_NAMES]
        return cls(*values)


@dataclass(frozen=True, slots=True)
class Transmission:
    """The checked headers: what the signature covers and which certificate verifies it."""

    transmission_id: str
    transmission_time: str  # exactly as sent: it is signed as text
    sent_at: datetime
    signature: bytes
    cert_url: str


def crc32(body: bytes) -> int:
    return zlib.crc32(body) & 0xFFFFFFFF


def message(transmission_id: str, transmission_time: str, webhook_id: str, body: bytes) -> bytes:
    """The bytes PayPal signs for one delivery to the webhook ``webhook_id``."""
    return f"{transmission_id}|{transmission_time}|{webhook_id}|{crc32(body)}".encode()


def parse_transmission(headers: PayPalHeaders, *, now: datetime, tolerance_s: int) -> Transmission:
    """Check every header's form and the transmission time window; nothing is fetched yet."""
    transmission_id = _required(headers.transmission_id, "PAYPAL-TRANSMISSION-ID")
    transmission_time = _required(headers.transmission_time, "PAYPAL-TRANSMISSION-TIME")
    transmission_sig = _required(headers.transmission_sig, "PAYPAL-TRANSMISSION-SIG")
    cert_url = _required(headers.cert_url, "PAYPAL-CERT-URL")
    if _required(headers.auth_algo, "PAYPAL-AUTH-ALGO") != AUTH_ALGO:
        raise WebhookVerificationError("unsupported-auth-algo")
    if not _TRANSMISSION_ID.match(transmission_id):
        raise WebhookVerificationError("malformed-header: PAYPAL-TRANSMISSION-ID")
    sent_at = _transmission_time(transmission_time)
    age_s = (now - sent_at).total_seconds()
    if age_s > tolerance_s:
        raise WebhookVerificationError("stale-timestamp")
    if -age_s > tolerance_s:
        raise WebhookVerificationError("future-timestamp")
    if len(transmission_sig) > _TRANSMISSION_SIG_CHARS_MAX:
        raise WebhookVerificationError("malformed-header: PAYPAL-TRANSMISSION-SIG")
    try:
        signature = base64.b64decode(transmission_sig, validate=True)
    except (binascii.Error, ValueError):
        raise WebhookVerificationError("malformed-header: PAYPAL-TRANSMISSION-SIG") from None
    return Transmission(
        transmission_id=transmission_id,
        transmission_time=transmission_time,
        sent_at=sent_at,
        signature=signature,
        cert_url=cert_url,
    )


def verify_signature(
    transmission: Transmission,
    body: bytes,
    *,
    webhook_ids: Sequence[str],
    certificate: x509.Certificate,
) -> None:
    """Return if ``certificate``'s key signed ``body`` for one of our ``webhook_ids``."""
    key = certificate.public_key()
    if not isinstance(key, RSAPublicKey):
        raise WebhookVerificationError("cert-key-not-rsa")
    for webhook_id in webhook_ids:
        signed = message(
            transmission.transmission_id, transmission.transmission_time, webhook_id, body
        )
        try:
            key.verify(transmission.signature, signed, PKCS1v15(), SHA256())
        except InvalidSignature:
            continue
        return
    raise WebhookVerificationError("no-matching-signature")


async def verify(
    headers: PayPalHeaders,
    body: bytes,
    *,
    webhook_ids: Sequence[str],
    certificates: PayPalCertificates,
    now: datetime,
    tolerance_s: int,
) -> None:
    """Return if the delivery is PayPal's, for one of our webhooks, sent within the window.

    Cheap checks come first: a delivery with a stale time or a foreign
    certificate URL is refused without any network request.
    """
    if not webhook_ids:
        raise WebhookVerificationError("not-configured")
    transmission = parse_transmission(headers, now=now, tolerance_s=tolerance_s)
    certificate = await certificates.leaf(transmission.cert_url, at=transmission.sent_at)
    verify_signature(transmission, body, webhook_ids=webhook_ids, certificate=certificate)


def guess_event_id(body: bytes) -> str | None:
    """The event id of an unverified body, for the audit fact only; never trusted."""
    return events.text(events.parse_object(body), "id")


def normalize(body: bytes) -> NormalizedEvent:
    """A verified PayPal event: ``{"id": "WH-...", "event_type": ..., "resource": {...}}``.

    The resource is a capture, authorization or refund (Payments v2, with
    ``amount`` and ``custom_id``), an order (Orders v2, with both inside
    ``purchase_units[0]``) or a dispute (Customer Disputes v1: ``dispute_id``,
    ``dispute_amount``, the order's ``custom_id`` as ``custom`` of its first
    disputed transaction, and ``dispute_outcome.outcome_code`` once resolved,
    in ``fields["outcome_code"]``). Amounts are decimal strings converted exactly.
    """
    document = events.parse_object(body)
    resource = events.child(document, "resource")
    unit = events.first_item(resource, "purchase_units")
    disputed = events.first_item(resource, "disputed_transactions")
    fields: dict[str, str] = {}
    events.put(fields, "resource_type", events.text(document, "resource_type"))
    events.put(fields, "event_version", events.text(document, "event_version"))
    related = events.child(events.child(resource, "supplementary_data"), "related_ids")
    events.put(fields, "order_id", events.text(related, "order_id"))
    events.put(fields, "authorization_id", events.text(related, "authorization_id"))
    final_capture = resource.get("final_capture") if resource is not None else None
    if isinstance(final_capture, bool):
        fields["final_capture"] = "true" if final_capture else "false"
    events.put(
        fields,
        "outcome_code",
        events.text(events.child(resource, "dispute_outcome"), "outcome_code"),
    )
    events.put(fields, "seller_transaction_id", events.text(disputed, "seller_transaction_id"))
    amount = (
        events.child(resource, "amount")
        or events.child(unit, "amount")
        or events.child(resource, "dispute_amount")
    )
    breakdown = events.child(resource, "seller_receivable_breakdown") or events.child(
        resource, "seller_payable_breakdown"
    )
    custom_id = (
        events.text(resource, "custom_id")
        or events.text(unit, "custom_id")
        or events.text(disputed, "custom")
    )
    return NormalizedEvent(
        provider=Provider.PAYPAL,
        event_id=events.required_text(document, "id"),
        event_type=events.event_type(document, "event_type"),
        object_id=events.text(resource, "id") or events.text(resource, "dispute_id"),
        payment_id=events.payment_id(custom_id),
        status=events.text(resource, "status"),
        amount=events.decimal_money(
            amount, value_key="value", currency_key="currency_code", fields=fields, name="amount"
        ),
        fee=events.decimal_money(
            events.child(breakdown, "paypal_fee"),
            value_key="value",
            currency_key="currency_code",
            fields=fields,
            name="fee",
        ),
        occurred_at=events.timestamp(events.text(document, "create_time")),
        fields=fields,
    )


def _required(value: str | None, name: str) -> str:
    if value is None:
        raise WebhookVerificationError(f"missing-header: {name}")
    if len(value) > limits.WEBHOOK_HEADER_CHARS_MAX:
        raise WebhookVerificationError(f"malformed-header: {name}")
    return value


def _transmission_time(value: str) -> datetime:
    if len(value) > _TRANSMISSION_TIME_CHARS_MAX:
        raise WebhookVerificationError("malformed-header: PAYPAL-TRANSMISSION-TIME")
    sent_at = events.timestamp(value)
    if sent_at is None:
        raise WebhookVerificationError("malformed-header: PAYPAL-TRANSMISSION-TIME")
    return sent_at

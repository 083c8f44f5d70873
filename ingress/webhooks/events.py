"""What every provider's webhook becomes: a ``NormalizedEvent``, then a ``ProviderEvent``.

The helpers here read a verified JSON body defensively. The body is authentic
(its signature verified) but its shape is the provider's, and a shape we did
not expect must become a clear ``MalformedEvent``, never a ``KeyError`` or a
500. Amounts become ``Money`` in integer minor units; an amount we cannot
convert exactly is not guessed: the event is kept without it and the raw text
goes into ``fields`` so nothing a provider told us is lost.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ingress.webhooks.errors import MalformedEvent
from ledger import limits
from ledger.currencies import to_minor_units
from ledger.envelope import Money, Provider, ProviderEvent
from ledger.errors import LedgerError

# Provider event types end up in our event type (``provider.stripe.<type>``),
# which is a CloudEvents ``ce_type``: keep them to a safe alphabet.
_EVENT_TYPE = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
# Our own payment ids, as the merchant API issues them; anything else in a
# provider's metadata was not written by us and is not trusted as an aggregate id.
_PAYMENT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
# Errors an exact decimal-to-minor-units conversion may raise for input it refuses.
_CONVERSION_ERRORS = (ArithmeticError, LookupError, ValueError, TypeError, LedgerError)


@dataclass(frozen=True, slots=True)
class NormalizedEvent:
    """The provider-independent reading of one verified webhook."""

    provider: Provider
    event_id: str
    event_type: str
    object_id: str | None = None
    payment_id: str | None = None
    status: str | None = None
    amount: Money | None = None
    fee: Money | None = None
    occurred_at: datetime | None = None
    fields: Mapping[str, str] = field(default_factory=dict)

    @property
    def envelope_type(self) -> str:
        return f"provider.{self.provider.value.lower()}.{self.event_type}"

    def aggregate_id(self) -> str:
        """Our payment id when the provider object carries it, else a stable id for the object.

        Deliveries about one provider object (a PaymentIntent, a capture, a
        charge) share one aggregate, so they share a partition and a sequence.
        """
        if self.payment_id is not None:
            return self.payment_id
        prefix = self.provider.value.lower()
        subject = self.object_id if self.object_id is not None else f"event:{self.event_id}"
        candidate = f"{prefix}:{subject}"
        if len(candidate) <= limits.AGGREGATE_ID_CHARS_MAX:
            return candidate
        # Too long to be a key: a digest keeps it stable and distinct, where
        # truncating could merge two objects that share a long prefix.
        digest = hashlib.sha256(subject.encode()).hexdigest()
        return f"{prefix}:sha256:{digest}"[: limits.AGGREGATE_ID_CHARS_MAX]

    def provider_event(self, *, received_at: datetime, body_sha256: bytes) -> ProviderEvent:
        return ProviderEvent(
            provider=self.provider,
            provider_event_id=self.event_id,
            provider_event_type=self.event_type,
            received_at=received_at,
            body_sha256=body_sha256,
            provider_object_id=self.object_id,
            status=self.status,
            amount=self.amount,
            fee=self.fee,
            fields=dict(self.fields),
        )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or ``MalformedEvent``."""
    try:
        document = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        # ValueError covers bad UTF-8 and bad JSON; RecursionError a body
        # nested deeper than the parser's stack.
        raise MalformedEvent("invalid-json") from None
    if not isinstance(document, dict):
        raise MalformedEvent("invalid-json: not an object")
    return document


def child(parent: Mapping[str, Any] | None, key: str) -> Mapping[str, Any] | None:
    """``parent[key]`` when it is a JSON object, else ``None``."""
    if parent is None:
        return None
    value = parent.get(key)
    return value if isinstance(value, dict) else None


def first_item(parent: Mapping[str, Any] | None, key: str) -> Mapping[str, Any] | None:
    """The first element of the array ``parent[key]`` when it is an object, else ``None``."""
    if parent is None:
        return None
    value = parent.get(key)
    if isinstance(value, list) and value and isinstance(value[0], dict):
        first: Mapping[str, Any] = value[0]
        return first
    return None


def text(parent: Mapping[str, Any] | None, key: str) -> str | None:
    """``parent[key]`` when it is a non-empty string within the field limit.

    A longer string is refused rather than cut: a cut id would silently name
    a different object.
    """
    if parent is None:
        return None
    value = parent.get(key)
    if not isinstance(value, str) or not value:
        return None
    if len(value) > limits.WEBHOOK_FIELD_CHARS_MAX:
        raise MalformedEvent(f"field-too-long: {key}")
    # A NUL cannot be stored in Postgres text and a lone surrogate cannot be
    # encoded: an authentic delivery carrying one is malformed (400, audited),
    # not a reason to answer 503 and have the provider retry it forever.
    if "\x00" in value:
        raise MalformedEvent(f"field-has-nul: {key}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedEvent(f"field-not-utf8: {key}") from None
    return value


def required_text(parent: Mapping[str, Any] | None, key: str) -> str:
    value = text(parent, key)
    if value is None:
        raise MalformedEvent(f"missing-field: {key}")
    return value


def event_type(parent: Mapping[str, Any] | None, key: str) -> str:
    value = required_text(parent, key)
    if not _EVENT_TYPE.match(value):
        raise MalformedEvent(f"bad-event-type: {key}")
    return value


def payment_id(value: str | None) -> str | None:
    """Our payment id, when ``value`` looks like one."""
    if value is not None and _PAYMENT_ID.match(value):
        return value
    return None


def integer(parent: Mapping[str, Any] | None, key: str) -> int | None:
    """``parent[key]`` when it is a JSON integer (``true`` is not one)."""
    if parent is None:
        return None
    value = parent.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def timestamp(value: str | None) -> datetime | None:
    """An RFC 3339 time, as aware UTC, or ``None`` when absent or unreadable."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return parsed.astimezone(UTC)


def epoch_seconds(value: int | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def decimal_money(
    amount: Mapping[str, Any] | None,
    *,
    value_key: str,
    currency_key: str,
    fields: dict[str, str],
    name: str,
) -> Money | None:
    """``{"value": "10.50", "currency_code": "EUR"}`` as exact minor units.

    When the conversion refuses the input (unknown currency, more decimals
    than the currency has, not a decimal), the amount is left out and its raw
    text kept in ``fields[f"{name}_unconverted"]``: the event still counts.
    """
    value = text(amount, value_key)
    currency = text(amount, currency_key)
    if value is None or currency is None:
        return None
    try:
        return Money(to_minor_units(value, currency), currency)
    except _CONVERSION_ERRORS:
        fields[f"{name}_unconverted"] = f"{value} {currency}"
        return None


def put(fields: dict[str, str], key: str, value: str | None) -> None:
    if value is not None:
        fields[key] = value

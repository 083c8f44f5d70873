"""The event envelope and its payloads, as frozen values.

Every payledger event is one ``Envelope``. Its ``payload`` is one of the
payload types below; each maps one-to-one onto the Avro record of the same
name in ``schemas/``. Money is an integer in minor units plus an ISO 4217
code, never a float. Timestamps are timezone-aware UTC datetimes.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

from uuid_utils import uuid7

from ledger import limits
from ledger.errors import EncodingError
from ledger.payments.status import PaymentStatus

_DERIVED_NAMESPACE = uuid.UUID("0b6f3c2a-52d4-4f0e-8a61-3f1d9c7e2b45")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_LONG_MAX = 2**63 - 1

# Limits of the payment-event payloads. They belong with the others in
# ``ledger.limits``; they live here until that file is free to edit.
ACCOUNT_CHARS_MAX: Final = 160  # one ledger account name
POSTINGS_PER_EVENT_MAX: Final = 64  # legs in one payment event; the rules emit at most 8
# The start of the error for an event whose debits and credits differ in a currency.
UNBALANCED_POSTINGS: Final = "postings do not balance"
NOTE_CHARS_MAX: Final = 500  # a payment event's note, a dead letter's detail
# A dead letter carries a copy of the original record up to this size (the
# digest and the topic/partition/offset always): the copy plus the rest of the
# dead letter must fit in one envelope (ENVELOPE_BYTES_MAX).
DEAD_LETTER_ORIGINAL_BYTES_MAX: Final = 786_432


class Provider(StrEnum):
    STRIPE = "STRIPE"
    PAYPAL = "PAYPAL"
    COINBASE = "COINBASE"


class CommandKind(StrEnum):
    CREATE = "CREATE"
    CAPTURE = "CAPTURE"
    CANCEL = "CANCEL"
    REFUND = "REFUND"


class CaptureMethod(StrEnum):
    AUTOMATIC = "AUTOMATIC"
    MANUAL = "MANUAL"


@dataclass(frozen=True, slots=True)
class Money:
    amount_minor: int
    currency: str

    def __post_init__(self) -> None:
        if not isinstance(self.amount_minor, int) or isinstance(self.amount_minor, bool):
            raise EncodingError("amount_minor must be an integer number of minor units")
        if not -_LONG_MAX <= self.amount_minor <= _LONG_MAX:
            raise EncodingError("amount_minor is outside the 64-bit range")
        if not _CURRENCY.match(self.currency):
            raise EncodingError(f"currency must be an ISO 4217 code, got {self.currency!r}")

    def to_avro(self) -> dict[str, Any]:
        return {"amount_minor": self.amount_minor, "currency": self.currency}

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> Money:
        return cls(amount_minor=record["amount_minor"], currency=record["currency"])


@dataclass(frozen=True, slots=True)
class SealedData:
    customer_ref: str
    data_key_id: str
    algorithm: str
    nonce: bytes
    ciphertext: bytes

    def to_avro(self) -> dict[str, Any]:
        return {
            "customer_ref": self.customer_ref,
            "data_key_id": self.data_key_id,
            "algorithm": self.algorithm,
            "nonce": self.nonce,
            "ciphertext": self.ciphertext,
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> SealedData:
        return cls(**record)


def _check_metadata(metadata: Mapping[str, str]) -> None:
    if len(metadata) > limits.METADATA_ENTRIES_MAX:
        raise EncodingError(f"metadata has more than {limits.METADATA_ENTRIES_MAX} entries")
    for key, value in metadata.items():
        if len(key) > limits.METADATA_KEY_CHARS_MAX:
            raise EncodingError(f"metadata key longer than {limits.METADATA_KEY_CHARS_MAX} chars")
        if len(value) > limits.METADATA_VALUE_CHARS_MAX:
            raise EncodingError(
                f"metadata value longer than {limits.METADATA_VALUE_CHARS_MAX} chars"
            )


def _optional(value: Any, convert: Any) -> Any:
    return None if value is None else convert(value)


@dataclass(frozen=True, slots=True)
class PaymentCommand:
    AVRO_NAME = "io.payledger.PaymentCommand"

    command: CommandKind
    merchant_id: str
    idempotency_key: str
    provider: Provider | None = None
    amount: Money | None = None
    capture_method: CaptureMethod | None = None
    description: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    customer: SealedData | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        _check_metadata(self.metadata)
        if self.description is not None and len(self.description) > limits.DESCRIPTION_CHARS_MAX:
            raise EncodingError(f"description longer than {limits.DESCRIPTION_CHARS_MAX} chars")

    def to_avro(self) -> dict[str, Any]:
        return {
            "command": self.command.value,
            "merchant_id": self.merchant_id,
            "provider": _optional(self.provider, lambda p: p.value),
            "amount": _optional(self.amount, Money.to_avro),
            "capture_method": _optional(self.capture_method, lambda c: c.value),
            "description": self.description,
            "metadata": dict(self.metadata),
            "customer": _optional(self.customer, SealedData.to_avro),
            "idempotency_key": self.idempotency_key,
            "reason": self.reason,
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> PaymentCommand:
        return cls(
            command=CommandKind(record["command"]),
            merchant_id=record["merchant_id"],
            provider=_optional(record["provider"], Provider),
            amount=_optional(record["amount"], Money.from_avro),
            capture_method=_optional(record["capture_method"], CaptureMethod),
            description=record["description"],
            metadata=record["metadata"],
            customer=_optional(record["customer"], SealedData.from_avro),
            idempotency_key=record["idempotency_key"],
            reason=record["reason"],
        )


@dataclass(frozen=True, slots=True)
class ProviderEvent:
    AVRO_NAME = "io.payledger.ProviderEvent"

    provider: Provider
    provider_event_id: str
    provider_event_type: str
    received_at: datetime
    body_sha256: bytes
    provider_object_id: str | None = None
    status: str | None = None
    amount: Money | None = None
    fee: Money | None = None
    fields: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.body_sha256) != 32:
            raise EncodingError("body_sha256 must be 32 bytes")

    def to_avro(self) -> dict[str, Any]:
        return {
            "provider": self.provider.value,
            "provider_event_id": self.provider_event_id,
            "provider_event_type": self.provider_event_type,
            "provider_object_id": self.provider_object_id,
            "received_at": self.received_at,
            "body_sha256": self.body_sha256,
            "status": self.status,
            "amount": _optional(self.amount, Money.to_avro),
            "fee": _optional(self.fee, Money.to_avro),
            "fields": dict(self.fields),
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> ProviderEvent:
        return cls(
            provider=Provider(record["provider"]),
            provider_event_id=record["provider_event_id"],
            provider_event_type=record["provider_event_type"],
            provider_object_id=record["provider_object_id"],
            received_at=record["received_at"],
            body_sha256=record["body_sha256"],
            status=record["status"],
            amount=_optional(record["amount"], Money.from_avro),
            fee=_optional(record["fee"], Money.from_avro),
            fields=record["fields"],
        )


@dataclass(frozen=True, slots=True)
class AuditFact:
    AVRO_NAME = "io.payledger.AuditFact"

    fact_type: str
    actor: str
    subject: str
    reason: str | None = None
    digest: bytes | None = None
    details: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.digest is not None and len(self.digest) != 32:
            raise EncodingError("digest must be a 32-byte SHA-256")

    def to_avro(self) -> dict[str, Any]:
        return {
            "fact_type": self.fact_type,
            "actor": self.actor,
            "subject": self.subject,
            "reason": self.reason,
            "digest": self.digest,
            "details": dict(self.details),
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> AuditFact:
        return cls(**record)


@dataclass(frozen=True, slots=True)
class KeyEndorsement:
    AVRO_NAME = "io.payledger.KeyEndorsement"

    key_id: str
    algorithm: str
    public_key: bytes
    purpose: str
    not_before: datetime
    not_after: datetime
    root_key_id: str
    root_ed25519_public_key: bytes
    root_mldsa65_public_key: bytes
    root_ed25519_signature: bytes = b""
    root_mldsa65_signature: bytes = b""

    def to_avro(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "algorithm": self.algorithm,
            "public_key": self.public_key,
            "purpose": self.purpose,
            "not_before": self.not_before,
            "not_after": self.not_after,
            "root_key_id": self.root_key_id,
            "root_ed25519_public_key": self.root_ed25519_public_key,
            "root_mldsa65_public_key": self.root_mldsa65_public_key,
            "root_ed25519_signature": self.root_ed25519_signature,
            "root_mldsa65_signature": self.root_mldsa65_signature,
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> KeyEndorsement:
        return cls(**record)


class PaymentEventKind(StrEnum):
    """What a payment event records (``io.payledger.PaymentEventKind``).

    The first four record an accepted merchant command; they move no money
    (the provider's answer does). The others record a provider event.
    """

    CREATED = "CREATED"
    CAPTURE_REQUESTED = "CAPTURE_REQUESTED"
    CANCEL_REQUESTED = "CANCEL_REQUESTED"
    REFUND_REQUESTED = "REFUND_REQUESTED"
    STATUS_CHANGED = "STATUS_CHANGED"
    AUTHORIZED = "AUTHORIZED"
    CAPTURED = "CAPTURED"
    CANCELED = "CANCELED"
    REFUNDED = "REFUNDED"
    DISPUTE_OPENED = "DISPUTE_OPENED"
    DISPUTE_WON = "DISPUTE_WON"
    DISPUTE_LOST = "DISPUTE_LOST"
    FEE_CHARGED = "FEE_CHARGED"
    FUNDS_UNRESOLVED = "FUNDS_UNRESOLVED"
    FUNDS_RESOLVED = "FUNDS_RESOLVED"
    NOTED = "NOTED"


class PostingSide(StrEnum):
    DEBIT = "DEBIT"
    CREDIT = "CREDIT"


_ACCOUNT = re.compile(r"^[a-z][a-z0-9_]*(:[A-Za-z0-9_.-]+)+$")


@dataclass(frozen=True, slots=True)
class Posting:
    """One leg of a double-entry transaction: a positive amount on one side of one account."""

    AVRO_NAME = "io.payledger.Posting"

    account: str
    side: PostingSide
    amount_minor: int
    currency: str

    def __post_init__(self) -> None:
        if len(self.account) > ACCOUNT_CHARS_MAX or not _ACCOUNT.match(self.account):
            raise EncodingError(f"not an account name: {self.account[:80]!r}")
        if not isinstance(self.amount_minor, int) or isinstance(self.amount_minor, bool):
            raise EncodingError("a posting amount must be an integer number of minor units")
        if not 0 < self.amount_minor <= _LONG_MAX:
            raise EncodingError("a posting amount must be positive and within 64 bits")
        if not _CURRENCY.match(self.currency):
            raise EncodingError(f"currency must be an ISO 4217 code, got {self.currency!r}")

    def to_avro(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "side": self.side.value,
            "amount_minor": self.amount_minor,
            "currency": self.currency,
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> Posting:
        return cls(
            account=record["account"],
            side=PostingSide(record["side"]),
            amount_minor=record["amount_minor"],
            currency=record["currency"],
        )


def unbalanced_currencies(postings: Iterable[Posting]) -> list[str]:
    """The currencies whose debits and credits differ (empty when balanced)."""
    net: dict[str, int] = {}
    for posting in postings:
        signed = (
            posting.amount_minor if posting.side is PostingSide.DEBIT else -posting.amount_minor
        )
        net[posting.currency] = net.get(posting.currency, 0) + signed
    return sorted(currency for currency, total in net.items() if total != 0)


_TOTALS = (
    "authorized_minor",
    "captured_minor",
    "refunded_minor",
    "disputed_minor",
    "charged_back_minor",
    "suspense_minor",
)


@dataclass(frozen=True, slots=True)
class PaymentEvent:
    """One entry of a payment's timeline: a transition with its postings and running totals.

    ``amount`` is what this event moved (or, for a command, requested); the
    ``*_minor`` totals are the payment's, after this event, in the currency
    of ``payment_amount``. ``fees`` are the net provider fees so far, one
    entry per currency. A ``stale`` event is an out-of-order delivery: it is
    recorded and changes neither the status nor any amount.
    """

    AVRO_NAME = "io.payledger.PaymentEvent"

    payment_id: str
    merchant_id: str
    provider: Provider
    kind: PaymentEventKind
    status_after: PaymentStatus
    payment_amount: Money
    status_before: PaymentStatus | None = None
    stale: bool = False
    amount: Money | None = None
    authorized_minor: int = 0
    captured_minor: int = 0
    refunded_minor: int = 0
    disputed_minor: int = 0
    charged_back_minor: int = 0
    suspense_minor: int = 0
    fees: tuple[Money, ...] = ()
    command_event_id: str | None = None
    provider_event_id: str | None = None
    provider_event_type: str | None = None
    provider_object_id: str | None = None
    provider_status: str | None = None
    note: str | None = None
    postings: tuple[Posting, ...] = ()

    def __post_init__(self) -> None:
        for name in _TOTALS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise EncodingError(f"{name} must be a non-negative integer")
        if len(self.postings) > POSTINGS_PER_EVENT_MAX:
            raise EncodingError(f"more than {POSTINGS_PER_EVENT_MAX} postings")
        unbalanced = unbalanced_currencies(self.postings)
        if unbalanced:
            raise EncodingError(f"{UNBALANCED_POSTINGS} in {', '.join(unbalanced)}")
        if self.stale and (self.postings or self.status_before != self.status_after):
            raise EncodingError("a stale event changes nothing")
        if self.note is not None and len(self.note) > NOTE_CHARS_MAX:
            raise EncodingError(f"note longer than {NOTE_CHARS_MAX} chars")

    def to_avro(self) -> dict[str, Any]:
        return {
            "payment_id": self.payment_id,
            "merchant_id": self.merchant_id,
            "provider": self.provider.value,
            "kind": self.kind.value,
            "status_before": _optional(self.status_before, lambda s: s.value),
            "status_after": self.status_after.value,
            "stale": self.stale,
            "amount": _optional(self.amount, Money.to_avro),
            "payment_amount": self.payment_amount.to_avro(),
            "authorized_minor": self.authorized_minor,
            "captured_minor": self.captured_minor,
            "refunded_minor": self.refunded_minor,
            "disputed_minor": self.disputed_minor,
            "charged_back_minor": self.charged_back_minor,
            "suspense_minor": self.suspense_minor,
            "fees": [fee.to_avro() for fee in self.fees],
            "command_event_id": self.command_event_id,
            "provider_event_id": self.provider_event_id,
            "provider_event_type": self.provider_event_type,
            "provider_object_id": self.provider_object_id,
            "provider_status": self.provider_status,
            "note": self.note,
            "postings": [posting.to_avro() for posting in self.postings],
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> PaymentEvent:
        return cls(
            payment_id=record["payment_id"],
            merchant_id=record["merchant_id"],
            provider=Provider(record["provider"]),
            kind=PaymentEventKind(record["kind"]),
            status_before=_optional(record["status_before"], PaymentStatus),
            status_after=PaymentStatus(record["status_after"]),
            stale=record["stale"],
            amount=_optional(record["amount"], Money.from_avro),
            payment_amount=Money.from_avro(record["payment_amount"]),
            authorized_minor=record["authorized_minor"],
            captured_minor=record["captured_minor"],
            refunded_minor=record["refunded_minor"],
            disputed_minor=record["disputed_minor"],
            charged_back_minor=record["charged_back_minor"],
            suspense_minor=record["suspense_minor"],
            fees=tuple(Money.from_avro(fee) for fee in record["fees"]),
            command_event_id=record["command_event_id"],
            provider_event_id=record["provider_event_id"],
            provider_event_type=record["provider_event_type"],
            provider_object_id=record["provider_object_id"],
            provider_status=record["provider_status"],
            note=record["note"],
            postings=tuple(Posting.from_avro(posting) for posting in record["postings"]),
        )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that could not be processed, with where it came from and why.

    The original stays on its topic forever, so ``original_topic``,
    ``original_partition`` and ``original_offset`` find it again and
    ``original_sha256`` proves it is the same bytes; ``original_bytes`` is a
    copy when it is small enough to travel in the dead letter too.
    """

    AVRO_NAME = "io.payledger.DeadLetter"

    original_topic: str
    original_partition: int
    original_offset: int
    original_sha256: bytes
    error_class: str
    reason: str
    original_bytes: bytes | None = None
    original_event_id: str | None = None
    original_event_type: str | None = None
    detail: str | None = None

    def __post_init__(self) -> None:
        if len(self.original_sha256) != 32:
            raise EncodingError("original_sha256 must be 32 bytes")
        if self.original_partition < 0 or self.original_offset < 0:
            raise EncodingError("partition and offset are never negative")
        if (
            self.original_bytes is not None
            and len(self.original_bytes) > DEAD_LETTER_ORIGINAL_BYTES_MAX
        ):
            raise EncodingError(
                f"original_bytes over {DEAD_LETTER_ORIGINAL_BYTES_MAX} bytes: keep the digest"
            )
        if self.detail is not None and len(self.detail) > NOTE_CHARS_MAX:
            raise EncodingError(f"detail longer than {NOTE_CHARS_MAX} chars")

    def to_avro(self) -> dict[str, Any]:
        return {
            "original_topic": self.original_topic,
            "original_partition": self.original_partition,
            "original_offset": self.original_offset,
            "original_sha256": self.original_sha256,
            "original_bytes": self.original_bytes,
            "original_event_id": self.original_event_id,
            "original_event_type": self.original_event_type,
            "error_class": self.error_class,
            "reason": self.reason,
            "detail": self.detail,
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> DeadLetter:
        return cls(**record)


Payload = PaymentCommand | ProviderEvent | AuditFact | KeyEndorsement | PaymentEvent | DeadLetter
PAYLOAD_TYPES: dict[
    str,
    type[PaymentCommand | ProviderEvent | AuditFact | KeyEndorsement | PaymentEvent | DeadLetter],
] = {
    t.AVRO_NAME: t
    for t in (PaymentCommand, ProviderEvent, AuditFact, KeyEndorsement, PaymentEvent, DeadLetter)
}


@dataclass(frozen=True, slots=True)
class Envelope:
    """One signed event. Build unsigned ones with ``new_envelope``; the codec signs."""

    event_id: str
    event_type: str
    aggregate_id: str
    sequence: int
    occurred_at: datetime
    recorded_at: datetime
    producer: str
    correlation_id: str
    payload: Payload
    causation_id: str | None = None
    schema_version: int = 1
    signing_key_id: str = ""
    signature: bytes = b""

    def __post_init__(self) -> None:
        if not 0 < len(self.aggregate_id) <= limits.AGGREGATE_ID_CHARS_MAX:
            raise EncodingError("aggregate_id must be 1 to 64 characters")
        if not 0 < len(self.event_type) <= limits.EVENT_TYPE_CHARS_MAX:
            raise EncodingError("event_type must be 1 to 128 characters")
        if self.sequence < 1:
            raise EncodingError("sequence numbers start at 1")
        if self.occurred_at.tzinfo is None or self.recorded_at.tzinfo is None:
            raise EncodingError("timestamps must be timezone-aware")

    def to_avro(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "event_type": self.event_type,
            "schema_version": self.schema_version,
            "aggregate_id": self.aggregate_id,
            "sequence": self.sequence,
            "occurred_at": self.occurred_at,
            "recorded_at": self.recorded_at,
            "producer": self.producer,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
            # The (name, value) tuple names the union branch explicitly, so
            # fastavro never has to guess which payload record this is.
            "payload": (self.payload.AVRO_NAME, self.payload.to_avro()),
            "signing_key_id": self.signing_key_id,
            "signature": self.signature,
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> Envelope:
        payload_name, payload_record = record["payload"]
        payload_type = PAYLOAD_TYPES.get(payload_name)
        if payload_type is None:
            raise EncodingError(f"unknown payload type {payload_name}")
        return cls(
            event_id=str(record["event_id"]),
            event_type=record["event_type"],
            schema_version=record["schema_version"],
            aggregate_id=record["aggregate_id"],
            sequence=record["sequence"],
            occurred_at=record["occurred_at"],
            recorded_at=record["recorded_at"],
            producer=record["producer"],
            correlation_id=record["correlation_id"],
            causation_id=record["causation_id"],
            payload=payload_type.from_avro(payload_record),
            signing_key_id=record["signing_key_id"],
            signature=record["signature"],
        )

    def signed_by(self, key_id: str, signature: bytes) -> Envelope:
        """A copy with the signature fields set.

        Every other field was validated when this envelope was built, so the
        copy skips ``__init__``; ``dataclasses.replace`` would validate again
        and cost as much as the Ed25519 signature itself on the hot path.
        """
        signed = object.__new__(Envelope)
        for name in _ENVELOPE_FIELDS:
            object.__setattr__(signed, name, getattr(self, name))
        object.__setattr__(signed, "signing_key_id", key_id)
        object.__setattr__(signed, "signature", signature)
        return signed


_ENVELOPE_FIELDS = tuple(
    name for name in Envelope.__dataclass_fields__ if name not in ("signing_key_id", "signature")
)


def new_event_id() -> str:
    """A UUIDv7: time-ordered, so ids sort roughly by creation."""
    return str(uuid7())


def derived_event_id(*parts: str) -> str:
    """A stable UUID (version 5) for an event identified by ``parts``."""
    return str(uuid.uuid5(_DERIVED_NAMESPACE, "\x00".join(parts)))


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_envelope(
    *,
    event_type: str,
    aggregate_id: str,
    sequence: int,
    producer: str,
    payload: Payload,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    occurred_at: datetime | None = None,
    now: datetime | None = None,
    event_id: str | None = None,
) -> Envelope:
    """An unsigned envelope, with a fresh UUIDv7 unless ``event_id`` is given.

    Pass ``event_id`` when it must be reproducible, e.g. derived from a
    request's idempotency key so a retried request yields the same event.
    """
    recorded_at = now or utc_now()
    event_id = event_id or new_event_id()
    return Envelope(
        event_id=event_id,
        event_type=event_type,
        aggregate_id=aggregate_id,
        sequence=sequence,
        occurred_at=occurred_at or recorded_at,
        recorded_at=recorded_at,
        producer=producer,
        correlation_id=correlation_id or event_id,
        causation_id=causation_id,
        payload=payload,
    )

"""The rows of the read models, built from one verified payment event. Pure: no I/O.

Every value comes from the signed record and where it was read, never from
a clock or a sequence of the database, so projecting the same log twice
(the live schema and a rebuild beside it) gives identical rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from ledger.envelope import Envelope, PaymentEvent

# Only verified records become rows (see the payment_events table).
SIGNATURE_VERIFIED: Final = "VERIFIED"


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """Where a record was read."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Projected:
    """A record that verified and carries a payment event: what the rows are built from."""

    position: Position
    record_sha256: bytes
    value: bytes = field(repr=False)  # the record as read, for a dead letter's copy
    envelope: Envelope
    event: PaymentEvent

    @property
    def event_id(self) -> str:
        return self.envelope.event_id

    @property
    def payment_id(self) -> str:
        return self.event.payment_id

    @property
    def sequence(self) -> int:
        return self.envelope.sequence


@dataclass(frozen=True, slots=True)
class EventRow:
    """One row of ``payment_events``; fields in the table's column order."""

    event_id: str
    payment_id: str
    merchant_id: str
    provider: str
    currency: str
    payment_amount_minor: int
    sequence: int
    kind: str
    event_type: str
    schema_version: int
    status_before: str | None
    status_after: str
    stale: bool
    amount_minor: int | None
    amount_currency: str | None
    authorized_minor: int
    captured_minor: int
    refunded_minor: int
    disputed_minor: int
    charged_back_minor: int
    suspense_minor: int
    postings_count: int
    command_event_id: str | None
    provider_event_id: str | None
    provider_event_type: str | None
    provider_object_id: str | None
    provider_status: str | None
    note: str | None
    occurred_at: datetime
    recorded_at: datetime
    producer: str
    correlation_id: str
    causation_id: str | None
    signing_key_id: str
    signature_status: str
    source_topic: str
    source_partition: int
    source_offset: int


@dataclass(frozen=True, slots=True)
class EntryRow:
    """One leg of an event's postings (``ledger_entries``)."""

    event_id: str
    leg: int
    account: str
    side: str
    amount_minor: int
    currency: str


@dataclass(frozen=True, slots=True)
class PaymentRow:
    """A payment as of one of its events (``payments``)."""

    payment_id: str
    merchant_id: str
    provider: str
    provider_object_id: str | None
    status: str
    currency: str
    amount_minor: int
    authorized_minor: int
    captured_minor: int
    refunded_minor: int
    disputed_minor: int
    charged_back_minor: int
    suspense_minor: int
    last_sequence: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class FeeRow:
    """A payment's net fees in one currency (``payment_fees``)."""

    payment_id: str
    currency: str
    amount_minor: int


@dataclass(frozen=True, slots=True)
class ProcessedRow:
    """An applied event and the digest of the record it came from (``processed_events``)."""

    event_id: str
    record_sha256: bytes
    source_topic: str
    source_partition: int
    source_offset: int


def event_row(projected: Projected) -> EventRow:
    envelope, event, position = projected.envelope, projected.event, projected.position
    return EventRow(
        event_id=envelope.event_id,
        payment_id=event.payment_id,
        merchant_id=event.merchant_id,
        provider=event.provider.value,
        currency=event.payment_amount.currency,
        payment_amount_minor=event.payment_amount.amount_minor,
        sequence=envelope.sequence,
        kind=event.kind.value,
        event_type=envelope.event_type,
        schema_version=envelope.schema_version,
        status_before=None if event.status_before is None else event.status_before.value,
        status_after=event.status_after.value,
        stale=event.stale,
        amount_minor=None if event.amount is None else event.amount.amount_minor,
        amount_currency=None if event.amount is None else event.amount.currency,
        authorized_minor=event.authorized_minor,
        captured_minor=event.captured_minor,
        refunded_minor=event.refunded_minor,
        disputed_minor=event.disputed_minor,
        charged_back_minor=event.charged_back_minor,
        suspense_minor=event.suspense_minor,
        postings_count=len(event.postings),
        command_event_id=event.command_event_id,
        provider_event_id=event.provider_event_id,
        provider_event_type=event.provider_event_type,
        provider_object_id=event.provider_object_id,
        provider_status=event.provider_status,
        note=event.note,
        occurred_at=envelope.occurred_at,
        recorded_at=envelope.recorded_at,
        producer=envelope.producer,
        correlation_id=envelope.correlation_id,
        causation_id=envelope.causation_id,
        signing_key_id=envelope.signing_key_id,
        signature_status=SIGNATURE_VERIFIED,
        source_topic=position.topic,
        source_partition=position.partition,
        source_offset=position.offset,
    )


def entry_rows(projected: Projected) -> tuple[EntryRow, ...]:
    """The event's postings, one row per leg, numbered in the order the event lists them."""
    return tuple(
        EntryRow(
            event_id=projected.event_id,
            leg=leg,
            account=posting.account,
            side=posting.side.value,
            amount_minor=posting.amount_minor,
            currency=posting.currency,
        )
        for leg, posting in enumerate(projected.event.postings)
    )


def payment_row(
    newest: Projected, *, created_at: datetime, provider_object_id: str | None
) -> PaymentRow:
    """The payment as of its newest event: its status and totals are that event's."""
    event = newest.event
    return PaymentRow(
        payment_id=event.payment_id,
        merchant_id=event.merchant_id,
        provider=event.provider.value,
        provider_object_id=provider_object_id,
        status=event.status_after.value,
        currency=event.payment_amount.currency,
        amount_minor=event.payment_amount.amount_minor,
        authorized_minor=event.authorized_minor,
        captured_minor=event.captured_minor,
        refunded_minor=event.refunded_minor,
        disputed_minor=event.disputed_minor,
        charged_back_minor=event.charged_back_minor,
        suspense_minor=event.suspense_minor,
        last_sequence=newest.sequence,
        created_at=created_at,
        updated_at=newest.envelope.recorded_at,
    )


def fee_rows(newest: Projected) -> tuple[FeeRow, ...]:
    """The payment's net fees as of its newest event (the event carries them all)."""
    return tuple(
        FeeRow(newest.payment_id, fee.currency, fee.amount_minor)
        for fee in newest.event.fees
        if fee.amount_minor != 0
    )


def processed_row(projected: Projected) -> ProcessedRow:
    position = projected.position
    return ProcessedRow(
        event_id=projected.event_id,
        record_sha256=projected.record_sha256,
        source_topic=position.topic,
        source_partition=position.partition,
        source_offset=position.offset,
    )

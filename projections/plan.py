"""What one batch of records does to the read models: classify, then build rows. Pure.

Each record read from payment-events is one ``Candidate``: a ``Projected``
event (it verified and carries a ``PaymentEvent``) or an ``Unusable`` record.
``plan_batch`` classifies the projected ones against what the database
already holds (``Known``, read in the same transaction) and against the
records before them in the batch:

* **apply**: a new event id on a free (payment, sequence): its rows are built;
* **duplicate**: an event id already applied *from the same bytes* (a
  redelivery, a replay from an older position, the same record published
  twice): nothing changes;
* **conflict**: the same event id with other bytes (``EVENT_ID_REUSED``), or
  the same (payment, sequence) under another event id (``SEQUENCE_TAKEN``).
  The first one applied stands; the conflict is reported loudly (an audit
  fact), never skipped in silence.

Positions always advance past every record of the batch, whatever became of
it: what was not applied is reported, so reading it again would only report
it again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from ledger.envelope import Envelope
from projections.rows import (
    EntryRow,
    EventRow,
    FeeRow,
    PaymentRow,
    Position,
    ProcessedRow,
    Projected,
    entry_rows,
    event_row,
    fee_rows,
    payment_row,
    processed_row,
)


class ConflictReason(StrEnum):
    EVENT_ID_REUSED = "event-id-reused"  # the event id was applied from other bytes
    SEQUENCE_TAKEN = "sequence-taken"  # another event id holds the payment's sequence


@dataclass(frozen=True, slots=True)
class Unusable:
    """A record that is not projected: it did not verify, is no payment event, or was refused.

    ``error_class`` and ``reason`` go into its dead letter as they are.
    """

    position: Position
    record_sha256: bytes
    value: bytes = field(repr=False)
    key: bytes | None
    error_class: str
    reason: str
    detail: str
    envelope: Envelope | None = None


Candidate = Projected | Unusable


@dataclass(frozen=True, slots=True)
class Conflict:
    projected: Projected
    reason: ConflictReason
    # What already holds the place: the applied record's digest (hex) for a
    # reused event id, the other event's id for a taken sequence.
    existing: str


@dataclass(frozen=True, slots=True)
class OutOfOrder:
    """An applied event whose sequence is not the payment's next one: a gap, or a late event."""

    payment_id: str
    expected: int
    found: int


@dataclass(frozen=True, slots=True)
class Lookup:
    """What to read from the database before planning a batch."""

    event_ids: tuple[str, ...]
    sequences: tuple[tuple[str, int], ...]
    payment_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Known:
    """What the database holds about a batch's event ids, sequences and payments."""

    digests: Mapping[str, bytes] = field(default_factory=dict)  # event id -> record sha256
    sequences: Mapping[tuple[str, int], str] = field(default_factory=dict)  # -> event id
    last_sequences: Mapping[str, int] = field(default_factory=dict)  # payment id -> newest


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """The rows to write for a batch, and what to report about the rest of it."""

    applied: tuple[Projected, ...]
    events: tuple[EventRow, ...]
    entries: tuple[EntryRow, ...]
    payments: tuple[PaymentRow, ...]
    # The fee rows of these payments are replaced by ``fees``.
    fee_payment_ids: tuple[str, ...]
    fees: tuple[FeeRow, ...]
    processed: tuple[ProcessedRow, ...]
    duplicates: tuple[Projected, ...]
    conflicts: tuple[Conflict, ...]
    unusable: tuple[Unusable, ...]
    out_of_order: tuple[OutOfOrder, ...]


def lookup(candidates: Iterable[Candidate]) -> Lookup:
    projected = [c for c in candidates if isinstance(c, Projected)]
    return Lookup(
        event_ids=tuple(dict.fromkeys(p.event_id for p in projected)),
        sequences=tuple(dict.fromkeys((p.payment_id, p.sequence) for p in projected)),
        payment_ids=tuple(dict.fromkeys(p.payment_id for p in projected)),
    )


def next_offsets(candidates: Iterable[Candidate]) -> tuple[Position, ...]:
    """Per (topic, partition), the offset after the last record of the batch."""
    ends: dict[tuple[str, int], int] = {}
    for candidate in candidates:
        position = candidate.position
        key = (position.topic, position.partition)
        ends[key] = max(ends.get(key, 0), position.offset + 1)
    return tuple(
        sorted(Position(topic, partition, end) for (topic, partition), end in ends.items())
    )


def plan_batch(candidates: Sequence[Candidate], known: Known) -> BatchPlan:
    """Classify every candidate, in order, and build the rows of those applied."""
    digests = dict(known.digests)
    sequences = dict(known.sequences)
    last = dict(known.last_sequences)
    applied: list[Projected] = []
    duplicates: list[Projected] = []
    conflicts: list[Conflict] = []
    unusable: list[Unusable] = []
    out_of_order: list[OutOfOrder] = []
    for candidate in candidates:
        if isinstance(candidate, Unusable):
            unusable.append(candidate)
            continue
        seen = digests.get(candidate.event_id)
        if seen is not None:
            if seen == candidate.record_sha256:
                duplicates.append(candidate)
            else:
                conflicts.append(Conflict(candidate, ConflictReason.EVENT_ID_REUSED, seen.hex()))
            continue
        holder = sequences.get((candidate.payment_id, candidate.sequence))
        if holder is not None:
            conflicts.append(Conflict(candidate, ConflictReason.SEQUENCE_TAKEN, holder))
            continue
        expected = last.get(candidate.payment_id, 0) + 1
        if candidate.sequence != expected:
            out_of_order.append(OutOfOrder(candidate.payment_id, expected, candidate.sequence))
        digests[candidate.event_id] = candidate.record_sha256
        sequences[(candidate.payment_id, candidate.sequence)] = candidate.event_id
        last[candidate.payment_id] = max(expected - 1, candidate.sequence)
        applied.append(candidate)
    payments, fee_payment_ids, fees = _payment_rows(applied, known.last_sequences)
    return BatchPlan(
        applied=tuple(applied),
        events=tuple(event_row(p) for p in applied),
        entries=tuple(entry for p in applied for entry in entry_rows(p)),
        payments=payments,
        fee_payment_ids=fee_payment_ids,
        fees=fees,
        processed=tuple(processed_row(p) for p in applied),
        duplicates=tuple(duplicates),
        conflicts=tuple(conflicts),
        unusable=tuple(unusable),
        out_of_order=tuple(out_of_order),
    )


def _payment_rows(
    applied: Sequence[Projected], stored_last: Mapping[str, int]
) -> tuple[tuple[PaymentRow, ...], tuple[str, ...], tuple[FeeRow, ...]]:
    """One row per payment whose newest event in the batch is newer than the stored one."""
    by_payment: dict[str, list[Projected]] = {}
    for projected in applied:
        by_payment.setdefault(projected.payment_id, []).append(projected)
    payments: list[PaymentRow] = []
    fees: list[FeeRow] = []
    for payment_id, events in by_payment.items():
        ordered = sorted(events, key=lambda p: p.sequence)
        newest = ordered[-1]
        if newest.sequence <= stored_last.get(payment_id, 0):
            continue  # a late event: the stored row is already past it
        payments.append(
            payment_row(
                newest,
                created_at=min(p.envelope.occurred_at for p in ordered),
                provider_object_id=next(
                    (p.event.provider_object_id for p in ordered if p.event.provider_object_id),
                    None,
                ),
            )
        )
        fees.extend(fee_rows(newest))
    return tuple(payments), tuple(row.payment_id for row in payments), tuple(fees)

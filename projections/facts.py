"""The audit facts and dead letters about records the applier did not apply. Pure.

* A conflicting duplicate (``plan.Conflict``) becomes an ``AuditFact``
  ``projection.conflicting-duplicate`` on audit-facts: the record is on the
  log for good, so the fact names where (topic, partition, offset), its
  digest and what already holds its place.
* An unusable record (``plan.Unusable``: it did not verify, is no payment
  event, or the database refused it) becomes a ``DeadLetter`` on rejected --
  the same shape the stream processors give theirs -- and an ``AuditFact``
  ``projection.rejected``.

Event ids are derived from the record's position, so a batch retried after
a failure publishes the same envelopes under the same ids: each fact is
delivered at least once, and a consumer dedupes by event id.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

from ledger import limits
from ledger.envelope import (
    DEAD_LETTER_ORIGINAL_BYTES_MAX,
    NOTE_CHARS_MAX,
    AuditFact,
    DeadLetter,
    Envelope,
    derived_event_id,
)
from ledger.topics import TopicRole
from projections.plan import Conflict, Unusable
from projections.rows import Position

SOURCE: Final = "/payledger/projections"
ACTOR: Final = "projections"
CONFLICT_FACT_TYPE: Final = "projection.conflicting-duplicate"
REJECTED_FACT_TYPE: Final = "projection.rejected"
# Error classes of the dead letters; the first is the stream processors' own
# for records that do not decode or verify.
INVALID_ERROR_CLASS: Final = "invalid-envelope"
UNPROJECTABLE_ERROR_CLASS: Final = "projection-unprojectable"
REFUSED_ERROR_CLASS: Final = "projection-refused"


@dataclass(frozen=True, slots=True)
class Outgoing:
    """An unsigned envelope and the role of the topic it goes to."""

    role: TopicRole
    envelope: Envelope


def conflict_fact(conflict: Conflict, now: datetime) -> Outgoing:
    projected = conflict.projected
    position = projected.position
    fact = AuditFact(
        fact_type=CONFLICT_FACT_TYPE,
        actor=ACTOR,
        subject=projected.payment_id,
        reason=conflict.reason.value,
        digest=projected.record_sha256,
        details={
            "event_id": projected.event_id,
            "event_type": projected.envelope.event_type,
            "payment_id": projected.payment_id,
            "sequence": str(projected.sequence),
            "existing": conflict.existing,
            **_where(position),
        },
    )
    return Outgoing(
        TopicRole.AUDIT_FACTS,
        _envelope(
            fact,
            event_id=_fact_id(CONFLICT_FACT_TYPE, position),
            event_type=f"audit.{CONFLICT_FACT_TYPE}",
            aggregate_id=projected.payment_id,
            sequence=1,
            cause=projected.envelope,
            now=now,
        ),
    )


def rejection(unusable: Unusable, now: datetime) -> tuple[Outgoing, Outgoing]:
    """The dead letter of an unusable record, then its audit fact."""
    position = unusable.position
    cause = unusable.envelope
    aggregate_id = aggregate_of(unusable)
    detail = unusable.detail[:NOTE_CHARS_MAX]
    letter = DeadLetter(
        original_topic=position.topic,
        original_partition=position.partition,
        original_offset=position.offset,
        original_sha256=unusable.record_sha256,
        original_bytes=(
            unusable.value if len(unusable.value) <= DEAD_LETTER_ORIGINAL_BYTES_MAX else None
        ),
        original_event_id=None if cause is None else cause.event_id,
        original_event_type=None if cause is None else cause.event_type,
        error_class=unusable.error_class,
        reason=unusable.reason,
        detail=detail,
    )
    details = {"error_class": unusable.error_class, "detail": detail, **_where(position)}
    if cause is not None:
        details["event_id"] = cause.event_id
    fact = AuditFact(
        fact_type=REJECTED_FACT_TYPE,
        actor=ACTOR,
        subject=aggregate_id,
        reason=unusable.reason,
        digest=unusable.record_sha256,
        details=details,
    )
    return (
        Outgoing(
            TopicRole.REJECTED,
            _envelope(
                letter,
                event_id=derived_event_id(
                    "projection-dead-letter", position.topic, *_numbers(position)
                ),
                event_type=f"dead-letter.{unusable.error_class}",
                aggregate_id=aggregate_id,
                # The rejected topic has no per-payment order: the source offset, 1-based.
                sequence=position.offset + 1,
                cause=cause,
                now=now,
            ),
        ),
        Outgoing(
            TopicRole.AUDIT_FACTS,
            _envelope(
                fact,
                event_id=_fact_id(REJECTED_FACT_TYPE, position),
                event_type=f"audit.{REJECTED_FACT_TYPE}",
                aggregate_id=aggregate_id,
                sequence=1,
                cause=cause,
                now=now,
            ),
        ),
    )


def outgoing(
    conflicts: tuple[Conflict, ...], unusable: tuple[Unusable, ...], now: datetime
) -> list[Outgoing]:
    """Everything to publish about a batch, in the order of the records."""
    found: list[tuple[Position, tuple[Outgoing, ...]]] = [
        (c.projected.position, (conflict_fact(c, now),)) for c in conflicts
    ]
    found.extend((u.position, rejection(u, now)) for u in unusable)
    found.sort(key=lambda item: item[0])
    return [message for _, messages in found for message in messages]


def aggregate_of(unusable: Unusable) -> str:
    """The payment the record names if it decoded, else its key if usable, else its position."""
    if unusable.envelope is not None:
        return unusable.envelope.aggregate_id
    if unusable.key:
        try:
            text = unusable.key.decode("utf-8")
        except UnicodeDecodeError:
            text = ""
        if 0 < len(text) <= limits.AGGREGATE_ID_CHARS_MAX and text.isprintable():
            return text
    position = unusable.position
    return f"unusable:{position.partition}:{position.offset}"


def _fact_id(fact_type: str, position: Position) -> str:
    return derived_event_id("projection-fact", fact_type, position.topic, *_numbers(position))


def _numbers(position: Position) -> tuple[str, str]:
    return str(position.partition), str(position.offset)


def _where(position: Position) -> dict[str, str]:
    return {
        "topic": position.topic,
        "partition": str(position.partition),
        "offset": str(position.offset),
    }


def _envelope(
    payload: AuditFact | DeadLetter,
    *,
    event_id: str,
    event_type: str,
    aggregate_id: str,
    sequence: int,
    cause: Envelope | None,
    now: datetime,
) -> Envelope:
    return Envelope(
        event_id=event_id,
        event_type=event_type,
        aggregate_id=aggregate_id[: limits.AGGREGATE_ID_CHARS_MAX],
        sequence=sequence,
        occurred_at=now,
        recorded_at=now,
        producer=SOURCE,
        correlation_id=event_id if cause is None else cause.correlation_id,
        causation_id=None if cause is None else cause.event_id,
        payload=payload,
    )

"""Classifying a batch: apply, duplicate, conflict; payment rows; positions."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import timedelta

from projections.plan import (
    ConflictReason,
    Known,
    Unusable,
    lookup,
    next_offsets,
    plan_batch,
)
from projections.rows import Position
from tests.unit.test_projections import (
    TOPIC,
    projected,
    stripe_succeeded,
    stripe_with_fee_and_refund,
)


def unusable(offset: int, partition: int = 0) -> Unusable:
    value = b"\x00not an envelope"
    return Unusable(
        Position(TOPIC, partition, offset),
        hashlib.sha256(value).digest(),
        value,
        b"pay_x",
        "invalid-envelope",
        "bad-magic",
        "bad-magic: first byte 0x00 is not 0",
    )


def test_new_events_are_applied_with_their_rows() -> None:
    payment = stripe_with_fee_and_refund("pay_plan_1")
    batch = [projected(e, offset=n) for n, e in enumerate(payment.envelopes())]
    plan = plan_batch(batch, Known())
    assert plan.applied == tuple(batch)
    assert [row.sequence for row in plan.events] == list(range(1, len(batch) + 1))
    assert len(plan.entries) == sum(len(e.payload.postings) for e in payment.envelopes())
    assert [p.event_id for p in plan.processed] == [p.event_id for p in batch]
    (row,) = plan.payments
    assert (row.payment_id, row.status, row.last_sequence) == (
        "pay_plan_1",
        "PARTIALLY_REFUNDED",
        6,
    )
    assert row.created_at == batch[0].envelope.occurred_at
    assert row.provider_object_id == "pi_1"
    assert plan.fee_payment_ids == ("pay_plan_1",)
    assert [(f.currency, f.amount_minor) for f in plan.fees] == [("EUR", 59)]
    assert plan.duplicates == plan.conflicts == plan.unusable == plan.out_of_order == ()


def test_a_redelivered_record_is_a_duplicate_and_changes_nothing() -> None:
    first, second = (
        projected(e, offset=n) for n, e in enumerate(stripe_succeeded("pay_plan_2").envelopes())
    )
    known = Known(
        digests={first.event_id: first.record_sha256, second.event_id: second.record_sha256},
        sequences={("pay_plan_2", 1): first.event_id, ("pay_plan_2", 2): second.event_id},
        last_sequences={"pay_plan_2": 2},
    )
    again = dataclasses.replace(second, position=Position(TOPIC, 0, 9))
    plan = plan_batch([first, again], known)
    assert plan.duplicates == (first, again)
    assert plan.applied == plan.events == plan.entries == plan.payments == plan.processed == ()
    assert plan.conflicts == ()


def test_the_same_event_id_with_other_bytes_is_a_conflict() -> None:
    created = projected(stripe_succeeded("pay_plan_3").envelopes()[0], offset=0)
    known = Known(digests={created.event_id: hashlib.sha256(b"the bytes applied").digest()})
    plan = plan_batch([created], known)
    (conflict,) = plan.conflicts
    assert conflict.reason is ConflictReason.EVENT_ID_REUSED
    assert conflict.existing == hashlib.sha256(b"the bytes applied").hexdigest()
    assert plan.applied == plan.duplicates == ()


def test_a_sequence_held_by_another_event_id_is_a_conflict() -> None:
    created = projected(stripe_succeeded("pay_plan_4").envelopes()[0])
    known = Known(sequences={("pay_plan_4", 1): "0190c0de-0000-7000-8000-000000000001"})
    plan = plan_batch([created], known)
    (conflict,) = plan.conflicts
    assert conflict.reason is ConflictReason.SEQUENCE_TAKEN
    assert conflict.existing == "0190c0de-0000-7000-8000-000000000001"
    assert plan.applied == ()


def test_duplicates_and_conflicts_inside_one_batch() -> None:
    envelopes = stripe_succeeded("pay_plan_5").envelopes()
    created = projected(envelopes[0], offset=0)
    same_again = dataclasses.replace(created, position=Position(TOPIC, 0, 1))
    reused_id = dataclasses.replace(
        created, position=Position(TOPIC, 0, 2), record_sha256=hashlib.sha256(b"other").digest()
    )
    other_id = projected(
        dataclasses.replace(envelopes[0], event_id="0190c0de-0000-7000-8000-000000000002"),
        offset=3,
    )
    plan = plan_batch([created, same_again, reused_id, other_id], Known())
    assert plan.applied == (created,)
    assert plan.duplicates == (same_again,)
    assert [(c.projected, c.reason) for c in plan.conflicts] == [
        (reused_id, ConflictReason.EVENT_ID_REUSED),
        (other_id, ConflictReason.SEQUENCE_TAKEN),
    ]
    assert plan.conflicts[1].existing == created.event_id


def test_a_late_event_gets_its_row_but_does_not_move_the_payment_back() -> None:
    envelopes = stripe_with_fee_and_refund("pay_plan_6").envelopes()
    late = projected(envelopes[2], offset=40)
    known = Known(last_sequences={"pay_plan_6": 6})
    plan = plan_batch([late], known)
    assert plan.applied == (late,)
    assert plan.payments == plan.fees == plan.fee_payment_ids == ()
    (gap,) = plan.out_of_order
    assert (gap.payment_id, gap.expected, gap.found) == ("pay_plan_6", 7, 3)


def test_a_gap_is_reported_and_the_newest_event_still_wins() -> None:
    envelopes = stripe_with_fee_and_refund("pay_plan_7").envelopes()
    batch = [projected(envelopes[0], offset=0), projected(envelopes[3], offset=1)]
    plan = plan_batch(batch, Known())
    assert [(g.expected, g.found) for g in plan.out_of_order] == [(2, 4)]
    (row,) = plan.payments
    assert row.last_sequence == 4


def test_created_at_is_the_earliest_event_and_the_object_the_first_named() -> None:
    envelopes = stripe_succeeded("pay_plan_8").envelopes()
    early = dataclasses.replace(
        envelopes[1], occurred_at=envelopes[0].occurred_at - timedelta(days=1)
    )
    plan = plan_batch([projected(envelopes[0]), projected(early, offset=1)], Known())
    (row,) = plan.payments
    assert row.created_at == early.occurred_at
    assert row.provider_object_id == "pi_1"


def test_positions_advance_past_every_record_whatever_became_of_it() -> None:
    envelopes = stripe_succeeded("pay_plan_9").envelopes()
    applied = projected(envelopes[0], offset=4, partition=1)
    duplicate = projected(envelopes[0], offset=5, partition=1)
    batch = [unusable(10, partition=0), applied, duplicate, unusable(2, partition=2)]
    plan = plan_batch(batch, Known())
    assert plan.unusable == (batch[0], batch[3])
    assert plan.duplicates == (duplicate,)
    assert next_offsets(batch) == (
        Position(TOPIC, 0, 11),
        Position(TOPIC, 1, 6),
        Position(TOPIC, 2, 3),
    )
    assert next_offsets([]) == ()


def test_lookup_asks_once_per_id() -> None:
    envelopes = stripe_succeeded("pay_plan_10").envelopes()
    batch = [
        projected(envelopes[0]),
        projected(envelopes[0], offset=1),
        projected(envelopes[1], offset=2),
        unusable(3),
    ]
    want = lookup(batch)
    assert want.event_ids == (envelopes[0].event_id, envelopes[1].event_id)
    assert want.sequences == (("pay_plan_10", 1), ("pay_plan_10", 2))
    assert want.payment_ids == ("pay_plan_10",)

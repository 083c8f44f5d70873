"""Audit facts and dead letters of records not applied; schema names; migration files;
the retry backoff."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from ledger.codec import EnvelopeCodec
from ledger.config import Settings
from ledger.envelope import DEAD_LETTER_ORIGINAL_BYTES_MAX, AuditFact, DeadLetter, utc_now
from ledger.errors import ConfigurationError, InfrastructureError
from ledger.keys import KeyRing
from ledger.keystore import KeyStore
from ledger.topics import TopicRole
from ledger.verify import Verifier
from projections import facts, limits
from projections.migrations import SQL_DIR, check_schema_name, migrations
from projections.plan import Conflict, ConflictReason, Unusable
from projections.reader import backoff_s
from projections.rows import Position
from tests.support.fakes import MemoryRegistry
from tests.unit.test_projections import T0, TOPIC, projected, stripe_succeeded


def rejected_record(value: bytes = b"\x00garbage", key: bytes | None = b"pay_fact_1") -> Unusable:
    return Unusable(
        Position(TOPIC, 2, 41),
        hashlib.sha256(value).digest(),
        value,
        key,
        facts.INVALID_ERROR_CLASS,
        "bad-magic",
        "bad-magic: not Confluent wire format",
    )


def test_a_conflicting_duplicate_becomes_a_signed_audit_fact(tmp_path: Path) -> None:
    created = projected(stripe_succeeded("pay_fact_0").envelopes()[0], offset=17, partition=4)
    conflict = Conflict(
        created, ConflictReason.SEQUENCE_TAKEN, "0190c0de-0000-7000-8000-000000000009"
    )
    message = facts.conflict_fact(conflict, T0)
    assert message.role is TopicRole.AUDIT_FACTS
    envelope = message.envelope
    fact = envelope.payload
    assert isinstance(fact, AuditFact)
    assert (fact.fact_type, fact.actor, fact.subject) == (
        "projection.conflicting-duplicate",
        "projections",
        "pay_fact_0",
    )
    assert fact.reason == "sequence-taken"
    assert fact.digest == created.record_sha256
    assert fact.details == {
        "event_id": created.event_id,
        "event_type": "payment.created",
        "payment_id": "pay_fact_0",
        "sequence": "1",
        "existing": "0190c0de-0000-7000-8000-000000000009",
        "topic": TOPIC,
        "partition": "4",
        "offset": "17",
    }
    assert envelope.event_type == "audit.projection.conflicting-duplicate"
    assert envelope.causation_id == created.event_id
    assert envelope.correlation_id == created.envelope.correlation_id
    # A retried batch publishes the same fact under the same id.
    assert facts.conflict_fact(conflict, T0).envelope.event_id == envelope.event_id
    # It signs, encodes and verifies like any other envelope.
    store = KeyStore(Settings(state_dir=tmp_path))
    signer = store.active_key()
    codec = EnvelopeCodec(MemoryRegistry())
    now = facts.conflict_fact(conflict, utc_now()).envelope
    signed, wire = codec.encode(now, signer.signer, "test.audit-facts")
    ring = KeyRing([store.trusted_root()])
    ring.add(signer.endorsement)
    assert Verifier(codec, ring).open(wire) == signed


def test_an_unusable_record_gets_a_dead_letter_and_an_audit_fact() -> None:
    record = rejected_record()
    letter_message, fact_message = facts.rejection(record, T0)
    assert letter_message.role is TopicRole.REJECTED
    assert fact_message.role is TopicRole.AUDIT_FACTS
    letter = letter_message.envelope.payload
    assert isinstance(letter, DeadLetter)
    assert (letter.original_topic, letter.original_partition, letter.original_offset) == (
        TOPIC,
        2,
        41,
    )
    assert letter.original_sha256 == record.record_sha256
    assert letter.original_bytes == b"\x00garbage"
    assert (letter.error_class, letter.reason) == ("invalid-envelope", "bad-magic")
    assert letter.original_event_id is None
    envelope = letter_message.envelope
    assert envelope.aggregate_id == "pay_fact_1"
    assert envelope.sequence == 42
    assert envelope.event_type == "dead-letter.invalid-envelope"
    fact = fact_message.envelope.payload
    assert isinstance(fact, AuditFact)
    assert (fact.fact_type, fact.reason, fact.subject) == (
        "projection.rejected",
        "bad-magic",
        "pay_fact_1",
    )
    assert fact.details["error_class"] == "invalid-envelope"
    assert facts.rejection(record, T0)[0].envelope.event_id == envelope.event_id


def test_a_dead_letter_keeps_only_the_digest_of_a_large_record() -> None:
    record = rejected_record(value=b"x" * (DEAD_LETTER_ORIGINAL_BYTES_MAX + 1))
    letter = facts.rejection(record, T0)[0].envelope.payload
    assert isinstance(letter, DeadLetter)
    assert letter.original_bytes is None
    assert letter.original_sha256 == hashlib.sha256(record.value).digest()


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (b"pay_7", "pay_7"),
        (None, "unusable:2:41"),
        (b"\xff\xfe", "unusable:2:41"),
        (b"x" * 65, "unusable:2:41"),
    ],
)
def test_what_a_rejection_is_about_without_a_decoded_envelope(key, expected) -> None:
    assert facts.aggregate_of(rejected_record(key=key)) == expected


def test_outgoing_follows_the_order_of_the_records() -> None:
    created = projected(stripe_succeeded("pay_fact_2").envelopes()[0], offset=50, partition=2)
    conflict = Conflict(created, ConflictReason.EVENT_ID_REUSED, "ab" * 32)
    messages = facts.outgoing((conflict,), (rejected_record(),), T0)
    assert [m.envelope.event_type for m in messages] == [
        "dead-letter.invalid-envelope",
        "audit.projection.rejected",
        "audit.projection.conflicting-duplicate",
    ]


@pytest.mark.parametrize("name", ["projections", "pt_0123abcd", "_scratch", "a" * 63])
def test_schema_names_accepted(name: str) -> None:
    assert check_schema_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Projections",
        "1st",
        "pg_temp",
        "public",
        "information_schema",
        "a-b",
        'x"; DROP',
        "a" * 64,
    ],
)
def test_schema_names_refused(name: str) -> None:
    with pytest.raises(ConfigurationError):
        check_schema_name(name)


def test_the_shipped_migrations_are_numbered_files() -> None:
    found = migrations(SQL_DIR)
    assert found[0].name == "001_projections.sql"
    assert [m.version for m in found] == sorted({m.version for m in found})
    # Nothing in them names a schema: the runner's search_path decides.
    for migration in found:
        assert "projections." not in migration.sql
        assert "public." not in migration.sql


def test_misnamed_and_duplicate_migrations_are_refused(tmp_path: Path) -> None:
    (tmp_path / "001_a.sql").write_text("SELECT 1;")
    (tmp_path / "001_b.sql").write_text("SELECT 1;")
    with pytest.raises(InfrastructureError, match="share a number"):
        migrations(tmp_path)
    (tmp_path / "001_b.sql").unlink()
    (tmp_path / "2_bad.sql").write_text("SELECT 1;")
    with pytest.raises(InfrastructureError, match=r"NNN_name\.sql"):
        migrations(tmp_path)


def test_the_backoff_doubles_and_is_capped() -> None:
    waits = [backoff_s(attempt) for attempt in range(1, 12)]
    assert waits[0] == limits.RETRY_BACKOFF_BASE_S
    assert waits[1] == 2 * limits.RETRY_BACKOFF_BASE_S
    assert waits == sorted(waits)
    assert max(waits) == limits.RETRY_BACKOFF_MAX_S

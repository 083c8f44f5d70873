"""The projections against the real Kafka and Postgres: migrations, the applier, and the
constraints that carry the ledger's invariants.

Payment events are emitted by the state machine, signed by the test's keys and
published on a fresh topic prefix; the applier (in this process) verifies them
from the root key alone, learning event keys from the keys topic, and projects
them into a schema of this test's own, dropped at the end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiokafka import AIOKafkaProducer
from click.testing import CliRunner
from psycopg import sql

from ledger.cli import main
from ledger.codec import EnvelopeCodec
from ledger.config import Settings
from ledger.envelope import AuditFact, DeadLetter, Envelope, PostingSide, new_envelope
from ledger.keystore import ActiveSigner, KeyStore
from ledger.payments.machine import DomainEvent
from ledger.registry import FileSchemaRegistry
from ledger.signing import FileSigner
from ledger.topics import TopicRole, topic_name
from projections import migrations, store
from projections.applier import Applier
from streams.provision import provision_topics
from streams.publisher import Published, kafka_publisher
from tests.integration.test_envelope_kafka import auditor, read_all
from tests.unit.test_projections import (
    SCENARIOS,
    STREAMS,
    Driver,
    stripe_succeeded,
    stripe_with_fee_and_refund,
)

pytestmark = pytest.mark.integration

WAIT_TIMEOUT_S = 180.0
POLL_S = 0.1
TABLES = {
    "payments": "SELECT * FROM payments ORDER BY payment_id",
    "payment_fees": "SELECT * FROM payment_fees ORDER BY payment_id, currency",
    "payment_events": "SELECT * FROM payment_events ORDER BY event_id",
    "ledger_entries": "SELECT * FROM ledger_entries ORDER BY event_id, leg",
    "account_balances": "SELECT * FROM account_balances ORDER BY account, currency",
    "processed_events": "SELECT * FROM processed_events ORDER BY event_id",
    "consumer_positions": (
        "SELECT topic, partition, next_offset FROM consumer_positions ORDER BY topic, partition"
    ),
}


# Fixtures and helpers shared with test_projections_crash -----------------------


@pytest.fixture
async def settings(tmp_path: Path) -> Settings:
    settings = Settings(topic_prefix=f"p{uuid.uuid4().hex[:10]}.", state_dir=tmp_path)
    report = await provision_topics(settings)
    assert report.ok, report.mismatches
    # The signing key first: events are recorded after it exists, as in the worker.
    KeyStore(settings).active_key()
    return settings


@pytest.fixture
async def schema(settings: Settings) -> AsyncIterator[str]:
    """A schema of this test's own, dropped (with everything in it) at the end."""
    name = f"pt_{uuid.uuid4().hex[:12]}"
    yield name
    await drop_schema(settings.dsn(), name)


async def drop_schema(dsn: str, name: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as connection:
        await connection.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name))
        )


def events_topic(settings: Settings) -> str:
    return topic_name(settings, TopicRole.PAYMENT_EVENTS)


async def publish(settings: Settings, envelopes: Sequence[Envelope]) -> list[Published]:
    """Sign with the test's keys (the stream worker's role) and publish on payment-events."""
    async with kafka_publisher(
        settings,
        EnvelopeCodec(FileSchemaRegistry(settings.registry_dir)),
        ActiveSigner(KeyStore(settings)),
        source=STREAMS,
    ) as publisher:
        return await publisher.publish_many(events_topic(settings), envelopes)


async def send_raw(settings: Settings, value: bytes, *, key: bytes, partition: int = 0) -> int:
    """Produce bytes as they are, with no signing or checks; returns the offset."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers(), acks="all")
    await producer.start()
    try:
        metadata = await producer.send_and_wait(
            events_topic(settings), value, key=key, partition=partition
        )
    finally:
        await producer.stop()
    return metadata.offset


def ends_of(published: Iterable[Published], *more: tuple[int, int]) -> dict[int, int]:
    """Partition -> the offset after the last record published there."""
    ends: dict[int, int] = {}
    for partition, offset in [(p.partition, p.offset) for p in published] + list(more):
        ends[partition] = max(ends.get(partition, 0), offset + 1)
    return ends


async def stored_positions(dsn: str, schema: str, topic: str) -> dict[int, int]:
    connection = await store.connect(dsn, schema)
    try:
        return await store.stored_positions(connection, topic)
    except psycopg.errors.UndefinedTable:
        return {}  # not migrated yet
    finally:
        await connection.close()


async def wait_for_positions(
    dsn: str,
    schema: str,
    topic: str,
    ends: dict[int, int],
    *,
    alive: Any = None,
) -> None:
    """Until the stored positions reach ``ends``; ``alive()`` raises if the applier died."""
    async with asyncio.timeout(WAIT_TIMEOUT_S):
        while True:
            if alive is not None:
                alive()
            stored = await stored_positions(dsn, schema, topic)
            if all(stored.get(p, 0) >= end for p, end in ends.items()):
                assert all(stored.get(p, 0) == end for p, end in ends.items()), (stored, ends)
                return
            await asyncio.sleep(POLL_S)


@asynccontextmanager
async def running_applier(
    settings: Settings, schema: str, *, batch_records: int = 500
) -> AsyncIterator[tuple[Applier, Any]]:
    """An applier in this process; stopped (the batch in flight finished) on exit."""
    stop = asyncio.Event()
    applier = Applier(settings, schema, batch_records=batch_records)
    task = asyncio.create_task(applier.run(stop))

    def alive() -> None:
        if task.done():
            task.result()
            raise AssertionError("the applier stopped by itself")

    try:
        yield applier, alive
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT_TIMEOUT_S)


async def project(
    settings: Settings, schema: str, ends: dict[int, int], *, batch_records: int = 500
) -> Applier:
    """Run an applier until everything up to ``ends`` is committed, then stop it."""
    async with running_applier(settings, schema, batch_records=batch_records) as (applier, alive):
        await wait_for_positions(settings.dsn(), schema, events_topic(settings), ends, alive=alive)
    return applier


async def snapshot(dsn: str, schema: str) -> dict[str, list[tuple[Any, ...]]]:
    connection = await store.connect(dsn, schema)
    try:
        found = {}
        for table, query in TABLES.items():
            cursor = await connection.execute(query)
            found[table] = await cursor.fetchall()
        return found
    finally:
        await connection.close()


async def query(dsn: str, schema: str, text: str, params: Sequence[Any] = ()) -> list[tuple]:
    connection = await store.connect(dsn, schema)
    try:
        cursor = await connection.execute(text, params)
        return await cursor.fetchall()
    finally:
        await connection.close()


Timelines = dict[str, list[DomainEvent]]  # payment id -> the events it should have


def timelines(drivers: Iterable[Driver]) -> Timelines:
    return {driver.payment_id: driver.events for driver in drivers}


def expected_balances(expected: Timelines) -> dict[tuple[str, str], tuple[int, int]]:
    """(account, currency) -> (debits, credits) of every posting of the payments' events."""
    sums: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for events in expected.values():
        for event in events:
            for posting in event.payload.postings:
                side = 0 if posting.side is PostingSide.DEBIT else 1
                sums[(posting.account, posting.currency)][side] += posting.amount_minor
    return {key: (debit, credit) for key, (debit, credit) in sums.items()}


async def check_projection(dsn: str, schema: str, expected: Timelines) -> None:
    """Every row the payments' events should give, exactly: nothing missing, nothing twice."""
    payments = {
        row[0]: row[1:]
        for row in await query(
            dsn,
            schema,
            "SELECT payment_id, status, currency, amount_minor, authorized_minor, captured_minor,"
            " refunded_minor, disputed_minor, charged_back_minor, suspense_minor, last_sequence,"
            " merchant_id, provider FROM payments",
        )
    }
    assert set(payments) == set(expected)
    for payment_id, events in expected.items():
        newest = events[-1].payload  # its totals are the payment's after it
        assert payments[payment_id] == (
            newest.status_after.value,
            newest.payment_amount.currency,
            newest.payment_amount.amount_minor,
            newest.authorized_minor,
            newest.captured_minor,
            newest.refunded_minor,
            newest.disputed_minor,
            newest.charged_back_minor,
            newest.suspense_minor,
            events[-1].sequence,
            newest.merchant_id,
            newest.provider.value,
        ), payment_id
    sequences = dict(
        await query(
            dsn,
            schema,
            "SELECT payment_id, array_agg(sequence ORDER BY sequence) FROM payment_events"
            " GROUP BY payment_id",
        )
    )
    # The drivers' timelines are 1..n: equal means gapless and without doubles.
    assert sequences == {p: [e.sequence for e in events] for p, events in expected.items()}
    event_ids = [
        row[0] for row in await query(dsn, schema, "SELECT event_id::text FROM payment_events")
    ]
    assert sorted(event_ids) == sorted(e.event_id for events in expected.values() for e in events)
    entries = await query(
        dsn,
        schema,
        "SELECT event_id::text, leg, account, side, amount_minor, currency FROM ledger_entries",
    )
    assert sorted(entries) == sorted(
        (e.event_id, leg, p.account, p.side.value, p.amount_minor, p.currency)
        for events in expected.values()
        for e in events
        for leg, p in enumerate(e.payload.postings)
    )
    balances = {
        (account, currency): (debit, credit, balance)
        for account, currency, debit, credit, balance in await query(
            dsn,
            schema,
            "SELECT account, currency, debit_minor, credit_minor, balance_minor"
            " FROM account_balances",
        )
    }
    assert balances == {
        key: (debit, credit, debit - credit)
        for key, (debit, credit) in expected_balances(expected).items()
    }
    # Every event balances, so the ledger does, per currency.
    for currency, total in await query(
        dsn, schema, "SELECT currency, sum(balance_minor) FROM account_balances GROUP BY currency"
    ):
        assert total == 0, currency
    fees = await query(dsn, schema, "SELECT payment_id, currency, amount_minor FROM payment_fees")
    assert sorted(fees) == sorted(
        (p, fee.currency, fee.amount_minor)
        for p, events in expected.items()
        for fee in events[-1].payload.fees
    )
    processed = await query(dsn, schema, "SELECT count(*) FROM processed_events")
    assert processed == [(len(event_ids),)]


# Migrations --------------------------------------------------------------------


async def test_migrations_build_a_schema_once_and_a_second_beside_it(settings, schema) -> None:
    dsn = settings.dsn()
    shipped = [m.name for m in migrations.migrations()]
    assert shipped[:2] == ["001_projections.sql", "002_entries_checked_per_event.sql"]
    assert await migrations.migrate(dsn, schema) == shipped
    assert await migrations.migrate(dsn, schema) == []
    beside = f"{schema}_b"
    try:
        assert await migrations.migrate(dsn, beside) == shipped
        for name in (schema, beside):
            tables = await query(
                dsn,
                name,
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                (name,),
            )
            assert {t for (t,) in tables} == {*TABLES, migrations.MIGRATIONS_TABLE}
    finally:
        await drop_schema(dsn, beside)


async def test_a_changed_migration_is_refused(settings, schema, tmp_path: Path) -> None:
    directory = tmp_path / "sql"
    directory.mkdir()
    (directory / "001_projections.sql").write_text(
        (migrations.SQL_DIR / "001_projections.sql").read_text()
    )
    assert await migrations.migrate(settings.dsn(), schema, directory) == ["001_projections.sql"]
    (directory / "001_projections.sql").write_text("-- edited\n")
    with pytest.raises(Exception, match="changed after it was applied"):
        await migrations.migrate(settings.dsn(), schema, directory)


def test_the_migrate_command(settings, schema) -> None:
    runner = CliRunner()
    first = runner.invoke(main, ["projections", "migrate", "--schema", schema])
    assert first.exit_code == 0, first.output
    shipped = ", ".join(m.name for m in migrations.migrations())
    assert f"schema {schema}: applied {shipped}" in first.output
    again = runner.invoke(main, ["projections", "migrate", "--schema", schema])
    assert again.exit_code == 0, again.output
    assert f"schema {schema}: up to date" in again.output
    refused = runner.invoke(main, ["projections", "migrate", "--schema", "Not-A-Name"])
    assert refused.exit_code == 1
    assert "not a projections schema name" in refused.output


# The applier ---------------------------------------------------------------------


async def test_payments_are_projected_exactly(settings, schema) -> None:
    drivers = [scenario(f"pay_{uuid.uuid4().hex[:12]}") for scenario in SCENARIOS]
    drivers += [stripe_succeeded(f"pay_{uuid.uuid4().hex[:12]}") for _ in range(10)]
    published = await publish(settings, [e for d in drivers for e in d.envelopes()])
    applier = await project(settings, schema, ends_of(published), batch_records=7)

    dsn = settings.dsn()
    await check_projection(dsn, schema, timelines(drivers))
    assert applier.totals.applied == len(published)
    assert (applier.totals.duplicates, applier.totals.conflicts, applier.totals.rejected) == (
        0,
        0,
        0,
    )
    # Each event's record, by its digest and where it was read.
    records = await read_all(settings, events_topic(settings), len(published))
    expected = {(r.partition, r.offset): hashlib.sha256(r.value).digest() for r in records}
    processed = await query(
        dsn,
        schema,
        "SELECT source_partition, source_offset, record_sha256 FROM processed_events",
    )
    assert {(p, o): bytes(digest) for p, o, digest in processed} == expected
    # The timeline keeps what the log says.
    stripe = drivers[0]
    timeline = await query(
        dsn,
        schema,
        "SELECT sequence, kind, status_before, status_after, amount_minor, amount_currency,"
        " signing_key_id, signature_status FROM payment_events WHERE payment_id = %s"
        " ORDER BY sequence",
        (stripe.payment_id,),
    )
    assert [row[:6] for row in timeline] == [
        (
            e.sequence,
            e.payload.kind.value,
            None if e.payload.status_before is None else e.payload.status_before.value,
            e.payload.status_after.value,
            None if e.payload.amount is None else e.payload.amount.amount_minor,
            None if e.payload.amount is None else e.payload.amount.currency,
        )
        for e in stripe.events
    ]
    signed_by = {p.envelope.signing_key_id for p in published}
    assert {row[6] for row in timeline} <= signed_by
    assert {row[7] for row in timeline} == {"VERIFIED"}
    objects = dict(await query(dsn, schema, "SELECT payment_id, provider_object_id FROM payments"))
    assert [objects[d.payment_id] for d in drivers[:3]] == ["pi_1", "ORDER-1", "charge-1"]


async def test_redelivered_and_replayed_records_change_nothing(settings, schema) -> None:
    drivers = [scenario(f"pay_{uuid.uuid4().hex[:12]}") for scenario in SCENARIOS]
    published = await publish(settings, [e for d in drivers for e in d.envelopes()])
    dsn = settings.dsn()
    await project(settings, schema, ends_of(published))
    before = await snapshot(dsn, schema)

    # The same record, byte for byte, published again (a producer retry, a
    # mirror, a replay): a later offset, the same event id and digest.
    records = await read_all(settings, events_topic(settings), len(published))
    again = records[len(records) // 2]
    offset = await send_raw(settings, again.value, key=again.key, partition=again.partition)
    ends = ends_of(published, (again.partition, offset))
    applier = await project(settings, schema, ends)
    assert (applier.totals.applied, applier.totals.duplicates) == (0, 1)
    after = await snapshot(dsn, schema)
    assert {t: rows for t, rows in after.items() if t != "consumer_positions"} == {
        t: rows for t, rows in before.items() if t != "consumer_positions"
    }

    # Positions lost: everything is read again from offset 0, and is a duplicate.
    connection = await store.connect(dsn, schema)
    await connection.execute("DELETE FROM consumer_positions")
    await connection.close()
    applier = await project(settings, schema, ends)
    assert (applier.totals.applied, applier.totals.duplicates) == (0, len(published) + 1)
    assert await snapshot(dsn, schema) == after
    await check_projection(dsn, schema, timelines(drivers))


async def test_conflicting_duplicates_are_audit_facts_and_the_first_stands(
    settings, schema
) -> None:
    payment = stripe_with_fee_and_refund(f"pay_{uuid.uuid4().hex[:12]}")
    envelopes = payment.envelopes()
    original = envelopes[2]
    # The same event id, recorded again later: other bytes.
    reused = dataclasses.replace(original, recorded_at=original.recorded_at + timedelta(hours=1))
    # Another event id claiming the same (payment, sequence).
    taken = dataclasses.replace(original, event_id=str(uuid.uuid4()))
    later = stripe_succeeded(f"pay_{uuid.uuid4().hex[:12]}")
    published = await publish(settings, [*envelopes, reused, taken, *later.envelopes()])
    applier = await project(settings, schema, ends_of(published))
    assert applier.totals.conflicts == 2

    dsn = settings.dsn()
    await check_projection(dsn, schema, timelines([payment, later]))
    (row,) = await query(
        dsn,
        schema,
        "SELECT event_id::text, recorded_at FROM payment_events WHERE payment_id = %s"
        " AND sequence = %s",
        (payment.payment_id, original.sequence),
    )
    assert row == (original.event_id, original.recorded_at)

    store_ = KeyStore(settings)
    verifier = await auditor(settings, store_, FileSchemaRegistry(settings.registry_dir))
    facts_topic = topic_name(settings, TopicRole.AUDIT_FACTS)
    opened = [verifier.open(r.value) for r in await read_all(settings, facts_topic, 2)]
    found = {
        e.payload.reason: e.payload
        for e in opened
        if isinstance(e.payload, AuditFact)
        and e.payload.fact_type == "projection.conflicting-duplicate"
    }
    assert set(found) == {"event-id-reused", "sequence-taken"}
    records = {
        (r.partition, r.offset): r.value
        for r in await read_all(settings, events_topic(settings), len(published))
    }
    for reason, conflicting in (
        ("event-id-reused", published[-4]),
        ("sequence-taken", published[-3]),
    ):
        fact = found[reason]
        assert fact.subject == payment.payment_id
        assert fact.details["offset"] == str(conflicting.offset)
        assert fact.details["partition"] == str(conflicting.partition)
        assert fact.details["sequence"] == str(original.sequence)
        value = records[(conflicting.partition, conflicting.offset)]
        assert fact.digest == hashlib.sha256(value).digest()
    assert found["sequence-taken"].details["existing"] == original.event_id


async def test_unusable_records_are_dead_lettered_and_the_rest_applied(settings, schema) -> None:
    payment_id = f"pay_{uuid.uuid4().hex[:12]}"
    garbage_offset = await send_raw(settings, b"garbage, not an envelope", key=payment_id.encode())
    # A payment event signed by a key no root endorsed.
    stranger = FileSigner.generate()
    codec = EnvelopeCodec(FileSchemaRegistry(settings.registry_dir))
    _, forged = codec.encode(
        stripe_succeeded(payment_id).envelopes()[0], stranger, events_topic(settings)
    )
    forged_offset = await send_raw(settings, forged, key=payment_id.encode())
    # A verified envelope that is no payment event.
    fact = new_envelope(
        event_type="audit.test",
        aggregate_id=payment_id,
        sequence=1,
        producer=STREAMS,
        payload=AuditFact(fact_type="test", actor="test", subject=payment_id),
    )
    good = stripe_succeeded(f"pay_{uuid.uuid4().hex[:12]}")
    published = await publish(settings, [fact, *good.envelopes()])
    ends = ends_of(published, (0, garbage_offset), (0, forged_offset))
    applier = await project(settings, schema, ends)
    assert applier.totals.rejected == 3
    await check_projection(settings.dsn(), schema, timelines([good]))

    store_ = KeyStore(settings)
    verifier = await auditor(settings, store_, FileSchemaRegistry(settings.registry_dir))
    letters = [
        verifier.open(r.value).payload
        for r in await read_all(settings, topic_name(settings, TopicRole.REJECTED), 3)
    ]
    assert all(isinstance(letter, DeadLetter) for letter in letters)
    by_reason = {letter.reason: letter for letter in letters}
    assert set(by_reason) == {"bad-magic", "unknown-key", "not-a-payment-event"}
    assert by_reason["bad-magic"].original_bytes == b"garbage, not an envelope"
    assert by_reason["bad-magic"].original_offset == garbage_offset
    assert by_reason["unknown-key"].original_sha256 == hashlib.sha256(forged).digest()
    assert by_reason["not-a-payment-event"].error_class == "projection-unprojectable"
    assert by_reason["not-a-payment-event"].original_event_id == published[0].envelope.event_id
    facts = [
        verifier.open(r.value).payload
        for r in await read_all(settings, topic_name(settings, TopicRole.AUDIT_FACTS), 3)
    ]
    rejected = [
        f for f in facts if isinstance(f, AuditFact) and f.fact_type == "projection.rejected"
    ]
    assert sorted(f.reason for f in rejected) == sorted(by_reason)


async def test_events_the_database_refuses_are_dead_lettered_alone(settings, schema) -> None:
    payment = stripe_succeeded(f"pay_{uuid.uuid4().hex[:12]}")
    created, captured = payment.envelopes()
    # Signed and well-formed, but it breaks captured <= authorized (checked at once).
    impossible = dataclasses.replace(
        captured, payload=dataclasses.replace(captured.payload, authorized_minor=0)
    )
    # Signed and well-formed, but of another merchant than its payment (a
    # deferred foreign key, checked at the end of the event's savepoint).
    other = stripe_with_fee_and_refund(f"pay_{uuid.uuid4().hex[:12]}")
    other_envelopes = other.envelopes()
    hijacked = dataclasses.replace(
        other_envelopes[1],
        payload=dataclasses.replace(other_envelopes[1].payload, merchant_id="mer_thief"),
    )
    followers = [stripe_succeeded(f"pay_{uuid.uuid4().hex[:12]}") for _ in range(3)]
    envelopes = [
        created,
        impossible,
        other_envelopes[0],
        hijacked,
        *other_envelopes[2:],
        *(e for d in followers for e in d.envelopes()),
    ]
    published = await publish(settings, envelopes)
    applier = await project(settings, schema, ends_of(published))
    assert (applier.totals.applied, applier.totals.rejected) == (len(envelopes) - 2, 2)

    dsn = settings.dsn()
    # The other payment's events after the refused one are applied -- a gap in
    # its timeline, reported -- and nothing else of the batch is lost.
    await check_projection(
        dsn,
        schema,
        {
            **timelines(followers),
            payment.payment_id: payment.events[:1],
            other.payment_id: [other.events[0], *other.events[2:]],
        },
    )

    verifier = await auditor(
        settings, KeyStore(settings), FileSchemaRegistry(settings.registry_dir)
    )
    letters = {
        letter.original_event_id: letter
        for letter in (
            verifier.open(r.value).payload
            for r in await read_all(settings, topic_name(settings, TopicRole.REJECTED), 2)
        )
    }
    assert set(letters) == {impossible.event_id, hijacked.event_id}
    assert all(letter.error_class == "projection-refused" for letter in letters.values())
    assert letters[impossible.event_id].reason.endswith("captured_within_authorized")
    assert letters[hijacked.event_id].reason == "payment_events_payment"


# The constraints, written to directly ------------------------------------------

EVENT_SQL = (
    "INSERT INTO payment_events (event_id, payment_id, merchant_id, provider, currency,"
    " payment_amount_minor, sequence, kind, event_type, schema_version, status_before,"
    " status_after, stale, authorized_minor, captured_minor, refunded_minor, disputed_minor,"
    " charged_back_minor, suspense_minor, postings_count, occurred_at, recorded_at, producer,"
    " correlation_id, signing_key_id, signature_status, source_topic, source_partition,"
    " source_offset)"
    " VALUES (%(event_id)s, %(payment_id)s, 'mer_sql', 'STRIPE', 'EUR', 1000, %(sequence)s,"
    " %(kind)s, 'payment.test', 1, %(before)s, %(after)s, false, %(captured)s, %(captured)s,"
    " 0, 0, 0, 0, %(postings)s, now(), now(), 'test', 'test', 'ed25519-test', 'VERIFIED',"
    " 'sql', 0, %(sequence)s)"
)
PAYMENT_SQL = (
    "INSERT INTO payments (payment_id, merchant_id, provider, status, currency, amount_minor,"
    " authorized_minor, captured_minor, refunded_minor, disputed_minor, charged_back_minor,"
    " suspense_minor, last_sequence, created_at, updated_at)"
    " VALUES (%s, 'mer_sql', 'STRIPE', 'AWAITING_PAYMENT_METHOD', 'EUR', 1000,"
    " %s, %s, 0, 0, 0, 0, 1, now(), now())"
)
ENTRY_SQL = (
    "INSERT INTO ledger_entries (event_id, leg, account, side, amount_minor, currency)"
    " VALUES (%s, %s, %s, %s, %s, 'EUR')"
)
CLEARING, PAYABLE = "provider:stripe:clearing", "merchant:mer_sql:payable"


def capture_event(payment_id: str, sequence: int = 2, postings: int = 2) -> dict[str, object]:
    return {
        "event_id": str(uuid.uuid4()),
        "payment_id": payment_id,
        "sequence": sequence,
        "kind": "CAPTURED",
        "before": "AWAITING_PAYMENT_METHOD",
        "after": "SUCCEEDED",
        "captured": 1000,
        "postings": postings,
    }


async def test_the_database_refuses_what_breaks_an_invariant(settings, schema) -> None:
    await migrations.migrate(settings.dsn(), schema)
    connection = await store.connect(settings.dsn(), schema)
    payment_id = "pay_sql_1"

    async def entry(event: dict[str, object], leg: int, account: str, side: str, amount: int):
        await connection.execute(ENTRY_SQL, (event["event_id"], leg, account, side, amount))

    try:
        async with connection.transaction():
            await connection.execute(PAYMENT_SQL, (payment_id, 0, 0))
            created = {
                **capture_event(payment_id, sequence=1, postings=0),
                "kind": "CREATED",
                "before": None,
                "after": "AWAITING_PAYMENT_METHOD",
                "captured": 0,
            }
            await connection.execute(EVENT_SQL, created)

        # Unbalanced: every statement succeeds; the commit is refused.
        written = False
        event = capture_event(payment_id)
        with pytest.raises(psycopg.errors.CheckViolation, match="do not balance in EUR"):
            async with connection.transaction():
                await connection.execute(EVENT_SQL, event)
                await entry(event, 0, CLEARING, "DEBIT", 1000)
                await entry(event, 1, PAYABLE, "CREDIT", 900)
                written = True
        assert written, "the balance is checked at commit, not per statement"

        # Fewer entries than the event's postings; none at all.
        event = capture_event(payment_id)
        with pytest.raises(psycopg.errors.CheckViolation, match="has 1 ledger entries and 2"):
            async with connection.transaction():
                await connection.execute(EVENT_SQL, event)
                await entry(event, 0, CLEARING, "DEBIT", 1000)
        event = capture_event(payment_id)
        with pytest.raises(psycopg.errors.CheckViolation, match="has 0 ledger entries and 2") as e:
            async with connection.transaction():
                await connection.execute(EVENT_SQL, event)
        assert str(event["event_id"]) in str(e.value)
        assert e.value.diag.constraint_name == "entries_match_postings"

        # More entries than postings, in the event's own transaction: refused
        # by the statement that wrote one too many.
        event = capture_event(payment_id)
        written = False
        with pytest.raises(psycopg.errors.CheckViolation, match="has 3 ledger entries and 2"):
            async with connection.transaction():
                await connection.execute(EVENT_SQL, event)
                await entry(event, 0, CLEARING, "DEBIT", 1000)
                await entry(event, 1, PAYABLE, "CREDIT", 1000)
                await entry(event, 2, PAYABLE, "CREDIT", 1)
                written = True
        assert not written, "more entries than postings are refused at once"

        # Balanced, in two statements, credit first: committed; balances follow.
        event = capture_event(payment_id)
        async with connection.transaction():
            await connection.execute(EVENT_SQL, event)
            await entry(event, 1, PAYABLE, "CREDIT", 1000)
            await entry(event, 0, CLEARING, "DEBIT", 1000)
        cursor = await connection.execute(
            "SELECT account, debit_minor, credit_minor, balance_minor, entries_count"
            " FROM account_balances ORDER BY account"
        )
        assert await cursor.fetchall() == [
            (PAYABLE, 0, 1000, -1000, 1),
            (CLEARING, 1000, 0, 1000, 1),
        ]

        # A leg added later to a balanced event; two legs that balance each other.
        with pytest.raises(psycopg.errors.CheckViolation, match="has 3 ledger entries") as e:
            async with connection.transaction():
                await entry(event, 2, PAYABLE, "CREDIT", 1)
        assert str(event["event_id"]) in str(e.value)
        with pytest.raises(psycopg.errors.CheckViolation, match="has 4 ledger entries and 2"):
            await connection.execute(
                "INSERT INTO ledger_entries (event_id, leg, account, side, amount_minor, currency)"
                " VALUES (%(id)s, 2, %(debit)s, 'DEBIT', 1, 'EUR'),"
                " (%(id)s, 3, %(credit)s, 'CREDIT', 1, 'EUR')",
                {"id": event["event_id"], "debit": CLEARING, "credit": PAYABLE},
            )

        # An entry for an event without postings (the CREATED one), however late.
        with pytest.raises(psycopg.errors.CheckViolation, match="has 1 ledger entries and 0") as e:
            async with connection.transaction():
                await entry(created, 0, PAYABLE, "CREDIT", 1)
        assert str(created["event_id"]) in str(e.value)

        # A second event on a taken sequence.
        with pytest.raises(psycopg.errors.UniqueViolation, match="payment_events_sequence"):
            async with connection.transaction():
                await connection.execute(EVENT_SQL, capture_event(payment_id, postings=0))

        # History is append-only.
        with pytest.raises(psycopg.errors.IntegrityError, match="append-only"):
            await connection.execute("UPDATE payment_events SET note = 'edited'")
        with pytest.raises(psycopg.errors.IntegrityError, match="append-only"):
            await connection.execute("DELETE FROM ledger_entries")

        # Captured beyond authorized; refunded beyond captured; a negative total.
        for assignment, constraint in (
            ("captured_minor = 1000, authorized_minor = 500", "captured_within_authorized"),
            (
                "authorized_minor = 1000, captured_minor = 1000, refunded_minor = 1001",
                "returned_within_captured",
            ),
            ("suspense_minor = -1", "suspense_minor_check"),
        ):
            with pytest.raises(psycopg.errors.CheckViolation, match=constraint):
                await connection.execute(f"UPDATE payments SET {assignment}")

        # An event of the payment under another merchant.
        with pytest.raises(psycopg.errors.ForeignKeyViolation, match="payment_events_payment"):
            async with connection.transaction():
                await connection.execute(
                    EVENT_SQL.replace("'mer_sql'", "'mer_other'"),
                    capture_event(payment_id, sequence=3, postings=0),
                )
    finally:
        await connection.close()


async def test_a_schema_at_the_first_migration_is_migrated_to_per_event_checks(
    settings, schema, tmp_path: Path
) -> None:
    """A database built by 001 alone (per-entry checks) is carried to the per-event checks
    with its rows, and refuses what 001 refused."""
    dsn = settings.dsn()
    first = tmp_path / "sql"
    first.mkdir()
    (first / "001_projections.sql").write_text(
        (migrations.SQL_DIR / "001_projections.sql").read_text()
    )
    assert await migrations.migrate(dsn, schema, first) == ["001_projections.sql"]
    connection = await store.connect(dsn, schema)
    payment_id = "pay_sql_migrated"

    async def entry(event: dict[str, object], leg: int, account: str, side: str, amount: int):
        await connection.execute(ENTRY_SQL, (event["event_id"], leg, account, side, amount))

    async def triggers() -> set[tuple[str, str]]:
        cursor = await connection.execute(
            "SELECT c.relname, t.tgname FROM pg_trigger AS t"
            " JOIN pg_class AS c ON c.oid = t.tgrelid"
            " WHERE c.relnamespace = %s::regnamespace AND NOT t.tgisinternal",
            (schema,),
        )
        return set(await cursor.fetchall())

    try:
        # Rows written under 001's triggers.
        async with connection.transaction():
            await connection.execute(PAYMENT_SQL, (payment_id, 1000, 1000))
            created = {
                **capture_event(payment_id, sequence=1, postings=0),
                "kind": "CREATED",
                "before": None,
                "after": "AWAITING_PAYMENT_METHOD",
                "captured": 0,
            }
            await connection.execute(EVENT_SQL, created)
            before = capture_event(payment_id)
            await connection.execute(EVENT_SQL, before)
            await entry(before, 0, CLEARING, "DEBIT", 1000)
            await entry(before, 1, PAYABLE, "CREDIT", 1000)
        assert ("ledger_entries", "entries_balanced") in await triggers()

        assert await migrations.migrate(dsn, schema) == [
            m.name for m in migrations.migrations()[1:]
        ]
        found = await triggers()
        assert ("ledger_entries", "entries_balanced") not in found
        assert {
            ("ledger_entries", "entries_within_postings"),
            ("payment_events", "event_entries_complete"),
        } <= found

        # An unbalanced event is refused at commit, and named.
        event = capture_event(payment_id, sequence=3)
        with pytest.raises(psycopg.errors.CheckViolation, match="do not balance in EUR") as e:
            async with connection.transaction():
                await connection.execute(EVENT_SQL, event)
                await entry(event, 0, CLEARING, "DEBIT", 1000)
                await entry(event, 1, PAYABLE, "CREDIT", 999)
        assert str(event["event_id"]) in str(e.value)
        assert e.value.diag.constraint_name == "entries_balanced"

        # A leg added to the event committed before the migration.
        with pytest.raises(psycopg.errors.CheckViolation, match="has 3 ledger entries and 2"):
            async with connection.transaction():
                await entry(before, 2, PAYABLE, "CREDIT", 1)

        # A balanced event, legs in any order: committed.
        event = capture_event(payment_id, sequence=3)
        async with connection.transaction():
            await connection.execute(EVENT_SQL, event)
            await entry(event, 1, PAYABLE, "CREDIT", 1000)
            await entry(event, 0, CLEARING, "DEBIT", 1000)
        cursor = await connection.execute(
            "SELECT account, debit_minor, credit_minor, entries_count FROM account_balances"
            " ORDER BY account"
        )
        assert await cursor.fetchall() == [(PAYABLE, 0, 2000, 2), (CLEARING, 2000, 0, 2)]
    finally:
        await connection.close()

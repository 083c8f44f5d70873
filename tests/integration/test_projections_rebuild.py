"""``payledger projections rebuild`` against the real Kafka and Postgres.

Each test publishes signed payment events on a topic prefix of its own,
projects them into a live schema of its own with the applier, then rebuilds
a second schema from offset 0 and diffs the two -- through the command, or
through ``projections.rebuild``'s steps where the test must act between them
(the live schema moving on after the rebuild's end offsets).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from click.testing import CliRunner, Result
from psycopg import sql

from ledger.cli import main
from ledger.codec import EnvelopeCodec
from ledger.config import Settings
from ledger.envelope import Envelope
from ledger.keystore import ActiveSigner, KeyStore
from ledger.registry import FileSchemaRegistry
from ledger.topics import TopicRole, topic_name
from projections import rebuild as rebuilding
from streams.provision import provision_topics
from streams.publisher import Published, kafka_publisher
from tests.integration.test_projections_applier import (
    check_projection,
    drop_schema,
    ends_of,
    events_topic,
    project,
    publish,
    query,
    send_raw,
    timelines,
)
from tests.unit.test_projections import (
    SCENARIOS,
    STREAMS,
    Driver,
    stripe_succeeded,
    stripe_with_fee_and_refund,
)

pytestmark = pytest.mark.integration

PROJECTION_TABLES = {
    "payments",
    "payment_fees",
    "payment_events",
    "ledger_entries",
    "account_balances",
    "processed_events",
    "consumer_positions",
    "schema_migrations",
}


@pytest.fixture
async def settings(tmp_path: Path) -> Settings:
    settings = Settings(topic_prefix=f"p{uuid.uuid4().hex[:10]}.", state_dir=tmp_path)
    report = await provision_topics(settings)
    assert report.ok, report.mismatches
    KeyStore(settings).active_key()
    return settings


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[str]:
    """The live schema of this test, dropped at the end."""
    name = f"pt_{uuid.uuid4().hex[:12]}"
    yield name
    await drop_schema(settings.dsn(), name)


@pytest.fixture
async def rebuilt(settings: Settings) -> AsyncIterator[str]:
    """The schema this test rebuilds into, dropped at the end."""
    name = f"pr_{uuid.uuid4().hex[:12]}"
    yield name
    await drop_schema(settings.dsn(), name)


def payment_id() -> str:
    return f"pay_{uuid.uuid4().hex[:12]}"


def envelopes_of(drivers: Sequence[Driver]) -> list:
    return [envelope for driver in drivers for envelope in driver.envelopes()]


def cli_env(settings: Settings, **more: str) -> dict[str, str]:
    return {
        "PAYLEDGER_TOPIC_PREFIX": settings.topic_prefix,
        "PAYLEDGER_STATE_DIR": str(settings.state_dir),
        **more,
    }


async def rebuild_command(settings: Settings, *args: str, **env: str) -> Result:
    """``payledger projections rebuild ARGS``, in a thread (the command runs its own loop)."""
    runner = CliRunner()
    return await asyncio.to_thread(
        runner.invoke, main, ["projections", "rebuild", *args], env=cli_env(settings, **env)
    )


def report_of(result: Result) -> dict[str, Any]:
    return json.loads(result.stdout)


def tables_of(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {table["table"]: table for table in report["tables"]}


async def high_watermarks(settings: Settings, roles: Sequence[TopicRole]) -> dict[str, int]:
    """Per topic, the sum of its partitions' high watermarks: every record ever written."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers(), group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        found = {}
        for role in roles:
            topic = topic_name(settings, role)
            partitions = consumer.partitions_for_topic(topic) or set()
            if not partitions:
                await consumer._client.force_metadata_update()
                partitions = consumer.partitions_for_topic(topic) or set()
            assert partitions, topic
            ends = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
            found[topic] = sum(ends.values())
        return found
    finally:
        await consumer.stop()


async def execute(dsn: str, schema: str, *statements: str) -> None:
    """Statements in one transaction on ``schema``, as someone editing the live schema by hand."""
    async with (
        await psycopg.AsyncConnection.connect(
            dsn, autocommit=True, options=f"-c search_path={schema}"
        ) as connection,
        connection.transaction(),
    ):
        for statement in statements:
            await connection.execute(statement.encode())


# A healthy system ----------------------------------------------------------------


async def test_a_healthy_system_rebuilds_to_an_empty_diff_and_publishes_nothing(
    settings, live, rebuilt
) -> None:
    drivers = [scenario(payment_id()) for scenario in SCENARIOS]
    drivers += [stripe_succeeded(payment_id()) for _ in range(6)]
    conflicted = stripe_with_fee_and_refund(payment_id())
    envelopes = conflicted.envelopes()
    # Records the live applier does not apply and reports: a reused event id
    # (an audit fact) and bytes that are no envelope (a dead letter and a fact).
    reused = dataclasses.replace(
        envelopes[1], recorded_at=envelopes[1].recorded_at + timedelta(hours=1)
    )
    garbage = await send_raw(settings, b"not an envelope", key=b"pay_garbage")
    published = await publish(settings, [*envelopes_of(drivers), *envelopes, reused])
    ends = ends_of(published, (0, garbage))
    applier = await project(settings, live, ends)
    assert (applier.totals.conflicts, applier.totals.rejected) == (1, 1)
    reporting = [TopicRole.AUDIT_FACTS, TopicRole.REJECTED, TopicRole.KEYS]
    before = await high_watermarks(settings, reporting)
    assert before[topic_name(settings, TopicRole.REJECTED)] == 1

    result = await rebuild_command(settings, "--schema", rebuilt, "--live", live, "--json")

    assert result.exit_code == 0, result.output
    report = report_of(result)
    assert report["findings"] == []
    assert report["differences"] == 0
    applied = len(published) - 1  # all but the reused event id
    assert report["replay"] == {
        "applied": applied,
        "duplicates": 0,
        "conflicts": 1,
        "rejected": 1,
        # the conflict's fact, the garbage's dead letter and fact: published by the live applier
        "withheld": 3,
        "positions": {str(p): end for p, end in ends.items()},
    }
    assert report["end_offsets"] == {
        str(p): ends.get(p, 0) for p in range(settings.topic_partitions)
    }
    tables = tables_of(report)
    assert set(tables) == PROJECTION_TABLES
    assert tables["payment_events"]["rows_compared"] == applied
    assert tables["processed_events"]["rows_compared"] == applied
    assert tables["payments"]["rows_compared"] == len(drivers) + 1
    assert tables["consumer_positions"]["rows_compared"] == len(ends)
    assert all(table["rows_beyond_cutoff"] == 0 for table in tables.values())
    assert all(table["differences"] == 0 for table in tables.values())
    # The rebuilt schema holds what the log says, whatever the diff says.
    await check_projection(settings.dsn(), rebuilt, timelines([*drivers, conflicted]))
    # Nothing was published: no audit fact, dead letter or key endorsement.
    assert await high_watermarks(settings, reporting) == before


async def test_the_summary_names_the_tables_and_counts(settings, live, rebuilt) -> None:
    drivers = [stripe_succeeded(payment_id()) for _ in range(3)]
    published = await publish(settings, envelopes_of(drivers))
    await project(settings, live, ends_of(published))

    result = await rebuild_command(settings, "--schema", rebuilt, "--live", live)

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[-1] == "no differences"
    rows = {line.split()[0]: line.split()[1:] for line in lines if line.startswith("  ")}
    assert rows["payment_events"] == [str(len(published)), "0", "0"]
    assert rows["payments"] == ["3", "0", "0"]
    assert "0 audit facts and dead letters not published again" in result.stdout


async def test_transactions_as_the_stream_worker_writes_them(settings, live, rebuilt) -> None:
    """Committed transactions end with a marker past their last record, and an aborted
    one's records are never read: the rebuild still stops at its end offsets."""
    committed = [stripe_succeeded(payment_id()) for _ in range(4)]
    aborted = [stripe_succeeded(payment_id()) for _ in range(2)]
    published = await publish_transactions(
        settings,
        [
            (envelopes_of(committed[:2]), True),
            (envelopes_of(aborted), False),
            (envelopes_of(committed[2:]), True),
        ],
    )
    await project(settings, live, ends_of(published))

    result = await rebuild_command(settings, "--schema", rebuilt, "--live", live, "--json")

    assert result.exit_code == 0, result.output
    report = report_of(result)
    assert report["findings"] == []
    positions = {str(p): end for p, end in ends_of(published).items()}
    assert report["replay"]["positions"] == positions
    # The commit markers sit past the last records: the end offsets are beyond them.
    assert all(report["end_offsets"][p] > end for p, end in positions.items())
    assert report["replay"]["applied"] == len(published)
    await check_projection(settings.dsn(), rebuilt, timelines(committed))


async def publish_transactions(
    settings: Settings, batches: Sequence[tuple[Sequence[Envelope], bool]]
) -> list[Published]:
    """Each batch in a transaction of its own, committed or aborted; returns the committed."""
    publisher = kafka_publisher(
        settings,
        EnvelopeCodec(FileSchemaRegistry(settings.registry_dir)),
        ActiveSigner(KeyStore(settings)),
        source=STREAMS,
        transactional_id=f"test-{uuid.uuid4().hex}",
    )
    await publisher.start()
    published: list[Published] = []
    try:
        for envelopes, commit in batches:
            if commit:
                async with publisher.transaction():
                    published += await publisher.publish_many(events_topic(settings), envelopes)
                continue
            with pytest.raises(RuntimeError, match="abort"):
                async with publisher.transaction():
                    await publisher.publish_many(events_topic(settings), envelopes)
                    raise RuntimeError("abort this transaction")
    finally:
        await publisher.stop()
    return published


# Rows changed by hand --------------------------------------------------------------


async def test_rows_changed_by_hand_in_live_are_named_by_key_and_column(
    settings, live, rebuilt
) -> None:
    drivers = [stripe_succeeded(payment_id()) for _ in range(3)]
    drivers.append(stripe_with_fee_and_refund(payment_id()))
    published = await publish(settings, envelopes_of(drivers))
    await project(settings, live, ends_of(published))
    dsn = settings.dsn()
    target = drivers[0]
    captured = target.final.captured_minor
    event_id = target.events[1].event_id
    (balance,) = await query(
        dsn,
        live,
        "SELECT account, currency, debit_minor, credit_minor, balance_minor, entries_count"
        " FROM account_balances ORDER BY account, currency LIMIT 1",
    )
    await execute(
        dsn,
        live,
        f"UPDATE payments SET captured_minor = captured_minor - 1"
        f" WHERE payment_id = '{target.payment_id}'",
        # payment_events is append-only by trigger: off for this transaction only.
        "ALTER TABLE payment_events DISABLE TRIGGER payment_events_append_only",
        f"UPDATE payment_events SET note = 'edited by hand' WHERE event_id = '{event_id}'",
        "ALTER TABLE payment_events ENABLE TRIGGER payment_events_append_only",
        f"DELETE FROM account_balances WHERE account = '{balance[0]}'"
        f" AND currency = '{balance[1]}'",
    )

    result = await rebuild_command(settings, "--schema", rebuilt, "--live", live, "--json")

    assert result.exit_code == 1, result.output
    report = report_of(result)
    account, currency, debit, credit, total, entries = balance
    assert sorted(report["findings"], key=lambda f: f["table"]) == [
        {
            "table": "account_balances",
            "key": {"account": account, "currency": currency},
            "column": None,
            "live_value": None,
            "rebuilt_value": {
                "account": account,
                "currency": currency,
                "debit_minor": debit,
                "credit_minor": credit,
                "balance_minor": total,
                "entries_count": entries,
            },
            "kind": "missing-in-live",
        },
        {
            "table": "payment_events",
            "key": {"event_id": event_id},
            "column": "note",
            "live_value": "edited by hand",
            "rebuilt_value": None,
            "kind": "different",
        },
        {
            "table": "payments",
            "key": {"payment_id": target.payment_id},
            "column": "captured_minor",
            "live_value": captured - 1,
            "rebuilt_value": captured,
            "kind": "different",
        },
    ]
    assert report["differences"] == 3
    tables = tables_of(report)
    assert tables["payments"]["differences"] == 1
    assert tables["ledger_entries"]["differences"] == 0

    # Again, into the same schema: refused, then replaced; the summary names them too.
    again = await rebuild_command(settings, "--schema", rebuilt, "--live", live)
    assert again.exit_code == 2, again.output
    assert "already holds data" in again.output
    replaced = await rebuild_command(settings, "--schema", rebuilt, "--live", live, "--replace")
    assert replaced.exit_code == 1, replaced.output
    assert "3 differences:" in replaced.stdout
    assert (
        f'different: payments (payment_id="{target.payment_id}") captured_minor:'
        f" live {captured - 1}, rebuilt {captured}"
    ) in replaced.stdout
    assert (
        f'missing-in-live: account_balances (account="{account}", currency="{currency}")'
    ) in replaced.stdout


# Refusals and errors ---------------------------------------------------------------


async def test_a_schema_holding_data_or_the_live_one_is_refused(settings, live, rebuilt) -> None:
    drivers = [stripe_succeeded(payment_id()) for _ in range(2)]
    published = await publish(settings, envelopes_of(drivers))
    await project(settings, live, ends_of(published))
    dsn = settings.dsn()
    live_rows = await query(dsn, live, "SELECT count(*) FROM payment_events")

    for extra in ((), ("--replace",)):
        result = await rebuild_command(settings, "--schema", live, "--live", live, *extra)
        assert result.exit_code == 2, result.output
        assert "is the live schema" in result.output
    assert await query(dsn, live, "SELECT count(*) FROM payment_events") == live_rows

    first = await rebuild_command(settings, "--schema", rebuilt, "--live", live, "--json")
    assert first.exit_code == 0, first.output
    assert report_of(first)["dropped"] is False
    # Mark the rebuilt schema: a refused rebuild must leave it as it is.
    await execute(dsn, rebuilt, "INSERT INTO consumer_positions VALUES ('marker', 0, 7)")
    refused = await rebuild_command(settings, "--schema", rebuilt, "--live", live)
    assert refused.exit_code == 2, refused.output
    assert f"schema {rebuilt} already holds data" in refused.output
    assert "--replace" in refused.output
    assert await query(
        dsn, rebuilt, "SELECT next_offset FROM consumer_positions WHERE topic = 'marker'"
    ) == [(7,)]

    replaced = await rebuild_command(
        settings, "--schema", rebuilt, "--live", live, "--replace", "--json"
    )
    assert replaced.exit_code == 0, replaced.output
    assert report_of(replaced)["dropped"] is True
    assert await query(
        dsn, rebuilt, "SELECT count(*) FROM consumer_positions WHERE topic = 'marker'"
    ) == [(0,)]

    # A schema payledger did not build is never dropped, even with --replace.
    other = f"po_{uuid.uuid4().hex[:12]}"
    try:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as connection:
            await connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(other)))
            await connection.execute(
                sql.SQL("CREATE TABLE {} (x integer)").format(sql.Identifier(other, "kept"))
            )
            await connection.execute(
                sql.SQL("INSERT INTO {} VALUES (1)").format(sql.Identifier(other, "kept"))
            )
        result = await rebuild_command(settings, "--schema", other, "--live", live, "--replace")
        assert result.exit_code == 2, result.output
        assert "not a projections schema" in result.output
        assert await query(dsn, other, "SELECT x FROM kept") == [(1,)]
    finally:
        await drop_schema(dsn, other)


async def test_unreachable_kafka_or_postgres_and_a_missing_live_schema_exit_2(
    settings, live, rebuilt, closed_port
) -> None:
    no_kafka = await rebuild_command(
        settings, "--schema", rebuilt, "--live", live, PAYLEDGER_KAFKA_PORT=str(closed_port)
    )
    assert no_kafka.exit_code == 2, no_kafka.output
    assert "cannot use Kafka" in no_kafka.output

    no_postgres = await rebuild_command(
        settings, "--schema", rebuilt, "--live", live, PAYLEDGER_POSTGRES_PORT=str(closed_port)
    )
    assert no_postgres.exit_code == 2, no_postgres.output
    assert "cannot use Postgres" in no_postgres.output

    no_live = await rebuild_command(settings, "--schema", rebuilt, "--live", live)
    assert no_live.exit_code == 2, no_live.output
    assert f"live schema {live} is not a projections schema" in no_live.output


# The live schema ahead of, or behind, the rebuild -----------------------------------


async def test_a_live_schema_ahead_is_compared_up_to_the_rebuilds_end_offsets(
    settings, live, rebuilt
) -> None:
    dsn = settings.dsn()
    topic = events_topic(settings)
    settled = [stripe_succeeded(payment_id()) for _ in range(4)]
    moving = stripe_with_fee_and_refund(payment_id())
    moving_envelopes = moving.envelopes()
    first = await publish(settings, [*envelopes_of(settled), *moving_envelopes[:2]])
    await project(settings, live, ends_of(first))

    ends = await rebuilding.end_offsets(settings, topic)
    assert {p: o for p, o in ends.items() if o} == ends_of(first)
    # The log moves on once the rebuild has its end offsets: the moving
    # payment's later events, new payments. The rebuild stops at its ends...
    later = [stripe_succeeded(payment_id()) for _ in range(3)]
    second = await publish(settings, [*moving_envelopes[2:], *envelopes_of(later)])
    assert await rebuilding.prepare(dsn, rebuilt, live, replace=False) is False
    replayed = await rebuilding.replay(settings, rebuilt, ends)
    assert replayed.totals.applied == len(first)
    assert replayed.positions == ends_of(first)
    # ... and the live schema applies them.
    await project(settings, live, ends_of([*first, *second]))

    comparison = await asyncio.to_thread(rebuilding.diff, dsn, live, rebuilt, topic, ends)

    assert comparison.findings == ()
    counts = {count.table: count for count in comparison.tables}
    assert (counts["payment_events"].compared, counts["payment_events"].beyond) == (
        len(first),
        len(second),
    )
    # The moving payment is not compared: its live row follows events past the end offsets.
    assert (counts["payments"].compared, counts["payments"].beyond) == (
        len(settled),
        1 + len(later),
    )
    # Every account the rebuild has is compared, taken back to the cut-off on the live side.
    (accounts,) = await query(dsn, rebuilt, "SELECT count(*) FROM account_balances")
    assert counts["account_balances"].compared == accounts[0]

    # A change by hand to a payment that did not move is found, and so is one
    # to the balance of an account both halves of the log moved.
    accounts_before = {p.account for d in settled for e in d.events for p in e.payload.postings}
    accounts_after = {p.account for d in later for e in d.events for p in e.payload.postings}
    busy = sorted(accounts_before & accounts_after)[0]
    target = settled[0]
    await execute(
        dsn,
        live,
        f"UPDATE payments SET status = 'REFUNDED' WHERE payment_id = '{target.payment_id}'",
        f"UPDATE account_balances SET credit_minor = credit_minor + 5 WHERE account = '{busy}'",
    )
    comparison = await asyncio.to_thread(rebuilding.diff, dsn, live, rebuilt, topic, ends)
    found = sorted(
        (f.table, dict(f.key), f.column, f.live_value, f.rebuilt_value, f.kind.value)
        for f in comparison.findings
    )
    (credit, total) = (
        await query(
            dsn,
            rebuilt,
            "SELECT credit_minor, balance_minor FROM account_balances WHERE account = %s",
            (busy,),
        )
    )[0]
    assert found == [
        (
            "account_balances",
            {"account": busy, "currency": "EUR"},
            "balance_minor",
            total - 5,
            total,
            "different",
        ),
        (
            "account_balances",
            {"account": busy, "currency": "EUR"},
            "credit_minor",
            credit + 5,
            credit,
            "different",
        ),
        (
            "payments",
            {"payment_id": target.payment_id},
            "status",
            "REFUNDED",
            "SUCCEEDED",
            "different",
        ),
    ]


async def test_a_live_schema_behind_is_one_difference_per_partition(
    settings, live, rebuilt
) -> None:
    dsn = settings.dsn()
    topic = events_topic(settings)
    first = await publish(settings, envelopes_of([stripe_succeeded(payment_id())]))
    await project(settings, live, ends_of(first))
    second = await publish(settings, envelopes_of([stripe_succeeded(payment_id())]))
    # The live applier is not running: the live schema stays at the first payment.

    ends = await rebuilding.end_offsets(settings, topic)
    await rebuilding.prepare(dsn, rebuilt, live, replace=False)
    replayed = await rebuilding.replay(settings, rebuilt, ends)
    assert replayed.positions == ends_of([*first, *second])
    assert not await rebuilding.wait_for_live(dsn, live, topic, replayed.positions, 0)
    comparison = await asyncio.to_thread(rebuilding.diff, dsn, live, rebuilt, topic, ends)

    live_at = ends_of(first)
    behind = {p: end for p, end in ends_of([*first, *second]).items() if live_at.get(p, 0) < end}
    assert behind
    assert sorted(
        (dict(f.key)["partition"], f.column, f.live_value, f.rebuilt_value, f.kind.value)
        for f in comparison.findings
    ) == sorted(
        (p, "next_offset", live_at[p], end, "different")
        if p in live_at
        else (
            p,
            None,
            None,
            {"topic": topic, "partition": p, "next_offset": end},
            "missing-in-live",
        )
        for p, end in behind.items()
    )
    counts = {count.table: count for count in comparison.tables}
    assert (counts["payment_events"].compared, counts["payment_events"].beyond) == (
        len(first),
        len(second),
    )

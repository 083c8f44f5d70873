"""The auditor's comparison of the live projections with the log, against the real Kafka
and Postgres.

Each test publishes signed payment events on a topic prefix of its own and
projects them with the applier into a live schema of its own (the settings'
``projections_schema``); the balances the auditor would replay are summed from
the same events' postings. Then ``projections.audit`` compares: untouched, after
rows were altered by hand (as someone with database access would), with
replayed balances that lack a posting, and with a live schema that is behind.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import psycopg
import pytest
from pydantic import SecretStr

from ledger.audit import Balances, Check, Report
from ledger.config import Settings
from ledger.keystore import KeyStore
from projections.audit import compare_balances, compare_rebuild
from streams.provision import provision_topics
from streams.publisher import Published
from tests.integration.test_projections_applier import (
    drop_schema,
    ends_of,
    events_topic,
    project,
    publish,
    query,
)
from tests.integration.test_projections_rebuild import execute
from tests.unit.test_projections import SCENARIOS, Driver, stripe_succeeded

pytestmark = pytest.mark.integration

# Long enough for a shared, busy machine: a check that passes never waits it out.
WAIT_S = 60.0


@pytest.fixture
def live() -> str:
    return f"pa_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def settings(tmp_path: Path, live: str) -> AsyncIterator[Settings]:
    settings = Settings(
        topic_prefix=f"a{uuid.uuid4().hex[:10]}.", state_dir=tmp_path, projections_schema=live
    )
    report = await provision_topics(settings)
    assert report.ok, report.mismatches
    KeyStore(settings).active_key()
    yield settings
    await drop_schema(settings.dsn(), live)


@pytest.fixture
async def scratch(settings: Settings) -> AsyncIterator[str]:
    name = f"ps_{uuid.uuid4().hex[:12]}"
    yield name
    await drop_schema(settings.dsn(), name)


def payment_id() -> str:
    return f"pay_{uuid.uuid4().hex[:12]}"


def all_partitions(settings: Settings, ends: dict[int, int]) -> dict[int, int]:
    """``ends`` for every partition, as the auditor fixes them (0 where nothing was written)."""
    return {p: ends.get(p, 0) for p in range(settings.topic_partitions)}


def replayed(drivers: Sequence[Driver], *, skip: tuple[int, int, int] | None = None) -> Balances:
    """The postings of every driver's events summed as the auditor sums them.

    ``skip`` = (driver, event, leg): that one posting is left out.
    """
    balances = Balances()
    for d, driver in enumerate(drivers):
        for e, event in enumerate(driver.events):
            postings = list(event.payload.postings)
            if skip is not None and skip[:2] == (d, e):
                del postings[skip[2]]
            balances.apply(postings)
    return balances


async def publish_and_project(
    settings: Settings, drivers: Sequence[Driver], before: Sequence[Published] = ()
) -> tuple[list[Published], dict[int, int]]:
    published = await publish(settings, [e for driver in drivers for e in driver.envelopes()])
    ends = all_partitions(settings, ends_of([*before, *published]))
    await project(settings, settings.projections_schema, ends)
    return published, ends


async def schema_exists(settings: Settings, name: str) -> bool:
    async with await psycopg.AsyncConnection.connect(settings.dsn()) as connection:
        cursor = await connection.execute(
            "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = %s)", (name,)
        )
        row = await cursor.fetchone()
        return bool(row and row[0])


def where_of(report: Report) -> list[tuple[str | None, str, str]]:
    return sorted((f.where, f.reason, f.detail) for f in report.findings)


async def test_untouched_projections_agree_with_the_log_even_after_the_live_moved_on(
    settings, scratch
) -> None:
    first = [scenario(payment_id()) for scenario in SCENARIOS] + [stripe_succeeded(payment_id())]
    published, ends = await publish_and_project(settings, first)
    # The live applier goes on past the auditor's ends: the same merchant's
    # accounts take more entries, beyond the cut-off.
    later = [stripe_succeeded(payment_id()) for _ in range(2)]
    more, ends_later = await publish_and_project(settings, later, published)
    assert ends_later != ends

    behind = await compare_balances(settings, replayed(first), ends, wait_s=WAIT_S)

    assert behind.findings == [] and behind.errors == [], behind.to_json()
    accounts = len(replayed(first).rows())
    assert behind.checked[Check.BALANCES] == accounts
    assert behind.facts == {
        "balances_compared": accounts,
        "balances_table": "taken back to the cut-off",
    }
    assert behind.exit_code == 0

    everything = replayed([*first, *later])
    level = await compare_balances(settings, everything, ends_later, wait_s=WAIT_S)
    assert level.ok, level.to_json()
    assert level.facts["balances_table"] == "as stored"
    assert level.checked[Check.BALANCES] == len(everything.rows())

    rebuilt = await compare_rebuild(settings, scratch, wait_s=WAIT_S)

    assert rebuilt.findings == [] and rebuilt.errors == [], rebuilt.to_json()
    events = len(published) + len(more)
    assert rebuilt.facts["projection_events_replayed"] == events
    assert rebuilt.facts["projection_rows_compared.payment_events"] == events
    assert rebuilt.facts["projection_rows_compared.payments"] == len(first) + len(later)
    assert rebuilt.checked[Check.PROJECTION] == rebuilt.facts["projection_rows_compared"]
    assert not await schema_exists(settings, scratch)  # dropped afterwards


async def test_rows_altered_in_postgres_are_found_with_their_location(settings, scratch) -> None:
    drivers = [scenario(payment_id()) for scenario in SCENARIOS] + [stripe_succeeded(payment_id())]
    published, ends = await publish_and_project(settings, drivers)
    live = settings.projections_schema
    dsn = settings.dsn()
    [(account, currency, debit, credit)] = await query(
        dsn,
        live,
        "SELECT account, currency, debit_minor, credit_minor FROM account_balances"
        " WHERE debit_minor > 0 ORDER BY account, currency LIMIT 1",
    )
    altered_payment = drivers[-1].payment_id
    newest = max(
        (p for p in published if p.envelope.aggregate_id == altered_payment),
        key=lambda p: p.envelope.sequence,
    )
    noted = published[0]
    [(note,)] = await query(
        dsn, live, "SELECT note FROM payment_events WHERE event_id = %s", (noted.envelope.event_id,)
    )
    # The append-only trigger refuses an UPDATE of an event: someone owning
    # the tables switches it off around their edit.
    await execute(
        dsn,
        live,
        "UPDATE account_balances SET debit_minor = debit_minor + 7"
        f" WHERE account = '{account}' AND currency = '{currency}'",
        f"UPDATE payments SET status = 'REFUNDED' WHERE payment_id = '{altered_payment}'",
        "ALTER TABLE payment_events DISABLE TRIGGER payment_events_append_only",
        f"UPDATE payment_events SET note = 'edited' WHERE event_id = '{noted.envelope.event_id}'",
        "ALTER TABLE payment_events ENABLE TRIGGER payment_events_append_only",
    )
    topic = events_topic(settings)
    balance_row = f"{live}.account_balances account={account} currency={currency}"

    balances = await compare_balances(settings, replayed(drivers), ends, wait_s=WAIT_S)

    assert [
        (f.topic, f.partition, f.offset, f.event_id, f.check, f.where, f.reason, f.detail)
        for f in balances.findings
    ] == [
        (
            topic,
            -1,
            -1,
            None,
            Check.BALANCES,
            balance_row,
            "differs",
            f"debit {debit + 7} credit {credit} live vs debit {debit} credit {credit} replayed",
        )
    ]
    assert balances.errors == []
    assert balances.exit_code == 1

    rebuilt = await compare_rebuild(settings, scratch, wait_s=WAIT_S)

    assert rebuilt.errors == []
    found = {
        (f.where, f.detail): (f.reason, f.topic, f.partition, f.offset, f.event_id)
        for f in rebuilt.findings
    }
    no_record = ("different", "", -1, -1, None)
    assert found == {
        (balance_row, f"debit_minor: live {debit + 7} vs rebuilt {debit}"): no_record,
        (
            balance_row,
            f"balance_minor: live {debit + 7 - credit} vs rebuilt {debit - credit}",
        ): no_record,
        (
            f"{live}.payments payment_id={altered_payment}",
            'status: live "REFUNDED" vs rebuilt "SUCCEEDED"',
        ): ("different", topic, newest.partition, newest.offset, newest.envelope.event_id),
        (
            f"{live}.payment_events event_id={noted.envelope.event_id}",
            f'note: live "edited" vs rebuilt {json.dumps(note)}',
        ): ("different", topic, noted.partition, noted.offset, noted.envelope.event_id),
    }
    assert all(f.check is Check.PROJECTION for f in rebuilt.findings)
    assert rebuilt.exit_code == 1
    assert not await schema_exists(settings, scratch)


async def test_replayed_balances_without_a_posting_name_the_account(settings, scratch) -> None:
    drivers = [scenario(payment_id()) for scenario in SCENARIOS]
    _, ends = await publish_and_project(settings, drivers)
    whole = {(row.account, row.currency): row for row in replayed(drivers).rows()}
    # Leave out the first leg of the first event that has postings.
    d, e = next(
        (d, e)
        for d, driver in enumerate(drivers)
        for e, event in enumerate(driver.events)
        if event.payload.postings
    )
    left_out = drivers[d].events[e].payload.postings[0]
    short = replayed(drivers, skip=(d, e, 0))
    key = (left_out.account, left_out.currency)

    report = await compare_balances(settings, short, ends, wait_s=WAIT_S)

    live = settings.projections_schema
    row = whole[key]
    if key in {(r.account, r.currency) for r in short.rows()}:
        then = short.get(*key)
        expected = (
            "differs",
            f"debit {row.debit_minor} credit {row.credit_minor} live"
            f" vs debit {then.debit_minor} credit {then.credit_minor} replayed",
        )
    else:
        expected = (
            "missing-replayed",
            f"debit {row.debit_minor} credit {row.credit_minor} live vs no posting replayed",
        )
    account, currency = key
    assert where_of(report) == [
        (f"{live}.account_balances account={account} currency={currency}", *expected),
        (f"{live}.ledger_entries account={account} currency={currency}", *expected),
    ]
    assert report.checked[Check.BALANCES] == len(whole) - 1 + 2
    assert report.exit_code == 1


async def test_a_live_schema_behind_the_ends_is_an_error_not_a_finding(settings, scratch) -> None:
    drivers = [stripe_succeeded(payment_id())]
    _, ends = await publish_and_project(settings, drivers)
    beyond = {p: end + 3 for p, end in ends.items()}

    report = await compare_balances(settings, replayed(drivers), beyond, wait_s=0.5)

    assert report.findings == []
    [error] = report.errors
    assert f"live schema {settings.projections_schema} has not applied" in error
    assert "0:" in error and "after 0.5 s" in error
    assert report.checked[Check.BALANCES] == 0
    assert report.exit_code == 2


async def test_what_prevents_a_comparison_is_an_error(settings, scratch) -> None:
    # Nothing listens on port 1: Postgres cannot be reached.
    unreachable = settings.model_copy(
        update={"postgres_dsn": SecretStr("postgresql://audit@127.0.0.1:1/payledger")}
    )
    balances = await compare_balances(unreachable, Balances(), {0: 0}, wait_s=0.5)
    assert balances.findings == [] and balances.exit_code == 2
    assert balances.errors[0].startswith("balances not compared: live schema ")

    rebuilt = await compare_rebuild(unreachable, scratch)
    assert rebuilt.findings == [] and rebuilt.exit_code == 2
    assert rebuilt.errors[0].startswith(f"projections not rebuilt into {scratch}: ")

    # The live schema was never migrated: nothing to compare with.
    unmigrated = await compare_rebuild(settings, scratch)
    assert unmigrated.exit_code == 2
    assert "is not a projections schema" in unmigrated.errors[0]

    # A rebuild never goes into the live schema.
    itself = await compare_rebuild(settings, settings.projections_schema)
    assert itself.exit_code == 2
    assert "is the live schema" in itself.errors[0]

"""The auditor's view of the live projections: balances and a full rebuild, as audit findings.

``payledger audit verify`` replays the payment-events topic itself, from
offset 0 up to end offsets it fixed at its start (``ends``: partition -> the
first offset NOT read), and sums every posting into ``ledger.audit.Balances``.
Two checks then hold the live Postgres read models against the log; each
returns a fresh ``ledger.audit.Report`` for the caller to merge.

``compare_balances`` (``Check.BALANCES``)
    Waits until the live schema has applied payment-events up to ``ends``
    (its stored consumer positions; a schema still behind after ``wait_s`` is
    an error -- the check could not run -- not a finding). Then, in ONE
    read-only REPEATABLE READ transaction, so positions, entries and balances
    are seen at one instant, the live side is read twice over:

    * ``ledger_entries``: summed per account and currency over the events
      inside the cut-off -- those whose source record is below ``ends``, and
      those from any other topic (the replay never has them: they show up as
      ``missing-replayed``);
    * ``account_balances``: the table itself, taken back to the cut-off. The
      live applier may have gone on past ``ends`` meanwhile; each row then
      loses the debits, credits and entry count of its own entries of events
      beyond the cut-off. That is exact: entries are append-only, and the
      balances are their sums, kept by a trigger in the transaction writing
      them (``projections.rebuild`` does the same). When the live positions
      are exactly ``ends`` nothing is taken off: the table is compared as
      stored (fact ``balances_table``).

    Each (account, currency) is compared with the replay, debit and credit
    totals; each live source that disagrees is one finding
    (``differs``, ``missing-live``, ``missing-replayed``), and a table row
    whose ``entries_count`` is not the number of its entries is ``differs``
    too. An account in agreement counts once as passed.

``compare_rebuild`` (``Check.PROJECTION``)
    Runs ``projections.rebuild`` into a scratch schema (replay from offset 0,
    wait for the live schema, diff every table inside the cut-off) and turns
    each difference into a finding named by its live table and primary key.
    A row that comes from one record (``payment_events``,
    ``processed_events``, ``ledger_entries``: keyed by event id) carries that
    record's topic, partition and offset, read from the rebuilt schema -- it
    holds what the log says -- else from the live one; a ``payments`` or
    ``payment_fees`` row carries the payment's newest event in the rebuilt
    schema, the record its state follows. Anything else has no record:
    ``""`` / -1 / -1. A live schema still behind the rebuild's end offsets
    after ``wait_s`` leaves part of the log uncompared: the rows below the
    cut-off are still judged, and the rest is an error. The scratch schema
    is dropped afterwards unless ``keep``, and only when it is this call's
    to drop (``_droppable``).

Errors that stop a check (Postgres or Kafka unreachable, a refused rebuild)
become ``report.error``, never an exception and never a finding.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from aiokafka.errors import KafkaError
from psycopg import sql

from ledger.audit import Balances, Check, Finding, Report
from ledger.config import Settings
from ledger.errors import LedgerError
from ledger.topics import TopicRole, topic_name
from projections import limits, rebuild, store
from projections.migrations import check_schema_name

log = logging.getLogger(__name__)

# How long compare_balances waits, by default, for the live schema to reach ``ends``.
BALANCES_WAIT_S_DEFAULT: Final = 60.0
# Errors of Postgres, Kafka or the rebuild that stop a check from running.
_UNAVAILABLE: Final = (psycopg.Error, KafkaError, LedgerError, OSError, TimeoutError)

Account = tuple[str, str]  # (account, currency)


# The comparison of balances. Pure. ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sums:
    """Debit and credit totals of one account and currency; ``entries`` when counted."""

    debit_minor: int
    credit_minor: int
    entries: int | None = None

    def text(self) -> str:
        return f"debit {self.debit_minor} credit {self.credit_minor}"


@dataclass(frozen=True, slots=True)
class LiveBalances:
    """The live schema's balances inside the cut-off, read in one snapshot."""

    schema: str
    positions: Mapping[int, int]  # partition -> the live schema's next offset
    entries: Mapping[Account, Sums]  # ledger entries of the events inside the cut-off
    table: Mapping[Account, Sums]  # account_balances, taken back to the cut-off
    taken_back: bool  # the table held entries of events beyond the cut-off


def replayed_sums(replayed: Balances) -> dict[Account, Sums]:
    return {
        (row.account, row.currency): Sums(row.debit_minor, row.credit_minor)
        for row in replayed.rows()
    }


def judge_balances(topic: str, replayed: Mapping[Account, Sums], live: LiveBalances) -> Report:
    """One finding per live source disagreeing with the replay, per account and currency."""
    report = Report()
    keys = sorted(set(replayed) | set(live.entries) | set(live.table))
    for key in keys:
        account, currency = key
        where = {
            table: f"{live.schema}.{table} account={account} currency={currency}"
            for table in ("account_balances", "ledger_entries")
        }
        row, entries, theirs = live.table.get(key), live.entries.get(key), replayed.get(key)
        found = [
            finding
            for finding in (
                _difference(topic, where["account_balances"], row, theirs),
                _difference(topic, where["ledger_entries"], entries, theirs),
            )
            if finding is not None
        ]
        if not found and row is not None and entries is not None and row.entries != entries.entries:
            detail = f"entries_count {row.entries} vs {entries.entries} ledger entries"
            found.append(_balance_finding(topic, where["account_balances"], "differs", detail))
        for finding in found:
            report.add(finding)
        if not found:
            report.passed(Check.BALANCES)
    report.facts["balances_compared"] = len(keys)
    report.facts["balances_table"] = "taken back to the cut-off" if live.taken_back else "as stored"
    return report


def _difference(topic: str, where: str, mine: Sums | None, theirs: Sums | None) -> Finding | None:
    """The finding when the live sums ``mine`` are not the replayed ``theirs``."""
    if mine is None and theirs is None:
        return None
    if mine is None:
        assert theirs is not None
        reason, detail = "missing-live", f"no live row vs {theirs.text()} replayed"
    elif theirs is None:
        reason, detail = "missing-replayed", f"{mine.text()} live vs no posting replayed"
    elif (mine.debit_minor, mine.credit_minor) != (theirs.debit_minor, theirs.credit_minor):
        reason, detail = "differs", f"{mine.text()} live vs {theirs.text()} replayed"
    else:
        return None
    return _balance_finding(topic, where, reason, detail)


def _balance_finding(topic: str, where: str, reason: str, detail: str) -> Finding:
    return Finding(
        topic=topic,
        partition=-1,
        offset=-1,
        event_id=None,
        check=Check.BALANCES,
        reason=reason,
        detail=detail,
        where=where,
    )


def take_back(table: Mapping[Account, Sums], beyond: Mapping[Account, Sums]) -> dict[Account, Sums]:
    """``account_balances`` rows as of the cut-off: minus the entries of events beyond it.

    A row that comes back to nothing did not exist at the cut-off.
    """
    back: dict[Account, Sums] = {}
    for key, row in table.items():
        off = beyond.get(key, Sums(0, 0, 0))
        then = Sums(
            row.debit_minor - off.debit_minor,
            row.credit_minor - off.credit_minor,
            (row.entries or 0) - (off.entries or 0),
        )
        if (then.debit_minor, then.credit_minor, then.entries) != (0, 0, 0):
            back[key] = then
    return back


# The rebuild's differences as findings. Pure. ---------------------------------------


@dataclass(frozen=True, slots=True)
class Source:
    """The record a row comes from."""

    topic: str
    partition: int
    offset: int
    event_id: str | None


NO_SOURCE: Final = Source("", -1, -1, None)


def projection_findings(
    comparison: rebuild.Comparison,
    live: str,
    events: Mapping[str, Source],
    payments: Mapping[str, Source],
) -> Report:
    """Every difference of the rebuild as a finding; every row compared without one, passed.

    ``events``: event id -> its record; ``payments``: payment id -> its newest event's record.
    """
    report = Report()
    differing: dict[str, set[tuple[Any, ...]]] = {}
    for difference in comparison.findings:
        report.add(_projection_finding(difference, live, events, payments))
        if difference.key:
            differing.setdefault(difference.table, set()).add(
                tuple(_plain(value) for value in difference.key.values())
            )
    compared = beyond = 0
    for count in comparison.tables:
        # Rows compared and found equal; those that differ were counted by ``add``.
        report.checked[Check.PROJECTION] += max(
            count.compared - len(differing.get(count.table, ())), 0
        )
        report.facts[f"projection_rows_compared.{count.table}"] = count.compared
        compared += count.compared
        beyond += count.beyond
    report.facts["projection_rows_compared"] = compared
    report.facts["projection_rows_beyond_cutoff"] = beyond
    return report


def _projection_finding(
    difference: rebuild.Finding,
    live: str,
    events: Mapping[str, Source],
    payments: Mapping[str, Source],
) -> Finding:
    source = _source_of(difference, events, payments)
    key = " ".join(f"{name}={_plain(value)}" for name, value in difference.key.items())
    where = f"{live}.{difference.table}" + (f" {key}" if key else "")
    return Finding(
        topic=source.topic,
        partition=source.partition,
        offset=source.offset,
        event_id=source.event_id,
        check=Check.PROJECTION,
        reason=difference.kind.value,
        detail=_detail(difference),
        where=where,
    )


def _source_of(
    difference: rebuild.Finding, events: Mapping[str, Source], payments: Mapping[str, Source]
) -> Source:
    event_id = difference.key.get("event_id")
    if event_id is not None:
        known = events.get(str(event_id))
        if known is not None:
            return known
        # A row only one side holds carries its own source columns, when it has them.
        row = (
            difference.live_value if difference.live_value is not None else difference.rebuilt_value
        )
        if isinstance(row, Mapping) and {
            "source_topic",
            "source_partition",
            "source_offset",
        } <= set(row):
            return Source(
                row["source_topic"], row["source_partition"], row["source_offset"], str(event_id)
            )
        return Source("", -1, -1, str(event_id))
    payment_id = difference.key.get("payment_id")
    if payment_id is not None:
        return payments.get(str(payment_id), NO_SOURCE)
    if difference.table == "consumer_positions" and {"topic", "partition"} <= set(difference.key):
        return Source(str(difference.key["topic"]), int(difference.key["partition"]), -1, None)
    return NO_SOURCE


def _detail(difference: rebuild.Finding) -> str:
    thing = difference.column or ("row" if difference.key else "table")
    match difference.kind:
        case rebuild.Kind.DIFFERENT:
            return (
                f"{thing}: live {_json(difference.live_value)}"
                f" vs rebuilt {_json(difference.rebuilt_value)}"
            )
        case rebuild.Kind.MISSING_IN_LIVE:
            return f"{thing} only in the rebuilt schema: {_json(difference.rebuilt_value)}"
        case _:
            return f"{thing} only in the live schema: {_json(difference.live_value)}"


def _plain(value: Any) -> Any:
    plain = rebuild.jsonable(value)
    return plain if isinstance(plain, str | int | bool | None) else json.dumps(plain)


def _json(value: Any) -> str:
    return json.dumps(rebuild.jsonable(value), sort_keys=True)


def keyed_ids(comparison: rebuild.Comparison, column: str) -> list[str]:
    """The distinct values of one key column among the differences, as text."""
    return sorted(
        {str(f.key[column]) for f in comparison.findings if f.key.get(column) is not None}
    )


# I/O: Postgres, the rebuild. ---------------------------------------------------------


async def compare_balances(
    settings: Settings,
    replayed: Balances,
    ends: Mapping[int, int],
    *,
    schema: str | None = None,
    wait_s: float = BALANCES_WAIT_S_DEFAULT,
) -> Report:
    """The live balances inside ``ends`` against the ``replayed`` ones (module docstring)."""
    live = schema or settings.projections_schema
    topic = topic_name(settings, TopicRole.PAYMENT_EVENTS)
    dsn = settings.dsn()
    try:
        check_schema_name(live)
        reached = await rebuild.wait_for_live(dsn, live, topic, ends, wait_s)
        if not reached:
            positions = await _positions(dsn, live, topic)
            report = Report()
            report.error(
                f"balances not compared: live schema {live} has not applied {topic} up to"
                f" {_offsets(ends)} after {wait_s:g} s (it is at {_offsets(positions)})"
            )
            return report
        balances = await read_live_balances(dsn, live, topic, ends)
    except _UNAVAILABLE as error:
        report = Report()
        report.error(f"balances not compared: live schema {live}: {_reason(error)}")
        return report
    return judge_balances(topic, replayed_sums(replayed), balances)


async def read_live_balances(
    dsn: str, schema: str, topic: str, ends: Mapping[int, int]
) -> LiveBalances:
    """Entries and balances of ``schema`` inside the cut-off ``ends``, in one snapshot."""
    partitions = sorted(ends)
    connection = await store.connect(dsn, schema)
    try:
        await connection.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
        await connection.set_read_only(True)
        async with connection.transaction():
            cursor = await connection.execute(
                sql.SQL("SELECT partition, next_offset FROM {} WHERE topic = %s").format(
                    sql.Identifier(schema, "consumer_positions")
                ),
                (topic,),
            )
            positions = {partition: offset for partition, offset in await cursor.fetchall()}
            cursor = await connection.execute(
                sql.SQL(
                    "SELECT e.account, e.currency,"
                    " (p.source_topic <> %(topic)s"
                    "  OR p.source_offset < coalesce(c.end_offset, 0)) AS inside,"
                    " coalesce(sum(e.amount_minor) FILTER (WHERE e.side = 'DEBIT'), 0)::bigint,"
                    " coalesce(sum(e.amount_minor) FILTER (WHERE e.side = 'CREDIT'), 0)::bigint,"
                    " count(*)"
                    " FROM {entries} AS e JOIN {events} AS p ON p.event_id = e.event_id"
                    " LEFT JOIN unnest(%(partitions)s::integer[], %(ends)s::bigint[])"
                    "  AS c (partition, end_offset) ON c.partition = p.source_partition"
                    " GROUP BY 1, 2, 3"
                ).format(
                    entries=sql.Identifier(schema, "ledger_entries"),
                    events=sql.Identifier(schema, "payment_events"),
                ),
                {
                    "topic": topic,
                    "partitions": partitions,
                    "ends": [ends[p] for p in partitions],
                },
            )
            inside: dict[Account, Sums] = {}
            beyond: dict[Account, Sums] = {}
            for account, currency, within, debit, credit, count in await cursor.fetchall():
                (inside if within else beyond)[(account, currency)] = Sums(debit, credit, count)
            cursor = await connection.execute(
                sql.SQL(
                    "SELECT account, currency, debit_minor, credit_minor, entries_count FROM {}"
                ).format(sql.Identifier(schema, "account_balances"))
            )
            table = {
                (account, currency): Sums(debit, credit, count)
                for account, currency, debit, credit, count in await cursor.fetchall()
            }
    finally:
        await connection.close()
    return LiveBalances(schema, positions, inside, take_back(table, beyond), bool(beyond))


async def _positions(dsn: str, schema: str, topic: str) -> dict[int, int]:
    connection = await store.connect(dsn, schema)
    try:
        return await store.stored_positions(connection, topic)
    finally:
        await connection.close()


async def compare_rebuild(
    settings: Settings,
    scratch_schema: str,
    *,
    live: str | None = None,
    wait_s: float = rebuild.LIVE_WAIT_S_DEFAULT,
    keep: bool = False,
    replace: bool = False,
    stop: asyncio.Event | None = None,
) -> Report:
    """Rebuild ``scratch_schema`` from the log and diff it with the live schema, as findings.

    ``live`` defaults to ``settings.projections_schema``; ``replace`` lets the
    rebuild drop a scratch projections schema that holds data first; setting
    ``stop`` ends the rebuild early (an error in the report).
    """
    live = live or settings.projections_schema
    dsn = settings.dsn()
    report = Report()
    try:
        rebuild.check_names(scratch_schema, live)
        existed = await _schema_exists(dsn, scratch_schema)
    except _UNAVAILABLE as error:
        report.error(f"projections not rebuilt into {scratch_schema}: {_reason(error)}")
        return report
    done: rebuild.Report | None = None
    events: dict[str, Source] = {}
    payments: dict[str, Source] = {}
    try:
        done = await rebuild.run(
            settings, scratch_schema, live=live, replace=replace, live_wait_s=wait_s, stop=stop
        )
        # Located before the scratch schema is dropped: it holds what the log says.
        events = await _event_sources(
            dsn, (scratch_schema, live), keyed_ids(done.comparison, "event_id")
        )
        payments = await _payment_sources(
            dsn, scratch_schema, keyed_ids(done.comparison, "payment_id")
        )
    except _UNAVAILABLE as error:
        what = "not rebuilt into" if done is None else "differences not located in"
        report.error(f"projections {what} {scratch_schema}: {_reason(error)}")
    finally:
        if not keep:
            await _drop_scratch(dsn, scratch_schema, live, existed=existed, rebuilt=done)
    if done is None:
        return report
    report.merge(projection_findings(done.comparison, live, events, payments))
    cutoff = done.comparison.cutoff
    # Where the rebuild got to: past its last record, not past the transaction
    # markers that may follow it (the end offsets), which no applier stores.
    reached = done.replayed.positions
    behind = {p: end for p, end in reached.items() if cutoff.live_positions.get(p, 0) < end}
    if behind:
        report.error(
            f"projections compared only below {_offsets({p: cutoff.cut(p) for p in done.ends})}:"
            f" live schema {live} had not applied {done.topic} up to {_offsets(behind)}"
            f" after {wait_s:g} s"
        )
    report.facts["projection_events_replayed"] = done.replayed.totals.applied
    return report


async def _schema_exists(dsn: str, schema: str) -> bool:
    async with await psycopg.AsyncConnection.connect(
        dsn, autocommit=True, connect_timeout=limits.POSTGRES_CONNECT_TIMEOUT_S
    ) as connection:
        cursor = await connection.execute(
            "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = %s)", (schema,)
        )
        row = await cursor.fetchone()
        return bool(row and row[0])


async def _event_sources(
    dsn: str, schemas: Sequence[str], event_ids: Sequence[str]
) -> dict[str, Source]:
    """Event id -> its record, from the first of ``schemas`` that holds the event."""
    found: dict[str, Source] = {}
    if not event_ids:
        return found
    for schema in schemas:
        wanted = [event_id for event_id in event_ids if event_id not in found]
        rows = await _select(
            dsn,
            sql.SQL(
                "SELECT event_id::text, source_topic, source_partition, source_offset FROM {}"
                " WHERE event_id = ANY(%s::uuid[])"
            ).format(sql.Identifier(schema, "payment_events")),
            (wanted,),
        )
        for event_id, topic, partition, offset in rows:
            found[event_id] = Source(topic, partition, offset, event_id)
    return found


async def _payment_sources(dsn: str, schema: str, payment_ids: Sequence[str]) -> dict[str, Source]:
    """Payment id -> the record of its newest event in ``schema``."""
    if not payment_ids:
        return {}
    rows = await _select(
        dsn,
        sql.SQL(
            "SELECT DISTINCT ON (payment_id) payment_id, event_id::text,"
            " source_topic, source_partition, source_offset FROM {}"
            " WHERE payment_id = ANY(%s::text[]) ORDER BY payment_id, sequence DESC"
        ).format(sql.Identifier(schema, "payment_events")),
        (list(payment_ids),),
    )
    return {
        payment_id: Source(topic, partition, offset, event_id)
        for payment_id, event_id, topic, partition, offset in rows
    }


async def _select(dsn: str, query: sql.Composed, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(
        dsn, autocommit=True, connect_timeout=limits.POSTGRES_CONNECT_TIMEOUT_S
    ) as connection:
        cursor = await connection.execute(query, params)
        return await cursor.fetchall()


async def _drop_scratch(
    dsn: str, schema: str, live: str, *, existed: bool, rebuilt: rebuild.Report | None
) -> None:
    """Drop the scratch schema when this call may: see ``_droppable``. Never raises."""
    try:
        async with await psycopg.AsyncConnection.connect(
            dsn, autocommit=True, connect_timeout=limits.POSTGRES_CONNECT_TIMEOUT_S
        ) as connection:
            if not await _droppable(connection, schema, live, existed=existed, rebuilt=rebuilt):
                log.warning(
                    "scratch schema %s left in place: it was not made by this audit", schema
                )
                return
            await connection.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
            )
    except (psycopg.Error, OSError) as error:
        log.warning("scratch schema %s not dropped: %s", schema, error)


async def _droppable(
    connection: store.Connection,
    schema: str,
    live: str,
    *,
    existed: bool,
    rebuilt: rebuild.Report | None,
) -> bool:
    """True when the scratch schema is this call's to drop.

    It is when the call created it; or when the rebuild succeeded in it --
    it then held no rows before, or was a projections schema dropped and
    rebuilt (``replace``) -- and every table it holds is one the live schema
    has too, so nothing else lives in it. A schema the rebuild refused is
    never dropped.
    """
    assert schema != live
    if not existed:
        return True
    if rebuilt is None:
        return False
    cursor = await connection.execute(
        "SELECT c.relname FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f')"
        " EXCEPT SELECT c.relname FROM pg_class AS c"
        " JOIN pg_namespace AS n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relkind IN ('r', 'p')",
        (schema, live),
    )
    return not await cursor.fetchall()


def _offsets(offsets: Mapping[int, int]) -> str:
    return " ".join(f"{p}:{o}" for p, o in sorted(offsets.items())) or "(no partitions)"


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".strip().rstrip(":")

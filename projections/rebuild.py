"""``payledger projections rebuild``: replay payment-events into a fresh schema, diff with live.

The steps, in order:

1. The names are checked: the rebuild never goes into the live schema (nor
   the one the ingress reads, ``PAYLEDGER_PROJECTIONS_SCHEMA``), and never
   into a schema that holds data, unless ``--replace`` -- which drops it
   first, and only when it is a projections schema (its
   ``schema_migrations`` records projections migrations and nothing else).
2. The end offsets of payment-events are read as a ``read_committed``
   consumer sees them (the last stable offsets): ``E``, per partition. Only
   records below ``E`` are replayed, so what is published meanwhile does not
   move the target.
3. The schema is migrated and the applier runs on it from offset 0 with two
   changes: its reader stops at ``E`` (a record at or past it is never
   applied, and the applier stops once every partition is read up to it),
   and its publisher publishes nothing. The audit facts and dead letters of
   the records not applied were published by the live applier when it read
   the same records; they are counted ("withheld"), not published again, and
   no key endorsement is published either. Everything else -- verification,
   planning, the rows, the positions -- is the live applier's own code.
4. If the live schema has not yet applied everything the rebuild did, the
   rebuild waits for it, at most ``--live-wait`` seconds.
5. Both schemas are read in ONE read-only REPEATABLE READ transaction (they
   are in one database), so the live schema is seen at one instant, its
   positions with the rows committed with them. Every table of either schema
   is compared by primary key (every column when a table has none), each
   side streamed in key order and merged.

What is compared
----------------

The live schema keeps applying records published after the rebuild started,
so it may be ahead of the rebuild; it may also be behind. The rebuild holds
the records below ``E``, the live schema those below its stored positions
``L``: both hold those below the cut-off ``C = min(E, L)``, partition by
partition, and the comparison is restricted to what follows from them:

* ``payment_events`` and ``processed_events``: a row is compared when its
  source record (``source_topic``, ``source_partition``, ``source_offset``)
  is below ``C``. A row from any other topic is always compared (the rebuild
  never has it: it is reported missing in the rebuild).
* ``ledger_entries``: when its event, in the same schema, is not beyond the
  cut-off.
* ``payments`` and ``payment_fees``: a payment's rows follow its newest
  event, so they are compared only when NEITHER schema holds an event of that
  payment beyond the cut-off; a payment that moved after the rebuild started
  is skipped (counted as beyond the cut-off), every other one is compared in
  full. Its ``created_at`` and ``updated_at`` come from the log, not from the
  applier's clock: they are compared.
* ``account_balances``: a busy account takes entries from almost every event,
  so skipping it would leave it never compared. Instead, each side's row is
  taken back to the cut-off: minus the debits, credits and entry count of
  that schema's own ledger entries of events beyond the cut-off (exact: the
  entries are append-only and the balances are their sums, kept by a trigger
  in the transaction that writes them). A row that comes back to zero, with
  no entries, did not exist at the cut-off.
* ``consumer_positions``: ``updated_at`` is not compared. On payment-events,
  the live position is correct when it is at or past the rebuild's own (the
  live schema may be ahead); a live position behind it -- records committed
  before the rebuild started and still not applied after the wait -- is a
  difference, reported once for the partition rather than once per row (the
  rows past ``L`` are beyond the cut-off). A live position on a partition the
  rebuild read nothing of is compared only when it is not past ``E``.
* ``schema_migrations``: every row; ``applied_at`` is not compared.
* Any other table (one a later migration adds, or one added by hand): every
  row, every column. A table or column only one schema has is a difference.

The columns never compared are those recording when the projection itself
ran: ``processed_events.applied_at``, ``consumer_positions.updated_at`` and
``schema_migrations.applied_at``.

Findings: a row only the rebuild holds is ``missing-in-live``, one only the
live schema holds ``missing-in-rebuild``, and each column whose values differ
is ``different``, named with every primary-key column of its row.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final
from uuid import UUID

import psycopg
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from psycopg import sql
from psycopg.rows import dict_row

from ledger.cloudevents import TraceContext
from ledger.codec import EnvelopeCodec
from ledger.config import Settings
from ledger.envelope import Envelope
from ledger.errors import LedgerError
from ledger.keyfeed import KeysFollower
from ledger.keystore import ActiveSigner, KeyStore
from ledger.publisher import Published, Publisher
from ledger.topics import TopicRole, topic_name
from ledger.verify import Verifier
from projections import facts, limits, store
from projections.applier import Applier, Totals
from projections.keys import keys_follower
from projections.migrations import (
    DEFAULT_SCHEMA,
    MIGRATIONS_TABLE,
    check_schema_name,
    migrate,
    migrations,
)
from projections.reader import Pause, Reader

log = logging.getLogger(__name__)

# How long the rebuild waits, by default, for the live schema to apply what
# the rebuild applied, and how often it looks.
LIVE_WAIT_S_DEFAULT: Final = 30.0
LIVE_WAIT_S_MAX: Final = 3_600.0
_LIVE_WAIT_POLL_S: Final = 0.2
# Reading the partitions and end offsets of payment-events.
KAFKA_TIMEOUT_S: Final = 30.0
# Rows fetched per round trip while streaming a table.
_FETCH_ROWS: Final = 2_000
# Differences listed in the human summary (``--json`` lists them all).
SUMMARY_FINDINGS_MAX: Final = 100


class RebuildError(LedgerError):
    """The rebuild was refused, or could not be completed."""


# The comparison. Pure: rows in, findings out. ----------------------------------

Row = dict[str, Any]


class Side(StrEnum):
    LIVE = "live"
    REBUILT = "rebuilt"


class Kind(StrEnum):
    MISSING_IN_LIVE = "missing-in-live"
    MISSING_IN_REBUILD = "missing-in-rebuild"
    DIFFERENT = "different"


@dataclass(frozen=True, slots=True)
class Finding:
    """One difference: a row (or table, or column) one side lacks, or one column's values."""

    table: str
    key: Mapping[str, Any]  # every primary-key column of the row; empty for a table or column
    column: str | None  # None for a whole row or table
    live_value: Any
    rebuilt_value: Any
    kind: Kind

    def to_json(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "key": jsonable(self.key),
            "column": self.column,
            "live_value": jsonable(self.live_value),
            "rebuilt_value": jsonable(self.rebuilt_value),
            "kind": self.kind.value,
        }


@dataclass(frozen=True, slots=True)
class Cutoff:
    """What both schemas cover: the records of ``topic`` below ``min(ends, live_positions)``."""

    topic: str
    ends: Mapping[int, int]  # partition -> the rebuild's end offset
    live_positions: Mapping[int, int]  # partition -> the live schema's next offset

    def cut(self, partition: int) -> int:
        return min(self.ends.get(partition, 0), self.live_positions.get(partition, 0))

    def covers(self, topic: str, partition: int, offset: int) -> bool:
        """True when a row from this record is compared."""
        return topic != self.topic or offset < self.cut(partition)


@dataclass(slots=True)
class _Beyond:
    """What one schema holds from records beyond the cut-off, gathered while comparing."""

    events: set[Any] = field(default_factory=set)  # event ids
    payments: set[str] = field(default_factory=set)
    # (account, currency) -> [debits, credits, entries] of those events' ledger entries
    entries: dict[tuple[str, str], list[int]] = field(default_factory=dict)


@dataclass(slots=True)
class _Scope:
    cutoff: Cutoff
    beyond: dict[Side, _Beyond] = field(
        default_factory=lambda: {Side.LIVE: _Beyond(), Side.REBUILT: _Beyond()}
    )


class _Rule:
    """How one table is compared. This default: every row, every column."""

    needs: frozenset[str] = frozenset()  # columns the rule reads

    def __init__(self, ignored: frozenset[str] = frozenset()) -> None:
        self.ignored = ignored  # columns never compared

    def observe(self, row: Row, side: Side, scope: _Scope) -> None:
        """Called for every row of the table, before it is judged."""

    def covers(self, row: Row, side: Side, scope: _Scope) -> bool:
        """True when the row is within what both schemas cover."""
        return True

    def view(self, row: Row, side: Side, scope: _Scope) -> Row | None:
        """The row as of the cut-off; None when it did not exist then."""
        return row

    def differing(
        self, live: Row, rebuilt: Row, columns: Sequence[str], scope: _Scope
    ) -> list[str]:
        return [column for column in columns if live[column] != rebuilt[column]]


class _FromRecord(_Rule):
    """One row per record read: compared when that record is below the cut-off."""

    needs = frozenset({"source_topic", "source_partition", "source_offset"})

    def covers(self, row: Row, side: Side, scope: _Scope) -> bool:
        return scope.cutoff.covers(
            row["source_topic"], row["source_partition"], row["source_offset"]
        )


class _PaymentEvents(_FromRecord):
    needs = _FromRecord.needs | {"event_id", "payment_id"}

    def observe(self, row: Row, side: Side, scope: _Scope) -> None:
        if not self.covers(row, side, scope):
            beyond = scope.beyond[side]
            beyond.events.add(row["event_id"])
            beyond.payments.add(row["payment_id"])


class _LedgerEntries(_Rule):
    needs = frozenset({"event_id", "account", "currency", "side", "amount_minor"})

    def observe(self, row: Row, side: Side, scope: _Scope) -> None:
        beyond = scope.beyond[side]
        if row["event_id"] in beyond.events:
            sums = beyond.entries.setdefault((row["account"], row["currency"]), [0, 0, 0])
            sums[0 if row["side"] == "DEBIT" else 1] += row["amount_minor"]
            sums[2] += 1

    def covers(self, row: Row, side: Side, scope: _Scope) -> bool:
        return row["event_id"] not in scope.beyond[side].events


class _PerPayment(_Rule):
    """Rows that follow a payment's newest event: compared when neither side moved past C."""

    needs = frozenset({"payment_id"})

    def covers(self, row: Row, side: Side, scope: _Scope) -> bool:
        return all(row["payment_id"] not in beyond.payments for beyond in scope.beyond.values())


class _AccountBalances(_Rule):
    needs = frozenset({"account", "currency", "debit_minor", "credit_minor", "entries_count"})

    def view(self, row: Row, side: Side, scope: _Scope) -> Row | None:
        sums = scope.beyond[side].entries.get((row["account"], row["currency"]))
        if sums is None:
            return row
        debit, credit, count = sums
        back = {
            **row,
            "debit_minor": row["debit_minor"] - debit,
            "credit_minor": row["credit_minor"] - credit,
            "entries_count": row["entries_count"] - count,
        }
        if "balance_minor" in row:
            back["balance_minor"] = row["balance_minor"] - (debit - credit)
        if back["debit_minor"] == back["credit_minor"] == back["entries_count"] == 0:
            return None
        return back


class _ConsumerPositions(_Rule):
    needs = frozenset({"topic", "partition", "next_offset"})

    def covers(self, row: Row, side: Side, scope: _Scope) -> bool:
        cutoff = scope.cutoff
        if side is Side.REBUILT or row["topic"] != cutoff.topic:
            return True
        # A live position past the end offsets on a partition the rebuild
        # read nothing of: the live schema is ahead there, nothing to compare.
        return bool(row["next_offset"] <= cutoff.ends.get(row["partition"], 0))

    def differing(
        self, live: Row, rebuilt: Row, columns: Sequence[str], scope: _Scope
    ) -> list[str]:
        found = super().differing(live, rebuilt, columns, scope)
        if (
            "next_offset" in found
            and live["topic"] == scope.cutoff.topic
            and live["next_offset"] >= rebuilt["next_offset"]
        ):
            found.remove("next_offset")  # the live schema is ahead: as it should be
        return found


_RULES: Final[dict[str, _Rule]] = {
    # In this order: payment_events gathers the events and payments beyond the
    # cut-off that ledger_entries and the per-payment tables need, and
    # ledger_entries the sums account_balances needs.
    "consumer_positions": _ConsumerPositions(frozenset({"updated_at"})),
    MIGRATIONS_TABLE: _Rule(frozenset({"applied_at"})),
    "payment_events": _PaymentEvents(),
    "processed_events": _FromRecord(frozenset({"applied_at"})),
    "ledger_entries": _LedgerEntries(),
    "payments": _PerPayment(),
    "payment_fees": _PerPayment(),
    "account_balances": _AccountBalances(),
}
_DEFAULT_RULE: Final = _Rule()


def rule_for(table: str) -> _Rule:
    return _RULES.get(table, _DEFAULT_RULE)


def _order(table: str) -> tuple[int, str]:
    names = list(_RULES)
    return (names.index(table), "") if table in _RULES else (len(names), table)


@dataclass(frozen=True, slots=True)
class Shape:
    """A table's columns in order, its primary key, and which columns sort by collation."""

    columns: tuple[str, ...]
    key: tuple[str, ...]  # primary-key columns in key order; () when it has none
    collatable: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class TableCount:
    table: str
    compared: int  # keys within the cut-off, whether on one side or both
    beyond: int  # keys beyond the cut-off, not compared
    differences: int


@dataclass(frozen=True, slots=True)
class Comparison:
    cutoff: Cutoff
    tables: tuple[TableCount, ...]
    findings: tuple[Finding, ...]


# Side, table, columns, key -> that side's rows of the table in ascending key order.
RowSource = Callable[[Side, str, tuple[str, ...], tuple[str, ...]], Iterable[Row]]


def compare(
    live: Mapping[str, Shape], rebuilt: Mapping[str, Shape], rows: RowSource, cutoff: Cutoff
) -> Comparison:
    """Every table of both schemas, by primary key, within the cut-off (module docstring)."""
    scope = _Scope(cutoff)
    counts: list[TableCount] = []
    findings: list[Finding] = []
    for table in sorted(set(live) | set(rebuilt), key=_order):
        live_shape, rebuilt_shape = live.get(table), rebuilt.get(table)
        if live_shape is None or rebuilt_shape is None:
            findings.append(_missing(table, {}, None, "table", live_shape is None))
            continue
        columns, found = _common_columns(table, live_shape, rebuilt_shape)
        findings.extend(found)
        if live_shape.key != rebuilt_shape.key:
            findings.append(
                Finding(
                    table,
                    {},
                    None,
                    list(live_shape.key),
                    list(rebuilt_shape.key),
                    Kind.DIFFERENT,
                )
            )
            continue
        count, found = _compare_table(table, live_shape.key or columns, columns, rows, scope)
        counts.append(count)
        findings.extend(found)
    return Comparison(cutoff, tuple(counts), tuple(findings))


def _common_columns(
    table: str, live: Shape, rebuilt: Shape
) -> tuple[tuple[str, ...], list[Finding]]:
    """The columns both sides have, in the live order; one finding per column only one has."""
    rule = rule_for(table)
    findings = [
        _missing(table, {}, column, "column", column not in live.columns)
        for column in (*live.columns, *(c for c in rebuilt.columns if c not in live.columns))
        if (column in live.columns) != (column in rebuilt.columns)
    ]
    common = tuple(c for c in live.columns if c in rebuilt.columns and c not in rule.ignored)
    return common, findings


def _compare_table(
    table: str,
    key: Sequence[str],
    columns: tuple[str, ...],
    rows: RowSource,
    scope: _Scope,
) -> tuple[TableCount, list[Finding]]:
    """One table: its rows paired by ``key``, judged by the table's rule."""
    rule = rule_for(table)
    absent = (rule.needs | set(key)) - set(columns)
    if absent:
        raise RebuildError(f"table {table} lacks {', '.join(sorted(absent))}: cannot compare it")
    key = tuple(key)
    compared = beyond = 0
    findings: list[Finding] = []
    live_rows = rows(Side.LIVE, table, columns, key)
    rebuilt_rows = rows(Side.REBUILT, table, columns, key)
    for live, rebuilt in pair_rows(live_rows, rebuilt_rows, key):
        present = [
            (row, side)
            for row, side in ((live, Side.LIVE), (rebuilt, Side.REBUILT))
            if row is not None
        ]
        for row, side in present:
            rule.observe(row, side, scope)
        if not any(rule.covers(row, side, scope) for row, side in present):
            beyond += 1
            continue
        live_view = None if live is None else rule.view(live, Side.LIVE, scope)
        rebuilt_view = None if rebuilt is None else rule.view(rebuilt, Side.REBUILT, scope)
        if live_view is None and rebuilt_view is None:
            beyond += 1
            continue
        compared += 1
        row_key = {name: present[0][0][name] for name in key}
        if live_view is None or rebuilt_view is None:
            findings.append(
                _missing(table, row_key, None, live_view or rebuilt_view, live_view is None)
            )
            continue
        findings.extend(
            Finding(table, row_key, column, live_view[column], rebuilt_view[column], Kind.DIFFERENT)
            for column in rule.differing(live_view, rebuilt_view, columns, scope)
        )
    return TableCount(table, compared, beyond, len(findings)), findings


def _missing(
    table: str, key: Mapping[str, Any], column: str | None, value: Any, missing_in_live: bool
) -> Finding:
    """``value`` is on one side only: the rebuilt one when ``missing_in_live``, else the live."""
    if missing_in_live:
        return Finding(table, key, column, None, value, Kind.MISSING_IN_LIVE)
    return Finding(table, key, column, value, None, Kind.MISSING_IN_REBUILD)


def pair_rows(
    live: Iterable[Row], rebuilt: Iterable[Row], key: Sequence[str]
) -> Iterator[tuple[Row | None, Row | None]]:
    """Rows of both sides matched by ``key``, from two inputs each in ascending key order."""
    live_rows = _ascending(live, key, Side.LIVE)
    rebuilt_rows = _ascending(rebuilt, key, Side.REBUILT)
    left = next(live_rows, None)
    right = next(rebuilt_rows, None)
    while left is not None or right is not None:
        if right is None or (left is not None and left[0] < right[0]):
            assert left is not None
            yield left[1], None
            left = next(live_rows, None)
        elif left is None or right[0] < left[0]:
            yield None, right[1]
            right = next(rebuilt_rows, None)
        else:
            yield left[1], right[1]
            left = next(live_rows, None)
            right = next(rebuilt_rows, None)


def _ascending(
    rows: Iterable[Row], key: Sequence[str], side: Side
) -> Iterator[tuple[tuple[Any, ...], Row]]:
    """(sort key, row), refusing rows out of order: a merge of them would pair them wrongly."""
    previous: tuple[Any, ...] | None = None
    for row in rows:
        # NULLs sort last, as in Postgres; a primary key never holds one.
        sort_key = tuple((row[name] is None, row[name]) for name in key)
        try:
            ordered = previous is None or previous <= sort_key
        except TypeError as error:
            raise RebuildError(f"{side} rows keyed by {key} cannot be ordered: {error}") from None
        if not ordered:
            raise RebuildError(
                f"{side} rows are not in ascending order of {', '.join(key)}"
                f" ({_plain(previous)} before {_plain(sort_key)})"
            )
        previous = sort_key
        yield sort_key, row


def _plain(sort_key: tuple[Any, ...] | None) -> list[Any]:
    return [value for _, value in sort_key or ()]


# Rendering. Pure. ----------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """``value`` as JSON can hold it: ids and times as text, bytes as hex."""
    match value:
        case None | bool() | int() | float() | str():
            return value
        case Mapping():
            return {str(name): jsonable(item) for name, item in value.items()}
        case list() | tuple() | set() | frozenset():
            return [jsonable(item) for item in value]
        case datetime() | date():
            return value.isoformat()
        case bytes() | bytearray() | memoryview():
            return bytes(value).hex()
        case UUID() | Decimal() | timedelta():
            return str(value)
        case _:
            return str(value)


# I/O: Kafka, the replay, Postgres. -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Replayed:
    totals: Totals
    withheld: int  # audit facts and dead letters not published again
    positions: dict[int, int]  # the rebuilt schema's next offset per partition


@dataclass(frozen=True, slots=True)
class Report:
    schema: str
    live: str
    topic: str
    ends: dict[int, int]
    dropped: bool  # the schema held data and was dropped first (--replace)
    replayed: Replayed
    comparison: Comparison


def check_names(schema: str, live: str) -> None:
    check_schema_name(schema)
    check_schema_name(live)
    if schema == live:
        raise RebuildError(
            f"schema {schema} is the live schema: a rebuild goes into a schema of its own"
        )


async def run(
    settings: Settings,
    schema: str,
    *,
    live: str = DEFAULT_SCHEMA,
    replace: bool = False,
    batch_records: int = limits.BATCH_RECORDS_DEFAULT,
    live_wait_s: float = LIVE_WAIT_S_DEFAULT,
    stop: asyncio.Event | None = None,
) -> Report:
    """Rebuild ``schema`` from payment-events and compare it with ``live``."""
    check_names(schema, live)
    if schema == settings.projections_schema:
        raise RebuildError(
            f"schema {schema} is the one the ingress reads (PAYLEDGER_PROJECTIONS_SCHEMA):"
            " a rebuild goes into a schema of its own"
        )
    dsn = settings.dsn()
    topic = topic_name(settings, TopicRole.PAYMENT_EVENTS)
    ends = await end_offsets(settings, topic)
    dropped = await prepare(dsn, schema, live, replace=replace)
    log.info("rebuilding %s into schema %s up to %s", topic, schema, ends)
    replayed = await replay(settings, schema, ends, batch_records=batch_records, stop=stop)
    await wait_for_live(dsn, live, topic, replayed.positions, live_wait_s, stop=stop)
    comparison = await asyncio.to_thread(diff, dsn, live, schema, topic, ends)
    return Report(schema, live, topic, ends, dropped, replayed, comparison)


async def run_until_done(settings: Settings, schema: str, **options: Any) -> Report:
    """``run``, stopped early (and failing) on SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Signal handlers can only be installed from the main thread.
    handled = threading.current_thread() is threading.main_thread()
    if handled:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
    try:
        return await run(settings, schema, stop=stop, **options)
    finally:
        if handled:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)


async def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """Partition -> the end offset a read_committed consumer sees now (the last stable offset)."""
    async with asyncio.timeout(KAFKA_TIMEOUT_S):
        partitions = await _partitions(settings, topic)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers(),
            client_id="payledger-projections-rebuild",
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        await consumer.start()
        try:
            offsets = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        finally:
            await consumer.stop()
    return {tp.partition: offset for tp, offset in sorted(offsets.items())}


async def _partitions(settings: Settings, topic: str) -> list[int]:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers(),
        client_id="payledger-projections-rebuild",
    )
    await admin.start()
    try:
        # Metadata of all topics: naming ours could auto-create it.
        for described in await admin.describe_topics():
            if described["topic"] == topic and described["partitions"]:
                return sorted(p["partition"] for p in described["partitions"])
    finally:
        await admin.close()
    raise RebuildError(f"topic {topic} does not exist: nothing to rebuild from")


@dataclass(frozen=True, slots=True)
class _SchemaState:
    exists: bool
    with_rows: tuple[str, ...]  # tables holding rows, schema_migrations aside
    migrations: tuple[str, ...] | None  # what schema_migrations records; None without it

    def is_projections(self) -> bool:
        """Built by these migrations alone."""
        known = {migration.name for migration in migrations()}
        return self.migrations is not None and set(self.migrations) <= known


async def prepare(dsn: str, schema: str, live: str, *, replace: bool) -> bool:
    """Refuse what must not be rebuilt into, drop ``schema`` when asked, migrate it.

    Returns True when a schema holding data was dropped.
    """
    check_names(schema, live)
    dropped = False
    async with await psycopg.AsyncConnection.connect(
        dsn, autocommit=True, connect_timeout=limits.POSTGRES_CONNECT_TIMEOUT_S
    ) as connection:
        live_state = await _schema_state(connection, live)
        if not live_state.exists or not live_state.is_projections():
            raise RebuildError(
                f"live schema {live} is not a projections schema: nothing to compare"
            )
        state = await _schema_state(connection, schema)
        if state.with_rows:
            held = ", ".join(state.with_rows)
            if not replace:
                raise RebuildError(
                    f"schema {schema} already holds data (in {held}):"
                    " pass --replace to drop it and rebuild it"
                )
            if not state.is_projections():
                raise RebuildError(
                    f"schema {schema} holds data (in {held}) and is not a projections schema:"
                    " it is not dropped, even with --replace"
                )
            log.warning("dropping schema %s (its tables %s held rows)", schema, held)
            await connection.execute(
                sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema))
            )
            dropped = True
    await migrate(dsn, schema)
    return dropped


async def _schema_state(connection: store.Connection, schema: str) -> _SchemaState:
    cursor = await connection.execute(
        "SELECT c.relname FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relkind IN ('r', 'p') ORDER BY c.relname",
        (schema,),
    )
    tables = [name for (name,) in await cursor.fetchall()]
    cursor = await connection.execute(
        "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = %s)", (schema,)
    )
    row = await cursor.fetchone()
    exists = bool(row and row[0])
    with_rows = []
    for table in tables:
        if table == MIGRATIONS_TABLE:
            continue
        cursor = await connection.execute(
            sql.SQL("SELECT EXISTS (SELECT FROM {})").format(sql.Identifier(schema, table))
        )
        row = await cursor.fetchone()
        if row and row[0]:
            with_rows.append(table)
    recorded = None
    if MIGRATIONS_TABLE in tables:
        cursor = await connection.execute(
            sql.SQL("SELECT name FROM {} ORDER BY version").format(
                sql.Identifier(schema, MIGRATIONS_TABLE)
            )
        )
        recorded = tuple(name for (name,) in await cursor.fetchall())
    return _SchemaState(exists, tuple(with_rows), recorded)


class _NoProducer:
    """The producer of a publisher that must never produce."""

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def send(
        self, topic: str, value: bytes, *, key: bytes, headers: list[tuple[str, bytes]]
    ) -> asyncio.Future[Any]:
        raise RebuildError("a rebuild publishes nothing")

    async def send_and_wait(
        self, topic: str, value: bytes, *, key: bytes, headers: list[tuple[str, bytes]]
    ) -> Any:
        raise RebuildError("a rebuild publishes nothing")

    def transaction(self) -> Any:
        raise RebuildError("a rebuild publishes nothing")


class Withheld(Publisher):
    """The applier's publisher in a rebuild: what it is given is counted, never published.

    The live applier published those audit facts and dead letters when it read
    the same records. Starting publishes no key endorsement either.
    """

    def __init__(self, settings: Settings, codec: EnvelopeCodec, keystore: KeyStore) -> None:
        super().__init__(
            settings, codec, ActiveSigner(keystore), _NoProducer(), source=facts.SOURCE
        )
        self.envelopes: list[tuple[str, Envelope]] = []

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def publish(
        self, topic: str, envelope: Envelope, trace: TraceContext | None = None
    ) -> Published:
        self.envelopes.append((topic, envelope))
        return Published(envelope, topic, -1, -1)


class _UntilEnds(Reader):
    """The applier's reader, bounded: nothing at or past the end offsets is returned.

    Once every partition is read up to its end -- the consumer's position,
    which steps over transaction markers and aborted records too -- ``poll``
    calls ``at_end`` and returns nothing. The applier reads one batch ahead,
    while the previous one is written: everything below the ends is committed
    once that previous batch is, and a failed batch seeks back to the
    committed positions, which are below the end again (``_Replay``).
    """

    def __init__(
        self,
        settings: Settings,
        verifier: Verifier,
        keys: KeysFollower,
        *,
        topic: str,
        batch_records: int,
        pause: Pause,
        ends: Mapping[int, int],
        at_end: Callable[[], None],
    ) -> None:
        super().__init__(
            settings, verifier, keys, topic=topic, batch_records=batch_records, pause=pause
        )
        self._ends = dict(ends)
        self._at_end = at_end

    async def poll(self) -> list[ConsumerRecord[bytes, bytes]]:
        consumer = self._started()
        reading: list[TopicPartition] = []
        done: list[TopicPartition] = []
        for tp in self._partitions:
            position = await consumer.position(tp)
            (reading if position < self._ends.get(tp.partition, 0) else done).append(tp)
        if not reading:
            self._at_end()
            return []
        # Fetch nothing more of a partition read to its end; a seek back (a
        # batch retried) may make it one to read again.
        consumer.pause(*done)
        consumer.resume(*reading)
        return [
            record
            for record in await super().poll()
            if record.offset < self._ends.get(record.partition, 0)
        ]


class _Replay(Applier):
    """The applier, reading up to ``ends`` and publishing nothing; stops by itself at the end."""

    def __init__(
        self, settings: Settings, schema: str, ends: Mapping[int, int], *, batch_records: int
    ) -> None:
        super().__init__(settings, schema, batch_records=batch_records)
        self._ends = dict(ends)
        self.reached_end = False
        self.withheld: Withheld | None = None

    def _publisher(self, keystore: KeyStore, codec: EnvelopeCodec) -> Publisher:
        self.withheld = Withheld(self._settings, codec, keystore)
        return self.withheld

    def _reader(self, verifier: Verifier) -> Reader:
        return _UntilEnds(
            self._settings,
            verifier,
            keys_follower(self._settings, verifier),
            topic=topic_name(self._settings, TopicRole.PAYMENT_EVENTS),
            batch_records=self._batch_records,
            pause=self._pause,
            ends=self._ends,
            at_end=self._end,
        )

    def _end(self) -> None:
        self.reached_end = True

    def _finished(self) -> bool:
        return self.reached_end

    async def _reconnect(
        self, reader: Reader, broken: store.Connection | None
    ) -> store.Connection | None:
        # Back at the committed positions: what was read to the end is read again.
        connection = await super()._reconnect(reader, broken)
        self.reached_end = False
        return connection


async def replay(
    settings: Settings,
    schema: str,
    ends: Mapping[int, int],
    *,
    batch_records: int = limits.BATCH_RECORDS_DEFAULT,
    stop: asyncio.Event | None = None,
) -> Replayed:
    """Apply payment-events from offset 0 up to ``ends`` into the (migrated) ``schema``.

    Setting ``stop`` ends it early, with ``RebuildError``.
    """
    applier = _Replay(settings, schema, ends, batch_records=batch_records)
    # The applier's own stop flag is also set by the replay when it reaches the ends.
    done = asyncio.Event()
    forward = asyncio.create_task((stop or asyncio.Event()).wait())
    forward.add_done_callback(lambda _: done.set())
    try:
        await applier.run(done)
    finally:
        forward.cancel()
    if not applier.reached_end:
        raise RebuildError(f"the rebuild of schema {schema} stopped before its end offsets")
    topic = topic_name(settings, TopicRole.PAYMENT_EVENTS)
    positions = await _stored_positions(settings.dsn(), schema, topic)
    withheld = 0 if applier.withheld is None else len(applier.withheld.envelopes)
    log.info("schema %s rebuilt: %s, %d facts withheld", schema, applier.totals, withheld)
    return Replayed(applier.totals, withheld, positions)


async def _stored_positions(dsn: str, schema: str, topic: str) -> dict[int, int]:
    connection = await store.connect(dsn, schema)
    try:
        return await store.stored_positions(connection, topic)
    finally:
        await connection.close()


async def wait_for_live(
    dsn: str,
    live: str,
    topic: str,
    positions: Mapping[int, int],
    timeout_s: float,
    *,
    stop: asyncio.Event | None = None,
) -> bool:
    """Until the live schema has applied everything below ``positions``; False if it did not."""
    deadline = time.monotonic() + timeout_s
    waited = False
    while True:
        stored = await _stored_positions(dsn, live, topic)
        behind = {p: o for p, o in positions.items() if stored.get(p, 0) < o}
        if not behind:
            return True
        if stop is not None and stop.is_set():
            raise RebuildError("stopped while waiting for the live schema")
        if time.monotonic() >= deadline:
            log.warning("live schema %s is still behind the rebuild on %s", live, behind)
            return False
        if not waited:
            log.info("waiting for live schema %s: behind the rebuild on %s", live, behind)
            waited = True
        await asyncio.sleep(_LIVE_WAIT_POLL_S)


def diff(dsn: str, live: str, rebuilt: str, topic: str, ends: Mapping[int, int]) -> Comparison:
    """Compare the two schemas in one read-only REPEATABLE READ snapshot (blocking)."""
    check_names(rebuilt, live)
    with psycopg.connect(dsn, connect_timeout=limits.POSTGRES_CONNECT_TIMEOUT_S) as connection:
        connection.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        connection.read_only = True
        try:
            shapes = {
                Side.LIVE: _shapes(connection, live),
                Side.REBUILT: _shapes(connection, rebuilt),
            }
            if "consumer_positions" not in shapes[Side.LIVE]:
                raise RebuildError(f"live schema {live} has no consumer_positions table")
            cursor = connection.execute(
                sql.SQL("SELECT partition, next_offset FROM {} WHERE topic = %s").format(
                    sql.Identifier(live, "consumer_positions")
                ),
                (topic,),
            )
            cutoff = Cutoff(topic, dict(ends), dict(cursor.fetchall()))
            source = _Tables(connection, {Side.LIVE: live, Side.REBUILT: rebuilt}, shapes)
            return compare(shapes[Side.LIVE], shapes[Side.REBUILT], source.rows, cutoff)
        finally:
            connection.rollback()


def _shapes(connection: psycopg.Connection[Any], schema: str) -> dict[str, Shape]:
    cursor = connection.execute(
        "SELECT c.relname, a.attname, t.typcollation <> 0"
        " FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace"
        " JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
        " JOIN pg_type AS t ON t.oid = a.atttypid"
        " WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
        " ORDER BY c.relname, a.attnum",
        (schema,),
    )
    columns: dict[str, list[str]] = {}
    collatable: dict[str, set[str]] = {}
    for table, column, sorts_by_collation in cursor.fetchall():
        columns.setdefault(table, []).append(column)
        if sorts_by_collation:
            collatable.setdefault(table, set()).add(column)
    cursor = connection.execute(
        "SELECT c.relname, a.attname"
        " FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indrelid"
        " JOIN pg_namespace AS n ON n.oid = c.relnamespace"
        " CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k (attnum, ord)"
        " JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attnum = k.attnum"
        " WHERE n.nspname = %s AND i.indisprimary ORDER BY c.relname, k.ord",
        (schema,),
    )
    keys: dict[str, list[str]] = {}
    for table, column in cursor.fetchall():
        keys.setdefault(table, []).append(column)
    return {
        table: Shape(tuple(names), tuple(keys.get(table, ())), frozenset(collatable.get(table, ())))
        for table, names in columns.items()
    }


class _Tables:
    """Rows of both schemas, streamed in key order through server-side cursors."""

    def __init__(
        self,
        connection: psycopg.Connection[Any],
        schemas: Mapping[Side, str],
        shapes: Mapping[Side, Mapping[str, Shape]],
    ) -> None:
        self._connection = connection
        self._schemas = schemas
        self._shapes = shapes
        self._cursors = 0

    def rows(
        self, side: Side, table: str, columns: tuple[str, ...], key: tuple[str, ...]
    ) -> Iterator[Row]:
        collatable = self._shapes[side][table].collatable
        # Byte order for text: the order Python compares str in, so the merge
        # of the two sides agrees with the order Postgres returns them in.
        order = [
            sql.SQL('{} COLLATE "C"').format(sql.Identifier(name))
            if name in collatable
            else sql.Identifier(name)
            for name in key
        ]
        query = sql.SQL("SELECT {columns} FROM {table} ORDER BY {order}").format(
            columns=sql.SQL(", ").join(sql.Identifier(name) for name in columns),
            table=sql.Identifier(self._schemas[side], table),
            order=sql.SQL(", ").join(order),
        )
        self._cursors += 1
        with self._connection.cursor(
            name=f"rebuild_diff_{self._cursors}", row_factory=dict_row
        ) as cursor:
            cursor.itersize = _FETCH_ROWS
            cursor.execute(query)
            yield from cursor


# What the command prints. Pure. ----------------------------------------------------


def _offsets(offsets: Mapping[int, int]) -> str:
    return " ".join(f"{p}:{o}" for p, o in sorted(offsets.items())) or "(no partitions)"


def report_json(report: Report) -> dict[str, Any]:
    comparison = report.comparison
    cutoff = comparison.cutoff
    totals = report.replayed.totals
    return {
        "schema": report.schema,
        "live_schema": report.live,
        "topic": report.topic,
        "dropped": report.dropped,
        "end_offsets": {str(p): o for p, o in sorted(report.ends.items())},
        "live_positions": {str(p): o for p, o in sorted(cutoff.live_positions.items())},
        "cutoff": {str(p): cutoff.cut(p) for p in sorted(report.ends)},
        "replay": {
            "applied": totals.applied,
            "duplicates": totals.duplicates,
            "conflicts": totals.conflicts,
            "rejected": totals.rejected,
            "withheld": report.replayed.withheld,
            "positions": {str(p): o for p, o in sorted(report.replayed.positions.items())},
        },
        "tables": [
            {
                "table": count.table,
                "rows_compared": count.compared,
                "rows_beyond_cutoff": count.beyond,
                "differences": count.differences,
            }
            for count in comparison.tables
        ],
        "differences": len(comparison.findings),
        "findings": [finding.to_json() for finding in comparison.findings],
    }


def report_text(report: Report) -> str:
    comparison = report.comparison
    cutoff = comparison.cutoff
    totals = report.replayed.totals
    lines = [
        f"schema {report.schema} {'dropped and rebuilt' if report.dropped else 'rebuilt'}"
        f" from {report.topic} up to {_offsets(report.ends)}:",
        f"  {totals.applied} events applied, {totals.duplicates} duplicates,"
        f" {totals.conflicts} conflicts, {totals.rejected} rejected;"
        f" {report.replayed.withheld} audit facts and dead letters not published again",
        f"compared with live schema {report.live} (at {_offsets(cutoff.live_positions)})"
        f" below {_offsets({p: cutoff.cut(p) for p in report.ends})}:",
    ]
    width = max([len("table"), *(len(count.table) for count in comparison.tables)])
    lines.append(f"  {'table':<{width}}  compared  beyond cut-off  differences")
    lines.extend(
        f"  {count.table:<{width}}  {count.compared:>8}  {count.beyond:>14}"
        f"  {count.differences:>11}"
        for count in comparison.tables
    )
    findings = comparison.findings
    if not findings:
        lines.append("no differences")
        return "\n".join(lines)
    lines.append(f"{len(findings)} difference{'s' if len(findings) != 1 else ''}:")
    for finding in findings[:SUMMARY_FINDINGS_MAX]:
        lines.append(f"  {finding_text(finding)}")
    if len(findings) > SUMMARY_FINDINGS_MAX:
        lines.append(f"  ... and {len(findings) - SUMMARY_FINDINGS_MAX} more (--json lists all)")
    return "\n".join(lines)


def finding_text(finding: Finding) -> str:
    key = ", ".join(f"{name}={_value(value)}" for name, value in finding.key.items())
    where = finding.table + (f" ({key})" if key else "")
    if finding.column is not None:
        where += f" {finding.column}"
    if finding.kind is Kind.DIFFERENT:
        detail = f"live {_value(finding.live_value)}, rebuilt {_value(finding.rebuilt_value)}"
    elif finding.kind is Kind.MISSING_IN_LIVE:
        detail = f"rebuilt {_value(finding.rebuilt_value)}"
    else:
        detail = f"live {_value(finding.live_value)}"
    return f"{finding.kind.value}: {where}: {detail}"


def _value(value: Any) -> str:
    return json.dumps(jsonable(value), sort_keys=True)

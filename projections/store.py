"""The Postgres side of the applier: read what a batch must know, write what it planned.

Everything here runs on the caller's connection, inside the caller's
transaction: the rows of a batch, its processed events and the consumer
positions commit together or not at all. One statement per table per batch
however many events it holds, so the statement triggers (balances, entries
within postings) run once per batch and the round trips do not grow with
the batch: the append-only tables (events, entries, processed events) are
written by ``COPY``, the rest as one array per column expanded by ``unnest``
(an upsert, or a replacement).
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Sequence
from typing import Any, Final

import psycopg
from psycopg import sql

from projections import limits
from projections.migrations import LOCK_CLASS, check_schema_name
from projections.plan import BatchPlan, Known, Lookup
from projections.rows import EntryRow, EventRow, FeeRow, PaymentRow, Position, ProcessedRow

Connection = psycopg.AsyncConnection[Any]

# The database refused the rows themselves (a constraint, a value out of
# range): retrying the same rows cannot help.
REFUSED: Final = (psycopg.errors.IntegrityError, psycopg.errors.DataError)
# The database could not be used (connection lost, shutting down, statement
# cancelled, serialization failure): the same rows may be retried.
UNAVAILABLE: Final = (psycopg.OperationalError, psycopg.InterfaceError)

# Column name -> the Postgres type its array is cast to; names are the row
# dataclasses' fields, in the tables' column order.
_EVENT_TYPES: Final = {
    "event_id": "uuid",
    "payment_id": "text",
    "merchant_id": "text",
    "provider": "text",
    "currency": "text",
    "payment_amount_minor": "bigint",
    "sequence": "bigint",
    "kind": "text",
    "event_type": "text",
    "schema_version": "integer",
    "status_before": "text",
    "status_after": "text",
    "stale": "boolean",
    "amount_minor": "bigint",
    "amount_currency": "text",
    "authorized_minor": "bigint",
    "captured_minor": "bigint",
    "refunded_minor": "bigint",
    "disputed_minor": "bigint",
    "charged_back_minor": "bigint",
    "suspense_minor": "bigint",
    "postings_count": "smallint",
    "command_event_id": "text",
    "provider_event_id": "text",
    "provider_event_type": "text",
    "provider_object_id": "text",
    "provider_status": "text",
    "note": "text",
    "occurred_at": "timestamptz",
    "recorded_at": "timestamptz",
    "producer": "text",
    "correlation_id": "text",
    "causation_id": "text",
    "signing_key_id": "text",
    "signature_status": "text",
    "source_topic": "text",
    "source_partition": "integer",
    "source_offset": "bigint",
}
_ENTRY_TYPES: Final = {
    "event_id": "uuid",
    "leg": "smallint",
    "account": "text",
    "side": "text",
    "amount_minor": "bigint",
    "currency": "text",
}
_PAYMENT_TYPES: Final = {
    "payment_id": "text",
    "merchant_id": "text",
    "provider": "text",
    "provider_object_id": "text",
    "status": "text",
    "currency": "text",
    "amount_minor": "bigint",
    "authorized_minor": "bigint",
    "captured_minor": "bigint",
    "refunded_minor": "bigint",
    "disputed_minor": "bigint",
    "charged_back_minor": "bigint",
    "suspense_minor": "bigint",
    "last_sequence": "bigint",
    "created_at": "timestamptz",
    "updated_at": "timestamptz",
}
_FEE_TYPES: Final = {"payment_id": "text", "currency": "text", "amount_minor": "bigint"}
_PROCESSED_TYPES: Final = {
    "event_id": "uuid",
    "record_sha256": "bytea",
    "source_topic": "text",
    "source_partition": "integer",
    "source_offset": "bigint",
}
# The payment's status and totals follow its newest event; who it belongs to
# never changes (the events' foreign key holds every event to it).
_PAYMENT_FOLLOWS: Final = (
    "status",
    "authorized_minor",
    "captured_minor",
    "refunded_minor",
    "disputed_minor",
    "charged_back_minor",
    "suspense_minor",
    "last_sequence",
    "updated_at",
)


async def connect(dsn: str, schema: str) -> Connection:
    """An autocommit connection whose search path is ``schema``; transactions are explicit."""
    check_schema_name(schema)
    return await psycopg.AsyncConnection.connect(
        dsn,
        autocommit=True,
        connect_timeout=limits.POSTGRES_CONNECT_TIMEOUT_S,
        options=(
            f"-c search_path={schema} -c statement_timeout={limits.POSTGRES_STATEMENT_TIMEOUT_MS}"
        ),
    )


async def lock_schema(connection: Connection, schema: str) -> None:
    """Serialise appliers of one schema, until the transaction ends.

    Two appliers of one schema are then safe (the second sees the first's
    events as duplicates and positions never move back), merely redundant.
    """
    await connection.execute(
        "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_CLASS, f"apply:{schema}")
    )


async def stored_positions(connection: Connection, topic: str) -> dict[int, int]:
    """Partition -> the next offset to read, as committed with the rows."""
    cursor = await connection.execute(
        "SELECT partition, next_offset FROM consumer_positions WHERE topic = %s", (topic,)
    )
    return {partition: next_offset for partition, next_offset in await cursor.fetchall()}


async def load_known(connection: Connection, want: Lookup) -> Known:
    if not want.event_ids:
        return Known()
    cursor = await connection.execute(
        "SELECT event_id::text, record_sha256 FROM processed_events"
        " WHERE event_id = ANY(%s::uuid[])",
        (list(want.event_ids),),
    )
    digests = {event_id: bytes(digest) for event_id, digest in await cursor.fetchall()}
    cursor = await connection.execute(
        "SELECT e.payment_id, e.sequence, e.event_id::text FROM payment_events AS e"
        " JOIN unnest(%s::text[], %s::bigint[]) AS wanted (payment_id, sequence)"
        " USING (payment_id, sequence)",
        ([p for p, _ in want.sequences], [s for _, s in want.sequences]),
    )
    sequences = {
        (payment, sequence): event_id for payment, sequence, event_id in await cursor.fetchall()
    }
    cursor = await connection.execute(
        "SELECT payment_id, last_sequence FROM payments WHERE payment_id = ANY(%s::text[])",
        (list(want.payment_ids),),
    )
    last = {payment_id: last_sequence for payment_id, last_sequence in await cursor.fetchall()}
    return Known(digests=digests, sequences=sequences, last_sequences=last)


async def write_plan(connection: Connection, plan: BatchPlan) -> None:
    """The rows of the events a plan applies. Deferred checks run at commit (or ``check_now``)."""
    await _upsert_payments(connection, plan.payments)
    if plan.fee_payment_ids:
        await connection.execute(
            "DELETE FROM payment_fees WHERE payment_id = ANY(%s::text[])",
            (list(plan.fee_payment_ids),),
        )
    await _insert(connection, "payment_fees", _FEE_TYPES, plan.fees, FeeRow)
    await _copy(connection, "payment_events", _EVENT_TYPES, plan.events, EventRow)
    await _copy(connection, "ledger_entries", _ENTRY_TYPES, plan.entries, EntryRow)
    await _copy(connection, "processed_events", _PROCESSED_TYPES, plan.processed, ProcessedRow)


async def write_positions(connection: Connection, positions: Sequence[Position]) -> None:
    """Store the next offsets (``Position.offset``); a position never moves back."""
    if not positions:
        return
    await connection.execute(
        "INSERT INTO consumer_positions AS stored (topic, partition, next_offset)"
        " SELECT * FROM unnest(%s::text[], %s::integer[], %s::bigint[])"
        " ON CONFLICT (topic, partition) DO UPDATE SET"
        " next_offset = greatest(stored.next_offset, EXCLUDED.next_offset), updated_at = now()",
        (
            [p.topic for p in positions],
            [p.partition for p in positions],
            [p.offset for p in positions],
        ),
    )


async def check_now(connection: Connection) -> None:
    """Run the deferred checks of what was written so far, so a refusal names these rows."""
    await connection.execute("SET CONSTRAINTS ALL IMMEDIATE")
    await connection.execute("SET CONSTRAINTS ALL DEFERRED")


async def _upsert_payments(connection: Connection, rows: Sequence[PaymentRow]) -> None:
    if not rows:
        return
    updates: list[sql.Composable] = [
        sql.SQL("{column} = EXCLUDED.{column}").format(column=sql.Identifier(name))
        for name in _PAYMENT_FOLLOWS
    ]
    updates.append(
        sql.SQL("provider_object_id = coalesce(p.provider_object_id, EXCLUDED.provider_object_id)")
    )
    updates.append(sql.SQL("created_at = least(p.created_at, EXCLUDED.created_at)"))
    statement = sql.SQL(
        "{insert} ON CONFLICT (payment_id) DO UPDATE SET {updates}"
        # Never back to an older event: a late one does not undo a newer one.
        " WHERE p.last_sequence < EXCLUDED.last_sequence"
    ).format(
        insert=_insert_statement(sql.SQL("payments AS p"), _PAYMENT_TYPES),
        updates=sql.SQL(", ").join(updates),
    )
    await connection.execute(statement, _columns(rows, _PAYMENT_TYPES, PaymentRow))


async def _insert(
    connection: Connection,
    table: str,
    types: dict[str, str],
    rows: Sequence[object],
    row_type: type,
) -> None:
    if not rows:
        return
    await connection.execute(
        _insert_statement(sql.Identifier(table), types), _columns(rows, types, row_type)
    )


async def _copy(
    connection: Connection,
    table: str,
    types: dict[str, str],
    rows: Sequence[object],
    row_type: type,
) -> None:
    if not rows:
        return
    values = _row_values(types, row_type)
    statement = sql.SQL("COPY {table} ({columns}) FROM STDIN").format(
        table=sql.Identifier(table),
        columns=sql.SQL(", ").join(sql.Identifier(name) for name in types),
    )
    async with connection.cursor() as cursor, cursor.copy(statement) as copy:
        for row in rows:
            await copy.write_row(values(row))


def _insert_statement(table: sql.Composable, types: dict[str, str]) -> sql.Composed:
    return sql.SQL("INSERT INTO {table} ({columns}) SELECT * FROM unnest({arrays})").format(
        table=table,
        columns=sql.SQL(", ").join(sql.Identifier(name) for name in types),
        arrays=sql.SQL(", ").join(
            sql.SQL("%s::{}[]").format(sql.SQL(pg_type)) for pg_type in types.values()
        ),
    )


def _columns(rows: Sequence[object], types: dict[str, str], row_type: type) -> list[list[object]]:
    """One list per column, in ``types`` order."""
    # A programmer error, caught by the first batch of any test: the table's
    # columns and the row's fields are one list.
    assert tuple(types) == tuple(f.name for f in dataclasses.fields(row_type)), row_type
    return [[getattr(row, name) for row in rows] for name in types]


def _row_values(types: dict[str, str], row_type: type) -> Any:
    """A function of a row to its values, in ``types`` order."""
    assert tuple(types) == tuple(f.name for f in dataclasses.fields(row_type)), row_type
    return operator.attrgetter(*types)

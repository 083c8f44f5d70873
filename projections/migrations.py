"""Ordered SQL migrations of one projections schema.

The files are ``projections/sql/NNN_name.sql``, applied in order, each in its
own transaction with ``search_path`` set to the target schema, and recorded
in that schema's ``schema_migrations`` table with the SHA-256 of the file.
Because the files never name a schema, the same files build the live schema
(``projections``) and any number of scratch schemas beside it, which is what
a rebuild compares against the live one.

A run holds an advisory lock for its schema, so two processes starting at
once apply each file once; re-running is a no-op. A recorded file whose
content changed is an error: applied migrations are history and are never
edited. Nothing here drops anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import psycopg
from psycopg import sql

from ledger.errors import InfrastructureError
from ledger.migrations import Migration, migration_files
from ledger.migrations import check_schema_name as schema_name
from projections import limits

SQL_DIR: Final = Path(__file__).with_name("sql")
DEFAULT_SCHEMA: Final = "projections"
MIGRATIONS_TABLE: Final = "schema_migrations"
# The first key of every advisory lock the projections take ("prjn"); the
# second is the hash of the schema name, so schemas never wait on each other.
LOCK_CLASS: Final = 0x70726A6E


def check_schema_name(schema: str) -> str:
    """``schema`` when it is a name a projections schema may have; else ``ConfigurationError``."""
    return schema_name(schema, "a projections", limits.SCHEMA_NAME_CHARS_MAX)


def migrations(directory: Path = SQL_DIR) -> list[Migration]:
    """The migration files of ``directory``, in order; refuses misnamed or duplicate ones."""
    return migration_files(directory, "projection")


async def migrate(dsn: str, schema: str = DEFAULT_SCHEMA, directory: Path = SQL_DIR) -> list[str]:
    """Create ``schema`` if needed and apply its pending migrations; returns the names applied."""
    check_schema_name(schema)
    async with await psycopg.AsyncConnection.connect(
        dsn, autocommit=True, connect_timeout=limits.POSTGRES_CONNECT_TIMEOUT_S
    ) as connection:
        return await migrate_on(connection, schema, directory)


async def migrate_on(
    connection: psycopg.AsyncConnection[Any], schema: str, directory: Path = SQL_DIR
) -> list[str]:
    """``migrate`` on an open autocommit connection (the applier's own)."""
    check_schema_name(schema)
    pending = migrations(directory)
    applied: list[str] = []
    await connection.execute(
        "SELECT pg_advisory_lock(%s, hashtext(%s))", (LOCK_CLASS, f"migrate:{schema}")
    )
    try:
        await connection.execute(
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
        )
        table = sql.Identifier(schema, MIGRATIONS_TABLE)
        await connection.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (version integer PRIMARY KEY,"
                " name text NOT NULL, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(table)
        )
        cursor = await connection.execute(sql.SQL("SELECT version, checksum FROM {}").format(table))
        done = {version: checksum for version, checksum in await cursor.fetchall()}
        for migration in pending:
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    raise InfrastructureError(
                        f"projection migration {migration.name} changed after it was applied"
                        f" to schema {schema}"
                    )
                continue
            await _apply(connection, schema, table, migration)
            applied.append(migration.name)
    finally:
        await connection.execute(
            "SELECT pg_advisory_unlock(%s, hashtext(%s))", (LOCK_CLASS, f"migrate:{schema}")
        )
    return applied


async def _apply(
    connection: psycopg.AsyncConnection[Any],
    schema: str,
    table: sql.Identifier,
    migration: Migration,
) -> None:
    async with connection.transaction():
        # SET LOCAL: the schema is the search path of this transaction only.
        await connection.execute(
            sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema))
        )
        await connection.execute(migration.sql.encode())
        await connection.execute(
            sql.SQL("INSERT INTO {} (version, name, checksum) VALUES (%s, %s, %s)").format(table),
            (migration.version, migration.name, migration.checksum),
        )

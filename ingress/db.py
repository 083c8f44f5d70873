"""Postgres for the ingress: a connection pool and ordered SQL migrations.

Migrations are the files ``ingress/sql/NNN_name.sql``, applied in order, each
in its own transaction, and recorded in ``ingress_migrations``; a run takes an
advisory lock so two processes starting at once apply each file once.
Re-running is a no-op. A recorded file whose content changed is an error:
applied migrations are history and are never edited.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
from psycopg_pool import AsyncConnectionPool

from ledger.config import Settings
from ledger.errors import InfrastructureError
from ledger.migrations import Migration, migration_files

SQL_DIR = Path(__file__).with_name("sql")
_LOCK_ID = 0x7061796C  # "payl": one advisory lock id for ingress migrations
POOL_CONNECTIONS_MIN = 2
POOL_CONNECTIONS_MAX = 16
POOL_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 5


def migrations(directory: Path = SQL_DIR) -> list[Migration]:
    return migration_files(directory, "ingress")


async def migrate(dsn: str, directory: Path = SQL_DIR) -> list[str]:
    """Apply every pending migration; returns the names applied by this call."""
    applied: list[str] = []
    async with await psycopg.AsyncConnection.connect(
        dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
    ) as connection:
        await connection.execute("SELECT pg_advisory_lock(%s)", (_LOCK_ID,))
        try:
            await connection.execute(
                "CREATE TABLE IF NOT EXISTS ingress_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cursor = await connection.execute("SELECT version, checksum FROM ingress_migrations")
            done = {version: checksum for version, checksum in await cursor.fetchall()}
            for migration in migrations(directory):
                if migration.version in done:
                    if done[migration.version] != migration.checksum:
                        raise InfrastructureError(
                            f"migration {migration.name} changed after it was applied"
                        )
                    continue
                async with connection.transaction():
                    await connection.execute(migration.sql.encode())
                    await connection.execute(
                        "INSERT INTO ingress_migrations (version, name, checksum)"
                        " VALUES (%s, %s, %s)",
                        (migration.version, migration.name, migration.checksum),
                    )
                applied.append(migration.name)
        finally:
            await connection.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
    return applied


def open_pool(settings: Settings) -> AsyncConnectionPool:
    """A pool that is not opened yet: ``await pool.open()`` in the app's lifespan."""
    return AsyncConnectionPool(
        settings.dsn(),
        min_size=POOL_CONNECTIONS_MIN,
        max_size=POOL_CONNECTIONS_MAX,
        timeout=POOL_TIMEOUT_S,
        open=False,
        kwargs={"connect_timeout": CONNECT_TIMEOUT_S},
    )

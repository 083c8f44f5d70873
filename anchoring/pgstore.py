"""The Merkle log in Postgres: a ``TreeStore`` that also keeps each leaf's record, the
consumed Kafka positions and the checkpoints, in one schema (``anchoring/sql``).

Tables (``sql/001_merkle_log.sql``)::

    leaves              leaf_index, topic, partition, offset, event_id, value_sha256, leaf_hash
    tree_nodes          level >= 1, node_index, hash (level 0 is leaves.leaf_hash)
    consumed_positions  topic, partition -> next_offset
    checkpoints         tree_size, root_hash, note, previous_size, consistency_proof, ...
    checkpoint_hooks    which hook finished with which checkpoint

and where each checkpoint is anchored (``sql/002_checkpoint_anchors.sql``)::

    checkpoint_publications   tree_size -> checkpoint_cid, bundle_cid (IPFS)
    checkpoint_timestamps     tree_size, revision -> digest, ots, complete
    checkpoint_announcements  the anchored record went to the checkpoints topic

A batch is appended by ``append_batch``: ONE transaction holds its leaf rows,
every node the batch completes and the positions past its records, so after a
crash at any point the log holds all of a batch or none of it, and resumes
from positions that agree with it (no gap, no repeat). Inside, the tree calls
``append`` (the ``TreeStore`` method) which takes the log's advisory lock and
refuses the batch unless the store still holds ``size_before`` leaves: two
writers cannot interleave. Leaves go in only with their records: ``append``
outside ``append_batch`` is refused, so every leaf hash has its row.

The connection is synchronous (the tree calls its store synchronously); the
worker runs all of it on one thread of its own. Migrations follow the
projections' pattern: numbered files applied in order, each in its own
transaction with ``search_path`` set to the schema, recorded with their
SHA-256 under an advisory lock.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final, LiteralString

import psycopg
from psycopg import sql

from ledger.errors import InfrastructureError
from ledger.migrations import check_schema_name as schema_name
from ledger.migrations import migration_files
from ledger.tlog.errors import TreeError
from ledger.tlog.leaf import LeafRecord
from ledger.tlog.merkle import leaf_hash
from ledger.tlog.tree import MerkleTree

Connection = psycopg.Connection[Any]

SQL_DIR: Final = Path(__file__).with_name("sql")
MIGRATIONS_TABLE: Final = "schema_migrations"
# The first key of the anchoring's advisory locks ("anch"); the second is the
# hash of what is locked and the schema, so schemas never wait on each other.
LOCK_CLASS: Final = 0x616E6368
SCHEMA_NAME_CHARS_MAX: Final = 63
CONNECT_TIMEOUT_S: Final = 5
# A batch of the largest size appends in well under a second.
STATEMENT_TIMEOUT_MS: Final = 60_000

# The database refused the rows (a constraint, a value out of range).
REFUSED: Final = (psycopg.errors.IntegrityError, psycopg.errors.DataError)
# The database could not be used: the same batch may be retried.
UNAVAILABLE: Final = (psycopg.OperationalError, psycopg.InterfaceError)


def check_schema_name(schema: str) -> str:
    """``schema`` when it may name an anchoring schema; else ``ConfigurationError``."""
    return schema_name(schema, "an anchoring", SCHEMA_NAME_CHARS_MAX)


def connect(dsn: str, schema: str) -> Connection:
    """An autocommit connection whose search path is ``schema``; transactions are explicit."""
    check_schema_name(schema)
    return psycopg.Connection.connect(
        dsn,
        autocommit=True,
        connect_timeout=CONNECT_TIMEOUT_S,
        options=f"-c search_path={schema} -c statement_timeout={STATEMENT_TIMEOUT_MS}",
    )


# Migrations ------------------------------------------------------------------


def migrate(connection: Connection, schema: str, directory: Path = SQL_DIR) -> list[str]:
    """Create ``schema`` if needed and apply its pending migrations; returns the names applied."""
    check_schema_name(schema)
    found = migration_files(directory, "anchoring")
    applied: list[str] = []
    lock = (LOCK_CLASS, f"migrate:{schema}")
    connection.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", lock)
    try:
        connection.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        table = sql.Identifier(schema, MIGRATIONS_TABLE)
        connection.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (version integer PRIMARY KEY,"
                " name text NOT NULL, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(table)
        )
        done = dict(
            connection.execute(sql.SQL("SELECT version, checksum FROM {}").format(table)).fetchall()
        )
        for migration in found:
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    raise InfrastructureError(
                        f"anchoring migration {migration.name} changed after it was applied"
                        f" to {schema}"
                    )
                continue
            with connection.transaction():
                connection.execute(
                    sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema))
                )
                connection.execute(migration.sql.encode())
                connection.execute(
                    sql.SQL("INSERT INTO {} (version, name, checksum) VALUES (%s, %s, %s)").format(
                        table
                    ),
                    (migration.version, migration.name, migration.checksum),
                )
            applied.append(migration.name)
    finally:
        connection.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", lock)
    return applied


# Values ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Position:
    """The next offset to read in one partition."""

    topic: str
    partition: int
    next_offset: int


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    size: int
    root_hash: bytes
    origin: str
    note: str  # the signed note: checkpoint text, blank line, signature lines
    previous_size: int
    consistency_proof: tuple[bytes, ...]  # from previous_size to size
    created_at: datetime
    published_at: datetime | None


@dataclass(slots=True)
class _Staged:
    records: Sequence[LeafRecord]
    hashes: list[bytes]
    positions: Sequence[Position]
    written: bool = False


_CHECKPOINT_COLUMNS: Final = sql.SQL(
    "tree_size, root_hash, origin, note, previous_size, consistency_proof, created_at, published_at"
)


def _checkpoint(row: Sequence[Any]) -> StoredCheckpoint:
    size, root, origin, note, previous, proof, created_at, published_at = row
    return StoredCheckpoint(
        size,
        bytes(root),
        origin,
        note,
        previous,
        tuple(bytes(h) for h in proof),
        created_at,
        published_at,
    )


@dataclass(frozen=True, slots=True)
class IpfsPublication:
    size: int
    checkpoint_cid: str
    bundle_cid: str


@dataclass(frozen=True, slots=True)
class StoredTimestamp:
    size: int
    revision: int  # 1 for the first proof, one more for each better one
    digest: bytes  # SHA-256 of the signed note
    ots: bytes
    complete: bool  # reaches a Bitcoin block


@dataclass(frozen=True, slots=True)
class Anchors:
    """What the anchored record of a checkpoint adds: its CIDs and complete proof."""

    checkpoint_cid: str | None
    bundle_cid: str | None
    timestamp_proof: bytes | None
    timestamp_revision: int | None


def _timestamp(row: Sequence[Any]) -> StoredTimestamp:
    size, revision, digest, ots, complete = row
    return StoredTimestamp(size, revision, bytes(digest), bytes(ots), complete)


# The store -------------------------------------------------------------------


class PostgresTreeStore:
    """The Merkle log of one schema, on one connection (one thread uses it)."""

    __slots__ = ("_connection", "_schema", "_staged")

    def __init__(self, connection: Connection, schema: str) -> None:
        self._connection = connection
        self._schema = check_schema_name(schema)
        self._staged: _Staged | None = None

    @property
    def connection(self) -> Connection:
        return self._connection

    # TreeStore ---------------------------------------------------------------

    def size(self) -> int:
        row = self._connection.execute("SELECT coalesce(max(leaf_index) + 1, 0) FROM leaves")
        found = row.fetchone()
        assert found is not None
        return int(found[0])

    def node(self, level: int, index: int) -> bytes:
        if level == 0:
            cursor = self._connection.execute(
                "SELECT leaf_hash FROM leaves WHERE leaf_index = %s", (index,)
            )
        else:
            cursor = self._connection.execute(
                "SELECT hash FROM tree_nodes WHERE level = %s AND node_index = %s", (level, index)
            )
        row = cursor.fetchone()
        if row is None:
            raise TreeError(f"no complete node ({level}, {index})")
        return bytes(row[0])

    def append(self, size_before: int, nodes_by_level: Sequence[Sequence[bytes]]) -> None:
        staged = self._staged
        if staged is None or staged.written:
            raise TreeError("leaves are appended with their records, by append_batch")
        if not nodes_by_level or list(nodes_by_level[0]) != staged.hashes:
            raise TreeError("the tree's new leaves are not the staged records'")
        size_after = size_before + len(staged.hashes)
        # The same arithmetic as the memory store: level l holds size >> l nodes.
        for level, nodes in enumerate(nodes_by_level):
            if (size_before >> level) + len(nodes) != size_after >> level:
                raise TreeError(f"level {level} would not hold {size_after >> level} nodes")
        top = len(nodes_by_level)
        if size_after >> top != size_before >> top:
            raise TreeError(f"level {top} is missing its new nodes")
        connection = self._connection
        self._lock()
        stored = self.size()
        if stored != size_before:
            raise TreeError(f"store holds {stored} leaves, not {size_before}")
        with connection.cursor() as cursor:
            with cursor.copy(
                'COPY leaves (leaf_index, topic, partition, "offset", event_id, value_sha256,'
                " leaf_hash) FROM STDIN"
            ) as copy:
                for index, (record, hashed) in enumerate(
                    zip(staged.records, staged.hashes, strict=True), size_before
                ):
                    copy.write_row(
                        (
                            index,
                            record.topic,
                            record.partition,
                            record.offset,
                            record.event_id,
                            record.value_sha256,
                            hashed,
                        )
                    )
            if top > 1:
                with cursor.copy("COPY tree_nodes (level, node_index, hash) FROM STDIN") as copy:
                    for level in range(1, top):
                        first = size_before >> level
                        for offset, value in enumerate(nodes_by_level[level]):
                            copy.write_row((level, first + offset, value))
        self._write_positions(staged.positions)
        staged.written = True

    # Batches -----------------------------------------------------------------

    def append_batch(
        self, tree: MerkleTree, records: Sequence[LeafRecord], positions: Sequence[Position]
    ) -> int:
        """Append ``records`` as leaves and store ``positions``, in one transaction.

        Returns the index of the first new leaf. When this raises, the tree
        may be ahead of the store (the commit failed after the tree moved):
        the caller opens a new ``MerkleTree`` on the store.
        """
        if not records:
            raise TreeError("an empty batch")
        hashes = [leaf_hash(record.to_bytes()) for record in records]
        with self._connection.transaction():
            self._staged = _Staged(records, hashes, positions)
            try:
                first = tree.append_leaf_hashes(hashes)
                if not self._staged.written:
                    raise AssertionError("the tree did not write the batch to its store")
            finally:
                self._staged = None
        return first

    def positions(self) -> dict[tuple[str, int], int]:
        """(topic, partition) -> the next offset to read, as committed with the leaves."""
        rows = self._connection.execute(
            "SELECT topic, partition, next_offset FROM consumed_positions"
        ).fetchall()
        return {(topic, partition): next_offset for topic, partition, next_offset in rows}

    def leaf_records(self, start: int, end: int) -> list[LeafRecord]:
        """The records of leaves [start, end), in log order."""
        rows = self._connection.execute(
            'SELECT topic, partition, "offset", event_id, value_sha256 FROM leaves'
            " WHERE leaf_index >= %s AND leaf_index < %s ORDER BY leaf_index",
            (start, end),
        ).fetchall()
        return [LeafRecord(t, p, o, e, bytes(d)) for t, p, o, e, d in rows]

    def leaf_indexes(self, event_id: str) -> list[int]:
        """The leaves of an event id, first first (a republished event has more than one)."""
        rows = self._connection.execute(
            "SELECT leaf_index FROM leaves WHERE event_id = %s ORDER BY leaf_index", (event_id,)
        ).fetchall()
        return [index for (index,) in rows]

    def leaf_index_at(self, topic: str, partition: int, offset: int) -> int | None:
        row = self._connection.execute(
            'SELECT leaf_index FROM leaves WHERE topic = %s AND partition = %s AND "offset" = %s',
            (topic, partition, offset),
        ).fetchone()
        return None if row is None else int(row[0])

    # Checkpoints -------------------------------------------------------------

    def add_checkpoint(
        self,
        *,
        size: int,
        root_hash: bytes,
        origin: str,
        note: str,
        previous_size: int,
        consistency_proof: Sequence[bytes],
    ) -> StoredCheckpoint:
        """Store a checkpoint of the log as it is: refused unless the log has ``size`` leaves."""
        with self._connection.transaction():
            self._lock()
            stored = self.size()
            if stored != size:
                raise TreeError(f"a checkpoint of size {size} for a log of {stored} leaves")
            row = self._connection.execute(
                sql.SQL(
                    "INSERT INTO checkpoints (tree_size, root_hash, origin, note, previous_size,"
                    " consistency_proof) VALUES (%s, %s, %s, %s, %s, %s::bytea[]) RETURNING {}"
                ).format(_CHECKPOINT_COLUMNS),
                (size, root_hash, origin, note, previous_size, list(consistency_proof)),
            ).fetchone()
        assert row is not None
        return _checkpoint(row)

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        found = self._checkpoints("ORDER BY tree_size DESC LIMIT 1")
        return found[0] if found else None

    def checkpoint(self, size: int) -> StoredCheckpoint | None:
        found = self._checkpoints("WHERE tree_size = %s", size)
        return found[0] if found else None

    def checkpoints(self, *, after: int = 0, limit: int = 1000) -> list[StoredCheckpoint]:
        """Checkpoints of a size above ``after``, smallest first."""
        return self._checkpoints("WHERE tree_size > %s ORDER BY tree_size LIMIT %s", after, limit)

    def unpublished_checkpoints(self) -> list[StoredCheckpoint]:
        return self._checkpoints("WHERE published_at IS NULL ORDER BY tree_size")

    def mark_published(self, size: int) -> None:
        self._connection.execute(
            "UPDATE checkpoints SET published_at = now() WHERE tree_size = %s"
            " AND published_at IS NULL",
            (size,),
        )

    def checkpoints_pending_hook(self, hook: str, limit: int = 100) -> list[StoredCheckpoint]:
        """Published checkpoints ``hook`` has not finished with, smallest first."""
        return self._checkpoints(
            "WHERE published_at IS NOT NULL AND NOT EXISTS (SELECT FROM checkpoint_hooks AS h"
            " WHERE h.hook = %s AND h.tree_size = checkpoints.tree_size)"
            " ORDER BY tree_size LIMIT %s",
            hook,
            limit,
        )

    def mark_hook_done(self, hook: str, size: int) -> None:
        self._connection.execute(
            "INSERT INTO checkpoint_hooks (hook, tree_size) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            (hook, size),
        )

    # Anchors -----------------------------------------------------------------

    def publication(self, size: int) -> IpfsPublication | None:
        row = self._connection.execute(
            "SELECT checkpoint_cid, bundle_cid FROM checkpoint_publications WHERE tree_size = %s",
            (size,),
        ).fetchone()
        return None if row is None else IpfsPublication(size, row[0], row[1])

    def add_publication(self, size: int, checkpoint_cid: str, bundle_cid: str) -> IpfsPublication:
        """Record the CIDs of a checkpoint; returns what is stored (an earlier row wins)."""
        self._connection.execute(
            "INSERT INTO checkpoint_publications (tree_size, checkpoint_cid, bundle_cid)"
            " VALUES (%s, %s, %s) ON CONFLICT (tree_size) DO NOTHING",
            (size, checkpoint_cid, bundle_cid),
        )
        stored = self.publication(size)
        assert stored is not None
        return stored

    def timestamp(self, size: int) -> StoredTimestamp | None:
        """The newest proof of a checkpoint."""
        row = self._connection.execute(
            "SELECT tree_size, revision, digest, ots, complete FROM checkpoint_timestamps"
            " WHERE tree_size = %s ORDER BY revision DESC LIMIT 1",
            (size,),
        ).fetchone()
        return None if row is None else _timestamp(row)

    def add_timestamp(
        self, size: int, digest: bytes, ots: bytes, complete: bool
    ) -> StoredTimestamp:
        """Store a proof as the checkpoint's newest, unless it is the newest already."""
        with self._connection.transaction():
            self._connection.execute(
                "SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                (LOCK_CLASS, f"timestamps:{self._schema}"),
            )
            latest = self.timestamp(size)
            if latest is not None:
                if latest.digest != digest:
                    raise TreeError(f"checkpoint {size} was stamped with another digest")
                if latest.ots == ots:
                    return latest
            revision = 1 if latest is None else latest.revision + 1
            self._connection.execute(
                "INSERT INTO checkpoint_timestamps (tree_size, revision, digest, ots, complete)"
                " VALUES (%s, %s, %s, %s, %s)",
                (size, revision, digest, ots, complete),
            )
        return StoredTimestamp(size, revision, digest, ots, complete)

    def pending_timestamps(self) -> list[StoredTimestamp]:
        """The checkpoints whose newest proof is not complete yet, smallest first."""
        rows = self._connection.execute(
            "SELECT DISTINCT ON (tree_size) tree_size, revision, digest, ots, complete"
            " FROM checkpoint_timestamps ORDER BY tree_size, revision DESC"
        ).fetchall()
        return [stamp for stamp in map(_timestamp, rows) if not stamp.complete]

    def anchored_unannounced(
        self, *, cids: bool, timestamp: bool, limit: int = 100
    ) -> list[tuple[StoredCheckpoint, Anchors]]:
        """Published checkpoints with every anchor asked for, not announced yet; smallest first.

        ``cids``: only those with their IPFS CIDs; ``timestamp``: only those
        with a complete proof. With neither, none: there is nothing to announce.
        """
        if not (cids or timestamp):
            return []
        found = self._checkpoints(
            "WHERE published_at IS NOT NULL"
            " AND NOT EXISTS (SELECT FROM checkpoint_announcements AS a"
            " WHERE a.tree_size = checkpoints.tree_size)"
            " AND (NOT %s OR EXISTS (SELECT FROM checkpoint_publications AS p"
            " WHERE p.tree_size = checkpoints.tree_size))"
            " AND (NOT %s OR EXISTS (SELECT FROM checkpoint_timestamps AS t"
            " WHERE t.tree_size = checkpoints.tree_size AND t.complete))"
            " ORDER BY tree_size LIMIT %s",
            cids,
            timestamp,
            limit,
        )
        anchored = []
        for checkpoint in found:
            publication = self.publication(checkpoint.size)
            stamp = self.timestamp(checkpoint.size)
            anchored.append(
                (
                    checkpoint,
                    Anchors(
                        None if publication is None else publication.checkpoint_cid,
                        None if publication is None else publication.bundle_cid,
                        None if stamp is None or not stamp.complete else stamp.ots,
                        None if stamp is None or not stamp.complete else stamp.revision,
                    ),
                )
            )
        return anchored

    def mark_announced(self, size: int, anchors: Anchors) -> None:
        self._connection.execute(
            "INSERT INTO checkpoint_announcements (tree_size, checkpoint_cid, bundle_cid,"
            " timestamp_revision) VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (size, anchors.checkpoint_cid, anchors.bundle_cid, anchors.timestamp_revision),
        )

    def announced(self, size: int) -> bool:
        row = self._connection.execute(
            "SELECT 1 FROM checkpoint_announcements WHERE tree_size = %s", (size,)
        ).fetchone()
        return row is not None

    # Internals ---------------------------------------------------------------

    def _checkpoints(self, rest: LiteralString, *params: object) -> list[StoredCheckpoint]:
        statement = sql.SQL("SELECT {} FROM checkpoints {}").format(
            _CHECKPOINT_COLUMNS, sql.SQL(rest)
        )
        return [_checkpoint(row) for row in self._connection.execute(statement, params).fetchall()]

    def _lock(self) -> None:
        """The log's writer lock, until the transaction ends."""
        self._connection.execute(
            "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_CLASS, f"log:{self._schema}")
        )

    def _write_positions(self, positions: Sequence[Position]) -> None:
        if not positions:
            return
        # A position never moves back: a stale writer cannot rewind the log's reader.
        self._connection.execute(
            "INSERT INTO consumed_positions AS stored (topic, partition, next_offset)"
            " SELECT * FROM unnest(%s::text[], %s::integer[], %s::bigint[])"
            " ON CONFLICT (topic, partition) DO UPDATE SET"
            " next_offset = greatest(stored.next_offset, EXCLUDED.next_offset),"
            " updated_at = now()",
            (
                [p.topic for p in positions],
                [p.partition for p in positions],
                [p.next_offset for p in positions],
            ),
        )


@contextmanager
def opened(dsn: str, schema: str) -> Iterator[PostgresTreeStore]:
    """A migrated store on a connection of its own, closed at the end."""
    connection = connect(dsn, schema)
    try:
        migrate(connection, schema)
        yield PostgresTreeStore(connection, schema)
    finally:
        connection.close()


def positions_past(records: Sequence[LeafRecord]) -> list[Position]:
    """The position after the last of ``records`` in each partition they come from."""
    ends: dict[tuple[str, int], int] = {}
    for record in records:
        key = (record.topic, record.partition)
        ends[key] = max(ends.get(key, 0), record.offset + 1)
    return [Position(topic, partition, end) for (topic, partition), end in ends.items()]


def by_partition(positions: Mapping[tuple[str, int], int], topic: str) -> dict[int, int]:
    """One topic's positions, partition -> next offset."""
    return {p: offset for (t, p), offset in positions.items() if t == topic}

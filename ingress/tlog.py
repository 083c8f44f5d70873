"""The read side of the anchoring worker's Merkle log, for the ingress's transparency routes.

The anchoring worker writes the log into its own schema
(``Settings.anchoring_schema``, tables in ``anchoring/sql``); the ingress never
imports the anchoring package, so the tables and columns read here are the
contract::

    leaves       leaf_index, topic, partition, offset, event_id, value_sha256, leaf_hash
    tree_nodes   level >= 1, node_index, hash (level 0 is leaves.leaf_hash)
    checkpoints  tree_size, root_hash, origin, note, previous_size, consistency_proof, created_at

and what anchors each checkpoint (migration 002; a schema migrated before it
reads as one where nothing is anchored)::

    checkpoint_publications  tree_size, checkpoint_cid, bundle_cid, published_at
    checkpoint_timestamps    tree_size, revision, digest, ots, complete, stored_at
                             (one row per state of the proof; the newest revision is current)

Every statement here is a read. The log is append-only and a checkpoint is
stored only once the log holds its leaves, so every node below a
checkpoint's size is final: no snapshot isolation is needed to serve proofs.

**Proofs in one round trip.** Node ``(level, index)`` is the root of the
2**level leaves from leaf ``index * 2**level`` (``ledger.tlog.store``). Which
nodes a proof reads is a function of the sizes and index alone
(``inclusion_nodes``, ``consistency_nodes``, ``frontier_nodes``), so they are
computed first, fetched with one statement, and handed to
``ledger.tlog.tree.MerkleTree`` in a ``FetchedNodes`` store: the proofs come
from the same code that the worker and the auditor use, and a node the
computation missed is a ``TreeError``, never a silent extra query.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import psycopg
from psycopg import sql

from ledger.tlog.errors import TreeError
from ledger.tlog.leaf import LeafRecord
from ledger.tlog.merkle import largest_power_of_two_below
from ledger.tlog.tree import MerkleTree

Connection = psycopg.AsyncConnection[Any]
Node = tuple[int, int]  # (level, index)

# Leaves listed for one event id. Event ids are unique per event, but a
# republished event is a second leaf, and every record that did not decode
# shares one placeholder id: the answer must stay small whatever is asked.
EVENT_LEAVES_MAX: Final = 16
# The tables of migration 002, read only when the schema has them.
ANCHOR_TABLES: Final = ("checkpoint_publications", "checkpoint_timestamps")


# Which nodes a proof reads ----------------------------------------------------------------


def perfect_subtrees(start: int, end: int) -> list[Node]:
    """The perfect subtrees that tile leaves [start, end), largest first.

    The same tiling as ``MerkleTree._subtree``: MTH(D[start:end]) is the right
    fold of their hashes. ``start`` must be aligned as the RFC's recursion
    aligns it (a multiple of the largest tile).
    """
    count = end - start
    if count <= 0:
        raise ValueError(f"empty range [{start}, {end})")
    tiles: list[Node] = []
    position = start
    for level in range(count.bit_length() - 1, -1, -1):
        if count >> level & 1:
            if position & ((1 << level) - 1):
                raise ValueError(f"unaligned range [{start}, {end})")
            tiles.append((level, position >> level))
            position += 1 << level
    return tiles


def frontier_nodes(size: int) -> list[Node]:
    """The nodes that make up the root at ``size`` (what ``MerkleTree`` reads when it opens)."""
    return [] if size == 0 else perfect_subtrees(0, size)


def inclusion_nodes(index: int, size: int) -> set[Node]:
    """The nodes ``MerkleTree.inclusion_proof(index, size)`` reads."""
    if not 0 <= index < size:
        raise ValueError(f"no leaf {index} in a tree of size {size}")
    nodes: set[Node] = set()
    start, end = 0, size
    while end - start > 1:
        half = start + largest_power_of_two_below(end - start)
        if index < half:
            nodes.update(perfect_subtrees(half, end))
            end = half
        else:
            nodes.update(perfect_subtrees(start, half))
            start = half
    return nodes


def consistency_nodes(first: int, second: int) -> set[Node]:
    """The nodes ``consistency_proof(first, second)`` and ``root(first)`` read, on a tree
    opened at ``second``."""
    if not 0 <= first <= second:
        raise ValueError(f"no consistency proof from size {first} to size {second}")
    if first in (0, second):
        return set()  # the root at ``second`` is the opened tree's own
    nodes = set(frontier_nodes(first))
    start, end = 0, second
    whole_subtree = True
    while first < end:
        half = start + largest_power_of_two_below(end - start)
        if first <= half:
            nodes.update(perfect_subtrees(half, end))
            end = half
        else:
            nodes.update(perfect_subtrees(start, half))
            start = half
            whole_subtree = False
    if not whole_subtree:
        nodes.update(perfect_subtrees(start, end))
    return nodes


class FetchedNodes:
    """A read-only ``TreeStore`` of the log at one size, holding only the nodes fetched."""

    __slots__ = ("_nodes", "_size")

    def __init__(self, size: int, nodes: Mapping[Node, bytes]) -> None:
        self._size = size
        self._nodes = dict(nodes)

    def size(self) -> int:
        return self._size

    def node(self, level: int, index: int) -> bytes:
        found = self._nodes.get((level, index))
        if found is None:
            raise TreeError(f"node ({level}, {index}) was not fetched")
        return found

    def append(self, size_before: int, nodes_by_level: Sequence[Sequence[bytes]]) -> None:
        raise TreeError("the ingress reads the log; only the anchoring worker appends")


# Rows -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    size: int
    root_hash: bytes
    origin: str
    note: str  # the signed note, exactly as stored
    previous_size: int
    consistency_proof: tuple[bytes, ...]  # from previous_size to size
    created_at: datetime


@dataclass(frozen=True, slots=True)
class TimestampRow:
    """The current (newest) OpenTimestamps proof of a checkpoint, without its bytes."""

    revision: int
    digest: bytes  # SHA-256 of the signed note: what was stamped
    complete: bool  # reaches a Bitcoin block; else calendars' promises only
    stored_at: datetime


@dataclass(frozen=True, slots=True)
class AnchorsRow:
    """What anchors one checkpoint: its IPFS CIDs and its current timestamp, each maybe not yet."""

    size: int
    checkpoint_cid: str | None
    bundle_cid: str | None
    published_at: datetime | None  # when the CIDs were recorded
    timestamp: TimestampRow | None


@dataclass(frozen=True, slots=True)
class TimestampProof:
    """The current ``.ots`` of a checkpoint."""

    stamp: TimestampRow
    ots: bytes


@dataclass(frozen=True, slots=True)
class LeafRow:
    index: int
    record: LeafRecord
    leaf_hash: bytes


class LogReader:
    """Read-only statements against one anchoring schema, on a connection the caller owns."""

    __slots__ = ("_connection", "_schema")

    def __init__(self, connection: Connection, schema: str) -> None:
        self._connection = connection
        self._schema = schema

    def _table(self, name: str) -> sql.Identifier:
        return sql.Identifier(self._schema, name)

    # Checkpoints ----------------------------------------------------------------------

    async def latest_checkpoint(self) -> CheckpointRow | None:
        return await self._checkpoint(sql.SQL("ORDER BY tree_size DESC LIMIT 1"), {})

    async def checkpoint(self, size: int) -> CheckpointRow | None:
        return await self._checkpoint(sql.SQL("WHERE tree_size = %(size)s"), {"size": size})

    async def _checkpoint(
        self, rest: sql.Composable, params: dict[str, Any]
    ) -> CheckpointRow | None:
        statement = sql.SQL(
            "SELECT tree_size, root_hash, origin, note, previous_size, consistency_proof,"
            " created_at FROM {} {}"
        ).format(self._table("checkpoints"), rest)
        cursor = await self._connection.execute(statement, params)
        row = await cursor.fetchone()
        if row is None:
            return None
        size, root, origin, note, previous, proof, created_at = row
        return CheckpointRow(
            size, bytes(root), origin, note, previous, tuple(bytes(h) for h in proof), created_at
        )

    # Anchors --------------------------------------------------------------------------

    async def has_anchor_tables(self) -> bool:
        """Whether the schema is migrated far enough to record anchors (migration 002)."""
        cursor = await self._connection.execute(
            "SELECT count(*) FROM pg_catalog.pg_tables"
            " WHERE schemaname = %s AND tablename = ANY(%s)",
            (self._schema, list(ANCHOR_TABLES)),
        )
        row = await cursor.fetchone()
        return row is not None and row[0] == len(ANCHOR_TABLES)

    async def anchors(self, size: int) -> AnchorsRow:
        """The CIDs and current timestamp of the checkpoint of ``size``, in one statement.

        The caller knows the checkpoint exists. A schema without the anchor
        tables answers as if nothing anchors it.
        """
        if not await self.has_anchor_tables():
            return AnchorsRow(size, None, None, None, None)
        statement = sql.SQL(
            "SELECT p.checkpoint_cid, p.bundle_cid, p.published_at,"
            " t.revision, t.digest, t.complete, t.stored_at"
            " FROM (VALUES (%(size)s::bigint)) AS c (tree_size)"
            " LEFT JOIN {publications} AS p ON p.tree_size = c.tree_size"
            " LEFT JOIN LATERAL (SELECT revision, digest, complete, stored_at FROM {timestamps}"
            " WHERE tree_size = c.tree_size ORDER BY revision DESC LIMIT 1) AS t ON true"
        ).format(
            publications=self._table("checkpoint_publications"),
            timestamps=self._table("checkpoint_timestamps"),
        )
        cursor = await self._connection.execute(statement, {"size": size})
        row = await cursor.fetchone()
        assert row is not None  # one row from VALUES, whatever the joins find
        checkpoint_cid, bundle_cid, published_at, revision, digest, complete, stored_at = row
        stamp = (
            None if revision is None else TimestampRow(revision, bytes(digest), complete, stored_at)
        )
        return AnchorsRow(size, checkpoint_cid, bundle_cid, published_at, stamp)

    async def timestamp_proof(self, size: int) -> TimestampProof | None:
        """The current ``.ots`` of the checkpoint of ``size``; None if it has none."""
        if not await self.has_anchor_tables():
            return None
        statement = sql.SQL(
            "SELECT revision, digest, complete, stored_at, ots FROM {}"
            " WHERE tree_size = %s ORDER BY revision DESC LIMIT 1"
        ).format(self._table("checkpoint_timestamps"))
        cursor = await self._connection.execute(statement, (size,))
        row = await cursor.fetchone()
        if row is None:
            return None
        revision, digest, complete, stored_at, ots = row
        return TimestampProof(
            TimestampRow(revision, bytes(digest), complete, stored_at), bytes(ots)
        )

    # Leaves ---------------------------------------------------------------------------

    async def leaves_of_event(self, event_id: str, limit: int) -> list[LeafRow]:
        """The first ``limit`` leaves whose event id is ``event_id``, in log order."""
        statement = sql.SQL(
            'SELECT leaf_index, topic, partition, "offset", event_id, value_sha256, leaf_hash'
            " FROM {} WHERE event_id = %s ORDER BY leaf_index LIMIT %s"
        ).format(self._table("leaves"))
        cursor = await self._connection.execute(statement, (event_id, limit))
        return [
            LeafRow(
                index, LeafRecord(topic, partition, offset, event, bytes(digest)), bytes(hashed)
            )
            for index, topic, partition, offset, event, digest, hashed in await cursor.fetchall()
        ]

    # Nodes ----------------------------------------------------------------------------

    async def nodes(self, wanted: Iterable[Node]) -> dict[Node, bytes]:
        """The hashes of ``wanted`` that exist, in one statement."""
        leaf_indexes: list[int] = []
        levels: list[int] = []
        indexes: list[int] = []
        for level, index in set(wanted):
            if level == 0:
                leaf_indexes.append(index)
            else:
                levels.append(level)
                indexes.append(index)
        statement = sql.SQL(
            "SELECT 0, leaf_index, leaf_hash FROM {leaves} WHERE leaf_index = ANY(%s::bigint[])"
            " UNION ALL"
            " SELECT n.level, n.node_index, n.hash FROM {nodes} AS n"
            " JOIN unnest(%s::smallint[], %s::bigint[]) AS w (level, node_index)"
            " ON n.level = w.level AND n.node_index = w.node_index"
        ).format(leaves=self._table("leaves"), nodes=self._table("tree_nodes"))
        cursor = await self._connection.execute(statement, (leaf_indexes, levels, indexes))
        return {(level, index): bytes(hashed) for level, index, hashed in await cursor.fetchall()}

    async def tree(self, size: int, wanted: Iterable[Node]) -> MerkleTree:
        """A ``MerkleTree`` of the log at ``size`` that can read ``wanted`` and its own root."""
        nodes = await self.nodes({*wanted, *frontier_nodes(size)})
        return MerkleTree(FetchedNodes(size, nodes))

    async def inclusion_proofs(
        self, indexes: Sequence[int], size: int
    ) -> tuple[bytes, list[list[bytes]]]:
        """The root at ``size`` and the inclusion proof of each leaf index, nodes in one query."""
        wanted: set[Node] = set()
        for index in indexes:
            wanted |= inclusion_nodes(index, size)
        tree = await self.tree(size, wanted)
        return tree.root(), [tree.inclusion_proof(index, size) for index in indexes]

    async def consistency_proof(self, first: int, second: int) -> tuple[bytes, bytes, list[bytes]]:
        """The roots at ``first`` and ``second`` and the proof between them, nodes in one query."""
        tree = await self.tree(second, consistency_nodes(first, second))
        return tree.root(first), tree.root(), tree.consistency_proof(first, second)

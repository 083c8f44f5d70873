"""The log's writer: leaves in, in chunks of one transaction each; signed checkpoints out.

Free of Kafka and of Postgres: ``LogWriter`` appends through a ``LogBackend``
(``pgstore.PostgresTreeStore``, or a fake over ``MemoryTreeStore`` in tests)
and decides, with its ``Cadence``, when a checkpoint is due: once
``every_events`` leaves were appended since the last checkpoint, or
``interval_s`` passed since it, whichever comes first, and never when the log
did not grow. Chunks are cut where the count calls for a checkpoint, so a
checkpoint made by count holds exactly ``every_events`` new leaves.

``CheckpointHook`` is what IPFS publication and timestamping implement: work
done once per checkpoint after it is stored and published.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from anchoring.pgstore import Position, StoredCheckpoint, positions_past
from ledger.tlog.checkpoint import Checkpoint, sign_checkpoint, verify_log_growth
from ledger.tlog.errors import AnchoringError
from ledger.tlog.keys import AnchoringKey
from ledger.tlog.leaf import LeafRecord
from ledger.tlog.merkle import EMPTY_ROOT
from ledger.tlog.tree import MerkleTree

Clock = Callable[[], float]


class Cadence:
    """When the next checkpoint is due: every N new leaves or T seconds, whichever first."""

    __slots__ = ("_clock", "every_events", "interval_s", "last_at", "last_size")

    def __init__(self, every_events: int, interval_s: float, last_size: int, clock: Clock) -> None:
        if every_events < 1 or interval_s <= 0:
            raise ValueError("a cadence needs every_events >= 1 and interval_s > 0")
        self.every_events = every_events
        self.interval_s = interval_s
        self.last_size = last_size
        self._clock = clock
        # Time counts from the start: a log that grew while the worker was down
        # is checkpointed one interval after it starts again, or sooner by count.
        self.last_at = clock()

    def due(self, size: int) -> bool:
        grown = size - self.last_size
        if grown <= 0:
            return False
        return grown >= self.every_events or self._clock() - self.last_at >= self.interval_s

    def room(self, size: int) -> int:
        """How many leaves may be appended before the count calls for a checkpoint."""
        return max(self.every_events - (size - self.last_size), 1)

    def made(self, size: int) -> None:
        self.last_size = size
        self.last_at = self._clock()


class LogBackend(Protocol):
    """Where the writer keeps the log: ``pgstore.PostgresTreeStore``, or a fake in tests."""

    def append_batch(
        self, tree: MerkleTree, records: Sequence[LeafRecord], positions: Sequence[Position]
    ) -> int: ...

    def latest_checkpoint(self) -> StoredCheckpoint | None: ...

    def add_checkpoint(
        self,
        *,
        size: int,
        root_hash: bytes,
        origin: str,
        note: str,
        previous_size: int,
        consistency_proof: Sequence[bytes],
    ) -> StoredCheckpoint: ...


class LogWriter:
    """Leaves in, in chunks of one transaction each; signed checkpoints out, on the cadence.

    Synchronous and free of Kafka: the worker runs it on its database thread.
    Chunks are cut where the count calls for a checkpoint, so a checkpoint
    made by count holds exactly ``every_events`` new leaves.
    """

    __slots__ = ("_backend", "_cadence", "_key", "tree")

    def __init__(
        self, backend: LogBackend, tree: MerkleTree, key: AnchoringKey, cadence: Cadence
    ) -> None:
        self._backend = backend
        self._key = key
        self._cadence = cadence
        self.tree = tree

    def append(self, leaves: Sequence[LeafRecord]) -> list[StoredCheckpoint]:
        """Append ``leaves`` in order; returns the checkpoints made meanwhile (and after)."""
        made: list[StoredCheckpoint] = []
        start = 0
        while start < len(leaves):
            made += self._checkpoint_if_due()
            end = start + min(self._cadence.room(self.tree.size), len(leaves) - start)
            chunk = leaves[start:end]
            self._backend.append_batch(self.tree, chunk, positions_past(chunk))
            start = end
        made += self._checkpoint_if_due()
        return made

    def _checkpoint_if_due(self) -> list[StoredCheckpoint]:
        if not self._cadence.due(self.tree.size):
            return []
        stored = self.checkpoint()
        return [] if stored is None else [stored]

    def checkpoint(self) -> StoredCheckpoint | None:
        """Sign and store a checkpoint of the log as it is, unless it did not grow."""
        tree, backend = self.tree, self._backend
        size = tree.size
        latest = backend.latest_checkpoint()
        previous_size = 0 if latest is None else latest.size
        previous_root = EMPTY_ROOT if latest is None else latest.root_hash
        if size <= previous_size:
            self._cadence.made(previous_size)
            return None
        if tree.root(previous_size) != previous_root:
            raise AnchoringError(f"the log no longer has the root of checkpoint {previous_size}")
        checkpoint = Checkpoint(self._key.public.name, size, tree.root())
        proof = tree.consistency_proof(previous_size, size)
        # Check before storing what every auditor checks after reading it.
        verify_log_growth(previous_size, previous_root, checkpoint, proof)
        stored = backend.add_checkpoint(
            size=size,
            root_hash=checkpoint.root_hash,
            origin=checkpoint.origin,
            note=sign_checkpoint(checkpoint, self._key),
            previous_size=previous_size,
            consistency_proof=proof,
        )
        self._cadence.made(size)
        return stored


# Hooks -----------------------------------------------------------------------


class LogView(Protocol):
    """What a hook may read of the log."""

    async def leaf_records(self, start: int, end: int) -> list[LeafRecord]: ...


class CheckpointHook(Protocol):
    """Work to do once per checkpoint, after it is stored and published (IPFS, timestamps).

    Called for every published checkpoint the hook has not finished with, in
    size order, one at a time; recorded as finished (``checkpoint_hooks``)
    when it returns. When it raises, the same checkpoint is offered again after
    a backoff, and after a restart: a hook must be idempotent.
    """

    @property
    def name(self) -> str: ...

    async def checkpoint_stored(self, checkpoint: StoredCheckpoint, log_view: LogView) -> None: ...

"""Where the Merkle log keeps its hashes: the storage interface and its in-memory implementation.

The store holds every *perfect* subtree hash: node ``(level, index)`` is the
root of the 2**level leaves starting at leaf ``index * 2**level``; level 0
holds the leaf hashes. Such a node never changes once its last leaf exists,
so the store is append-only per level, and any root or proof at any past
size is assembled from O(log n) stored nodes without rehashing leaves. A
log of n leaves stores fewer than 2n hashes.

A database-backed store implements the same three methods: ``append`` writes
one batch in one transaction and refuses it unless the store still holds
``size_before`` leaves, so two writers cannot interleave.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ledger.tlog.errors import TreeError


class TreeStore(Protocol):
    """Append-only storage of the perfect subtree hashes of one log."""

    def size(self) -> int:
        """How many leaves the store holds."""
        ...

    def node(self, level: int, index: int) -> bytes:
        """The hash of perfect subtree ``(level, index)``; it must be complete."""
        ...

    def append(self, size_before: int, nodes_by_level: Sequence[Sequence[bytes]]) -> None:
        """Add ``nodes_by_level[level]`` after the nodes each level already holds, all or nothing.

        ``nodes_by_level[0]`` are the new leaf hashes. Raises ``TreeError``
        unless the store holds exactly ``size_before`` leaves.
        """
        ...


class MemoryTreeStore:
    """The nodes of each level in one Python list: for tests, benchmarks and short-lived logs."""

    __slots__ = ("_levels",)

    def __init__(self) -> None:
        self._levels: list[list[bytes]] = [[]]

    def size(self) -> int:
        return len(self._levels[0])

    def node(self, level: int, index: int) -> bytes:
        try:
            if index < 0:
                raise IndexError(index)
            return self._levels[level][index]
        except IndexError:
            raise TreeError(f"no complete node ({level}, {index})") from None

    def append(self, size_before: int, nodes_by_level: Sequence[Sequence[bytes]]) -> None:
        levels = self._levels
        if size_before != len(levels[0]):
            raise TreeError(f"store holds {len(levels[0])} leaves, not {size_before}")
        if not nodes_by_level:
            return
        size_after = size_before + len(nodes_by_level[0])
        # Check the whole batch before changing anything, so a bad batch leaves
        # the store as it was. Level l always holds size >> l nodes; once a
        # level gains none, no level above it gains any either.
        for level, nodes in enumerate(nodes_by_level):
            if (size_before >> level) + len(nodes) != size_after >> level:
                raise TreeError(f"level {level} would not hold {size_after >> level} nodes")
        top = len(nodes_by_level)
        if size_after >> top != size_before >> top:
            raise TreeError(f"level {top} is missing its new nodes")
        while len(levels) < top:
            levels.append([])
        for level, nodes in enumerate(nodes_by_level):
            levels[level].extend(nodes)

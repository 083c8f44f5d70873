"""The append-only Merkle log of RFC 9162 over a ``TreeStore``: appends, roots and proofs.

The tree keeps the right-edge *frontier* in memory: for each set bit
``level`` of the size, the hash of the perfect subtree of 2**level leaves
that ends the log. Appending a leaf merges equal-sized subtrees exactly like
adding one to a binary counter, so it costs one leaf hash plus, on average,
one node hash (O(1) amortised, O(log n) at worst), and every node it
completes goes to the store in the same call. A batch does the same level by
level, pairing nodes in one pass per level. Opening a tree on a non-empty
store reads its frontier back (one node per set bit of the size), so the log
resumes where the store left off.

Proofs and past roots come from stored perfect subtrees: a subtree of the
RFC's recursion that is not perfect, MTH(D[a:b]), is the right fold of the
perfect subtrees that tile [a, b), at most log2(b - a) + 1 of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from ledger.tlog import limits
from ledger.tlog.errors import TreeError
from ledger.tlog.merkle import EMPTY_ROOT, HASH_BYTES, largest_power_of_two_below, node_hash
from ledger.tlog.store import MemoryTreeStore, TreeStore

_LEVELS = 64  # enough for TREE_SIZE_MAX leaves


class MerkleTree:
    """One append-only log. Not thread-safe: one writer owns it."""

    __slots__ = ("_frontier", "_size", "_store")

    def __init__(self, store: TreeStore | None = None) -> None:
        self._store: TreeStore = MemoryTreeStore() if store is None else store
        self._size = self._store.size()
        self._frontier = [EMPTY_ROOT] * _LEVELS
        for level in range(self._size.bit_length()):
            if self._size >> level & 1:
                self._frontier[level] = self._store.node(level, (self._size >> level) - 1)

    @property
    def size(self) -> int:
        return self._size

    # Appending ---------------------------------------------------------------

    def append(self, leaf_bytes: bytes) -> int:
        """Add one leaf; return its index."""
        index = self._size
        if index >= limits.TREE_SIZE_MAX:
            raise TreeError("the log is full")
        sha256 = hashlib.sha256
        value = sha256(b"\x00" + leaf_bytes).digest()
        new_nodes = [[value]]
        frontier = self._frontier
        # Adding one to a binary counter: each trailing one bit of the size is a
        # perfect subtree that merges with the new one into the next level.
        carry = index
        level = 0
        while carry & 1:
            value = sha256(b"\x01" + frontier[level] + value).digest()
            new_nodes.append([value])
            level += 1
            carry >>= 1
        self._store.append(index, new_nodes)
        # Only now does the frontier change: the entries below ``level`` stay,
        # but the size's bits there are zero, so nothing reads them.
        frontier[level] = value
        self._size = index + 1
        return index

    def append_many(self, leaves: Sequence[bytes]) -> int:
        """Add leaves in order, stored in one batch; return the index of the first."""
        sha256 = hashlib.sha256
        return self._append_hashes([sha256(b"\x00" + leaf).digest() for leaf in leaves])

    def append_leaf_hashes(self, leaf_hashes: Sequence[bytes]) -> int:
        """Add leaves already hashed as RFC 9162 leaf hashes; return the index of the first."""
        if any(len(leaf_hash) != HASH_BYTES for leaf_hash in leaf_hashes):
            raise TreeError("a leaf hash is 32 bytes")
        return self._append_hashes(list(leaf_hashes))

    def _append_hashes(self, leaf_hashes: list[bytes]) -> int:
        count = len(leaf_hashes)
        if count > limits.APPEND_BATCH_LEAVES_MAX:
            raise TreeError(
                f"{count} leaves in one batch, more than {limits.APPEND_BATCH_LEAVES_MAX}"
            )
        first = self._size
        if first + count > limits.TREE_SIZE_MAX:
            raise TreeError("the log is full")
        # Level by level: the pending frontier node (if any) and the new nodes
        # of a level pair up into the new nodes of the level above; an odd one
        # out becomes that level's frontier node. Work on a copy of the
        # frontier: it changes only once the store took the batch.
        frontier = self._frontier.copy()
        sha256 = hashlib.sha256
        new_nodes = [leaf_hashes]
        nodes = leaf_hashes
        level = 0
        while nodes:
            if first >> level & 1:
                nodes = [frontier[level], *nodes]
            if len(nodes) & 1:
                frontier[level] = nodes[-1]
            # Consecutive pairs; an odd last node is in the frontier already.
            pairs = iter(nodes)
            nodes = [
                sha256(b"\x01" + left + right).digest()
                for left, right in zip(pairs, pairs, strict=False)
            ]
            level += 1
            if nodes:
                new_nodes.append(nodes)
        self._store.append(first, new_nodes)
        self._frontier = frontier
        self._size = first + count
        return first

    # Reading -----------------------------------------------------------------

    def leaf_hash(self, index: int) -> bytes:
        if not 0 <= index < self._size:
            raise TreeError(f"no leaf {index} in a log of {self._size}")
        return self._store.node(0, index)

    def root(self, size: int | None = None) -> bytes:
        """MTH(D[0:size]), the root at any size up to the current one (default: the current)."""
        if size is None or size == self._size:
            return self._frontier_root()
        self._check_size(size)
        return EMPTY_ROOT if size == 0 else self._subtree(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[0:size]) of RFC 9162 2.1.3.1, the hash next to the leaf first."""
        size = self._size if size is None else size
        self._check_size(size)
        if not 0 <= index < size:
            raise TreeError(f"no leaf {index} in a tree of size {size}")
        # The RFC recursion, unrolled from the root down: each step keeps the
        # half that holds the leaf and records the root of the other half.
        path: list[bytes] = []
        start, end = 0, size
        while end - start > 1:
            half = start + largest_power_of_two_below(end - start)
            if index < half:
                path.append(self._subtree(half, end))
                end = half
            else:
                path.append(self._subtree(start, half))
                start = half
        path.reverse()
        return path

    def consistency_proof(self, first: int, second: int | None = None) -> list[bytes]:
        """PROOF(first, D[0:second]) of RFC 9162 2.1.4.1 (empty when first is 0 or second)."""
        second = self._size if second is None else second
        self._check_size(second)
        if not 0 <= first <= second:
            raise TreeError(f"no consistency proof from size {first} to size {second}")
        if first in (0, second):
            return []
        # SUBPROOF(m, D[start:end], b), unrolled from the root down.
        proof: list[bytes] = []
        start, end = 0, second
        whole_subtree = True  # the RFC's b: D[start:end] is a subtree of the old tree too
        while first < end:
            half = start + largest_power_of_two_below(end - start)
            if first <= half:
                proof.append(self._subtree(half, end))
                end = half
            else:
                proof.append(self._subtree(start, half))
                start = half
                whole_subtree = False
        if not whole_subtree:
            proof.append(self._subtree(start, end))
        proof.reverse()
        return proof

    # Internals ---------------------------------------------------------------

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self._size:
            raise TreeError(f"no tree of size {size}: the log has {self._size} leaves")

    def _frontier_root(self) -> bytes:
        size = self._size
        if size == 0:
            return EMPTY_ROOT
        lowest = (size & -size).bit_length() - 1
        root = self._frontier[lowest]
        for level in range(lowest + 1, size.bit_length()):
            if size >> level & 1:
                root = node_hash(self._frontier[level], root)
        return root

    def _subtree(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) for a subtree of the RFC recursion, from stored perfect subtrees."""
        count = end - start
        if count <= 0:
            raise AssertionError(f"empty subtree [{start}, {end})")
        pieces: list[bytes] = []
        position = start
        for level in range(count.bit_length() - 1, -1, -1):
            if count >> level & 1:
                # The recursion only ever splits at aligned powers of two.
                if position & ((1 << level) - 1):
                    raise AssertionError(f"unaligned subtree [{start}, {end})")
                pieces.append(self._store.node(level, position >> level))
                position += 1 << level
        root = pieces.pop()
        while pieces:
            root = node_hash(pieces.pop(), root)
        return root

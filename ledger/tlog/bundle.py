"""The leaf bundle of one checkpoint: the leaves it added to the log, as one byte string.

A checkpoint of size N that follows one of size M (0 for the first) is
published with the leaves M .. N-1, so an auditor who fetches every bundle in
order holds every leaf and recomputes each checkpoint's root::

    bundle bytes = BUNDLE_TAG                               "payledger/anchoring/bundle/v1" 0x00
                 || u32be(len(origin)) || origin            UTF-8, the checkpoint's first line
                 || u32be(8)           || u64be(first index)   M
                 || u32be(8)           || u64be(count)         N - M
                 || count times: u32be(len(leaf bytes)) || leaf bytes   (``ledger.tlog.leaf``)

Like the leaf bytes, every field carries its length, so the bytes split one
way only, and decoding refuses anything ``to_bytes`` would not write: a
truncated bundle, trailing bytes, a count that disagrees with the leaves.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from ledger.tlog import limits
from ledger.tlog.errors import InvalidProof
from ledger.tlog.leaf import LeafRecord
from ledger.tlog.tree import MerkleTree

BUNDLE_TAG: Final = b"payledger/anchoring/bundle/v1\x00"
# One checkpoint's leaves: the same bound as one append to the tree, so a
# checkpoint never covers more than the worker can append at once.
BUNDLE_LEAVES_MAX: Final = limits.APPEND_BATCH_LEAVES_MAX
ORIGIN_BYTES_MAX: Final = 1024

_LENGTH = struct.Struct(">I")
_INDEXES = struct.Struct(">IQIQ")  # first index and count, each with its length


@dataclass(frozen=True, slots=True)
class LeafBundle:
    origin: str
    first_index: int
    leaves: tuple[LeafRecord, ...]
    # The leaf bytes as read by ``from_bytes`` (each checked to be the leaf's
    # own encoding), so a reader appending them to a tree encodes nothing again.
    _read: tuple[bytes, ...] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 < len(self.origin.encode()) <= ORIGIN_BYTES_MAX or "\n" in self.origin:
            raise InvalidProof("a bundle's origin is one non-empty line of at most 1024 bytes")
        if len(self.leaves) > BUNDLE_LEAVES_MAX:
            raise InvalidProof(f"a bundle holds at most {BUNDLE_LEAVES_MAX} leaves")
        if not 0 <= self.first_index <= limits.TREE_SIZE_MAX - len(self.leaves):
            raise InvalidProof(f"first index {self.first_index} out of range")

    @property
    def end_index(self) -> int:
        """The tree size once these leaves are appended: the checkpoint's size."""
        return self.first_index + len(self.leaves)

    def leaf_bytes(self) -> list[bytes]:
        """Each leaf's bytes, in order: what the tree hashes."""
        if self._read is not None:
            return list(self._read)
        return [leaf.to_bytes() for leaf in self.leaves]

    def to_bytes(self) -> bytes:
        origin = self.origin.encode()
        parts = [
            BUNDLE_TAG,
            _LENGTH.pack(len(origin)),
            origin,
            _INDEXES.pack(8, self.first_index, 8, len(self.leaves)),
        ]
        for data in self.leaf_bytes():
            parts += [_LENGTH.pack(len(data)), data]
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> LeafBundle:
        """Parse bundle bytes, refusing any that ``to_bytes`` would not produce exactly."""
        position = len(BUNDLE_TAG)
        if data[:position] != BUNDLE_TAG:
            raise InvalidProof("not a payledger v1 leaf bundle")
        origin, position = _field(data, position)
        if len(data) < position + _INDEXES.size:
            raise InvalidProof("truncated leaf bundle")
        first_length, first_index, count_length, count = _INDEXES.unpack_from(data, position)
        position += _INDEXES.size
        if first_length != 8 or count_length != 8:
            raise InvalidProof("malformed leaf bundle header")
        if count > BUNDLE_LEAVES_MAX:
            raise InvalidProof(f"a bundle holds at most {BUNDLE_LEAVES_MAX} leaves")
        leaves = []
        raw = []
        for _ in range(count):
            leaf, position = _field(data, position)
            leaves.append(LeafRecord.from_bytes(leaf))
            raw.append(leaf)
        if position != len(data):
            raise InvalidProof("trailing bytes after the last leaf of a bundle")
        try:
            bundle = cls(origin.decode("utf-8"), first_index, tuple(leaves))
        except UnicodeDecodeError as error:
            raise InvalidProof("a bundle's origin is not UTF-8") from error
        object.__setattr__(bundle, "_read", tuple(raw))
        # Pair the checks: what was decoded must encode back to the same bytes.
        if bundle.to_bytes() != data:
            raise AssertionError("bundle bytes decode to a bundle that encodes differently")
        return bundle


def _field(data: bytes, position: int) -> tuple[bytes, int]:
    if len(data) < position + _LENGTH.size:
        raise InvalidProof("truncated leaf bundle")
    (length,) = _LENGTH.unpack_from(data, position)
    start = position + _LENGTH.size
    if len(data) < start + length:
        raise InvalidProof("truncated leaf bundle")
    return data[start : start + length], start + length


def root_of_bundles(bundles: Sequence[LeafBundle]) -> bytes:
    """The RFC 9162 root over the leaves of consecutive bundles from index 0.

    What an auditor computes to check a checkpoint from its bundle and every
    earlier one: the bundles must start at 0, follow each other without gap
    or overlap, and share one origin.
    """
    expected = 0
    tree = MerkleTree()
    for bundle in bundles:
        if bundle.first_index != expected:
            raise InvalidProof(
                f"bundle starts at leaf {bundle.first_index}, expected leaf {expected}"
            )
        if bundle.origin != bundles[0].origin:
            raise InvalidProof("bundles of different logs")
        tree.append_many([leaf.to_bytes() for leaf in bundle.leaves])
        expected = bundle.end_index
    return tree.root()

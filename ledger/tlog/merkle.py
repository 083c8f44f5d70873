"""RFC 9162 Merkle tree hashing and proof verification (sections 2.1.1, 2.1.3.2, 2.1.4.2).

    leaf hash  = SHA-256(0x00 || leaf bytes)
    node hash  = SHA-256(0x01 || left || right)
    empty tree = SHA-256("")

The verifiers follow the RFC's algorithms step by step, so an auditor can
read them beside the text. Each returns nothing or raises ``InvalidProof``.
Proof generation lives with the tree (``ledger.tlog.tree``), which holds the
hashes a proof is made of.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Final

from ledger.tlog import limits
from ledger.tlog.errors import InvalidProof

HASH_BYTES: Final = 32
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()

_sha256 = hashlib.sha256


def leaf_hash(leaf_bytes: bytes) -> bytes:
    return _sha256(b"\x00" + leaf_bytes).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return _sha256(b"\x01" + left + right).digest()


def largest_power_of_two_below(count: int) -> int:
    """The k of RFC 9162: the largest power of two smaller than ``count`` (``count`` > 1)."""
    if count <= 1:
        raise AssertionError(f"no power of two below {count} is needed")
    return 1 << ((count - 1).bit_length() - 1)


def _check_hashes(name: str, hashes: Sequence[bytes]) -> None:
    if len(hashes) > limits.PROOF_HASHES_MAX:
        raise InvalidProof(f"{name} has {len(hashes)} hashes, more than any tree needs")
    for value in hashes:
        if not isinstance(value, bytes) or len(value) != HASH_BYTES:
            raise InvalidProof(f"{name} holds a value that is not a 32-byte hash")


def _check_size(name: str, size: int) -> None:
    if not 0 <= size <= limits.TREE_SIZE_MAX:
        raise InvalidProof(f"{name} {size} out of range")


def root_from_inclusion_proof(
    leaf_index: int, tree_size: int, leaf: bytes, proof: Sequence[bytes]
) -> bytes:
    """The root an inclusion proof leads to (RFC 9162 2.1.3.2, steps 1 to 4 and the sn check)."""
    _check_size("tree size", tree_size)
    _check_hashes("inclusion proof", proof)
    if len(leaf) != HASH_BYTES:
        raise InvalidProof("a leaf hash is 32 bytes")
    # Step 1.
    if not 0 <= leaf_index < tree_size:
        raise InvalidProof(f"leaf index {leaf_index} is not in a tree of size {tree_size}")
    # Steps 2 and 3.
    fn = leaf_index
    sn = tree_size - 1
    r = leaf
    # Step 4.
    for p in proof:
        if sn == 0:
            raise InvalidProof("inclusion proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            r = _sha256(b"\x01" + p + r).digest()
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = _sha256(b"\x01" + r + p).digest()
        fn >>= 1
        sn >>= 1
    # Step 5, first half.
    if sn != 0:
        raise InvalidProof("inclusion proof is shorter than the path to the root")
    return r


def verify_inclusion(
    leaf_index: int, tree_size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Return nothing when ``leaf`` (a leaf hash) is at ``leaf_index`` in the tree with ``root``."""
    if root_from_inclusion_proof(leaf_index, tree_size, leaf, proof) != root:
        raise InvalidProof("inclusion proof does not lead to the root")


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> None:
    """Return nothing when the tree of size ``second`` extends the tree of size ``first``.

    RFC 9162 2.1.4.2 defines the check for 0 < first < second. The two edge
    cases follow from the definition of a consistency proof: equal sizes need
    equal roots and an empty proof; the empty tree is a prefix of every tree,
    with an empty proof.
    """
    _check_size("first size", first)
    _check_size("second size", second)
    _check_hashes("consistency proof", proof)
    if len(first_root) != HASH_BYTES or len(second_root) != HASH_BYTES:
        raise InvalidProof("a root hash is 32 bytes")
    if first > second:
        raise InvalidProof(f"size {second} is smaller than the earlier size {first}")
    if first == second:
        if proof or first_root != second_root:
            raise InvalidProof("equal sizes need equal roots and an empty proof")
        return
    if first == 0:
        if proof or first_root != EMPTY_ROOT:
            raise InvalidProof("the empty tree needs the empty root and an empty proof")
        return
    # Step 1.
    if not proof:
        raise InvalidProof("empty consistency proof")
    path = list(proof)
    # Step 2.
    if first & (first - 1) == 0:
        path.insert(0, first_root)
    # Step 3.
    fn = first - 1
    sn = second - 1
    # Step 4.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # Step 5.
    fr = sr = path[0]
    # Step 6.
    for c in path[1:]:
        if sn == 0:
            raise InvalidProof("consistency proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            fr = _sha256(b"\x01" + c + fr).digest()
            sr = _sha256(b"\x01" + c + sr).digest()
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = _sha256(b"\x01" + sr + c).digest()
        fn >>= 1
        sn >>= 1
    # Step 7.
    if fr != first_root or sr != second_root or sn != 0:
        raise InvalidProof("consistency proof does not lead to both roots")

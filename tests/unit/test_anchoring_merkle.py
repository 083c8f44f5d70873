"""The Merkle log: RFC 6962/9162 vectors, an independent recursive reference, tampered proofs,
resumable storage, and the canonical leaf bytes."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest

from ledger.errors import EncodingError
from ledger.tlog.errors import InvalidProof, TreeError
from ledger.tlog.leaf import LEAF_TAG, LeafRecord
from ledger.tlog.merkle import EMPTY_ROOT, leaf_hash, verify_consistency, verify_inclusion
from ledger.tlog.store import MemoryTreeStore
from ledger.tlog.tree import MerkleTree

VECTORS = Path(__file__).resolve().parents[3] / "shared" / "vectors" / "merkle-rfc6962.json"
SIZE_MAX = 64


# The RFC's recursive definitions (RFC 9162 2.1.1, 2.1.3.1, 2.1.4.1), written
# apart from the code under test: straight recursion over the leaf data.


def ref_largest_power_of_two_below(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(data: list[bytes]) -> bytes:
    n = len(data)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + data[0]).digest()
    k = ref_largest_power_of_two_below(n)
    return hashlib.sha256(b"\x01" + ref_mth(data[:k]) + ref_mth(data[k:])).digest()


def ref_path(m: int, data: list[bytes]) -> list[bytes]:
    n = len(data)
    if n == 1:
        return []
    k = ref_largest_power_of_two_below(n)
    if m < k:
        return [*ref_path(m, data[:k]), ref_mth(data[k:])]
    return [*ref_path(m - k, data[k:]), ref_mth(data[:k])]


def ref_subproof(m: int, data: list[bytes], b: bool) -> list[bytes]:
    n = len(data)
    if m == n:
        return [] if b else [ref_mth(data)]
    k = ref_largest_power_of_two_below(n)
    if m <= k:
        return [*ref_subproof(m, data[:k], b), ref_mth(data[k:])]
    return [*ref_subproof(m - k, data[k:], False), ref_mth(data[:k])]


def ref_proof(m: int, data: list[bytes]) -> list[bytes]:
    return ref_subproof(m, data, True)


def sample_leaves(count: int) -> list[bytes]:
    # Lengths vary from 0 to 39 bytes, so the empty leaf is covered too.
    return [hashlib.sha256(b"leaf %d" % index).digest()[: index % 40] for index in range(count)]


@pytest.fixture(scope="module")
def leaves() -> list[bytes]:
    return sample_leaves(SIZE_MAX)


@pytest.fixture(scope="module")
def tree(leaves: list[bytes]) -> MerkleTree:
    tree = MerkleTree()
    for leaf in leaves:
        tree.append(leaf)
    return tree


def flip(value: bytes, bit: int = 0) -> bytes:
    return bytes([value[0] ^ (1 << bit)]) + value[1:]


# RFC 6962 vectors ------------------------------------------------------------


def test_vector_roots_at_every_size() -> None:
    vectors = json.loads(VECTORS.read_text())
    data = [bytes.fromhex(value) for value in vectors["leaf_inputs_hex"]]
    roots = [bytes.fromhex(value) for value in vectors["root_hashes_hex_by_tree_size"]]
    assert len(roots) == len(data) + 1
    tree = MerkleTree()
    assert tree.root() == roots[0] == EMPTY_ROOT
    for size, leaf in enumerate(data, start=1):
        tree.append(leaf)
        assert tree.root() == roots[size]
        assert ref_mth(data[:size]) == roots[size]
    for size, root in enumerate(roots):
        assert tree.root(size) == root


def test_vector_proofs_verify_against_vector_roots() -> None:
    vectors = json.loads(VECTORS.read_text())
    data = [bytes.fromhex(value) for value in vectors["leaf_inputs_hex"]]
    roots = [bytes.fromhex(value) for value in vectors["root_hashes_hex_by_tree_size"]]
    tree = MerkleTree()
    tree.append_many(data)
    for size in range(1, len(data) + 1):
        for index in range(size):
            proof = tree.inclusion_proof(index, size)
            verify_inclusion(index, size, leaf_hash(data[index]), proof, roots[size])
        for first in range(size + 1):
            proof = tree.consistency_proof(first, size)
            verify_consistency(first, size, roots[first], roots[size], proof)


# Every (m, n) up to 64 against the recursive reference --------------------------


def test_roots_match_reference(tree: MerkleTree, leaves: list[bytes]) -> None:
    for size in range(SIZE_MAX + 1):
        assert tree.root(size) == ref_mth(leaves[:size])


def test_inclusion_proofs_match_reference_and_verify(tree: MerkleTree, leaves: list[bytes]) -> None:
    for size in range(1, SIZE_MAX + 1):
        root = ref_mth(leaves[:size])
        for index in range(size):
            proof = tree.inclusion_proof(index, size)
            assert proof == ref_path(index, leaves[:size]), (index, size)
            verify_inclusion(index, size, leaf_hash(leaves[index]), proof, root)


def test_consistency_proofs_match_reference_and_verify(
    tree: MerkleTree, leaves: list[bytes]
) -> None:
    for second in range(1, SIZE_MAX + 1):
        second_root = ref_mth(leaves[:second])
        for first in range(1, second + 1):
            proof = tree.consistency_proof(first, second)
            assert proof == ref_proof(first, leaves[:second]), (first, second)
            verify_consistency(first, second, ref_mth(leaves[:first]), second_root, proof)


def test_larger_tree_samples_match_reference() -> None:
    data = sample_leaves(1_500)
    tree = MerkleTree()
    tree.append_many(data)
    for first, second in [(1, 1_500), (511, 1_024), (1_000, 1_499), (777, 1_300), (1_024, 1_500)]:
        assert tree.consistency_proof(first, second) == ref_proof(first, data[:second])
    for index, size in [(0, 1_500), (1_499, 1_500), (1_024, 1_025), (700, 1_111)]:
        assert tree.inclusion_proof(index, size) == ref_path(index, data[:size])
    assert tree.root() == ref_mth(data)


# Tampered proofs ---------------------------------------------------------------


def inclusion_must_fail(
    index: int, size: int, leaf: bytes, proof: list[bytes], root: bytes
) -> None:
    with pytest.raises(InvalidProof):
        verify_inclusion(index, size, leaf, proof, root)


def test_tampered_inclusion_proofs_fail(tree: MerkleTree, leaves: list[bytes]) -> None:
    roots = [tree.root(size) for size in range(SIZE_MAX + 1)]
    stranger = hashlib.sha256(b"not in the tree").digest()
    checked = 0
    for size in range(1, SIZE_MAX + 1):
        for index in range(size):
            leaf = leaf_hash(leaves[index])
            proof = tree.inclusion_proof(index, size)
            root = roots[size]
            # Wrong index, in and out of range.
            for other in {index - 1, index + 1, size, -1} - {index}:
                inclusion_must_fail(other, size, leaf, proof, root)
            # Wrong size, each with the honest root of that size.
            for other in {size - 1, size + 1} - {0, size}:
                other_root = roots[other] if other <= SIZE_MAX else stranger
                inclusion_must_fail(index, other, leaf, proof, other_root)
            # One flipped bit in any hash.
            for position in range(len(proof)):
                tampered = proof.copy()
                tampered[position] = flip(tampered[position], position % 8)
                inclusion_must_fail(index, size, leaf, tampered, root)
            # Truncated or extended paths.
            if proof:
                inclusion_must_fail(index, size, leaf, proof[:-1], root)
                inclusion_must_fail(index, size, leaf, proof[1:], root)
            inclusion_must_fail(index, size, leaf, [*proof, stranger], root)
            inclusion_must_fail(index, size, leaf, [stranger, *proof], root)
            inclusion_must_fail(index, size, leaf, [*proof, root], root)
            # Wrong leaf or root.
            inclusion_must_fail(index, size, stranger, proof, root)
            inclusion_must_fail(index, size, leaf, proof, flip(root))
            checked += 1
    assert checked == SIZE_MAX * (SIZE_MAX + 1) // 2


def consistency_must_fail(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: list[bytes]
) -> None:
    with pytest.raises(InvalidProof):
        verify_consistency(first, second, first_root, second_root, proof)


def test_tampered_consistency_proofs_fail(tree: MerkleTree) -> None:
    roots = [tree.root(size) for size in range(SIZE_MAX + 1)]
    stranger = hashlib.sha256(b"not a root").digest()
    for second in range(1, SIZE_MAX + 1):
        for first in range(1, second + 1):
            proof = tree.consistency_proof(first, second)
            old, new = roots[first], roots[second]
            # Wrong sizes, each with the honest root of that size.
            for other in {first - 1, first + 1} - {0, first}:
                if other <= second:
                    consistency_must_fail(other, second, roots[other], new, proof)
            for other in {second - 1, second + 1} - {second}:
                if first <= other <= SIZE_MAX:
                    consistency_must_fail(first, other, old, roots[other], proof)
            consistency_must_fail(second + 1, second, old, new, proof)
            # One flipped bit in any hash.
            for position in range(len(proof)):
                tampered = proof.copy()
                tampered[position] = flip(tampered[position], position % 8)
                consistency_must_fail(first, second, old, new, tampered)
            # Truncated or extended.
            if proof:
                consistency_must_fail(first, second, old, new, proof[:-1])
                consistency_must_fail(first, second, old, new, proof[1:])
            consistency_must_fail(first, second, old, new, [*proof, stranger])
            consistency_must_fail(first, second, old, new, [stranger, *proof])
            # Wrong roots: a fork, or the two roots swapped.
            consistency_must_fail(first, second, flip(old), new, proof)
            consistency_must_fail(first, second, old, flip(new), proof)
            if first != second:
                consistency_must_fail(first, second, new, old, proof)


def test_consistency_edge_cases(tree: MerkleTree) -> None:
    root = tree.root(5)
    verify_consistency(0, 5, EMPTY_ROOT, root, [])
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    verify_consistency(5, 5, root, root, [])
    consistency_must_fail(0, 5, root, root, [])
    consistency_must_fail(0, 5, EMPTY_ROOT, root, [root])
    consistency_must_fail(5, 5, root, root, [root])
    consistency_must_fail(5, 5, root, tree.root(4), [])
    assert tree.consistency_proof(0, 5) == []
    assert tree.consistency_proof(5, 5) == []


def test_malformed_proof_values_fail(tree: MerkleTree, leaves: list[bytes]) -> None:
    proof = tree.inclusion_proof(3, 10)
    root = tree.root(10)
    leaf = leaf_hash(leaves[3])
    inclusion_must_fail(3, 10, leaf, [proof[0][:31], *proof[1:]], root)
    inclusion_must_fail(3, 10, leaf[:31], proof, root)
    inclusion_must_fail(3, 10, leaf, proof * 20, root)  # over the proof length limit
    inclusion_must_fail(3, 2**64, leaf, proof, root)
    consistency_must_fail(3, 10, tree.root(3), root[:31], tree.consistency_proof(3, 10))


# The tree and its store -----------------------------------------------------------


def test_batches_and_single_appends_store_the_same_nodes(leaves: list[bytes]) -> None:
    one_by_one, batched = MemoryTreeStore(), MemoryTreeStore()
    single = MerkleTree(one_by_one)
    for leaf in leaves:
        single.append(leaf)
    chunked = MerkleTree(batched)
    for start, end in [(0, 3), (3, 4), (4, 17), (17, 17), (17, 64)]:
        assert chunked.append_many(leaves[start:end]) == start
    assert chunked.root() == single.root()
    for level in range(7):
        for index in range(SIZE_MAX >> level):
            assert batched.node(level, index) == one_by_one.node(level, index)
    assert batched.size() == SIZE_MAX


def test_tree_resumes_from_its_store(leaves: list[bytes]) -> None:
    store = MemoryTreeStore()
    first = MerkleTree(store)
    first.append_many(leaves[:45])
    resumed = MerkleTree(store)  # a new process, the same store
    assert resumed.size == 45
    assert resumed.root() == ref_mth(leaves[:45])
    for leaf in leaves[45:48]:
        resumed.append(leaf)
    assert MerkleTree(store).root() == ref_mth(leaves[:48])
    resumed.append_many(leaves[48:])
    assert resumed.root() == ref_mth(leaves)
    assert resumed.consistency_proof(45) == ref_proof(45, leaves)
    assert resumed.inclusion_proof(44) == ref_path(44, leaves)


def test_store_holds_fewer_than_two_hashes_per_leaf() -> None:
    store = MemoryTreeStore()
    tree = MerkleTree(store)
    tree.append_many(sample_leaves(1_000))
    stored = 0
    level = 0
    while 1_000 >> level:
        for index in range(1_000 >> level):
            store.node(level, index)
            stored += 1
        level += 1
    assert stored < 2 * 1_000
    with pytest.raises(TreeError):
        store.node(3, 1_000 >> 3)  # the incomplete subtree at the right edge is not stored


class CountingStore(MemoryTreeStore):
    __slots__ = ("reads",)

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def node(self, level: int, index: int) -> bytes:
        self.reads += 1
        return super().node(level, index)


def test_proofs_and_past_roots_read_logarithmically_many_nodes() -> None:
    store = CountingStore()
    tree = MerkleTree(store)
    size = 5_000
    tree.append_many(sample_leaves(size))
    budget = 2 * size.bit_length()
    for index in (0, 1_234, 4_095, 4_999):
        store.reads = 0
        tree.inclusion_proof(index)
        assert store.reads <= budget
    for first in (1, 1_000, 4_096, 4_999):
        store.reads = 0
        tree.consistency_proof(first)
        assert store.reads <= budget
    store.reads = 0
    tree.root(3_333)
    assert store.reads <= size.bit_length()


class RefusingStore(MemoryTreeStore):
    """Refuses every batch while ``refuse`` is set, like a database that went away."""

    __slots__ = ("refuse",)

    def __init__(self) -> None:
        super().__init__()
        self.refuse = False

    def append(self, size_before, nodes_by_level) -> None:
        if self.refuse:
            raise TreeError("the database is gone")
        super().append(size_before, nodes_by_level)


def test_a_refused_batch_leaves_the_tree_unchanged(leaves: list[bytes]) -> None:
    store = RefusingStore()
    tree = MerkleTree(store)
    tree.append_many(leaves[:7])
    store.refuse = True
    with pytest.raises(TreeError):
        tree.append_many(leaves[7:20])
    with pytest.raises(TreeError):
        tree.append(leaves[7])
    assert tree.size == 7
    assert tree.root() == ref_mth(leaves[:7])
    store.refuse = False
    tree.append(leaves[7])
    tree.append_many(leaves[8:])
    assert tree.root() == ref_mth(leaves)


def test_store_refuses_a_writer_out_of_step(leaves: list[bytes]) -> None:
    store = MemoryTreeStore()
    writer, stale = MerkleTree(store), MerkleTree(store)
    writer.append_many(leaves[:3])
    with pytest.raises(TreeError):
        stale.append(leaves[3])
    with pytest.raises(TreeError):
        store.append(3, [[leaf_hash(b"x")], [leaf_hash(b"y")]])  # a node no leaf completes
    assert store.size() == 3
    assert MerkleTree(store).root() == ref_mth(leaves[:3])


def test_requests_out_of_range_raise(tree: MerkleTree) -> None:
    for call in (
        lambda: tree.inclusion_proof(SIZE_MAX),
        lambda: tree.inclusion_proof(0, SIZE_MAX + 1),
        lambda: tree.inclusion_proof(-1),
        lambda: tree.consistency_proof(5, 4),
        lambda: tree.consistency_proof(1, SIZE_MAX + 1),
        lambda: tree.root(SIZE_MAX + 1),
        lambda: tree.leaf_hash(SIZE_MAX),
        lambda: MerkleTree().append_leaf_hashes([b"short"]),
    ):
        with pytest.raises(TreeError):
            call()


def test_leaf_hashes_are_rfc_leaf_hashes(tree: MerkleTree, leaves: list[bytes]) -> None:
    for index in (0, 7, 63):
        assert tree.leaf_hash(index) == hashlib.sha256(b"\x00" + leaves[index]).digest()


# Leaf bytes -------------------------------------------------------------------


def test_leaf_bytes_layout() -> None:
    value = b'{"amount_minor": 100}'
    record = LeafRecord.of(
        "payledger.commands", 3, 2**40 + 5, "0190a4b2-7c1e-7d4a-9f00-1234567890ab", value
    )
    digest = hashlib.sha256(value).digest()
    expected = (
        b"payledger/anchoring/leaf/v1\x00"
        + struct.pack(">I", 18)
        + b"payledger.commands"
        + struct.pack(">I", 4)
        + (3).to_bytes(4, "big")
        + struct.pack(">I", 8)
        + (2**40 + 5).to_bytes(8, "big")
        + struct.pack(">I", 36)
        + b"0190a4b2-7c1e-7d4a-9f00-1234567890ab"
        + struct.pack(">I", 32)
        + digest
    )
    assert LEAF_TAG == b"payledger/anchoring/leaf/v1\x00"
    assert record.to_bytes() == expected
    assert LeafRecord.from_bytes(expected) == record


def test_leaf_bytes_are_unambiguous() -> None:
    digest = hashlib.sha256(b"v").digest()
    variants = [
        LeafRecord("ab", 1, 2, "e", digest),
        LeafRecord("a", 1, 2, "be", digest),
        LeafRecord("ab", 2, 1, "e", digest),
        LeafRecord("ab", 1, 2, "f", digest),
        LeafRecord("ab", 1, 3, "e", digest),
        LeafRecord("ab", 1, 2, "e", flip(digest)),
    ]
    encodings = {variant.to_bytes() for variant in variants}
    assert len(encodings) == len(variants)


def test_malformed_leaf_bytes_are_refused() -> None:
    good = LeafRecord("topic", 0, 0, "id", bytes(32)).to_bytes()
    for bad in (
        good + b"\x00",
        good[:-1],
        b"payledger/anchoring/leaf/v2\x00" + good[len(LEAF_TAG) :],
        good.replace(struct.pack(">I", 4) + bytes(4), struct.pack(">I", 5) + bytes(5)),
        b"",
    ):
        with pytest.raises(InvalidProof):
            LeafRecord.from_bytes(bad)


@pytest.mark.parametrize(
    "fields",
    [
        ("", 0, 0, "id"),
        ("t" * 250, 0, 0, "id"),
        ("tøpic", 0, 0, "id"),
        ("t", -1, 0, "id"),
        ("t", 2**31, 0, "id"),
        ("t", 0, -1, "id"),
        ("t", 0, 2**63, "id"),
        ("t", 0, 0, ""),
        ("t", 0, 0, "x" * 129),
    ],
)
def test_leaf_fields_out_of_range_are_refused(fields: tuple[str, int, int, str]) -> None:
    with pytest.raises(EncodingError):
        LeafRecord(*fields, bytes(32))


def test_leaf_digest_must_be_sha256() -> None:
    with pytest.raises(EncodingError):
        LeafRecord("t", 0, 0, "id", bytes(31))

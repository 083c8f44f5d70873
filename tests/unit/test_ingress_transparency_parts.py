"""The transparency API's pure parts: which nodes a proof reads, parameter parsing, and how
a checkpoint's anchors are shown."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime

import pytest

from ingress.problems import Problem
from ingress.tlog import (
    AnchorsRow,
    FetchedNodes,
    TimestampRow,
    consistency_nodes,
    frontier_nodes,
    inclusion_nodes,
    perfect_subtrees,
)
from ingress.transparency import (
    anchors_out,
    etag_matches,
    parse_range,
    parse_size,
    prefers_json,
    timestamp_etag,
    valid_event_id,
)
from ledger.tlog import limits
from ledger.tlog.errors import TreeError
from ledger.tlog.merkle import verify_consistency, verify_inclusion
from ledger.tlog.store import MemoryTreeStore
from ledger.tlog.tree import MerkleTree

SIZE_MAX = 70


class RecordingStore:
    """A memory store that remembers every node read through it."""

    def __init__(self, store: MemoryTreeStore, size: int) -> None:
        self._store = store
        self._size = size
        self.read: set[tuple[int, int]] = set()

    def size(self) -> int:
        return self._size

    def node(self, level: int, index: int) -> bytes:
        assert (index + 1) << level <= self._size, "a node beyond the tree's size was read"
        self.read.add((level, index))
        return self._store.node(level, index)

    def append(self, size_before: int, nodes_by_level: object) -> None:
        raise AssertionError("read only")


@pytest.fixture(scope="module")
def full() -> tuple[MerkleTree, MemoryTreeStore]:
    store = MemoryTreeStore()
    tree = MerkleTree(store)
    tree.append_many([f"leaf {n}".encode() for n in range(SIZE_MAX)])
    return tree, store


def _opened(store: MemoryTreeStore, size: int) -> tuple[MerkleTree, RecordingStore]:
    recording = RecordingStore(store, size)
    tree = MerkleTree(recording)
    assert recording.read == set(frontier_nodes(size))
    recording.read.clear()
    return tree, recording


# Node indexes -------------------------------------------------------------------------


def test_perfect_subtrees_tile_the_range_largest_first() -> None:
    assert perfect_subtrees(0, 1) == [(0, 0)]
    assert perfect_subtrees(0, 7) == [(2, 0), (1, 2), (0, 6)]
    assert perfect_subtrees(8, 13) == [(2, 2), (0, 12)]
    assert perfect_subtrees(0, 64) == [(6, 0)]
    assert frontier_nodes(0) == []
    for bad in ((3, 3), (5, 2), (1, 4)):  # empty, reversed, unaligned
        with pytest.raises(ValueError):
            perfect_subtrees(*bad)


def test_inclusion_nodes_are_exactly_what_the_tree_reads(
    full: tuple[MerkleTree, MemoryTreeStore],
) -> None:
    tree, store = full
    for size in range(1, SIZE_MAX + 1):
        opened, recording = _opened(store, size)
        for index in range(size):
            recording.read.clear()
            proof = opened.inclusion_proof(index, size)
            assert recording.read == inclusion_nodes(index, size), (index, size)
            assert proof == tree.inclusion_proof(index, size)
            # Logarithmic: one node per proof hash at most, per level.
            assert len(inclusion_nodes(index, size)) <= 2 * size.bit_length()


def test_consistency_nodes_are_exactly_what_the_tree_reads(
    full: tuple[MerkleTree, MemoryTreeStore],
) -> None:
    _, store = full
    for second in range(1, SIZE_MAX + 1):
        opened, recording = _opened(store, second)
        for first in range(0, second + 1):
            recording.read.clear()
            opened.root(first)
            opened.consistency_proof(first, second)
            assert recording.read == consistency_nodes(first, second), (first, second)


def test_a_tree_of_fetched_nodes_proves_what_the_whole_tree_proves(
    full: tuple[MerkleTree, MemoryTreeStore],
) -> None:
    tree, store = full
    for second in (1, 2, 7, 8, 13, 32, 33, SIZE_MAX):
        frontier = set(frontier_nodes(second))
        for first in range(1, second + 1):
            wanted = consistency_nodes(first, second) | frontier
            fetched = MerkleTree(FetchedNodes(second, {n: store.node(*n) for n in wanted}))
            proof = fetched.consistency_proof(first, second)
            assert proof == tree.consistency_proof(first, second)
            verify_consistency(first, second, fetched.root(first), fetched.root(), proof)
            assert fetched.root() == tree.root(second)
        for index in range(second):
            wanted = inclusion_nodes(index, second) | frontier
            fetched = MerkleTree(FetchedNodes(second, {n: store.node(*n) for n in wanted}))
            proof = fetched.inclusion_proof(index, second)
            verify_inclusion(index, second, tree.leaf_hash(index), proof, tree.root(second))


def test_a_missing_node_is_a_tree_error_and_the_store_is_read_only() -> None:
    fetched = FetchedNodes(3, {(1, 0): hashlib.sha256(b"x").digest()})
    with pytest.raises(TreeError):
        MerkleTree(fetched)  # the frontier of 3 also needs (0, 2)
    with pytest.raises(TreeError):
        fetched.append(3, [[b"\x00" * 32]])


def test_node_computations_refuse_what_no_tree_has() -> None:
    with pytest.raises(ValueError):
        inclusion_nodes(5, 5)
    with pytest.raises(ValueError):
        inclusion_nodes(-1, 5)
    with pytest.raises(ValueError):
        consistency_nodes(6, 5)


def test_node_counts_stay_logarithmic_for_the_largest_trees() -> None:
    size = limits.TREE_SIZE_MAX
    assert len(inclusion_nodes(size // 3, size)) <= 2 * 63
    assert len(consistency_nodes(size // 3, size)) <= 3 * 63
    assert len(frontier_nodes(size)) == 63


# Parameters ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "1", "42", str(limits.TREE_SIZE_MAX)])
def test_canonical_sizes_parse(value: str) -> None:
    assert parse_size(value, "size") == int(value)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "-1",
        "+1",
        "01",
        "1.0",
        "1e3",
        " 1",
        "1 ",
        "0x10",
        "١٢",
        str(limits.TREE_SIZE_MAX + 1),
        "9" * 400,
    ],
)
def test_anything_else_is_a_400(value: str | None) -> None:
    with pytest.raises(Problem) as raised:
        parse_size(value, "size")
    assert (raised.value.status, raised.value.slug) == (400, "invalid-tree-size")


def test_a_range_needs_zero_below_from_below_or_at_to() -> None:
    assert parse_range("1", "1") == (1, 1)
    assert parse_range("3", "70") == (3, 70)
    for low, high in (("0", "5"), ("6", "5"), ("0", "0")):
        with pytest.raises(Problem) as raised:
            parse_range(low, high)
        assert (raised.value.status, raised.value.slug) == (400, "invalid-size-range")
    for low, high in ((None, "5"), ("1", None), ("a", "5"), ("1", "b")):
        with pytest.raises(Problem) as raised:
            parse_range(low, high)
        assert (raised.value.status, raised.value.slug) == (400, "invalid-tree-size")


@pytest.mark.parametrize(
    ("accept", "json"),
    [
        (None, False),
        ("", False),
        ("*/*", False),
        ("text/plain", False),
        ("text/*", False),
        ("application/json", True),
        ("Application/JSON", True),
        ("application/json, text/plain", False),  # a tie keeps the note
        ("text/plain;q=0.5, application/json", True),
        ("text/plain, application/json;q=0.9", False),
        ("application/*", True),
        ("application/json;q=0", False),
        ("*/*;q=0.1, application/json", True),
        ("text/plain;q=0.2, */*", True),  # text/plain's own range counts, not */*
        ("application/json;q=0.3, */*;q=0.5", False),
        ("application/json;q=bogus", True),
        ("image/png", False),
    ],
)
def test_json_only_when_the_client_prefers_it(accept: str | None, json: bool) -> None:
    assert prefers_json(accept) is json


def test_event_ids_that_no_leaf_can_carry() -> None:
    assert valid_event_id("0b6f8e1c-6bd5-4c64-a2bd-1b2f5f4e9a10")
    assert valid_event_id("undecodable")
    assert valid_event_id("é" * 64)  # 128 bytes
    assert not valid_event_id("é" * 65)
    assert not valid_event_id("")
    assert not valid_event_id("a\x00b")
    assert not valid_event_id("\ud800")  # a lone surrogate is no UTF-8


# Anchors ------------------------------------------------------------------------------

STORED_AT = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
DIGEST = hashlib.sha256(b"note").digest()


def test_a_checkpoint_with_nothing_recorded_shows_none() -> None:
    shown = anchors_out(AnchorsRow(45, None, None, None, None)).model_dump(mode="json")
    assert shown == {
        "size": 45,
        "checkpoint_cid": None,
        "bundle_cid": None,
        "published_at": None,
        "timestamp": {"state": "none", "digest": None, "revision": None, "stored_at": None},
        "links": {
            "checkpoint": "/v1/checkpoints/45",
            "anchors": "/v1/checkpoints/45/anchors",
            "timestamp": None,
        },
    }


@pytest.mark.parametrize(("complete", "state"), [(False, "pending"), (True, "complete")])
def test_a_stamped_checkpoint_shows_its_state_and_links_its_proof(
    complete: bool, state: str
) -> None:
    row = AnchorsRow(
        90, "bafkreicid", "bafybeibundle", STORED_AT, TimestampRow(3, DIGEST, complete, STORED_AT)
    )
    shown = anchors_out(row)
    assert (shown.checkpoint_cid, shown.bundle_cid) == ("bafkreicid", "bafybeibundle")
    assert shown.timestamp.state == state
    assert shown.timestamp.revision == 3
    assert shown.timestamp.digest is not None
    assert base64.b64decode(shown.timestamp.digest) == DIGEST
    assert shown.links.timestamp == "/v1/checkpoints/90/timestamp.ots"


def test_a_proof_not_published_on_ipfs_yet_still_shows_its_timestamp() -> None:
    row = AnchorsRow(7, None, None, None, TimestampRow(1, DIGEST, False, STORED_AT))
    shown = anchors_out(row)
    assert (shown.checkpoint_cid, shown.bundle_cid, shown.timestamp.state) == (
        None,
        None,
        "pending",
    )


def test_each_revision_of_a_proof_has_its_own_etag() -> None:
    assert timestamp_etag(45, 1) != timestamp_etag(45, 2) != timestamp_etag(46, 2)
    etag = timestamp_etag(45, 2)
    assert etag_matches(etag, etag)
    assert etag_matches(f"W/{etag}", etag)
    assert etag_matches(f'"other", {etag}', etag)
    assert etag_matches("*", etag)
    assert not etag_matches(None, etag)
    assert not etag_matches("", etag)
    assert not etag_matches(timestamp_etag(45, 1), etag)
    assert not etag_matches(etag.strip('"'), etag)

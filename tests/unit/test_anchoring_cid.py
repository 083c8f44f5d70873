"""CIDs and the UnixFS file layout against CIDs Kubo computed, and the leaf bundle format.

Where the pinned CIDs come from: each was computed by Kubo 0.43.0
(``ipfs add --only-hash --cid-version=1 --raw-leaves`` with the chunker
named beside it, and for the raw ones also ``ipfs block put --cid-codec
raw``), and agrees with the code under test. The raw ones are checked a
second way here, from hashlib and base64 alone; the integration tests ask
the running Kubo again.
"""

from __future__ import annotations

import base64
import hashlib

import pytest

from ledger.tlog.bundle import BUNDLE_TAG, LeafBundle, root_of_bundles
from ledger.tlog.cid import (
    CHUNK_BYTES,
    DAG_PB_CODEC,
    RAW_CODEC,
    Cid,
    InvalidCid,
    file_dag,
    read_varint,
    varint,
)
from ledger.tlog.errors import InvalidProof
from ledger.tlog.leaf import LeafRecord
from ledger.tlog.tree import MerkleTree

HELLO_WORLD_CID = "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"
EMPTY_CID = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
# 704,000 bytes: two full chunks of 256 KiB and one of 179,712 bytes under one node.
SAMPLE_CID = "bafybeifylkshewp5k7aw3wg32pyzyst6khare4tirzym3v32qzor2zgzj4"
# The same bytes in chunks of 1,000 (``--chunker=size-1000``): 704 leaves,
# five nodes of at most 174 links, and a root above them.
SAMPLE_1000_CID = "bafybeicwazssc5uwlz2ro2htkcvw6ljugz6nm6n7bhtlb2lppuu3nylkvm"


def sample_content() -> bytes:
    return b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(22_000))


def raw_cid_by_hand(data: bytes) -> str:
    # CIDv1 (0x01), raw (0x55), sha2-256 (0x12), 32 bytes (0x20), digest.
    body = b"\x01\x55\x12\x20" + hashlib.sha256(data).digest()
    return "b" + base64.b32encode(body).decode().lower().rstrip("=")


# ---- CIDs -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"), [(b"hello world\n", HELLO_WORLD_CID), (b"", EMPTY_CID)]
)
def test_raw_cids_match_kubo_and_a_second_computation(content: bytes, expected: str) -> None:
    dag = file_dag(content)
    assert str(dag.root) == expected
    assert raw_cid_by_hand(content) == expected
    assert [block.data for block in dag.blocks] == [content]
    assert dag.root.codec == RAW_CODEC


def test_a_file_of_several_chunks_matches_kubo() -> None:
    content = sample_content()
    dag = file_dag(content)
    assert str(dag.root) == SAMPLE_CID
    assert dag.root.codec == DAG_PB_CODEC
    assert dag.blocks[-1].cid == dag.root
    assert len(dag.blocks) == 4  # three raw leaves, one node
    assert b"".join(b.data for b in dag.blocks if b.cid.codec == RAW_CODEC) == content
    assert max(len(b.data) for b in dag.blocks) == CHUNK_BYTES


def test_a_tree_of_two_node_levels_matches_kubo() -> None:
    dag = file_dag(sample_content(), chunk_bytes=1000)
    assert str(dag.root) == SAMPLE_1000_CID
    nodes = [block for block in dag.blocks if block.cid.codec == DAG_PB_CODEC]
    assert len(nodes) == 6


def test_every_block_is_named_by_the_hash_of_its_bytes() -> None:
    for block in file_dag(sample_content(), chunk_bytes=4096).blocks:
        assert block.cid.digest == hashlib.sha256(block.data).digest()


def test_one_changed_byte_changes_the_root() -> None:
    content = bytearray(sample_content())
    content[300_000] ^= 1
    assert str(file_dag(bytes(content)).root) != SAMPLE_CID


def test_cid_text_round_trips() -> None:
    for text in (HELLO_WORLD_CID, SAMPLE_CID):
        cid = Cid.parse(text)
        assert str(cid) == text
        assert Cid.from_bytes(cid.to_bytes()) == cid


@pytest.mark.parametrize(
    "text",
    [
        "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o",  # CIDv0 of the same text
        HELLO_WORLD_CID.upper(),
        "z" + HELLO_WORLD_CID[1:],
        HELLO_WORLD_CID[:-1],
        HELLO_WORLD_CID + "a",
        "b",
        "",
        "b" + "a" * 200,
        "b!!!!",
    ],
)
def test_cid_parse_refuses_other_forms(text: str) -> None:
    with pytest.raises(InvalidCid):
        Cid.parse(text)


def test_cid_bytes_refuse_other_hashes_codecs_and_long_varints() -> None:
    digest = hashlib.sha256(b"x").digest()
    with pytest.raises(InvalidCid):  # sha2-512
        Cid.from_bytes(b"\x01\x55\x13\x20" + digest)
    with pytest.raises(InvalidCid):  # dag-cbor
        Cid.from_bytes(b"\x01\x71\x12\x20" + digest)
    with pytest.raises(InvalidCid):  # raw (0x55) written in two bytes
        Cid.from_bytes(b"\x01\xd5\x00\x12\x20" + digest)
    with pytest.raises(InvalidCid):
        Cid.from_bytes(b"\x01\x55\x12\x20" + digest[:31])


def test_varints() -> None:
    for value in (0, 1, 127, 128, 300, 2**32, 2**63 - 1):
        assert read_varint(varint(value) + b"rest", 0) == (value, len(varint(value)))
    assert varint(300) == b"\xac\x02"
    with pytest.raises(InvalidCid):
        read_varint(b"\x80", 0)


# ---- leaf bundles -----------------------------------------------------------

ORIGIN = "ledger.payledger.test/log"


def leaves(first: int, count: int) -> tuple[LeafRecord, ...]:
    return tuple(
        LeafRecord.of(
            "payledger.payments", index % 6, index, f"0190-{index:08d}", b"event %d" % index
        )
        for index in range(first, first + count)
    )


def test_bundle_round_trip() -> None:
    bundle = LeafBundle(ORIGIN, 10, leaves(10, 5))
    data = bundle.to_bytes()
    assert data.startswith(BUNDLE_TAG)
    decoded = LeafBundle.from_bytes(data)
    assert decoded == bundle
    assert decoded.end_index == 15


def test_an_empty_bundle_round_trips() -> None:
    bundle = LeafBundle(ORIGIN, 7, ())
    assert LeafBundle.from_bytes(bundle.to_bytes()) == bundle


def test_every_truncation_of_a_bundle_is_refused() -> None:
    data = LeafBundle(ORIGIN, 0, leaves(0, 3)).to_bytes()
    for length in range(len(data)):
        with pytest.raises(InvalidProof):
            LeafBundle.from_bytes(data[:length])


def test_trailing_bytes_a_wrong_count_and_a_wrong_tag_are_refused() -> None:
    bundle = LeafBundle(ORIGIN, 0, leaves(0, 3))
    data = bundle.to_bytes()
    with pytest.raises(InvalidProof):
        LeafBundle.from_bytes(data + b"\x00")
    count_at = len(BUNDLE_TAG) + 4 + len(ORIGIN) + 4 + 8 + 4
    more = data[:count_at] + (4).to_bytes(8, "big") + data[count_at + 8 :]
    with pytest.raises(InvalidProof):
        LeafBundle.from_bytes(more)
    fewer = data[:count_at] + (2).to_bytes(8, "big") + data[count_at + 8 :]
    with pytest.raises(InvalidProof):
        LeafBundle.from_bytes(fewer)
    with pytest.raises(InvalidProof):
        LeafBundle.from_bytes(b"payledger/anchoring/bundle/v2\x00" + data[len(BUNDLE_TAG) :])


def test_a_bundle_with_a_tampered_leaf_is_refused() -> None:
    data = bytearray(LeafBundle(ORIGIN, 0, leaves(0, 2)).to_bytes())
    data[len(BUNDLE_TAG) + 4 + len(ORIGIN) + 24 + 4] ^= 0xFF  # first byte of the first leaf's tag
    with pytest.raises(InvalidProof):
        LeafBundle.from_bytes(bytes(data))


def test_bundle_fields_are_checked() -> None:
    with pytest.raises(InvalidProof):
        LeafBundle("", 0, ())
    with pytest.raises(InvalidProof):
        LeafBundle("two\nlines", 0, ())
    with pytest.raises(InvalidProof):
        LeafBundle(ORIGIN, -1, ())


@pytest.mark.parametrize("splits", [[0], [1], [5], [3, 4], [1, 1, 1, 8], [0, 13, 0]])
def test_consecutive_bundles_give_the_root_of_the_tree(splits: list[int]) -> None:
    bundles = []
    first = 0
    for count in splits:
        bundles.append(LeafBundle(ORIGIN, first, leaves(first, count)))
        first += count
    tree = MerkleTree()
    tree.append_many([leaf.to_bytes() for leaf in leaves(0, first)])
    assert root_of_bundles(bundles) == tree.root()


def test_bundles_with_a_gap_an_overlap_or_another_origin_are_refused() -> None:
    a = LeafBundle(ORIGIN, 0, leaves(0, 3))
    with pytest.raises(InvalidProof):
        root_of_bundles([a, LeafBundle(ORIGIN, 4, leaves(4, 2))])
    with pytest.raises(InvalidProof):
        root_of_bundles([a, LeafBundle(ORIGIN, 2, leaves(2, 2))])
    with pytest.raises(InvalidProof):
        root_of_bundles([LeafBundle(ORIGIN, 1, leaves(1, 2))])
    with pytest.raises(InvalidProof):
        root_of_bundles([a, LeafBundle("other/log", 3, leaves(3, 1))])

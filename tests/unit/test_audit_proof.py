"""One event's proof, step by step, on data made here: every step verifies on honest
input, and each way a step can be lied to is caught by that step, with its reason."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from opentimestamps.core.notary import PendingAttestation
from opentimestamps.core.op import OpSHA256
from opentimestamps.core.timestamp import Timestamp

from anchoring.eventproof import ProofOptions, prove_event
from anchoring.timestamps import proof_from_block
from ledger.audit import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK
from ledger.audit.proof import (
    PROOF_FORMAT,
    Anchors,
    CannotCheck,
    EventProof,
    Inclusion,
    ServedCheckpoint,
    ServedLeaf,
    Status,
    StepName,
    check_anchored,
    check_checkpoint,
    check_cids,
    check_event,
    check_inclusion,
    check_signature,
    check_timestamp,
    parse_checkpoint,
    parse_consistency,
    parse_event_leaves,
    pending,
    proof,
    unchecked,
)
from ledger.codec import EnvelopeCodec
from ledger.config import Settings
from ledger.endorsements import endorsement_envelope
from ledger.envelope import Envelope
from ledger.keys import TrustedRoot
from ledger.keystore import KeyStore
from ledger.signing import Signer
from ledger.tlog.bundle import LeafBundle
from ledger.tlog.checkpoint import Checkpoint, sign_checkpoint
from ledger.tlog.cid import file_dag
from ledger.tlog.keys import AnchoringKey, load_or_create_anchoring_key
from ledger.tlog.leaf import LeafRecord
from ledger.tlog.merkle import leaf_hash
from ledger.tlog.ots import serialize_proof
from ledger.tlog.tree import MerkleTree
from tests.support import events
from tests.support.fakes import MemoryRegistry
from tests.unit.test_anchoring_timestamps import Headers, stamped_block

ORIGIN = "payledger.test/log"
TOPIC = "payledger.audit-facts"
KEYS = "payledger.keys"
LEAF_INDEX = 5  # the event's leaf; checkpoints at 4, 8 (anchored) and 12 (latest)
SIZES = (4, 8, 12)
HEIGHT = 120


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def _store(state_dir: Path) -> KeyStore:
    return KeyStore(Settings(state_dir=state_dir), clock=lambda: events.T0 - timedelta(hours=1))


@dataclass
class World:
    """A ledger in miniature: one signed event in a Merkle log, checkpointed and anchored."""

    registry: MemoryRegistry
    root: TrustedRoot
    signer: Signer
    keys_values: list[bytes]
    event: Envelope
    value: bytes
    records: list[LeafRecord]
    tree: MerkleTree
    anchoring: AnchoringKey
    notes: dict[int, str]
    bundles: dict[int, bytes]

    def codec(self) -> EnvelopeCodec:
        """A fresh decoder, as an auditor has: it knows the registry, nothing else."""
        return EnvelopeCodec(self.registry)

    def wire(self, envelope: Envelope) -> bytes:
        return EnvelopeCodec(self.registry).encode(envelope, self.signer, TOPIC)[1]

    def leaf(self, index: int = LEAF_INDEX, size: int = SIZES[-1]) -> ServedLeaf:
        return ServedLeaf(
            index,
            self.records[index],
            leaf_hash(self.records[index].to_bytes()),
            Inclusion(size, self.tree.root(size), tuple(self.tree.inclusion_proof(index, size))),
        )

    def checkpoint(self, size: int) -> ServedCheckpoint:
        previous = max((s for s in SIZES if s < size), default=0)
        note_cid, bundle_cid = (
            str(file_dag(self.notes[size].encode()).root),
            str(file_dag(self.bundles[size]).root),
        )
        return ServedCheckpoint(
            size,
            self.tree.root(size),
            self.notes[size],
            previous,
            Anchors(note_cid, bundle_cid, "complete" if size == 8 else "none"),
        )

    def ots(self, size: int = 8) -> tuple[bytes, Headers]:
        digest = hashlib.sha256(self.notes[size].encode()).digest()
        _, block = stamped_block(digest, HEIGHT)
        return proof_from_block(digest, block.serialize(), HEIGHT), Headers({HEIGHT: block})


@pytest.fixture
def world(tmp_path: Path) -> World:
    registry = MemoryRegistry()
    store = _store(tmp_path / "operator")
    active = store.active_key()
    keys_wire = EnvelopeCodec(registry).encode(
        endorsement_envelope(active.endorsement, "payledger/test"), active.signer, KEYS
    )[1]
    event = events.audit_fact()
    value = EnvelopeCodec(registry).encode(event, active.signer, TOPIC)[1]
    records = [LeafRecord.of(TOPIC, 0, n, f"other-{n}", b"value %d" % n) for n in range(SIZES[-1])]
    records[LEAF_INDEX] = LeafRecord.of(TOPIC, 0, LEAF_INDEX, event.event_id, value)
    tree = MerkleTree()
    tree.append_many([record.to_bytes() for record in records])
    anchoring = load_or_create_anchoring_key(Settings(state_dir=tmp_path / "log"), ORIGIN)
    notes = {
        size: sign_checkpoint(Checkpoint(ORIGIN, size, tree.root(size)), anchoring)
        for size in SIZES
    }
    bundles = {
        size: LeafBundle(ORIGIN, previous, tuple(records[previous:size])).to_bytes()
        for previous, size in zip((0, *SIZES), SIZES, strict=False)
    }
    return World(
        registry,
        store.trusted_root(),
        active.signer,
        [keys_wire],
        event,
        value,
        records,
        tree,
        anchoring,
        notes,
        bundles,
    )


def whole_proof(world: World) -> EventProof:
    """Every step on honest data, as ``anchoring.eventproof`` would chain them."""
    leaf = world.leaf()
    event, decoded = check_event(world.event.event_id, leaf, world.value, world.codec())
    signature = check_signature(decoded, world.keys_values, world.codec(), world.root)
    checkpoint, latest = check_checkpoint(
        world.checkpoint(12), leaf.inclusion, world.anchoring.public
    )
    anchored, _ = check_anchored(
        LEAF_INDEX,
        latest,
        world.checkpoint(8),
        world.tree.consistency_proof(8, 12),
        world.anchoring.public,
    )
    cids = check_cids(
        world.checkpoint(8), world.notes[8].encode(), world.checkpoint(8), world.bundles[8], leaf
    )
    ots, headers = world.ots()
    timestamp = check_timestamp(world.notes[8], ots, headers)
    steps = [event, signature, check_inclusion(leaf), checkpoint, anchored, cids, timestamp]
    return EventProof(world.event.event_id, steps)


# Honest input --------------------------------------------------------------------------


def test_every_step_verifies_on_honest_input(world: World) -> None:
    result = whole_proof(world)
    assert [(s.name, s.status) for s in result.steps] == [
        (name, Status.VERIFIED) for name in StepName
    ]
    assert (result.ok, result.exit_code) == (True, EXIT_OK)
    event = result.step(StepName.EVENT).data
    assert (event["topic"], event["offset"], event["leaf_index"]) == (TOPIC, LEAF_INDEX, LEAF_INDEX)
    assert (event["event_type"], event["sequence"]) == ("audit.webhook.rejected", 1)
    signature = result.step(StepName.SIGNATURE).data
    assert signature["signing_key_id"] == world.signer.key_id
    assert signature["root_key_id"] == world.root.key_id
    assert result.step(StepName.ANCHORED).data["anchored_size"] == 8
    assert result.step(StepName.TIMESTAMP).data["block_height"] == HEIGHT

    document = json.loads(json.dumps(result.to_json()))
    assert document["format"] == PROOF_FORMAT
    assert (document["event_id"], document["ok"], document["exit_code"]) == (
        world.event.event_id,
        True,
        0,
    )
    assert [(s["name"], s["ok"], s["status"]) for s in document["steps"]] == [
        (name.value, True, "verified") for name in StepName
    ]
    text = result.to_text().splitlines()
    assert text[0] == f"proof of event {world.event.event_id}"
    assert [line.split()[:2] for line in text[1:-1]] == [["OK", name.value] for name in StepName]
    assert text[-1] == "verified: every step holds"


def test_a_timestamp_not_checked_against_a_node_says_so(world: World) -> None:
    ots, _ = world.ots()
    step = check_timestamp(world.notes[8], ots, None)
    assert step.status is Status.VERIFIED
    assert "not checked against a Bitcoin node" in step.detail
    assert step.data["bitcoin_checked"] is False


def test_the_anchored_checkpoint_may_be_the_latest(world: World) -> None:
    latest = check_checkpoint(world.checkpoint(12), world.leaf().inclusion, world.anchoring.public)[
        1
    ]
    step, anchored = check_anchored(
        LEAF_INDEX, latest, world.checkpoint(12), [], world.anchoring.public
    )
    assert step.status is Status.VERIFIED and anchored == latest


# Step 1: the event -----------------------------------------------------------------------


def test_a_record_that_does_not_hash_to_the_leaf_fails(world: World) -> None:
    altered = world.value[:-1] + bytes([world.value[-1] ^ 1])
    step, decoded = check_event(world.event.event_id, world.leaf(), altered, world.codec())
    assert (step.status, decoded) == (Status.FAILED, None)
    assert f"the record at {TOPIC}[0]@{LEAF_INDEX} hashes to" in step.detail
    assert step.data["offset"] == LEAF_INDEX


def test_a_record_that_is_another_event_fails(world: World) -> None:
    command = events.create_command()
    other = world.wire(command)
    leaf = dataclasses.replace(
        world.leaf(),
        record=LeafRecord.of(TOPIC, 0, LEAF_INDEX, world.event.event_id, other),
    )
    step, decoded = check_event(world.event.event_id, leaf, other, world.codec())
    assert (step.status, decoded) == (Status.FAILED, None)
    assert step.detail.endswith(f"@{LEAF_INDEX} is event {command.event_id}")


def test_a_leaf_of_another_event_id_fails(world: World) -> None:
    step, _ = check_event("another-event", world.leaf(), world.value, world.codec())
    assert step.status is Status.FAILED
    assert f"is of event {world.event.event_id}" in step.detail


def test_a_record_kafka_does_not_hold_fails(world: World) -> None:
    step, _ = check_event(world.event.event_id, world.leaf(), None, world.codec())
    assert step.status is Status.FAILED
    assert f"no committed record at {TOPIC}[0]@{LEAF_INDEX}: deleted" in step.detail


def test_a_record_that_does_not_decode_fails(world: World) -> None:
    garbage = b"not an envelope"
    leaf = dataclasses.replace(
        world.leaf(), record=LeafRecord.of(TOPIC, 0, LEAF_INDEX, world.event.event_id, garbage)
    )
    step, _ = check_event(world.event.event_id, leaf, garbage, world.codec())
    assert step.status is Status.FAILED
    assert "does not decode: bad-magic" in step.detail


# Step 2: the signature chain -----------------------------------------------------------


def test_a_bad_signature_fails(world: World) -> None:
    forged = world.value[:-1] + bytes([world.value[-1] ^ 1])  # the signature is last
    decoded = world.codec().decode(forged)
    step = check_signature(decoded, world.keys_values, world.codec(), world.root)
    assert step.status is Status.FAILED
    assert step.detail.startswith("bad-signature")


def test_an_unknown_signing_key_fails(world: World, tmp_path: Path) -> None:
    decoded = world.codec().decode(world.value)
    step = check_signature(decoded, [], world.codec(), world.root)
    assert step.status is Status.FAILED
    assert step.detail.startswith(f"unknown-key: {world.signer.key_id}")
    # A key endorsed by another root is refused, so it stays unknown.
    stranger = _store(tmp_path / "stranger")
    active = stranger.active_key()
    codec = EnvelopeCodec(world.registry)
    keys_wire = codec.encode(
        endorsement_envelope(active.endorsement, "payledger/test"), active.signer, KEYS
    )[1]
    wire = codec.encode(world.event, active.signer, TOPIC)[1]
    step = check_signature(codec.decode(wire), [keys_wire], world.codec(), world.root)
    assert step.status is Status.FAILED
    assert step.detail.startswith("unknown-key")
    assert step.data["keys_records_refused"] == 1


def test_no_record_leaves_the_signature_unchecked(world: World) -> None:
    step = check_signature(None, world.keys_values, world.codec(), world.root)
    assert (step.status, step.ok) == (Status.UNCHECKED, None)


# Step 3: inclusion ---------------------------------------------------------------------


def test_a_tampered_inclusion_proof_fails(world: World) -> None:
    leaf = world.leaf()
    assert leaf.inclusion is not None
    hashes = list(leaf.inclusion.proof)
    hashes[1] = bytes([hashes[1][0] ^ 1]) + hashes[1][1:]
    forged = dataclasses.replace(
        leaf, inclusion=dataclasses.replace(leaf.inclusion, proof=tuple(hashes))
    )
    step = check_inclusion(forged)
    assert step.status is Status.FAILED
    assert step.detail == f"leaf {LEAF_INDEX}: inclusion proof does not lead to the root"


def test_a_served_leaf_hash_that_is_not_the_leafs_fails(world: World) -> None:
    leaf = dataclasses.replace(world.leaf(), leaf_hash=leaf_hash(world.records[0].to_bytes()))
    step = check_inclusion(leaf)
    assert step.status is Status.FAILED
    assert "not the hash of leaf 5's bytes" in step.detail


def test_a_leaf_at_another_index_fails(world: World) -> None:
    leaf = dataclasses.replace(world.leaf(), index=LEAF_INDEX + 1)
    assert check_inclusion(leaf).status is Status.FAILED


# Step 4: the latest checkpoint ---------------------------------------------------------


def test_a_checkpoint_note_with_a_bad_signature_fails(world: World, tmp_path: Path) -> None:
    impostor = load_or_create_anchoring_key(Settings(state_dir=tmp_path / "impostor"), ORIGIN)
    forged_note = sign_checkpoint(Checkpoint(ORIGIN, 12, world.tree.root(12)), impostor)
    served = dataclasses.replace(world.checkpoint(12), note=forged_note)
    step, checkpoint = check_checkpoint(served, world.leaf().inclusion, world.anchoring.public)
    assert (step.status, checkpoint) == (Status.FAILED, None)
    assert step.detail.startswith("checkpoint 12: signature line from an unknown key")
    # One signature line altered (the ML-DSA-87 one) fails as well.
    text, lines = world.notes[12].split("\n\n")
    ed25519, mldsa87 = lines.splitlines()
    name, blob = mldsa87.rsplit(" ", 1)
    raw = base64.b64decode(blob)
    altered = f"{name} {b64(raw[:-1] + bytes([raw[-1] ^ 1]))}"
    served = dataclasses.replace(world.checkpoint(12), note=f"{text}\n\n{ed25519}\n{altered}\n")
    step, _ = check_checkpoint(served, world.leaf().inclusion, world.anchoring.public)
    assert step.status is Status.FAILED
    assert "ML-DSA-87 signature of payledger.test/log does not verify" in step.detail


def test_a_checkpoint_other_than_the_inclusion_proofs_fails(world: World) -> None:
    step, checkpoint = check_checkpoint(
        world.checkpoint(8), world.leaf().inclusion, world.anchoring.public
    )
    assert step.status is Status.FAILED and checkpoint is not None
    assert "the inclusion proof is into size 12" in step.detail


# Step 5: the anchored checkpoint and consistency -----------------------------------------


def test_a_forged_consistency_proof_fails(world: World) -> None:
    latest = Checkpoint(ORIGIN, 12, world.tree.root(12))
    proof_hashes = world.tree.consistency_proof(8, 12)
    proof_hashes[0] = bytes(32)
    step, anchored = check_anchored(
        LEAF_INDEX, latest, world.checkpoint(8), proof_hashes, world.anchoring.public
    )
    assert step.status is Status.FAILED
    assert step.detail.startswith("checkpoint 12 does not extend checkpoint 8:")
    # The anchored note itself verified: the CID and timestamp steps still run on it.
    assert anchored is not None and anchored.size == 8


def test_an_anchored_checkpoint_that_does_not_cover_the_leaf_fails(world: World) -> None:
    latest = Checkpoint(ORIGIN, 12, world.tree.root(12))
    step, _ = check_anchored(
        LEAF_INDEX,
        latest,
        world.checkpoint(4),
        world.tree.consistency_proof(4, 12),
        world.anchoring.public,
    )
    assert step.status is Status.FAILED
    assert step.detail == f"checkpoint 4 does not cover leaf {LEAF_INDEX}"


def test_a_consistency_proof_that_could_not_be_fetched_is_unchecked(world: World) -> None:
    latest = Checkpoint(ORIGIN, 12, world.tree.root(12))
    step, anchored = check_anchored(
        LEAF_INDEX,
        latest,
        world.checkpoint(8),
        None,
        world.anchoring.public,
        why_missing="HTTP 503",
    )
    assert (step.status, step.detail) == (Status.UNCHECKED, "HTTP 503")
    assert anchored is not None


# Step 6: the CIDs ------------------------------------------------------------------------


def test_a_cid_that_does_not_match_the_bytes_fails(world: World) -> None:
    anchored, leaf = world.checkpoint(8), world.leaf()
    step = check_cids(anchored, b"other bytes", anchored, world.bundles[8], leaf)
    assert step.status is Status.FAILED
    assert step.detail.startswith(f"the bytes IPFS gave for {anchored.anchors.checkpoint_cid}")  # type: ignore[union-attr]
    step = check_cids(anchored, world.notes[8].encode(), anchored, world.bundles[4], leaf)
    assert step.status is Status.FAILED
    assert step.detail.startswith(f"the bytes IPFS gave for {anchored.anchors.bundle_cid}")  # type: ignore[union-attr]


def test_a_published_note_that_is_another_checkpoints_fails(world: World) -> None:
    # The CID is right for the bytes, but the bytes are checkpoint 4's note.
    anchored = dataclasses.replace(
        world.checkpoint(8),
        anchors=Anchors(str(file_dag(world.notes[4].encode()).root), None, "complete"),
    )
    step = check_cids(
        anchored, world.notes[4].encode(), world.checkpoint(8), world.bundles[8], world.leaf()
    )
    assert step.status is Status.FAILED
    assert step.detail.endswith("is not checkpoint 8's note")


def test_a_bundle_without_the_leaf_fails(world: World) -> None:
    records = list(world.records[4:8])
    records[LEAF_INDEX - 4] = LeafRecord.of(TOPIC, 0, LEAF_INDEX, "someone-else", b"x")
    altered = LeafBundle(ORIGIN, 4, tuple(records)).to_bytes()
    holder = dataclasses.replace(
        world.checkpoint(8), anchors=Anchors(None, str(file_dag(altered).root), "complete")
    )
    step = check_cids(world.checkpoint(8), world.notes[8].encode(), holder, altered, world.leaf())
    assert step.status is Status.FAILED
    assert step.detail.endswith(f"does not hold the event's leaf {LEAF_INDEX}")
    # Another checkpoint's bundle, published under its own CID, is not this one's.
    holder = dataclasses.replace(
        world.checkpoint(8),
        anchors=Anchors(None, str(file_dag(world.bundles[12]).root), "complete"),
    )
    step = check_cids(
        world.checkpoint(8), world.notes[8].encode(), holder, world.bundles[12], world.leaf()
    )
    assert step.status is Status.FAILED
    assert "holds leaves 8 to 11, not checkpoint 8's" in step.detail


def test_a_malformed_cid_fails(world: World) -> None:
    anchored = dataclasses.replace(
        world.checkpoint(8), anchors=Anchors("Qmnotbase32", None, "complete")
    )
    step = check_cids(anchored, b"", world.checkpoint(8), world.bundles[8], world.leaf())
    assert step.status is Status.FAILED
    assert "not a base32 CIDv1" in step.detail


# Step 7: the timestamp -------------------------------------------------------------------


def test_an_ots_for_another_digest_fails(world: World) -> None:
    ots, headers = world.ots(size=4)  # a proof of checkpoint 4's note
    step = check_timestamp(world.notes[8], ots, headers)
    assert step.status is Status.FAILED
    assert step.detail.endswith("proof is for another digest")
    assert check_timestamp(world.notes[8], ots, None).status is Status.FAILED


def test_an_ots_against_another_chain_fails(world: World) -> None:
    ots, _ = world.ots()
    step = check_timestamp(world.notes[8], ots, Headers({}))
    assert step.status is Status.FAILED
    assert step.detail.endswith(f"the node has no block at height {HEIGHT}")


def test_a_pending_only_ots_fails(world: World) -> None:
    digest = hashlib.sha256(world.notes[8].encode()).digest()
    timestamp = Timestamp(digest)
    timestamp.ops.add(OpSHA256()).attestations.add(PendingAttestation("https://calendar.invalid"))
    step = check_timestamp(world.notes[8], serialize_proof(timestamp), None)
    assert step.status is Status.FAILED
    assert "pending only" in step.detail


def test_a_node_that_cannot_be_read_leaves_the_timestamp_unchecked(world: World) -> None:
    class Down:
        def block_header(self, height: int) -> bytes | None:
            raise CannotCheck("the Bitcoin node: connection refused")

    ots, _ = world.ots()
    step = check_timestamp(world.notes[8], ots, Down())
    assert (step.status, step.detail) == (Status.UNCHECKED, "the Bitcoin node: connection refused")


# The proof as a whole ------------------------------------------------------------------


def test_exit_codes_follow_the_worst_step(world: World) -> None:
    honest = whole_proof(world)
    steps = honest.steps
    with_pending = EventProof("e", [*steps[:4], pending(StepName.ANCHORED, "not yet"), *steps[5:]])
    assert (with_pending.exit_code, with_pending.ok) == (EXIT_ERROR, False)
    failing = world.leaf()
    failed_step = check_inclusion(dataclasses.replace(failing, index=0))
    both = EventProof("e", [failed_step, unchecked(StepName.CID, "IPFS down")])
    assert both.exit_code == EXIT_FINDINGS
    assert both.to_text().splitlines()[-1] == "DOES NOT VERIFY: inclusion"
    document = both.to_json()
    assert [(s["ok"], s["status"]) for s in document["steps"]] == [
        (False, "failed"),
        (None, "unchecked"),
    ]
    assert EventProof("e", [], problem="unknown event").exit_code == EXIT_ERROR


# Parsing what the API serves -------------------------------------------------------------


def _served_json(world: World) -> dict[str, Any]:
    """``GET /v1/proofs/events/{id}`` as the ingress answers it."""
    leaf = world.leaf()
    assert leaf.inclusion is not None
    record = leaf.record
    return {
        "event_id": world.event.event_id,
        "leaves": [
            {
                "leaf_index": leaf.index,
                "leaf": {
                    "topic": record.topic,
                    "partition": record.partition,
                    "offset": record.offset,
                    "event_id": record.event_id,
                    "value_sha256": b64(record.value_sha256),
                },
                "leaf_hash": b64(leaf.leaf_hash),
                "inclusion": {
                    "tree_size": 12,
                    "root_hash": b64(leaf.inclusion.root_hash),
                    "proof": [b64(h) for h in leaf.inclusion.proof],
                },
            }
        ],
        "truncated": False,
        "checkpoint": {
            "origin": ORIGIN,
            "size": 12,
            "root_hash": b64(world.tree.root(12)),
            "note": world.notes[12],
            "previous_size": 8,
            "consistency_proof": [],
            "created_at": "2026-11-23T12:00:00Z",
        },
    }


def test_the_apis_answers_parse(world: World) -> None:
    served = parse_event_leaves(_served_json(world))
    assert served.leaves == (world.leaf(),)
    assert served.checkpoint == ServedCheckpoint(12, world.tree.root(12), world.notes[12], 8)
    with_anchors = parse_checkpoint(
        {
            **_served_json(world)["checkpoint"],
            "anchors": {
                "size": 12,
                "checkpoint_cid": "bafkreia",
                "bundle_cid": None,
                "timestamp": {"state": "pending"},
            },
        }
    )
    assert with_anchors.anchors == Anchors("bafkreia", None, "pending")
    assert not with_anchors.anchors.anchored(cids=False)
    assert parse_consistency({"proof": [b64(bytes(32))]}) == (bytes(32),)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("leaves",), {}, "leaves is not a JSON array"),
        (("checkpoint", "size"), "12", "size is not an integer"),
        (("checkpoint", "root_hash"), "***", "root_hash is not base64"),
        (("leaves", 0, "leaf", "topic"), "", "a leaf is malformed"),
    ],
)
def test_a_malformed_answer_cannot_be_checked(
    world: World, path: tuple[Any, ...], value: Any, message: str
) -> None:
    document = _served_json(world)
    node = document
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(CannotCheck, match=message):
        parse_event_leaves(document)


# The fetching side, without services ---------------------------------------------------


def _options(world: World, url: str = "http://ingress.test") -> ProofOptions:
    return ProofOptions(url, world.root, world.anchoring.public, bitcoin=False, ipfs=False)


async def test_an_unknown_event_cannot_be_proved(world: World, tmp_path: Path) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.raw_path == b"/v1/proofs/events/no%2Fsuch"
        return httpx.Response(
            404,
            json={"type": "/problems/event-not-found", "title": "No such event", "status": 404},
        )

    result = await prove_event(
        Settings(state_dir=tmp_path),
        "no/such",
        _options(world),
        transport=httpx.MockTransport(answer),
    )
    assert result.exit_code == EXIT_ERROR
    assert result.problem is not None and result.problem.startswith("unknown event")
    assert [s.status for s in result.steps] == [Status.UNCHECKED] * len(StepName)


async def test_an_event_not_checkpointed_yet_is_pending(world: World, tmp_path: Path) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            404,
            headers={"Retry-After": "3"},
            json={"type": "/problems/event-not-checkpointed", "status": 404},
        )

    result = await prove_event(
        Settings(state_dir=tmp_path), "e", _options(world), transport=httpx.MockTransport(answer)
    )
    assert result.exit_code == EXIT_ERROR
    assert result.steps[0].status is Status.PENDING
    assert result.problem is not None and "retry in 3 s" in result.problem


async def test_an_unreachable_api_cannot_be_checked(world: World, tmp_path: Path) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    result = await prove_event(
        Settings(state_dir=tmp_path), "e", _options(world), transport=httpx.MockTransport(answer)
    )
    assert result.exit_code == EXIT_ERROR
    assert result.problem is not None and "connection refused" in result.problem


def test_the_command_without_its_keys_cannot_start(tmp_path: Path) -> None:
    outcome = CliRunner().invoke(
        proof, ["some-event", "--json"], env={"PAYLEDGER_STATE_DIR": str(tmp_path)}
    )
    assert outcome.exit_code == EXIT_ERROR
    assert "cannot start: cannot read trusted root" in outcome.output

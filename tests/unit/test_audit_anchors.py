"""The auditor's checks of the Merkle log and its anchors, on a real small log: a clean
log first, then each tamper, found with its location and reason."""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pytest
from bitcoin.core import CBlock
from cryptography.hazmat.primitives.asymmetric import mldsa
from opentimestamps.core.notary import PendingAttestation
from opentimestamps.core.timestamp import Timestamp

from anchoring.timestamps import proof_from_block
from ledger.audit import AnchorChecker, Check, CheckpointRecord, RecordIndex, Report
from ledger.audit.report import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK
from ledger.signing import FileSigner
from ledger.tlog.bundle import LeafBundle
from ledger.tlog.checkpoint import Checkpoint, sign_checkpoint
from ledger.tlog.cid import file_dag
from ledger.tlog.keys import AnchoringKey
from ledger.tlog.leaf import UNDECODABLE_EVENT_ID, LeafRecord
from ledger.tlog.ots import serialize_proof
from ledger.tlog.tree import MerkleTree
from tests.unit.test_anchoring_timestamps import Headers, stamped_block

ORIGIN = "ledger.payledger.test/log"
CHECKPOINTS = "payledger.checkpoints"
TOPICS = ("payledger.commands", "payledger.payment-events")
RECORDS = 24
SIZES = (4, 10, 16, 20)  # checkpoints; the last one is not anchored yet
ANCHORED = (4, 10, 16)
UNDECODABLE_AT = 3  # the record that holds no envelope
FIRST_HEIGHT = 101


def make_key(seed: int = 1) -> AnchoringKey:
    return AnchoringKey(
        ORIGIN,
        FileSigner(bytes([seed]) * 32),
        mldsa.MLDSA87PrivateKey.from_seed_bytes(bytes([seed + 100]) * 32),
    )


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def cid_of(data: bytes) -> str:
    return str(file_dag(data).root)


@dataclass(frozen=True)
class KafkaRecord:
    topic: str
    partition: int
    offset: int
    event_id: str | None
    value: bytes

    def leaf(self) -> LeafRecord:
        return LeafRecord.of(
            self.topic,
            self.partition,
            self.offset,
            self.event_id or UNDECODABLE_EVENT_ID,
            self.value,
        )


def kafka_records() -> list[KafkaRecord]:
    """Two topics of two partitions each, in consumption order. Offsets step by two, as
    transaction markers leave them in a transactional topic."""
    counters: dict[tuple[str, int], int] = {}
    records = []
    for number in range(RECORDS):
        topic, partition = TOPICS[number % 2], number // 2 % 2
        offset = counters.get((topic, partition), 0)
        counters[(topic, partition)] = offset + 2
        event_id = None if number == UNDECODABLE_AT else f"0190a000-0000-7000-8000-{number:012d}"
        records.append(KafkaRecord(topic, partition, offset, event_id, f"value {number}".encode()))
    return records


@dataclass
class Log:
    """What an auditor reads: Kafka records, the checkpoints topic, IPFS, a Bitcoin node."""

    key: AnchoringKey
    kafka: list[KafkaRecord]
    leaves: list[LeafRecord]
    checkpoints: list[CheckpointRecord]
    ipfs: dict[str, bytes]
    blocks: dict[int, CBlock]
    tree: MerkleTree
    notes: dict[int, str] = field(default_factory=dict)

    def record(self, size: int, *, anchored: bool = False) -> CheckpointRecord:
        return next(r for r in self.checkpoints if r.tree_size == size and r.anchored == anchored)

    def replace_record(self, old: CheckpointRecord, new: CheckpointRecord) -> None:
        self.checkpoints[self.checkpoints.index(old)] = new

    def position(self, number: int) -> tuple[str, int, int]:
        record = self.kafka[number]
        return record.topic, record.partition, record.offset


def stamp(digest: bytes, height: int, blocks: dict[int, CBlock]) -> bytes:
    _, block = stamped_block(digest, height)
    blocks[height] = block
    return proof_from_block(digest, block.serialize(), height)


def build_log(
    *,
    roots: dict[int, bytes] | None = None,
    edit_leaves: Callable[[list[LeafRecord]], list[LeafRecord]] | None = None,
) -> Log:
    """A log of ``RECORDS`` records checkpointed at ``SIZES``, anchored as the worker does:
    per size a plain record, and for the anchored sizes a second record with the CIDs
    of the note and the bundle and a complete timestamp proof of the note."""
    key = make_key()
    kafka = kafka_records()
    leaves = [record.leaf() for record in kafka]
    if edit_leaves is not None:
        leaves = edit_leaves(leaves)
    tree = MerkleTree()
    tree.append_many([leaf.to_bytes() for leaf in leaves])
    log = Log(key, kafka, leaves, [], {}, {}, tree)
    plain: list[CheckpointRecord] = []
    anchored: list[CheckpointRecord] = []
    previous = 0
    for number, size in enumerate(SIZES):
        root = (roots or {}).get(size, tree.root(size))
        note = sign_checkpoint(Checkpoint(ORIGIN, size, root), key)
        log.notes[size] = note
        record = CheckpointRecord(
            partition=0,
            offset=0,
            event_id=f"checkpoint-{size}",
            origin=ORIGIN,
            tree_size=size,
            root_hash=root,
            note=note,
            previous_size=previous,
            consistency_proof=tuple(tree.consistency_proof(previous, size)),
        )
        plain.append(record)
        if size in ANCHORED:
            bundle = LeafBundle(ORIGIN, previous, tuple(leaves[previous:size])).to_bytes()
            log.ipfs[cid_of(bundle)] = bundle
            log.ipfs[cid_of(note.encode())] = note.encode()
            anchored.append(
                replace(
                    record,
                    event_id=f"checkpoint-{size}-anchored",
                    checkpoint_cid=cid_of(note.encode()),
                    bundle_cid=cid_of(bundle),
                    timestamp_proof=stamp(sha256(note.encode()), FIRST_HEIGHT + number, log.blocks),
                )
            )
        previous = size
    # The topic's order: each anchored record comes after the next plain one.
    ordered = [plain[0]]
    for number in range(1, len(SIZES)):
        ordered.append(plain[number])
        if number - 1 < len(anchored):
            ordered.append(anchored[number - 1])
    log.checkpoints = [replace(r, offset=offset) for offset, r in enumerate(ordered)]
    return log


def index_of(kafka: list[KafkaRecord]) -> RecordIndex:
    index = RecordIndex()
    for record in kafka:
        index.add(
            record.topic, record.partition, record.offset, record.event_id, sha256(record.value)
        )
    return index


def audit(log: Log, *, node: bool = True) -> Report:
    checker = AnchorChecker(
        log.key.public, checkpoints_topic=CHECKPOINTS, headers=Headers(log.blocks) if node else None
    )
    for record in log.checkpoints:
        checker.add(record)
    content: dict[str, bytes] = {}
    unavailable: dict[str, str] = {}
    for cid in checker.content_wanted():
        if cid in log.ipfs:
            content[cid] = log.ipfs[cid]
        else:
            unavailable[cid] = "not found on the node"
    return checker.finish(content, unavailable, index_of(log.kafka))


Found = tuple[str, int, int, str | None, Check, str, str | None]


def found(report: Report) -> set[Found]:
    return {
        (f.topic, f.partition, f.offset, f.event_id, f.check, f.reason, f.where)
        for f in report.findings
    }


def at_checkpoint(
    record: CheckpointRecord, check: Check, reason: str, where: str | None = None
) -> Found:
    return (CHECKPOINTS, record.partition, record.offset, record.event_id, check, reason, where)


def at_leaf(log: Log, index: int, reason: str) -> Found:
    leaf = log.leaves[index]
    return (
        leaf.topic,
        leaf.partition,
        leaf.offset,
        leaf.event_id,
        Check.LEAF,
        reason,
        f"leaf {index}",
    )


@pytest.fixture(scope="module")
def clean() -> Log:
    return build_log()


def fresh(clean: Log) -> Log:
    """A copy of the clean log to tamper with."""
    return dataclasses.replace(
        clean,
        kafka=list(clean.kafka),
        leaves=list(clean.leaves),
        checkpoints=list(clean.checkpoints),
        ipfs=dict(clean.ipfs),
        blocks=dict(clean.blocks),
    )


# ---- a clean log ----------------------------------------------------------------


def test_clean_log_verifies_against_a_node(clean: Log) -> None:
    report = audit(clean)
    assert report.findings == []
    assert report.errors == []
    assert report.exit_code == EXIT_OK
    plain, anchored = len(SIZES), len(ANCHORED)
    assert report.checked == {
        Check.CHECKPOINT: plain + anchored,
        Check.CONSISTENCY: plain + anchored,
        Check.CID: 2 * anchored,
        Check.BUNDLE: anchored,
        Check.CHECKPOINT_ROOT: anchored,
        Check.TIMESTAMP: anchored,
        Check.LEAF: ANCHORED[-1],
    }
    assert report.facts == {
        "checkpoint_records": plain + anchored,
        "checkpoints": plain,
        "tree_size": SIZES[-1],
        "consistency_verified_to_size": SIZES[-1],
        "leaves_checked": ANCHORED[-1],
        "checkpoints_pending_anchors": 1,
        "checkpoint_roots_not_checked": 0,
        "records_after_latest_checkpoint": RECORDS - ANCHORED[-1],
        "records_without_leaf_not_checked": 0,
    }


def test_clean_log_without_a_node_says_what_it_did_not_check(clean: Log) -> None:
    report = audit(clean, node=False)
    assert report.exit_code == EXIT_OK
    assert report.checked[Check.TIMESTAMP] == len(ANCHORED)
    assert report.facts["timestamps_not_checked_against_a_node"] == len(ANCHORED)


def test_an_undecodable_record_matches_its_undecodable_leaf(clean: Log) -> None:
    assert clean.kafka[UNDECODABLE_AT].event_id is None
    assert clean.leaves[UNDECODABLE_AT].event_id == UNDECODABLE_EVENT_ID
    log = fresh(clean)
    log.kafka[UNDECODABLE_AT] = replace(log.kafka[UNDECODABLE_AT], event_id="forged-id")
    report = audit(log)
    assert found(report) == {at_leaf(log, UNDECODABLE_AT, "record-differs")}
    assert "event id 'forged-id' in Kafka" in report.findings[0].detail


def test_no_checkpoint_yet_leaves_every_record_in_the_tail(clean: Log) -> None:
    log = fresh(clean)
    log.checkpoints = []
    report = audit(log)
    assert report.exit_code == EXIT_OK
    assert report.facts["records_after_latest_checkpoint"] == RECORDS
    assert report.facts["checkpoints"] == 0


# ---- the checkpoints and their chain -------------------------------------------


def test_checkpoint_whose_root_does_not_match_its_leaves() -> None:
    wrong = sha256(b"not the root of these leaves")
    log = build_log(roots={10: wrong})
    report = audit(log)
    # Signed and announced as usual, but the leaves give another root, and the
    # consistency proofs into and out of the false root fail.
    assert found(report) == {
        at_checkpoint(log.record(10), Check.CHECKPOINT_ROOT, "root-mismatch"),
        at_checkpoint(log.record(10), Check.CONSISTENCY, "invalid-proof"),
        at_checkpoint(log.record(10, anchored=True), Check.CONSISTENCY, "invalid-proof"),
        at_checkpoint(log.record(16), Check.CONSISTENCY, "invalid-proof"),
        at_checkpoint(log.record(16, anchored=True), Check.CONSISTENCY, "invalid-proof"),
    }
    assert report.exit_code == EXIT_FINDINGS
    assert report.facts["consistency_verified_to_size"] == 4
    mismatch = next(f for f in report.findings if f.check is Check.CHECKPOINT_ROOT)
    assert wrong.hex() in mismatch.detail


def test_forged_consistency_proof(clean: Log) -> None:
    log = fresh(clean)
    record = log.record(16)
    proof = list(record.consistency_proof)
    proof[0] = bytes([proof[0][0] ^ 1]) + proof[0][1:]
    log.replace_record(record, replace(record, consistency_proof=tuple(proof)))
    report = audit(log)
    assert found(report) == {at_checkpoint(record, Check.CONSISTENCY, "invalid-proof")}
    assert report.facts["consistency_verified_to_size"] == 10


def test_previous_size_that_skips_a_checkpoint(clean: Log) -> None:
    log = fresh(clean)
    record = log.record(16)
    # A valid proof from 4 to 16 does not make 16 follow 10.
    skipping = replace(
        record, previous_size=4, consistency_proof=tuple(log.tree.consistency_proof(4, 16))
    )
    log.replace_record(record, skipping)
    report = audit(log)
    assert found(report) == {at_checkpoint(record, Check.CONSISTENCY, "previous-size")}


def test_note_signed_by_another_key(clean: Log) -> None:
    log = fresh(clean)
    impostor = sign_checkpoint(Checkpoint(ORIGIN, 10, log.tree.root(10)), make_key(seed=7))
    injected = replace(log.record(10), offset=len(log.checkpoints), note=impostor)
    log.checkpoints.append(injected)
    report = audit(log)
    assert found(report) == {at_checkpoint(injected, Check.CHECKPOINT, "invalid-note")}


def test_note_with_a_damaged_signature(clean: Log) -> None:
    log = fresh(clean)
    record = log.record(20)
    line = record.note.partition("\n\n")[2].split("\n")[0]  # the Ed25519 line
    at = len(line) - 10
    damaged = record.note.replace(
        line, line[:at] + ("B" if line[at] == "A" else "A") + line[at + 1 :]
    )
    log.replace_record(record, replace(record, note=damaged))
    report = audit(log)
    assert found(report) == {at_checkpoint(record, Check.CHECKPOINT, "invalid-note")}


def test_record_that_disagrees_with_its_note(clean: Log) -> None:
    log = fresh(clean)
    record = log.record(16, anchored=True)
    log.replace_record(record, replace(record, root_hash=sha256(b"other")))
    report = audit(log)
    assert found(report) == {at_checkpoint(record, Check.CHECKPOINT, "record-disagrees")}


def test_fork_two_signed_notes_for_one_size(clean: Log) -> None:
    log = fresh(clean)
    other = sign_checkpoint(Checkpoint(ORIGIN, 10, sha256(b"another tree")), log.key)
    record = log.record(10, anchored=True)
    forked = replace(record, root_hash=sha256(b"another tree"), note=other)
    log.replace_record(record, forked)
    report = audit(log)
    # The fork is reported; the anchored record that carries it is checked no
    # further, so checkpoint 10 now looks never anchored.
    assert at_checkpoint(record, Check.CHECKPOINT, "fork") in found(report)
    assert found(report) == {
        at_checkpoint(record, Check.CHECKPOINT, "fork"),
        at_checkpoint(log.record(10), Check.BUNDLE, "not-anchored"),
    }


# ---- IPFS and the bundles ---------------------------------------------------------


def altered_bundle(log: Log, size: int, leaf_index: int) -> bytes:
    previous = SIZES[SIZES.index(size) - 1] if SIZES.index(size) else 0
    leaves = list(log.leaves[previous:size])
    changed = leaves[leaf_index - previous]
    leaves[leaf_index - previous] = replace(changed, value_sha256=sha256(b"another value"))
    return LeafBundle(ORIGIN, previous, tuple(leaves)).to_bytes()


def test_altered_bundle_served_under_the_announced_cid(clean: Log) -> None:
    log = fresh(clean)
    record = log.record(10, anchored=True)
    assert record.bundle_cid is not None
    log.ipfs[record.bundle_cid] = altered_bundle(log, 10, 7)
    report = audit(log)
    where = f"ipfs {record.bundle_cid}"
    assert found(report) == {at_checkpoint(record, Check.CID, "cid-mismatch", where)}
    # Without that bundle no later root can be recomputed, and the records it
    # held cannot be told from records never anchored.
    assert report.facts["checkpoint_roots_not_checked"] == 2
    assert report.facts["records_without_leaf_not_checked"] == 10 - 4


def test_altered_bundle_published_under_its_own_cid(clean: Log) -> None:
    log = fresh(clean)
    record = log.record(10, anchored=True)
    bundle = altered_bundle(log, 10, 7)
    log.ipfs[cid_of(bundle)] = bundle
    log.replace_record(record, replace(record, bundle_cid=cid_of(bundle)))
    report = audit(log)
    assert found(report) == {
        at_leaf(log, 7, "record-differs"),
        at_checkpoint(log.record(10), Check.CHECKPOINT_ROOT, "root-mismatch"),
        at_checkpoint(log.record(16), Check.CHECKPOINT_ROOT, "root-mismatch"),
    }


def test_unavailable_cid(clean: Log) -> None:
    log = fresh(clean)
    record = log.record(4, anchored=True)
    assert record.bundle_cid is not None
    del log.ipfs[record.bundle_cid]
    report = audit(log)
    assert found(report) == {
        at_checkpoint(record, Check.CID, "unavailable", f"ipfs {record.bundle_cid}")
    }
    assert report.findings[0].detail == "not found on the node"


def test_note_on_ipfs_that_is_not_the_records_note(clean: Log) -> None:
    log = fresh(clean)
    record = log.record(16, anchored=True)
    other = log.notes[10].encode()
    log.replace_record(record, replace(record, checkpoint_cid=cid_of(other)))
    report = audit(log)
    assert found(report) == {
        at_checkpoint(record, Check.CID, "note-differs", f"ipfs {cid_of(other)}")
    }


def test_invalid_cid_text(clean: Log) -> None:
    log = fresh(clean)
    record = log.record(4, anchored=True)
    log.replace_record(record, replace(record, checkpoint_cid="QmNotACidOfThisLayout"))
    report = audit(log)
    assert found(report) == {at_checkpoint(record, Check.CID, "invalid-cid")}


def test_checkpoint_never_anchored_while_a_later_one_is(clean: Log) -> None:
    log = fresh(clean)
    log.checkpoints.remove(log.record(4, anchored=True))
    report = audit(log)
    assert found(report) == {at_checkpoint(log.record(4), Check.BUNDLE, "not-anchored")}
    assert report.facts["checkpoints_pending_anchors"] == 1


def test_bundle_of_the_wrong_range(clean: Log) -> None:
    log = fresh(clean)
    record = log.record(10, anchored=True)
    bundle = LeafBundle(ORIGIN, 5, tuple(log.leaves[5:10])).to_bytes()
    log.ipfs[cid_of(bundle)] = bundle
    log.replace_record(record, replace(record, bundle_cid=cid_of(bundle)))
    report = audit(log)
    where = f"ipfs {cid_of(bundle)}"
    assert found(report) == {at_checkpoint(record, Check.BUNDLE, "range", where)}


def test_bundle_that_is_not_a_bundle(clean: Log) -> None:
    log = fresh(clean)
    record = log.record(10, anchored=True)
    junk = b"payledger/anchoring/bundle/v1\x00 and then nothing sensible"
    log.ipfs[cid_of(junk)] = junk
    log.replace_record(record, replace(record, bundle_cid=cid_of(junk)))
    report = audit(log)
    assert found(report) == {
        at_checkpoint(record, Check.BUNDLE, "malformed", f"ipfs {cid_of(junk)}")
    }


# ---- completeness both ways ------------------------------------------------------


def test_leaf_with_no_record(clean: Log) -> None:
    # A payment event deleted from the topic (compaction, a rewritten topic).
    log = fresh(clean)
    del log.kafka[6]
    report = audit(log)
    assert found(report) == {at_leaf(log, 6, "no-record")}
    assert report.findings[0].event_id == clean.kafka[6].event_id


def test_record_with_no_leaf(clean: Log) -> None:
    # A record injected where the log had a transaction marker: no leaf names it.
    log = fresh(clean)
    topic, partition, offset = log.position(8)
    log.kafka.append(KafkaRecord(topic, partition, offset + 1, "injected", b"injected"))
    report = audit(log)
    assert found(report) == {
        (topic, partition, offset + 1, "injected", Check.LEAF, "not-anchored", None)
    }


def test_record_whose_value_differs_from_its_leaf(clean: Log) -> None:
    log = fresh(clean)
    log.kafka[12] = replace(log.kafka[12], value=b"rewritten")
    report = audit(log)
    assert found(report) == {at_leaf(log, 12, "record-differs")}
    assert report.findings[0].detail == "another value in Kafka"


def test_the_same_record_in_two_leaves() -> None:
    def repeat(leaves: list[LeafRecord]) -> list[LeafRecord]:
        return [*leaves[:8], leaves[2], *leaves[9:]]

    log = build_log(edit_leaves=repeat)
    report = audit(log)
    eighth = log.kafka[8]
    assert found(report) == {
        at_leaf(log, 8, "duplicate"),
        (
            eighth.topic,
            eighth.partition,
            eighth.offset,
            eighth.event_id,
            Check.LEAF,
            "not-anchored",
            None,
        ),
    }
    duplicate = next(f for f in report.findings if f.reason == "duplicate")
    assert duplicate.detail == "leaf 2 names the same record"


# ---- timestamps ----------------------------------------------------------------


def with_proof(clean: Log, size: int, ots: bytes) -> tuple[Log, CheckpointRecord]:
    log = fresh(clean)
    record = log.record(size, anchored=True)
    log.replace_record(record, replace(record, timestamp_proof=ots))
    return log, record


def test_timestamp_of_another_digest(clean: Log) -> None:
    blocks: dict[int, CBlock] = {}
    log, record = with_proof(clean, 10, stamp(sha256(b"another note"), 200, blocks))
    log.blocks.update(blocks)
    for node in (True, False):
        report = audit(log, node=node)
        assert found(report) == {at_checkpoint(record, Check.TIMESTAMP, "other-digest")}


def test_timestamp_that_is_not_a_proof(clean: Log) -> None:
    log, record = with_proof(clean, 4, b"\x00OpenTimestamps\x00\x00Proof\x00 cut short")
    report = audit(log)
    assert found(report) == {at_checkpoint(record, Check.TIMESTAMP, "malformed")}


def test_timestamp_still_pending(clean: Log) -> None:
    timestamp = Timestamp(sha256(clean.notes[16].encode()))
    timestamp.attestations.add(PendingAttestation("https://calendar.example"))
    log, record = with_proof(clean, 16, serialize_proof(timestamp))
    report = audit(log)
    assert found(report) == {at_checkpoint(record, Check.TIMESTAMP, "incomplete")}


def test_timestamp_that_the_nodes_block_does_not_confirm(clean: Log) -> None:
    log = fresh(clean)
    height = FIRST_HEIGHT + ANCHORED.index(10)
    _, other = stamped_block(sha256(b"something else"), height)
    log.blocks[height] = other
    report = audit(log)
    assert found(report) == {
        at_checkpoint(log.record(10, anchored=True), Check.TIMESTAMP, "not-in-chain")
    }
    # Without a node the same proof only parses and is complete.
    assert audit(log, node=False).exit_code == EXIT_OK


def test_a_failing_node_is_an_error_not_a_finding(clean: Log) -> None:
    class Down:
        def block_header(self, height: int) -> bytes | None:
            raise OSError("connection refused")

    checker = AnchorChecker(clean.key.public, checkpoints_topic=CHECKPOINTS, headers=Down())
    for record in clean.checkpoints:
        checker.add(record)
    content = {cid: clean.ipfs[cid] for cid in checker.content_wanted()}
    report = checker.finish(content, {}, index_of(clean.kafka))
    assert report.findings == []
    assert len(report.errors) == len(ANCHORED)
    assert report.exit_code == EXIT_ERROR


# ---- the checker and the index ------------------------------------------------------


def test_content_wanted_names_each_note_and_bundle_once(clean: Log) -> None:
    checker = AnchorChecker(clean.key.public, checkpoints_topic=CHECKPOINTS)
    for record in [*clean.checkpoints, clean.record(4, anchored=True)]:
        checker.add(record)
    wanted = checker.content_wanted()
    assert len(wanted) == len(set(wanted)) == 2 * len(ANCHORED)
    assert set(wanted) == set(clean.ipfs)


def test_checker_finishes_once(clean: Log) -> None:
    checker = AnchorChecker(clean.key.public, checkpoints_topic=CHECKPOINTS)
    checker.finish({}, {}, RecordIndex())
    with pytest.raises(RuntimeError):
        checker.add(clean.checkpoints[0])
    with pytest.raises(RuntimeError):
        checker.finish({}, {}, RecordIndex())


def test_record_index_merges_and_pickles(clean: Log) -> None:
    whole = index_of(clean.kafka)
    first = index_of(clean.kafka[: RECORDS // 2])
    second = pickle.loads(pickle.dumps(index_of(clean.kafka[RECORDS // 2 :])))
    first.merge(second)
    first.merge(index_of(clean.kafka[:3]))  # the same records again change nothing
    assert len(first) == len(whole) == RECORDS
    for record in clean.kafka:
        position = (record.topic, record.partition, record.offset)
        assert (
            first.get(*position) == whole.get(*position) == (record.event_id, sha256(record.value))
        )
    assert first.get(TOPICS[0], 0, 1) is None
    assert first.get("elsewhere", 0, 0) is None
    assert [offset for offset, _, _ in first.entries(TOPICS[0], 0)] == [0, 2, 4, 6, 8, 10]


def test_a_merged_record_index_shares_nothing_with_its_source() -> None:
    source = RecordIndex()
    source.add(TOPICS[0], 0, 0, "a", sha256(b"a"))
    merged = RecordIndex()
    merged.merge(source)  # a partition merged has none: taken whole, as a copy
    merged.add(TOPICS[0], 0, 1, "b", sha256(b"b"))
    assert (len(merged), len(source)) == (2, 1)
    assert source.get(TOPICS[0], 0, 1) is None


def test_record_index_refuses_two_records_at_one_offset() -> None:
    index = RecordIndex()
    index.add(TOPICS[0], 0, 5, "a", sha256(b"a"))
    with pytest.raises(ValueError, match="indexed twice"):
        index.add(TOPICS[0], 0, 5, "b", sha256(b"b"))
    with pytest.raises(ValueError, match="32-byte"):
        index.add(TOPICS[0], 0, 6, "c", b"short")


def test_findings_carry_their_location_in_json(clean: Log) -> None:
    log = fresh(clean)
    del log.kafka[6]
    (finding,) = audit(log).to_json()["findings"]
    leaf = log.leaves[6]
    assert finding == {
        "topic": leaf.topic,
        "partition": leaf.partition,
        "offset": leaf.offset,
        "event_id": leaf.event_id,
        "check": "leaf",
        "reason": "no-record",
        "detail": "no such record in Kafka",
        "where": "leaf 6",
    }

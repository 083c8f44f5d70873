"""The anchoring worker's pure parts: the cadence, the log's writer over the memory store,
leaves of consumed records, and the checkpoint record of the checkpoints topic."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import fastavro
import pytest

from anchoring.pgstore import Position, StoredCheckpoint, check_schema_name, positions_past
from anchoring.publication import (
    CheckpointEncoder,
    checkpoint_event_id,
    checkpoint_record,
    checkpoint_schema_text,
)
from anchoring.worker import UNDECODABLE_EVENT_ID, leaf_of, ledger_topics
from anchoring.writer import Cadence, LogWriter
from ledger import schemas
from ledger.codec import EnvelopeCodec
from ledger.config import Settings
from ledger.errors import ConfigurationError
from ledger.registry import FileSchemaRegistry
from ledger.signing import FileSigner
from ledger.tlog.checkpoint import verify_checkpoint, verify_log_growth
from ledger.tlog.errors import AnchoringError, InvalidProof
from ledger.tlog.leaf import LeafRecord
from ledger.tlog.merkle import EMPTY_ROOT, leaf_hash, verify_inclusion
from ledger.tlog.store import MemoryTreeStore
from ledger.tlog.tree import MerkleTree
from ledger.topics import TopicRole, topic_name
from tests.support import events
from tests.unit.test_anchoring_checkpoint import make_key

ORIGIN = "example.com/payledger"
T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class MemoryLog:
    """The writer's backend over ``MemoryTreeStore``: batches and checkpoints in lists."""

    def __init__(self) -> None:
        self.store = MemoryTreeStore()
        self.batches: list[tuple[list[LeafRecord], list[Position]]] = []
        self.stored: list[StoredCheckpoint] = []

    def append_batch(
        self, tree: MerkleTree, records: Sequence[LeafRecord], positions: Sequence[Position]
    ) -> int:
        self.batches.append((list(records), list(positions)))
        return tree.append_many([record.to_bytes() for record in records])

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        return self.stored[-1] if self.stored else None

    def add_checkpoint(self, **fields) -> StoredCheckpoint:
        stored = StoredCheckpoint(
            size=fields["size"],
            root_hash=fields["root_hash"],
            origin=fields["origin"],
            note=fields["note"],
            previous_size=fields["previous_size"],
            consistency_proof=tuple(fields["consistency_proof"]),
            created_at=T0,
            published_at=None,
        )
        self.stored.append(stored)
        return stored


def leaves(count: int, start: int = 0) -> list[LeafRecord]:
    return [
        LeafRecord.of(f"t{n % 3}", n % 2, n, str(uuid.uuid4()), b"value %d" % n)
        for n in range(start, start + count)
    ]


@dataclass
class Rig:
    log: MemoryLog
    writer: LogWriter
    clock: FakeClock


def rig(every_events: int = 10, interval_s: float = 5.0) -> Rig:
    log, clock = MemoryLog(), FakeClock()
    tree = MerkleTree(log.store)
    writer = LogWriter(log, tree, make_key(ORIGIN), Cadence(every_events, interval_s, 0, clock))
    return Rig(log, writer, clock)


# The cadence ---------------------------------------------------------------------


def test_the_count_or_the_interval_whichever_first() -> None:
    clock = FakeClock()
    cadence = Cadence(10, 5.0, 0, clock)
    assert not cadence.due(0)
    assert not cadence.due(9)
    assert cadence.due(10)
    assert cadence.due(25)
    clock.now += 5.0
    assert cadence.due(1)
    cadence.made(1)
    assert not cadence.due(1), "never when the log did not grow"
    clock.now += 60.0
    assert not cadence.due(1), "never when the log did not grow, however long"
    assert cadence.due(2)


def test_room_is_what_is_left_before_the_count() -> None:
    cadence = Cadence(10, 5.0, 20, FakeClock())
    assert cadence.room(20) == 10
    assert cadence.room(27) == 3
    assert cadence.room(30) == 1
    assert cadence.room(45) == 1


def test_a_cadence_needs_positive_bounds() -> None:
    with pytest.raises(ValueError):
        Cadence(0, 5.0, 0, FakeClock())
    with pytest.raises(ValueError):
        Cadence(10, 0, 0, FakeClock())


# The writer ------------------------------------------------------------------------


def test_chunks_end_where_the_count_calls_for_a_checkpoint() -> None:
    r = rig(every_events=10)
    made = r.writer.append(leaves(7))
    assert made == []
    made = r.writer.append(leaves(28, start=7))
    # 3 to reach 10, then 10, 10, and the 5 left.
    assert [len(batch) for batch, _ in r.log.batches] == [7, 3, 10, 10, 5]
    assert [stored.size for stored in made] == [10, 20, 30]
    assert r.writer.tree.size == 35


def test_every_leaf_once_in_order_and_positions_past_each_chunk() -> None:
    r = rig(every_events=4)
    records = leaves(11)
    r.writer.append(records)
    appended = [record for batch, _ in r.log.batches for record in batch]
    assert appended == records
    for batch, positions in r.log.batches:
        assert sorted(positions, key=lambda p: (p.topic, p.partition)) == sorted(
            positions_past(batch), key=lambda p: (p.topic, p.partition)
        )
    reference = MerkleTree()
    reference.append_many([record.to_bytes() for record in records])
    assert r.writer.tree.root() == reference.root()


def test_checkpoints_chain_with_consistency_proofs_and_verify() -> None:
    r = rig(every_events=5)
    key = make_key(ORIGIN)
    r.writer.append(leaves(23))
    stored = r.log.stored
    assert [s.size for s in stored] == [5, 10, 15, 20]
    previous_size, previous_root = 0, EMPTY_ROOT
    for checkpoint in stored:
        verified = verify_checkpoint(checkpoint.note, key.public)
        assert (verified.size, verified.root_hash) == (checkpoint.size, checkpoint.root_hash)
        assert checkpoint.previous_size == previous_size
        verify_log_growth(previous_size, previous_root, verified, checkpoint.consistency_proof)
        previous_size, previous_root = checkpoint.size, checkpoint.root_hash
    # Inclusion of every leaf against the last checkpoint's root.
    last = stored[-1]
    records = [record for batch, _ in r.log.batches for record in batch]
    for index in range(last.size):
        verify_inclusion(
            index,
            last.size,
            leaf_hash(records[index].to_bytes()),
            r.writer.tree.inclusion_proof(index, last.size),
            last.root_hash,
        )
    # A forged proof does not verify.
    forged = list(stored[1].consistency_proof)
    forged[0] = bytes(32)
    with pytest.raises(InvalidProof):
        verify_log_growth(
            5, stored[0].root_hash, verify_checkpoint(stored[1].note, key.public), forged
        )


def test_the_interval_checkpoints_a_log_that_grew_less_than_the_count() -> None:
    r = rig(every_events=100, interval_s=5.0)
    assert r.writer.append(leaves(3)) == []
    r.clock.now += 5.0
    made = r.writer.append([])
    assert [s.size for s in made] == [3]
    r.clock.now += 50.0
    assert r.writer.append([]) == [], "no checkpoint when the log did not grow"
    made = r.writer.append(leaves(2, start=3))
    assert [s.size for s in made] == [5]
    assert made[0].previous_size == 3


def test_checkpoint_now_only_when_the_log_grew() -> None:
    r = rig()
    assert r.writer.checkpoint() is None
    r.writer.append(leaves(2))
    assert r.writer.checkpoint() is not None
    assert r.writer.checkpoint() is None


def test_a_log_that_lost_its_checkpointed_root_is_refused() -> None:
    r = rig(every_events=4)
    r.writer.append(leaves(4))
    assert len(r.log.stored) == 1
    # A different log under the same checkpoints: the writer must not extend it.
    other = MemoryLog()
    other.stored = r.log.stored
    tree = MerkleTree(other.store)
    writer = LogWriter(other, tree, make_key(ORIGIN), Cadence(4, 5.0, 4, FakeClock()))
    with pytest.raises(AnchoringError, match="no longer has the root"):
        writer.append(leaves(8, start=100))


# Leaves of records -------------------------------------------------------------------


@dataclass
class FakeRecord:
    topic: str
    partition: int
    offset: int
    value: bytes | None


def test_a_record_becomes_a_leaf_with_its_event_id(tmp_path: Path) -> None:
    registry = FileSchemaRegistry(tmp_path / "registry")
    codec = EnvelopeCodec(registry)
    envelope, wire = codec.encode(events.create_command(), FileSigner.generate(), "x.commands")
    leaf = leaf_of(FakeRecord("x.commands", 2, 17, wire), codec)
    assert leaf == LeafRecord.of("x.commands", 2, 17, envelope.event_id, wire)


def test_a_record_with_a_bad_signature_keeps_its_event_id(tmp_path: Path) -> None:
    codec = EnvelopeCodec(FileSchemaRegistry(tmp_path / "registry"))
    envelope, wire = codec.encode(events.create_command(), FileSigner.generate(), "x.commands")
    forged = wire[:-1] + bytes([wire[-1] ^ 1])
    assert leaf_of(FakeRecord("x.commands", 0, 1, forged), codec).event_id == envelope.event_id


@pytest.mark.parametrize(
    "value",
    [b"", None, b"not an envelope", b"\x00\x00\x00\x7f\xff" + b"\x02" * 40],
    ids=["empty", "tombstone", "text", "unknown-schema"],
)
def test_a_record_that_does_not_decode_still_becomes_a_leaf(
    tmp_path: Path, value: bytes | None
) -> None:
    codec = EnvelopeCodec(FileSchemaRegistry(tmp_path / "registry"))
    leaf = leaf_of(FakeRecord("x.rejected", 3, 9, value), codec)
    assert leaf == LeafRecord.of("x.rejected", 3, 9, UNDECODABLE_EVENT_ID, value or b"")


def test_the_ledger_topics_are_all_but_keys_and_checkpoints() -> None:
    settings = Settings(topic_prefix="q.")
    topics = ledger_topics(settings)
    assert sorted(topics) == sorted(
        topic_name(settings, role)
        for role in TopicRole
        if role not in (TopicRole.KEYS, TopicRole.CHECKPOINTS)
    )


def test_positions_past_a_batch_are_one_after_each_partition_s_last() -> None:
    records = [
        LeafRecord.of("a", 0, 5, "e1", b""),
        LeafRecord.of("a", 1, 2, "e2", b""),
        LeafRecord.of("a", 0, 9, "e3", b""),
        LeafRecord.of("b", 0, 0, "e4", b""),
    ]
    assert sorted(positions_past(records), key=lambda p: (p.topic, p.partition)) == [
        Position("a", 0, 10),
        Position("a", 1, 3),
        Position("b", 0, 1),
    ]


@pytest.mark.parametrize("name", ["public", "pg_x", "Bad", "1x", "", "x" * 64, "a-b"])
def test_schema_names_are_checked(name: str) -> None:
    with pytest.raises(ConfigurationError):
        check_schema_name(name)


# The checkpoint record ---------------------------------------------------------------


def stored_checkpoint() -> StoredCheckpoint:
    r = rig(every_events=3)
    r.writer.append(leaves(6))
    return r.log.stored[-1]


def test_the_checkpoint_record_round_trips_in_confluent_wire_format(tmp_path: Path) -> None:
    registry = FileSchemaRegistry(tmp_path / "registry")
    encoder = CheckpointEncoder(registry, "x.checkpoints")
    stored = stored_checkpoint()
    wire = encoder.encode(stored)
    assert wire[0] == 0
    record = encoder.decode(wire)
    assert record["tree_size"] == stored.size == 6
    assert record["previous_size"] == 3
    assert record["root_hash"] == stored.root_hash
    assert record["note"] == stored.note
    assert record["consistency_proof"] == list(stored.consistency_proof)
    assert (record["checkpoint_cid"], record["bundle_cid"], record["timestamp_proof"]) == (
        None,
        None,
        None,
    )
    # Publishing again gives the very same record.
    assert encoder.encode(stored) == wire
    assert str(record["event_id"]) == checkpoint_event_id(stored.origin, 6)
    headers = dict(encoder.headers(stored))
    assert headers["ce_id"] == str(record["event_id"]).encode()
    assert headers["ce_subject"] == b"6"


def test_event_ids_differ_by_size_and_origin() -> None:
    ids = {checkpoint_event_id(origin, size) for origin in ("a", "b") for size in (1, 2)}
    assert len(ids) == 4


def test_the_checkpoint_schema_leaves_room_for_cids_and_timestamps() -> None:
    parsed = json.loads(checkpoint_schema_text())
    optional = {f["name"]: f for f in parsed["fields"] if "default" in f}
    assert set(optional) == {"checkpoint_cid", "bundle_cid", "timestamp_proof"}
    assert all(f["type"][0] == "null" and f["default"] is None for f in optional.values())


def test_every_checkpoint_schema_version_reads_the_earlier_ones() -> None:
    from ledger import compat

    versions = []
    for number in schemas.version_numbers():
        path = schemas.SCHEMAS_DIR / f"v{number}" / "io.payledger.Checkpoint.avsc"
        if path.exists():
            versions.append(fastavro.schema.load_schema(str(path), _write_hint=False))
    assert versions
    for index, old in enumerate(versions):
        for new in versions[index:]:
            assert compat.problems(fastavro.parse_schema(new), fastavro.parse_schema(old)) == []
    # And a record written with the newest reads back.
    parsed = fastavro.parse_schema(versions[-1])
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, parsed, checkpoint_record(stored_checkpoint()))
    buffer.seek(0)
    assert fastavro.schemaless_reader(buffer, parsed)["tree_size"] == 6

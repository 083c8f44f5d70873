"""The checkpoint hooks with fakes: IPFS publication and timestamps stored once, refused
when they disagree with what is recomputed, pending proofs upgraded on their schedule;
the anchored record of the checkpoints topic; the hooks the settings ask for."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest
from opentimestamps.core.notary import BitcoinBlockHeaderAttestation, PendingAttestation

from anchoring.bitcoin import DirectStamp
from anchoring.hooks import (
    IPFS_HOOK,
    TIMESTAMP_HOOK,
    IpfsHook,
    TimestampHook,
    build_hooks,
    close_hooks,
    note_digest,
)
from anchoring.ipfs import CidMismatch, Publication
from anchoring.pgstore import Anchors, IpfsPublication, StoredCheckpoint, StoredTimestamp
from anchoring.publication import (
    CheckpointEncoder,
    anchored_event_id,
    checkpoint_event_id,
    checkpoint_record,
)
from anchoring.timestamps import (
    CalendarClient,
    InvalidTimestamp,
    TimestampError,
    parse_proof,
    proof_from_block,
    verify_timestamp,
)
from ledger.config import Settings
from ledger.registry import FileSchemaRegistry
from ledger.tlog.bundle import LeafBundle, root_of_bundles
from ledger.tlog.cid import file_dag
from ledger.tlog.errors import AnchoringError
from ledger.tlog.leaf import LeafRecord
from ledger.tlog.tree import MerkleTree
from tests.unit.test_anchoring_timestamps import FakeCalendar, Headers, stamped_block

ORIGIN = "payledger.test/ledger"


def leaves(start: int, end: int) -> list[LeafRecord]:
    return [
        LeafRecord.of("t.commands", 0, index, f"event-{index}", f"value {index}".encode())
        for index in range(start, end)
    ]


def checkpoint(size: int, previous: int = 0, note: str | None = None) -> StoredCheckpoint:
    tree = MerkleTree()
    tree.append_many([leaf.to_bytes() for leaf in leaves(0, size)])
    return StoredCheckpoint(
        size,
        tree.root(),
        ORIGIN,
        note or f"{ORIGIN}\n{size}\nroot\n\n— sig {size}\n",
        previous,
        (),
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 1, 1, tzinfo=UTC),
    )


class View:
    def __init__(self, total: int) -> None:
        self.records = leaves(0, total)

    async def leaf_records(self, start: int, end: int) -> list[LeafRecord]:
        return self.records[start:end]


class MemoryAnchors:
    def __init__(self) -> None:
        self.publications: dict[int, IpfsPublication] = {}
        self.timestamps: dict[int, list[StoredTimestamp]] = {}

    async def publication(self, size: int) -> IpfsPublication | None:
        return self.publications.get(size)

    async def add_publication(
        self, size: int, checkpoint_cid: str, bundle_cid: str
    ) -> IpfsPublication:
        return self.publications.setdefault(size, IpfsPublication(size, checkpoint_cid, bundle_cid))

    async def timestamp(self, size: int) -> StoredTimestamp | None:
        found = self.timestamps.get(size)
        return found[-1] if found else None

    async def add_timestamp(
        self, size: int, digest: bytes, ots: bytes, complete: bool
    ) -> StoredTimestamp:
        revisions = self.timestamps.setdefault(size, [])
        stamp = StoredTimestamp(size, len(revisions) + 1, digest, ots, complete)
        revisions.append(stamp)
        return stamp

    async def pending_timestamps(self) -> list[StoredTimestamp]:
        return [r[-1] for _, r in sorted(self.timestamps.items()) if not r[-1].complete]


class FakeKubo:
    """Publishes into a dict; ``lie`` makes it report another CID."""

    def __init__(self, *, lie: bool = False) -> None:
        self.content: dict[str, bytes] = {}
        self.calls = 0
        self.lie = lie
        self.closed = False

    async def publish(self, content: bytes) -> Publication:
        self.calls += 1
        dag = file_dag(content + b"!" if self.lie else content)
        self.content[str(dag.root)] = content
        return Publication(dag.root, dag.content_bytes, len(dag.blocks))

    async def aclose(self) -> None:
        self.closed = True


# IPFS ---------------------------------------------------------------------------------


async def test_ipfs_hook_publishes_note_and_bundle_and_records_their_cids() -> None:
    kubo, anchors, view = FakeKubo(), MemoryAnchors(), View(12)
    hook = IpfsHook(kubo, anchors)
    first, second = checkpoint(5), checkpoint(12, previous=5)
    await hook.checkpoint_stored(first, view)
    await hook.checkpoint_stored(second, view)

    bundles = []
    for stored in (first, second):
        recorded = anchors.publications[stored.size]
        assert kubo.content[recorded.checkpoint_cid] == stored.note.encode()
        assert recorded.checkpoint_cid == str(file_dag(stored.note.encode()).root)
        bundles.append(LeafBundle.from_bytes(kubo.content[recorded.bundle_cid]))
        assert root_of_bundles(bundles) == stored.root_hash
    assert [b.first_index for b in bundles] == [0, 5]
    assert kubo.calls == 4

    # Offered again (a retry after the hook's completion was lost): nothing published twice.
    await hook.checkpoint_stored(second, view)
    assert kubo.calls == 4
    await hook.aclose()
    assert kubo.closed


async def test_ipfs_hook_refuses_a_cid_the_node_reports_differently() -> None:
    anchors = MemoryAnchors()
    with pytest.raises(CidMismatch, match="published as"):
        await IpfsHook(FakeKubo(lie=True), anchors).checkpoint_stored(checkpoint(3), View(3))
    assert anchors.publications == {}


async def test_ipfs_hook_refuses_a_recorded_cid_that_is_not_recomputed() -> None:
    anchors = MemoryAnchors()
    stored = checkpoint(3)
    wrong = str(file_dag(b"something else").root)
    await anchors.add_publication(3, wrong, wrong)
    kubo = FakeKubo()
    with pytest.raises(CidMismatch, match="recorded"):
        await IpfsHook(kubo, anchors).checkpoint_stored(stored, View(3))
    assert kubo.calls == 0


async def test_ipfs_hook_refuses_a_bundle_missing_leaves() -> None:
    kubo = FakeKubo()
    with pytest.raises(AnchoringError, match="2 leaves read, 4 expected"):
        await IpfsHook(kubo, MemoryAnchors()).checkpoint_stored(checkpoint(4), View(2))
    assert kubo.calls == 0


# Timestamps ---------------------------------------------------------------------------


class FakeStamper:
    """Stamps in a block made here; remembers the blocks, fails when told."""

    def __init__(self) -> None:
        self.blocks: dict[int, object] = {}
        self.failures = 0

    def stamp(self, digest: bytes) -> DirectStamp:
        if self.failures:
            self.failures -= 1
            raise TimestampError("the node did not answer")
        height = 200 + len(self.blocks)
        _, block = stamped_block(digest, height)
        self.blocks[height] = block
        ots = proof_from_block(digest, bytes(block.serialize()), height)
        return DirectStamp(ots, "00" * 32, "00" * 32, height)


async def test_direct_timestamp_is_complete_stored_once_and_verifies() -> None:
    stamper, anchors = FakeStamper(), MemoryAnchors()
    hook = TimestampHook(anchors, direct=stamper)
    stored = checkpoint(4)
    stamper.failures = 1
    with pytest.raises(TimestampError):
        await hook.checkpoint_stored(stored, View(4))
    assert anchors.timestamps == {}
    await hook.checkpoint_stored(stored, View(4))
    await hook.checkpoint_stored(stored, View(4))  # done already: no second stamp
    (stamp,) = anchors.timestamps[4]
    assert stamp.complete and stamp.digest == hashlib.sha256(stored.note.encode()).digest()
    assert len(stamper.blocks) == 1
    verified = verify_timestamp(stamp.ots, note_digest(stored), Headers(stamper.blocks))  # type: ignore[arg-type]
    assert verified.height == 200
    assert await hook.tick() is False  # no calendars: nothing scheduled


async def test_timestamp_of_another_note_is_refused() -> None:
    anchors = MemoryAnchors()
    await anchors.add_timestamp(4, b"\x01" * 32, b"ots", True)
    with pytest.raises(InvalidTimestamp, match="another note"):
        await TimestampHook(anchors, direct=FakeStamper()).checkpoint_stored(checkpoint(4), View(4))


async def test_calendar_proofs_are_pending_then_upgraded_on_schedule() -> None:
    now = [1_000.0]
    anchors = MemoryAnchors()
    with FakeCalendar() as calendar:
        hook = TimestampHook(
            anchors,
            calendars=CalendarClient([calendar.url], quorum=1, timeout_s=5),
            upgrade_interval_s=60,
            clock=lambda: now[0],
        )
        stored = checkpoint(6)
        await hook.checkpoint_stored(stored, View(6))
        (pending,) = anchors.timestamps[6]
        assert not pending.complete
        assert await anchors.pending_timestamps() == [pending]

        calendar.confirm()
        assert await hook.tick() is False  # not due yet
        now[0] += 60
        assert await hook.tick() is True
        first, upgraded = anchors.timestamps[6]
        assert (first, upgraded.revision, upgraded.complete) == (pending, 2, True)
        assert calendar.block is not None
        verify_timestamp(
            upgraded.ots, note_digest(stored), Headers({calendar.HEIGHT: calendar.block})
        )
        now[0] += 60
        assert await hook.tick() is False  # complete: off the schedule
        assert len(anchors.timestamps[6]) == 2


async def test_pending_proofs_stored_earlier_are_upgraded_after_a_restart() -> None:
    now = [0.0]
    anchors = MemoryAnchors()
    with FakeCalendar() as calendar:
        client = CalendarClient([calendar.url], quorum=1, timeout_s=5)
        stored = checkpoint(2)
        await TimestampHook(anchors, calendars=client).checkpoint_stored(stored, View(2))
        calendar.confirm()
        # A new process: the schedule starts from what Postgres holds.
        hook = TimestampHook(anchors, calendars=client, upgrade_interval_s=5, clock=lambda: now[0])
        assert await hook.tick() is False
        now[0] += 5
        assert await hook.tick() is True
        assert anchors.timestamps[2][-1].complete


async def test_direct_and_calendar_proofs_merge_into_one() -> None:
    stamper, anchors = FakeStamper(), MemoryAnchors()
    with FakeCalendar() as calendar:
        hook = TimestampHook(
            anchors,
            direct=stamper,
            calendars=CalendarClient([calendar.url], quorum=1, timeout_s=5),
        )
        stored = checkpoint(3)
        await hook.checkpoint_stored(stored, View(3))
    (stamp,) = anchors.timestamps[3]
    kinds = {
        type(attestation)
        for _, attestation in parse_proof(stamp.ots, note_digest(stored)).all_attestations()
    }
    assert kinds == {PendingAttestation, BitcoinBlockHeaderAttestation}
    assert stamp.complete


def test_a_timestamp_hook_needs_a_way_to_stamp() -> None:
    with pytest.raises(ValueError, match="direct stamping or calendars"):
        TimestampHook(MemoryAnchors())


# The anchored record -----------------------------------------------------------------


def test_anchored_record_fills_the_optional_fields_under_its_own_event_id(tmp_path) -> None:
    stored = checkpoint(9)
    anchors = Anchors("bafkreicheckpoint", "bafybeibundle", b"ots bytes", 1)
    first, anchored = checkpoint_record(stored), checkpoint_record(stored, anchors)
    assert first["event_id"] == checkpoint_event_id(ORIGIN, 9)
    assert anchored["event_id"] == anchored_event_id(ORIGIN, 9) != first["event_id"]
    assert anchored_event_id(ORIGIN, 9) == anchored_event_id(ORIGIN, 9)
    assert (first["checkpoint_cid"], first["bundle_cid"], first["timestamp_proof"]) == (
        None,
        None,
        None,
    )
    assert {k: v for k, v in anchored.items() if k != "event_id"} == {
        **{k: v for k, v in first.items() if k != "event_id"},
        "checkpoint_cid": "bafkreicheckpoint",
        "bundle_cid": "bafybeibundle",
        "timestamp_proof": b"ots bytes",
    }
    encoder = CheckpointEncoder(FileSchemaRegistry(tmp_path), "t.checkpoints")
    decoded = encoder.decode(encoder.encode(stored, anchors))
    assert decoded["bundle_cid"] == "bafybeibundle"
    assert decoded["timestamp_proof"] == b"ots bytes"
    assert dict(encoder.headers(stored, anchors))["ce_id"] == anchored["event_id"].encode()


# From the settings --------------------------------------------------------------------


async def test_hooks_from_settings() -> None:
    assert build_hooks(Settings()) == []  # the default worker needs neither Kubo nor btcd
    hooks = build_hooks(
        Settings(
            anchoring_ipfs_enabled=True,
            ots_calendar_urls=["https://calendar.example"],
        )
    )
    try:
        assert [hook.name for hook in hooks] == [IPFS_HOOK, TIMESTAMP_HOOK]
    finally:
        await close_hooks(hooks)
    assert Settings().anchoring_ipfs_enabled is False

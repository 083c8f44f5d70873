"""The auditor's checks of the Merkle log and its anchors: checkpoints, bundles, CIDs, timestamps.

Pure: the caller reads the checkpoints topic and the ledger topics from
Kafka and fetches from IPFS; this module only checks what it is given.
One run::

    checker = AnchorChecker(public_key, checkpoints_topic=..., headers=node_or_None)
    for record in the checkpoints topic, in topic order:  checker.add(record)
    cids = checker.content_wanted()                       # fetch each from IPFS
    report = checker.finish(content, unavailable, records)

``records`` is a ``RecordIndex`` of every ledger record read from Kafka
(position, event id or None when it did not decode, SHA-256 of the value).
Each check, by its name in the report:

``checkpoint``       each record's note parses and both signatures (Ed25519 and
                     ML-DSA-87) verify with the anchoring public key; the record's
                     origin, tree size and root hash are the note's; every record
                     of one size carries the same note ("fork" when two signed
                     notes disagree on the tree, "note-differs" when only the
                     signature bytes differ). A failing record is checked no further.
``consistency``      in size order, each record's ``previous_size`` is the size
                     of the checkpoint before it (0 for the first) and its
                     consistency proof leads from that root to its own.
``cid``              the bytes served for each announced CID give that CID again
                     (``ledger.tlog.cid.file_dag``), and the note's bytes are the
                     note; a CID the caller could not fetch is "unavailable".
``bundle``           each anchored checkpoint's bundle parses, is of this log and
                     holds exactly the leaves from the previous checkpoint's size
                     to its own; a checkpoint never anchored while a later one is,
                     is "not-anchored". Checkpoints after the last anchored one
                     are pending: counted, not reported.
``checkpoint-root``  the RFC 9162 root of every leaf so far, bundle after bundle,
                     is the checkpoint's root.
``leaf``             completeness both ways: each leaf names a record that exists
                     with that event id and value ("no-record", "record-differs",
                     "duplicate"), and each record at or below the highest offset
                     the leaves cover on its partition is a leaf ("not-anchored").
                     Records past that offset are the tail not yet checkpointed.
``timestamp``        each anchored record's OpenTimestamps proof is over SHA-256
                     of its note and complete; with a block header source, every
                     attested block's header confirms it.

A finding about a checkpoint is located at its record on the checkpoints
topic (``where`` = "ipfs <cid>" for what was read from IPFS); a finding about
a leaf is located at the ledger record the leaf names (``where`` = "leaf
<index>"). Once a bundle is missing or unusable, no later root can be
recomputed: those roots are counted in the facts, not reported, and so are
records without a leaf, since the missing leaves could be theirs.

Facts: ``checkpoint_records``, ``checkpoints``, ``tree_size``,
``consistency_verified_to_size``, ``leaves_checked``,
``checkpoints_pending_anchors``, ``checkpoint_roots_not_checked``,
``records_after_latest_checkpoint``, ``records_without_leaf_not_checked``,
``timestamps_not_checked_against_a_node``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from ledger.audit.report import FINDINGS_MAX_DEFAULT, Check, Finding, Report
from ledger.errors import LedgerError
from ledger.tlog.bundle import LeafBundle
from ledger.tlog.checkpoint import Checkpoint, verify_checkpoint
from ledger.tlog.cid import Cid, InvalidCid, file_dag
from ledger.tlog.errors import InvalidNote, InvalidProof
from ledger.tlog.keys import AnchoringPublicKey
from ledger.tlog.leaf import DIGEST_BYTES, UNDECODABLE_EVENT_ID, LeafRecord
from ledger.tlog.merkle import EMPTY_ROOT, verify_consistency
from ledger.tlog.ots import (
    BlockHeaderSource,
    InvalidTimestamp,
    is_complete,
    proof_digest,
    verify_timestamp,
)
from ledger.tlog.tree import MerkleTree


@dataclass(frozen=True, slots=True)
class CheckpointRecord:
    """One record of the checkpoints topic as read (decoded by the caller)."""

    partition: int
    offset: int
    event_id: str
    origin: str
    tree_size: int
    root_hash: bytes
    note: str
    previous_size: int
    consistency_proof: tuple[bytes, ...]
    checkpoint_cid: str | None = None
    bundle_cid: str | None = None
    timestamp_proof: bytes | None = None

    @property
    def anchored(self) -> bool:
        """The second record of a size: it announces the CIDs or the timestamp."""
        return (
            self.checkpoint_cid is not None
            or self.bundle_cid is not None
            or self.timestamp_proof is not None
        )


class RecordIndex:
    """Every ledger record the auditor read: position -> (event id or None, value digest).

    Compact, because it holds the whole log: per partition, one dict from
    offset to row, the event ids in a list and the digests in one byte
    string, 32 bytes a row. It pickles as a few large objects, so worker
    processes that each read some partitions send theirs back cheaply.
    """

    def __init__(self) -> None:
        self._partitions: dict[tuple[str, int], _Partition] = {}

    def __len__(self) -> int:
        return sum(len(part.event_ids) for part in self._partitions.values())

    def add(
        self, topic: str, partition: int, offset: int, event_id: str | None, value_sha256: bytes
    ) -> None:
        """Index one record; its value enters through its SHA-256 digest."""
        if len(value_sha256) != DIGEST_BYTES:
            raise ValueError("value_sha256 is a 32-byte SHA-256 digest")
        part = self._partitions.get((topic, partition))
        if part is None:
            part = self._partitions[(topic, partition)] = _Partition()
        part.add(offset, event_id, value_sha256)

    def get(self, topic: str, partition: int, offset: int) -> tuple[str | None, bytes] | None:
        part = self._partitions.get((topic, partition))
        return None if part is None else part.get(offset)

    def merge(self, other: RecordIndex) -> None:
        """Add every record of ``other`` (read from other partitions, or the same again)."""
        for (topic, partition), part in other._partitions.items():
            if (topic, partition) not in self._partitions:
                # A partition read by one worker only (the usual case): copied whole.
                self._partitions[(topic, partition)] = _Partition(
                    dict(part.rows), list(part.event_ids), bytearray(part.digests)
                )
                continue
            for offset, event_id, digest in part.entries():
                self.add(topic, partition, offset, event_id, digest)

    def partitions(self) -> list[tuple[str, int]]:
        return sorted(self._partitions)

    def entries(self, topic: str, partition: int) -> Iterator[tuple[int, str | None, bytes]]:
        """(offset, event id, value digest) of each record of one partition, by offset."""
        part = self._partitions.get((topic, partition))
        if part is not None:
            yield from sorted(part.entries())


@dataclass(slots=True)
class _Partition:
    rows: dict[int, int] = field(default_factory=dict)  # offset -> row
    event_ids: list[str | None] = field(default_factory=list)
    digests: bytearray = field(default_factory=bytearray)

    def add(self, offset: int, event_id: str | None, digest: bytes) -> None:
        row = self.rows.get(offset)
        if row is not None:
            # Kafka holds one record at an offset: the same one read twice is
            # harmless, two different ones are a mistake of the caller.
            if self.get(offset) != (event_id, digest):
                raise ValueError(f"offset {offset} indexed twice with different records")
            return
        self.rows[offset] = len(self.event_ids)
        self.event_ids.append(event_id)
        self.digests += digest

    def get(self, offset: int) -> tuple[str | None, bytes] | None:
        row = self.rows.get(offset)
        if row is None:
            return None
        start = row * DIGEST_BYTES
        return self.event_ids[row], bytes(self.digests[start : start + DIGEST_BYTES])

    def entries(self) -> Iterator[tuple[int, str | None, bytes]]:
        for offset, row in self.rows.items():
            start = row * DIGEST_BYTES
            yield offset, self.event_ids[row], bytes(self.digests[start : start + DIGEST_BYTES])


@dataclass(slots=True)
class _Size:
    """The records of one tree size that carry its first validly signed note."""

    checkpoint: Checkpoint
    note: str
    records: list[CheckpointRecord]
    anchored: list[CheckpointRecord] = field(default_factory=list)

    @property
    def first(self) -> CheckpointRecord:
        return self.records[0]


class AnchorChecker:
    """Collects the checkpoints topic with ``add``; ``finish`` checks it all and reports."""

    def __init__(
        self,
        public_key: AnchoringPublicKey,
        *,
        checkpoints_topic: str,
        headers: BlockHeaderSource | None = None,
        findings_max: int = FINDINGS_MAX_DEFAULT,
    ) -> None:
        self._key = public_key
        self._topic = checkpoints_topic
        self._headers = headers
        self._report = Report(findings_max=findings_max)
        self._sizes: dict[int, _Size] = {}
        # Each distinct note is verified once: the plain and the anchored
        # record of a size carry the same one.
        self._notes: dict[str, Checkpoint | InvalidNote] = {}
        self._records = 0
        self._finished = False
        # What check_anchors leaves for check_leaves.
        self._bundles: list[LeafBundle] | None = None
        self._covered_whole = False
        self._facts: dict[str, int] = {}

    # Reading the checkpoints topic ----------------------------------------------

    def add(self, record: CheckpointRecord) -> None:
        """Take one checkpoints-topic record, in topic order; its note is checked now."""
        if self._finished:
            raise RuntimeError("the checker has finished; start a new one")
        self._records += 1
        checkpoint = self._verified(record)
        if checkpoint is None:
            return
        group = self._sizes.get(checkpoint.size)
        if group is None:
            group = self._sizes[checkpoint.size] = _Size(checkpoint, record.note, [])
        elif record.note != group.note:
            first = group.first
            same_tree = checkpoint.text() == group.checkpoint.text()
            self._find(
                record,
                Check.CHECKPOINT,
                "note-differs" if same_tree else "fork",
                f"size {checkpoint.size} has another signed note at offset {first.offset}"
                + (" over the same tree" if same_tree else ", with another root"),
            )
            return
        self._report.passed(Check.CHECKPOINT)
        group.records.append(record)
        if record.anchored:
            group.anchored.append(record)

    def _verified(self, record: CheckpointRecord) -> Checkpoint | None:
        known = self._notes.get(record.note)
        if known is None:
            try:
                known = verify_checkpoint(record.note, self._key)
            except InvalidNote as error:
                known = error
            self._notes[record.note] = known
        if isinstance(known, InvalidNote):
            self._find(record, Check.CHECKPOINT, "invalid-note", str(known))
            return None
        fields = (record.origin, record.tree_size, record.root_hash)
        if fields != (known.origin, known.size, known.root_hash):
            self._find(
                record,
                Check.CHECKPOINT,
                "record-disagrees",
                f"the record says {record.origin!r} size {record.tree_size} root "
                f"{record.root_hash.hex()}; its note says {known.origin!r} size {known.size} "
                f"root {known.root_hash.hex()}",
            )
            return None
        return known

    def content_wanted(self) -> list[str]:
        """The CIDs whose bytes ``finish`` needs: each anchored checkpoint's note and bundle."""
        wanted: dict[str, None] = {}
        for size in sorted(self._sizes):
            for record in self._sizes[size].anchored:
                for cid in (record.checkpoint_cid, record.bundle_cid):
                    if cid is not None and _parses(cid):
                        wanted[cid] = None
        return list(wanted)

    # Checking ---------------------------------------------------------------------

    def finish(
        self,
        content: Mapping[str, bytes],
        unavailable: Mapping[str, str],
        records: RecordIndex,
    ) -> Report:
        """Check the chain, the anchors and the leaves against ``records``; the report.

        ``content`` holds the bytes served for each CID of ``content_wanted``
        (unchecked: this checks them); ``unavailable`` says why a CID could
        not be fetched. The same as ``check_anchors`` then ``check_leaves``.
        """
        self.check_anchors(content, unavailable)
        return self.check_leaves(records)

    def check_anchors(self, content: Mapping[str, bytes], unavailable: Mapping[str, str]) -> None:
        """Everything but the records: signatures, chain, CIDs, bundles, roots, timestamps.

        Needs no Kafka record, so it can run while the records are still being read.
        """
        if self._finished or self._bundles is not None:
            raise RuntimeError("the checker has checked its anchors; start a new one")
        sizes = sorted(self._sizes)
        last_anchored = max((size for size in sizes if self._sizes[size].anchored), default=-1)
        tree = MerkleTree()
        bundles: list[LeafBundle] = []
        previous_size, previous_root = 0, EMPTY_ROOT
        chain_whole = True
        facts = self._facts
        facts.update(
            {
                "checkpoint_records": self._records,
                "checkpoints": len(sizes),
                "tree_size": sizes[-1] if sizes else 0,
                "consistency_verified_to_size": 0,
                "leaves_checked": 0,
                "checkpoints_pending_anchors": 0,
                "checkpoint_roots_not_checked": 0,
                "records_after_latest_checkpoint": 0,
                "records_without_leaf_not_checked": 0,
            }
        )
        if self._headers is None:
            facts["timestamps_not_checked_against_a_node"] = 0
        no_bundle = 0
        for size in sizes:
            group = self._sizes[size]
            linked = self._check_consistency(group, previous_size, previous_root)
            chain_whole = chain_whole and linked
            if chain_whole:
                facts["consistency_verified_to_size"] = size
            bundle: LeafBundle | None = None
            if group.anchored:
                self._check_timestamps(group, facts)
                self._check_note_cids(group, content, unavailable)
                if group.anchored[0].bundle_cid is None:
                    no_bundle += 1
                else:
                    bundle = self._bundle(group, previous_size, content, unavailable)
            elif size < last_anchored:
                self._find(
                    group.first,
                    Check.BUNDLE,
                    "not-anchored",
                    f"checkpoint {size} has no anchored record, checkpoint {last_anchored} has",
                )
            else:
                facts["checkpoints_pending_anchors"] += 1
            if bundle is not None:
                bundles.append(bundle)
                facts["leaves_checked"] += len(bundle.leaves)
            if bundle is not None and tree.size == previous_size:
                tree.append_many(bundle.leaf_bytes())
                self._check_root(group, tree.root())
            elif size <= last_anchored:
                facts["checkpoint_roots_not_checked"] += 1
            previous_size, previous_root = size, group.checkpoint.root_hash
        if no_bundle:
            self._report.error(
                f"{no_bundle} anchored checkpoints announce no leaf bundle: "
                "their leaves and roots could not be checked"
            )
        self._bundles = bundles
        self._covered_whole = tree.size == max(last_anchored, 0)

    def check_leaves(self, records: RecordIndex) -> Report:
        """The leaves of the bundles against the records read from Kafka, both ways; the report."""
        if self._bundles is None:
            raise RuntimeError("check_anchors first")
        if self._finished:
            raise RuntimeError("the checker has finished; start a new one")
        self._finished = True
        seen: dict[tuple[str, int], dict[int, int]] = {}  # leaf positions -> leaf index
        for bundle in self._bundles:
            self._check_leaves(bundle, records, seen)
        self._check_records(records, seen, self._covered_whole, self._facts)
        self._report.facts.update(self._facts)
        return self._report

    def _check_consistency(self, group: _Size, previous_size: int, previous_root: bytes) -> bool:
        """Check each record's link to the previous checkpoint; True if every one holds."""
        size = group.checkpoint.size
        linked = True
        for record in group.records:
            if record.previous_size != previous_size:
                linked = False
                self._find(
                    record,
                    Check.CONSISTENCY,
                    "previous-size",
                    f"checkpoint {size} follows size {record.previous_size}; "
                    f"the checkpoint before it is of size {previous_size}",
                )
                continue
            try:
                verify_consistency(
                    previous_size,
                    size,
                    previous_root,
                    group.checkpoint.root_hash,
                    record.consistency_proof,
                )
            except InvalidProof as error:
                linked = False
                self._find(
                    record,
                    Check.CONSISTENCY,
                    "invalid-proof",
                    f"from size {previous_size} to {size}: {error}",
                )
                continue
            self._report.passed(Check.CONSISTENCY)
        return linked

    def _check_note_cids(
        self, group: _Size, content: Mapping[str, bytes], unavailable: Mapping[str, str]
    ) -> None:
        checked: set[str] = set()
        for record in group.anchored:
            cid = record.checkpoint_cid
            if cid is None or cid in checked:
                continue
            checked.add(cid)
            data = self._served(record, cid, content, unavailable)
            if data is None:
                continue
            if data != record.note.encode("utf-8"):
                self._find(
                    record,
                    Check.CID,
                    "note-differs",
                    "the checkpoint published on IPFS is not the record's note",
                    where=f"ipfs {cid}",
                )
                continue
            self._report.passed(Check.CID)

    def _bundle(
        self,
        group: _Size,
        previous_size: int,
        content: Mapping[str, bytes],
        unavailable: Mapping[str, str],
    ) -> LeafBundle | None:
        """The checkpoint's bundle once its CID, form and range check; None otherwise."""
        record = group.anchored[0]
        cid = record.bundle_cid
        if cid is None:
            raise AssertionError("only an anchored record with a bundle CID has a bundle")
        for other in group.anchored[1:]:
            if (other.checkpoint_cid, other.bundle_cid) != (record.checkpoint_cid, cid):
                self._find(
                    other,
                    Check.BUNDLE,
                    "conflicting-anchors",
                    f"offset {record.offset} announces other CIDs for checkpoint "
                    f"{group.checkpoint.size}",
                )
        where = f"ipfs {cid}"
        data = self._served(record, cid, content, unavailable)
        if data is None:
            return None
        self._report.passed(Check.CID)
        try:
            bundle = LeafBundle.from_bytes(data)
        except InvalidProof as error:
            self._find(record, Check.BUNDLE, "malformed", str(error), where=where)
            return None
        if bundle.origin != self._key.name:
            self._find(
                record,
                Check.BUNDLE,
                "origin",
                f"a bundle of {bundle.origin!r}, not of {self._key.name!r}",
                where=where,
            )
            return None
        size = group.checkpoint.size
        if (bundle.first_index, bundle.end_index) != (previous_size, size):
            self._find(
                record,
                Check.BUNDLE,
                "range",
                f"leaves {bundle.first_index} to {bundle.end_index}; checkpoint {size} "
                f"added leaves {previous_size} to {size}",
                where=where,
            )
            return None
        self._report.passed(Check.BUNDLE)
        return bundle

    def _served(
        self,
        record: CheckpointRecord,
        cid: str,
        content: Mapping[str, bytes],
        unavailable: Mapping[str, str],
    ) -> bytes | None:
        """The bytes served for ``cid`` once they give that CID again; None otherwise."""
        where = f"ipfs {cid}"
        if not _parses(cid):
            self._find(record, Check.CID, "invalid-cid", f"not a CIDv1 of this layout: {cid!r}")
            return None
        data = content.get(cid)
        if data is None:
            why = unavailable.get(cid, "not fetched")
            self._find(record, Check.CID, "unavailable", why, where=where)
            return None
        computed = str(file_dag(data).root)
        if computed != cid:
            self._find(
                record,
                Check.CID,
                "cid-mismatch",
                f"the {len(data)} bytes served have the CID {computed}",
                where=where,
            )
            return None
        return data

    def _check_timestamps(self, group: _Size, facts: dict[str, int]) -> None:
        checked: set[bytes] = set()
        for record in group.anchored:
            ots = record.timestamp_proof
            if ots is None or ots in checked:
                continue
            checked.add(ots)
            self._check_timestamp(record, ots, facts)

    def _check_timestamp(self, record: CheckpointRecord, ots: bytes, facts: dict[str, int]) -> None:
        # What is stamped: SHA-256 of the signed note (``anchoring.hooks.note_digest``).
        digest = hashlib.sha256(record.note.encode("utf-8")).digest()
        try:
            stamped = proof_digest(ots)
        except InvalidTimestamp as error:
            self._find(record, Check.TIMESTAMP, "malformed", str(error))
            return
        if stamped != digest:
            self._find(
                record,
                Check.TIMESTAMP,
                "other-digest",
                f"the proof stamps {stamped.hex()}, the note's digest is {digest.hex()}",
            )
            return
        if not is_complete(ots, digest):
            self._find(
                record, Check.TIMESTAMP, "incomplete", "the proof reaches no Bitcoin block yet"
            )
            return
        if self._headers is None:
            facts["timestamps_not_checked_against_a_node"] += 1
            self._report.passed(Check.TIMESTAMP)
            return
        try:
            verify_timestamp(ots, digest, self._headers)
        except InvalidTimestamp as error:
            self._find(record, Check.TIMESTAMP, "not-in-chain", str(error))
            return
        except (LedgerError, OSError) as error:
            # The node failed, not the proof: the check could not run.
            self._report.error(f"timestamp of checkpoint {record.tree_size}: {error}")
            return
        self._report.passed(Check.TIMESTAMP)

    def _check_root(self, group: _Size, computed: bytes) -> None:
        expected = group.checkpoint.root_hash
        if computed != expected:
            self._find(
                group.first,
                Check.CHECKPOINT_ROOT,
                "root-mismatch",
                f"the leaves give {computed.hex()}, checkpoint {group.checkpoint.size} "
                f"says {expected.hex()}",
            )
            return
        self._report.passed(Check.CHECKPOINT_ROOT)

    def _check_leaves(
        self, bundle: LeafBundle, records: RecordIndex, seen: dict[tuple[str, int], dict[int, int]]
    ) -> None:
        for index, leaf in enumerate(bundle.leaves, start=bundle.first_index):
            positions = seen.get((leaf.topic, leaf.partition))
            if positions is None:
                positions = seen[(leaf.topic, leaf.partition)] = {}
            earlier = positions.get(leaf.offset)
            if earlier is not None:
                self._find_leaf(index, leaf, "duplicate", f"leaf {earlier} names the same record")
                continue
            positions[leaf.offset] = index
            found = records.get(leaf.topic, leaf.partition, leaf.offset)
            if found is None:
                self._find_leaf(index, leaf, "no-record", "no such record in Kafka")
                continue
            event_id, digest = found
            expected_event_id = UNDECODABLE_EVENT_ID if event_id is None else event_id
            differences = []
            if expected_event_id != leaf.event_id:
                differences.append(f"event id {expected_event_id!r} in Kafka")
            if digest != leaf.value_sha256:
                differences.append("another value in Kafka")
            if differences:
                self._find_leaf(index, leaf, "record-differs", ", ".join(differences))
                continue
            self._report.passed(Check.LEAF)

    def _check_records(
        self,
        records: RecordIndex,
        seen: Mapping[tuple[str, int], Mapping[int, int]],
        covered_whole: bool,
        facts: dict[str, int],
    ) -> None:
        """Every record the leaves should cover is a leaf; the rest is the log's tail."""
        for topic, partition in records.partitions():
            leaves = seen.get((topic, partition), {})
            highest = max(leaves, default=-1)
            for offset, event_id, _ in records.entries(topic, partition):
                if offset > highest:
                    facts["records_after_latest_checkpoint"] += 1
                elif offset not in leaves:
                    if not covered_whole:
                        facts["records_without_leaf_not_checked"] += 1
                        continue
                    self._report.add(
                        Finding(
                            topic,
                            partition,
                            offset,
                            event_id,
                            Check.LEAF,
                            "not-anchored",
                            f"no leaf names this record; the leaves cover offset {highest}",
                        )
                    )

    # Findings ----------------------------------------------------------------------

    def _find(
        self,
        record: CheckpointRecord,
        check: Check,
        reason: str,
        detail: str,
        *,
        where: str | None = None,
    ) -> None:
        self._report.add(
            Finding(
                self._topic,
                record.partition,
                record.offset,
                record.event_id,
                check,
                reason,
                detail,
                where,
            )
        )

    def _find_leaf(self, leaf_index: int, leaf: LeafRecord, reason: str, detail: str) -> None:
        self._report.add(
            Finding(
                leaf.topic,
                leaf.partition,
                leaf.offset,
                leaf.event_id,
                Check.LEAF,
                reason,
                detail,
                f"leaf {leaf_index}",
            )
        )


def _parses(cid: str) -> bool:
    try:
        Cid.parse(cid)
    except InvalidCid:
        return False
    return True

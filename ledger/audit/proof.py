"""One event's end-to-end proof, step by step: the model, the pure checks, the command.

``payledger audit proof <event-id>`` shows anyone who holds the trusted root
(``root.json``) and the anchoring public key (``anchoring.json``) that one
event is in the ledger, signed, in the Merkle log, and anchored. Each step is
verified from what was fetched, trusting neither the ingress nor Kafka::

    event       the leaf the transparency API names for the event; the Kafka record at
                the leaf's position hashes to the leaf's digest, decodes, and is the event
    signature   event -> signing key -> endorsement (Ed25519 + ML-DSA-65 by the root,
                read from the keys topic) -> the trusted root
    inclusion   the leaf hash, recomputed from the leaf, is at its index in the tree of
                the latest checkpoint (RFC 9162 inclusion proof)
    checkpoint  the latest checkpoint's note verifies (Ed25519 + ML-DSA-87, anchoring key)
                and has the size and root the inclusion proof led to
    anchored    the earliest checkpoint covering the leaf that is anchored: its note
                verifies and the latest checkpoint's tree extends it (consistency proof),
                so the event is in the tree that checkpoint anchors
    cid         that checkpoint's note CID, and the CID of the leaf bundle holding the
                event's leaf, recomputed from the bytes fetched from IPFS; the note is the
                checkpoint's, the bundle holds the leaf at its index
    timestamp   the .ots proves SHA-256 of that note in a Bitcoin block (checked against
                a node's headers, or only seen to be complete)

Each step ends in one ``Status``: ``verified``; ``failed`` (something does
not verify: exit 1); ``pending`` (not there yet: the event is not
checkpointed, or no checkpoint covering it is anchored) or ``unchecked`` (a
service could not be read, or an earlier step did not give what this one
needs): both exit 2 when nothing failed; ``skipped`` (not asked for, as with
``--no-ipfs``). The exit codes are the auditor's (``ledger.audit.report``).

JSON form (``EventProof.to_json``); field names are stable, new ones are only
ever added::

    {"format": "payledger-event-proof/1", "event_id": "...", "ok": true,
     "exit_code": 0, "problem": null,
     "steps": [{"name": "event", "ok": true, "status": "verified",
                "detail": "...", ...figures of the step}, ...]}

A step's ``ok`` is true when it verified, false when it failed and null when
it was not decided (pending, unchecked, skipped).

The checks here are pure: ``anchoring.eventproof`` fetches (the ingress over
HTTP, Kafka, Kubo, a Bitcoin node) and calls them, so every failure is
covered by unit tests without services. The click command imports it inside
its body, as ``ledger.cli`` does, so ``ledger`` stays free of Kafka clients.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

import click

from ledger.audit.report import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK
from ledger.codec import Decoded, EnvelopeCodec
from ledger.errors import EncodingError, InvalidEnvelope, LedgerError
from ledger.keys import KeyRing, TrustedRoot
from ledger.tlog.bundle import LeafBundle
from ledger.tlog.checkpoint import Checkpoint, verify_checkpoint
from ledger.tlog.cid import Cid, file_dag
from ledger.tlog.errors import AnchoringError, InvalidNote, InvalidProof
from ledger.tlog.keys import AnchoringPublicKey
from ledger.tlog.leaf import LeafRecord
from ledger.tlog.merkle import leaf_hash, verify_consistency, verify_inclusion
from ledger.tlog.ots import BlockHeaderSource, InvalidTimestamp, is_complete, verify_timestamp
from ledger.verify import Verifier

PROOF_FORMAT: Final = "payledger-event-proof/1"


class CannotCheck(LedgerError):
    """What a step needs could not be fetched or read: the step is unchecked, not failed."""


class Status(StrEnum):
    VERIFIED = "verified"
    FAILED = "failed"
    PENDING = "pending"
    UNCHECKED = "unchecked"
    SKIPPED = "skipped"


class StepName(StrEnum):
    """The steps, in the order they are shown."""

    EVENT = "event"
    SIGNATURE = "signature"
    INCLUSION = "inclusion"
    CHECKPOINT = "checkpoint"
    ANCHORED = "anchored"
    CID = "cid"
    TIMESTAMP = "timestamp"


_LABELS: Final = {
    Status.VERIFIED: "OK",
    Status.FAILED: "FAILED",
    Status.PENDING: "PENDING",
    Status.UNCHECKED: "UNCHECKED",
    Status.SKIPPED: "SKIPPED",
}


@dataclass(frozen=True, slots=True)
class Step:
    """The result of one step: its status, a line for people, and its figures."""

    name: StepName
    status: Status
    detail: str
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool | None:
        if self.status is Status.VERIFIED:
            return True
        return False if self.status is Status.FAILED else None

    def to_json(self) -> dict[str, Any]:
        return {
            **self.data,
            "name": self.name.value,
            "ok": self.ok,
            "status": self.status.value,
            "detail": self.detail,
        }


def verified(name: StepName, detail: str, **data: Any) -> Step:
    return Step(name, Status.VERIFIED, detail, data)


def failed(name: StepName, detail: str, **data: Any) -> Step:
    return Step(name, Status.FAILED, detail, data)


def pending(name: StepName, detail: str, **data: Any) -> Step:
    return Step(name, Status.PENDING, detail, data)


def unchecked(name: StepName, detail: str, **data: Any) -> Step:
    return Step(name, Status.UNCHECKED, detail, data)


def skipped(name: StepName, detail: str, **data: Any) -> Step:
    return Step(name, Status.SKIPPED, detail, data)


def not_reached(steps: Sequence[StepName], reason: str) -> list[Step]:
    """The steps that could not start, each unchecked for the same reason."""
    return [unchecked(name, reason) for name in steps]


@dataclass(slots=True)
class EventProof:
    """Every step of one event's proof; ``problem`` says why it could not start, if so."""

    event_id: str
    steps: list[Step] = field(default_factory=list)
    problem: str | None = None

    @property
    def exit_code(self) -> int:
        statuses = {step.status for step in self.steps}
        if Status.FAILED in statuses:
            return EXIT_FINDINGS
        if self.problem is not None or statuses & {Status.PENDING, Status.UNCHECKED}:
            return EXIT_ERROR
        return EXIT_OK if self.steps else EXIT_ERROR

    @property
    def ok(self) -> bool:
        return self.exit_code == EXIT_OK

    def step(self, name: StepName) -> Step:
        for step in self.steps:
            if step.name is name:
                return step
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": PROOF_FORMAT,
            "event_id": self.event_id,
            "ok": self.ok,
            "exit_code": self.exit_code,
            "problem": self.problem,
            "steps": [step.to_json() for step in self.steps],
        }

    def to_text(self) -> str:
        lines = [f"proof of event {self.event_id}"]
        if self.problem is not None:
            lines.append(f"  cannot prove it: {self.problem}")
        width = max(len(name.value) for name in StepName)
        for step in self.steps:
            lines.append(f"  {_LABELS[step.status]:<9} {step.name.value:<{width}}  {step.detail}")
        code = self.exit_code
        if code == EXIT_OK:
            lines.append("verified: every step holds")
        elif code == EXIT_FINDINGS:
            names = ", ".join(s.name.value for s in self.steps if s.status is Status.FAILED)
            lines.append(f"DOES NOT VERIFY: {names}")
        else:
            lines.append("not proved yet: a step could not be checked (see above)")
        return "\n".join(lines)


# What the transparency API serves, parsed -----------------------------------------------


@dataclass(frozen=True, slots=True)
class Inclusion:
    tree_size: int
    root_hash: bytes
    proof: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class ServedLeaf:
    """One leaf of the event as ``GET /v1/proofs/events/{id}`` answers it (unverified)."""

    index: int
    record: LeafRecord
    leaf_hash: bytes
    inclusion: Inclusion | None


@dataclass(frozen=True, slots=True)
class Anchors:
    checkpoint_cid: str | None
    bundle_cid: str | None
    timestamp_state: str  # none, pending or complete, as the API says

    def anchored(self, *, cids: bool) -> bool:
        """A complete timestamp, and both CIDs when ``cids``."""
        published = self.checkpoint_cid is not None and self.bundle_cid is not None
        return self.timestamp_state == "complete" and (published or not cids)


@dataclass(frozen=True, slots=True)
class ServedCheckpoint:
    """A checkpoint as the API answers it: only its note is signed."""

    size: int
    root_hash: bytes
    note: str
    previous_size: int
    anchors: Anchors | None = None


@dataclass(frozen=True, slots=True)
class EventLeaves:
    event_id: str
    leaves: tuple[ServedLeaf, ...]
    checkpoint: ServedCheckpoint  # the latest, which the inclusion proofs lead into


def _b64(value: object, name: str) -> bytes:
    if not isinstance(value, str):
        raise CannotCheck(f"{name} is not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as error:
        raise CannotCheck(f"{name} is not base64") from error


def _int(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise CannotCheck(f"{name} is not an integer")
    return value


def _str(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise CannotCheck(f"{name} is not a string")
    return value


def _object(value: object, name: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise CannotCheck(f"{name} is not a JSON object")
    return value


def _list(value: object, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise CannotCheck(f"{name} is not a JSON array")
    return value


def parse_checkpoint(document: object) -> ServedCheckpoint:
    """A checkpoint's JSON form, with its anchors when they are there."""
    doc = _object(document, "checkpoint")
    anchors = None
    if doc.get("anchors") is not None:
        found = _object(doc["anchors"], "anchors")
        stamp = _object(found.get("timestamp"), "anchors.timestamp")
        note_cid, bundle_cid = found.get("checkpoint_cid"), found.get("bundle_cid")
        anchors = Anchors(
            None if note_cid is None else _str(note_cid, "checkpoint_cid"),
            None if bundle_cid is None else _str(bundle_cid, "bundle_cid"),
            _str(stamp.get("state"), "timestamp state"),
        )
    return ServedCheckpoint(
        size=_int(doc.get("size"), "size"),
        root_hash=_b64(doc.get("root_hash"), "root_hash"),
        note=_str(doc.get("note"), "note"),
        previous_size=_int(doc.get("previous_size"), "previous_size"),
        anchors=anchors,
    )


def parse_event_leaves(document: object) -> EventLeaves:
    """The answer of ``GET /v1/proofs/events/{event_id}``."""
    doc = _object(document, "event proofs")
    leaves = []
    for item in _list(doc.get("leaves"), "leaves"):
        served = _object(item, "leaf")
        leaf = _object(served.get("leaf"), "leaf")
        try:
            record = LeafRecord(
                _str(leaf.get("topic"), "topic"),
                _int(leaf.get("partition"), "partition"),
                _int(leaf.get("offset"), "offset"),
                _str(leaf.get("event_id"), "event_id"),
                _b64(leaf.get("value_sha256"), "value_sha256"),
            )
        except EncodingError as error:
            raise CannotCheck(f"a leaf is malformed: {error}") from error
        inclusion = None
        if served.get("inclusion") is not None:
            found = _object(served["inclusion"], "inclusion")
            inclusion = Inclusion(
                _int(found.get("tree_size"), "tree_size"),
                _b64(found.get("root_hash"), "root_hash"),
                tuple(_b64(h, "a proof hash") for h in _list(found.get("proof"), "proof")),
            )
        leaves.append(
            ServedLeaf(
                _int(served.get("leaf_index"), "leaf_index"),
                record,
                _b64(served.get("leaf_hash"), "leaf_hash"),
                inclusion,
            )
        )
    return EventLeaves(
        _str(doc.get("event_id"), "event_id"),
        tuple(leaves),
        parse_checkpoint(doc.get("checkpoint")),
    )


def parse_consistency(document: object) -> tuple[bytes, ...]:
    """The proof hashes of ``GET /v1/checkpoints/consistency`` (its roots are not trusted)."""
    doc = _object(document, "consistency")
    return tuple(_b64(h, "a proof hash") for h in _list(doc.get("proof"), "proof"))


def _short(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def _where(record: LeafRecord) -> str:
    return f"{record.topic}[{record.partition}]@{record.offset}"


# The steps ------------------------------------------------------------------------------


def check_event(
    event_id: str, leaf: ServedLeaf, value: bytes | None, codec: EnvelopeCodec
) -> tuple[Step, Decoded | None]:
    """Step 1: the record at the leaf's position (None: Kafka has none there) is the event."""
    record = leaf.record
    where = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "leaf_index": leaf.index,
    }
    name = StepName.EVENT
    if record.event_id != event_id:
        return failed(
            name, f"the API's leaf {leaf.index} is of event {record.event_id}", **where
        ), None
    if value is None:
        return failed(
            name, f"Kafka holds no committed record at {_where(record)}: deleted", **where
        ), None
    digest = hashlib.sha256(value).digest()
    if digest != record.value_sha256:
        return failed(
            name,
            f"the record at {_where(record)} hashes to {_short(digest)}; leaf {leaf.index}"
            f" commits to {_short(record.value_sha256)}",
            **where,
        ), None
    try:
        decoded = codec.decode(value)
    except InvalidEnvelope as error:
        return failed(
            name, f"the record at {_where(record)} does not decode: {error}", **where
        ), None
    except LedgerError as error:  # the schema registry could not be read
        return unchecked(name, f"cannot decode the record at {_where(record)}: {error}"), None
    envelope = decoded.envelope
    if envelope.event_id != event_id:
        return failed(
            name, f"the record at {_where(record)} is event {envelope.event_id}", **where
        ), None
    figures = {
        **where,
        "event_type": envelope.event_type,
        "aggregate_id": envelope.aggregate_id,
        "sequence": envelope.sequence,
        "recorded_at": envelope.recorded_at.isoformat(),
        "value_sha256": _short(digest),
    }
    return verified(
        name,
        f"{envelope.event_type} of {envelope.aggregate_id} #{envelope.sequence},"
        f" recorded {envelope.recorded_at.isoformat()}, at {_where(record)} (leaf {leaf.index})",
        **figures,
    ), decoded


def check_signature(
    decoded: Decoded | None, keys_values: Sequence[bytes], codec: EnvelopeCodec, root: TrustedRoot
) -> Step:
    """Step 2: admit the keys topic's endorsements by ``root``, then verify the event."""
    name = StepName.SIGNATURE
    if decoded is None:
        return unchecked(name, "needs the event's record (step event)")
    verifier = Verifier(codec, KeyRing([root]))
    refused = 0
    for value in keys_values:
        try:
            verifier.admit_endorsement(value)
        except InvalidEnvelope:
            refused += 1  # not endorsed by this root, or forged: its key stays unknown
    envelope = decoded.envelope
    figures = {
        "signing_key_id": envelope.signing_key_id,
        "root_key_id": root.key_id,
        "keys_records": len(keys_values),
        "keys_records_refused": refused,
    }
    try:
        verifier.verify(decoded)
    except InvalidEnvelope as error:
        return failed(name, f"{error} (key {envelope.signing_key_id})", **figures)
    endorsement = verifier.keyring.endorsement(envelope.signing_key_id)
    return verified(
        name,
        f"Ed25519 by key {envelope.signing_key_id}, endorsed (Ed25519 + ML-DSA-65) by root"
        f" {root.key_id} for {endorsement.not_before.isoformat()} to"
        f" {endorsement.not_after.isoformat()}",
        **figures,
        not_before=endorsement.not_before.isoformat(),
        not_after=endorsement.not_after.isoformat(),
    )


def check_inclusion(leaf: ServedLeaf) -> Step:
    """Step 3: the leaf's own hash is at its index in the tree the proof leads to."""
    name = StepName.INCLUSION
    inclusion = leaf.inclusion
    if inclusion is None:
        return pending(name, f"no checkpoint covers leaf {leaf.index} yet")
    computed = leaf_hash(leaf.record.to_bytes())
    figures = {
        "leaf_index": leaf.index,
        "leaf_hash": _short(computed),
        "tree_size": inclusion.tree_size,
        "root_hash": _short(inclusion.root_hash),
        "proof_hashes": len(inclusion.proof),
    }
    if computed != leaf.leaf_hash:
        return failed(
            name, f"the API's leaf hash is not the hash of leaf {leaf.index}'s bytes", **figures
        )
    try:
        verify_inclusion(
            leaf.index, inclusion.tree_size, computed, inclusion.proof, inclusion.root_hash
        )
    except InvalidProof as error:
        return failed(name, f"leaf {leaf.index}: {error}", **figures)
    return verified(
        name,
        f"leaf {leaf.index} in the tree of size {inclusion.tree_size}, root"
        f" {_short(inclusion.root_hash)} ({len(inclusion.proof)} hashes)",
        **figures,
    )


def check_checkpoint(
    served: ServedCheckpoint, inclusion: Inclusion | None, key: AnchoringPublicKey
) -> tuple[Step, Checkpoint | None]:
    """Step 4: the latest checkpoint's note verifies and has the inclusion proof's root."""
    name = StepName.CHECKPOINT
    try:
        checkpoint = verify_checkpoint(served.note, key)
    except InvalidNote as error:
        return failed(name, f"checkpoint {served.size}: {error}", tree_size=served.size), None
    figures = {
        "tree_size": checkpoint.size,
        "root_hash": _short(checkpoint.root_hash),
        "origin": checkpoint.origin,
    }
    if inclusion is None:
        return unchecked(name, "needs an inclusion proof (step inclusion)", **figures), checkpoint
    if (checkpoint.size, checkpoint.root_hash) != (inclusion.tree_size, inclusion.root_hash):
        return failed(
            name,
            f"the signed checkpoint is size {checkpoint.size}, root {_short(checkpoint.root_hash)};"
            f" the inclusion proof is into size {inclusion.tree_size}, root"
            f" {_short(inclusion.root_hash)}",
            **figures,
        ), checkpoint
    return verified(
        name,
        f"size {checkpoint.size}, root {_short(checkpoint.root_hash)}, signed by"
        f" {checkpoint.origin} (Ed25519 + ML-DSA-87)",
        **figures,
    ), checkpoint


def check_anchored(
    leaf_index: int,
    latest: Checkpoint | None,
    anchored: ServedCheckpoint,
    consistency_proof: Sequence[bytes] | None,
    key: AnchoringPublicKey,
    *,
    why_missing: str = "no consistency proof",
) -> tuple[Step, Checkpoint | None]:
    """Step 5: the anchored checkpoint's note verifies, covers the leaf, and the latest extends it.

    ``consistency_proof`` is None when it could not be fetched (``why_missing``
    says why). Returns the anchored checkpoint whenever its note verifies,
    even if the consistency proof does not: steps 6 and 7 are about that note.
    """
    name = StepName.ANCHORED
    try:
        checkpoint = verify_checkpoint(anchored.note, key)
    except InvalidNote as error:
        return failed(
            name, f"anchored checkpoint {anchored.size}: {error}", anchored_size=anchored.size
        ), None
    figures: dict[str, Any] = {
        "anchored_size": checkpoint.size,
        "anchored_root_hash": _short(checkpoint.root_hash),
    }
    if leaf_index >= checkpoint.size:
        return failed(
            name, f"checkpoint {checkpoint.size} does not cover leaf {leaf_index}", **figures
        ), checkpoint
    if latest is None:
        return unchecked(
            name, "needs a verified latest checkpoint (step checkpoint)", **figures
        ), checkpoint
    if consistency_proof is None:
        return unchecked(name, why_missing, **figures), checkpoint
    figures.update(latest_size=latest.size, proof_hashes=len(consistency_proof))
    try:
        verify_consistency(
            checkpoint.size,
            latest.size,
            checkpoint.root_hash,
            latest.root_hash,
            consistency_proof,
        )
    except InvalidProof as error:
        return failed(
            name,
            f"checkpoint {latest.size} does not extend checkpoint {checkpoint.size}: {error}",
            **figures,
        ), checkpoint
    return verified(
        name,
        f"checkpoint {checkpoint.size} (root {_short(checkpoint.root_hash)}) covers leaf"
        f" {leaf_index}; checkpoint {latest.size} extends it ({len(consistency_proof)} hashes)",
        **figures,
    ), checkpoint


def _cid_of(text: str | None, what: str) -> Cid:
    if text is None:
        raise InvalidProof(f"no {what} CID")
    return Cid.parse(text)


def check_cids(
    anchored: ServedCheckpoint,
    note_content: bytes,
    holder: ServedCheckpoint,
    bundle_content: bytes,
    leaf: ServedLeaf,
) -> Step:
    """Step 6: the CIDs recomputed from the fetched bytes; the note and the leaf are in them.

    ``anchored`` is the anchored checkpoint (its note CID); ``holder`` is the
    checkpoint whose bundle holds the leaf (its bundle CID): the same one
    unless the first checkpoint covering the leaf is not anchored itself.
    """
    name = StepName.CID
    note_cid = anchored.anchors.checkpoint_cid if anchored.anchors else None
    bundle_cid = holder.anchors.bundle_cid if holder.anchors else None
    figures = {"checkpoint_cid": note_cid, "bundle_cid": bundle_cid, "bundle_size": holder.size}
    try:
        expected_note, expected_bundle = _cid_of(note_cid, "note"), _cid_of(bundle_cid, "bundle")
        if (computed := file_dag(note_content).root) != expected_note:
            raise InvalidProof(f"the bytes IPFS gave for {note_cid} have the CID {computed}")
        if note_content != anchored.note.encode():
            raise InvalidProof(f"{note_cid} is not checkpoint {anchored.size}'s note")
        if (computed := file_dag(bundle_content).root) != expected_bundle:
            raise InvalidProof(f"the bytes IPFS gave for {bundle_cid} have the CID {computed}")
        bundle = LeafBundle.from_bytes(bundle_content)
        if (bundle.first_index, bundle.end_index) != (holder.previous_size, holder.size):
            raise InvalidProof(
                f"bundle {bundle_cid} holds leaves {bundle.first_index} to"
                f" {bundle.end_index - 1}, not checkpoint {holder.size}'s"
            )
        position = leaf.index - bundle.first_index
        if not 0 <= position < len(bundle.leaves) or bundle.leaves[position] != leaf.record:
            raise InvalidProof(f"bundle {bundle_cid} does not hold the event's leaf {leaf.index}")
    except AnchoringError as error:  # InvalidProof, InvalidCid
        return failed(name, str(error), **figures)
    return verified(
        name,
        f"note {note_cid} and bundle {bundle_cid} recomputed from IPFS; leaf {leaf.index} is"
        f" entry {position} of the bundle of leaves {holder.previous_size} to {holder.size - 1}",
        **figures,
    )


def check_timestamp(note: str, ots: bytes, headers: BlockHeaderSource | None) -> Step:
    """Step 7: the .ots is a complete proof of SHA-256 of ``note``.

    With ``headers`` (a Bitcoin node) every attested block is checked and the
    earliest one shown; without, the proof is only seen to reach a block.
    ``headers`` raises ``CannotCheck`` when the node cannot be read.
    """
    name = StepName.TIMESTAMP
    digest = hashlib.sha256(note.encode("utf-8")).digest()
    figures: dict[str, Any] = {"digest": _short(digest), "ots_bytes": len(ots)}
    try:
        if headers is None:
            if not is_complete(ots, digest):
                raise InvalidTimestamp("the proof has no Bitcoin attestation (pending only)")
            return verified(
                name,
                f"complete proof of SHA-256 {_short(digest)}; not checked against a Bitcoin node",
                **figures,
                bitcoin_checked=False,
            )
        found = verify_timestamp(ots, digest, headers)
    except CannotCheck as error:
        return unchecked(name, str(error), **figures)
    except InvalidTimestamp as error:
        return failed(name, f"the .ots of SHA-256 {_short(digest)}: {error}", **figures)
    return verified(
        name,
        f"SHA-256 {_short(digest)} in Bitcoin block {found.height} at"
        f" {found.block_time.isoformat()}",
        **figures,
        bitcoin_checked=True,
        block_height=found.height,
        block_time=found.block_time.isoformat(),
    )


# The command ----------------------------------------------------------------------------


@click.command("proof")
@click.argument("event_id")
@click.option("--api", "api_url", help="The ingress base URL. [default: from the settings]")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option(
    "--root",
    "root_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The trusted root's public keys. [default: <keys_dir>/root.json]",
)
@click.option(
    "--anchoring-key",
    "anchoring_key_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The anchoring public key. [default: <keys_dir>/anchoring.json]",
)
@click.option(
    "--bitcoin/--no-bitcoin",
    default=None,
    help="Check the .ots against the configured btcd node's headers."
    " [default: PAYLEDGER_OTS_DIRECT_ENABLED]",
)
@click.option(
    "--ipfs/--no-ipfs",
    default=None,
    help="Fetch the CIDs from Kubo and recompute them."
    " [default: PAYLEDGER_ANCHORING_IPFS_ENABLED, or PAYLEDGER_IPFS_API_URL set]",
)
def proof(
    *,
    event_id: str,
    api_url: str | None,
    as_json: bool,
    root_path: Path | None,
    anchoring_key_path: Path | None,
    bitcoin: bool | None,
    ipfs: bool | None,
) -> None:
    """Prove one event end to end: record, signatures, Merkle inclusion, checkpoint,
    consistency, IPFS CIDs and Bitcoin timestamp, each step verified.

    Exit 0 when every step verifies, 1 when one does not, 2 when a step could
    not be checked (a service unreachable, the event unknown or not anchored yet).
    """
    from anchoring.eventproof import ProofOptions, run_proof  # noqa: PLC0415
    from ledger.config import load_settings  # noqa: PLC0415
    from ledger.keystore import load_trusted_root  # noqa: PLC0415
    from ledger.tlog.keys import PUBLIC_FILE, load_anchoring_public_key  # noqa: PLC0415

    try:
        settings = load_settings()
        root = load_trusted_root(root_path or settings.keys_dir / "root.json")
        key = load_anchoring_public_key(anchoring_key_path or settings.keys_dir / PUBLIC_FILE)
    except (ValueError, LedgerError) as error:  # pydantic's ValidationError is a ValueError
        click.echo(f"payledger audit proof: cannot start: {error}", err=True)
        click.get_current_context().exit(EXIT_ERROR)
    options = ProofOptions(
        api_url=api_url or f"http://{settings.http_host}:{settings.http_port}",
        root=root,
        anchoring_key=key,
        bitcoin=settings.ots_direct_enabled if bitcoin is None else bitcoin,
        ipfs=(settings.anchoring_ipfs_enabled or settings.ipfs_api_url is not None)
        if ipfs is None
        else ipfs,
    )
    result = run_proof(settings, event_id, options)
    click.echo(json.dumps(result.to_json(), indent=2) if as_json else result.to_text())
    click.get_current_context().exit(result.exit_code)

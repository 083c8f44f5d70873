"""OpenTimestamps proofs, read and verified: what an auditor needs, with no calendar or wallet.

A proof is a standard ``.ots`` file (``DetachedTimestampFile``) over the
SHA-256 digest of what was stamped (a checkpoint's signed note): the same
bytes the ``ots`` command reads. It walks from the digest, through the
operations of the proof, to one or more attestations:

    PendingAttestation             a calendar promised a Bitcoin commitment later
    BitcoinBlockHeaderAttestation  the message reached is the merkle root of the
                                   block at this height

``verify_timestamp`` fetches the header of every attested block from a
``BlockHeaderSource`` (a Bitcoin node, in ``anchoring.bitcoin``) and checks its
merkle root; it returns the earliest block's height and time, or raises
``InvalidTimestamp`` whatever the reason. A proof with only pending
attestations does not verify: it is not a timestamp yet. ``is_complete`` says
whether a proof reaches a block at all, for a reader with no node.
``InvalidTimestamp`` is an ``AnchoringError`` (``ledger.tlog.errors``): the
one type every reader and verifier here raises for a bad proof.

Making and upgrading proofs (calendars, a stamping transaction) is the
anchoring worker's part: ``anchoring.timestamps``, which re-exports every name
here. Pure apart from what the header source does.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final, Protocol

from bitcoin.core import CBlockHeader
from opentimestamps.core.notary import BitcoinBlockHeaderAttestation, VerificationError
from opentimestamps.core.op import OpSHA256
from opentimestamps.core.serialize import (
    BytesDeserializationContext,
    BytesSerializationContext,
    DeserializationError,
)
from opentimestamps.core.timestamp import DetachedTimestampFile

from ledger.tlog.errors import AnchoringError

DIGEST_BYTES: Final = 32
BLOCK_HEADER_BYTES: Final = 80
# The largest .ots accepted. A direct proof is about 1 kB (the stamping
# transaction plus a merkle path); a calendar proof a few kB.
OTS_PROOF_BYTES_MAX: Final = 65_536


class InvalidTimestamp(AnchoringError):
    """An .ots proof is malformed, is for another digest, or does not match the chain."""


class BlockHeaderSource(Protocol):
    def block_header(self, height: int) -> bytes | None:
        """The 80-byte header of the active chain's block at ``height``, None if none."""


@dataclass(frozen=True, slots=True)
class BitcoinTime:
    """Where a verified proof lands: the earliest attested block."""

    height: int
    block_time: dt.datetime


def check_digest(digest: bytes) -> None:
    """A programmer error unless ``digest`` is a SHA-256 digest."""
    if len(digest) != DIGEST_BYTES:
        raise ValueError(f"a SHA-256 digest is {DIGEST_BYTES} bytes, not {len(digest)}")


def serialize_proof(timestamp: Any) -> bytes:
    """The .ots bytes of a timestamp over a SHA-256 digest."""
    ctx = BytesSerializationContext()
    DetachedTimestampFile(OpSHA256(), timestamp).serialize(ctx)
    data: bytes = ctx.getbytes()
    return data


def _detached(ots: bytes) -> Any:
    if len(ots) > OTS_PROOF_BYTES_MAX:
        raise InvalidTimestamp(f"proof is larger than {OTS_PROOF_BYTES_MAX} bytes")
    try:
        detached = DetachedTimestampFile.deserialize(BytesDeserializationContext(ots))
    except (DeserializationError, ValueError, TypeError) as error:
        raise InvalidTimestamp(f"not an OpenTimestamps proof: {error}") from error
    if not isinstance(detached.file_hash_op, OpSHA256):
        raise InvalidTimestamp(f"proof is over a {detached.file_hash_op} digest, not SHA-256")
    return detached


def proof_digest(ots: bytes) -> bytes:
    """The SHA-256 digest a .ots file says it stamps: tells a wrong proof from a malformed one."""
    digest: bytes = _detached(ots).file_digest
    return digest


def parse_proof(ots: bytes, digest: bytes) -> Any:
    """The ``Timestamp`` of a .ots file, checked to be over ``digest``."""
    check_digest(digest)
    detached = _detached(ots)
    if detached.file_digest != digest:
        raise InvalidTimestamp("proof is for another digest")
    return detached.timestamp


def attestations(timestamp: Any) -> Iterator[tuple[bytes, Any]]:
    """Every (message, attestation) pair a parsed proof reaches."""
    yield from timestamp.all_attestations()


def is_complete(ots: bytes, digest: bytes) -> bool:
    """True if the proof reaches at least one Bitcoin block (it may still be wrong)."""
    return any(
        isinstance(attestation, BitcoinBlockHeaderAttestation)
        for _, attestation in attestations(parse_proof(ots, digest))
    )


def verify_timestamp(ots: bytes, digest: bytes, headers: BlockHeaderSource) -> BitcoinTime:
    """Check every Bitcoin attestation of the proof against the node's headers.

    All of them must hold: a proof that also claims a block it is not in is
    a false proof, not a proof with a spare part.
    """
    timestamp = parse_proof(ots, digest)
    found: list[BitcoinTime] = []
    for message, attestation in attestations(timestamp):
        if not isinstance(attestation, BitcoinBlockHeaderAttestation):
            continue
        height: int = attestation.height
        raw = headers.block_header(height)
        if raw is None:
            raise InvalidTimestamp(f"the node has no block at height {height}")
        if len(raw) != BLOCK_HEADER_BYTES:
            raise InvalidTimestamp(f"block header {height} is not {BLOCK_HEADER_BYTES} bytes")
        try:
            block_time: int = attestation.verify_against_blockheader(
                message, CBlockHeader.deserialize(raw)
            )
        except VerificationError as error:
            raise InvalidTimestamp(f"block {height}: {error}") from error
        found.append(BitcoinTime(height, dt.datetime.fromtimestamp(block_time, dt.UTC)))
    if not found:
        raise InvalidTimestamp("the proof has no Bitcoin attestation yet (pending only)")
    return min(found, key=lambda item: item.height)


def merge_proofs(first: bytes, second: bytes, digest: bytes) -> bytes:
    """One proof carrying the attestations of both (say a direct and a calendar one)."""
    timestamp = parse_proof(first, digest)
    timestamp.merge(parse_proof(second, digest))
    return serialize_proof(timestamp)

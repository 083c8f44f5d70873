"""Checkpoints (c2sp.org/tlog-checkpoint), hybrid-signed as signed notes, and log growth checks.

A checkpoint's note text::

    <origin>\\n                 the log's identity; also the key name of both signature lines
    <tree size>\\n              ASCII decimal, no leading zeros
    <base64 root hash>\\n       the RFC 9162 root at that size
    [<extension line>\\n ...]   optional, non-empty; payledger writes none

followed by a blank line and two signature lines under the origin's name:
Ed25519 first, then ML-DSA-87 (see ``ledger.tlog.note``). ``verify_checkpoint``
accepts a checkpoint only when both verify: forging one needs both schemes
broken. ``verify_log_growth`` checks the consistency proof between the
previous checkpoint and a new one, so an auditor following checkpoints knows
the log only ever grew.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ledger.tlog import limits
from ledger.tlog.errors import InvalidNote, InvalidProof
from ledger.tlog.keys import AnchoringKey, AnchoringPublicKey
from ledger.tlog.merkle import HASH_BYTES, verify_consistency
from ledger.tlog.note import open_note, sign_note

_SIZE = re.compile(r"0|[1-9][0-9]*")
_CONTROL = re.compile("[\x00-\x1f]")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or _CONTROL.search(self.origin):
            raise InvalidNote("a checkpoint origin is one non-empty line")
        if not 0 <= self.size <= limits.TREE_SIZE_MAX:
            raise InvalidNote(f"tree size {self.size} out of range")
        if len(self.root_hash) != HASH_BYTES:
            raise InvalidNote("a root hash is 32 bytes")
        if len(self.extensions) > limits.CHECKPOINT_EXTENSION_LINES_MAX:
            raise InvalidNote("too many checkpoint extension lines")
        for line in self.extensions:
            if not line or _CONTROL.search(line):
                raise InvalidNote("an extension line is one non-empty line")

    def text(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root_hash).decode()]
        return "".join(f"{line}\n" for line in (*lines, *self.extensions))

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """The checkpoint in a note text; refuses any text ``text()`` would not give back."""
        if not text.endswith("\n"):
            raise InvalidNote("checkpoint text must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise InvalidNote("a checkpoint has an origin, a size and a root hash")
        origin, size, root, *extensions = lines
        if not _SIZE.fullmatch(size) or len(size) > len(str(limits.TREE_SIZE_MAX)):
            raise InvalidNote("tree size is not a canonical decimal")
        try:
            root_hash = base64.b64decode(root, validate=True)
        except (binascii.Error, ValueError) as error:
            raise InvalidNote("root hash is not base64") from error
        checkpoint = cls(origin, int(size), root_hash, tuple(extensions))
        if checkpoint.text() != text:
            raise InvalidNote("checkpoint text is not canonical")
        return checkpoint


def sign_checkpoint(checkpoint: Checkpoint, key: AnchoringKey) -> str:
    """The signed note of a checkpoint: its text and both signature lines."""
    if checkpoint.origin != key.public.name:
        raise InvalidNote("the key's name must be the checkpoint's origin")
    return sign_note(checkpoint.text(), key.signers())


def verify_checkpoint(
    note: str | bytes, key: AnchoringPublicKey, *, ignore_unknown: bool = False
) -> Checkpoint:
    """The checkpoint of a signed note once both of ``key``'s signatures verify.

    Raises ``InvalidNote`` for any failure. ``ignore_unknown`` skips signature
    lines of other keys (witness cosignatures) instead of refusing the note.
    """
    text = open_note(note, key.verifiers(), ignore_unknown=ignore_unknown)
    checkpoint = Checkpoint.parse(text)
    if checkpoint.origin != key.name:
        raise InvalidNote(f"checkpoint of {checkpoint.origin!r}, not of {key.name!r}")
    return checkpoint


def verify_log_growth(
    previous_size: int, previous_root: bytes, current: Checkpoint, proof: Sequence[bytes]
) -> None:
    """Return nothing when ``current`` extends the log at (previous_size, previous_root).

    ``current`` must come from ``verify_checkpoint``. Raises ``InvalidProof``
    when the log shrank, forked or the proof is wrong.
    """
    if current.size < previous_size:
        raise InvalidProof(f"the log shrank from {previous_size} to {current.size} leaves")
    verify_consistency(previous_size, current.size, previous_root, current.root_hash, proof)

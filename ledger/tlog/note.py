"""C2SP signed notes (c2sp.org/signed-note): text, a blank line, then signature lines.

    <text, each line ending in \\n>
    \\n
    — <key name> <base64(key ID || signature)>\\n        (U+2014 EM DASH, one per signature)

    key ID = SHA-256(key name || 0x0A || signature type || public key)[:4]

Two signature types are used:

- Ed25519, type ``0x01``, as signed-note itself specifies: the RFC 8032
  signature of the note text, with the 32-byte public key in the key ID.
- ML-DSA-87 (FIPS 204), which signed-note does not register. Per its
  provision for other algorithms, the type is ``0xFF`` followed by a fixed
  tag, ``MLDSA87_SIGNATURE_TYPE`` = 0xFF || "payledger/note-ml-dsa-87/v1" || 0x0A;
  the public key (2592 bytes) follows it in the key ID. The signature is the
  4627-byte pure ML-DSA-87 signature of the note text with an empty context
  string. (c2sp.org/tlog-cosignature's type 0x06 is ML-DSA-44 over a
  different, binary message, so it is not reused here.)

Verification is stricter than signed-note asks, on purpose: every key the
caller passes must have a line that verifies (payledger's checkpoints are
hybrid, and one valid scheme alone is not enough), a line repeated for the
same key is refused, and a line from a key the caller does not know is
refused unless ``ignore_unknown`` is set, which gives signed-note's own rule
(unknown signatures are skipped, e.g. a witness's cosignature). Every failure
raises ``InvalidNote``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa

from ledger.errors import InvalidEnvelope
from ledger.signing import Signer, verify_ed25519
from ledger.tlog import limits
from ledger.tlog.errors import InvalidNote

EM_DASH: Final = "\u2014"
KEY_ID_BYTES: Final = 4
ED25519_SIGNATURE_TYPE: Final = b"\x01"
MLDSA87_SIGNATURE_TYPE: Final = b"\xffpayledger/note-ml-dsa-87/v1\n"
MLDSA87_PUBLIC_KEY_BYTES: Final = 2592
MLDSA87_SIGNATURE_BYTES: Final = 4627

# Control characters other than newline: signed-note forbids them anywhere.
_CONTROL = re.compile("[\x00-\x09\x0b-\x1f]")


def key_id(name: str, signature_type: bytes, public_key: bytes) -> bytes:
    """signed-note's recommended key ID: 4 bytes of SHA-256(name || 0x0A || type || key)."""
    check_key_name(name)
    return hashlib.sha256(name.encode() + b"\n" + signature_type + public_key).digest()[
        :KEY_ID_BYTES
    ]


def check_key_name(name: str) -> None:
    if not 0 < len(name) <= limits.KEY_NAME_CHARS_MAX:
        raise InvalidNote("a key name is 1 to 255 characters")
    if "+" in name or any(char.isspace() for char in name) or _CONTROL.search(name):
        raise InvalidNote("a key name holds no spaces, plus signs or control characters")


class NoteSigner(Protocol):
    """One key that signs note text under one name."""

    @property
    def name(self) -> str: ...

    @property
    def key_id(self) -> bytes: ...

    def sign(self, message: bytes) -> bytes: ...


class NoteVerifier(Protocol):
    """The public half of a ``NoteSigner``: ``verify`` returns nothing or raises ``InvalidNote``."""

    @property
    def name(self) -> str: ...

    @property
    def key_id(self) -> bytes: ...

    def verify(self, message: bytes, signature: bytes) -> None: ...


class _NoteKey:
    """A key's name and its signed-note key ID, what every signer and verifier carries."""

    __slots__ = ("key_id", "name")

    def __init__(self, name: str, signature_type: bytes, public_key: bytes) -> None:
        self.name = name
        self.key_id = key_id(name, signature_type, public_key)


# Ed25519 -----------------------------------------------------------------------


class Ed25519NoteSigner(_NoteKey):
    __slots__ = ("_signer",)

    def __init__(self, name: str, signer: Signer) -> None:
        super().__init__(name, ED25519_SIGNATURE_TYPE, signer.public_key)
        self._signer = signer

    def sign(self, message: bytes) -> bytes:
        return self._signer.sign(message)


class Ed25519NoteVerifier(_NoteKey):
    __slots__ = ("_public_key",)

    def __init__(self, name: str, public_key: bytes) -> None:
        super().__init__(name, ED25519_SIGNATURE_TYPE, public_key)
        self._public_key = public_key

    def verify(self, message: bytes, signature: bytes) -> None:
        try:
            verify_ed25519(self._public_key, message, signature)
        except InvalidEnvelope as error:
            raise InvalidNote(f"Ed25519 signature of {self.name} does not verify") from error


# ML-DSA-87 ---------------------------------------------------------------------


class MLDSA87NoteSigner(_NoteKey):
    __slots__ = ("_key",)

    def __init__(self, name: str, key: mldsa.MLDSA87PrivateKey) -> None:
        super().__init__(name, MLDSA87_SIGNATURE_TYPE, key.public_key().public_bytes_raw())
        self._key = key

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


class MLDSA87NoteVerifier(_NoteKey):
    __slots__ = ("_key",)

    def __init__(self, name: str, public_key: bytes) -> None:
        if len(public_key) != MLDSA87_PUBLIC_KEY_BYTES:
            raise InvalidNote("an ML-DSA-87 public key is 2592 bytes")
        super().__init__(name, MLDSA87_SIGNATURE_TYPE, public_key)
        self._key = mldsa.MLDSA87PublicKey.from_public_bytes(public_key)

    def verify(self, message: bytes, signature: bytes) -> None:
        if len(signature) != MLDSA87_SIGNATURE_BYTES:
            raise InvalidNote(f"ML-DSA-87 signature of {self.name} has the wrong length")
        try:
            self._key.verify(signature, message)
        except InvalidSignature as error:
            raise InvalidNote(f"ML-DSA-87 signature of {self.name} does not verify") from error


# The note format ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NoteSignature:
    """One parsed signature line."""

    name: str
    key_id: bytes
    signature: bytes


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise InvalidNote("note text must end with a newline")
    if _CONTROL.search(text):
        raise InvalidNote("note text holds a control character")


def sign_note(text: str, signers: Sequence[NoteSigner]) -> str:
    """The signed note: ``text``, a blank line, and one signature line per signer, in order."""
    _check_text(text)
    if not 0 < len(signers) <= limits.NOTE_SIGNATURES_MAX:
        raise InvalidNote(f"a note has 1 to {limits.NOTE_SIGNATURES_MAX} signatures")
    message = text.encode()
    lines = [
        f"{EM_DASH} {signer.name} "
        f"{base64.b64encode(signer.key_id + signer.sign(message)).decode()}\n"
        for signer in signers
    ]
    note = text + "\n" + "".join(lines)
    if len(note.encode()) > limits.NOTE_BYTES_MAX:
        raise InvalidNote(f"signed note longer than {limits.NOTE_BYTES_MAX} bytes")
    return note


def _strict_base64(value: str) -> bytes:
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as error:
        raise InvalidNote("signature is not base64") from error
    # One encoding per value: refuse non-zero padding bits and the like.
    if base64.b64encode(decoded).decode() != value:
        raise InvalidNote("signature is not canonical base64")
    return decoded


def parse_note(note: str | bytes) -> tuple[str, list[NoteSignature]]:
    """Split a signed note into its text and its signature lines, checking the format only."""
    too_long = InvalidNote(f"signed note longer than {limits.NOTE_BYTES_MAX} bytes")
    if len(note) > limits.NOTE_BYTES_MAX:
        raise too_long
    try:
        if isinstance(note, bytes):
            note = note.decode("utf-8")
        elif len(note.encode("utf-8")) > limits.NOTE_BYTES_MAX:
            raise too_long
    except UnicodeError as error:
        raise InvalidNote("signed note is not valid UTF-8") from error
    if _CONTROL.search(note):
        raise InvalidNote("signed note holds a control character")
    split = note.rfind("\n\n")
    if split < 0:
        raise InvalidNote("signed note has no blank line before its signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block.endswith("\n"):
        raise InvalidNote("signature block must end with a newline")
    lines = block[:-1].split("\n")
    if len(lines) > limits.NOTE_SIGNATURES_MAX:
        raise InvalidNote(f"more than {limits.NOTE_SIGNATURES_MAX} signatures")
    signatures = []
    for line in lines:
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != EM_DASH:
            raise InvalidNote("malformed signature line")
        name, encoded = parts[1], parts[2]
        check_key_name(name)
        blob = _strict_base64(encoded)
        if len(blob) <= KEY_ID_BYTES:
            raise InvalidNote("signature line holds no signature")
        signatures.append(NoteSignature(name, blob[:KEY_ID_BYTES], blob[KEY_ID_BYTES:]))
    return text, signatures


def open_note(
    note: str | bytes, verifiers: Iterable[NoteVerifier], *, ignore_unknown: bool = False
) -> str:
    """The note's text, once every given verifier's signature line is present and verifies."""
    known: dict[tuple[str, bytes], NoteVerifier] = {}
    for verifier in verifiers:
        identity = (verifier.name, verifier.key_id)
        if identity in known:
            raise AssertionError(f"two verifiers for {verifier.name}+{verifier.key_id.hex()}")
        known[identity] = verifier
    if not known:
        raise InvalidNote("no verifier given: a note is never accepted unverified")
    text, signatures = parse_note(note)
    message = text.encode()
    seen: set[tuple[str, bytes]] = set()
    for signature in signatures:
        identity = (signature.name, signature.key_id)
        if identity in seen:
            raise InvalidNote(f"two signature lines for one key of {signature.name}")
        seen.add(identity)
        expected = known.get(identity)
        if expected is None:
            if ignore_unknown:
                continue
            raise InvalidNote(f"signature line from an unknown key of {signature.name}")
        expected.verify(message, signature.signature)
    missing = known.keys() - seen
    if missing:
        names = ", ".join(sorted(f"{name}+{kid.hex()}" for name, kid in missing))
        raise InvalidNote(f"not signed by {names}")
    return text

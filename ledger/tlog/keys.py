"""The anchoring key pair that signs checkpoints: Ed25519 + ML-DSA-87, and where it lives.

Files in ``settings.keys_dir`` (mode 0700), beside the ledger's own keys::

    anchoring-ed25519.seed      the Ed25519 seed (0600)
    anchoring-mldsa87.seed      the ML-DSA-87 seed (0600)
    anchoring.json              the public keys and the note name (safe to publish)

The key is separate from the ledger's root: it signs every checkpoint, so it
is used often and online, while the root only endorses keys. Both halves are
files whatever ``signer_backend`` says, because HSMs in service do not offer
ML-DSA yet and a checkpoint is only as strong as its weaker key anyway.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import mldsa

from ledger.config import Settings
from ledger.errors import ConfigurationError
from ledger.signing import FileSigner, write_secret
from ledger.tlog.errors import InvalidNote
from ledger.tlog.note import (
    Ed25519NoteSigner,
    Ed25519NoteVerifier,
    MLDSA87NoteSigner,
    MLDSA87NoteVerifier,
    NoteSigner,
    NoteVerifier,
    check_key_name,
)

ED25519_SEED_FILE = "anchoring-ed25519.seed"
MLDSA87_SEED_FILE = "anchoring-mldsa87.seed"
PUBLIC_FILE = "anchoring.json"


@dataclass(frozen=True, slots=True)
class AnchoringPublicKey:
    """What a checkpoint verifier pins: the note name and both public keys."""

    name: str
    ed25519_public_key: bytes
    mldsa87_public_key: bytes

    def verifiers(self) -> list[NoteVerifier]:
        return [
            Ed25519NoteVerifier(self.name, self.ed25519_public_key),
            MLDSA87NoteVerifier(self.name, self.mldsa87_public_key),
        ]

    def to_json(self) -> dict[str, Any]:
        ed25519, mldsa87 = self.verifiers()
        return {
            "name": self.name,
            "ed25519_public_key": base64.b64encode(self.ed25519_public_key).decode(),
            "ed25519_key_id": ed25519.key_id.hex(),
            "mldsa87_public_key": base64.b64encode(self.mldsa87_public_key).decode(),
            "mldsa87_key_id": mldsa87.key_id.hex(),
        }

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> AnchoringPublicKey:
        key = cls(
            record["name"],
            base64.b64decode(record["ed25519_public_key"], validate=True),
            base64.b64decode(record["mldsa87_public_key"], validate=True),
        )
        ed25519, mldsa87 = key.verifiers()
        if (ed25519.key_id.hex(), mldsa87.key_id.hex()) != (
            record["ed25519_key_id"],
            record["mldsa87_key_id"],
        ):
            raise ConfigurationError("anchoring key ids do not match their public keys")
        return key


class AnchoringKey:
    """The private pair, under one note name (the log's origin)."""

    __slots__ = ("_ed25519", "_mldsa87", "public")

    def __init__(self, name: str, ed25519: FileSigner, mldsa87: mldsa.MLDSA87PrivateKey) -> None:
        check_key_name(name)
        self._ed25519 = ed25519
        self._mldsa87 = mldsa87
        self.public = AnchoringPublicKey(
            name, ed25519.public_key, mldsa87.public_key().public_bytes_raw()
        )

    def signers(self) -> list[NoteSigner]:
        """Ed25519 first, then ML-DSA-87: the order of the lines in every checkpoint."""
        return [
            Ed25519NoteSigner(self.public.name, self._ed25519),
            MLDSA87NoteSigner(self.public.name, self._mldsa87),
        ]


def load_or_create_anchoring_key(settings: Settings, name: str) -> AnchoringKey:
    """The anchoring key from ``settings.keys_dir``, made on first use."""
    directory = settings.keys_dir
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ed25519_path = directory / ED25519_SEED_FILE
    if ed25519_path.exists():
        ed25519 = FileSigner.load(ed25519_path)
    else:
        ed25519 = FileSigner.generate()
        ed25519.save(ed25519_path)
    key = AnchoringKey(name, ed25519, _mldsa87(directory / MLDSA87_SEED_FILE))
    _write_public(directory / PUBLIC_FILE, key.public)
    return key


def load_anchoring_public_key(path: Path) -> AnchoringPublicKey:
    try:
        return AnchoringPublicKey.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, InvalidNote) as error:
        raise ConfigurationError(f"cannot read anchoring public key {path}: {error}") from error


def _mldsa87(path: Path) -> mldsa.MLDSA87PrivateKey:
    if path.exists():
        try:
            return mldsa.MLDSA87PrivateKey.from_seed_bytes(path.read_bytes())
        except (OSError, ValueError) as error:
            raise ConfigurationError(f"cannot read anchoring key {path}: {error}") from error
    key = mldsa.MLDSA87PrivateKey.generate()
    write_secret(path, key.private_bytes_raw())
    return key


def _write_public(path: Path, public: AnchoringPublicKey) -> None:
    text = json.dumps(public.to_json(), indent=2) + "\n"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)

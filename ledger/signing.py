"""Ed25519 signers and the one verification primitive.

A ``Signer`` holds a private key somewhere (a file, an HSM) and signs bytes;
callers never see the private key. Two backends: ``FileSigner`` (libsodium
through PyNaCl, the embedded default) and ``Pkcs11Signer`` (any PKCS#11
module; SoftHSM2 in development) in ``ledger.pkcs11``. Signatures from either
verify with plain libsodium: that is the point of Ed25519's determinism.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Protocol

import nacl.bindings
import nacl.exceptions
import nacl.signing

from ledger.errors import ConfigurationError, InvalidEnvelope, Reason

ED25519_PUBLIC_KEY_BYTES = 32
ED25519_SIGNATURE_BYTES = 64


class Signer(Protocol):
    """Something that signs with one Ed25519 key."""

    @property
    def key_id(self) -> str: ...

    @property
    def public_key(self) -> bytes: ...

    def sign(self, message: bytes) -> bytes: ...


def key_id_for(public_key: bytes) -> str:
    """A key id anyone can recompute from the public key alone."""
    if len(public_key) != ED25519_PUBLIC_KEY_BYTES:
        raise ConfigurationError("an Ed25519 public key is 32 bytes")
    return "ed25519-" + hashlib.sha256(public_key).hexdigest()[:32]


def verify_ed25519(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Return nothing or raise ``InvalidEnvelope(BAD_SIGNATURE)``; libsodium does the math."""
    if len(signature) != ED25519_SIGNATURE_BYTES or len(public_key) != ED25519_PUBLIC_KEY_BYTES:
        raise InvalidEnvelope(Reason.BAD_SIGNATURE, "wrong signature or key length")
    try:
        # PyNaCl exposes libsodium's combined form only: signature || message.
        nacl.bindings.crypto_sign_open(signature + message, public_key)
    except (nacl.exceptions.BadSignatureError, ValueError) as error:
        raise InvalidEnvelope(Reason.BAD_SIGNATURE) from error


class FileSigner:
    """An Ed25519 key whose 32-byte seed lives in a file readable by its owner only."""

    __slots__ = ("_key", "_key_id", "_public_key", "_secret")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise ConfigurationError("an Ed25519 seed is 32 bytes")
        self._key = nacl.signing.SigningKey(seed)
        self._public_key = bytes(self._key.verify_key)
        self._key_id = key_id_for(self._public_key)
        # libsodium's secret key is seed || public key; calling the binding
        # directly skips PyNaCl's SignedMessage wrapper on the hot path.
        self._secret = seed + self._public_key

    @classmethod
    def generate(cls) -> FileSigner:
        return cls(os.urandom(32))

    @classmethod
    def load(cls, path: Path) -> FileSigner:
        try:
            seed = path.read_bytes()
        except OSError as error:
            raise ConfigurationError(f"cannot read signing key {path}: {error}") from error
        return cls(seed)

    def save(self, path: Path) -> None:
        write_secret(path, bytes(self._key))

    @property
    def key_id(self) -> str:
        return self._key_id

    @property
    def public_key(self) -> bytes:
        return self._public_key

    def sign(self, message: bytes) -> bytes:
        signed: bytes = nacl.bindings.crypto_sign(message, self._secret)
        return signed[:ED25519_SIGNATURE_BYTES]


def write_secret(path: Path, secret: bytes) -> None:
    """Write a secret atomically with mode 0600, never leaving a readable copy behind."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_suffix(path.suffix + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(descriptor, secret)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(temporary, path)

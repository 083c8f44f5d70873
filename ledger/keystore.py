"""Where keys live on disk or in a token, and automatic rotation of event-signing keys.

Layout of ``settings.keys_dir`` (mode 0700):

    root.json                    the trusted root's public keys (safe to publish)
    root-ed25519.seed            file backend only: the root Ed25519 seed (0600)
    root-mldsa65.seed            the root ML-DSA-65 seed (0600), every backend
    event/<key id>.seed          file backend only: an event-signing key's seed (0600)
    event/<key id>.json          its endorsement, as published on the keys topic

With the PKCS#11 backend the Ed25519 private keys are generated in the token
and never leave it; their labels are ``payledger-root`` and
``payledger-event-<key id prefix>``.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import mldsa

from ledger.config import Settings, SignerBackend
from ledger.envelope import KeyEndorsement, utc_now
from ledger.errors import ConfigurationError
from ledger.keys import KeyRing, RootKey, TrustedRoot
from ledger.pkcs11 import Pkcs11Token
from ledger.signing import FileSigner, Signer, write_secret

ROOT_LABEL = "payledger-root"
# A new event key is made once the current one has less than this share of
# its lifetime left, so consumers see the new endorsement well before expiry.
ROTATE_AT_REMAINING_SHARE = 0.2

_BYTES_FIELDS = (
    "public_key",
    "root_ed25519_public_key",
    "root_mldsa65_public_key",
    "root_ed25519_signature",
    "root_mldsa65_signature",
)


def endorsement_to_json(endorsement: KeyEndorsement) -> dict[str, Any]:
    record = endorsement.to_avro()
    for name in _BYTES_FIELDS:
        record[name] = base64.b64encode(record[name]).decode()
    record["not_before"] = endorsement.not_before.isoformat()
    record["not_after"] = endorsement.not_after.isoformat()
    return record


def endorsement_from_json(record: dict[str, Any]) -> KeyEndorsement:
    values = dict(record)
    for name in _BYTES_FIELDS:
        values[name] = base64.b64decode(values[name])
    values["not_before"] = datetime.fromisoformat(values["not_before"])
    values["not_after"] = datetime.fromisoformat(values["not_after"])
    return KeyEndorsement.from_avro(values)


def trusted_root_to_json(root: TrustedRoot) -> dict[str, str]:
    return {
        "key_id": root.key_id,
        "ed25519_public_key": base64.b64encode(root.ed25519_public_key).decode(),
        "mldsa65_public_key": base64.b64encode(root.mldsa65_public_key).decode(),
    }


def trusted_root_from_json(record: dict[str, str]) -> TrustedRoot:
    root = TrustedRoot.of(
        base64.b64decode(record["ed25519_public_key"]),
        base64.b64decode(record["mldsa65_public_key"]),
    )
    if root.key_id != record["key_id"]:
        raise ConfigurationError("root.json: key_id does not match its public keys")
    return root


def load_trusted_root(path: Path) -> TrustedRoot:
    try:
        return trusted_root_from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError) as error:
        raise ConfigurationError(f"cannot read trusted root {path}: {error}") from error


@dataclass(frozen=True, slots=True)
class ActiveKey:
    signer: Signer
    endorsement: KeyEndorsement
    is_new: bool  # made by this call: its endorsement must be published


class KeyStore:
    """Loads or creates the root and the event-signing keys for one process."""

    def __init__(self, settings: Settings, clock: Callable[[], datetime] = utc_now) -> None:
        self._settings = settings
        self._clock = clock
        self._dir = settings.keys_dir
        self._token: Pkcs11Token | None = None
        self._root: RootKey | None = None

    def close(self) -> None:
        if self._token is not None:
            self._token.close()
            self._token = None

    def _pkcs11(self) -> Pkcs11Token:
        if self._token is None:
            os.environ.setdefault("SOFTHSM2_CONF", os.fspath(self._settings.softhsm_conf))
            self._token = Pkcs11Token(
                self._settings.pkcs11_module,
                self._settings.pkcs11_token_label,
                self._settings.pkcs11_user_pin.get_secret_value(),
            )
        return self._token

    def _uses_token(self) -> bool:
        return self._settings.signer_backend is SignerBackend.PKCS11

    # Root -------------------------------------------------------------------

    def root(self) -> RootKey:
        if self._root is None:
            self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            if self._uses_token():
                ed25519: Signer = self._pkcs11().load_or_generate_ed25519(ROOT_LABEL)
            else:
                ed25519 = self._file_signer(self._dir / "root-ed25519.seed")
            self._root = RootKey(ed25519, self._mldsa65(self._dir / "root-mldsa65.seed"))
            self._write_trusted_root(self._root.trusted)
        return self._root

    def trusted_root(self) -> TrustedRoot:
        return self.root().trusted

    def _write_trusted_root(self, root: TrustedRoot) -> None:
        path = self._dir / "root.json"
        text = json.dumps(trusted_root_to_json(root), indent=2) + "\n"
        if not path.exists() or path.read_text() != text:
            path.write_text(text)

    @staticmethod
    def _file_signer(path: Path) -> FileSigner:
        if path.exists():
            return FileSigner.load(path)
        signer = FileSigner.generate()
        signer.save(path)
        return signer

    @staticmethod
    def _mldsa65(path: Path) -> mldsa.MLDSA65PrivateKey:
        if path.exists():
            return mldsa.MLDSA65PrivateKey.from_seed_bytes(path.read_bytes())
        key = mldsa.MLDSA65PrivateKey.generate()
        write_secret(path, key.private_bytes_raw())
        return key

    # Event-signing keys -----------------------------------------------------

    def endorsements(self) -> list[KeyEndorsement]:
        """Every endorsement this store has made, oldest first."""
        directory = self._dir / "event"
        if not directory.exists():
            return []
        found = [
            endorsement_from_json(json.loads(path.read_text())) for path in directory.glob("*.json")
        ]
        return sorted(found, key=lambda endorsement: endorsement.not_before)

    def keyring(self) -> KeyRing:
        ring = KeyRing([self.trusted_root()])
        for endorsement in self.endorsements():
            ring.add(endorsement)
        return ring

    def active_key(self) -> ActiveKey:
        """The key to sign with now, rotated when the current one nears its expiry."""
        now = self._clock()
        lifetime = timedelta(seconds=self._settings.signing_key_lifetime_s)
        for endorsement in reversed(self.endorsements()):
            remaining = endorsement.not_after - now
            if endorsement.not_before <= now and remaining > lifetime * ROTATE_AT_REMAINING_SHARE:
                return ActiveKey(self._load_event_signer(endorsement), endorsement, is_new=False)
        return self._new_event_key(now, lifetime)

    def _event_label(self, key_id: str) -> str:
        return f"payledger-event-{key_id.removeprefix('ed25519-')[:16]}"

    def _load_event_signer(self, endorsement: KeyEndorsement) -> Signer:
        if self._uses_token():
            signer = self._pkcs11().find_ed25519(self._event_label(endorsement.key_id))
            if signer is None or signer.key_id != endorsement.key_id:
                raise ConfigurationError(f"event key {endorsement.key_id} is not on the token")
            return signer
        return FileSigner.load(self._dir / "event" / f"{endorsement.key_id}.seed")

    def _new_event_key(self, now: datetime, lifetime: timedelta) -> ActiveKey:
        directory = self._dir / "event"
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self._uses_token():
            # The label is derived from the key id, which exists only once the
            # token has made the key: generate under a temporary label, then rename.
            token = self._pkcs11()
            pending = token.generate_ed25519(f"payledger-event-pending-{os.urandom(4).hex()}")
            signer: Signer = token.relabel(pending, self._event_label(pending.key_id))
        else:
            file_signer = FileSigner.generate()
            file_signer.save(directory / f"{file_signer.key_id}.seed")
            signer = file_signer
        endorsement = self.root().endorse(signer, not_before=now, lifetime=lifetime)
        path = directory / f"{signer.key_id}.json"
        path.write_text(json.dumps(endorsement_to_json(endorsement), indent=2) + "\n")
        return ActiveKey(signer, endorsement, is_new=True)


class ActiveSigner:
    """The current event-signing key for a hot path: no disk access until rotation is due.

    ``current()`` returns the signer and, exactly once per new key, its
    endorsement, which the caller must publish on the keys topic before any
    record signed with that key.
    """

    def __init__(self, store: KeyStore, clock: Callable[[], datetime] = utc_now) -> None:
        self._store = store
        self._clock = clock
        self._active: ActiveKey | None = None
        self._rotate_at: datetime | None = None

    def current(self) -> tuple[Signer, KeyEndorsement | None]:
        now = self._clock()
        if self._active is None or self._rotate_at is None or now >= self._rotate_at:
            active = self._store.active_key()
            window = active.endorsement.not_after - active.endorsement.not_before
            self._rotate_at = active.endorsement.not_after - window * ROTATE_AT_REMAINING_SHARE
            self._active = active
            return active.signer, active.endorsement if active.is_new else None
        return self._active.signer, None

    def endorsement(self) -> KeyEndorsement:
        """The endorsement of the key ``current()`` signs with."""
        if self._active is None:
            self.current()
        assert self._active is not None
        return self._active.endorsement

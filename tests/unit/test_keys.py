"""Root key, endorsements, rotation, and the key ring."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from ledger.config import Settings
from ledger.errors import InvalidEnvelope, Reason
from ledger.keys import KeyRing, TrustedRoot, verify_endorsement
from ledger.keystore import KeyStore, endorsement_from_json, endorsement_to_json
from ledger.signing import FileSigner
from tests.support.events import T0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self):
        return self.now


def _store(tmp_path: Path, clock: Clock, lifetime_s: int = 3600) -> KeyStore:
    return KeyStore(Settings(state_dir=tmp_path, signing_key_lifetime_s=lifetime_s), clock=clock)


def test_root_persists_across_processes(tmp_path: Path) -> None:
    clock = Clock()
    first = _store(tmp_path, clock).trusted_root()
    second = _store(tmp_path, clock).trusted_root()
    assert first == second
    assert first.key_id.startswith("root-")
    assert len(first.mldsa65_public_key) == 1952
    assert (tmp_path / "keys" / "root.json").exists()
    for secret in (tmp_path / "keys").glob("*.seed"):
        assert secret.stat().st_mode & 0o077 == 0, secret


def test_endorsement_verifies_and_survives_json(tmp_path: Path) -> None:
    store = _store(tmp_path, Clock())
    endorsement = store.active_key().endorsement
    verify_endorsement(endorsement, store.trusted_root())
    assert endorsement_from_json(endorsement_to_json(endorsement)) == endorsement


@pytest.mark.parametrize(
    "field", ["root_ed25519_signature", "root_mldsa65_signature", "public_key", "not_after"]
)
def test_tampered_endorsement_fails(tmp_path: Path, field: str) -> None:
    store = _store(tmp_path, Clock())
    endorsement = store.active_key().endorsement
    value = getattr(endorsement, field)
    if isinstance(value, bytes):
        tampered = replace(endorsement, **{field: bytes([value[0] ^ 1]) + value[1:]})
    else:
        tampered = replace(endorsement, **{field: value + timedelta(days=365)})
    with pytest.raises(InvalidEnvelope) as caught:
        verify_endorsement(tampered, store.trusted_root())
    assert caught.value.reason is Reason.BAD_ENDORSEMENT


def test_only_one_of_two_root_signatures_is_not_enough(tmp_path: Path) -> None:
    # A forger who breaks Ed25519 but not ML-DSA (or the reverse) still fails.
    store = _store(tmp_path, Clock())
    good = store.active_key().endorsement
    other = _store(tmp_path / "other", Clock()).active_key().endorsement
    mixed = replace(good, root_mldsa65_signature=other.root_mldsa65_signature)
    with pytest.raises(InvalidEnvelope, match="ML-DSA"):
        verify_endorsement(mixed, store.trusted_root())


def test_endorsement_from_another_root_is_refused(tmp_path: Path) -> None:
    ours = _store(tmp_path / "a", Clock())
    theirs = _store(tmp_path / "b", Clock())
    ring = KeyRing([ours.trusted_root()])
    with pytest.raises(InvalidEnvelope) as caught:
        ring.add(theirs.active_key().endorsement)
    assert caught.value.reason is Reason.BAD_ENDORSEMENT
    # Their root keys presented under our root id: the fingerprint gives it away.
    forged_root = TrustedRoot(
        ours.trusted_root().key_id,
        theirs.trusted_root().ed25519_public_key,
        theirs.trusted_root().mldsa65_public_key,
    )
    with pytest.raises(InvalidEnvelope):
        verify_endorsement(theirs.active_key().endorsement, forged_root)


def test_unknown_key_id(tmp_path: Path) -> None:
    ring = _store(tmp_path, Clock()).keyring()
    with pytest.raises(InvalidEnvelope) as caught:
        ring.endorsement(FileSigner.generate().key_id)
    assert caught.value.reason is Reason.UNKNOWN_KEY


def test_rotation_before_expiry(tmp_path: Path) -> None:
    clock = Clock()
    store = _store(tmp_path, clock, lifetime_s=3600)
    first = store.active_key()
    assert first.is_new
    assert store.active_key().signer.key_id == first.signer.key_id
    assert not store.active_key().is_new
    # With less than a fifth of its life left, the key is replaced.
    clock.now = T0 + timedelta(minutes=49)
    second = store.active_key()
    assert second.is_new
    assert second.signer.key_id != first.signer.key_id
    ring = store.keyring()
    assert first.signer.key_id in ring and second.signer.key_id in ring
    # A fresh process on the same directory picks the newest key.
    assert _store(tmp_path, clock).active_key().signer.key_id == second.signer.key_id

"""Sealing personal data: AEAD round trips, every way to break one, and the file master key."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
import threading
from pathlib import Path

import pytest

from ledger import limits
from ledger.config import Settings, SignerBackend
from ledger.envelope import SealedData
from ledger.errors import ConfigurationError, EncodingError
from ledger.sealing import (
    ALGORITHM,
    MASTER_KEY_FILE,
    NONCE_BYTES,
    FileMasterKey,
    SealingError,
    check_customer_ref,
    customer_reference,
    new_data_key,
    open_master_key,
    open_sealed,
    seal,
)

ALICE = customer_reference("mer_42", "customer-alice")
BOB = customer_reference("mer_42", "customer-bob")
PLAINTEXT = b'{"email":"alice@example.com","name":"Alice Example"}'


@pytest.fixture
def data_key() -> tuple[str, bytes]:
    return new_data_key()


def sealed_for(customer_ref: str, data_key: tuple[str, bytes]) -> SealedData:
    key_id, key = data_key
    return seal(key, PLAINTEXT, customer_ref, data_key_id=key_id)


def flip(data: bytes, index: int) -> bytes:
    changed = bytearray(data)
    changed[index] ^= 0x01
    return bytes(changed)


def test_round_trip(data_key) -> None:
    key_id, key = data_key
    sealed = seal(key, PLAINTEXT, ALICE, data_key_id=key_id)
    assert sealed.customer_ref == ALICE
    assert sealed.data_key_id == key_id
    assert sealed.algorithm == ALGORITHM == "XChaCha20-Poly1305"
    assert len(sealed.nonce) == NONCE_BYTES == 24
    assert PLAINTEXT not in sealed.ciphertext
    assert len(sealed.ciphertext) == len(PLAINTEXT) + 16
    assert open_sealed(key, sealed) == PLAINTEXT


def test_round_trip_through_the_avro_record(data_key) -> None:
    sealed = sealed_for(ALICE, data_key)
    assert open_sealed(data_key[1], SealedData.from_avro(sealed.to_avro())) == PLAINTEXT


def test_every_seal_uses_a_fresh_nonce(data_key) -> None:
    first, second = sealed_for(ALICE, data_key), sealed_for(ALICE, data_key)
    assert first.nonce != second.nonce
    assert first.ciphertext != second.ciphertext


def test_empty_and_largest_plaintexts(data_key) -> None:
    key_id, key = data_key
    for plaintext in (b"", b"x" * limits.SEALED_PLAINTEXT_BYTES_MAX):
        assert open_sealed(key, seal(key, plaintext, ALICE, data_key_id=key_id)) == plaintext
    with pytest.raises(EncodingError, match="longer than"):
        seal(key, b"x" * (limits.SEALED_PLAINTEXT_BYTES_MAX + 1), ALICE, data_key_id=key_id)


def test_a_flipped_bit_anywhere_in_the_ciphertext_fails(data_key) -> None:
    sealed = sealed_for(ALICE, data_key)
    for index in range(len(sealed.ciphertext)):
        tampered = dataclasses.replace(sealed, ciphertext=flip(sealed.ciphertext, index))
        with pytest.raises(SealingError):
            open_sealed(data_key[1], tampered)


def test_a_flipped_bit_in_the_nonce_fails(data_key) -> None:
    sealed = sealed_for(ALICE, data_key)
    for index in range(NONCE_BYTES):
        with pytest.raises(SealingError):
            open_sealed(data_key[1], dataclasses.replace(sealed, nonce=flip(sealed.nonce, index)))


@pytest.mark.parametrize(
    "change",
    [
        {"customer_ref": BOB},
        {"data_key_id": "dk_" + "0" * 32},
        {"algorithm": "XChaCha20-Poly1305 "},
        {"algorithm": "AES-256-GCM"},
        {"nonce": b"\x00" * 23},
        {"ciphertext": b""},
        {"ciphertext": b"x" * 15},
    ],
    ids=[
        "other-customer",
        "other-key-id",
        "algorithm-spelling",
        "algorithm",
        "short-nonce",
        "empty",
        "shorter-than-tag",
    ],
)
def test_changed_associated_data_or_framing_fails(data_key, change) -> None:
    sealed = dataclasses.replace(sealed_for(ALICE, data_key), **change)
    with pytest.raises(SealingError):
        open_sealed(data_key[1], sealed)


def test_a_ciphertext_moved_to_another_customer_fails_even_with_their_key(data_key) -> None:
    alices = sealed_for(ALICE, data_key)
    bob_key_id, bob_key = new_data_key()
    moved = dataclasses.replace(alices, customer_ref=BOB, data_key_id=bob_key_id)
    with pytest.raises(SealingError):
        open_sealed(bob_key, moved)
    with pytest.raises(SealingError):
        open_sealed(bob_key, alices)


def test_the_wrong_key_fails(data_key) -> None:
    sealed = sealed_for(ALICE, data_key)
    with pytest.raises(SealingError):
        open_sealed(os.urandom(32), sealed)
    with pytest.raises(SealingError):
        open_sealed(data_key[1][:31], sealed)


def test_seal_refuses_bad_inputs(data_key) -> None:
    key_id, key = data_key
    with pytest.raises(EncodingError):
        seal(key, PLAINTEXT, "alice@example.com", data_key_id=key_id)
    with pytest.raises(EncodingError):
        seal(key, PLAINTEXT, ALICE, data_key_id="dk_1")
    with pytest.raises(EncodingError):
        seal(key[:16], PLAINTEXT, ALICE, data_key_id=key_id)


def test_data_keys_are_random_and_their_ids_say_nothing_about_them() -> None:
    (first_id, first), (second_id, second) = new_data_key(), new_data_key()
    assert len(first) == 32 and first != second and first_id != second_id
    assert first.hex()[:16] not in first_id


# Customer references ---------------------------------------------------------------


def test_customer_reference_is_the_documented_sha256() -> None:
    # Pinned: erasure requests are looked up by recomputing this, forever.
    expected = hashlib.sha256(b"payledger/customer-ref/v1\x00mer_42\x00customer-alice").hexdigest()[
        :32
    ]
    assert customer_reference("mer_42", "customer-alice") == "cus_" + expected
    assert check_customer_ref(ALICE) == ALICE


def test_customer_reference_is_stable_per_merchant_and_hides_the_reference() -> None:
    assert customer_reference("mer_42", "alice@example.com") == customer_reference(
        "mer_42", "alice@example.com"
    )
    assert customer_reference("mer_42", "alice@example.com") != customer_reference(
        "mer_43", "alice@example.com"
    )
    ref = customer_reference("mer_42", "alice@example.com")
    assert "alice" not in ref and "example" not in ref
    # The separator keeps (merchant, reference) pairs apart.
    assert customer_reference("mer_4", "2x") != customer_reference("mer_42", "x")


@pytest.mark.parametrize(
    ("merchant_id", "reference"),
    [
        ("mer_42", ""),
        ("mer_42", "x" * (limits.CUSTOMER_REFERENCE_CHARS_MAX + 1)),
        ("Mer 42", "alice"),
        ("m\x00", "alice"),
    ],
)
def test_customer_reference_refuses_bad_inputs(merchant_id: str, reference: str) -> None:
    with pytest.raises(EncodingError):
        customer_reference(merchant_id, reference)


@pytest.mark.parametrize("ref", ["cus_", "cus_" + "A" * 32, "cus_" + "0" * 31, ALICE + "0"])
def test_check_customer_ref_refuses_other_strings(ref: str) -> None:
    with pytest.raises(EncodingError):
        check_customer_ref(ref)


# The file master key ----------------------------------------------------------------


def test_file_master_key_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "keys" / MASTER_KEY_FILE
    first = FileMasterKey.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(path.read_bytes()) == 32
    stored = path.read_bytes()
    again = FileMasterKey.load_or_create(path)
    assert again.key_id == first.key_id and first.key_id.startswith("mk-file-")
    assert path.read_bytes() == stored
    assert [p.name for p in path.parent.iterdir()] == [MASTER_KEY_FILE]  # no temporary left


def test_file_master_key_wraps_and_unwraps_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / MASTER_KEY_FILE
    _, data_key = new_data_key()
    blob = FileMasterKey.load_or_create(path).wrap(data_key, ALICE)
    assert data_key not in blob
    assert FileMasterKey.load_or_create(path).unwrap(blob, ALICE) == data_key


def test_a_wrapped_key_opens_only_for_its_customer_and_master(tmp_path: Path) -> None:
    master = FileMasterKey.load_or_create(tmp_path / "a.key")
    other = FileMasterKey.load_or_create(tmp_path / "b.key")
    assert master.key_id != other.key_id
    _, data_key = new_data_key()
    blob = master.wrap(data_key, ALICE)
    with pytest.raises(SealingError):
        master.unwrap(blob, BOB)
    with pytest.raises(SealingError):
        other.unwrap(blob, ALICE)
    for index in range(len(blob)):
        with pytest.raises(SealingError):
            master.unwrap(flip(blob, index), ALICE)
    with pytest.raises(SealingError):
        master.unwrap(blob[:-1], ALICE)


def test_concurrent_creation_yields_one_key(tmp_path: Path) -> None:
    path = tmp_path / "keys" / MASTER_KEY_FILE
    barrier = threading.Barrier(16)
    ids: list[str] = []

    def create() -> None:
        barrier.wait()
        ids.append(FileMasterKey.load_or_create(path).key_id)

    threads = [threading.Thread(target=create) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ids) == 16 and len(set(ids)) == 1
    assert ids[0] == FileMasterKey.load_or_create(path).key_id


def test_a_master_key_readable_by_others_or_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / MASTER_KEY_FILE
    FileMasterKey.load_or_create(path)
    path.chmod(0o640)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        FileMasterKey.load_or_create(path)
    path.chmod(0o600)
    path.write_bytes(b"short")
    with pytest.raises(ConfigurationError, match="32 bytes"):
        FileMasterKey.load_or_create(path)


def test_open_master_key_follows_the_settings(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    assert settings.effective_master_key_backend() is SignerBackend.FILE
    master = open_master_key(settings)
    assert isinstance(master, FileMasterKey)
    assert (settings.keys_dir / MASTER_KEY_FILE).exists()
    # Signing in the HSM with a file master key: the two are independent when set.
    split = Settings(state_dir=tmp_path, signer_backend="pkcs11", master_key_backend="file")
    assert split.effective_master_key_backend() is SignerBackend.FILE
    assert open_master_key(split).key_id == master.key_id
    # Unset, the master key follows the signer.
    assert Settings(signer_backend="pkcs11").effective_master_key_backend() is (
        SignerBackend.PKCS11
    )

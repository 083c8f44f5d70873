"""Signed notes, hybrid-signed checkpoints, log growth between checkpoints, and the anchoring key."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import mldsa

from ledger.config import Settings
from ledger.errors import ConfigurationError
from ledger.signing import FileSigner
from ledger.tlog.checkpoint import Checkpoint, sign_checkpoint, verify_checkpoint, verify_log_growth
from ledger.tlog.errors import InvalidNote, InvalidProof
from ledger.tlog.keys import (
    AnchoringKey,
    AnchoringPublicKey,
    load_anchoring_public_key,
    load_or_create_anchoring_key,
)
from ledger.tlog.merkle import EMPTY_ROOT
from ledger.tlog.note import (
    Ed25519NoteSigner,
    Ed25519NoteVerifier,
    MLDSA87NoteSigner,
    open_note,
    parse_note,
    sign_note,
)
from ledger.tlog.tree import MerkleTree

ORIGIN = "ledger.payledger.test/log"
ROOT = hashlib.sha256(b"some root").digest()

# golang.org/x/mod/sumdb/note, note_test.go: the reference implementation's
# PeterNeumann key and signed note. Ed25519 is deterministic, so signing the
# same text with the same key must give the same line byte for byte.
GO_VERIFIER_KEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SIGNER_KEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT
    + "\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)


def make_key(name: str = ORIGIN, seed: int = 1) -> AnchoringKey:
    return AnchoringKey(
        name,
        FileSigner(bytes([seed]) * 32),
        mldsa.MLDSA87PrivateKey.from_seed_bytes(bytes([seed + 100]) * 32),
    )


@pytest.fixture(scope="module")
def key() -> AnchoringKey:
    return make_key()


@pytest.fixture(scope="module")
def signed(key: AnchoringKey) -> str:
    return sign_checkpoint(Checkpoint(ORIGIN, 5, ROOT), key)


def line_blob(line: str) -> bytes:
    return base64.b64decode(line.split(" ")[2])


def with_line(name: str, blob: bytes) -> str:
    return f"\u2014 {name} {base64.b64encode(blob).decode()}"


def split(note: str) -> tuple[str, list[str]]:
    text, block = note.split("\n\n")
    return text + "\n", block[:-1].split("\n")


def join(text: str, lines: list[str]) -> str:
    return text + "\n" + "".join(f"{line}\n" for line in lines)


def refused(note: str | bytes, public: AnchoringPublicKey, **options: bool) -> None:
    with pytest.raises(InvalidNote):
        verify_checkpoint(note, public, **options)


# Signed notes -----------------------------------------------------------------


def test_go_reference_note_is_reproduced_and_verifies() -> None:
    raw = base64.b64decode(GO_SIGNER_KEY.split("+", 4)[4])
    assert raw[0] == 0x01  # the Ed25519 algorithm byte, then the seed
    signer = Ed25519NoteSigner("PeterNeumann", FileSigner(raw[1:]))
    name, key_hash, encoded = GO_VERIFIER_KEY.split("+", 2)
    public = base64.b64decode(encoded)
    assert public[0] == 0x01
    assert signer.key_id.hex() == key_hash
    assert sign_note(GO_TEXT, [signer]) == GO_NOTE
    verifier = Ed25519NoteVerifier(name, public[1:])
    assert open_note(GO_NOTE, [verifier]) == GO_TEXT
    with pytest.raises(InvalidNote):
        open_note(GO_NOTE.replace("cryptography", "cryptographY"), [verifier])


def test_key_ids_follow_signed_note(key: AnchoringKey) -> None:
    public = key.public
    name = ORIGIN.encode()
    ed25519_id = hashlib.sha256(name + b"\n\x01" + public.ed25519_public_key).digest()[:4]
    mldsa87_id = hashlib.sha256(
        name + b"\n\xffpayledger/note-ml-dsa-87/v1\n" + public.mldsa87_public_key
    ).digest()[:4]
    ed25519, mldsa87 = public.verifiers()
    assert (ed25519.key_id, mldsa87.key_id) == (ed25519_id, mldsa87_id)
    assert [signer.key_id for signer in key.signers()] == [ed25519_id, mldsa87_id]


def test_note_format_is_refused_when_malformed() -> None:
    file_signer = FileSigner(bytes(32))
    signer = Ed25519NoteSigner("k", file_signer)
    verifier = Ed25519NoteVerifier("k", file_signer.public_key)
    good = sign_note("hello\n", [signer])
    assert open_note(good, [verifier]) == "hello\n"
    assert open_note(good.encode(), [verifier]) == "hello\n"
    text, lines = split(good)
    for bad in (
        good.replace("\n\n", "\n"),  # no blank line
        good[:-1],  # no final newline
        good.replace("\u2014", "-"),  # hyphen, not em dash
        good.replace("\u2014 k ", "\u2014 k  "),  # two spaces
        good.replace("\u2014 k ", "\u2014 k+1 "),  # plus sign in the name
        good.replace("hello", "hel\tlo"),  # control character
        good.replace("=\n", "\n"),  # bad base64 padding
        join(text, [with_line("k", line_blob(lines[0])[:4])]),  # key ID only
        good.encode()[:-3] + b"\xff\n",  # not UTF-8
        good + "\n",  # blank line after the signatures
    ):
        with pytest.raises(InvalidNote):
            open_note(bad, [verifier])
    with pytest.raises(InvalidNote):
        open_note(good, [])  # nothing verified is never accepted
    with pytest.raises(InvalidNote):
        sign_note("no newline", [signer])


def test_non_canonical_base64_is_refused() -> None:
    file_signer = FileSigner(bytes(32))
    signer = Ed25519NoteSigner("k", file_signer)
    verifier = Ed25519NoteVerifier("k", file_signer.public_key)
    good = sign_note("hello\n", [signer])
    text, lines = split(good)
    encoded = lines[0].split(" ")[2]
    # 68 bytes encode to 92 characters with "=" padding; the last data character
    # carries 4 unused bits, which canonical base64 sets to zero.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = encoded[-2]
    sloppy = encoded[:-2] + alphabet[alphabet.index(last) | 1] + "="
    assert base64.b64decode(sloppy) == base64.b64decode(encoded)
    with pytest.raises(InvalidNote):
        open_note(join(text, [f"\u2014 k {sloppy}"]), [verifier])


def test_note_limits() -> None:
    signers = [
        Ed25519NoteSigner(f"k{index}", FileSigner(bytes([index]) * 32)) for index in range(17)
    ]
    with pytest.raises(InvalidNote):
        sign_note("hello\n", signers)
    note = sign_note("hello\n", signers[:16])
    assert len(parse_note(note)[1]) == 16
    text, lines = split(note)
    with pytest.raises(InvalidNote):
        parse_note(join(text, [*lines, lines[0]]))
    with pytest.raises(InvalidNote):
        parse_note("x" * 140_000 + "\n\n" + lines[0] + "\n")


# Checkpoints --------------------------------------------------------------------


def test_checkpoint_text_is_the_c2sp_form() -> None:
    checkpoint = Checkpoint(ORIGIN, 20852163, ROOT)
    expected = f"{ORIGIN}\n20852163\n{base64.b64encode(ROOT).decode()}\n"
    assert checkpoint.text() == expected
    assert Checkpoint.parse(expected) == checkpoint
    assert (
        Checkpoint(ORIGIN, 0, EMPTY_ROOT).text()
        == f"{ORIGIN}\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n"
    )
    with_extension = Checkpoint(ORIGIN, 1, ROOT, ("ext one",))
    assert Checkpoint.parse(with_extension.text()) == with_extension


@pytest.mark.parametrize(
    "text",
    [
        f"{ORIGIN}\n05\n{base64.b64encode(ROOT).decode()}\n",
        f"{ORIGIN}\n+5\n{base64.b64encode(ROOT).decode()}\n",
        f"{ORIGIN}\n 5\n{base64.b64encode(ROOT).decode()}\n",
        f"{ORIGIN}\n\uff15\n{base64.b64encode(ROOT).decode()}\n",
        f"{ORIGIN}\n-1\n{base64.b64encode(ROOT).decode()}\n",
        f"{ORIGIN}\n{2**63}\n{base64.b64encode(ROOT).decode()}\n",
        f"{ORIGIN}\n5\n{base64.b64encode(ROOT).decode()}",
        f"{ORIGIN}\n5\n",
        f"\n5\n{base64.b64encode(ROOT).decode()}\n",
        f"{ORIGIN}\n5\n{base64.b64encode(ROOT[:31]).decode()}\n",
        f"{ORIGIN}\n5\n{base64.b64encode(ROOT).decode().rstrip('=')}\n",
        f"{ORIGIN}\n5\n{base64.b64encode(ROOT).decode()}\n\n",
    ],
)
def test_malformed_checkpoint_text_is_refused(text: str) -> None:
    with pytest.raises(InvalidNote):
        Checkpoint.parse(text)


def test_signed_checkpoint_verifies_with_both_lines(key: AnchoringKey, signed: str) -> None:
    assert verify_checkpoint(signed, key.public) == Checkpoint(ORIGIN, 5, ROOT)
    text, lines = split(signed)
    assert text == Checkpoint(ORIGIN, 5, ROOT).text()
    assert len(lines) == 2
    ed25519, mldsa87 = key.public.verifiers()
    assert line_blob(lines[0])[:4] == ed25519.key_id and len(line_blob(lines[0])) == 4 + 64
    assert line_blob(lines[1])[:4] == mldsa87.key_id and len(line_blob(lines[1])) == 4 + 4627
    assert all(line.startswith(f"\u2014 {ORIGIN} ") for line in lines)
    # The lines verify with the public keys alone, outside the note code.
    mldsa.MLDSA87PublicKey.from_public_bytes(key.public.mldsa87_public_key).verify(
        line_blob(lines[1])[4:], text.encode()
    )


def test_any_one_byte_change_of_the_text_is_refused(key: AnchoringKey, signed: str) -> None:
    text, lines = split(signed)
    for position in range(len(text)):
        for replacement in {"0", "x", "\n"} - {text[position]}:
            changed = text[:position] + replacement + text[position + 1 :]
            refused(join(changed, lines), key.public)


def test_both_signatures_are_required(key: AnchoringKey, signed: str) -> None:
    text, (ed25519_line, mldsa87_line) = split(signed)
    refused(join(text, [ed25519_line]), key.public)
    refused(join(text, [mldsa87_line]), key.public)
    refused(join(text, [ed25519_line]), key.public, ignore_unknown=True)
    # Each line replaced by a valid signature of other text under the right key ID.
    other = sign_checkpoint(Checkpoint(ORIGIN, 6, ROOT), key)
    _, (other_ed25519, other_mldsa87) = split(other)
    refused(join(text, [other_ed25519, mldsa87_line]), key.public)
    refused(join(text, [ed25519_line, other_mldsa87]), key.public)
    # Swapping the order of the lines is fine: each line names its key.
    assert verify_checkpoint(join(text, [mldsa87_line, ed25519_line]), key.public).size == 5


def test_altered_signature_lines_are_refused(key: AnchoringKey, signed: str) -> None:
    text, lines = split(signed)
    for index, line in enumerate(lines):
        blob = line_blob(line)
        for position in (0, 3, 4, len(blob) // 2, len(blob) - 1):  # key ID and signature bytes
            altered = blob[:position] + bytes([blob[position] ^ 0x40]) + blob[position + 1 :]
            changed = lines.copy()
            changed[index] = with_line(ORIGIN, altered)
            refused(join(text, changed), key.public)
            refused(join(text, changed), key.public, ignore_unknown=True)
        renamed = lines.copy()
        renamed[index] = with_line(ORIGIN + "x", blob)
        refused(join(text, renamed), key.public)


def test_duplicate_and_unknown_lines(key: AnchoringKey, signed: str) -> None:
    text, lines = split(signed)
    refused(join(text, [*lines, lines[0]]), key.public)
    refused(join(text, [*lines, lines[1]]), key.public, ignore_unknown=True)
    # A third line from another key: refused by default, skipped on request.
    stranger = MLDSA87NoteSigner("witness.example/w1", mldsa.MLDSA87PrivateKey.generate())
    _, (cosignature,) = split(sign_note(text, [stranger]))
    refused(join(text, [*lines, cosignature]), key.public)
    assert (
        verify_checkpoint(join(text, [*lines, cosignature]), key.public, ignore_unknown=True).size
        == 5
    )


def test_another_key_or_origin_is_refused(key: AnchoringKey, signed: str) -> None:
    refused(signed, make_key(seed=2).public)
    renamed = AnchoringPublicKey(
        "other.example/log", key.public.ed25519_public_key, key.public.mldsa87_public_key
    )
    refused(signed, renamed)
    # Signed by the right keys, under the right name, for another origin.
    elsewhere = sign_note(Checkpoint("other.example/log", 5, ROOT).text(), key.signers())
    refused(elsewhere, key.public)
    with pytest.raises(InvalidNote):
        sign_checkpoint(Checkpoint("other.example/log", 5, ROOT), key)


# Log growth between checkpoints ------------------------------------------------------


def test_log_growth_is_verified(key: AnchoringKey) -> None:
    tree = MerkleTree()
    tree.append_many([b"event %d" % index for index in range(37)])
    previous = verify_checkpoint(
        sign_checkpoint(Checkpoint(ORIGIN, tree.size, tree.root()), key), key.public
    )
    tree.append_many([b"event %d" % index for index in range(37, 100)])
    current = verify_checkpoint(
        sign_checkpoint(Checkpoint(ORIGIN, tree.size, tree.root()), key), key.public
    )
    proof = tree.consistency_proof(previous.size, current.size)
    verify_log_growth(previous.size, previous.root_hash, current, proof)
    verify_log_growth(0, EMPTY_ROOT, current, [])
    verify_log_growth(current.size, current.root_hash, current, [])

    # A fork: the same size, one earlier event replaced.
    fork = MerkleTree()
    fork.append_many([b"event %d" % index if index != 3 else b"forged" for index in range(100)])
    forked = Checkpoint(ORIGIN, fork.size, fork.root())
    with pytest.raises(InvalidProof):
        verify_log_growth(previous.size, previous.root_hash, forked, fork.consistency_proof(37))
    with pytest.raises(InvalidProof):
        verify_log_growth(previous.size, previous.root_hash, forked, proof)
    # The log shrank.
    with pytest.raises(InvalidProof):
        verify_log_growth(current.size, current.root_hash, previous, [])
    # A proof for other sizes.
    with pytest.raises(InvalidProof):
        verify_log_growth(previous.size, previous.root_hash, current, tree.consistency_proof(36))
    with pytest.raises(InvalidProof):
        verify_log_growth(previous.size, previous.root_hash, current, proof[:-1])


# The anchoring key on disk -------------------------------------------------------


def test_anchoring_key_persists_with_private_files(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    first = load_or_create_anchoring_key(settings, ORIGIN)
    second = load_or_create_anchoring_key(settings, ORIGIN)
    assert first.public == second.public
    keys = tmp_path / "keys"
    assert keys.stat().st_mode & 0o077 == 0
    for name in ("anchoring-ed25519.seed", "anchoring-mldsa87.seed"):
        assert (keys / name).stat().st_mode & 0o077 == 0, name
    published = load_anchoring_public_key(keys / "anchoring.json")
    assert published == first.public
    note = sign_checkpoint(Checkpoint(ORIGIN, 1, ROOT), second)
    assert verify_checkpoint(note, published).size == 1


def test_tampered_public_key_file_is_refused(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    load_or_create_anchoring_key(settings, ORIGIN)
    path = tmp_path / "keys" / "anchoring.json"
    record = json.loads(path.read_text())
    record["ed25519_public_key"] = base64.b64encode(bytes(32)).decode()
    path.write_text(json.dumps(record))
    with pytest.raises(ConfigurationError):
        load_anchoring_public_key(path)

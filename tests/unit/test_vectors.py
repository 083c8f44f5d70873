"""The envelope wire format and signatures, pinned by tests/vectors/envelope.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ledger.errors import InvalidEnvelope, Reason
from ledger.keys import KeyRing, verify_endorsement
from ledger.keystore import endorsement_from_json, trusted_root_from_json
from ledger.signing import FileSigner
from ledger.verify import Verifier
from tests.vectors import build

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "envelope.json").read_text())


@pytest.fixture(scope="module")
def verifier() -> Verifier:
    root = trusted_root_from_json(VECTORS["root"])
    ring = KeyRing([root])
    ring.add(endorsement_from_json(VECTORS["endorsement"]))
    codec = build.codec()
    assert codec.schema.version == build.SCHEMA_VERSION == 1
    assert codec.schema_id(VECTORS["topic"]) == VECTORS["schema_id"]
    return Verifier(codec, ring)


def test_root_is_derived_from_the_seeds() -> None:
    root = trusted_root_from_json(VECTORS["root"])
    assert (
        root.ed25519_public_key
        == FileSigner(bytes.fromhex(VECTORS["root_ed25519_seed"])).public_key
    )
    verify_endorsement(endorsement_from_json(VECTORS["endorsement"]), root)


@pytest.mark.parametrize(
    ("vector", "built"),
    list(zip(VECTORS["valid"], build.envelopes(), strict=True)),
    ids=[v["description"] for v in VECTORS["valid"]],
)
def test_valid_vectors_encode_byte_for_byte(vector, built, verifier: Verifier) -> None:
    event_key = FileSigner(bytes.fromhex(VECTORS["event_key_seed"]))
    description, envelope = built
    assert description == vector["description"]
    signed, wire = verifier.codec.encode(envelope, event_key, VECTORS["topic"])
    assert wire.hex() == vector["wire"]
    assert verifier.open(bytes.fromhex(vector["wire"])) == signed


@pytest.mark.parametrize("vector", VECTORS["invalid"], ids=lambda v: v["description"])
def test_invalid_vectors_fail_with_their_reason(vector, verifier: Verifier) -> None:
    with pytest.raises(InvalidEnvelope) as caught:
        verifier.open(bytes.fromhex(vector["wire"]))
    assert caught.value.reason is Reason(vector["reason"])

"""The envelope codec and verifier: round trips, and every way a record can be bad."""

from __future__ import annotations

import json
import random
import struct
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from ledger import limits
from ledger.codec import HEADER, EnvelopeCodec
from ledger.config import Settings
from ledger.envelope import Money, PaymentCommand
from ledger.errors import EncodingError, InvalidEnvelope, Reason
from ledger.keystore import KeyStore
from ledger.signing import FileSigner
from ledger.verify import Verifier
from tests.support import events
from tests.support.fakes import MemoryRegistry

TOPIC = "payledger.commands"


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    return KeyStore(Settings(state_dir=tmp_path), clock=lambda: events.T0 - timedelta(hours=1))


@pytest.fixture
def registry() -> MemoryRegistry:
    return MemoryRegistry()


@pytest.fixture
def codec(registry: MemoryRegistry) -> EnvelopeCodec:
    return EnvelopeCodec(registry)


@pytest.fixture
def verifier(codec: EnvelopeCodec, store: KeyStore) -> Verifier:
    store.active_key()
    return Verifier(codec, store.keyring())


def _sign(codec: EnvelopeCodec, store: KeyStore, envelope=None) -> bytes:
    signer = store.active_key().signer
    _, wire = codec.encode(envelope or events.create_command(), signer, TOPIC)
    return wire


@pytest.mark.parametrize("build", [events.create_command, events.provider_event, events.audit_fact])
def test_round_trip_every_payload(build, codec, store, verifier) -> None:
    original = build()
    signed, wire = codec.encode(original, store.active_key().signer, TOPIC)
    assert wire[0] == 0
    assert struct.unpack(">I", wire[1:5])[0] == codec.schema_id(TOPIC)
    opened = verifier.open(wire)
    assert opened == signed
    assert opened.payload == original.payload
    assert len(opened.signature) == 64


def test_same_schema_same_id_in_every_topic(codec) -> None:
    assert codec.schema_id("payledger.commands") == codec.schema_id("payledger.audit-facts")


def test_flipping_any_byte_fails_verification(codec, store, verifier) -> None:
    wire = _sign(codec, store)
    for position in range(HEADER.size, len(wire)):
        tampered = bytearray(wire)
        tampered[position] ^= 0x01
        with pytest.raises(InvalidEnvelope):
            verifier.open(bytes(tampered))


def test_flipped_amount_is_a_bad_signature(codec, store, verifier) -> None:
    envelope = events.create_command(amount_minor=1050)
    wire = _sign(codec, store, envelope)
    richer = _sign(codec, store, events.create_command(amount_minor=1051))
    # Same length, one field differs: splice the forged amount into the signed record.
    diff = [i for i, (a, b) in enumerate(zip(wire, richer, strict=True)) if a != b]
    tampered = bytearray(wire)
    for index in diff:
        if index < len(wire) - 64:  # keep the original signature
            tampered[index] = richer[index]
    with pytest.raises(InvalidEnvelope) as caught:
        verifier.open(bytes(tampered))
    assert caught.value.reason in (Reason.BAD_SIGNATURE, Reason.MALFORMED)


def test_truncated_at_every_length(codec, store, verifier) -> None:
    wire = _sign(codec, store)
    for length in range(len(wire)):
        with pytest.raises(InvalidEnvelope) as caught:
            verifier.open(wire[:length])
        assert caught.value.reason in (
            Reason.TRUNCATED,
            Reason.MALFORMED,
            Reason.BAD_SIGNATURE,
            Reason.UNKNOWN_SCHEMA,
        )
    with pytest.raises(InvalidEnvelope) as caught:
        verifier.open(wire[: len(wire) // 2])
    assert caught.value.reason is Reason.TRUNCATED


def test_trailing_bytes_are_malformed(codec, store, verifier) -> None:
    with pytest.raises(InvalidEnvelope) as caught:
        verifier.open(_sign(codec, store) + b"\x00")
    assert caught.value.reason is Reason.MALFORMED


def test_bad_magic(codec, store, verifier) -> None:
    wire = bytearray(_sign(codec, store))
    wire[0] = 1
    with pytest.raises(InvalidEnvelope) as caught:
        verifier.open(bytes(wire))
    assert caught.value.reason is Reason.BAD_MAGIC


def test_unknown_schema_id(codec, store, verifier) -> None:
    wire = _sign(codec, store)
    with pytest.raises(InvalidEnvelope) as caught:
        verifier.open(HEADER.pack(0, 999) + wire[HEADER.size :])
    assert caught.value.reason is Reason.UNKNOWN_SCHEMA


def test_schema_id_of_a_non_envelope_schema(codec, registry, store, verifier) -> None:
    wire = _sign(codec, store)
    other = registry.register(
        "other-value",
        json.dumps({"type": "record", "name": "Other", "fields": [{"name": "x", "type": "long"}]}),
    )
    with pytest.raises(InvalidEnvelope) as caught:
        verifier.open(HEADER.pack(0, other) + wire[HEADER.size :])
    assert caught.value.reason is Reason.WRONG_SCHEMA


def test_unendorsed_key_is_unknown(codec, store, verifier) -> None:
    rogue = FileSigner.generate()
    _, wire = codec.encode(events.create_command(), rogue, TOPIC)
    with pytest.raises(InvalidEnvelope) as caught:
        verifier.open(wire)
    assert caught.value.reason is Reason.UNKNOWN_KEY


def test_event_recorded_after_key_expiry(codec, store, verifier) -> None:
    active = store.active_key()
    late = events.create_command(now=active.endorsement.not_after + timedelta(seconds=1))
    _, wire = codec.encode(late, active.signer, TOPIC)
    with pytest.raises(InvalidEnvelope) as caught:
        verifier.open(wire)
    assert caught.value.reason is Reason.EXPIRED_KEY


def test_event_recorded_before_key_validity(codec, store, verifier) -> None:
    active = store.active_key()
    early = events.create_command(now=active.endorsement.not_before - timedelta(seconds=1))
    _, wire = codec.encode(early, active.signer, TOPIC)
    with pytest.raises(InvalidEnvelope) as caught:
        verifier.open(wire)
    assert caught.value.reason is Reason.EXPIRED_KEY


def test_oversize_record_is_refused_both_ways(codec, store, verifier) -> None:
    with pytest.raises(InvalidEnvelope) as caught:
        verifier.open(b"\x00" * (limits.ENVELOPE_BYTES_MAX + 1))
    assert caught.value.reason is Reason.TOO_LARGE
    huge = replace(events.create_command(), producer="p" * limits.ENVELOPE_BYTES_MAX)
    with pytest.raises(EncodingError):
        codec.encode(huge, store.active_key().signer, TOPIC)


def test_random_garbage_only_ever_raises_invalid_envelope(codec, store, verifier) -> None:
    wire = _sign(codec, store)
    rng = random.Random(20261123)
    for _ in range(2000):
        body = bytearray(wire[HEADER.size :])
        for _ in range(rng.randint(1, 8)):
            body[rng.randrange(len(body))] = rng.randrange(256)
        if rng.random() < 0.3:
            body = body[: rng.randrange(len(body))]
        if bytes(body) == wire[HEADER.size :]:
            continue  # every "mutation" wrote back the byte that was there
        with pytest.raises(InvalidEnvelope):
            verifier.open(wire[: HEADER.size] + bytes(body))


def test_money_is_integer_minor_units() -> None:
    with pytest.raises(EncodingError):
        Money(10.5, "EUR")  # type: ignore[arg-type]
    with pytest.raises(EncodingError):
        Money(1, "eur")
    with pytest.raises(EncodingError):
        Money(2**63, "EUR")


def test_metadata_limits_are_errors_not_truncation() -> None:
    with pytest.raises(EncodingError):
        PaymentCommand(
            command=events.CommandKind.CREATE,
            merchant_id="m",
            idempotency_key="k",
            metadata={f"k{i}": "v" for i in range(limits.METADATA_ENTRIES_MAX + 1)},
        )

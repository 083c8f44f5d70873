"""Build tests/vectors/envelope.json. Run only for a deliberate format change."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import mldsa

from ledger import schemas
from ledger.codec import HEADER, EnvelopeCodec
from ledger.envelope import (
    AuditFact,
    CommandKind,
    Envelope,
    Money,
    PaymentCommand,
    Provider,
    ProviderEvent,
)
from ledger.keys import RootKey
from ledger.keystore import endorsement_to_json, trusted_root_to_json
from ledger.signing import FileSigner
from tests.support.fakes import MemoryRegistry

PATH = Path(__file__).with_name("envelope.json")
TOPIC = "payledger.commands"
# The vectors pin the v1 wire format: the newest schema (schemas.current()) moves
# on, and with it the schema fingerprint every signature binds.
SCHEMA_VERSION = 1
T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
ROOT_ED25519_SEED = bytes(range(32))
ROOT_MLDSA65_SEED = bytes(range(32, 64))
EVENT_KEY_SEED = hashlib.sha256(b"payledger test vector event key").digest()


def envelopes() -> list[tuple[str, Envelope]]:
    base = {
        "schema_version": 1,
        "occurred_at": T0,
        "recorded_at": T0 + timedelta(milliseconds=5),
        "producer": "payledger/ingress",
        "correlation_id": "corr-1",
    }
    return [
        (
            "create command, every optional field set",
            Envelope(
                event_id="01937a2b-0c5d-7e8f-9a0b-1c2d3e4f5a6b",
                event_type="payment.command.create",
                aggregate_id="pay_01",
                sequence=1,
                payload=PaymentCommand(
                    command=CommandKind.CREATE,
                    merchant_id="mer_1",
                    idempotency_key="idem-1",
                    provider=Provider.PAYPAL,
                    amount=Money(123456, "JPY"),
                    description="Ünïcode ✓",
                    metadata={"a": "1", "b": "2"},
                ),
                **base,
            ),
        ),
        (
            "refund command, optional fields null",
            Envelope(
                event_id="01937a2b-0c5d-7e8f-9a0b-1c2d3e4f5a6c",
                event_type="payment.command.refund",
                aggregate_id="pay_01",
                sequence=7,
                causation_id="01937a2b-0c5d-7e8f-9a0b-1c2d3e4f5a6b",
                payload=PaymentCommand(
                    command=CommandKind.REFUND, merchant_id="mer_1", idempotency_key="idem-2"
                ),
                **base,
            ),
        ),
        (
            "provider event",
            Envelope(
                event_id="01937a2b-0c5d-7e8f-9a0b-1c2d3e4f5a6d",
                event_type="provider.coinbase.charge:confirmed",
                aggregate_id="pay_02",
                sequence=3,
                payload=ProviderEvent(
                    provider=Provider.COINBASE,
                    provider_event_id="evt_9",
                    provider_event_type="charge:confirmed",
                    received_at=T0,
                    body_sha256=hashlib.sha256(b"body").digest(),
                    amount=Money(-5, "BTC"),
                ),
                **base,
            ),
        ),
        (
            "audit fact",
            Envelope(
                event_id="01937a2b-0c5d-7e8f-9a0b-1c2d3e4f5a6e",
                event_type="audit.customer.erased",
                aggregate_id="cus_7",
                sequence=1,
                payload=AuditFact(fact_type="customer.erased", actor="ops", subject="cus_7"),
                **base,
            ),
        ),
    ]


def codec() -> EnvelopeCodec:
    """A codec that writes the pinned schema version, whatever the newest one is."""
    return EnvelopeCodec(
        MemoryRegistry(), schema=schemas.load_version(schemas.SCHEMAS_DIR, SCHEMA_VERSION)
    )


def main() -> None:
    root = RootKey(
        FileSigner(ROOT_ED25519_SEED), mldsa.MLDSA65PrivateKey.from_seed_bytes(ROOT_MLDSA65_SEED)
    )
    event_key = FileSigner(EVENT_KEY_SEED)
    endorsement = root.endorse(
        event_key, not_before=T0 - timedelta(days=1), lifetime=timedelta(days=30)
    )
    pinned = codec()
    valid = []
    for description, envelope in envelopes():
        _, wire = pinned.encode(envelope, event_key, TOPIC)
        valid.append({"description": description, "wire": wire.hex()})
    first = bytes.fromhex(valid[0]["wire"])
    amount_at = first.index(bytes([0x80, 0x89, 0x0F]))  # zig-zag varint of 123456
    flipped_amount = bytearray(first)
    flipped_amount[amount_at] ^= 0x02
    flipped_signature = bytearray(first)
    flipped_signature[-1] ^= 0x80
    rogue = FileSigner(hashlib.sha256(b"nobody endorsed this").digest())
    _, rogue_wire = pinned.encode(envelopes()[0][1], rogue, TOPIC)
    invalid = [
        ("one bit of the amount flipped", bytes(flipped_amount), "bad-signature"),
        ("one bit of the signature flipped", bytes(flipped_signature), "bad-signature"),
        ("schema id changed to an unknown one", HEADER.pack(0, 2) + first[5:], "unknown-schema"),
        ("magic byte 1", b"\x01" + first[1:], "bad-magic"),
        ("cut in the middle", first[: len(first) // 2], "truncated"),
        ("one byte appended", first + b"\x00", "malformed"),
        ("signed by a key nobody endorsed", rogue_wire, "unknown-key"),
    ]
    document = {
        "topic": TOPIC,
        "schema_id": 1,
        "root_ed25519_seed": ROOT_ED25519_SEED.hex(),
        "root_mldsa65_seed": ROOT_MLDSA65_SEED.hex(),
        "event_key_seed": EVENT_KEY_SEED.hex(),
        "root": trusted_root_to_json(root.trusted),
        "endorsement": endorsement_to_json(endorsement),
        "valid": valid,
        "invalid": [{"description": d, "wire": w.hex(), "reason": r} for d, w, r in invalid],
    }
    PATH.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()

"""The auditor's streaming checks on real signed envelopes: a clean log, then each tamper."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import fastavro
import pytest

from ledger.audit import Check, Finding, LogChecker, Record
from ledger.audit.checker import _skip_varint, _string_end
from ledger.codec import Decoded, EnvelopeCodec
from ledger.config import Settings
from ledger.endorsements import endorsement_envelope
from ledger.envelope import (
    Envelope,
    Money,
    PaymentEvent,
    PaymentEventKind,
    Posting,
    PostingSide,
    Provider,
    derived_event_id,
)
from ledger.keys import KeyRing
from ledger.keystore import KeyStore
from ledger.payments.status import PaymentStatus as S
from ledger.payments.transitions import is_allowed
from ledger.signing import Signer
from ledger.verify import Verifier
from tests.support import events, payments
from tests.support.fakes import MemoryRegistry

KEYS = "payledger.keys"
PAYMENTS = "payledger.payment-events"
K = PaymentEventKind
D, C = PostingSide.DEBIT, PostingSide.CREDIT

# Payment A: Stripe, EUR, manual capture, on partition 0. Payment B: Coinbase, USD, partition 1.
PAYMENTS_SETUP = {
    "pay_a": (Provider.STRIPE, "mer_a", Money(1050, "EUR"), 0),
    "pay_b": (Provider.COINBASE, "mer_b", Money(2000, "USD"), 1),
}


def eid(label: str) -> str:
    """The event id (a UUID, as the envelope requires) named by a readable label."""
    return derived_event_id("audit-test", label)


def _postings(*legs: tuple[str, PostingSide, int, str]) -> tuple[Posting, ...]:
    return tuple(
        Posting(account, side, amount, currency) for account, side, amount, currency in legs
    )


def payment_event(
    payment_id: str,
    sequence: int,
    kind: PaymentEventKind,
    before: S | None,
    after: S,
    postings: tuple[Posting, ...] = (),
    event_id: str | None = None,
) -> Envelope:
    provider, merchant, amount, _ = PAYMENTS_SETUP[payment_id]
    return payments.payment_event(
        payment_id,
        merchant,
        amount,
        sequence,
        kind,
        before,
        after,
        postings,
        provider=provider,
        now=events.T0,
        step=timedelta(seconds=1),
        event_id=eid(event_id or f"{payment_id}-event-{sequence}"),
    )


CLEAN = {
    ("pay_a", 1): payment_event("pay_a", 1, K.CREATED, None, S.AWAITING_PAYMENT_METHOD),
    ("pay_a", 2): payment_event("pay_a", 2, K.AUTHORIZED, S.AWAITING_PAYMENT_METHOD, S.AUTHORIZED),
    ("pay_a", 3): payment_event(
        "pay_a",
        3,
        K.CAPTURED,
        S.AUTHORIZED,
        S.SUCCEEDED,
        _postings(
            ("provider:stripe:clearing", D, 1050, "EUR"),
            ("merchant:mer_a:payable", C, 1050, "EUR"),
        ),
    ),
    ("pay_a", 4): payment_event(
        "pay_a",
        4,
        K.FEE_CHARGED,
        S.SUCCEEDED,
        S.SUCCEEDED,
        _postings(
            ("merchant:mer_a:fees", D, 45, "EUR"),
            ("provider:stripe:clearing", C, 45, "EUR"),
        ),
    ),
    ("pay_b", 1): payment_event("pay_b", 1, K.CREATED, None, S.AWAITING_PAYMENT_METHOD),
    ("pay_b", 2): payment_event(
        "pay_b",
        2,
        K.CAPTURED,
        S.AWAITING_PAYMENT_METHOD,
        S.SUCCEEDED,
        _postings(
            ("provider:coinbase:clearing", D, 2000, "USD"),
            ("merchant:mer_b:payable", C, 2000, "USD"),
        ),
    ),
}
# The order the records were appended in, payments interleaved.
CLEAN_ORDER = [("pay_a", 1), ("pay_b", 1), ("pay_a", 2), ("pay_a", 3), ("pay_b", 2), ("pay_a", 4)]


@dataclass
class Ledger:
    """Signs envelopes as the producers do and lays them out as Kafka records."""

    registry: MemoryRegistry
    codec: EnvelopeCodec
    store: KeyStore
    signer: Signer
    keys_record: Record

    def wire(self, envelope: Envelope, signer: Signer | None = None) -> bytes:
        return self.codec.encode(envelope, signer or self.signer, PAYMENTS)[1]

    def log(self, envelopes: list[Envelope], signer: Signer | None = None) -> list[Record]:
        """Payment-event records, each on its payment's partition at the next offset."""
        next_offset = [0, 0]
        records = []
        for envelope in envelopes:
            partition = PAYMENTS_SETUP[envelope.aggregate_id][3]
            records.append(
                Record(
                    PAYMENTS,
                    partition,
                    next_offset[partition],
                    envelope.aggregate_id.encode(),
                    self.wire(envelope, signer),
                )
            )
            next_offset[partition] += 1
        return records

    def audit(self, records: list[Record]) -> LogChecker:
        """A fresh auditor that trusts the root alone and reads the keys topic first."""
        verifier = Verifier(EnvelopeCodec(self.registry), KeyRing([self.store.trusted_root()]))
        checker = LogChecker(verifier, payment_events_topic=PAYMENTS, keys_topic=KEYS)
        for record in [self.keys_record, *records]:
            checker.feed(record)
        return checker


def _store(state_dir: Path) -> KeyStore:
    return KeyStore(Settings(state_dir=state_dir), clock=lambda: events.T0 - timedelta(hours=1))


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    registry = MemoryRegistry()
    codec = EnvelopeCodec(registry)
    store = _store(tmp_path / "operator")
    active = store.active_key()
    _, keys_wire = codec.encode(
        endorsement_envelope(active.endorsement, "payledger/test"), active.signer, KEYS
    )
    keys_record = Record(KEYS, 0, 0, active.endorsement.key_id.encode(), keys_wire)
    return Ledger(registry, codec, store, active.signer, keys_record)


def clean_envelopes() -> list[Envelope]:
    return [CLEAN[step] for step in CLEAN_ORDER]


def located(record: Record, event_id: str | None, check: Check, reason: str) -> tuple:
    return (record.topic, record.partition, record.offset, event_id, check, reason)


def summary(findings: list[Finding]) -> list[tuple]:
    return [(f.topic, f.partition, f.offset, f.event_id, f.check, f.reason) for f in findings]


def test_the_test_log_is_legal_by_the_tables() -> None:
    for (payment_id, sequence), envelope in CLEAN.items():
        if sequence > 1:
            provider = PAYMENTS_SETUP[payment_id][0]
            before = CLEAN[(payment_id, sequence - 1)].payload
            after = envelope.payload
            assert isinstance(before, PaymentEvent) and isinstance(after, PaymentEvent)
            assert before.status_after is after.status_before
            if after.status_before is not after.status_after:
                assert is_allowed(provider, before.status_after, after.status_after)


def test_a_clean_log_has_no_finding_and_replays_the_balances(ledger: Ledger) -> None:
    checker = ledger.audit(ledger.log(clean_envelopes()))
    report = checker.finish()
    assert report.findings == []
    assert report.ok
    assert report.records == 7
    assert report.redeliveries == 0
    assert report.checked[Check.SIGNATURE] == 6
    assert report.checked[Check.ENDORSEMENT] == 1
    assert report.checked[Check.SEQUENCE] == 6
    assert report.checked[Check.TRANSITION] == 4
    assert report.checked[Check.POSTINGS_BALANCE] == 6
    rows = {(row.account, row.currency): row for row in checker.balances.rows()}
    assert {key: (row.debit_minor, row.credit_minor) for key, row in rows.items()} == {
        ("merchant:mer_a:fees", "EUR"): (45, 0),
        ("merchant:mer_a:payable", "EUR"): (0, 1050),
        ("merchant:mer_b:payable", "USD"): (0, 2000),
        ("provider:coinbase:clearing", "USD"): (2000, 0),
        ("provider:stripe:clearing", "EUR"): (1050, 45),
    }
    assert rows[("provider:stripe:clearing", "EUR")].balance_minor == 1005
    assert rows[("merchant:mer_a:payable", "EUR")].balance_minor == -1050


def test_the_report_is_json_with_stable_fields(ledger: Ledger) -> None:
    records = ledger.log(clean_envelopes())
    tampered = bytearray(records[2].value)
    tampered[-1] ^= 0x01
    records.append(replace(records[2], offset=99, value=bytes(tampered)))
    checker = ledger.audit(records)
    document = json.loads(json.dumps(checker.finish().to_json()))
    assert document["format"] == "payledger-audit-report/1"
    assert document["ok"] is False
    assert document["records"] == 8
    assert document["checks"]["signature"] == {"checked": 7, "failed": 1}
    assert set(document["checks"]) == {check.value for check in Check}
    assert document["findings"] == [
        {
            "topic": PAYMENTS,
            "partition": 0,
            "offset": 99,
            "event_id": eid("pay_a-event-2"),
            "check": "signature",
            "reason": "bad-signature",
            "detail": "",
            "where": None,
        }
    ]
    assert document["findings_dropped"] == 0
    assert document["errors"] == []
    assert document["facts"] == {}
    assert json.loads(json.dumps(checker.balances.to_json()))[0] == {
        "account": "merchant:mer_a:fees",
        "currency": "EUR",
        "debit_minor": 45,
        "credit_minor": 0,
        "balance_minor": 45,
    }


def test_a_flipped_byte_is_a_bad_signature_and_moves_no_balance(ledger: Ledger) -> None:
    records = ledger.log(clean_envelopes())
    capture = records[3]  # pay_a sequence 3
    tampered = bytearray(capture.value)
    tampered[-1] ^= 0x01  # the last byte of the signature
    bad = replace(capture, offset=10, value=bytes(tampered))
    checker = ledger.audit([*records, bad])
    assert summary(checker.finish().findings) == [
        located(bad, eid("pay_a-event-3"), Check.SIGNATURE, "bad-signature")
    ]
    assert checker.balances.get("provider:stripe:clearing", "EUR").debit_minor == 1050


def test_a_record_that_does_not_decode_is_reported(ledger: Ledger) -> None:
    records = ledger.log(clean_envelopes())
    bad = replace(records[0], offset=10, value=b"\x01" + records[0].value[1:])
    assert summary(ledger.audit([*records, bad]).finish().findings) == [
        located(bad, None, Check.DECODE, "bad-magic")
    ]


def test_a_key_no_root_endorsed_is_an_unknown_key(ledger: Ledger, tmp_path: Path) -> None:
    stranger = _store(tmp_path / "stranger").active_key().signer
    extra = payment_event("pay_a", 5, K.NOTED, S.SUCCEEDED, S.SUCCEEDED)
    forged = ledger.log([extra], signer=stranger)[0]
    forged = replace(forged, offset=4)
    assert summary(ledger.audit([*ledger.log(clean_envelopes()), forged]).finish().findings) == [
        located(forged, eid("pay_a-event-5"), Check.SIGNATURE, "unknown-key")
    ]


def test_an_endorsement_from_another_root_is_refused(ledger: Ledger, tmp_path: Path) -> None:
    stranger = _store(tmp_path / "stranger").active_key()
    _, wire = ledger.codec.encode(
        endorsement_envelope(stranger.endorsement, "payledger/test"), stranger.signer, KEYS
    )
    record = Record(KEYS, 0, 1, stranger.endorsement.key_id.encode(), wire)
    findings = ledger.audit([record]).finish().findings
    assert summary(findings) == [
        located(record, findings[0].event_id, Check.ENDORSEMENT, "bad-endorsement")
    ]


def test_a_record_out_of_sequence_is_reported_where_it_arrived(ledger: Ledger) -> None:
    order = [("pay_a", 1), ("pay_b", 1), ("pay_a", 3), ("pay_a", 2), ("pay_b", 2), ("pay_a", 4)]
    records = ledger.log([CLEAN[step] for step in order])
    late = records[3]
    assert (late.partition, late.offset) == (0, 2)
    checker = ledger.audit(records)
    assert summary(checker.finish().findings) == [
        located(late, eid("pay_a-event-2"), Check.SEQUENCE, "out-of-order")
    ]
    # Transitions are still checked in sequence order: no false finding.
    assert checker.finish().checked[Check.TRANSITION] == 4


def test_a_repeated_sequence_with_another_event_id_is_reported(ledger: Ledger) -> None:
    again = payment_event(
        "pay_a", 2, K.AUTHORIZED, S.AWAITING_PAYMENT_METHOD, S.AUTHORIZED, event_id="pay_a-other"
    )
    records = ledger.log([*clean_envelopes(), again])
    findings = ledger.audit(records).finish().findings
    assert summary(findings) == [
        located(records[-1], eid("pay_a-other"), Check.SEQUENCE, "conflicting-duplicate")
    ]
    assert f"already event {eid('pay_a-event-2')} at partition 0 offset 1" in findings[0].detail


def test_a_repeated_sequence_with_the_same_id_and_other_content_is_reported(
    ledger: Ledger,
) -> None:
    changed = payment_event("pay_b", 2, K.CAPTURED, S.AWAITING_PAYMENT_METHOD, S.PROCESSING)
    records = ledger.log([*clean_envelopes(), changed])
    checker = ledger.audit(records)
    assert summary(checker.finish().findings) == [
        located(records[-1], eid("pay_b-event-2"), Check.SEQUENCE, "conflicting-duplicate")
    ]
    # Applied once per event id, as the projections do.
    assert checker.balances.get("provider:coinbase:clearing", "USD").debit_minor == 2000


def test_a_redelivery_is_counted_not_reported(ledger: Ledger) -> None:
    records = ledger.log(clean_envelopes())
    # The same event signed again later (another recorded_at) is the same event.
    resigned = replace(CLEAN[("pay_a", 3)], recorded_at=events.T0 + timedelta(minutes=5))
    copies = [replace(records[3], offset=10), replace(ledger.log([resigned])[0], offset=11)]
    # Delivered again before the payment moved on: a producer's retry.
    checker = ledger.audit([*records[:4], *copies, *records[4:]])
    report = checker.finish()
    assert report.findings == []
    assert report.redeliveries == 2
    assert checker.balances.get("provider:stripe:clearing", "EUR").debit_minor == 1050


def test_a_valid_record_republished_after_later_events_is_reported(ledger: Ledger) -> None:
    records = ledger.log(clean_envelopes())
    later = [r for r in records[4:] if r.key == b"pay_a"]
    assert later, "the clean log has pay_a events after its sequence 3"
    copy = replace(records[3], offset=99)
    report = ledger.audit([*records, copy]).finish()
    event_id = CLEAN[("pay_a", 3)].event_id
    assert summary(report.findings) == [
        located(copy, event_id, Check.SEQUENCE, "republished"),
    ]
    assert report.redeliveries == 0


def test_an_unbalanced_posting_is_refused(ledger: Ledger) -> None:
    # The envelope model refuses unbalanced postings, so build a balanced event
    # and unbalance it after validation: the codec encodes and signs it as is.
    balanced = payment_event(
        "pay_a",
        5,
        K.REFUNDED,
        S.SUCCEEDED,
        S.PARTIALLY_REFUNDED,
        _postings(
            ("merchant:mer_a:refunds", D, 100, "EUR"),
            ("provider:stripe:clearing", C, 100, "EUR"),
        ),
    )
    assert isinstance(balanced.payload, PaymentEvent)
    object.__setattr__(balanced.payload, "postings", balanced.payload.postings[:1])
    record = replace(ledger.log([balanced])[0], offset=4)
    checker = ledger.audit([*ledger.log(clean_envelopes()), record])
    findings = checker.finish().findings
    # The decoder refuses it before its signature is even read; the finding names the cause.
    assert summary(findings) == [located(record, None, Check.POSTINGS_BALANCE, "unbalanced")]
    assert "postings do not balance in EUR" in findings[0].detail
    assert checker.balances.get("merchant:mer_a:refunds", "EUR").debit_minor == 0


class _LenientCodec(EnvelopeCodec):
    """A decoder that lets one unbalanced event through, as an older or buggy one might."""

    def decode(self, wire: bytes) -> Decoded:
        decoded = super().decode(wire)
        payload = decoded.envelope.payload
        if isinstance(payload, PaymentEvent) and payload.kind is K.REFUNDED:
            unbalanced = replace(payload)
            object.__setattr__(unbalanced, "postings", payload.postings[:1])
            return replace(decoded, envelope=replace(decoded.envelope, payload=unbalanced))
        return decoded


def test_the_auditor_checks_balance_itself(ledger: Ledger) -> None:
    refund = payment_event(
        "pay_a",
        5,
        K.REFUNDED,
        S.SUCCEEDED,
        S.PARTIALLY_REFUNDED,
        _postings(
            ("merchant:mer_a:refunds", D, 100, "EUR"),
            ("provider:stripe:clearing", C, 100, "EUR"),
        ),
    )
    records = ledger.log([*clean_envelopes(), refund])
    verifier = Verifier(_LenientCodec(ledger.registry), KeyRing([ledger.store.trusted_root()]))
    checker = LogChecker(verifier, payment_events_topic=PAYMENTS, keys_topic=KEYS)
    for record in [ledger.keys_record, *records]:
        checker.feed(record)
    assert summary(checker.finish().findings) == [
        located(records[-1], eid("pay_a-event-5"), Check.POSTINGS_BALANCE, "unbalanced")
    ]


def test_an_illegal_transition_is_reported(ledger: Ledger) -> None:
    assert not is_allowed(Provider.STRIPE, S.SUCCEEDED, S.CANCELED)
    illegal = payment_event("pay_a", 5, K.CANCELED, S.SUCCEEDED, S.CANCELED)
    records = ledger.log([*clean_envelopes(), illegal])
    findings = ledger.audit(records).finish().findings
    assert summary(findings) == [
        located(records[-1], eid("pay_a-event-5"), Check.TRANSITION, "not-allowed")
    ]
    assert "SUCCEEDED -> CANCELED is not allowed for STRIPE" in findings[0].detail


def test_an_event_that_does_not_start_from_the_previous_status_is_reported(
    ledger: Ledger,
) -> None:
    skewed = payment_event("pay_a", 5, K.REFUNDED, S.AUTHORIZED, S.REFUNDED)
    records = ledger.log([*clean_envelopes(), skewed])
    assert summary(ledger.audit(records).finish().findings) == [
        located(records[-1], eid("pay_a-event-5"), Check.TRANSITION, "status-chain")
    ]


def test_a_gap_and_a_missing_first_event_are_found_at_the_end(ledger: Ledger) -> None:
    order = [("pay_a", 1), ("pay_b", 2), ("pay_a", 3), ("pay_a", 4)]
    records = ledger.log([CLEAN[step] for step in order])
    checker = ledger.audit(records)
    assert summary(checker.finish().findings) == [
        located(records[2], eid("pay_a-event-3"), Check.SEQUENCE, "gap"),
        located(records[1], eid("pay_b-event-2"), Check.SEQUENCE, "no-first-event"),
    ]


def test_a_record_keyed_by_another_payment_is_reported(ledger: Ledger) -> None:
    records = ledger.log(clean_envelopes())
    records[2] = replace(records[2], key=b"pay_b")
    assert summary(ledger.audit(records).finish().findings) == [
        located(records[2], eid("pay_a-event-2"), Check.RECORD_KEY, "key-mismatch")
    ]


def test_a_payment_split_across_partitions_is_reported(ledger: Ledger) -> None:
    records = ledger.log(clean_envelopes())
    records[5] = replace(records[5], partition=1, offset=7)
    assert summary(ledger.audit(records).finish().findings) == [
        located(records[5], eid("pay_a-event-4"), Check.PARTITION, "split-partition")
    ]


def test_findings_past_the_limit_are_counted(ledger: Ledger) -> None:
    verifier = Verifier(EnvelopeCodec(ledger.registry), KeyRing([ledger.store.trusted_root()]))
    checker = LogChecker(verifier, payment_events_topic=PAYMENTS, keys_topic=KEYS, findings_max=2)
    for offset in range(5):
        checker.feed(Record(PAYMENTS, 0, offset, b"pay_a", b"\x00"))
    report = checker.finish()
    assert len(report.findings) == 2
    assert report.findings_dropped == 3
    assert report.failed[Check.DECODE] == 5
    assert not report.ok


def test_an_event_id_reused_by_another_payment_is_reported(ledger: Ledger) -> None:
    borrowed = payment_event(
        "pay_b", 3, K.NOTED, S.SUCCEEDED, S.SUCCEEDED, event_id="pay_a-event-3"
    )
    records = ledger.log([*clean_envelopes(), borrowed])
    assert summary(ledger.audit(records).finish().findings) == [
        located(records[-1], eid("pay_a-event-3"), Check.EVENT_ID, "reused")
    ]


@pytest.mark.parametrize("length", [0, 1, 63, 64, 127, 128, 8191, 8192, 70_000])
def test_avro_strings_are_skipped_whatever_their_length(length: int) -> None:
    out = io.BytesIO()
    fastavro.schemaless_writer(
        out,
        fastavro.parse_schema(
            {
                "type": "record",
                "name": "T",
                "fields": [{"name": "s", "type": "string"}, {"name": "n", "type": "long"}],
            }
        ),
        {"s": "é" * length, "n": -(2**62)},
    )
    data = b"pad" + out.getvalue()
    after_string = _string_end(data, 3)
    assert data[3:after_string].endswith(("é" * length).encode())
    assert _skip_varint(data, after_string) == len(data)


def test_a_resigned_copy_with_a_long_producer_name_is_still_a_redelivery(ledger: Ledger) -> None:
    records = ledger.log(clean_envelopes())
    resigned = replace(
        CLEAN[("pay_a", 3)], producer="p" * 200, recorded_at=events.T0 + timedelta(minutes=5)
    )
    copy = replace(ledger.log([resigned])[0], offset=11)
    report = ledger.audit([*records[:4], copy, *records[4:]]).finish()
    assert report.findings == []
    assert report.redeliveries == 1

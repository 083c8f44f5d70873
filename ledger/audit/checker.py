"""The streaming checks of one pass over the ledger log.

Feed every record, topic by topic from offset 0, the keys topic first (an
event key is trusted only once its endorsement was read), then call
``finish``. Each record is checked as it arrives:

* it decodes with its registered schema (``decode``), and its signature
  verifies through event key -> endorsement -> root (``signature``); on the
  keys topic, it is an endorsement signed by a trusted root (``endorsement``);
* its Kafka key is the envelope's aggregate id, or on the keys topic the
  endorsed key id (``record-key``);
* on the payment-events topic, the event's postings balance per currency
  (``postings-balance``), and per payment: sequence numbers neither repeat
  with other content nor step back (``sequence``), each event id names one
  event (``event-id``), each status change is in the provider's transition
  table and starts from the previous status (``transition``), the provider
  never changes (``provider``) and every event is on one partition
  (``partition``).

A record that fails to decode or verify is reported and checked no further.
``finish`` adds what only the whole log can tell: sequence numbers that never
started at 1, and gaps that no later record filled.

A redelivery (the same event id and the same content at a payment's sequence
number already seen, before any later sequence number of that payment) is
counted, not reported; the same event again after a later one is a copy
re-published out of sequence, and reported. Content is everything the
event says, not when or by which key it was signed: ``recorded_at``,
``producer``, ``signing_key_id`` and ``signature`` are left out, so an event
published again after a crash is still the same event.

Balances are replayed from the postings of every verified payment event,
once per event id: the projections apply each event id once too, so the two
can be compared (``balances``).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from ledger.audit.balances import Balances
from ledger.audit.report import FINDINGS_MAX_DEFAULT, Check, Finding, Report
from ledger.codec import SIGNING_CONTEXT, Decoded, avro_length
from ledger.envelope import (
    UNBALANCED_POSTINGS,
    Envelope,
    PaymentEvent,
    Provider,
    unbalanced_currencies,
)
from ledger.errors import InvalidEnvelope
from ledger.payments.status import PaymentStatus
from ledger.payments.transitions import is_allowed
from ledger.verify import Verifier


@dataclass(frozen=True, slots=True)
class Record:
    """One Kafka record as the auditor reads it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


@dataclass(frozen=True, slots=True)
class _Seen:
    """What the checker keeps of one payment event it accepted."""

    event_id: str
    sequence: int
    content_sha256: bytes
    partition: int
    offset: int
    status_before: PaymentStatus | None
    status_after: PaymentStatus


@dataclass(slots=True)
class _Payment:
    provider: Provider
    partition: int
    events: dict[int, _Seen] = field(default_factory=dict)
    highest_sequence: int = 0


def _fields_sha256(envelope: Envelope) -> bytes:
    """What an event says, hashed from its fields (any writer schema)."""
    # A PaymentEvent holds no mapping, so its repr is a deterministic text of
    # its values: equal events give equal digests.
    content = (
        envelope.event_type,
        envelope.schema_version,
        envelope.aggregate_id,
        envelope.sequence,
        envelope.occurred_at.isoformat(),
        envelope.correlation_id,
        envelope.causation_id,
        envelope.payload,
    )
    return hashlib.sha256(b"fields\x00" + repr(content).encode()).digest()


# An Avro long: bytes with the high bit set, then one without.
_VARINT = re.compile(rb"[\x80-\xff]*[\x00-\x7f]", re.DOTALL)


def _skip_varint(data: bytes, position: int) -> int:
    """The position past the Avro long at ``position`` (its value unread)."""
    match = _VARINT.match(data, position)
    if match is None:
        raise ValueError("truncated Avro long")
    return match.end()


def _string_end(data: bytes, position: int) -> int:
    """The position past the Avro string (or bytes) at ``position``."""
    first = data[position]
    if first < 0x80:  # a length below 64: one byte, zig-zag encoded
        return position + 1 + (first >> 1)
    end = _skip_varint(data, position)
    value = 0
    for shift, byte in enumerate(data[position:end]):
        value |= (byte & 0x7F) << (7 * shift)
    return end + ((value >> 1) ^ -(value & 1))


def _content_bytes_sha256(decoded: Decoded, fingerprint: bytes) -> bytes:
    """What an event says, hashed from its signed bytes: the fast form of ``_fields_sha256``.

    Only for an envelope written with the current schema (``fingerprint``),
    whose fields come in this order: event_id, event_type, schema_version,
    aggregate_id, sequence, occurred_at, recorded_at, producer,
    correlation_id, causation_id, payload, signing_key_id, signature. The
    digest covers every byte but those of recorded_at, producer and
    signing_key_id (and the signature, empty in the signed bytes), so an event
    signed again is the same event, as with ``_fields_sha256``. Both forms
    are tagged: one event hashed both ways never compares equal by accident
    of form, only of content, and a payment's events all share one writer in
    practice; a mixed pair is at worst reported, never silently merged.
    """
    message = decoded.signed_message
    start = len(SIGNING_CONTEXT) + len(fingerprint)
    position = _string_end(message, start)  # event_id
    position = _string_end(message, position)  # event_type
    position = _skip_varint(message, position)  # schema_version
    position = _string_end(message, position)  # aggregate_id
    position = _skip_varint(message, position)  # sequence
    position = _skip_varint(message, position)  # occurred_at
    recorded_at = position
    position = _skip_varint(message, position)  # recorded_at
    after_producer = _string_end(message, position)  # producer
    key_id = decoded.envelope.signing_key_id.encode()
    tail = len(avro_length(len(key_id))) + len(key_id) + 1  # signing_key_id, empty signature
    digest = hashlib.sha256(b"bytes\x00")
    digest.update(message[start:recorded_at])
    digest.update(message[after_producer : len(message) - tail])
    return digest.digest()


class LogChecker:
    """Checks records one at a time; ``finish`` returns the report."""

    def __init__(
        self,
        verifier: Verifier,
        *,
        payment_events_topic: str,
        keys_topic: str,
        findings_max: int = FINDINGS_MAX_DEFAULT,
    ) -> None:
        self._verifier = verifier
        self._payment_events_topic = payment_events_topic
        self._keys_topic = keys_topic
        self._report = Report(findings_max=findings_max)
        self._balances = Balances()
        self._payments: dict[str, _Payment] = {}
        self._event_ids: set[str] = set()
        self._finished = False

    @property
    def balances(self) -> Balances:
        return self._balances

    def payment_partitions(self) -> dict[str, int]:
        """Payment id -> the partition of its first event read (for checks across checkers)."""
        return {payment_id: payment.partition for payment_id, payment in self._payments.items()}

    def event_ids(self) -> set[str]:
        """The payment event ids accepted (for checks across checkers)."""
        return set(self._event_ids)

    def feed(self, record: Record) -> str | None:
        """Check one record; return its event id, or None when it does not decode."""
        if self._finished:
            raise RuntimeError("the checker has finished; start a new one")
        self._report.records += 1
        try:
            decoded = self._verifier.codec.decode(record.value)
        except InvalidEnvelope as error:
            if error.detail.startswith(UNBALANCED_POSTINGS):
                # The decoder refuses an unbalanced event outright: say so by name.
                self._find(record, None, Check.POSTINGS_BALANCE, "unbalanced", error.detail)
            else:
                self._find(record, None, Check.DECODE, error.reason.value, error.detail)
            return None
        self._report.passed(Check.DECODE)
        envelope = decoded.envelope
        if record.topic == self._keys_topic:
            self._endorsement(record, envelope)
            return envelope.event_id
        try:
            self._verifier.verify(decoded)
        except InvalidEnvelope as error:
            self._find(record, envelope.event_id, Check.SIGNATURE, error.reason.value, error.detail)
            return envelope.event_id
        self._report.passed(Check.SIGNATURE)
        self._record_key(record, envelope.event_id, envelope.aggregate_id)
        if record.topic != self._payment_events_topic:
            return envelope.event_id
        if not isinstance(envelope.payload, PaymentEvent):
            detail = f"{type(envelope.payload).__name__} on the payment-events topic"
            self._find(record, envelope.event_id, Check.DECODE, "unexpected-payload", detail)
            return envelope.event_id
        self._payment_event(record, decoded, envelope.payload)
        return envelope.event_id

    def finish(self) -> Report:
        """Run the end-of-log checks and return the report (once)."""
        if not self._finished:
            self._finished = True
            for payment_id, payment in self._payments.items():
                self._gaps(payment_id, payment)
        return self._report

    # One record -------------------------------------------------------------

    def _endorsement(self, record: Record, envelope: Envelope) -> None:
        try:
            endorsement = self._verifier.admit_endorsement(record.value)
        except InvalidEnvelope as error:
            self._find(
                record, envelope.event_id, Check.ENDORSEMENT, error.reason.value, error.detail
            )
            return
        self._report.passed(Check.ENDORSEMENT)
        self._record_key(record, envelope.event_id, endorsement.key_id)

    def _record_key(self, record: Record, event_id: str, expected: str) -> None:
        if record.key == expected.encode():
            self._report.passed(Check.RECORD_KEY)
            return
        shown = "no key" if record.key is None else repr(record.key[:80])
        self._find(record, event_id, Check.RECORD_KEY, "key-mismatch", f"{shown}, not {expected!r}")

    def _content_sha256(self, decoded: Decoded) -> bytes:
        fingerprint = self._verifier.codec.schema.fingerprint
        start = len(SIGNING_CONTEXT)
        if decoded.signed_message[start : start + len(fingerprint)] == fingerprint:
            return _content_bytes_sha256(decoded, fingerprint)
        return _fields_sha256(decoded.envelope)

    def _payment_event(self, record: Record, decoded: Decoded, event: PaymentEvent) -> None:
        envelope = decoded.envelope
        event_id = envelope.event_id
        unbalanced = unbalanced_currencies(event.postings)
        if unbalanced:
            detail = f"debits and credits differ in {', '.join(unbalanced)}"
            self._find(record, event_id, Check.POSTINGS_BALANCE, "unbalanced", detail)
        else:
            self._report.passed(Check.POSTINGS_BALANCE)

        payment_id = envelope.aggregate_id
        payment = self._payments.get(payment_id)
        if payment is None:
            payment = self._payments[payment_id] = _Payment(event.provider, record.partition)
        else:
            self._same_payment(record, event_id, payment, event)

        sequence = envelope.sequence
        seen = _Seen(
            event_id,
            sequence,
            self._content_sha256(decoded),
            record.partition,
            record.offset,
            event.status_before,
            event.status_after,
        )
        earlier = payment.events.get(sequence)
        if earlier is not None:
            if (earlier.event_id, earlier.content_sha256) == (seen.event_id, seen.content_sha256):
                if sequence < payment.highest_sequence:
                    # The same event again after the payment moved on: a copy
                    # re-published out of sequence, not a producer's retry.
                    detail = (
                        f"{payment_id} sequence {sequence} again after {payment.highest_sequence}; "
                        f"first at partition {earlier.partition} offset {earlier.offset}"
                    )
                    self._find(record, event_id, Check.SEQUENCE, "republished", detail)
                    return
                self._report.redeliveries += 1
                return
            detail = (
                f"{payment_id} sequence {sequence} is already event {earlier.event_id} "
                f"at partition {earlier.partition} offset {earlier.offset}"
            )
            self._find(record, event_id, Check.SEQUENCE, "conflicting-duplicate", detail)
            # One finding says it all: a reused event id here is that same conflict.
            if event_id not in self._event_ids:
                self._event_ids.add(event_id)
                self._balances.apply(event.postings)
            return
        if sequence < payment.highest_sequence:
            detail = f"{payment_id} sequence {sequence} after {payment.highest_sequence}"
            self._find(record, event_id, Check.SEQUENCE, "out-of-order", detail)
        else:
            self._report.passed(Check.SEQUENCE)
        payment.highest_sequence = max(payment.highest_sequence, sequence)
        payment.events[sequence] = seen
        self._apply_once(record, event_id, event)

        # Transitions are checked in sequence order, whatever the arrival order:
        # each pair once, when its second member arrives.
        before = payment.events.get(sequence - 1)
        if before is not None:
            self._transition(payment_id, payment, before, seen)
        after = payment.events.get(sequence + 1)
        if after is not None:
            self._transition(payment_id, payment, seen, after)

    def _same_payment(
        self, record: Record, event_id: str, payment: _Payment, event: PaymentEvent
    ) -> None:
        if event.provider is payment.provider:
            self._report.passed(Check.PROVIDER)
        else:
            detail = f"{event.provider.value}, earlier events {payment.provider.value}"
            self._find(record, event_id, Check.PROVIDER, "provider-changed", detail)
        if record.partition == payment.partition:
            self._report.passed(Check.PARTITION)
        else:
            detail = f"earlier events on partition {payment.partition}"
            self._find(record, event_id, Check.PARTITION, "split-partition", detail)

    def _apply_once(self, record: Record, event_id: str, event: PaymentEvent) -> None:
        if event_id in self._event_ids:
            detail = f"event id already names another {event.payment_id} event or payment"
            self._find(record, event_id, Check.EVENT_ID, "reused", detail)
            return
        self._report.passed(Check.EVENT_ID)
        self._event_ids.add(event_id)
        self._balances.apply(event.postings)

    def _transition(
        self, payment_id: str, payment: _Payment, previous: _Seen, current: _Seen
    ) -> None:
        source, target = previous.status_after, current.status_after
        sequence = current.sequence
        topic = self._payment_events_topic
        where = (topic, current.partition, current.offset, current.event_id, Check.TRANSITION)
        if current.status_before is not None and current.status_before is not source:
            detail = (
                f"{payment_id} sequence {sequence} starts from {current.status_before.value}, "
                f"sequence {sequence - 1} left it {source.value}"
            )
            self._report.add(Finding(*where, "status-chain", detail))
        elif source is not target and not is_allowed(payment.provider, source, target):
            detail = (
                f"{payment_id} sequence {sequence}: {source.value} -> {target.value} "
                f"is not allowed for {payment.provider.value}"
            )
            self._report.add(Finding(*where, "not-allowed", detail))
        else:
            self._report.passed(Check.TRANSITION)

    # End of the log -----------------------------------------------------------

    def _gaps(self, payment_id: str, payment: _Payment) -> None:
        expected = 1
        for sequence in sorted(payment.events):
            if sequence != expected:
                seen = payment.events[sequence]
                if expected == 1:
                    reason = "no-first-event"
                    detail = f"{payment_id} starts at sequence {sequence}"
                else:
                    reason = "gap"
                    detail = f"{payment_id} sequences {expected} to {sequence - 1} missing"
                self._report.add(
                    Finding(
                        self._payment_events_topic,
                        seen.partition,
                        seen.offset,
                        seen.event_id,
                        Check.SEQUENCE,
                        reason,
                        detail,
                    )
                )
            expected = sequence + 1

    def _find(
        self, record: Record, event_id: str | None, check: Check, reason: str, detail: str
    ) -> None:
        self._report.add(
            Finding(record.topic, record.partition, record.offset, event_id, check, reason, detail)
        )

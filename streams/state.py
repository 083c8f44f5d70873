"""An explicit, versioned JSON (de)serializer for ``PaymentState`` in the Faust table.

The table stores bytes, never pickled objects: the value is this module's
JSON, so a state written by one release is read by the next, and a changelog
record can be inspected by hand. ``loads(dumps(s)) == s`` for every state.

The table value itself is an ``Entry`` (``dumps_entry``/``loads_entry``,
format 3): the state, the provider's references for later calls (the
payment's, its authorization's, and each capture's with what it captured and
what was refunded of it), and the provider events held until the payment's
CREATE. Older values are still read: a format-2 entry (one reference) as an
entry with no authorization or capture references, a bare format-1 state as
an entry with no reference and nothing held.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ledger.envelope import CaptureMethod, Money, Provider
from ledger.payments.machine import PaymentState
from ledger.payments.status import PaymentStatus

FORMAT_VERSION = 1


def dumps(state: PaymentState) -> bytes:
    record: dict[str, Any] = {
        "v": FORMAT_VERSION,
        "payment_id": state.payment_id,
        "merchant_id": state.merchant_id,
        "provider": state.provider.value,
        "currency": state.currency,
        "amount_minor": state.amount_minor,
        "capture_method": state.capture_method.value,
        "status": state.status.value,
        "sequence": state.sequence,
        "authorized_minor": state.authorized_minor,
        "captured_minor": state.captured_minor,
        "refunded_minor": state.refunded_minor,
        "disputed_minor": state.disputed_minor,
        "charged_back_minor": state.charged_back_minor,
        "suspense_minor": state.suspense_minor,
        "fees": [[fee.amount_minor, fee.currency] for fee in state.fees],
        "capture_final": state.capture_final,
        "dispute_id": state.dispute_id,
        "dispute_open": state.dispute_open,
        "provider_object_id": state.provider_object_id,
        "status_since": state.status_since.isoformat() if state.status_since else None,
        "seen_provider_event_ids": list(state.seen_provider_event_ids),
        "seen_command_event_ids": list(state.seen_command_event_ids),
        "seen_movement_keys": list(state.seen_movement_keys),
    }
    return json.dumps(record, separators=(",", ":"), sort_keys=True).encode()


def loads(data: bytes) -> PaymentState:
    record = json.loads(data)
    if record.get("v") != FORMAT_VERSION:
        raise ValueError(f"unknown payment state format {record.get('v')!r}")
    since = record["status_since"]
    return PaymentState(
        payment_id=record["payment_id"],
        merchant_id=record["merchant_id"],
        provider=Provider(record["provider"]),
        currency=record["currency"],
        amount_minor=record["amount_minor"],
        capture_method=CaptureMethod(record["capture_method"]),
        status=PaymentStatus(record["status"]),
        sequence=record["sequence"],
        authorized_minor=record["authorized_minor"],
        captured_minor=record["captured_minor"],
        refunded_minor=record["refunded_minor"],
        disputed_minor=record["disputed_minor"],
        charged_back_minor=record["charged_back_minor"],
        suspense_minor=record["suspense_minor"],
        fees=tuple(Money(amount, currency) for amount, currency in record["fees"]),
        capture_final=record["capture_final"],
        dispute_id=record["dispute_id"],
        dispute_open=record["dispute_open"],
        provider_object_id=record["provider_object_id"],
        status_since=datetime.fromisoformat(since) if since else None,
        seen_provider_event_ids=tuple(record["seen_provider_event_ids"]),
        seen_command_event_ids=tuple(record["seen_command_event_ids"]),
        seen_movement_keys=tuple(record["seen_movement_keys"]),
    )


# --------------------------------------------------------------------------
# The table value: the state plus what the agent keeps beside it.

ENTRY_FORMAT_VERSION = 3
_ENTRY_FORMAT_ONE_REF = 2  # before authorization and capture references were kept


@dataclass(frozen=True, slots=True)
class CaptureRef:
    """One capture the provider keeps as an object of its own (``RefKind.CAPTURE``).

    ``amount_minor`` is what it captured and ``refunded_minor`` what the
    worker's refund calls took from it since, both in the payment's minor
    units: a refund takes at most the difference from this capture.
    """

    ref: str
    amount_minor: int
    refunded_minor: int = 0

    @property
    def refundable_minor(self) -> int:
        return self.amount_minor - self.refunded_minor


@dataclass(frozen=True, slots=True)
class HeldEvent:
    """A provider event read before its payment's CREATE, kept to apply after it.

    ``value`` is the record exactly as read (the signed wire bytes): it is
    verified again when it is applied. ``topic``, ``partition`` and
    ``offset`` say where it was read, for its dead letter if it never applies.
    """

    provider_event_id: str
    topic: str
    partition: int
    offset: int
    value: bytes


@dataclass(frozen=True, slots=True)
class Entry:
    """One payment's table value.

    ``state`` is None until the CREATE is applied (only held events so far).
    The references are what the provider's successful calls returned
    (``ProviderResult.ref``), by what they name (``ProviderResult.ref_kind``):
    ``provider_ref`` the payment (PaymentIntent, charge, order),
    ``authorization_ref`` an authorization of its own, ``captures`` each
    capture of its own, oldest first. Capture and cancel take the
    authorization if there is one, else the payment; refund takes the
    captures if there are any, else the payment. The machine has no field for
    them (``provider_object_id`` is what the provider's events name, not an
    adapter's reference), so they are kept here, where they survive a
    restart. ``held`` is bounded by ``ledger.limits.STREAMS_HELD_EVENTS_*``.
    """

    state: PaymentState | None = None
    provider_ref: str | None = None
    authorization_ref: str | None = None
    captures: tuple[CaptureRef, ...] = ()
    held: tuple[HeldEvent, ...] = ()

    @property
    def held_bytes(self) -> int:
        return sum(len(held.value) for held in self.held)


def dumps_entry(entry: Entry) -> bytes:
    record: dict[str, Any] = {
        "v": ENTRY_FORMAT_VERSION,
        "state": json.loads(dumps(entry.state)) if entry.state is not None else None,
        "provider_ref": entry.provider_ref,
        "authorization_ref": entry.authorization_ref,
        "captures": [
            {
                "ref": capture.ref,
                "amount_minor": capture.amount_minor,
                "refunded_minor": capture.refunded_minor,
            }
            for capture in entry.captures
        ],
        "held": [
            {
                "provider_event_id": held.provider_event_id,
                "topic": held.topic,
                "partition": held.partition,
                "offset": held.offset,
                "value": base64.b64encode(held.value).decode("ascii"),
            }
            for held in entry.held
        ],
    }
    return json.dumps(record, separators=(",", ":"), sort_keys=True).encode()


def loads_entry(data: bytes) -> Entry:
    """An entry; a format-2 entry and a bare version-1 state are read too."""
    record = json.loads(data)
    version = record.get("v")
    if version == FORMAT_VERSION:
        return Entry(state=loads(data))
    if version not in (_ENTRY_FORMAT_ONE_REF, ENTRY_FORMAT_VERSION):
        raise ValueError(f"unknown payment table entry format {version!r}")
    if version == _ENTRY_FORMAT_ONE_REF:
        record = {**record, "authorization_ref": None, "captures": []}
    state = record["state"]
    return Entry(
        state=loads(json.dumps(state).encode()) if state is not None else None,
        provider_ref=record["provider_ref"],
        authorization_ref=record["authorization_ref"],
        captures=tuple(
            CaptureRef(
                ref=capture["ref"],
                amount_minor=capture["amount_minor"],
                refunded_minor=capture["refunded_minor"],
            )
            for capture in record["captures"]
        ),
        held=tuple(
            HeldEvent(
                provider_event_id=held["provider_event_id"],
                topic=held["topic"],
                partition=held["partition"],
                offset=held["offset"],
                value=base64.b64decode(held["value"], validate=True),
            )
            for held in record["held"]
        ),
    )

"""An explicit, versioned JSON (de)serializer for ``PaymentState`` in the Faust table.

The table stores bytes, never pickled objects: the value is this module's
JSON, so a state written by one release is read by the next, and a changelog
record can be inspected by hand. ``loads(dumps(s)) == s`` for every state.
"""

from __future__ import annotations

import json
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

"""Coinbase Commerce webhook verification against the vectors, and the normalizer."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ingress.webhooks import coinbase
from ingress.webhooks.errors import MalformedEvent, WebhookVerificationError
from ledger.envelope import Money, Provider
from tests.support.webhooks import coinbase_header

VECTORS = json.loads(
    (Path(__file__).parents[1] / "vectors" / "webhooks" / "coinbase.json").read_text()
)
CASES = VECTORS["cases"]
SECRETS = [secret.encode() for secret in VECTORS["secrets"]]
BODY = CASES[0]["body"].encode()


def verify(case: dict[str, Any], secrets: list[bytes] = SECRETS) -> None:
    coinbase.verify(case["headers"]["signature"], case["body"].encode(), secrets=secrets)


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_vector(case: dict[str, Any]) -> None:
    if case["expect"] == "ok":
        verify(case)
        return
    with pytest.raises(WebhookVerificationError) as caught:
        verify(case)
    assert caught.value.reason.partition(":")[0] == case["expect"]


def test_the_upstream_vector_from_coinbase_commerce_python() -> None:
    upstream = VECTORS["upstream"]
    body = upstream["body"].encode()
    coinbase.verify(upstream["signature"], body, secrets=[upstream["secret"].encode()])
    assert coinbase_header(upstream["secret"], body) == upstream["signature"]
    with pytest.raises(WebhookVerificationError):
        coinbase.verify(upstream["signature"], body, secrets=SECRETS)
    event = coinbase.normalize(body)
    assert event.event_id == "24934862-d980-46cb-9402-43c81b0cdba6"
    assert event.event_type == "charge:created"
    assert event.status == "NEW"
    assert event.fields["code"] == "66BEOV2A"


def test_the_vectors_cover_every_required_case() -> None:
    required = {"valid", "forged-wrong-secret", "truncated-body", "modified-body", "empty"}
    assert required <= {case["name"] for case in CASES}


def test_a_secret_rotated_out_no_longer_verifies() -> None:
    (case,) = [c for c in CASES if c["name"] == "valid-previous-secret-during-rotation"]
    verify(case)
    with pytest.raises(WebhookVerificationError, match="no-matching-signature"):
        verify(case, secrets=SECRETS[:1])


def test_no_configured_secret_refuses_everything() -> None:
    with pytest.raises(WebhookVerificationError, match="not-configured"):
        verify(CASES[0], secrets=[])


# Normalizer.


def charge_event(charge: dict[str, Any], event_type: str = "charge:confirmed") -> bytes:
    return json.dumps(
        {"id": 3, "event": {"id": "e-1", "type": event_type, "data": charge}}
    ).encode()


def test_normalize_the_vector_body() -> None:
    normalized = coinbase.normalize(BODY)
    assert normalized.provider is Provider.COINBASE
    assert normalized.event_id == "0f8c2d4e-6a1b-4c3d-9e8f-7a6b5c4d3e2f"
    assert normalized.event_type == "charge:confirmed"
    assert normalized.envelope_type == "provider.coinbase.charge:confirmed"
    assert normalized.object_id == "f765421f-2d2c-4f3e-9f1a-0e3c7d2b1a00"
    assert normalized.payment_id == "pay_01JVECTOR0003"
    assert normalized.status == "COMPLETED"
    assert normalized.amount == Money(10000, "USD")
    assert normalized.fee is None
    assert normalized.occurred_at == datetime(2026, 11, 23, 11, 59, 57, tzinfo=UTC)
    assert normalized.fields == {
        "code": "PAYLDG01",
        "api_version": "2018-03-22",
        "payment_count": "1",
        "crypto_amount": "0.00105000",
        "crypto_currency": "BTC",
        "network": "bitcoin",
        "paid_local_amount": "100.00",
    }


def test_the_event_id_not_the_delivery_id_identifies_the_event() -> None:
    first = json.loads(BODY)
    retry = {**first, "id": first["id"] + 1, "attempt_number": 2}
    assert coinbase.normalize(json.dumps(retry).encode()).event_id == first["event"]["id"]


def test_an_underpayment_keeps_its_context() -> None:
    charge = {
        "id": "c-1",
        "timeline": [{"status": "NEW"}, {"status": "UNRESOLVED", "context": "UNDERPAID"}],
        "pricing": {"local": {"amount": "25.5", "currency": "EUR"}},
    }
    normalized = coinbase.normalize(charge_event(charge, "charge:failed"))
    assert normalized.status == "UNRESOLVED"
    assert normalized.fields["context"] == "UNDERPAID"
    assert normalized.amount == Money(2550, "EUR")
    assert normalized.aggregate_id() == "coinbase:c-1"


def test_the_payment_id_is_the_one_the_adapter_sets() -> None:
    # streams.providers.coinbase creates charges with metadata.payledger_payment_id.
    charge = {"id": "c-3", "metadata": {"payledger_payment_id": "pay_1", "payment_id": "other"}}
    normalized = coinbase.normalize(charge_event(charge))
    assert normalized.payment_id == "pay_1"
    assert normalized.aggregate_id() == "pay_1"


def _paid(*values: tuple[str, str, str | None]) -> list[dict[str, Any]]:
    payments = []
    for amount, currency, status in values:
        payment: dict[str, Any] = {"value": {"local": {"amount": amount, "currency": currency}}}
        if status is not None:
            payment["status"] = status
        payments.append(payment)
    return payments


@pytest.mark.parametrize(
    ("payments", "paid"),
    [
        (_paid(("6.00", "EUR", "CONFIRMED")), "6.00"),
        (_paid(("6.00", "EUR", "CONFIRMED"), ("0.55", "EUR", None)), "6.55"),
        # Not arrived yet: not paid.
        (_paid(("6.00", "EUR", "CONFIRMED"), ("4.00", "EUR", "PENDING")), "6.00"),
        (_paid(("4.00", "EUR", "PENDING")), None),
        ([], None),
        # A sum that would leave one payment out is not given.
        (_paid(("6.00", "EUR", "CONFIRMED"), ("4.00", "USD", "CONFIRMED")), None),
        (_paid(("6.00", "EUR", "CONFIRMED"), ("1e3", "EUR", "CONFIRMED")), None),
        (_paid(("6.00", "EUR", "CONFIRMED"), ("-1.00", "EUR", "CONFIRMED")), None),
        (
            _paid(
                ("12345678901234567890.123456789012345678", "EUR", None),
                ("0.000000000000000001", "EUR", None),
            ),
            "12345678901234567890.123456789012345679",
        ),
    ],
)
def test_the_amount_paid_is_the_exact_sum_of_confirmed_local_values(
    payments: list[dict[str, Any]], paid: str | None
) -> None:
    charge = {
        "id": "c-4",
        "pricing": {"local": {"amount": "10.00", "currency": "EUR"}},
        "timeline": [{"status": "NEW"}, {"status": "UNRESOLVED", "context": "UNDERPAID"}],
        "payments": payments,
    }
    normalized = coinbase.normalize(charge_event(charge, "charge:failed"))
    assert normalized.fields.get("paid_local_amount") == paid


def test_a_crypto_local_price_is_not_money() -> None:
    charge = {"id": "c-2", "pricing": {"local": {"amount": "0.001", "currency": "BTC"}}}
    normalized = coinbase.normalize(charge_event(charge))
    assert normalized.amount is None
    assert normalized.fields["amount_unconverted"] == "0.001 BTC"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"id": 1}', "missing-field: event"),
        (b'{"id": 1, "event": {"type": "charge:created"}}', "missing-field: id"),
        (b'{"event": {"id": "e", "type": "charge created"}}', "bad-event-type: type"),
        (b"", "invalid-json"),
    ],
)
def test_malformed_events(body: bytes, reason: str) -> None:
    with pytest.raises(MalformedEvent) as caught:
        coinbase.normalize(body)
    assert caught.value.reason == reason

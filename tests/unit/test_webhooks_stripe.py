"""Stripe webhook verification against the vectors, stripe-python, and the normalizer."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import stripe as stripe_python

from ingress.webhooks import stripe
from ingress.webhooks.errors import MalformedEvent, WebhookVerificationError
from ledger.envelope import Money, Provider
from tests.support.webhooks import stripe_header

VECTORS = json.loads(
    (Path(__file__).parents[1] / "vectors" / "webhooks" / "stripe.json").read_text()
)
CASES = VECTORS["cases"]
NOW = datetime.fromtimestamp(VECTORS["now"], UTC)
SECRETS = [secret.encode() for secret in VECTORS["secrets"]]
BODY = CASES[0]["body"].encode()


def verify(case: dict[str, Any], secrets: list[bytes] = SECRETS) -> None:
    stripe.verify(
        case["headers"]["signature"],
        case["body"].encode(),
        secrets=secrets,
        now=NOW,
        tolerance_s=VECTORS["tolerance_s"],
    )


def reason_code(error: WebhookVerificationError) -> str:
    return error.reason.partition(":")[0]


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_vector(case: dict[str, Any]) -> None:
    if case["expect"] == "ok":
        verify(case)
        return
    with pytest.raises(WebhookVerificationError) as caught:
        verify(case)
    assert reason_code(caught.value) == case["expect"]
    assert not caught.value.retryable


def test_the_vectors_cover_every_required_case() -> None:
    names = {case["name"] for case in CASES}
    required = {
        "valid",
        "forged-wrong-secret",
        "stale-301s",
        "future-301s",
        "truncated-body",
        "modified-body",
        "valid-one-of-several-v1",
        "missing-t",
        "non-integer-t",
        "only-v0",
        "duplicated-t",
        "huge-header",
    }
    assert required <= names
    refused = [case for case in CASES if case["expect"] != "ok"]
    assert len(refused) >= 15


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if c["expect"] in ("ok", "no-matching-signature", "stale-timestamp")],
    ids=lambda case: case["name"],
)
def test_signatures_agree_with_stripe_python(case: dict[str, Any]) -> None:
    """stripe-python's own verifier reaches the same verdict on the signature.

    Its tolerance check uses the real clock (and ignores the future), so the
    signature alone is compared here: tolerance=None.
    """
    header, body = case["headers"]["signature"], case["body"]

    def accepted_by(secret: str) -> bool:
        try:
            stripe_python.WebhookSignature.verify_header(body, header, secret, tolerance=None)
        except stripe_python.SignatureVerificationError:
            return False
        return True

    signed = any(accepted_by(secret) for secret in VECTORS["secrets"])
    assert signed == (case["expect"] != "no-matching-signature")


def test_stripe_python_generated_headers_verify() -> None:
    header = stripe_python.WebhookSignature.generate_signature_header(
        BODY.decode(), VECTORS["secrets"][0], timestamp=VECTORS["now"]
    )
    stripe.verify(header, BODY, secrets=SECRETS, now=NOW, tolerance_s=300)


def test_a_secret_rotated_out_no_longer_verifies() -> None:
    (case,) = [c for c in CASES if c["name"] == "valid-previous-secret-during-rotation"]
    verify(case)
    with pytest.raises(WebhookVerificationError) as caught:
        verify(case, secrets=SECRETS[:1])
    assert caught.value.reason == "no-matching-signature"


def test_no_configured_secret_refuses_everything() -> None:
    with pytest.raises(WebhookVerificationError) as caught:
        verify(CASES[0], secrets=[])
    assert caught.value.reason == "not-configured"


def test_the_clock_is_the_injected_one() -> None:
    signed_at = 2_000_000_000
    header = stripe_header("whsec_fresh_secret_1", signed_at, BODY)
    secrets = [b"whsec_fresh_secret_1"]
    at_edge = datetime.fromtimestamp(signed_at + 300, UTC)
    stripe.verify(header, BODY, secrets=secrets, now=at_edge, tolerance_s=300)
    past_edge = datetime.fromtimestamp(signed_at + 301, UTC)
    with pytest.raises(WebhookVerificationError, match="stale"):
        stripe.verify(header, BODY, secrets=secrets, now=past_edge, tolerance_s=300)


# Normalizer.


def event(obj: dict[str, Any], **top: Any) -> bytes:
    document = {"id": "evt_1", "type": "payment_intent.succeeded", "created": 1_795_435_198}
    document.update(top)
    document["data"] = {"object": obj}
    return json.dumps(document).encode()


def test_normalize_the_vector_body() -> None:
    normalized = stripe.normalize(BODY)
    assert normalized.provider is Provider.STRIPE
    assert normalized.event_id == "evt_3PayledgerVector0001"
    assert normalized.event_type == "payment_intent.succeeded"
    assert normalized.envelope_type == "provider.stripe.payment_intent.succeeded"
    assert normalized.object_id == "pi_3PayledgerVector0001"
    assert normalized.payment_id == "pay_01JVECTOR0001"
    assert normalized.aggregate_id() == "pay_01JVECTOR0001"
    assert normalized.status == "succeeded"
    assert normalized.amount == Money(1050, "EUR")
    assert normalized.fee is None
    assert normalized.occurred_at == datetime.fromtimestamp(VECTORS["now"] - 2, UTC)
    assert normalized.fields == {
        "object": "payment_intent",
        "api_version": "2025-01-27.acacia",
        "livemode": "false",
        "amount_received": "1050",
    }


def test_without_our_payment_id_the_aggregate_is_the_stripe_object() -> None:
    normalized = stripe.normalize(event({"id": "pi_9", "amount": 5, "currency": "usd"}))
    assert normalized.payment_id is None
    assert normalized.aggregate_id() == "stripe:pi_9"


def test_a_foreign_payment_id_in_metadata_is_not_trusted() -> None:
    body = event({"id": "pi_9", "metadata": {"payledger_payment_id": "pay 1; DROP"}})
    assert stripe.normalize(body).aggregate_id() == "stripe:pi_9"


def test_a_long_object_id_becomes_a_stable_digest_not_a_truncation() -> None:
    first = stripe.normalize(event({"id": "pi_" + "a" * 200 + "1"})).aggregate_id()
    second = stripe.normalize(event({"id": "pi_" + "a" * 200 + "2"})).aggregate_id()
    assert len(first) == 64
    assert first.startswith("stripe:sha256:")
    assert first != second
    assert first == stripe.normalize(event({"id": "pi_" + "a" * 200 + "1"})).aggregate_id()


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        (1050, "eur", Money(1050, "EUR")),
        (500, "jpy", Money(500, "JPY")),
        (5120, "kwd", Money(5120, "KWD")),
        (5000, "mga", Money(500000, "MGA")),  # Stripe: zero-decimal; ISO 4217: two
        (0, "usd", Money(0, "USD")),
    ],
)
def test_amounts_are_iso_minor_units(amount: int, currency: str, expected: Money) -> None:
    normalized = stripe.normalize(event({"id": "pi_1", "amount": amount, "currency": currency}))
    assert normalized.amount == expected
    assert "amount_unconverted" not in normalized.fields


@pytest.mark.parametrize(
    ("amount", "currency"), [(500, "isk"), (1000, "ugx"), (5, "zzz"), (5, "euro")]
)
def test_amounts_that_cannot_be_converted_are_kept_as_text(amount: int, currency: str) -> None:
    normalized = stripe.normalize(event({"id": "pi_1", "amount": amount, "currency": currency}))
    assert normalized.amount is None
    assert normalized.fields["amount_unconverted"] == f"{amount} {currency}"


def test_a_float_or_boolean_amount_is_not_an_amount() -> None:
    for amount in (10.5, True, "1050"):
        normalized = stripe.normalize(event({"id": "pi_1", "amount": amount, "currency": "eur"}))
        assert normalized.amount is None


def test_the_fee_comes_from_an_expanded_balance_transaction() -> None:
    charge = {
        "id": "ch_1",
        "object": "charge",
        "amount": 2000,
        "currency": "usd",
        "payment_intent": "pi_1",
        "balance_transaction": {"id": "txn_1", "fee": 88, "currency": "usd"},
    }
    normalized = stripe.normalize(event(charge, type="charge.succeeded"))
    assert normalized.fee == Money(88, "USD")
    assert normalized.fields["payment_intent"] == "pi_1"
    unexpanded = stripe.normalize(event({**charge, "balance_transaction": "txn_1"}))
    assert unexpanded.fee is None


def test_the_provider_event_payload() -> None:
    received = datetime(2026, 11, 23, 12, tzinfo=UTC)
    payload = stripe.normalize(BODY).provider_event(received_at=received, body_sha256=b"\x01" * 32)
    assert payload.provider_event_id == "evt_3PayledgerVector0001"
    assert payload.provider_object_id == "pi_3PayledgerVector0001"
    assert payload.amount == Money(1050, "EUR")
    assert payload.received_at == received
    assert payload.body_sha256 == b"\x01" * 32


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "invalid-json"),
        (b"\xff\xfe", "invalid-json"),
        (b"[1, 2]", "invalid-json"),
        (b'{"id": NaN}', "invalid-json"),
        (b"[" * 100_000 + b"]" * 100_000, "invalid-json"),
        (b'{"type": "x"}', "missing-field"),
        (b'{"id": 5, "type": "x"}', "missing-field"),
        (b'{"id": "evt_1"}', "missing-field"),
        (b'{"id": "evt_1", "type": "a b"}', "bad-event-type"),
        (b'{"id": "evt_1", "type": "' + b"a" * 101 + b'"}', "bad-event-type"),
        (b'{"id": "' + b"e" * 256 + b'", "type": "x"}', "field-too-long"),
    ],
)
def test_malformed_events(body: bytes, reason: str) -> None:
    with pytest.raises(MalformedEvent) as caught:
        stripe.normalize(body)
    assert caught.value.reason.partition(":")[0] == reason

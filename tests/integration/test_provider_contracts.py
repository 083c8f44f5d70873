"""The provider contract (provider_contract.py) against each real peer, then what is
particular to each provider: PayPal's requests checked against PayPal's own
schemas and its OAuth token reuse, Coinbase's local idempotency record.
"""

from __future__ import annotations

import json
from functools import cache
from types import MappingProxyType
from typing import Any

import httpx
import jsonschema_rs
import pytest
from pydantic import SecretStr

from ledger.config import Settings
from ledger.currencies import from_minor_units
from ledger.envelope import CaptureMethod, Money, Provider
from streams.providers.base import (
    FailureKind,
    Operation,
    PaymentProvider,
    ProviderError,
    ProviderResult,
    RefKind,
)
from streams.providers.coinbase import CoinbaseProvider
from streams.providers.paypal import PayPalProvider, make_ref
from streams.providers.stripe import StripeProvider
from tests.integration.provider_contract import (
    CURRENCY,
    ContractBackend,
    ProviderContract,
    UnsupportedCall,
    new_key,
    payment,
)

pytestmark = pytest.mark.integration


def _timeouts(settings: Settings, timeout_s: float | None) -> tuple[float, float]:
    total = timeout_s if timeout_s is not None else settings.provider_timeout_s
    return total, min(settings.provider_connect_timeout_s, total)


async def _recorded(base_url: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=base_url) as client:
        response = await client.get("/__fake/requests")
        response.raise_for_status()
        requests: list[dict[str, Any]] = response.json()["requests"]
        return requests


# ---- Stripe: stripe-mock ------------------------------------------------------

# PaymentIntent and Refund statuses, as Stripe's API reference lists them.
STRIPE_INTENT_STATUSES = frozenset(
    {
        "requires_payment_method",
        "requires_confirmation",
        "requires_action",
        "processing",
        "requires_capture",
        "canceled",
        "succeeded",
    }
)
STRIPE_REFUND_STATUSES = frozenset(
    {"pending", "requires_action", "succeeded", "failed", "canceled"}
)


class StripeBackend(ContractBackend):
    provider = Provider.STRIPE
    # stripe-mock reflects the scalar parameters of a create into its answer.
    reflects_amount = frozenset({Operation.CREATE, Operation.REFUND})
    statuses = MappingProxyType(
        {
            Operation.CREATE: STRIPE_INTENT_STATUSES,
            Operation.CAPTURE: STRIPE_INTENT_STATUSES,
            Operation.CANCEL: STRIPE_INTENT_STATUSES,
            Operation.REFUND: STRIPE_REFUND_STATUSES,
        }
    )

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def make(
        self,
        *,
        base_url: str | None = None,
        good_credentials: bool = True,
        timeout_s: float | None = None,
    ) -> PaymentProvider:
        total, connect = _timeouts(self.settings, timeout_s)
        return StripeProvider(
            # stripe-mock takes any key shaped like a test secret key, and
            # answers 401 to anything else.
            api_key=self.settings.stripe_api_key if good_credentials else SecretStr("garbage"),
            base_url=base_url or self.settings.stripe_base_url(),
            timeout_s=total,
            connect_timeout_s=connect,
        )

    async def keys_seen(self, result: ProviderResult) -> set[str]:
        # stripe-mock, like Stripe, echoes the Idempotency-Key it received.
        return {result.peer_idempotency_key} if result.peer_idempotency_key else set()


class TestStripeContract(ProviderContract):
    @pytest.fixture
    def backend(self, provider_mocks: Settings) -> ContractBackend:
        return StripeBackend(provider_mocks)


# ---- PayPal: Prism on PayPal's OpenAPI files, behind the gateway --------------


@cache
def _paypal_spec(name: str) -> dict[str, Any]:
    settings = Settings()
    document: dict[str, Any] = json.loads((settings.paypal_specs_path() / name).read_text())
    return document


def _enum(spec: str, schema: str) -> frozenset[str]:
    """The status words PayPal's spec allows: a string enum, or an object's ``status`` enum."""
    node = _paypal_spec(spec)["components"]["schemas"][schema]
    return frozenset(node["enum"] if "enum" in node else node["properties"]["status"]["enum"])


ORDERS = "checkout_orders_v2.json"
PAYMENTS = "payments_payment_v2.json"


def _request_schema_validator(spec: str, path: str) -> jsonschema_rs.Validator:
    """A validator for the request body of POST ``path`` in PayPal's own spec.

    Prism validates paths, headers and security, but not request bodies in
    these files (a known Prism bug: bodies whose schemas are referenced from
    several operations pass unchecked), so the bodies are checked here.
    """
    document = _paypal_spec(spec)
    body = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
    schema = {**body["schema"], "components": document["components"]}
    return jsonschema_rs.Draft4Validator(schema)


PAYPAL_BODY_SCHEMAS = {
    "/v2/checkout/orders": (ORDERS, "/v2/checkout/orders"),
    "capture": (PAYMENTS, "/v2/payments/authorizations/{authorization_id}/capture"),
    "refund": (PAYMENTS, "/v2/payments/captures/{capture_id}/refund"),
}


class PayPalBackend(ContractBackend):
    provider = Provider.PAYPAL
    # Prism's static answers fill amounts with the word "string": nothing to compare.
    reflects_amount = frozenset()

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.statuses = {
            Operation.CREATE: _enum(ORDERS, "order_status"),
            Operation.CAPTURE: _enum(PAYMENTS, "capture_status"),
            Operation.CANCEL: _enum(PAYMENTS, "authorization_status"),
            Operation.REFUND: _enum(PAYMENTS, "refund_status"),
        }

    def make(
        self,
        *,
        base_url: str | None = None,
        good_credentials: bool = True,
        timeout_s: float | None = None,
    ) -> PaymentProvider:
        total, connect = _timeouts(self.settings, timeout_s)
        secret = self.settings.paypal_client_secret if good_credentials else SecretStr("wrong")
        return PayPalProvider(
            base_url=base_url or self.settings.paypal_base_url(),
            client_id=self.settings.paypal_client_id,
            client_secret=secret,
            timeout_s=total,
            connect_timeout_s=connect,
        )

    async def _authorization(self, adapter: PaymentProvider, created: ProviderResult) -> str:
        # The buyer approves on PayPal's page; then the merchant authorizes.
        assert isinstance(adapter, PayPalProvider)
        authorized = await adapter.authorize(created.ref, idempotency_key=new_key())
        assert authorized.ref.startswith("authorization:")
        assert authorized.status in _enum(PAYMENTS, "authorization_status")
        return authorized.ref

    async def capturable(self, provider: PaymentProvider, created: ProviderResult) -> str:
        return await self._authorization(provider, created)

    async def cancellable(self, provider: PaymentProvider, created: ProviderResult) -> str:
        return await self._authorization(provider, created)

    async def keys_seen(self, result: ProviderResult) -> set[str]:
        return {
            request["headers"].get("paypal-request-id")
            for request in await _recorded(self.settings.paypal_base_url())
            if request["method"] == "POST" and request["path"].startswith("/v2/")
        } - {None}

    async def requests_seen(self) -> int | None:
        return len(await _recorded(self.settings.paypal_base_url()))

    async def check_sent_amount(self, operation: Operation, amount: Money) -> None:
        requests = await _recorded(self.settings.paypal_base_url())
        suffix = {
            Operation.CREATE: "/v2/checkout/orders",
            Operation.CAPTURE: "/capture",
            Operation.REFUND: "/refund",
        }[operation]
        sent = next(r for r in reversed(requests) if r["path"].endswith(suffix))
        body = sent["body"]
        money = (
            body["purchase_units"][0]["amount"] if operation is Operation.CREATE else body["amount"]
        )
        value = from_minor_units(amount.amount_minor, amount.currency)
        assert money == {"currency_code": amount.currency, "value": value}
        if operation is Operation.CAPTURE:
            # A capture of part of an authorization keeps the rest open for more captures.
            assert body["final_capture"] is False

    def unsupported(self) -> list[UnsupportedCall]:
        order = make_ref("order", "5O190127TN364715T")

        async def cancel_order(adapter: PaymentProvider) -> object:
            return await adapter.cancel(order, idempotency_key=new_key())

        async def capture_part_of_order(adapter: PaymentProvider) -> object:
            return await adapter.capture(order, Money(100, CURRENCY), idempotency_key=new_key())

        return [cancel_order, capture_part_of_order]


class TestPayPalContract(ProviderContract):
    @pytest.fixture
    def backend(self, provider_mocks: Settings) -> ContractBackend:
        return PayPalBackend(provider_mocks)


async def test_paypal_requests_match_paypals_schemas(provider_mocks: Settings) -> None:
    backend = PayPalBackend(provider_mocks)
    async with backend.make() as adapter:
        assert isinstance(adapter, PayPalProvider)
        created = await adapter.create(payment(), idempotency_key=new_key())
        authorized = await adapter.authorize(created.ref, idempotency_key=new_key())
        captured = await adapter.capture(
            authorized.ref, Money(700, CURRENCY), idempotency_key=new_key()
        )
        await adapter.refund(captured.ref, None, idempotency_key=new_key())
    requests = await _recorded(provider_mocks.paypal_base_url())
    checked = 0
    for request in requests[-4:]:
        assert request["violations"] is None, request["violations"]  # Prism's own checks
        path = request["path"]
        key = path if path in PAYPAL_BODY_SCHEMAS else path.rsplit("/", 1)[-1]
        if key in PAYPAL_BODY_SCHEMAS:
            validator = _request_schema_validator(*PAYPAL_BODY_SCHEMAS[key])
            errors = [error.message for error in validator.iter_errors(request["body"])]
            assert errors == [], (path, errors)
            checked += 1
    assert checked == 3


async def test_paypal_captures_an_authorization_in_parts_and_refunds_a_capture(
    provider_mocks: Settings,
) -> None:
    async with PayPalBackend(provider_mocks).make() as adapter:
        assert isinstance(adapter, PayPalProvider)
        created = await adapter.create(payment(), idempotency_key=new_key())
        authorize_key, part_key, last_key, refund_key = (new_key() for _ in range(4))
        authorized = await adapter.authorize(created.ref, idempotency_key=authorize_key)
        part = await adapter.capture(authorized.ref, Money(600, CURRENCY), idempotency_key=part_key)
        last = await adapter.capture(
            authorized.ref, Money(450, CURRENCY), idempotency_key=last_key, final=True
        )
        refunded = await adapter.refund(part.ref, Money(100, CURRENCY), idempotency_key=refund_key)
    assert created.ref_kind is RefKind.PAYMENT
    assert authorized.ref_kind is RefKind.AUTHORIZATION
    assert (part.ref_kind, last.ref_kind) == (RefKind.CAPTURE, RefKind.CAPTURE)
    assert (refunded.ref_kind, refunded.ref) == (RefKind.CAPTURE, part.ref)
    sent = {
        request["headers"].get("paypal-request-id"): request
        for request in await _recorded(provider_mocks.paypal_base_url())
    }
    order_id = created.ref.removeprefix("order:")
    authorization_id = authorized.ref.removeprefix("authorization:")
    assert sent[authorize_key]["path"] == f"/v2/checkout/orders/{order_id}/authorize"
    assert [(sent[key]["path"], sent[key]["body"]) for key in (part_key, last_key)] == [
        (
            f"/v2/payments/authorizations/{authorization_id}/capture",
            {"final_capture": False, "amount": {"currency_code": CURRENCY, "value": "6.00"}},
        ),
        (
            f"/v2/payments/authorizations/{authorization_id}/capture",
            {"final_capture": True, "amount": {"currency_code": CURRENCY, "value": "4.50"}},
        ),
    ]
    assert sent[refund_key]["path"] == (
        f"/v2/payments/captures/{part.ref.removeprefix('capture:')}/refund"
    )
    assert all(sent[key]["violations"] is None for key in (part_key, last_key, refund_key))


async def test_paypal_schema_check_catches_a_malformed_body() -> None:
    # The check above must be able to fail: a body PayPal's schema refuses.
    validator = _request_schema_validator(*PAYPAL_BODY_SCHEMAS["/v2/checkout/orders"])
    bad = {
        "intent": "SELL",
        "purchase_units": [{"amount": {"currency_code": "USD", "value": "1,00"}}],
    }
    assert not validator.is_valid(bad)


async def test_paypal_reuses_its_access_token(provider_mocks: Settings) -> None:
    async def issued() -> int:
        async with httpx.AsyncClient(base_url=provider_mocks.paypal_base_url()) as client:
            count: int = (await client.get("/__fake/tokens")).json()["issued"]
            return count

    before = await issued()
    async with PayPalBackend(provider_mocks).make() as adapter:
        for _ in range(3):
            await adapter.create(payment(), idempotency_key=new_key())
    assert await issued() == before + 1


async def test_paypal_order_id_outside_the_spec_is_refused_as_not_retryable(
    provider_mocks: Settings,
) -> None:
    # PayPal's spec allows only upper-case letters and digits in order ids;
    # Prism enforces it with a 422, which the adapter must not retry.
    async with PayPalBackend(provider_mocks).make() as adapter:
        with pytest.raises(ProviderError) as caught:
            await adapter.capture(make_ref("order", "lower-case"), None, idempotency_key=new_key())
    assert caught.value.status_code == 422
    assert caught.value.kind is FailureKind.REJECTED
    assert not caught.value.retryable


# ---- Coinbase Commerce: the local fake -----------------------------------------

# Charge timeline statuses, as Coinbase Commerce documents them.
COINBASE_STATUSES = frozenset(
    {"NEW", "SIGNED", "PENDING", "COMPLETED", "EXPIRED", "UNRESOLVED", "RESOLVED", "CANCELED"}
)


class CoinbaseBackend(ContractBackend):
    provider = Provider.COINBASE
    supports_capture = False
    capture_method = CaptureMethod.AUTOMATIC
    reflects_amount = frozenset({Operation.CREATE})
    statuses = MappingProxyType(
        {
            Operation.CREATE: frozenset({"NEW"}),  # the fake keeps state: a new charge is NEW
            Operation.CANCEL: frozenset({"CANCELED"}),
        }
    )

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def make(
        self,
        *,
        base_url: str | None = None,
        good_credentials: bool = True,
        timeout_s: float | None = None,
    ) -> PaymentProvider:
        total, connect = _timeouts(self.settings, timeout_s)
        return CoinbaseProvider(
            base_url=base_url or self.settings.coinbase_base_url(),
            api_key=self.settings.coinbase_api_key if good_credentials else SecretStr("wrong"),
            api_version=self.settings.coinbase_api_version,
            timeout_s=total,
            connect_timeout_s=connect,
        )

    async def keys_seen(self, result: ProviderResult) -> set[str]:
        # No idempotency header exists at Coinbase: the key travels in the
        # charge's metadata.
        return {
            request["body"]["metadata"]["payledger_idempotency_key"]
            for request in await _recorded(self.settings.coinbase_base_url())
            if request["method"] == "POST" and request["path"] == "/charges" and request["body"]
        }

    async def requests_seen(self) -> int | None:
        return len(await _recorded(self.settings.coinbase_base_url()))

    async def check_sent_amount(self, operation: Operation, amount: Money) -> None:
        requests = await _recorded(self.settings.coinbase_base_url())
        sent = next(r for r in reversed(requests) if r["path"] == "/charges")
        value = from_minor_units(amount.amount_minor, amount.currency)
        assert sent["body"]["local_price"] == {"amount": value, "currency": amount.currency}
        assert sent["headers"]["x-cc-version"] == self.settings.coinbase_api_version

    def unsupported(self) -> list[UnsupportedCall]:
        async def capture(adapter: PaymentProvider) -> object:
            return await adapter.capture("a-charge", None, idempotency_key=new_key())

        async def refund(adapter: PaymentProvider) -> object:
            return await adapter.refund("a-charge", None, idempotency_key=new_key())

        async def manual_create(adapter: PaymentProvider) -> object:
            return await adapter.create(payment(CaptureMethod.MANUAL), idempotency_key=new_key())

        return [capture, refund, manual_create]


class TestCoinbaseContract(ProviderContract):
    @pytest.fixture
    def backend(self, provider_mocks: Settings) -> ContractBackend:
        return CoinbaseBackend(provider_mocks)


async def test_coinbase_repeat_with_the_same_key_is_answered_locally(
    provider_mocks: Settings,
) -> None:
    backend = CoinbaseBackend(provider_mocks)
    async with backend.make() as adapter:
        request = payment(CaptureMethod.AUTOMATIC)
        key = new_key()
        first = await adapter.create(request, idempotency_key=key)
        seen = await backend.requests_seen()
        again = await adapter.create(request, idempotency_key=key)
        assert await backend.requests_seen() == seen  # nothing sent
        assert again.ref == first.ref
        assert again.replayed and not first.replayed
        with pytest.raises(ProviderError) as caught:
            await adapter.cancel(first.ref, idempotency_key=key)  # same key, other request
        assert caught.value.kind is FailureKind.INVALID_INPUT


async def test_coinbase_client_errors_are_not_retryable(provider_mocks: Settings) -> None:
    async with CoinbaseBackend(provider_mocks).make() as adapter:
        with pytest.raises(ProviderError) as missing:
            await adapter.cancel("00000000-0000-4000-8000-000000000000", idempotency_key=new_key())
        created = await adapter.create(payment(CaptureMethod.AUTOMATIC), idempotency_key=new_key())
        await adapter.cancel(created.ref, idempotency_key=new_key())
        with pytest.raises(ProviderError) as twice:
            await adapter.cancel(created.ref, idempotency_key=new_key())
    assert (missing.value.status_code, missing.value.kind) == (404, FailureKind.NOT_FOUND)
    assert missing.value.provider_code == "not_found"
    assert (twice.value.status_code, twice.value.kind) == (400, FailureKind.REJECTED)
    assert not missing.value.retryable and not twice.value.retryable

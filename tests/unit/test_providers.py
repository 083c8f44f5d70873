"""Provider adapters without a peer: error classification, money formats, references,
OAuth token handling and the Coinbase idempotency record, over httpx.MockTransport.

The same adapters run against their real peers in
tests/integration/test_provider_contracts.py; here each failure mode is
produced on demand, which no mock server offers for all of them.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import httpx
import pytest
import stripe
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from ledger import limits
from ledger.envelope import CaptureMethod, Money, Provider
from streams.providers import provider_for
from streams.providers.base import (
    CreatePayment,
    FailureKind,
    Operation,
    PaymentProvider,
    ProviderError,
    RefKind,
    SeparateAuthorization,
    derive_idempotency_key,
    kind_for_status,
)
from streams.providers.coinbase import CoinbaseProvider, MemoryDedupStore
from streams.providers.paypal import PayPalProvider, paypal_value
from streams.providers.stripe import StripeProvider, _failure

Handler = Callable[[httpx.Request], httpx.Response]
KEY = derive_idempotency_key(uuid.UUID("01890a5d-ac96-774b-bcce-b302099a8057"))


def _payment(method: CaptureMethod = CaptureMethod.MANUAL, amount: int = 1050) -> CreatePayment:
    return CreatePayment("pay_1", Money(amount, "EUR"), method, "unit test")


def _paypal(handler: Handler) -> PayPalProvider:
    return PayPalProvider(
        base_url="http://paypal.test",
        client_id="id",
        client_secret=SecretStr("secret"),
        timeout_s=5,
        connect_timeout_s=1,
        transport=httpx.MockTransport(handler),
    )


class _HandlerClient(stripe.HTTPClient):
    """The SDK's HTTP client answered in process by ``handler`` (the real one is aiohttp)."""

    name = "unit-test-handler"

    def __init__(self, handler: Handler) -> None:
        super().__init__()
        self._handler = handler

    async def request_async(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any = None
    ) -> tuple[bytes, int, Mapping[str, str]]:
        response = self._handler(httpx.Request(method, url, headers=headers, content=post_data))
        return response.content, response.status_code, response.headers

    async def close_async(self) -> None:
        return None


def _stripe(handler: Handler) -> StripeProvider:
    return StripeProvider(
        api_key=SecretStr("sk_test_unit"),
        base_url="http://stripe.test",
        timeout_s=5,
        connect_timeout_s=1,
        http_client=_HandlerClient(handler),
    )


def _coinbase(handler: Handler, dedup: MemoryDedupStore | None = None) -> CoinbaseProvider:
    return CoinbaseProvider(
        base_url="http://coinbase.test",
        api_key=SecretStr("key"),
        api_version="2018-03-22",
        timeout_s=5,
        connect_timeout_s=1,
        dedup=dedup,
        transport=httpx.MockTransport(handler),
    )


def _token(request: httpx.Request) -> httpx.Response | None:
    if request.url.path == "/v1/oauth2/token":
        return httpx.Response(200, json={"access_token": "T1", "expires_in": 32400})
    return None


ORDER = {
    "id": "5O190127TN364715T",
    "status": "CREATED",
    "purchase_units": [{"amount": {"currency_code": "EUR", "value": "10.50"}}],
    "links": [{"rel": "approve", "href": "https://paypal.test/approve"}],
}


# ---- classification -----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "retryable"),
    [
        (400, FailureKind.REJECTED, False),
        (401, FailureKind.UNAUTHORIZED, False),
        (403, FailureKind.UNAUTHORIZED, False),
        (404, FailureKind.NOT_FOUND, False),
        (408, FailureKind.UNAVAILABLE, True),
        (409, FailureKind.UNAVAILABLE, True),
        (422, FailureKind.REJECTED, False),
        (429, FailureKind.RATE_LIMITED, True),
        (500, FailureKind.UNAVAILABLE, True),
        (503, FailureKind.UNAVAILABLE, True),
    ],
)
def test_http_status_classification(status: int, kind: FailureKind, retryable: bool) -> None:
    assert kind_for_status(status) is kind
    error = ProviderError(Provider.STRIPE, Operation.CREATE, kind, "x", status_code=status)
    assert error.retryable is retryable


@pytest.mark.parametrize(
    ("status", "body", "kind", "retryable", "code"),
    [
        (503, {"name": "INTERNAL_SERVER_ERROR"}, FailureKind.UNAVAILABLE, True, None),
        (429, {"name": "RATE_LIMIT_REACHED"}, FailureKind.RATE_LIMITED, True, None),
        (
            422,
            {"name": "UNPROCESSABLE_ENTITY", "details": [{"issue": "AMOUNT_MISMATCH"}]},
            FailureKind.REJECTED,
            False,
            "AMOUNT_MISMATCH",
        ),
    ],
)
async def test_paypal_http_errors(
    status: int, body: dict[str, object], kind: FailureKind, retryable: bool, code: str | None
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return _token(request) or httpx.Response(status, json=body, headers={"Retry-After": "7"})

    async with _paypal(handler) as adapter:
        with pytest.raises(ProviderError) as caught:
            await adapter.create(_payment(), idempotency_key=KEY)
    assert (caught.value.kind, caught.value.retryable) == (kind, retryable)
    assert caught.value.status_code == status
    assert caught.value.retry_after_s == 7
    if code is not None:
        assert caught.value.provider_code == code


@pytest.mark.parametrize(
    ("exception", "kind"),
    [
        (httpx.ReadTimeout("slow"), FailureKind.TIMEOUT),
        (httpx.ConnectTimeout("slow"), FailureKind.TIMEOUT),
        (httpx.ConnectError("refused"), FailureKind.CONNECTION),
        (httpx.RemoteProtocolError("reset"), FailureKind.CONNECTION),
    ],
)
async def test_transport_failures_are_retryable(exception: Exception, kind: FailureKind) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exception

    for adapter in (_paypal(handler), _coinbase(handler)):
        async with adapter:
            with pytest.raises(ProviderError) as caught:
                await adapter.create(_payment(CaptureMethod.AUTOMATIC), idempotency_key=KEY)
        assert caught.value.kind is kind
        assert caught.value.retryable


async def test_unreadable_success_is_a_bad_response() -> None:
    too_large = b"x" * (limits.PROVIDER_RESPONSE_BYTES_MAX + 1)
    for body in (b"<html>not json</html>", too_large):

        def handler(request: httpx.Request, body: bytes = body) -> httpx.Response:
            return _token(request) or httpx.Response(201, content=body)

        async with _paypal(handler) as adapter:
            with pytest.raises(ProviderError) as caught:
                await adapter.create(_payment(), idempotency_key=KEY)
        assert caught.value.kind is FailureKind.BAD_RESPONSE
        assert not caught.value.retryable


# ---- Stripe ---------------------------------------------------------------------


def _intent(**fields: object) -> dict[str, object]:
    return {
        "id": "pi_1",
        "object": "payment_intent",
        "amount": 1050,
        "amount_received": 0,
        "currency": "eur",
        "status": "requires_payment_method",
        **fields,
    }


async def test_stripe_request_shape_and_echo() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        headers = {"Idempotency-Key": request.headers["idempotency-key"], "Request-Id": "req_9"}
        return httpx.Response(200, json=_intent(), headers=headers)

    async with _stripe(handler) as adapter:
        result = await adapter.create(_payment(), idempotency_key=KEY)
    form = parse_qs(seen[0].content.decode())
    assert form["amount"] == ["1050"]
    assert form["currency"] == ["eur"]
    assert form["capture_method"] == ["manual"]
    assert form["metadata[payledger_payment_id]"] == ["pay_1"]
    assert seen[0].headers["idempotency-key"] == KEY
    assert result.peer_idempotency_key == KEY
    assert result.request_id == "req_9"
    assert result.amount == Money(1050, "EUR")
    assert not result.replayed


async def test_stripe_server_error_and_should_retry_header() -> None:
    responses = iter(
        [
            httpx.Response(500, json={"error": {"type": "api_error", "message": "boom"}}),
            # Stripe's own verdict beats the status code rule.
            httpx.Response(
                500,
                json={"error": {"type": "api_error", "message": "no"}},
                headers={"Stripe-Should-Retry": "false"},
            ),
            httpx.Response(
                400,
                json={"error": {"type": "idempotency_error", "message": "reused key"}},
            ),
        ]
    )
    outcomes = []
    async with _stripe(lambda request: next(responses)) as adapter:
        for _ in range(3):
            with pytest.raises(ProviderError) as caught:
                await adapter.cancel("pi_1", idempotency_key=KEY)
            outcomes.append((caught.value.kind, caught.value.retryable))
    assert outcomes == [
        (FailureKind.UNAVAILABLE, True),
        (FailureKind.UNAVAILABLE, False),
        (FailureKind.REJECTED, False),
    ]


def test_stripe_connection_errors_tell_timeouts_apart() -> None:
    for cause, kind in (
        (TimeoutError(), FailureKind.TIMEOUT),
        (aiohttp.ServerTimeoutError("slow"), FailureKind.TIMEOUT),
        (aiohttp.ClientConnectionError("refused"), FailureKind.CONNECTION),
    ):
        error = stripe.APIConnectionError("no answer", should_retry=True)  # type: ignore[no-untyped-call]
        error.__cause__ = cause
        failure = _failure(Operation.CAPTURE, error)
        assert (failure.kind, failure.retryable) == (kind, True)


async def test_stripe_three_decimal_amounts_are_multiples_of_ten() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, json=_intent())

    async with _stripe(handler) as adapter:
        with pytest.raises(ProviderError) as caught:
            await adapter.capture("pi_1", Money(1235, "KWD"), idempotency_key=KEY)
    assert caught.value.kind is FailureKind.INVALID_INPUT
    assert calls == []


# ---- PayPal ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("money", "value"),
    [
        (Money(1050, "EUR"), "10.50"),
        (Money(5, "USD"), "0.05"),
        (Money(100, "JPY"), "100"),
        (Money(1234, "BHD"), "1.234"),
        (Money(1000, "HUF"), "10"),  # PayPal: HUF in whole forints
    ],
)
def test_paypal_money(money: Money, value: str) -> None:
    assert paypal_value(Operation.CREATE, money) == {
        "currency_code": money.currency,
        "value": value,
    }


@pytest.mark.parametrize("money", [Money(1050, "HUF"), Money(0, "EUR"), Money(100, "XXX")])
def test_paypal_money_refused(money: Money) -> None:
    with pytest.raises(ProviderError) as caught:
        paypal_value(Operation.CREATE, money)
    assert caught.value.kind is FailureKind.INVALID_INPUT


async def test_paypal_create_sends_and_reads() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return _token(request) or httpx.Response(201, json=ORDER)

    async with _paypal(handler) as adapter:
        result = await adapter.create(_payment(), idempotency_key=KEY)
    token_request, create_request = seen
    assert token_request.headers["authorization"].startswith("Basic ")
    assert parse_qs(token_request.content.decode()) == {"grant_type": ["client_credentials"]}
    assert create_request.headers["authorization"] == "Bearer T1"
    assert create_request.headers["paypal-request-id"] == KEY
    assert create_request.headers["prefer"] == "return=representation"
    assert json.loads(create_request.content) == {
        "intent": "AUTHORIZE",
        "purchase_units": [
            {
                "custom_id": "pay_1",
                "amount": {"currency_code": "EUR", "value": "10.50"},
                "description": "unit test",
            }
        ],
    }
    assert result.ref == "order:5O190127TN364715T"
    assert result.amount == Money(1050, "EUR")
    assert result.customer_action_url == "https://paypal.test/approve"
    assert not result.replayed  # 201: a first call


async def test_paypal_token_is_cached_and_renewed_once_after_401() -> None:
    tokens = iter(["T1", "T2", "T3"])
    log: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/oauth2/token":
            token = next(tokens)
            log.append(f"token {token}")
            return httpx.Response(200, json={"access_token": token, "expires_in": 32400})
        bearer = request.headers["authorization"].removeprefix("Bearer ")
        log.append(f"call {bearer}")
        # T1 is revoked after two uses; T2 works.
        if bearer == "T1" and log.count("call T1") > 2:
            return httpx.Response(401, json={"error": "invalid_token"})
        return httpx.Response(201, json=ORDER)

    async with _paypal(handler) as adapter:
        for _ in range(3):
            await adapter.create(_payment(), idempotency_key=KEY)
    assert log == ["token T1", "call T1", "call T1", "call T1", "token T2", "call T2"]


async def test_paypal_persistent_401_is_not_retryable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return _token(request) or httpx.Response(401, json={"error": "invalid_token"})

    async with _paypal(handler) as adapter:
        with pytest.raises(ProviderError) as caught:
            await adapter.create(_payment(), idempotency_key=KEY)
    assert caught.value.kind is FailureKind.UNAUTHORIZED
    assert not caught.value.retryable


@pytest.mark.parametrize(
    "ref", ["5O190127TN364715T", "capture:ABC", "order:../../v1/oauth2", "order:", "order:A?B"]
)
async def test_paypal_refuses_references_it_did_not_make(ref: str) -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(500)

    async with _paypal(handler) as adapter:
        with pytest.raises(ProviderError) as caught:
            await adapter.cancel(ref, idempotency_key=KEY)
    assert caught.value.kind is FailureKind.INVALID_INPUT
    assert calls == []


def _eur(value: str) -> dict[str, str]:
    return {"currency_code": "EUR", "value": value}


class PayPalPeer:
    """Answers the Orders v2 and Payments v2 calls of a MANUAL payment, and records them."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.captures = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        token = _token(request)
        if token is not None:
            return token
        self.requests.append(request)
        path = request.url.path
        if path == "/v2/checkout/orders/5O190127TN364715T/authorize":
            authorization = {
                "id": "0VF52814937998046",
                "status": "CREATED",
                "amount": _eur("10.50"),
            }
            return httpx.Response(
                201,
                json={
                    **ORDER,
                    "status": "COMPLETED",
                    "purchase_units": [{"payments": {"authorizations": [authorization]}}],
                },
            )
        if path == "/v2/checkout/orders/5O190127TN364715T/capture":
            capture = {"id": "3C679366HH908993F", "status": "COMPLETED", "amount": _eur("10.50")}
            return httpx.Response(
                201,
                json={
                    **ORDER,
                    "status": "COMPLETED",
                    "purchase_units": [{"payments": {"captures": [capture]}}],
                },
            )
        if path == "/v2/payments/authorizations/0VF52814937998046/capture":
            self.captures += 1
            amount = json.loads(request.content).get("amount", _eur("10.50"))
            return httpx.Response(
                201,
                json={
                    "id": f"2GG279541U47193{self.captures}P",
                    "status": "COMPLETED",
                    "amount": amount,
                },
            )
        if path == "/v2/payments/authorizations/0VF52814937998046/void":
            return httpx.Response(204)
        if path == "/v2/payments/captures/2GG279541U471931P/refund":
            amount = json.loads(request.content)["amount"]
            return httpx.Response(
                201, json={"id": "1JU08902781691411", "status": "COMPLETED", "amount": amount}
            )
        return httpx.Response(404, json={"name": "RESOURCE_NOT_FOUND"})

    def sent(self) -> list[tuple[str, object, str]]:
        """(path, JSON body or None, PayPal-Request-Id) of each API call."""
        return [
            (
                request.url.path,
                json.loads(request.content) if request.content else None,
                request.headers["paypal-request-id"],
            )
            for request in self.requests
        ]


def _keys(n: int) -> list[str]:
    return [derive_idempotency_key(uuid.UUID(int=i + 1), "step") for i in range(n)]


async def test_only_paypal_authorizes_in_a_call_of_its_own() -> None:
    def unused(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no call is made")

    for adapter, separate in (
        (_paypal(unused), True),
        (_stripe(unused), False),
        (_coinbase(unused), False),
    ):
        async with adapter:
            assert isinstance(adapter, SeparateAuthorization) is separate


async def test_paypal_authorizes_then_captures_an_authorization_in_parts() -> None:
    peer = PayPalPeer()
    order = "order:5O190127TN364715T"
    authorize, part, last, rest = _keys(4)
    async with _paypal(peer) as adapter:
        authorized = await adapter.authorize(order, idempotency_key=authorize)
        first = await adapter.capture(authorized.ref, Money(600, "EUR"), idempotency_key=part)
        second = await adapter.capture(
            authorized.ref, Money(400, "EUR"), idempotency_key=last, final=True
        )
        remaining = await adapter.capture(authorized.ref, None, idempotency_key=rest)
    assert (authorized.ref, authorized.ref_kind) == (
        "authorization:0VF52814937998046",
        RefKind.AUTHORIZATION,
    )
    assert (authorized.amount, authorized.status) == (Money(1050, "EUR"), "CREATED")
    assert not authorized.replayed  # 201: a first call
    assert [(c.ref, c.ref_kind, c.amount) for c in (first, second, remaining)] == [
        ("capture:2GG279541U471931P", RefKind.CAPTURE, Money(600, "EUR")),
        ("capture:2GG279541U471932P", RefKind.CAPTURE, Money(400, "EUR")),
        ("capture:2GG279541U471933P", RefKind.CAPTURE, Money(1050, "EUR")),
    ]
    capture_path = "/v2/payments/authorizations/0VF52814937998046/capture"
    assert peer.sent() == [
        ("/v2/checkout/orders/5O190127TN364715T/authorize", {}, authorize),
        # Part of the authorization: the rest stays open for another capture.
        (capture_path, {"final_capture": False, "amount": _eur("6.00")}, part),
        (capture_path, {"final_capture": True, "amount": _eur("4.00")}, last),
        # No amount: all that is left, which is always final.
        (capture_path, {"final_capture": True}, rest),
    ]


async def test_paypal_captures_an_approved_order_in_full() -> None:
    peer = PayPalPeer()
    async with _paypal(peer) as adapter:
        captured = await adapter.capture(
            "order:5O190127TN364715T", None, idempotency_key=KEY, final=True
        )
        with pytest.raises(ProviderError) as caught:
            await adapter.capture("order:5O190127TN364715T", Money(100, "EUR"), idempotency_key=KEY)
    assert (captured.ref, captured.ref_kind) == ("capture:3C679366HH908993F", RefKind.CAPTURE)
    assert captured.amount == Money(1050, "EUR")
    assert caught.value.kind is FailureKind.UNSUPPORTED
    assert peer.sent() == [("/v2/checkout/orders/5O190127TN364715T/capture", {}, KEY)]


async def test_paypal_voids_an_authorization() -> None:
    peer = PayPalPeer()
    async with _paypal(peer) as adapter:
        voided = await adapter.cancel("authorization:0VF52814937998046", idempotency_key=KEY)
    assert (voided.ref, voided.ref_kind) == (
        "authorization:0VF52814937998046",
        RefKind.AUTHORIZATION,
    )
    assert voided.status == "VOIDED"  # 204: no representation
    assert peer.sent() == [("/v2/payments/authorizations/0VF52814937998046/void", None, KEY)]


async def test_paypal_refunds_a_capture_and_keeps_its_reference() -> None:
    peer = PayPalPeer()
    async with _paypal(peer) as adapter:
        refunded = await adapter.refund(
            "capture:2GG279541U471931P", Money(300, "EUR"), idempotency_key=KEY
        )
        with pytest.raises(ProviderError) as caught:
            await adapter.refund(
                "authorization:0VF52814937998046", Money(300, "EUR"), idempotency_key=KEY
            )
    assert (refunded.ref, refunded.ref_kind) == ("capture:2GG279541U471931P", RefKind.CAPTURE)
    assert (refunded.object_id, refunded.amount) == ("1JU08902781691411", Money(300, "EUR"))
    assert caught.value.kind is FailureKind.INVALID_INPUT, "a refund takes a capture"
    assert peer.sent() == [
        ("/v2/payments/captures/2GG279541U471931P/refund", {"amount": _eur("3.00")}, KEY)
    ]


# ---- Coinbase -------------------------------------------------------------------


def _charge(status: str = "NEW") -> dict[str, object]:
    return {
        "data": {
            "id": "7cbd7c7a-47f4-439a-b8b5-256204b3ad56",
            "hosted_url": "https://commerce.coinbase.com/charges/ABCDEFGH",
            "pricing": {"local": {"amount": "10.50", "currency": "EUR"}},
            "timeline": [{"status": "NEW"}, {"status": status}],
        }
    }


async def test_coinbase_create_sends_and_replays() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json=_charge())

    async with _coinbase(handler) as adapter:
        first = await adapter.create(_payment(CaptureMethod.AUTOMATIC), idempotency_key=KEY)
        again = await adapter.create(_payment(CaptureMethod.AUTOMATIC), idempotency_key=KEY)
    assert len(seen) == 1
    assert seen[0].headers["x-cc-api-key"] == "key"
    assert seen[0].headers["x-cc-version"] == "2018-03-22"
    body = json.loads(seen[0].content)
    assert body["local_price"] == {"amount": "10.50", "currency": "EUR"}
    assert body["metadata"] == {"payledger_payment_id": "pay_1", "payledger_idempotency_key": KEY}
    assert (first.ref, first.status, first.amount) == (
        "7cbd7c7a-47f4-439a-b8b5-256204b3ad56",
        "NEW",
        Money(1050, "EUR"),
    )
    assert not first.replayed
    assert again == dataclasses.replace(first, replayed=True)


async def test_coinbase_failed_call_is_not_recorded() -> None:
    responses = iter([httpx.Response(503, json={"error": {"type": "service_unavailable"}})])

    def handler(request: httpx.Request) -> httpx.Response:
        return next(responses, httpx.Response(201, json=_charge()))

    async with _coinbase(handler) as adapter:
        with pytest.raises(ProviderError) as caught:
            await adapter.create(_payment(CaptureMethod.AUTOMATIC), idempotency_key=KEY)
        assert caught.value.retryable
        assert caught.value.provider_code == "service_unavailable"
        retried = await adapter.create(_payment(CaptureMethod.AUTOMATIC), idempotency_key=KEY)
    assert not retried.replayed


def test_coinbase_dedup_store_is_bounded() -> None:
    store = MemoryDedupStore(entries_max=2)
    record = object()
    for key in ("a", "b", "c"):
        store.put(key, record)  # type: ignore[arg-type]
    assert store.get("a") is None
    assert store.get("b") is record and store.get("c") is record


# ---- the interface ------------------------------------------------------------------


def test_every_adapter_is_a_payment_provider() -> None:
    from ledger.config import Settings

    settings = Settings()
    for provider in Provider:
        adapter = provider_for(settings, provider)
        assert isinstance(adapter, PaymentProvider)
        assert adapter.provider is provider


def test_idempotency_keys_are_derived_deterministically() -> None:
    event = uuid.UUID("01890a5d-ac96-774b-bcce-b302099a8057")
    assert derive_idempotency_key(event) == f"payledger-{event}"
    assert derive_idempotency_key(str(event), "authorize") == f"payledger-{event}-authorize"
    assert len(derive_idempotency_key(event, "x" * 50)) <= limits.PROVIDER_IDEMPOTENCY_KEY_CHARS_MAX
    with pytest.raises(ValueError, match="too long"):
        derive_idempotency_key(event, "x" * 100)
    with pytest.raises(ValueError, match="badly formed"):
        derive_idempotency_key("not-a-uuid")


@pytest.mark.parametrize("bad", [{"payment_id": ""}, {"amount": Money(0, "EUR")}])
def test_create_payment_refuses_what_no_provider_accepts(bad: dict[str, object]) -> None:
    fields: dict[str, object] = {
        "payment_id": "pay_1",
        "amount": Money(1, "EUR"),
        "capture_method": CaptureMethod.AUTOMATIC,
        **bad,
    }
    with pytest.raises(ValueError):
        CreatePayment(**fields)  # type: ignore[arg-type]


# The Stripe adapter's own transport (aiohttp) against a local server -------------


async def _serve(handler: Callable[[web.Request], Any]) -> TestServer:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


async def test_stripe_transport_sends_the_form_and_the_key_and_reads_the_answer() -> None:
    seen: list[tuple[str, str, str | None, bytes]] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(
            (
                request.method,
                request.headers["Content-Type"],
                request.headers.get("Idempotency-Key"),
                await request.read(),
            )
        )
        return web.json_response(_intent(), headers={"Idempotency-Key": KEY})

    server = await _serve(answer)
    try:
        async with StripeProvider(
            api_key=SecretStr("sk_test_unit"),
            base_url=str(server.make_url("")).rstrip("/"),
            timeout_s=5,
            connect_timeout_s=1,
        ) as adapter:
            result = await adapter.create(_payment(), idempotency_key=KEY)
    finally:
        await server.close()
    ((method, content_type, key, body),) = seen
    assert (method, key) == ("POST", KEY)
    assert content_type.startswith("application/x-www-form-urlencoded")
    assert parse_qs(body.decode())["amount"] == ["1050"]
    assert (result.ref, result.peer_idempotency_key) == ("pi_1", KEY)


async def test_stripe_transport_refuses_a_huge_answer_and_a_redirect() -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/capture"):
            raise web.HTTPFound("http://elsewhere.test/v1/payment_intents")
        return web.Response(
            body=b" " * (limits.PROVIDER_RESPONSE_BYTES_MAX + 1), content_type="application/json"
        )

    server = await _serve(answer)
    try:
        async with StripeProvider(
            api_key=SecretStr("sk_test_unit"),
            base_url=str(server.make_url("")).rstrip("/"),
            timeout_s=5,
            connect_timeout_s=1,
        ) as adapter:
            with pytest.raises(ProviderError) as huge:
                await adapter.create(_payment(), idempotency_key=KEY)
            with pytest.raises(ProviderError) as moved:
                await adapter.capture("pi_1", None, idempotency_key=KEY)
    finally:
        await server.close()
    assert (huge.value.kind, huge.value.retryable) == (FailureKind.BAD_RESPONSE, False)
    assert moved.value.status_code == 302, "a redirect is an answer, never followed"
    assert not moved.value.retryable

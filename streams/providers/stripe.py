"""Stripe: PaymentIntents and Refunds through the official SDK's ``StripeClient``.

The SDK (16.x) has native async methods (``create_async`` ...) over a
pluggable HTTP client. This module plugs in a small client of its own on the
SDK's documented ``HTTPClient`` extension point: aiohttp (already there for
Faust) with our timeouts, no redirects, bodies read up to
PROVIDER_RESPONSE_BYTES_MAX, and no retries (``max_network_retries=0``: the
caller decides retries, with the same key).

References: ``create``, ``capture`` and ``cancel`` return the PaymentIntent
id (``pi_...``), which ``capture``, ``cancel`` and ``refund`` take; a
refund's own id is its ``object_id``.

The idempotency key goes in Stripe's ``Idempotency-Key`` header through the
SDK's request options. Stripe echoes it back (``peer_idempotency_key``) and
marks replays with ``Idempotent-Replayed: true`` (``replayed``).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable, Mapping
from typing import Any, NoReturn, Self, TypeVar

import aiohttp
import stripe
from pydantic import SecretStr
from stripe.params import (
    PaymentIntentCancelParams,
    PaymentIntentCaptureParams,
    PaymentIntentCreateParams,
    RefundCreateParams,
)

from ledger import limits
from ledger.config import Settings
from ledger.envelope import CaptureMethod, Money, Provider
from ledger.errors import EncodingError
from streams.providers.base import (
    CreatePayment,
    FailureKind,
    Operation,
    ProviderError,
    ProviderResult,
    check_idempotency_key,
    check_path_id,
    deadline,
    kind_for_status,
    parse_retry_after,
)

PROVIDER = Provider.STRIPE
T = TypeVar("T")
# Stripe takes amounts in these three-decimal currencies in minor units, but
# only as multiples of ten (its docs: "the last digit must be 0").
_THREE_DECIMAL_CURRENCIES = frozenset({"BHD", "JOD", "KWD", "OMR", "TND"})
_CAPTURE_METHODS = {CaptureMethod.AUTOMATIC: "automatic", CaptureMethod.MANUAL: "manual"}


class _Transport(stripe.HTTPClient):
    """The SDK's async HTTP client, on aiohttp, with our timeouts and bounded reads.

    aiohttp rather than httpx here: a Stripe call is the commands agent's
    largest cost, and aiohttp spends about a quarter of httpx's CPU per
    request (measured against stripe-mock: 0.13 ms against 0.51 ms).
    """

    name = "payledger-aiohttp"

    def __init__(self, timeout_s: float, connect_timeout_s: float) -> None:
        super().__init__()
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=connect_timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def request_async(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any = None
    ) -> tuple[bytes, int, Mapping[str, str]]:
        if self._session is None:  # made inside the running loop, on first use
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        data = post_data.encode() if isinstance(post_data, str) else post_data
        try:
            async with self._session.request(
                method,
                url,
                headers=dict(headers),
                data=data,
                # A redirect from a payment API is a misconfiguration.
                allow_redirects=False,
            ) as response:
                body = bytearray()
                async for chunk in response.content.iter_any():
                    body += chunk
                    if len(body) > limits.PROVIDER_RESPONSE_BYTES_MAX:
                        # Not a connection error: the call may have happened.
                        raise _ResponseTooLarge
                return bytes(body), response.status, response.headers
        except (aiohttp.ClientError, TimeoutError) as exc:
            # should_retry only matters to the SDK's own retries, which are off.
            raise stripe.APIConnectionError(  # type: ignore[no-untyped-call]
                f"no answer from Stripe: {exc!r}", should_retry=True
            ) from exc

    async def request_stream_async(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any = None
    ) -> tuple[AsyncIterable[bytes], int, Mapping[str, str]]:
        raise NotImplementedError("streamed Stripe responses are not used")

    def request(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotImplementedError("payledger calls Stripe asynchronously only")

    def request_stream(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotImplementedError("payledger calls Stripe asynchronously only")

    def close(self) -> None:
        raise NotImplementedError("close with aclose()")

    async def close_async(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _ResponseTooLarge(Exception):
    pass


def _failure(operation: Operation, exc: Exception) -> ProviderError:
    if isinstance(exc, _ResponseTooLarge):
        return ProviderError(
            PROVIDER,
            operation,
            FailureKind.BAD_RESPONSE,
            f"response larger than {limits.PROVIDER_RESPONSE_BYTES_MAX} bytes",
        )
    if isinstance(exc, stripe.APIConnectionError):
        timed_out = isinstance(exc.__cause__, TimeoutError)
        kind = FailureKind.TIMEOUT if timed_out else FailureKind.CONNECTION
        return ProviderError(PROVIDER, operation, kind, exc.user_message or str(exc))
    if not isinstance(exc, stripe.StripeError):
        return ProviderError(PROVIDER, operation, FailureKind.BAD_RESPONSE, repr(exc))
    status = exc.http_status
    headers = exc.headers or {}
    kind = kind_for_status(status) if status is not None else FailureKind.BAD_RESPONSE
    # Stripe says itself whether a retry can succeed (Stripe-Should-Retry);
    # when it does, that beats any rule of thumb about status codes.
    should_retry = headers.get("stripe-should-retry") or headers.get("Stripe-Should-Retry")
    retryable = None if should_retry not in ("true", "false") else should_retry == "true"
    return ProviderError(
        PROVIDER,
        operation,
        kind,
        exc.user_message or str(exc),
        status_code=status,
        provider_code=exc.code,
        retryable=retryable,
        retry_after_s=parse_retry_after(headers.get("retry-after") or headers.get("Retry-After")),
    )


def _stripe_amount(operation: Operation, money: Money) -> int:
    if money.amount_minor <= 0:
        raise ProviderError(
            PROVIDER, operation, FailureKind.INVALID_INPUT, "amounts must be positive"
        )
    if money.currency in _THREE_DECIMAL_CURRENCIES and money.amount_minor % 10:
        raise ProviderError(
            PROVIDER,
            operation,
            FailureKind.INVALID_INPUT,
            f"Stripe takes {money.currency} amounts only in multiples of 10 minor units",
        )
    return money.amount_minor


def _money(amount: object, currency: object) -> Money | None:
    if isinstance(amount, int) and not isinstance(amount, bool) and isinstance(currency, str):
        try:
            return Money(amount, currency.upper())
        except EncodingError:
            return None
    return None


class StripeProvider:
    """Stripe PaymentIntents behind ``PaymentProvider``."""

    def __init__(
        self,
        *,
        api_key: SecretStr,
        base_url: str,
        timeout_s: float,
        connect_timeout_s: float,
        http_client: stripe.HTTPClient | None = None,
    ) -> None:
        """``http_client`` replaces the aiohttp transport (tests answer calls with it)."""
        self._timeout_s = timeout_s
        self._http = http_client or _Transport(timeout_s, connect_timeout_s)
        self._client = stripe.StripeClient(
            api_key.get_secret_value(),
            base_addresses={"api": base_url},
            http_client=self._http,
            max_network_retries=0,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> StripeProvider:
        return cls(
            api_key=settings.stripe_api_key,
            base_url=settings.stripe_base_url(),
            timeout_s=settings.provider_timeout_s,
            connect_timeout_s=settings.provider_connect_timeout_s,
        )

    @property
    def provider(self) -> Provider:
        return PROVIDER

    async def create(self, payment: CreatePayment, *, idempotency_key: str) -> ProviderResult:
        operation = Operation.CREATE
        key = check_idempotency_key(PROVIDER, operation, idempotency_key)
        params: PaymentIntentCreateParams = {
            "amount": _stripe_amount(operation, payment.amount),
            "currency": payment.amount.currency.lower(),
            "capture_method": _CAPTURE_METHODS[payment.capture_method],
            # Ties the PaymentIntent (and every webhook about it) to our payment.
            "metadata": {"payledger_payment_id": payment.payment_id},
        }
        if payment.description is not None:
            params["description"] = payment.description
        intent = await self._run(
            operation,
            lambda: self._client.v1.payment_intents.create_async(params, {"idempotency_key": key}),
        )
        return self._result(
            operation, intent.id, intent, key, _money(intent.amount, intent.currency)
        )

    async def capture(
        self, ref: str, amount: Money | None, *, idempotency_key: str
    ) -> ProviderResult:
        operation = Operation.CAPTURE
        key = check_idempotency_key(PROVIDER, operation, idempotency_key)
        intent_id = check_path_id(PROVIDER, operation, ref, "a PaymentIntent id")
        params: PaymentIntentCaptureParams = {}
        if amount is not None:
            # Less than authorized releases the rest: Stripe's default, and
            # what a partial capture means for every provider here.
            params["amount_to_capture"] = _stripe_amount(operation, amount)
        intent = await self._run(
            operation,
            lambda: self._client.v1.payment_intents.capture_async(
                intent_id, params, {"idempotency_key": key}
            ),
        )
        return self._result(
            operation, intent.id, intent, key, _money(intent.amount_received, intent.currency)
        )

    async def cancel(self, ref: str, *, idempotency_key: str) -> ProviderResult:
        operation = Operation.CANCEL
        key = check_idempotency_key(PROVIDER, operation, idempotency_key)
        intent_id = check_path_id(PROVIDER, operation, ref, "a PaymentIntent id")
        params: PaymentIntentCancelParams = {}
        intent = await self._run(
            operation,
            lambda: self._client.v1.payment_intents.cancel_async(
                intent_id, params, {"idempotency_key": key}
            ),
        )
        return self._result(operation, intent.id, intent, key, None)

    async def refund(
        self, ref: str, amount: Money | None, *, idempotency_key: str
    ) -> ProviderResult:
        operation = Operation.REFUND
        key = check_idempotency_key(PROVIDER, operation, idempotency_key)
        intent_id = check_path_id(PROVIDER, operation, ref, "a PaymentIntent id")
        params: RefundCreateParams = {"payment_intent": intent_id}
        if amount is not None:
            params["amount"] = _stripe_amount(operation, amount)
        refund = await self._run(
            operation,
            lambda: self._client.v1.refunds.create_async(params, {"idempotency_key": key}),
        )
        # Further refunds go against the PaymentIntent again, so it stays the ref.
        return self._result(
            operation, intent_id, refund, key, _money(refund.amount, refund.currency)
        )

    async def _run(self, operation: Operation, call: Callable[[], Awaitable[T]]) -> T:
        """One SDK call under the deadline, its failures turned into ProviderError."""
        try:
            async with deadline(PROVIDER, operation, self._timeout_s):
                return await call()
        except (stripe.StripeError, _ResponseTooLarge) as exc:
            raise _failure(operation, exc) from exc

    @staticmethod
    def _result(
        operation: Operation,
        ref: str,
        obj: stripe.PaymentIntent | stripe.Refund,
        key: str,
        amount: Money | None,
    ) -> ProviderResult:
        response = obj.last_response
        headers = response.headers if response is not None else {}
        return ProviderResult(
            provider=PROVIDER,
            operation=operation,
            ref=ref,
            object_id=obj.id,
            status=str(obj.status),
            idempotency_key=key,
            amount=amount,
            replayed=headers.get("idempotent-replayed") == "true",
            peer_idempotency_key=headers.get("idempotency-key"),
            request_id=headers.get("request-id"),
        )

    async def aclose(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

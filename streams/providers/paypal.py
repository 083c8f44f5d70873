"""PayPal: Orders v2 and Payments v2 over httpx, with OAuth 2.0 client credentials.

Why httpx and not PayPal's server SDK (PyPI ``paypal-server-sdk``, 2.4.0):
its ``Configuration`` knows two environments, PRODUCTION and SANDBOX, whose
base URLs are fixed in a class-level table, and takes no base URL, so it
cannot be pointed at the local mock without patching the library; it is also
synchronous (``requests``) and calls ``load_dotenv`` when configured from the
environment. Five endpoints and a token do not justify that.

Flows, by the capture method of the payment:

    AUTOMATIC  create (intent CAPTURE) -> buyer approves -> capture(order ref)
    MANUAL     create (intent AUTHORIZE) -> buyer approves -> authorize(order ref)
               -> capture(authorization ref, amount, final=...) once or more
               or cancel(authorization ref)
    either     refund(capture ref, amount), against each capture on its own

``create`` returns an order reference (``RefKind.PAYMENT``), ``authorize`` an
authorization reference, ``capture`` a capture reference, and ``refund`` the
capture it refunded, so a second partial refund goes against it again.
References are ``<kind>:<PayPal id>`` (``order:5O190127TN364715T``), because
PayPal's order, authorization and capture ids look alike and live under
different paths. An order cannot be canceled through the API (it expires
unless captured), and an order is captured in full; both are refused here as
UNSUPPORTED, before any call.

One authorization may be captured in several parts. ``final_capture`` is
PayPal's word for whether more may follow: a capture with an amount keeps the
rest open (``final_capture: false``) unless the caller says ``final=True``
(the capture that takes what is left, or the last one the merchant wants: the
rest is then released); a capture without an amount takes all that is left
and is final.

The idempotency key travels as ``PayPal-Request-Id`` on every POST (PayPal
keeps it 6 hours by default). Amounts are decimal strings
(``ledger.currencies.from_minor_units``); PayPal takes HUF and TWD in whole
units only, so an amount with a fraction in those is refused before sending.

The access token is cached until shortly before PayPal says it expires; a
401 from the API drops it and the call is made once more with a new one.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Self

import httpx
from pydantic import SecretStr

from ledger import limits
from ledger.config import Settings
from ledger.currencies import from_minor_units, to_minor_units
from ledger.envelope import CaptureMethod, Money, Provider
from ledger.errors import EncodingError
from streams.providers._http import Reply, new_client, node_at, send, text_at
from streams.providers.base import (
    CreatePayment,
    FailureKind,
    Operation,
    ProviderError,
    ProviderResult,
    RefKind,
    check_idempotency_key,
    check_path_id,
    deadline,
    unsupported,
)

PROVIDER = Provider.PAYPAL
TOKEN_PATH = "/v1/oauth2/token"  # noqa: S105 - a URL path, not a secret
ORDER, AUTHORIZATION, CAPTURE = "order", "authorization", "capture"
_INTENTS = {CaptureMethod.AUTOMATIC: "CAPTURE", CaptureMethod.MANUAL: "AUTHORIZE"}
# PayPal's currency table: these take no decimals at PayPal although ISO 4217
# gives them two (JPY has none in ISO 4217 either).
_WHOLE_UNIT_CURRENCIES = frozenset({"HUF", "TWD"})
_DESCRIPTION_CHARS_MAX = 127  # purchase_unit_request.description
_CUSTOM_ID_CHARS_MAX = 127  # purchase_unit_request.custom_id
_ACTION_LINKS = ("approve", "payer-action")


def _describe(document: Any) -> tuple[str | None, str | None]:
    """(code, message) of a PayPal error body: API errors or OAuth errors."""
    if not isinstance(document, dict):
        return None, None
    issue = text_at(document, "details", 0, "issue")
    name = text_at(document, "name") or text_at(document, "error")
    message = (
        text_at(document, "details", 0, "description")
        or text_at(document, "message")
        or text_at(document, "error_description")
    )
    return issue or name, message


def paypal_value(operation: Operation, money: Money) -> dict[str, str]:
    """``Money`` as PayPal's money object: currency code and decimal string."""
    if money.amount_minor <= 0:
        raise ProviderError(
            PROVIDER, operation, FailureKind.INVALID_INPUT, "amounts must be positive"
        )
    try:
        value = from_minor_units(money.amount_minor, money.currency)
    except EncodingError as exc:
        raise ProviderError(PROVIDER, operation, FailureKind.INVALID_INPUT, str(exc)) from exc
    if money.currency in _WHOLE_UNIT_CURRENCIES:
        whole, _, fraction = value.partition(".")
        if fraction.strip("0"):
            raise ProviderError(
                PROVIDER,
                operation,
                FailureKind.INVALID_INPUT,
                f"PayPal takes {money.currency} in whole units only",
            )
        value = whole
    return {"currency_code": money.currency, "value": value}


def _read_money(node: Any) -> Money | None:
    currency, value = text_at(node, "currency_code"), text_at(node, "value")
    if currency is None or value is None:
        return None
    try:
        return Money(to_minor_units(value, currency), currency)
    except EncodingError:
        return None  # unreadable: the caller posts the amount it asked for


def _order_replay(reply: Reply) -> bool:
    # The order endpoints answer a repeated PayPal-Request-Id with 200 where
    # the first call got 201, as their spec documents.
    return reply.status == 200


def make_ref(kind: str, paypal_id: str) -> str:
    return f"{kind}:{paypal_id}"


def parse_ref(operation: Operation, ref: str, *kinds: str) -> tuple[str, str]:
    kind, sep, paypal_id = ref.partition(":")
    if not sep or kind not in kinds:
        raise ProviderError(
            PROVIDER,
            operation,
            FailureKind.INVALID_INPUT,
            f"{operation.value} takes a PayPal reference of kind {' or '.join(kinds)}, "
            f"not {ref[:40]!r}",
        )
    return kind, check_path_id(PROVIDER, operation, paypal_id, "a PayPal id")


class PayPalProvider:
    """PayPal Orders v2 and Payments v2 behind ``PaymentProvider``."""

    def __init__(
        self,
        *,
        base_url: str,
        client_id: str,
        client_secret: SecretStr,
        timeout_s: float,
        connect_timeout_s: float,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = new_client(base_url, timeout_s, connect_timeout_s, transport)
        self._client_id = client_id
        self._client_secret = client_secret
        self._timeout_s = timeout_s
        self._token: tuple[str, float] | None = None  # (token, monotonic time to replace it)
        self._token_lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> PayPalProvider:
        return cls(
            base_url=settings.paypal_base_url(),
            client_id=settings.paypal_client_id,
            client_secret=settings.paypal_client_secret,
            timeout_s=settings.provider_timeout_s,
            connect_timeout_s=settings.provider_connect_timeout_s,
        )

    @property
    def provider(self) -> Provider:
        return PROVIDER

    # -- the operations

    async def create(self, payment: CreatePayment, *, idempotency_key: str) -> ProviderResult:
        operation = Operation.CREATE
        key = check_idempotency_key(PROVIDER, operation, idempotency_key)
        if len(payment.payment_id) > _CUSTOM_ID_CHARS_MAX:
            raise ProviderError(
                PROVIDER, operation, FailureKind.INVALID_INPUT, "payment id too long"
            )
        unit: dict[str, Any] = {
            # custom_id ties the order, its captures and every webhook to our payment.
            "custom_id": payment.payment_id,
            "amount": paypal_value(operation, payment.amount),
        }
        if payment.description is not None:
            if not 0 < len(payment.description) <= _DESCRIPTION_CHARS_MAX:
                raise ProviderError(
                    PROVIDER,
                    operation,
                    FailureKind.INVALID_INPUT,
                    f"PayPal takes descriptions of 1 to {_DESCRIPTION_CHARS_MAX} characters",
                )
            unit["description"] = payment.description
        body = {"intent": _INTENTS[payment.capture_method], "purchase_units": [unit]}
        reply = await self._post(operation, "/v2/checkout/orders", key, body)
        order_id = self._id(operation, reply.document, "id")
        links = node_at(reply.document, "links")
        action = None
        if isinstance(links, list):
            action = next(
                (text_at(link, "href") for link in links if text_at(link, "rel") in _ACTION_LINKS),
                None,
            )
        return self._result(
            operation,
            make_ref(ORDER, order_id),
            order_id,
            reply,
            key,
            amount=_read_money(node_at(reply.document, "purchase_units", 0, "amount")),
            customer_action_url=action,
            replayed=_order_replay(reply),
        )

    async def authorize(self, ref: str, *, idempotency_key: str) -> ProviderResult:
        """Authorize an approved AUTHORIZE order; returns an authorization reference."""
        operation = Operation.AUTHORIZE
        key = check_idempotency_key(PROVIDER, operation, idempotency_key)
        _, order_id = parse_ref(operation, ref, ORDER)
        reply = await self._post(operation, f"/v2/checkout/orders/{order_id}/authorize", key, {})
        authorization = node_at(
            reply.document, "purchase_units", 0, "payments", "authorizations", 0
        )
        authorization_id = self._id(operation, authorization, "id")
        return self._result(
            operation,
            make_ref(AUTHORIZATION, authorization_id),
            authorization_id,
            reply,
            key,
            amount=_read_money(node_at(authorization, "amount")),
            status=text_at(authorization, "status"),
            replayed=_order_replay(reply),
            ref_kind=RefKind.AUTHORIZATION,
        )

    async def capture(
        self, ref: str, amount: Money | None, *, idempotency_key: str, final: bool = False
    ) -> ProviderResult:
        """Capture an approved order in full, or ``amount`` of an authorization.

        Of an authorization: ``final`` False keeps the rest open for more
        captures, True releases it; without an amount, all that is left is
        captured and the capture is final.
        """
        operation = Operation.CAPTURE
        key = check_idempotency_key(PROVIDER, operation, idempotency_key)
        kind, paypal_id = parse_ref(operation, ref, ORDER, AUTHORIZATION)
        if kind == ORDER:
            if amount is not None:
                raise unsupported(
                    PROVIDER,
                    operation,
                    "PayPal captures an order in full; a partial capture needs a MANUAL "
                    "payment (intent AUTHORIZE) and its authorization reference",
                )
            reply = await self._post(operation, f"/v2/checkout/orders/{paypal_id}/capture", key, {})
            capture = node_at(reply.document, "purchase_units", 0, "payments", "captures", 0)
            replayed = _order_replay(reply)
        else:
            body: dict[str, Any] = {"final_capture": final or amount is None}
            if amount is not None:
                body["amount"] = paypal_value(operation, amount)
            reply = await self._post(
                operation, f"/v2/payments/authorizations/{paypal_id}/capture", key, body
            )
            capture = reply.document
            replayed = False  # this endpoint documents 201 only
        capture_id = self._id(operation, capture, "id")
        return self._result(
            operation,
            make_ref(CAPTURE, capture_id),
            capture_id,
            reply,
            key,
            amount=_read_money(node_at(capture, "amount")),
            status=text_at(capture, "status"),
            replayed=replayed,
            ref_kind=RefKind.CAPTURE,
        )

    async def cancel(self, ref: str, *, idempotency_key: str) -> ProviderResult:
        operation = Operation.CANCEL
        key = check_idempotency_key(PROVIDER, operation, idempotency_key)
        kind, paypal_id = parse_ref(operation, ref, ORDER, AUTHORIZATION)
        if kind == ORDER:
            raise unsupported(
                PROVIDER,
                operation,
                "PayPal has no API to cancel an order: an order nobody captures expires; "
                "void its authorization instead, if it has one",
            )
        reply = await self._post(
            operation, f"/v2/payments/authorizations/{paypal_id}/void", key, None
        )
        # 204 No Content is PayPal's answer for a voided authorization when it
        # sends no representation.
        status = "VOIDED" if reply.document is None else text_at(reply.document, "status")
        return self._result(
            operation,
            ref,
            paypal_id,
            reply,
            key,
            amount=None,
            status=status,
            ref_kind=RefKind.AUTHORIZATION,
        )

    async def refund(
        self, ref: str, amount: Money | None, *, idempotency_key: str
    ) -> ProviderResult:
        operation = Operation.REFUND
        key = check_idempotency_key(PROVIDER, operation, idempotency_key)
        _, capture_id = parse_ref(operation, ref, CAPTURE)
        body: dict[str, Any] = {}
        if amount is not None:
            body["amount"] = paypal_value(operation, amount)
        reply = await self._post(operation, f"/v2/payments/captures/{capture_id}/refund", key, body)
        refund_id = self._id(operation, reply.document, "id")
        # Further refunds go against the capture again, so it stays the ref.
        return self._result(
            operation,
            ref,
            refund_id,
            reply,
            key,
            amount=_read_money(node_at(reply.document, "amount")),
            ref_kind=RefKind.CAPTURE,
        )

    # -- HTTP and OAuth

    async def _post(self, operation: Operation, path: str, key: str, body: Any) -> Reply:
        async with deadline(PROVIDER, operation, self._timeout_s):
            for attempt in (1, 2):
                token = await self._access_token(operation)
                try:
                    return await send(
                        self._client,
                        PROVIDER,
                        operation,
                        "POST",
                        path,
                        describe=_describe,
                        headers={
                            "Authorization": f"Bearer {token}",
                            "PayPal-Request-Id": key,
                            # The full resource, not PayPal's default minimal one:
                            # the ids and statuses of captures live in it.
                            "Prefer": "return=representation",
                        },
                        json_body=body,
                    )
                except ProviderError as error:
                    if error.status_code != 401 or attempt == 2:
                        raise
                    # Revoked or expired early: forget it, get a new one, once.
                    self._forget_token(token)
        raise AssertionError("unreachable")  # the loop returns or raises

    async def _access_token(self, operation: Operation) -> str:
        async with self._token_lock:
            cached = self._token
            if cached is not None and time.monotonic() < cached[1]:
                return cached[0]
            reply = await send(
                self._client,
                PROVIDER,
                operation,
                "POST",
                TOKEN_PATH,
                describe=_describe,
                headers={"Accept": "application/json"},
                form={"grant_type": "client_credentials"},
                auth=(self._client_id, self._client_secret.get_secret_value()),
            )
            token = text_at(reply.document, "access_token")
            expires_in = node_at(reply.document, "expires_in")
            if (
                token is None
                or not isinstance(expires_in, int | float)
                or expires_in < limits.PAYPAL_TOKEN_TTL_S_MIN
            ):
                raise ProviderError(
                    PROVIDER,
                    operation,
                    FailureKind.BAD_RESPONSE,
                    "the token response lacks access_token or a usable expires_in",
                )
            margin = min(limits.PAYPAL_TOKEN_REFRESH_MARGIN_S, expires_in / 2)
            self._token = (token, time.monotonic() + expires_in - margin)
            return token

    def _forget_token(self, token: str) -> None:
        if self._token is not None and self._token[0] == token:
            self._token = None

    # -- results

    @staticmethod
    def _id(operation: Operation, node: Any, field: str) -> str:
        value = text_at(node, field)
        if value is None:
            raise ProviderError(
                PROVIDER, operation, FailureKind.BAD_RESPONSE, f"the response has no {field}"
            )
        return value

    @staticmethod
    def _result(
        operation: Operation,
        ref: str,
        object_id: str,
        reply: Reply,
        key: str,
        *,
        amount: Money | None,
        status: str | None = None,
        customer_action_url: str | None = None,
        replayed: bool = False,
        ref_kind: RefKind = RefKind.PAYMENT,
    ) -> ProviderResult:
        return ProviderResult(
            provider=PROVIDER,
            operation=operation,
            ref=ref,
            object_id=object_id,
            status=status or text_at(reply.document, "status") or "UNKNOWN",
            idempotency_key=key,
            amount=amount,
            customer_action_url=customer_action_url,
            replayed=replayed,
            ref_kind=ref_kind,
            request_id=reply.headers.get("paypal-debug-id"),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

"""The one interface every payment provider adapter offers, and its one error type.

An agent that has checked a command against the payment's state calls::

    result = await provider.create(CreatePayment(...), idempotency_key=key)
    result = await provider.capture(result.ref, amount, idempotency_key=key)

Each result says what its ``ref`` names (``RefKind``): the payment itself
(Stripe's PaymentIntent, Coinbase's charge, PayPal's order), or, where the
provider keeps them as objects of their own, an authorization or one capture
(PayPal). The caller keeps each kind apart and passes the one the next call
takes: capture and cancel take the authorization when there is one, else the
payment; refund takes a capture when there are any, else the payment.

An adapter whose provider authorizes an approved payment in a call of its own
and captures one authorization in parts also offers ``SeparateAuthorization``
(PayPal): ``authorize``, and ``capture(..., final=...)``.

``key`` comes from ``derive_idempotency_key(command_event_id)``: a command
redelivered after a crash derives the same key, and each provider then
answers the repeat with the first call's outcome instead of moving money
twice. Each adapter passes the key the way its provider expects (Stripe
``Idempotency-Key``, PayPal ``PayPal-Request-Id``, Coinbase: a local record,
see ``coinbase.py``).

Every call is bounded by one deadline (``provider_timeout_s``: connecting,
OAuth, sending and reading together) and fails with ``ProviderError`` only.
Its ``retryable`` says whether the same call with the same key may be tried
again: timeouts, connection failures, 408/409/425/429 and 5xx are; any other
4xx and everything refused before a call (an unsupported operation, a bad
key) are not.

Money goes in as ``Money`` (integer minor units, ISO 4217); each adapter
writes it the way its provider reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, Self, runtime_checkable

from ledger import limits
from ledger.envelope import CaptureMethod, Money, Provider
from ledger.errors import LedgerError

# Visible ASCII only: the key travels in an HTTP header, and every provider
# compares it byte for byte.
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]+$")
_KEY_PREFIX = "payledger-"
# Ids that adapters put into URL paths: letters, digits, '-' and '_' only, so
# no reference can ever add a path segment or a query.
PATH_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class Operation(StrEnum):
    CREATE = "create"
    AUTHORIZE = "authorize"  # PayPal only: an approved AUTHORIZE order becomes an authorization
    CAPTURE = "capture"
    CANCEL = "cancel"
    REFUND = "refund"


class RefKind(StrEnum):
    """What the reference of a ``ProviderResult`` names."""

    PAYMENT = "payment"  # the payment itself: PaymentIntent, charge, order
    AUTHORIZATION = "authorization"  # an authorization of its own, captured or voided later
    CAPTURE = "capture"  # one capture of its own, refunded on its own


class FailureKind(StrEnum):
    """Why a call failed; ``retryable`` follows from it unless the provider says otherwise."""

    TIMEOUT = "timeout"  # no complete answer within the deadline
    CONNECTION = "connection"  # refused, reset, or no route
    RATE_LIMITED = "rate-limited"  # 429
    UNAVAILABLE = "unavailable"  # 5xx, 408, 409 (a request with this key in flight), 425
    UNAUTHORIZED = "unauthorized"  # 401, 403: credentials, or an OAuth failure
    NOT_FOUND = "not-found"  # 404: no such object at the provider
    REJECTED = "rejected"  # any other 4xx: the provider refused the request as sent
    BAD_RESPONSE = "bad-response"  # a 2xx we cannot read
    UNSUPPORTED = "unsupported"  # the provider has no such operation; nothing was sent
    INVALID_INPUT = "invalid-input"  # refused before sending: bad key, reference or amount


RETRYABLE_KINDS = frozenset(
    {
        FailureKind.TIMEOUT,
        FailureKind.CONNECTION,
        FailureKind.RATE_LIMITED,
        FailureKind.UNAVAILABLE,
    }
)


class ProviderError(LedgerError):
    """A provider call that did not succeed; the only error an adapter raises.

    ``status_code`` and ``provider_code`` are the provider's own words (HTTP
    status, Stripe ``code``, PayPal ``name`` or ``issue``, Coinbase ``type``);
    ``retry_after_s`` is the provider's Retry-After, when it sent one.
    """

    def __init__(
        self,
        provider: Provider,
        operation: Operation,
        kind: FailureKind,
        detail: str,
        *,
        status_code: int | None = None,
        provider_code: str | None = None,
        retryable: bool | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        self.provider = provider
        self.operation = operation
        self.kind = kind
        self.detail = detail[: limits.PROVIDER_ERROR_DETAIL_CHARS_MAX]
        self.status_code = status_code
        self.provider_code = provider_code
        self.retryable = kind in RETRYABLE_KINDS if retryable is None else retryable
        self.retry_after_s = retry_after_s
        status = f" (HTTP {status_code})" if status_code is not None else ""
        what = f"{provider.value.lower()} {operation.value}"
        super().__init__(f"{what} failed: {kind.value}{status}: {self.detail}")


def kind_for_status(status: int) -> FailureKind:
    """The failure kind of an HTTP error status (>= 400)."""
    if status == 429:
        return FailureKind.RATE_LIMITED
    # 409: Stripe and PayPal both answer it while a request with the same
    # idempotency key is still being processed; the repeat will get its answer.
    if status in (408, 409, 425) or status >= 500:
        return FailureKind.UNAVAILABLE
    if status in (401, 403):
        return FailureKind.UNAUTHORIZED
    if status == 404:
        return FailureKind.NOT_FOUND
    return FailureKind.REJECTED


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds, when given as seconds (the form providers use)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if 0 <= seconds <= 86_400 else None


@dataclass(frozen=True, slots=True)
class CreatePayment:
    """What ``create`` needs: our payment id, the amount and how it is captured."""

    payment_id: str
    amount: Money
    capture_method: CaptureMethod
    description: str | None = None

    def __post_init__(self) -> None:
        if not 0 < len(self.payment_id) <= limits.AGGREGATE_ID_CHARS_MAX:
            raise ValueError(f"payment_id must be 1 to {limits.AGGREGATE_ID_CHARS_MAX} characters")
        if self.amount.amount_minor <= 0:
            raise ValueError("a payment amount must be positive")


@dataclass(frozen=True, slots=True)
class ProviderResult:
    """What a successful call returned.

    ``ref`` is what a later call for this payment takes (``capture``,
    ``cancel``, ``refund``), and ``ref_kind`` says what it names (see the
    module docstring for which call takes which); its format belongs to the
    adapter, callers store it as it is. ``object_id`` is the provider object this call made or
    changed (a refund's id, say). ``status`` is the provider's own status word,
    verbatim: mapping it onto payledger's unified status is the state
    machine's business. ``amount`` is the amount the provider reports, when
    it reports one we can read; the ledger posts the amount it asked for and
    can compare.
    """

    provider: Provider
    operation: Operation
    ref: str
    object_id: str
    status: str
    idempotency_key: str
    amount: Money | None = None
    ref_kind: RefKind = RefKind.PAYMENT
    # Where the customer goes to approve or pay (PayPal approve link, Coinbase hosted page).
    customer_action_url: str | None = None
    # The provider (or the adapter's local record) says this repeats an earlier call.
    replayed: bool = False
    # The idempotency key as the provider echoed it back, for providers that do (Stripe).
    peer_idempotency_key: str | None = None
    # The provider's id of this request, for its support (Stripe Request-Id, PayPal debug id).
    request_id: str | None = None


@runtime_checkable
class PaymentProvider(Protocol):
    """One payment provider. Every method raises ProviderError and nothing else."""

    @property
    def provider(self) -> Provider: ...

    async def create(self, payment: CreatePayment, *, idempotency_key: str) -> ProviderResult: ...

    async def capture(
        self, ref: str, amount: Money | None, *, idempotency_key: str
    ) -> ProviderResult:
        """Capture ``amount`` (None: all that is left).

        A partial capture releases the rest of the authorization, unless the
        adapter is a ``SeparateAuthorization``: see its ``capture``.
        """
        ...

    async def cancel(self, ref: str, *, idempotency_key: str) -> ProviderResult: ...

    async def refund(
        self, ref: str, amount: Money | None, *, idempotency_key: str
    ) -> ProviderResult:
        """Refund ``amount`` (None: whatever is left) of a captured payment."""
        ...

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> None: ...


@runtime_checkable
class SeparateAuthorization(PaymentProvider, Protocol):
    """An adapter whose provider keeps the authorization as an object of its own (PayPal).

    Once the customer approved a payment captured by hand, ``authorize`` turns
    it into an authorization (``RefKind.AUTHORIZATION``), which is captured in
    one or more parts and voided with ``cancel``.
    """

    async def authorize(self, ref: str, *, idempotency_key: str) -> ProviderResult:
        """Authorize the approved payment ``ref``; the result names the authorization."""
        ...

    async def capture(
        self, ref: str, amount: Money | None, *, idempotency_key: str, final: bool = False
    ) -> ProviderResult:
        """Capture ``amount`` (None: all that is left, always final).

        ``final`` False keeps the rest of the authorization open for more
        captures; True releases whatever this capture leaves.
        """
        ...


def derive_idempotency_key(event_id: uuid.UUID | str, step: str | None = None) -> str:
    """The idempotency key of the provider call a command (event) causes.

    ``step`` tells apart several calls caused by one event (PayPal's authorize
    after an approval, say). The result fits every provider's limit.
    """
    text = str(uuid.UUID(str(event_id)))
    key = f"{_KEY_PREFIX}{text}" if step is None else f"{_KEY_PREFIX}{text}-{step}"
    if len(key) > limits.PROVIDER_IDEMPOTENCY_KEY_CHARS_MAX or not _IDEMPOTENCY_KEY.match(key):
        raise ValueError("step makes the idempotency key too long or not plain ASCII")
    return key


def check_idempotency_key(provider: Provider, operation: Operation, key: str) -> str:
    if not 0 < len(key) <= limits.PROVIDER_IDEMPOTENCY_KEY_CHARS_MAX or not _IDEMPOTENCY_KEY.match(
        key
    ):
        raise ProviderError(
            provider,
            operation,
            FailureKind.INVALID_INPUT,
            f"an idempotency key is 1 to {limits.PROVIDER_IDEMPOTENCY_KEY_CHARS_MAX} "
            "visible ASCII characters",
        )
    return key


def check_path_id(provider: Provider, operation: Operation, value: str, what: str) -> str:
    if not PATH_ID.match(value):
        raise ProviderError(
            provider,
            operation,
            FailureKind.INVALID_INPUT,
            f"{what} must be 1 to 128 letters, digits, '-' or '_'",
        )
    return value


def unsupported(provider: Provider, operation: Operation, why: str) -> ProviderError:
    return ProviderError(provider, operation, FailureKind.UNSUPPORTED, why)


@contextlib.asynccontextmanager
async def deadline(
    provider: Provider, operation: Operation, timeout_s: float
) -> AsyncIterator[None]:
    """Bound a whole call, however many requests it makes, by ``timeout_s``.

    httpx's own timeouts bound each phase (connect, each read); a peer that
    trickles one byte at a time would pass them all, this one it cannot.
    """
    try:
        async with asyncio.timeout(timeout_s):
            yield
    except TimeoutError as exc:
        raise ProviderError(
            provider, operation, FailureKind.TIMEOUT, f"no answer within {timeout_s:g} s"
        ) from exc

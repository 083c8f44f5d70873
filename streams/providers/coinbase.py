"""Coinbase Commerce: charges over httpx (API version 2018-03-22).

Crypto payments are pushed by the customer, so a charge has no authorization,
capture or refund API: ``create`` makes a fixed-price charge for the customer
to pay on its hosted page (``customer_action_url``), ``cancel`` cancels one
that is still NEW, and ``capture``, ``refund`` and a MANUAL capture method
are refused as UNSUPPORTED before any call. Refunds of crypto payments are
made by the merchant in Coinbase's dashboard and reach us as webhooks.

References are the charge id (a UUID).

Idempotency: Coinbase Commerce documents no idempotency header for charges,
so the adapter keeps its own record (``DedupStore``): the first call with a
key stores its result, a repeat returns it (``replayed=True``) without
calling Coinbase, and a repeat with other parameters is refused, as Stripe
refuses a reused key. The key also goes into the charge's metadata
(``payledger_idempotency_key``) next to ``payledger_payment_id``, so every
charge, and every webhook about it, names the command that made it.

What that does not cover: a call that reached Coinbase but whose answer was
lost (a timeout, a crash before the record was written) is retryable, and the
retry makes a second charge. That is safe for a push payment: no money moves
until the customer pays, the customer is only shown the hosted page of the
charge we recorded, and an unpaid charge expires after its one-hour window.
A payment that does land on the other charge still carries our payment id
in its metadata, and the state machine treats it as an over- or duplicate
payment (the unresolved state), not as a lost one. The default store is in
memory, bounded by COINBASE_DEDUP_ENTRIES_MAX; a deployment with several
processes passes a shared one.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol, Self

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
    check_idempotency_key,
    check_path_id,
    deadline,
    unsupported,
)

PROVIDER = Provider.COINBASE
_NAME_CHARS_MAX = 100  # Coinbase's limit on a charge's name
_DESCRIPTION_CHARS_MAX = 200  # ... and on its description


@dataclasses.dataclass(frozen=True, slots=True)
class DedupRecord:
    operation: Operation
    fingerprint: str  # what the call asked for; a repeat must ask for the same
    result: ProviderResult


class DedupStore(Protocol):
    """Where the adapter remembers results by idempotency key."""

    def get(self, key: str) -> DedupRecord | None: ...

    def put(self, key: str, record: DedupRecord) -> None: ...


class MemoryDedupStore:
    """The most recent ``entries_max`` records of this process, least recent dropped first."""

    def __init__(self, entries_max: int = limits.COINBASE_DEDUP_ENTRIES_MAX) -> None:
        self._entries_max = entries_max
        self._records: collections.OrderedDict[str, DedupRecord] = collections.OrderedDict()

    def get(self, key: str) -> DedupRecord | None:
        record = self._records.get(key)
        if record is not None:
            self._records.move_to_end(key)
        return record

    def put(self, key: str, record: DedupRecord) -> None:
        self._records[key] = record
        self._records.move_to_end(key)
        while len(self._records) > self._entries_max:
            self._records.popitem(last=False)


def _describe(document: Any) -> tuple[str | None, str | None]:
    return text_at(document, "error", "type"), text_at(document, "error", "message")


def _fingerprint(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _read_money(node: Any) -> Money | None:
    amount, currency = text_at(node, "amount"), text_at(node, "currency")
    if amount is None or currency is None:
        return None
    try:
        return Money(to_minor_units(amount, currency), currency)
    except EncodingError:
        return None


class CoinbaseProvider:
    """Coinbase Commerce charges behind ``PaymentProvider``."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: SecretStr,
        api_version: str,
        timeout_s: float,
        connect_timeout_s: float,
        dedup: DedupStore | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = new_client(base_url, timeout_s, connect_timeout_s, transport)
        self._api_key = api_key
        self._api_version = api_version
        self._timeout_s = timeout_s
        self._dedup: DedupStore = dedup if dedup is not None else MemoryDedupStore()
        # One call per key at a time, so a concurrent repeat waits for the
        # first call's record instead of racing it to Coinbase.
        self._key_locks: dict[str, tuple[asyncio.Lock, int]] = {}  # lock, callers using it

    @classmethod
    def from_settings(cls, settings: Settings, dedup: DedupStore | None = None) -> CoinbaseProvider:
        return cls(
            base_url=settings.coinbase_base_url(),
            api_key=settings.coinbase_api_key,
            api_version=settings.coinbase_api_version,
            timeout_s=settings.provider_timeout_s,
            connect_timeout_s=settings.provider_connect_timeout_s,
            dedup=dedup,
        )

    @property
    def provider(self) -> Provider:
        return PROVIDER

    async def create(self, payment: CreatePayment, *, idempotency_key: str) -> ProviderResult:
        operation = Operation.CREATE
        key = check_idempotency_key(PROVIDER, operation, idempotency_key)
        if payment.capture_method is not CaptureMethod.AUTOMATIC:
            raise unsupported(
                PROVIDER, operation, "crypto payments are pushed by the customer: no manual capture"
            )
        name = f"Payment {payment.payment_id}"
        if len(name) > _NAME_CHARS_MAX:
            raise ProviderError(
                PROVIDER, operation, FailureKind.INVALID_INPUT, "payment id too long"
            )
        if payment.description is not None and not (
            0 < len(payment.description) <= _DESCRIPTION_CHARS_MAX
        ):
            raise ProviderError(
                PROVIDER,
                operation,
                FailureKind.INVALID_INPUT,
                f"Coinbase takes descriptions of 1 to {_DESCRIPTION_CHARS_MAX} characters",
            )
        try:
            amount = from_minor_units(payment.amount.amount_minor, payment.amount.currency)
        except EncodingError as exc:
            raise ProviderError(PROVIDER, operation, FailureKind.INVALID_INPUT, str(exc)) from exc
        body: dict[str, Any] = {
            "name": name,
            "pricing_type": "fixed_price",
            "local_price": {"amount": amount, "currency": payment.amount.currency},
            "metadata": {
                "payledger_payment_id": payment.payment_id,
                "payledger_idempotency_key": key,
            },
        }
        if payment.description is not None:
            body["description"] = payment.description
        async with self._once(operation, key, _fingerprint(body)) as replay:
            if replay is not None:
                return replay
            reply = await self._call(operation, "POST", "/charges", body)
            return self._remember(operation, key, _fingerprint(body), reply)
        raise AssertionError("unreachable")  # _once neither swallows nor skips

    async def capture(
        self, ref: str, amount: Money | None, *, idempotency_key: str
    ) -> ProviderResult:
        raise unsupported(PROVIDER, Operation.CAPTURE, "Coinbase Commerce charges have no capture")

    async def cancel(self, ref: str, *, idempotency_key: str) -> ProviderResult:
        operation = Operation.CANCEL
        key = check_idempotency_key(PROVIDER, operation, idempotency_key)
        charge_id = check_path_id(PROVIDER, operation, ref, "a charge id")
        async with self._once(operation, key, _fingerprint(charge_id)) as replay:
            if replay is not None:
                return replay
            reply = await self._call(operation, "POST", f"/charges/{charge_id}/cancel", None)
            return self._remember(operation, key, _fingerprint(charge_id), reply)
        raise AssertionError("unreachable")

    async def refund(
        self, ref: str, amount: Money | None, *, idempotency_key: str
    ) -> ProviderResult:
        raise unsupported(
            PROVIDER,
            Operation.REFUND,
            "Coinbase Commerce has no refund API; crypto refunds are made in its dashboard",
        )

    # -- idempotency

    @asynccontextmanager
    async def _once(
        self, operation: Operation, key: str, fingerprint: str
    ) -> AsyncIterator[ProviderResult | None]:
        lock, users = self._key_locks.get(key, (asyncio.Lock(), 0))
        self._key_locks[key] = (lock, users + 1)
        try:
            async with lock:
                record = self._dedup.get(key)
                if record is None:
                    yield None
                    return
                if record.operation is not operation or record.fingerprint != fingerprint:
                    raise ProviderError(
                        PROVIDER,
                        operation,
                        FailureKind.INVALID_INPUT,
                        "this idempotency key was used for a different request",
                    )
                yield _replayed(record.result)
        finally:
            lock, users = self._key_locks[key]
            if users == 1:
                del self._key_locks[key]
            else:
                self._key_locks[key] = (lock, users - 1)

    def _remember(
        self, operation: Operation, key: str, fingerprint: str, reply: Reply
    ) -> ProviderResult:
        charge = node_at(reply.document, "data")
        charge_id = text_at(charge, "id")
        status = text_at(charge, "timeline", -1, "status")
        if charge_id is None or status is None:
            raise ProviderError(
                PROVIDER,
                operation,
                FailureKind.BAD_RESPONSE,
                "the response has no charge id or status",
            )
        result = ProviderResult(
            provider=PROVIDER,
            operation=operation,
            ref=charge_id,
            object_id=charge_id,
            status=status,
            idempotency_key=key,
            amount=_read_money(node_at(charge, "pricing", "local")),
            customer_action_url=text_at(charge, "hosted_url"),
            request_id=reply.headers.get("x-request-id"),
        )
        self._dedup.put(key, DedupRecord(operation, fingerprint, result))
        return result

    # -- HTTP

    async def _call(self, operation: Operation, method: str, path: str, body: Any) -> Reply:
        async with deadline(PROVIDER, operation, self._timeout_s):
            return await send(
                self._client,
                PROVIDER,
                operation,
                method,
                path,
                describe=_describe,
                headers={
                    "X-CC-Api-Key": self._api_key.get_secret_value(),
                    "X-CC-Version": self._api_version,
                    "Accept": "application/json",
                },
                json_body=body,
            )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _replayed(result: ProviderResult) -> ProviderResult:
    return dataclasses.replace(result, replayed=True)

"""The merchant API's reads: one payment, the payment list, a payment's timeline, balances.

Everything is read with plain SQL from the read models the projections
applier writes (schema ``Settings.projections_schema``, default
``projections``); the ingress never imports the projections package, so the
tables and columns used here are the contract (``projections/sql``). Every
statement runs in a read-only transaction with a statement timeout, and
every statement names the authenticated merchant: another merchant's
payment, timeline or entries are never read, and a payment of another
merchant answers exactly like one that does not exist (404, not 403).

Decisions
---------
*Projection lag.* The read models follow the log: a payment accepted with
202 appears once the stream worker recorded its first event and the applier
projected it, normally well under a second later. Until then ``GET
/v1/payments/{id}`` (and its ``/events``) answers 404 with the problem type
``/problems/payment-not-projected`` and ``Retry-After``: the ingress knows the
merchant's payment (``ingress_payments``) but has nothing to show yet. A
payment that is not the merchant's is ``/problems/payment-not-found``.

*Order and cursors.* The list is newest first: ``created_at`` (when the
merchant's create happened, from the log) descending, then ``payment_id``
descending, so ties have one order. Pages are keyset pages: the cursor is the
last row's ``(created_at, payment_id)``, base64url-encoded JSON, opaque to the
client. It is not signed (the ingress has no shared secret for it) and needs
not be: every page is read with ``merchant_id =`` the authenticated merchant,
so a forged cursor can only move within the merchant's own list. It carries a
digest of the merchant and filters it was made for, and is refused (400
``/problems/cursor-mismatch``) with other ones, which catches a client that
changed its filters halfway. A payment projected after a walk passed its
position (a late projection of an older create) is not in the later pages.
The timeline's cursor is the last sequence and names its payment.

*Balances.* Summed from ``ledger_entries`` joined to ``payment_events`` on
the event, with ``payment_events.merchant_id`` the merchant *and* the account
one of the merchant's own (``merchant:<id>:<class>``), per currency and
account class; amounts are positive on each account's normal side
(``ledger/payments/ACCOUNTS.md``). ``as_of`` compares with ``recorded_at``,
when payledger recorded the event on the ledger (book time), not with
``occurred_at`` (when the merchant or provider says it happened): a balance as
of a past instant then no longer changes once the projection caught up,
whereas a webhook delivered late would rewrite past balances by occurred_at.
The sum reads every event of the merchant up to ``as_of`` (the index on
``payment_events (merchant_id, recorded_at)``); the statement timeout bounds it.

*Personal data.* The read models hold none. The ingress keeps, per payment
created with a customer, the sealed customer document its create command
carried (``ingress_payment_customers``, written with the payment's row).
``GET /v1/payments/{id}`` opens it with the customer's data key while the key
exists and answers ``{"erased": true, "reference": <customer ref>}`` once it
was destroyed; ``customer`` is null for a payment without one. Whether the key
was destroyed is read from ``customer_data_keys`` in the same transaction as
the payment, so an erasure shows at once, whatever this process has cached;
only an erasure that commits between that read and the opening can still be
answered from the cache (``CUSTOMER_KEY_CACHE_TTL_S``). The list never
carries personal data: a bulk read is not where it belongs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal, TypeVar

import psycopg
from fastapi import APIRouter, Depends, Path, Query, Request
from psycopg import sql
from psycopg.rows import dict_row
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, computed_field

from ingress.auth import Merchant
from ingress.customer_keys import UnknownCustomer
from ingress.models import Address, StrictModel
from ingress.payments import authenticated
from ingress.problems import Problem
from ingress.services import Services, services
from ledger.envelope import PostingSide, Provider, SealedData
from ledger.payments.postings import CHART, AccountType
from ledger.payments.status import PaymentStatus

ModelT = TypeVar("ModelT", bound=BaseModel)

# A statement that runs longer is cancelled and answered 503: a read must not
# hold one of the pool's connections (shared with the write path) for long.
QUERY_STATEMENT_TIMEOUT_MS: Final = 5_000
PAYMENTS_PAGE_DEFAULT: Final = 20
PAYMENTS_PAGE_MAX: Final = 100
EVENTS_PAGE_DEFAULT: Final = 100
EVENTS_PAGE_MAX: Final = 500
# A cursor is base64url of a small JSON document; anything longer is not ours.
CURSOR_CHARS_MAX: Final = 400
CURSOR_VERSION: Final = 1
NOT_PROJECTED_RETRY_AFTER_S: Final = 1
UNAVAILABLE_RETRY_AFTER_S: Final = 5

# The shape of a projected payment id (the table allows 1 to 64 characters);
# the ingress's own are pay_ and 32 hex digits. Anything else is not looked up.
_PAYMENT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CURSOR = re.compile(r"^[A-Za-z0-9_-]+$")

# --- names the API uses --------------------------------------------------------------------
# The ledger's enums are upper case; the API speaks lower case, as the create
# request does ("provider": "stripe"). tests/unit/test_ingress_query_parts.py
# checks these literals against the enums.

StatusName = Literal[
    "awaiting_payment_method",
    "requires_customer_action",
    "processing",
    "authorized",
    "partially_captured",
    "succeeded",
    "partially_refunded",
    "refunded",
    "disputed",
    "canceled",
    "failed",
    "expired",
    "unresolved",
]
ProviderName = Literal["stripe", "paypal", "coinbase"]
EventKindName = Literal[
    "created",
    "capture_requested",
    "cancel_requested",
    "refund_requested",
    "status_changed",
    "authorized",
    "captured",
    "canceled",
    "refunded",
    "dispute_opened",
    "dispute_won",
    "dispute_lost",
    "fee_charged",
    "funds_unresolved",
    "funds_resolved",
    "noted",
]
STATUS_COUNT: Final = len(PaymentStatus)
PROVIDER_COUNT: Final = len(Provider)


def _api_name(value: str) -> str:
    return value.lower()


def _ledger_name(value: str) -> str:
    return value.upper()


# --- response models -----------------------------------------------------------------------


class FeeAmount(StrictModel):
    currency: str = Field(description="ISO 4217 code of the fee (not always the payment's).")
    amount_minor: int = Field(description="Net provider fees so far, in minor units.")


class PaymentReadLinks(StrictModel):
    payment: str = Field(description="This payment.")
    events: str = Field(description="The payment's timeline.")


class Payment(StrictModel):
    """A payment as projected from the ledger: its status and totals after its newest event.

    Amounts are in the payment's currency and minor units. No personal data:
    the customer is shown by ``GET /v1/payments/{payment_id}`` only.
    """

    payment_id: str
    status: StatusName
    provider: ProviderName
    provider_reference: str | None = Field(
        description=(
            "The provider's object: the Stripe PaymentIntent, the PayPal order or the "
            "Coinbase charge; null until a provider event named one."
        )
    )
    currency: str = Field(description="ISO 4217 code of the payment.")
    amount_minor: int = Field(description="The amount the payment was created for.")
    authorized_minor: int
    captured_minor: int
    refunded_minor: int
    disputed_minor: int = Field(description="Held for disputes that are open.")
    charged_back_minor: int = Field(description="Lost in disputes.")
    suspense_minor: int = Field(
        description="Crypto received but not accepted yet (under-, over- or late payment)."
    )
    fees: list[FeeAmount] = Field(description="Net provider fees so far, per currency.")
    last_sequence: int = Field(description="Sequence of the newest event projected.")
    created_at: datetime = Field(description="When the merchant's create happened.")
    updated_at: datetime = Field(description="When payledger recorded the newest event.")

    @computed_field  # type: ignore[prop-decorator]  # pydantic's documented idiom
    @property
    def links(self) -> PaymentReadLinks:
        base = f"/v1/payments/{self.payment_id}"
        return PaymentReadLinks(payment=base, events=f"{base}/events")


class CustomerShown(StrictModel):
    """The payment's customer, opened with the customer's data key."""

    erased: Literal[False] = False
    reference: str = Field(
        description=(
            "payledger's customer ref (cus_...), derived from the merchant's own reference, "
            "which is not stored; `payledger gdpr forget` takes it."
        )
    )
    email: str | None = None
    name: str | None = None
    address: Address | None = None


class CustomerErasedMarker(StrictModel):
    """The customer's personal data was erased: their data key is destroyed."""

    erased: Literal[True] = True
    reference: str = Field(description="payledger's customer ref (cus_...).")


class PaymentDetail(Payment):
    """A payment as projected from the ledger, with its customer."""

    customer: CustomerShown | CustomerErasedMarker | None = Field(
        default=None,
        description=(
            "The customer's details while their data key exists; "
            '`{"erased": true, "reference": ...}` once it was destroyed (GDPR erasure); '
            "null for a payment created without a customer."
        ),
    )


class PaymentPage(StrictModel):
    """One page of the merchant's payments, newest first."""

    data: list[Payment]
    next_cursor: str | None = Field(
        description="Pass as `cursor` (with the same filters) for the next page; null at the end."
    )


class EventAmount(StrictModel):
    amount_minor: int
    currency: str


class PaymentTotals(StrictModel):
    """The payment's totals after an event, in the payment's currency."""

    authorized_minor: int
    captured_minor: int
    refunded_minor: int
    disputed_minor: int
    charged_back_minor: int
    suspense_minor: int


class TimelineEvent(StrictModel):
    """One event of a payment's timeline, as signed on the ledger."""

    sequence: int = Field(description="1 for the create, then one more per event.")
    event_id: str
    kind: EventKindName
    event_type: str = Field(description="The envelope's event type, e.g. payment.captured.")
    status_before: StatusName | None = Field(description="Null for the first event.")
    status_after: StatusName
    stale: bool = Field(
        description="An out-of-order provider event: recorded, changing no status or amount."
    )
    amount: EventAmount | None = Field(
        description="What the event moved (or, for a command, requested); null if nothing."
    )
    totals: PaymentTotals
    provider_event_id: str | None
    provider_event_type: str | None
    provider_status: str | None
    note: str | None
    occurred_at: datetime = Field(description="When it happened, as the cause says.")
    recorded_at: datetime = Field(description="When payledger recorded it on the ledger.")
    signing_key_id: str = Field(description="The Ed25519 key that signed the event.")
    signature_status: Literal["verified"] = Field(
        description="Only events whose signature chain verified are projected."
    )


class Timeline(StrictModel):
    """A page of a payment's events, in sequence order."""

    payment_id: str
    data: list[TimelineEvent]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )


class Balance(StrictModel):
    """The merchant's balances in one currency, each positive on its account's normal side."""

    currency: str
    net_payable_minor: int = Field(
        description=(
            "What payledger owes the merchant: payable + suspense - fees - refunds - "
            "dispute_hold - chargebacks. Negative when the merchant owes."
        )
    )
    payable_minor: int = Field(description="Gross captured sales.")
    suspense_minor: int = Field(description="Crypto received but not accepted yet.")
    fees_minor: int = Field(description="Provider fees the merchant bears, net of fees returned.")
    refunds_minor: int = Field(description="Refunds returned to customers.")
    dispute_hold_minor: int = Field(description="Withdrawn by providers for open disputes.")
    chargebacks_minor: int = Field(description="Lost in disputes.")


class Balances(StrictModel):
    as_of: datetime | None = Field(
        description="The instant asked for (events recorded up to it); null: everything projected."
    )
    data: list[Balance] = Field(description="One entry per currency with entries, by code.")


# --- query parameters ----------------------------------------------------------------------
# Unknown parameters are refused (a misspelled "staus" must not silently list
# everything), as unknown body fields are.


class _QueryModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Cursor = Annotated[
    str | None,
    Field(
        max_length=CURSOR_CHARS_MAX,
        pattern=_CURSOR.pattern,
        description="The `next_cursor` of the previous page.",
    ),
]


class PaymentListQuery(_QueryModel):
    status: list[StatusName] = Field(
        default_factory=list,
        max_length=STATUS_COUNT,
        description="Only payments in one of these statuses (repeat the parameter for several).",
    )
    provider: list[ProviderName] = Field(
        default_factory=list,
        max_length=PROVIDER_COUNT,
        description="Only payments with one of these providers.",
    )
    created_gte: AwareDatetime | None = Field(
        default=None, description="Created at or after (RFC 3339, with an offset)."
    )
    created_lt: AwareDatetime | None = Field(
        default=None, description="Created before (RFC 3339, with an offset)."
    )
    limit: int = Field(default=PAYMENTS_PAGE_DEFAULT, ge=1, le=PAYMENTS_PAGE_MAX)
    cursor: Cursor = None


class TimelineQuery(_QueryModel):
    limit: int = Field(default=EVENTS_PAGE_DEFAULT, ge=1, le=EVENTS_PAGE_MAX)
    cursor: Cursor = None


class BalancesQuery(_QueryModel):
    as_of: AwareDatetime | None = Field(
        default=None,
        description=(
            "Balances from the events payledger recorded up to this instant (RFC 3339, with "
            "an offset); absent: from every event projected so far."
        ),
    )


# --- cursors ---------------------------------------------------------------------------------


def invalid_cursor() -> Problem:
    return Problem(400, "invalid-cursor", "Invalid cursor", "the cursor is not one this API made")


def _encode(document: Mapping[str, Any]) -> str:
    raw = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _decode(token: str, kind: str, keys: frozenset[str]) -> dict[str, Any]:
    if len(token) > CURSOR_CHARS_MAX or not _CURSOR.fullmatch(token):
        raise invalid_cursor()
    try:
        document = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except ValueError:  # binascii.Error, UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise invalid_cursor() from None
    if (
        not isinstance(document, dict)
        or set(document) != keys | {"v", "k"}
        or document["v"] != CURSOR_VERSION
        or document["k"] != kind
    ):
        raise invalid_cursor()
    return document


@dataclass(frozen=True, slots=True)
class ListPosition:
    """Where a page of the payment list ended: its last row's key."""

    created_at: datetime
    payment_id: str


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_LIST_KEYS: Final = frozenset({"t", "p", "b"})
_TIMELINE_KEYS: Final = frozenset({"p", "s"})


def list_binding(merchant_id: str, query: PaymentListQuery) -> str:
    """A digest of the merchant and filters a list cursor belongs to (limit aside)."""

    def instant(value: datetime | None) -> int | None:
        # Microseconds since the epoch: the same for every spelling of an
        # instant, and defined where astimezone(UTC) would leave year 1..9999.
        return None if value is None else (value - _EPOCH) // timedelta(microseconds=1)

    document = {
        "merchant": merchant_id,
        "status": sorted(set(query.status)),
        "provider": sorted(set(query.provider)),
        "created_gte": instant(query.created_gte),
        "created_lt": instant(query.created_lt),
    }
    canonical = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
    return hashlib.sha256(canonical).hexdigest()[:16]


def encode_list_cursor(position: ListPosition, binding: str) -> str:
    return _encode(
        {
            "v": CURSOR_VERSION,
            "k": "payments",
            "t": position.created_at.astimezone(UTC).isoformat(),
            "p": position.payment_id,
            "b": binding,
        }
    )


def decode_list_cursor(token: str, binding: str) -> ListPosition:
    """The position in ``token``; a 400 problem when it is not a list cursor of ``binding``."""
    document = _decode(token, "payments", _LIST_KEYS)
    created, payment_id, made_for = document["t"], document["p"], document["b"]
    if not (
        isinstance(created, str)
        and isinstance(payment_id, str)
        and _PAYMENT_ID.match(payment_id)
        and isinstance(made_for, str)
    ):
        raise invalid_cursor()
    try:
        created_at = datetime.fromisoformat(created)
    except ValueError:
        raise invalid_cursor() from None
    if created_at.tzinfo is None:
        raise invalid_cursor()
    if made_for != binding:
        raise Problem(
            400,
            "cursor-mismatch",
            "Cursor of another listing",
            "the cursor was made for other filters: repeat the filters of the first page",
        )
    return ListPosition(created_at, payment_id)


def encode_timeline_cursor(payment_id: str, sequence: int) -> str:
    return _encode({"v": CURSOR_VERSION, "k": "events", "p": payment_id, "s": sequence})


def decode_timeline_cursor(token: str, payment_id: str) -> int:
    """The sequence after which the next page starts; a 400 problem for a foreign cursor."""
    document = _decode(token, "events", _TIMELINE_KEYS)
    sequence = document["s"]
    if not isinstance(sequence, int) or isinstance(sequence, bool) or not 0 <= sequence < 2**63:
        raise invalid_cursor()
    if document["p"] != payment_id:
        raise Problem(
            400,
            "cursor-mismatch",
            "Cursor of another listing",
            "the cursor was made for another payment's timeline",
        )
    return sequence


# --- balances --------------------------------------------------------------------------------

# The merchant's accounts of the chart (ledger/payments/postings.py): class
# name -> (account type, normal side). The Balance model has one field per class.
MERCHANT_ACCOUNT_CLASSES: Final[Mapping[str, tuple[AccountType, PostingSide]]] = {
    line.pattern.removeprefix("merchant:<merchant>:"): (line.type, line.normal)
    for line in CHART
    if line.pattern.startswith("merchant:<merchant>:")
}


def merchant_accounts(merchant_id: str) -> dict[str, str]:
    """Account name -> class, for every merchant account of the chart."""
    return {f"merchant:{merchant_id}:{name}": name for name in MERCHANT_ACCOUNT_CLASSES}


def balance_of(currency: str, debit_minus_credit: Mapping[str, int]) -> Balance:
    """One currency's balance from each class's debits minus credits (absent classes are 0)."""
    unknown = set(debit_minus_credit) - set(MERCHANT_ACCOUNT_CLASSES)
    if unknown:
        raise ValueError(f"not merchant account classes: {sorted(unknown)}")
    on_normal_side = {
        name: debit_minus_credit.get(name, 0) * (1 if normal is PostingSide.DEBIT else -1)
        for name, (_, normal) in MERCHANT_ACCOUNT_CLASSES.items()
    }
    # Liabilities are what we owe; contra-liabilities reduce it.
    net = sum(
        amount if MERCHANT_ACCOUNT_CLASSES[name][0] is AccountType.LIABILITY else -amount
        for name, amount in on_normal_side.items()
    )
    return Balance(
        currency=currency,
        net_payable_minor=net,
        **{f"{name}_minor": amount for name, amount in on_normal_side.items()},
    )


# --- authentication and reads ---------------------------------------------------------------


async def reader(request: Request, svc: Annotated[Services, Depends(services)]) -> Merchant:
    """Authentication and the merchant's rate limit, as for the write routes.

    The write routes' ``ingress.payments.admit`` also demands an Idempotency-Key
    and scans the body for card data; a read has neither.
    """
    return await authenticated(request, svc, await request.body())


Reader = Annotated[Merchant, Depends(reader)]
ServicesDependency = Annotated[Services, Depends(services)]
PaymentIdPath = Annotated[str, Path(description="The payment id the create answered with.")]


@asynccontextmanager
async def _reading(svc: Services) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A read-only transaction with a statement timeout; database trouble as 503 problems."""
    try:
        async with svc.pool.connection() as connection, connection.transaction():
            await connection.execute(
                "SELECT set_config('transaction_read_only', 'on', true),"
                " set_config('statement_timeout', %s, true)",
                (str(QUERY_STATEMENT_TIMEOUT_MS),),
            )
            yield connection
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName) as error:
        # A configuration or deployment error, not the client's: the schema was
        # never migrated, or the setting names another one.
        raise Problem(
            503,
            "projections-unavailable",
            "The read models are unavailable",
            "payments cannot be read right now",
            headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)},
        ) from error
    except psycopg.errors.QueryCanceled as error:
        raise Problem(
            503,
            "query-timeout",
            "The query took too long",
            "narrow the query (filters, a smaller limit) or retry later",
            headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)},
        ) from error


def _table(svc: Services, name: str) -> sql.Identifier:
    return sql.Identifier(svc.settings.projections_schema, name)


def payment_not_found() -> Problem:
    # The same problem as the write routes' (ingress/payments.py). The detail
    # never repeats the id, and another merchant's payment looks exactly alike.
    return Problem(404, "payment-not-found", "No such payment", "no such payment for this merchant")


async def _missing(
    connection: psycopg.AsyncConnection[Any], merchant_id: str, payment_id: str
) -> Problem:
    """The 404 for a payment with no projected row: not projected yet, or not the merchant's."""
    cursor = await connection.execute(
        "SELECT 1 FROM ingress_payments WHERE payment_id = %s AND merchant_id = %s",
        (payment_id, merchant_id),
    )
    if await cursor.fetchone() is None:
        return payment_not_found()
    return Problem(
        404,
        "payment-not-projected",
        "Payment not projected yet",
        "the payment was accepted; its first event is not on the read models yet: retry shortly",
        headers={"Retry-After": str(NOT_PROJECTED_RETRY_AFTER_S)},
    )


_PAYMENT_COLUMNS: Final = sql.SQL(
    "p.payment_id, p.status, p.provider, p.provider_object_id, p.currency, p.amount_minor,"
    " p.authorized_minor, p.captured_minor, p.refunded_minor, p.disputed_minor,"
    " p.charged_back_minor, p.suspense_minor, p.last_sequence, p.created_at, p.updated_at,"
    " (SELECT coalesce(json_agg(json_build_object('currency', f.currency,"
    " 'amount_minor', f.amount_minor) ORDER BY f.currency), '[]'::json)"
    " FROM {fees} f WHERE f.payment_id = p.payment_id) AS fees"
)


def _payment(row: Mapping[str, Any]) -> Payment:
    return Payment(
        payment_id=row["payment_id"],
        status=_api_name(row["status"]),  # type: ignore[arg-type]  # checked by the model
        provider=_api_name(row["provider"]),  # type: ignore[arg-type]
        provider_reference=row["provider_object_id"],
        currency=row["currency"],
        amount_minor=row["amount_minor"],
        authorized_minor=row["authorized_minor"],
        captured_minor=row["captured_minor"],
        refunded_minor=row["refunded_minor"],
        disputed_minor=row["disputed_minor"],
        charged_back_minor=row["charged_back_minor"],
        suspense_minor=row["suspense_minor"],
        fees=[FeeAmount(**fee) for fee in row["fees"]],
        last_sequence=row["last_sequence"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _timeline_event(row: Mapping[str, Any]) -> TimelineEvent:
    amount = None
    if row["amount_minor"] is not None:
        amount = EventAmount(amount_minor=row["amount_minor"], currency=row["amount_currency"])
    before = row["status_before"]
    return TimelineEvent(
        sequence=row["sequence"],
        event_id=str(row["event_id"]),
        kind=_api_name(row["kind"]),  # type: ignore[arg-type]
        event_type=row["event_type"],
        status_before=None if before is None else _api_name(before),  # type: ignore[arg-type]
        status_after=_api_name(row["status_after"]),  # type: ignore[arg-type]
        stale=row["stale"],
        amount=amount,
        totals=PaymentTotals(
            authorized_minor=row["authorized_minor"],
            captured_minor=row["captured_minor"],
            refunded_minor=row["refunded_minor"],
            disputed_minor=row["disputed_minor"],
            charged_back_minor=row["charged_back_minor"],
            suspense_minor=row["suspense_minor"],
        ),
        provider_event_id=row["provider_event_id"],
        provider_event_type=row["provider_event_type"],
        provider_status=row["provider_status"],
        note=row["note"],
        occurred_at=row["occurred_at"],
        recorded_at=row["recorded_at"],
        signing_key_id=row["signing_key_id"],
        signature_status=_api_name(row["signature_status"]),  # type: ignore[arg-type]
    )


def _built(
    build: Callable[[Mapping[str, Any]], ModelT], rows: Iterable[Mapping[str, Any]]
) -> list[ModelT]:
    """Response models from rows; a row that does not fit is a server error, not a 422.

    (A ``ValidationError`` escaping a route is rendered as the client's 422.)
    """
    try:
        return [build(row) for row in rows]
    except ValidationError as error:
        raise RuntimeError(f"a projected row does not fit {build.__name__}: {error}") from None


async def _fetch(
    connection: psycopg.AsyncConnection[Any],
    query: sql.SQL | sql.Composed,
    params: Mapping[str, Any],
) -> list[dict[str, Any]]:
    cursor = connection.cursor(row_factory=dict_row)
    await cursor.execute(query, params)
    return await cursor.fetchall()


# --- routes ----------------------------------------------------------------------------------

QUERY_PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"content": {"application/problem+json": {}}, "description": description}
    for status, description in (
        (400, "A cursor that is not this listing's"),
        (401, "Missing or invalid credentials"),
        (422, "Invalid query parameters (unknown ones included)"),
        (429, "Rate limited"),
        (503, "The read models are unavailable, or the query took too long; retry later"),
    )
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {
        "content": {"application/problem+json": {}},
        "description": (
            "No such payment for this merchant (/problems/payment-not-found), or accepted but "
            "not projected yet (/problems/payment-not-projected, with Retry-After)"
        ),
    }
}

router = APIRouter(prefix="/v1", responses=QUERY_PROBLEM_RESPONSES)


@router.get(
    "/payments",
    response_model=PaymentPage,
    tags=["payments"],
    summary="List payments",
)
async def list_payments(
    query: Annotated[PaymentListQuery, Query()], merchant: Reader, svc: ServicesDependency
) -> PaymentPage:
    """The merchant's projected payments, newest first (created_at, then payment_id,
    descending), filtered, a page at a time.

    Pass `next_cursor` as `cursor` with the same filters for the next page;
    it is null on the last page. `created_gte` is inclusive, `created_lt`
    exclusive. A payment appears once its first event is projected.
    Listed payments carry no personal data (no `customer` field): read one
    payment for its customer.
    """
    if (
        query.created_gte is not None
        and query.created_lt is not None
        and query.created_gte >= query.created_lt
    ):
        raise Problem(
            422,
            "validation-error",
            "Invalid request",
            "1 invalid field in the request",
            errors=[
                {
                    "field": "query.created_lt",
                    "message": "Must be later than created_gte",
                    "type": "range_empty",
                }
            ],
            error_count=1,
        )
    binding = list_binding(merchant.merchant_id, query)
    after = None if query.cursor is None else decode_list_cursor(query.cursor, binding)
    conditions = [sql.SQL("p.merchant_id = %(merchant_id)s")]
    params: dict[str, Any] = {"merchant_id": merchant.merchant_id, "rows": query.limit + 1}
    if query.status:
        conditions.append(sql.SQL("p.status = ANY(%(statuses)s)"))
        params["statuses"] = sorted({_ledger_name(status) for status in query.status})
    if query.provider:
        conditions.append(sql.SQL("p.provider = ANY(%(providers)s)"))
        params["providers"] = sorted({_ledger_name(provider) for provider in query.provider})
    if query.created_gte is not None:
        conditions.append(sql.SQL("p.created_at >= %(created_gte)s"))
        params["created_gte"] = query.created_gte
    if query.created_lt is not None:
        conditions.append(sql.SQL("p.created_at < %(created_lt)s"))
        params["created_lt"] = query.created_lt
    if after is not None:
        conditions.append(
            sql.SQL("(p.created_at, p.payment_id) < (%(after_created)s, %(after_payment)s)")
        )
        params["after_created"] = after.created_at
        params["after_payment"] = after.payment_id
    statement = sql.SQL(
        "SELECT {columns} FROM {payments} p WHERE {conditions}"
        " ORDER BY p.created_at DESC, p.payment_id DESC LIMIT %(rows)s"
    ).format(
        columns=_PAYMENT_COLUMNS.format(fees=_table(svc, "payment_fees")),
        payments=_table(svc, "payments"),
        conditions=sql.SQL(" AND ").join(conditions),
    )
    async with _reading(svc) as connection:
        rows = await _fetch(connection, statement, params)
    payments = _built(_payment, rows[: query.limit])
    next_cursor = None
    if len(rows) > query.limit:
        last = payments[-1]
        next_cursor = encode_list_cursor(ListPosition(last.created_at, last.payment_id), binding)
    return PaymentPage(data=payments, next_cursor=next_cursor)


@router.get(
    "/payments/{payment_id}",
    response_model=PaymentDetail,
    responses=_NOT_FOUND,
    tags=["payments"],
    summary="Get a payment",
)
async def get_payment(
    payment_id: PaymentIdPath, merchant: Reader, svc: ServicesDependency
) -> PaymentDetail:
    """The payment's status and totals after its newest projected event, and its customer.

    `customer` holds the customer's details (email, name, address), opened
    with the customer's own data key, for as long as that key exists. Once
    the customer was erased (`payledger gdpr forget`), it is the marker
    `{"erased": true, "reference": "<customer_ref>"}`, never an error and
    never the sealed bytes. It is null for a payment created without a
    customer. The list of payments never carries personal data.

    404 for another merchant's payment as for a missing one; 404
    payment-not-projected (with Retry-After) for a payment this merchant
    created that is not on the read models yet.
    """
    if not _PAYMENT_ID.match(payment_id):
        raise payment_not_found()
    statement = sql.SQL(
        "SELECT {columns} FROM {payments} p"
        " WHERE p.payment_id = %(payment_id)s AND p.merchant_id = %(merchant_id)s"
    ).format(
        columns=_PAYMENT_COLUMNS.format(fees=_table(svc, "payment_fees")),
        payments=_table(svc, "payments"),
    )
    params = {"payment_id": payment_id, "merchant_id": merchant.merchant_id}
    async with _reading(svc) as connection:
        rows = await _fetch(connection, statement, params)
        if not rows:
            raise await _missing(connection, merchant.merchant_id, payment_id)
        customers = await _fetch(connection, _CUSTOMER, params)
    payment = _built(_payment, rows)[0]
    customer = None if not customers else await _customer(svc, customers[0])
    return PaymentDetail(**dict(payment), customer=customer)


# The payment's sealed customer data, and whether the customer's key is gone
# (destroyed, or, which never happens, no key row at all: unreadable either way).
_CUSTOMER: Final = sql.SQL(
    "SELECT c.customer_ref, c.data_key_id, c.algorithm, c.nonce, c.ciphertext,"
    " (k.customer_ref IS NULL OR k.wrapped_key IS NULL) AS erased"
    " FROM ingress_payment_customers c"
    " JOIN ingress_payments i ON i.payment_id = c.payment_id"
    " LEFT JOIN customer_data_keys k ON k.customer_ref = c.customer_ref"
    " WHERE c.payment_id = %(payment_id)s AND i.merchant_id = %(merchant_id)s"
)


async def _customer(svc: Services, row: Mapping[str, Any]) -> CustomerShown | CustomerErasedMarker:
    """The customer's details while their key exists, the erasure marker after."""
    reference = row["customer_ref"]
    if row["erased"]:
        return CustomerErasedMarker(reference=reference)
    sealed = SealedData(
        customer_ref=reference,
        data_key_id=row["data_key_id"],
        algorithm=row["algorithm"],
        nonce=bytes(row["nonce"]),
        ciphertext=bytes(row["ciphertext"]),
    )
    try:
        plaintext = await svc.customer_keys.open(reference, sealed)
    except UnknownCustomer:
        plaintext = None
    if plaintext is None:  # erased since the read above
        return CustomerErasedMarker(reference=reference)
    try:
        document = json.loads(plaintext)
        return CustomerShown(
            reference=reference,
            email=document.get("email"),
            name=document.get("name"),
            address=None if document.get("address") is None else Address(**document["address"]),
        )
    except (ValueError, TypeError, AttributeError) as error:  # ValidationError is a ValueError
        # Sealed by this ingress from a validated request: a server error, not the client's.
        raise RuntimeError(f"the sealed customer data of {reference} does not fit") from error


@router.get(
    "/payments/{payment_id}/events",
    response_model=Timeline,
    responses=_NOT_FOUND,
    tags=["payments"],
    summary="A payment's timeline",
)
async def payment_timeline(
    payment_id: PaymentIdPath,
    query: Annotated[TimelineQuery, Query()],
    merchant: Reader,
    svc: ServicesDependency,
) -> Timeline:
    """The payment's events in sequence order, as signed on the ledger, a page at a time.

    Each event says what it did (kind, statuses before and after, the amount
    it moved), the payment's totals after it, and which key signed it. A
    sequence number can be missing when the projection refused an event
    (it is then a dead letter).
    """
    if not _PAYMENT_ID.match(payment_id):
        raise payment_not_found()
    after = 0 if query.cursor is None else decode_timeline_cursor(query.cursor, payment_id)
    params = {
        "payment_id": payment_id,
        "merchant_id": merchant.merchant_id,
        "after": after,
        "rows": query.limit + 1,
    }
    exists = sql.SQL(
        "SELECT 1 FROM {payments} WHERE payment_id = %(payment_id)s"
        " AND merchant_id = %(merchant_id)s"
    ).format(payments=_table(svc, "payments"))
    statement = sql.SQL(
        "SELECT event_id, sequence, kind, event_type, status_before, status_after, stale,"
        " amount_minor, amount_currency, authorized_minor, captured_minor, refunded_minor,"
        " disputed_minor, charged_back_minor, suspense_minor, provider_event_id,"
        " provider_event_type, provider_status, note, occurred_at, recorded_at,"
        " signing_key_id, signature_status FROM {events}"
        " WHERE payment_id = %(payment_id)s AND merchant_id = %(merchant_id)s"
        " AND sequence > %(after)s ORDER BY sequence LIMIT %(rows)s"
    ).format(events=_table(svc, "payment_events"))
    async with _reading(svc) as connection:
        if not await _fetch(connection, exists, params):
            raise await _missing(connection, merchant.merchant_id, payment_id)
        rows = await _fetch(connection, statement, params)
    events = _built(_timeline_event, rows[: query.limit])
    next_cursor = None
    if len(rows) > query.limit:
        next_cursor = encode_timeline_cursor(payment_id, events[-1].sequence)
    return Timeline(payment_id=payment_id, data=events, next_cursor=next_cursor)


@router.get("/balances", response_model=Balances, tags=["balances"], summary="Balances")
async def balances(
    query: Annotated[BalancesQuery, Query()], merchant: Reader, svc: ServicesDependency
) -> Balances:
    """The merchant's balances per currency, summed from the ledger entries of its events.

    `net_payable_minor` is what payledger owes the merchant; the other
    amounts are its parts, each positive on its account's normal side. With
    `as_of`, only events payledger recorded up to that instant count
    (recording time, not the time the provider reports).
    """
    accounts = merchant_accounts(merchant.merchant_id)
    conditions = [
        sql.SQL("e.merchant_id = %(merchant_id)s"),
        sql.SQL("l.account = ANY(%(accounts)s)"),
    ]
    params: dict[str, Any] = {"merchant_id": merchant.merchant_id, "accounts": sorted(accounts)}
    if query.as_of is not None:
        conditions.append(sql.SQL("e.recorded_at <= %(as_of)s"))
        params["as_of"] = query.as_of
    statement = sql.SQL(
        "SELECT l.currency, l.account,"
        " sum(CASE l.side WHEN 'DEBIT' THEN l.amount_minor ELSE -l.amount_minor END)"
        " AS debit_minus_credit"
        " FROM {entries} l JOIN {events} e ON e.event_id = l.event_id"
        " WHERE {conditions} GROUP BY l.currency, l.account"
    ).format(
        entries=_table(svc, "ledger_entries"),
        events=_table(svc, "payment_events"),
        conditions=sql.SQL(" AND ").join(conditions),
    )
    async with _reading(svc) as connection:
        rows = await _fetch(connection, statement, params)
    per_currency: dict[str, dict[str, int]] = {}
    for row in rows:
        # sum() of bigint is numeric: exact, and int() keeps it so.
        classes = per_currency.setdefault(row["currency"], {})
        classes[accounts[row["account"]]] = int(row["debit_minus_credit"])
    return Balances(
        as_of=query.as_of,
        data=[balance_of(currency, per_currency[currency]) for currency in sorted(per_currency)],
    )

"""The merchant API's reads through real HTTP, over read models the real applier projected.

Payment events are emitted by the state machine for two merchants, signed by
this module's keys, published on a fresh topic prefix and projected by the
applier into a schema of this module's own; the ingress reads that schema
(``Settings.projections_schema``). Creation times are spread over minutes,
in pairs that tie, and one payment's refund is recorded two hours after the
rest, so filters, keyset pages and ``as_of`` have something to tell apart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from ingress.app import create_app
from ingress.merchants import add_api_key, create_merchant
from ingress.queries import ListPosition, PaymentListQuery, encode_list_cursor, list_binding
from ledger import limits
from ledger.config import Settings
from ledger.envelope import Envelope, PaymentEventKind, PostingSide, Provider, utc_now
from ledger.keystore import KeyStore
from projections import migrations
from streams.provision import provision_topics
from tests.integration.test_projections_applier import drop_schema, ends_of, project, publish
from tests.support.servers import serve_in_thread
from tests.unit.test_projections import (
    STREAMS,
    Driver,
    coinbase_underpaid_then_resolved,
    paypal_captured_with_fees,
    stripe_succeeded,
    stripe_with_fee_and_refund,
)

pytestmark = pytest.mark.integration

PROBLEM_JSON = "application/problem+json"
LATE = timedelta(hours=2)  # when the late part of a payment is recorded, after the rest
STRIPE_PAYMENTS = 22


def new_payment_id() -> str:
    return "pay_" + uuid.uuid4().hex  # the shape the ingress gives its payments


@dataclass
class Shop:
    merchant_id: str
    api_key: str
    drivers: dict[str, Driver] = field(default_factory=dict)
    envelopes: dict[str, list[Envelope]] = field(default_factory=dict)

    def created_at(self, payment_id: str) -> datetime:
        return self.envelopes[payment_id][0].occurred_at

    def newest_first(self, payment_ids: Any = None) -> list[str]:
        ids = self.drivers if payment_ids is None else payment_ids
        return sorted(ids, key=lambda p: (self.created_at(p), p), reverse=True)


@dataclass
class World:
    url: str
    settings: Settings
    a: Shop
    b: Shop
    recorded: datetime  # when the events were recorded; the late ones at recorded + LATE
    signing_keys: set[str]
    fee_refund: str  # A's Stripe payment with a fee and a refund recorded LATE
    paypal: str
    coinbase: str
    pending: str  # A's payment with nothing but its CREATED event

    def client(self, shop: Shop | str | None = None) -> httpx.Client:
        key = shop.api_key if isinstance(shop, Shop) else shop
        headers = {} if key is None else {"Authorization": f"Bearer {key}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


def _add(
    shop: Shop,
    driver: Driver,
    *,
    created_shift: timedelta,
    recorded: datetime,
    late_from: PaymentEventKind | None = None,
) -> str:
    """The driver's envelopes, created ``created_shift`` later, some recorded LATE."""
    envelopes, late = [], False
    for n, event in enumerate(driver.events):
        late = late or event.payload.kind is late_from
        envelope = event.envelope(
            producer=STREAMS,
            now=recorded + (LATE if late else timedelta(0)) + timedelta(milliseconds=n),
        )
        envelopes.append(
            dataclasses.replace(envelope, occurred_at=envelope.occurred_at + created_shift)
        )
    shop.drivers[driver.payment_id] = driver
    shop.envelopes[driver.payment_id] = envelopes
    return driver.payment_id


def _merchant(settings: Settings, **limits_: Any) -> tuple[str, str]:
    merchant_id = f"m_{uuid.uuid4().hex[:12]}"
    asyncio.run(create_merchant(settings, merchant_id, "Query shop", **limits_))
    return merchant_id, asyncio.run(add_api_key(settings, merchant_id)).token


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    settings = Settings(
        topic_prefix=f"q{uuid.uuid4().hex[:10]}.",
        state_dir=Path(tmp_path_factory.mktemp("queries")),
        projections_schema=f"qt_{uuid.uuid4().hex[:12]}",
        # Many reads in a row: the default bucket is not under test here.
        rate_limit_per_s=limits.RATE_LIMIT_PER_S_CEILING,
        rate_limit_burst=limits.RATE_LIMIT_BURST_CEILING,
    )
    assert asyncio.run(provision_topics(settings)).ok
    KeyStore(settings).active_key()  # the signing key exists before the events are recorded
    schema = settings.projections_schema
    assert asyncio.run(migrations.migrate(settings.dsn(), schema)) == [
        m.name for m in migrations.migrations()
    ]
    try:
        a, b = Shop(*_merchant(settings)), Shop(*_merchant(settings))
        recorded = utc_now()

        def minutes(n: float) -> timedelta:
            return timedelta(minutes=n)

        fee_refund = _add(
            a,
            stripe_with_fee_and_refund(new_payment_id(), a.merchant_id),
            created_shift=minutes(0),
            recorded=recorded,
            late_from=PaymentEventKind.REFUND_REQUESTED,
        )
        paypal = _add(
            a,
            paypal_captured_with_fees(new_payment_id(), a.merchant_id),
            created_shift=minutes(0),  # ties with fee_refund
            recorded=recorded,
        )
        coinbase = _add(
            a,
            coinbase_underpaid_then_resolved(new_payment_id(), a.merchant_id),
            created_shift=minutes(1),
            recorded=recorded,
        )
        pending = _add(
            a,
            Driver(new_payment_id(), Provider.STRIPE, merchant_id=a.merchant_id),
            created_shift=minutes(1),
            recorded=recorded,
        )
        for n in range(STRIPE_PAYMENTS):
            _add(
                a,
                stripe_succeeded(new_payment_id(), a.merchant_id, amount=100 + n),
                created_shift=minutes(2 + n // 2),  # two per minute: ties on created_at
                recorded=recorded,
            )
        # B's payments interleave with A's in time, one ties with two of A's.
        _add(
            b,
            stripe_succeeded(new_payment_id(), b.merchant_id, amount=5000),
            created_shift=minutes(3),
            recorded=recorded,
        )
        _add(
            b,
            stripe_with_fee_and_refund(new_payment_id(), b.merchant_id),
            created_shift=minutes(5.5),
            recorded=recorded,
        )
        everything = [e for shop in (a, b) for envs in shop.envelopes.values() for e in envs]
        published = asyncio.run(publish(settings, everything))
        applier = asyncio.run(project(settings, schema, ends_of(published)))
        assert (applier.totals.applied, applier.totals.rejected) == (len(everything), 0)
        with serve_in_thread(create_app(settings), lifespan="on") as url:
            yield World(
                url=url,
                settings=settings,
                a=a,
                b=b,
                recorded=recorded,
                signing_keys={p.envelope.signing_key_id for p in published},
                fee_refund=fee_refund,
                paypal=paypal,
                coinbase=coinbase,
                pending=pending,
            )
    finally:
        asyncio.run(drop_schema(settings.dsn(), schema))


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body = response.json()
    assert body["status"] == status
    return body


def _walk(client: httpx.Client, path: str, **params: Any) -> list[list[str]]:
    """Every page of a listing, as lists of ids; checks the last page ends it."""
    pages: list[list[str]] = []
    cursor = None
    while True:
        response = client.get(path, params={**params, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.text
        body = response.json()
        key = "payment_id" if path == "/v1/payments" else "sequence"
        pages.append([item[key] for item in body["data"]])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) <= 100, "the cursor never ends"


# One payment ------------------------------------------------------------------------------


def _expected_payment(shop: Shop, payment_id: str) -> dict[str, Any]:
    newest = shop.drivers[payment_id].events[-1]
    event = newest.payload
    envelopes = shop.envelopes[payment_id]
    provider_objects = [
        e.payload.provider_object_id for e in envelopes if e.payload.provider_object_id
    ]
    return {
        "payment_id": payment_id,
        "status": event.status_after.value.lower(),
        "provider": event.provider.value.lower(),
        "provider_reference": provider_objects[0] if provider_objects else None,
        "currency": event.payment_amount.currency,
        "amount_minor": event.payment_amount.amount_minor,
        "authorized_minor": event.authorized_minor,
        "captured_minor": event.captured_minor,
        "refunded_minor": event.refunded_minor,
        "disputed_minor": event.disputed_minor,
        "charged_back_minor": event.charged_back_minor,
        "suspense_minor": event.suspense_minor,
        "fees": [
            {"currency": fee.currency, "amount_minor": fee.amount_minor}
            for fee in sorted(event.fees, key=lambda fee: fee.currency)
            if fee.amount_minor
        ],
        "last_sequence": newest.sequence,
        "created_at": shop.created_at(payment_id),
        "updated_at": envelopes[-1].recorded_at,
        "links": {
            "payment": f"/v1/payments/{payment_id}",
            "events": f"/v1/payments/{payment_id}/events",
        },
    }


def _parsed(payment: dict[str, Any]) -> dict[str, Any]:
    return {
        **payment,
        "created_at": datetime.fromisoformat(payment["created_at"]),
        "updated_at": datetime.fromisoformat(payment["updated_at"]),
    }


def test_a_payment_is_its_newest_projected_state(world: World) -> None:
    with world.client(world.a) as client:
        for payment_id in (world.fee_refund, world.paypal, world.coinbase, world.pending):
            response = client.get(f"/v1/payments/{payment_id}")
            assert response.status_code == 200, response.text
            # No customer: these payments were never created through this ingress.
            assert _parsed(response.json()) == {
                **_expected_payment(world.a, payment_id),
                "customer": None,
            }
        fee_refund = client.get(f"/v1/payments/{world.fee_refund}").json()
    # The scenario's own numbers, as a check on the expectation itself.
    assert (fee_refund["status"], fee_refund["captured_minor"], fee_refund["refunded_minor"]) == (
        "partially_refunded",
        1000,
        300,
    )
    assert fee_refund["fees"] == [{"currency": "EUR", "amount_minor": 59}]
    assert fee_refund["provider_reference"] == "pi_1"
    assert fee_refund["customer"] is None


def test_another_merchants_payment_is_not_found_like_a_missing_one(world: World) -> None:
    with world.client(world.b) as intruder:
        foreign = intruder.get(f"/v1/payments/{world.fee_refund}")
        foreign_events = intruder.get(f"/v1/payments/{world.fee_refund}/events")
        missing = intruder.get(f"/v1/payments/{new_payment_id()}")
        malformed = intruder.get("/v1/payments/pay_%00'%20OR%201=1")
        too_long = intruder.get(f"/v1/payments/pay_{'a' * 61}")
    bodies = [
        _problem(response, 404)
        for response in (foreign, foreign_events, missing, malformed, too_long)
    ]
    for body in bodies:
        # Alike but for "instance", the path the client asked for.
        del body["instance"]
        assert body == bodies[0]
        assert body["type"] == "/problems/payment-not-found"
        assert world.fee_refund not in str(body)


def test_an_accepted_payment_not_projected_yet_says_so(world: World) -> None:
    with world.client(world.a) as client:
        created = client.post(
            "/v1/payments",
            json={"provider": "stripe", "amount_minor": 700, "currency": "EUR"},
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
        assert created.status_code == 202, created.text
        payment_id = created.json()["payment_id"]
        # No stream worker runs for this module's topics: it is never projected.
        pending = client.get(f"/v1/payments/{payment_id}")
        pending_events = client.get(f"/v1/payments/{payment_id}/events")
        listed = {p for page in _walk(client, "/v1/payments", limit=100) for p in page}
    for response in (pending, pending_events):
        body = _problem(response, 404)
        assert body["type"] == "/problems/payment-not-projected"
        assert int(response.headers["Retry-After"]) >= 1
    assert payment_id not in listed
    with world.client(world.b) as intruder:
        body = _problem(intruder.get(f"/v1/payments/{payment_id}"), 404)
    assert body["type"] == "/problems/payment-not-found"


# The list ---------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 7, 25, 26, 100])
def test_pages_cover_the_list_once_newest_first(world: World, limit: int) -> None:
    with world.client(world.a) as client:
        pages = _walk(client, "/v1/payments", limit=limit)
    expected = world.a.newest_first()
    assert len(expected) == STRIPE_PAYMENTS + 4
    # No duplicates, no gaps, the documented order, and no empty last page.
    assert [p for page in pages for p in page] == expected
    assert [len(page) for page in pages[:-1]] == [limit] * (len(pages) - 1)
    assert 1 <= len(pages[-1]) <= limit
    assert len(pages) == -(-len(expected) // limit)


def test_each_merchant_lists_only_its_own(world: World) -> None:
    with world.client(world.b) as client:
        b_pages = _walk(client, "/v1/payments", limit=1)
    assert [p for page in b_pages for p in page] == world.b.newest_first()
    # A's cursor is refused for B; a cursor B forges for A's position (no
    # secret keeps B from it) still reads B's own payments only.
    with world.client(world.a) as client:
        first = client.get("/v1/payments", params={"limit": 10}).json()
    with world.client(world.b) as client:
        refused = client.get("/v1/payments", params={"limit": 10, "cursor": first["next_cursor"]})
        position_id = first["data"][-1]["payment_id"]
        position = ListPosition(world.a.created_at(position_id), position_id)
        a_cursor_for_b = encode_list_cursor(
            position, list_binding(world.b.merchant_id, PaymentListQuery())
        )
        forged = client.get("/v1/payments", params={"limit": 100, "cursor": a_cursor_for_b})
    assert _problem(refused, 400)["type"] == "/problems/cursor-mismatch"
    assert forged.status_code == 200, forged.text
    older_b = [
        p
        for p in world.b.newest_first()
        if (world.b.created_at(p), p) < (position.created_at, position.payment_id)
    ]
    assert older_b, "the forged position should have B payments behind it"
    assert [p["payment_id"] for p in forged.json()["data"]] == older_b


def _filtered(world: World, **criteria: Any) -> list[str]:
    statuses = criteria.get("status")
    providers = criteria.get("provider")
    gte, lt = criteria.get("created_gte"), criteria.get("created_lt")
    chosen = []
    for payment_id, driver in world.a.drivers.items():
        event = driver.events[-1].payload
        created = world.a.created_at(payment_id)
        if statuses and event.status_after.value.lower() not in statuses:
            continue
        if providers and event.provider.value.lower() not in providers:
            continue
        if gte is not None and created < gte:
            continue
        if lt is not None and created >= lt:
            continue
        chosen.append(payment_id)
    return world.a.newest_first(chosen)


def test_filters_by_status_provider_and_created_range(world: World) -> None:
    a = world.a
    # Boundaries exactly on a creation time: gte includes it, lt excludes it.
    ordered = a.newest_first()
    gte, lt = a.created_at(ordered[-5]), a.created_at(ordered[8])
    cases: list[dict[str, Any]] = [
        {"status": ["succeeded"]},
        {"status": ["partially_refunded", "awaiting_payment_method"]},
        {"status": ["disputed"]},
        {"provider": ["paypal"]},
        {"provider": ["coinbase", "paypal"]},
        {"created_gte": gte},
        {"created_lt": lt},
        {"created_gte": gte, "created_lt": lt},
        {"status": ["succeeded"], "provider": ["stripe"], "created_gte": gte, "created_lt": lt},
    ]
    with world.client(a) as client:
        for criteria in cases:
            params = {
                name: value.isoformat() if isinstance(value, datetime) else value
                for name, value in criteria.items()
            }
            pages = _walk(client, "/v1/payments", limit=5, **params)
            found = [p for page in pages for p in page]
            assert found == _filtered(world, **criteria), criteria
    # The cases select something, and not everything.
    assert len(_filtered(world, status=["succeeded"])) == STRIPE_PAYMENTS + 1
    assert _filtered(world, provider=["paypal"]) == [world.paypal]
    assert _filtered(world, status=["disputed"]) == []
    assert 0 < len(_filtered(world, created_gte=gte, created_lt=lt)) < len(ordered) - 5
    # The same instant in another offset is the same filter.
    with world.client(a) as client:
        shifted = gte.astimezone(timezone(timedelta(hours=-5))).isoformat()
        pages = _walk(client, "/v1/payments", limit=100, created_gte=shifted)
    assert pages == [_filtered(world, created_gte=gte)]


def test_a_cursor_with_other_filters_is_refused(world: World) -> None:
    with world.client(world.a) as client:
        first = client.get("/v1/payments", params={"status": "succeeded", "limit": 3}).json()
        again = client.get(
            "/v1/payments",
            params={"status": "succeeded", "limit": 10, "cursor": first["next_cursor"]},
        )
        changed = client.get(
            "/v1/payments",
            params={"status": "refunded", "limit": 3, "cursor": first["next_cursor"]},
        )
    assert again.status_code == 200  # the limit may change between pages
    assert _problem(changed, 400)["type"] == "/problems/cursor-mismatch"


# The timeline -----------------------------------------------------------------------------


def test_a_timeline_is_the_signed_events_in_sequence(world: World) -> None:
    payment_id = world.fee_refund
    with world.client(world.a) as client:
        response = client.get(f"/v1/payments/{payment_id}/events")
        paged = _walk(client, f"/v1/payments/{payment_id}/events", limit=2)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["payment_id"] == payment_id and body["next_cursor"] is None
    events, envelopes = body["data"], world.a.envelopes[payment_id]
    assert [e["sequence"] for e in events] == list(range(1, len(envelopes) + 1))
    for row, envelope in zip(events, envelopes, strict=True):
        event = envelope.payload
        assert row["event_id"] == envelope.event_id
        assert row["event_type"] == envelope.event_type
        assert row["kind"] == event.kind.value.lower()
        assert row["status_before"] == (
            None if event.status_before is None else event.status_before.value.lower()
        )
        assert row["status_after"] == event.status_after.value.lower()
        assert row["stale"] is event.stale
        assert row["amount"] == (
            None
            if event.amount is None
            else {"amount_minor": event.amount.amount_minor, "currency": event.amount.currency}
        )
        assert row["totals"]["captured_minor"] == event.captured_minor
        assert row["totals"]["refunded_minor"] == event.refunded_minor
        assert row["provider_event_id"] == event.provider_event_id
        assert datetime.fromisoformat(row["occurred_at"]) == envelope.occurred_at
        assert datetime.fromisoformat(row["recorded_at"]) == envelope.recorded_at
        assert row["signing_key_id"] in world.signing_keys
        assert row["signature_status"] == "verified"
    kinds = [row["kind"] for row in events]
    assert kinds[0] == "created" and "refunded" in kinds and "fee_charged" in kinds
    # Pages of two: the same events, once each, in order.
    assert [s for page in paged for s in page] == [e["sequence"] for e in events]
    assert [len(page) for page in paged] == [2] * (len(events) // 2) + (
        [len(events) % 2] if len(events) % 2 else []
    )


def test_a_timeline_cursor_is_its_payments_only(world: World) -> None:
    with world.client(world.a) as client:
        first = client.get(f"/v1/payments/{world.fee_refund}/events", params={"limit": 1}).json()
        elsewhere = client.get(
            f"/v1/payments/{world.paypal}/events", params={"cursor": first["next_cursor"]}
        )
    assert _problem(elsewhere, 400)["type"] == "/problems/cursor-mismatch"
    with world.client(world.b) as intruder:
        b_payment = world.b.newest_first()[0]
        own = intruder.get(f"/v1/payments/{b_payment}/events")
        foreign = intruder.get(
            f"/v1/payments/{world.fee_refund}/events", params={"cursor": first["next_cursor"]}
        )
    assert own.status_code == 200
    assert [e["event_id"] for e in own.json()["data"]] == [
        e.event_id for e in world.b.envelopes[b_payment]
    ]
    assert _problem(foreign, 404)["type"] == "/problems/payment-not-found"


# Balances ---------------------------------------------------------------------------------


def _expected_balances(shop: Shop, as_of: datetime | None = None) -> list[dict[str, Any]]:
    """From the published postings: normal-side amounts, and the clearing share they match."""
    merchant: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    clearing: dict[str, int] = defaultdict(int)
    for envelopes in shop.envelopes.values():
        for envelope in envelopes:
            if as_of is not None and envelope.recorded_at > as_of:
                continue
            for posting in envelope.payload.postings:
                debit = posting.amount_minor if posting.side is PostingSide.DEBIT else 0
                signed = 2 * debit - posting.amount_minor  # debit minus credit
                if posting.account.startswith("provider:"):
                    clearing[posting.currency] += signed
                    continue
                prefix = f"merchant:{shop.merchant_id}:"
                assert posting.account.startswith(prefix), posting.account
                merchant[posting.currency][posting.account.removeprefix(prefix)] += signed
    expected = []
    for currency in sorted(merchant):
        classes = merchant[currency]
        row = {
            "currency": currency,
            "payable_minor": -classes["payable"],
            "suspense_minor": -classes["suspense"],
            "fees_minor": classes["fees"],
            "refunds_minor": classes["refunds"],
            "dispute_hold_minor": classes["dispute_hold"],
            "chargebacks_minor": classes["chargebacks"],
        }
        row["net_payable_minor"] = (
            row["payable_minor"]
            + row["suspense_minor"]
            - row["fees_minor"]
            - row["refunds_minor"]
            - row["dispute_hold_minor"]
            - row["chargebacks_minor"]
        )
        # What payledger owes the merchant is what the providers hold for it.
        assert row["net_payable_minor"] == clearing[currency], currency
        expected.append(row)
    return expected


def test_balances_per_currency_for_each_merchant(world: World) -> None:
    with world.client(world.a) as a_client, world.client(world.b) as b_client:
        a = a_client.get("/v1/balances")
        b = b_client.get("/v1/balances")
    assert a.status_code == b.status_code == 200, (a.text, b.text)
    assert a.json() == {"as_of": None, "data": _expected_balances(world.a)}
    assert b.json() == {"as_of": None, "data": _expected_balances(world.b)}
    # B's own numbers: 50.00 and 10.00 captured, a 0.59 fee, 3.00 refunded, in EUR only.
    assert b.json()["data"] == [
        {
            "currency": "EUR",
            "net_payable_minor": 6000 - 59 - 300,
            "payable_minor": 6000,
            "suspense_minor": 0,
            "fees_minor": 59,
            "refunds_minor": 300,
            "dispute_hold_minor": 0,
            "chargebacks_minor": 0,
        }
    ]
    assert [row["currency"] for row in a.json()["data"]] == ["EUR", "USD"]


def test_balances_as_of_count_what_was_recorded_by_then(world: World) -> None:
    between = world.recorded + LATE / 2  # after every event but fee_refund's refund
    before = world.recorded - timedelta(days=1)
    with world.client(world.a) as client:
        then = client.get("/v1/balances", params={"as_of": between.isoformat()})
        elsewhere = client.get(
            "/v1/balances",
            params={"as_of": between.astimezone(timezone(timedelta(hours=9))).isoformat()},
        )
        earlier = client.get("/v1/balances", params={"as_of": before.isoformat()})
        now = client.get("/v1/balances").json()["data"]
    assert then.status_code == 200, then.text
    expected = _expected_balances(world.a, between)
    assert then.json()["data"] == expected == elsewhere.json()["data"]
    assert datetime.fromisoformat(then.json()["as_of"]) == between
    # The refund of 3.00 EUR recorded late is the only difference.
    euros = {row["currency"]: row for row in now}["EUR"]
    euros_then = {row["currency"]: row for row in expected}["EUR"]
    assert euros["refunds_minor"] - euros_then["refunds_minor"] == 300
    assert euros_then["net_payable_minor"] - euros["net_payable_minor"] == 300
    assert earlier.json() == {"as_of": earlier.json()["as_of"], "data": []}


# Bad input, authentication, rate limit, documentation -------------------------------------

BAD_REQUESTS: list[tuple[str, dict[str, Any], int]] = [
    ("/v1/payments", {"limit": 0}, 422),
    ("/v1/payments", {"limit": 101}, 422),
    ("/v1/payments", {"limit": "ten"}, 422),
    ("/v1/payments", {"limit": "1e3"}, 422),
    ("/v1/payments", {"status": "bogus"}, 422),
    ("/v1/payments", {"status": "SUCCEEDED"}, 422),
    ("/v1/payments", {"status": "succeeded\x00"}, 422),
    ("/v1/payments", {"provider": "visa"}, 422),
    ("/v1/payments", {"created_gte": "yesterday"}, 422),
    ("/v1/payments", {"created_gte": "2026-01-01T00:00:00"}, 422),  # no offset
    ("/v1/payments", {"created_gte": "2026-13-01T00:00:00Z"}, 422),
    (
        "/v1/payments",
        {"created_gte": "2026-02-01T00:00:00Z", "created_lt": "2026-01-01T00:00:00Z"},
        422,
    ),
    (
        "/v1/payments",
        {"created_gte": "2026-01-01T00:00:00Z", "created_lt": "2026-01-01T00:00:00Z"},
        422,
    ),
    ("/v1/payments", {"staus": "succeeded"}, 422),
    ("/v1/payments", {"cursor": "not a cursor"}, 422),
    ("/v1/payments", {"cursor": "x" * 401}, 422),
    ("/v1/payments", {"cursor": "bm90IGpzb24"}, 400),  # base64url of "not json"
    ("/v1/payments", {"cursor": "a"}, 400),
    ("/v1/balances", {"as_of": "soon"}, 422),
    ("/v1/balances", {"as_of": "2026-01-01T00:00:00"}, 422),
    ("/v1/balances", {"currency": "EUR"}, 422),
]


@pytest.mark.parametrize(("path", "params", "status"), BAD_REQUESTS)
def test_bad_queries_are_problems(
    world: World, path: str, params: dict[str, Any], status: int
) -> None:
    with world.client(world.a) as client:
        body = _problem(client.get(path, params=params), status)
    assert "\x00" not in str(body) and "bogus" not in str(body)


def test_bad_timeline_queries_are_problems(world: World) -> None:
    path = f"/v1/payments/{world.fee_refund}/events"
    with world.client(world.a) as client:
        for params, status in (
            ({"limit": 0}, 422),
            ({"limit": 501}, 422),
            ({"cursor": "%%%"}, 422),
            ({"cursor": "e30"}, 400),  # base64url of "{}"
            ({"after": 3}, 422),
        ):
            _problem(client.get(path, params=params), status)


def test_the_far_ends_of_time_are_answered(world: World) -> None:
    with world.client(world.a) as client:
        widest = client.get(
            "/v1/payments",
            params={
                "created_gte": "0001-01-01T00:00:00+14:00",
                "created_lt": "9999-12-31T23:59:59-14:00",
                "limit": 100,
            },
        )
        ancient = client.get("/v1/balances", params={"as_of": "0001-01-01T00:00:00+14:00"})
        future = client.get("/v1/balances", params={"as_of": "9999-12-31T23:59:59-14:00"})
    assert widest.status_code == 200, widest.text
    assert len(widest.json()["data"]) == len(world.a.drivers)
    assert ancient.status_code == 200 and ancient.json()["data"] == []
    assert future.status_code == 200 and future.json()["data"] == _expected_balances(world.a)


def test_every_read_needs_credentials(world: World) -> None:
    paths = [
        "/v1/payments",
        f"/v1/payments/{world.fee_refund}",
        f"/v1/payments/{world.fee_refund}/events",
        "/v1/balances",
    ]
    for key in (None, "pl_0123456789abcdef_" + "A" * 43, "not-a-key"):
        with world.client(key) as client:
            for path in paths:
                response = client.get(path, params={"limit": 0} if "balances" not in path else {})
                body = _problem(response, 401)
                assert body["type"] == "/problems/unauthorized"


def test_reads_share_the_merchants_rate_limit(world: World) -> None:
    _, api_key = _merchant(world.settings, rate_per_s=0.01, burst=2)
    with world.client(api_key) as client:
        statuses = [client.get("/v1/balances") for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    assert _problem(statuses[2], 429)["type"] == "/problems/rate-limited"
    assert int(statuses[2].headers["Retry-After"]) >= 1


def test_the_reads_are_documented(world: World) -> None:
    with httpx.Client(base_url=world.url, timeout=60) as client:
        document = client.get("/openapi.json").json()
    paths = document["paths"]
    operations = {
        "/v1/payments": "PaymentPage",
        "/v1/payments/{payment_id}": "PaymentDetail",
        "/v1/payments/{payment_id}/events": "Timeline",
        "/v1/balances": "Balances",
    }
    for path, model in operations.items():
        operation = paths[path]["get"]
        assert operation["summary"] and operation["description"]
        schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{model}"}
        for status in ("401", "422", "429", "503"):
            assert "application/problem+json" in operation["responses"][status]["content"]
    for path in ("/v1/payments/{payment_id}", "/v1/payments/{payment_id}/events"):
        assert "application/problem+json" in paths[path]["get"]["responses"]["404"]["content"]
    parameters = {p["name"] for p in paths["/v1/payments"]["get"]["parameters"]}
    assert parameters == {"status", "provider", "created_gte", "created_lt", "limit", "cursor"}
    schemas = document["components"]["schemas"]
    # Personal data only in one payment's answer, never in the list's items.
    assert "customer" not in schemas["Payment"]["properties"]
    assert "customer" in schemas["PaymentDetail"]["properties"]
    single = paths["/v1/payments/{payment_id}"]["get"]["description"]
    assert '"erased": true' in single
    assert "no personal data" in paths["/v1/payments"]["get"]["description"]
    assert schemas["Payment"]["properties"]["status"]["enum"][0] == "awaiting_payment_method"

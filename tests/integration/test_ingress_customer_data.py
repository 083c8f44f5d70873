"""Personal data in the query API: shown while the customer's key exists, a marker after.

Payments are created through the real ingress (HTTP, Postgres, Kafka), in the
group commit of ingress/batching.py; their CREATED event is projected by the
real applier into a schema of the test's own, as test_ingress_queries.py
does; the erasure is the function ``payledger gdpr forget`` runs.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from ingress import batching
from ingress.app import create_app
from ingress.batching import CreateBatcher, CreateIntent
from ingress.customer_keys import CustomerKeys
from ingress.db import open_pool
from ingress.gdpr import forget_customer
from ledger import limits
from ledger.config import Settings
from ledger.envelope import PaymentCommand, Provider, SealedData
from ledger.keystore import KeyStore
from ledger.sealing import customer_reference, open_master_key
from ledger.topics import TopicRole
from projections import migrations
from streams.provision import provision_topics
from tests.integration.test_ingress import _records, _verifier, create_body
from tests.integration.test_ingress_queries import _merchant
from tests.integration.test_projections_applier import drop_schema, ends_of, project, publish
from tests.support.servers import serve_in_thread
from tests.unit.test_projections import Driver

pytestmark = pytest.mark.integration

ADDRESS = {"line1": "12 Analytical Row", "city": "London", "postal_code": "N1 7AA", "country": "GB"}
WIDE_WINDOW_S = 0.3  # requests sent within this of a batch's first one join it


@dataclass
class Shop:
    url: str
    settings: Settings
    merchant_id: str
    api_key: str
    other_api_key: str  # another merchant's

    def client(self, api_key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {api_key or self.api_key}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Shop]:
    settings = Settings(
        topic_prefix=f"pd{uuid.uuid4().hex[:10]}.",
        state_dir=tmp_path,
        projections_schema=f"pd_{uuid.uuid4().hex[:12]}",
        rate_limit_per_s=limits.RATE_LIMIT_PER_S_CEILING,
        rate_limit_burst=limits.RATE_LIMIT_BURST_CEILING,
    )
    assert asyncio.run(provision_topics(settings)).ok
    KeyStore(settings).active_key()
    schema = settings.projections_schema
    assert asyncio.run(migrations.migrate(settings.dsn(), schema)) == [
        m.name for m in migrations.migrations()
    ]
    try:
        merchant_id, api_key = _merchant(settings)
        _, other_api_key = _merchant(settings)
        with serve_in_thread(create_app(settings), lifespan="on") as url:
            yield Shop(url, settings, merchant_id, api_key, other_api_key)
    finally:
        asyncio.run(drop_schema(settings.dsn(), schema))


def _customer(reference: str, email: str, name: str) -> dict[str, Any]:
    return {"reference": reference, "email": email, "name": name, "address": ADDRESS}


def _shown(shop: Shop, reference: str, email: str, name: str) -> dict[str, Any]:
    """The ``customer`` field GET answers while the customer's key exists."""
    return {
        "erased": False,
        "reference": customer_reference(shop.merchant_id, reference),
        "email": email,
        "name": name,
        "address": {"line2": None, "state": None, **ADDRESS},
    }


def _sealed_commands(shop: Shop, expected: int) -> dict[str, SealedData | None]:
    """Payment id -> the sealed customer data its create command carried on Kafka."""
    verifier = _verifier(shop.settings)
    found: dict[str, SealedData | None] = {}
    for record in _records(shop.settings, TopicRole.COMMANDS, expected):
        command = verifier.open(record.value).payload
        assert isinstance(command, PaymentCommand)
        found[record.key.decode()] = command.customer
    assert len(found) == expected
    return found


def _stored(shop: Shop, payment_ids: list[str]) -> dict[str, SealedData]:
    """Payment id -> the sealed customer data the ingress stored for it."""
    with psycopg.connect(shop.settings.dsn()) as connection:
        rows = connection.execute(
            "SELECT payment_id, customer_ref, data_key_id, algorithm, nonce, ciphertext"
            " FROM ingress_payment_customers WHERE payment_id = ANY(%s)",
            (payment_ids,),
        ).fetchall()
    return {
        row[0]: SealedData(row[1], row[2], row[3], bytes(row[4]), bytes(row[5])) for row in rows
    }


def _project(shop: Shop, payment_ids: list[str]) -> None:
    """Record and project each payment's CREATED event, as the stream worker would."""
    envelopes = [
        envelope
        for payment_id in payment_ids
        for envelope in Driver(
            payment_id, Provider.STRIPE, merchant_id=shop.merchant_id, amount=1050
        ).envelopes()
    ]
    published = asyncio.run(publish(shop.settings, envelopes))
    schema = shop.settings.projections_schema
    applier = asyncio.run(project(shop.settings, schema, ends_of(published)))
    assert (applier.totals.applied, applier.totals.rejected) == (len(envelopes), 0)


async def _open_stored(settings: Settings, sealed: SealedData) -> bytes | None:
    """Open sealed data as a fresh process would (no cached key)."""
    pool = open_pool(settings)
    await pool.open(wait=True)
    master = open_master_key(settings)
    try:
        return await CustomerKeys(pool, master).open(sealed.customer_ref, sealed)
    finally:
        master.close()
        await pool.close()


def _create(client: httpx.Client, **overrides: Any) -> str:
    response = client.post(
        "/v1/payments",
        json=create_body(**overrides),
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )
    assert response.status_code == 202, response.text
    return str(response.json()["payment_id"])


def test_the_customer_is_shown_while_the_key_exists_and_a_marker_after(shop: Shop) -> None:
    with shop.client() as client:
        with_customer = _create(
            client, customer=_customer("cust-ada", "ada@example.com", "Ada Lovelace")
        )
        without = _create(client, customer=None)
    # The ingress stored exactly the bytes its command carried, and nothing for no customer.
    commands = _sealed_commands(shop, 2)
    sealed = commands[with_customer]
    assert sealed is not None and commands[without] is None
    assert _stored(shop, [with_customer, without]) == {with_customer: sealed}
    _project(shop, [with_customer, without])

    with shop.client() as client:
        shown = client.get(f"/v1/payments/{with_customer}")
        plain = client.get(f"/v1/payments/{without}")
        listed = client.get("/v1/payments", params={"limit": 100})
    assert shown.status_code == 200, shown.text
    assert shown.json()["customer"] == _shown(shop, "cust-ada", "ada@example.com", "Ada Lovelace")
    assert (shown.json()["status"], shown.json()["amount_minor"]) == (
        "awaiting_payment_method",
        1050,
    )
    assert plain.status_code == 200, plain.text
    assert plain.json()["customer"] is None
    # The list never carries personal data.
    assert listed.status_code == 200, listed.text
    items = {item["payment_id"]: item for item in listed.json()["data"]}
    assert set(items) == {with_customer, without}
    assert all("customer" not in item for item in items.values())
    assert "ada@example.com" not in listed.text

    # Another merchant: as missing as a payment that does not exist.
    with shop.client(shop.other_api_key) as intruder:
        for payment_id in (with_customer, without):
            foreign = intruder.get(f"/v1/payments/{payment_id}")
            assert foreign.status_code == 404, foreign.text
            assert foreign.json()["type"] == "/problems/payment-not-found"
            assert "ada@example.com" not in foreign.text

    # Erasure, as `payledger gdpr forget` runs it. The serving process still has
    # the key cached from sealing: the marker must show at once all the same.
    customer_ref = customer_reference(shop.merchant_id, "cust-ada")
    assert asyncio.run(forget_customer(shop.settings, customer_ref, actor="test")) is True
    with shop.client() as client:
        erased = client.get(f"/v1/payments/{with_customer}")
        still_plain = client.get(f"/v1/payments/{without}")
    assert erased.status_code == 200, erased.text
    assert erased.json()["customer"] == {"erased": True, "reference": customer_ref}
    assert erased.json()["status"] == "awaiting_payment_method"
    for secret in ("ada@example.com", "Ada Lovelace", "Analytical", sealed.ciphertext.hex()):
        assert secret not in erased.text
    assert still_plain.json()["customer"] is None
    # The sealed bytes are still stored, unchanged, and can no longer be opened.
    assert _stored(shop, [with_customer]) == {with_customer: sealed}
    assert asyncio.run(_open_stored(shop.settings, sealed)) is None
    with shop.client(shop.other_api_key) as intruder:
        assert intruder.get(f"/v1/payments/{with_customer}").status_code == 404


def test_the_group_commit_stores_each_payments_customer(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches: list[int] = []
    process = CreateBatcher._process

    async def recording(self: CreateBatcher, batch: list[CreateIntent]) -> None:
        batches.append(len(batch))
        await process(self, batch)

    monkeypatch.setattr(CreateBatcher, "_process", recording)
    monkeypatch.setattr(batching, "CREATE_BATCH_WINDOW_S", WIDE_WINDOW_S)
    people = {f"cust-{n}": (f"person{n}@example.com", f"Person {n}") for n in range(6)}
    bodies = [create_body(customer=_customer(ref, *details)) for ref, details in people.items()]
    bodies += [create_body(customer=None), create_body(customer=None)]

    async def create_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=shop.url, headers={"Authorization": f"Bearer {shop.api_key}"}, timeout=60
        ) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        "/v1/payments", json=body, headers={"Idempotency-Key": uuid.uuid4().hex}
                    )
                    for body in bodies
                )
            )

    responses = asyncio.run(create_all())
    assert [r.status_code for r in responses] == [202] * len(bodies), [r.text for r in responses]
    payment_ids = [str(r.json()["payment_id"]) for r in responses]
    assert sum(batches) == len(bodies)
    assert max(batches) > 1  # they did share transactions
    commands = _sealed_commands(shop, len(bodies))
    expected = {p: s for p, s in commands.items() if s is not None}
    assert set(expected) == set(payment_ids[: len(people)])
    assert _stored(shop, payment_ids) == expected

    _project(shop, payment_ids)
    with shop.client() as client:
        answers = [client.get(f"/v1/payments/{payment_id}") for payment_id in payment_ids]
    assert [a.status_code for a in answers] == [200] * len(bodies)
    for answer, (ref, (email, name)) in zip(answers, people.items(), strict=False):
        assert answer.json()["customer"] == _shown(shop, ref, email, name)
    assert [a.json()["customer"] for a in answers[len(people) :]] == [None, None]

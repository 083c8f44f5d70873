"""Provider webhooks through real HTTP (uvicorn), real Kafka and real Postgres.

The app is served in a thread with its lifespan on, so the Kafka producer and
the Postgres pool live on the server's event loop; the test reads the topics
back from offset 0 and verifies every record the way an auditor would.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import psycopg
import pytest
from cryptography.x509.verification import Store
from fastapi import FastAPI

from ingress import db
from ingress.webhooks.errors import WebhookVerificationError
from ingress.webhooks.paypal_certs import PayPalCertificates
from ingress.webhooks.routes import webhook_router
from ledger.codec import EnvelopeCodec
from ledger.config import Settings
from ledger.envelope import AuditFact, Envelope, Money, Provider, ProviderEvent
from ledger.keys import KeyRing
from ledger.keystore import ActiveSigner, KeyStore
from ledger.registry import FileSchemaRegistry
from ledger.topics import TopicRole, topic_name
from ledger.verify import Verifier
from streams.provision import provision_topics
from streams.publisher import kafka_publisher
from tests.integration.test_envelope_kafka import read_all
from tests.support import webhooks as sign
from tests.support.servers import serve_in_thread

pytestmark = pytest.mark.integration

STRIPE_SECRET = "whsec_integration_test_secret"
COINBASE_SECRET = "cbc_integration_test_secret"
PAYPAL_WEBHOOK_ID = "9WH64421EX7720915"


@dataclass
class Stack:
    settings: Settings
    store: KeyStore
    registry: FileSchemaRegistry
    pki: sign.PayPalPKI

    def verifier(self) -> Verifier:
        return Verifier(EnvelopeCodec(self.registry), KeyRing([self.store.trusted_root()]))

    async def opened(self, role: TopicRole, expected: int) -> list[tuple[Any, Envelope]]:
        """Every record of a topic with its verified envelope, keys learnt from the keys topic."""
        verifier = self.verifier()
        for record in await read_all(self.settings, topic_name(self.settings, TopicRole.KEYS), 1):
            verifier.admit_endorsement(record.value)
        records = await read_all(self.settings, topic_name(self.settings, role), expected)
        return [(record, verifier.open(record.value)) for record in records]

    async def deliveries(self, provider: str, event_id: str) -> list[tuple[Any, ...]]:
        async with await psycopg.AsyncConnection.connect(self.settings.dsn()) as connection:
            cursor = await connection.execute(
                "SELECT body_sha256, aggregate_id, sequence FROM webhook_deliveries"
                " WHERE provider = %s AND provider_event_id = %s",
                (provider, event_id),
            )
            return await cursor.fetchall()


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    settings = Settings(
        topic_prefix=f"w{uuid.uuid4().hex[:10]}.",
        state_dir=tmp_path,
        stripe_webhook_secrets=[STRIPE_SECRET],
        coinbase_webhook_secrets=[COINBASE_SECRET],
        paypal_webhook_ids=[PAYPAL_WEBHOOK_ID],
    )
    report = await provision_topics(settings)
    assert report.ok, report.mismatches
    await db.migrate(settings.dsn())
    store = KeyStore(settings)
    registry = FileSchemaRegistry(settings.registry_dir)
    yield Stack(settings, store, registry, sign.PayPalPKI.make(datetime.now(UTC)))
    registry.close()
    store.close()


def serve(
    stack: Stack, *, explicit: bool = True, broken_kafka: bool = False
) -> AbstractContextManager[str]:
    """The webhook router on a FastAPI app; its publisher and pool are made in the lifespan.

    ``explicit`` passes them to ``webhook_router``; otherwise the router finds
    them on ``app.state.services``, as in ``ingress.app``. ``broken_kafka``
    stops the producer before the first request.
    """
    certificates = {sign.PAYPAL_CERT_URL: stack.pki.chain()}

    async def fetch(url: str) -> bytes:
        if url not in certificates:
            raise WebhookVerificationError("cert-not-found: HTTP 404")
        return certificates[url].encode()

    paypal = PayPalCertificates(fetch=fetch, trust_store=Store([stack.pki.root.certificate]))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        publisher = kafka_publisher(
            stack.settings,
            EnvelopeCodec(stack.registry),
            ActiveSigner(stack.store),
            source="/payledger/ingress",
        )
        pool = db.open_pool(stack.settings)
        await pool.open()
        await publisher.start()
        if broken_kafka:
            await publisher.stop()
        app.state.services = SimpleNamespace(publisher=publisher, pool=pool)
        app.include_router(
            webhook_router(
                settings=stack.settings,
                publisher=publisher if explicit else None,
                pool=pool if explicit else None,
                paypal_certificates=paypal,
                publish_timeout_s=3.0,
            )
        )
        try:
            yield
        finally:
            if not broken_kafka:
                await publisher.stop()
            await pool.close()

    return serve_in_thread(FastAPI(lifespan=lifespan), lifespan="on")


def stripe_delivery(
    event_id: str, payment_id: str, *, secret: str = STRIPE_SECRET, amount: int = 1050
) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(
        {
            "id": event_id,
            "object": "event",
            "type": "payment_intent.succeeded",
            "created": int(time.time()),
            "data": {
                "object": {
                    "id": f"pi_{event_id}",
                    "object": "payment_intent",
                    "amount": amount,
                    "currency": "eur",
                    "status": "succeeded",
                    "metadata": {"payledger_payment_id": payment_id},
                }
            },
        },
        indent=2,
    ).encode()
    return body, stripe_signed(body, secret)


def stripe_signed(body: bytes, secret: str = STRIPE_SECRET) -> dict[str, str]:
    return {"Stripe-Signature": sign.stripe_header(secret, int(time.time()), body)}


def post(url: str, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    with httpx.Client(base_url=url, timeout=30) as client:
        return client.post(
            path, content=body, headers={"Content-Type": "application/json", **headers}
        )


async def test_stripe_delivery_is_published_once_and_a_forgery_is_audited(stack: Stack) -> None:
    event_id, payment_id = f"evt_{uuid.uuid4().hex}", f"pay_{uuid.uuid4().hex[:12]}"
    body, headers = stripe_delivery(event_id, payment_id)
    forged_body, forged_headers = stripe_delivery(
        f"evt_{uuid.uuid4().hex}", payment_id, secret="whsec_not_the_secret", amount=1
    )
    with serve(stack) as url:
        first = post(url, "/v1/webhooks/stripe", body, headers)
        # Stripe's retry: the same event, signed again with a later timestamp.
        again = post(url, "/v1/webhooks/stripe", body, stripe_signed(body))
        forged = post(url, "/v1/webhooks/stripe", forged_body, forged_headers)

    assert first.status_code == 200, first.text
    assert first.json() == {"status": "recorded", "provider_event_id": event_id}
    assert again.status_code == 200
    assert again.json()["status"] == "duplicate"
    assert forged.status_code == 400
    assert forged.headers["content-type"] == "application/problem+json"
    problem = forged.json()
    assert problem["type"] == "/problems/webhook-verification-failed"
    assert "no-matching" not in forged.text  # which check failed is for the audit trail only

    ((record, envelope),) = await stack.opened(TopicRole.PROVIDER_EVENTS, 1)
    assert record.key == payment_id.encode()
    assert envelope.event_type == "provider.stripe.payment_intent.succeeded"
    assert envelope.aggregate_id == payment_id
    assert envelope.sequence == 1
    payload = envelope.payload
    assert isinstance(payload, ProviderEvent)
    assert payload.provider is Provider.STRIPE
    assert payload.provider_event_id == event_id
    assert payload.body_sha256 == hashlib.sha256(body).digest()
    assert payload.amount == Money(1050, "EUR")
    assert payload.status == "succeeded"

    ((_, audit),) = await stack.opened(TopicRole.AUDIT_FACTS, 1)
    fact = audit.payload
    assert isinstance(fact, AuditFact)
    assert fact.fact_type == "webhook.rejected"
    assert fact.actor == "stripe"
    assert fact.subject == json.loads(forged_body)["id"]
    assert fact.reason == "no-matching-signature"
    assert fact.digest == hashlib.sha256(forged_body).digest()

    assert await stack.deliveries("STRIPE", event_id) == [
        (hashlib.sha256(body).digest(), payment_id, 1)
    ]
    assert await stack.deliveries("STRIPE", json.loads(forged_body)["id"]) == []


async def test_sequences_count_per_aggregate(stack: Stack) -> None:
    payment_id = f"pay_{uuid.uuid4().hex[:12]}"
    events = [f"evt_{uuid.uuid4().hex}" for _ in range(3)]
    with serve(stack) as url:
        for event_id in events:
            response = post(url, "/v1/webhooks/stripe", *stripe_delivery(event_id, payment_id))
            assert response.status_code == 200, response.text
    opened = await stack.opened(TopicRole.PROVIDER_EVENTS, 3)
    by_event = {envelope.payload.provider_event_id: envelope for _, envelope in opened}  # type: ignore[union-attr]
    assert [by_event[event_id].sequence for event_id in events] == [1, 2, 3]


async def test_malformed_and_oversized_deliveries_are_refused_and_audited(stack: Stack) -> None:
    not_json = b"{this is signed but not JSON"
    not_json_headers = stripe_signed(not_json)
    huge = b"{" + b" " * (600 * 1024) + b"}"
    with serve(stack) as url:
        malformed = post(url, "/v1/webhooks/stripe", not_json, not_json_headers)
        too_large = post(url, "/v1/webhooks/coinbase", huge, {"X-CC-Webhook-Signature": "0" * 64})
        unsigned = post(url, "/v1/webhooks/paypal", b"{}", {})
    assert malformed.status_code == 400
    assert malformed.json()["type"] == "/problems/webhook-malformed"
    assert too_large.status_code == 413
    assert too_large.headers["content-type"] == "application/problem+json"
    assert unsigned.status_code == 400
    facts = [envelope.payload for _, envelope in await stack.opened(TopicRole.AUDIT_FACTS, 3)]
    by_actor = {fact.actor: fact for fact in facts}  # type: ignore[union-attr]
    assert len(facts) == 3
    assert by_actor["stripe"].reason == "invalid-json"  # type: ignore[union-attr]
    assert by_actor["stripe"].digest == hashlib.sha256(not_json).digest()  # type: ignore[union-attr]
    assert by_actor["coinbase"].reason == "body-too-large"  # type: ignore[union-attr]
    assert by_actor["coinbase"].digest is None  # type: ignore[union-attr]
    assert by_actor["paypal"].reason.startswith("missing-header")  # type: ignore[union-attr]
    assert await stack.opened(TopicRole.PROVIDER_EVENTS, 0) == []


def paypal_delivery(
    stack: Stack, event_id: str, transmission_id: str
) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(
        {
            "id": event_id,
            "event_type": "PAYMENT.CAPTURE.COMPLETED",
            "resource_type": "capture",
            "resource": {
                "id": f"CAP{event_id[-10:]}",
                "status": "COMPLETED",
                "amount": {"currency_code": "EUR", "value": "10.50"},
                "custom_id": "pay_paypal_1",
            },
        }
    ).encode()
    headers = sign.paypal_headers(
        stack.pki.leaf_key(),
        body=body,
        webhook_id=PAYPAL_WEBHOOK_ID,
        transmission_id=transmission_id,
        time=datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    )
    return body, headers


async def test_paypal_and_coinbase_deliveries(stack: Stack) -> None:
    paypal_event, transmission = f"WH-{uuid.uuid4().hex}", str(uuid.uuid4())
    paypal_body, paypal_headers = paypal_delivery(stack, paypal_event, transmission)
    # A second event under a transmission id already used: a signature is good once.
    reused_body, reused_headers = paypal_delivery(stack, f"WH-{uuid.uuid4().hex}", transmission)
    coinbase_event = str(uuid.uuid4())
    coinbase_body = json.dumps(
        {
            "id": 1,
            "event": {
                "id": coinbase_event,
                "type": "charge:confirmed",
                "data": {
                    "id": str(uuid.uuid4()),
                    "code": "ABCD1234",
                    "pricing": {"local": {"amount": "100.00", "currency": "USD"}},
                    "timeline": [{"status": "COMPLETED"}],
                },
            },
        }
    ).encode()
    coinbase_headers = {
        "X-CC-Webhook-Signature": sign.coinbase_header(COINBASE_SECRET, coinbase_body)
    }
    with serve(stack, explicit=False) as url:
        responses = [
            post(url, "/v1/webhooks/paypal", paypal_body, paypal_headers),
            post(url, "/v1/webhooks/paypal", paypal_body, paypal_headers),
            post(url, "/v1/webhooks/paypal", reused_body, reused_headers),
            post(url, "/v1/webhooks/coinbase", coinbase_body, coinbase_headers),
            post(url, "/v1/webhooks/coinbase", coinbase_body, coinbase_headers),
        ]
    assert [r.status_code for r in responses] == [200, 200, 400, 200, 200]
    assert [r.json()["status"] for r in responses if r.status_code == 200] == [
        "recorded",
        "duplicate",
        "recorded",
        "duplicate",
    ]
    assert responses[2].json()["type"] == "/problems/webhook-verification-failed"
    opened = await stack.opened(TopicRole.PROVIDER_EVENTS, 2)
    payloads = {envelope.payload.provider: envelope for _, envelope in opened}  # type: ignore[union-attr]
    assert len(opened) == 2
    assert payloads[Provider.PAYPAL].aggregate_id == "pay_paypal_1"
    assert payloads[Provider.PAYPAL].payload.amount == Money(1050, "EUR")  # type: ignore[union-attr]
    assert payloads[Provider.COINBASE].payload.amount == Money(10000, "USD")  # type: ignore[union-attr]
    ((_, audit),) = await stack.opened(TopicRole.AUDIT_FACTS, 1)
    assert audit.payload.reason == "replayed-transmission"  # type: ignore[union-attr]
    assert audit.payload.digest == hashlib.sha256(reused_body).digest()  # type: ignore[union-attr]


async def test_a_kafka_failure_records_nothing_and_asks_for_a_retry(stack: Stack) -> None:
    event_id = f"evt_{uuid.uuid4().hex}"
    body, headers = stripe_delivery(event_id, f"pay_{uuid.uuid4().hex[:12]}")
    with serve(stack, explicit=False, broken_kafka=True) as url:
        valid = post(url, "/v1/webhooks/stripe", body, headers)
        forged = post(url, "/v1/webhooks/stripe", body + b" ", headers)
    for response in (valid, forged):
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert int(response.headers["retry-after"]) > 0
    assert await stack.deliveries("STRIPE", event_id) == []
    with serve(stack) as url:
        retried = post(url, "/v1/webhooks/stripe", body, stripe_signed(body))
    assert retried.status_code == 200
    assert retried.json()["status"] == "recorded"

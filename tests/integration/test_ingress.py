"""The merchant API through real HTTP, with real Kafka and Postgres behind it."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ingress.app import create_app
from ingress.merchants import add_api_key, create_merchant, revoke_api_key, set_signature_key
from ledger.codec import EnvelopeCodec
from ledger.config import Settings
from ledger.envelope import AuditFact, PaymentCommand, SealedData
from ledger.keystore import KeyStore
from ledger.registry import FileSchemaRegistry
from ledger.topics import TopicRole, topic_name
from ledger.verify import Verifier
from streams.provision import provision_topics
from tests.integration.test_envelope_kafka import read_all
from tests.support.servers import serve_in_thread

pytestmark = pytest.mark.integration

PAN = "4111 1111 1111 1111"


@dataclass
class Ingress:
    url: str
    settings: Settings
    merchant_id: str
    api_key: str

    def client(self, api_key: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {api_key or self.api_key}"},
            timeout=30,
        )


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    base = Settings(topic_prefix=f"i{uuid.uuid4().hex[:10]}.", state_dir=tmp_path)
    return base.model_copy(update=overrides)


def _merchant(settings: Settings, **limits: object) -> tuple[str, str]:
    merchant_id = f"m_{uuid.uuid4().hex[:12]}"
    asyncio.run(create_merchant(settings, merchant_id, "Test shop", **limits))  # type: ignore[arg-type]
    return merchant_id, asyncio.run(add_api_key(settings, merchant_id)).token


@pytest.fixture
def ingress(tmp_path: Path) -> Iterator[Ingress]:
    settings = _settings(tmp_path)
    report = asyncio.run(provision_topics(settings))
    assert report.ok
    merchant_id, api_key = _merchant(settings)
    with serve_in_thread(create_app(settings), lifespan="on") as url:
        yield Ingress(url, settings, merchant_id, api_key)


def _verifier(settings: Settings) -> Verifier:
    store = KeyStore(settings)
    return Verifier(EnvelopeCodec(FileSchemaRegistry(settings.registry_dir)), store.keyring())


def _records(settings: Settings, role: TopicRole, expected: int) -> list:
    return asyncio.run(read_all(settings, topic_name(settings, role), expected))


def create_body(**overrides: object) -> dict:
    body = {
        "provider": "stripe",
        "amount_minor": 1050,
        "currency": "EUR",
        "capture_method": "manual",
        "description": "Order 1234",
        "metadata": {"order": "1234"},
        "customer": {
            "reference": "cust-77",
            "email": "ada@example.com",
            "name": "Ada Lovelace",
        },
    }
    body.update(overrides)
    return body


def test_create_is_accepted_only_after_the_command_is_on_kafka(ingress: Ingress) -> None:
    with ingress.client() as client:
        response = client.post(
            "/v1/payments", json=create_body(), headers={"Idempotency-Key": "k1"}
        )
    assert response.status_code == 202, response.text
    accepted = response.json()
    (record,) = _records(ingress.settings, TopicRole.COMMANDS, 1)
    envelope = _verifier(ingress.settings).open(record.value)
    assert envelope.event_id == accepted["event_id"]
    assert envelope.aggregate_id == accepted["payment_id"] == record.key.decode()
    command = envelope.payload
    assert isinstance(command, PaymentCommand)
    assert command.merchant_id == ingress.merchant_id
    assert command.amount is not None and command.amount.amount_minor == 1050
    # Personal data left the ingress sealed: not one byte of it in clear on Kafka.
    assert isinstance(command.customer, SealedData)
    for secret in (b"ada@example.com", b"Ada Lovelace", b"cust-77"):
        assert secret not in record.value


def test_idempotency_replays_conflicts_and_requires_a_key(ingress: Ingress) -> None:
    with ingress.client() as client:
        first = client.post("/v1/payments", json=create_body(), headers={"Idempotency-Key": "same"})
        again = client.post("/v1/payments", json=create_body(), headers={"Idempotency-Key": "same"})
        other = client.post(
            "/v1/payments", json=create_body(amount_minor=999), headers={"Idempotency-Key": "same"}
        )
        missing = client.post("/v1/payments", json=create_body())
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert other.status_code == 409
    assert other.headers["content-type"] == "application/problem+json"
    assert missing.status_code == 400
    assert missing.json()["type"] == "/problems/idempotency-key-required"
    assert len(_records(ingress.settings, TopicRole.COMMANDS, 1)) == 1


def test_concurrent_requests_with_one_key_make_one_command(ingress: Ingress) -> None:
    async def race() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=ingress.url, headers={"Authorization": f"Bearer {ingress.api_key}"}, timeout=30
        ) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        "/v1/payments", json=create_body(), headers={"Idempotency-Key": "race"}
                    )
                    for _ in range(12)
                )
            )

    responses = asyncio.run(race())
    assert {response.status_code for response in responses} == {202}
    assert len({response.text for response in responses}) == 1
    assert len(_records(ingress.settings, TopicRole.COMMANDS, 1)) == 1


def test_authentication_and_merchant_isolation(ingress: Ingress) -> None:
    other_id, other_key = _merchant(ingress.settings)
    with ingress.client() as client:
        created = client.post("/v1/payments", json=create_body(), headers={"Idempotency-Key": "a"})
    payment_id = created.json()["payment_id"]
    with httpx.Client(base_url=ingress.url, timeout=30) as anonymous:
        unauthenticated = anonymous.post(
            "/v1/payments", json=create_body(), headers={"Idempotency-Key": "b"}
        )
    with ingress.client(other_key) as intruder:
        foreign = intruder.post(
            f"/v1/payments/{payment_id}/capture", json={}, headers={"Idempotency-Key": "c"}
        )
        missing = intruder.post(
            "/v1/payments/pay_doesnotexist/capture", json={}, headers={"Idempotency-Key": "d"}
        )
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["content-type"] == "application/problem+json"
    # Another merchant's payment is indistinguishable from a missing one.
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json()["title"] == missing.json()["title"]
    key_id = other_key.split("_")[1]
    assert asyncio.run(revoke_api_key(ingress.settings, key_id))
    asyncio.run(asyncio.sleep(6))  # longer than the key cache's TTL
    with ingress.client(other_key) as revoked:
        refused = revoked.post("/v1/payments", json=create_body(), headers={"Idempotency-Key": "e"})
    assert refused.status_code == 401
    del other_id


def test_follow_up_commands_carry_increasing_sequences(ingress: Ingress) -> None:
    with ingress.client() as client:
        created = client.post("/v1/payments", json=create_body(), headers={"Idempotency-Key": "p"})
        payment_id = created.json()["payment_id"]
        capture = client.post(
            f"/v1/payments/{payment_id}/capture",
            json={"amount_minor": 500},
            headers={"Idempotency-Key": "p-capture"},
        )
        refund = client.post(
            f"/v1/payments/{payment_id}/refund",
            json={"amount_minor": 200, "reason": "damaged"},
            headers={"Idempotency-Key": "p-refund"},
        )
        too_much = client.post(
            f"/v1/payments/{payment_id}/capture",
            json={"amount_minor": 5000},
            headers={"Idempotency-Key": "p-too-much"},
        )
    assert capture.status_code == refund.status_code == 202
    assert too_much.status_code == 422
    verifier = _verifier(ingress.settings)
    envelopes = sorted(
        (verifier.open(r.value) for r in _records(ingress.settings, TopicRole.COMMANDS, 3)),
        key=lambda e: e.sequence,
    )
    assert [e.sequence for e in envelopes] == [1, 2, 3]
    assert [e.event_type for e in envelopes] == [
        "payment.command.create",
        "payment.command.capture",
        "payment.command.refund",
    ]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (create_body(amount_minor=0), 422),
        (create_body(amount_minor=-5), 422),
        (create_body(amount_minor=10.5), 422),
        (create_body(currency="XYZ"), 422),
        (create_body(unexpected="field"), 422),
        (create_body(metadata={f"k{i}": "v" for i in range(60)}), 422),
    ],
)
def test_validation_problems(ingress: Ingress, body: dict, status: int) -> None:
    with ingress.client() as client:
        response = client.post(
            "/v1/payments", json=body, headers={"Idempotency-Key": uuid.uuid4().hex}
        )
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == status


def test_oversized_body_is_413(ingress: Ingress) -> None:
    with ingress.client() as client:
        response = client.post(
            "/v1/payments",
            content=b'{"description": "'
            + b"x" * (ingress.settings.request_body_bytes_max + 10)
            + b'"}',
            headers={"Idempotency-Key": "big", "Content-Type": "application/json"},
        )
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"


def test_card_numbers_are_refused_audited_and_never_stored(ingress: Ingress) -> None:
    with ingress.client() as client:
        response = client.post(
            "/v1/payments",
            json=create_body(metadata={"note": f"card {PAN} exp 12/29"}),
            headers={"Idempotency-Key": "pan"},
        )
    assert response.status_code == 422
    assert response.json()["type"] == "/problems/card-data-refused"
    digits = PAN.replace(" ", "").encode()
    assert digits not in response.content and PAN.encode() not in response.content
    verifier = _verifier(ingress.settings)
    # The merchant's creation and key issue are audit facts too; pick the refusal.
    records = _records(ingress.settings, TopicRole.AUDIT_FACTS, 3)
    facts = [(record, verifier.open(record.value).payload) for record in records]
    refusals = [
        (record, fact)
        for record, fact in facts
        if isinstance(fact, AuditFact) and fact.fact_type == "request.card-data-refused"
    ]
    assert len(refusals) == 1
    _, fact = refusals[0]
    assert fact.actor == ingress.merchant_id
    assert "metadata.note" in fact.details["paths"]
    for other in records:
        assert digits not in other.value and PAN.encode() not in other.value
    assert _records(ingress.settings, TopicRole.COMMANDS, 0) == []


def test_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert asyncio.run(provision_topics(settings)).ok
    merchant_id, api_key = _merchant(settings, rate_per_s=0.5, burst=2)
    with (
        serve_in_thread(create_app(settings), lifespan="on") as url,
        httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30
        ) as client,
    ):
        statuses = [
            client.post("/v1/payments", json=create_body(), headers={"Idempotency-Key": f"r{i}"})
            for i in range(3)
        ]
    assert [r.status_code for r in statuses] == [202, 202, 429]
    assert int(statuses[2].headers["Retry-After"]) >= 1
    del merchant_id


def test_signed_requests(ingress: Ingress) -> None:
    from http_message_signatures import HTTPMessageSigner, HTTPSignatureKeyResolver, algorithms

    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes_raw()
    key_id = f"shop-key-{uuid.uuid4().hex[:8]}"
    asyncio.run(
        set_signature_key(ingress.settings, ingress.merchant_id, key_id, public, require=True)
    )

    class Keys(HTTPSignatureKeyResolver):
        def resolve_private_key(self, key_id: str):
            return private

    signer = HTTPMessageSigner(signature_algorithm=algorithms.ED25519, key_resolver=Keys())
    body = json.dumps(create_body()).encode()

    def signed_request(client: httpx.Client, key: str, tamper: bool = False) -> httpx.Response:
        request = client.build_request(
            "POST",
            "/v1/payments",
            content=body,
            headers={"Idempotency-Key": key, "Content-Type": "application/json"},
        )
        signer.sign(
            request,
            key_id=key_id,
            covered_component_ids=("@method", "@target-uri", "content-digest"),
            body=body,
        )
        if tamper:
            request = client.build_request(
                "POST",
                "/v1/payments",
                content=body.replace(b"1050", b"9050"),
                headers=request.headers,
            )
        return client.send(request)

    asyncio.run(asyncio.sleep(6))  # let the merchant cache pick up the new key requirement
    with ingress.client() as client:
        unsigned = client.post("/v1/payments", json=create_body(), headers={"Idempotency-Key": "u"})
        good = signed_request(client, "s1")
        tampered = signed_request(client, "s2", tamper=True)
    assert unsigned.status_code == 401
    assert good.status_code == 202, good.text
    assert tampered.status_code == 401


def test_openapi_metrics_and_health(ingress: Ingress) -> None:
    with httpx.Client(base_url=ingress.url, timeout=30) as client:
        document = client.get("/openapi.json").json()
        assert document["openapi"].startswith("3.1")
        assert "/v1/payments" in document["paths"]
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").json()["status"] == "ready"
        client.post("/v1/payments", json={})
        metrics = client.get("/metrics").text
    assert (
        'payledger_http_requests_total{method="POST",route="/v1/payments",status="401"}' in metrics
    )

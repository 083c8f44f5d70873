"""PayPal offline verification: the vectors, the certificate URL rule, the cache, the fetch."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.verification import Store
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from ingress.webhooks import paypal
from ingress.webhooks.errors import MalformedEvent, WebhookVerificationError
from ingress.webhooks.paypal import PayPalHeaders
from ingress.webhooks.paypal_certs import (
    PayPalCertificates,
    check_cert_url,
    default_trust_store,
    fetch_https,
    verified_leaf,
)
from ledger.envelope import Money, PaymentEventKind, Provider
from ledger.payments.transitions import map_event
from tests.support import webhooks as sign
from tests.support.servers import serve_in_thread

VECTORS = json.loads(
    (Path(__file__).parents[1] / "vectors" / "webhooks" / "paypal.json").read_text()
)
CASES = VECTORS["cases"]
NOW = datetime.fromisoformat(VECTORS["now"])
TRUST = Store([x509.load_pem_x509_certificate(pem.encode()) for pem in VECTORS["trust_roots"]])
VALID = CASES[0]


class FakeFetch:
    """Serves the vector certificates; an unknown URL is PayPal's 404."""

    def __init__(self, certificates: dict[str, str]) -> None:
        self.certificates = certificates
        self.calls: list[str] = []

    async def __call__(self, url: str) -> bytes:
        self.calls.append(url)
        if url not in self.certificates:
            raise WebhookVerificationError("cert-not-found: HTTP 404")
        return self.certificates[url].encode()


def headers_of(case: dict[str, Any]) -> PayPalHeaders:
    values = {name.lower(): value for name, value in case["headers"].items()}
    return PayPalHeaders.from_lookup(values.get)


async def verify(
    case: dict[str, Any], fetch: FakeFetch | None = None, **overrides: Any
) -> FakeFetch:
    fetch = fetch or FakeFetch(VECTORS["certificates"])
    options: dict[str, Any] = {
        "webhook_ids": VECTORS["webhook_ids"],
        "certificates": PayPalCertificates(fetch=fetch, trust_store=TRUST, clock=lambda: NOW),
        "now": NOW,
        "tolerance_s": VECTORS["tolerance_s"],
    }
    options.update(overrides)
    await paypal.verify(headers_of(case), case["body"].encode(), **options)
    return fetch


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
async def test_vector(case: dict[str, Any]) -> None:
    if case["expect"] == "ok":
        await verify(case)
        return
    fetch = FakeFetch(VECTORS["certificates"])
    with pytest.raises(WebhookVerificationError) as caught:
        await verify(case, fetch)
    assert caught.value.reason.partition(":")[0] == case["expect"]
    assert not caught.value.retryable
    if case["expect"] in ("bad-cert-url", "stale-timestamp", "future-timestamp"):
        assert fetch.calls == [], "refused before any network request"


def test_the_vectors_cover_every_required_case() -> None:
    required = {
        "valid",
        "lookalike-host",
        "userinfo-trick",
        "explicit-port",
        "http-cert-url",
        "untrusted-ca",
        "expired-cert",
        "cert-for-another-domain",
        "wrong-auth-algo",
        "stale-301s",
        "future-301s",
        "crc-mismatch-modified-body",
        "truncated-body",
    }
    assert required <= {case["name"] for case in CASES}


async def test_the_default_trust_store_does_not_trust_the_test_ca() -> None:
    with pytest.raises(WebhookVerificationError) as caught:
        await verify(
            VALID, certificates=PayPalCertificates(fetch=FakeFetch(VECTORS["certificates"]))
        )
    assert caught.value.reason.startswith("cert-untrusted")


async def test_no_configured_webhook_id_refuses_everything() -> None:
    with pytest.raises(WebhookVerificationError) as caught:
        await verify(VALID, webhook_ids=[])
    assert caught.value.reason == "not-configured"


async def test_the_transmission_window_is_configurable() -> None:
    later = NOW + timedelta(seconds=600)
    with pytest.raises(WebhookVerificationError, match="stale-timestamp"):
        await verify(VALID, now=later)
    await verify(VALID, now=later, tolerance_s=900)


async def test_the_chain_is_checked_at_the_transmission_time_not_today() -> None:
    # The vector certificates were made around NOW; they verify however much
    # later this test runs, because the injected clock is NOW.
    (expired,) = [c for c in CASES if c["name"] == "expired-cert"]
    with pytest.raises(WebhookVerificationError, match="cert-untrusted"):
        await verify(expired)


async def test_a_missing_header_is_named() -> None:
    for name in paypal.HEADER_NAMES:
        case = {
            **VALID,
            "headers": {k: v for k, v in VALID["headers"].items() if k.lower() != name},
        }
        with pytest.raises(WebhookVerificationError) as caught:
            await verify(case)
        assert caught.value.reason == f"missing-header: {name.upper()}"


async def test_a_leaf_without_an_rsa_key_is_refused() -> None:
    pki = sign.PayPalPKI.make(NOW)
    ec_leaf = sign.make_intermediate(
        pki.root, "messageverificationcerts.paypal.com", not_before=NOW, not_after=NOW
    )
    transmission = paypal.parse_transmission(headers_of(VALID), now=NOW, tolerance_s=300)
    with pytest.raises(WebhookVerificationError, match="cert-key-not-rsa"):
        paypal.verify_signature(
            transmission,
            VALID["body"].encode(),
            webhook_ids=VECTORS["webhook_ids"],
            certificate=ec_leaf.certificate,
        )


def test_a_fresh_delivery_signed_like_paypal_verifies() -> None:
    pki = sign.PayPalPKI.make(NOW)
    body = b'{"id": "WH-1", "event_type": "PAYMENT.CAPTURE.COMPLETED"}'
    headers = sign.paypal_headers(
        pki.leaf_key(), body=body, webhook_id="WEBHOOK1", transmission_id="t-1", time=VECTORS["now"]
    )
    values = {name.lower(): value for name, value in headers.items()}
    transmission = paypal.parse_transmission(
        PayPalHeaders.from_lookup(values.get), now=NOW, tolerance_s=300
    )
    leaf = verified_leaf(
        [pki.leaf.certificate, pki.intermediate.certificate], Store([pki.root.certificate]), NOW
    )
    paypal.verify_signature(transmission, body, webhook_ids=["WEBHOOK1"], certificate=leaf)
    with pytest.raises(WebhookVerificationError, match="no-matching-signature"):
        paypal.verify_signature(
            transmission, body + b" ", webhook_ids=["WEBHOOK1"], certificate=leaf
        )


def test_the_crc_is_unsigned_decimal() -> None:
    # zlib.crc32(b"hello") is 907060870; one with the top bit set must not go negative.
    assert paypal.crc32(b"hello") == 907060870
    assert paypal.crc32(b"payledger-2") == 2722986264  # top bit set: as a signed int32, negative
    assert paypal.message("i", "t", "w", b"hello") == b"i|t|w|907060870"


# The certificate URL rule.


@pytest.mark.parametrize(
    "url",
    [
        "https://api.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-a5cafa77",
        "https://api-m.paypal.com/v1/notifications/certs/CERT-1",
        "https://api.sandbox.paypal.com/v1/notifications/certs/CERT-1",
        "https://api-m.sandbox.paypal.com/v1/notifications/certs/CERT-1",
        "https://API.PayPal.com/v1/notifications/certs/CERT-1",
    ],
)
def test_paypal_certificate_urls_are_accepted(url: str) -> None:
    assert check_cert_url(url) == url.replace("API.PayPal.com", "api.paypal.com")


@pytest.mark.parametrize(
    "url",
    [
        "http://api.paypal.com/v1/notifications/certs/CERT-1",
        "ftp://api.paypal.com/v1/notifications/certs/CERT-1",
        "//api.paypal.com/v1/notifications/certs/CERT-1",
        "https://api.paypal.com.evil.com/v1/notifications/certs/CERT-1",
        "https://api.paypal.com./v1/notifications/certs/CERT-1",
        "https://evilapi.paypal.com/v1/notifications/certs/CERT-1",
        "https://www.paypal.com/v1/notifications/certs/CERT-1",
        "https://paypal.com/v1/notifications/certs/CERT-1",
        "https://api.paypal.com@evil.com/v1/notifications/certs/CERT-1",
        "https://user:pass@api.paypal.com/v1/notifications/certs/CERT-1",
        "https://api.paypal.com:443/v1/notifications/certs/CERT-1",
        "https://api.paypal.com:8443/v1/notifications/certs/CERT-1",
        "https://api.paypal.com\\@evil.com/v1/notifications/certs/CERT-1",
        "https://evil.com#@api.paypal.com/v1/notifications/certs/CERT-1",
        "https://evil.com?@api.paypal.com/v1/notifications/certs/CERT-1",
        "https://api.paypal.com/v1/notifications/certs/CERT-1?redirect=evil",
        "https://api.paypal.com/v1/notifications/certs/CERT-1#x",
        "https://api.paypal.com/v1/notifications/certs/../../oauth2/token",
        "https://api.paypal.com/v1/notifications/certs/%2e%2e",
        "https://api.paypal.com/v1/notifications/certs/",
        "https://api.paypal.com/v1/oauth2/token",
        "https://\u0430pi.paypal.com/v1/notifications/certs/CERT-1",  # Cyrillic "a"
        "https://[::1]/v1/notifications/certs/CERT-1",
        "https://api.paypal.com/v1/notifications/certs/CERT-" + "1" * 600,
        "",
    ],
)
def test_other_certificate_urls_are_refused(url: str) -> None:
    with pytest.raises(WebhookVerificationError) as caught:
        check_cert_url(url)
    assert caught.value.reason.startswith("bad-cert-url")


# The cache.


async def test_chains_are_cached_per_url_until_the_ttl() -> None:
    fetch = FakeFetch(VECTORS["certificates"])
    now = [NOW]
    certificates = PayPalCertificates(
        fetch=fetch, trust_store=TRUST, clock=lambda: now[0], ttl_s=60
    )
    url = sign.PAYPAL_CERT_URL
    await certificates.leaf(url, at=NOW)
    await certificates.leaf(url, at=NOW)
    assert fetch.calls == [url]
    now[0] = NOW + timedelta(seconds=61)
    await certificates.leaf(url, at=NOW)
    assert fetch.calls == [url, url]


async def test_the_cache_is_bounded_and_failures_are_not_cached() -> None:
    fetch = FakeFetch(VECTORS["certificates"])
    certificates = PayPalCertificates(
        fetch=fetch, trust_store=TRUST, clock=lambda: NOW, entries_max=2
    )
    urls = list(VECTORS["certificates"])[:3]
    for url in urls:
        # Some vector chains do not verify; they are cached all the same.
        with contextlib.suppress(WebhookVerificationError):
            await certificates.leaf(url, at=NOW)
    assert len(certificates) == 2
    missing = "https://api.paypal.com/v1/notifications/certs/CERT-missing"
    for _ in range(2):
        with pytest.raises(WebhookVerificationError, match="cert-not-found"):
            await certificates.leaf(missing, at=NOW)
    assert fetch.calls.count(missing) == 2


async def test_a_cached_chain_is_still_verified_at_each_transmission_time() -> None:
    fetch = FakeFetch(VECTORS["certificates"])
    certificates = PayPalCertificates(fetch=fetch, trust_store=TRUST, clock=lambda: NOW)
    await certificates.leaf(sign.PAYPAL_CERT_URL, at=NOW)
    with pytest.raises(WebhookVerificationError, match="cert-untrusted"):
        await certificates.leaf(sign.PAYPAL_CERT_URL, at=NOW + timedelta(days=3650))


# The real fetch, against a local server (it does not check the URL rule itself).


def _certificate_server() -> Starlette:
    pem = VECTORS["certificates"][sign.PAYPAL_CERT_URL].encode()

    async def serve(request: Request) -> Response:
        kind = request.path_params["kind"]
        if kind == "ok":
            return Response(pem, media_type="application/x-pem-file")
        if kind == "huge":
            return Response(b"A" * 70_000)
        if kind == "redirect":
            return RedirectResponse("/certs/ok")
        return Response(status_code=int(kind))

    return Starlette(routes=[Route("/certs/{kind}", serve)])


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serve_in_thread(_certificate_server()) as base:
        yield base


async def test_fetch_returns_the_body(server: str) -> None:
    assert (
        await fetch_https(f"{server}/certs/ok")
        == VECTORS["certificates"][sign.PAYPAL_CERT_URL].encode()
    )


@pytest.mark.parametrize(
    ("kind", "reason", "retryable"),
    [
        ("404", "cert-not-found", False),
        ("redirect", "cert-not-found", False),
        ("500", "cert-unavailable", True),
        ("503", "cert-unavailable", True),
        ("429", "cert-unavailable", True),
        ("huge", "bad-cert", False),
    ],
)
async def test_fetch_failures(server: str, kind: str, reason: str, retryable: bool) -> None:
    with pytest.raises(WebhookVerificationError) as caught:
        await fetch_https(f"{server}/certs/{kind}")
    assert caught.value.reason.partition(":")[0] == reason
    assert caught.value.retryable is retryable


async def test_fetch_from_nowhere_is_retryable() -> None:
    with pytest.raises(WebhookVerificationError) as caught:
        await fetch_https("http://127.0.0.1:9/certs/ok")
    assert caught.value.retryable


def test_the_default_trust_store_loads_the_certifi_roots() -> None:
    assert isinstance(default_trust_store(), Store)
    assert default_trust_store() is default_trust_store()


# Normalizer.


def test_normalize_a_capture() -> None:
    normalized = paypal.normalize(VALID["body"].encode())
    assert normalized.provider is Provider.PAYPAL
    assert normalized.event_id == "WH-58D329510W468432D-8HN650336L201105X"
    assert normalized.event_type == "PAYMENT.CAPTURE.COMPLETED"
    assert normalized.envelope_type == "provider.paypal.PAYMENT.CAPTURE.COMPLETED"
    assert normalized.object_id == "42311647XV020574X"
    assert normalized.payment_id == "pay_01JVECTOR0002"
    assert normalized.status == "COMPLETED"
    assert normalized.amount == Money(1050, "EUR")
    assert normalized.fee == Money(66, "EUR")
    assert normalized.occurred_at == datetime(2026, 11, 23, 11, 59, 49, tzinfo=UTC)
    assert normalized.fields == {
        "resource_type": "capture",
        "event_version": "1.0",
        "order_id": "5O190127TN364715T",
        "final_capture": "true",
    }


def test_normalize_an_order_reads_the_first_purchase_unit() -> None:
    body = {
        "id": "WH-2",
        "event_type": "CHECKOUT.ORDER.APPROVED",
        "resource_type": "checkout-order",
        "resource": {
            "id": "5O190127TN364715T",
            "status": "APPROVED",
            "purchase_units": [
                {"custom_id": "pay_7", "amount": {"currency_code": "JPY", "value": "1000"}}
            ],
        },
    }
    normalized = paypal.normalize(json.dumps(body).encode())
    assert normalized.payment_id == "pay_7"
    assert normalized.aggregate_id() == "pay_7"
    assert normalized.amount == Money(1000, "JPY")


def test_a_refund_fee_comes_from_the_payable_breakdown() -> None:
    body = {
        "id": "WH-3",
        "event_type": "PAYMENT.CAPTURE.REFUNDED",
        "resource": {
            "id": "1JU08902781691411",
            "amount": {"currency_code": "USD", "value": "5.00"},
            "seller_payable_breakdown": {"paypal_fee": {"currency_code": "USD", "value": "0.15"}},
        },
    }
    normalized = paypal.normalize(json.dumps(body).encode())
    assert normalized.amount == Money(500, "USD")
    assert normalized.fee == Money(15, "USD")
    assert normalized.aggregate_id() == "paypal:1JU08902781691411"


def _dispute(event_type: str, status: str, **extra: object) -> bytes:
    resource = {
        "dispute_id": "PP-D-27803",
        "status": status,
        "reason": "MERCHANDISE_OR_SERVICE_NOT_RECEIVED",
        "dispute_amount": {"currency_code": "USD", "value": "4.00"},
        "disputed_transactions": [
            {
                "seller_transaction_id": "3BC38643YC807283D",
                "custom": "pay_9",
                "gross_amount": {"currency_code": "USD", "value": "10.00"},
            }
        ],
        **extra,
    }
    return json.dumps(
        {"id": "WH-5", "event_type": event_type, "resource_type": "dispute", "resource": resource}
    ).encode()


def test_a_dispute_names_its_payment_its_id_and_its_amount() -> None:
    normalized = paypal.normalize(_dispute("CUSTOMER.DISPUTE.CREATED", "OPEN"))
    assert normalized.object_id == "PP-D-27803"
    assert normalized.payment_id == "pay_9"
    assert normalized.aggregate_id() == "pay_9"
    assert normalized.amount == Money(400, "USD")
    assert normalized.status == "OPEN"
    assert normalized.fields == {
        "resource_type": "dispute",
        "seller_transaction_id": "3BC38643YC807283D",
    }


@pytest.mark.parametrize(
    ("outcome", "kind"),
    [
        ("RESOLVED_BUYER_FAVOUR", PaymentEventKind.DISPUTE_LOST),
        ("RESOLVED_SELLER_FAVOUR", PaymentEventKind.DISPUTE_WON),
    ],
)
def test_a_resolved_dispute_carries_its_outcome(outcome: str, kind: PaymentEventKind) -> None:
    body = _dispute(
        "CUSTOMER.DISPUTE.RESOLVED", "RESOLVED", dispute_outcome={"outcome_code": outcome}
    )
    normalized = paypal.normalize(body)
    assert normalized.fields["outcome_code"] == outcome
    event = normalized.provider_event(received_at=datetime.now(UTC), body_sha256=bytes(32))
    transition = map_event(event, "USD")
    assert (transition.kind, transition.dispute_id) == (kind, "PP-D-27803")


@pytest.mark.parametrize(
    ("value", "currency"),
    [("10.505", "EUR"), ("100.5", "JPY"), ("-1.00", "EUR"), ("1e3", "EUR"), ("10.00", "XXX")],
)
def test_amounts_that_cannot_be_converted_are_kept_as_text(value: str, currency: str) -> None:
    body = {
        "id": "WH-4",
        "event_type": "PAYMENT.CAPTURE.COMPLETED",
        "resource": {"id": "C1", "amount": {"currency_code": currency, "value": value}},
    }
    normalized = paypal.normalize(json.dumps(body).encode())
    assert normalized.amount is None
    assert normalized.fields["amount_unconverted"] == f"{value} {currency}"


def test_an_event_without_id_is_malformed() -> None:
    with pytest.raises(MalformedEvent, match="missing-field: id"):
        paypal.normalize(b'{"event_type": "PAYMENT.CAPTURE.COMPLETED"}')

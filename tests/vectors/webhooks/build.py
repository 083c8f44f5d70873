"""Build the webhook vectors: ``python -m tests.vectors.webhooks.build``.

Each case is a delivery (headers and exact body bytes) signed the way the
provider signs (see ``tests/support/webhooks.py`` and this folder's README),
with the verdict our verifier must reach: ``"ok"`` or the reason code it must
raise. The PayPal PKI (keys, certificates) is generated afresh on every run,
so rerunning rewrites ``paypal.json`` with new certificates and signatures;
the verdicts stay the same. No private key is stored.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.support import webhooks as sign

HERE = Path(__file__).resolve().parent
NOW = 1_795_435_200  # 2026-11-23T12:00:00Z
STRIPE_SECRETS = ["whsec_payledger_test_current_4f9a", "whsec_payledger_test_previous_77c1"]
COINBASE_SECRETS = ["cbc_payledger_test_current_0b3d", "cbc_payledger_test_previous_9e12"]
PAYPAL_WEBHOOK_IDS = ["8PT597110X687430LKGECATA", "1JE4291016473214C"]

STRIPE_BODY = json.dumps(
    {
        "id": "evt_3PayledgerVector0001",
        "object": "event",
        "api_version": "2025-01-27.acacia",
        "created": NOW - 2,
        "data": {
            "object": {
                "id": "pi_3PayledgerVector0001",
                "object": "payment_intent",
                "amount": 1050,
                "amount_received": 1050,
                "currency": "eur",
                "status": "succeeded",
                "metadata": {"payledger_payment_id": "pay_01JVECTOR0001"},
            }
        },
        "livemode": False,
        "pending_webhooks": 1,
        "type": "payment_intent.succeeded",
    },
    indent=2,
)


def _case(name: str, expect: str, body: str, **headers: str | None) -> dict[str, Any]:
    return {"name": name, "expect": expect, "body": body, "headers": headers}


def stripe_cases() -> dict[str, Any]:
    body = STRIPE_BODY.encode()
    good = sign.stripe_header(STRIPE_SECRETS[0], NOW, body)
    forged = sign.stripe_header("whsec_attacker_guess_0000", NOW, body)
    forged_v1 = forged.split(",")[1]
    good_v1 = good.split(",")[1]
    cases = [
        _case("valid", "ok", STRIPE_BODY, signature=good),
        _case(
            "valid-previous-secret-during-rotation",
            "ok",
            STRIPE_BODY,
            signature=sign.stripe_header(STRIPE_SECRETS[1], NOW, body),
        ),
        _case(
            "valid-one-of-several-v1",
            "ok",
            STRIPE_BODY,
            signature=f"t={NOW},{forged_v1},{good_v1},v0={'0' * 64}",
        ),
        _case(
            "valid-at-tolerance-edge-past",
            "ok",
            STRIPE_BODY,
            signature=sign.stripe_header(STRIPE_SECRETS[0], NOW - 300, body),
        ),
        _case(
            "valid-at-tolerance-edge-future",
            "ok",
            STRIPE_BODY,
            signature=sign.stripe_header(STRIPE_SECRETS[0], NOW + 300, body),
        ),
        _case("forged-wrong-secret", "no-matching-signature", STRIPE_BODY, signature=forged),
        _case(
            "stale-301s",
            "stale-timestamp",
            STRIPE_BODY,
            signature=sign.stripe_header(STRIPE_SECRETS[0], NOW - 301, body),
        ),
        _case(
            "future-301s",
            "future-timestamp",
            STRIPE_BODY,
            signature=sign.stripe_header(STRIPE_SECRETS[0], NOW + 301, body),
        ),
        _case("truncated-body", "no-matching-signature", STRIPE_BODY[:-1], signature=good),
        _case(
            "modified-body",
            "no-matching-signature",
            STRIPE_BODY.replace('"amount": 1050', '"amount": 1'),
            signature=good,
        ),
        _case(
            "timestamp-changed-after-signing",
            "no-matching-signature",
            STRIPE_BODY,
            signature=good.replace(f"t={NOW}", f"t={NOW + 1}"),
        ),
        _case("only-v0", "malformed-header", STRIPE_BODY, signature=f"t={NOW},v0={'a' * 64}"),
        _case("missing-t", "malformed-header", STRIPE_BODY, signature=good_v1),
        _case("non-integer-t", "malformed-header", STRIPE_BODY, signature=f"t=12ab,{good_v1}"),
        _case("signed-t", "malformed-header", STRIPE_BODY, signature=f"t=+{NOW},{good_v1}"),
        _case("duplicated-t", "malformed-header", STRIPE_BODY, signature=f"t={NOW},{good}"),
        _case("junk-item", "malformed-header", STRIPE_BODY, signature=f"{good},junk"),
        _case("trailing-comma", "malformed-header", STRIPE_BODY, signature=f"{good},"),
        _case("empty", "malformed-header", STRIPE_BODY, signature=""),
        _case(
            "huge-header",
            "malformed-header",
            STRIPE_BODY,
            signature=good + ",v1=" + "0" * 4096,
        ),
        _case(
            "too-many-v1",
            "malformed-header",
            STRIPE_BODY,
            signature=f"t={NOW}," + ",".join([forged_v1] * 16) + f",{good_v1}",
        ),
        _case(
            "v1-upper-case-hex",
            "no-matching-signature",
            STRIPE_BODY,
            signature=f"t={NOW},{good_v1.upper().replace('V1=', 'v1=')}",
        ),
        _case("missing-header", "missing-header", STRIPE_BODY, signature=None),
    ]
    return {
        "scheme": "Stripe-Signature v1 (stripe-python _webhook.py WebhookSignature)",
        "secrets": STRIPE_SECRETS,
        "now": NOW,
        "tolerance_s": 300,
        "cases": cases,
    }


COINBASE_UPSTREAM_BODY = (
    '{"id":1,"scheduled_for":"2017-01-31T20:50:02Z","attempt_number":1,"event":{'
    '"id":"24934862-d980-46cb-9402-43c81b0cdba6","type":"charge:created",'
    '"api_version":"2018-03-22","created_at":"2017-01-31T20:49:02Z","data":{'
    '"code":"66BEOV2A","name":"The Sovereign Individual",'
    '"description":"Mastering the Transition to the Information Age",'
    '"hosted_url":"https://commerce.coinbase.com/charges/66BEOV2A",'
    '"created_at":"2017-01-31T20:49:02Z","expires_at":"2017-01-31T21:04:02Z",'
    '"timeline":[{"time":"2017-01-31T20:49:02Z","status":"NEW"}],'
    '"metadata":{},"pricing_type":"no_price","payments":[],'
    '"addresses":{"bitcoin":"0000000000000000000000000000000000",'
    '"ethereum":"0x0000000000000000000000000000000000000000",'
    '"litecoin":"3000000000000000000000000000000000",'
    '"bitcoincash":"bitcoincash:000000000000000000000000000000000000000000"}}}}'
)
COINBASE_UPSTREAM_SECRET = "30291a20-0bd1-4267-9b0f-e6e7b123c0bf"
COINBASE_UPSTREAM_SIGNATURE = "8be7742c7d372f08a6a3224edadf18a22b65fa9e28f3f2de97376cdaa092590d"

COINBASE_BODY = json.dumps(
    {
        "id": 7,
        "scheduled_for": "2026-11-23T11:59:58Z",
        "attempt_number": 1,
        "event": {
            "id": "0f8c2d4e-6a1b-4c3d-9e8f-7a6b5c4d3e2f",
            "resource": "event",
            "type": "charge:confirmed",
            "api_version": "2018-03-22",
            "created_at": "2026-11-23T11:59:57Z",
            "data": {
                "id": "f765421f-2d2c-4f3e-9f1a-0e3c7d2b1a00",
                "code": "PAYLDG01",
                "metadata": {"payment_id": "pay_01JVECTOR0003"},
                "pricing": {
                    "local": {"amount": "100.00", "currency": "USD"},
                    "bitcoin": {"amount": "0.00105000", "currency": "BTC"},
                },
                "payments": [
                    {
                        "network": "bitcoin",
                        "value": {
                            "local": {"amount": "100.00", "currency": "USD"},
                            "crypto": {"amount": "0.00105000", "currency": "BTC"},
                        },
                    }
                ],
                "timeline": [{"status": "NEW"}, {"status": "PENDING"}, {"status": "COMPLETED"}],
            },
        },
    },
    separators=(",", ":"),
)


def coinbase_cases() -> dict[str, Any]:
    body = COINBASE_BODY.encode()
    good = sign.coinbase_header(COINBASE_SECRETS[0], body)
    cases = [
        _case("valid", "ok", COINBASE_BODY, signature=good),
        _case(
            "valid-previous-secret-during-rotation",
            "ok",
            COINBASE_BODY,
            signature=sign.coinbase_header(COINBASE_SECRETS[1], body),
        ),
        _case(
            "forged-wrong-secret",
            "no-matching-signature",
            COINBASE_BODY,
            signature=sign.coinbase_header("cbc_attacker_guess_0000", body),
        ),
        _case("truncated-body", "no-matching-signature", COINBASE_BODY[:-1], signature=good),
        _case(
            "modified-body",
            "no-matching-signature",
            COINBASE_BODY.replace('"100.00"', '"1.00"'),
            signature=good,
        ),
        _case("upper-case-hex", "malformed-header", COINBASE_BODY, signature=good.upper()),
        _case("not-hex", "malformed-header", COINBASE_BODY, signature="z" * 64),
        _case("short", "malformed-header", COINBASE_BODY, signature=good[:-2]),
        _case("sha256-prefixed", "malformed-header", COINBASE_BODY, signature=f"sha256={good}"),
        _case("empty", "malformed-header", COINBASE_BODY, signature=""),
        _case("huge-header", "malformed-header", COINBASE_BODY, signature=good * 64),
        _case("missing-header", "missing-header", COINBASE_BODY, signature=None),
    ]
    return {
        "scheme": "X-CC-Webhook-Signature: hex HMAC-SHA256(secret, body)",
        "secrets": COINBASE_SECRETS,
        "upstream": {
            "source": "coinbase/coinbase-commerce-python tests/test_webhook.py",
            "secret": COINBASE_UPSTREAM_SECRET,
            "body": COINBASE_UPSTREAM_BODY,
            "signature": COINBASE_UPSTREAM_SIGNATURE,
        },
        "cases": cases,
    }


def paypal_cases() -> dict[str, Any]:
    now = datetime.fromtimestamp(NOW, UTC)
    pki = sign.PayPalPKI.make(now)
    rogue = sign.PayPalPKI.make(now)  # same shape, a root nobody trusts
    expired = sign.make_leaf(
        pki.intermediate, not_before=now - timedelta(days=400), not_after=now - timedelta(days=1)
    )
    other_domain = sign.make_leaf(
        pki.intermediate,
        "messageverificationcerts.example.com",
        not_before=now - timedelta(days=30),
        not_after=now + timedelta(days=300),
    )
    lookalike = sign.make_leaf(
        pki.intermediate,
        "messageverificationcerts.paypal.com.evil.com",
        not_before=now - timedelta(days=30),
        not_after=now + timedelta(days=300),
    )
    base = "https://api.paypal.com/v1/notifications/certs/"
    urls = {
        "good": sign.PAYPAL_CERT_URL,
        "sandbox": "https://api-m.sandbox.paypal.com/v1/notifications/certs/CERT-sandbox-0001",
        "untrusted": base + "CERT-untrusted-0001",
        "expired": base + "CERT-expired-0001",
        "other-domain": base + "CERT-other-domain-0001",
        "lookalike": base + "CERT-lookalike-0001",
        "leaf-only": base + "CERT-leaf-only-0001",
    }
    certificates = {
        urls["good"]: pki.chain(),
        urls["sandbox"]: pki.chain(),
        urls["untrusted"]: rogue.chain(),
        urls["expired"]: sign.chain_pem(expired, pki.intermediate),
        urls["other-domain"]: sign.chain_pem(other_domain, pki.intermediate),
        urls["lookalike"]: sign.chain_pem(lookalike, pki.intermediate),
        urls["leaf-only"]: sign.chain_pem(pki.leaf),
    }
    body = PAYPAL_BODY
    sent = "2026-11-23T11:59:50Z"
    counter = iter(range(1, 100))

    def delivery(
        name: str,
        expect: str,
        *,
        key: Any = None,
        sent_body: str = body,
        webhook_id: str = PAYPAL_WEBHOOK_IDS[0],
        time: str = sent,
        **overrides: str,
    ) -> dict[str, Any]:
        headers = sign.paypal_headers(
            key or pki.leaf_key(),
            body=sent_body.encode(),
            signed_body=body.encode(),
            webhook_id=webhook_id,
            transmission_id=f"b2384410-f8d2-11ec-8a9c-{next(counter):012d}",
            time=time,
            cert_url=overrides.pop("cert_url", urls["good"]),
            auth_algo=overrides.pop("auth_algo", "SHA256withRSA"),
        )
        headers.update(overrides)
        return {"name": name, "expect": expect, "body": sent_body, "headers": headers}

    def at(offset_s: int) -> str:
        return (now + timedelta(seconds=offset_s)).isoformat().replace("+00:00", "Z")

    cases = [
        delivery("valid", "ok"),
        delivery("valid-second-webhook-id", "ok", webhook_id=PAYPAL_WEBHOOK_IDS[1]),
        delivery("valid-sandbox-host", "ok", cert_url=urls["sandbox"]),
        delivery("valid-offset-time", "ok", time="2026-11-23T12:59:50+01:00"),
        delivery("crc-mismatch-modified-body", "no-matching-signature", sent_body=body + " "),
        delivery("truncated-body", "no-matching-signature", sent_body=body[:-1]),
        delivery("other-webhook-id", "no-matching-signature", webhook_id="5GP028458E2496506"),
        delivery("signed-by-another-key", "no-matching-signature", key=rogue.leaf_key()),
        delivery("wrong-auth-algo", "unsupported-auth-algo", auth_algo="SHA1withRSA"),
        delivery("stale-301s", "stale-timestamp", time=at(-301)),
        delivery("future-301s", "future-timestamp", time=at(301)),
        delivery("unparseable-time", "malformed-header", time="yesterday"),
        delivery("time-without-zone", "malformed-header", time="2026-11-23T11:59:50"),
        delivery("http-cert-url", "bad-cert-url", cert_url=urls["good"].replace("https", "http")),
        delivery(
            "lookalike-host",
            "bad-cert-url",
            cert_url=urls["good"].replace("api.paypal.com", "api.paypal.com.evil.com"),
        ),
        delivery(
            "userinfo-trick",
            "bad-cert-url",
            cert_url=urls["good"].replace("api.paypal.com", "api.paypal.com@evil.com"),
        ),
        delivery(
            "userinfo-before-host",
            "bad-cert-url",
            cert_url=urls["good"].replace("api.paypal.com", "evil.com@api.paypal.com"),
        ),
        delivery(
            "explicit-port",
            "bad-cert-url",
            cert_url=urls["good"].replace("api.paypal.com", "api.paypal.com:443"),
        ),
        delivery(
            "other-paypal-path",
            "bad-cert-url",
            cert_url="https://api.paypal.com/v1/oauth2/token",
        ),
        delivery("query-string", "bad-cert-url", cert_url=urls["good"] + "?x=1"),
        delivery(
            "untrusted-ca", "cert-untrusted", cert_url=urls["untrusted"], key=rogue.leaf_key()
        ),
        delivery("expired-cert", "cert-untrusted", cert_url=urls["expired"], key=expired.key),
        delivery(
            "cert-for-another-domain",
            "cert-not-paypal",
            cert_url=urls["other-domain"],
            key=other_domain.key,
        ),
        delivery(
            "cert-for-lookalike-domain",
            "cert-not-paypal",
            cert_url=urls["lookalike"],
            key=lookalike.key,
        ),
        delivery("chain-missing-intermediate", "cert-untrusted", cert_url=urls["leaf-only"]),
        delivery(
            "cert-url-not-found",
            "cert-not-found",
            cert_url=base + "CERT-does-not-exist",
        ),
        delivery("bad-base64-signature", "malformed-header", **{"PAYPAL-TRANSMISSION-SIG": "!!"}),
        delivery(
            "transmission-id-with-separator",
            "malformed-header",
            **{"PAYPAL-TRANSMISSION-ID": "b2384410|x"},
        ),
    ]
    missing = delivery("missing-cert-url-header", "missing-header")
    del missing["headers"]["PAYPAL-CERT-URL"]
    cases.append(missing)
    return {
        "scheme": "PayPal offline verification: SHA256withRSA over id|time|webhook_id|crc32",
        "now": now.isoformat(),
        "tolerance_s": 300,
        "webhook_ids": PAYPAL_WEBHOOK_IDS,
        "trust_roots": [pki.root.pem()],
        "certificates": certificates,
        "cases": cases,
    }


PAYPAL_BODY = json.dumps(
    {
        "id": "WH-58D329510W468432D-8HN650336L201105X",
        "create_time": "2026-11-23T11:59:49.000Z",
        "resource_type": "capture",
        "event_type": "PAYMENT.CAPTURE.COMPLETED",
        "event_version": "1.0",
        "resource_version": "2.0",
        "summary": "Payment completed for EUR 10.5 EUR",
        "resource": {
            "id": "42311647XV020574X",
            "status": "COMPLETED",
            "amount": {"currency_code": "EUR", "value": "10.50"},
            "final_capture": True,
            "custom_id": "pay_01JVECTOR0002",
            "seller_receivable_breakdown": {
                "gross_amount": {"currency_code": "EUR", "value": "10.50"},
                "paypal_fee": {"currency_code": "EUR", "value": "0.66"},
                "net_amount": {"currency_code": "EUR", "value": "9.84"},
            },
            "supplementary_data": {"related_ids": {"order_id": "5O190127TN364715T"}},
        },
    },
    indent=1,
)


def main() -> None:
    for name, build in (
        ("stripe", stripe_cases),
        ("coinbase", coinbase_cases),
        ("paypal", paypal_cases),
    ):
        path = HERE / f"{name}.json"
        path.write_text(json.dumps(build(), indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()

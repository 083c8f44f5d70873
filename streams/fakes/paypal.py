"""PayPal's one base URL in front of two Prism mocks, with the OAuth endpoint they lack.

PayPal serves everything from one host (``api-m.paypal.com``); its official
OpenAPI files are one per API, and Prism serves one file per process. This
gateway gives the adapter one base URL, as in production:

    POST /v1/oauth2/token   answered here: client-credentials grant with HTTP
                            Basic client id and secret (from Settings), a
                            bearer token that expires after --token-ttl-s
    /v2/checkout/...        forwarded to Prism serving checkout_orders_v2.json
    /v2/payments/...        forwarded to Prism serving payments_payment_v2.json

The token endpoint is not in those files (PayPal documents it separately), so
it is answered here and nowhere else. Forwarded calls must carry a token this
gateway issued and that has not expired, else 401 ``invalid_token`` as PayPal
answers; Prism itself only checks that some bearer token is present.

Everything else is Prism's answer, passed through unchanged, with one
exception: Prism's static mode fills text fields with the word "string", and
PayPal's spec requires order ids to match ``^[A-Z0-9]+$`` wherever they are
sent back (``/v2/checkout/orders/{id}/...``). So an order the gateway sees
created gets a well-formed id, and the order endpoints answer with the id in
their path, as PayPal does. Nothing else is rewritten.

Every request is recorded (credentials redacted) under ``/__fake/requests``,
so a test can check, for instance, that ``PayPal-Request-Id`` reached the peer.
``/__fake/tokens`` counts the tokens issued.

Run: ``python -m streams.fakes.paypal --port 14010 --orders-upstream URL
--payments-upstream URL``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import json
import re
import secrets
import string
import threading
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ledger.config import load_settings
from ledger.infra.mocks import FAKE_ADMIN_PREFIX
from streams.fakes import (
    BodyTooLarge,
    RequestLog,
    admin_routes,
    argument_parser,
    parse_json,
    read_body,
    serve,
)

SERVICE = "paypal-gateway"
_ORDER_ID = re.compile(r"^[A-Z0-9]+$")
_ORDER_PATH = re.compile(r"^/v2/checkout/orders/(?P<id>[^/]+)(/[^/]+)?$")
_ID_ALPHABET = string.ascii_uppercase + string.digits
_TOKENS_MAX = 10_000
_UPSTREAM_TIMEOUT_S = 30.0
# Hop-by-hop and framing headers: the gateway frames its own messages.
_DROPPED_HEADERS = frozenset(
    {"host", "content-length", "connection", "keep-alive", "transfer-encoding"}
)
_SCOPE = "https://uri.paypal.com/services/payments/payment https://uri.paypal.com/services/payments/refund"


def new_order_id() -> str:
    """A PayPal-style order id: 17 upper-case letters and digits."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(17))


class Tokens:
    """Issued access tokens and when each expires (monotonic seconds)."""

    def __init__(self, ttl_s: int) -> None:
        self.ttl_s = ttl_s
        self.issued = 0
        self._expiry: dict[str, float] = {}
        self._lock = threading.Lock()

    def issue(self) -> str:
        token = "A21AA" + secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            self._expiry = {t: e for t, e in self._expiry.items() if e > now}
            if len(self._expiry) >= _TOKENS_MAX:
                self._expiry.pop(next(iter(self._expiry)))
            self._expiry[token] = now + self.ttl_s
            self.issued += 1
        return token

    def valid(self, token: str) -> bool:
        with self._lock:
            expiry = self._expiry.get(token)
        return expiry is not None and expiry > time.monotonic()


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, secret = decoded.partition(":")
    return (client_id, secret) if sep else None


def _rewrite_order_id(path: str, method: str, document: Any) -> Any:
    if method != "POST" or not isinstance(document, dict) or "id" not in document:
        return document
    if path == "/v2/checkout/orders":
        if not (isinstance(document["id"], str) and _ORDER_ID.match(document["id"])):
            return {**document, "id": new_order_id()}
        return document
    match = _ORDER_PATH.match(path)
    if match is not None:
        return {**document, "id": match["id"]}
    return document


def create_app(
    *,
    client_id: str,
    client_secret: str,
    orders_upstream: str,
    payments_upstream: str,
    token_ttl_s: int,
) -> Starlette:
    tokens = Tokens(token_ttl_s)
    log = RequestLog()
    upstream: dict[str, httpx.AsyncClient] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with httpx.AsyncClient(timeout=_UPSTREAM_TIMEOUT_S) as client:
            upstream["client"] = client
            yield

    async def token(request: Request) -> Response:
        try:
            raw = await read_body(request)
        except BodyTooLarge:
            return JSONResponse({"error": "invalid_request"}, status_code=413)
        form = parse_qs(raw.decode(errors="replace"))
        credentials = _basic_credentials(request.headers.get("authorization", ""))
        if credentials is None or not (
            hmac.compare_digest(credentials[0].encode(), client_id.encode())
            and hmac.compare_digest(credentials[1].encode(), client_secret.encode())
        ):
            response = JSONResponse(
                {"error": "invalid_client", "error_description": "Client Authentication failed"},
                status_code=401,
            )
        elif form.get("grant_type") != ["client_credentials"]:
            response = JSONResponse(
                {"error": "unsupported_grant_type", "error_description": "Grant Type is NULL"},
                status_code=400,
            )
        else:
            response = JSONResponse(
                {
                    "scope": _SCOPE,
                    "access_token": tokens.issue(),
                    "token_type": "Bearer",
                    "app_id": "APP-80W284485P519543T",
                    "expires_in": tokens.ttl_s,
                    "nonce": f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
                    f"{secrets.token_hex(8)}",
                }
            )
        log.record(request, {k: v[0] for k, v in form.items()}, response.status_code)
        return response

    async def forward(request: Request) -> Response:
        try:
            raw = await read_body(request)
        except BodyTooLarge:
            return JSONResponse({"name": "INVALID_REQUEST"}, status_code=413)
        path = request.url.path
        scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not tokens.valid(bearer.strip()):
            response: Response = JSONResponse(
                {
                    "error": "invalid_token",
                    "error_description": "Token signature verification failed",
                },
                status_code=401,
            )
            log.record(request, parse_json(raw), 401, {"token": "invalid"})
            return response
        base = orders_upstream if path.startswith("/v2/checkout/") else payments_upstream
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROPPED_HEADERS}
        answer = await upstream["client"].request(
            request.method,
            f"{base}{path}",
            params=httpx.QueryParams(request.url.query),
            headers=headers,
            content=raw,
        )
        body = answer.content
        document = parse_json(body)
        if 200 <= answer.status_code < 300:
            rewritten = _rewrite_order_id(path, request.method, document)
            if rewritten is not document:
                body = json.dumps(rewritten).encode()
        passed = {k: v for k, v in answer.headers.items() if k.lower() not in _DROPPED_HEADERS}
        log.record(
            request,
            parse_json(raw),
            answer.status_code,
            # Prism names each way a request breaks the spec in this header.
            {"violations": answer.headers.get("sl-violations")},
        )
        return Response(body, status_code=answer.status_code, headers=passed)

    async def issued(_: Request) -> Response:
        return JSONResponse({"issued": tokens.issued})

    methods = ["GET", "POST", "PATCH", "PUT", "DELETE"]
    routes = [
        Route("/v1/oauth2/token", token, methods=["POST"]),
        Route("/v2/checkout/{rest:path}", forward, methods=methods),
        Route("/v2/payments/{rest:path}", forward, methods=methods),
        Route(f"{FAKE_ADMIN_PREFIX}/tokens", issued, methods=["GET"]),
        *admin_routes(SERVICE, log),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def main() -> None:
    parser = argument_parser("PayPal's base URL: OAuth here, Orders and Payments at Prism.")
    parser.add_argument("--orders-upstream", required=True)
    parser.add_argument("--payments-upstream", required=True)
    parser.add_argument("--token-ttl-s", type=int, default=32_400)
    args = parser.parse_args()
    settings = load_settings()
    app = create_app(
        client_id=settings.paypal_client_id,
        client_secret=settings.paypal_client_secret.get_secret_value(),
        orders_upstream=args.orders_upstream.rstrip("/"),
        payments_upstream=args.payments_upstream.rstrip("/"),
        token_ttl_s=args.token_ttl_s,
    )
    serve(app, args.host, args.port)


if __name__ == "__main__":
    main()

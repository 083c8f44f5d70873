"""Merchant authentication: API keys, and RFC 9421 HTTP Message Signatures with Ed25519.

An API key reads ``pl_<key id>_<secret>`` and travels as ``Authorization:
Bearer <key>``. Postgres keeps only the SHA-256 of the secret (the secret is
256 random bits, so a slow password hash would add latency and no safety).
A key can be revoked; a revoked key stops working within
``API_KEY_CACHE_TTL_S``.

A merchant with a registered Ed25519 public key may sign requests (RFC 9421,
``Signature-Input``/``Signature``, covering ``@method``, ``@target-uri`` and,
with a body, ``content-digest`` per RFC 9530). When the merchant requires
signatures, an unsigned request is refused; a signature that is present is
always checked.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import http_message_signatures as rfc9421
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request

from ingress.problems import Problem

API_KEY_PREFIX = "pl"
API_KEY_CACHE_TTL_S = 5.0
API_KEY_CACHE_ENTRIES_MAX = 10_000
SIGNATURE_MAX_AGE_S = 300
_API_KEY = re.compile(r"^pl_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True, slots=True)
class Merchant:
    merchant_id: str
    signature_key_id: str | None
    signature_public_key: bytes | None
    require_signature: bool
    rate_per_s: float | None
    burst: int | None


@dataclass(frozen=True, slots=True)
class IssuedKey:
    key_id: str
    token: str  # shown to the merchant once, never stored
    secret_sha256: bytes


def issue_api_key() -> IssuedKey:
    key_id = os.urandom(8).hex()
    secret = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
    return IssuedKey(
        key_id, f"{API_KEY_PREFIX}_{key_id}_{secret}", hashlib.sha256(secret.encode()).digest()
    )


def _unauthorized(detail: str) -> Problem:
    return Problem(
        401,
        "unauthorized",
        "Authentication required",
        detail,
        headers={"WWW-Authenticate": 'Bearer realm="payledger"'},
    )


class _SignedRequest:
    """What the RFC 9421 resolver reads from a request."""

    def __init__(self, request: Request) -> None:
        self.method = request.method
        self.url = str(request.url)
        self.headers = request.headers


class _OneKey(rfc9421.HTTPSignatureKeyResolver):
    def __init__(self, key_id: str, public_key: bytes) -> None:
        self._key_id = key_id
        self._public_key = Ed25519PublicKey.from_public_bytes(public_key)

    def resolve_public_key(self, key_id: str) -> Any:
        return self._public_key if key_id == self._key_id else None


class Authenticator:
    def __init__(
        self, pool: AsyncConnectionPool, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._cache: OrderedDict[str, tuple[float, bytes, Merchant, bool]] = OrderedDict()

    async def _lookup(self, key_id: str) -> tuple[bytes, Merchant, bool] | None:
        now = self._clock()
        cached = self._cache.get(key_id)
        if cached is not None and cached[0] > now:
            return cached[1], cached[2], cached[3]
        async with self._pool.connection() as connection:
            cursor = await connection.execute(
                "SELECT k.secret_sha256, k.revoked_at IS NOT NULL, m.merchant_id,"
                " m.signature_key_id, m.signature_public_key, m.require_signature,"
                " m.rate_per_s, m.burst"
                " FROM api_keys k JOIN merchants m USING (merchant_id) WHERE k.key_id = %s",
                (key_id,),
            )
            row = await cursor.fetchone()
        if row is None:
            return None
        secret_sha256, revoked, *merchant_fields = row
        merchant = Merchant(*merchant_fields)
        self._cache[key_id] = (now + API_KEY_CACHE_TTL_S, bytes(secret_sha256), merchant, revoked)
        self._cache.move_to_end(key_id)
        while len(self._cache) > API_KEY_CACHE_ENTRIES_MAX:
            self._cache.popitem(last=False)
        return bytes(secret_sha256), merchant, revoked

    async def authenticate(self, request: Request, body: bytes) -> Merchant:
        """The merchant behind this request, or a 401 problem."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise _unauthorized("send an API key as 'Authorization: Bearer pl_...'")
        match = _API_KEY.match(token.strip())
        if match is None:
            raise _unauthorized("the API key is malformed")
        key_id, secret = match.groups()
        found = await self._lookup(key_id)
        # The same answer for an unknown key, a wrong secret and a revoked key:
        # the response must not tell a guesser which one it hit.
        if found is None:
            raise _unauthorized("the API key is not valid")
        secret_sha256, merchant, revoked = found
        if not hmac.compare_digest(hashlib.sha256(secret.encode()).digest(), secret_sha256):
            raise _unauthorized("the API key is not valid")
        if revoked:
            raise _unauthorized("the API key is not valid")
        self._check_signature(request, body, merchant)
        return merchant

    def _check_signature(self, request: Request, body: bytes, merchant: Merchant) -> None:
        signed = "signature" in request.headers or "signature-input" in request.headers
        if not signed:
            if merchant.require_signature:
                raise _unauthorized("this merchant must sign requests (RFC 9421, ed25519)")
            return
        if merchant.signature_public_key is None or merchant.signature_key_id is None:
            raise _unauthorized("no signature key is registered for this merchant")
        verifier = rfc9421.HTTPMessageVerifier(
            signature_algorithm=rfc9421.algorithms.ED25519,
            key_resolver=_OneKey(merchant.signature_key_id, merchant.signature_public_key),
        )
        required = ["@method", "@target-uri"] + (["content-digest"] if body else [])
        try:
            verifier.verify(
                _SignedRequest(request),
                max_age=timedelta(seconds=SIGNATURE_MAX_AGE_S),
                require_components=required,
                body=body if body else None,
            )
        except (rfc9421.InvalidSignature, rfc9421.HTTPMessageSignaturesException) as error:
            raise _unauthorized(f"the request signature does not verify: {error}") from error

"""``Idempotency-Key`` on every POST, kept in Postgres.

The key's row is inserted in the same transaction that publishes the command
and is committed only after the broker acknowledged it. A second request with
the same key meanwhile blocks on the uncommitted row (Postgres's unique index
waits for the first transaction), then sees the stored response: two
concurrent requests produce one command. If the first one fails (Kafka down,
503), its row is rolled back and a retry does the work.

Same key, same request: the original response, marked ``Idempotent-Replayed``.
Same key, different request: 409. Rows live ``idempotency_ttl_s`` (at least
24 hours) and expired rows are recycled or purged.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection

from ingress.problems import Problem

IDEMPOTENCY_KEY_CHARS_MAX = 255
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # visible ASCII, as Stripe and the IETF draft allow


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    body: bytes


def idempotency_key(header: str | None) -> str:
    if header is None:
        raise Problem(
            400,
            "idempotency-key-required",
            "Idempotency-Key header required",
            "every POST needs an Idempotency-Key header (a unique value per operation)",
        )
    if not _KEY.match(header):
        raise Problem(
            400,
            "idempotency-key-invalid",
            "Invalid Idempotency-Key",
            f"use 1 to {IDEMPOTENCY_KEY_CHARS_MAX} visible ASCII characters",
        )
    return header


def request_fingerprint(method: str, path: str, document: Any) -> bytes:
    """SHA-256 of the request's meaning: method, path and the JSON body canonically encoded."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{method} {path}\n{canonical}".encode()).digest()


async def claim(
    connection: AsyncConnection[Any],
    merchant_id: str,
    key: str,
    fingerprint: bytes,
    ttl_s: int,
) -> StoredResponse | None:
    """Claim the key inside the caller's open transaction.

    Returns None when this request owns the key (new, or an expired row
    recycled): do the work, then ``complete``. Returns the stored response
    when an earlier request with the same key and body finished. Raises 409
    when the key was used for a different request.
    """
    cursor = await connection.execute(
        "INSERT INTO idempotency_keys"
        " (merchant_id, idempotency_key, request_sha256, expires_at)"
        " VALUES (%s, %s, %s, now() + make_interval(secs => %s))"
        " ON CONFLICT (merchant_id, idempotency_key) DO UPDATE SET"
        "  request_sha256 = EXCLUDED.request_sha256, response_status = NULL,"
        "  response_body = NULL, created_at = now(), expires_at = EXCLUDED.expires_at"
        "  WHERE idempotency_keys.expires_at < now()"
        " RETURNING 1",
        (merchant_id, key, fingerprint, ttl_s),
    )
    if await cursor.fetchone() is not None:
        return None
    cursor = await connection.execute(
        "SELECT request_sha256, response_status, response_body FROM idempotency_keys"
        " WHERE merchant_id = %s AND idempotency_key = %s",
        (merchant_id, key),
    )
    row = await cursor.fetchone()
    assert row is not None, "the conflicting row is committed, so it is visible"
    stored_fingerprint, status, body = row
    return stored_outcome(fingerprint, stored_fingerprint, status, body)


def key_reused() -> Problem:
    return Problem(
        409,
        "idempotency-key-reused",
        "Idempotency-Key reused with a different request",
        "this key was already used for another request; use a new key for a new operation",
    )


def stored_outcome(
    fingerprint: bytes, stored_fingerprint: bytes, status: int | None, body: bytes | None
) -> StoredResponse:
    """The answer to a request whose key has a committed row: its response, or 409."""
    if bytes(stored_fingerprint) != fingerprint:
        raise key_reused()
    # A committed row always has its response: the row and the response are
    # written in the same transaction.
    assert status is not None and body is not None
    return StoredResponse(status, bytes(body))


async def complete(
    connection: AsyncConnection[Any], merchant_id: str, key: str, response: StoredResponse
) -> None:
    await connection.execute(
        "UPDATE idempotency_keys SET response_status = %s, response_body = %s"
        " WHERE merchant_id = %s AND idempotency_key = %s",
        (response.status, response.body, merchant_id, key),
    )


async def purge_expired(connection: AsyncConnection[Any], batch_rows_max: int = 10_000) -> int:
    cursor = await connection.execute(
        "DELETE FROM idempotency_keys WHERE ctid IN ("
        " SELECT ctid FROM idempotency_keys WHERE expires_at < now() LIMIT %s)",
        (batch_rows_max,),
    )
    return cursor.rowcount

"""Merchant administration: the ``payledger merchants`` commands.

Every change is also an audit fact on the audit-facts topic, so an auditor
sees who could act for a merchant, and since when.
"""

from __future__ import annotations

import asyncio
import base64
import re
from typing import Any

import click
import psycopg

from ingress import db
from ingress.audit import publish_audit_fact
from ingress.auth import IssuedKey, issue_api_key
from ledger.config import Settings, load_settings
from ledger.envelope import AuditFact
from ledger.errors import ConfigurationError, LedgerError

_MERCHANT_ID = re.compile(r"^[a-z0-9_]{3,64}$")
_SOURCE = "/payledger/admin"


async def _audit(settings: Settings, fact_type: str, subject: str, **details: str) -> None:
    fact = AuditFact(fact_type=fact_type, actor="operator", subject=subject, details=details)
    await publish_audit_fact(settings, fact, source=_SOURCE)


async def _connect(settings: Settings) -> psycopg.AsyncConnection[Any]:
    await db.migrate(settings.dsn())
    return await psycopg.AsyncConnection.connect(
        settings.dsn(), connect_timeout=db.CONNECT_TIMEOUT_S
    )


async def create_merchant(
    settings: Settings,
    merchant_id: str,
    name: str,
    *,
    rate_per_s: float | None = None,
    burst: int | None = None,
) -> bool:
    """Create a merchant; False when it already exists (then nothing changes)."""
    if not _MERCHANT_ID.match(merchant_id):
        raise ConfigurationError("a merchant id is 3 to 64 of a-z, 0-9 and _")
    async with await _connect(settings) as connection:
        cursor = await connection.execute(
            "INSERT INTO merchants (merchant_id, name, rate_per_s, burst) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (merchant_id) DO NOTHING RETURNING 1",
            (merchant_id, name, rate_per_s, burst),
        )
        created = await cursor.fetchone() is not None
        if created:
            await _audit(settings, "merchant.created", merchant_id)
    return created


async def add_api_key(settings: Settings, merchant_id: str) -> IssuedKey:
    issued = issue_api_key()
    async with await _connect(settings) as connection:
        try:
            await connection.execute(
                "INSERT INTO api_keys (key_id, merchant_id, secret_sha256) VALUES (%s, %s, %s)",
                (issued.key_id, merchant_id, issued.secret_sha256),
            )
        except psycopg.errors.ForeignKeyViolation as error:
            raise ConfigurationError(f"no merchant {merchant_id}") from error
        await _audit(settings, "api-key.issued", merchant_id, key_id=issued.key_id)
    return issued


async def revoke_api_key(settings: Settings, key_id: str) -> bool:
    async with await _connect(settings) as connection:
        cursor = await connection.execute(
            "UPDATE api_keys SET revoked_at = now() WHERE key_id = %s AND revoked_at IS NULL"
            " RETURNING 1",
            (key_id,),
        )
        revoked = await cursor.fetchone() is not None
        if revoked:
            await _audit(settings, "api-key.revoked", key_id)
        return revoked


async def set_signature_key(
    settings: Settings, merchant_id: str, key_id: str, public_key: bytes, *, require: bool
) -> None:
    if len(public_key) != 32:
        raise ConfigurationError("an Ed25519 public key is 32 bytes")
    async with await _connect(settings) as connection:
        cursor = await connection.execute(
            "UPDATE merchants SET signature_key_id = %s, signature_public_key = %s,"
            " require_signature = %s WHERE merchant_id = %s RETURNING 1",
            (key_id, public_key, require, merchant_id),
        )
        if await cursor.fetchone() is None:
            raise ConfigurationError(f"no merchant {merchant_id}")
        await _audit(
            settings,
            "signature-key.registered",
            merchant_id,
            key_id=key_id,
            public_key=base64.b64encode(public_key).decode(),
            required=str(require).lower(),
        )


def _run(coroutine: Any) -> Any:
    try:
        return asyncio.run(coroutine)
    except (LedgerError, psycopg.Error) as error:
        raise click.ClickException(str(error)) from error


@click.group()
def merchants() -> None:
    """Merchants, their API keys and request-signing keys."""


@merchants.command("create")
@click.argument("merchant_id")
@click.option("--name", required=True)
@click.option("--rate-per-s", type=float, default=None, help="Override the default rate limit.")
@click.option("--burst", type=int, default=None)
def create_command(
    merchant_id: str, name: str, rate_per_s: float | None, burst: int | None
) -> None:
    """Create a merchant (no-op when it exists)."""
    created = _run(
        create_merchant(load_settings(), merchant_id, name, rate_per_s=rate_per_s, burst=burst)
    )
    click.echo(f"merchant {merchant_id} {'created' if created else 'already exists'}")


@merchants.command("issue-key")
@click.argument("merchant_id")
def issue_key_command(merchant_id: str) -> None:
    """Issue an API key; it is printed once and stored only as a hash."""
    issued = _run(add_api_key(load_settings(), merchant_id))
    click.echo(issued.token)


@merchants.command("revoke-key")
@click.argument("key_id")
def revoke_key_command(key_id: str) -> None:
    """Revoke an API key by its id (the hex part after 'pl_')."""
    if not _run(revoke_api_key(load_settings(), key_id)):
        raise click.ClickException(f"no active key {key_id}")
    click.echo(f"key {key_id} revoked")


@merchants.command("set-signature-key")
@click.argument("merchant_id")
@click.option("--key-id", required=True, help="The keyid the merchant puts in Signature-Input.")
@click.option("--public-key", required=True, help="Raw Ed25519 public key, base64.")
@click.option("--require/--optional", default=False, help="Refuse unsigned requests.")
def set_signature_key_command(
    merchant_id: str, key_id: str, public_key: str, require: bool
) -> None:
    """Register the Ed25519 key the merchant signs requests with (RFC 9421)."""
    raw = base64.b64decode(public_key, validate=True)
    _run(set_signature_key(load_settings(), merchant_id, key_id, raw, require=require))
    click.echo(f"signature key {key_id} registered for {merchant_id}")

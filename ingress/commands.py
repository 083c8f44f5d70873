"""``payledger gdpr``: customer references, the master key, and erasure of personal data.

Postgres, Kafka and the token are imported inside the commands, so that
``payledger --help`` does not load them (see ``ledger.cli``).
"""

from __future__ import annotations

import asyncio
import getpass
import sys
from typing import TYPE_CHECKING

import click

from ledger.config import Settings, load_settings
from ledger.errors import LedgerError

if TYPE_CHECKING:
    from ingress.gdpr import Erasure


def _settings() -> Settings:
    try:
        return load_settings()
    except ValueError as error:  # pydantic's ValidationError is a ValueError
        raise click.ClickException(f"invalid configuration: {error}") from error


def _default_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):  # no login name in some containers
        return "cli"


@click.group()
def gdpr() -> None:
    """Personal data: customer references, the master key, erasure (crypto-shredding)."""


@gdpr.command("forget")
@click.argument("customer_ref")
@click.option(
    "--actor",
    default=None,
    help="Who requested or performed the erasure, for the audit fact [default: cli:<login>].",
)
@click.option("--reason", default=None, help="Why, for the audit fact.")
def forget(customer_ref: str, actor: str | None, reason: str | None) -> None:
    """Erase a customer: destroy their data key and record the erasure on the audit log.

    Everything sealed for CUSTOMER_REF becomes unreadable for good; the
    events carrying it still verify. Running it again is harmless.
    """
    settings = _settings()
    try:
        erasure = asyncio.run(_forget(settings, customer_ref, actor or _default_actor(), reason))
    except LedgerError as error:
        raise click.ClickException(str(error)) from error
    if erasure is None:
        click.echo(f"{customer_ref} was already erased; nothing changed")
        return
    published = erasure.published
    click.echo(
        f"erased {customer_ref}: data key {erasure.key.data_key_id} destroyed; audit fact "
        f"{published.envelope.event_id} at {published.topic}/{published.partition}"
        f"@{published.offset}"
    )


async def _forget(
    settings: Settings, customer_ref: str, actor: str, reason: str | None
) -> Erasure | None:
    from ingress import db  # noqa: PLC0415 - keeps `payledger --help` free of psycopg
    from ingress.gdpr import erase_customer  # noqa: PLC0415

    await db.migrate(settings.dsn())
    return await erase_customer(settings, customer_ref, actor=actor, reason=reason)


@gdpr.command("ref")
@click.argument("merchant_id")
def ref(merchant_id: str) -> None:
    """Print the customer ref of a merchant's customer reference, read from stdin.

    The reference may be personal data (an email address): it is read from
    standard input, not the command line, so it stays out of shell history
    and process lists.
    """
    from ledger.sealing import customer_reference  # noqa: PLC0415

    if sys.stdin.isatty():
        reference = click.prompt("customer reference", hide_input=True, err=True)
    else:
        reference = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    try:
        click.echo(customer_reference(merchant_id, reference))
    except LedgerError as error:
        raise click.ClickException(str(error)) from error


@gdpr.command("master-key")
def master_key() -> None:
    """Print the master key's id, creating the key once if there is none.

    Run it once before starting several ingress nodes on a shared HSM, so
    that they never race to create the key.
    """
    from ledger.sealing import open_master_key  # noqa: PLC0415

    try:
        key = open_master_key(_settings())
    except LedgerError as error:
        raise click.ClickException(str(error)) from error
    try:
        click.echo(key.key_id)
    finally:
        key.close()

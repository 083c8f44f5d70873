"""``payledger anchoring``: the Merkle log over the ledger topics.

``migrate`` creates the log's tables (or brings them up to date); ``run``
runs the worker until SIGTERM (the same as ``python -m anchoring.worker``).

Postgres, Kafka and the worker are imported inside the commands, so that
``payledger --help`` does not load them (see ``ledger.cli``).
"""

from __future__ import annotations

import asyncio
import logging

import click

from ledger.config import Settings, load_settings
from ledger.errors import LedgerError


def _settings() -> Settings:
    try:
        return load_settings()
    except ValueError as error:  # pydantic's ValidationError is a ValueError
        raise click.ClickException(f"invalid configuration: {error}") from error


@click.group(name="anchoring")
def anchoring_group() -> None:
    """The Merkle log of every ledger event and its signed checkpoints."""


@anchoring_group.command()
def migrate() -> None:
    """Create the log's tables in PAYLEDGER_ANCHORING_SCHEMA, or apply new migrations."""
    import psycopg  # noqa: PLC0415

    from anchoring import pgstore  # noqa: PLC0415

    settings = _settings()
    schema = settings.anchoring_schema
    try:
        with pgstore.connect(settings.dsn(), schema) as connection:
            applied = pgstore.migrate(connection, schema)
    except LedgerError as error:
        raise click.ClickException(str(error)) from error
    except psycopg.OperationalError as error:
        raise click.ClickException(f"cannot use Postgres: {error}") from error
    click.echo(
        f"schema {schema}: applied {', '.join(applied)}"
        if applied
        else f"schema {schema}: up to date"
    )


@anchoring_group.command()
def run() -> None:
    """Append every ledger record to the log and checkpoint it, until SIGTERM or SIGINT.

    Checkpoint hooks from the settings: IPFS with PAYLEDGER_ANCHORING_IPFS_ENABLED,
    timestamps with PAYLEDGER_OTS_DIRECT_ENABLED or PAYLEDGER_OTS_CALENDAR_URLS.
    """
    from anchoring.hooks import build_hooks  # noqa: PLC0415
    from anchoring.worker import run_until_signalled  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = _settings()
    try:
        totals = asyncio.run(run_until_signalled(settings, hooks=build_hooks(settings)))
    except LedgerError as error:
        raise click.ClickException(str(error)) from error
    click.echo(
        f"stopped: {totals.leaves} leaves ({totals.undecodable} undecodable) in"
        f" {totals.batches} batches, {totals.checkpoints} checkpoints,"
        f" {totals.published} published, {totals.announced} anchored records"
    )

"""``payledger projections``: build the Postgres read models and keep them current.

``migrate`` creates a schema's tables (or brings them up to date); ``apply``
runs the applier until SIGTERM. Both take ``--schema``: the live read models
are in ``projections``, and any other name builds a second set beside them.

Postgres, Kafka and the applier are imported inside the commands, so that
``payledger --help`` does not load them (see ``ledger.cli``).
"""

from __future__ import annotations

import asyncio
import logging

import click

from ledger.config import Settings, load_settings
from ledger.errors import LedgerError
from projections import limits
from projections.migrations import DEFAULT_SCHEMA

_schema_option = click.option(
    "--schema",
    default=DEFAULT_SCHEMA,
    show_default=True,
    help="The Postgres schema of the read models.",
)


def _settings() -> Settings:
    try:
        return load_settings()
    except ValueError as error:  # pydantic's ValidationError is a ValueError
        raise click.ClickException(f"invalid configuration: {error}") from error


@click.group(name="projections")
def projections_group() -> None:
    """Postgres read models of the payment events."""


@projections_group.command()
@_schema_option
def migrate(schema: str) -> None:
    """Create the schema's tables, or apply the migrations it does not have yet."""
    import psycopg  # noqa: PLC0415

    from projections.migrations import migrate as run_migrations  # noqa: PLC0415

    settings = _settings()
    try:
        applied = asyncio.run(run_migrations(settings.dsn(), schema))
    except LedgerError as error:
        raise click.ClickException(str(error)) from error
    except psycopg.OperationalError as error:
        raise click.ClickException(f"cannot use Postgres: {error}") from error
    if applied:
        click.echo(f"schema {schema}: applied {', '.join(applied)}")
    else:
        click.echo(f"schema {schema}: up to date")


@projections_group.command()
@_schema_option
@click.option(
    "--batch-records",
    type=click.IntRange(1, limits.BATCH_RECORDS_MAX),
    default=limits.BATCH_RECORDS_DEFAULT,
    show_default=True,
    help="Most records projected in one Postgres transaction.",
)
def apply(schema: str, batch_records: int) -> None:
    """Project the payment-events topic into the schema until SIGTERM or SIGINT."""
    from projections.applier import run_until_signalled  # noqa: PLC0415
    from projections.migrations import check_schema_name  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = _settings()
    try:
        check_schema_name(schema)
        totals = asyncio.run(run_until_signalled(settings, schema, batch_records=batch_records))
    except LedgerError as error:
        raise click.ClickException(str(error)) from error
    click.echo(
        f"stopped: {totals.applied} events applied, {totals.duplicates} duplicates,"
        f" {totals.conflicts} conflicts, {totals.rejected} rejected in {totals.batches} batches"
    )

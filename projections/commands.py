"""``payledger projections``: build the Postgres read models and keep them current.

``migrate`` creates a schema's tables (or brings them up to date); ``apply``
runs the applier until SIGTERM. Both take ``--schema``: the live read models
are in ``projections``, and any other name builds a second set beside them.
``rebuild`` builds such a second set from offset 0 and diffs it with the live
one (``projections.rebuild``).

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
    default=None,
    help="The Postgres schema of the read models"
    f" [default: PAYLEDGER_PROJECTIONS_SCHEMA, else {DEFAULT_SCHEMA}].",
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
def migrate(schema: str | None) -> None:
    """Create the schema's tables, or apply the migrations it does not have yet."""
    import psycopg  # noqa: PLC0415

    from projections.migrations import migrate as run_migrations  # noqa: PLC0415

    settings = _settings()
    schema = schema or settings.projections_schema
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
def apply(schema: str | None, batch_records: int) -> None:
    """Project the payment-events topic into the schema until SIGTERM or SIGINT."""
    from projections.applier import run_until_signalled  # noqa: PLC0415
    from projections.migrations import check_schema_name  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = _settings()
    schema = schema or settings.projections_schema
    try:
        check_schema_name(schema)
        totals = asyncio.run(run_until_signalled(settings, schema, batch_records=batch_records))
    except LedgerError as error:
        raise click.ClickException(str(error)) from error
    click.echo(
        f"stopped: {totals.applied} events applied, {totals.duplicates} duplicates,"
        f" {totals.conflicts} conflicts, {totals.rejected} rejected in {totals.batches} batches"
    )


class _RebuildFailed(click.ClickException):
    """A rebuild that could not be done or was refused: exit status 2 (1 is for differences)."""

    exit_code = 2


@projections_group.command()
@click.option(
    "--schema",
    required=True,
    help="The schema to rebuild into: never the live one, nor one holding data.",
)
@click.option(
    "--live",
    default=None,
    help="The live schema to compare the rebuild with"
    f" [default: PAYLEDGER_PROJECTIONS_SCHEMA, else {DEFAULT_SCHEMA}].",
)
@click.option(
    "--replace",
    is_flag=True,
    help="Drop --schema first when it holds data (only a projections schema, never the live one).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--batch-records",
    type=click.IntRange(1, limits.BATCH_RECORDS_MAX),
    default=limits.BATCH_RECORDS_DEFAULT,
    show_default=True,
    help="Most records projected in one Postgres transaction.",
)
@click.option(
    "--live-wait",
    # rebuild.LIVE_WAIT_S_MAX and LIVE_WAIT_S_DEFAULT (not imported here: see above).
    type=click.FloatRange(0, 3600),
    default=30.0,
    show_default=True,
    help="Seconds to wait for the live schema to apply what the rebuild applied.",
)
def rebuild(
    *,
    schema: str,
    live: str | None,
    replace: bool,
    as_json: bool,
    batch_records: int,
    live_wait: float,
) -> None:
    """Replay payment-events from offset 0 into --schema and diff it, row by row, with --live.

    Exit status: 0 when the schemas agree, 1 when they differ, 2 on errors.
    """
    import json  # noqa: PLC0415

    import psycopg  # noqa: PLC0415
    from aiokafka.errors import KafkaError  # noqa: PLC0415

    from projections import rebuild as rebuilding  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = load_settings()
    except ValueError as error:  # pydantic's ValidationError is a ValueError
        raise _RebuildFailed(f"invalid configuration: {error}") from error
    live = live or settings.projections_schema
    try:
        rebuilding.check_names(schema, live)
        report = asyncio.run(
            rebuilding.run_until_done(
                settings,
                schema,
                live=live,
                replace=replace,
                batch_records=batch_records,
                live_wait_s=live_wait,
            )
        )
    except LedgerError as error:
        raise _RebuildFailed(str(error)) from error
    except psycopg.Error as error:
        raise _RebuildFailed(f"cannot use Postgres: {error}") from error
    except (KafkaError, TimeoutError, OSError) as error:
        raise _RebuildFailed(f"cannot use Kafka: {error!r}") from error
    if as_json:
        click.echo(json.dumps(rebuilding.report_json(report), indent=2))
    else:
        click.echo(rebuilding.report_text(report))
    if report.comparison.findings:
        raise click.exceptions.Exit(1)

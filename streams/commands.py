"""``payledger topics``: create the Kafka topics, or check them without changing anything.

Exit codes: 0 when every topic exists exactly as specified (or was just
created), 4 when any topic differs from its spec or (``check`` only) is
missing, 1 when Kafka cannot be reached or refuses a request.

The Kafka client is imported inside the commands so that ``payledger --help``
does not load it (see ``ledger.cli``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import click
from pydantic import ValidationError

from ledger.config import load_settings
from ledger.errors import LedgerError

if TYPE_CHECKING:
    from streams.provision import ProvisionReport

EXIT_MISMATCH = 4

_timeout_option = click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="Seconds to wait for each Kafka admin request before giving up.",
)


@click.group()
def topics() -> None:
    """Create and check the Kafka topics payledger needs."""


@topics.command()
@_timeout_option
def provision(timeout_s: float) -> None:
    """Create missing topics; report (never change) existing topics that differ."""
    _run(dry_run=False, timeout_s=timeout_s)


@topics.command()
@_timeout_option
def check(timeout_s: float) -> None:
    """Report missing or differing topics without creating or changing anything."""
    _run(dry_run=True, timeout_s=timeout_s)


def _run(*, dry_run: bool, timeout_s: float) -> None:
    # Deferred: it loads the Kafka client, which `payledger --help` should not pay for.
    from streams.provision import provision_topics  # noqa: PLC0415

    try:
        settings = load_settings()
    except ValidationError as exc:
        raise click.ClickException(f"invalid settings: {exc}") from exc
    try:
        report = asyncio.run(provision_topics(settings, dry_run=dry_run, timeout_s=timeout_s))
    except LedgerError as exc:
        raise click.ClickException(str(exc)) from exc
    _print(report)
    if not report.ok:
        raise click.exceptions.Exit(EXIT_MISMATCH)


def _print(report: ProvisionReport) -> None:
    width = max(len(t.name) for t in report.topics)
    click.echo(f"{'TOPIC':<{width}}  {'ROLE':<16}  STATUS")
    for result in report.topics:
        click.echo(f"{result.name:<{width}}  {result.role.value:<16}  {result.status}")
    if report.mismatches:
        click.echo("")
        click.echo("Mismatches (existing topics are never changed; resolve these by hand):")
        for mismatch in report.mismatches:
            click.echo(f"  {mismatch}")
    missing = [t.name for t in report.topics if t.status == "missing"]
    if missing:
        click.echo("")
        click.echo(f"Missing: {', '.join(missing)} (run `payledger topics provision`)")

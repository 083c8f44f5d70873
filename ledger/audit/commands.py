"""``payledger audit``: check the ledger without trusting its operator.

``verify`` replays every ledger topic from offset 0 and checks every claim
(``anchoring.auditor``), then compares the balances it replayed and a
rebuild of the projections with the live read models (``projections.audit``).
It prints a summary (a progress bar on standard error while it runs) and,
with ``--json``, the whole report. ``proof`` proves one event end to end
(``ledger.audit.proof``).

Exit codes, the same for both: 0 everything verified; 1 something does not
verify (the report says what and where); 2 a check could not run (a service
unreachable, a key file missing): nothing was found, but not everything was
checked.

Kafka, Postgres and IPFS are imported inside the commands, so that
``payledger --help`` does not load them (see ``ledger.cli``).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ledger.audit.proof import proof
from ledger.audit.report import EXIT_ERROR, Finding, Report
from ledger.config import Settings, load_settings
from ledger.errors import LedgerError

if TYPE_CHECKING:
    from ledger.audit.balances import Balances

FINDINGS_SHOWN = 20


def _settings() -> Settings:
    try:
        return load_settings()
    except ValueError as error:  # pydantic's ValidationError is a ValueError
        _fail(f"invalid configuration: {error}")


def _fail(message: str) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    raise click.exceptions.Exit(EXIT_ERROR)


@click.group(name="audit")
def audit_group() -> None:
    """Verify the ledger from its Kafka topics and published anchors."""


audit_group.add_command(proof)


class _Bar:
    """``anchoring.auditor.Progress`` on a rich progress bar (standard error)."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task: TaskID | None = None

    def stage(self, name: str, total: int | None) -> None:
        self.finish()
        self._task = self._progress.add_task(name, total=total)

    def finish(self) -> None:
        """Show the stage running as done (the next one started, or the audit ended)."""
        if self._task is not None:
            done = self._total_of(self._task)
            self._progress.update(self._task, total=done, completed=done)

    def advance(self, count: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, count)

    def _total_of(self, task: TaskID) -> float:
        total = self._progress.tasks[task].total
        return total if total is not None else self._progress.tasks[task].completed


@audit_group.command()
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    default=None,
    help="Write the JSON report there ('-': standard output, the summary then goes to stderr).",
)
@click.option(
    "--root",
    "root_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The trusted root's public keys [default: <keys dir>/root.json].",
)
@click.option(
    "--anchoring-key",
    "anchoring_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The anchoring public key [default: <keys dir>/anchoring.json].",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Processes reading and verifying partitions [default: one per core].",
)
@click.option(
    "--ipfs/--no-ipfs",
    default=True,
    show_default=True,
    help="Fetch every published bundle and note from IPFS (Kubo) and recompute its CID.",
)
@click.option(
    "--bitcoin/--no-bitcoin",
    default=None,
    help="Check the timestamps against the configured Bitcoin node's block headers"
    " [default: when direct stamping is configured].",
)
@click.option(
    "--projections/--no-projections",
    default=True,
    show_default=True,
    help="Compare the replayed balances and a rebuild of the projections with the live ones.",
)
@click.option(
    "--scratch-schema",
    default=None,
    help="The Postgres schema the projections are rebuilt into [default: <live>_audit].",
)
@click.option("--group-id", default=None, help="The auditor's consumer group.")
def verify(  # click passes every option by name
    *,
    json_path: Path | None,
    root_path: Path | None,
    anchoring_path: Path | None,
    workers: int | None,
    ipfs: bool,
    bitcoin: bool | None,
    projections: bool,
    scratch_schema: str | None,
    group_id: str | None,
) -> None:
    """Replay every ledger topic from offset 0 and verify every claim the ledger makes."""
    from anchoring import auditor  # noqa: PLC0415
    from ledger.keystore import load_trusted_root  # noqa: PLC0415
    from ledger.tlog.keys import load_anchoring_public_key  # noqa: PLC0415

    settings = _settings()
    try:
        root = load_trusted_root(root_path or settings.keys_dir / "root.json")
        anchoring_key = load_anchoring_public_key(
            anchoring_path or settings.keys_dir / "anchoring.json"
        )
    except LedgerError as error:
        _fail(str(error))
    options = auditor.AuditOptions(
        roots=(root,),
        anchoring_key=anchoring_key,
        workers=workers or auditor.cpu_workers(),
        ipfs=ipfs,
        bitcoin=settings.ots_direct_enabled if bitcoin is None else bitcoin,
        group_id=group_id or auditor.GROUP_ID_DEFAULT,
    )
    to_stdout = json_path is not None and str(json_path) == "-"
    summary = Console(stderr=to_stdout)
    errors = Console(stderr=True)
    with Progress(
        TextColumn("{task.description:>12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=errors,
        transient=False,
    ) as bar:
        stages = _Bar(bar)
        report, balances, seconds = asyncio.run(
            _verify(
                settings, options, stages, projections=projections, scratch_schema=scratch_schema
            )
        )
        stages.finish()
    document = report.to_json()
    document["balances"] = [] if balances is None else balances.to_json()
    document["seconds"] = {name: round(value, 3) for name, value in seconds.items()}
    if json_path is not None:
        if to_stdout:
            _write_json(sys.stdout, document)
        else:
            with json_path.open("w", encoding="utf-8") as out:
                _write_json(out, document)
    _print_summary(summary, report)
    raise click.exceptions.Exit(report.exit_code)


async def _verify(
    settings: Settings,
    options: Any,
    bar: _Bar,
    *,
    projections: bool,
    scratch_schema: str | None,
) -> tuple[Report, Balances | None, dict[str, float]]:
    from anchoring import auditor  # noqa: PLC0415

    try:
        audit = await auditor.audit_log(settings, options, bar)
    except LedgerError as error:
        report = Report()
        report.error(f"the log could not be read: {error}")
        return report, None, {}
    report = audit.report
    if projections:
        from projections import audit as projections_audit  # noqa: PLC0415

        payments_topic = _payments_topic(settings)
        bar.stage("balances", None)
        report.merge(
            await projections_audit.compare_balances(
                settings, audit.balances, audit.ends.get(payments_topic, {})
            )
        )
        bar.stage("rebuild", None)
        scratch = scratch_schema or f"{settings.projections_schema}_audit"
        report.merge(await projections_audit.compare_rebuild(settings, scratch))
    else:
        report.facts["projections_not_compared"] = 1
    return report, audit.balances, audit.seconds


def _payments_topic(settings: Settings) -> str:
    from ledger.topics import TopicRole, topic_name  # noqa: PLC0415

    return topic_name(settings, TopicRole.PAYMENT_EVENTS)


def _write_json(out: IO[str], document: dict[str, Any]) -> None:
    json.dump(document, out, indent=2, sort_keys=False)
    out.write("\n")


def finding_text(finding: Finding) -> str:
    """One line: what failed, and where."""
    event = f" event {finding.event_id}" if finding.event_id else ""
    where = f" ({finding.where})" if finding.where else ""
    return (
        f"{finding.check.value}/{finding.reason} at {finding.topic}[{finding.partition}]"
        f"@{finding.offset}{event}{where}: {finding.detail}"
    )


def _print_summary(console: Console, report: Report) -> None:
    table = Table(title="payledger audit", title_justify="left")
    table.add_column("check")
    table.add_column("checked", justify="right")
    table.add_column("failed", justify="right")
    for check, checked in sorted(report.checked.items(), key=lambda item: item[0].value):
        failed = report.failed[check]
        style = "red" if failed else "green"
        table.add_row(check.value, f"{checked:,}", f"[{style}]{failed:,}[/{style}]")
    console.print(table)
    if report.facts:
        facts = ", ".join(
            f"{name} {value:,}" if isinstance(value, int) else f"{name} {value}"
            for name, value in sorted(report.facts.items())
        )
        console.print(f"records read {report.records:,}; {facts}")
    for finding in report.findings[:FINDINGS_SHOWN]:
        console.print(f"[red]FINDING[/red] {escape(finding_text(finding))}", highlight=False)
    hidden = len(report.findings) - FINDINGS_SHOWN + report.findings_dropped
    if hidden > 0:
        console.print(f"... and {hidden:,} more findings (see the JSON report)")
    for error in report.errors:
        console.print(f"[yellow]NOT CHECKED[/yellow] {escape(error)}", highlight=False)
    if report.ok:
        skipped = (
            " (projections not compared)" if "projections_not_compared" in report.facts else ""
        )
        console.print(f"[green]verified: every check passed{skipped}[/green]")
    elif report.findings or report.findings_dropped:
        count = len(report.findings) + report.findings_dropped
        console.print(f"[red]{count:,} findings[/red]")
    else:
        console.print("[yellow]nothing found, but not everything could be checked[/yellow]")

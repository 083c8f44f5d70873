"""``payledger infra``: start, stop and inspect the local stack.

Every command is idempotent. Errors print a clear message to stderr (the
first line says what went wrong; any further lines are the service's own
words, such as the end of its log) and exit non-zero, without a traceback.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import click

from ledger.config import Settings, load_settings
from ledger.errors import LedgerError
from ledger.infra.mocks import MockStack
from ledger.infra.part import Layout, PartStatus
from ledger.infra.procs import tail
from ledger.infra.stack import Stack
from ledger.infra.supervisor import Supervisor

EXIT_ERROR = 1
EXIT_NOT_RUNNING = 3  # like the LSB init scripts' "program is not running"
EXIT_INTERRUPTED = 130

P = ParamSpec("P")
R = TypeVar("R")


def _fail(message: str, code: int = EXIT_ERROR) -> None:
    first, _, rest = message.strip().partition("\n")
    click.echo(f"payledger: error: {first}", err=True)
    for line in rest.splitlines():
        click.echo(f"  {line.strip()}", err=True)
    sys.exit(code)


def _clean_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn the errors a person can act on into a message and an exit code."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except LedgerError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            _fail("interrupted", EXIT_INTERRUPTED)
        raise AssertionError("unreachable")  # _fail exits

    return wrapper


def _settings() -> Settings:
    try:
        return load_settings()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        errors = getattr(exc, "errors", None)
        if callable(errors):
            details = "; ".join(
                f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in errors()
            )
            _fail(f"invalid settings: {details}")
        _fail(f"invalid settings: {exc}")
        raise  # unreachable: _fail exits


def _print_statuses(statuses: list[PartStatus]) -> None:
    name_width = max([9, *(len(status.name) for status in statuses)])
    for status in statuses:
        pid = f"pid {status.pid}" if status.pid else ""
        click.echo(f"{status.name:<{name_width}} {status.state.value:<9} {pid}".rstrip())
        width = max((len(key) for key in status.endpoints), default=0)
        for key, value in status.endpoints.items():
            click.echo(f"          {key:<{width}}  {value}")


def _progress(message: str) -> None:
    click.echo(f"... {message}", err=True)


@click.group()
def infra() -> None:
    """Local infrastructure: Kafka (KRaft), Postgres and SoftHSM2, as real services."""


@infra.command()
@_clean_errors
def install() -> None:
    """Install everything the stack and its peers run, and start nothing.

    Debian packages when missing (Postgres, SoftHSM2), the Kafka jars from
    Maven Central, stripe-mock, Kubo and btcd built with Go and Prism from
    npm, all into the cache dir. Each is found again by its marker, so a
    second run costs nothing; ``make test`` runs it before the tests, so no
    test waits on a cold build.
    """
    started = time.monotonic()
    settings = _settings()
    for what, step in _install_steps(settings):
        _progress(f"{what}: installing if missing")
        step()
    click.echo(f"infra install in {time.monotonic() - started:.1f} s", err=True)


def _install_steps(settings: Settings) -> list[tuple[str, Callable[[], object]]]:
    # Imported here: the anchoring peers' modules pull in python-bitcoinlib.
    from ledger.infra import kafka, postgres, softhsm  # noqa: PLC0415
    from ledger.infra.btcd import ensure_btcd  # noqa: PLC0415
    from ledger.infra.kubo import ensure_kubo  # noqa: PLC0415
    from ledger.infra.mocks import ensure_prism, ensure_stripe_mock  # noqa: PLC0415

    return [
        ("postgres", postgres.ensure_installed),
        ("softhsm", lambda: softhsm.ensure_installed(settings)),
        ("kafka jars", lambda: kafka.ensure_jars(settings)),
        ("stripe-mock", lambda: ensure_stripe_mock(settings)),
        ("prism", lambda: ensure_prism(settings)),
        ("btcd", lambda: ensure_btcd(settings)),
        ("kubo", lambda: ensure_kubo(settings)),
    ]


@infra.command()
@click.option(
    "--with-mocks",
    is_flag=True,
    help="Also start the payment providers' local mocks (stripe-mock, Prism, fakes).",
)
@_clean_errors
def up(with_mocks: bool) -> None:
    """Install what is missing, start what is not running, wait until ready."""
    started = time.monotonic()
    settings = _settings()
    statuses = Stack(settings).up(progress=_progress)
    if with_mocks:
        statuses += MockStack(settings).up(progress=_progress)
    _print_statuses(statuses)
    click.echo(f"infra up in {time.monotonic() - started:.1f} s", err=True)


@infra.command()
@_clean_errors
def down() -> None:
    """Stop Kafka, Postgres and any running provider mocks (data is kept; the token stays)."""
    settings = _settings()
    mocks = MockStack(settings)
    # Mocks are listed only if some ran: most stacks never start them.
    mocks_ran = any(status.pid is not None for status in mocks.status())
    statuses = mocks.down(progress=_progress) if mocks_ran else []
    _print_statuses(Stack(settings).down(progress=_progress) + statuses)


@infra.command()
@_clean_errors
def status() -> None:
    """Show each part and where it listens; exit 0 if all run, 3 if not."""
    statuses = Stack(_settings()).status()
    _print_statuses(statuses)
    if not all(s.ok for s in statuses):
        sys.exit(EXIT_NOT_RUNNING)


@infra.command()
@click.argument("part")
@click.option("-n", "--lines", default=50, show_default=True, help="How many lines to show.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (Ctrl-C stops).")
@_clean_errors
def logs(part: str, lines: int, follow: bool) -> None:
    """Print the end of a log: kafka, postgres, or a process `payledger run` started."""
    layout = Layout(_settings().state_dir)
    path = layout.log_path(part)
    if not path.is_file():
        known = sorted(p.stem for p in layout.logs_dir.glob("*.log"))
        hint = f"logs there: {', '.join(known)}" if known else "run `payledger infra up` first"
        _fail(f"no log for {part} in {layout.logs_dir}; {hint}")
    for line in tail(path, lines):
        click.echo(line)
    if not follow:
        return
    with path.open("r", errors="replace") as handle:
        handle.seek(0, 2)
        while True:
            line = handle.readline()
            if line:
                click.echo(line, nl=False)
            else:
                time.sleep(0.5)


@infra.command("run")
@_clean_errors
def run_foreground() -> None:
    """Run the infrastructure in the foreground until Ctrl-C (no app processes)."""
    with Supervisor(_settings()) as supervisor:
        supervisor.start_infra()
        code = supervisor.wait()
    sys.exit(code)

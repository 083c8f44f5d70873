"""The embedded stack as background daemons: ``payledger infra up | down | status``.

``Stack.up()`` installs what is missing, starts Kafka and Postgres detached
from the calling process (their output appended to ``<state_dir>/logs/``,
their PIDs in ``<state_dir>/run/``), creates the SoftHSM2 token and returns
once everything answers. Every method is idempotent: a part that is already
running is left alone, a part that is already stopped stays stopped.

For ``make run`` (everything in the foreground, one terminal, Ctrl-C stops
it all) use ``Supervisor``, re-exported here; it runs the same parts.
"""

from __future__ import annotations

from collections.abc import Callable

from ledger.config import Settings
from ledger.infra import softhsm
from ledger.infra.catalog import server_parts
from ledger.infra.part import Layout, PartStatus, State, wait_until_ready
from ledger.infra.ports import check_ports
from ledger.infra.procs import reap_adopted
from ledger.infra.supervisor import Supervisor, settings_env

__all__ = ["PartStatus", "Stack", "State", "Supervisor", "settings_env"]

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


class Stack:
    """Kafka, Postgres and SoftHSM2 of one state dir, as background daemons."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.layout = Layout(settings.state_dir)
        self.parts = server_parts(settings)

    def up(self, progress: Progress = _quiet) -> list[PartStatus]:
        """Start whatever is not running and wait until all of it answers.

        Raises PortInUseError (before any slow work) if a port of a part that
        is not running is taken, and InfrastructureError if a part cannot be
        installed or does not become ready within READINESS_TIMEOUT_S.
        """
        with self.layout.lock(progress):
            running = {part.name: part.running_pid() for part in self.parts}
            # Every port first: a conflict should fail in a second, not after a download.
            for part in self.parts:
                if running[part.name] is None:
                    check_ports(part.name, part.ports())
            progress("softhsm: preparing the token")
            softhsm.ensure_token(self.settings)
            for part in self.parts:
                pid = running[part.name]
                if pid is not None:
                    progress(f"{part.name}: already running (pid {pid})")
                    continue
                progress(f"{part.name}: preparing")
                part.prepare()
                progress(f"{part.name}: starting")
                part.start_daemon()
            progress("waiting until every part answers")
            wait_until_ready(self.parts)
            for part in self.parts:
                part.after_ready()
        return self.status()

    def down(self, progress: Progress = _quiet) -> list[PartStatus]:
        """Stop every running part, in reverse start order.

        Kafka gets SIGTERM, then SIGKILL after SHUTDOWN_TIMEOUT_S; Postgres is
        stopped with ``pg_ctl stop -m fast``. Stale PID files are removed.
        """
        with self.layout.lock(progress):
            for part in reversed(self.parts):
                pid = part.running_pid()
                if pid is None:
                    part.forget()
                    continue
                progress(f"{part.name}: stopping (pid {pid})")
                part.stop(pid)
            reap_adopted()
        return self.status()

    def status(self) -> list[PartStatus]:
        """Per part: running / starting / stopped (ready / absent for the token)."""
        return [part.status() for part in self.parts] + [softhsm.status(self.settings)]

    def env(self) -> dict[str, str]:
        """What other processes need in their environment to use the stack."""
        return softhsm.token_env(self.settings)

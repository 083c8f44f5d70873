"""What every long-running part of the stack (Kafka, Postgres) offers the
daemon launcher (``stack.Stack``) and the foreground supervisor
(``supervisor.Supervisor``), so both run the parts the same way.
"""

from __future__ import annotations

import abc
import datetime as dt
import fcntl
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO, ClassVar

from ledger.config import Settings
from ledger.errors import InfrastructureError
from ledger.infra.ports import PortUse
from ledger.infra.procs import (
    POLL_INTERVAL_S,
    adopt,
    format_tail,
    remove_file,
    terminate,
    write_pid,
)
from ledger.limits import READINESS_TIMEOUT_S, SHUTDOWN_TIMEOUT_S


class State(StrEnum):
    RUNNING = "running"  # process alive and answering its protocol
    STARTING = "starting"  # process alive, not answering (yet)
    STOPPED = "stopped"
    READY = "ready"  # a part without a process (SoftHSM2 token) is set up
    ABSENT = "absent"  # ... or is not


@dataclass(frozen=True, slots=True)
class PartStatus:
    """Where a part stands and where it can be reached."""

    name: str
    state: State
    pid: int | None = None
    # Human-readable "what: where" pairs: bootstrap servers, DSN, log file...
    endpoints: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.state in (State.RUNNING, State.READY)


@dataclass(frozen=True, slots=True)
class Layout:
    """Where the stack keeps logs and PID files inside the state dir."""

    state_dir: Path

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    def log_path(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    def pid_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def ensure(self) -> None:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def lock(self, waiting: Callable[[str], None] | None = None) -> Iterator[None]:
        """Hold the state dir's lock: one start or stop at a time.

        Two ``up`` at once (a test session and a terminal, say) would both
        format Kafka's storage and both start a broker; with the lock the
        second waits, then finds everything running. Released by the kernel
        if the holder dies.
        """
        self.ensure()
        with (self.run_dir / "stack.lock").open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if waiting is not None:
                    waiting("another payledger process is starting or stopping the stack; waiting")
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def start_banner(name: str) -> str:
    """The line written to a part's log before each start: the log is appended
    to across restarts, so readers need to see where one run begins."""
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return f"==== payledger: starting {name} at {now} ====\n"


class ServerPart(abc.ABC):
    """A part that runs as one long-lived server process."""

    name: ClassVar[str]

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.layout = Layout(settings.state_dir)

    @abc.abstractmethod
    def ports(self) -> list[PortUse]:
        """The ports the server listens on (checked before it starts)."""

    @abc.abstractmethod
    def prepare(self) -> None:
        """Install, configure and initialise; idempotent; starts no server."""

    @abc.abstractmethod
    def command(self) -> list[str]:
        """The argv that runs the server in the foreground, logging to stdout/stderr."""

    def command_env(self) -> dict[str, str]:
        return dict(os.environ)

    def command_cwd(self) -> Path:
        return self.settings.state_dir

    @abc.abstractmethod
    def running_pid(self) -> int | None:
        """PID of our server if it is alive (and verifiably ours), else None."""

    @abc.abstractmethod
    def is_ready(self) -> bool:
        """True if the server answers its protocol and is ours."""

    @abc.abstractmethod
    def endpoints(self) -> dict[str, str]:
        """Where clients reach the server, for ``status`` and ``up``."""

    def after_ready(self) -> None:  # noqa: B027 - optional hook, most parts need nothing
        """One-time set-up that needs the server running (roles, databases)."""

    @property
    def log_path(self) -> Path:
        return self.layout.log_path(self.name)

    @property
    def pid_path(self) -> Path:
        return self.layout.pid_path(self.name)

    def note_started(self, pid: int) -> None:
        """Record the PID of a server we just started."""
        write_pid(self.pid_path, pid)

    def forget(self) -> None:
        remove_file(self.pid_path)

    def start_daemon(self) -> int:
        """Start the server detached from this process; return its PID.

        Its own session keeps a terminal's Ctrl-C away from it, and its output
        is appended to the part's log.
        """
        self.layout.ensure()
        with self.log_path.open("a") as log:
            log.write(start_banner(self.name))
            log.flush()
            process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.command_cwd(),
                env=self.command_env(),
                start_new_session=True,
            )
        adopt(process)
        self.note_started(process.pid)
        return process.pid

    def stop(self, pid: int, child: subprocess.Popen[bytes] | None = None) -> None:
        """Stop the server: SIGTERM, wait SHUTDOWN_TIMEOUT_S, then SIGKILL."""
        terminate(pid, SHUTDOWN_TIMEOUT_S, child=child)
        self.forget()

    def status(self) -> PartStatus:
        pid = self.running_pid()
        if pid is None:
            return PartStatus(self.name, State.STOPPED, None, self.endpoints())
        state = State.RUNNING if self.is_ready() else State.STARTING
        return PartStatus(self.name, state, pid, self.endpoints())


def open_log_for_append(path: Path) -> IO[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("a", buffering=1, errors="replace")


def wait_until_ready(
    parts: Sequence[ServerPart],
    children: Mapping[str, subprocess.Popen[bytes]] | None = None,
    timeout_s: float = READINESS_TIMEOUT_S,
) -> None:
    """Wait until every part answers, at most ``timeout_s`` in all.

    A part counts as dead when its child process (if we hold one in
    ``children``) has exited, else when its recorded PID is gone; either way
    the error carries the end of its log, which usually says why.
    """
    deadline = time.monotonic() + timeout_s
    pending = list(parts)
    while pending:
        for part in list(pending):
            child = (children or {}).get(part.name)
            dead = child.poll() is not None if child is not None else part.running_pid() is None
            if dead:
                raise InfrastructureError(
                    f"{part.name} exited during start-up\n{format_tail(part.log_path)}"
                )
            if part.is_ready():
                pending.remove(part)
        if pending and time.monotonic() >= deadline:
            names = ", ".join(p.name for p in pending)
            raise InfrastructureError(
                f"{names} did not become ready within {timeout_s:.0f} s\n"
                + "\n".join(format_tail(p.log_path) for p in pending)
            )
        if pending:
            time.sleep(POLL_INTERVAL_S)

"""Foreground supervision for ``make run``: the stack and the app in one terminal.

Every process runs as a child of the supervisor in its own session (so a
terminal's Ctrl-C reaches only the supervisor, which then stops the children
one by one, newest first). Each child's output is streamed to the terminal
with a per-process prefix and appended to ``<state_dir>/logs/<name>.log``::

    kafka    | 2026-01-01 12:00:00.000 INFO  KafkaRaftServer: ... Kafka Server started
    postgres | 2026-01-01 12:00:00.100 UTC [42] LOG:  database system is ready ...
    http     | INFO:     Uvicorn running on http://127.0.0.1:18080

Typical use by a ``payledger run`` command::

    with Supervisor(settings) as sup:
        sup.start_infra()                       # Kafka, Postgres, SoftHSM2 token; waits until ready
        provision_topics(settings)              # one-time set-up, in-process ...
        sup.run_once("keys", [sys.executable, "-m", "ledger.keys", "init"])  # ... or as a command
        sup.add_process(
            "http",
            [sys.executable, "-m", "uvicorn", "ingress.app:app", "--port", str(settings.http_port)],
            ready=lambda: tcp_answers(settings.http_host, settings.http_port),
        )
        return sup.wait()                       # until Ctrl-C / SIGTERM / a child exits

Leaving the ``with`` block, normally or by an exception (including Ctrl-C
during start-up), stops everything the supervisor started. Parts that were
already running as daemons (``payledger infra up``) are used, not restarted,
and are left running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any, TextIO

from ledger.config import Settings
from ledger.errors import InfrastructureError
from ledger.infra import softhsm
from ledger.infra.catalog import server_parts
from ledger.infra.part import (
    Layout,
    PartStatus,
    ServerPart,
    open_log_for_append,
    start_banner,
    wait_until_ready,
)
from ledger.infra.ports import check_ports
from ledger.infra.procs import POLL_INTERVAL_S, terminate
from ledger.limits import READINESS_TIMEOUT_S, SHUTDOWN_TIMEOUT_S

_SELF = "run"  # the prefix of the supervisor's own messages
_PREFIX_WIDTH = 8
_COLOURS = ("36", "35", "33", "32", "34", "31", "96", "95")

_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


def settings_env(settings: Settings) -> dict[str, str]:
    """``settings`` as PAYLEDGER_* variables, so a child process built with
    ``load_settings()`` sees exactly the settings of its parent, including
    ones given as overrides rather than read from the environment."""
    env: dict[str, str] = {}
    for name, raw in settings:
        if raw is None:
            continue
        value = raw
        if hasattr(raw, "get_secret_value"):
            value = raw.get_secret_value()
        elif isinstance(raw, Enum):
            value = raw.value
        env[f"PAYLEDGER_{name.upper()}"] = str(value)
    return env


@dataclass
class _Child:
    name: str
    process: subprocess.Popen[bytes]
    stop: Callable[[], None]
    pump: threading.Thread


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM takes the same clean path as Ctrl-C.
    raise KeyboardInterrupt


class Supervisor:
    """Runs the stack and extra processes as supervised children (see module doc).

    ``out`` receives the prefixed output (default: stdout). Not thread-safe:
    call its methods from one thread, normally the main thread, which is the
    only one where SIGTERM can be turned into a clean stop.
    """

    def __init__(self, settings: Settings, *, out: TextIO | None = None) -> None:
        self.settings = settings
        self.layout = Layout(settings.state_dir)
        self._out = out if out is not None else sys.stdout
        self._colour = self._out.isatty() and "NO_COLOR" not in os.environ
        self._lock = threading.Lock()
        self._children: list[_Child] = []
        self._out_broken = False
        self._previous_sigterm: _Handler = signal.SIG_DFL
        self._previous_sigint: _Handler = signal.SIG_DFL
        self._handling_sigterm = False

    # -- context management

    def __enter__(self) -> Supervisor:
        if threading.current_thread() is threading.main_thread():
            self._previous_sigterm = signal.signal(signal.SIGTERM, _raise_interrupt)
            # Ctrl-C stops the stack even when our parent started us with
            # SIGINT ignored (a background job of a non-interactive shell),
            # which Python would otherwise leave ignored.
            self._previous_sigint = signal.signal(signal.SIGINT, signal.default_int_handler)
            self._handling_sigterm = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.stop()
        finally:
            if self._handling_sigterm:
                _restore(signal.SIGTERM, self._previous_sigterm)
                _restore(signal.SIGINT, self._previous_sigint)
                self._handling_sigterm = False

    # -- output

    def log(self, name: str, line: str) -> None:
        """Write one prefixed line to the output (also for the caller's own messages)."""
        prefix = f"{name:<{_PREFIX_WIDTH}} |"
        if self._colour:
            colour = _COLOURS[sum(name.encode()) % len(_COLOURS)]
            prefix = f"\x1b[{colour}m{prefix}\x1b[0m"
        with self._lock:
            if self._out_broken:
                return
            try:
                self._out.write(f"{prefix} {line}\n")
                self._out.flush()
            except (BrokenPipeError, ValueError, OSError):
                # The terminal or pipe reading us went away (`make run | tee`
                # interrupted). Keep supervising and stopping the children;
                # every line still reaches the per-process log files.
                self._out_broken = True

    def _pump(self, name: str, stream: IO[bytes], log: IO[str]) -> None:
        try:
            for raw in iter(stream.readline, b""):
                line = raw.decode(errors="replace").rstrip("\r\n")
                self.log(name, line)
                log.write(line + "\n")
        finally:
            stream.close()
            log.close()

    def _spawn(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: Path | None,
    ) -> tuple[subprocess.Popen[bytes], threading.Thread]:
        log = open_log_for_append(self.layout.log_path(name))
        log.write(start_banner(name))
        try:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=dict(env),
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as exc:
            log.close()
            raise InfrastructureError(f"cannot start {name}: {exc}") from exc
        assert process.stdout is not None  # stdout=PIPE guarantees it
        pump = threading.Thread(
            target=self._pump, args=(name, process.stdout, log), name=f"pump-{name}", daemon=True
        )
        pump.start()
        return process, pump

    # -- the stack

    def start_infra(
        self, *, with_mocks: bool = False, with_anchor_peers: bool = False
    ) -> list[PartStatus]:
        """Start Kafka and Postgres as children, create the SoftHSM2 token, and
        wait until everything answers; ``with_mocks`` also the offline provider
        peers (stripe-mock, the PayPal mock, the Coinbase fake), and
        ``with_anchor_peers`` the anchoring worker's (Kubo offline, btcd in
        regtest). Parts already running (as daemons) are used as they are.
        Returns the status of every part."""
        # These import this module.
        from ledger.infra.btcd import btcd_parts  # noqa: PLC0415
        from ledger.infra.kubo import KuboPart  # noqa: PLC0415
        from ledger.infra.mocks import mock_parts  # noqa: PLC0415

        parts = server_parts(self.settings) + (mock_parts(self.settings) if with_mocks else [])
        if with_anchor_peers:
            parts += [KuboPart(self.settings), *btcd_parts(self.settings)]
        with self.layout.lock(lambda message: self.log(_SELF, message)):
            running = {part.name: part.running_pid() for part in parts}
            for part in parts:
                if running[part.name] is None:
                    check_ports(part.name, part.ports())
            softhsm.ensure_token(self.settings)
            children: dict[str, subprocess.Popen[bytes]] = {}
            for part in parts:
                pid = running[part.name]
                if pid is not None:
                    self.log(_SELF, f"{part.name} is already running (pid {pid}); using it")
                    continue
                self.log(_SELF, f"preparing {part.name}")
                part.prepare()
                process, pump = self._spawn(
                    part.name, part.command(), part.command_env(), part.command_cwd()
                )
                part.note_started(process.pid)
                children[part.name] = process
                self._children.append(
                    _Child(part.name, process, self._part_stopper(part, process), pump)
                )
            wait_until_ready(parts, children)
            for part in parts:
                part.after_ready()
        statuses = [part.status() for part in parts] + [softhsm.status(self.settings)]
        for status in statuses:
            where = ", ".join(f"{k} {v}" for k, v in status.endpoints.items() if k != "log")
            self.log(_SELF, f"{status.name} {status.state.value}: {where}")
        return statuses

    @staticmethod
    def _part_stopper(part: ServerPart, process: subprocess.Popen[bytes]) -> Callable[[], None]:
        def stop() -> None:
            part.stop(part.running_pid() or process.pid, child=process)

        return stop

    # -- extra processes

    def child_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment for an extra process: ours, the settings as
        PAYLEDGER_* variables, SOFTHSM2_CONF, unbuffered Python output (so lines
        appear as they are written), then ``extra``."""
        env = dict(os.environ)
        env.update(settings_env(self.settings))
        env.update(softhsm.token_env(self.settings))
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra or {})
        return env

    def run_once(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        timeout_s: float = 600.0,
    ) -> None:
        """Run a one-time set-up command to completion, its output prefixed with
        ``name``. Raises InfrastructureError if it fails or takes longer than
        ``timeout_s``."""
        process, pump = self._spawn(name, argv, env or self.child_env(), cwd)
        try:
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            terminate(process.pid, SHUTDOWN_TIMEOUT_S, child=process)
            raise InfrastructureError(f"{name} did not finish within {timeout_s:.0f} s") from None
        except BaseException:
            terminate(process.pid, SHUTDOWN_TIMEOUT_S, child=process)
            raise
        finally:
            pump.join(timeout=5)
        if code != 0:
            raise InfrastructureError(f"{name} failed with exit code {code}")

    def add_process(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        ready: Callable[[], bool] | None = None,
        ready_timeout_s: float = READINESS_TIMEOUT_S,
    ) -> int:
        """Start a long-running process under supervision and return its PID.

        ``env`` defaults to ``child_env()``. If ``ready`` is given, block until it
        returns True (polled every 0.2 s); raise InfrastructureError if the
        process exits first or ``ready_timeout_s`` passes. It is stopped with
        SIGTERM to its process group, then SIGKILL after SHUTDOWN_TIMEOUT_S.
        """
        process, pump = self._spawn(name, argv, env or self.child_env(), cwd)

        def stop() -> None:
            terminate(process.pid, SHUTDOWN_TIMEOUT_S, child=process)

        self._children.append(_Child(name, process, stop, pump))
        if ready is not None:
            deadline = time.monotonic() + ready_timeout_s
            while not ready():
                code = process.poll()
                if code is not None:
                    raise InfrastructureError(f"{name} exited with code {code} before it was ready")
                if time.monotonic() >= deadline:
                    raise InfrastructureError(
                        f"{name} did not become ready within {ready_timeout_s:.0f} s"
                    )
                time.sleep(POLL_INTERVAL_S)
        return process.pid

    # -- running and stopping

    def wait(self) -> int:
        """Block until Ctrl-C or SIGTERM (returns 0) or until a supervised
        process exits on its own (returns its exit code, 1 if it was 0: the
        stack is not meant to end by itself); then stop everything."""
        try:
            while True:
                for child in self._children:
                    code = child.process.poll()
                    if code is not None:
                        self.log(_SELF, f"{child.name} exited with code {code}; stopping")
                        return code or 1
                time.sleep(POLL_INTERVAL_S)
        except KeyboardInterrupt:
            self.log(_SELF, "interrupted; stopping")
            return 0
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop every process this supervisor started, newest first; idempotent.

        Signals are held off meanwhile: every stop is bounded (SIGKILL after
        SHUTDOWN_TIMEOUT_S), and an impatient second Ctrl-C must not leave the
        remaining children running on their own.
        """
        with self._signals_held():
            while self._children:
                child = self._children.pop()
                if child.process.poll() is None:
                    self.log(_SELF, f"stopping {child.name}")
                try:
                    child.stop()
                except Exception as exc:  # keep stopping the others
                    self.log(_SELF, f"could not stop {child.name} cleanly: {exc}")
                child.pump.join(timeout=5)

    @contextmanager
    def _signals_held(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {
            sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            yield
        finally:
            for sig, handler in previous.items():
                _restore(sig, handler)


def _restore(sig: signal.Signals, handler: _Handler) -> None:
    # signal.signal() reports None for a handler installed outside Python.
    signal.signal(sig, signal.SIG_DFL if handler is None else handler)

"""Process helpers shared by the infrastructure parts: run, probe, stop, tail.

Linux only (``/proc``), like the rest of the embedded stack.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

from ledger.errors import InfrastructureError

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# How often loops that wait on a process or a port look again.
POLL_INTERVAL_S = 0.2

# Daemons started by this process stay its children until it exits. Holding
# their Popen objects lets us reap them when they stop (no zombies while we
# live) and keeps Python from warning that a child is "still running" when the
# object would otherwise be garbage collected.
_adopted: dict[int, subprocess.Popen[bytes]] = {}


def adopt(process: subprocess.Popen[bytes]) -> None:
    _adopted[process.pid] = process


def reap_adopted() -> None:
    for pid, process in list(_adopted.items()):
        if process.poll() is not None:
            del _adopted[pid]


def is_root() -> bool:
    return os.geteuid() == 0


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def run_checked(
    argv: Sequence[str | os.PathLike[str]],
    *,
    what: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    input_text: str | None = None,
    timeout_s: float = 600.0,
) -> str:
    """Run a short command to completion and return its combined output.

    Raises InfrastructureError naming ``what`` with the command's last output
    lines, so the person reading the error sees the tool's own explanation.
    """
    args = [os.fspath(a) for a in argv]
    try:
        done = subprocess.run(
            args,
            input=input_text,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            timeout=timeout_s,
            check=False,
        )
    except FileNotFoundError as exc:
        raise InfrastructureError(f"{what}: command not found: {args[0]}") from exc
    except subprocess.TimeoutExpired as exc:
        raise InfrastructureError(f"{what}: timed out after {timeout_s:.0f} s") from exc
    output = strip_ansi(done.stdout or "")
    if done.returncode != 0:
        lines = [line for line in output.splitlines() if line.strip()][-15:]
        detail = "\n  ".join(lines) if lines else "(no output)"
        raise InfrastructureError(f"{what} failed (exit {done.returncode}):\n  {detail}")
    return output


def pid_alive(pid: int) -> bool:
    """True if ``pid`` is a live process. A zombie counts as dead: a daemon whose
    parent exited may linger as one until init reaps it, and it serves nothing."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user (the postgres system user)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    # The state letter follows the parenthesised command name, which may itself
    # contain spaces or parentheses, so split at the last ')'.
    state = stat.rpartition(")")[2].split()
    return bool(state) and state[0] not in {"Z", "X"}


def cmdline(pid: int) -> str:
    """The command line of ``pid`` joined by spaces, or '' if unreadable."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def find_pid(needle: str) -> int | None:
    """The PID of a live process (not this one) whose command line contains ``needle``."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    for entry in proc.iterdir():
        if entry.name.isdigit():
            pid = int(entry.name)
            if pid != os.getpid() and needle in cmdline(pid) and pid_alive(pid):
                return pid
    return None


def read_pid(path: Path) -> int | None:
    """The first line of a PID file as an int, or None if absent or garbage."""
    try:
        first = path.read_text().split("\n", 1)[0].strip()
    except OSError:
        return None
    return int(first) if first.isdigit() else None


def write_pid(path: Path, pid: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{pid}\n")
    tmp.replace(path)  # atomic: a reader never sees a half-written PID


def remove_file(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def send_signal(pid: int, sig: signal.Signals) -> None:
    """Signal the process group ``pid`` leads, else just ``pid``.

    Our children run in their own session (they lead their group), so a wrapper
    such as ``python -m uvicorn`` takes its workers down with it.
    """
    with contextlib.suppress(ProcessLookupError):
        try:
            leads_group = os.getpgid(pid) == pid
        except ProcessLookupError:
            return
        if leads_group and pid != os.getpgrp():
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def wait_gone(pid: int, timeout_s: float, child: subprocess.Popen[bytes] | None = None) -> bool:
    """Wait until ``pid`` has exited; True if it did within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        if child is not None and child.poll() is not None:
            return True
        if child is None and not pid_alive(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL_S / 2)


def terminate(
    pid: int,
    timeout_s: float,
    *,
    child: subprocess.Popen[bytes] | None = None,
    first_signal: signal.Signals = signal.SIGTERM,
) -> bool:
    """Stop ``pid``: ``first_signal``, wait up to ``timeout_s``, then SIGKILL.

    Returns True if the process stopped on its own, False if it had to be killed.
    Pass ``child`` when ``pid`` is our own child so it is reaped, not left a zombie.
    """
    child = child if child is not None else _adopted.get(pid)
    if (child is not None and child.poll() is not None) or not pid_alive(pid):
        reap_adopted()
        return True
    send_signal(pid, first_signal)
    if wait_gone(pid, timeout_s, child):
        reap_adopted()
        return True
    send_signal(pid, signal.SIGKILL)
    wait_gone(pid, 5.0, child)
    reap_adopted()
    return False


def tail(path: Path, lines: int = 20) -> list[str]:
    """The last ``lines`` lines of a text file; [] if it does not exist."""
    try:
        with path.open("r", errors="replace") as handle:
            return [line.rstrip("\n") for line in deque(handle, maxlen=lines)]
    except OSError:
        return []


def format_tail(path: Path, lines: int = 20) -> str:
    last = tail(path, lines)
    if not last:
        return f"(log {path} is empty)"
    return f"last lines of {path}:\n  " + "\n  ".join(last)

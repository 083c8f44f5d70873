"""Process helpers: liveness (zombies are dead), stopping with escalation, tails."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ledger.errors import InfrastructureError
from ledger.infra.procs import pid_alive, read_pid, run_checked, tail, terminate, write_pid

_IGNORES_SIGTERM = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def _spawn(code: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True
    )
    assert process.stdout is not None
    assert process.stdout.readline() == b"ready\n"
    return process


def test_pid_alive() -> None:
    assert pid_alive(os.getpid())
    assert not pid_alive(0)


def test_a_zombie_is_not_alive() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    # Not reaped (no poll/wait): it stays a zombie, which kill(pid, 0) still finds.
    while "Z" not in Path(f"/proc/{process.pid}/stat").read_text().rpartition(")")[2][:3]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not pid_alive(process.pid)
    process.wait()


def test_terminate_stops_gracefully() -> None:
    with _spawn("import time\nprint('ready', flush=True)\ntime.sleep(60)\n") as process:
        assert terminate(process.pid, 5.0, child=process) is True
        assert process.returncode == -15


def test_terminate_escalates_to_sigkill() -> None:
    with _spawn(_IGNORES_SIGTERM) as process:
        started = time.monotonic()
        assert terminate(process.pid, 0.5, child=process) is False
        assert process.returncode == -9
        assert time.monotonic() - started < 5


def test_pid_files(tmp_path: Path) -> None:
    path = tmp_path / "run" / "x.pid"
    assert read_pid(path) is None
    write_pid(path, 1234)
    assert read_pid(path) == 1234
    path.write_text("garbage\n")
    assert read_pid(path) is None


def test_tail(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    assert tail(log) == []
    log.write_text("".join(f"{i}\n" for i in range(100)))
    assert tail(log, 3) == ["97", "98", "99"]


def test_run_checked_reports_the_commands_output() -> None:
    assert run_checked([sys.executable, "-c", "print('hi')"], what="x") == "hi\n"
    with pytest.raises(InfrastructureError) as caught:
        run_checked(
            [sys.executable, "-c", "import sys; print('it broke'); sys.exit(3)"], what="the tool"
        )
    assert "the tool failed (exit 3)" in str(caught.value)
    assert "it broke" in str(caught.value)
    with pytest.raises(InfrastructureError, match="command not found"):
        run_checked(["/nonexistent/tool"], what="y")

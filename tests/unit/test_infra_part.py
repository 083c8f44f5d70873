"""The generic daemon machinery of a server part, with a stand-in server."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ledger.config import Settings
from ledger.errors import InfrastructureError
from ledger.infra.part import ServerPart, State, wait_until_ready
from ledger.infra.ports import PortUse
from ledger.infra.procs import cmdline, pid_alive, read_pid


class _FakePart(ServerPart):
    """Runs ``code`` with Python; ready once the file ``ready`` exists."""

    name = "fake"

    def __init__(self, settings: Settings, code: str) -> None:
        super().__init__(settings)
        self.code = code
        self.ready_file = settings.state_dir / "ready"

    def ports(self) -> list[PortUse]:
        return []

    def prepare(self) -> None:
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        return [sys.executable, "-c", self.code, "fake-part-marker", str(self.ready_file)]

    def running_pid(self) -> int | None:
        pid = read_pid(self.pid_path)
        if pid is not None and pid_alive(pid) and str(self.ready_file) in cmdline(pid):
            return pid
        return None

    def is_ready(self) -> bool:
        return self.ready_file.exists()

    def endpoints(self) -> dict[str, str]:
        return {"log": str(self.log_path)}


_GOOD = (
    "import pathlib, sys, time\n"
    "print('starting up', flush=True)\n"
    "pathlib.Path(sys.argv[2]).touch()\n"
    "time.sleep(60)\n"
)


def _part(tmp_path: Path, code: str) -> _FakePart:
    part = _FakePart(Settings(state_dir=tmp_path / "state"), code)
    part.prepare()
    return part


def test_daemon_lifecycle(tmp_path: Path) -> None:
    part = _part(tmp_path, _GOOD)
    assert part.status().state is State.STOPPED
    pid = part.start_daemon()
    wait_until_ready([part], timeout_s=20)
    status = part.status()
    assert (status.state, status.pid) == (State.RUNNING, pid)
    part.stop(pid)
    assert not pid_alive(pid)
    assert part.status().state is State.STOPPED
    assert not part.pid_path.exists()
    log = part.log_path.read_text()
    assert "==== payledger: starting fake at " in log
    assert "starting up" in log


def test_a_part_that_dies_reports_its_log(tmp_path: Path) -> None:
    part = _part(tmp_path, "import sys; print('boom: bad config', flush=True); sys.exit(1)")
    part.start_daemon()
    with pytest.raises(InfrastructureError) as caught:
        wait_until_ready([part], timeout_s=20)
    assert "fake exited during start-up" in str(caught.value)
    assert "boom: bad config" in str(caught.value)


def test_a_part_that_never_answers_times_out(tmp_path: Path) -> None:
    part = _part(tmp_path, "import time; print('stuck', flush=True); time.sleep(60)")
    pid = part.start_daemon()
    try:
        with pytest.raises(InfrastructureError, match="fake did not become ready within 1 s"):
            wait_until_ready([part], timeout_s=1)
    finally:
        part.stop(pid)

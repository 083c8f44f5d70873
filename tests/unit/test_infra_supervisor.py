"""The foreground supervisor with plain Python children (no services needed)."""

from __future__ import annotations

import io
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from ledger.config import Settings, SignerBackend
from ledger.errors import InfrastructureError
from ledger.infra.procs import pid_alive
from ledger.infra.supervisor import Supervisor, settings_env

_SERVE = "import time\nprint('hello from child', flush=True)\ntime.sleep(60)\n"


def _sup(tmp_path: Path) -> tuple[Supervisor, io.StringIO]:
    out = io.StringIO()
    return Supervisor(Settings(state_dir=tmp_path / "state"), out=out), out


def test_output_is_prefixed_and_logged_and_stop_ends_the_child(tmp_path: Path) -> None:
    sup, out = _sup(tmp_path)
    with sup:
        pid = sup.add_process(
            "worker",
            [sys.executable, "-c", _SERVE],
            ready=lambda: "hello from child" in out.getvalue(),
            ready_timeout_s=20,
        )
        assert pid_alive(pid)
    assert not pid_alive(pid)
    assert "worker   | hello from child\n" in out.getvalue()
    assert "run      | stopping worker\n" in out.getvalue()
    log = (tmp_path / "state" / "logs" / "worker.log").read_text()
    assert "starting worker" in log
    assert "hello from child\n" in log


def test_children_stop_newest_first(tmp_path: Path) -> None:
    sup, out = _sup(tmp_path)
    with sup:
        sup.add_process("first", [sys.executable, "-c", _SERVE])
        sup.add_process("second", [sys.executable, "-c", _SERVE])
    text = out.getvalue()
    assert text.index("stopping second") < text.index("stopping first")


def test_wait_returns_when_a_child_exits(tmp_path: Path) -> None:
    sup, out = _sup(tmp_path)
    with sup:
        sup.add_process("steady", [sys.executable, "-c", _SERVE])
        sup.add_process("crashy", [sys.executable, "-c", "import sys; sys.exit(7)"])
        assert sup.wait() == 7
    assert "crashy exited with code 7" in out.getvalue()


def test_sigterm_stops_everything_cleanly(tmp_path: Path) -> None:
    sup, out = _sup(tmp_path)
    with sup:
        pid = sup.add_process("steady", [sys.executable, "-c", _SERVE])
        timer = threading.Timer(0.5, os.kill, args=(os.getpid(), signal.SIGTERM))
        timer.start()
        assert sup.wait() == 0
        timer.join()
    assert not pid_alive(pid)
    assert "interrupted; stopping" in out.getvalue()
    # The supervisor's SIGTERM handler is gone once the block is left.
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_ready_fails_if_the_process_exits_first(tmp_path: Path) -> None:
    sup, _ = _sup(tmp_path)
    with sup, pytest.raises(InfrastructureError, match="exited with code 3 before it was ready"):
        sup.add_process(
            "doomed", [sys.executable, "-c", "import sys; sys.exit(3)"], ready=lambda: False
        )


def test_ready_times_out(tmp_path: Path) -> None:
    sup, _ = _sup(tmp_path)
    started = time.monotonic()
    with sup, pytest.raises(InfrastructureError, match="did not become ready within 1 s"):
        sup.add_process(
            "slow", [sys.executable, "-c", _SERVE], ready=lambda: False, ready_timeout_s=1
        )
    assert time.monotonic() - started < 10


def test_run_once(tmp_path: Path) -> None:
    sup, out = _sup(tmp_path)
    with sup:
        sup.run_once("setup", [sys.executable, "-c", "print('provisioned')"])
        assert "setup    | provisioned\n" in out.getvalue()
        with pytest.raises(InfrastructureError, match="setup failed with exit code 2"):
            sup.run_once("setup", [sys.executable, "-c", "import sys; sys.exit(2)"])


def test_child_env_carries_settings_and_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)
    sup, _ = _sup(tmp_path)
    env = sup.child_env({"EXTRA": "1"})
    assert env["PAYLEDGER_STATE_DIR"] == str(tmp_path / "state")
    assert env["SOFTHSM2_CONF"] == str(tmp_path / "state" / "softhsm" / "softhsm2.conf")
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["EXTRA"] == "1"


def test_settings_env_round_trips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = Settings(
        state_dir=tmp_path,
        kafka_port=29092,
        signer_backend=SignerBackend.PKCS11,
        postgres_password="s3cret",  # type: ignore[arg-type]
    )
    env = settings_env(original)
    assert env["PAYLEDGER_POSTGRES_PASSWORD"] == "s3cret"
    assert env["PAYLEDGER_SIGNER_BACKEND"] == "pkcs11"
    assert "PAYLEDGER_POSTGRES_DSN" not in env  # None stays unset
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert Settings() == original


def test_a_closed_output_does_not_stop_supervision(tmp_path) -> None:
    """`make run | tee` interrupted: writing to the terminal fails, supervision goes on."""
    import io

    from ledger.config import Settings
    from ledger.infra.supervisor import Supervisor

    class Gone(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError

    supervisor = Supervisor(Settings(state_dir=tmp_path), out=Gone())
    supervisor.log("run", "first line")  # must not raise
    supervisor.log("run", "second line")
    assert supervisor._out_broken

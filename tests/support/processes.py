"""A service the test runs as ``python -m <module>``, so that it can be killed outright."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.support.streams import REPO

SHUTDOWN_TIMEOUT_S = 60.0


class ServiceProcess:
    """Runs of one service, each with its own log ``<log_dir>/<name><n>.log``."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        log_dir: Path,
        *,
        shutdown_timeout_s: float = SHUTDOWN_TIMEOUT_S,
    ) -> None:
        self.name = name
        self.shutdown_timeout_s = shutdown_timeout_s
        self.argv = [sys.executable, *argv]
        self.env = dict(env)
        self.log_dir = log_dir
        self.runs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self) -> subprocess.Popen[bytes]:
        log_path = self.log_dir / f"{self.name}{len(self.runs) + 1}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                self.argv, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        self.runs.append((process, log_path))
        return process

    @property
    def current(self) -> subprocess.Popen[bytes]:
        return self.runs[-1][0]

    def alive(self) -> None:
        if self.current.poll() is not None:
            raise AssertionError(f"{self.name} exited:\n{self.logs()}")

    def logs(self, chars: int = 6000) -> str:
        return "\n".join(
            f"--- {path.name} (exit {process.returncode}) ---\n{path.read_text()[-chars:]}"
            for process, path in self.runs
        )

    def kill(self) -> None:
        """SIGKILL: no shutdown at all, open transactions left behind."""
        os.kill(self.current.pid, signal.SIGKILL)
        assert self.current.wait(timeout=self.shutdown_timeout_s) == -signal.SIGKILL

    def terminate(self) -> int:
        """SIGTERM and its exit code; killed (and the wait's error raised) if it hangs."""
        process = self.current
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=self.shutdown_timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise

    def cleanup(self) -> None:
        for process, _ in self.runs:
            if process.poll() is None:
                process.kill()
                process.wait()

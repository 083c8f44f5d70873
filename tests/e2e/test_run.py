"""``payledger run`` (what ``make run`` starts) through its HTTP API, then Ctrl-C.

Runs the real command in a subprocess with its own state directory and ports:
Kafka, Postgres, the SoftHSM2 token, topics, keys and the ingress come up; the
registry serves the envelope schema; SIGINT stops everything and frees every port.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ledger.config import Settings

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0
PORTS = {
    "KAFKA_PORT": 39092,
    "KAFKA_CONTROLLER_PORT": 39093,
    "POSTGRES_PORT": 35432,
    "HTTP_PORT": 38080,
}


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, str]]:
    # Under the repository, not /tmp: the Postgres server runs as the postgres
    # user and must be able to reach its data directory.
    state_dir = ROOT / ".state" / "e2e"
    shutil.rmtree(state_dir, ignore_errors=True)
    environment = {
        **os.environ,
        "PAYLEDGER_STATE_DIR": os.fspath(state_dir),
        **{f"PAYLEDGER_{name}": str(port) for name, port in PORTS.items()},
        "NO_COLOR": "1",
    }
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "ledger.cli", "run"],
            cwd=ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while b"ready: API at" not in log_path.read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"payledger run did not become ready:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield process, log_path, f"http://127.0.0.1:{PORTS['HTTP_PORT']}"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_run_serves_the_registry_and_stops_cleanly_on_ctrl_c(running) -> None:
    process, log_path, url = running
    ready = httpx.get(f"{url}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready", "kafka": True, "postgres": True}
    subjects = httpx.get(f"{url}/subjects", timeout=10).json()
    assert "payledger.keys-value" in subjects
    latest = httpx.get(f"{url}/subjects/payledger.keys-value/versions/latest", timeout=10).json()
    assert "io.payledger.Envelope" in latest["schema"]
    settings = Settings(state_dir=ROOT / ".state" / "e2e")
    assert (settings.keys_dir / "root.json").exists()
    # The README's first curl example: a payment for the demo merchant.
    api_key = (settings.state_dir / "demo-api-key").read_text()
    created = httpx.post(
        f"{url}/v1/payments",
        json={"provider": "stripe", "amount_minor": 1050, "currency": "EUR"},
        headers={"Authorization": f"Bearer {api_key}", "Idempotency-Key": "order-1234"},
        timeout=30,
    )
    assert created.status_code == 202, created.text
    assert created.json()["payment_id"].startswith("pay_")

    process.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends
    assert process.wait(timeout=STOP_TIMEOUT_S) == 0
    log = log_path.read_text()
    assert "interrupted; stopping" in log
    for port in PORTS.values():
        assert not _listening(port), f"port {port} still listening after Ctrl-C"

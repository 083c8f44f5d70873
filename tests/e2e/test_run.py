"""``payledger run`` (what ``make run`` starts) through its HTTP API, then Ctrl-C.

Runs the real command in a subprocess with its own state directory and ports:
Kafka, Postgres, the SoftHSM2 token, the provider peers, topics, keys, the
ingress, the stream worker and the projections applier come up; the registry
serves the envelope schema; a payment posted to the API reaches stripe-mock and
the Postgres projection; SIGINT stops everything and frees every port.
"""

from __future__ import annotations

import base64
import json
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
import psycopg
import pytest

from ledger.config import Settings
from ledger.tlog.checkpoint import verify_checkpoint
from ledger.tlog.cid import file_dag
from ledger.tlog.keys import PUBLIC_FILE, load_anchoring_public_key
from ledger.tlog.leaf import LeafRecord
from ledger.tlog.merkle import leaf_hash, verify_inclusion

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0
PROJECTED_TIMEOUT_S = 60.0
AUDIT_TIMEOUT_S = 300.0
# Below the kernel's ephemeral range (32768-60999), where a client's own end
# of some connection could hold the port by chance.
PORTS = {
    "KAFKA_PORT": 31092,
    "KAFKA_CONTROLLER_PORT": 31093,
    "POSTGRES_PORT": 31432,
    "HTTP_PORT": 31080,
    "STRIPE_MOCK_PORT": 31111,
    "STRIPE_MOCK_HTTPS_PORT": 31112,
    "PAYPAL_MOCK_PORT": 31010,
    "PAYPAL_MOCK_ORDERS_PORT": 31011,
    "PAYPAL_MOCK_PAYMENTS_PORT": 31012,
    "COINBASE_MOCK_PORT": 31020,
    "KUBO_API_PORT": 31501,
    "BTCD_RPC_PORT": 31334,
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
            # The test failed before its Ctrl-C: stop the stack the way a
            # service manager would (SIGTERM takes the same clean path), and
            # only then kill. Every child runs in a session of its own, so a
            # kill of this process alone would leave them running.
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                subprocess.run(
                    [sys.executable, "-m", "ledger.cli", "infra", "down"],
                    cwd=ROOT,
                    env=environment,
                    capture_output=True,
                    check=False,
                    timeout=STOP_TIMEOUT_S,
                )


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
    payment_id = created.json()["payment_id"]
    assert payment_id.startswith("pay_")
    # All the way through: the stream worker created it at stripe-mock and
    # emitted CREATED; the projections applier wrote it to Postgres.
    settings = Settings(state_dir=ROOT / ".state" / "e2e", postgres_port=PORTS["POSTGRES_PORT"])
    deadline = time.monotonic() + PROJECTED_TIMEOUT_S
    row = None
    while row is None:
        with psycopg.connect(settings.dsn(), connect_timeout=5) as connection:
            row = connection.execute(
                "SELECT status, last_sequence, amount_minor, currency"
                " FROM projections.payments WHERE payment_id = %s",
                (payment_id,),
            ).fetchone()
        if row is None:
            assert time.monotonic() < deadline, log_path.read_text()[-4000:]
            time.sleep(0.5)
    assert row == ("AWAITING_PAYMENT_METHOD", 1, 1050, "EUR"), row
    assert "create of " + payment_id in log_path.read_text(), "the worker called stripe-mock"
    # And the anchoring worker put the payment's command in the Merkle log and
    # signed a checkpoint covering it: the ingress proves it, and the proof and
    # the checkpoint verify with the anchoring public key alone.
    public_key = load_anchoring_public_key(settings.keys_dir / PUBLIC_FILE)
    event_id = created.json()["event_id"]
    deadline = time.monotonic() + PROJECTED_TIMEOUT_S
    while (
        answer := httpx.get(f"{url}/v1/proofs/events/{event_id}", timeout=10)
    ).status_code != 200:
        assert answer.status_code == 404, answer.text
        assert time.monotonic() < deadline, log_path.read_text()[-4000:]
        time.sleep(0.5)
    proofs = answer.json()
    checkpoint = verify_checkpoint(proofs["checkpoint"]["note"], public_key)
    (leaf,) = proofs["leaves"]
    record = LeafRecord(
        topic=leaf["leaf"]["topic"],
        partition=leaf["leaf"]["partition"],
        offset=leaf["leaf"]["offset"],
        event_id=leaf["leaf"]["event_id"],
        value_sha256=base64.b64decode(leaf["leaf"]["value_sha256"]),
    )
    assert (record.topic, record.event_id) == ("payledger.commands", event_id)
    inclusion = leaf["inclusion"]
    assert inclusion["tree_size"] == checkpoint.size
    verify_inclusion(
        leaf["leaf_index"],
        checkpoint.size,
        leaf_hash(record.to_bytes()),
        [base64.b64decode(h) for h in inclusion["proof"]],
        checkpoint.root_hash,
    )
    # That checkpoint went to the local Kubo and was stamped on the local btcd:
    # its CIDs and a complete OpenTimestamps proof are served.
    deadline = time.monotonic() + PROJECTED_TIMEOUT_S
    while True:
        anchors = httpx.get(f"{url}/v1/checkpoints/{checkpoint.size}/anchors", timeout=10)
        assert anchors.status_code == 200, anchors.text
        found = anchors.json()
        if found["checkpoint_cid"] and found["timestamp"]["state"] == "complete":
            break
        assert time.monotonic() < deadline, (found, log_path.read_text()[-4000:])
        time.sleep(0.5)
    note = httpx.get(f"{url}/v1/checkpoints/{checkpoint.size}", timeout=10).content
    assert found["checkpoint_cid"] == str(file_dag(note).root), "the CID is the note's"
    ots = httpx.get(f"{url}/v1/checkpoints/{checkpoint.size}/timestamp.ots", timeout=10)
    assert ots.status_code == 200 and ots.headers["Timestamp-State"] == "complete"

    # An auditor with the public keys alone: the event proved end to end, then
    # the whole ledger replayed from offset 0 and compared with the projections.
    audit_env = {
        **os.environ,
        "PAYLEDGER_STATE_DIR": os.fspath(settings.state_dir),
        **{f"PAYLEDGER_{name}": str(port) for name, port in PORTS.items()},
        "NO_COLOR": "1",
    }

    def audit(*arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ledger.cli", "audit", *arguments],
            cwd=ROOT,
            env=audit_env,
            capture_output=True,
            text=True,
            timeout=AUDIT_TIMEOUT_S,
            check=False,
        )

    proved = audit("proof", event_id, "--json", "--api", url, "--bitcoin", "--ipfs")
    assert proved.returncode == 0, proved.stdout[-3000:] + proved.stderr[-3000:]
    proof = json.loads(proved.stdout)
    assert proof["ok"] is True
    assert [step["status"] for step in proof["steps"]] == ["verified"] * 7
    verified = audit("verify", "--json", "-", "--bitcoin")
    assert verified.returncode == 0, verified.stdout[-3000:] + verified.stderr[-3000:]
    report = json.loads(verified.stdout)
    assert report["ok"] is True and report["errors"] == []
    # (No balance to compare yet: a payment only created moves no money.)
    for check in ("signature", "sequence", "leaf", "checkpoint", "cid", "timestamp"):
        assert report["checks"][check]["checked"] > 0, (check, report["checks"])
    assert report["facts"]["projection_rows_compared"] > 0
    # Records, not offsets (the stream worker's transactions leave markers between them).
    facts = report["facts"]
    assert facts["ledger_records"] == facts["tree_size"] + facts["records_after_latest_checkpoint"]

    process.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends
    assert process.wait(timeout=STOP_TIMEOUT_S) == 0
    log = log_path.read_text()
    assert "interrupted; stopping" in log
    for port in PORTS.values():
        assert not _listening(port), f"port {port} still listening after Ctrl-C"

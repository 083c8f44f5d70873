"""The real stack: Kafka (KRaft) from Maven Central jars, Debian's Postgres and SoftHSM2.

Runs in its own state dir on free ports, so it neither disturbs nor is
disturbed by a stack started with `payledger infra up`; it shares the jar
cache of the working tree so the jars are fetched once.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from ledger.config import Settings
from ledger.infra.part import State
from ledger.infra.ports import free_port, port_is_free, tcp_answers
from ledger.infra.procs import pid_alive
from ledger.infra.stack import Stack, Supervisor

pytestmark = pytest.mark.integration

_REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def settings() -> Iterator[Settings]:
    # Not pytest's tmp_path: its base dir is private to root, and Postgres runs
    # as the postgres system user, which must be able to reach the state dir.
    state_dir = Path(tempfile.mkdtemp(prefix="payledger-it-", dir="/tmp"))
    state_dir.chmod(0o755)
    ports = set()
    while len(ports) < 3:
        ports.add(free_port())
    kafka_port, controller_port, postgres_port = sorted(ports)
    value = Settings(
        state_dir=state_dir,
        cache_dir=_REPO / ".cache",
        kafka_port=kafka_port,
        kafka_controller_port=controller_port,
        postgres_port=postgres_port,
    )
    yield value
    Stack(value).down()  # in case the test failed half-way
    shutil.rmtree(state_dir, ignore_errors=True)


def _by_name(stack: Stack) -> dict[str, tuple[State, int | None]]:
    return {s.name: (s.state, s.pid) for s in stack.status()}


def _kafka_metadata(settings: Settings) -> tuple[list[int], list[str]]:
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers()})
    created = admin.create_topics([NewTopic("it.probe", num_partitions=2, replication_factor=1)])
    created["it.probe"].result(timeout=30)
    # A created topic reaches the broker's metadata cache a moment later.
    deadline = time.monotonic() + 30
    metadata = admin.list_topics(timeout=30)
    while "it.probe" not in metadata.topics and time.monotonic() < deadline:
        time.sleep(0.2)
        metadata = admin.list_topics(timeout=30)
    return sorted(metadata.brokers), sorted(metadata.topics)


def test_up_status_up_down(settings: Settings) -> None:
    stack = Stack(settings)
    before = _by_name(stack)
    assert before["kafka"][0] is State.STOPPED
    assert before["postgres"][0] is State.STOPPED
    assert before["softhsm"][0] is State.ABSENT

    started = time.monotonic()
    statuses = stack.up()
    print(f"\ncold up: {time.monotonic() - started:.1f} s")
    assert all(s.ok for s in statuses), statuses
    first = _by_name(stack)
    assert first["kafka"][0] is State.RUNNING
    assert first["postgres"][0] is State.RUNNING
    assert first["softhsm"][0] is State.READY

    started = time.monotonic()
    stack.up()  # idempotent: nothing restarts
    print(f"warm up: {time.monotonic() - started:.1f} s")
    assert _by_name(stack) == first

    # Kafka answers as a real broker: metadata, and a topic can be created.
    brokers, topics = _kafka_metadata(settings)
    assert brokers == [1]
    assert "it.probe" in topics

    # Postgres accepts the configured credentials over TCP, and only those.
    with psycopg.connect(settings.dsn(), connect_timeout=10) as conn:
        row = conn.execute("SELECT current_user, current_database(), current_setting('fsync')")
        assert row.fetchone() == ("payledger", "payledger", "on")
    wrong = settings.dsn().replace("payledger-dev", "wrong-password")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong, connect_timeout=10)

    # The token is visible to anyone using the stack's environment.
    slots = subprocess.run(
        ["softhsm2-util", "--show-slots"],
        env={**os.environ, **stack.env()},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"Label:            {settings.pkcs11_token_label}" in slots

    stack.down()
    after = _by_name(stack)
    assert after["kafka"] == (State.STOPPED, None)
    assert after["postgres"] == (State.STOPPED, None)
    assert after["softhsm"][0] is State.READY  # the token is data, not a process
    for _, pid in (first["kafka"], first["postgres"]):
        assert pid is not None
        assert not pid_alive(pid)
    assert port_is_free("127.0.0.1", settings.kafka_port)
    assert port_is_free("127.0.0.1", settings.postgres_port)
    stack.down()  # idempotent

    # The logs survive restarts: one start banner per start.
    log = (settings.state_dir / "logs" / "kafka.log").read_text()
    assert log.count("starting kafka") == 1
    assert "Kafka Server started" in log


def test_foreground_supervisor_runs_stack_and_extra_process(settings: Settings) -> None:
    out = io.StringIO()
    http_port = free_port()
    with Supervisor(settings, out=out) as sup:
        statuses = sup.start_infra()
        assert all(s.ok for s in statuses), statuses
        pids = {s.name: s.pid for s in statuses if s.pid}
        sup.add_process(
            "http",
            [sys.executable, "-m", "http.server", str(http_port), "--bind", "127.0.0.1"],
            ready=lambda: tcp_answers("127.0.0.1", http_port),
            ready_timeout_s=30,
        )
        # Another terminal sees the foreground parts as running.
        assert {s.name: s.state for s in Stack(settings).status()}["kafka"] is State.RUNNING
    text = out.getvalue()
    assert "kafka    | " in text
    assert "postgres | " in text
    assert text.index("stopping http") < text.index("stopping postgres")
    assert text.index("stopping postgres") < text.index("stopping kafka")
    for pid in pids.values():
        assert not pid_alive(pid)
    assert not tcp_answers("127.0.0.1", http_port)
    assert all(s.state is State.STOPPED for s in Stack(settings).status()[:2])

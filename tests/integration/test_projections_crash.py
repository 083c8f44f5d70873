"""The applier as a process (``python -m projections.worker``), killed and starved of Postgres.

A backlog of signed payment events waits on payment-events; the applier
projects it in small batches (one Postgres transaction each), so that the
interruptions below find some batches committed and one in flight:

- SIGKILL mid-run, then a restart from the positions committed with the rows;
- its Postgres stopped mid-run (a Postgres of this test's own, on its own port
  and data directory, so no one else's tests lose theirs) while more events
  arrive, then started again.

Either way, when the applier has read everything, every payment, event, entry,
balance and position is exactly what the events say -- nothing skipped, nothing
twice -- and SIGTERM stops it with exit code 0.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger.config import Settings
from ledger.infra.ports import free_port
from ledger.infra.postgres import PostgresPart
from ledger.keystore import KeyStore
from ledger.limits import READINESS_TIMEOUT_S
from streams.provision import provision_topics
from tests.integration.test_projections_applier import (
    check_projection,
    drop_schema,
    ends_of,
    events_topic,
    publish,
    stored_positions,
    timelines,
    wait_for_positions,
)
from tests.support.processes import ServiceProcess
from tests.unit.test_projections import SCENARIOS, Driver, stripe_succeeded

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
# Small batches: many transactions, so an interruption lands between and in them.
BATCH_RECORDS = 5
WAIT_TIMEOUT_S = 300.0
POLL_S = 0.02


def applier_process(settings: Settings, schema: str) -> ServiceProcess:
    """``python -m projections.worker`` run by the test, so that it can be killed outright."""
    env = {
        **os.environ,
        "PAYLEDGER_TOPIC_PREFIX": settings.topic_prefix,
        "PAYLEDGER_STATE_DIR": str(settings.state_dir),
        "PAYLEDGER_POSTGRES_PORT": str(settings.postgres_port),
    }
    argv = ["-m", "projections.worker", "--schema", schema, "--batch-records", str(BATCH_RECORDS)]
    return ServiceProcess("applier", argv, env, settings.state_dir)


def backlog(count: int) -> list[Driver]:
    """``count`` payments: each scenario in turn, between plain captures."""
    drivers = []
    for n in range(count):
        payment_id = f"pay_{uuid.uuid4().hex[:12]}"
        scenario = SCENARIOS[n % len(SCENARIOS)] if n % 2 else stripe_succeeded
        drivers.append(scenario(payment_id))
    return drivers


async def until_committed(
    dsn: str, schema: str, topic: str, applier: ServiceProcess, at_least: int
) -> int:
    """Until the applier committed ``at_least`` records; returns how many it has."""
    async with asyncio.timeout(WAIT_TIMEOUT_S):
        while True:
            applier.alive()
            committed = sum((await stored_positions(dsn, schema, topic)).values())
            if committed >= at_least:
                return committed
            await asyncio.sleep(POLL_S)


async def until_logged(applier: ServiceProcess, text: str) -> None:
    """Until the applier's log says ``text``."""
    async with asyncio.timeout(WAIT_TIMEOUT_S):
        while text not in applier.logs():
            applier.alive()
            await asyncio.sleep(POLL_S)


async def prepared(settings: Settings) -> None:
    report = await provision_topics(settings)
    assert report.ok, report.mismatches
    KeyStore(settings).active_key()


@pytest.fixture
async def settings(tmp_path: Path) -> Settings:
    settings = Settings(topic_prefix=f"p{uuid.uuid4().hex[:10]}.", state_dir=tmp_path)
    await prepared(settings)
    return settings


@pytest.fixture
def schema() -> str:
    return f"pt_{uuid.uuid4().hex[:12]}"


async def test_sigterm_and_sigkill_mid_run_then_restart(settings: Settings, schema: str) -> None:
    drivers = backlog(400)
    envelopes = [e for d in drivers for e in d.envelopes()]
    published = await publish(settings, envelopes)
    total = len(envelopes)
    dsn, topic = settings.dsn(), events_topic(settings)
    applier = applier_process(settings, schema)
    try:
        # SIGTERM: the batch in flight commits, and the process exits 0.
        applier.start()
        await until_committed(dsn, schema, topic, applier, total // 5)
        assert applier.terminate() == 0, applier.logs()
        stopped_at = sum((await stored_positions(dsn, schema, topic)).values())
        assert stopped_at < total, "SIGTERM must come with work left to do"

        # SIGKILL: no shutdown at all, a transaction left open.
        applier.start()
        committed = await until_committed(dsn, schema, topic, applier, stopped_at + total // 5)
        applier.kill()
        assert committed < total, "the kill must find work left to do"

        applier.start()
        await wait_for_positions(dsn, schema, topic, ends_of(published), alive=applier.alive)
        assert applier.terminate() == 0, applier.logs()
        await check_projection(dsn, schema, timelines(drivers))
    finally:
        applier.cleanup()
        await drop_schema(dsn, schema)


@pytest.fixture
def own_postgres(settings: Settings) -> Iterator[tuple[Settings, PostgresPart]]:
    """A Postgres of this test's own; ``settings`` for the applier pointing at it."""
    # Under the repository, as the stack's: the postgres system user can reach it.
    state_dir = REPO / ".state" / f"proj-pg-{uuid.uuid4().hex[:8]}"
    server = Settings(state_dir=state_dir, postgres_port=free_port())
    part = PostgresPart(server)
    part.prepare()
    start_postgres(part)
    try:
        yield settings.model_copy(update={"postgres_port": server.postgres_port}), part
    finally:
        pid = part.running_pid()
        if pid is not None:
            part.stop(pid)
        shutil.rmtree(state_dir, ignore_errors=True)


def start_postgres(part: PostgresPart) -> None:
    part.start_daemon()
    deadline = time.monotonic() + READINESS_TIMEOUT_S
    while not part.is_ready():
        assert time.monotonic() < deadline, "the test's own Postgres did not start"
        time.sleep(0.2)
    part.after_ready()


async def test_postgres_stopped_and_restarted_mid_run(own_postgres) -> None:
    settings, part = own_postgres
    first = backlog(150)
    published = await publish(settings, [e for d in first for e in d.envelopes()])
    dsn, topic, schema = settings.dsn(), events_topic(settings), "projections"
    applier = applier_process(settings, schema)
    try:
        applier.start()
        committed = await until_committed(dsn, schema, topic, applier, len(published) // 4)
        pid = part.running_pid()
        assert pid is not None
        await asyncio.to_thread(part.stop, pid)
        assert committed < len(published), "Postgres must stop with work left to do"

        # Events keep coming while the database is away, and the applier,
        # still running, fails to reconnect more than once (backing off).
        second = backlog(30)
        published += await publish(settings, [e for d in second for e in d.envelopes()])
        await until_logged(applier, "Postgres unavailable")
        await until_logged(applier, "; try 2")
        await asyncio.to_thread(start_postgres, part)

        await wait_for_positions(dsn, schema, topic, ends_of(published), alive=applier.alive)
        assert applier.terminate() == 0, applier.logs()
        await check_projection(dsn, schema, timelines(first + second))
    finally:
        applier.cleanup()

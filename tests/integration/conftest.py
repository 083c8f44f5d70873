"""The integration tier runs against the real stack: Kafka, Postgres, SoftHSM2.

The session starts it (``Stack.up``: installs what is missing, then starts
Kafka and Postgres as daemons) unless it is already running, and stops at the
end what it started.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from ledger.config import Settings
from ledger.infra.part import State
from ledger.infra.stack import Stack


@pytest.fixture(scope="session", autouse=True)
def stack() -> Iterator[Stack]:
    settings = Settings()
    stack = Stack(settings)
    was_running = all(status.state is State.RUNNING for status in stack.status()[:-1])
    stack.up()
    with _session_lock(settings) as alone:
        if alone:
            _purge_test_topics(settings)
        yield stack
    if not was_running:
        stack.down()
    elif _alone(settings):
        _purge_test_topics(settings)


# ---- topics left by tests --------------------------------------------------
#
# Every test makes its own topics under a random prefix. Left in place they
# add up across sessions, and a broker with tens of thousands of partitions
# runs out of file descriptors. Whatever is not under the stack's own prefix
# (or a running benchmark's, ``bench<run id>.``) is deleted at the start and end of a session, but only by a session that
# runs alone: each session holds a shared lock on a file of the state dir, and
# purges only when it can take that lock exclusively.


@contextmanager
def _session_lock(settings: Settings) -> Iterator[bool]:
    path = settings.state_dir / "test-session.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            alone = True
        except BlockingIOError:
            alone = False
        fcntl.flock(handle, fcntl.LOCK_SH)  # downgrade: others may start now
        try:
            yield alone
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _alone(settings: Settings) -> bool:
    with (settings.state_dir / "test-session.lock").open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
        return True


def _purge_test_topics(settings: Settings) -> None:
    async def purge() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers())
        await admin.start()
        try:
            topics = [
                name
                for name in await admin.list_topics()
                # Benchmarks run beside tests on the same broker and delete
                # their own topics at the end.
                if not name.startswith((settings.topic_prefix, "__", "bench"))
            ]
            for start in range(0, len(topics), 500):
                await admin.delete_topics(topics[start : start + 500])
        finally:
            await admin.close()

    asyncio.run(purge())


# ---- provider mocks ---------------------------------------------------------
#
# stripe-mock, Prism (PayPal) behind its gateway, and the Coinbase fake, on
# ports of their own so a `payledger infra up --with-mocks` elsewhere is never
# touched. Started once per session by the tests that ask for them; the first
# run on a machine installs stripe-mock and Prism into the cache.

PROVIDER_MOCK_PORTS = {
    "stripe_mock_port": 22111,
    "stripe_mock_https_port": 22112,
    "paypal_mock_port": 24010,
    "paypal_mock_orders_port": 24011,
    "paypal_mock_payments_port": 24012,
    "coinbase_mock_port": 24020,
}


@pytest.fixture(scope="session")
def provider_mocks() -> Iterator[Settings]:
    """The provider mocks, running; yields the settings that point at them."""
    from ledger.infra.mocks import MockStack

    # An explicit PAYLEDGER_* variable still wins over these ports.
    overrides = {
        name: port
        for name, port in PROVIDER_MOCK_PORTS.items()
        if f"PAYLEDGER_{name.upper()}" not in os.environ
    }
    settings = Settings(**overrides)  # type: ignore[arg-type]
    mocks = MockStack(settings)
    was_running = all(status.state is State.RUNNING for status in mocks.status())
    mocks.up()
    yield settings
    if not was_running:
        mocks.down()


@pytest.fixture(scope="session")
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers: the kernel completes
    the handshake from the listen backlog, and nobody ever reads."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


@pytest.fixture(scope="session")
def closed_port() -> int:
    """A port nothing listens on: connections are refused at once."""
    from ledger.infra.ports import free_port

    return free_port()

"""The integration tier runs against the real stack: Kafka, Postgres, SoftHSM2.

The session starts it (``Stack.up``: installs what is missing, then starts
Kafka and Postgres as daemons) unless it is already running, and stops at the
end what it started.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from ledger.config import Settings
from ledger.infra.part import State
from ledger.infra.stack import Stack


@pytest.fixture(scope="session", autouse=True)
def stack() -> Iterator[Stack]:
    stack = Stack(Settings())
    was_running = all(status.state is State.RUNNING for status in stack.status()[:-1])
    stack.up()
    yield stack
    if not was_running:
        stack.down()


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

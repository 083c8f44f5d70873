"""btcd in regtest for the tests that stamp on Bitcoin.

The session fixture builds btcd (``go install``, once per machine: the cache
keeps it) and starts it on a port of its own, so a ``payledger`` node
elsewhere is never touched; it stops btcd at the end only if it started it.
Test modules take it by assignment (``btcd_node = btcd.btcd_node``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ledger.config import Settings
from ledger.infra.part import State

BTCD_TEST_RPC_PORT = 28334


@pytest.fixture(scope="session")
def btcd_node() -> Iterator[Settings]:
    """btcd, running; yields the settings that point at it."""
    from ledger.infra.btcd import BtcdStack

    # An explicit PAYLEDGER_BTCD_RPC_PORT still wins over the test port.
    overrides = {}
    if "PAYLEDGER_BTCD_RPC_PORT" not in os.environ:
        overrides["btcd_rpc_port"] = BTCD_TEST_RPC_PORT
    settings = Settings(**overrides)  # type: ignore[arg-type]
    node = BtcdStack(settings)
    was_running = all(status.state is State.RUNNING for status in node.status())
    node.up()
    yield settings
    if not was_running:
        node.down()

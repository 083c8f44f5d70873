"""The integration tier runs against the real stack: Kafka, Postgres, SoftHSM2.

The session starts it (``Stack.up``: installs what is missing, then starts
Kafka and Postgres as daemons) unless it is already running, and stops at the
end what it started.
"""

from __future__ import annotations

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

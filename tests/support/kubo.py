"""Kubo, offline, for the tests that publish to IPFS.

The session fixture builds Kubo (once per machine: the cache keeps it),
initialises its repository under the test state dir with the ``test``
profile and starts ``ipfs daemon --offline`` on an RPC port of its own, so a
``payledger`` node elsewhere is never touched; it stops Kubo at the end only
if it started it. Test modules take it by assignment
(``kubo_node = kubo.kubo_node``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ledger.config import Settings

KUBO_TEST_API_PORT = 25001


@pytest.fixture(scope="session")
def kubo_node() -> Iterator[Settings]:
    """Kubo, running; yields the settings that point at it."""
    from ledger.infra.kubo import KuboPart, kubo_down, kubo_up

    # An explicit PAYLEDGER_KUBO_API_PORT still wins over the test port.
    overrides = {}
    if "PAYLEDGER_KUBO_API_PORT" not in os.environ:
        overrides["kubo_api_port"] = KUBO_TEST_API_PORT
    settings = Settings(**overrides)  # type: ignore[arg-type]
    was_running = KuboPart(settings).running_pid() is not None
    kubo_up(settings)
    yield settings
    if not was_running:
        kubo_down(settings)

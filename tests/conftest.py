"""Test-wide configuration.

Tests run against their own stack: their own state directory and ports, so a
``make run`` in another terminal is never touched. Every ``Settings()`` built
in a test sees these values; an explicit PAYLEDGER_* variable still wins.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

TEST_ENVIRONMENT = {
    "PAYLEDGER_STATE_DIR": os.fspath(ROOT / ".state" / "test"),
    "PAYLEDGER_KAFKA_PORT": "29092",
    "PAYLEDGER_KAFKA_CONTROLLER_PORT": "29093",
    "PAYLEDGER_POSTGRES_PORT": "25432",
    "PAYLEDGER_HTTP_PORT": "28080",
}


def pytest_configure(config: pytest.Config) -> None:
    for name, value in TEST_ENVIRONMENT.items():
        os.environ.setdefault(name, value)

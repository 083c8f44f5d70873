"""The state dir layout and its lock."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from ledger.infra.part import Layout


def test_paths(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    assert layout.log_path("kafka") == tmp_path / "logs" / "kafka.log"
    assert layout.pid_path("kafka") == tmp_path / "run" / "kafka.pid"


def test_lock_makes_a_second_holder_wait(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    events: list[str] = []
    acquired = threading.Event()

    def second() -> None:
        with layout.lock(lambda message: events.append("waiting")):
            events.append("second has it")
            acquired.set()

    with layout.lock():
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.3)
        assert not acquired.is_set()
        events.append("first releases")
    assert acquired.wait(5)
    thread.join(5)
    assert events == ["waiting", "first releases", "second has it"]

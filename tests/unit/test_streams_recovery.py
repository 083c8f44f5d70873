"""The end of table recovery: source partitions are sought before anything reads them.

The consumer here is a recorder standing in for Faust's threaded consumer:
it notes, for every call, whether the streams would accept a record at that
moment (Faust's flow control). A record read from a resumed partition before
the seek is dropped by the streams and skipped by the seek (the SIGKILL and
restart tests against Kafka show the loss end to end).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import faust
from faust.tables.manager import TableManager
from faust.types import TP

from streams.recovery import SeekFirstRecovery, SeekFirstTableManager

SOURCE = TP("commands", 0)


class RecordingConsumer:
    def __init__(self, app: faust.App, changelog: str) -> None:
        self.app = app
        self.changelog = TP(changelog, 0)
        self.calls: list[tuple[str, bool]] = []

    def _note(self, name: str) -> None:
        self.calls.append((name, self.app.flow_control.is_active()))

    def assignment(self) -> set[TP]:
        return {SOURCE, self.changelog}

    async def perform_seek(self) -> None:
        self._note("seek")

    def resume_partitions(self, tps: set[TP]) -> None:
        assert tps == {SOURCE}, "changelog partitions are not resumed here"
        self._note("resume")

    def resume_flow(self) -> None:
        self._note("flow")


class IdleFetcher:
    async def maybe_start(self) -> None:
        return None


async def _finish_recovery(manager: type[TableManager]) -> RecordingConsumer:
    app = faust.App(
        "recovery-test",
        broker="kafka://127.0.0.1:1",
        store="memory://",
        web_enabled=False,
        TableManager=manager,
    )
    table = app.Table("payments", default=None, partitions=1)
    consumer = RecordingConsumer(app, table.changelog_topic.get_topic_name())
    app._consumer = consumer  # type: ignore[assignment]
    app._fetcher = IdleFetcher()  # type: ignore[assignment]
    app.flow_control.suspend()  # as during a rebalance
    await app.tables.recovery.on_recovery_completed(app.consumer_generation_id)
    return consumer


async def test_the_source_partitions_are_sought_before_they_are_resumed() -> None:
    consumer = await _finish_recovery(SeekFirstTableManager)
    names = [name for name, _ in consumer.calls]
    assert names.index("seek") < names.index("resume"), consumer.calls
    (active_at_resume,) = [active for name, active in consumer.calls if name == "resume"]
    assert active_at_resume, "a record read once resumed must reach the streams"


def test_the_manager_builds_the_seek_first_recovery() -> None:
    app = faust.App("recovery-type", store="memory://", TableManager=SeekFirstTableManager)
    assert isinstance(app.tables.recovery, SeekFirstRecovery)


async def test_faust_own_recovery_still_resumes_first() -> None:
    """Why the subclass exists: if this fails, Faust fixed the order and it can go."""
    consumer = await _finish_recovery(TableManager)
    names = [name for name, _ in consumer.calls]
    assert names.index("resume") < names.index("seek"), consumer.calls


class EndOffsetsThread:
    """Stands in for Faust's consumer thread: end offsets by request, no fetch state."""

    def __init__(self, ends: dict[TP, int]) -> None:
        self.ends = ends
        self.asked: list[list[TP]] = []

    def _ensure_consumer(self) -> EndOffsetsThread:
        return self

    async def end_offsets(self, partitions: list[TP]) -> dict[TP, int]:
        self.asked.append(partitions)
        return {tp: self.ends[tp] for tp in partitions}

    async def call_thread(self, method: Any, *args: Any) -> Any:
        return await method(*args)

    def last_stable_offset(self, tp: TP) -> None:
        return None  # a partition just assigned: nothing fetched yet


async def test_changelog_highwaters_are_asked_of_the_broker() -> None:
    app = faust.App("recovery-hw", store="memory://", TableManager=SeekFirstTableManager)
    recovery = app.tables.recovery
    changelog = [TP("payments-changelog", 0), TP("payments-changelog", 1)]
    thread = EndOffsetsThread({changelog[0]: 68, changelog[1]: 0})

    class Consumer:
        _thread = thread

    highwaters: Counter[TP] = Counter()
    await recovery._build_highwaters(Consumer(), set(changelog), highwaters, "active")  # type: ignore[arg-type]
    # Faust's convention: the offset of the last record; -1 for an empty partition.
    assert dict(highwaters) == {changelog[0]: 67, changelog[1]: -1}
    assert thread.asked == [sorted(changelog)]

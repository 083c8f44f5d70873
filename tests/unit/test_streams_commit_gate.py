"""The commit gate: Faust's transaction commit runs only between records."""

from __future__ import annotations

import asyncio
from typing import Any

from streams.app import CommitGate


async def _turns(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_commit_waits_for_the_records_inside_and_holds_new_ones() -> None:
    gate = CommitGate()
    log: list[str] = []
    release = asyncio.Event()

    async def record(name: str, wait: asyncio.Event | None = None) -> None:
        async with gate.record():
            log.append(f"{name}+")
            if wait is not None:
                await wait.wait()
            log.append(f"{name}-")

    async def commit() -> None:
        async with gate.commit():
            log.append("commit")

    first = asyncio.create_task(record("a", release))
    await _turns()
    committing = asyncio.create_task(commit())
    await _turns()
    late = asyncio.create_task(record("b"))
    await _turns()
    assert log == ["a+"], "the commit waits for a; b waits for the commit"
    release.set()
    await asyncio.gather(first, committing, late)
    assert log == ["a+", "a-", "commit", "b+", "b-"]


async def test_records_run_side_by_side_when_no_commit_waits() -> None:
    gate = CommitGate()
    inside = 0
    most = 0

    async def record() -> None:
        nonlocal inside, most
        async with gate.record():
            inside += 1
            most = max(most, inside)
            await _turns(5)
            inside -= 1

    await asyncio.gather(*(record() for _ in range(3)))
    assert most == 3


async def test_guard_routes_the_managers_commit_through_the_gate_once() -> None:
    calls: list[tuple[Any, ...]] = []

    class Transactions:
        async def commit(self, offsets: dict[str, int], start_new_transaction: bool = True) -> bool:
            calls.append((offsets, start_new_transaction))
            return True

    gate = CommitGate()
    transactions = Transactions()
    gate.guard(transactions)
    wrapped = transactions.commit
    gate.guard(transactions)
    assert transactions.commit is wrapped, "guarded once"
    release = asyncio.Event()

    async def record() -> None:
        async with gate.record():
            await release.wait()

    inside = asyncio.create_task(record())
    await _turns()
    committing = asyncio.create_task(transactions.commit({"tp": 7}, start_new_transaction=False))
    await _turns()
    assert calls == [], "no commit while a record is half done"
    release.set()
    await asyncio.gather(inside, committing)
    assert calls == [({"tp": 7}, False)]

"""The anchoring worker with its IPFS and timestamp hooks, run by a test until all is anchored.

``anchor_all`` runs the worker in the test's event loop until the log holds
``total`` records, checkpointed and published, and every checkpoint is
announced with its CIDs and timestamp; ``peer_hooks`` builds the real hooks
(Kubo, and direct stamping on btcd with the node's own mining key).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import psycopg

from anchoring import pgstore
from anchoring.bitcoin import BitcoinRpc, DirectStamper
from anchoring.hooks import IpfsHook, PostgresAnchors, TimestampHook
from anchoring.ipfs import KuboClient
from anchoring.worker import Worker
from ledger.config import Settings
from tests.integration.test_anchoring_worker import (
    SHUTDOWN_TIMEOUT_S,
    _alive,
    published_checkpoint,
    until,
)


def anchored_count(settings: Settings) -> tuple[int, int]:
    """(checkpoints, checkpoints announced with their anchors)."""
    try:
        with pgstore.connect(settings.dsn(), settings.anchoring_schema) as connection:
            row = connection.execute(
                "SELECT (SELECT count(*) FROM checkpoints),"
                " (SELECT count(*) FROM checkpoint_announcements)"
            ).fetchone()
    except psycopg.errors.UndefinedTable:
        return (0, 0)
    assert row is not None
    return int(row[0]), int(row[1])


def peer_hooks(
    settings: Settings, btcd_node: Settings, rpc: BitcoinRpc, *, ipfs: Any = None
) -> list[Any]:
    """The IPFS hook (``ipfs`` instead of the genuine one when given) and the timestamp hook."""
    anchors = PostgresAnchors(settings.dsn(), settings.anchoring_schema)
    return [
        ipfs or IpfsHook(KuboClient.from_settings(settings), anchors),
        # The stamping wallet is btcd's mining address: the node's state dir holds its key.
        TimestampHook(
            PostgresAnchors(settings.dsn(), settings.anchoring_schema),
            direct=DirectStamper.from_settings(btcd_node, rpc),
        ),
    ]


async def anchor_all(settings: Settings, hooks: Sequence[Any], total: int) -> Worker:
    """Run the worker until ``total`` records are checkpointed and, with hooks, all announced.

    The hooks are closed on the way out; the worker is returned for its totals.
    """
    stop = asyncio.Event()
    worker = Worker(settings, hooks=list(hooks))
    task = asyncio.create_task(worker.run(stop))
    try:
        await until(
            lambda: (c := published_checkpoint(settings)) is not None and c.size == total,
            alive=lambda: _alive(task),
        )
        if hooks:
            await until(
                lambda: (counts := anchored_count(settings))[0] == counts[1],
                alive=lambda: _alive(task),
            )
    finally:
        stop.set()
        await asyncio.wait_for(task, SHUTDOWN_TIMEOUT_S)
        for hook in hooks:
            await hook.aclose()
    return worker

"""The anchoring worker with its IPFS and timestamp hooks, against real Kafka, Postgres,
Kubo (offline) and btcd (regtest).

A few hundred events, a checkpoint every 50: every checkpoint's note and leaf
bundle are on IPFS under the CIDs recorded in Postgres, the bundles recompute
each root, every .ots proof verifies against btcd's headers for SHA-256 of the
note, and the checkpoints topic carries one anchored record per checkpoint with
the same CIDs and proof. Both hooks fail once and are retried: nothing twice.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from anchoring import pgstore
from anchoring.bitcoin import BitcoinRpc, DirectStamp, DirectStamper
from anchoring.hooks import IpfsHook, PostgresAnchors, TimestampHook
from anchoring.ipfs import IpfsError, KuboClient, Publication
from anchoring.publication import anchored_event_id, checkpoint_event_id
from anchoring.timestamps import TimestampError, verify_timestamp
from ledger.config import Settings
from ledger.infra.btcd import STAMPING_KEY_FILE
from ledger.keystore import KeyStore
from ledger.tlog.bundle import LeafBundle, root_of_bundles
from ledger.tlog.cid import Cid
from ledger.topics import TopicRole
from streams.provision import provision_topics
from tests.integration.test_anchoring_worker import (
    SHUTDOWN_TIMEOUT_S,
    mixed_events,
    published_checkpoint,
    read_checkpoints_topic,
    send_raw,
    until,
)
from tests.support import btcd, kubo
from tests.support.anchoring import anchor_all, anchored_count
from tests.support.streams import REPO

pytestmark = pytest.mark.integration

kubo_node = kubo.kubo_node
btcd_node = btcd.btcd_node

EVERY = 50


@pytest.fixture
async def settings(
    tmp_path: Path, kubo_node: Settings, btcd_node: Settings
) -> AsyncIterator[Settings]:
    settings = Settings(
        topic_prefix=f"h{uuid.uuid4().hex[:10]}.",
        state_dir=tmp_path,
        anchoring_schema=f"ah_{uuid.uuid4().hex[:12]}",
        anchoring_checkpoint_every_events=EVERY,
        anchoring_checkpoint_interval_s=1.0,
        anchoring_batch_records=100,
        anchoring_ipfs_enabled=True,
        kubo_api_port=kubo_node.kubo_api_port,
        ots_direct_enabled=True,
        btcd_rpc_port=btcd_node.btcd_rpc_port,
    )
    report = await provision_topics(settings)
    assert report.ok, report.mismatches
    KeyStore(settings).active_key()
    yield settings
    async with await psycopg.AsyncConnection.connect(settings.dsn(), autocommit=True) as c:
        await c.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(settings.anchoring_schema)
            )
        )


@pytest.fixture
def rpc(btcd_node: Settings) -> Iterator[BitcoinRpc]:
    with BitcoinRpc.from_settings(btcd_node) as client:
        yield client


class FailingOnceKubo:
    """A real Kubo client whose first publication fails, as when the node is down."""

    def __init__(self, client: KuboClient) -> None:
        self.client = client
        self.failures = 0
        self.publications = 0

    async def publish(self, content: bytes) -> Publication:
        if not self.failures:
            self.failures += 1
            raise IpfsError("Kubo RPC block/put: connection refused")
        self.publications += 1
        return await self.client.publish(content)

    async def aclose(self) -> None:
        await self.client.aclose()


class FailingOnceStamper:
    """The real direct stamper, whose first stamp fails, as when btcd is down."""

    def __init__(self, stamper: DirectStamper) -> None:
        self.stamper = stamper
        self.failures = 0
        self.stamps = 0

    def stamp(self, digest: bytes) -> DirectStamp:
        if not self.failures:
            self.failures += 1
            raise TimestampError("sendrawtransaction: the node did not answer")
        self.stamps += 1
        return self.stamper.stamp(digest)


async def test_every_checkpoint_is_on_ipfs_timestamped_and_announced(
    settings: Settings, btcd_node: Settings, rpc: BitcoinRpc
) -> None:
    event_ids = await mixed_events(settings, 240)
    await send_raw(settings, TopicRole.REJECTED, b"not an envelope")
    total = len(event_ids) + 1
    kubo_client = FailingOnceKubo(KuboClient.from_settings(settings))
    # The stamping wallet is btcd's mining address: the node's state dir holds its key.
    stamper = FailingOnceStamper(DirectStamper.from_settings(btcd_node, rpc))
    hooks = [
        IpfsHook(kubo_client, PostgresAnchors(settings.dsn(), settings.anchoring_schema)),
        TimestampHook(PostgresAnchors(settings.dsn(), settings.anchoring_schema), direct=stamper),
    ]
    worker = await anchor_all(settings, hooks, total)

    with pgstore.opened(settings.dsn(), settings.anchoring_schema) as store:
        checkpoints = store.checkpoints()
        publications = [store.publication(c.size) for c in checkpoints]
        stamps = [store.timestamp(c.size) for c in checkpoints]
        revisions = store.connection.execute(
            "SELECT count(*), max(revision) FROM checkpoint_timestamps"
        ).fetchone()
    assert len(checkpoints) >= total // EVERY
    assert checkpoints[-1].size == total
    # Each hook failed once, then finished every checkpoint exactly once.
    assert (kubo_client.failures, stamper.failures) == (1, 1)
    assert kubo_client.publications == 2 * len(checkpoints)
    assert stamper.stamps == len(checkpoints)
    assert revisions == (len(checkpoints), 1)
    assert worker.totals.announced == len(checkpoints)

    bundles: list[LeafBundle] = []
    async with KuboClient.from_settings(settings) as reader:
        for stored, publication, stamp in zip(checkpoints, publications, stamps, strict=True):
            assert publication is not None and stamp is not None
            note = await reader.read(Cid.parse(publication.checkpoint_cid))
            assert note == stored.note.encode()
            bundles.append(await reader.read_bundle(Cid.parse(publication.bundle_cid)))
            assert bundles[-1].first_index == stored.previous_size
            assert root_of_bundles(bundles) == stored.root_hash
            digest = hashlib.sha256(stored.note.encode()).digest()
            assert stamp.complete and stamp.digest == digest
            assert verify_timestamp(stamp.ots, digest, rpc).height > 0

    on_topic = await read_checkpoints_topic(settings, 2 * len(checkpoints))
    assert len(on_topic) == 2 * len(checkpoints)
    # fastavro reads the uuid logical type as a UUID.
    by_event = {str(record["event_id"]): record for record in on_topic}
    assert len(by_event) == len(on_topic)  # no record twice
    for stored, publication, stamp in zip(checkpoints, publications, stamps, strict=True):
        assert publication is not None and stamp is not None
        first = by_event[checkpoint_event_id(stored.origin, stored.size)]
        assert (first["checkpoint_cid"], first["bundle_cid"], first["timestamp_proof"]) == (
            None,
            None,
            None,
        )
        anchored = by_event[anchored_event_id(stored.origin, stored.size)]
        assert anchored["tree_size"] == stored.size
        assert anchored["note"] == stored.note
        assert anchored["checkpoint_cid"] == publication.checkpoint_cid
        assert anchored["bundle_cid"] == publication.bundle_cid
        assert anchored["timestamp_proof"] == stamp.ots
    # A consumer reading in order sees each anchored record after its checkpoint's first.
    order = [str(record["event_id"]) for record in on_topic]
    for stored in checkpoints:
        assert order.index(checkpoint_event_id(stored.origin, stored.size)) < order.index(
            anchored_event_id(stored.origin, stored.size)
        )


async def test_the_anchor_tables_are_append_only(settings: Settings) -> None:
    with pgstore.opened(settings.dsn(), settings.anchoring_schema) as store:
        connection = store.connection
        connection.execute(
            "INSERT INTO checkpoints (tree_size, root_hash, origin, note, previous_size,"
            " consistency_proof) VALUES (1, %s, 'o', 'n', 0, '{}')",
            (b"\x00" * 32,),
        )
        store.add_publication(1, "bafkreia", "bafkreib")
        assert store.add_publication(1, "bafkreic", "bafkreid").checkpoint_cid == "bafkreia"
        first = store.add_timestamp(1, b"\x01" * 32, b"pending", False)
        assert store.add_timestamp(1, b"\x01" * 32, b"pending", False) == first
        better = store.add_timestamp(1, b"\x01" * 32, b"complete", True)
        assert (better.revision, store.timestamp(1)) == (2, better)
        assert store.pending_timestamps() == []
        for statement in (
            "UPDATE checkpoint_publications SET bundle_cid = 'x'",
            "DELETE FROM checkpoint_timestamps",
        ):
            with pytest.raises(psycopg.errors.IntegrityError, match="append-only"):
                connection.execute(statement)


def start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "anchoring.worker"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def test_the_worker_command_builds_its_hooks_from_the_settings(
    settings: Settings, btcd_node: Settings
) -> None:
    """``python -m anchoring.worker`` with the IPFS and direct timestamp switches on."""
    # The stamping key of btcd's mining address, in this test's state dir.
    keys = settings.keys_dir
    keys.mkdir(parents=True, exist_ok=True, mode=0o700)
    shutil.copy2(btcd_node.keys_dir / STAMPING_KEY_FILE, keys / STAMPING_KEY_FILE)
    event_ids = await mixed_events(settings, 45)
    env = {
        **os.environ,
        "PAYLEDGER_TOPIC_PREFIX": settings.topic_prefix,
        "PAYLEDGER_STATE_DIR": str(settings.state_dir),
        "PAYLEDGER_POSTGRES_PORT": str(settings.postgres_port),
        "PAYLEDGER_ANCHORING_SCHEMA": settings.anchoring_schema,
        "PAYLEDGER_ANCHORING_CHECKPOINT_EVERY_EVENTS": "20",
        "PAYLEDGER_ANCHORING_CHECKPOINT_INTERVAL_S": "1",
        "PAYLEDGER_ANCHORING_IPFS_ENABLED": "true",
        "PAYLEDGER_KUBO_API_PORT": str(settings.kubo_api_port),
        "PAYLEDGER_OTS_DIRECT_ENABLED": "true",
        "PAYLEDGER_BTCD_RPC_PORT": str(settings.btcd_rpc_port),
    }
    log_path = settings.state_dir / "anchoring.log"
    process = start_worker(env, log_path)

    def alive() -> None:
        if process.poll() is not None:
            raise AssertionError(f"the worker exited:\n{log_path.read_text()[-6000:]}")

    try:
        await until(
            lambda: (c := published_checkpoint(settings)) is not None and c.size == len(event_ids),
            alive=alive,
        )
        await until(lambda: (n := anchored_count(settings))[0] == n[1], alive=alive)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=SHUTDOWN_TIMEOUT_S) == 0, log_path.read_text()[-6000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    checkpoints, announced = anchored_count(settings)
    assert checkpoints >= 3 and announced == checkpoints
    assert f"{checkpoints} anchored records" in log_path.read_text()
    with pgstore.opened(settings.dsn(), settings.anchoring_schema) as store:
        for stored in store.checkpoints():
            stamp = store.timestamp(stored.size)
            assert stamp is not None and stamp.complete
            assert store.publication(stored.size) is not None

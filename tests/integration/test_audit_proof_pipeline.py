"""``payledger audit proof`` against a real pipeline: Kafka, Postgres, the anchoring worker
with its IPFS and timestamp hooks on Kubo (offline) and btcd (regtest), and the ingress.

Signed events go to three ledger topics of a fresh prefix; the worker
checkpoints them every few events, publishes every checkpoint and its leaf
bundle to IPFS and stamps each note on btcd. The ingress serves the log. The
command, given only the settings (Kafka, Kubo, btcd, the key files) and the
ingress URL, proves an early event end to end: every step verifies, the
anchored checkpoint is an earlier one than the latest (so the consistency
proof is not empty), and the figures are the pipeline's. An event id the log
does not know cannot be proved: exit 2 and a clear reason.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from anchoring import pgstore
from anchoring.bitcoin import BitcoinRpc
from ingress.app import create_app
from ledger import limits
from ledger.audit import EXIT_ERROR, EXIT_OK
from ledger.audit.proof import PROOF_FORMAT, StepName, proof
from ledger.config import Settings
from ledger.keystore import KeyStore
from ledger.tlog.leaf import LeafRecord
from streams.provision import provision_topics
from tests.integration.test_anchoring_worker import (
    mixed_events,
)
from tests.support import btcd, kubo
from tests.support.anchoring import anchor_all, peer_hooks
from tests.support.servers import serve_in_thread

pytestmark = pytest.mark.integration

kubo_node = kubo.kubo_node
btcd_node = btcd.btcd_node

EVENTS = 60
EVERY = 20


@dataclass
class Pipeline:
    settings: Settings
    url: str
    positions: dict[str, str]  # event id by "topic/partition/offset"
    checkpoints: list[pgstore.StoredCheckpoint]
    leaves: list[LeafRecord]  # every leaf, in log order
    publications: dict[int, pgstore.IpfsPublication | None]

    def env(self) -> dict[str, str]:
        """What the command reads its settings from: the pipeline's, nothing else."""
        settings = self.settings
        return {
            "PAYLEDGER_TOPIC_PREFIX": settings.topic_prefix,
            "PAYLEDGER_STATE_DIR": str(settings.state_dir),
            "PAYLEDGER_KUBO_API_PORT": str(settings.kubo_api_port),
            "PAYLEDGER_BTCD_RPC_PORT": str(settings.btcd_rpc_port),
            "PAYLEDGER_OTS_DIRECT_ENABLED": "true",
            "PAYLEDGER_ANCHORING_IPFS_ENABLED": "true",
        }


async def _run_pipeline(settings: Settings, btcd_settings: Settings) -> dict[str, str]:
    positions = await mixed_events(settings, EVENTS)
    with BitcoinRpc.from_settings(btcd_settings) as rpc:
        await anchor_all(settings, peer_hooks(settings, btcd_settings, rpc), EVENTS)
    return positions


async def _drop(settings: Settings) -> None:
    async with await psycopg.AsyncConnection.connect(settings.dsn(), autocommit=True) as c:
        await c.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(settings.anchoring_schema)
            )
        )


@pytest.fixture(scope="module")
def pipeline(
    tmp_path_factory: pytest.TempPathFactory, kubo_node: Settings, btcd_node: Settings
) -> Iterator[Pipeline]:
    settings = Settings(
        topic_prefix=f"ap{uuid.uuid4().hex[:10]}.",
        state_dir=Path(tmp_path_factory.mktemp("audit-proof")),
        anchoring_schema=f"ap_{uuid.uuid4().hex[:12]}",
        anchoring_checkpoint_every_events=EVERY,
        anchoring_checkpoint_interval_s=1.0,
        anchoring_batch_records=EVERY,
        anchoring_ipfs_enabled=True,
        kubo_api_port=kubo_node.kubo_api_port,
        ots_direct_enabled=True,
        btcd_rpc_port=btcd_node.btcd_rpc_port,
        rate_limit_per_s=limits.RATE_LIMIT_PER_S_CEILING,
        rate_limit_burst=limits.RATE_LIMIT_BURST_CEILING,
    )
    assert asyncio.run(provision_topics(settings)).ok
    KeyStore(settings).active_key()
    try:
        positions = asyncio.run(_run_pipeline(settings, btcd_node))
        with pgstore.opened(settings.dsn(), settings.anchoring_schema) as store:
            checkpoints = store.checkpoints()
            leaves = store.leaf_records(0, checkpoints[-1].size)
            publications = {c.size: store.publication(c.size) for c in checkpoints}
        with serve_in_thread(create_app(settings), lifespan="on") as url:
            yield Pipeline(settings, url, positions, checkpoints, leaves, publications)
    finally:
        asyncio.run(_drop(settings))


def run(pipeline: Pipeline, *args: str) -> tuple[int, str]:
    outcome = CliRunner().invoke(proof, [*args, "--api", pipeline.url], env=pipeline.env())
    if outcome.exception is not None and not isinstance(outcome.exception, SystemExit):
        raise outcome.exception
    return outcome.exit_code, outcome.stdout


def test_an_event_is_proved_end_to_end(pipeline: Pipeline) -> None:
    # The first leaf's event: in the first checkpoint, well before the latest.
    leaf = pipeline.leaves[0]
    event_id = leaf.event_id
    assert pipeline.positions[f"{leaf.topic}/{leaf.partition}/{leaf.offset}"] == event_id
    code, output = run(pipeline, event_id, "--json")
    document = json.loads(output)
    assert code == EXIT_OK, output
    assert (document["format"], document["event_id"], document["ok"]) == (
        PROOF_FORMAT,
        event_id,
        True,
    )
    steps = {step["name"]: step for step in document["steps"]}
    assert list(steps) == [name.value for name in StepName]
    assert all((s["ok"], s["status"]) == (True, "verified") for s in steps.values()), output
    event = steps["event"]
    assert (event["topic"], event["partition"], event["offset"], event["leaf_index"]) == (
        leaf.topic,
        leaf.partition,
        leaf.offset,
        0,
    )
    latest, first = pipeline.checkpoints[-1], pipeline.checkpoints[0]
    assert steps["checkpoint"]["tree_size"] == latest.size == EVENTS
    anchored = steps["anchored"]
    # Every checkpoint is anchored: the earliest covering the leaf is the first one.
    assert (anchored["anchored_size"], anchored["latest_size"]) == (first.size, latest.size)
    assert first.size < latest.size and anchored["proof_hashes"] > 0
    publication = pipeline.publications[first.size]
    assert publication is not None
    assert (steps["cid"]["checkpoint_cid"], steps["cid"]["bundle_cid"]) == (
        publication.checkpoint_cid,
        publication.bundle_cid,
    )
    assert steps["timestamp"]["bitcoin_checked"] is True
    assert steps["timestamp"]["block_height"] > 0

    # The same proof for people: one line per step, each OK.
    code, text = run(pipeline, event_id)
    assert code == EXIT_OK
    lines = text.splitlines()
    assert [line.split()[:2] for line in lines[1:-1]] == [["OK", name.value] for name in StepName]
    assert lines[-1] == "verified: every step holds"


def test_an_event_checked_without_ipfs_or_a_node_skips_those_parts(pipeline: Pipeline) -> None:
    event_id = pipeline.leaves[-1].event_id  # in the latest checkpoint
    code, output = run(pipeline, event_id, "--json", "--no-ipfs", "--no-bitcoin")
    document = json.loads(output)
    assert code == EXIT_OK, output
    steps = {step["name"]: step for step in document["steps"]}
    assert (steps["cid"]["status"], steps["cid"]["ok"]) == ("skipped", None)
    assert steps["timestamp"]["status"] == "verified"
    assert steps["timestamp"]["bitcoin_checked"] is False


def test_an_unknown_event_cannot_be_proved(pipeline: Pipeline) -> None:
    unknown = str(uuid.uuid4())
    code, output = run(pipeline, unknown, "--json")
    document = json.loads(output)
    assert code == EXIT_ERROR
    assert document["ok"] is False
    assert document["problem"].startswith("unknown event: no leaf of the Merkle log carries")
    assert [s["status"] for s in document["steps"]] == ["unchecked"] * len(StepName)
    code, text = run(pipeline, unknown)
    assert code == EXIT_ERROR
    assert f"proof of event {unknown}\n  cannot prove it: unknown event" in text

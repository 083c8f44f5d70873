"""``payledger audit verify`` against a real ledger: Kafka, the Merkle log on IPFS (Kubo), btcd.

Each test builds a small ledger of its own (whole payments on the
payment-events topic, commands, provider events and audit facts), lets the
anchoring worker log, checkpoint, publish and timestamp all of it, and then
audits it: a clean ledger verifies, and each tamper is found where it was made.
The projections' side (a row altered in Postgres) is in test_audit_projections.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from psycopg import sql

from anchoring import pgstore
from anchoring.auditor import AuditOptions, LogAudit, audit_log
from anchoring.bitcoin import BitcoinRpc
from anchoring.hooks import IpfsHook, PostgresAnchors, checkpoint_bundle
from anchoring.ipfs import KuboClient
from anchoring.publication import CheckpointEncoder
from ledger.audit import Check, Finding
from ledger.codec import EnvelopeCodec
from ledger.config import Settings
from ledger.envelope import Envelope, PaymentEvent
from ledger.keystore import ActiveSigner, KeyStore, load_trusted_root
from ledger.registry import FileSchemaRegistry
from ledger.tlog.bundle import BUNDLE_TAG, LeafBundle
from ledger.tlog.checkpoint import Checkpoint, sign_checkpoint
from ledger.tlog.cid import Cid
from ledger.tlog.keys import load_anchoring_public_key, load_or_create_anchoring_key
from ledger.topics import TopicRole, topic_name
from streams.provision import provision_topics
from streams.publisher import Published, kafka_publisher
from tests.integration.test_anchoring_worker import (
    mixed_events,
    published_checkpoint,
)
from tests.support import btcd, kubo
from tests.support.anchoring import anchor_all, peer_hooks
from tests.support.payments import lifecycle
from tests.support.streams import REPO

pytestmark = pytest.mark.integration

kubo_node = kubo.kubo_node
btcd_node = btcd.btcd_node

EVERY = 20  # a checkpoint every 20 leaves
PAYMENTS = 10  # 40 payment events
OTHERS = 21  # commands, provider events and audit facts


@dataclasses.dataclass
class Ledger:
    settings: Settings
    payments: list[Published]  # the payment events, as published
    records: int  # every ledger record


Bundles = Callable[[bytes], bytes]  # what the IPFS hook publishes instead of a bundle


class AlteringIpfsHook(IpfsHook):
    """The IPFS hook as an operator could rewrite it: each bundle published as ``alter`` makes it.

    The genuine hook recomputes every CID from the log and refuses any other;
    this one records the CIDs of what it published, so the anchored records
    announce the altered bundles.
    """

    def __init__(self, client: KuboClient, anchors: PostgresAnchors, alter: Bundles) -> None:
        super().__init__(client, anchors)
        self.client = client
        self.anchors = anchors
        self.alter = alter

    async def checkpoint_stored(self, checkpoint: pgstore.StoredCheckpoint, log_view: Any) -> None:
        if await self.anchors.publication(checkpoint.size) is not None:
            return
        leaves = await log_view.leaf_records(checkpoint.previous_size, checkpoint.size)
        bundle = self.alter(checkpoint_bundle(checkpoint, leaves).to_bytes())
        note = await self.client.publish(checkpoint.note.encode("utf-8"))
        published = await self.client.publish(bundle)
        await self.anchors.add_publication(checkpoint.size, str(note.cid), str(published.cid))


def ledger_settings(tmp_path: Path, kubo_node: Settings, btcd_node: Settings) -> Settings:
    return Settings(
        topic_prefix=f"au{uuid.uuid4().hex[:10]}.",
        state_dir=tmp_path,
        anchoring_schema=f"au_{uuid.uuid4().hex[:12]}",
        anchoring_checkpoint_every_events=EVERY,
        anchoring_checkpoint_interval_s=0.5,
        anchoring_batch_records=50,
        anchoring_ipfs_enabled=True,
        kubo_api_port=kubo_node.kubo_api_port,
        ots_direct_enabled=True,
        btcd_rpc_port=btcd_node.btcd_rpc_port,
    )


async def publish(settings: Settings, role: TopicRole, envelopes: Sequence[Envelope]) -> list:
    async with kafka_publisher(
        settings,
        EnvelopeCodec(FileSchemaRegistry(settings.registry_dir)),
        ActiveSigner(KeyStore(settings)),
        source="payledger/test",
    ) as publisher:
        return await publisher.publish_many(topic_name(settings, role), envelopes)


def interleaved(count: int) -> list[Envelope]:
    """``count`` whole payments, their events interleaved as concurrent payments are."""
    payments = [lifecycle(f"pay_{uuid.uuid4().hex[:10]}") for _ in range(count)]
    return [events[step] for step in range(4) for events in payments]


async def anchor(
    settings: Settings,
    btcd_node: Settings,
    total: int,
    alter: Bundles | None,
    *,
    peers: bool = True,
) -> None:
    """Run the anchoring worker until every record is checkpointed, published and stamped."""
    if not peers:  # checkpoints only: nothing published on IPFS, nothing stamped
        await anchor_all(settings, [], total)
        return
    with BitcoinRpc.from_settings(btcd_node) as rpc:
        lying = None
        if alter is not None:
            anchors = PostgresAnchors(settings.dsn(), settings.anchoring_schema)
            lying = AlteringIpfsHook(KuboClient.from_settings(settings), anchors, alter)
        await anchor_all(settings, peer_hooks(settings, btcd_node, rpc, ipfs=lying), total)


Build = Callable[..., Awaitable[Ledger]]


@pytest.fixture
async def build(tmp_path: Path, kubo_node: Settings, btcd_node: Settings) -> AsyncIterator[Build]:
    made: list[Settings] = []

    async def make(alter: Bundles | None = None, *, peers: bool = True) -> Ledger:
        settings = ledger_settings(tmp_path / f"l{len(made)}", kubo_node, btcd_node)
        made.append(settings)
        report = await provision_topics(settings)
        assert report.ok, report.mismatches
        KeyStore(settings).active_key()
        payments = await publish(settings, TopicRole.PAYMENT_EVENTS, interleaved(PAYMENTS))
        others = await mixed_events(settings, OTHERS)
        total = len(payments) + len(others)
        await anchor(settings, btcd_node, total, alter, peers=peers)
        return Ledger(settings, payments, total)

    yield make
    async with await psycopg.AsyncConnection.connect(made[0].dsn(), autocommit=True) as c:
        for settings in made:
            await c.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    sql.Identifier(settings.anchoring_schema)
                )
            )


def options(settings: Settings, *, bitcoin: bool = True) -> AuditOptions:
    return AuditOptions(
        roots=(load_trusted_root(settings.keys_dir / "root.json"),),
        anchoring_key=load_anchoring_public_key(settings.keys_dir / "anchoring.json"),
        workers=2,
        ipfs=True,
        bitcoin=bitcoin,
        group_id=f"payledger-audit-test-{uuid.uuid4().hex[:8]}",
    )


async def audit(settings: Settings, **kwargs: bool) -> LogAudit:
    return await audit_log(settings, options(settings, **kwargs))


def where(findings: Sequence[Finding]) -> set[tuple[str, int, int, str | None, Check, str]]:
    return {(f.topic, f.partition, f.offset, f.event_id, f.check, f.reason) for f in findings}


async def read_value(settings: Settings, topic: str, partition: int, offset: int) -> bytes:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers(),
        isolation_level="read_committed",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        async with asyncio.timeout(60):
            while True:
                batch = await consumer.getmany(tp, timeout_ms=500)
                for record in batch.get(tp, []):
                    if record.offset == offset:
                        assert record.value is not None
                        return record.value
    finally:
        await consumer.stop()


async def send(settings: Settings, topic: str, partition: int, key: bytes, value: bytes) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers(), acks="all")
    await producer.start()
    try:
        metadata = await producer.send_and_wait(topic, value, key=key, partition=partition)
    finally:
        await producer.stop()
    return int(metadata.offset)


def payments_topic(settings: Settings) -> str:
    return topic_name(settings, TopicRole.PAYMENT_EVENTS)


# A clean ledger -------------------------------------------------------------------


async def test_a_clean_ledger_verifies_end_to_end(build: Build) -> None:
    ledger = await build()
    result = await audit(ledger.settings)
    report = result.report
    assert report.findings == [], report.findings[:5]
    assert report.errors == []
    # Every ledger record and the keys topic's endorsements (one per publisher start).
    assert report.checked[Check.ENDORSEMENT] >= 1
    assert report.records == ledger.records + report.checked[Check.ENDORSEMENT]
    facts = report.facts
    assert facts["tree_size"] == facts["ledger_records"] == ledger.records
    assert facts["leaves_checked"] == ledger.records
    assert facts["records_after_latest_checkpoint"] == 0
    assert facts["checkpoints"] >= ledger.records // EVERY
    assert "timestamps_not_checked_against_a_node" not in facts
    for check in (Check.SIGNATURE, Check.LEAF, Check.CHECKPOINT, Check.CONSISTENCY, Check.CID):
        assert report.checked[check] > 0, check
    assert report.checked[Check.TIMESTAMP] == facts["checkpoints"]
    # Every payment captured 1,050 EUR into the clearing account and paid 45 of fees out.
    clearing = result.balances.get("provider:stripe:clearing", "EUR")
    assert (clearing.debit_minor, clearing.credit_minor) == (PAYMENTS * 1050, PAYMENTS * 45)
    assert result.ends[payments_topic(ledger.settings)]


async def test_the_command_exits_0_then_1_with_the_finding_in_its_json(build: Build) -> None:
    ledger = await build()
    settings = ledger.settings
    env = {
        **os.environ,
        "PAYLEDGER_TOPIC_PREFIX": settings.topic_prefix,
        "PAYLEDGER_STATE_DIR": str(settings.state_dir),
        "PAYLEDGER_KUBO_API_PORT": str(settings.kubo_api_port),
        "PAYLEDGER_BTCD_RPC_PORT": str(settings.btcd_rpc_port),
        "PAYLEDGER_OTS_DIRECT_ENABLED": "true",
    }
    command = [sys.executable, "-m", "ledger.cli", "audit", "verify", "--no-projections"]

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, "--json", "-", *extra],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    clean = run()
    assert clean.returncode == 0, clean.stderr[-2000:]
    document = json.loads(clean.stdout)
    assert document["format"] == "payledger-audit-report/1"
    assert document["ok"] is True
    assert "verified" in clean.stderr

    # A payment event signed by a key no root endorsed, injected into the topic.
    stranger = KeyStore(settings.model_copy(update={"state_dir": settings.state_dir / "x"}))
    codec = EnvelopeCodec(FileSchemaRegistry(settings.registry_dir))
    forged_envelope = lifecycle("pay_forged")[0]
    _, wire = codec.encode(forged_envelope, stranger.active_key().signer, payments_topic(settings))
    offset = await send(settings, payments_topic(settings), 0, b"pay_forged", wire)

    tampered = run()
    assert tampered.returncode == 1, tampered.stderr[-2000:]
    found = json.loads(tampered.stdout)
    assert found["ok"] is False
    assert [f for f in found["findings"] if f["check"] == "signature"] == [
        {
            "topic": payments_topic(settings),
            "partition": 0,
            "offset": offset,
            "event_id": forged_envelope.event_id,
            "check": "signature",
            "reason": "unknown-key",
            "detail": found["findings"][0]["detail"],
            "where": None,
        }
    ]
    assert "FINDING signature/unknown-key" in tampered.stderr

    # Without the anchoring key's file the check cannot run: exit 2, not 1.
    missing = run("--anchoring-key", str(settings.state_dir / "nowhere.json"))
    assert missing.returncode == 2
    assert "anchoring" in missing.stderr


async def test_without_published_bundles_completeness_is_unchecked_not_verified(
    build: Build,
) -> None:
    ledger = await build(peers=False)
    report = (await audit(ledger.settings)).report
    assert report.findings == []
    assert report.exit_code == 2
    assert any("not matched with the Merkle log" in error for error in report.errors)
    assert report.facts["checkpoints_pending_anchors"] == report.facts["checkpoints"] > 0


# Tampered Kafka topics ---------------------------------------------------------------


async def test_a_valid_record_republished_out_of_sequence_is_found(build: Build) -> None:
    ledger = await build()
    settings = ledger.settings
    first = ledger.payments[0]  # a payment's sequence 1, long followed by 2, 3 and 4
    value = await read_value(settings, first.topic, first.partition, first.offset)
    key = first.envelope.aggregate_id.encode()
    offset = await send(settings, first.topic, first.partition, key, value)

    report = (await audit(settings)).report
    assert where(report.findings) == {
        (
            first.topic,
            first.partition,
            offset,
            first.envelope.event_id,
            Check.SEQUENCE,
            "republished",
        )
    }


async def test_an_unbalanced_posting_is_found(build: Build) -> None:
    ledger = await build()
    settings = ledger.settings
    refund = lifecycle("pay_unbalanced")[3]
    assert isinstance(refund.payload, PaymentEvent)
    # The model refuses unbalanced postings: unbalance it after validation, as a
    # faulty producer that skipped the check would.
    object.__setattr__(refund.payload, "postings", refund.payload.postings[:1])
    (published,) = await publish(settings, TopicRole.PAYMENT_EVENTS, [refund])

    report = (await audit(settings)).report
    unbalanced = [f for f in report.findings if f.check is Check.POSTINGS_BALANCE]
    assert where(unbalanced) == {
        (
            published.topic,
            published.partition,
            published.offset,
            None,
            Check.POSTINGS_BALANCE,
            "unbalanced",
        )
    }


async def test_payment_events_deleted_from_a_partition_are_found(build: Build) -> None:
    ledger = await build()
    settings = ledger.settings
    # Delete the first records of the partition holding the first payment's events.
    first = ledger.payments[0]
    cut = first.offset + 1
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers())
    await admin.start()
    try:
        await admin.delete_records(
            {TopicPartition(first.topic, first.partition): RecordsToDelete(cut)}, timeout_ms=30_000
        )
    finally:
        await admin.close()

    report = (await audit(settings)).report
    found = where(report.findings)
    assert (first.topic, first.partition, cut, None, Check.LEAF, "log-start-moved") in found
    # The log still commits to the deleted records: leaves without records.
    gone = [(f.partition, f.offset) for f in report.findings if f.reason == "no-record"]
    assert (first.partition, first.offset) in gone
    assert all(p == first.partition and o < cut for p, o in gone)
    # And its payment now starts at sequence 2.
    second = next(
        p
        for p in ledger.payments
        if p.envelope.aggregate_id == first.envelope.aggregate_id and p.envelope.sequence == 2
    )
    assert (
        second.topic,
        second.partition,
        second.offset,
        second.envelope.event_id,
        Check.SEQUENCE,
        "no-first-event",
    ) in found


async def test_a_payment_event_missing_from_a_rewritten_topic_is_found(build: Build) -> None:
    ledger = await build()
    settings = ledger.settings
    # The ledger copied record by record into new topics, but for one payment's
    # sequence 2: the rewrite an operator could try on a test topic.
    copy = settings.model_copy(update={"topic_prefix": f"rw{uuid.uuid4().hex[:10]}."})
    report = await provision_topics(copy)
    assert report.ok, report.mismatches
    dropped = ledger.payments[PAYMENTS]  # the first payment's sequence 2
    assert dropped.envelope.sequence == 2
    for role in (TopicRole.KEYS, TopicRole.PAYMENT_EVENTS):
        for record in await records_of(settings, topic_name(settings, role)):
            if (record.partition, record.offset) != (dropped.partition, dropped.offset):
                await send(copy, topic_name(copy, role), record.partition, record.key, record.value)

    result = await audit_log(copy, dataclasses.replace(options(settings), anchoring_key=None))
    third = next(
        p
        for p in ledger.payments
        if p.envelope.aggregate_id == dropped.envelope.aggregate_id and p.envelope.sequence == 3
    )
    gaps = [f for f in result.report.findings if f.check is Check.SEQUENCE]
    assert [(f.topic, f.partition, f.event_id, f.reason) for f in gaps] == [
        (payments_topic(copy), third.partition, third.envelope.event_id, "gap")
    ]
    assert "sequences 2 to 2 missing" in gaps[0].detail


# Tampered checkpoints and anchors ---------------------------------------------------------


async def test_a_forged_consistency_proof_is_found(build: Build) -> None:
    ledger = await build()
    settings = ledger.settings
    latest = published_checkpoint(settings)
    assert latest is not None
    # The operator (who holds the anchoring key) signs a checkpoint that would
    # extend the log, with a consistency proof that proves nothing.
    key = load_or_create_anchoring_key(settings, settings.anchoring_origin)
    size = latest.size + 10
    root = hashlib.sha256(b"a tree that never was").digest()
    note = sign_checkpoint(Checkpoint(settings.anchoring_origin, size, root), key)
    forged = pgstore.StoredCheckpoint(
        size=size,
        root_hash=root,
        origin=settings.anchoring_origin,
        note=note,
        previous_size=latest.size,
        consistency_proof=(hashlib.sha256(b"forged").digest(),) * 3,
        created_at=latest.created_at,
        published_at=None,
    )
    topic = topic_name(settings, TopicRole.CHECKPOINTS)
    encoder = CheckpointEncoder(FileSchemaRegistry(settings.registry_dir), topic)
    offset = await send(settings, topic, 0, str(size).encode(), encoder.encode(forged))

    report = (await audit(settings)).report
    consistency = [f for f in report.findings if f.check is Check.CONSISTENCY]
    assert [(f.topic, f.partition, f.offset) for f in consistency] == [(topic, 0, offset)]
    assert all(f.check is not Check.LEAF for f in report.findings)


def flip_a_leaf(bundle_bytes: bytes) -> bytes:
    """The bundle with its first leaf's record digest changed (still a valid bundle)."""
    bundle = LeafBundle.from_bytes(bundle_bytes)
    first = bundle.leaves[0]
    altered = dataclasses.replace(first, value_sha256=hashlib.sha256(b"altered").digest())
    return dataclasses.replace(bundle, leaves=(altered, *bundle.leaves[1:])).to_bytes()


async def test_an_altered_bundle_published_on_ipfs_does_not_give_the_root(build: Build) -> None:
    # The IPFS hook publishes, and the anchored records announce, altered bundles.
    ledger = await build(alter=flip_a_leaf)
    report = (await audit(ledger.settings)).report
    checks = {f.check for f in report.findings}
    assert Check.CHECKPOINT_ROOT in checks
    differs = [f for f in report.findings if f.check is Check.LEAF]
    assert differs and {f.reason for f in differs} == {"record-differs"}
    # Located at the ledger record whose leaf was altered: the first of each bundle.
    with pgstore.opened(ledger.settings.dsn(), ledger.settings.anchoring_schema) as store:
        firsts = {
            store.leaf_records(c.previous_size, c.previous_size + 1)[0] for c in store.checkpoints()
        }
    assert {(f.topic, f.partition, f.offset) for f in differs} == {
        (leaf.topic, leaf.partition, leaf.offset) for leaf in firsts
    }


async def test_bytes_served_under_a_bundle_cid_that_are_not_its_bytes_are_found(
    build: Build, kubo_node: Settings
) -> None:
    ledger = await build()
    # An IPFS node in front of the real one that alters every bundle it serves.
    upstream = f"http://127.0.0.1:{kubo_node.kubo_api_port}"

    async def cat(request: web.Request) -> web.Response:
        async with KuboClient(upstream, timeout_s=30) as client:
            content = await client.fetch(Cid.parse(request.query["arg"]))
        if content.startswith(BUNDLE_TAG):
            content = flip_a_leaf(content)
        return web.Response(body=content)

    app = web.Application()
    app.router.add_post("/api/v0/cat", cat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        lying = ledger.settings.model_copy(update={"ipfs_api_url": f"http://127.0.0.1:{port}"})
        report = (await audit(lying)).report
    finally:
        await runner.cleanup()
    cid_findings = [f for f in report.findings if f.check is Check.CID]
    checkpoints = report.facts["checkpoints"]
    assert len(cid_findings) == checkpoints
    assert all(f.topic == topic_name(lying, TopicRole.CHECKPOINTS) for f in cid_findings)
    assert all(f.where and "ipfs" in f.where for f in cid_findings)


# Reading topics back ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Raw:
    partition: int
    offset: int
    key: bytes | None
    value: bytes


async def records_of(settings: Settings, topic: str) -> list[Raw]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers(),
        isolation_level="read_committed",
        enable_auto_commit=False,
        group_id=None,
    )
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers())
    await admin.start()
    try:
        (described,) = [t for t in await admin.describe_topics() if t["topic"] == topic]
    finally:
        await admin.close()
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        found: list[Raw] = []
        async with asyncio.timeout(60):
            while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    found += [Raw(r.partition, r.offset, r.key, r.value or b"") for r in records]
        return found
    finally:
        await consumer.stop()

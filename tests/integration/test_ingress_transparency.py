"""The transparency API through real HTTP, over a Merkle log the real anchoring worker built.

Signed events go to three ledger topics of a fresh prefix, one audit fact
twice (a republished event: two leaves, one event id); the anchoring worker
runs in process until its last checkpoint covers them all. Then a few leaves
are appended with no checkpoint after them (one of them a second leaf of an
event already covered). The ingress serves that schema; everything it
answers is verified as an outsider would, with ``ledger.tlog`` and the
anchoring public key only: checkpoint notes, consistency between every pair
of checkpoint sizes and between other sizes, and every event's inclusion
proofs.

The first checkpoints are then anchored through ``anchoring.pgstore`` as the
hooks would anchor them, with CIDs computed from the note and leaf bundle and
real ``.ots`` proofs stamped on btcd (regtest): one proof pending then upgraded
(two revisions), one complete at once, one checkpoint on IPFS only, one with
a pending proof only; the rest have nothing. What is served is what is
stored, and a served complete proof verifies against btcd's headers for
SHA-256 of the served note. Bad input is a 4xx problem; a missing log is a
503 problem; a log migrated before the anchor tables anchors nothing.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from opentimestamps.core.notary import PendingAttestation
from opentimestamps.core.op import OpAppend, OpSHA256
from opentimestamps.core.timestamp import Timestamp
from psycopg import sql

from anchoring import pgstore
from anchoring.bitcoin import BitcoinRpc, DirectStamper
from anchoring.hooks import checkpoint_bundle
from anchoring.timestamps import (
    InvalidTimestamp,
    is_complete,
    merge_proofs,
    serialize_proof,
    verify_timestamp,
)
from anchoring.worker import Worker
from ingress.app import create_app
from ledger import limits
from ledger.config import Settings
from ledger.keystore import KeyStore
from ledger.tlog.checkpoint import Checkpoint, verify_checkpoint, verify_log_growth
from ledger.tlog.cid import file_dag
from ledger.tlog.errors import InvalidProof
from ledger.tlog.keys import AnchoringPublicKey, load_or_create_anchoring_key
from ledger.tlog.leaf import LeafRecord
from ledger.tlog.merkle import EMPTY_ROOT, leaf_hash, verify_consistency, verify_inclusion
from ledger.tlog.tree import MerkleTree
from ledger.topics import TopicRole
from streams.provision import provision_topics
from tests.integration.test_anchoring_worker import (
    log_size,
    mixed_events,
    publish,
    published_checkpoint,
    until,
)
from tests.support import btcd, events
from tests.support.servers import serve_in_thread

pytestmark = pytest.mark.integration

btcd_node = btcd.btcd_node

PROBLEM_JSON = "application/problem+json"
OTS_MEDIA_TYPE = "application/vnd.opentimestamps.ots"
PENDING_CALENDAR = "https://calendar.invalid"
EVENTS = 240
UNCOVERED = 5
SHUTDOWN_TIMEOUT_S = 60.0


@dataclass
class Log:
    url: str
    settings: Settings
    key: AnchoringPublicKey
    checkpoints: list[pgstore.StoredCheckpoint]
    records: list[LeafRecord]  # every leaf, covered or not, in log order
    covered: int  # the latest checkpoint's size
    republished: str  # the event id published twice
    straddling: str  # an event id with a covered leaf and an uncovered one
    uncovered: str  # an event id whose only leaf no checkpoint covers
    # What anchors each checkpoint, as stored: CIDs and the current proof.
    publications: dict[int, pgstore.IpfsPublication | None]
    stamps: dict[int, pgstore.StoredTimestamp | None]
    rpc: BitcoinRpc

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)

    def tree(self) -> MerkleTree:
        tree = MerkleTree()
        tree.append_many([record.to_bytes() for record in self.records])
        return tree


async def _build_log(settings: Settings) -> tuple[int, str]:
    """The worker over EVENTS events and one republished fact, until a checkpoint covers all."""
    published = await mixed_events(settings, EVENTS)
    fact = events.audit_fact()
    await publish(settings, TopicRole.AUDIT_FACTS, [fact])
    await publish(settings, TopicRole.AUDIT_FACTS, [fact])
    total = len(published) + 2
    stop = asyncio.Event()
    worker = Worker(settings)
    task = asyncio.create_task(worker.run(stop))

    def alive() -> None:
        if task.done():
            raise AssertionError(f"the worker stopped: {task.exception()!r}")

    try:
        await until(lambda: log_size(settings) >= total, alive=alive)
        await until(
            lambda: (c := published_checkpoint(settings)) is not None and c.size == total,
            alive=alive,
        )
    finally:
        stop.set()
        await asyncio.wait_for(task, SHUTDOWN_TIMEOUT_S)
    return total, fact.event_id


def _append_uncovered(settings: Settings, records: list[LeafRecord]) -> None:
    with pgstore.opened(settings.dsn(), settings.anchoring_schema) as store:
        store.append_batch(MerkleTree(store), records, [])


async def _drop(settings: Settings) -> None:
    async with await psycopg.AsyncConnection.connect(settings.dsn(), autocommit=True) as c:
        await c.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(settings.anchoring_schema)
            )
        )


def pending_proof(digest: bytes) -> bytes:
    """A calendar's answer: the digest, a nonce, and a promise of a Bitcoin commitment."""
    timestamp = Timestamp(digest)
    commitment = timestamp.ops.add(OpAppend(uuid.uuid4().bytes)).ops.add(OpSHA256())
    commitment.attestations.add(PendingAttestation(PENDING_CALENDAR))
    return serialize_proof(timestamp)


def _anchor(store: pgstore.PostgresTreeStore, stamper: DirectStamper) -> None:
    """Anchor the first four checkpoints as the hooks would, each to a different state."""
    upgraded, direct, on_ipfs_only, pending_only = store.checkpoints()[:4]

    def publish(checkpoint: pgstore.StoredCheckpoint) -> None:
        leaves = store.leaf_records(checkpoint.previous_size, checkpoint.size)
        bundle = checkpoint_bundle(checkpoint, leaves).to_bytes()
        store.add_publication(
            checkpoint.size,
            str(file_dag(checkpoint.note.encode()).root),
            str(file_dag(bundle).root),
        )

    def digest(checkpoint: pgstore.StoredCheckpoint) -> bytes:
        return hashlib.sha256(checkpoint.note.encode()).digest()

    for checkpoint in (upgraded, direct, on_ipfs_only):
        publish(checkpoint)
    pending = pending_proof(digest(upgraded))
    store.add_timestamp(upgraded.size, digest(upgraded), pending, False)
    complete = merge_proofs(pending, stamper.stamp(digest(upgraded)).ots, digest(upgraded))
    store.add_timestamp(upgraded.size, digest(upgraded), complete, True)
    store.add_timestamp(direct.size, digest(direct), stamper.stamp(digest(direct)).ots, True)
    store.add_timestamp(
        pending_only.size, digest(pending_only), pending_proof(digest(pending_only)), False
    )


@pytest.fixture(scope="module")
def rpc(btcd_node: Settings) -> Iterator[BitcoinRpc]:
    with BitcoinRpc.from_settings(btcd_node) as client:
        yield client


@pytest.fixture(scope="module")
def anchored(
    tmp_path_factory: pytest.TempPathFactory, btcd_node: Settings, rpc: BitcoinRpc
) -> Iterator[Log]:
    settings = Settings(
        topic_prefix=f"tr{uuid.uuid4().hex[:10]}.",
        state_dir=Path(tmp_path_factory.mktemp("transparency")),
        anchoring_schema=f"tr_{uuid.uuid4().hex[:12]}",
        anchoring_checkpoint_every_events=45,
        anchoring_checkpoint_interval_s=1.0,
        anchoring_batch_records=20,
        # Hundreds of reads in a row: the default bucket is not under test here.
        rate_limit_per_s=limits.RATE_LIMIT_PER_S_CEILING,
        rate_limit_burst=limits.RATE_LIMIT_BURST_CEILING,
    )
    assert asyncio.run(provision_topics(settings)).ok
    KeyStore(settings).active_key()
    try:
        total, republished = asyncio.run(_build_log(settings))
        with pgstore.opened(settings.dsn(), settings.anchoring_schema) as store:
            checkpoints = store.checkpoints()
            covered_records = store.leaf_records(0, total)
        assert checkpoints[-1].size == total
        straddling = covered_records[total // 2].event_id
        uncovered = f"uncovered-{uuid.uuid4().hex}"
        extra = [
            LeafRecord.of(f"{settings.topic_prefix}synthetic", 0, n, event_id, b"value %d" % n)
            for n, event_id in enumerate([straddling, uncovered, *["other"] * (UNCOVERED - 2)])
        ]
        _append_uncovered(settings, extra)
        with pgstore.opened(settings.dsn(), settings.anchoring_schema) as store:
            # The stamping wallet is btcd's mining address: its state dir holds the key.
            _anchor(store, DirectStamper.from_settings(btcd_node, rpc))
            publications = {c.size: store.publication(c.size) for c in checkpoints}
            stamps = {c.size: store.timestamp(c.size) for c in checkpoints}
        key = load_or_create_anchoring_key(settings, settings.anchoring_origin).public
        with serve_in_thread(create_app(settings), lifespan="on") as url:
            yield Log(
                url=url,
                settings=settings,
                key=key,
                checkpoints=checkpoints,
                records=covered_records + extra,
                covered=total,
                republished=republished,
                straddling=straddling,
                uncovered=uncovered,
                publications=publications,
                stamps=stamps,
                rpc=rpc,
            )
    finally:
        asyncio.run(_drop(settings))


def _problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body = response.json()
    assert (body["status"], body["type"]) == (status, f"/problems/{slug}")
    return body


def _hashes(values: list[str]) -> list[bytes]:
    return [base64.b64decode(value, validate=True) for value in values]


# Checkpoints ---------------------------------------------------------------------------


def test_every_checkpoint_is_served_as_its_signed_note_and_as_json(anchored: Log) -> None:
    assert len(anchored.checkpoints) >= 5
    previous_size, previous_root = 0, EMPTY_ROOT
    with anchored.client() as client:
        for stored in anchored.checkpoints:
            text = client.get(f"/v1/checkpoints/{stored.size}")
            assert text.status_code == 200, text.text
            assert text.headers["content-type"] == "text/plain; charset=utf-8"
            assert "immutable" in text.headers["cache-control"]
            assert text.content == stored.note.encode()
            verified = verify_checkpoint(text.content, anchored.key)
            assert verified.size == stored.size
            assert verified.origin == anchored.settings.anchoring_origin

            as_json = client.get(
                f"/v1/checkpoints/{stored.size}", headers={"Accept": "application/json"}
            )
            assert as_json.status_code == 200, as_json.text
            assert as_json.headers["content-type"] == "application/json"
            body = as_json.json()
            assert body["note"] == stored.note
            assert (body["origin"], body["size"]) == (verified.origin, verified.size)
            assert base64.b64decode(body["root_hash"]) == verified.root_hash
            assert body["previous_size"] == previous_size
            # The growth from the previous checkpoint, checked from what was served.
            verify_log_growth(
                previous_size, previous_root, verified, _hashes(body["consistency_proof"])
            )
            previous_size, previous_root = verified.size, verified.root_hash

        latest = client.get("/v1/checkpoints/latest")
        assert latest.status_code == 200
        assert latest.headers["cache-control"] == "no-cache"
        assert latest.content == anchored.checkpoints[-1].note.encode()
        latest_json = client.get("/v1/checkpoints/latest", headers={"Accept": "application/json"})
        assert latest_json.json()["size"] == anchored.covered
    # Every root the log signed is the root of the leaves it holds.
    tree = anchored.tree()
    for stored in anchored.checkpoints:
        assert verify_checkpoint(stored.note, anchored.key).root_hash == tree.root(stored.size)


def test_consistency_between_every_pair_of_checkpoints_verifies(anchored: Log) -> None:
    signed = {
        c.size: verify_checkpoint(c.note, anchored.key).root_hash for c in anchored.checkpoints
    }
    with anchored.client() as client:
        for first, second in itertools.combinations_with_replacement(sorted(signed), 2):
            response = client.get(
                "/v1/checkpoints/consistency", params={"from": first, "to": second}
            )
            assert response.status_code == 200, response.text
            body = response.json()
            assert (body["from"], body["to"], body["latest_size"]) == (
                first,
                second,
                anchored.covered,
            )
            proof = _hashes(body["proof"])
            # Against the signed roots, not the ones served beside the proof.
            verify_consistency(first, second, signed[first], signed[second], proof)
            assert _hashes([body["from_root"], body["to_root"]]) == [signed[first], signed[second]]
            if first < second and proof:
                forged = [proof[0][:-1] + bytes([proof[0][-1] ^ 1]), *proof[1:]]
                with pytest.raises(InvalidProof):
                    verify_consistency(first, second, signed[first], signed[second], forged)


def test_consistency_between_any_sizes_matches_a_rebuilt_tree(anchored: Log) -> None:
    tree = anchored.tree()
    latest = anchored.covered
    latest_root = verify_checkpoint(anchored.checkpoints[-1].note, anchored.key).root_hash
    pairs = [
        (1, 1),
        (1, 2),
        (1, latest),
        (3, 7),
        (8, 16),
        (13, 64),
        (31, latest),
        (latest - 1, latest),
    ]
    with anchored.client() as client:
        for first, second in pairs:
            body = client.get(
                "/v1/checkpoints/consistency", params={"from": first, "to": second}
            ).json()
            proof = _hashes(body["proof"])
            assert proof == tree.consistency_proof(first, second)
            from_root, to_root = _hashes([body["from_root"], body["to_root"]])
            assert (from_root, to_root) == (tree.root(first), tree.root(second))
            verify_consistency(first, second, from_root, to_root, proof)
            if second == latest:
                assert to_root == latest_root


# Inclusion proofs by event id ------------------------------------------------------------


def _check_event(body: dict[str, Any], log: Log, event_id: str) -> list[dict[str, Any]]:
    """Verify every covered leaf of an answer as an outsider would; returns the leaves."""
    checkpoint = verify_checkpoint(body["checkpoint"]["note"], log.key)
    assert isinstance(checkpoint, Checkpoint)
    assert checkpoint.size == log.covered
    assert body["event_id"] == event_id
    for shown in body["leaves"]:
        leaf = shown["leaf"]
        assert leaf["event_id"] == event_id
        record = LeafRecord(
            leaf["topic"],
            leaf["partition"],
            leaf["offset"],
            leaf["event_id"],
            base64.b64decode(leaf["value_sha256"]),
        )
        assert record == log.records[shown["leaf_index"]]
        hashed = leaf_hash(record.to_bytes())
        assert base64.b64decode(shown["leaf_hash"]) == hashed
        inclusion = shown["inclusion"]
        if shown["leaf_index"] >= log.covered:
            assert inclusion is None
            continue
        assert inclusion["tree_size"] == checkpoint.size
        assert base64.b64decode(inclusion["root_hash"]) == checkpoint.root_hash
        proof = _hashes(inclusion["proof"])
        verify_inclusion(shown["leaf_index"], checkpoint.size, hashed, proof, checkpoint.root_hash)
        # Another leaf's hash does not verify with this proof.
        with pytest.raises(InvalidProof):
            verify_inclusion(
                shown["leaf_index"],
                checkpoint.size,
                leaf_hash(record.to_bytes() + b"x"),
                proof,
                checkpoint.root_hash,
            )
    return body["leaves"]


def test_every_covered_event_has_verifying_inclusion_proofs(anchored: Log) -> None:
    covered = anchored.records[: anchored.covered]
    expected: dict[str, list[int]] = {}
    for index, record in enumerate(covered):
        expected.setdefault(record.event_id, []).append(index)
    assert expected[anchored.republished] == sorted(expected[anchored.republished])
    assert len(expected[anchored.republished]) == 2
    with anchored.client() as client:
        for event_id, indexes in expected.items():
            response = client.get(f"/v1/proofs/events/{event_id}")
            assert response.status_code == 200, response.text
            leaves = _check_event(response.json(), anchored, event_id)
            # The straddling event also has the uncovered leaf appended after the log.
            later = [anchored.covered] if event_id == anchored.straddling else []
            assert [leaf["leaf_index"] for leaf in leaves] == [*indexes, *later]
            assert response.json()["truncated"] is False


def test_a_leaf_newer_than_the_latest_checkpoint(anchored: Log) -> None:
    with anchored.client() as client:
        straddling = client.get(f"/v1/proofs/events/{anchored.straddling}").json()
        first, second = _check_event(straddling, anchored, anchored.straddling)
        assert first["inclusion"] is not None
        assert (second["leaf_index"], second["inclusion"]) == (anchored.covered, None)

        response = client.get(f"/v1/proofs/events/{anchored.uncovered}")
        _problem(response, 404, "event-not-checkpointed")
        assert int(response.headers["retry-after"]) >= 1


def test_bad_requests_are_4xx_problems(anchored: Log) -> None:
    latest = anchored.covered
    with anchored.client() as client:
        _problem(client.get(f"/v1/proofs/events/{uuid.uuid4()}"), 404, "event-not-found")
        _problem(client.get("/v1/proofs/events/" + "e" * 129), 404, "event-not-found")
        _problem(client.get("/v1/proofs/events/a%00b"), 404, "event-not-found")
        _problem(client.get("/v1/checkpoints/0"), 404, "checkpoint-not-found")
        _problem(client.get(f"/v1/checkpoints/{latest - 1}"), 404, "checkpoint-not-found")
        _problem(client.get(f"/v1/checkpoints/{latest + 1}"), 404, "checkpoint-not-found")
        for garbage in ("abc", "-1", "01", "1.5", "1e3", "9" * 30, "%20"):
            _problem(client.get(f"/v1/checkpoints/{garbage}"), 400, "invalid-tree-size")
        consistency = "/v1/checkpoints/consistency"
        for params in ({}, {"from": 1}, {"to": 2}, {"from": "x", "to": 2}, {"from": 1, "to": "-2"}):
            _problem(client.get(consistency, params=params), 400, "invalid-tree-size")
        for first, second in ((5, 4), (0, 4), (0, 0)):
            _problem(
                client.get(consistency, params={"from": first, "to": second}),
                400,
                "invalid-size-range",
            )
        beyond = _problem(
            client.get(consistency, params={"from": 1, "to": latest + 1}),
            404,
            "size-not-checkpointed",
        )
        assert beyond["latest_size"] == latest
        # The JSON preference changes the answer's form, never an error's.
        _problem(
            client.get("/v1/checkpoints/0", headers={"Accept": "application/json"}),
            404,
            "checkpoint-not-found",
        )


def test_a_log_that_is_not_there_is_a_503_problem(anchored: Log) -> None:
    settings = anchored.settings.model_copy(update={"anchoring_schema": "tr_never_migrated"})
    with (
        serve_in_thread(create_app(settings), lifespan="on") as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        for path in (
            "/v1/checkpoints/latest",
            "/v1/checkpoints/3",
            "/v1/checkpoints/consistency?from=1&to=2",
            f"/v1/proofs/events/{anchored.republished}",
            "/v1/checkpoints/3/anchors",
            "/v1/checkpoints/3/timestamp.ots",
        ):
            response = client.get(path)
            _problem(response, 503, "log-unavailable")
            assert response.headers["retry-after"]


def test_the_public_routes_share_the_rate_limit(anchored: Log) -> None:
    settings = anchored.settings.model_copy(
        update={"rate_limit_per_s": 0.01, "rate_limit_burst": 2}
    )
    with (
        serve_in_thread(create_app(settings), lifespan="on") as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        assert client.get("/v1/checkpoints/latest").status_code == 200
        assert client.get(f"/v1/proofs/events/{anchored.republished}").status_code == 200
        limited = client.get(f"/v1/checkpoints/{anchored.covered}/anchors")
        _problem(limited, 429, "rate-limited")
        assert int(limited.headers["retry-after"]) >= 1


# Anchors ----------------------------------------------------------------------------------


def test_every_checkpoint_shows_what_anchors_it(anchored: Log) -> None:
    states = []
    with anchored.client() as client:
        for stored in anchored.checkpoints:
            response = client.get(f"/v1/checkpoints/{stored.size}/anchors")
            assert response.status_code == 200, response.text
            assert response.headers["cache-control"] == "no-cache"
            body = response.json()
            publication = anchored.publications[stored.size]
            stamp = anchored.stamps[stored.size]
            assert body["size"] == stored.size
            assert (body["checkpoint_cid"], body["bundle_cid"]) == (
                (None, None)
                if publication is None
                else (publication.checkpoint_cid, publication.bundle_cid)
            )
            assert (body["published_at"] is None) is (publication is None)
            base = f"/v1/checkpoints/{stored.size}"
            timestamp = body["timestamp"]
            if stamp is None:
                assert timestamp == {
                    "state": "none",
                    "digest": None,
                    "revision": None,
                    "stored_at": None,
                }
                assert body["links"]["timestamp"] is None
            else:
                assert timestamp["state"] == ("complete" if stamp.complete else "pending")
                assert timestamp["revision"] == stamp.revision
                assert (
                    base64.b64decode(timestamp["digest"])
                    == hashlib.sha256(client.get(base).content).digest()
                )
                assert body["links"]["timestamp"] == f"{base}/timestamp.ots"
            assert body["links"]["checkpoint"] == base
            assert body["links"]["anchors"] == f"{base}/anchors"
            states.append((body["checkpoint_cid"] is not None, timestamp["state"]))

            # The JSON form of the checkpoint carries the same summary; the note does not change.
            as_json = client.get(base, headers={"Accept": "application/json"})
            assert as_json.json()["anchors"] == body
            assert as_json.headers["cache-control"] == "no-cache"
            assert "immutable" in client.get(base).headers["cache-control"]
        latest = client.get("/v1/checkpoints/latest", headers={"Accept": "application/json"})
        assert latest.json()["anchors"] == client.get(f"{base}/anchors").json()
    # The anchoring states set up, in order, then nothing.
    assert states[:5] == [
        (True, "complete"),
        (True, "complete"),
        (True, "none"),
        (False, "pending"),
        (False, "none"),
    ]
    assert all(state == (False, "none") for state in states[4:])
    upgraded = anchored.stamps[anchored.checkpoints[0].size]
    assert upgraded is not None and upgraded.revision == 2


def test_served_cids_are_those_of_the_served_note(anchored: Log) -> None:
    """An auditor recomputes the checkpoint's CID from the note the log serves."""
    with anchored.client() as client:
        for stored in anchored.checkpoints[:3]:
            body = client.get(f"/v1/checkpoints/{stored.size}/anchors").json()
            note = client.get(f"/v1/checkpoints/{stored.size}").content
            assert body["checkpoint_cid"] == str(file_dag(note).root)
            assert body["bundle_cid"].startswith("bafk")  # CIDv1, base32, one raw block


def test_a_complete_proof_verifies_against_btcd_for_the_served_note(
    anchored: Log, tmp_path: Path
) -> None:
    with anchored.client() as client:
        for stored in anchored.checkpoints[:2]:
            base = f"/v1/checkpoints/{stored.size}"
            response = client.get(f"{base}/timestamp.ots")
            assert response.status_code == 200, response.text
            assert response.headers["content-type"] == OTS_MEDIA_TYPE
            assert response.headers["timestamp-state"] == "complete"
            stamp = anchored.stamps[stored.size]
            assert stamp is not None
            assert response.headers["timestamp-revision"] == str(stamp.revision)
            assert response.content == stamp.ots
            digest = hashlib.sha256(client.get(base).content).digest()
            assert verify_timestamp(response.content, digest, anchored.rpc).height > 0
            # Not a proof of any other note.
            flipped = digest[:-1] + bytes([digest[-1] ^ 1])
            with pytest.raises(InvalidTimestamp):
                verify_timestamp(response.content, flipped, anchored.rpc)
            # The name served lets `ots` find the note beside the proof.
            disposition = response.headers["content-disposition"]
            assert f'filename="checkpoint-{stored.size}.txt.ots"' in disposition
            path = tmp_path / f"checkpoint-{stored.size}.txt.ots"
            path.write_bytes(response.content)
            info = subprocess.run(
                [str(Path(sys.executable).with_name("ots")), "--no-cache", "info", str(path)],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout
            assert f"File sha256 hash: {digest.hex()}" in info
            assert "BitcoinBlockHeaderAttestation" in info

            # Revalidation: the same revision is a 304 without a body.
            etag = response.headers["etag"]
            again = client.get(f"{base}/timestamp.ots", headers={"If-None-Match": etag})
            assert (again.status_code, again.content) == (304, b"")
            assert again.headers["etag"] == etag
            stale = client.get(f"{base}/timestamp.ots", headers={"If-None-Match": '"ots-0-1"'})
            assert stale.status_code == 200


def test_an_upgraded_proof_serves_its_newest_revision(anchored: Log) -> None:
    upgraded = anchored.checkpoints[0]
    with anchored.client() as client:
        response = client.get(f"/v1/checkpoints/{upgraded.size}/timestamp.ots")
    digest = hashlib.sha256(upgraded.note.encode()).digest()
    assert response.headers["timestamp-revision"] == "2"
    # The calendar's promise is kept beside the Bitcoin attestation.
    assert PENDING_CALENDAR.encode() in response.content
    assert is_complete(response.content, digest)
    verify_timestamp(response.content, digest, anchored.rpc)


def test_a_pending_proof_is_served_as_pending(anchored: Log) -> None:
    pending = anchored.checkpoints[3]
    with anchored.client() as client:
        response = client.get(f"/v1/checkpoints/{pending.size}/timestamp.ots")
    assert response.status_code == 200, response.text
    assert response.headers["timestamp-state"] == "pending"
    assert response.headers["timestamp-revision"] == "1"
    digest = hashlib.sha256(pending.note.encode()).digest()
    assert not is_complete(response.content, digest)
    with pytest.raises(InvalidTimestamp, match="pending only"):
        verify_timestamp(response.content, digest, anchored.rpc)


def test_anchors_of_what_does_not_exist_are_problems(anchored: Log) -> None:
    latest = anchored.covered
    with anchored.client() as client:
        for suffix in ("anchors", "timestamp.ots"):
            for size in (0, latest - 1, latest + 1):
                _problem(
                    client.get(f"/v1/checkpoints/{size}/{suffix}"), 404, "checkpoint-not-found"
                )
            for garbage in ("abc", "-1", "01", "9" * 30):
                _problem(
                    client.get(f"/v1/checkpoints/{garbage}/{suffix}"), 400, "invalid-tree-size"
                )
        for stored in (anchored.checkpoints[2], anchored.checkpoints[-1]):
            response = client.get(f"/v1/checkpoints/{stored.size}/timestamp.ots")
            _problem(response, 404, "timestamp-not-found")


def test_a_log_migrated_before_the_anchor_tables_anchors_nothing(
    anchored: Log, tmp_path: Path
) -> None:
    """Migration 001 only (an anchoring worker older than the ingress): no 500, no anchors."""
    only_first = tmp_path / "sql"
    only_first.mkdir()
    shutil.copy(pgstore.SQL_DIR / "001_merkle_log.sql", only_first)
    settings = anchored.settings.model_copy(
        update={"anchoring_schema": f"tr_{uuid.uuid4().hex[:12]}"}
    )
    stored = anchored.checkpoints[0]
    try:
        with pgstore.connect(settings.dsn(), settings.anchoring_schema) as connection:
            assert pgstore.migrate(connection, settings.anchoring_schema, only_first)
            connection.execute(
                "INSERT INTO checkpoints (tree_size, root_hash, origin, note, previous_size,"
                " consistency_proof) VALUES (%s, %s, %s, %s, 0, '{}')",
                (stored.size, stored.root_hash, stored.origin, stored.note),
            )
        with (
            serve_in_thread(create_app(settings), lifespan="on") as url,
            httpx.Client(base_url=url, timeout=60) as client,
        ):
            base = f"/v1/checkpoints/{stored.size}"
            response = client.get(f"{base}/anchors")
            assert response.status_code == 200, response.text
            body = response.json()
            assert (body["checkpoint_cid"], body["bundle_cid"]) == (None, None)
            assert body["timestamp"]["state"] == "none"
            assert (
                client.get(base, headers={"Accept": "application/json"}).json()["anchors"] == body
            )
            _problem(client.get(f"{base}/timestamp.ots"), 404, "timestamp-not-found")
            _problem(
                client.get(f"/v1/checkpoints/{stored.size + 1}/anchors"),
                404,
                "checkpoint-not-found",
            )
    finally:
        asyncio.run(_drop(settings))

"""Fetching one event's proof: the ingress's transparency API, Kafka, Kubo and a Bitcoin node.

The checks are ``ledger.audit.proof``'s; this module only fetches what they
take, in order, and turns every way a fetch fails (a service down, an
answer that is not what the API documents, a timeout) into an
``unchecked`` step with the reason, never a traceback::

    GET /v1/proofs/events/{id}          the event's leaves and the latest checkpoint
    Kafka, read_committed, no group     the record at the leaf's position; the keys topic
    GET /v1/checkpoints/{size}          walking back from the latest checkpoint along
                                        previous_size, to the earliest one covering the
                                        leaf that is anchored, and the one whose bundle
                                        holds the leaf
    GET /v1/checkpoints/consistency     from the anchored checkpoint to the latest
    Kubo cat                            the anchored note and the leaf's bundle (--ipfs)
    GET /v1/checkpoints/{size}/timestamp.ots, then btcd's headers (--bitcoin)

A checkpoint is anchored when its timestamp is complete and, with
``--ipfs``, both its CIDs are published. The first leaf of the event that a
checkpoint covers is the one proved (a republished event has several).
Nothing the API says is trusted: only what verifies against the root and
the anchoring key counts, and the walk's links only choose what to verify.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Self
from urllib.parse import quote

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from anchoring.bitcoin import BitcoinRpc, BitcoinRpcError
from anchoring.ipfs import IpfsError, KuboClient
from ledger.audit.proof import (
    CannotCheck,
    EventLeaves,
    EventProof,
    ServedCheckpoint,
    ServedLeaf,
    Step,
    StepName,
    check_anchored,
    check_checkpoint,
    check_cids,
    check_event,
    check_inclusion,
    check_signature,
    check_timestamp,
    not_reached,
    parse_checkpoint,
    parse_consistency,
    parse_event_leaves,
    pending,
    skipped,
    unchecked,
)
from ledger.codec import EnvelopeCodec
from ledger.config import Settings
from ledger.keys import TrustedRoot
from ledger.registry import open_registry
from ledger.tlog.cid import Cid, InvalidCid
from ledger.tlog.keys import AnchoringPublicKey
from ledger.topics import TopicRole, topic_name

HTTP_TIMEOUT_S: Final = 30.0
KAFKA_TIMEOUT_S: Final = 60.0
FETCH_TIMEOUT_MS: Final = 500
# Checkpoints looked at when walking back from the latest one to the leaf's.
CHECKPOINT_WALK_MAX: Final = 2_000
# The public routes are rate limited: a 429 is waited out this many times,
# each wait at most RETRY_AFTER_S_MAX.
RATE_LIMITED_RETRIES_MAX: Final = 20
RETRY_AFTER_S_MAX: Final = 10.0
# The largest answer read from the API: an event's proofs (at most a few
# hundred leaves with their hashes) or a checkpoint with its note.
API_ANSWER_BYTES_MAX: Final = 8_388_608
JSON: Final = "application/json"
OTS: Final = "application/vnd.opentimestamps.ots"
CLIENT_ID: Final = "payledger-audit-proof"


@dataclass(frozen=True, slots=True)
class ProofOptions:
    api_url: str
    root: TrustedRoot
    anchoring_key: AnchoringPublicKey
    bitcoin: bool  # check the .ots against the configured node's headers
    ipfs: bool  # fetch the CIDs from Kubo and recompute them


# The transparency API ----------------------------------------------------------------


class TransparencyApi:
    """The ingress's public routes, each answer checked to be what the API documents."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = HTTP_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.AsyncClient(
            base_url=self.base_url, timeout=httpx.Timeout(timeout_s), transport=transport
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._client.aclose()

    async def get(
        self, path: str, *, accept: str = JSON, params: Mapping[str, str] | None = None
    ) -> httpx.Response:
        """The answer, whatever its status, once any rate limit is waited out."""
        for _ in range(RATE_LIMITED_RETRIES_MAX + 1):
            try:
                response = await self._client.get(path, params=params, headers={"Accept": accept})
            except httpx.HTTPError as error:
                raise CannotCheck(f"the transparency API at {self.base_url}: {error!r}") from error
            if len(response.content) > API_ANSWER_BYTES_MAX:
                raise CannotCheck(f"GET {path}: answer over {API_ANSWER_BYTES_MAX} bytes")
            if response.status_code != httpx.codes.TOO_MANY_REQUESTS:
                return response
            await asyncio.sleep(_retry_after_s(response))
        raise CannotCheck(f"GET {path}: still rate limited after {RATE_LIMITED_RETRIES_MAX} waits")

    async def json(self, path: str, params: Mapping[str, str] | None = None) -> object:
        response = await self.get(path, params=params)
        if response.status_code != httpx.codes.OK:
            raise CannotCheck(f"GET {path}: {problem_text(response)}")
        try:
            return json.loads(response.content)
        except ValueError as error:
            raise CannotCheck(f"GET {path}: the answer is not JSON") from error

    async def checkpoint(self, size: int) -> ServedCheckpoint:
        served = parse_checkpoint(await self.json(f"/v1/checkpoints/{size}"))
        if served.size != size:
            raise CannotCheck(f"GET /v1/checkpoints/{size} answered checkpoint {served.size}")
        return served

    async def consistency(self, first: int, second: int) -> tuple[bytes, ...]:
        if first == second:
            return ()
        params = {"from": str(first), "to": str(second)}
        return parse_consistency(await self.json("/v1/checkpoints/consistency", params))

    async def timestamp(self, size: int) -> bytes:
        path = f"/v1/checkpoints/{size}/timestamp.ots"
        response = await self.get(path, accept=OTS)
        if response.status_code != httpx.codes.OK:
            raise CannotCheck(f"GET {path}: {problem_text(response)}")
        return response.content


def _retry_after_s(response: httpx.Response) -> float:
    try:
        wait_s = float(response.headers.get("retry-after", "1"))
    except ValueError:
        wait_s = 1.0
    return min(max(wait_s, 0.1), RETRY_AFTER_S_MAX)


def problem_slug(response: httpx.Response) -> str | None:
    """The slug of a problem document's type (``/problems/<slug>``), if it is one."""
    try:
        body = json.loads(response.content)
    except ValueError:
        return None
    kind = body.get("type") if isinstance(body, dict) else None
    return kind.rsplit("/", 1)[-1] if isinstance(kind, str) else None


def problem_text(response: httpx.Response) -> str:
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return f"HTTP {response.status_code} {problem_slug(response)}: {body['detail']}"
    return f"HTTP {response.status_code}: {response.text[:200]}"


# Kafka -------------------------------------------------------------------------------


class KafkaRecords:
    """Committed records read by position, with no consumer group and no offsets committed."""

    def __init__(self, settings: Settings) -> None:
        self._bootstrap = settings.bootstrap_servers()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            client_id=CLIENT_ID,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            # A position before the log start (deleted by retention) resumes at the
            # first record left: past the one asked for, which is then missing.
            auto_offset_reset="earliest",
        )
        self._started = False

    async def _start(self) -> None:
        if not self._started:
            await self._consumer.start()
            self._started = True

    async def stop(self) -> None:
        if self._started:
            await self._consumer.stop()
            self._started = False

    async def _partitions(self, topic: str) -> list[TopicPartition]:
        await self._start()
        admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap, client_id=CLIENT_ID)
        await admin.start()
        try:
            # Metadata of every topic: naming ours could auto-create it.
            described = await admin.describe_topics()
        finally:
            await admin.close()
        for found in described:
            if found["topic"] == topic and found["partitions"]:
                return [TopicPartition(topic, p["partition"]) for p in found["partitions"]]
        raise CannotCheck(f"Kafka has no topic {topic}")

    async def record(self, topic: str, partition: int, offset: int) -> bytes | None:
        """The value at ``offset``; None when Kafka holds no committed record there."""
        try:
            async with asyncio.timeout(KAFKA_TIMEOUT_S):
                if partition not in {tp.partition for tp in await self._partitions(topic)}:
                    return None
                wanted = TopicPartition(topic, partition)
                self._consumer.assign([wanted])
                end = (await self._consumer.end_offsets([wanted]))[wanted]
                if offset >= end:
                    return None
                self._consumer.seek(wanted, offset)
                while await self._consumer.position(wanted) < end:
                    batch = await self._consumer.getmany(wanted, timeout_ms=FETCH_TIMEOUT_MS)
                    for record in batch.get(wanted, []):
                        if record.offset >= offset:
                            # An offset skipped (aborted, compacted) means none is there.
                            return (record.value or b"") if record.offset == offset else None
                return None
        except (KafkaError, TimeoutError, OSError) as error:
            raise CannotCheck(f"Kafka: {topic}[{partition}]@{offset}: {error!r}") from error

    async def values(self, topic: str) -> list[bytes]:
        """Every committed value of ``topic``, from offset 0 to its end now."""
        try:
            async with asyncio.timeout(KAFKA_TIMEOUT_S):
                partitions = await self._partitions(topic)
                self._consumer.assign(partitions)
                await self._consumer.seek_to_beginning(*partitions)
                ends = await self._consumer.end_offsets(partitions)
                values: list[bytes] = []
                while [tp for tp in partitions if await self._consumer.position(tp) < ends[tp]]:
                    batches = await self._consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS)
                    for records in batches.values():
                        values += [record.value or b"" for record in records]
                return values
        except (KafkaError, TimeoutError, OSError) as error:
            raise CannotCheck(f"Kafka: {topic}: {error!r}") from error


# The walk along checkpoints ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Walk:
    """What walking back from the latest checkpoint found."""

    anchored: ServedCheckpoint | None  # the earliest anchored checkpoint covering the leaf
    holder: ServedCheckpoint | None  # the first checkpoint covering it (its bundle holds it)
    looked_at: int


async def walk_checkpoints(
    api: TransparencyApi, latest_size: int, leaf_index: int, *, cids: bool
) -> Walk:
    """From the latest checkpoint back along previous_size while the checkpoints cover the leaf."""
    size, anchored, holder, looked_at = latest_size, None, None, 0
    while size > leaf_index and looked_at < CHECKPOINT_WALK_MAX:
        served = await api.checkpoint(size)
        looked_at += 1
        if served.previous_size >= size:
            raise CannotCheck(
                f"checkpoint {size}'s previous size {served.previous_size} is not less"
            )
        if served.anchors is not None and served.anchors.anchored(cids=cids):
            anchored = served
        holder = served
        size = served.previous_size
    return Walk(anchored, holder if size <= leaf_index else None, looked_at)


# Kubo and btcd --------------------------------------------------------------------------


async def fetch_from_ipfs(kubo: KuboClient, cid: Cid) -> bytes:
    """The bytes Kubo gives for ``cid``, unchecked: the proof recomputes the CID itself."""
    try:
        return await kubo.fetch(cid)
    except IpfsError as error:
        raise CannotCheck(f"IPFS: {error}") from error


class NodeHeaders:
    """A Bitcoin node's headers, its failures told apart from a proof that does not verify."""

    def __init__(self, rpc: BitcoinRpc) -> None:
        self._rpc = rpc

    def block_header(self, height: int) -> bytes | None:
        try:
            return self._rpc.block_header(height)
        except BitcoinRpcError as error:
            raise CannotCheck(f"the Bitcoin node: {error}") from error


# The proof ------------------------------------------------------------------------------

_AFTER_EVENT: Final = (
    StepName.SIGNATURE,
    StepName.INCLUSION,
    StepName.CHECKPOINT,
    StepName.ANCHORED,
    StepName.CID,
    StepName.TIMESTAMP,
)
_ANCHOR_STEPS: Final = (StepName.ANCHORED, StepName.CID, StepName.TIMESTAMP)


def run_proof(settings: Settings, event_id: str, options: ProofOptions) -> EventProof:
    """``prove_event`` from synchronous code (the command line)."""
    return asyncio.run(prove_event(settings, event_id, options))


async def prove_event(
    settings: Settings,
    event_id: str,
    options: ProofOptions,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> EventProof:
    """Every step of the event's proof; nothing raised for a service that cannot be read."""
    proof = EventProof(event_id)
    async with TransparencyApi(options.api_url, transport=transport) as api:
        try:
            served = await _event_leaves(api, event_id)
        except _NoProof as no_proof:
            proof.problem = str(no_proof)
            proof.steps = [no_proof.step, *not_reached(_AFTER_EVENT, "needs the event's leaf")]
            return proof
        leaf = next(found for found in served.leaves if found.inclusion is not None)
        proof.steps += await _event_and_signature(settings, event_id, leaf, options.root)
        proof.steps.append(check_inclusion(leaf))
        step, latest = check_checkpoint(served.checkpoint, leaf.inclusion, options.anchoring_key)
        proof.steps.append(step)
        try:
            walk = await walk_checkpoints(
                api, served.checkpoint.size, leaf.index, cids=options.ipfs
            )
        except CannotCheck as error:
            proof.steps += not_reached(_ANCHOR_STEPS, f"cannot walk the checkpoints: {error}")
            return proof
        if walk.anchored is None:
            proof.steps.append(
                pending(
                    StepName.ANCHORED,
                    f"no checkpoint covering leaf {leaf.index} is anchored yet"
                    f" ({_anchoring_wanted(options)}; {walk.looked_at} checkpoints looked at)",
                )
            )
            proof.steps += [
                pending(name, "needs an anchored checkpoint")
                for name in (StepName.CID, StepName.TIMESTAMP)
            ]
            return proof
        anchored = walk.anchored
        try:
            consistency = await api.consistency(anchored.size, served.checkpoint.size)
        except CannotCheck as error:
            step, anchored_checkpoint = check_anchored(
                leaf.index, latest, anchored, None, options.anchoring_key, why_missing=str(error)
            )
        else:
            step, anchored_checkpoint = check_anchored(
                leaf.index, latest, anchored, consistency, options.anchoring_key
            )
        proof.steps.append(step)
        if anchored_checkpoint is None:
            proof.steps += not_reached(
                (StepName.CID, StepName.TIMESTAMP),
                "needs a verified anchored checkpoint (step anchored)",
            )
            return proof
        proof.steps.append(await _cids(settings, options, anchored, walk, leaf))
        proof.steps.append(await _timestamp(settings, api, options, anchored))
    return proof


class _NoProof(Exception):
    """The proof cannot start: the event is unknown, not checkpointed, or the API unreachable."""

    def __init__(self, step: Step) -> None:
        super().__init__(step.detail)
        self.step = step


async def _event_leaves(api: TransparencyApi, event_id: str) -> EventLeaves:
    path = f"/v1/proofs/events/{quote(event_id, safe='')}"
    try:
        response = await api.get(path)
        if response.status_code == httpx.codes.NOT_FOUND:
            slug = problem_slug(response)
            if slug == "event-not-found":
                raise _NoProof(
                    unchecked(
                        StepName.EVENT,
                        "unknown event: no leaf of the Merkle log carries this event id"
                        " (not an event of this ledger, or not appended to the log yet)",
                    )
                )
            if slug == "event-not-checkpointed":
                retry = response.headers.get("retry-after", "a few")
                raise _NoProof(
                    pending(
                        StepName.EVENT,
                        "the event is in the Merkle log, but no checkpoint covers it yet:"
                        f" retry in {retry} s",
                    )
                )
        if response.status_code != httpx.codes.OK:
            raise CannotCheck(f"GET {path}: {problem_text(response)}")
        try:
            served = parse_event_leaves(json.loads(response.content))
        except ValueError as error:
            raise CannotCheck(f"GET {path}: the answer is not JSON") from error
    except CannotCheck as error:
        raise _NoProof(unchecked(StepName.EVENT, str(error))) from error
    if not any(found.inclusion is not None for found in served.leaves):
        raise _NoProof(pending(StepName.EVENT, "no checkpoint covers a leaf of the event yet"))
    return served


async def _event_and_signature(
    settings: Settings, event_id: str, leaf: ServedLeaf, root: TrustedRoot
) -> list[Step]:
    """Steps 1 and 2: the record from Kafka, then its signature chain from the keys topic."""
    record = leaf.record
    registry = open_registry(settings)
    kafka = KafkaRecords(settings)
    try:
        codec = EnvelopeCodec(registry)
        try:
            value = await kafka.record(record.topic, record.partition, record.offset)
        except CannotCheck as error:
            return [
                unchecked(StepName.EVENT, str(error)),
                unchecked(StepName.SIGNATURE, "needs the event's record (step event)"),
            ]
        event, decoded = check_event(event_id, leaf, value, codec)
        if decoded is None:
            return [event, check_signature(None, [], codec, root)]
        try:
            keys = await kafka.values(topic_name(settings, TopicRole.KEYS))
        except CannotCheck as error:
            return [event, unchecked(StepName.SIGNATURE, str(error))]
        return [event, check_signature(decoded, keys, codec, root)]
    finally:
        await kafka.stop()
        registry.close()


def _anchoring_wanted(options: ProofOptions) -> str:
    if options.ipfs:
        return "anchored: both CIDs published and a complete timestamp"
    return "anchored: a complete timestamp"


async def _cids(
    settings: Settings,
    options: ProofOptions,
    anchored: ServedCheckpoint,
    walk: Walk,
    leaf: ServedLeaf,
) -> Step:
    anchors = anchored.anchors
    note_cid = anchors.checkpoint_cid if anchors else None
    if not options.ipfs:
        bundle_cid = walk.holder.anchors.bundle_cid if walk.holder and walk.holder.anchors else None
        return skipped(
            StepName.CID,
            f"not fetched from IPFS (--no-ipfs): note CID {note_cid}, bundle CID {bundle_cid}",
            checkpoint_cid=note_cid,
            bundle_cid=bundle_cid,
        )
    holder = walk.holder
    if holder is None:
        return unchecked(
            StepName.CID,
            f"the checkpoint holding leaf {leaf.index} is more than {CHECKPOINT_WALK_MAX}"
            " checkpoints before the latest",
        )
    bundle_cid = holder.anchors.bundle_cid if holder.anchors else None
    if bundle_cid is None:
        return pending(
            StepName.CID,
            f"checkpoint {holder.size}'s leaf bundle (holding leaf {leaf.index}) is not on IPFS"
            " yet",
        )
    contents: list[bytes] = []
    async with KuboClient.from_settings(settings) as kubo:
        for text in (note_cid, bundle_cid):
            try:
                cid = Cid.parse(text or "")
            except InvalidCid:
                contents.append(b"")  # the check reports the CID itself as invalid
                continue
            try:
                contents.append(await fetch_from_ipfs(kubo, cid))
            except CannotCheck as error:
                return unchecked(StepName.CID, str(error))
    return check_cids(anchored, contents[0], holder, contents[1], leaf)


async def _timestamp(
    settings: Settings, api: TransparencyApi, options: ProofOptions, anchored: ServedCheckpoint
) -> Step:
    try:
        ots = await api.timestamp(anchored.size)
    except CannotCheck as error:
        return unchecked(StepName.TIMESTAMP, str(error))
    if not options.bitcoin:
        return check_timestamp(anchored.note, ots, None)
    with BitcoinRpc.from_settings(settings) as rpc:
        # Blocking RPC calls: off the event loop.
        return await asyncio.to_thread(check_timestamp, anchored.note, ots, NodeHeaders(rpc))


__all__ = [
    "ProofOptions",
    "TransparencyApi",
    "prove_event",
    "run_proof",
]

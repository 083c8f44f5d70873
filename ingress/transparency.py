"""The transparency API: signed checkpoints of the Merkle log, consistency and inclusion proofs,
and what anchors each checkpoint (its IPFS CIDs and its OpenTimestamps proof).

Public routes: auditors and outsiders read them without merchant
credentials. They share the ingress's token buckets, keyed by the client's
address (``public:<address>``) with the default rate and burst
(``Settings.rate_limit_per_s``, ``rate_limit_burst``). Behind a proxy every
client has the proxy's address: size the limits for that, or rate-limit at
the proxy.

Everything is read from the anchoring worker's schema
(``Settings.anchoring_schema``) by ``ingress.tlog``; what is served verifies
with ``ledger.tlog.merkle`` and ``ledger.tlog.checkpoint.verify_checkpoint``
and the anchoring public key (``anchoring.json``), trusting nothing the
ingress says.

Decisions
---------
*Checkpoint format.* ``GET /v1/checkpoints/latest`` and ``/v1/checkpoints/{size}``
answer the signed note as ``text/plain; charset=utf-8``, exactly the bytes the
worker signed and stored (what C2SP tlog tooling reads), unless the client's
``Accept`` prefers ``application/json``. A checkpoint by size never changes,
so it may be cached for good; the latest one may not.

*Sizes.* A size is a canonical decimal (no sign, no leading zero): anything
else is 400 ``invalid-tree-size``. A consistency proof is served between any
two sizes 0 < from <= to <= the latest checkpoint's size (not only
checkpoint sizes); ``from`` > ``to`` is 400 ``invalid-size-range``; ``to``
beyond the latest checkpoint is 404 ``size-not-checkpointed`` with the
latest size in ``latest_size``: the proof does not exist yet, and a tree no
signed checkpoint commits to is not one the log vouches for.

*Events not covered yet.* An event id's leaves are proved into the latest
checkpoint. A leaf newer than it is listed with ``inclusion`` null; when no
leaf of the event is covered, the answer is 404 ``event-not-checkpointed``
with ``Retry-After`` (the checkpoint interval), like a payment accepted but
not projected yet: the resource will exist, it does not now.

*Anchors.* ``GET /v1/checkpoints/{size}/anchors`` tells what the anchoring
worker recorded for a checkpoint: the CIDv1 of its signed note and of its
leaf bundle on IPFS (null until published), and the state of its timestamp
(``none``, ``pending``: calendars' promises only, ``complete``: reaches a
Bitcoin block), with links. The JSON form of a checkpoint carries the same
summary as ``anchors``; the note never changes, so only the JSON form is
``no-cache``. ``GET /v1/checkpoints/{size}/timestamp.ots`` answers the current
proof's bytes, a standard ``.ots`` over SHA-256 of the signed note, as
``application/vnd.opentimestamps.ots``, with ``Timestamp-State`` (``pending``
or ``complete``) and ``Timestamp-Revision`` headers and an ETag of the
revision: a pending proof is upgraded in place (a new revision), so it is
revalidated, never cached for good. Save the note as ``checkpoint-N.txt`` and
the proof under the name served (``checkpoint-N.txt.ots``) and ``ots verify``
finds both. No proof yet is 404 ``timestamp-not-found``. A log whose schema
predates the anchor tables (migration 002) answers as one that anchors
nothing: CIDs null, state ``none``, no ``.ots``.

*Errors.* Every error is a problem document; the log's schema missing, the
database down or a statement timing out is 503 ``log-unavailable`` with
``Retry-After``.
"""

from __future__ import annotations

import base64
import logging
import math
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any, Final, Literal

import psycopg
from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import Field
from starlette.responses import Response

from ingress.models import StrictModel
from ingress.problems import Problem
from ingress.services import Services, services
from ingress.tlog import EVENT_LEAVES_MAX, AnchorsRow, CheckpointRow, LogReader, TimestampRow
from ledger.tlog import limits
from ledger.tlog.errors import TreeError

log = logging.getLogger("payledger.ingress.transparency")

QUERY_STATEMENT_TIMEOUT_MS: Final = 5_000
UNAVAILABLE_RETRY_AFTER_S: Final = 5
# A checkpoint by size is immutable: cacheable for a year.
IMMUTABLE_MAX_AGE_S: Final = 31_536_000
NOTE_MEDIA_TYPE: Final = "text/plain; charset=utf-8"
JSON_MEDIA_TYPE: Final = "application/json"
OTS_MEDIA_TYPE: Final = "application/vnd.opentimestamps.ots"
TIMESTAMP_STATE_HEADER: Final = "Timestamp-State"
TIMESTAMP_REVISION_HEADER: Final = "Timestamp-Revision"
SIZE_CHARS_MAX: Final = len(str(limits.TREE_SIZE_MAX))

_SIZE = re.compile(r"0|[1-9][0-9]*")
_MEDIA_RANGE_Q = re.compile(r"^q=([0-9](?:\.[0-9]{0,3})?)$")


# Parsing ------------------------------------------------------------------------------


def invalid_size(name: str) -> Problem:
    return Problem(
        400,
        "invalid-tree-size",
        "Invalid tree size",
        f"{name} must be a decimal integer from 0 to {limits.TREE_SIZE_MAX}, no sign or"
        " leading zeros",
    )


def parse_size(value: str | None, name: str) -> int:
    """A tree size from a path or query parameter, or a 400 problem."""
    if value is None:
        raise Problem(400, "invalid-tree-size", "Invalid tree size", f"{name} is required")
    if len(value) > SIZE_CHARS_MAX or not _SIZE.fullmatch(value):
        raise invalid_size(name)
    size = int(value)
    if size > limits.TREE_SIZE_MAX:
        raise invalid_size(name)
    return size


def parse_range(first: str | None, second: str | None) -> tuple[int, int]:
    """``from`` and ``to`` of a consistency proof: 0 < from <= to, or a 400 problem."""
    low, high = parse_size(first, "from"), parse_size(second, "to")
    if not 0 < low <= high:
        raise Problem(
            400,
            "invalid-size-range",
            "Invalid size range",
            "a consistency proof needs 0 < from <= to",
        )
    return low, high


def valid_event_id(event_id: str) -> bool:
    """Whether ``event_id`` could be a leaf's event id (1 to 128 bytes of UTF-8, no NUL)."""
    try:
        encoded = event_id.encode()
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return b"\x00" not in encoded and 0 < len(encoded) <= limits.EVENT_ID_BYTES_MAX


def prefers_json(accept: str | None) -> bool:
    """Whether an ``Accept`` header ranks ``application/json`` above ``text/plain``.

    The note is the default: no header, ``*/*``, ``text/*`` or a tie. Each
    media type takes the quality of its most specific matching range.
    """
    if not accept:
        return False
    # (specificity, quality) of the best-matching range of each type.
    best: dict[str, tuple[int, float]] = {}
    for part in accept.split(",")[:32]:
        media_range, *parameters = (piece.strip() for piece in part.split(";"))
        media_range = media_range.lower()
        quality = 1.0
        for parameter in parameters:
            match = _MEDIA_RANGE_Q.match(parameter.lower().replace(" ", ""))
            if match:
                quality = min(float(match.group(1)), 1.0)
        for media_type in (JSON_MEDIA_TYPE, "text/plain"):
            kind = media_type.split("/")[0]
            if media_range == media_type:
                specificity = 2
            elif media_range == f"{kind}/*":
                specificity = 1
            elif media_range == "*/*":
                specificity = 0
            else:
                continue
            if specificity > best.get(media_type, (-1, 0.0))[0]:
                best[media_type] = (specificity, quality)
    json_quality = best.get(JSON_MEDIA_TYPE, (0, 0.0))[1]
    text_quality = best.get("text/plain", (0, 0.0))[1]
    return json_quality > 0 and json_quality > text_quality


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


TimestampState = Literal["none", "pending", "complete"]


def timestamp_state(stamp: TimestampRow | None) -> TimestampState:
    if stamp is None:
        return "none"
    return "complete" if stamp.complete else "pending"


def timestamp_etag(size: int, revision: int) -> str:
    """The ETag of a checkpoint's proof: a new revision is a new proof."""
    return f'"ots-{size}-{revision}"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``etag`` (weak comparison, RFC 9110)."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    wanted = etag.removeprefix("W/")
    return any(
        candidate.strip().removeprefix("W/") == wanted
        for candidate in if_none_match.split(",")[:32]
    )


# Response models ----------------------------------------------------------------------


class CheckpointOut(StrictModel):
    """A signed checkpoint of the Merkle log (c2sp.org/tlog-checkpoint, Ed25519 + ML-DSA-87)."""

    origin: str = Field(description="The log's identity: the note's first line and key name.")
    size: int = Field(description="How many leaves the checkpoint commits to.")
    root_hash: str = Field(description="The RFC 9162 root at that size, base64.")
    note: str = Field(description="The signed note, exactly as served in text/plain.")
    previous_size: int = Field(description="The size of the checkpoint before (0 for the first).")
    consistency_proof: list[str] = Field(
        description="RFC 9162 consistency proof from previous_size to size, base64 hashes."
    )
    created_at: datetime


class TimestampOut(StrictModel):
    """The current OpenTimestamps proof of SHA-256 of the signed note."""

    state: TimestampState = Field(
        description="none: not stamped yet; pending: calendars' promises only; complete:"
        " the proof reaches a Bitcoin block."
    )
    digest: str | None = Field(
        description="SHA-256 of the signed note, base64: what the proof stamps (null if none)."
    )
    revision: int | None = Field(
        description="The proof's revision: each upgrade of a pending proof is a new one."
    )
    stored_at: datetime | None = Field(description="When this revision was stored.")


class AnchorLinks(StrictModel):
    checkpoint: str = Field(description="The checkpoint's signed note (what the CID names).")
    anchors: str = Field(description="This summary.")
    timestamp: str | None = Field(description="The current .ots proof; null if none yet.")


class AnchorsOut(StrictModel):
    """What anchors a checkpoint: its note and leaf bundle on IPFS, its note timestamped."""

    size: int = Field(description="The checkpoint's tree size.")
    checkpoint_cid: str | None = Field(
        description="CIDv1 of the signed note on IPFS (exactly the text/plain bytes served);"
        " null until published."
    )
    bundle_cid: str | None = Field(
        description="CIDv1 of the bundle of the leaves from previous_size to size - 1 on IPFS;"
        " null until published."
    )
    published_at: datetime | None = Field(description="When the CIDs were recorded.")
    timestamp: TimestampOut
    links: AnchorLinks


class CheckpointWithAnchorsOut(CheckpointOut):
    """A checkpoint and what anchors it so far."""

    anchors: AnchorsOut


class ConsistencyOut(StrictModel):
    """An RFC 9162 consistency proof: the tree of size ``to`` extends the tree of size ``from``."""

    from_size: int = Field(alias="from", serialization_alias="from")
    to_size: int = Field(alias="to", serialization_alias="to")
    from_root: str = Field(description="The root at size from, base64.")
    to_root: str = Field(description="The root at size to, base64.")
    proof: list[str] = Field(description="Consistency proof hashes, base64, in RFC 9162 order.")
    latest_size: int = Field(description="The latest checkpoint's size, for its signed root.")


class LeafOut(StrictModel):
    topic: str
    partition: int
    offset: int
    event_id: str
    value_sha256: str = Field(description="SHA-256 of the Kafka record's value, base64.")


class InclusionOut(StrictModel):
    tree_size: int = Field(description="The size of the checkpoint the proof leads into.")
    root_hash: str = Field(description="That checkpoint's root, base64.")
    proof: list[str] = Field(description="RFC 9162 inclusion proof, base64, leaf's sibling first.")


class EventLeafOut(StrictModel):
    leaf_index: int
    leaf: LeafOut
    leaf_hash: str = Field(
        description="SHA-256(0x00 || leaf bytes), base64 (recompute it from ``leaf``)."
    )
    inclusion: InclusionOut | None = Field(
        description="Null when the leaf is newer than the latest checkpoint."
    )


class EventProofsOut(StrictModel):
    """Every leaf of one event id (a republished event has several), each proved into one
    checkpoint."""

    event_id: str
    leaves: list[EventLeafOut] = Field(description=f"In log order, at most {EVENT_LEAVES_MAX}.")
    truncated: bool = Field(description="More leaves carry this event id than are listed.")
    checkpoint: CheckpointOut = Field(
        description="The latest checkpoint, which the proofs prove into."
    )


def checkpoint_out(row: CheckpointRow) -> CheckpointOut:
    return CheckpointOut(
        origin=row.origin,
        size=row.size,
        root_hash=b64(row.root_hash),
        note=row.note,
        previous_size=row.previous_size,
        consistency_proof=[b64(h) for h in row.consistency_proof],
        created_at=row.created_at,
    )


def anchors_out(row: AnchorsRow) -> AnchorsOut:
    base = f"/v1/checkpoints/{row.size}"
    stamp = row.timestamp
    return AnchorsOut(
        size=row.size,
        checkpoint_cid=row.checkpoint_cid,
        bundle_cid=row.bundle_cid,
        published_at=row.published_at,
        timestamp=TimestampOut(
            state=timestamp_state(stamp),
            digest=None if stamp is None else b64(stamp.digest),
            revision=None if stamp is None else stamp.revision,
            stored_at=None if stamp is None else stamp.stored_at,
        ),
        links=AnchorLinks(
            checkpoint=base,
            anchors=f"{base}/anchors",
            timestamp=None if stamp is None else f"{base}/timestamp.ots",
        ),
    )


# Dependencies -------------------------------------------------------------------------


async def public_reader(request: Request, svc: Annotated[Services, Depends(services)]) -> Services:
    """The client address's rate limit; no credentials."""
    address = request.client.host if request.client is not None else "unknown"
    settings = svc.settings
    wait_s = svc.rate_limiter.take(
        f"public:{address}", settings.rate_limit_per_s, settings.rate_limit_burst
    )
    if wait_s is not None:
        raise Problem(
            429,
            "rate-limited",
            "Too many requests",
            f"retry in {wait_s:.0f} s",
            headers={"Retry-After": f"{wait_s:.0f}"},
        )
    return svc


PublicReader = Annotated[Services, Depends(public_reader)]


def log_unavailable() -> Problem:
    return Problem(
        503,
        "log-unavailable",
        "The Merkle log is unavailable",
        "the transparency log cannot be read right now",
        headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)},
    )


@asynccontextmanager
async def _reading(svc: Services) -> AsyncIterator[LogReader]:
    """A read-only transaction on the log's schema; any database trouble is a 503 problem."""
    try:
        async with svc.pool.connection() as connection, connection.transaction():
            await connection.execute(
                "SELECT set_config('transaction_read_only', 'on', true),"
                " set_config('statement_timeout', %s, true)",
                (str(QUERY_STATEMENT_TIMEOUT_MS),),
            )
            yield LogReader(connection, svc.settings.anchoring_schema)
    except (psycopg.Error, TimeoutError) as error:
        # The schema was never migrated (or the setting names another one), the
        # database is down (psycopg_pool.PoolTimeout is an OperationalError), or
        # a statement ran out of time: none of it is the client's doing.
        log.warning("Merkle log unavailable: %s", type(error).__name__)
        raise log_unavailable() from None
    except TreeError as error:
        # The stored nodes do not hold what a proof needs: a log out of step
        # with its checkpoints, worth a look, never an answer.
        log.error("Merkle log cannot serve a proof: %s", error)
        raise log_unavailable() from None


def _no_checkpoint() -> Problem:
    return Problem(
        404, "checkpoint-not-found", "No such checkpoint", "the log has no checkpoint yet"
    )


def _unknown_size() -> Problem:
    return Problem(
        404, "checkpoint-not-found", "No such checkpoint", "no checkpoint has that tree size"
    )


async def _checkpoint_response(
    reader: LogReader, row: CheckpointRow, request: Request, *, immutable: bool
) -> Response:
    """The note, or the checkpoint and its anchors as JSON (read in the caller's transaction)."""
    if prefers_json(request.headers.get("accept")):
        # The anchors change (CIDs recorded, a proof upgraded): never cached for good.
        with_anchors = CheckpointWithAnchorsOut(
            **dict(checkpoint_out(row)), anchors=anchors_out(await reader.anchors(row.size))
        )
        return Response(
            with_anchors.model_dump_json(by_alias=True),
            media_type=JSON_MEDIA_TYPE,
            headers={"Vary": "Accept", "Cache-Control": "no-cache"},
        )
    headers = {
        "Vary": "Accept",
        "Cache-Control": f"public, max-age={IMMUTABLE_MAX_AGE_S}, immutable"
        if immutable
        else "no-cache",
    }
    return Response(row.note.encode(), media_type=NOTE_MEDIA_TYPE, headers=headers)


def _check_root(tree_root: bytes, row: CheckpointRow) -> None:
    if tree_root != row.root_hash:
        # The nodes disagree with what the log signed: serving a proof would
        # only produce one that fails to verify.
        raise TreeError(f"the stored nodes do not lead to checkpoint {row.size}'s root")


# Routes -------------------------------------------------------------------------------

_PROBLEM: Final[dict[str, Any]] = {"content": {"application/problem+json": {}}}
_CHECKPOINT_CONTENT: Final = {
    "description": "The signed note (default), or the checkpoint and its anchors as JSON",
    "content": {"text/plain": {"schema": {"type": "string"}}},
}
_OTS_CONTENT: Final = {
    "description": "The current .ots proof of SHA-256 of the signed note",
    "content": {OTS_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
    "headers": {
        TIMESTAMP_STATE_HEADER: {
            "description": "pending (calendars' promises only) or complete (a Bitcoin block)",
            "schema": {"type": "string", "enum": ["pending", "complete"]},
        },
        TIMESTAMP_REVISION_HEADER: {
            "description": "The proof's revision; an upgraded proof is a new one",
            "schema": {"type": "integer"},
        },
        "ETag": {"description": "The proof's revision", "schema": {"type": "string"}},
    },
}
TRANSPARENCY_PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {**_PROBLEM, "description": description}
    for status, description in (
        (400, "A size that is not a canonical decimal, or from > to"),
        (
            404,
            "No such checkpoint, event or timestamp, or no checkpoint covers the size or event yet",
        ),
        (429, "Rate limited"),
        (503, "The Merkle log is unavailable; retry later"),
    )
}

router = APIRouter(prefix="/v1", responses=TRANSPARENCY_PROBLEM_RESPONSES, tags=["transparency"])


@router.get(
    "/checkpoints/latest",
    response_model=CheckpointWithAnchorsOut,
    responses={200: _CHECKPOINT_CONTENT},
    summary="The latest checkpoint",
)
async def latest_checkpoint(request: Request, svc: PublicReader) -> Response:
    """The newest signed checkpoint: the note as text/plain, or JSON (with its anchors) with
    `Accept: application/json`."""
    async with _reading(svc) as reader:
        row = await reader.latest_checkpoint()
        if row is None:
            raise _no_checkpoint()
        return await _checkpoint_response(reader, row, request, immutable=False)


@router.get(
    "/checkpoints/consistency",
    response_model=ConsistencyOut,
    summary="Consistency proof between two tree sizes",
)
async def consistency(
    svc: PublicReader,
    first: Annotated[
        str | None, Query(alias="from", description="The smaller tree size, at least 1.")
    ] = None,
    second: Annotated[
        str | None,
        Query(alias="to", description="The larger tree size, at most the latest checkpoint's."),
    ] = None,
) -> ConsistencyOut:
    """RFC 9162 consistency proof that the tree of size `to` extends the tree of size
    `from`, with both roots. Verify with `ledger.tlog.merkle.verify_consistency`; the root
    at `to` is signed when `to` is a checkpoint's size."""
    low, high = parse_range(first, second)
    async with _reading(svc) as reader:
        latest = await reader.latest_checkpoint()
        if latest is None:
            raise _no_checkpoint()
        if high > latest.size:
            raise Problem(
                404,
                "size-not-checkpointed",
                "No checkpoint covers that size yet",
                "to is beyond the latest checkpoint",
                latest_size=latest.size,
            )
        low_root, high_root, proof = await reader.consistency_proof(low, high)
        if high == latest.size:
            _check_root(high_root, latest)
    return ConsistencyOut(
        **{"from": low, "to": high},
        from_root=b64(low_root),
        to_root=b64(high_root),
        proof=[b64(h) for h in proof],
        latest_size=latest.size,
    )


@router.get(
    "/checkpoints/{size}",
    response_model=CheckpointWithAnchorsOut,
    responses={200: _CHECKPOINT_CONTENT},
    summary="A checkpoint by tree size",
)
async def checkpoint_by_size(
    size: Annotated[str, Path(description="The checkpoint's tree size.")],
    request: Request,
    svc: PublicReader,
) -> Response:
    """The signed checkpoint of that tree size: the note as text/plain (immutable:
    cacheable), or JSON with its anchors with `Accept: application/json`."""
    wanted = parse_size(size, "size")
    async with _reading(svc) as reader:
        row = await reader.checkpoint(wanted)
        if row is None:
            raise _unknown_size()
        return await _checkpoint_response(reader, row, request, immutable=True)


@router.get(
    "/checkpoints/{size}/anchors",
    response_model=AnchorsOut,
    summary="What anchors a checkpoint",
)
async def checkpoint_anchors(
    size: Annotated[str, Path(description="The checkpoint's tree size.")],
    response: Response,
    svc: PublicReader,
) -> AnchorsOut:
    """The CIDv1 of the checkpoint's signed note and of its leaf bundle on IPFS (null until
    published) and the state of its OpenTimestamps proof (`none`, `pending`, `complete`),
    with links. Fetch the CIDs from any IPFS node and recompute them; verify the `.ots`
    against Bitcoin headers for SHA-256 of the note."""
    wanted = parse_size(size, "size")
    async with _reading(svc) as reader:
        if await reader.checkpoint(wanted) is None:
            raise _unknown_size()
        anchors = await reader.anchors(wanted)
    response.headers["Cache-Control"] = "no-cache"
    return anchors_out(anchors)


@router.get(
    "/checkpoints/{size}/timestamp.ots",
    response_class=Response,
    responses={200: _OTS_CONTENT, 304: {"description": "The proof named by If-None-Match"}},
    summary="The OpenTimestamps proof of a checkpoint",
)
async def checkpoint_timestamp(
    size: Annotated[str, Path(description="The checkpoint's tree size.")],
    request: Request,
    svc: PublicReader,
) -> Response:
    """The current `.ots` proof of SHA-256 of the checkpoint's signed note, as the `ots`
    command reads it. `Timestamp-State` tells a pending proof (calendars' promises, to be
    upgraded) from a complete one (a Bitcoin block attests it)."""
    wanted = parse_size(size, "size")
    async with _reading(svc) as reader:
        if await reader.checkpoint(wanted) is None:
            raise _unknown_size()
        proof = await reader.timestamp_proof(wanted)
    if proof is None:
        raise Problem(
            404,
            "timestamp-not-found",
            "No timestamp yet",
            "the checkpoint has no OpenTimestamps proof (yet)",
        )
    etag = timestamp_etag(wanted, proof.stamp.revision)
    headers = {
        TIMESTAMP_STATE_HEADER: timestamp_state(proof.stamp),
        TIMESTAMP_REVISION_HEADER: str(proof.stamp.revision),
        "ETag": etag,
        "Cache-Control": "no-cache",
    }
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    headers["Content-Disposition"] = f'attachment; filename="checkpoint-{wanted}.txt.ots"'
    return Response(proof.ots, media_type=OTS_MEDIA_TYPE, headers=headers)


@router.get(
    "/proofs/events/{event_id}",
    response_model=EventProofsOut,
    summary="Inclusion proofs of an event",
)
async def event_proofs(
    event_id: Annotated[str, Path(description="The envelope's event id.")],
    svc: PublicReader,
) -> EventProofsOut:
    """Every leaf carrying this event id (a republished event is more than one), with its
    inclusion proof into the latest checkpoint. Recompute the leaf hash from `leaf`
    (`ledger.tlog.leaf.LeafRecord`), verify with `ledger.tlog.merkle.verify_inclusion`
    against the checkpoint's root, and the checkpoint's note with the anchoring key."""
    not_found = Problem(404, "event-not-found", "No such event", "no leaf carries that event id")
    if not valid_event_id(event_id):
        raise not_found
    async with _reading(svc) as reader:
        leaves = await reader.leaves_of_event(event_id, EVENT_LEAVES_MAX + 1)
        if not leaves:
            raise not_found
        latest = await reader.latest_checkpoint()
        covered = [] if latest is None else [leaf for leaf in leaves if leaf.index < latest.size]
        if latest is None or not covered:
            retry_after_s = math.ceil(svc.settings.anchoring_checkpoint_interval_s)
            raise Problem(
                404,
                "event-not-checkpointed",
                "Event not checkpointed yet",
                "the event is in the log; no checkpoint covers it yet: retry shortly",
                headers={"Retry-After": str(retry_after_s)},
            )
        shown = leaves[:EVENT_LEAVES_MAX]
        root, proofs = await reader.inclusion_proofs(
            [leaf.index for leaf in shown if leaf.index < latest.size], latest.size
        )
        _check_root(root, latest)
    proof_of = dict(
        zip([leaf.index for leaf in shown if leaf.index < latest.size], proofs, strict=True)
    )
    return EventProofsOut(
        event_id=event_id,
        leaves=[
            EventLeafOut(
                leaf_index=leaf.index,
                leaf=LeafOut(
                    topic=leaf.record.topic,
                    partition=leaf.record.partition,
                    offset=leaf.record.offset,
                    event_id=leaf.record.event_id,
                    value_sha256=b64(leaf.record.value_sha256),
                ),
                leaf_hash=b64(leaf.leaf_hash),
                inclusion=None
                if leaf.index not in proof_of
                else InclusionOut(
                    tree_size=latest.size,
                    root_hash=b64(latest.root_hash),
                    proof=[b64(h) for h in proof_of[leaf.index]],
                ),
            )
            for leaf in shown
        ],
        truncated=len(leaves) > EVENT_LEAVES_MAX,
        checkpoint=checkpoint_out(latest),
    )

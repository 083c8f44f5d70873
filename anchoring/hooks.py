"""The checkpoint hooks: each checkpoint on IPFS, and its note timestamped on Bitcoin.

``IpfsHook`` publishes, for every checkpoint, the signed note text and the
bundle of the leaves it added (``ledger.tlog.bundle.LeafBundle``, leaves
``previous_size .. size - 1``) to Kubo (``anchoring.ipfs.KuboClient``), then
records both CIDs (``checkpoint_publications``). Both CIDs are computed here
first: the client refuses any CID Kubo reports differently, and a CID already
recorded for the checkpoint that is not the one recomputed from the same
bytes is ``CidMismatch``, raised on every try (the log goes on; the hook is
stuck on that checkpoint, loudly, until someone looks).

``TimestampHook`` stamps SHA-256 of the signed note (the very bytes
published on IPFS as the checkpoint, so ``ots verify`` runs on the fetched
file): through the configured calendars (pending proofs), then directly on
the Bitcoin node (``anchoring.bitcoin.DirectStamper``, a complete proof),
the proofs merged into one ``.ots`` stored with its state
(``checkpoint_timestamps``). Pending proofs are upgraded on the schedule
(``PendingUpgrades``) by ``tick``, which the worker calls between rounds;
each better proof is a new revision of the row.

Both are idempotent, as ``CheckpointHook`` requires: a checkpoint whose CIDs
or proof are stored is done. A crash between stamping and storing stamps
again on the retry (one more OP_RETURN in one more block), never stores two
proofs as current.

The worker announces a checkpoint once every configured hook stored its part
(CIDs; a complete proof): it publishes the anchored record on the checkpoints
topic (``anchoring.publication``). ``build_hooks`` makes the hooks the
settings ask for::

    anchoring_ipfs_enabled          IpfsHook on ipfs_api_url, or on the local Kubo
    ots_direct_enabled              TimestampHook stamping on btcd
    ots_calendar_urls (non-empty)   TimestampHook submitting to those calendars
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Final, Protocol, TypeVar, runtime_checkable

from anchoring import pgstore
from anchoring.bitcoin import BitcoinRpc, DirectStamp, DirectStamper
from anchoring.ipfs import CidMismatch, KuboClient, Publication
from anchoring.pgstore import IpfsPublication, StoredCheckpoint, StoredTimestamp
from anchoring.timestamps import (
    CalendarClient,
    InvalidTimestamp,
    PendingUpgrades,
    UpgradeResult,
    is_complete,
    merge_proofs,
)
from anchoring.writer import CheckpointHook, LogView
from ledger.config import Settings
from ledger.tlog.bundle import LeafBundle
from ledger.tlog.cid import file_dag
from ledger.tlog.errors import AnchoringError
from ledger.tlog.leaf import LeafRecord

IPFS_HOOK: Final = "ipfs"
TIMESTAMP_HOOK: Final = "timestamp"
# How often the worker asks the hooks for their scheduled work (proof upgrades,
# each due every ots_upgrade_interval_s).
TICK_S: Final = 30.0

log = logging.getLogger(__name__)
_T = TypeVar("_T")


def note_digest(checkpoint: StoredCheckpoint) -> bytes:
    """What is stamped: SHA-256 of the signed note, as published on IPFS."""
    return hashlib.sha256(checkpoint.note.encode("utf-8")).digest()


def checkpoint_bundle(checkpoint: StoredCheckpoint, leaves: Sequence[LeafRecord]) -> LeafBundle:
    """The bundle of the leaves a checkpoint added, checked to be all of them."""
    if len(leaves) != checkpoint.size - checkpoint.previous_size:
        raise AnchoringError(
            f"checkpoint {checkpoint.size}: {len(leaves)} leaves read,"
            f" {checkpoint.size - checkpoint.previous_size} expected"
        )
    return LeafBundle(checkpoint.origin, checkpoint.previous_size, tuple(leaves))


# Where the anchors are kept ------------------------------------------------------


class AnchorStore(Protocol):
    """Where the hooks keep what they produce: ``PostgresAnchors``, or a fake in tests."""

    async def publication(self, size: int) -> IpfsPublication | None: ...

    async def add_publication(
        self, size: int, checkpoint_cid: str, bundle_cid: str
    ) -> IpfsPublication: ...

    async def timestamp(self, size: int) -> StoredTimestamp | None: ...

    async def add_timestamp(
        self, size: int, digest: bytes, ots: bytes, complete: bool
    ) -> StoredTimestamp: ...

    async def pending_timestamps(self) -> list[StoredTimestamp]: ...


class PostgresAnchors:
    """The anchor tables of the log's schema, on a connection of their own.

    Blocking psycopg on a worker thread, one call at a time; a connection
    that failed is dropped and opened again by the next call.
    """

    def __init__(self, dsn: str, schema: str) -> None:
        self._dsn = dsn
        self._schema = pgstore.check_schema_name(schema)
        self._lock = threading.Lock()
        self._store: pgstore.PostgresTreeStore | None = None

    async def publication(self, size: int) -> IpfsPublication | None:
        return await self._call(lambda store: store.publication(size))

    async def add_publication(
        self, size: int, checkpoint_cid: str, bundle_cid: str
    ) -> IpfsPublication:
        return await self._call(
            lambda store: store.add_publication(size, checkpoint_cid, bundle_cid)
        )

    async def timestamp(self, size: int) -> StoredTimestamp | None:
        return await self._call(lambda store: store.timestamp(size))

    async def add_timestamp(
        self, size: int, digest: bytes, ots: bytes, complete: bool
    ) -> StoredTimestamp:
        return await self._call(lambda store: store.add_timestamp(size, digest, ots, complete))

    async def pending_timestamps(self) -> list[StoredTimestamp]:
        return await self._call(lambda store: store.pending_timestamps())

    async def aclose(self) -> None:
        await asyncio.to_thread(self._close)

    async def _call(self, function: Callable[[pgstore.PostgresTreeStore], _T]) -> _T:
        return await asyncio.to_thread(self._run, function)

    def _run(self, function: Callable[[pgstore.PostgresTreeStore], _T]) -> _T:
        with self._lock:
            if self._store is None:
                # The worker migrated the schema before any hook runs.
                connection = pgstore.connect(self._dsn, self._schema)
                self._store = pgstore.PostgresTreeStore(connection, self._schema)
            try:
                return function(self._store)
            except pgstore.UNAVAILABLE:
                self._close_locked()
                raise

    def _close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._store is not None:
            self._store.connection.close()
        self._store = None


# IPFS ------------------------------------------------------------------------------


class IpfsPublisher(Protocol):
    """What the IPFS hook needs of ``KuboClient``."""

    async def publish(self, content: bytes) -> Publication: ...

    async def aclose(self) -> None: ...


class IpfsHook:
    """Each checkpoint's note and leaf bundle on IPFS, their CIDs in Postgres."""

    name = IPFS_HOOK

    def __init__(self, client: IpfsPublisher, anchors: AnchorStore) -> None:
        self._client = client
        self._anchors = anchors

    async def checkpoint_stored(self, checkpoint: StoredCheckpoint, log_view: LogView) -> None:
        note = checkpoint.note.encode("utf-8")
        leaves = await log_view.leaf_records(checkpoint.previous_size, checkpoint.size)
        bundle = checkpoint_bundle(checkpoint, leaves).to_bytes()
        expected = (str(file_dag(note).root), str(file_dag(bundle).root))
        stored = await self._anchors.publication(checkpoint.size)
        if stored is None:
            published = (await self._client.publish(note), await self._client.publish(bundle))
            reported = (str(published[0].cid), str(published[1].cid))
            if reported != expected:
                raise CidMismatch(
                    f"checkpoint {checkpoint.size}: published as {reported}, computed {expected}"
                )
            stored = await self._anchors.add_publication(checkpoint.size, *expected)
            log.info("checkpoint %d on IPFS: %s, bundle %s", checkpoint.size, *expected)
        if (stored.checkpoint_cid, stored.bundle_cid) != expected:
            raise CidMismatch(
                f"checkpoint {checkpoint.size}: CIDs recorded"
                f" {(stored.checkpoint_cid, stored.bundle_cid)}, recomputed {expected}"
            )

    async def aclose(self) -> None:
        await self._client.aclose()
        await _close_anchors(self._anchors)


# Timestamps ------------------------------------------------------------------------


class Stamper(Protocol):
    """What the timestamp hook needs of ``DirectStamper`` (blocking)."""

    def stamp(self, digest: bytes) -> DirectStamp: ...


class Calendars(Protocol):
    """What the timestamp hook needs of ``CalendarClient`` (blocking)."""

    def submit(self, digest: bytes) -> bytes: ...

    def upgrade(self, ots: bytes, digest: bytes) -> UpgradeResult: ...


class TimestampHook:
    """Each checkpoint's note digest stamped (directly, through calendars, or both)."""

    name = TIMESTAMP_HOOK

    def __init__(
        self,
        anchors: AnchorStore,
        *,
        direct: Stamper | None = None,
        calendars: Calendars | None = None,
        upgrade_interval_s: float = 3_600,
        clock: Callable[[], float] = time.monotonic,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        if direct is None and calendars is None:
            raise ValueError("a timestamp hook needs direct stamping or calendars")
        self._anchors = anchors
        self._direct = direct
        self._calendars = calendars
        self._upgrades = (
            None if calendars is None else PendingUpgrades(calendars, upgrade_interval_s, clock)  # type: ignore[arg-type]
        )
        self._digests: dict[str, bytes] = {}
        self._loaded = False
        self._on_close = on_close

    async def checkpoint_stored(self, checkpoint: StoredCheckpoint, log_view: LogView) -> None:
        digest = note_digest(checkpoint)
        stored = await self._anchors.timestamp(checkpoint.size)
        if stored is not None:
            if stored.digest != digest:
                raise InvalidTimestamp(
                    f"checkpoint {checkpoint.size} was stamped over another note"
                )
            return
        proofs: list[bytes] = []
        # Calendars first: a calendar failing before the direct stamp costs no block.
        if self._calendars is not None:
            proofs.append(await asyncio.to_thread(self._calendars.submit, digest))
        if self._direct is not None:
            proofs.append((await asyncio.to_thread(self._direct.stamp, digest)).ots)
        ots = proofs[0]
        for other in proofs[1:]:
            ots = merge_proofs(ots, other, digest)
        complete = is_complete(ots, digest)
        await self._anchors.add_timestamp(checkpoint.size, digest, ots, complete)
        log.info(
            "checkpoint %d timestamped (%s)", checkpoint.size, "complete" if complete else "pending"
        )
        if not complete:
            self._schedule(checkpoint.size, digest, ots)

    async def tick(self) -> bool:
        """Upgrade the pending proofs that are due; True when a better proof was stored."""
        upgrades = self._upgrades
        if upgrades is None:
            return False
        if not self._loaded:
            for pending in await self._anchors.pending_timestamps():
                self._schedule(pending.size, pending.digest, pending.ots)
            self._loaded = True
        if not upgrades.pending():
            return False
        changed = await asyncio.to_thread(upgrades.run_due)
        stored = False
        for key, result in sorted(changed.items()):
            digest = self._digests[key]
            try:
                await self._anchors.add_timestamp(int(key), digest, result.ots, result.complete)
            except BaseException:
                # Kept on the schedule: the upgrade is asked for again.
                upgrades.add(key, digest, result.ots)
                raise
            stored = True
            if result.complete:
                self._digests.pop(key, None)
                log.info("checkpoint %s: timestamp complete", key)
        return stored

    def _schedule(self, size: int, digest: bytes, ots: bytes) -> None:
        if self._upgrades is not None:
            self._digests[str(size)] = digest
            self._upgrades.add(str(size), digest, ots)

    async def aclose(self) -> None:
        if self._on_close is not None:
            await asyncio.to_thread(self._on_close)
        await _close_anchors(self._anchors)


async def _close_anchors(anchors: AnchorStore) -> None:
    close = getattr(anchors, "aclose", None)
    if close is not None:
        await close()


# From the settings -------------------------------------------------------------------


class ClosableHook(CheckpointHook, Protocol):
    async def aclose(self) -> None: ...


@runtime_checkable
class PeriodicHook(CheckpointHook, Protocol):
    """A hook with scheduled work besides checkpoints: the worker calls ``tick`` every
    ``TICK_S`` (and after each round); True means it stored something to announce."""

    async def tick(self) -> bool: ...


def ipfs_enabled(settings: Settings) -> bool:
    return settings.anchoring_ipfs_enabled


def timestamps_enabled(settings: Settings) -> bool:
    return settings.ots_direct_enabled or bool(settings.ots_calendar_urls)


def build_hooks(settings: Settings) -> list[ClosableHook]:
    """The hooks the settings ask for; none by default (no Kubo, no btcd needed)."""
    hooks: list[ClosableHook] = []
    if ipfs_enabled(settings):
        hooks.append(
            IpfsHook(
                KuboClient.from_settings(settings),
                PostgresAnchors(settings.dsn(), settings.anchoring_schema),
            )
        )
    if timestamps_enabled(settings):
        rpc = BitcoinRpc.from_settings(settings) if settings.ots_direct_enabled else None
        hooks.append(
            TimestampHook(
                PostgresAnchors(settings.dsn(), settings.anchoring_schema),
                direct=None if rpc is None else DirectStamper.from_settings(settings, rpc),
                calendars=(
                    CalendarClient.from_settings(settings) if settings.ots_calendar_urls else None
                ),
                upgrade_interval_s=settings.ots_upgrade_interval_s,
                on_close=None if rpc is None else rpc.close,
            )
        )
    return hooks


async def close_hooks(hooks: Sequence[object]) -> None:
    for hook in hooks:
        close = getattr(hook, "aclose", None)
        if close is not None:
            try:
                await close()
            except Exception:
                log.exception("closing hook %s", getattr(hook, "name", hook))

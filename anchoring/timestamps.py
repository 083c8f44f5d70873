"""OpenTimestamps proofs: build from a block, calendar client, and (re-exported) verification.

A proof is a standard ``.ots`` file (``DetachedTimestampFile``) over the
SHA-256 digest of what was stamped (a checkpoint's text): the same bytes the
``ots`` command reads. Reading and verifying proofs (``parse_proof``,
``is_complete``, ``verify_timestamp``, ``merge_proofs``, ``InvalidTimestamp``,
``BlockHeaderSource``) lives in ``ledger.tlog.ots``, where the auditor uses it
too; every one of those names is importable from here as well.

``proof_from_block`` makes a complete proof from a block that carries the
digest (the direct stamping of ``anchoring.bitcoin``).

``CalendarClient`` speaks the calendar protocol (POST ``/digest`` answers a
timestamp ending in a pending attestation; GET ``/timestamp/<commitment>``
answers the upgraded one once the calendar's transaction is mined), and
``PendingUpgrades`` asks again on a schedule until each proof is complete.
Only the configured calendars are ever contacted: a pending attestation names
a URL, and a proof from elsewhere must not make the worker call anywhere.

The calls are blocking (``urllib`` inside ``opentimestamps``); an asyncio
caller runs them with ``asyncio.to_thread``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from bitcoin.core import CBlock
from opentimestamps.bitcoin import make_timestamp_from_block
from opentimestamps.calendar import CommitmentNotFoundError, RemoteCalendar
from opentimestamps.core.notary import BitcoinBlockHeaderAttestation, PendingAttestation
from opentimestamps.core.op import OpAppend, OpSHA256
from opentimestamps.core.timestamp import Timestamp

from ledger.config import Settings
from ledger.errors import ConfigurationError
from ledger.tlog.errors import AnchoringError
from ledger.tlog.ots import (
    BLOCK_HEADER_BYTES,
    DIGEST_BYTES,
    OTS_PROOF_BYTES_MAX,
    BitcoinTime,
    BlockHeaderSource,
    InvalidTimestamp,
    is_complete,
    merge_proofs,
    parse_proof,
    serialize_proof,
    verify_timestamp,
)
from ledger.tlog.ots import attestations as _attestations
from ledger.tlog.ots import check_digest as _check_digest

__all__ = [
    "BLOCK_HEADER_BYTES",
    "CALENDAR_NONCE_BYTES",
    "COMMITMENT_TX_BYTES_MAX",
    "DIGEST_BYTES",
    "OTS_PROOF_BYTES_MAX",
    "USER_AGENT",
    "BitcoinTime",
    "BlockHeaderSource",
    "CalendarClient",
    "InvalidTimestamp",
    "PendingUpgrades",
    "TimestampError",
    "UpgradeResult",
    "is_complete",
    "merge_proofs",
    "parse_proof",
    "proof_from_block",
    "serialize_proof",
    "verify_timestamp",
]

# Transactions larger than this are not searched for the digest when a proof
# is built from a block; the stamping transaction is about 235 bytes.
COMMITMENT_TX_BYTES_MAX: Final = 1_000
# Random bytes appended to a digest before it goes to a calendar, so the
# calendar (and anyone reading its log) learns nothing about the digest.
CALENDAR_NONCE_BYTES: Final = 16
USER_AGENT: Final = "payledger"

log = logging.getLogger(__name__)


class TimestampError(AnchoringError):
    """A timestamp could not be made: node or calendars refused, or none answered."""


def proof_from_block(digest: bytes, raw_block: bytes, height: int) -> bytes:
    """A complete .ots proof for ``digest``, which a transaction of the block carries."""
    _check_digest(digest)
    block = CBlock.deserialize(raw_block)
    timestamp = make_timestamp_from_block(
        digest, block, height, max_tx_size=COMMITMENT_TX_BYTES_MAX
    )
    if timestamp is None:
        raise TimestampError(f"block {height} has no transaction that commits to the digest")
    return serialize_proof(timestamp)


# ---- calendars --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpgradeResult:
    ots: bytes
    changed: bool
    complete: bool


def _normal_url(url: str) -> str:
    return url.rstrip("/")


class CalendarClient:
    """Submits digests to OpenTimestamps calendars and upgrades their pending proofs."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        quorum: int,
        timeout_s: float,
        calendar: Callable[[str], Any] | None = None,
    ) -> None:
        if not urls:
            raise ConfigurationError("no OpenTimestamps calendar is configured (ots_calendar_urls)")
        if not 1 <= quorum <= len(urls):
            raise ConfigurationError("ots_calendar_quorum must be between 1 and the calendar count")
        self.urls = tuple(_normal_url(url) for url in urls)
        self.quorum = quorum
        self.timeout_s = timeout_s
        self._calendar = calendar or (lambda url: RemoteCalendar(url, user_agent=USER_AGENT))

    @classmethod
    def from_settings(cls, settings: Settings) -> CalendarClient:
        return cls(
            settings.ots_calendar_urls,
            quorum=settings.ots_calendar_quorum,
            timeout_s=settings.ots_calendar_timeout_s,
        )

    def submit(self, digest: bytes) -> bytes:
        """A pending .ots proof for ``digest``, accepted by at least ``quorum`` calendars."""
        _check_digest(digest)
        timestamp = Timestamp(digest)
        nonced = timestamp.ops.add(OpAppend(os.urandom(CALENDAR_NONCE_BYTES)))
        commitment = nonced.ops.add(OpSHA256())
        failures: list[str] = []
        for url in self.urls:
            try:
                answer = self._calendar(url).submit(commitment.msg, timeout=self.timeout_s)
                commitment.merge(answer)
            # RemoteCalendar raises bare Exception for unexpected statuses, next
            # to urllib's OSError and the deserializer's errors.
            except Exception as error:
                failures.append(f"{url}: {error}")
                log.warning("OpenTimestamps calendar %s refused a digest: %s", url, error)
        accepted = len(self.urls) - len(failures)
        if accepted < self.quorum:
            raise TimestampError(
                f"{accepted} of {len(self.urls)} calendars accepted the digest, "
                f"{self.quorum} needed: " + "; ".join(failures)
            )
        return serialize_proof(timestamp)

    def upgrade(self, ots: bytes, digest: bytes) -> UpgradeResult:
        """Ask each configured calendar named by a pending attestation for its upgrade."""
        timestamp = parse_proof(ots, digest)
        changed = False
        pending = [
            (node, attestation)
            for node in _nodes(timestamp)
            for attestation in node.attestations
            if isinstance(attestation, PendingAttestation)
        ]
        for node, attestation in pending:
            url = _normal_url(attestation.uri)
            if url not in self.urls:
                continue
            try:
                upgraded = self._calendar(url).get_timestamp(node.msg, timeout=self.timeout_s)
            except CommitmentNotFoundError:
                continue  # not in a Bitcoin block yet
            except Exception as error:  # see submit
                log.warning("OpenTimestamps calendar %s did not upgrade: %s", url, error)
                continue
            if any(
                isinstance(found, BitcoinBlockHeaderAttestation)
                for _, found in upgraded.all_attestations()
            ):
                node.merge(upgraded)
                changed = True
        complete = any(
            isinstance(attestation, BitcoinBlockHeaderAttestation)
            for _, attestation in _attestations(timestamp)
        )
        return UpgradeResult(serialize_proof(timestamp) if changed else ots, changed, complete)


def _nodes(timestamp: Any) -> Iterator[Any]:
    yield timestamp
    for child in timestamp.ops.values():
        yield from _nodes(child)


class PendingUpgrades:
    """Proofs waiting for their Bitcoin attestation, each retried every interval.

    The clock is injected so the schedule can be tested without waiting.
    """

    def __init__(
        self,
        client: CalendarClient,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._interval_s = interval_s
        self._clock = clock
        # key -> (digest, proof, when it is next due)
        self._pending: dict[str, tuple[bytes, bytes, float]] = {}

    @classmethod
    def from_settings(
        cls, settings: Settings, clock: Callable[[], float] = time.monotonic
    ) -> PendingUpgrades:
        return cls(CalendarClient.from_settings(settings), settings.ots_upgrade_interval_s, clock)

    def add(self, key: str, digest: bytes, ots: bytes) -> None:
        """Track a proof; its first upgrade is due one interval from now."""
        parse_proof(ots, digest)
        self._pending[key] = (digest, ots, self._clock() + self._interval_s)

    def pending(self) -> list[str]:
        return sorted(self._pending)

    def run_due(self) -> dict[str, UpgradeResult]:
        """Upgrade every proof that is due; the changed ones are returned, to be stored.

        A complete proof leaves the schedule; the others are due again one
        interval later.
        """
        now = self._clock()
        changed: dict[str, UpgradeResult] = {}
        for key, (digest, ots, due) in list(self._pending.items()):
            if due > now:
                continue
            result = self._client.upgrade(ots, digest)
            if result.changed:
                changed[key] = result
            if result.complete:
                del self._pending[key]
            else:
                self._pending[key] = (digest, result.ots, now + self._interval_s)
        return changed

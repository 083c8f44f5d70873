"""Audit findings and the report that collects them.

JSON form of a report (``Report.to_json``); field names are stable, and a new
field is only ever added::

    {
      "format": "payledger-audit-report/1",
      "ok": true,                  # no finding at all
      "records": 1234,             # records fed to the checker
      "redeliveries": 2,           # byte-for-byte repeats of a payment event (not findings)
      "checks": {"signature": {"checked": 1234, "failed": 0}, ...},
      "findings": [ {finding}, ... ],
      "findings_dropped": 0,       # findings past ``findings_max``: counted, not kept
      "errors": ["..."],           # what stopped a check from running at all
      "facts": {"tree_size": 1234, ...}   # figures of the run (names are stable)
    }

``exit_code``: 0 when every check ran and nothing was found; 1 when
anything was found (a finding is definitive, even if another check could
not run); 2 when nothing was found but a check could not run.

and of one finding (``Finding.to_json``)::

    {"topic": "...", "partition": 0, "offset": 17, "event_id": "..." or null,
     "check": "sequence", "reason": "gap", "detail": "...", "where": null}

``check`` is one of ``Check``; ``reason`` is a short machine-readable word for
the way the check failed (for ``decode`` and ``signature``, the
``InvalidEnvelope`` reason); ``detail`` is for people.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

REPORT_FORMAT: Final = "payledger-audit-report/1"
EXIT_OK: Final = 0
EXIT_FINDINGS: Final = 1
EXIT_ERROR: Final = 2
FINDINGS_MAX_DEFAULT: Final = 10_000  # findings kept in one report; the rest are counted
DETAIL_CHARS_MAX: Final = 500  # one finding's detail


class Check(StrEnum):
    """Every check the auditor makes, by the name it has in the report."""

    DECODE = "decode"  # the record decodes with its registered schema
    SIGNATURE = "signature"  # event -> signing key -> endorsement -> root
    ENDORSEMENT = "endorsement"  # a keys-topic record is a root-signed endorsement
    RECORD_KEY = "record-key"  # the Kafka key is the envelope's aggregate id
    POSTINGS_BALANCE = "postings-balance"  # per currency, debits equal credits
    SEQUENCE = "sequence"  # per payment: 1, 2, 3... with no gap, repeat or step back
    EVENT_ID = "event-id"  # one event id names one event
    TRANSITION = "transition"  # each status change is in the provider's table
    PROVIDER = "provider"  # a payment keeps its provider
    PARTITION = "partition"  # a payment's events share one partition
    # The Merkle log and its anchors (``ledger.audit.anchors``).
    LEAF = "leaf"  # every ledger record is a leaf, every leaf a record in Kafka
    BUNDLE = "bundle"  # each checkpoint's leaf bundle is published, readable, contiguous
    CHECKPOINT = "checkpoint"  # the note parses, its signatures verify, the record agrees
    CHECKPOINT_ROOT = "checkpoint-root"  # the root recomputed from the leaves is the note's
    CONSISTENCY = "consistency"  # each checkpoint extends the previous one (RFC 9162)
    CID = "cid"  # the IPFS CIDs recomputed from the published bytes
    TIMESTAMP = "timestamp"  # the OpenTimestamps proof commits to the note, in a block
    # The live read models (``projections.audit``).
    BALANCES = "balances"  # balances replayed from the log equal the live projection
    PROJECTION = "projection"  # projections rebuilt from the log equal the live ones


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing that does not verify, and where it is in the log."""

    topic: str
    partition: int
    offset: int
    event_id: str | None
    check: Check
    reason: str
    detail: str = ""
    # Where outside Kafka, when the thing found is not a record: a Postgres
    # row ("projections.account_balances account=... currency=..."), an IPFS
    # CID. Its topic, partition and offset are then those of the record the
    # thing comes from when one is known, or "" / -1 / -1.
    where: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "event_id": self.event_id,
            "check": self.check.value,
            "reason": self.reason,
            "detail": self.detail,
            "where": self.where,
        }


@dataclass(slots=True)
class Report:
    """Findings and, per check, how many records it checked and how many failed."""

    findings_max: int = FINDINGS_MAX_DEFAULT
    records: int = 0
    redeliveries: int = 0
    findings: list[Finding] = field(default_factory=list)
    findings_dropped: int = 0
    checked: Counter[Check] = field(default_factory=Counter)
    failed: Counter[Check] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    facts: dict[str, int | str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Every check ran and nothing was found."""
        return not self.findings and not self.findings_dropped and not self.errors

    @property
    def exit_code(self) -> int:
        if self.findings or self.findings_dropped:
            return EXIT_FINDINGS
        return EXIT_ERROR if self.errors else EXIT_OK

    def error(self, message: str) -> None:
        """A check that could not run (the input was unreachable, not wrong)."""
        self.errors.append(message[:DETAIL_CHARS_MAX])

    def merge(self, other: Report) -> None:
        """Add another report's counts, findings, errors and facts (numbers add up)."""
        self.records += other.records
        self.redeliveries += other.redeliveries
        self.checked.update(other.checked)
        self.failed.update(other.failed)
        room = max(self.findings_max - len(self.findings), 0)
        self.findings.extend(other.findings[:room])
        self.findings_dropped += other.findings_dropped + max(len(other.findings) - room, 0)
        self.errors.extend(other.errors)
        for name, value in other.facts.items():
            mine = self.facts.get(name)
            if isinstance(mine, int) and isinstance(value, int):
                self.facts[name] = mine + value
            else:
                self.facts[name] = value

    def passed(self, check: Check) -> None:
        self.checked[check] += 1

    def add(self, finding: Finding) -> None:
        self.checked[finding.check] += 1
        self.failed[finding.check] += 1
        if len(self.findings) < self.findings_max:
            detail = finding.detail[:DETAIL_CHARS_MAX]
            if detail != finding.detail:
                finding = dataclasses.replace(finding, detail=detail)
            self.findings.append(finding)
        else:
            self.findings_dropped += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "format": REPORT_FORMAT,
            "ok": self.ok,
            "records": self.records,
            "redeliveries": self.redeliveries,
            "checks": {
                check.value: {"checked": self.checked[check], "failed": self.failed[check]}
                for check in Check
            },
            "findings": [finding.to_json() for finding in self.findings],
            "findings_dropped": self.findings_dropped,
            "errors": list(self.errors),
            "facts": dict(self.facts),
        }

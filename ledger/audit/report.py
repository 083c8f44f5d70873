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
      "findings_dropped": 0        # findings past ``findings_max``: counted, not kept
    }

and of one finding (``Finding.to_json``)::

    {"topic": "...", "partition": 0, "offset": 17, "event_id": "..." or null,
     "check": "sequence", "reason": "gap", "detail": "..."}

``check`` is one of ``Check``; ``reason`` is a short machine-readable word for
the way the check failed (for ``decode`` and ``signature``, the
``InvalidEnvelope`` reason); ``detail`` is for people.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

REPORT_FORMAT: Final = "payledger-audit-report/1"
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

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "event_id": self.event_id,
            "check": self.check.value,
            "reason": self.reason,
            "detail": self.detail,
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

    @property
    def ok(self) -> bool:
        return not self.findings and not self.findings_dropped

    def passed(self, check: Check) -> None:
        self.checked[check] += 1

    def add(self, finding: Finding) -> None:
        self.checked[finding.check] += 1
        self.failed[finding.check] += 1
        if len(self.findings) < self.findings_max:
            detail = finding.detail[:DETAIL_CHARS_MAX]
            if detail != finding.detail:
                finding = Finding(
                    finding.topic,
                    finding.partition,
                    finding.offset,
                    finding.event_id,
                    finding.check,
                    finding.reason,
                    detail,
                )
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
        }

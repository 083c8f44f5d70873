"""The auditor's pure core: replay ledger records and report every finding.

An auditor trusts nothing but the root key. It feeds every record of every
ledger topic, from offset 0, to a ``LogChecker`` and reads the ``Report`` it
returns; Kafka, checkpoints and the command line live outside this package.
Modules::

    report    Finding, Check and Report: what was checked, what failed, as JSON
    balances  account balances replayed from the postings in the log
    checker   LogChecker: the streaming checks of one pass over the log
    anchors   AnchorChecker: checkpoints, bundles, CIDs, timestamps and leaves against records
"""

from ledger.audit.anchors import AnchorChecker, CheckpointRecord, RecordIndex
from ledger.audit.balances import Balances
from ledger.audit.checker import LogChecker, Record
from ledger.audit.report import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK, Check, Finding, Report

__all__ = [
    "EXIT_ERROR",
    "EXIT_FINDINGS",
    "EXIT_OK",
    "AnchorChecker",
    "Balances",
    "Check",
    "CheckpointRecord",
    "Finding",
    "LogChecker",
    "Record",
    "RecordIndex",
    "Report",
]

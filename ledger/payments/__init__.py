"""The payment domain core: one status model, per-provider transition tables, postings.

Pure code: no Kafka, no Faust, no I/O. ``status`` names the unified statuses
and their order, ``transitions`` maps each provider's events onto them and
lists the allowed transitions as data, ``postings`` is the chart of accounts
and the double-entry rules, and ``machine`` applies commands and provider
events to a ``PaymentState`` and says what to emit.

This module imports nothing, so ``ledger.envelope`` can import
``ledger.payments.status`` without a cycle.
"""

"""The limits of the projections, with their unit last in each name.

They live here rather than in ``ledger.limits`` because they concern only the
Postgres read models; each is explained where it is decided.
"""

from __future__ import annotations

from typing import Final

# One poll of the payment-events topic, projected in one Postgres transaction.
# The largest batch keeps a transaction short (well under a second of writes)
# while amortising its round trips and its commit over many events.
BATCH_RECORDS_MAX: Final = 1_000
BATCH_RECORDS_DEFAULT: Final = 500
# How long one poll waits for records before the loop looks at its stop flag.
POLL_TIMEOUT_MS: Final = 500
# Finding the partitions of the payment-events topic at start.
PARTITION_DISCOVERY_TIMEOUT_S: Final = 30.0

# Postgres.
POSTGRES_CONNECT_TIMEOUT_S: Final = 5
# A statement that runs longer is cancelled and the batch retried: a batch of
# BATCH_RECORDS_MAX events takes a fraction of a second.
POSTGRES_STATEMENT_TIMEOUT_MS: Final = 60_000
# Waits between tries while Postgres (or Kafka, for an audit fact) is
# unavailable: doubled after each failure, capped. Tries never run out: the
# applier waits for its database, and SIGTERM ends the wait.
RETRY_BACKOFF_BASE_S: Final = 0.2
RETRY_BACKOFF_MAX_S: Final = 5.0

# Waiting for the broker's acknowledgement of one audit fact or dead letter.
PUBLISH_TIMEOUT_S: Final = 30.0

# Schema names: Postgres identifiers are at most 63 bytes.
SCHEMA_NAME_CHARS_MAX: Final = 63

"""Every limit in one place, with its unit last in its name.

Exceeding a limit is an error the caller sees, never a silent truncation.
"""

from __future__ import annotations

from typing import Final

# Envelope and payloads.
ENVELOPE_BYTES_MAX: Final = 1_048_576  # one Kafka record value, wire format included
METADATA_ENTRIES_MAX: Final = 50
METADATA_KEY_CHARS_MAX: Final = 40
METADATA_VALUE_CHARS_MAX: Final = 500
DESCRIPTION_CHARS_MAX: Final = 1_000
AGGREGATE_ID_CHARS_MAX: Final = 64
EVENT_TYPE_CHARS_MAX: Final = 128

# Schema registry.
SCHEMA_BYTES_MAX: Final = 262_144
SCHEMA_REGISTRY_TIMEOUT_S: Final = 5.0
SCHEMA_CACHE_ENTRIES_MAX: Final = 1_024

# Keys.
SIGNING_KEY_LIFETIME_S_MAX: Final = 31 * 24 * 3600
CLOCK_SKEW_S_MAX: Final = 300

# Local infrastructure.
READINESS_TIMEOUT_S: Final = 90.0
SHUTDOWN_TIMEOUT_S: Final = 30.0

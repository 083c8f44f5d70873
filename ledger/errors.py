"""The one exception hierarchy of payledger.

    LedgerError                      anything payledger raises on purpose
    ├── ConfigurationError           settings that cannot work (bad path, missing key file)
    ├── InfrastructureError          a local service could not be installed, started or reached
    │   └── PortInUseError           a configured port is taken by a process that is not ours
    ├── SchemaError                  a schema that cannot be parsed, registered or resolved
    │   ├── UnknownSchemaError       a schema id or subject/version the registry does not know
    │   └── IncompatibleSchemaError  a schema change that breaks backward compatibility
    ├── EncodingError                a value that cannot be encoded (limit exceeded, bad field)
    ├── InvalidEnvelope              verification failed; ``reason`` says why (see Reason)
    └── KeyError_                    a key that cannot be loaded, endorsed or found

``InvalidEnvelope`` is the only error ``verify()`` raises: a caller that must
refuse bad input catches one type, and ``reason`` lets tests and dead-letter
records tell the cases apart without parsing messages.
"""

from __future__ import annotations

from enum import StrEnum


class LedgerError(Exception):
    """Base class of every error payledger raises on purpose."""


class ConfigurationError(LedgerError):
    pass


class InfrastructureError(LedgerError):
    pass


class PortInUseError(InfrastructureError):
    pass


class SchemaError(LedgerError):
    pass


class UnknownSchemaError(SchemaError):
    pass


class IncompatibleSchemaError(SchemaError):
    pass


class EncodingError(LedgerError):
    pass


class KeyError_(LedgerError):
    pass


class Reason(StrEnum):
    """Every way an envelope can fail verification."""

    TRUNCATED = "truncated"  # fewer bytes than the wire format or the schema needs
    BAD_MAGIC = "bad-magic"  # not Confluent wire format
    UNKNOWN_SCHEMA = "unknown-schema"  # schema id not in the registry
    WRONG_SCHEMA = "wrong-schema"  # schema id resolves, but not to an envelope schema
    MALFORMED = "malformed"  # decodes, but violates an envelope invariant
    TOO_LARGE = "too-large"  # over ENVELOPE_BYTES_MAX
    UNKNOWN_KEY = "unknown-key"  # signing key not endorsed by a trusted root
    EXPIRED_KEY = "expired-key"  # event recorded outside the key's validity window
    BAD_SIGNATURE = "bad-signature"  # signature does not verify
    BAD_ENDORSEMENT = "bad-endorsement"  # endorsement's root signatures do not verify


class InvalidEnvelope(LedgerError):
    """Verification failed. ``reason`` is machine-readable; the message is for people."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)

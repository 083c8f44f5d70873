"""CloudEvents 1.0 Kafka binary-mode headers and W3C ``traceparent`` for every record.

Binary mode keeps the record value as the Avro envelope and puts the event's
attributes in ``ce_*`` headers, so CloudEvents tooling can route on them
without decoding Avro. The attributes are a pure function of the envelope;
the CloudEvents SDK would need a CloudEvent object and a data marshaller per
record for the same six headers, so they are built here directly.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from datetime import UTC

from ledger.envelope import Envelope

SPEC_VERSION = b"1.0"
CONTENT_TYPE = b"application/avro"
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")

Headers = list[tuple[str, bytes]]

_random = random.Random()  # noqa: S311 - ids need uniqueness, not secrecy


def _span_id() -> str:
    return f"{_random.getrandbits(64) or 1:016x}"


@dataclass(frozen=True, slots=True)
class TraceContext:
    """A W3C trace context: the trace a record belongs to and the span that made it."""

    trace_id: str
    span_id: str
    flags: str = "01"

    @classmethod
    def new(cls) -> TraceContext:
        # Trace ids must be unique, not secret: a PRNG avoids a system call per record.
        return cls(f"{_random.getrandbits(128):032x}", _span_id())

    @classmethod
    def parse(cls, header: str | bytes | None) -> TraceContext | None:
        """The context in a ``traceparent`` header, or None when absent or malformed."""
        if header is None:
            return None
        text = header.decode("ascii", "replace") if isinstance(header, bytes) else header
        match = _TRACEPARENT.match(text.strip())
        if match is None or set(match.group(1)) == {"0"} or set(match.group(2)) == {"0"}:
            return None
        return cls(match.group(1), match.group(2), match.group(3))

    def child(self) -> TraceContext:
        """A new span in the same trace, for the record this process emits."""
        return TraceContext(self.trace_id, _span_id(), self.flags)

    def header(self) -> bytes:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}".encode("ascii")


def _rfc3339(envelope: Envelope) -> bytes:
    moment = envelope.recorded_at.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode("ascii")


def kafka_headers(
    envelope: Envelope,
    *,
    source: str,
    trace: TraceContext,
    dataschema: str | None = None,
) -> Headers:
    """Headers for one record: CloudEvents binary mode plus ``traceparent``."""
    headers: Headers = [
        ("ce_specversion", SPEC_VERSION),
        ("ce_id", envelope.event_id.encode("ascii")),
        ("ce_type", envelope.event_type.encode("utf-8")),
        ("ce_source", source.encode("utf-8")),
        ("ce_time", _rfc3339(envelope)),
        ("ce_subject", envelope.aggregate_id.encode("utf-8")),
        ("content-type", CONTENT_TYPE),
        ("traceparent", trace.header()),
    ]
    if dataschema is not None:
        headers.append(("ce_dataschema", dataschema.encode("utf-8")))
    return headers


def header_value(headers: Headers | tuple[tuple[str, bytes], ...], name: str) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None

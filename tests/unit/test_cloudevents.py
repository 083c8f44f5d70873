from __future__ import annotations

from ledger.cloudevents import TraceContext, header_value, kafka_headers
from tests.support import events


def test_binary_mode_headers() -> None:
    envelope = events.create_command()
    trace = TraceContext.new()
    headers = kafka_headers(
        envelope, source="/payledger/ingress", trace=trace, dataschema="http://r/schemas/ids/1"
    )
    assert header_value(headers, "ce_specversion") == b"1.0"
    assert header_value(headers, "ce_id") == envelope.event_id.encode()
    assert header_value(headers, "ce_type") == b"payment.command.create"
    assert header_value(headers, "ce_source") == b"/payledger/ingress"
    assert header_value(headers, "ce_time") == b"2026-11-23T12:00:00.123456Z"
    assert header_value(headers, "ce_subject") == b"pay_0001"
    assert header_value(headers, "content-type") == b"application/avro"
    assert header_value(headers, "ce_dataschema") == b"http://r/schemas/ids/1"
    assert TraceContext.parse(header_value(headers, "traceparent")) == trace


def test_traceparent_parsing() -> None:
    good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    parsed = TraceContext.parse(good)
    assert parsed is not None and parsed.header().decode() == good
    child = parsed.child()
    assert child.trace_id == parsed.trace_id and child.span_id != parsed.span_id
    for bad in (
        None,
        "",
        "garbage",
        good.upper(),
        "00-" + "0" * 32 + "-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01",
    ):
        assert TraceContext.parse(bad) is None

"""Envelopes to and from Confluent wire format, signing on the way out.

Wire format: magic byte 0, the 4-byte big-endian schema id, then the Avro
binary encoding of the envelope (fastavro, schemaless). Standard Confluent
deserializers read it with our registry.

Signed bytes: ``SIGNING_CONTEXT || SHA-256(writer schema canonical form) ||
Avro(envelope with an empty signature)``. Because ``signature`` is the last
field, the Avro encoding of the signed record is the signed bytes' tail with
the final empty-bytes marker (0x00) replaced by the signature's length and
value. So signing encodes once, and verification needs no re-encoding: it
rebuilds the signed bytes by slicing the record it received.
"""

from __future__ import annotations

import io
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import fastavro

from ledger import limits, schemas
from ledger.envelope import Envelope
from ledger.errors import EncodingError, InvalidEnvelope, Reason, SchemaError, UnknownSchemaError
from ledger.registry import SchemaRegistry, value_subject
from ledger.signing import Signer

MAGIC = 0
HEADER = struct.Struct(">bI")
SIGNING_CONTEXT = b"payledger/envelope/v1\x00"
_EMPTY_BYTES = b"\x00"  # Avro encoding of b"": zig-zag length 0


def avro_length(length: int) -> bytes:
    """Avro's zig-zag varint of a non-negative length."""
    value = length << 1
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@dataclass(frozen=True, slots=True)
class WriterSchema:
    schema_id: int
    parsed: Any
    fingerprint: bytes


@dataclass(frozen=True, slots=True)
class Prepared:
    """An encoded, not yet signed envelope and the exact bytes to sign."""

    envelope: Envelope
    key_id: str
    schema_id: int
    body: bytes = field(repr=False)
    message: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded, not yet verified envelope and the exact bytes its signature covers."""

    envelope: Envelope
    schema_id: int
    signed_message: bytes


class EnvelopeCodec:
    """Encodes with the newest envelope schema; decodes any registered envelope version."""

    def __init__(
        self, registry: SchemaRegistry, schema: schemas.SchemaVersion | None = None
    ) -> None:
        self._registry = registry
        self._schema = schema or schemas.current()
        self._subject_ids: dict[str, int] = {}
        self._writers: OrderedDict[int, WriterSchema | None] = OrderedDict()

    @property
    def schema(self) -> schemas.SchemaVersion:
        return self._schema

    def schema_id(self, topic: str) -> int:
        """Register the envelope schema under the topic's value subject, once per codec."""
        schema_id = self._subject_ids.get(topic)
        if schema_id is None:
            schema_id = self._registry.register(value_subject(topic), self._schema.text)
            self._subject_ids[topic] = schema_id
            self._remember(
                schema_id, WriterSchema(schema_id, self._schema.parsed, self._schema.fingerprint)
            )
        return schema_id

    # Encoding ---------------------------------------------------------------

    def encode(self, envelope: Envelope, signer: Signer, topic: str) -> tuple[Envelope, bytes]:
        """Sign and encode; returns the signed envelope and its wire bytes."""
        prepared = self.prepare(envelope, signer.key_id, topic)
        return self.seal(prepared, signer.sign(prepared.message))

    def prepare(self, envelope: Envelope, key_id: str, topic: str) -> Prepared:
        """Encode once and return the bytes to sign; ``seal`` adds the signature.

        Split in two so a caller can sign many prepared records elsewhere (a
        worker thread, an HSM session) while it prepares the next ones.
        """
        schema_id = self.schema_id(topic)
        record = envelope.to_avro()
        record["signing_key_id"] = key_id
        record["signature"] = b""
        buffer = io.BytesIO()
        try:
            fastavro.schemaless_writer(buffer, self._schema.parsed, record)
        except (ValueError, TypeError, KeyError, OverflowError) as error:
            raise EncodingError(f"envelope does not fit the schema: {error}") from error
        body = buffer.getvalue()
        # Programmer error, not input error: the schema invariant guarantees it.
        assert body[-1:] == _EMPTY_BYTES, "signature must be the last envelope field"
        if len(body) + HEADER.size + 66 > limits.ENVELOPE_BYTES_MAX:
            raise EncodingError(f"envelope is over {limits.ENVELOPE_BYTES_MAX} bytes")
        message = SIGNING_CONTEXT + self._schema.fingerprint + body
        return Prepared(envelope, key_id, schema_id, body, message)

    def seal(self, prepared: Prepared, signature: bytes) -> tuple[Envelope, bytes]:
        """The signed envelope and its wire bytes."""
        wire = b"".join(
            (
                HEADER.pack(MAGIC, prepared.schema_id),
                prepared.body[:-1],
                avro_length(len(signature)),
                signature,
            )
        )
        if len(wire) > limits.ENVELOPE_BYTES_MAX:
            raise EncodingError(f"envelope is {len(wire)} bytes, over {limits.ENVELOPE_BYTES_MAX}")
        return prepared.envelope.signed_by(prepared.key_id, signature), wire

    # Decoding ---------------------------------------------------------------

    def decode(self, wire: bytes) -> Decoded:
        """Parse wire bytes; raises ``InvalidEnvelope`` and nothing else."""
        if len(wire) > limits.ENVELOPE_BYTES_MAX:
            raise InvalidEnvelope(Reason.TOO_LARGE, f"{len(wire)} bytes")
        if len(wire) < HEADER.size + 1:
            raise InvalidEnvelope(Reason.TRUNCATED, f"{len(wire)} bytes")
        magic, schema_id = HEADER.unpack_from(wire)
        if magic != MAGIC:
            raise InvalidEnvelope(Reason.BAD_MAGIC, f"magic byte {magic}")
        writer = self._writer(schema_id)
        stream = io.BytesIO(wire)
        stream.seek(HEADER.size)
        try:
            record = fastavro.schemaless_reader(
                stream,
                writer.parsed,
                self._schema.parsed if writer.parsed is not self._schema.parsed else None,
                return_record_name=True,
                return_record_name_override=True,
            )
        except (EOFError, StopIteration, IndexError, struct.error) as error:
            raise InvalidEnvelope(Reason.TRUNCATED, repr(error)) from error
        except (ValueError, TypeError, KeyError, UnicodeDecodeError, OverflowError) as error:
            raise InvalidEnvelope(Reason.MALFORMED, repr(error)) from error
        if stream.tell() != len(wire):
            raise InvalidEnvelope(Reason.MALFORMED, f"{len(wire) - stream.tell()} trailing bytes")
        if not isinstance(record, dict):
            raise InvalidEnvelope(Reason.MALFORMED, "an envelope decodes to a record")
        try:
            envelope = Envelope.from_avro(record)
        except (EncodingError, ValueError, TypeError, KeyError) as error:
            raise InvalidEnvelope(Reason.MALFORMED, str(error)) from error
        tail = avro_length(len(envelope.signature)) + envelope.signature
        body = wire[HEADER.size : len(wire) - len(tail)] + _EMPTY_BYTES
        return Decoded(envelope, schema_id, SIGNING_CONTEXT + writer.fingerprint + body)

    def _writer(self, schema_id: int) -> WriterSchema:
        if schema_id in self._writers:
            writer = self._writers[schema_id]
            self._writers.move_to_end(schema_id)
        else:
            writer = self._load_writer(schema_id)
            self._remember(schema_id, writer)
        if writer is None:
            raise InvalidEnvelope(Reason.WRONG_SCHEMA, f"schema {schema_id} is not an envelope")
        return writer

    def _load_writer(self, schema_id: int) -> WriterSchema | None:
        try:
            text = self._registry.schema_by_id(schema_id)
        except UnknownSchemaError as error:
            raise InvalidEnvelope(Reason.UNKNOWN_SCHEMA, f"schema id {schema_id}") from error
        try:
            parsed, fingerprint = schemas.parse_text(text)
        except SchemaError:
            return None
        if fingerprint == self._schema.fingerprint:
            # The writer is our own schema: decoding with its parsed form
            # (the same object) skips Avro schema resolution.
            return WriterSchema(schema_id, self._schema.parsed, fingerprint)
        is_envelope = (
            isinstance(parsed, dict)
            and parsed.get("name") == schemas.ENVELOPE_NAME
            and parsed["fields"][-1]["name"] == "signature"
        )
        return WriterSchema(schema_id, parsed, fingerprint) if is_envelope else None

    def _remember(self, schema_id: int, writer: WriterSchema | None) -> None:
        self._writers[schema_id] = writer
        while len(self._writers) > limits.SCHEMA_CACHE_ENTRIES_MAX:
            self._writers.popitem(last=False)

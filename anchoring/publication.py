"""Checkpoints as records of the checkpoints topic: the ``io.payledger.Checkpoint`` Avro record.

A checkpoint is not wrapped in the signed envelope: its note carries its own
signatures (Ed25519 and ML-DSA-87), which is what a verifier checks. The
record is in Confluent wire format (magic byte 0, the 4-byte schema id, Avro
binary), its schema registered under the topic's value subject, so standard
Avro consumers read it; its key is the tree size in ASCII decimal. The event
id is derived from the origin and the size, so publishing a checkpoint again
(a retry after a crash) gives the very same record; a later record for the
same size adds the IPFS CIDs and timestamp proof (optional fields): the
anchored record, published once the checkpoint's hooks stored them, with an
event id of its own (``anchored_event_id``), as deterministic as the first.

The schema is the ``io.payledger.Checkpoint.avsc`` of the newest version
directory of ``schemas/`` that holds one.
"""

from __future__ import annotations

import io
import json
from datetime import UTC
from pathlib import Path
from typing import Any, Final

import fastavro
import fastavro.schema

from anchoring.pgstore import Anchors, StoredCheckpoint
from ledger import schemas
from ledger.cloudevents import CONTENT_TYPE, SPEC_VERSION, TraceContext
from ledger.codec import HEADER, MAGIC
from ledger.envelope import derived_event_id
from ledger.errors import SchemaError
from ledger.registry import SchemaRegistry, value_subject

CHECKPOINT_SCHEMA_NAME: Final = "io.payledger.Checkpoint"
EVENT_TYPE: Final = "anchoring.checkpoint"
SOURCE: Final = "payledger/anchoring"


def checkpoint_schema_text(directory: Path = schemas.SCHEMAS_DIR) -> str:
    """The newest Checkpoint schema, every named type inline, as registered."""
    for version in reversed(schemas.version_numbers(directory)):
        path = directory / f"v{version}" / f"{CHECKPOINT_SCHEMA_NAME}.avsc"
        if path.exists():
            try:
                expanded = fastavro.schema.load_schema(str(path), _write_hint=False)
            except (OSError, ValueError, TypeError, KeyError) as error:
                raise SchemaError(f"{path}: {error}") from error
            return json.dumps(expanded, separators=(",", ":"), sort_keys=True)
    raise SchemaError(f"{directory}: no {CHECKPOINT_SCHEMA_NAME}.avsc in any version")


def checkpoint_event_id(origin: str, size: int) -> str:
    return derived_event_id("anchoring.checkpoint", origin, str(size))


def anchored_event_id(origin: str, size: int) -> str:
    return derived_event_id("anchoring.checkpoint", origin, str(size), "anchored")


def record_event_id(stored: StoredCheckpoint, anchors: Anchors | None) -> str:
    if anchors is None:
        return checkpoint_event_id(stored.origin, stored.size)
    return anchored_event_id(stored.origin, stored.size)


def checkpoint_record(stored: StoredCheckpoint, anchors: Anchors | None = None) -> dict[str, Any]:
    """The record of a checkpoint; with ``anchors``, the anchored record."""
    return {
        "event_id": record_event_id(stored, anchors),
        "origin": stored.origin,
        "tree_size": stored.size,
        "root_hash": stored.root_hash,
        "note": stored.note,
        "previous_size": stored.previous_size,
        "consistency_proof": list(stored.consistency_proof),
        "created_at": stored.created_at,
        "checkpoint_cid": None if anchors is None else anchors.checkpoint_cid,
        "bundle_cid": None if anchors is None else anchors.bundle_cid,
        "timestamp_proof": None if anchors is None else anchors.timestamp_proof,
    }


class CheckpointEncoder:
    """Checkpoint records in Confluent wire format for one topic."""

    def __init__(self, registry: SchemaRegistry, topic: str) -> None:
        self._registry = registry
        self._topic = topic
        self._text = checkpoint_schema_text()
        self._parsed = fastavro.parse_schema(json.loads(self._text))
        self._schema_id: int | None = None

    @property
    def parsed_schema(self) -> Any:
        return self._parsed

    def encode(self, stored: StoredCheckpoint, anchors: Anchors | None = None) -> bytes:
        if self._schema_id is None:
            self._schema_id = self._registry.register(value_subject(self._topic), self._text)
        buffer = io.BytesIO()
        buffer.write(HEADER.pack(MAGIC, self._schema_id))
        fastavro.schemaless_writer(buffer, self._parsed, checkpoint_record(stored, anchors))
        return buffer.getvalue()

    def decode(self, wire: bytes) -> dict[str, Any]:
        """A record this encoder wrote (for tests and tools reading the topic back)."""
        magic, schema_id = HEADER.unpack_from(wire)
        if magic != MAGIC:
            raise SchemaError(f"magic byte {magic}")
        writer = fastavro.parse_schema(json.loads(self._registry.schema_by_id(schema_id)))
        stream = io.BytesIO(wire)
        stream.seek(HEADER.size)
        record = fastavro.schemaless_reader(stream, writer, self._parsed)
        if not isinstance(record, dict):
            raise SchemaError("a checkpoint decodes to a record")
        return record

    def headers(
        self, stored: StoredCheckpoint, anchors: Anchors | None = None
    ) -> list[tuple[str, bytes]]:
        """CloudEvents binary-mode headers, as on every payledger record."""
        moment = stored.created_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return [
            ("ce_specversion", SPEC_VERSION),
            ("ce_id", record_event_id(stored, anchors).encode("ascii")),
            ("ce_type", EVENT_TYPE.encode()),
            ("ce_source", SOURCE.encode()),
            ("ce_time", moment.encode("ascii")),
            ("ce_subject", str(stored.size).encode()),
            ("content-type", CONTENT_TYPE),
            ("traceparent", TraceContext.new().header()),
        ]

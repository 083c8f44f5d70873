"""The Avro schemas in ``schemas/``: one directory per version, ``v1``, ``v2``...

Each version directory holds one ``.avsc`` file per named type, named by the
type's full name, so fastavro resolves references between files. The newest
version is what producers write; every older one must stay readable by every
newer one (backward transitive, checked in the test suite).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import fastavro.schema

from ledger.errors import SchemaError

SCHEMAS_DIR = Path(__file__).resolve().parent.parent / "schemas"
ENVELOPE_NAME = "io.payledger.Envelope"
_VERSION_DIR = re.compile(r"^v([1-9][0-9]*)$")


def fingerprint(parsed: Any) -> bytes:
    """SHA-256 of the schema's Avro Parsing Canonical Form.

    Registry ids differ between registries; this fingerprint does not, so it is
    what the envelope signature binds the writer schema with.
    """
    canonical = fastavro.schema.to_parsing_canonical_form(parsed)
    return hashlib.sha256(canonical.encode("utf-8")).digest()


@dataclass(frozen=True, slots=True)
class SchemaVersion:
    """One version of the envelope schema, self-contained."""

    version: int
    text: str  # the JSON registered with the registry: every named type inline
    parsed: Any = field(repr=False)
    fingerprint: bytes = field(repr=False)


def parse_text(text: str) -> tuple[Any, bytes]:
    """Parse a self-contained schema text; returns (parsed schema, fingerprint)."""
    try:
        parsed = fastavro.schema.parse_schema(json.loads(text))
    except (ValueError, TypeError, KeyError) as error:
        raise SchemaError(f"schema does not parse: {error}") from error
    return parsed, fingerprint(parsed)


def load_version(directory: Path, version: int) -> SchemaVersion:
    path = directory / f"v{version}" / f"{ENVELOPE_NAME}.avsc"
    try:
        expanded = fastavro.schema.load_schema(str(path), _write_hint=False)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise SchemaError(f"{path}: {error}") from error
    text = json.dumps(expanded, separators=(",", ":"), sort_keys=True)
    parsed, digest = parse_text(text)
    _check_envelope_shape(parsed, path)
    return SchemaVersion(version=version, text=text, parsed=parsed, fingerprint=digest)


def _check_envelope_shape(parsed: Any, path: Path) -> None:
    # The signing code relies on the signature being the last field: the bytes
    # signed are then the record's encoding with that one field empty.
    last = parsed["fields"][-1]
    if last["name"] != "signature" or last["type"] != "bytes":
        raise SchemaError(f"{path}: the last envelope field must be 'signature' of type bytes")


def version_numbers(directory: Path = SCHEMAS_DIR) -> list[int]:
    numbers = []
    for entry in directory.iterdir():
        match = _VERSION_DIR.match(entry.name)
        if entry.is_dir() and match:
            numbers.append(int(match.group(1)))
    if not numbers:
        raise SchemaError(f"{directory}: no schema version directories (v1, v2, ...)")
    return sorted(numbers)


def all_versions(directory: Path = SCHEMAS_DIR) -> list[SchemaVersion]:
    return [load_version(directory, number) for number in version_numbers(directory)]


@cache
def current() -> SchemaVersion:
    """The envelope schema producers write: the newest version in ``schemas/``."""
    return load_version(SCHEMAS_DIR, version_numbers(SCHEMAS_DIR)[-1])

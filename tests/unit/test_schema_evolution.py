"""Every schema version in schemas/ stays readable by every later one (backward transitive).

Two checks per pair: the structural rules of Avro schema resolution, and a
data round trip (records generated from the old schema, written with it,
read with the new one). A breaking change must fail both ways it can.
"""

from __future__ import annotations

import io
import itertools
import json
import shutil
from pathlib import Path

import fastavro
import pytest
from fastavro.utils import generate_many

from ledger import compat, schemas

VERSIONS = schemas.all_versions()


def evolution_problems(directory: Path) -> list[str]:
    """Every backward-transitive break between the versions in a schemas directory."""
    found = []
    versions = schemas.all_versions(directory)
    for old, new in itertools.combinations(versions, 2):
        for problem in compat.problems(new.parsed, old.parsed):
            found.append(f"v{old.version} -> v{new.version}: {problem}")
        for record in generate_many(old.parsed, 50):
            buffer = io.BytesIO()
            fastavro.schemaless_writer(buffer, old.parsed, record)
            buffer.seek(0)
            try:
                fastavro.schemaless_reader(buffer, old.parsed, new.parsed)
            except Exception as error:
                found.append(f"v{old.version} -> v{new.version}: data: {error!r}")
                break
    return found


def test_the_repository_schemas_are_backward_transitive() -> None:
    assert VERSIONS, "schemas/ must hold at least v1"
    assert evolution_problems(schemas.SCHEMAS_DIR) == []


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"v{v.version}")
def test_each_version_reads_itself(version: schemas.SchemaVersion) -> None:
    assert compat.problems(version.parsed, version.parsed) == []


def _evolve(tmp_path: Path, edit) -> Path:
    """A copy of schemas/ with a v(N+1) made by applying ``edit`` to the newest envelope."""
    directory = tmp_path / "schemas"
    shutil.copytree(schemas.SCHEMAS_DIR, directory)
    newest = schemas.version_numbers(directory)[-1]
    target = directory / f"v{newest + 1}"
    shutil.copytree(directory / f"v{newest}", target)
    for path in target.glob("*.avsc"):
        document = json.loads(path.read_text())
        edit(path.name.removesuffix(".avsc"), document)
        path.write_text(json.dumps(document))
    return directory


def _field(document: dict, name: str) -> dict:
    return next(field for field in document["fields"] if field["name"] == name)


def test_adding_an_optional_field_is_compatible(tmp_path: Path) -> None:
    def edit(name: str, document: dict) -> None:
        if name == "io.payledger.AuditFact":
            document["fields"].append(
                {"name": "ticket", "type": ["null", "string"], "default": None}
            )

    assert evolution_problems(_evolve(tmp_path, edit)) == []


def test_adding_a_payload_type_is_compatible(tmp_path: Path) -> None:
    def edit(name: str, document: dict) -> None:
        if name == "io.payledger.Envelope":
            _field(document, "payload")["type"].append(
                {
                    "type": "record",
                    "name": "Checkpoint",
                    "fields": [{"name": "size", "type": "long"}],
                }
            )

    assert evolution_problems(_evolve(tmp_path, edit)) == []


@pytest.mark.parametrize(
    ("case", "edit"),
    [
        (
            "required field added",
            lambda name, doc: (
                name == "io.payledger.Money"
                and doc["fields"].append({"name": "scale", "type": "int"})
            ),
        ),
        (
            "long narrowed to int",
            lambda name, doc: (
                name == "io.payledger.Money" and _field(doc, "amount_minor").update(type="int")
            ),
        ),
        (
            "enum symbol removed",
            lambda name, doc: name == "io.payledger.Provider" and doc["symbols"].remove("COINBASE"),
        ),
        (
            "payload type removed",
            lambda name, doc: (
                name == "io.payledger.Envelope"
                and _field(doc, "payload")["type"].remove("io.payledger.AuditFact")
            ),
        ),
        (
            "string changed to long",
            lambda name, doc: (
                name == "io.payledger.ProviderEvent"
                and _field(doc, "provider_event_id").update(type="long")
            ),
        ),
        (
            "fixed size changed",
            lambda name, doc: name == "io.payledger.Sha256" and doc.update(size=64),
        ),
    ],
)
def test_breaking_changes_fail(tmp_path: Path, case: str, edit) -> None:
    problems = evolution_problems(_evolve(tmp_path, edit))
    assert problems, f"{case} was not detected"


def test_signature_must_stay_last(tmp_path: Path) -> None:
    def edit(name: str, document: dict) -> None:
        if name == "io.payledger.Envelope":
            document["fields"].append({"name": "extra", "type": "string", "default": ""})

    with pytest.raises(schemas.SchemaError, match="last envelope field"):
        schemas.all_versions(_evolve(tmp_path, edit))

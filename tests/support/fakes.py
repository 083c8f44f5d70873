"""An in-memory schema registry with the same interface as the real ones."""

from __future__ import annotations

from typing import Literal

from fastavro.schema import parse_schema, to_parsing_canonical_form

from ledger.errors import UnknownSchemaError
from ledger.registry import RegisteredSchema


class MemoryRegistry:
    def __init__(self) -> None:
        self._by_id: dict[int, str] = {}
        self._by_canonical: dict[str, int] = {}
        self._subjects: dict[str, list[int]] = {}

    def register(self, subject: str, schema: str) -> int:
        import json

        canonical = to_parsing_canonical_form(parse_schema(json.loads(schema)))
        schema_id = self._by_canonical.get(canonical)
        if schema_id is None:
            schema_id = len(self._by_id) + 1
            self._by_id[schema_id] = schema
            self._by_canonical[canonical] = schema_id
        versions = self._subjects.setdefault(subject, [])
        if schema_id not in versions:
            versions.append(schema_id)
        return schema_id

    def schema_by_id(self, schema_id: int) -> str:
        try:
            return self._by_id[schema_id]
        except KeyError:
            raise UnknownSchemaError(f"schema {schema_id}") from None

    def subjects(self) -> list[str]:
        return sorted(self._subjects)

    def versions(self, subject: str) -> list[int]:
        if subject not in self._subjects:
            raise UnknownSchemaError(subject)
        return list(range(1, len(self._subjects[subject]) + 1))

    def close(self) -> None:
        pass

    def get_version(self, subject: str, version: int | Literal["latest"]) -> RegisteredSchema:
        ids = self._subjects.get(subject)
        if not ids:
            raise UnknownSchemaError(subject)
        index = len(ids) if version == "latest" else version
        if not 1 <= index <= len(ids):
            raise UnknownSchemaError(f"{subject} version {version}")
        schema_id = ids[index - 1]
        return RegisteredSchema(subject, index, schema_id, self._by_id[schema_id])

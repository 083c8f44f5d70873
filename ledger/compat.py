"""Backward compatibility of Avro schemas, by the resolution rules of the Avro spec.

A change is backward compatible when a consumer holding the *new* schema (the
reader) can decode every record written with an *old* one (the writer).
fastavro resolves schemas at read time but has no checker, and a data
round-trip alone misses branches that random data never takes, so the rules
are checked structurally here. ``problems()`` lists every incompatibility
with its path; an empty list means compatible.
"""

from __future__ import annotations

from typing import Any

Schema = Any  # a schema as fastavro's parse_schema/load_schema returns it

_PROMOTIONS: dict[str, set[str]] = {
    "int": {"int", "long", "float", "double"},
    "long": {"long", "float", "double"},
    "float": {"float", "double"},
    "double": {"double"},
    "string": {"string", "bytes"},
    "bytes": {"bytes", "string"},
    "boolean": {"boolean"},
    "null": {"null"},
}
_NAMED = ("record", "enum", "fixed", "error")


def _collect_named(schema: Schema, into: dict[str, Schema]) -> None:
    if isinstance(schema, list):
        for branch in schema:
            _collect_named(branch, into)
    elif isinstance(schema, dict):
        kind = schema["type"]
        if kind in _NAMED:
            into.setdefault(schema["name"], schema)
        if kind in ("record", "error"):
            for field in schema["fields"]:
                _collect_named(field["type"], into)
        elif kind == "array":
            _collect_named(schema["items"], into)
        elif kind == "map":
            _collect_named(schema["values"], into)
        elif isinstance(kind, (dict, list)):
            _collect_named(kind, into)


class _Checker:
    def __init__(self, reader: Schema, writer: Schema) -> None:
        self.reader_names: dict[str, Schema] = {}
        self.writer_names: dict[str, Schema] = {}
        _collect_named(reader, self.reader_names)
        _collect_named(writer, self.writer_names)
        self.seen: set[tuple[str, str]] = set()
        self.problems: list[str] = []

    def _resolve(self, schema: Schema, names: dict[str, Schema]) -> Schema:
        while True:
            if isinstance(schema, str) and schema in names:
                schema = names[schema]
            elif (
                isinstance(schema, dict)
                and isinstance(schema["type"], (str, list, dict))
                and (schema["type"] not in _NAMED and schema["type"] not in ("array", "map"))
            ):
                # {"type": "long", "logicalType": ...} reads like its underlying type.
                schema = schema["type"]
            else:
                return schema

    @staticmethod
    def _kind(schema: Schema) -> str:
        if isinstance(schema, list):
            return "union"
        if isinstance(schema, dict):
            return str(schema["type"])
        return str(schema)

    def readable(self, reader: Schema, writer: Schema) -> bool:
        """Whether the reader can read the writer, without recording problems."""
        saved, self.problems = self.problems, []
        self.check(reader, writer, "")
        ok = not self.problems
        self.problems = saved
        return ok

    def check(self, reader: Schema, writer: Schema, path: str) -> None:
        reader = self._resolve(reader, self.reader_names)
        writer = self._resolve(writer, self.writer_names)
        reader_kind, writer_kind = self._kind(reader), self._kind(writer)

        if writer_kind == "union":
            for index, branch in enumerate(writer):
                self.check(reader, branch, f"{path}[writer branch {index}]")
            return
        if reader_kind == "union":
            if not any(self.readable(branch, writer) for branch in reader):
                self.problems.append(f"{path}: no branch of the reader union reads {writer_kind}")
            return
        if writer_kind in _PROMOTIONS:
            if reader_kind not in _PROMOTIONS[writer_kind]:
                self.problems.append(f"{path}: {writer_kind} cannot be read as {reader_kind}")
            return
        if reader_kind != writer_kind:
            self.problems.append(f"{path}: {writer_kind} cannot be read as {reader_kind}")
            return
        if reader_kind == "array":
            self.check(reader["items"], writer["items"], f"{path}[]")
        elif reader_kind == "map":
            self.check(reader["values"], writer["values"], f"{path}{{}}")
        elif reader_kind in _NAMED:
            self._check_named(reader, writer, path)

    def _check_named(self, reader: Schema, writer: Schema, path: str) -> None:
        reader_name, writer_name = reader["name"], writer["name"]
        if writer_name != reader_name and writer_name not in reader.get("aliases", []):
            self.problems.append(f"{path}: named type {writer_name} read as {reader_name}")
            return
        if (reader_name, writer_name) in self.seen:
            return  # recursive types: already being checked higher up
        self.seen.add((reader_name, writer_name))
        where = f"{path}{reader_name}"
        kind = reader["type"]
        if kind == "fixed":
            if reader["size"] != writer["size"]:
                self.problems.append(f"{where}: fixed size {writer['size']} -> {reader['size']}")
        elif kind == "enum":
            missing = set(writer["symbols"]) - set(reader["symbols"])
            if missing and "default" not in reader:
                self.problems.append(
                    f"{where}: enum symbols removed without default: {sorted(missing)}"
                )
        else:
            writer_fields = {field["name"]: field for field in writer["fields"]}
            for field in reader["fields"]:
                names = [field["name"], *field.get("aliases", [])]
                match = next((writer_fields[n] for n in names if n in writer_fields), None)
                if match is None:
                    if "default" not in field:
                        self.problems.append(f"{where}.{field['name']}: new field without default")
                    continue
                self.check(field["type"], match["type"], f"{where}.{field['name']}: ")


def problems(reader: Schema, writer: Schema) -> list[str]:
    """Every reason the reader schema cannot read data written with the writer schema."""
    checker = _Checker(reader, writer)
    checker.check(reader, writer, "")
    return checker.problems

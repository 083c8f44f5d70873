"""Numbered SQL migration files and schema names, shared by the services that keep Postgres schemas.

Files and names only: applying a migration needs a database driver, which
each service brings (``ledger`` imports no psycopg). A migration file is
``NNN_name.sql``; its checksum is recorded when applied, so a file changed
afterwards is refused.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ledger.errors import ConfigurationError, InfrastructureError

SCHEMA_NAME_CHARS_MAX: Final = 63  # Postgres's identifier length
_MIGRATION = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
# Lower-case identifiers only: they never need quoting in a psql session, and
# Postgres's own namespaces stay out of reach.
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]*$")
_RESERVED_SCHEMAS: Final = frozenset({"public", "information_schema"})


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migration_files(directory: Path, what: str) -> list[Migration]:
    """The migration files of ``directory``, in order; refuses misnamed or duplicate ones.

    ``what`` names them in errors ("projection", "anchoring", ...).
    """
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION.match(path.name)
        if match is None:
            raise InfrastructureError(f"{path.name}: migration files are named NNN_name.sql")
        found.append(Migration(int(match.group(1)), path.name, path.read_text()))
    versions = [migration.version for migration in found]
    if len(set(versions)) != len(versions):
        raise InfrastructureError(f"two {what} migrations share a number")
    return found


def check_schema_name(schema: str, what: str, chars_max: int = SCHEMA_NAME_CHARS_MAX) -> str:
    """``schema`` when it may name a schema of ours; else ``ConfigurationError`` naming ``what``."""
    if (
        not 0 < len(schema) <= chars_max
        or not _SCHEMA.match(schema)
        or schema.startswith("pg_")
        or schema in _RESERVED_SCHEMAS
    ):
        raise ConfigurationError(
            f"{schema[:80]!r} is not {what} schema name: lower-case letters, digits and"
            f" underscores, at most {chars_max} characters, not starting with a digit or pg_,"
            " not public"
        )
    return schema

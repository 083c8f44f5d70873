"""The schema registry: Avro schemas by global id and by subject and version.

One Protocol, two implementations, and ``open_registry`` to pick one from the settings:

* ``FileSchemaRegistry``, the built-in registry: a directory under the state dir that
  several processes (the HTTP ingress, producers, tests) open at the same time.
* ``HttpSchemaRegistry``, a client for an external Confluent-compatible registry.

An id, once handed out, names the same schema text forever, so both cache schemas by id
(bounded by ``SCHEMA_CACHE_ENTRIES_MAX``) and a cached lookup never touches disk or network.

What counts as "the same schema". Like Confluent, one schema gets one id in every subject,
and registering it again under a subject returns that id without a new version. Two texts
are the same schema when their Avro Parsing Canonical Forms are equal *and* they agree on
every attribute the canonical form strips, ``doc`` and ``namespace`` excepted (the canonical
form already folds namespaces into full names). The canonical form alone is blind to
``logicalType``, ``precision``, ``scale`` and ``default``: it would give ``decimal(10,2)`` and
``decimal(12,4)`` one id, and a reader handed the wrong text would misread every amount, or
let a schema that only adds a field default never become a new version. Whitespace, key
order, name qualification and docs never make two schemas different; the text registered
first is the one stored and served.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Literal, Protocol, TypeVar
from urllib.parse import quote

import fastavro
import httpx
from fastavro.schema import to_parsing_canonical_form

from ledger.config import Settings
from ledger.errors import (
    ConfigurationError,
    IncompatibleSchemaError,
    SchemaError,
    UnknownSchemaError,
)
from ledger.limits import SCHEMA_BYTES_MAX, SCHEMA_CACHE_ENTRIES_MAX, SCHEMA_REGISTRY_TIMEOUT_S

# Confluent ids and versions are Java ints; the wire format's 4-byte id is read as signed.
SCHEMA_ID_MAX = 2**31 - 1

Version = int | Literal["latest"]


@dataclass(frozen=True, slots=True)
class RegisteredSchema:
    """One version of one subject: which global id it is and the schema text."""

    subject: str
    version: int
    schema_id: int
    schema: str


class SchemaRegistry(Protocol):
    """What payledger needs from a schema registry; Confluent's REST API maps onto it."""

    def register(self, subject: str, schema: str) -> int:
        """Register ``schema`` under ``subject``; idempotent. Returns the global schema id.

        Raises ``SchemaError`` for a schema that does not parse or is too large.
        """
        ...

    def schema_by_id(self, schema_id: int) -> str:
        """The schema text with this global id. Raises ``UnknownSchemaError``."""
        ...

    def subjects(self) -> list[str]:
        """Every subject with at least one version, sorted."""
        ...

    def versions(self, subject: str) -> list[int]:
        """The versions of ``subject``, ascending. Raises ``UnknownSchemaError``."""
        ...

    def get_version(self, subject: str, version: Version) -> RegisteredSchema:
        """One version of a subject, or its newest. Raises ``UnknownSchemaError``."""
        ...

    def close(self) -> None:
        """Release connections; the registry is unusable afterwards."""
        ...


def value_subject(topic: str) -> str:
    """The subject of a topic's record values (Confluent's TopicNameStrategy)."""
    return f"{topic}-value"


def open_registry(settings: Settings) -> SchemaRegistry:
    """The external registry if one is configured, else the built-in file-backed one."""
    if settings.schema_registry_url:
        return HttpSchemaRegistry(settings.schema_registry_url)
    return FileSchemaRegistry(settings.registry_dir)


# --- validation and identity -------------------------------------------------------------

# Attributes that the Parsing Canonical Form keeps. Everything else it strips.
_CANONICAL_KEYS = frozenset({"type", "name", "fields", "symbols", "items", "values", "size"})
# Stripped attributes that cannot change how a value is read: docs, and namespaces, which
# the canonical form has already folded into full names.
_INERT_KEYS = frozenset({"doc", "namespace"})


def schema_identity(schema: str) -> str:
    """Validate a schema text and return its identity: equal identity, same schema id.

    Raises ``SchemaError`` if the text is over ``SCHEMA_BYTES_MAX``, is not JSON, or is not
    an Avro schema fastavro can parse.
    """
    if not isinstance(schema, str):
        raise SchemaError(f"a schema is JSON text, not {type(schema).__name__}")
    try:
        size = len(schema.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise SchemaError(f"schema is not valid Unicode text: {exc}") from exc
    if size > SCHEMA_BYTES_MAX:
        raise SchemaError(f"schema is {size} bytes, over the limit of {SCHEMA_BYTES_MAX}")
    try:
        document = json.loads(schema)
    except (ValueError, RecursionError) as exc:
        raise SchemaError(f"schema is not JSON: {exc}") from exc
    try:
        canonical = to_parsing_canonical_form(fastavro.parse_schema(document))
    except Exception as exc:
        # fastavro reports malformed schemas with its own exceptions but also with bare
        # KeyError/TypeError/RecursionError from deep inside; all of them mean "not a schema".
        raise SchemaError(f"not a valid Avro schema: {type(exc).__name__}: {exc}") from exc
    stripped: list[object] = []
    _collect_stripped(document, (), stripped)
    material = json.dumps(
        {"canonical": canonical, "stripped": stripped},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def _collect_stripped(node: object, path: tuple[str | int, ...], out: list[object]) -> None:
    """Append [path, key, value] for every attribute the canonical form drops."""
    if isinstance(node, list):  # a union: its branches, by position
        for position, branch in enumerate(node):
            _collect_stripped(branch, (*path, position), out)
    elif isinstance(node, dict):
        for key in sorted(node):
            value = node[key]
            if key in ("type", "items", "values"):
                _collect_stripped(value, (*path, key), out)
            elif key == "fields" and isinstance(value, list):
                for position, field in enumerate(value):
                    _collect_stripped(field, (*path, "fields", position), out)
            elif key not in _CANONICAL_KEYS and key not in _INERT_KEYS:
                out.append([list(path), key, value])


def _check_subject(subject: str) -> None:
    if not isinstance(subject, str) or not subject or not subject.isprintable():
        raise SchemaError(f"invalid subject {subject!r}: must be non-empty printable text")


# --- a bounded cache ---------------------------------------------------------------------

_K = TypeVar("_K")
_V = TypeVar("_V")


class _Lru(Generic[_K, _V]):
    """A least-recently-used map of bounded size. Not thread-safe: callers hold a lock."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[_K, _V] = OrderedDict()

    def get(self, key: _K) -> _V | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: _K, value: _V) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


# --- the built-in, file-backed registry --------------------------------------------------

_INDEX_FORMAT = 1
_Signature = tuple[int, int, int, int]


@dataclass(frozen=True, slots=True)
class _Index:
    """The registry's metadata as stored in ``index.json``. Only ever grows.

    ``identities[i]`` is the identity of schema id ``i + 1``; version ``v`` of subject ``s``
    is schema id ``subjects[s][v - 1]``. Schema texts live in their own files.
    """

    identities: tuple[str, ...]
    subjects: Mapping[str, tuple[int, ...]]
    by_identity: Mapping[str, int]

    @classmethod
    def build(cls, identities: tuple[str, ...], subjects: Mapping[str, tuple[int, ...]]) -> _Index:
        by_identity = {identity: i + 1 for i, identity in enumerate(identities)}
        return cls(identities, subjects, by_identity)

    def encode(self) -> bytes:
        document = {
            "format": _INDEX_FORMAT,
            "schemas": list(self.identities),
            "subjects": {subject: list(ids) for subject, ids in sorted(self.subjects.items())},
        }
        return json.dumps(document, indent=1).encode("utf-8") + b"\n"

    @classmethod
    def decode(cls, data: bytes, origin: Path) -> _Index:
        try:
            document = json.loads(data)
            if document["format"] != _INDEX_FORMAT:
                raise ValueError(f"unsupported format {document['format']!r}")
            identities = tuple(document["schemas"])
            if not all(isinstance(i, str) for i in identities):
                raise ValueError("schema identities must be strings")
            if len(set(identities)) != len(identities):
                raise ValueError("a schema identity appears twice")
            subjects: dict[str, tuple[int, ...]] = {}
            for subject, ids in document["subjects"].items():
                if not ids or not all(type(i) is int and 1 <= i <= len(identities) for i in ids):
                    raise ValueError(f"subject {subject!r} names unknown schema ids")
                if len(set(ids)) != len(ids):
                    raise ValueError(f"subject {subject!r} has one schema twice")
                subjects[subject] = tuple(ids)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SchemaError(f"schema registry index {origin} is damaged: {exc}") from exc
        return cls.build(identities, subjects)


_EMPTY_INDEX = _Index.build((), {})


class FileSchemaRegistry:
    """The built-in registry, stored in one directory that many processes may share::

        .lock               flock'd by writers; never replaced, so all lock one inode
        index.json          ids and subjects (see ``_Index``), replaced atomically per write
        schemas/00000N.avsc the text of schema id N, written before index.json names it

    Writers take the lock, re-read the index, write, and fsync. Readers need no lock: every
    file is replaced whole (temp file, fsync, ``os.replace``), so a reader sees the old or
    the new version of a file, never half of one. A process notices another's writes by the
    index file's inode, size and mtime; the index only grows, so its size alone changes on
    every write. Thread-safe.
    """

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._index_path = directory / "index.json"
        self._lock_path = directory / ".lock"
        self._schemas_dir = directory / "schemas"
        self._mutex = threading.Lock()
        self._index = _EMPTY_INDEX
        self._signature: _Signature | None = None
        self._texts: _Lru[int, str] = _Lru(SCHEMA_CACHE_ENTRIES_MAX)

    @property
    def directory(self) -> Path:
        return self._directory

    def __repr__(self) -> str:
        return f"FileSchemaRegistry({str(self._directory)!r})"

    def __enter__(self) -> FileSchemaRegistry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release: no file stays open between calls."""

    def register(self, subject: str, schema: str) -> int:
        _check_subject(subject)
        identity = schema_identity(schema)
        with self._mutex:
            known = self._index.by_identity.get(identity)
            if known is not None and known in self._index.subjects.get(subject, ()):
                return known  # the store only grows: registered once, registered for good
            with self._write_lock():
                index = self._refresh()
                schema_id = index.by_identity.get(identity)
                is_new = schema_id is None
                if schema_id is None:
                    schema_id = len(index.identities) + 1
                    if schema_id > SCHEMA_ID_MAX:
                        raise SchemaError("the schema registry has run out of schema ids")
                    # The text goes first: once index.json names an id, its file must exist.
                    # A crash in between leaves a file no index names; the next writer of that
                    # id replaces it.
                    _write_atomically(self._schema_path(schema_id), schema.encode("utf-8"))
                    index = _Index.build((*index.identities, identity), index.subjects)
                versions = index.subjects.get(subject, ())
                if schema_id not in versions:
                    subjects = {**index.subjects, subject: (*versions, schema_id)}
                    index = _Index.build(index.identities, subjects)
                if index is not self._index:
                    _write_atomically(self._index_path, index.encode())
                    self._index = index
                    self._signature = _signature(os.stat(self._index_path))
                    if is_new:  # otherwise the stored text may differ from this one
                        self._texts.put(schema_id, schema)
            return schema_id

    def schema_by_id(self, schema_id: int) -> str:
        with self._mutex:
            return self._text(schema_id)

    def subjects(self) -> list[str]:
        with self._mutex:
            return sorted(self._refresh().subjects)

    def versions(self, subject: str) -> list[int]:
        with self._mutex:
            ids = self._refresh().subjects.get(subject)
        if ids is None:
            raise UnknownSchemaError(f"Subject '{subject}' not found.")
        return list(range(1, len(ids) + 1))

    def get_version(self, subject: str, version: Version) -> RegisteredSchema:
        if version != "latest" and not (isinstance(version, int) and version >= 1):
            raise UnknownSchemaError(f"Version {version} not found.")
        with self._mutex:
            # A subject's existing versions never change, so only "latest" or a version
            # this process has not seen yet needs a look at the disk.
            ids = self._index.subjects.get(subject)
            if version == "latest" or ids is None or version > len(ids):
                ids = self._refresh().subjects.get(subject)
            if ids is None:
                raise UnknownSchemaError(f"Subject '{subject}' not found.")
            number = len(ids) if version == "latest" else version
            if number > len(ids):
                raise UnknownSchemaError(f"Version {version} not found.")
            schema_id = ids[number - 1]
            return RegisteredSchema(subject, number, schema_id, self._text(schema_id))

    # Everything below runs with self._mutex held.

    def _text(self, schema_id: int) -> str:
        cached = self._texts.get(schema_id)
        if cached is not None:
            return cached
        index = self._index
        if not 1 <= schema_id <= len(index.identities):
            index = self._refresh()
        if not 1 <= schema_id <= len(index.identities):
            raise UnknownSchemaError(f"Schema {schema_id} not found")
        path = self._schema_path(schema_id)
        try:
            text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SchemaError(f"schema registry file {path} is missing or damaged: {exc}") from exc
        self._texts.put(schema_id, text)
        return text

    def _refresh(self) -> _Index:
        """The current index: the one in memory unless the file changed on disk."""
        try:
            if _signature(os.stat(self._index_path)) == self._signature:
                return self._index
            with self._index_path.open("rb") as file:
                # The signature of the file actually read, not of what stat() saw before
                # open(): another writer may have replaced it in between.
                signature = _signature(os.fstat(file.fileno()))
                data = file.read()
        except FileNotFoundError:
            return self._index  # nothing registered yet
        except OSError as exc:
            raise SchemaError(
                f"cannot read schema registry index {self._index_path}: {exc}"
            ) from exc
        self._index = _Index.decode(data, self._index_path)
        self._signature = signature
        return self._index

    @contextlib.contextmanager
    def _write_lock(self) -> Iterator[None]:
        try:
            self._schemas_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SchemaError(f"cannot open schema registry {self._directory}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def _schema_path(self, schema_id: int) -> Path:
        return self._schemas_dir / f"{schema_id:06d}.avsc"


def _signature(stat: os.stat_result) -> _Signature:
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so readers and crashes see the old or new file, whole."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    # The rename itself is only durable once the directory is synced.
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


# --- a client for an external Confluent-compatible registry ------------------------------

_MEDIA_TYPE = "application/vnd.schemaregistry.v1+json"
_ACCEPT = f"{_MEDIA_TYPE}, application/vnd.schemaregistry+json, application/json"
# Confluent error codes: subject, version and schema not found; incompatible schema.
_NOT_FOUND_CODES = frozenset({40401, 40402, 40403})
_INCOMPATIBLE_CODE = 409


class HttpSchemaRegistry:
    """A client for a Confluent-compatible schema registry over HTTP. Thread-safe.

    Schemas by id and registrations are cached (both are immutable in Confluent); subject
    listings and versions are always fetched. There are no retries: a registry that is down
    is reported as ``SchemaError`` at once, and the caller decides whether to try again.
    """

    def __init__(
        self,
        url: str,
        timeout_s: float = SCHEMA_REGISTRY_TIMEOUT_S,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise ConfigurationError(f"invalid schema registry URL: {exc}") from exc
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ConfigurationError("the schema registry URL must be an http(s):// URL")
        # Credentials in the URL are used for requests but never shown in messages.
        self._display_url = str(parsed.copy_with(username=None, password=None)).rstrip("/")
        self._timeout_s = timeout_s
        self._client = httpx.Client(
            base_url=parsed,
            timeout=timeout_s,
            transport=transport,
            headers={"Accept": _ACCEPT},
            follow_redirects=False,
        )
        self._lock = threading.Lock()
        self._texts: _Lru[int, str] = _Lru(SCHEMA_CACHE_ENTRIES_MAX)
        self._registered: _Lru[tuple[str, str], int] = _Lru(SCHEMA_CACHE_ENTRIES_MAX)

    def __repr__(self) -> str:
        return f"HttpSchemaRegistry({self._display_url!r})"

    def __enter__(self) -> HttpSchemaRegistry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def register(self, subject: str, schema: str) -> int:
        _check_subject(subject)
        with self._lock:
            cached = self._registered.get((subject, schema))
        if cached is not None:
            return cached
        # Checked here too, so a bad schema fails the same way whichever registry is used.
        schema_identity(schema)
        body = _expect_dict(
            self._request("POST", f"subjects/{_quote(subject)}/versions", {"schema": schema})
        )
        schema_id = _expect_int(body.get("id"), "id")
        with self._lock:
            self._registered.put((subject, schema), schema_id)
        return schema_id

    def schema_by_id(self, schema_id: int) -> str:
        with self._lock:
            cached = self._texts.get(schema_id)
        if cached is not None:
            return cached
        body = _expect_dict(self._request("GET", f"schemas/ids/{int(schema_id)}"))
        schema_type = body.get("schemaType", "AVRO")
        if schema_type != "AVRO":
            raise SchemaError(f"schema {schema_id} is a {schema_type} schema, not Avro")
        text = _expect_str(body.get("schema"), "schema")
        with self._lock:
            self._texts.put(schema_id, text)
        return text

    def subjects(self) -> list[str]:
        body = self._request("GET", "subjects")
        if not isinstance(body, list):
            raise SchemaError(f"schema registry at {self._display_url} sent a malformed reply")
        return sorted(_expect_str(subject, "subject") for subject in body)

    def versions(self, subject: str) -> list[int]:
        body = self._request("GET", f"subjects/{_quote(subject)}/versions")
        if not isinstance(body, list):
            raise SchemaError(f"schema registry at {self._display_url} sent a malformed reply")
        return [_expect_int(version, "version") for version in body]

    def get_version(self, subject: str, version: Version) -> RegisteredSchema:
        if version != "latest" and not (isinstance(version, int) and version >= 1):
            raise UnknownSchemaError(f"Version {version} not found.")
        body = _expect_dict(self._request("GET", f"subjects/{_quote(subject)}/versions/{version}"))
        schema_type = body.get("schemaType", "AVRO")
        if schema_type != "AVRO":
            raise SchemaError(f"{subject} version {version} is a {schema_type} schema, not Avro")
        registered = RegisteredSchema(
            subject=_expect_str(body.get("subject"), "subject"),
            version=_expect_int(body.get("version"), "version"),
            schema_id=_expect_int(body.get("id"), "id"),
            schema=_expect_str(body.get("schema"), "schema"),
        )
        with self._lock:
            self._texts.put(registered.schema_id, registered.schema)
        return registered

    def _request(self, method: str, path: str, body: dict[str, str] | None = None) -> object:
        where = f"{method} {self._display_url}/{path}"
        content = None if body is None else json.dumps(body).encode("utf-8")
        headers = None if body is None else {"Content-Type": _MEDIA_TYPE}
        try:
            response = self._client.request(method, path, content=content, headers=headers)
        except httpx.TimeoutException as exc:
            raise SchemaError(
                f"schema registry did not answer within {self._timeout_s}s: {where}"
            ) from exc
        except httpx.HTTPError as exc:
            raise SchemaError(f"cannot reach the schema registry: {where}: {exc}") from exc
        if response.is_success:
            try:
                return response.json()
            except ValueError as exc:
                raise SchemaError(
                    f"schema registry sent a reply that is not JSON: {where}"
                ) from exc
        error_code, message = _confluent_error(response)
        if error_code in _NOT_FOUND_CODES:
            raise UnknownSchemaError(message)
        if error_code == _INCOMPATIBLE_CODE:
            raise IncompatibleSchemaError(message)
        raise SchemaError(
            f"schema registry answered {response.status_code} "
            f"(error code {error_code}) to {where}: {message}"
        )


def _confluent_error(response: httpx.Response) -> tuple[int | None, str]:
    """The error code and message of a Confluent error reply, as far as it has them."""
    try:
        body: Any = response.json()
        code, message = body.get("error_code"), body.get("message")
    except (ValueError, AttributeError):
        code, message = None, None
    if not isinstance(message, str):
        message = response.reason_phrase or "no message"
    return (code if type(code) is int else None), message


def _quote(subject: str) -> str:
    # Subjects are path segments: "/" and everything else unsafe must be percent-encoded.
    return quote(subject, safe="")


def _expect_dict(value: object) -> dict[str, object]:
    if not isinstance(value, dict):
        raise SchemaError(f"schema registry sent {type(value).__name__} where an object belongs")
    return value


def _expect_int(value: object, name: str) -> int:
    if type(value) is not int:
        raise SchemaError(f"schema registry sent {name}={value!r}, not an integer")
    return value


def _expect_str(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise SchemaError(f"schema registry sent {name}={value!r}, not a string")
    return value

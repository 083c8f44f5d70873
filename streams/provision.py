"""Create the payledger topics, or report how existing ones differ from their spec.

Kafka is the system of record, so provisioning never changes an existing topic:
a topic whose partitions, replication factor or configs differ from
``ledger.topics.topic_specs`` is reported as a mismatch for an operator to
resolve, and a topic that matches is left alone. Running it twice is harmless.

Every admin call is bounded by ``timeout_s``; an unreachable or silent broker
raises ``KafkaUnavailableError`` instead of hanging.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from ledger.config import Settings
from ledger.errors import InfrastructureError
from ledger.topics import TopicRole, TopicSpec, topic_specs

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "KafkaUnavailableError",
    "Mismatch",
    "ProvisionReport",
    "ProvisioningError",
    "Status",
    "TopicDescription",
    "TopicResult",
    "compare_topic",
    "provision_topics",
]

DEFAULT_TIMEOUT_S = 30.0

# "missing" only appears in a dry run: a real run creates missing topics.
Status = Literal["created", "ok", "mismatch", "missing"]

# Kafka protocol error codes this module acts on (see org.apache.kafka.common.protocol.Errors).
_NONE = 0
_UNKNOWN_TOPIC_OR_PARTITION = 3
_LEADER_NOT_AVAILABLE = 5
_TOPIC_ALREADY_EXISTS = 36

# DescribeConfigs ``config_source`` values. Only DYNAMIC_TOPIC_CONFIG means the
# value is pinned on the topic; any other source means it follows a broker
# setting and would change silently if that setting changed.
_SOURCE_TOPIC = 1
_SOURCE_NAMES = {
    2: "dynamic broker config",
    3: "dynamic default broker config",
    4: "static broker config",
    5: "Kafka default",
}

_T = TypeVar("_T")


class ProvisioningError(InfrastructureError):
    """Kafka answered, but a provisioning step failed (refused create, bad answer)."""


class KafkaUnavailableError(ProvisioningError):
    """Kafka could not be reached, or did not answer within the timeout."""


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One setting of an existing topic that differs from its spec."""

    topic: str
    setting: str
    expected: str
    actual: str

    def __str__(self) -> str:
        return f"{self.topic}: {self.setting} is {self.actual}, expected {self.expected}"


@dataclass(frozen=True, slots=True)
class TopicDescription:
    """What the broker reports for an existing topic.

    ``replication_factors`` holds the replica count of each partition, in
    partition order, so a topic whose partitions disagree (e.g. mid
    reassignment) is visible rather than averaged away. ``inherited`` maps the
    names of configs that are not set on the topic itself to where their value
    comes from (e.g. "Kafka default").
    """

    name: str
    replication_factors: tuple[int, ...]
    configs: Mapping[str, str | None]
    inherited: Mapping[str, str] = field(default_factory=dict)

    @property
    def partitions(self) -> int:
        return len(self.replication_factors)


@dataclass(frozen=True, slots=True)
class TopicResult:
    name: str
    role: TopicRole
    status: Status
    mismatches: tuple[Mismatch, ...] = ()


@dataclass(frozen=True, slots=True)
class ProvisionReport:
    topics: tuple[TopicResult, ...]
    dry_run: bool

    @property
    def ok(self) -> bool:
        """True when every topic exists exactly as specified."""
        return all(t.status in ("created", "ok") for t in self.topics)

    @property
    def mismatches(self) -> tuple[Mismatch, ...]:
        return tuple(m for t in self.topics for m in t.mismatches)

    def status(self, name: str) -> Status:
        for result in self.topics:
            if result.name == name:
                return result.status
        raise KeyError(name)


def compare_topic(spec: TopicSpec, actual: TopicDescription) -> list[Mismatch]:
    """Every way ``actual`` differs from ``spec``; empty when it matches exactly.

    Configs are compared as strings, exactly as the spec writes them: the
    broker reports the values payledger sets verbatim (checked against Kafka
    4.3), so any other spelling means someone else set the topic up. Configs
    the spec does not mention are not compared. A value that equals the spec
    only because a broker default happens to agree is still a mismatch: it is
    not pinned on the topic and would change with the broker's configuration.
    """
    found: list[Mismatch] = []

    def differs(setting: str, expected: str, got: str) -> None:
        found.append(Mismatch(spec.name, setting, expected, got))

    if actual.partitions != spec.partitions:
        differs("partitions", str(spec.partitions), str(actual.partitions))
    factors = sorted(set(actual.replication_factors))
    if factors and factors != [spec.replication_factor]:
        differs("replication.factor", str(spec.replication_factor), ",".join(map(str, factors)))
    for key, expected in sorted(spec.configs.items()):
        if key not in actual.configs:
            differs(key, expected, "<absent>")
            continue
        value = actual.configs[key]
        if value is None:
            differs(key, expected, "<not disclosed by the broker>")
        elif value != expected:
            differs(key, expected, value)
        elif key in actual.inherited:
            differs(key, f"{expected} (set on the topic)", f"{value} ({actual.inherited[key]})")
    return found


async def provision_topics(
    settings: Settings,
    *,
    dry_run: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> ProvisionReport:
    """Create missing topics and compare existing ones against their spec.

    With ``dry_run`` nothing is created and missing topics are reported as
    "missing". Existing topics are never altered. Raises
    ``KafkaUnavailableError`` when the broker cannot be reached or does not
    answer within ``timeout_s`` (per admin call), and ``ProvisioningError``
    when it refuses to create a topic.
    """
    specs = topic_specs(settings)
    async with _connect(settings, timeout_s) as admin:
        existing = await _describe_topics(admin, [s.name for s in specs])
        missing = [s for s in specs if s.name not in existing]
        created: set[str] = set()
        if missing and not dry_run:
            created = await _create_topics(admin, missing)
            # Describe what we created as well as what someone else created
            # between our describe and our create: both must be checked
            # against the spec before they can be called "created" or "ok".
            existing.update(await _await_topics(admin, [s.name for s in missing]))

    results = []
    for spec in specs:
        actual = existing.get(spec.name)
        if actual is None:
            results.append(TopicResult(spec.name, spec.role, "missing"))
            continue
        mismatches = tuple(compare_topic(spec, actual))
        status: Status
        if mismatches:
            status = "mismatch"
        elif spec.name in created:
            status = "created"
        else:
            status = "ok"
        results.append(TopicResult(spec.name, spec.role, status, mismatches))
    return ProvisionReport(tuple(results), dry_run)


class _Admin:
    """The admin client plus what every call needs: a bound and a name for errors."""

    def __init__(self, client: Any, servers: str, timeout_s: float) -> None:
        self.client = client
        self.servers = servers
        self.timeout_s = timeout_s

    async def call(self, what: str, call: Awaitable[_T]) -> _T:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await call
        except TimeoutError as exc:
            raise KafkaUnavailableError(
                f"Kafka at {self.servers} did not answer {what} within {self.timeout_s:g} s"
            ) from exc
        except (KafkaError, OSError) as exc:
            raise KafkaUnavailableError(f"Kafka at {self.servers} failed {what}: {exc}") from exc


@asynccontextmanager
async def _connect(settings: Settings, timeout_s: float) -> AsyncIterator[_Admin]:
    servers = settings.bootstrap_servers()
    client = AIOKafkaAdminClient(
        bootstrap_servers=servers,
        client_id="payledger-provision",
        request_timeout_ms=int(timeout_s * 1000),
    )
    admin = _Admin(client, servers, timeout_s)
    try:
        await admin.call("bootstrap", client.start())
        yield admin
    finally:
        # Closing only tears down local connections; bound it anyway so a
        # wedged socket cannot turn an error into a hang.
        try:
            async with asyncio.timeout(timeout_s):
                await client.close()
        except (TimeoutError, KafkaError, OSError):
            pass


async def _describe_topics(admin: _Admin, names: Sequence[str]) -> dict[str, TopicDescription]:
    """Describe those of ``names`` that exist; absent ones are simply left out."""
    # Metadata for *all* topics: a metadata request naming topics may
    # auto-create them on a broker with auto.create.topics.enable=true, which
    # would create them with broker defaults instead of our spec.
    metadata = await admin.call("describe topics", admin.client.describe_topics())
    wanted = set(names)
    replicas: dict[str, tuple[int, ...]] = {}
    for topic in metadata:
        name = topic["topic"]
        if name not in wanted:
            continue
        code = topic["error_code"]
        if code == _UNKNOWN_TOPIC_OR_PARTITION:
            continue
        if code not in (_NONE, _LEADER_NOT_AVAILABLE):
            raise ProvisioningError(f"describing topic {name} failed: Kafka error code {code}")
        partitions = sorted(topic["partitions"], key=lambda p: p["partition"])
        replicas[name] = tuple(len(p["replicas"]) for p in partitions)
    if not replicas:
        return {}

    resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in replicas]
    responses = await admin.call("describe topic configs", admin.client.describe_configs(resources))
    described: dict[str, TopicDescription] = {}
    for response in responses:
        for resource in response.to_object()["resources"]:
            name = resource["resource_name"]
            code = resource["error_code"]
            if code == _UNKNOWN_TOPIC_OR_PARTITION:
                # Deleted, or not yet known to this broker: treat as absent.
                continue
            if code != _NONE:
                raise ProvisioningError(
                    f"describing configs of topic {name} failed: Kafka error code {code}: "
                    f"{resource['error_message']}"
                )
            configs, inherited = _read_configs(resource["config_entries"])
            described[name] = TopicDescription(name, replicas[name], configs, inherited)
    return described


def _read_configs(
    entries: Iterable[Mapping[str, Any]],
) -> tuple[dict[str, str | None], dict[str, str]]:
    configs: dict[str, str | None] = {}
    inherited: dict[str, str] = {}
    for entry in entries:
        # aiokafka's protocol schema spells the config name field "config_names".
        name = entry.get("config_names", entry.get("config_name"))
        configs[name] = entry["config_value"]
        source = entry.get("config_source")
        if source is None:
            # DescribeConfigs v0 has no source, only whether the value is a default.
            if entry.get("is_default"):
                inherited[name] = "default"
        elif source != _SOURCE_TOPIC:
            inherited[name] = _SOURCE_NAMES.get(source, f"config source {source}")
    return configs, inherited


async def _create_topics(admin: _Admin, specs: Sequence[TopicSpec]) -> set[str]:
    """Create ``specs``; returns the names this call created.

    A topic that already exists (created concurrently since we described the
    cluster) is not an error: the caller describes it and compares it.
    """
    new_topics = [
        NewTopic(
            s.name,
            num_partitions=s.partitions,
            replication_factor=s.replication_factor,
            topic_configs=dict(s.configs),
        )
        for s in specs
    ]
    response = await admin.call(
        "create topics",
        # The broker-side wait matches our own bound, so the broker gives up
        # (and says so) before we stop listening.
        admin.client.create_topics(new_topics, timeout_ms=int(admin.timeout_s * 1000)),
    )
    created: set[str] = set()
    refused: list[str] = []
    for result in response.to_object()["topic_errors"]:
        code = result["error_code"]
        if code == _NONE:
            created.add(result["topic"])
        elif code != _TOPIC_ALREADY_EXISTS:
            message = result.get("error_message") or f"Kafka error code {code}"
            refused.append(f"{result['topic']}: {message}")
    if refused:
        raise ProvisioningError("Kafka refused to create topics: " + "; ".join(refused))
    return created


async def _await_topics(admin: _Admin, names: Sequence[str]) -> dict[str, TopicDescription]:
    """Describe ``names``, retrying until all are visible or the timeout passes.

    A just-created topic can take a moment to appear in the metadata of the
    broker we ask, even after the controller has accepted it.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + admin.timeout_s
    delay = 0.05
    while True:
        found = await _describe_topics(admin, names)
        absent = [n for n in names if n not in found]
        if not absent:
            return found
        if loop.time() + delay > deadline:
            raise ProvisioningError(
                f"topics {', '.join(absent)} were created but did not appear in the "
                f"cluster metadata within {admin.timeout_s:g} s"
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)

"""Topic provisioning against a real Kafka broker.

The broker is the one ``ledger.config.Settings()`` points at (by default the
local stack on 127.0.0.1:19092). These tests fail, never skip, when it is not
reachable. Each test uses its own topic prefix and deletes its topics after.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from click.testing import CliRunner

import streams.provision
from ledger.config import Settings
from ledger.topics import TopicRole, TopicSpec, topic_specs
from streams.commands import EXIT_MISMATCH, topics
from streams.provision import Mismatch, TopicDescription, provision_topics

pytestmark = pytest.mark.integration

_DYNAMIC_TOPIC_CONFIG = 1


@pytest.fixture
def settings() -> Settings:
    # A fresh prefix per test: tests share one broker and must not see each other's topics.
    return Settings(topic_prefix=f"t{uuid.uuid4().hex[:12]}.")


@pytest.fixture
async def admin(settings: Settings) -> AsyncIterator[Any]:
    """An independent admin client, to set up and inspect topics behind provisioning's back."""
    servers = settings.bootstrap_servers()
    client = AIOKafkaAdminClient(bootstrap_servers=servers, request_timeout_ms=10_000)
    try:
        async with asyncio.timeout(15):
            await client.start()
    except Exception as exc:
        await client.close()
        pytest.fail(
            f"Kafka is not reachable at {servers} ({exc!r}); start the local stack first",
            pytrace=False,
        )
    try:
        yield client
    finally:
        ours = [t for t in await client.list_topics() if t.startswith(settings.topic_prefix)]
        if ours:
            await client.delete_topics(ours)
        await client.close()


def _spec(settings: Settings, role: TopicRole) -> TopicSpec:
    return next(s for s in topic_specs(settings) if s.role == role)


async def _create(admin: Any, name: str, partitions: int, configs: dict[str, str]) -> None:
    response = await admin.create_topics([NewTopic(name, partitions, 1, topic_configs=configs)])
    assert [t["error_code"] for t in response.to_object()["topic_errors"]] == [0]
    # The controller has the topic; wait until the broker's metadata shows it too.
    async with asyncio.timeout(30):
        while True:  # polling the broker: there is no in-process event to wait on
            if any(t["topic"] == name for t in await admin.describe_topics()):
                break
            await asyncio.sleep(0.2)


async def _snapshot(admin: Any, names: Sequence[str]) -> dict[str, tuple[Any, ...]]:
    """Partitions, replicas and every config (with its source) of ``names``, read directly."""
    metadata = {t["topic"]: t for t in await admin.describe_topics() if t["topic"] in names}
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name) for name in metadata]
    )
    configs = {
        r["resource_name"]: {
            e["config_names"]: (e["config_value"], e["config_source"]) for e in r["config_entries"]
        }
        for response in responses
        for r in response.to_object()["resources"]
    }
    return {
        name: (
            sorted((p["partition"], tuple(p["replicas"])) for p in topic["partitions"]),
            configs[name],
        )
        for name, topic in metadata.items()
    }


async def test_provision_creates_every_topic_exactly_as_specified(
    settings: Settings, admin: Any
) -> None:
    report = await provision_topics(settings)

    specs = topic_specs(settings)
    assert [(t.name, t.status) for t in report.topics] == [(s.name, "created") for s in specs]
    assert report.ok
    assert report.mismatches == ()
    snapshot = await _snapshot(admin, [s.name for s in specs])
    for spec in specs:
        partitions, configs = snapshot[spec.name]
        assert len(partitions) == spec.partitions, spec.name
        assert all(len(replicas) == spec.replication_factor for _, replicas in partitions)
        for key, value in spec.configs.items():
            # Kafka 4.x reports every value verbatim, pinned on the topic.
            assert configs[key] == (value, _DYNAMIC_TOPIC_CONFIG), (spec.name, key)


async def test_rerun_changes_nothing_and_reports_ok(settings: Settings, admin: Any) -> None:
    await provision_topics(settings)
    names = [s.name for s in topic_specs(settings)]
    before = await _snapshot(admin, names)

    again = await provision_topics(settings)
    checked = await provision_topics(settings, dry_run=True)

    assert {t.status for t in again.topics} == {"ok"}
    assert {t.status for t in checked.topics} == {"ok"}
    assert again.ok and checked.ok
    assert await _snapshot(admin, names) == before


async def test_existing_topic_with_wrong_settings_is_reported_and_left_unchanged(
    settings: Settings, admin: Any
) -> None:
    commands = _spec(settings, TopicRole.COMMANDS)
    await _create(admin, commands.name, 2, {**commands.configs, "retention.ms": "1000"})
    before = await _snapshot(admin, [commands.name])

    report = await provision_topics(settings)

    assert report.status(commands.name) == "mismatch"
    assert set(report.mismatches) == {
        Mismatch(commands.name, "partitions", str(commands.partitions), "2"),
        Mismatch(commands.name, "retention.ms", "-1", "1000"),
    }
    others = [t for t in report.topics if t.name != commands.name]
    assert {t.status for t in others} == {"created"}
    assert not report.ok
    assert await _snapshot(admin, [commands.name]) == before
    # Still reported, still untouched, on every later run.
    assert set((await provision_topics(settings)).mismatches) == set(report.mismatches)
    assert await _snapshot(admin, [commands.name]) == before


async def test_topic_relying_on_broker_defaults_is_reported(settings: Settings, admin: Any) -> None:
    # Created by hand (or by auto-creation) without configs: some broker defaults
    # happen to equal the spec, but nothing pins them on the topic.
    keys = _spec(settings, TopicRole.KEYS)
    await _create(admin, keys.name, 1, {})

    report = await provision_topics(settings)

    assert report.status(keys.name) == "mismatch"
    by_setting = {m.setting: m for m in report.mismatches}
    assert set(by_setting) == set(keys.configs)
    assert by_setting["cleanup.policy"].actual == "delete"
    assert by_setting["max.message.bytes"] == Mismatch(
        keys.name, "max.message.bytes", "1048588 (set on the topic)", "1048588 (Kafka default)"
    )


async def test_check_reports_missing_topics_without_creating_them(
    settings: Settings, admin: Any
) -> None:
    report = await provision_topics(settings, dry_run=True)

    assert report.dry_run
    assert {t.status for t in report.topics} == {"missing"}
    assert not report.ok
    assert not [t for t in await admin.list_topics() if t.startswith(settings.topic_prefix)]


async def test_concurrent_provisioners_create_each_topic_once(
    settings: Settings, admin: Any
) -> None:
    first, second = await asyncio.gather(provision_topics(settings), provision_topics(settings))

    assert first.ok and second.ok
    for a, b in zip(first.topics, second.topics, strict=True):
        assert sorted([a.status, b.status]) == ["created", "ok"], a.name


async def test_topic_created_between_describe_and_create_is_compared(
    settings: Settings, admin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Someone else creates the topic, with other settings, after provisioning
    # described the cluster and before it creates the topic: Kafka answers
    # TOPIC_ALREADY_EXISTS, and the topic must still be compared, not trusted.
    commands = _spec(settings, TopicRole.COMMANDS)
    describe = streams.provision._describe_topics
    calls = 0

    async def racing_describe(client: Any, names: Sequence[str]) -> dict[str, TopicDescription]:
        nonlocal calls
        calls += 1
        if calls == 1:
            described = await describe(client, names)
            await _create(admin, commands.name, commands.partitions, {"retention.ms": "1000"})
            return described
        return await describe(client, names)

    monkeypatch.setattr(streams.provision, "_describe_topics", racing_describe)

    report = await provision_topics(settings)

    assert calls >= 2
    assert report.status(commands.name) == "mismatch"
    assert Mismatch(commands.name, "retention.ms", "-1", "1000") in report.mismatches
    assert {t.status for t in report.topics if t.name != commands.name} == {"created"}
    snapshot = await _snapshot(admin, [commands.name])
    assert snapshot[commands.name][1]["retention.ms"] == ("1000", _DYNAMIC_TOPIC_CONFIG)


def test_cli_check_then_provision_then_check(settings: Settings, admin: Any) -> None:
    runner = CliRunner()
    env = {"PAYLEDGER_TOPIC_PREFIX": settings.topic_prefix}

    missing = runner.invoke(topics, ["check"], env=env)
    assert missing.exit_code == EXIT_MISMATCH, missing.output
    assert "missing" in missing.output
    assert "Missing:" in missing.output

    created = runner.invoke(topics, ["provision"], env=env)
    assert created.exit_code == 0, created.output
    for spec in topic_specs(settings):
        assert any(
            line.split() == [spec.name, spec.role.value, "created"]
            for line in created.output.splitlines()
        ), created.output

    ok = runner.invoke(topics, ["check"], env=env)
    assert ok.exit_code == 0, ok.output


async def _break_retention(admin: Any, spec: TopicSpec) -> None:
    await _create(admin, spec.name, spec.partitions, {**spec.configs, "retention.ms": "1000"})


@pytest.fixture
async def broken_commands_topic(settings: Settings, admin: Any) -> TopicSpec:
    commands = _spec(settings, TopicRole.COMMANDS)
    await _break_retention(admin, commands)
    return commands


def test_cli_provision_exits_4_and_prints_each_mismatch(
    settings: Settings, broken_commands_topic: TopicSpec
) -> None:
    env = {"PAYLEDGER_TOPIC_PREFIX": settings.topic_prefix}
    for command in ("provision", "check"):
        result = CliRunner().invoke(topics, [command], env=env)
        assert result.exit_code == EXIT_MISMATCH, result.output
        assert f"{broken_commands_topic.name}: retention.ms is 1000, expected -1" in result.output

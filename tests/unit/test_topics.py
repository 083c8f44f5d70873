"""Topic specs, the spec-vs-broker comparison, and failing fast without a broker."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import pytest
from click.testing import CliRunner

from ledger.config import Settings
from ledger.errors import InfrastructureError
from ledger.topics import TopicRole, TopicSpec, topic_name, topic_specs
from streams.commands import topics
from streams.provision import (
    KafkaUnavailableError,
    Mismatch,
    ProvisionReport,
    TopicDescription,
    TopicResult,
    compare_topic,
    provision_topics,
)

LEDGER_ROLES = set(TopicRole) - {TopicRole.KEYS}


def _specs(**overrides: object) -> dict[TopicRole, TopicSpec]:
    settings = Settings(**overrides)  # type: ignore[arg-type]
    return {spec.role: spec for spec in topic_specs(settings)}


# --- specs -------------------------------------------------------------------------------


def test_every_role_has_exactly_one_spec() -> None:
    specs = topic_specs(Settings(topic_prefix="pfx."))
    assert [s.role for s in specs] == list(TopicRole)
    assert len({s.name for s in specs}) == len(specs)
    for spec in specs:
        assert (
            spec.name
            == f"pfx.{spec.role.value}"
            == topic_name(Settings(topic_prefix="pfx."), spec.role)
        )


def test_keys_topic_is_compacted_and_never_expires() -> None:
    keys = _specs()[TopicRole.KEYS]
    assert keys.configs["cleanup.policy"] == "compact"
    assert keys.configs["retention.ms"] == "-1"
    assert keys.configs["min.compaction.lag.ms"] == "0"


def test_ledger_topics_are_kept_forever() -> None:
    specs = _specs()
    for role in LEDGER_ROLES:
        configs = specs[role].configs
        assert configs["cleanup.policy"] == "delete", role
        assert configs["retention.ms"] == "-1", role
        assert configs["retention.bytes"] == "-1", role


def test_durability_settings_come_from_settings() -> None:
    specs = _specs(topic_replication_factor=3, topic_min_insync_replicas=2)
    for spec in specs.values():
        assert spec.replication_factor == 3
        assert spec.configs["min.insync.replicas"] == "2"
        assert spec.configs["unclean.leader.election.enable"] == "false"


def test_keys_and_checkpoints_have_one_partition_the_rest_follow_settings() -> None:
    specs = _specs(topic_partitions=12)
    assert specs[TopicRole.KEYS].partitions == 1
    assert specs[TopicRole.CHECKPOINTS].partitions == 1
    for role in set(TopicRole) - {TopicRole.KEYS, TopicRole.CHECKPOINTS}:
        assert specs[role].partitions == 12, role


def test_every_config_value_is_a_string() -> None:
    # Kafka receives and reports configs as strings; comparison relies on it.
    for spec in topic_specs(Settings()):
        assert all(isinstance(v, str) for v in spec.configs.values())


# --- comparison ----------------------------------------------------------------------------


def _as_created(spec: TopicSpec, **config_changes: str | None) -> TopicDescription:
    """What Kafka reports for ``spec`` created as specified, plus broker defaults."""
    configs: dict[str, str | None] = {
        "segment.bytes": "1073741824",
        "compression.type": "producer",
        **spec.configs,
        **config_changes,
    }
    return TopicDescription(
        name=spec.name,
        replication_factors=(spec.replication_factor,) * spec.partitions,
        configs=configs,
        inherited={"segment.bytes": "Kafka default", "compression.type": "Kafka default"},
    )


@pytest.fixture
def commands_spec() -> TopicSpec:
    return _specs(topic_partitions=6)[TopicRole.COMMANDS]


def test_exact_match_has_no_mismatches(commands_spec: TopicSpec) -> None:
    # Configs the spec does not set (segment.bytes, ...) are not compared.
    assert compare_topic(commands_spec, _as_created(commands_spec)) == []


def test_every_spec_matches_itself() -> None:
    for spec in topic_specs(Settings()):
        assert compare_topic(spec, _as_created(spec)) == []


def test_wrong_retention_is_reported(commands_spec: TopicSpec) -> None:
    actual = _as_created(commands_spec, **{"retention.ms": "1000"})
    assert compare_topic(commands_spec, actual) == [
        Mismatch(commands_spec.name, "retention.ms", "-1", "1000")
    ]


def test_wrong_partition_count_is_reported(commands_spec: TopicSpec) -> None:
    actual = TopicDescription(commands_spec.name, (1, 1), dict(commands_spec.configs))
    assert compare_topic(commands_spec, actual) == [
        Mismatch(commands_spec.name, "partitions", "6", "2")
    ]


def test_wrong_replication_factor_is_reported(commands_spec: TopicSpec) -> None:
    actual = TopicDescription(commands_spec.name, (3,) * 6, dict(commands_spec.configs))
    assert compare_topic(commands_spec, actual) == [
        Mismatch(commands_spec.name, "replication.factor", "1", "3")
    ]


def test_partitions_with_different_replica_counts_are_reported(commands_spec: TopicSpec) -> None:
    # Mid-reassignment one partition may have more replicas; not averaged away.
    actual = TopicDescription(commands_spec.name, (1, 1, 1, 2, 1, 1), dict(commands_spec.configs))
    assert compare_topic(commands_spec, actual) == [
        Mismatch(commands_spec.name, "replication.factor", "1", "1,2")
    ]


def test_config_unknown_to_the_broker_is_reported(commands_spec: TopicSpec) -> None:
    configs = dict(commands_spec.configs)
    del configs["message.timestamp.type"]
    actual = TopicDescription(commands_spec.name, (1,) * 6, configs)
    assert compare_topic(commands_spec, actual) == [
        Mismatch(commands_spec.name, "message.timestamp.type", "CreateTime", "<absent>")
    ]


def test_value_equal_only_by_broker_default_is_reported(commands_spec: TopicSpec) -> None:
    # A topic created without configs can agree with the spec by accident; it
    # would follow any later change of the broker's defaults.
    actual = TopicDescription(
        commands_spec.name,
        (1,) * 6,
        dict(commands_spec.configs),
        inherited={"max.message.bytes": "Kafka default"},
    )
    assert compare_topic(commands_spec, actual) == [
        Mismatch(
            commands_spec.name,
            "max.message.bytes",
            "1048588 (set on the topic)",
            "1048588 (Kafka default)",
        )
    ]


def test_comparison_is_string_equality(commands_spec: TopicSpec) -> None:
    # "-1" and "-01" mean the same number, but Kafka reports what we set
    # verbatim, so a different spelling means someone else set it.
    actual = _as_created(commands_spec, **{"retention.bytes": "-01"})
    assert compare_topic(commands_spec, actual) == [
        Mismatch(commands_spec.name, "retention.bytes", "-1", "-01")
    ]


def test_undisclosed_value_is_reported(commands_spec: TopicSpec) -> None:
    actual = _as_created(commands_spec, **{"cleanup.policy": None})
    assert compare_topic(commands_spec, actual) == [
        Mismatch(commands_spec.name, "cleanup.policy", "delete", "<not disclosed by the broker>")
    ]


def test_all_differences_are_reported_together(commands_spec: TopicSpec) -> None:
    actual = TopicDescription(
        commands_spec.name,
        (1, 1),
        {**commands_spec.configs, "retention.ms": "1000", "cleanup.policy": "compact"},
    )
    assert {m.setting for m in compare_topic(commands_spec, actual)} == {
        "partitions",
        "retention.ms",
        "cleanup.policy",
    }


def test_report_summary() -> None:
    mismatch = Mismatch("t.commands", "retention.ms", "-1", "1000")
    report = ProvisionReport(
        (
            TopicResult("t.commands", TopicRole.COMMANDS, "mismatch", (mismatch,)),
            TopicResult("t.keys", TopicRole.KEYS, "created"),
            TopicResult("t.rejected", TopicRole.REJECTED, "ok"),
        ),
        dry_run=False,
    )
    assert not report.ok
    assert report.mismatches == (mismatch,)
    assert report.status("t.keys") == "created"
    assert str(mismatch) == "t.commands: retention.ms is 1000, expected -1"
    with pytest.raises(KeyError):
        report.status("t.nope")
    assert ProvisionReport(report.topics[1:], dry_run=False).ok
    missing = ProvisionReport((TopicResult("t.keys", TopicRole.KEYS, "missing"),), dry_run=True)
    assert not missing.ok


# --- failing fast without a broker --------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A port that accepts connections and never answers: a wedged broker."""

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up and closes
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_unreachable_broker_raises_infrastructure_error() -> None:
    settings = Settings(kafka_bootstrap_servers=f"127.0.0.1:{_closed_port()}")
    expected = r"Kafka at 127\.0\.0\.1:\d+ failed bootstrap"
    with pytest.raises(KafkaUnavailableError, match=expected) as caught:
        await provision_topics(settings, timeout_s=5)
    assert isinstance(caught.value, InfrastructureError)


async def test_silent_broker_times_out_instead_of_hanging(silent_port: int) -> None:
    settings = Settings(kafka_bootstrap_servers=f"127.0.0.1:{silent_port}")
    started = time.monotonic()
    with pytest.raises(KafkaUnavailableError):
        await provision_topics(settings, dry_run=True, timeout_s=0.5)
    assert time.monotonic() - started < 5


def test_cli_reports_unreachable_broker_with_exit_1() -> None:
    env = {"PAYLEDGER_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{_closed_port()}"}
    result = CliRunner().invoke(topics, ["check", "--timeout", "5"], env=env)
    assert result.exit_code == 1, result.output
    assert "Kafka at 127.0.0.1:" in result.output


def test_importing_the_commands_does_not_load_the_kafka_client() -> None:
    # `payledger --help` imports every command group; aiokafka must stay deferred.
    code = "import sys, streams.commands; sys.exit('aiokafka' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0

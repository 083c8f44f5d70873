"""Kafka: broker config, cluster id, the Maven jar cache and its marker."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ledger.config import Settings
from ledger.errors import InfrastructureError
from ledger.infra import kafka
from ledger.infra.kafka import (
    KafkaPart,
    ensure_jars,
    jars_complete,
    libs_dir,
    marker_path,
    new_cluster_id,
    read_meta_cluster_id,
    render_server_properties,
)


def _parse(properties: str) -> dict[str, str]:
    pairs = {}
    for line in properties.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key] = value
    return pairs


def test_server_properties_follow_settings(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, kafka_port=29092, kafka_controller_port=29093)
    props = _parse(render_server_properties(settings, tmp_path / "data"))
    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:29093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093"
    assert props["controller.listener.names"] == "CONTROLLER"
    assert props["log.dirs"] == str(tmp_path / "data")
    assert props["auto.create.topics.enable"] == "false"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "share.coordinator.state.topic.replication.factor",
        "share.coordinator.state.topic.min.isr",
    ):
        assert props[key] == "1", key


def test_ipv6_host_is_bracketed(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, kafka_host="::1", kafka_port=29092)
    props = _parse(render_server_properties(settings, tmp_path))
    assert props["listeners"].startswith("PLAINTEXT://[::1]:29092,")


def test_cluster_id_is_kafka_shaped_and_random() -> None:
    ids = {new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    for cluster_id in ids:
        assert len(cluster_id) == 22
        assert not cluster_id.startswith("-")
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_meta_properties_cluster_id(tmp_path: Path) -> None:
    meta = tmp_path / "meta.properties"
    meta.write_text("#\nnode.id=1\nversion=1\ncluster.id=abcDEF123\n")
    assert read_meta_cluster_id(meta) == "abcDEF123"
    assert read_meta_cluster_id(tmp_path / "missing") is None


# ---- the jar cache, with a fake `mvn` on PATH --------------------------------

_FAKE_MVN = """#!/bin/sh
echo run >> "{calls}"
if [ -f "{fail}" ]; then
  echo "[INFO] Scanning for projects..."
  echo "[ERROR] Failed to execute goal on project payledger-kafka-runtime: Could not resolve"
  echo "[ERROR] dependencies: org.apache.kafka:kafka-tools:jar:9.9.9 was not found"
  echo "[ERROR] "
  echo "[ERROR] To see the full stack trace of the errors, re-run Maven with the -e switch."
  exit 1
fi
for arg in "$@"; do
  case "$arg" in -DoutputDirectory=*) out="${{arg#-DoutputDirectory=}}" ;; esac
done
mkdir -p "$out"
touch "$out/kafka_2.13-4.3.1.jar" "$out/kafka-clients-4.3.1.jar"
"""


@pytest.fixture
def fake_mvn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls, fail = tmp_path / "mvn-calls", tmp_path / "mvn-fail"
    script = bindir / "mvn"
    script.write_text(_FAKE_MVN.format(calls=calls, fail=fail))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return calls, fail


def _calls(calls: Path) -> int:
    return len(calls.read_text().splitlines()) if calls.exists() else 0


def _settings(tmp_path: Path) -> Settings:
    return Settings(state_dir=tmp_path / "state", cache_dir=tmp_path / "cache")


def test_second_run_does_not_call_maven(tmp_path: Path, fake_mvn: tuple[Path, Path]) -> None:
    calls, _ = fake_mvn
    settings = _settings(tmp_path)
    assert ensure_jars(settings) == libs_dir(settings)
    assert _calls(calls) == 1
    assert marker_path(settings).exists()
    assert jars_complete(settings)
    ensure_jars(settings)
    assert _calls(calls) == 1


def test_interrupted_copy_is_redone_from_scratch(
    tmp_path: Path, fake_mvn: tuple[Path, Path]
) -> None:
    calls, _ = fake_mvn
    settings = _settings(tmp_path)
    libs = libs_dir(settings)
    libs.mkdir(parents=True)
    (libs / "kafka_2.13-4.3.1.jar").touch()
    (libs / "stale-0.1.jar").touch()  # left by an interrupted or older copy; no marker
    ensure_jars(settings)
    assert _calls(calls) == 1
    assert not (libs / "stale-0.1.jar").exists()
    assert (libs / "kafka-clients-4.3.1.jar").exists()


def test_changed_pom_invalidates_the_marker(tmp_path: Path, fake_mvn: tuple[Path, Path]) -> None:
    calls, _ = fake_mvn
    settings = _settings(tmp_path)
    ensure_jars(settings)
    marker_path(settings).write_text("kafka 4.3.1\npom sha256 0000\n")
    assert not jars_complete(settings)
    ensure_jars(settings)
    assert _calls(calls) == 2


def test_maven_failure_reports_its_error_lines_and_writes_no_marker(
    tmp_path: Path, fake_mvn: tuple[Path, Path]
) -> None:
    calls, fail = fake_mvn
    fail.touch()
    settings = _settings(tmp_path)
    with pytest.raises(InfrastructureError) as caught:
        ensure_jars(settings)
    message = str(caught.value)
    assert "Maven could not fetch the Kafka 4.3.1 jars" in message
    assert "kafka-tools:jar:9.9.9 was not found" in message
    assert "[INFO]" not in message
    assert "full stack trace" not in message
    assert not marker_path(settings).exists()
    fail.unlink()
    ensure_jars(settings)  # the next attempt runs Maven again and succeeds
    assert _calls(calls) == 2
    assert marker_path(settings).exists()


# ---- the part ------------------------------------------------------------------


def test_running_pid_requires_our_broker(tmp_path: Path) -> None:
    part = KafkaPart(Settings(state_dir=tmp_path))
    assert part.running_pid() is None
    # A live PID that is not a broker with our config (this test process) is not ours.
    part.note_started(os.getpid())
    assert part.running_pid() is None
    part.forget()
    assert not part.pid_path.exists()


def test_running_pid_finds_our_broker_without_a_pid_file(tmp_path: Path) -> None:
    part = KafkaPart(Settings(state_dir=tmp_path))
    # Stands in for a broker whose PID file was lost: same command-line tail.
    code = "import time; print('ready', flush=True); time.sleep(60)"
    argv = [sys.executable, "-c", code, "kafka.Kafka", str(part.props_path)]
    with subprocess.Popen(argv, stdout=subprocess.PIPE) as process:
        assert process.stdout is not None
        assert process.stdout.readline() == b"ready\n"
        try:
            assert part.running_pid() == process.pid
            assert part.pid_path.read_text() == f"{process.pid}\n"  # the file is restored
        finally:
            process.kill()
    assert part.running_pid() is None


def test_command_uses_settings_and_shipped_logging_config(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, cache_dir=tmp_path / "cache", kafka_heap_mb=256)
    argv = KafkaPart(settings).command()
    assert "-Xmx256m" in argv
    assert f"-Dlog4j2.configurationFile={kafka.LOG4J2_CONFIG}" in argv
    assert kafka.LOG4J2_CONFIG.is_file()
    assert argv[argv.index("-cp") + 1] == f"{tmp_path / 'cache' / 'kafka-4.3.1' / 'libs'}/*"
    assert argv[-2:] == ["kafka.Kafka", str(tmp_path / "kafka" / "server.properties")]

"""Apache Kafka in KRaft combined mode (broker + controller), one node.

The jars come from Maven Central through ``kafka-pom.xml`` (Maven resolves
and caches them; no tarball download), the broker config is generated from
Settings on every start, and the storage is formatted exactly once.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import shutil
import subprocess
from pathlib import Path

from ledger.config import Settings
from ledger.errors import InfrastructureError
from ledger.infra.apt import ensure_package
from ledger.infra.kafka_probe import broker_ready
from ledger.infra.part import ServerPart
from ledger.infra.ports import PortUse
from ledger.infra.procs import (
    cmdline,
    find_pid,
    pid_alive,
    read_pid,
    run_checked,
    strip_ansi,
    write_pid,
)

POM = Path(__file__).with_name("kafka-pom.xml")
LOG4J2_CONFIG = Path(__file__).with_name("log4j2.yaml")
NODE_ID = 1
_MAVEN_TIMEOUT_S = 1800.0  # a cold ~/.m2 downloads ~100 MB


# ---- jars -------------------------------------------------------------------


def libs_dir(settings: Settings) -> Path:
    return settings.cache_dir / f"kafka-{settings.kafka_version}" / "libs"


def marker_path(settings: Settings) -> Path:
    return settings.cache_dir / f"kafka-{settings.kafka_version}" / "libs.complete"


def _marker_text(version: str) -> str:
    # The pom's hash is part of the marker so that editing the pom (another
    # dependency, another log4j) fetches again instead of running stale jars.
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()
    return f"kafka {version}\npom sha256 {digest}\n"


def jars_complete(settings: Settings) -> bool:
    marker = marker_path(settings)
    try:
        recorded = marker.read_text()
    except OSError:
        return False
    return recorded == _marker_text(settings.kafka_version) and any(
        libs_dir(settings).glob("kafka_2.13-*.jar")
    )


# Maven's generic advice after every failure; it buries the actual error.
_MAVEN_BOILERPLATE = (
    "To see the full stack trace",
    "Re-run Maven using",
    "For more information about the errors",
    "[Help 1] http",
)


def _maven_errors(output: str) -> str:
    lines = [line.strip() for line in strip_ansi(output).splitlines() if line.strip()]
    errors = [
        line
        for line in lines
        if line.startswith("[ERROR]")
        and line != "[ERROR]"
        and not any(text in line for text in _MAVEN_BOILERPLATE)
    ]
    return "\n  ".join((errors or lines)[:20]) or "(Maven printed nothing)"


def ensure_jars(settings: Settings) -> Path:
    """Copy the Kafka jars into the cache once; later calls do not run Maven.

    The marker is written only after Maven succeeded, so an interrupted copy
    is redone from scratch (partial or stale jars are removed first).
    """
    libs = libs_dir(settings)
    if jars_complete(settings):
        return libs
    shutil.rmtree(libs, ignore_errors=True)
    marker_path(settings).unlink(missing_ok=True)
    ensure_package("maven", lambda: shutil.which("mvn") is not None, "fetching the Kafka jars")
    argv = [
        "mvn",
        "-q",
        "-B",
        # Retry artefacts a previous attempt failed to fetch (a network blip)
        # instead of replaying the failure Maven cached in ~/.m2.
        "-U",
        "-Dstyle.color=never",
        "-f",
        str(POM),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={libs}",
        f"-Dkafka.version={settings.kafka_version}",
    ]
    try:
        done = subprocess.run(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=_MAVEN_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise InfrastructureError(
            f"Maven timed out fetching Kafka {settings.kafka_version}"
        ) from exc
    if done.returncode != 0:
        raise InfrastructureError(
            f"Maven could not fetch the Kafka {settings.kafka_version} jars "
            f"(exit {done.returncode}):\n  {_maven_errors(done.stdout)}"
        )
    marker = marker_path(settings)
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(_marker_text(settings.kafka_version))
    tmp.replace(marker)
    return libs


# ---- configuration ----------------------------------------------------------


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _escape(value: str) -> str:
    # Java .properties treats backslash as an escape character.
    return value.replace("\\", "\\\\")


def render_server_properties(settings: Settings, data_dir: Path) -> str:
    """The broker config; regenerated on every start so it follows Settings."""
    client = _hostport(settings.kafka_host, settings.kafka_port)
    controller = _hostport(settings.kafka_host, settings.kafka_controller_port)
    values = {
        "process.roles": "broker,controller",
        "node.id": str(NODE_ID),
        "controller.quorum.bootstrap.servers": controller,
        "listeners": f"PLAINTEXT://{client},CONTROLLER://{controller}",
        "advertised.listeners": f"PLAINTEXT://{client},CONTROLLER://{controller}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data_dir),
        # One node: every internal topic must be satisfiable by that node alone.
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # Nobody else will join the group: do not wait for them.
        "group.initial.rebalance.delay.ms": "0",
        # Topics are provisioned explicitly with their retention; a typo must
        # fail, not silently create a topic with broker defaults.
        "auto.create.topics.enable": "false",
    }
    lines = ["# Generated by payledger (ledger/infra/kafka.py) on every start; edits are lost."]
    lines += [f"{key}={_escape(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding."""
    while True:
        candidate = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("=")
        if not candidate.startswith("-"):  # Kafka's own rule: it reads as a CLI flag
            return candidate


def read_meta_cluster_id(meta_properties: Path) -> str | None:
    try:
        text = meta_properties.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "cluster.id":
            return value.strip()
    return None


# ---- the part ---------------------------------------------------------------


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and Path(java_home, "bin", "java").is_file():
        return str(Path(java_home, "bin", "java"))
    ensure_package(
        "default-jre-headless", lambda: shutil.which("java") is not None, "running Kafka"
    )
    return shutil.which("java") or "java"


class KafkaPart(ServerPart):
    name = "kafka"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.base_dir = settings.state_dir / "kafka"
        self.props_path = self.base_dir / "server.properties"
        self.data_dir = self.base_dir / "data"
        self.cluster_id_path = self.base_dir / "cluster-id"

    def ports(self) -> list[PortUse]:
        host = self.settings.kafka_host
        return [
            PortUse(host, self.settings.kafka_port, "kafka_port"),
            PortUse(host, self.settings.kafka_controller_port, "kafka_controller_port"),
        ]

    def cluster_id(self) -> str | None:
        try:
            return self.cluster_id_path.read_text().strip() or None
        except OSError:
            return None

    def prepare(self) -> None:
        java = _java()
        libs = ensure_jars(self.settings)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.props_path.write_text(render_server_properties(self.settings, self.data_dir))
        self._format_once(java, libs)

    def _format_once(self, java: str, libs: Path) -> None:
        meta = self.data_dir / "meta.properties"
        if meta.exists():
            # Formatted before: the data dir is the truth; keep the id file in step.
            formatted_id = read_meta_cluster_id(meta)
            if formatted_id and formatted_id != self.cluster_id():
                self.cluster_id_path.write_text(formatted_id + "\n")
            return
        cluster_id = self.cluster_id() or new_cluster_id()
        self.cluster_id_path.write_text(cluster_id + "\n")
        run_checked(
            [
                java,
                f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}",
                "-cp",
                f"{libs}/*",
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "-t",
                cluster_id,
                "-c",
                str(self.props_path),
            ],
            what="formatting the Kafka storage",
            cwd=self.base_dir,
        )

    def command(self) -> list[str]:
        return [
            shutil.which("java") or "java",
            f"-Xmx{self.settings.kafka_heap_mb}m",
            # A broker that ran out of heap is in an unknown state: exit so the
            # supervisor (or the person) sees it, instead of limping on.
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}",
            "-cp",
            f"{libs_dir(self.settings)}/*",
            "kafka.Kafka",
            str(self.props_path),
        ]

    def command_cwd(self) -> Path:
        return self.base_dir

    def _signature(self) -> str:
        # The end of the broker's command line. The config path is unique to
        # this state dir: a recycled PID running something else, another
        # stack's broker, or an editor open on the config does not match it.
        return f"kafka.Kafka {self.props_path}"

    def running_pid(self) -> int | None:
        pid = read_pid(self.pid_path)
        if pid is not None and pid_alive(pid) and self._signature() in cmdline(pid):
            return pid
        # The PID file can be lost (an interrupted `up`, a cleaned run dir)
        # while the broker runs on: find it by its command line rather than
        # call it stopped and then trip over its ports.
        found = find_pid(self._signature())
        if found is not None:
            write_pid(self.pid_path, found)
        return found

    def is_ready(self) -> bool:
        cluster_id = self.cluster_id()
        if cluster_id is None:
            return False
        return broker_ready(self.settings.kafka_host, self.settings.kafka_port, cluster_id, NODE_ID)

    def endpoints(self) -> dict[str, str]:
        return {
            "bootstrap servers": _hostport(self.settings.kafka_host, self.settings.kafka_port),
            "controller": _hostport(self.settings.kafka_host, self.settings.kafka_controller_port),
            "data": str(self.data_dir),
            "log": str(self.log_path),
        }

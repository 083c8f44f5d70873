"""Kubo, the IPFS node checkpoints and leaf bundles are published to, as a local service.

Built once from source into ``settings.cache_dir / "go" / "bin"`` and found
again by a version marker, like stripe-mock. Its repository (IPFS_PATH) is
``<state dir>/kubo``, initialised once with Kubo's ``test`` profile (no
bootstrap peers, no auto-configuration fetched from the network, loopback
swarm on random ports). Every start sets the RPC address to
``kubo_api_host:kubo_api_port`` and turns the HTTP gateway off, then runs
``ipfs daemon --offline``: the node stores, pins and serves blocks and never
dials out. It is ready when ``POST /api/v0/id`` answers with the peer id of
this repository, which tells our node from anything else on the port.

Why not ``go install github.com/ipfs/kubo/cmd/ipfs@<tag>``: since v0.40
Kubo's go.mod carries ``exclude`` directives, and ``go install pkg@version``
refuses any module whose go.mod has them. The build therefore runs ``go get
-tool`` at the pinned tag in a one-module workspace of the cache (Kubo's own
requirements make the build list: same versions), then ``go install`` of the
package from there. The result is checked with ``ipfs version``.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import urllib.request
from pathlib import Path

from ledger.config import Settings
from ledger.errors import InfrastructureError
from ledger.infra.mocks import (
    MockPart,
    Progress,
    _quiet,
    _read_marker,
    _url,
    _write_marker,
    go_bin_dir,
)
from ledger.infra.part import Layout, PartStatus, wait_until_ready
from ledger.infra.ports import PortUse, check_ports
from ledger.infra.procs import run_checked
from ledger.limits import MOCK_INSTALL_TIMEOUT_S, MOCK_PROBE_TIMEOUT_S

KUBO_MODULE = "github.com/ipfs/kubo"
KUBO_PACKAGE = f"{KUBO_MODULE}/cmd/ipfs"
# The build workspace's module path: a reserved domain, never fetched.
_BUILD_MODULE = "payledger.invalid/kubo-build"
# `ipfs config` and `ipfs init` on a fresh repository take well under a second.
_KUBO_COMMAND_TIMEOUT_S = 60.0

_install_lock = threading.Lock()


def kubo_binary(settings: Settings) -> Path:
    return go_bin_dir(settings) / "ipfs"


def kubo_repo(settings: Settings) -> Path:
    return settings.state_dir / "kubo"


def kubo_api_url(settings: Settings) -> str:
    return _url(settings.kubo_api_host, settings.kubo_api_port)


def _marker(settings: Settings) -> Path:
    return settings.cache_dir / "go" / "kubo.installed"


def _build_dir(settings: Settings) -> Path:
    return settings.cache_dir / "go" / "kubo-build"


def _kubo_env(settings: Settings) -> dict[str, str]:
    # Telemetry off: an offline node has nowhere to send it, and a ledger's
    # node sends nothing it was not asked to.
    return {**os.environ, "IPFS_PATH": str(kubo_repo(settings)), "IPFS_TELEMETRY": "off"}


def kubo_installed(settings: Settings) -> bool:
    expected = f"{KUBO_PACKAGE}@{settings.kubo_version}\n"
    return _read_marker(_marker(settings)) == expected and kubo_binary(settings).is_file()


def ensure_kubo(settings: Settings) -> Path:
    """Build Kubo at the pinned tag into the cache, unless it is there already."""
    binary = kubo_binary(settings)
    with _install_lock:
        if kubo_installed(settings):
            return binary
        go = shutil.which("go")
        if go is None:
            raise InfrastructureError(
                "Kubo (the IPFS node) is built with Go, and Go is not installed; "
                "install the Go release Kubo's go.mod asks for"
            )
        _marker(settings).unlink(missing_ok=True)
        build = _build_dir(settings)
        shutil.rmtree(build, ignore_errors=True)
        build.mkdir(parents=True)
        (build / "go.mod").write_text(f"module {_BUILD_MODULE}\n\ngo 1.22\n")
        go_bin_dir(settings).mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "GOBIN": str(go_bin_dir(settings))}
        module = f"{KUBO_PACKAGE}@{settings.kubo_version}"
        run_checked(
            [go, "get", "-tool", module],
            what=f"go get -tool {module}",
            env=env,
            cwd=build,
            timeout_s=MOCK_INSTALL_TIMEOUT_S,
        )
        run_checked(
            [go, "install", KUBO_PACKAGE],
            what=f"go install {KUBO_PACKAGE} ({settings.kubo_version})",
            env=env,
            cwd=build,
            timeout_s=MOCK_INSTALL_TIMEOUT_S,
        )
        version = run_checked([binary, "version"], what="ipfs version").strip()
        if version != f"ipfs version {settings.kubo_version.removeprefix('v')}":
            raise InfrastructureError(
                f"built Kubo {settings.kubo_version}, but the binary says {version!r}"
            )
        _write_marker(_marker(settings), f"{module}\n")
        return binary


def ensure_kubo_repo(settings: Settings) -> None:
    """Initialise the repository once, then point its RPC at the configured address."""
    binary = str(kubo_binary(settings))
    repo = kubo_repo(settings)
    if not (repo / "config").is_file():
        # Initialised beside, then renamed: a repository with a config file
        # is always a complete one, even after an interrupted first start.
        fresh = repo.with_name(repo.name + ".init")
        shutil.rmtree(fresh, ignore_errors=True)
        run_checked(
            [binary, "init", "--profile", "test", "--empty-repo"],
            what="ipfs init --profile test",
            env={**_kubo_env(settings), "IPFS_PATH": str(fresh)},
            timeout_s=_KUBO_COMMAND_TIMEOUT_S,
        )
        fresh.replace(repo)
    # Set at every start, so a changed port setting takes effect.
    api = f"/ip4/{settings.kubo_api_host}/tcp/{settings.kubo_api_port}"
    for argv, what in (
        (["config", "Addresses.API", api], "ipfs config Addresses.API"),
        (["config", "--json", "Addresses.Gateway", "[]"], "ipfs config Addresses.Gateway"),
    ):
        run_checked(
            [binary, *argv],
            what=what,
            env=_kubo_env(settings),
            timeout_s=_KUBO_COMMAND_TIMEOUT_S,
        )


def _peer_id(settings: Settings) -> str | None:
    try:
        config = json.loads((kubo_repo(settings) / "config").read_text())
        peer_id = config["Identity"]["PeerID"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return peer_id if isinstance(peer_id, str) else None


def _rpc_id(settings: Settings) -> str | None:
    """The peer id the node on the RPC port reports, or None if nothing answers."""
    request = urllib.request.Request(  # noqa: S310 - http URL built here
        f"{kubo_api_url(settings)}/api/v0/id", data=b"", method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=MOCK_PROBE_TIMEOUT_S) as response:  # noqa: S310
            answer = json.loads(response.read(65_536))
    except (OSError, ValueError):
        return None
    peer_id = answer.get("ID") if isinstance(answer, dict) else None
    return peer_id if isinstance(peer_id, str) else None


class KuboPart(MockPart):
    name = "kubo"

    def ports(self) -> list[PortUse]:
        return [PortUse(self.settings.kubo_api_host, self.settings.kubo_api_port, "kubo_api_port")]

    def prepare(self) -> None:
        ensure_kubo(self.settings)
        ensure_kubo_repo(self.settings)

    def command(self) -> list[str]:
        return [
            str(kubo_binary(self.settings)),
            f"--repo-dir={kubo_repo(self.settings)}",
            "daemon",
            "--offline",
        ]

    def command_env(self) -> dict[str, str]:
        return _kubo_env(self.settings)

    def _signature(self) -> str:
        return f"--repo-dir={kubo_repo(self.settings)} daemon --offline"

    def is_ready(self) -> bool:
        peer_id = _peer_id(self.settings)
        return peer_id is not None and _rpc_id(self.settings) == peer_id

    def endpoints(self) -> dict[str, str]:
        return {
            "rpc": kubo_api_url(self.settings),
            "repo": str(kubo_repo(self.settings)),
            "version": self.settings.kubo_version,
            "log": str(self.log_path),
        }


def kubo_up(settings: Settings, progress: Progress = _quiet) -> PartStatus:
    """Install, initialise and start Kubo unless it runs; wait until it answers."""
    part = KuboPart(settings)
    with Layout(settings.state_dir).lock(progress):
        pid = part.running_pid()
        if pid is None:
            check_ports(part.name, part.ports())  # before the slow build
            progress(f"{part.name}: preparing")
            part.prepare()
            progress(f"{part.name}: starting on {kubo_api_url(settings)}")
            started = part.start_daemon()
            try:
                wait_until_ready([part])
            except BaseException:
                part.stop(started)  # nothing half started stays behind
                raise
        else:
            progress(f"{part.name}: already running (pid {pid})")
            wait_until_ready([part])
    return part.status()


def kubo_down(settings: Settings, progress: Progress = _quiet) -> PartStatus:
    """Stop Kubo if it runs in this state dir."""
    part = KuboPart(settings)
    with Layout(settings.state_dir).lock(progress):
        pid = part.running_pid()
        if pid is None:
            part.forget()
        else:
            progress(f"{part.name}: stopping (pid {pid})")
            part.stop(pid)
    return part.status()

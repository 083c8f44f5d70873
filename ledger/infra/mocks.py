"""The payment providers' offline peers, as local services of the stack.

    stripe-mock      Stripe's own mock, built with ``go install`` at a pinned tag
    prism-orders     Stoplight Prism (npm, pinned) serving PayPal's checkout_orders_v2.json
    prism-payments   the same, serving payments_payment_v2.json
    paypal-gateway   PayPal's one base URL: answers the OAuth token endpoint
                     (not in those specs) and forwards /v2/checkout and
                     /v2/payments to the two Prism servers (streams/fakes/paypal.py)
    coinbase-fake    a Coinbase Commerce charges API (streams/fakes/coinbase.py)

Binaries are installed once into ``settings.cache_dir`` (``go/bin`` and
``prism``) and found again by a version marker, so only the first ``up`` on a
machine pays for ``go install`` and ``npm install``. The parts are ordinary
``ServerPart``\\ s: daemons with PID files and logs in the state dir, found by
their command line, probed over HTTP before they count as ready.

``payledger infra up --with-mocks`` starts them after the stack; the
integration tests start them from a session fixture. Like the rest of
``ledger/infra``, this module uses only the standard library: the two Python
fakes run as ``python -m`` subprocesses, never imported here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import threading
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

from ledger.config import Settings
from ledger.errors import InfrastructureError
from ledger.infra.apt import ensure_package
from ledger.infra.part import Layout, PartStatus, ServerPart, wait_until_ready
from ledger.infra.ports import PortUse, check_ports
from ledger.infra.procs import cmdline, find_pid, pid_alive, read_pid, run_checked, write_pid
from ledger.infra.supervisor import settings_env
from ledger.limits import MOCK_INSTALL_TIMEOUT_S, MOCK_PROBE_TIMEOUT_S

STRIPE_MOCK_MODULE = "github.com/stripe/stripe-mock"
PRISM_PACKAGE = "@stoplight/prism-cli"
# Prism 5.14.2 is the newest release that runs on Node 18/20 (5.15 and later
# need Node 24); its engines field asks for at least this.
_NODE_MAJOR_MIN = 18
PAYPAL_ORDERS_SPEC = "checkout_orders_v2.json"
PAYPAL_PAYMENTS_SPEC = "payments_payment_v2.json"
# Path prefix of the fakes' own endpoints (health, recorded requests): outside
# every provider's API, so it can never shadow a real route.
FAKE_ADMIN_PREFIX = "/__fake"

Progress = Callable[[str], None]

# Two Prism parts share one installation: the second prepare() waits for the
# first instead of running npm into the same directory at the same time.
# One lock per thing installed (made on first use): parts prepare side by side.
_install_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)


def _quiet(_: str) -> None:
    pass


def _cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _url(host: str, port: int) -> str:
    return f"http://{_hostport(host, port)}"


def _read_marker(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _write_marker(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)  # atomic: an interrupted install never looks complete


# ---- stripe-mock: go install ------------------------------------------------


def go_bin_dir(settings: Settings) -> Path:
    return settings.cache_dir / "go" / "bin"


def stripe_mock_binary(settings: Settings) -> Path:
    return go_bin_dir(settings) / "stripe-mock"


def stripe_mock_installed(settings: Settings) -> bool:
    return go_installed(settings, "stripe-mock", STRIPE_MOCK_MODULE, settings.stripe_mock_version)


def ensure_stripe_mock(settings: Settings) -> Path:
    """Build stripe-mock at the pinned tag into the cache, unless it is there already."""
    return go_install(
        settings,
        "stripe-mock",
        STRIPE_MOCK_MODULE,
        settings.stripe_mock_version,
        go_needed="Go 1.22 or newer (stripe-mock's go.mod asks for 1.22.1)",
    )


def go_installed(settings: Settings, binary: str, module: str, version: str) -> bool:
    """Whether ``binary`` was built from ``module@version`` into the cache (its marker says so)."""
    marker = settings.cache_dir / "go" / f"{binary}.installed"
    return (
        _read_marker(marker) == f"{module}@{version}\n"
        and (go_bin_dir(settings) / binary).is_file()
    )


def go_install(
    settings: Settings, binary: str, module: str, version: str, *, go_needed: str
) -> Path:
    """``go install module@version`` into the cache's Go bin dir, once; the binary's path.

    A marker file names what was built, so a second run (or another clone on
    this machine, Go's own caches being shared) does not build again.
    """
    path = go_bin_dir(settings) / binary
    with _install_locks[binary]:
        if go_installed(settings, binary, module, version):
            return path
        go = shutil.which("go")
        if go is None:
            raise InfrastructureError(
                f"{binary} is built with `go install`, and Go is not installed; install {go_needed}"
            )
        marker = settings.cache_dir / "go" / f"{binary}.installed"
        marker.unlink(missing_ok=True)
        go_bin_dir(settings).mkdir(parents=True, exist_ok=True)
        target = f"{module}@{version}"
        run_checked(
            [go, "install", target],
            what=f"go install {target}",
            env={**os.environ, "GOBIN": str(go_bin_dir(settings))},
            timeout_s=MOCK_INSTALL_TIMEOUT_S,
        )
        _write_marker(marker, f"{target}\n")
        return path


# ---- Prism: npm install -----------------------------------------------------


def prism_prefix(settings: Settings) -> Path:
    return settings.cache_dir / "prism"


def prism_entry(settings: Settings) -> Path:
    return (
        prism_prefix(settings) / "node_modules" / "@stoplight" / "prism-cli" / "dist" / "index.js"
    )


def _prism_marker(settings: Settings) -> Path:
    return prism_prefix(settings) / "payledger.installed"


def prism_installed(settings: Settings) -> bool:
    expected = f"{PRISM_PACKAGE}@{settings.prism_version}\n"
    return _read_marker(_prism_marker(settings)) == expected and prism_entry(settings).is_file()


def _node() -> str:
    ensure_package(
        "npm",
        lambda: shutil.which("node") is not None and shutil.which("npm") is not None,
        "installing and running Prism (the PayPal mock)",
    )
    node = shutil.which("node") or "node"
    version = run_checked([node, "--version"], what="node --version").strip()
    match = re.match(r"v(\d+)\.", version)
    if match is None or int(match.group(1)) < _NODE_MAJOR_MIN:
        raise InfrastructureError(
            f"Prism needs Node.js {_NODE_MAJOR_MIN} or newer; {node} is {version or 'unknown'}"
        )
    return node


def ensure_prism(settings: Settings) -> Path:
    """npm-install Prism at the pinned version into the cache, unless it is there already."""
    with _install_locks["prism"]:
        if prism_installed(settings):
            return prism_entry(settings)
        _node()
        npm = shutil.which("npm") or "npm"
        prefix = prism_prefix(settings)
        # Another version, or an interrupted install: start from nothing so no
        # stale package survives in node_modules.
        shutil.rmtree(prefix, ignore_errors=True)
        prefix.mkdir(parents=True)
        package = f"{PRISM_PACKAGE}@{settings.prism_version}"
        run_checked(
            [
                npm,
                "install",
                "--prefix",
                str(prefix),
                "--save-exact",
                "--no-audit",
                "--no-fund",
                "--no-update-notifier",
                # The only install script in Prism's tree is @scarf/scarf's
                # download analytics; nothing it installs needs building.
                "--ignore-scripts",
                package,
            ],
            what=f"npm install {package}",
            env={**os.environ, "SCARF_ANALYTICS": "false"},
            timeout_s=MOCK_INSTALL_TIMEOUT_S,
        )
        if not prism_entry(settings).is_file():
            raise InfrastructureError(
                f"npm installed {package}, but {prism_entry(settings)} is missing"
            )
        _write_marker(_prism_marker(settings), f"{package}\n")
        return prism_entry(settings)


# ---- probes -----------------------------------------------------------------


def http_probe(
    url: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One GET with a short timeout: (status, lower-cased headers, body); status 0 if
    nothing answered. 4xx and 5xx are answers too: the caller decides what is ready."""
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 - http(s) built here
    try:
        with urllib.request.urlopen(request, timeout=MOCK_PROBE_TIMEOUT_S) as response:  # noqa: S310
            return (
                response.status,
                {k.lower(): v for k, v in response.headers.items()},
                response.read(65_536),
            )
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, b""
    except (OSError, ValueError):
        return 0, {}, b""


def _fake_health(url: str, service: str) -> bool:
    status, _, body = http_probe(f"{url}{FAKE_ADMIN_PREFIX}/health")
    if status != 200:
        return False
    try:
        return bool(json.loads(body).get("service") == service)
    except (ValueError, AttributeError):
        return False


# ---- the parts --------------------------------------------------------------


class MockPart(ServerPart):
    """A mock found by a signature in its command line, ready when it answers HTTP."""

    def _signature(self) -> str:
        raise NotImplementedError

    def running_pid(self) -> int | None:
        signature = self._signature()
        pid = read_pid(self.pid_path)
        if pid is not None and pid_alive(pid) and signature in cmdline(pid):
            return pid
        # The PID file can be lost while the mock runs on: find it by its
        # command line rather than trip over its port -- but only a mock that
        # runs in this state dir (its working directory). The same ports in
        # another state dir are someone else's mock, never ours to stop.
        found = find_pid(signature)
        if found is None or _cwd(found) != self.settings.state_dir:
            return None
        write_pid(self.pid_path, found)
        return found

    def command_cwd(self) -> Path:
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        return self.settings.state_dir


class StripeMockPart(MockPart):
    name = "stripe-mock"

    @property
    def _host(self) -> str:
        return self.settings.mocks_host

    def ports(self) -> list[PortUse]:
        return [
            PortUse(self._host, self.settings.stripe_mock_port, "stripe_mock_port"),
            PortUse(self._host, self.settings.stripe_mock_https_port, "stripe_mock_https_port"),
        ]

    def prepare(self) -> None:
        ensure_stripe_mock(self.settings)

    def command(self) -> list[str]:
        return [
            str(stripe_mock_binary(self.settings)),
            "-http-addr",
            _hostport(self._host, self.settings.stripe_mock_port),
            "-https-addr",
            _hostport(self._host, self.settings.stripe_mock_https_port),
        ]

    def _signature(self) -> str:
        return f"stripe-mock -http-addr {_hostport(self._host, self.settings.stripe_mock_port)}"

    def is_ready(self) -> bool:
        status, headers, _ = http_probe(
            f"{_url(self._host, self.settings.stripe_mock_port)}/v1/balance",
            {"Authorization": "Bearer sk_test_probe"},
        )
        # The version header tells stripe-mock from anything else on the port.
        return status == 200 and "stripe-mock-version" in headers

    def endpoints(self) -> dict[str, str]:
        return {
            "http": _url(self._host, self.settings.stripe_mock_port),
            "https": f"https://{_hostport(self._host, self.settings.stripe_mock_https_port)}",
            "version": self.settings.stripe_mock_version,
            "log": str(self.log_path),
        }


class PrismPart(MockPart):
    """Prism in static mock mode on one of PayPal's OpenAPI files.

    Static, not dynamic: dynamic mode fills every optional field with random
    text (close to a megabyte for one order), which tests nothing more than the
    schema already says and makes failures unrepeatable.
    """

    spec_file: ClassVar[str]
    port_setting: ClassVar[str]
    probe_path: ClassVar[str]

    @property
    def port(self) -> int:
        port: int = getattr(self.settings, self.port_setting)
        return port

    def spec_path(self) -> Path:
        return self.settings.paypal_specs_path() / self.spec_file

    def ports(self) -> list[PortUse]:
        return [PortUse(self.settings.mocks_host, self.port, self.port_setting)]

    def prepare(self) -> None:
        if not self.spec_path().is_file():
            raise InfrastructureError(
                f"PayPal's OpenAPI file {self.spec_path()} is missing; point "
                f"PAYLEDGER_PAYPAL_SPECS_DIR at the folder that holds {self.spec_file}"
            )
        ensure_prism(self.settings)

    def command(self) -> list[str]:
        return [
            shutil.which("node") or "node",
            str(prism_entry(self.settings)),
            "mock",
            "-h",
            self.settings.mocks_host,
            "-p",
            str(self.port),
            # Warnings carry the request violations Prism finds; info would
            # log eight lines per request.
            "-v",
            "warn",
            str(self.spec_path()),
        ]

    def _signature(self) -> str:
        return f"prism-cli/dist/index.js mock -h {self.settings.mocks_host} -p {self.port}"

    def is_ready(self) -> bool:
        # Prism checks that some bearer token is present, and answers 404 for
        # paths not in its spec, so a 200 here means: Prism, with this spec.
        status, _, _ = http_probe(
            f"{_url(self.settings.mocks_host, self.port)}{self.probe_path}",
            {"Authorization": "Bearer probe"},
        )
        return status == 200

    def endpoints(self) -> dict[str, str]:
        return {
            "url": _url(self.settings.mocks_host, self.port),
            "spec": str(self.spec_path()),
            "version": self.settings.prism_version,
            "log": str(self.log_path),
        }


class PrismOrdersPart(PrismPart):
    name = "prism-orders"
    spec_file = PAYPAL_ORDERS_SPEC
    port_setting = "paypal_mock_orders_port"
    probe_path = "/v2/checkout/orders/PROBE0"


class PrismPaymentsPart(PrismPart):
    name = "prism-payments"
    spec_file = PAYPAL_PAYMENTS_SPEC
    port_setting = "paypal_mock_payments_port"
    probe_path = "/v2/payments/captures/PROBE0"


class PythonFakePart(MockPart):
    """One of the fakes in ``streams/fakes``, run as ``python -m``.

    Its credentials reach it as PAYLEDGER_* variables (not arguments, which
    any local user can read in ``ps``), so fake and adapter read one Settings.
    """

    module: ClassVar[str]
    port_setting: ClassVar[str]

    @property
    def port(self) -> int:
        port: int = getattr(self.settings, self.port_setting)
        return port

    def ports(self) -> list[PortUse]:
        return [PortUse(self.settings.mocks_host, self.port, self.port_setting)]

    def prepare(self) -> None:
        pass  # nothing to install: it runs on the project's own environment

    def extra_args(self) -> list[str]:
        return []

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            self.module,
            "--host",
            self.settings.mocks_host,
            "--port",
            str(self.port),
            *self.extra_args(),
        ]

    def command_env(self) -> dict[str, str]:
        return {**os.environ, **settings_env(self.settings), "PYTHONUNBUFFERED": "1"}

    def _signature(self) -> str:
        return f"-m {self.module} --host {self.settings.mocks_host} --port {self.port}"

    def is_ready(self) -> bool:
        return _fake_health(_url(self.settings.mocks_host, self.port), self.name)

    def endpoints(self) -> dict[str, str]:
        return {"url": _url(self.settings.mocks_host, self.port), "log": str(self.log_path)}


class PayPalGatewayPart(PythonFakePart):
    name = "paypal-gateway"
    module = "streams.fakes.paypal"
    port_setting = "paypal_mock_port"

    def extra_args(self) -> list[str]:
        host = self.settings.mocks_host
        return [
            "--orders-upstream",
            _url(host, self.settings.paypal_mock_orders_port),
            "--payments-upstream",
            _url(host, self.settings.paypal_mock_payments_port),
            "--token-ttl-s",
            str(self.settings.paypal_mock_token_ttl_s),
        ]


class CoinbaseFakePart(PythonFakePart):
    name = "coinbase-fake"
    module = "streams.fakes.coinbase"
    port_setting = "coinbase_mock_port"


def mock_parts(settings: Settings) -> list[ServerPart]:
    """Every mock, in start order (stopped in reverse)."""
    return [
        StripeMockPart(settings),
        PrismOrdersPart(settings),
        PrismPaymentsPart(settings),
        PayPalGatewayPart(settings),
        CoinbaseFakePart(settings),
    ]


class MockStack:
    """The mocks of one state dir as background daemons; every method idempotent."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.layout = Layout(settings.state_dir)
        self.parts = mock_parts(settings)

    def up(self, progress: Progress = _quiet) -> list[PartStatus]:
        """Install what is missing, start what is not running, wait until all answer."""
        with self.layout.lock(progress):
            stopped = [part for part in self.parts if part.running_pid() is None]
            for part in stopped:
                check_ports(part.name, part.ports())  # before any slow install
            # The Go build and the npm install are independent; run them side by side.
            with ThreadPoolExecutor(max_workers=len(self.parts)) as pool:
                for future in [pool.submit(self._prepare, part, progress) for part in stopped]:
                    future.result()
            started: list[tuple[ServerPart, int]] = []
            try:
                for part in self.parts:
                    if part in stopped:
                        progress(f"{part.name}: starting")
                        started.append((part, part.start_daemon()))
                    else:
                        progress(f"{part.name}: already running (pid {part.running_pid()})")
                progress("waiting until every mock answers")
                wait_until_ready(self.parts)
            except BaseException:
                # Nothing half started stays behind: what this call started, it stops.
                for part, pid in reversed(started):
                    part.stop(pid)
                raise
        return self.status()

    @staticmethod
    def _prepare(part: ServerPart, progress: Progress) -> None:
        progress(f"{part.name}: preparing")
        part.prepare()

    def down(self, progress: Progress = _quiet) -> list[PartStatus]:
        """Stop every running mock, in reverse start order."""
        with self.layout.lock(progress):
            for part in reversed(self.parts):
                pid = part.running_pid()
                if pid is None:
                    part.forget()
                    continue
                progress(f"{part.name}: stopping (pid {pid})")
                part.stop(pid)
        return self.status()

    def status(self) -> list[PartStatus]:
        return [part.status() for part in self.parts]

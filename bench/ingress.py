"""Ingress throughput: POST /v1/payments on one uvicorn worker, beside the framework floor.

In one run, with the same load generator, load and uvicorn options for both:

1. framework floor: a bare FastAPI app in its own uvicorn worker, one POST route
   that parses the same JSON body into the same ``CreatePaymentRequest`` and
   answers 202 with a small JSON body (nothing behind it);
2. payledger: ``ingress.app:create_app`` in one uvicorn worker, the real path:
   API key, rate limit, Idempotency-Key in Postgres, card-data guard,
   validation, customer data sealed, signed command on Kafka (acks=all),
   202 only after the broker's ack;
3. where the time goes: a third worker runs the same app wrapped by
   ``instrumented_app`` below, which times the phases of each request (wall
   clock) and then profiles the process (cProfile), under the same load.

Load: wrk (Debian's package; installed when missing and this is root on
Debian) with ``bench/ingress.lua``, which sends a unique Idempotency-Key per
request and counts every response that is not 202; those do not count as
accepted. Without wrk an asyncio+httpx client in this process stands in, and
then the client may be the bottleneck.

The stack (Kafka, Postgres) is started with ``Stack(settings).up()`` when it is
not running, and stopped again at the end if this run started it (unless
``--keep-stack``). Every run uses its own topic prefix and its own merchant,
whose rate limit is raised so that it never throttles.

Usage: python bench/ingress.py [--duration 15] [--warmup 3] [--connections 32]
                               [--threads 1] [--client wrk|httpx] [--keep-stack]
Figures only: this script asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
LUA_SCRIPT = BENCH_DIR / "ingress.lua"

if __name__ == "__main__":
    # Run as a script, this directory comes first on sys.path and this file
    # would shadow the ``ingress`` package: put the repository first instead.
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH_DIR]
    sys.path.insert(0, os.fspath(ROOT))

TARGET_ACCEPTED_PER_S = 2_500
TARGET_FLOOR_RATIO = 0.4
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0
WRK_TIMEOUT = "10s"  # above publish_timeout_s: a slow answer is latency, not a client timeout
BREAKDOWN_WINDOW_S = 3

# The request every client sends: a card-free intent with customer data, so
# the sealing path runs too (the same body as the integration tests).
REQUEST_BODY: dict[str, Any] = {
    "provider": "stripe",
    "amount_minor": 1050,
    "currency": "EUR",
    "capture_method": "manual",
    "description": "Order 1234",
    "metadata": {"order": "1234"},
    "customer": {"reference": "cust-77", "email": "ada@example.com", "name": "Ada Lovelace"},
}


# --- the two extra ASGI apps, loaded by uvicorn as bench.ingress:<factory> -------------------


def floor_app() -> Any:
    """The framework floor: FastAPI, one POST route, the same model, 202 and a small body."""
    from fastapi import FastAPI
    from starlette.responses import JSONResponse

    from ingress.models import CreatePaymentRequest

    async def create_payment(payload):  # type: ignore[no-untyped-def]
        return JSONResponse(
            {"status": "accepted", "amount_minor": payload.amount_minor}, status_code=202
        )

    # Real objects, not the strings ``from __future__ import annotations`` makes:
    # FastAPI resolves string annotations in module globals, where these are not.
    create_payment.__annotations__ = {"payload": CreatePaymentRequest, "return": JSONResponse}
    app = FastAPI(title="framework floor")
    app.add_api_route(
        "/v1/payments", create_payment, methods=["POST"], status_code=202, response_model=None
    )
    return app


def instrumented_app() -> Any:
    """The real app (settings from PAYLEDGER_*), wrapped to time phases and profile on demand."""
    from ingress.app import create_app

    return _Instrumented(create_app())


class _Instrumented:
    """ASGI wrapper: wall time per phase of POST /v1/payments, cProfile between two calls.

    ``POST /__bench/start`` (``?profile=1`` to run cProfile too) resets the
    figures; ``POST /__bench/stop`` returns them as JSON. The phases are timed
    by wrapping, in this process only, the objects the route awaits.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.patched = False
        self.timers: dict[str, list[float]] = {}
        self.accepted = 0
        self.started = time.perf_counter()
        self.cpu_started = time.process_time()
        self.profiler: Any = None

    def add(self, name: str, seconds: float) -> None:
        entry = self.timers.setdefault(name, [0.0, 0])
        entry[0] += seconds
        entry[1] += 1

    def timed(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await function(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - started)

        return wrapper

    def _patch(self, svc: Any) -> None:
        import psycopg

        add = self.add
        execute = psycopg.AsyncConnection.execute

        async def timed_execute(connection: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await execute(connection, query, *args, **kwargs)
            finally:
                add("sql " + _statement(query), time.perf_counter() - started)

        psycopg.AsyncConnection.execute = timed_execute  # type: ignore[method-assign,assignment]

        pool_connection = svc.pool.connection

        @asynccontextmanager
        async def connection(*args: Any, **kwargs: Any) -> Any:
            asked = time.perf_counter()
            async with pool_connection(*args, **kwargs) as conn:
                got = time.perf_counter()
                add("pool wait", got - asked)
                try:
                    yield conn
                finally:
                    add("pool held", time.perf_counter() - got)

        svc.pool.connection = connection
        auth = svc.authenticator
        auth.authenticate = self.timed("authenticate", auth.authenticate)
        svc.customer_keys.seal = self.timed("seal", svc.customer_keys.seal)
        publisher = svc.publisher
        publisher._sign = self.timed("sign", publisher._sign)
        producer = publisher._producer
        producer.send_and_wait = self.timed("kafka", producer.send_and_wait)
        self.patched = True

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path.startswith("/__bench/"):
            await self._control(scope, send)
            return
        if not self.patched:
            self._patch(self.app.state.services)
        status = 0

        async def tracking_send(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, tracking_send)
        finally:
            if path == "/v1/payments" and status == 202:
                self.add("request", time.perf_counter() - started)
                self.accepted += 1

    async def _control(self, scope: Any, send: Any) -> None:
        payload: dict[str, Any]
        if scope["path"] == "/__bench/start":
            self.timers.clear()
            self.accepted = 0
            if b"profile=1" in scope["query_string"]:
                import cProfile

                self.profiler = cProfile.Profile()
                self.profiler.enable()
            self.started, self.cpu_started = time.perf_counter(), time.process_time()
            payload = {"ok": True}
        else:
            cpu: dict[str, float] | None = None
            if self.profiler is not None:
                self.profiler.disable()
                cpu = _cpu_by_component(self.profiler)
                if os.environ.get("BENCH_PROFILE_OUT"):
                    self.profiler.dump_stats(os.environ["BENCH_PROFILE_OUT"])
                self.profiler = None
            payload = {
                "wall_s": time.perf_counter() - self.started,
                "process_cpu_s": time.process_time() - self.cpu_started,
                "accepted": self.accepted,
                "timers": self.timers,
                "cpu": cpu,
            }
        body = json.dumps(payload).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _statement(query: Any) -> str:
    """``INSERT idempotency_keys``, ``UPDATE ingress_payments``, ``SELECT``..."""
    words = query.split() if isinstance(query, str) else ["(composed)"]
    verb = words[0].upper() if words else "?"
    if verb in ("INSERT", "DELETE") and len(words) > 2:
        return f"{verb} {words[2]}"
    if verb == "UPDATE" and len(words) > 1:
        return f"{verb} {words[1]}"
    return verb


_GROUPS = {
    "fastapi": "fastapi + starlette",
    "starlette": "fastapi + starlette",
    "uvicorn": "uvicorn + h11/httptools",
    "h11": "uvicorn + h11/httptools",
    "httptools": "uvicorn + h11/httptools",
    "uvloop": "asyncio loop",
    "asyncio": "asyncio loop",
    "_asyncio": "asyncio loop",
    "selectors": "asyncio loop",
    "pydantic": "pydantic (validation, dump)",
    "pydantic_core": "pydantic (validation, dump)",
    "psycopg": "psycopg + pool",
    "psycopg_pool": "psycopg + pool",
    "psycopg_binary": "psycopg + pool",
    "aiokafka": "aiokafka",
    "kafka": "aiokafka",
    "nacl": "crypto (libsodium, cryptography)",
    "_sodium": "crypto (libsodium, cryptography)",
    "cryptography": "crypto (libsodium, cryptography)",
    "fastavro": "fastavro",
    "email_validator": "email-validator + idna",
    "idna": "email-validator + idna",
    "json": "json",
    "_json": "json",
    "_socket": "socket syscalls",
    "socket": "socket syscalls",
}
_BUILTIN_MODULE = re.compile(r"(?:of '|built-in method )([A-Za-z_][\w]*)")


def _cpu_by_component(profiler: Any) -> dict[str, float]:
    """Own time per component; C functions without a component of their own count for
    their caller's. ``idle`` is the event loop waiting in epoll/select."""
    import pstats

    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]

    def component(func: tuple[str, int, str]) -> str | None:
        filename, _, name = func
        if filename == "~":
            if "epoll" in name or "select.select" in name or "'poll' of" in name:
                return "idle"
            match = _BUILTIN_MODULE.search(name)
            module = match.group(1) if match else ""
            return _GROUPS.get(module)
        if "/site-packages/" in filename:
            top = filename.split("/site-packages/", 1)[1].split("/", 1)[0]
            top = top.removesuffix(".py").split(".")[0]
            return _GROUPS.get(top, top)
        root = os.fspath(ROOT) + "/"
        if filename.startswith(root):
            return "payledger " + filename[len(root) :].split("/", 1)[0] + "/"
        match = re.search(r"/python3\.\d+/([^/]+)", filename)
        if match:
            top = match.group(1).removesuffix(".py")
            return _GROUPS.get(top, f"stdlib {top}")
        return "other"

    totals: Counter[str] = Counter()
    for func, (_, _, own, _, callers) in stats.items():
        name = component(func)
        if name is not None:
            totals[name] += own
            continue
        for caller, caller_stats in callers.items():
            totals[component(caller) or "other C code"] += caller_stats[2]
    return dict(totals)


# --- processes --------------------------------------------------------------------------------


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """Something the user has to fix; printed without a traceback."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def uvicorn_options() -> list[str]:
    """The same for every worker: uvloop and httptools when this venv has them."""
    import importlib.util

    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return [
        "--workers", "1", "--no-access-log", "--log-level", "warning",
        "--loop", loop, "--http", http,
    ]  # fmt: skip


def http_call(url: str, method: str = "GET", timeout: float = 5.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def first_accept(url: str, token: str, body: bytes, key_prefix: str, deadline: float) -> None:
    """One request at a time until one is accepted: the whole path works before any load.

    A broker that just started (or topics just created) answers 503 for a while;
    anything else that is not 202 is a configuration problem worth stopping for.
    """
    attempt, last = 0, ""
    while time.monotonic() < deadline:
        attempt += 1
        request = urllib.request.Request(
            url + "/v1/payments",
            data=body,
            method="POST",
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json",
                "Idempotency-Key": f"{key_prefix}-{attempt}",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                if response.status == 202:
                    return
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as error:
            last = f"HTTP {error.code}: {error.read()[:300]!r}"
            if error.code != 503:
                raise BenchError(f"POST {url}/v1/payments answered {last}") from error
        except OSError as error:
            last = str(error)
        time.sleep(0.5)
    raise BenchError(f"POST {url}/v1/payments was never accepted (last answer: {last})")


@dataclass
class Worker:
    """One uvicorn worker process serving one ASGI factory on a free localhost port."""

    name: str
    factory: str
    ready_path: str
    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, options: list[str]) -> None:
        env = dict(self.env, PAYLEDGER_HTTP_PORT=str(self.port))
        command = [
            sys.executable, "-m", "uvicorn", "--factory", self.factory,
            "--host", "127.0.0.1", "--port", str(self.port), *options,
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C reaches the bench, which stops us in order
            )

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join("    " + line for line in text[-lines:]) or "    (empty log)"

    def wait_ready(self, deadline: float) -> None:
        assert self.process is not None
        last = "no answer"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(
                    f"{self.name} (uvicorn {self.factory}) exited with code "
                    f"{self.process.returncode} during start-up; its output:\n{self.log_tail()}"
                )
            try:
                status, body = http_call(self.url + self.ready_path, timeout=3)
                if status == 200:
                    return
                if status == 500:  # broken, not starting: no point in waiting
                    raise BenchError(
                        f"{self.name}: GET {self.ready_path} answered 500; its output:\n"
                        f"{self.log_tail()}"
                    )
                last = f"HTTP {status} {body[:200]!r}"
            except OSError as error:
                last = str(error)
            time.sleep(0.2)
        raise BenchError(
            f"{self.name} did not become ready within {READY_TIMEOUT_S:.0f} s "
            f"(GET {self.ready_path}: {last}); its output:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)  # uvicorn: graceful, runs lifespan shutdown
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            say(f"{self.name} did not stop within {STOP_TIMEOUT_S:.0f} s; killing it")
            self.process.kill()
            self.process.wait()


# --- CPU accounting from /proc ------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()  # fields from the 3rd (state) on


def proc_cpu_s(pid: int) -> float:
    fields = _proc_stat(pid)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / _TICK


def with_children(pid: int) -> list[int]:
    pids = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _proc_stat(int(entry.name))
            if fields is not None and fields[1] == str(pid):
                pids.append(int(entry.name))
    return pids


def machine_busy_s() -> float:
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    idle = values[3] + values[4]
    return float(sum(values) - idle) / _TICK


@dataclass
class CpuWatch:
    """CPU seconds of the worker, Kafka, Postgres (with its backends), the client, the machine."""

    worker_pid: int | None
    kafka_pid: int | None
    postgres_pid: int | None

    def snapshot(self) -> dict[str, Any]:
        postgres = with_children(self.postgres_pid) if self.postgres_pid else []
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return {
            "time": time.monotonic(),
            "worker": proc_cpu_s(self.worker_pid) if self.worker_pid else 0.0,
            "kafka": proc_cpu_s(self.kafka_pid) if self.kafka_pid else 0.0,
            "postgres": {pid: proc_cpu_s(pid) for pid in postgres},
            "client": children.ru_utime + children.ru_stime,
            "machine": machine_busy_s(),
        }

    @staticmethod
    def shares(before: dict[str, Any], after: dict[str, Any], client_in_process: float) -> str:
        """Each part's CPU as % of one core over the interval."""
        wall = after["time"] - before["time"]
        postgres = sum(
            cpu - before["postgres"].get(pid, 0.0) for pid, cpu in after["postgres"].items()
        )
        parts = {
            "worker": after["worker"] - before["worker"],
            "Kafka": after["kafka"] - before["kafka"],
            "Postgres": postgres,
            "client": after["client"] - before["client"] + client_in_process,
        }
        machine = after["machine"] - before["machine"]
        other = max(0.0, machine - sum(parts.values()))
        text = ", ".join(f"{name} {100 * cpu / wall:.0f}%" for name, cpu in parts.items())
        return (
            f"{text}, other processes {100 * other / wall:.0f}%; "
            f"machine {100 * machine / wall:.0f}% of {100 * (os.cpu_count() or 1)}%"
        )


# --- load ---------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    requests: int
    duration_s: float
    non202: int
    replayed: int
    statuses: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    socket_errors: int
    cpu: str = ""
    worker_cpu_s: float = 0.0

    @property
    def accepted(self) -> int:
        return self.requests - self.non202 - self.replayed

    @property
    def accepted_per_s(self) -> float:
        return self.accepted / self.duration_s

    def refused(self) -> str:
        """What did not count: responses other than 202, replays and socket errors."""
        statuses = ", ".join(f"HTTP {k}: {v:,}" for k, v in sorted(self.statuses.items()))
        text = f"{self.non202:,} of {self.requests:,} responses not 202"
        if statuses:
            text += f" ({statuses})"
        if self.replayed:
            text += f", {self.replayed:,} replayed"
        if self.socket_errors:
            text += f", {self.socket_errors:,} socket errors/timeouts"
        return text


@dataclass
class LoadSpec:
    client: str  # "wrk" or "httpx"
    wrk: str | None
    connections: int
    threads: int
    token: str
    body_path: Path
    run_id: str


_RESULT = re.compile(r"BENCH-RESULT (.*)")


def run_wrk(spec: LoadSpec, url: str, phase: str, duration_s: int) -> LoadResult:
    assert spec.wrk is not None
    command = [
        spec.wrk, f"-t{spec.threads}", f"-c{spec.connections}", f"-d{duration_s}s",
        "--latency", "--timeout", WRK_TIMEOUT, "-s", os.fspath(LUA_SCRIPT),
        url + "/v1/payments", "--", spec.token, f"{spec.run_id}-{phase}", os.fspath(spec.body_path),
    ]  # fmt: skip
    done = subprocess.run(
        command, check=False, capture_output=True, text=True, timeout=duration_s + 60
    )
    match = _RESULT.search(done.stdout)
    if done.returncode != 0 or match is None:
        raise BenchError(
            f"wrk failed (exit {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )
    values: dict[str, str] = dict(item.split("=", 1) for item in match.group(1).split())
    number = {k: int(v) for k, v in values.items() if k != "statuses"}
    statuses = dict(part.split(":") for part in values["statuses"].split(",") if part)
    return LoadResult(
        requests=number["requests"],
        duration_s=number["duration_us"] / 1e6,
        non202=number["non202"],
        replayed=number["replayed"],
        statuses={k: int(v) for k, v in statuses.items()},
        p50_ms=number["p50_us"] / 1e3,
        p90_ms=number["p90_us"] / 1e3,
        p99_ms=number["p99_us"] / 1e3,
        max_ms=number["max_us"] / 1e3,
        socket_errors=sum(
            number[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts")
        ),
    )


async def _httpx_load(spec: LoadSpec, url: str, phase: str, duration_s: int) -> LoadResult:
    import httpx

    body = spec.body_path.read_bytes()
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    replayed = errors = 0
    limits = httpx.Limits(
        max_connections=spec.connections, max_keepalive_connections=spec.connections
    )
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10.0) as client:
        deadline = time.perf_counter() + duration_s

        async def one_connection(number: int) -> None:
            nonlocal replayed, errors
            count = 0
            while time.perf_counter() < deadline:
                count += 1
                headers = {
                    "Authorization": f"Bearer {spec.token}",
                    "Content-Type": "application/json",
                    "Idempotency-Key": f"{spec.run_id}-{phase}-{number}-{count}",
                }
                started = time.perf_counter()
                try:
                    response = await client.post("/v1/payments", content=body, headers=headers)
                except httpx.HTTPError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - started)
                statuses[response.status_code] += 1
                if response.status_code == 202 and "idempotent-replayed" in response.headers:
                    replayed += 1

        started = time.perf_counter()
        await asyncio.gather(*(one_connection(n) for n in range(spec.connections)))
        elapsed = time.perf_counter() - started
    latencies.sort()

    def percentile(p: float) -> float:
        return 1e3 * latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))]

    non202 = {str(k): v for k, v in statuses.items() if k != 202}
    return LoadResult(
        requests=sum(statuses.values()),
        duration_s=elapsed,
        non202=sum(non202.values()),
        replayed=replayed,
        statuses=non202,
        p50_ms=percentile(50) if latencies else 0.0,
        p90_ms=percentile(90) if latencies else 0.0,
        p99_ms=percentile(99) if latencies else 0.0,
        max_ms=1e3 * latencies[-1] if latencies else 0.0,
        socket_errors=errors,
    )


def load(spec: LoadSpec, url: str, phase: str, duration_s: int) -> LoadResult:
    if spec.client == "wrk":
        return run_wrk(spec, url, phase, duration_s)
    return asyncio.run(_httpx_load(spec, url, phase, duration_s))


def measure(
    spec: LoadSpec, worker: Worker, watch: CpuWatch, warmup_s: int, duration_s: int
) -> LoadResult:
    say(
        f"{worker.name}: warm-up {warmup_s} s, then {duration_s} s at {spec.connections} connections"
    )
    if warmup_s > 0:
        load(spec, worker.url, f"{worker.name}-warm", warmup_s)
    before = watch.snapshot()
    cpu_in_process_before = time.process_time() if spec.client == "httpx" else 0.0
    result = load(spec, worker.url, f"{worker.name}-run", duration_s)
    in_process = time.process_time() - cpu_in_process_before if spec.client == "httpx" else 0.0
    after = watch.snapshot()
    result.cpu = CpuWatch.shares(before, after, in_process)
    result.worker_cpu_s = after["worker"] - before["worker"]
    return result


# --- the stack and the run's merchant ------------------------------------------------------------


@dataclass
class Prepared:
    settings: Any
    merchant_id: str
    token: str
    started_stack: bool
    kafka_pid: int | None
    postgres_pid: int | None


@contextmanager
def prepared_stack(keep_stack: bool, run_id: str) -> Iterator[Prepared]:
    from ingress.merchants import add_api_key, create_merchant
    from ledger import limits
    from ledger.config import load_settings
    from ledger.infra.part import State
    from ledger.infra.stack import Stack
    from streams.provision import provision_topics

    try:
        settings = load_settings()
    except ValueError as error:
        raise BenchError(f"invalid PAYLEDGER_* configuration: {error}") from error
    stack = Stack(settings)
    was_running = all(status.state is State.RUNNING for status in stack.status()[:-1])
    say("stack: already running" if was_running else "stack: starting Kafka and Postgres")
    try:
        stack.up(lambda message: say(f"stack: {message}"))
    except Exception as error:  # InfrastructureError, PortInUseError, OSError...
        raise BenchError(
            f"the stack could not start ({type(error).__name__}): {error}\n"
            f"  see {settings.state_dir / 'logs'}; `payledger infra status` tells what runs"
        ) from error
    started = not was_running
    try:
        bench_settings = settings.model_copy(update={"topic_prefix": f"bench{run_id}."})
        try:
            report = asyncio.run(provision_topics(bench_settings))
        except Exception as error:
            raise BenchError(f"could not provision topics on Kafka: {error}") from error
        if not report.ok:
            raise BenchError(f"topics differ from their specs: {report.mismatches}")
        merchant_id = f"bench_{run_id}"
        try:
            asyncio.run(
                create_merchant(
                    bench_settings,
                    merchant_id,
                    "Ingress benchmark",
                    rate_per_s=limits.RATE_LIMIT_PER_S_CEILING,
                    burst=limits.RATE_LIMIT_BURST_CEILING,
                )
            )
            token = asyncio.run(add_api_key(bench_settings, merchant_id)).token
        except Exception as error:
            raise BenchError(f"could not create the run's merchant: {error}") from error
        parts = {part.name: part.running_pid() for part in stack.parts}
        yield Prepared(
            bench_settings,
            merchant_id,
            token,
            started,
            parts.get("kafka"),
            parts.get("postgres"),
        )
    finally:
        if started and not keep_stack:
            say("stack: stopping it (this run started it)")
            stack.down()


def find_wrk(allow_install: bool) -> str | None:
    found = shutil.which("wrk")
    if found or not allow_install:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-qq", "wrk"]
    say("wrk is missing: installing Debian's package (apt-get install -y wrk)")
    if (
        subprocess.run(install, check=False, env=env, capture_output=True, timeout=300).returncode
        != 0
    ):
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True)
        subprocess.run(install, check=False, env=env, capture_output=True, timeout=300)
    return shutil.which("wrk")


# --- report ---------------------------------------------------------------------------------------


def line(name: str, value: str, note: str = "") -> None:
    print(f"  {name:<46} {value:>16}  {note}".rstrip())


def print_load(name: str, result: LoadResult, unit: str) -> None:
    line(name, f"{result.accepted_per_s:,.0f} {unit}")
    print(
        f"  {'':<46} latency p50 {result.p50_ms:.1f} ms, p90 {result.p90_ms:.1f} ms, "
        f"p99 {result.p99_ms:.1f} ms, max {result.max_ms:.0f} ms"
    )
    print(f"  {'':<46} {result.refused()}")
    per_response = 1e3 * result.worker_cpu_s / max(1, result.requests)
    print(f"  {'':<46} worker CPU {per_response:.2f} ms per response")
    print(f"  {'':<46} CPU (100% = one core): {result.cpu}")


_PHASES = [
    ("authenticate", "authenticate (API key, cached)", 1),
    ("pool wait", "wait for a Postgres pool connection", 1),
    ("pool held", "hold the connection (the transaction)", 1),
    ("sql INSERT idempotency_keys", "idempotency claim INSERT", 2),
    ("seal", "seal customer data", 2),
    ("sql INSERT ingress_payments", "INSERT ingress_payments", 2),
    ("sign", "sign + encode the command", 2),
    ("kafka", "Kafka send -> ack (acks=all)", 2),
    ("sql UPDATE idempotency_keys", "idempotency complete UPDATE", 2),
]


def print_breakdown(timings: dict[str, Any], profile: dict[str, Any], pool_max: int) -> None:
    accepted = max(1, int(timings["accepted"]))
    timers: dict[str, list[float]] = timings["timers"]

    def per_request_ms(name: str) -> float:
        return 1e3 * timers.get(name, [0.0, 0])[0] / accepted

    print(
        f"\nWhere the time goes: wall time per accepted request, mean, instrumented worker, "
        f"same load, {timings['wall_s']:.0f} s ({timings['accepted']:,} accepted, "
        f"{timings['accepted'] / timings['wall_s']:,.0f}/s)"
    )
    total = per_request_ms("request")
    line("whole request inside the app (ASGI)", f"{total:.2f} ms")
    inside = 0.0
    for key, label, depth in _PHASES:
        if key not in timers:
            continue
        value = per_request_ms(key)
        line("  " * depth + label, f"{value:.2f} ms")
        if depth == 2:
            inside += value
    held = per_request_ms("pool held")
    line("    rest: BEGIN/COMMIT, building the command", f"{max(0.0, held - inside):.2f} ms")
    known = sum(per_request_ms(k) for k in ("authenticate", "pool wait", "pool held"))
    line("  rest: body, card guard, validation, reply", f"{max(0.0, total - known):.2f} ms")
    others = [
        k for k in timers if k.startswith("sql") and k not in dict((p[0], 0) for p in _PHASES)
    ]
    for key in others:
        line(f"  (also {key})", f"{per_request_ms(key):.2f} ms")
    if held > 0:
        ceiling = pool_max / (held / 1e3)
        print(
            f"  pool ceiling (Little's law): {pool_max} connections / {held:.2f} ms held = "
            f"{ceiling:,.0f} requests/s at most while the transaction spans the Kafka ack"
        )
    cpu_ms = 1e3 * timings["process_cpu_s"] / accepted
    print(
        f"  worker CPU: {cpu_ms:.2f} ms per accepted request "
        f"({100 * timings['process_cpu_s'] / timings['wall_s']:.0f}% of one core) "
        f"-> {1e3 / cpu_ms if cpu_ms else 0:,.0f} requests/s per core if CPU were the only limit"
    )

    cpu: dict[str, float] = profile.get("cpu") or {}
    if not cpu:
        return
    busy = {k: v for k, v in cpu.items() if k != "idle"}
    busy_total = sum(busy.values()) or 1.0
    profiled = max(1, profile["accepted"])
    print(
        f"\nCPU by component: cProfile own time, instrumented worker, same load, "
        f"{profile['wall_s']:.0f} s ({profiled:,} accepted; the profiler slows Python code, "
        f"so read shares, not totals); busy {100 * busy_total / profile['wall_s']:.0f}% "
        f"of the time"
    )
    ranked = sorted(busy.items(), key=lambda item: -item[1])
    shown, rest = ranked[:12], ranked[12:]
    for name, seconds in shown:
        line(
            name,
            f"{100 * seconds / busy_total:.1f}%",
            f"{1e6 * seconds / profiled:,.0f} µs/request",
        )
    if rest:
        seconds = sum(s for _, s in rest)
        line(f"{len(rest)} others", f"{100 * seconds / busy_total:.1f}%")


# --- main ---------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=15, help="seconds measured per server")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up per server")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (2 cores here)")
    parser.add_argument("--client", choices=["wrk", "httpx"], default="wrk")
    parser.add_argument("--no-install", action="store_true", help="never apt-get install wrk")
    parser.add_argument("--keep-stack", action="store_true", help="leave a stack we started up")
    parser.add_argument("--skip-breakdown", action="store_true")
    parser.add_argument(
        "--profile-out", type=Path, help="also write the cProfile stats here (pstats, snakeviz)"
    )
    args = parser.parse_args()

    wrk = None
    client = args.client
    if client == "wrk":
        wrk = find_wrk(allow_install=not args.no_install)
        if wrk is None:
            client = "httpx"
            print(
                "wrk was not found and could not be installed (on Debian/Ubuntu: "
                "`apt-get install wrk`).\nFalling back to an asyncio+httpx client in this "
                "process: THE CLIENT MAY BE THE BOTTLENECK, read the figures as lower bounds.\n"
            )
    if not LUA_SCRIPT.exists() and client == "wrk":
        raise BenchError(f"{LUA_SCRIPT} is missing")

    import logging

    from ingress import db

    # aiokafka warns while a just-created topic elects its leaders; it retries by itself.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    run_id = uuid.uuid4().hex[:8]
    options = uvicorn_options()
    overall = time.monotonic()
    with (
        prepared_stack(args.keep_stack, run_id) as prep,
        tempfile.TemporaryDirectory(prefix="bench-ingress-") as scratch,
    ):
        settings = prep.settings
        body_path = Path(scratch) / "body.json"
        body_path.write_text(json.dumps(REQUEST_BODY, separators=(",", ":")))
        spec = LoadSpec(client, wrk, args.connections, args.threads, prep.token, body_path, run_id)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                [os.fspath(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
            # Absolute, so a worker (run from the repository) uses this run's stack and keys.
            "PAYLEDGER_STATE_DIR": os.fspath(settings.state_dir),
            "PAYLEDGER_CACHE_DIR": os.fspath(settings.cache_dir),
            "PAYLEDGER_TOPIC_PREFIX": settings.topic_prefix,
        }
        from ledger.infra.stack import Stack

        env.update(Stack(settings).env())
        logs = Path(scratch)
        workers = {
            "floor": Worker("floor", "bench.ingress:floor_app", "/openapi.json", env,
                            logs / "floor.log"),
            "ingress": Worker("ingress", "ingress.app:create_app", "/readyz", env,
                              logs / "ingress.log"),
        }  # fmt: skip
        if not args.skip_breakdown:
            instrumented_env = dict(env)
            if args.profile_out:
                instrumented_env["BENCH_PROFILE_OUT"] = os.fspath(args.profile_out.resolve())
            workers["instrumented"] = Worker(
                "instrumented", "bench.ingress:instrumented_app", "/readyz", instrumented_env,
                logs / "instrumented.log",
            )  # fmt: skip
        try:
            say("starting the uvicorn workers: " + " ".join(options))
            for worker in workers.values():
                worker.start(options)
            deadline = time.monotonic() + READY_TIMEOUT_S
            for worker in workers.values():
                worker.wait_ready(deadline)
            body = body_path.read_bytes()
            for worker in workers.values():
                if worker.name != "floor":
                    say(f"{worker.name}: waiting for the first 202 (a fresh broker may answer 503)")
                    first_accept(worker.url, prep.token, body, f"{run_id}-{worker.name}-first",
                                 time.monotonic() + READY_TIMEOUT_S)  # fmt: skip

            def watch(worker: Worker) -> CpuWatch:
                assert worker.process is not None
                return CpuWatch(worker.process.pid, prep.kafka_pid, prep.postgres_pid)

            floor = measure(spec, workers["floor"], watch(workers["floor"]), args.warmup,
                            args.duration)  # fmt: skip
            ours = measure(spec, workers["ingress"], watch(workers["ingress"]), args.warmup,
                           args.duration)  # fmt: skip
            timings = profile = None
            if "instrumented" in workers:
                instrumented = workers["instrumented"]
                say(f"instrumented: warm-up 2 s, then phases {BREAKDOWN_WINDOW_S} s, "
                    f"cProfile {BREAKDOWN_WINDOW_S} s")  # fmt: skip
                load(spec, instrumented.url, "instr-warm", 2)
                http_call(instrumented.url + "/__bench/start", "POST")
                load(spec, instrumented.url, "instr-phases", BREAKDOWN_WINDOW_S)
                timings = json.loads(http_call(instrumented.url + "/__bench/stop", "POST")[1])
                http_call(instrumented.url + "/__bench/start?profile=1", "POST")
                load(spec, instrumented.url, "instr-profile", BREAKDOWN_WINDOW_S)
                profile = json.loads(
                    http_call(instrumented.url + "/__bench/stop", "POST", timeout=60)[1]
                )
        finally:
            for worker in workers.values():
                worker.stop()
        # Unexpected server errors (500s) leave their tracebacks in the worker's log.
        errors_log = workers["ingress"].log_tail(8) if ours.non202 else ""

        loop, http = options[options.index("--loop") + 1], options[options.index("--http") + 1]
        client_text = (
            f"wrk {args.threads} thread(s)" if client == "wrk" else "asyncio+httpx (may limit!)"
        )
        print(
            f"\nPOST /v1/payments, one uvicorn worker each (--loop {loop} --http {http}), "
            f"{client_text}, {args.connections} connections, {args.duration} s after "
            f"{args.warmup} s warm-up; {body_path.stat().st_size} bytes JSON body with customer "
            f"data, unique Idempotency-Key per request"
        )
        print_load("framework floor: FastAPI + same model, 202", floor, "requests/s")
        print_load("payledger ingress (Postgres + Kafka acks=all)", ours, "accepted/s")
        ratio = ours.accepted_per_s / floor.accepted_per_s if floor.accepted_per_s else 0.0
        line(
            "accepted intents/s per worker",
            f"{ours.accepted_per_s:,.0f} /s",
            f"target >= {TARGET_ACCEPTED_PER_S:,}: "
            f"{'met' if ours.accepted_per_s >= TARGET_ACCEPTED_PER_S else 'MISSED'}",
        )
        line(
            "ratio ours / floor",
            f"{ratio:.2f}x",
            f"target >= {TARGET_FLOOR_RATIO}x: "
            f"{'met' if ratio >= TARGET_FLOOR_RATIO else 'MISSED'}",
        )
        if client == "httpx":
            print(
                "  NOTE: asyncio+httpx client in this process, not wrk: the client is probably "
                "the bottleneck (see its CPU above); the ratio means little"
            )
        if errors_log:
            print(f"  end of the ingress worker's log:\n{errors_log}")
        if timings is not None and profile is not None:
            print_breakdown(timings, profile, db.POOL_CONNECTIONS_MAX)
        print(
            f"\n(bench run {run_id}, merchant {prep.merchant_id}, topics {settings.topic_prefix}*, "
            f"{os.cpu_count()} cores, {time.monotonic() - overall:.0f} s)"
        )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as error:
        print(f"bench/ingress.py: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)

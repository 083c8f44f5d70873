"""Port checks: is a configured port free, who holds it, does it answer.

A part that cannot bind its port fails deep inside its own log; checking first
turns that into one clear error that names the setting to change.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from ledger.errors import PortInUseError
from ledger.infra.procs import cmdline


@dataclass(frozen=True, slots=True)
class PortUse:
    """A port a part listens on, and the setting that chooses it."""

    host: str
    port: int
    setting: str  # a field of ledger.config.Settings

    @property
    def env_var(self) -> str:
        return f"PAYLEDGER_{self.setting.upper()}"


def port_is_free(host: str, port: int) -> bool:
    """True if a server could bind ``host:port`` now.

    SO_REUSEADDR mirrors what Kafka and Postgres do, so a socket in TIME_WAIT
    from a previous run does not count as taken, while a listener does.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def tcp_answers(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """True if something accepts a TCP connection on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                fields = row.split()
                # local_address is HEXIP:HEXPORT; state 0A is LISTEN.
                listening = len(fields) > 9 and fields[3] == "0A"
                if listening and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    return inodes


def port_owner(port: int) -> str | None:
    """Best effort 'pid N: command' of the process listening on ``port``.

    Reads /proc, so it only sees processes this user may inspect; None otherwise.
    """
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in targets:
                        command = cmdline(int(entry.name))[:80] or "?"
                        return f"pid {entry.name}: {command}"
    return None


def check_ports(part: str, uses: list[PortUse]) -> None:
    """Raise PortInUseError if any port of ``part`` is already taken.

    Call it only when ``part`` itself is not running: then whoever holds the
    port is someone else.
    """
    for use in uses:
        if port_is_free(use.host, use.port):
            continue
        owner = port_owner(use.port)
        held_by = f" (held by {owner})" if owner else ""
        raise PortInUseError(
            f"port {use.port} on {use.host} ({use.setting}) is already in use{held_by}, "
            f"so {part} cannot start there; stop that process or choose another port "
            f"with {use.env_var}=<port>"
        )


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free right now (for tests and tools picking their own)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports that are free right now.

    Each ``free_port()`` closes its socket before returning, so two calls can
    hand out the same port; this draws until every port differs.
    """
    ports: list[int] = []
    while len(ports) < count:
        port = free_port(host)
        if port not in ports:
            ports.append(port)
    return ports

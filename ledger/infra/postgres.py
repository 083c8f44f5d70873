"""A private Postgres cluster in ``<state_dir>/postgres``, from Debian's binaries.

It listens on 127.0.0.1 only, its socket lives in the state dir (not
/var/run), clients authenticate with SCRAM passwords, and fsync stays on:
this is a ledger's projection store. Postgres refuses to run as root, so as
root every server-side command runs as the ``postgres`` system user through
``runuser``.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
from pathlib import Path

from ledger.config import Settings
from ledger.errors import InfrastructureError
from ledger.infra.apt import ensure_package
from ledger.infra.part import ServerPart, start_banner
from ledger.infra.ports import PortUse
from ledger.infra.postgres_conf import (
    LISTEN_HOST,
    dsn_without_password,
    find_bindir,
    render_conf,
    render_hba,
    role_script,
)
from ledger.infra.procs import (
    cmdline,
    format_tail,
    is_root,
    pid_alive,
    read_pid,
    remove_file,
    run_checked,
    terminate,
    write_pid,
)
from ledger.limits import READINESS_TIMEOUT_S, SHUTDOWN_TIMEOUT_S

_OS_USER_AS_ROOT = "postgres"
_SOCKET_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL


def ensure_installed() -> None:
    """Install Postgres from Debian when no server binaries are found."""
    ensure_package("postgresql", lambda: find_bindir() is not None, "the embedded Postgres")


class PostgresPart(ServerPart):
    name = "postgres"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.base_dir = settings.state_dir / "postgres"
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "socket"
        # As root the cluster belongs to the postgres system user; otherwise to us.
        self.superuser = _OS_USER_AS_ROOT if is_root() else getpass.getuser()

    # -- helpers

    def _as_owner(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", _OS_USER_AS_ROOT, "--", *argv] if is_root() else argv

    def _give_to_owner(self, *paths: Path) -> None:
        if is_root():
            for path in paths:
                shutil.chown(path, _OS_USER_AS_ROOT, _OS_USER_AS_ROOT)

    def _bindir(self) -> Path:
        version_file = self.data_dir / "PG_VERSION"
        major = version_file.read_text().strip() if version_file.exists() else None
        bindir = find_bindir(major)
        if bindir is None and major is not None:
            raise InfrastructureError(
                f"the cluster in {self.data_dir} was created by PostgreSQL {major}, whose "
                f"binaries are not installed; install postgresql-{major} or remove the cluster"
            )
        if bindir is None:
            raise InfrastructureError("no PostgreSQL binaries found (initdb not installed)")
        return bindir

    def _tool(self, name: str) -> str:
        return str(self._bindir() / name)

    def _owner_run(self, argv: list[str], what: str, input_text: str | None = None) -> str:
        # cwd inside the state dir: the postgres user may not enter root's cwd.
        return run_checked(
            self._as_owner(argv),
            what=what,
            cwd=self.base_dir,
            env=owner_env(),
            input_text=input_text,
        )

    # -- ServerPart

    def ports(self) -> list[PortUse]:
        return [PortUse(LISTEN_HOST, self.settings.postgres_port, "postgres_port")]

    def prepare(self) -> None:
        ensure_installed()
        socket_file = self.socket_dir / f".s.PGSQL.{self.settings.postgres_port}"
        if len(str(socket_file)) > _SOCKET_PATH_MAX:
            raise InfrastructureError(
                f"the Postgres socket path {socket_file} is longer than {_SOCKET_PATH_MAX} "
                "bytes; use a shorter PAYLEDGER_STATE_DIR"
            )
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        self._give_to_owner(self.base_dir, self.socket_dir)
        if is_root():
            self._check_owner_can_reach()
        self._initdb_once()
        conf = self.data_dir / "payledger.conf"
        conf.write_text(render_conf(self.settings, self.socket_dir))
        (self.data_dir / "pg_hba.conf").write_text(render_hba(self.superuser))
        self._give_to_owner(conf)
        main_conf = self.data_dir / "postgresql.conf"
        include = "include_if_exists = 'payledger.conf'"
        if include not in main_conf.read_text():
            with main_conf.open("a") as handle:
                handle.write(
                    f"\n# Added by payledger: its settings win over the above.\n{include}\n"
                )

    def _check_owner_can_reach(self) -> None:
        probe = subprocess.run(
            ["runuser", "-u", _OS_USER_AS_ROOT, "--", "test", "-w", str(self.base_dir)],
            capture_output=True,
            check=False,
        )
        if probe.returncode != 0:
            raise InfrastructureError(
                f"the {_OS_USER_AS_ROOT} system user cannot reach {self.base_dir}: a parent "
                "directory is not searchable by others (chmod o+x it, or use another "
                "PAYLEDGER_STATE_DIR)"
            )

    def _initdb_once(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        # initdb into a scratch dir and rename on success, so an interrupted
        # initdb never leaves a half-made cluster that looks initialised.
        scratch = self.base_dir / "data.initdb"
        shutil.rmtree(scratch, ignore_errors=True)
        self._owner_run(
            [
                self._tool("initdb"),
                "-D",
                str(scratch),
                "-U",
                self.superuser,
                "--auth-local=peer",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                # Detects storage corruption of the projection store early.
                "--data-checksums",
            ],
            what="initdb",
        )
        scratch.rename(self.data_dir)

    def command(self) -> list[str]:
        return self._as_owner([self._tool("postgres"), "-D", str(self.data_dir)])

    def command_cwd(self) -> Path:
        return self.base_dir

    def command_env(self) -> dict[str, str]:
        return owner_env()

    def running_pid(self) -> int | None:
        # postmaster.pid is Postgres's own record; the data dir on the command
        # line tells our postmaster from a recycled PID.
        pid = read_pid(self.data_dir / "postmaster.pid")
        if pid is not None and pid_alive(pid) and str(self.data_dir) in cmdline(pid):
            return pid
        return None

    def is_ready(self) -> bool:
        if self.running_pid() is None:
            return False
        done = subprocess.run(
            [
                self._tool("pg_isready"),
                "-q",
                "-h",
                LISTEN_HOST,
                "-p",
                str(self.settings.postgres_port),
                "-d",
                "postgres",
                "-t",
                "2",
            ],
            capture_output=True,
            env=owner_env(),
            check=False,
        )
        return done.returncode == 0

    def note_started(self, pid: int) -> None:
        # The PID worth recording is the postmaster's, known only once it runs
        # (after_ready); a launcher's PID (runuser) would mislead.
        pass

    def start_daemon(self) -> int:
        self.layout.ensure()
        with self.log_path.open("a") as log:
            log.write(start_banner(self.name))
        self._give_to_owner(self.log_path)  # pg_ctl opens it as the cluster's owner
        try:
            self._owner_run(
                [
                    self._tool("pg_ctl"),
                    "start",
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_path),
                    "-w",
                    "-t",
                    str(int(READINESS_TIMEOUT_S)),
                    "-s",
                ],
                what="pg_ctl start",
            )
        except InfrastructureError as exc:
            raise InfrastructureError(f"{exc}\n{format_tail(self.log_path)}") from exc
        pid = self.running_pid()
        if pid is None:
            raise InfrastructureError(f"Postgres did not start\n{format_tail(self.log_path)}")
        return pid

    def after_ready(self) -> None:
        script = role_script(
            self.settings.postgres_user,
            self.settings.postgres_password.get_secret_value(),
            self.settings.postgres_db,
        )
        self._owner_run(
            [
                self._tool("psql"),
                "-X",
                "-q",
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.settings.postgres_port),
                "-U",
                self.superuser,
                "-d",
                "postgres",
                "-f",
                "-",
            ],
            what="creating the Postgres role and database",
            input_text=script,
        )
        pid = self.running_pid()
        if pid is not None:
            write_pid(self.pid_path, pid)

    def stop(self, pid: int, child: subprocess.Popen[bytes] | None = None) -> None:
        """``pg_ctl stop -m fast``: roll back open transactions, checkpoint, exit.

        Postgres's SIGTERM means "smart" shutdown (wait for every client to
        leave), which can wait forever; fast is the clean and bounded one.
        """
        pg_ctl = self._tool("pg_ctl")
        timeout = ["-t", str(int(SHUTDOWN_TIMEOUT_S))]
        for mode in ("fast", "immediate"):  # immediate: crash-safe, recovers on start
            if self.running_pid() is None:
                break
            try:
                self._owner_run(
                    [pg_ctl, "stop", "-D", str(self.data_dir), "-m", mode, "-w", "-s", *timeout],
                    what=f"pg_ctl stop -m {mode}",
                )
            except InfrastructureError:
                continue
        if self.running_pid() is not None:
            terminate(pid, 5.0)
        if child is not None:
            terminate(child.pid, SHUTDOWN_TIMEOUT_S, child=child)
        remove_file(self.pid_path)

    def endpoints(self) -> dict[str, str]:
        return {
            "dsn": dsn_without_password(self.settings),
            "socket dir": str(self.socket_dir),
            "data": str(self.data_dir),
            "log": str(self.log_path),
        }


def owner_env() -> dict[str, str]:
    """The environment for Postgres tools: ours minus PG* variables, which
    would silently redirect them to another server or user."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}

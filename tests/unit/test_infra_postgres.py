"""Postgres: which binaries, and what the cluster is configured with."""

from __future__ import annotations

from pathlib import Path

from ledger.config import Settings
from ledger.infra.postgres import PostgresPart
from ledger.infra.postgres_conf import (
    dsn_without_password,
    find_bindir,
    render_conf,
    render_hba,
    role_script,
)


def _conf(text: str) -> dict[str, str]:
    pairs = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition(" = ")
            pairs[key] = value
    return pairs


def test_conf_listens_on_loopback_with_socket_in_state_dir(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, postgres_port=25432)
    conf = _conf(render_conf(settings, tmp_path / "socket"))
    assert conf["listen_addresses"] == "'127.0.0.1'"
    assert conf["port"] == "25432"
    assert conf["unix_socket_directories"] == f"'{tmp_path / 'socket'}'"
    assert conf["password_encryption"] == "'scram-sha-256'"
    assert conf["fsync"] == "on"
    assert conf["synchronous_commit"] == "on"
    assert conf["shared_buffers"] == "128MB"


def test_conf_quotes_paths_with_quotes(tmp_path: Path) -> None:
    conf = _conf(render_conf(Settings(state_dir=tmp_path), Path("/tmp/it's")))
    assert conf["unix_socket_directories"] == "'/tmp/it''s'"


def test_hba_allows_passwords_on_loopback_only() -> None:
    rules = [
        line.split()
        for line in render_hba("postgres").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules == [
        ["local", "all", "postgres", "peer"],
        ["host", "all", "all", "127.0.0.1/32", "scram-sha-256"],
    ]


def test_role_script_quotes_values_as_psql_variables() -> None:
    script = role_script("pay'ledger", "se'cr\\et", "db")
    assert "\\set role_name 'pay''ledger'" in script
    assert "\\set role_password 'se''cr\\\\et'" in script
    assert "\\set ON_ERROR_STOP on" in script
    # The values reach SQL only through format() with %I / %L, never spliced in.
    sql = [line for line in script.splitlines() if not line.startswith("\\set")]
    assert not any("se'cr" in line or "pay'ledger" in line for line in sql)
    assert sum("\\gexec" in line for line in sql) == 3


def test_dsn_has_no_password(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, postgres_port=25432)
    assert dsn_without_password(settings) == "postgresql://payledger@127.0.0.1:25432/payledger"


def test_find_bindir_prefers_highest_or_requested_version(tmp_path: Path) -> None:
    for version, has_initdb in (("9.6", True), ("13", True), ("15", True), ("16", False)):
        bindir = tmp_path / version / "bin"
        bindir.mkdir(parents=True)
        if has_initdb:
            (bindir / "initdb").touch()
    assert find_bindir(debian_root=tmp_path) == tmp_path / "15" / "bin"
    assert find_bindir("13", debian_root=tmp_path) == tmp_path / "13" / "bin"
    assert find_bindir("12", debian_root=tmp_path) is None


def test_running_pid_needs_postmaster_pid_of_our_data_dir(tmp_path: Path) -> None:
    part = PostgresPart(Settings(state_dir=tmp_path))
    assert part.running_pid() is None
    part.data_dir.mkdir(parents=True)
    # A live process that does not run our data dir (this test) is not our postmaster.
    (part.data_dir / "postmaster.pid").write_text(f"{__import__('os').getpid()}\n")
    assert part.running_pid() is None
    assert not part.is_ready()

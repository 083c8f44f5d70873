"""`payledger infra` commands that need no running services."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from ledger.cli import main
from ledger.infra.ports import free_ports


def _env(tmp_path: Path) -> dict[str, str]:
    # Explicit ports: a stack the test session runs elsewhere must not matter.
    kafka, controller, postgres = free_ports(3)
    return {
        "PAYLEDGER_STATE_DIR": str(tmp_path / "state"),
        "PAYLEDGER_KAFKA_PORT": str(kafka),
        "PAYLEDGER_KAFKA_CONTROLLER_PORT": str(controller),
        "PAYLEDGER_POSTGRES_PORT": str(postgres),
    }


def test_status_of_a_fresh_state_dir_is_stopped_and_exits_3(tmp_path: Path) -> None:
    env = _env(tmp_path)
    result = CliRunner().invoke(main, ["infra", "status"], env=env)
    assert result.exit_code == 3, result.output
    assert "kafka     stopped" in result.stdout
    assert "postgres  stopped" in result.stdout
    assert "softhsm   absent" in result.stdout
    port = env["PAYLEDGER_POSTGRES_PORT"]
    assert f"postgresql://payledger@127.0.0.1:{port}/payledger" in result.stdout
    assert "payledger-dev" not in result.stdout  # never the password


def test_down_on_a_fresh_state_dir_is_a_no_op(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["infra", "down"], env=_env(tmp_path))
    assert result.exit_code == 0, result.output
    assert "kafka     stopped" in result.stdout


def test_logs_without_a_log_is_an_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["infra", "logs", "kafka"], env=_env(tmp_path))
    assert result.exit_code == 1
    assert result.stderr.startswith("payledger: error: no log for kafka in ")
    assert "run `payledger infra up` first" in result.stderr


def test_logs_prints_the_end_of_the_log(tmp_path: Path) -> None:
    log = tmp_path / "state" / "logs" / "postgres.log"
    log.parent.mkdir(parents=True)
    log.write_text("".join(f"line {i}\n" for i in range(10)))
    result = CliRunner().invoke(main, ["infra", "logs", "postgres", "-n", "2"], env=_env(tmp_path))
    assert result.exit_code == 0, result.output
    assert result.stdout == "line 8\nline 9\n"


def test_invalid_settings_are_one_line(tmp_path: Path) -> None:
    env = {**_env(tmp_path), "PAYLEDGER_KAFKA_PORT": "not-a-port"}
    result = CliRunner().invoke(main, ["infra", "status"], env=env)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("payledger: error: invalid settings: kafka_port")


def test_install_builds_every_peer_into_the_cache_and_starts_nothing(tmp_path: Path) -> None:
    """What ``make test`` runs before the tests; on a machine that has it all, markers only."""
    from ledger.config import Settings
    from ledger.infra.btcd import btcd_installed
    from ledger.infra.kubo import kubo_installed
    from ledger.infra.mocks import prism_installed, stripe_mock_installed

    env = _env(tmp_path)
    result = CliRunner().invoke(main, ["infra", "install"], env=env)
    assert result.exit_code == 0, result.output
    for part in ("postgres", "softhsm", "kafka jars", "stripe-mock", "prism", "btcd", "kubo"):
        assert f"{part}: installing if missing" in result.stderr
    settings = Settings()  # the cache dir is shared; the state dir is not used
    assert stripe_mock_installed(settings) and prism_installed(settings)
    assert btcd_installed(settings) and kubo_installed(settings)
    assert not (tmp_path / "state").exists(), "install writes nothing in the state dir"

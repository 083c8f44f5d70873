"""Port checks: a taken port must fail early, naming the port, the part and the setting."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from ledger.cli import main
from ledger.config import Settings
from ledger.errors import PortInUseError
from ledger.infra.ports import (
    PortUse,
    check_ports,
    free_port,
    free_ports,
    port_is_free,
    tcp_answers,
)
from ledger.infra.stack import Stack


@pytest.fixture
def listening() -> Iterator[int]:
    """A port on 127.0.0.1 held by a listening socket of this test process."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_free_port_passes() -> None:
    port = free_port()
    assert port_is_free("127.0.0.1", port)
    check_ports("kafka", [PortUse("127.0.0.1", port, "kafka_port")])


def test_taken_port_raises_with_port_part_and_env_var(listening: int) -> None:
    assert not port_is_free("127.0.0.1", listening)
    with pytest.raises(PortInUseError) as caught:
        check_ports("kafka", [PortUse("127.0.0.1", listening, "kafka_port")])
    message = str(caught.value)
    assert f"port {listening}" in message
    assert "kafka cannot start" in message
    assert "PAYLEDGER_KAFKA_PORT" in message
    # The holder is found through /proc: it is this very process.
    assert f"pid {os.getpid()}" in message


def test_second_port_of_a_part_is_checked_too(listening: int) -> None:
    uses = [
        PortUse("127.0.0.1", free_port(), "kafka_port"),
        PortUse("127.0.0.1", listening, "kafka_controller_port"),
    ]
    with pytest.raises(PortInUseError, match="PAYLEDGER_KAFKA_CONTROLLER_PORT"):
        check_ports("kafka", uses)


def test_tcp_answers(listening: int) -> None:
    assert tcp_answers("127.0.0.1", listening)
    assert not tcp_answers("127.0.0.1", free_port())


def test_stack_up_fails_on_a_taken_port_before_any_work(tmp_path: Path, listening: int) -> None:
    kafka_port, controller_port = free_ports(2)
    settings = Settings(
        state_dir=tmp_path / "state",
        kafka_port=kafka_port,
        kafka_controller_port=controller_port,
        postgres_port=listening,
    )
    with pytest.raises(PortInUseError, match="PAYLEDGER_POSTGRES_PORT"):
        Stack(settings).up()
    # Nothing was installed, downloaded or initialised before the check.
    assert not (tmp_path / "state" / "kafka").exists()
    assert not (tmp_path / "state" / "postgres").exists()
    assert not (tmp_path / "state" / "softhsm").exists()


def test_cli_up_prints_one_clear_line_and_no_traceback(tmp_path: Path, listening: int) -> None:
    env = {
        "PAYLEDGER_STATE_DIR": str(tmp_path / "state"),
        "PAYLEDGER_KAFKA_PORT": str(listening),
        "PAYLEDGER_KAFKA_CONTROLLER_PORT": str(free_port()),
        "PAYLEDGER_POSTGRES_PORT": str(free_port()),
    }
    result = CliRunner().invoke(main, ["infra", "up"], env=env)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"payledger: error: port {listening}")
    assert "PAYLEDGER_KAFKA_PORT" in lines[0]
    assert "Traceback" not in result.output

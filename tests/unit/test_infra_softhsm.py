"""SoftHSM2: its config file and reading token labels."""

from __future__ import annotations

from pathlib import Path

from ledger.config import Settings
from ledger.infra.part import State
from ledger.infra.softhsm import render_conf, status, token_env, token_labels

_SHOW_SLOTS = """Available slots:
Slot 809843975
    Slot info:
        Description:      SoftHSM slot ID 0x30453d07
        Token present:    yes
    Token info:
        Initialized:      yes
        Label:            payledger                       
Slot 1
    Token info:
        Initialized:      no
        Label:                                            
"""  # noqa: W291 - softhsm2-util pads labels with trailing spaces


def test_conf_points_into_the_state_dir(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    conf = {
        key.strip(): value.strip()
        for key, _, value in (
            line.partition("=") for line in render_conf(settings).splitlines() if "=" in line
        )
    }
    assert conf["directories.tokendir"] == str(tmp_path / "softhsm" / "tokens")
    assert conf["objectstore.backend"] == "file"
    assert conf["log.level"] == "ERROR"


def test_env_names_the_conf(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    assert token_env(settings) == {"SOFTHSM2_CONF": str(tmp_path / "softhsm" / "softhsm2.conf")}


def test_token_labels_skip_uninitialised_slots() -> None:
    assert token_labels(_SHOW_SLOTS) == ["payledger"]
    assert token_labels("Available slots:\n") == []


def test_status_without_conf_is_absent(tmp_path: Path) -> None:
    result = status(Settings(state_dir=tmp_path))
    assert result.state is State.ABSENT
    assert not result.ok
    assert result.endpoints["token"] == "payledger"

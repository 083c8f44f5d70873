"""The provider mocks as stack parts, without installing or starting anything."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from ledger.config import Settings
from ledger.errors import InfrastructureError
from ledger.infra import mocks
from ledger.infra.mocks import (
    MockPart,
    PrismOrdersPart,
    ensure_prism,
    ensure_stripe_mock,
    mock_parts,
    prism_entry,
    stripe_mock_binary,
)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(state_dir=tmp_path / "state", cache_dir=tmp_path / "cache")


def _no_commands(*args: object, **kwargs: object) -> str:
    raise AssertionError(f"ran a command: {args}")


def test_installed_binaries_are_not_installed_again(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = stripe_mock_binary(settings)
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    (binary.parent.parent / "stripe-mock.installed").write_text(
        f"github.com/stripe/stripe-mock@{settings.stripe_mock_version}\n"
    )
    entry = prism_entry(settings)
    entry.parent.mkdir(parents=True)
    entry.write_text("")
    (settings.cache_dir / "prism" / "payledger.installed").write_text(
        f"@stoplight/prism-cli@{settings.prism_version}\n"
    )
    monkeypatch.setattr(mocks, "run_checked", _no_commands)
    assert ensure_stripe_mock(settings) == binary
    assert ensure_prism(settings) == entry


def test_another_pinned_version_is_installed_afresh(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = stripe_mock_binary(settings)
    binary.parent.mkdir(parents=True)
    binary.write_text("old")
    (binary.parent.parent / "stripe-mock.installed").write_text(
        "github.com/stripe/stripe-mock@v0.1.0\n"
    )
    commands: list[list[str]] = []

    def record(argv: list[str], **kwargs: object) -> str:
        commands.append(argv)
        env = kwargs["env"]
        assert isinstance(env, dict)
        assert env["GOBIN"] == str(binary.parent)
        return ""

    monkeypatch.setattr(mocks, "run_checked", record)
    monkeypatch.setattr(mocks.shutil, "which", lambda name: f"/usr/bin/{name}")
    ensure_stripe_mock(settings)
    assert commands == [
        ["/usr/bin/go", "install", f"github.com/stripe/stripe-mock@{settings.stripe_mock_version}"]
    ]
    assert mocks.stripe_mock_installed(settings)


def test_missing_go_is_a_clear_error(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mocks.shutil, "which", lambda name: None)
    with pytest.raises(InfrastructureError, match="Go is not installed"):
        ensure_stripe_mock(settings)


def test_missing_paypal_spec_names_the_setting(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, cache_dir=tmp_path, paypal_specs_dir=tmp_path)
    with pytest.raises(InfrastructureError, match="PAYLEDGER_PAYPAL_SPECS_DIR"):
        PrismOrdersPart(settings).prepare()


def test_each_mock_is_found_again_by_its_own_command_line(settings: Settings) -> None:
    parts = mock_parts(settings)
    assert [part.name for part in parts] == [
        "stripe-mock",
        "prism-orders",
        "prism-payments",
        "paypal-gateway",
        "coinbase-fake",
    ]
    signatures = []
    for part in parts:
        assert isinstance(part, MockPart)
        # running_pid() finds a mock whose PID file is lost by this text.
        signature = part._signature()
        assert signature in " ".join(part.command())
        signatures.append(signature)
    # No mock may take another for itself.
    for part in parts:
        others = [s for s in signatures if s != part._signature()]
        assert not any(s in " ".join(part.command()) for s in others)


def test_credentials_reach_the_fakes_by_environment_only(settings: Settings) -> None:
    for part in mock_parts(settings)[3:]:
        assert settings.paypal_client_secret.get_secret_value() not in part.command()
        assert settings.coinbase_api_key.get_secret_value() not in part.command()
        env = part.command_env()
        assert env["PAYLEDGER_COINBASE_API_KEY"] == settings.coinbase_api_key.get_secret_value()


def test_ports_and_urls_are_checked(tmp_path: Path) -> None:
    # Explicit ports: a PAYLEDGER_*_MOCK_PORT in the environment must not matter here.
    with pytest.raises(ValidationError, match="must all differ"):
        Settings(state_dir=tmp_path, paypal_mock_port=14010, stripe_mock_port=14010)
    with pytest.raises(ValidationError, match="base URL"):
        Settings(state_dir=tmp_path, paypal_api_base_url="api-m.paypal.com")
    settings = Settings(
        state_dir=tmp_path, paypal_mock_port=14010, stripe_api_base_url="https://api.stripe.com/"
    )
    assert settings.stripe_base_url() == "https://api.stripe.com"
    assert settings.paypal_base_url() == "http://127.0.0.1:14010"
    assert settings.paypal_specs_path().name == "paypal"


class _NeverReady:
    """A part that starts (a PID) but never answers, and records being stopped."""

    name = "never-ready"
    log_path = Path("/nonexistent/never-ready.log")
    stopped: list[int]

    def __init__(self) -> None:
        self.stopped = []
        self.running: int | None = None

    def running_pid(self) -> int | None:
        return self.running

    def ports(self) -> list[object]:
        return []

    def prepare(self) -> None:
        return None

    def start_daemon(self) -> int:
        self.running = 424242
        return self.running

    def is_ready(self) -> bool:
        return False

    def stop(self, pid: int) -> None:
        self.stopped.append(pid)
        self.running = None


def test_up_stops_what_it_started_when_a_mock_never_answers(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ledger.errors import InfrastructureError
    from ledger.infra import part as part_module
    from ledger.infra.mocks import MockStack

    monkeypatch.setattr(part_module, "POLL_INTERVAL_S", 0.01)
    stack = MockStack(settings)
    never = _NeverReady()
    stack.parts = [never]  # type: ignore[list-item]
    monkeypatch.setattr(
        "ledger.infra.mocks.wait_until_ready",
        lambda parts: part_module.wait_until_ready(parts, timeout_s=0.05),
    )
    with pytest.raises(InfrastructureError, match="did not become ready"):
        stack.up()
    assert never.stopped == [424242]

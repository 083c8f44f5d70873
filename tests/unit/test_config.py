from __future__ import annotations

import pytest
from pydantic import ValidationError

from ledger.config import Settings, SignerBackend


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYLEDGER_KAFKA_PORT", "29092")
    monkeypatch.setenv("PAYLEDGER_SIGNER_BACKEND", "pkcs11")
    settings = Settings()
    assert settings.kafka_port == 29092
    assert settings.bootstrap_servers() == "127.0.0.1:29092"
    assert settings.signer_backend is SignerBackend.PKCS11


def test_secrets_never_appear_in_repr() -> None:
    settings = Settings(postgres_password="hunter2-secret", pkcs11_user_pin="9876")
    assert "hunter2-secret" not in repr(settings)
    assert "9876" not in repr(settings)
    assert "hunter2-secret" in settings.dsn()


@pytest.mark.parametrize(
    "bad",
    [
        {"kafka_port": 0},
        {"kafka_port": 70000},
        {"topic_min_insync_replicas": 2, "topic_replication_factor": 1},
        {"kafka_port": 9000, "kafka_controller_port": 9000},
        {"signer_backend": "vault"},
        {"topic_prefix": "Bad Prefix"},
        {"no_such_setting": 1},
    ],
)
def test_invalid_settings_fail_fast(bad: dict) -> None:
    with pytest.raises(ValidationError):
        Settings(**bad)


def test_bad_environment_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYLEDGER_POSTGRES_PORT", "not-a-port")
    with pytest.raises(ValidationError):
        Settings()


def test_paths_are_absolute() -> None:
    assert Settings(state_dir="relative/state").state_dir.is_absolute()

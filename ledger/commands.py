"""``payledger run`` (the embedded stack in the foreground) and ``payledger keys``."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path

import click

from ledger.config import Settings, load_settings
from ledger.errors import LedgerError
from ledger.keystore import KeyStore, endorsement_to_json, trusted_root_to_json
from ledger.signing import write_secret


def _settings() -> Settings:
    try:
        return load_settings()
    except ValueError as error:  # pydantic's ValidationError is a ValueError
        raise click.ClickException(f"invalid configuration: {error}") from error


def _tcp_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


async def _publish_active_endorsement(settings: Settings) -> str:
    """Start a publisher once: it publishes the active key's endorsement on the keys topic."""
    from ledger.codec import EnvelopeCodec
    from ledger.keystore import ActiveSigner
    from ledger.registry import open_registry
    from streams.publisher import kafka_publisher

    store = KeyStore(settings)
    registry = open_registry(settings)
    signer = ActiveSigner(store)
    try:
        async with kafka_publisher(
            settings, EnvelopeCodec(registry), signer, source="/payledger/keys"
        ):
            return signer.endorsement().key_id
    finally:
        registry.close()
        store.close()


def _demo_merchant(settings: Settings) -> Path:
    """The embedded default's merchant ``demo`` and its API key, in a 0600 file.

    Development only: it lets the README's curl examples work as written.
    """
    from ingress.merchants import add_api_key, create_merchant

    path = settings.state_dir / "demo-api-key"
    asyncio.run(create_merchant(settings, "demo", "Demo shop"))
    if not path.exists():
        issued = asyncio.run(add_api_key(settings, "demo"))
        write_secret(path, issued.token.encode())
    return path


def _dev_webhook_secrets(settings: Settings) -> dict[str, str]:
    """Webhook secrets for the embedded default, when none are configured.

    Made once and kept in a 0600 file, so the README's signed-webhook example
    works; configured secrets always win and are never written anywhere.
    """
    path = settings.state_dir / "dev-webhook-secrets.json"
    if not path.exists():
        secrets = {"stripe": "whsec_dev_" + os.urandom(16).hex(), "coinbase": os.urandom(16).hex()}
        write_secret(path, json.dumps(secrets, indent=2).encode())
    secrets = json.loads(path.read_text())
    env = {}
    if not settings.stripe_webhook_secrets:
        env["PAYLEDGER_STRIPE_WEBHOOK_SECRETS"] = json.dumps([secrets["stripe"]])
    if not settings.coinbase_webhook_secrets:
        env["PAYLEDGER_COINBASE_WEBHOOK_SECRETS"] = json.dumps([secrets["coinbase"]])
    return env


def _provision(settings: Settings) -> None:
    from streams.provision import provision_topics

    report = asyncio.run(provision_topics(settings))
    if not report.ok:
        problems = "\n".join(f"  {mismatch}" for mismatch in report.mismatches)
        raise click.ClickException(f"topics differ from their specs:\n{problems}")


@click.command()
def run() -> None:
    """Start the embedded stack in the foreground; Ctrl-C stops everything.

    Kafka, Postgres, the SoftHSM2 token, the offline provider peers
    (stripe-mock, the PayPal mock, the Coinbase fake: the embedded default has
    no internet) and the anchoring peers (Kubo offline, btcd in regtest) come
    up first; then the topics are provisioned, the signing
    keys made (once) and the active key's endorsement published, the
    projections and anchoring schemas migrated; then the HTTP ingress, the
    stream worker, the projections applier and the anchoring worker (the
    Merkle log, its signed checkpoints, published to Kubo and stamped on btcd)
    start.
    """
    from ledger.infra.supervisor import Supervisor

    settings = _settings()
    try:
        with Supervisor(settings) as supervisor:
            supervisor.start_infra(with_mocks=True, with_anchor_peers=True)
            supervisor.log("run", "provisioning topics")
            _provision(settings)
            key_id = asyncio.run(_publish_active_endorsement(settings))
            root = KeyStore(settings).trusted_root()
            supervisor.log("run", f"root key {root.key_id}; event key {key_id} endorsed")
            demo_key = _demo_merchant(settings)
            supervisor.log("run", f"merchant 'demo' ready; its API key is in {demo_key}")
            supervisor.add_process(
                "http",
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "--factory",
                    "ingress.app:create_app",
                    "--host",
                    settings.http_host,
                    "--port",
                    str(settings.http_port),
                    "--no-access-log",
                    "--loop",
                    "uvloop",
                    "--http",
                    "httptools",
                ],
                env=supervisor.child_env(_dev_webhook_secrets(settings)),
                ready=lambda: _tcp_answers(settings.http_host, settings.http_port),
            )
            supervisor.run_once(
                "migrate", [sys.executable, "-m", "ledger.cli", "projections", "migrate"]
            )
            supervisor.run_once(
                "migrate", [sys.executable, "-m", "ledger.cli", "anchoring", "migrate"]
            )
            supervisor.add_process("streams", [sys.executable, "-m", "streams.worker"])
            supervisor.add_process("projections", [sys.executable, "-m", "projections.worker"])
            supervisor.add_process(
                "anchoring",
                [sys.executable, "-m", "anchoring.worker"],
                # Checkpoints go to the local Kubo and are stamped on the
                # local btcd (regtest): the embedded default has no internet.
                env=supervisor.child_env(
                    {
                        "PAYLEDGER_ANCHORING_IPFS_ENABLED": "true",
                        "PAYLEDGER_OTS_DIRECT_ENABLED": "true",
                    }
                ),
            )
            supervisor.log(
                "run",
                f"ready: API at http://{settings.http_host}:{settings.http_port} "
                f"(OpenAPI at /openapi.json, schema registry at the same address), "
                f"Kafka at {settings.bootstrap_servers()}; Ctrl-C stops everything",
            )
            code = supervisor.wait()
    except LedgerError as error:
        raise click.ClickException(str(error)) from error
    sys.exit(code)


@click.group()
def keys() -> None:
    """Signing keys: the root auditors pin, and endorsed event-signing keys."""


@keys.command("init")
def keys_init() -> None:
    """Create the root key and an endorsed event-signing key, once; print the root."""
    store = KeyStore(_settings())
    try:
        active = store.active_key()
        click.echo(json.dumps(trusted_root_to_json(store.trusted_root()), indent=2))
        click.echo(
            f"event key {active.endorsement.key_id} valid until {active.endorsement.not_after}"
        )
    except LedgerError as error:
        raise click.ClickException(str(error)) from error
    finally:
        store.close()


@keys.command("root")
def keys_root() -> None:
    """Print the trusted root (public keys and fingerprint) for auditors to pin."""
    store = KeyStore(_settings())
    try:
        click.echo(json.dumps(trusted_root_to_json(store.trusted_root()), indent=2))
    finally:
        store.close()


@keys.command("endorsements")
def keys_endorsements() -> None:
    """Print every endorsement this node has made, oldest first, as JSON lines."""
    store = KeyStore(_settings())
    try:
        for endorsement in store.endorsements():
            click.echo(json.dumps(endorsement_to_json(endorsement)))
    finally:
        store.close()


@keys.command("publish")
def keys_publish() -> None:
    """Publish the active key's endorsement on the keys topic (idempotent)."""
    try:
        key_id = asyncio.run(_publish_active_endorsement(_settings()))
    except LedgerError as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"published endorsement of {key_id}")

"""The stream worker as a subprocess, and Stripe deliveries as the ingress records them."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ingress.webhooks import stripe as stripe_webhooks
from ledger import limits
from ledger.config import Settings
from ledger.envelope import Envelope, new_envelope
from tests.support.webhooks import stripe_header

REPO = Path(__file__).resolve().parents[2]


class WorkerDidNotStop(RuntimeError):
    pass


def worker_env(settings: Settings) -> dict[str, str]:
    """The environment that points ``python -m streams.worker`` at ``settings``."""
    return {
        **os.environ,
        "PAYLEDGER_TOPIC_PREFIX": settings.topic_prefix,
        "PAYLEDGER_STATE_DIR": str(settings.state_dir),
        "PAYLEDGER_STRIPE_MOCK_PORT": str(settings.stripe_mock_port),
        "PAYLEDGER_STRIPE_MOCK_HTTPS_PORT": str(settings.stripe_mock_https_port),
        "PAYLEDGER_PAYPAL_MOCK_PORT": str(settings.paypal_mock_port),
        "PAYLEDGER_PAYPAL_MOCK_ORDERS_PORT": str(settings.paypal_mock_orders_port),
        "PAYLEDGER_PAYPAL_MOCK_PAYMENTS_PORT": str(settings.paypal_mock_payments_port),
        "PAYLEDGER_COINBASE_MOCK_PORT": str(settings.coinbase_mock_port),
    }


@contextmanager
def running_worker(settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    """The worker, its output in ``<state_dir>/worker.log``; stopped with SIGTERM on exit.

    Raises ``WorkerDidNotStop`` when it does not stop within the shutdown
    limit, and ``AssertionError`` (with its log) when it stops with an error.
    """
    log_path = settings.state_dir / "worker.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "streams.worker"],
        cwd=REPO,
        env=worker_env(settings),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=limits.STREAMS_SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise WorkerDidNotStop("the worker did not stop on SIGTERM") from None
        finally:
            log.close()
        assert code in (0, -signal.SIGTERM), log_path.read_text()


def stripe_delivery(
    payment_id: str,
    event_type: str,
    obj: dict[str, Any],
    *,
    secret: str,
    created: int | None = None,
) -> Envelope:
    """A Stripe delivery signed, verified and normalized, wrapped as the ingress publishes it."""
    body = json.dumps(
        {
            "id": f"evt_{uuid.uuid4().hex[:16]}",
            "object": "event",
            "type": event_type,
            "created": int(time.time()) if created is None else created,
            "livemode": False,
            "data": {"object": {**obj, "metadata": {"payledger_payment_id": payment_id}}},
        }
    ).encode()
    header = stripe_header(secret, int(time.time()), body)
    stripe_webhooks.verify(
        header, body, secrets=[secret.encode()], now=datetime.now(UTC), tolerance_s=300
    )
    event = stripe_webhooks.normalize(body)
    return new_envelope(
        event_type=event.envelope_type,
        aggregate_id=event.aggregate_id(),
        sequence=1,
        producer="/payledger/ingress",
        occurred_at=event.occurred_at,
        payload=event.provider_event(
            received_at=datetime.now(UTC), body_sha256=hashlib.sha256(body).digest()
        ),
    )


def succeeded_intent(payment_id: str, intent_id: str, *, secret: str) -> Envelope:
    """``payment_intent.succeeded`` for an automatic-capture intent of 10.50 USD."""
    return stripe_delivery(
        payment_id,
        "payment_intent.succeeded",
        {
            "id": intent_id,
            "object": "payment_intent",
            "amount": 1050,
            "amount_received": 1050,
            "currency": "usd",
            "status": "succeeded",
        },
        secret=secret,
    )

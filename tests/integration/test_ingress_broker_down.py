"""With the broker gone, the ingress answers 503 with Retry-After in bounded time, never 202.

Runs its own Kafka (its own state directory and ports) so stopping it does
not disturb the other tests; Postgres is the session's.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ingress.app import create_app
from ledger.config import Settings
from ledger.infra.kafka import KafkaPart
from ledger.topics import TopicRole, topic_name
from streams.provision import provision_topics
from tests.integration.test_envelope_kafka import read_all
from tests.integration.test_ingress import _merchant, create_body
from tests.support.servers import serve_in_thread

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def own_kafka(tmp_path: Path) -> Iterator[tuple[Settings, KafkaPart]]:
    session = Settings()
    settings = session.model_copy(
        update={
            # Under the repository: the same layout the stack uses, kept apart.
            "state_dir": ROOT / ".state" / f"broker-down-{uuid.uuid4().hex[:8]}",
            "kafka_port": 39192,
            "kafka_controller_port": 39193,
            "topic_prefix": "bd.",
            "publish_timeout_s": 2.0,
        }
    )
    # Postgres stays the session's: the copy keeps its host, port and credentials.
    kafka = KafkaPart(settings)
    kafka.prepare()
    kafka.start_daemon()
    deadline = time.monotonic() + 90
    while not kafka.is_ready():
        assert time.monotonic() < deadline, "the test's own Kafka did not start"
        time.sleep(0.2)
    try:
        yield settings, kafka
    finally:
        pid = kafka.running_pid()
        if pid is not None:
            kafka.stop(pid)


def test_broker_down_gives_503_and_a_retry_succeeds(own_kafka) -> None:
    settings, kafka = own_kafka
    assert asyncio.run(provision_topics(settings)).ok
    _, api_key = _merchant(settings)
    headers = {"Authorization": f"Bearer {api_key}"}
    with (
        serve_in_thread(create_app(settings), lifespan="on") as url,
        httpx.Client(base_url=url, headers=headers, timeout=60) as client,
    ):
        ok = client.post("/v1/payments", json=create_body(), headers={"Idempotency-Key": "before"})
        assert ok.status_code == 202
        pid = kafka.running_pid()
        assert pid is not None
        kafka.stop(pid)

        started = time.monotonic()
        down = client.post(
            "/v1/payments", json=create_body(), headers={"Idempotency-Key": "during"}
        )
        elapsed = time.monotonic() - started
        assert down.status_code == 503, down.text
        assert down.headers["content-type"] == "application/problem+json"
        assert int(down.headers["Retry-After"]) > 0
        # Bounded: the publish timeout plus request overhead, not a hang.
        assert elapsed < settings.publish_timeout_s + 10

        kafka.start_daemon()
        deadline = time.monotonic() + 90
        while not kafka.is_ready():
            assert time.monotonic() < deadline
            time.sleep(0.2)
        retried = None
        for _ in range(30):
            retried = client.post(
                "/v1/payments", json=create_body(), headers={"Idempotency-Key": "during"}
            )
            if retried.status_code == 202:
                break
            time.sleep(1)
        assert retried is not None and retried.status_code == 202, retried.text
    records = asyncio.run(read_all(settings, topic_name(settings, TopicRole.COMMANDS), 2))
    event_ids = {record.headers and dict(record.headers)["ce_id"] for record in records}
    # The 503'd attempt and its retry share one event id: at most one command for it.
    assert retried.json()["event_id"].encode() in event_ids
    assert len(event_ids) == 2

"""The hand-written Kafka Metadata probe, against canned bytes and a fake broker."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from ledger.infra.kafka_probe import (
    broker_ready,
    decode_metadata_response,
    encode_metadata_request,
    fetch_cluster_info,
)


def _string(text: str | None) -> bytes:
    if text is None:
        return struct.pack(">h", -1)
    return struct.pack(">h", len(text)) + text.encode()


def _response(correlation_id: int, cluster_id: str | None, node_ids: list[int]) -> bytes:
    body = struct.pack(">ii", correlation_id, 0) + struct.pack(">i", len(node_ids))
    for node_id in node_ids:
        body += struct.pack(">i", node_id) + _string("127.0.0.1") + struct.pack(">i", 9092)
        body += _string(None)
    body += _string(cluster_id) + struct.pack(">i", node_ids[0] if node_ids else -1)
    body += struct.pack(">i", 0)  # no topics
    return body


def test_request_is_metadata_v4_for_no_topics() -> None:
    request = encode_metadata_request(7)
    (size,) = struct.unpack(">i", request[:4])
    assert size == len(request) - 4
    api_key, version, correlation_id = struct.unpack(">hhi", request[4:12])
    assert (api_key, version, correlation_id) == (3, 4, 7)
    assert request.endswith(struct.pack(">i?", 0, False))


def test_decode_response() -> None:
    info = decode_metadata_response(_response(7, "clusterA", [1, 2]), 7)
    assert info.cluster_id == "clusterA"
    assert info.controller_id == 1
    assert [b.node_id for b in info.brokers] == [1, 2]
    assert info.brokers[0].host == "127.0.0.1"
    assert info.brokers[0].port == 9092


def test_decode_rejects_wrong_correlation_id_and_truncation() -> None:
    with pytest.raises(ValueError, match="correlation"):
        decode_metadata_response(_response(8, "c", [1]), 7)
    with pytest.raises(ValueError, match="truncated"):
        decode_metadata_response(_response(7, "c", [1])[:15], 7)


@pytest.fixture
def fake_broker() -> Iterator[tuple[int, list[bytes]]]:
    """Answers each connection with one Metadata response for cluster 'ours', node 1."""
    replies = [_response(1, "ours", [1])]
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                size = struct.unpack(">i", conn.recv(4))[0]
                while size > 0:
                    size -= len(conn.recv(size))
                reply = replies[0]
                conn.sendall(struct.pack(">i", len(reply)) + reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], replies
    # shutdown() wakes the accept() blocked in the thread; close() alone does not.
    with contextlib.suppress(OSError):
        server.shutdown(socket.SHUT_RDWR)
    server.close()
    thread.join(timeout=5)


def test_broker_ready_only_for_our_cluster_and_node(fake_broker: tuple[int, list[bytes]]) -> None:
    port, replies = fake_broker
    assert fetch_cluster_info("127.0.0.1", port).cluster_id == "ours"
    assert broker_ready("127.0.0.1", port, "ours", 1)
    assert not broker_ready("127.0.0.1", port, "theirs", 1)
    assert not broker_ready("127.0.0.1", port, "ours", 2)
    replies[0] = _response(1, "ours", [])  # fenced: the broker is not listed yet
    assert not broker_ready("127.0.0.1", port, "ours", 1)


def test_broker_ready_is_false_when_nothing_listens() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert not broker_ready("127.0.0.1", port, "ours", 1)

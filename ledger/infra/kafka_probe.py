"""A minimal Kafka-protocol readiness probe: one Metadata request, by hand.

An open TCP port does not mean a broker is ready: the kernel accepts
connections into the listen backlog before Kafka serves them, and a broker
answers only once its start-up is complete. A Metadata response that lists
our node and carries our cluster id means the broker is up, registered and
unfenced, and that it is *our* broker, not another Kafka on the same port.
Implemented with ``struct`` so ``ledger`` needs no Kafka client.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

_METADATA_API_KEY = 3
# v4 is the oldest version Kafka 4.x still accepts that carries the cluster id,
# and the newest before the "flexible" (tagged-field) encoding.
_METADATA_VERSION = 4
_CLIENT_ID = b"payledger-probe"
_MAX_RESPONSE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class BrokerInfo:
    node_id: int
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class ClusterInfo:
    cluster_id: str | None
    controller_id: int
    brokers: tuple[BrokerInfo, ...]


def encode_metadata_request(correlation_id: int) -> bytes:
    """A size-prefixed Metadata v4 request for no topics (brokers only)."""
    header = struct.pack(
        ">hhih", _METADATA_API_KEY, _METADATA_VERSION, correlation_id, len(_CLIENT_ID)
    )
    # topics: an empty array (0), not null (-1): we want brokers, not every topic.
    body = struct.pack(">i?", 0, False)
    message = header + _CLIENT_ID + body
    return struct.pack(">i", len(message)) + message


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def take(self, fmt: str) -> tuple[int, ...]:
        size = struct.calcsize(fmt)
        if self._at + size > len(self._data):
            raise ValueError("truncated Metadata response")
        values = struct.unpack_from(fmt, self._data, self._at)
        self._at += size
        return tuple(int(v) for v in values)

    def string(self) -> str | None:
        (length,) = self.take(">h")
        if length < 0:
            return None
        if self._at + length > len(self._data):
            raise ValueError("truncated Metadata response")
        text = self._data[self._at : self._at + length].decode()
        self._at += length
        return text


def decode_metadata_response(payload: bytes, correlation_id: int) -> ClusterInfo:
    """Parse a Metadata v4 response (without its size prefix)."""
    reader = _Reader(payload)
    (got_id,) = reader.take(">i")
    if got_id != correlation_id:
        raise ValueError(f"correlation id {got_id}, expected {correlation_id}")
    reader.take(">i")  # throttle_time_ms
    (count,) = reader.take(">i")
    brokers = []
    for _ in range(max(count, 0)):
        (node_id,) = reader.take(">i")
        host = reader.string() or ""
        (port,) = reader.take(">i")
        reader.string()  # rack
        brokers.append(BrokerInfo(node_id, host, port))
    cluster_id = reader.string()
    (controller_id,) = reader.take(">i")
    return ClusterInfo(cluster_id, controller_id, tuple(brokers))


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed by the broker")
        chunks += chunk
    return bytes(chunks)


def fetch_cluster_info(host: str, port: int, timeout_s: float = 2.0) -> ClusterInfo:
    """Ask the broker at ``host:port`` for its metadata. Raises OSError or ValueError."""
    correlation_id = 1
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.settimeout(timeout_s)
        sock.sendall(encode_metadata_request(correlation_id))
        (size,) = struct.unpack(">i", _recv_exactly(sock, 4))
        if not 0 < size <= _MAX_RESPONSE_BYTES:
            raise ValueError(f"implausible response size {size}: not a Kafka broker?")
        return decode_metadata_response(_recv_exactly(sock, size), correlation_id)


def broker_ready(host: str, port: int, cluster_id: str, node_id: int) -> bool:
    """True if the broker on ``host:port`` is ours and serving as ``node_id``."""
    try:
        info = fetch_cluster_info(host, port)
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return info.cluster_id == cluster_id and any(b.node_id == node_id for b in info.brokers)

"""The canonical bytes of one Merkle log leaf: where a ledger record was read and what it held.

Every ledger event becomes one leaf, in consumption order. The leaf bytes
commit to the record's position and content::

    leaf bytes = LEAF_TAG                                 "payledger/anchoring/leaf/v1" 0x00
               || u32be(len(topic))    || topic           UTF-8, 1..249 bytes
               || u32be(4)             || u32be(partition)
               || u32be(8)             || u64be(offset)
               || u32be(len(event id)) || event id        UTF-8, 1..128 bytes, as in the envelope
               || u32be(32)            || SHA-256(record value)

    leaf hash  = SHA-256(0x00 || leaf bytes)              RFC 9162, section 2.1.1

The tag names the format and its version, so leaf bytes can never be read as
any other payledger structure, and a future format gets a new tag. Every
field carries its length, fixed-size ones included, so the bytes split into
fields one way only. The event id is kept in the text form the signed
envelope carries (no normalisation that two readers could do differently);
the record value enters through its digest, so a leaf stays small whatever
the event, and an auditor holding the record checks it with one hash.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Final

from ledger.errors import EncodingError
from ledger.tlog import limits
from ledger.tlog.errors import InvalidProof

LEAF_TAG: Final = b"payledger/anchoring/leaf/v1\x00"
DIGEST_BYTES: Final = 32
# The event id of the leaf of a record that does not decode as an envelope
# (never a UUID, so it cannot name an event).
UNDECODABLE_EVENT_ID: Final = "undecodable"

_LENGTH = struct.Struct(">I")
_POSITION = struct.Struct(">IIIQ")  # partition and offset, each with its length


@dataclass(frozen=True, slots=True)
class LeafRecord:
    """One ledger record as the log commits to it."""

    topic: str
    partition: int
    offset: int
    event_id: str
    value_sha256: bytes

    @classmethod
    def of(cls, topic: str, partition: int, offset: int, event_id: str, value: bytes) -> LeafRecord:
        """The leaf of a record as consumed: its value is hashed here."""
        return cls(topic, partition, offset, event_id, hashlib.sha256(value).digest())

    def __post_init__(self) -> None:
        if not 0 < len(self.topic) <= limits.TOPIC_CHARS_MAX or not self.topic.isascii():
            raise EncodingError("a topic name is 1 to 249 ASCII characters")
        if not 0 <= self.partition <= limits.PARTITION_MAX:
            raise EncodingError(f"partition {self.partition} out of range")
        if not 0 <= self.offset <= limits.OFFSET_MAX:
            raise EncodingError(f"offset {self.offset} out of range")
        if not 0 < len(self.event_id.encode()) <= limits.EVENT_ID_BYTES_MAX:
            raise EncodingError("an event id is 1 to 128 bytes of UTF-8")
        if len(self.value_sha256) != DIGEST_BYTES:
            raise EncodingError("value_sha256 is a 32-byte SHA-256 digest")

    def to_bytes(self) -> bytes:
        topic = self.topic.encode()
        event_id = self.event_id.encode()
        return b"".join(
            (
                LEAF_TAG,
                _LENGTH.pack(len(topic)),
                topic,
                _POSITION.pack(4, self.partition, 8, self.offset),
                _LENGTH.pack(len(event_id)),
                event_id,
                _LENGTH.pack(DIGEST_BYTES),
                self.value_sha256,
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> LeafRecord:
        """Parse leaf bytes, refusing any that ``to_bytes`` would not produce exactly."""
        reader = _Reader(data)
        if reader.take(len(LEAF_TAG)) != LEAF_TAG:
            raise InvalidProof("not a payledger v1 leaf")
        topic = reader.field()
        partition = reader.field()
        offset = reader.field()
        event_id = reader.field()
        digest = reader.field()
        if reader.remaining() or len(partition) != 4 or len(offset) != 8:
            raise InvalidProof("malformed leaf bytes")
        try:
            record = cls(
                topic.decode("ascii"),
                int.from_bytes(partition, "big"),
                int.from_bytes(offset, "big"),
                event_id.decode("utf-8"),
                digest,
            )
        except (UnicodeDecodeError, EncodingError) as error:
            raise InvalidProof(f"malformed leaf bytes: {error}") from error
        # Pair the checks: what was decoded must encode back to the same bytes.
        if record.to_bytes() != data:
            raise AssertionError("leaf bytes decode to a record that encodes differently")
        return record


class _Reader:
    __slots__ = ("_data", "_position")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._position = 0

    def take(self, count: int) -> bytes:
        end = self._position + count
        if end > len(self._data):
            raise InvalidProof("truncated leaf bytes")
        chunk = self._data[self._position : end]
        self._position = end
        return chunk

    def field(self) -> bytes:
        (length,) = _LENGTH.unpack(self.take(_LENGTH.size))
        return self.take(length)

    def remaining(self) -> int:
        return len(self._data) - self._position

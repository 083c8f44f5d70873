"""Content identifiers (CIDv1) and the block layout of a published file, computed locally.

Every payledger publication is a UnixFS file in the form Kubo's importer
gives with ``--cid-version=1 --raw-leaves --chunker=size-262144`` and the
balanced layout of at most 174 links per node, so an auditor can check a CID
with nothing but the published bytes and a stock ``ipfs add --only-hash``::

    content <= 256 KiB     one raw block; CID = CIDv1(raw, sha2-256(content))
    content >  256 KiB     raw leaves of 256 KiB (the last one shorter), in order,
                           under dag-pb nodes of at most 174 links each, built level
                           by level until one node remains: the root

    CIDv1 bytes  = varint(1) || varint(codec) || varint(0x12) || varint(32) || sha2-256(block)
    CID text     = "b" || base32(CIDv1 bytes), RFC 4648 lower case, no padding
    codec        = 0x55 raw (a leaf), 0x70 dag-pb (an inner node)

An inner node is a dag-pb ``PBNode`` (Links first, then Data, as the dag-pb
specification orders them); each link carries the child's CID, an empty name
and its cumulative size (block bytes of the child and everything under it).
Its Data is a UnixFS ``Data`` message: Type = File (2), filesize = the bytes
under the node, one blocksizes entry per child (the content bytes under it).

Why not a library: the CID part (one hash function, two codecs, one
multibase) is a few dozen lines here, which is all that ``py-cid`` or
``multiformats`` would replace, at the price of three or four packages; none
of them builds dag-pb or UnixFS nodes, the part that needs the most care.
The integration tests check every CID against Kubo.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from ledger.tlog.errors import AnchoringError

CID_VERSION: Final = 1
RAW_CODEC: Final = 0x55
DAG_PB_CODEC: Final = 0x70
SHA2_256: Final = 0x12
DIGEST_BYTES: Final = 32
MULTIBASE_BASE32: Final = "b"

# Kubo's own defaults for files (``size-262144`` chunker, balanced layout):
# with them ``ipfs add --only-hash --cid-version=1 --raw-leaves`` gives the
# same CID as this module.
CHUNK_BYTES: Final = 262_144
LINKS_PER_NODE_MAX: Final = 174
# Kubo refuses blocks over 1 MiB; a node of 174 links is about 8 KiB.
BLOCK_BYTES_MAX: Final = 1_048_576
# A CID this module reads is at most a few bytes of prefix and one digest.
CID_TEXT_CHARS_MAX: Final = 128

_UNIXFS_FILE: Final = 2


class InvalidCid(AnchoringError):
    """A CID that is not a CIDv1, sha2-256, raw or dag-pb CID in base32."""


@dataclass(frozen=True, slots=True)
class Cid:
    codec: int
    digest: bytes

    def __post_init__(self) -> None:
        if self.codec not in (RAW_CODEC, DAG_PB_CODEC):
            raise InvalidCid(f"codec 0x{self.codec:x} is neither raw nor dag-pb")
        if len(self.digest) != DIGEST_BYTES:
            raise InvalidCid("a sha2-256 digest is 32 bytes")

    @classmethod
    def of_block(cls, codec: int, block: bytes) -> Cid:
        return cls(codec, hashlib.sha256(block).digest())

    def to_bytes(self) -> bytes:
        return b"".join(
            (
                varint(CID_VERSION),
                varint(self.codec),
                varint(SHA2_256),
                varint(DIGEST_BYTES),
                self.digest,
            )
        )

    def __str__(self) -> str:
        text = base64.b32encode(self.to_bytes()).decode("ascii").lower().rstrip("=")
        return MULTIBASE_BASE32 + text

    @classmethod
    def from_bytes(cls, data: bytes) -> Cid:
        position = 0
        fields = []
        for _ in range(4):
            value, position = read_varint(data, position)
            fields.append(value)
        version, codec, hash_function, length = fields
        if version != CID_VERSION or hash_function != SHA2_256 or length != DIGEST_BYTES:
            raise InvalidCid("not a CIDv1 with a sha2-256 multihash")
        if len(data) - position != DIGEST_BYTES:
            raise InvalidCid("a CID's digest is not 32 bytes")
        cid = cls(codec, data[position:])
        if cid.to_bytes() != data:  # a non-minimal varint would let one CID have two forms
            raise InvalidCid("a CID's varints are not in their shortest form")
        return cid

    @classmethod
    def parse(cls, text: str) -> Cid:
        """Read the text form; only the form ``str`` writes is accepted."""
        if not 1 < len(text) <= CID_TEXT_CHARS_MAX or not text.startswith(MULTIBASE_BASE32):
            raise InvalidCid(f"not a base32 CIDv1: {text[:CID_TEXT_CHARS_MAX]!r}")
        body = text[1:]
        if body != body.lower():
            raise InvalidCid("a base32 CID is lower case")
        try:
            data = base64.b32decode(body.upper() + "=" * (-len(body) % 8))
        except ValueError as error:
            raise InvalidCid(f"not base32: {text!r}") from error
        cid = cls.from_bytes(data)
        if str(cid) != text:
            raise AssertionError("a CID parses to one that prints differently")
        return cid


def varint(value: int) -> bytes:
    """Unsigned LEB128, as multiformats and protobuf write integers."""
    if value < 0:
        raise ValueError("a varint is unsigned")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_varint(data: bytes, position: int) -> tuple[int, int]:
    """The varint at ``position`` and the position after it."""
    value = 0
    for shift in range(0, 64, 7):
        if position >= len(data):
            raise InvalidCid("truncated varint")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
    raise InvalidCid("varint longer than 64 bits")


# ---- the file layout ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Block:
    cid: Cid
    data: bytes


@dataclass(frozen=True, slots=True)
class FileDag:
    """A file's blocks, each after every block it links to: the root is last."""

    root: Cid
    blocks: tuple[Block, ...]
    content_bytes: int


@dataclass(frozen=True, slots=True)
class _Entry:
    cid: Cid
    content_bytes: int  # file bytes under the block
    cumulative_bytes: int  # block bytes of the block and everything under it


def file_dag(
    content: bytes,
    *,
    chunk_bytes: int = CHUNK_BYTES,
    links_per_node_max: int = LINKS_PER_NODE_MAX,
) -> FileDag:
    """Split ``content`` into the blocks of a UnixFS file and compute every CID.

    The keyword arguments exist so tests can build deep trees from little
    data; publications always use the defaults, which the layout above fixes.
    """
    if not 0 < chunk_bytes <= BLOCK_BYTES_MAX or links_per_node_max < 2:
        raise ValueError("a chunk is 1 byte to 1 MiB, and a node links at least 2 children")
    chunks = [content[start : start + chunk_bytes] for start in range(0, len(content), chunk_bytes)]
    blocks = [Block(Cid.of_block(RAW_CODEC, chunk), chunk) for chunk in chunks or [b""]]
    level = [_Entry(block.cid, len(block.data), len(block.data)) for block in blocks]
    while len(level) > 1:
        parents = []
        for start in range(0, len(level), links_per_node_max):
            children = level[start : start + links_per_node_max]
            node = _file_node(children)
            if len(node) > BLOCK_BYTES_MAX:
                raise AssertionError("a dag-pb node outgrew Kubo's block limit")
            blocks.append(Block(Cid.of_block(DAG_PB_CODEC, node), node))
            parents.append(
                _Entry(
                    blocks[-1].cid,
                    sum(child.content_bytes for child in children),
                    len(node) + sum(child.cumulative_bytes for child in children),
                )
            )
        level = parents
    if level[0].content_bytes != len(content):
        raise AssertionError("the file's blocks do not add up to its content")
    return FileDag(level[0].cid, tuple(blocks), len(content))


def _file_node(children: Sequence[_Entry]) -> bytes:
    unixfs = [_tag(1, 0), varint(_UNIXFS_FILE)]  # Type = File
    unixfs += [_tag(3, 0), varint(sum(child.content_bytes for child in children))]
    for child in children:
        unixfs += [_tag(4, 0), varint(child.content_bytes)]  # blocksizes, not packed
    parts = []
    for child in children:
        link = b"".join(
            (
                _field_bytes(1, child.cid.to_bytes()),  # Hash
                _field_bytes(2, b""),  # Name: present and empty, as Kubo writes it
                _tag(3, 0),
                varint(child.cumulative_bytes),  # Tsize
            )
        )
        parts.append(_field_bytes(2, link))  # PBNode.Links
    parts.append(_field_bytes(1, b"".join(unixfs)))  # PBNode.Data
    return b"".join(parts)


def _tag(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


def _field_bytes(field: int, value: bytes) -> bytes:
    return _tag(field, 2) + varint(len(value)) + value

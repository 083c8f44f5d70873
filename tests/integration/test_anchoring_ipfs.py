"""Checkpoints and leaf bundles published to a real Kubo, offline, and a Kubo that lies."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import mldsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from anchoring.ipfs import CidMismatch, IpfsError, KuboClient
from ledger.config import Settings
from ledger.signing import FileSigner
from ledger.tlog.bundle import LeafBundle, root_of_bundles
from ledger.tlog.checkpoint import Checkpoint, sign_checkpoint, verify_checkpoint
from ledger.tlog.cid import CHUNK_BYTES, DAG_PB_CODEC, RAW_CODEC, Cid, file_dag
from ledger.tlog.keys import AnchoringKey
from ledger.tlog.leaf import LeafRecord
from ledger.tlog.tree import MerkleTree
from tests.support import kubo
from tests.support.servers import serve_in_thread

pytestmark = pytest.mark.integration

kubo_node = kubo.kubo_node

ORIGIN = "ledger.payledger.test/ipfs"
HELLO_WORLD_CID = "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"


@pytest.fixture
async def client(kubo_node: Settings) -> AsyncIterator[KuboClient]:
    async with KuboClient.from_settings(kubo_node) as kubo_client:
        yield kubo_client


@pytest.fixture
async def rpc(kubo_node: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """Plain RPC calls, for what the code under test does not do itself."""
    base = f"http://{kubo_node.kubo_api_host}:{kubo_node.kubo_api_port}/api/v0"
    async with httpx.AsyncClient(base_url=base, timeout=60.0, trust_env=False) as plain:
        yield plain


async def kubo_add_only_hash(rpc: httpx.AsyncClient, content: bytes) -> str:
    """The CID a stock ``ipfs add`` gives the same bytes, stored nowhere."""
    response = await rpc.post(
        "/add",
        params={
            "only-hash": "true",
            "cid-version": "1",
            "raw-leaves": "true",
            "chunker": f"size-{CHUNK_BYTES}",
        },
        files={"file": ("content", content)},
    )
    response.raise_for_status()
    return str(response.json()["Hash"])


async def pinned(rpc: httpx.AsyncClient, cid: Cid) -> bool:
    response = await rpc.post("/pin/ls", params={"arg": str(cid), "type": "recursive"})
    return response.status_code == 200 and str(cid) in response.json().get("Keys", {})


def make_leaves(first: int, count: int) -> tuple[LeafRecord, ...]:
    return tuple(
        LeafRecord.of(
            "payledger.payments",
            index % 6,
            index,
            f"01900000-0000-7000-8000-{index:012d}",
            hashlib.sha256(b"event %d" % index).digest(),
        )
        for index in range(first, first + count)
    )


# ---- a real Kubo ------------------------------------------------------------


async def test_hello_world_has_the_cid_computed_here(
    client: KuboClient, rpc: httpx.AsyncClient
) -> None:
    publication = await client.publish(b"hello world\n")
    assert str(publication.cid) == HELLO_WORLD_CID
    assert await kubo_add_only_hash(rpc, b"hello world\n") == HELLO_WORLD_CID
    assert await client.read(publication.cid) == b"hello world\n"
    assert await pinned(rpc, publication.cid)


async def test_a_signed_checkpoint_is_published_as_one_raw_block(
    client: KuboClient, rpc: httpx.AsyncClient
) -> None:
    key = AnchoringKey(
        ORIGIN,
        FileSigner(bytes([7]) * 32),
        mldsa.MLDSA87PrivateKey.from_seed_bytes(bytes([107]) * 32),
    )
    tree = MerkleTree()
    tree.append_many([leaf.to_bytes() for leaf in make_leaves(0, 10)])
    note = sign_checkpoint(Checkpoint(ORIGIN, tree.size, tree.root()), key)

    publication = await client.publish_checkpoint(note)

    assert publication.cid.codec == RAW_CODEC
    assert publication.cid.digest == hashlib.sha256(note.encode()).digest()
    assert str(publication.cid) == await kubo_add_only_hash(rpc, note.encode())
    back = await client.read(publication.cid)
    assert back == note.encode()
    assert verify_checkpoint(back, key.public).root_hash == tree.root()
    assert await pinned(rpc, publication.cid)


async def test_a_bundle_of_several_blocks_round_trips(
    client: KuboClient, rpc: httpx.AsyncClient
) -> None:
    first = LeafBundle(ORIGIN, 0, make_leaves(0, 3))
    second = LeafBundle(ORIGIN, 3, make_leaves(3, 6_000))
    content = second.to_bytes()
    assert len(content) > 3 * CHUNK_BYTES  # several raw leaves under a dag-pb root

    publication = await client.publish_bundle(second)

    assert publication.cid == file_dag(content).root
    assert publication.cid.codec == DAG_PB_CODEC
    assert publication.blocks == len(file_dag(content).blocks) >= 5
    assert str(publication.cid) == await kubo_add_only_hash(rpc, content)
    assert await pinned(rpc, publication.cid)
    back = await client.read_bundle(publication.cid)
    assert back == second
    tree = MerkleTree()
    tree.append_many([leaf.to_bytes() for leaf in make_leaves(0, 6_003)])
    assert root_of_bundles([first, back]) == tree.root()


async def test_kubo_serves_a_deep_tree_built_here(
    client: KuboClient, rpc: httpx.AsyncClient
) -> None:
    # Small chunks give three levels of nodes from 200 kB: Kubo walks the
    # blocks put here and returns the bytes, so the inner nodes are valid
    # UnixFS. ``read`` still refuses it: its CID is not that of the one
    # publication layout.
    content = b"".join(hashlib.sha256(b"%d" % i).digest() for i in range(6_250))
    dag = file_dag(content, chunk_bytes=64, links_per_node_max=16)
    for block in dag.blocks:
        await client.put_block(block)
    response = await rpc.post("/cat", params={"arg": str(dag.root)})
    assert response.status_code == 200
    assert response.content == content
    with pytest.raises(CidMismatch):
        await client.read(dag.root)


async def test_reading_is_bounded(client: KuboClient) -> None:
    publication = await client.publish(b"x" * 5_000)
    with pytest.raises(IpfsError, match="larger than"):
        await client.read(publication.cid, content_bytes_max=4_999)


# ---- a Kubo that lies -------------------------------------------------------


class LyingKubo:
    """Answers Kubo's RPC shapes with a CID of other bytes, and counts pins."""

    def __init__(self, key: object) -> None:
        self.key = key
        self.pins: list[str] = []

    def app(self) -> Starlette:
        async def block_put(request: Request) -> Response:
            await request.body()
            return JSONResponse({"Key": self.key, "Size": 12})

        async def pin_add(request: Request) -> Response:
            self.pins.append(request.query_params.get("arg", ""))
            return JSONResponse({"Pins": [request.query_params.get("arg", "")]})

        async def cat(request: Request) -> Response:
            return Response(b"hello world?", media_type="text/plain")

        return Starlette(
            routes=[
                Route("/api/v0/block/put", block_put, methods=["POST"]),
                Route("/api/v0/pin/add", pin_add, methods=["POST"]),
                Route("/api/v0/cat", cat, methods=["POST"]),
            ]
        )


@pytest.fixture
def wrong_cid_kubo() -> Iterator[tuple[LyingKubo, str]]:
    liar = LyingKubo(str(file_dag(b"something else\n").root))
    with serve_in_thread(liar.app()) as url:
        yield liar, url


async def test_a_kubo_answering_another_cid_is_refused_and_nothing_is_pinned(
    wrong_cid_kubo: tuple[LyingKubo, str],
) -> None:
    liar, url = wrong_cid_kubo
    async with KuboClient(url, timeout_s=10.0) as client:
        with pytest.raises(CidMismatch, match=HELLO_WORLD_CID):
            await client.publish(b"hello world\n")
    assert liar.pins == []


async def test_a_kubo_answering_no_cid_is_refused() -> None:
    for key in ("not a cid", "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o", 12):
        liar = LyingKubo(key)
        with serve_in_thread(liar.app()) as url:
            async with KuboClient(url, timeout_s=10.0) as client:
                with pytest.raises(IpfsError):
                    await client.publish(b"hello world\n")
        assert liar.pins == []


async def test_content_that_does_not_match_its_cid_is_refused(
    wrong_cid_kubo: tuple[LyingKubo, str],
) -> None:
    _, url = wrong_cid_kubo
    async with KuboClient(url, timeout_s=10.0) as client:
        with pytest.raises(CidMismatch):
            await client.read(Cid.parse(HELLO_WORLD_CID))


async def test_an_unreachable_kubo_is_an_ipfs_error(closed_port: int) -> None:
    async with KuboClient(f"http://127.0.0.1:{closed_port}", timeout_s=5.0) as client:
        with pytest.raises(IpfsError):
            await client.publish(b"hello world\n")

"""Publishing checkpoints and leaf bundles to IPFS through a Kubo node's HTTP RPC.

What is published for each checkpoint, and how an auditor checks it::

    checkpoint  the signed note text, UTF-8, as a UnixFS file
    bundle      the bytes of ``ledger.tlog.bundle.LeafBundle`` (the leaves the
                checkpoint added), as a UnixFS file

Both use the layout of ``ledger.tlog.cid``: CIDv1, sha2-256, raw leaves of
256 KiB under dag-pb nodes of at most 174 links. A checkpoint always fits in
one block, so its CID is the raw CID of the text itself (``bafkrei...``,
which is sha2-256 of the text). To audit, fetch each CID with any IPFS client
(``ipfs cat <cid>``, or a gateway's ``/ipfs/<cid>``), recompute the CID from
the bytes (``ledger.tlog.cid.file_dag``, or ``ipfs add --only-hash
--cid-version=1 --raw-leaves --chunker=size-262144``), decode the bundle,
and recompute the checkpoint's root from it and the earlier bundles
(``ledger.tlog.bundle.root_of_bundles``).

Publishing does not trust the node. Every block goes up with ``block/put``
under the codec this module chose, and the CID Kubo answers must equal the
one computed here; only then is the root pinned. A node that answers any
other CID raises ``CidMismatch`` and nothing is pinned, so the caller has no
CID to record. Reading back recomputes the CID of what the node returned.

Errors::

    AnchoringError       (ledger.tlog.errors)
    └── IpfsError        the node could not be reached, answered an error or
        │                something that is not Kubo's RPC, or content over its limit
        └── CidMismatch  the node's CID, or the CID of what it returned, is not ours
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self

import httpx

from ledger.config import Settings
from ledger.tlog.bundle import LeafBundle
from ledger.tlog.cid import RAW_CODEC, Block, Cid, InvalidCid, file_dag
from ledger.tlog.errors import AnchoringError

# The largest file published or read back: a full bundle (BUNDLE_LEAVES_MAX
# leaves of at most about 470 bytes each) with room to spare.
PUBLICATION_BYTES_MAX: Final = 536_870_912
# Kubo's JSON answers here are a few hundred bytes; an error message is short.
RPC_ANSWER_BYTES_MAX: Final = 65_536


class IpfsError(AnchoringError):
    pass


class CidMismatch(IpfsError):
    pass


@dataclass(frozen=True, slots=True)
class Publication:
    """One published file: its root CID, its size and how many blocks it took."""

    cid: Cid
    content_bytes: int
    blocks: int


class KuboClient:
    """The few Kubo RPC calls publication needs (``/api/v0/...``, all POST)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/api/v0",
            timeout=httpx.Timeout(timeout_s),
            transport=transport,
            # Kubo answers its RPC on loopback or a private address: no proxy
            # from the environment belongs in between.
            trust_env=False,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> KuboClient:
        url = settings.ipfs_api_url or (f"http://{settings.kubo_api_host}:{settings.kubo_api_port}")
        return cls(url, timeout_s=settings.ipfs_timeout_s)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    # Publishing ----------------------------------------------------------------

    async def publish_checkpoint(self, note_text: str) -> Publication:
        return await self.publish(note_text.encode("utf-8"))

    async def publish_bundle(self, bundle: LeafBundle) -> Publication:
        return await self.publish(bundle.to_bytes())

    async def publish(self, content: bytes) -> Publication:
        """Put every block of ``content``, check each CID, then pin the root."""
        if len(content) > PUBLICATION_BYTES_MAX:
            raise IpfsError(
                f"{len(content)} bytes to publish; the limit is {PUBLICATION_BYTES_MAX}"
            )
        dag = file_dag(content)
        for block in dag.blocks:  # children first: the root goes up last
            await self.put_block(block)
        await self.pin(dag.root)
        return Publication(dag.root, dag.content_bytes, len(dag.blocks))

    async def put_block(self, block: Block) -> None:
        codec = "raw" if block.cid.codec == RAW_CODEC else "dag-pb"
        answer = await self._call(
            "block/put",
            params={"cid-codec": codec, "mhtype": "sha2-256", "mhlen": "32"},
            files={"file": ("block", block.data, "application/octet-stream")},
        )
        reported = _text(answer, "Key")
        if reported != str(block.cid):
            raise CidMismatch(
                f"Kubo stored a block as {reported}; its CID computed here is {block.cid}"
            )

    async def pin(self, cid: Cid) -> None:
        answer = await self._call("pin/add", params={"arg": str(cid), "recursive": "true"})
        pins = answer.get("Pins")
        if not isinstance(pins, list) or str(cid) not in pins:
            raise IpfsError(f"Kubo did not confirm the pin of {cid}: {answer!r:.200}")

    # Reading -------------------------------------------------------------------

    async def read(self, cid: Cid, *, content_bytes_max: int = PUBLICATION_BYTES_MAX) -> bytes:
        """The file at ``cid``, accepted only if its bytes give that CID again."""
        content = await self._cat(cid, content_bytes_max)
        computed = file_dag(content).root
        if computed != cid:
            raise CidMismatch(f"Kubo returned content for {cid} whose CID is {computed}")
        return content

    async def fetch(self, cid: Cid, *, content_bytes_max: int = PUBLICATION_BYTES_MAX) -> bytes:
        """The bytes the node serves for ``cid``, unchecked.

        For an auditor who recomputes the CID itself and reports a mismatch
        as a finding, rather than as an error that stops the check.
        """
        return await self._cat(cid, content_bytes_max)

    async def read_bundle(self, cid: Cid) -> LeafBundle:
        return LeafBundle.from_bytes(await self.read(cid))

    async def _cat(self, cid: Cid, content_bytes_max: int) -> bytes:
        request = self._client.build_request(
            "POST", "/cat", params={"arg": str(cid), "length": str(content_bytes_max + 1)}
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as error:
            raise IpfsError(f"Kubo RPC cat: {error!r}") from error
        try:
            if response.status_code != httpx.codes.OK:
                await response.aread()
                raise IpfsError(f"Kubo RPC cat {cid}: {_error_text(response)}")
            chunks = []
            received = 0
            async for chunk in response.aiter_bytes():
                received += len(chunk)
                if received > content_bytes_max:
                    raise IpfsError(f"{cid} is larger than {content_bytes_max} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
        except httpx.HTTPError as error:
            raise IpfsError(f"Kubo RPC cat {cid}: {error!r}") from error
        finally:
            await response.aclose()

    # The RPC -------------------------------------------------------------------

    async def _call(self, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = await self._client.post(f"/{path}", **kwargs)
        except httpx.HTTPError as error:
            raise IpfsError(f"Kubo RPC {path}: {error!r}") from error
        if response.status_code != httpx.codes.OK:
            raise IpfsError(f"Kubo RPC {path}: {_error_text(response)}")
        if len(response.content) > RPC_ANSWER_BYTES_MAX:
            raise IpfsError(f"Kubo RPC {path}: answer over {RPC_ANSWER_BYTES_MAX} bytes")
        try:
            answer = json.loads(response.content)
        except ValueError as error:
            raise IpfsError(f"Kubo RPC {path}: answer is not JSON") from error
        if not isinstance(answer, dict):
            raise IpfsError(f"Kubo RPC {path}: answer is not a JSON object")
        return answer


def _text(answer: dict[str, Any], key: str) -> str:
    value = answer.get(key)
    if not isinstance(value, str):
        raise IpfsError(f"Kubo's answer has no {key}: {answer!r:.200}")
    try:
        Cid.parse(value)
    except InvalidCid as error:
        raise CidMismatch(f"Kubo answered {value!r:.200}, not a CID of this layout") from error
    return value


def _error_text(response: httpx.Response) -> str:
    # Kubo's errors are {"Message": ..., "Code": ..., "Type": "error"}.
    try:
        message = json.loads(response.content).get("Message")
    except (ValueError, AttributeError):
        message = None
    detail = message if isinstance(message, str) else response.text[:200]
    return f"HTTP {response.status_code}: {detail}"

"""Direct OpenTimestamps stamps on a real btcd in regtest, read back by the standard ``ots``."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from bitcoin.core import CBlock, lx

from anchoring.bitcoin import WALLET_FILE, BitcoinRpc, DirectStamper
from anchoring.timestamps import InvalidTimestamp, verify_timestamp
from ledger.config import Settings
from tests.support import btcd

pytestmark = pytest.mark.integration

btcd_node = btcd.btcd_node


@pytest.fixture
def rpc(btcd_node: Settings) -> Iterator[BitcoinRpc]:
    with BitcoinRpc.from_settings(btcd_node) as client:
        yield client


def new_digest() -> bytes:
    return hashlib.sha256(os.urandom(32)).digest()


class ShiftedHeaders:
    """The node's headers, one block off: every merkle root is the wrong one."""

    def __init__(self, rpc: BitcoinRpc) -> None:
        self.rpc = rpc

    def block_header(self, height: int) -> bytes | None:
        return self.rpc.block_header(height - 1)


def test_two_stamps_in_a_row_verify_against_the_node(
    btcd_node: Settings, rpc: BitcoinRpc, tmp_path: Path
) -> None:
    stamper = DirectStamper.from_settings(btcd_node, rpc)
    first_digest, second_digest = new_digest(), new_digest()
    first = stamper.stamp(first_digest)
    second = stamper.stamp(second_digest)

    assert second.height == first.height + 1
    assert first.txid != second.txid
    # The second stamp spends the first one's change: no output is spent twice.
    block = CBlock.deserialize(rpc.raw_block(second.block_hash))
    (spending,) = [tx for tx in block.vtx if tx.GetTxid() == lx(second.txid)]
    assert spending.vin[0].prevout.hash == lx(first.txid)
    assert spending.vin[0].prevout.n == 1

    for stamp, digest in ((first, first_digest), (second, second_digest)):
        verified = verify_timestamp(stamp.ots, digest, rpc)
        assert verified.height == stamp.height

        path = tmp_path / f"{digest.hex()}.ots"
        path.write_bytes(stamp.ots)
        info = subprocess.run(
            [str(Path(sys.executable).with_name("ots")), "--no-cache", "info", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        assert f"File sha256 hash: {digest.hex()}" in info
        assert f"verify BitcoinBlockHeaderAttestation({stamp.height})" in info
        assert f"# Transaction id {stamp.txid}" in info


def test_flipped_digest_and_wrong_header_fail(btcd_node: Settings, rpc: BitcoinRpc) -> None:
    digest = new_digest()
    stamp = DirectStamper.from_settings(btcd_node, rpc).stamp(digest)
    flipped = digest[:-1] + bytes([digest[-1] ^ 0x80])
    with pytest.raises(InvalidTimestamp, match="another digest"):
        verify_timestamp(stamp.ots, flipped, rpc)
    with pytest.raises(InvalidTimestamp, match="merkleroot"):
        verify_timestamp(stamp.ots, digest, ShiftedHeaders(rpc))


def test_wallet_recovers_after_a_crash_before_the_send(
    btcd_node: Settings, rpc: BitcoinRpc
) -> None:
    stamper = DirectStamper.from_settings(btcd_node, rpc)
    stamper.stamp(new_digest())
    wallet = btcd_node.keys_dir / WALLET_FILE
    record = json.loads(wallet.read_text())
    # A stamper that wrote its next output and died before sending: the node
    # never saw that transaction, so only the previous output is unspent.
    never_sent = {"txid": "ab" * 32, "vout": 1, "value_sat": 1_000_000}
    wallet.write_text(json.dumps({"outpoints": [never_sent, record["outpoints"][0]]}))
    tip = rpc.call("getblockcount")
    digest = new_digest()
    stamp = stamper.stamp(digest)
    assert stamp.height == tip + 1  # the previous output was spent: no new funding
    assert verify_timestamp(stamp.ots, digest, rpc).height == stamp.height
    assert json.loads(wallet.read_text())["outpoints"][0]["txid"] == stamp.txid


def test_wallet_funds_itself_again_when_its_output_is_unknown(
    btcd_node: Settings, rpc: BitcoinRpc
) -> None:
    wallet = btcd_node.keys_dir / WALLET_FILE
    wallet.unlink(missing_ok=True)
    tip = rpc.call("getblockcount")
    digest = new_digest()
    stamp = DirectStamper.from_settings(btcd_node, rpc).stamp(digest)
    assert stamp.height == tip + 101 + 1  # 101 blocks to mature a coinbase, then the stamp
    assert verify_timestamp(stamp.ots, digest, rpc).height == stamp.height

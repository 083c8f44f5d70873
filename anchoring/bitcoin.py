"""Direct Bitcoin stamping on a node we run: btcd in regtest.

The stamping wallet is one secp256k1 key (``ledger.infra.btcd``) and one
pay-to-public-key-hash address, which btcd pays for every block it mines.
A stamp is one transaction, built and signed here:

    input    the wallet's tracked unspent output
    output 0 OP_RETURN <32-byte digest>           (value 0)
    output 1 the change, back to the same address (input value - fee)

then ``sendrawtransaction``, one block mined, and the block turned into a
complete OpenTimestamps proof (``anchoring.timestamps.proof_from_block``).

The wallet follows its single unspent output in a small JSON file beside the
key: each stamp spends the previous stamp's change, so stamps never compete
for one output. The next output is written before the transaction is sent
(the previous one is kept as well), so a crash between the two never loses
the wallet: whichever of the two the node still reports unspent is used. If
neither is (btcd starts a new regtest chain at every start, or the file was
lost), the wallet mines 101 blocks and spends the first of their coinbases,
which is then mature. A file lock keeps two stampers on one state dir from
spending the same output.

Blocking calls; an asyncio caller runs ``stamp`` with ``asyncio.to_thread``.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
from bitcoin.core import (
    CBlock,
    CMutableTransaction,
    CMutableTxIn,
    CMutableTxOut,
    COutPoint,
    b2lx,
    lx,
)
from bitcoin.core.script import (
    OP_CHECKSIG,
    OP_DUP,
    OP_EQUALVERIFY,
    OP_HASH160,
    OP_RETURN,
    SIGHASH_ALL,
    CScript,
    SignatureHash,
)
from bitcoin.core.serialize import Hash160
from bitcoin.wallet import CKey

from anchoring.timestamps import DIGEST_BYTES, TimestampError, proof_from_block
from ledger.config import Settings
from ledger.infra.btcd import (
    btcd_rpc_headers,
    btcd_rpc_url,
    load_or_create_stamping_secret,
    regtest_address,
)

# A coinbase output is spendable 100 blocks after its own: mining 101 makes
# the first of them spendable in the next block.
COINBASE_MATURITY_BLOCKS: Final = 100
# Outputs below this are dust that nodes refuse to relay.
DUST_SAT: Final = 546
SAT_PER_BTC: Final = 100_000_000
WALLET_FILE = "bitcoin-stamping-wallet.json"
RPC_RESPONSE_BYTES_MAX: Final = 8_388_608  # one getblock answer for a regtest block


class BitcoinRpcError(TimestampError):
    """The node answered with an error, or did not answer."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


# btcd's error code for a height past the tip (bitcoind's RPC_INVALID_PARAMETER).
RPC_OUT_OF_RANGE_CODES: Final = frozenset({-1, -8})


class BitcoinRpc:
    """A blocking JSON-RPC 1.0 client for btcd (it answers bitcoind's calls too)."""

    def __init__(self, url: str, headers: dict[str, str], timeout_s: float) -> None:
        self._client = httpx.Client(headers=headers, timeout=timeout_s)
        self._url = url

    @classmethod
    def from_settings(cls, settings: Settings) -> BitcoinRpc:
        return cls(btcd_rpc_url(settings), btcd_rpc_headers(settings), settings.btcd_rpc_timeout_s)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> BitcoinRpc:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def call(self, method: str, *params: Any) -> Any:
        body = {"jsonrpc": "1.0", "id": method, "method": method, "params": list(params)}
        try:
            response = self._client.post(self._url, json=body)
        except httpx.HTTPError as error:
            raise BitcoinRpcError(f"{method}: the node did not answer: {error}") from error
        if len(response.content) > RPC_RESPONSE_BYTES_MAX:
            raise BitcoinRpcError(f"{method}: answer larger than {RPC_RESPONSE_BYTES_MAX} bytes")
        try:
            answer = response.json()
        except ValueError as error:
            raise BitcoinRpcError(
                f"{method}: HTTP {response.status_code}, not JSON-RPC: {response.text[:200]}"
            ) from error
        failure = answer.get("error") if isinstance(answer, dict) else "no JSON object"
        if failure:
            code = failure.get("code") if isinstance(failure, dict) else None
            message = failure.get("message") if isinstance(failure, dict) else failure
            raise BitcoinRpcError(f"{method}: {message}", code)
        return answer["result"]

    def generate(self, blocks: int) -> list[str]:
        hashes: list[str] = self.call("generate", blocks)
        if len(hashes) != blocks:
            raise BitcoinRpcError(f"generate {blocks} mined {len(hashes)} blocks")
        return hashes

    def raw_block(self, block_hash: str) -> bytes:
        return bytes.fromhex(self.call("getblock", block_hash, 0))

    def block_height(self, block_hash: str) -> int:
        height: int = self.call("getblockheader", block_hash, True)["height"]
        return height

    def block_header(self, height: int) -> bytes | None:
        """The header at ``height`` of the node's active chain; None past the tip."""
        try:
            block_hash = self.call("getblockhash", height)
        except BitcoinRpcError as error:
            if error.code in RPC_OUT_OF_RANGE_CODES:
                return None
            raise
        return bytes.fromhex(self.call("getblockheader", block_hash, False))

    def unspent_value_sat(self, txid: str, vout: int) -> int | None:
        """The value of an output still unspent (mempool included), else None."""
        found = self.call("gettxout", txid, vout, True)
        if found is None:
            return None
        return round(float(found["value"]) * SAT_PER_BTC)

    def send_raw_transaction(self, raw: bytes) -> str:
        txid: str = self.call("sendrawtransaction", raw.hex())
        return txid


# ---- transactions -----------------------------------------------------------


def op_return_script(digest: bytes) -> bytes:
    """OP_RETURN followed by one push of the 32-byte digest."""
    if len(digest) != DIGEST_BYTES:
        raise ValueError(f"a SHA-256 digest is {DIGEST_BYTES} bytes, not {len(digest)}")
    script = bytes(CScript([OP_RETURN, digest]))
    assert script == b"\x6a\x20" + digest
    return script


def p2pkh_script(public_key: bytes) -> bytes:
    return bytes(CScript([OP_DUP, OP_HASH160, Hash160(public_key), OP_EQUALVERIFY, OP_CHECKSIG]))


@dataclass(frozen=True, slots=True)
class Outpoint:
    """An output of ours: transaction id (as the node prints it), index, value."""

    txid: str
    vout: int
    value_sat: int

    def to_json(self) -> dict[str, Any]:
        return {"txid": self.txid, "vout": self.vout, "value_sat": self.value_sat}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> Outpoint:
        return cls(str(record["txid"]), int(record["vout"]), int(record["value_sat"]))


def build_stamp_transaction(
    secret: bytes, spend: Outpoint, digest: bytes, fee_sat: int
) -> tuple[bytes, Outpoint]:
    """The signed stamping transaction and its change output."""
    change_sat = spend.value_sat - fee_sat
    if change_sat < DUST_SAT:
        raise TimestampError(f"output {spend.txid}:{spend.vout} cannot pay a {fee_sat} sat fee")
    key = CKey(secret, compressed=True)
    public_key = bytes(key.pub)
    ours = CScript(p2pkh_script(public_key))
    tx = CMutableTransaction(
        [CMutableTxIn(COutPoint(lx(spend.txid), spend.vout))],
        [CMutableTxOut(0, CScript(op_return_script(digest))), CMutableTxOut(change_sat, ours)],
        nVersion=2,
    )
    sighash = SignatureHash(ours, tx, 0, SIGHASH_ALL)
    signature = key.sign(sighash) + bytes([SIGHASH_ALL])
    tx.vin[0].scriptSig = CScript([signature, public_key])
    raw: bytes = tx.serialize()
    txid: str = b2lx(tx.GetTxid())
    return raw, Outpoint(txid, 1, change_sat)


# ---- the stamper ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DirectStamp:
    ots: bytes
    txid: str
    block_hash: str
    height: int


class DirectStamper:
    """Stamps digests in OP_RETURN outputs of our own transactions, one block each."""

    def __init__(self, rpc: BitcoinRpc, secret: bytes, wallet_path: Path, fee_sat: int) -> None:
        self._rpc = rpc
        self._secret = secret
        self._wallet_path = wallet_path
        self._fee_sat = fee_sat
        self._public_key = bytes(CKey(secret, compressed=True).pub)
        self.address = regtest_address(self._public_key)

    @classmethod
    def from_settings(cls, settings: Settings, rpc: BitcoinRpc) -> DirectStamper:
        return cls(
            rpc,
            load_or_create_stamping_secret(settings),
            settings.keys_dir / WALLET_FILE,
            settings.btcd_stamp_fee_sat,
        )

    def stamp(self, digest: bytes) -> DirectStamp:
        """Commit ``digest`` in a new block; return its complete .ots proof."""
        with self._locked():
            spend = self._spendable()
            raw, change = build_stamp_transaction(self._secret, spend, digest, self._fee_sat)
            self._save(change, spend)  # before sending: see the module docstring
            txid = self._rpc.send_raw_transaction(raw)
            if txid != change.txid:
                raise TimestampError(f"the node reports txid {txid}, we built {change.txid}")
            (block_hash,) = self._rpc.generate(1)
            raw_block = self._rpc.raw_block(block_hash)
            if lx(txid) not in {tx.GetTxid() for tx in CBlock.deserialize(raw_block).vtx}:
                raise TimestampError(f"block {block_hash} does not include transaction {txid}")
            height = self._rpc.block_height(block_hash)
            ots = proof_from_block(digest, raw_block, height)
        return DirectStamp(ots, txid, block_hash, height)

    def _spendable(self) -> Outpoint:
        for candidate in self._load():
            value = self._rpc.unspent_value_sat(candidate.txid, candidate.vout)
            if value == candidate.value_sat and value >= self._fee_sat + DUST_SAT:
                return candidate
        return self._fund()

    def _fund(self) -> Outpoint:
        """Mine until a coinbase of ours is mature, and take it."""
        hashes = self._rpc.generate(COINBASE_MATURITY_BLOCKS + 1)
        coinbase = CBlock.deserialize(self._rpc.raw_block(hashes[0])).vtx[0]
        ours = p2pkh_script(self._public_key)
        for index, output in enumerate(coinbase.vout):
            if bytes(output.scriptPubKey) == ours:
                outpoint = Outpoint(b2lx(coinbase.GetTxid()), index, int(output.nValue))
                self._save(outpoint, None)
                return outpoint
        raise TimestampError(
            f"block {hashes[0]} does not pay {self.address}: is btcd's --miningaddr ours?"
        )

    def _load(self) -> list[Outpoint]:
        try:
            record = json.loads(self._wallet_path.read_text())
            return [Outpoint.from_json(item) for item in record["outpoints"]]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise TimestampError(f"cannot read {self._wallet_path}: {error}") from error

    def _save(self, current: Outpoint, previous: Outpoint | None) -> None:
        outpoints = [current] + ([previous] if previous is not None else [])
        text = json.dumps({"outpoints": [item.to_json() for item in outpoints]}) + "\n"
        self._wallet_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = self._wallet_path.with_suffix(".tmp")
        with temporary.open("w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(self._wallet_path)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self._wallet_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._wallet_path.with_suffix(".lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

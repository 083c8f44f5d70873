"""OpenTimestamps without a node: the stamping transaction, proofs built from a
block made here, verification against its header, and the calendar client
against a small local calendar that follows the calendar protocol."""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from bitcoin.core import (
    CBlock,
    CMutableTxIn,
    CMutableTxOut,
    COutPoint,
    CTransaction,
    lx,
)
from bitcoin.core.script import CScript
from bitcoin.core.scripteval import VerifyScript
from opentimestamps.bitcoin import make_timestamp_from_block
from opentimestamps.core.notary import PendingAttestation
from opentimestamps.core.op import OpAppend, OpSHA256
from opentimestamps.core.serialize import BytesSerializationContext
from opentimestamps.core.timestamp import Timestamp

from anchoring.bitcoin import (
    DUST_SAT,
    Outpoint,
    build_stamp_transaction,
    op_return_script,
    p2pkh_script,
)
from anchoring.timestamps import (
    CalendarClient,
    InvalidTimestamp,
    PendingUpgrades,
    TimestampError,
    is_complete,
    merge_proofs,
    parse_proof,
    proof_from_block,
    verify_timestamp,
)
from ledger.config import Settings
from ledger.errors import ConfigurationError
from ledger.infra.btcd import regtest_address, stamping_public_key
from ledger.infra.ports import free_port

SECRET = bytes(range(1, 33))
FUNDING = Outpoint("11" * 32, 0, 50 * 100_000_000)
BLOCK_TIME = 1_700_000_000


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def coinbase(height: int) -> CTransaction:
    return CTransaction(
        [CMutableTxIn(COutPoint(), CScript([height, b"payledger"]))],
        [CMutableTxOut(50 * 100_000_000, CScript(p2pkh_script(stamping_public_key(SECRET))))],
    )


def block_with(transactions: list[bytes], height: int, *, time: int = BLOCK_TIME) -> CBlock:
    vtx = [coinbase(height)] + [CTransaction.deserialize(raw) for raw in transactions]
    draft = CBlock(nBits=0x207FFFFF, nTime=time, vtx=vtx)
    return CBlock(
        nVersion=0x20000000,
        hashPrevBlock=b"\x00" * 32,
        hashMerkleRoot=draft.calc_merkle_root(),
        nTime=time,
        nBits=0x207FFFFF,
        nNonce=0,
        vtx=vtx,
    )


def header(block: CBlock) -> bytes:
    return bytes(block.get_header().serialize())


class Headers:
    """A header source over blocks made here."""

    def __init__(self, blocks: dict[int, CBlock]) -> None:
        self.headers = {height: header(block) for height, block in blocks.items()}

    def block_header(self, height: int) -> bytes | None:
        return self.headers.get(height)


def stamped_block(digest: bytes, height: int) -> tuple[bytes, CBlock]:
    raw, _ = build_stamp_transaction(SECRET, FUNDING, digest, 5_000)
    return raw, block_with([raw], height)


# ---- keys, scripts, transactions --------------------------------------------


def test_regtest_address_of_private_key_one() -> None:
    # The well-known testnet address of secret 1 with its compressed public key.
    public_key = stamping_public_key((1).to_bytes(32, "big"))
    assert public_key.hex() == "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
    assert regtest_address(public_key) == "mrCDrCybB6J1vRfbwM5hemdJz73FwDBC8r"


def test_op_return_script_pushes_the_digest() -> None:
    digest = sha256(b"checkpoint")
    assert op_return_script(digest) == bytes([0x6A, 0x20]) + digest
    with pytest.raises(ValueError, match="32 bytes"):
        op_return_script(digest[:31])


def test_stamp_transaction_is_signed_and_pays_change_back() -> None:
    digest = sha256(b"checkpoint")
    raw, change = build_stamp_transaction(SECRET, FUNDING, digest, 5_000)
    tx = CTransaction.deserialize(raw)
    assert tx.vin[0].prevout == COutPoint(lx(FUNDING.txid), FUNDING.vout)
    assert [out.nValue for out in tx.vout] == [0, FUNDING.value_sat - 5_000]
    assert bytes(tx.vout[0].scriptPubKey) == op_return_script(digest)
    ours = CScript(p2pkh_script(stamping_public_key(SECRET)))
    assert tx.vout[1].scriptPubKey == ours
    assert change == Outpoint(change.txid, 1, FUNDING.value_sat - 5_000)
    assert lx(change.txid) == tx.GetTxid()
    VerifyScript(tx.vin[0].scriptSig, ours, tx, 0)  # raises if the signature is wrong


def test_stamp_transaction_refuses_an_output_too_small_for_the_fee() -> None:
    small = Outpoint("22" * 32, 0, 5_000 + DUST_SAT - 1)
    with pytest.raises(TimestampError, match="cannot pay"):
        build_stamp_transaction(SECRET, small, sha256(b"x"), 5_000)


# ---- proofs -----------------------------------------------------------------


def test_proof_round_trip_and_verification() -> None:
    digest = sha256(b"checkpoint 1")
    _, block = stamped_block(digest, 102)
    ots = proof_from_block(digest, block.serialize(), 102)
    assert ots.startswith(b"\x00OpenTimestamps\x00\x00Proof\x00")
    timestamp = parse_proof(ots, digest)
    assert timestamp.msg == digest
    assert is_complete(ots, digest)
    verified = verify_timestamp(ots, digest, Headers({102: block}))
    assert verified.height == 102
    assert int(verified.block_time.timestamp()) == BLOCK_TIME


def test_proof_for_another_digest_fails() -> None:
    digest = sha256(b"checkpoint 1")
    _, block = stamped_block(digest, 102)
    ots = proof_from_block(digest, block.serialize(), 102)
    flipped = bytes([digest[0] ^ 1]) + digest[1:]
    with pytest.raises(InvalidTimestamp, match="another digest"):
        verify_timestamp(ots, flipped, Headers({102: block}))


def test_header_that_does_not_match_fails() -> None:
    digest = sha256(b"checkpoint 1")
    _, block = stamped_block(digest, 102)
    ots = proof_from_block(digest, block.serialize(), 102)
    _, other = stamped_block(sha256(b"another checkpoint"), 102)
    with pytest.raises(InvalidTimestamp, match="merkleroot"):
        verify_timestamp(ots, digest, Headers({102: other}))
    with pytest.raises(InvalidTimestamp, match="no block at height 102"):
        verify_timestamp(ots, digest, Headers({}))


def test_every_bitcoin_attestation_must_hold() -> None:
    digest = sha256(b"checkpoint 1")
    _, first = stamped_block(digest, 102)
    _, second = stamped_block(digest, 103)
    both = merge_proofs(
        proof_from_block(digest, first.serialize(), 102),
        proof_from_block(digest, second.serialize(), 103),
        digest,
    )
    assert verify_timestamp(both, digest, Headers({102: first, 103: second})).height == 102
    _, unrelated = stamped_block(sha256(b"unrelated"), 103)
    with pytest.raises(InvalidTimestamp, match="block 103"):
        verify_timestamp(both, digest, Headers({102: first, 103: unrelated}))


def test_block_without_the_digest_gives_no_proof() -> None:
    _, block = stamped_block(sha256(b"checkpoint 1"), 102)
    with pytest.raises(TimestampError, match="no transaction"):
        proof_from_block(sha256(b"checkpoint 2"), block.serialize(), 102)


@pytest.mark.parametrize("cut", [1, 10, 40, 60])
def test_truncated_or_garbage_proofs_fail(cut: int) -> None:
    digest = sha256(b"checkpoint 1")
    _, block = stamped_block(digest, 102)
    ots = proof_from_block(digest, block.serialize(), 102)
    with pytest.raises(InvalidTimestamp):
        verify_timestamp(ots[:-cut], digest, Headers({102: block}))
    with pytest.raises(InvalidTimestamp):
        verify_timestamp(ots + b"\x00", digest, Headers({102: block}))
    with pytest.raises(InvalidTimestamp, match="not an OpenTimestamps proof"):
        verify_timestamp(b"\x01" * cut, digest, Headers({102: block}))


# ---- calendars --------------------------------------------------------------


class FakeCalendar:
    """A calendar server: pending answers to POST /digest; once ``confirm()``ed,
    GET /timestamp/<commitment> answers the path to a block made here."""

    HEIGHT = 500

    def __init__(self) -> None:
        self.commitments: list[bytes] = []
        self.requests: list[str] = []
        self.block: CBlock | None = None
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def confirm(self) -> None:
        """Commit every commitment so far in one 'block', as a calendar does."""
        transactions = [
            build_stamp_transaction(SECRET, FUNDING, c, 5_000)[0] for c in self.commitments
        ]
        self.block = block_with(transactions, self.HEIGHT, time=BLOCK_TIME + 600)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        calendar = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: object) -> None:
                pass

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                calendar.requests.append(f"POST {self.path}")
                submitted = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path != "/digest" or len(submitted) > 64:
                    self._answer(400, b"bad request")
                    return
                timestamp = Timestamp(submitted)
                leaf = timestamp.ops.add(OpAppend(b"calendar-nonce")).ops.add(OpSHA256())
                leaf.attestations.add(PendingAttestation(calendar.url))
                calendar.commitments.append(leaf.msg)
                self._answer(200, serialize(timestamp))

            def do_GET(self) -> None:
                calendar.requests.append(f"GET {self.path}")
                match = re.fullmatch(r"/timestamp/([0-9a-f]{64})", self.path)
                commitment = bytes.fromhex(match.group(1)) if match else b""
                if calendar.block is None or commitment not in calendar.commitments:
                    self._answer(404, b"Pending confirmation in Bitcoin blockchain")
                    return
                timestamp = make_timestamp_from_block(commitment, calendar.block, calendar.HEIGHT)
                self._answer(200, serialize(timestamp))

        return Handler

    def __enter__(self) -> FakeCalendar:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def serialize(timestamp: Timestamp) -> bytes:
    ctx = BytesSerializationContext()
    timestamp.serialize(ctx)
    return bytes(ctx.getbytes())


@pytest.fixture
def calendar() -> Iterator[FakeCalendar]:
    with FakeCalendar() as fake:
        yield fake


def pending_uris(ots: bytes, digest: bytes) -> list[str]:
    return [
        attestation.uri
        for _, attestation in parse_proof(ots, digest).all_attestations()
        if isinstance(attestation, PendingAttestation)
    ]


def test_calendar_submit_then_upgrade(calendar: FakeCalendar) -> None:
    client = CalendarClient([calendar.url], quorum=1, timeout_s=5)
    digest = sha256(b"checkpoint 7")
    ots = client.submit(digest)
    assert pending_uris(ots, digest) == [calendar.url]
    # The calendar saw a nonced commitment, never the digest itself.
    assert digest not in calendar.commitments
    assert not is_complete(ots, digest)
    with pytest.raises(InvalidTimestamp, match="pending only"):
        verify_timestamp(ots, digest, Headers({}))

    not_yet = client.upgrade(ots, digest)
    assert (not_yet.changed, not_yet.complete, not_yet.ots) == (False, False, ots)

    calendar.confirm()
    done = client.upgrade(ots, digest)
    assert done.changed and done.complete
    assert calendar.block is not None
    verified = verify_timestamp(done.ots, digest, Headers({FakeCalendar.HEIGHT: calendar.block}))
    assert verified.height == FakeCalendar.HEIGHT
    assert int(verified.block_time.timestamp()) == BLOCK_TIME + 600


def test_upgrade_contacts_only_configured_calendars(calendar: FakeCalendar) -> None:
    digest = sha256(b"checkpoint 8")
    ots = CalendarClient([calendar.url], quorum=1, timeout_s=5).submit(digest)
    calendar.confirm()
    calendar.requests.clear()
    with FakeCalendar() as other:
        result = CalendarClient([other.url], quorum=1, timeout_s=5).upgrade(ots, digest)
    assert (result.changed, result.complete) == (False, False)
    assert calendar.requests == []


def test_quorum_of_calendars(calendar: FakeCalendar) -> None:
    digest = sha256(b"checkpoint 9")
    unreachable = f"http://127.0.0.1:{free_port()}"
    ots = CalendarClient([calendar.url, unreachable], quorum=1, timeout_s=5).submit(digest)
    assert pending_uris(ots, digest) == [calendar.url]
    with pytest.raises(TimestampError, match="1 of 2 calendars accepted the digest, 2 needed"):
        CalendarClient([calendar.url, unreachable], quorum=2, timeout_s=5).submit(digest)


def test_calendar_configuration_is_checked() -> None:
    with pytest.raises(ConfigurationError):
        CalendarClient([], quorum=1, timeout_s=5)
    with pytest.raises(ConfigurationError):
        CalendarClient(["http://127.0.0.1:1"], quorum=2, timeout_s=5)
    with pytest.raises(ValueError, match="ots_calendar_quorum"):
        Settings(ots_calendar_urls=["https://a.example"], ots_calendar_quorum=2)
    with pytest.raises(ValueError, match="ots_calendar_urls"):
        Settings(ots_calendar_urls=["https://a.example/?q=1"])
    assert Settings().ots_calendar_urls == []  # off by default: no internet needed


def test_pending_upgrades_follow_their_schedule(calendar: FakeCalendar) -> None:
    now = [1_000.0]
    upgrades = PendingUpgrades(
        CalendarClient([calendar.url], quorum=1, timeout_s=5), interval_s=60, clock=lambda: now[0]
    )
    digest = sha256(b"checkpoint 10")
    upgrades.add(
        "checkpoint-10",
        digest,
        CalendarClient([calendar.url], quorum=1, timeout_s=5).submit(digest),
    )
    calendar.requests.clear()

    now[0] += 59
    assert upgrades.run_due() == {}
    assert calendar.requests == []  # not due yet: the calendar is not asked

    now[0] += 1
    assert upgrades.run_due() == {}  # asked, still pending
    assert len(calendar.requests) == 1
    assert upgrades.pending() == ["checkpoint-10"]

    calendar.confirm()
    now[0] += 30
    assert upgrades.run_due() == {}  # asked again only one interval after the last try
    now[0] += 30
    changed = upgrades.run_due()
    assert list(changed) == ["checkpoint-10"] and changed["checkpoint-10"].complete
    assert upgrades.pending() == []
    assert calendar.block is not None
    verify_timestamp(
        changed["checkpoint-10"].ots, digest, Headers({FakeCalendar.HEIGHT: calendar.block})
    )

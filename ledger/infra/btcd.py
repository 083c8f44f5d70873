"""btcd in regtest: the local Bitcoin node that the direct OpenTimestamps mode stamps on.

btcd is built once with ``go install`` at the pinned ``btcd_version`` into
``settings.cache_dir / "go" / "bin"`` and found again by a version marker,
like stripe-mock (``ledger.infra.mocks``). It runs as an ordinary
``ServerPart``: a daemon with its PID file and log in the state dir, its chain
in ``state_dir / "btcd"``, JSON-RPC without TLS on the loopback address only,
no peer-to-peer listener (a regtest chain of our own needs no peers), and
``--miningaddr`` set to the stamping wallet's regtest address, so every block
``generate`` mines pays the anchoring worker.

btcd deletes its regtest chain at every start, by design: a restarted node
is a new chain, and proofs stamped on the old one no longer verify against
it. That suits tests and development; proofs meant to last come from the
public calendars (Bitcoin mainnet).

The stamping key lives here, not in ``anchoring``, because btcd needs its
address before it starts; ``anchoring.bitcoin`` signs with the same key.
RPC credentials reach btcd through its configuration file (mode 0600), never
its arguments, which any local user can read in ``ps``.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import urllib.request
from pathlib import Path

from bitcoin.base58 import CBase58Data
from bitcoin.core.serialize import Hash160
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ledger.config import Settings
from ledger.errors import ConfigurationError
from ledger.infra.mocks import (
    MockPart,
    MockStack,
    _hostport,
    go_bin_dir,
    go_install,
    go_installed,
)
from ledger.infra.part import ServerPart
from ledger.infra.ports import PortUse
from ledger.limits import MOCK_PROBE_TIMEOUT_S
from ledger.signing import write_secret

BTCD_MODULE = "github.com/btcsuite/btcd"
STAMPING_KEY_FILE = "bitcoin-stamping.key"
STAMPING_SECRET_BYTES = 32
# Base58Check version byte of a pay-to-public-key-hash address on testnet and regtest.
REGTEST_P2PKH_VERSION = 0x6F
_SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
# The regtest chain is small: btcd's default UTXO cache (250 MiB) would be
# most of its memory for nothing.
_UTXO_CACHE_MB = 16

_install_lock = threading.Lock()


# ---- the stamping key -------------------------------------------------------


def stamping_key_path(settings: Settings) -> Path:
    return settings.keys_dir / STAMPING_KEY_FILE


def load_or_create_stamping_secret(settings: Settings) -> bytes:
    """The 32-byte secp256k1 secret of the stamping wallet, made on first use."""
    path = stamping_key_path(settings)
    if path.exists():
        try:
            secret = path.read_bytes()
        except OSError as error:
            raise ConfigurationError(f"cannot read stamping key {path}: {error}") from error
        if len(secret) != STAMPING_SECRET_BYTES:
            raise ConfigurationError(f"stamping key {path} is not {STAMPING_SECRET_BYTES} bytes")
        return secret
    while True:
        secret = os.urandom(STAMPING_SECRET_BYTES)
        # Zero and values at or above the group order are not private keys.
        if 0 < int.from_bytes(secret, "big") < _SECP256K1_ORDER:
            break
    write_secret(path, secret)
    return secret


def stamping_public_key(secret: bytes) -> bytes:
    """The compressed SEC1 public key (33 bytes) of a stamping secret."""
    private = ec.derive_private_key(int.from_bytes(secret, "big"), ec.SECP256K1())
    return private.public_key().public_bytes(Encoding.X962, PublicFormat.CompressedPoint)


def regtest_address(public_key: bytes) -> str:
    """The regtest pay-to-public-key-hash address of a compressed public key."""
    assert len(public_key) == 33, "a compressed SEC1 public key"
    return str(CBase58Data.from_bytes(Hash160(public_key), REGTEST_P2PKH_VERSION))


def mining_address(settings: Settings) -> str:
    return regtest_address(stamping_public_key(load_or_create_stamping_secret(settings)))


# ---- go install -------------------------------------------------------------


def btcd_binary(settings: Settings) -> Path:
    return go_bin_dir(settings) / "btcd"


def btcd_installed(settings: Settings) -> bool:
    return go_installed(settings, "btcd", BTCD_MODULE, settings.btcd_version)


def ensure_btcd(settings: Settings) -> Path:
    """Build btcd at the pinned tag into the cache, unless it is there already."""
    return go_install(
        settings,
        "btcd",
        BTCD_MODULE,
        settings.btcd_version,
        go_needed="Go 1.23 or newer (btcd's go.mod asks for it)",
    )


# ---- JSON-RPC probe ---------------------------------------------------------


def btcd_rpc_url(settings: Settings) -> str:
    return f"http://{_hostport(settings.btcd_host, settings.btcd_rpc_port)}/"


def btcd_rpc_headers(settings: Settings) -> dict[str, str]:
    credentials = f"{settings.btcd_rpc_user}:{settings.btcd_rpc_password.get_secret_value()}"
    return {
        "Authorization": "Basic " + base64.b64encode(credentials.encode()).decode(),
        "Content-Type": "application/json",
    }


def _block_count(settings: Settings) -> int | None:
    """``getblockcount`` with a short timeout; None if nothing (or not btcd) answered."""
    body = json.dumps({"jsonrpc": "1.0", "id": 0, "method": "getblockcount", "params": []})
    request = urllib.request.Request(  # noqa: S310 - an http URL built here
        btcd_rpc_url(settings), data=body.encode(), headers=btcd_rpc_headers(settings)
    )
    try:
        with urllib.request.urlopen(request, timeout=MOCK_PROBE_TIMEOUT_S) as response:  # noqa: S310
            answer = json.loads(response.read(65_536))
    except (OSError, ValueError):
        return None
    result = answer.get("result") if isinstance(answer, dict) else None
    return result if isinstance(result, int) and answer.get("error") is None else None


# ---- the part ---------------------------------------------------------------


class BtcdPart(MockPart):
    name = "btcd"

    @property
    def data_dir(self) -> Path:
        return self.settings.state_dir / "btcd"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "btcd.conf"

    @property
    def _rpc_listen(self) -> str:
        return _hostport(self.settings.btcd_host, self.settings.btcd_rpc_port)

    def ports(self) -> list[PortUse]:
        return [PortUse(self.settings.btcd_host, self.settings.btcd_rpc_port, "btcd_rpc_port")]

    def prepare(self) -> None:
        ensure_btcd(self.settings)
        mining_address(self.settings)  # makes the stamping key before btcd needs its address
        text = (
            "[Application Options]\n"
            f"rpcuser={self.settings.btcd_rpc_user}\n"
            f"rpcpass={self.settings.btcd_rpc_password.get_secret_value()}\n"
        )
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_secret(self.config_path, text.encode())

    def command(self) -> list[str]:
        return [
            str(btcd_binary(self.settings)),
            # First, so the signature below finds this node by its RPC address.
            f"--rpclisten={self._rpc_listen}",
            f"--configfile={self.config_path}",
            "--regtest",
            f"--datadir={self.data_dir / 'data'}",
            f"--logdir={self.data_dir / 'logs'}",
            "--nolisten",
            "--nodnsseed",
            # Allowed only because the RPC server listens on the loopback address.
            "--notls",
            f"--miningaddr={mining_address(self.settings)}",
            f"--utxocachemaxsize={_UTXO_CACHE_MB}",
            "--nocfilters",
        ]

    def _signature(self) -> str:
        return f"btcd --rpclisten={self._rpc_listen}"

    def is_ready(self) -> bool:
        return _block_count(self.settings) is not None

    def endpoints(self) -> dict[str, str]:
        return {
            "rpc": btcd_rpc_url(self.settings),
            "network": "regtest",
            "version": self.settings.btcd_version,
            "log": str(self.log_path),
        }


def btcd_parts(settings: Settings) -> list[ServerPart]:
    return [BtcdPart(settings)]


class BtcdStack(MockStack):
    """btcd of one state dir as a background daemon; ``up``/``down``/``status`` as for the mocks."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.parts = btcd_parts(settings)

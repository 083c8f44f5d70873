"""Root key, endorsements of event-signing keys, and the key ring verifiers use.

Trust runs event -> event-signing key -> endorsement -> root key. The root is
hybrid: an Ed25519 key (in a file or a PKCS#11 token) and an ML-DSA-65 key
(FIPS 204, pyca/cryptography; kept in a file because SoftHSM2 and most HSMs
in service do not offer ML-DSA yet). An endorsement is valid only when both
root signatures verify, so forging one needs both schemes broken.

The root key id is a fingerprint of both root public keys; it is what an
auditor pins. Endorsement signatures cover a fixed, length-prefixed byte
string rather than an Avro encoding, so they stay verifiable whatever the
schemas become.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa

from ledger.envelope import KeyEndorsement
from ledger.errors import InvalidEnvelope, KeyError_, Reason
from ledger.signing import Signer, key_id_for, verify_ed25519

ENDORSEMENT_CONTEXT = b"payledger/endorsement/v1\x00"
EVENT_SIGNING = "event-signing"
MLDSA65_PUBLIC_KEY_BYTES = 1952


def root_key_id(ed25519_public_key: bytes, mldsa65_public_key: bytes) -> str:
    digest = hashlib.sha256(b"payledger/root/v1\x00" + ed25519_public_key + mldsa65_public_key)
    return "root-" + digest.hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class TrustedRoot:
    """The public half of a root key: what an auditor pins."""

    key_id: str
    ed25519_public_key: bytes
    mldsa65_public_key: bytes

    @classmethod
    def of(cls, ed25519_public_key: bytes, mldsa65_public_key: bytes) -> TrustedRoot:
        return cls(
            root_key_id(ed25519_public_key, mldsa65_public_key),
            ed25519_public_key,
            mldsa65_public_key,
        )


class RootKey:
    """The private root: an Ed25519 signer plus an ML-DSA-65 private key."""

    def __init__(self, ed25519: Signer, mldsa65: mldsa.MLDSA65PrivateKey) -> None:
        self._ed25519 = ed25519
        self._mldsa65 = mldsa65
        self.trusted = TrustedRoot.of(ed25519.public_key, mldsa65.public_key().public_bytes_raw())

    def endorse(
        self, key: Signer, not_before: datetime, lifetime: timedelta, purpose: str = EVENT_SIGNING
    ) -> KeyEndorsement:
        unsigned = KeyEndorsement(
            key_id=key.key_id,
            algorithm="ed25519",
            public_key=key.public_key,
            purpose=purpose,
            not_before=not_before,
            not_after=not_before + lifetime,
            root_key_id=self.trusted.key_id,
            root_ed25519_public_key=self.trusted.ed25519_public_key,
            root_mldsa65_public_key=self.trusted.mldsa65_public_key,
        )
        message = endorsement_message(unsigned)
        return replace(
            unsigned,
            root_ed25519_signature=self._ed25519.sign(message),
            root_mldsa65_signature=self._mldsa65.sign(message),
        )


def _micros(moment: datetime) -> int:
    delta = moment - datetime(1970, 1, 1, tzinfo=moment.tzinfo)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def endorsement_message(endorsement: KeyEndorsement) -> bytes:
    """The bytes both root signatures cover: every field but the signatures, length-prefixed."""
    parts = [
        endorsement.key_id.encode(),
        endorsement.algorithm.encode(),
        endorsement.public_key,
        endorsement.purpose.encode(),
        struct.pack(">q", _micros(endorsement.not_before)),
        struct.pack(">q", _micros(endorsement.not_after)),
        endorsement.root_key_id.encode(),
        endorsement.root_ed25519_public_key,
        endorsement.root_mldsa65_public_key,
    ]
    return ENDORSEMENT_CONTEXT + b"".join(struct.pack(">I", len(part)) + part for part in parts)


def verify_endorsement(endorsement: KeyEndorsement, root: TrustedRoot) -> None:
    """Return nothing or raise ``InvalidEnvelope(BAD_ENDORSEMENT)``."""
    fail = Reason.BAD_ENDORSEMENT
    if endorsement.root_key_id != root.key_id:
        raise InvalidEnvelope(fail, f"endorsed by {endorsement.root_key_id}, not {root.key_id}")
    if (
        endorsement.root_ed25519_public_key != root.ed25519_public_key
        or endorsement.root_mldsa65_public_key != root.mldsa65_public_key
    ):
        raise InvalidEnvelope(fail, "root public keys do not match the trusted root")
    if (
        endorsement.algorithm != "ed25519"
        or key_id_for(endorsement.public_key) != endorsement.key_id
    ):
        raise InvalidEnvelope(fail, "key id does not match the endorsed public key")
    if endorsement.not_after <= endorsement.not_before:
        raise InvalidEnvelope(fail, "empty validity window")
    message = endorsement_message(endorsement)
    try:
        verify_ed25519(root.ed25519_public_key, message, endorsement.root_ed25519_signature)
    except InvalidEnvelope as error:
        raise InvalidEnvelope(fail, "Ed25519 root signature") from error
    try:
        public = mldsa.MLDSA65PublicKey.from_public_bytes(root.mldsa65_public_key)
        public.verify(endorsement.root_mldsa65_signature, message)
    except (InvalidSignature, ValueError) as error:
        raise InvalidEnvelope(fail, "ML-DSA-65 root signature") from error


class KeyRing:
    """Endorsed event-signing keys, each admitted only after its endorsement verifies."""

    def __init__(self, roots: list[TrustedRoot]) -> None:
        if not roots:
            raise KeyError_("a key ring needs at least one trusted root")
        self._roots = {root.key_id: root for root in roots}
        self._endorsements: dict[str, KeyEndorsement] = {}

    @property
    def roots(self) -> list[TrustedRoot]:
        return list(self._roots.values())

    def add(self, endorsement: KeyEndorsement) -> None:
        root = self._roots.get(endorsement.root_key_id)
        if root is None:
            raise InvalidEnvelope(
                Reason.BAD_ENDORSEMENT, f"untrusted root {endorsement.root_key_id}"
            )
        verify_endorsement(endorsement, root)
        self._endorsements[endorsement.key_id] = endorsement

    def endorsement(self, key_id: str) -> KeyEndorsement:
        try:
            return self._endorsements[key_id]
        except KeyError:
            raise InvalidEnvelope(Reason.UNKNOWN_KEY, key_id) from None

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._endorsements

    def __len__(self) -> int:
        return len(self._endorsements)

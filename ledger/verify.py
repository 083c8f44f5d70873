"""Verification of envelopes: decode, then event -> signing key -> endorsement -> root.

``Verifier.verify`` returns nothing or raises ``InvalidEnvelope``; its
``reason`` says which check failed.
"""

from __future__ import annotations

from ledger.codec import Decoded, EnvelopeCodec
from ledger.envelope import Envelope, KeyEndorsement
from ledger.errors import InvalidEnvelope, Reason
from ledger.keys import KeyRing
from ledger.signing import verify_ed25519


class Verifier:
    def __init__(self, codec: EnvelopeCodec, keyring: KeyRing) -> None:
        self.codec = codec
        self.keyring = keyring

    def verify(self, decoded: Decoded) -> None:
        """Check the signature chain of a decoded envelope; return nothing or raise."""
        envelope = decoded.envelope
        endorsement = self.keyring.endorsement(envelope.signing_key_id)
        # A key is valid for events recorded inside its window, whenever they
        # are checked: an auditor years later must still accept them.
        if not endorsement.not_before <= envelope.recorded_at <= endorsement.not_after:
            raise InvalidEnvelope(
                Reason.EXPIRED_KEY,
                f"{envelope.signing_key_id} valid {endorsement.not_before.isoformat()} to "
                f"{endorsement.not_after.isoformat()}, event recorded "
                f"{envelope.recorded_at.isoformat()}",
            )
        verify_ed25519(endorsement.public_key, decoded.signed_message, envelope.signature)

    def open(self, wire: bytes) -> Envelope:
        """Decode and verify wire bytes; the envelope is returned only when it verifies."""
        decoded = self.codec.decode(wire)
        self.verify(decoded)
        return decoded.envelope

    def admit_endorsement(self, wire: bytes) -> KeyEndorsement:
        """Verify a keys-topic record and add the key it endorses to the ring.

        The record must carry a ``KeyEndorsement`` signed by the root, inside an
        envelope signed by the endorsed key itself (proof that its holder has it).
        """
        decoded = self.codec.decode(wire)
        endorsement = decoded.envelope.payload
        if not isinstance(endorsement, KeyEndorsement):
            raise InvalidEnvelope(Reason.MALFORMED, "keys topic record is not a key endorsement")
        if decoded.envelope.signing_key_id != endorsement.key_id:
            raise InvalidEnvelope(Reason.BAD_ENDORSEMENT, "endorsement not signed by its own key")
        verify_ed25519(endorsement.public_key, decoded.signed_message, decoded.envelope.signature)
        self.keyring.add(endorsement)
        return endorsement

"""The keys-topic record that carries an endorsement.

It is deterministic: the same endorsement always gives the same event id,
times and (Ed25519 being deterministic) signature, so a process that is not
sure whether it already published an endorsement can publish it again and the
compacted keys topic keeps one identical record.
"""

from __future__ import annotations

import uuid

from ledger.envelope import Envelope, KeyEndorsement

ENDORSEMENT_EVENT_TYPE = "key.endorsed"
_NAMESPACE = uuid.UUID("5b0f6c1e-7a35-4c8e-9d1b-6f0c2a9e4d11")


def endorsement_envelope(endorsement: KeyEndorsement, producer: str) -> Envelope:
    """The unsigned envelope for the keys topic; sign it with the endorsed key itself."""
    return Envelope(
        event_id=str(uuid.uuid5(_NAMESPACE, endorsement.key_id)),
        event_type=ENDORSEMENT_EVENT_TYPE,
        aggregate_id=endorsement.key_id[:64],
        sequence=1,
        occurred_at=endorsement.not_before,
        recorded_at=endorsement.not_before,
        producer=producer,
        correlation_id=endorsement.key_id,
        payload=endorsement,
    )

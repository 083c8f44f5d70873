"""The errors of the anchoring core, under the one ``LedgerError`` hierarchy.

    LedgerError                  (ledger.errors)
    └── AnchoringError           anything the anchoring core raises on purpose
        ├── TreeError            a request the Merkle log cannot serve: an index or size
        │                        out of range, a store that is out of step with the tree
        ├── InvalidProof         an inclusion or consistency proof does not verify
        └── InvalidNote          a signed note or checkpoint is malformed or does not verify

Verifiers raise exactly one type each (``InvalidProof`` or ``InvalidNote``):
a caller that must refuse bad input catches one type, whatever the reason.
The message says why, for people; no caller should parse it.
"""

from __future__ import annotations

from ledger.errors import LedgerError


class AnchoringError(LedgerError):
    """Base class of every error the anchoring core raises on purpose."""


class TreeError(AnchoringError):
    pass


class InvalidProof(AnchoringError):
    pass


class InvalidNote(AnchoringError):
    pass

"""Which server parts make up the stack, in start order (stopped in reverse).

Kafka starts first because it takes longest to become ready; Postgres is
initialised and started while the broker boots.
"""

from __future__ import annotations

from ledger.config import Settings
from ledger.infra.kafka import KafkaPart
from ledger.infra.part import ServerPart
from ledger.infra.postgres import PostgresPart


def server_parts(settings: Settings) -> list[ServerPart]:
    return [KafkaPart(settings), PostgresPart(settings)]

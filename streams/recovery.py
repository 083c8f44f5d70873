"""Table recovery that seeks the source partitions before it lets them be read.

After a rebalance Faust restores the tables from their changelogs, then
(``Recovery.on_recovery_completed``) resumes the source partitions and only
then seeks them to their committed offsets. The consumer runs in a thread of
its own and its flow is already on, so in that window it fetches records
from wherever the partitions stood; the streams drop them (flow control is
still off) while the consumer's read offsets move past them. What happens
next depends on the partition:

- with a committed offset, the seek brings the fetch position back, but a
  fetch batch already in hand goes on moving the read offset forward, and
  the re-read records then fall below it and are dropped as already seen:
  one record lost, its offset committed later with the ones after it (seen
  as a CREATE with no event after a restart, about 1 run in 5 of the
  SIGKILL test);
- without one (a partition this group never committed on), the seek does
  nothing, and the dropped records are never read again: the worker sits
  Ready with a backlog it will not touch.

Here the seek comes first, while the source partitions are still paused, and
they are resumed once the streams accept records again. Everything else is
Faust's own sequence.

The changelog highwaters recovery reads up to are asked of the broker
(ListOffsets; read_committed, so the last stable offset). Faust takes them
from the consumer's last fetch response, which a partition just assigned has
not had yet: -1, "nothing to restore", and on a rebalance between two
workers a ``ConsistencyError`` (the table's offset above -1) that crashed the
worker.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any, cast

from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery
from faust.types import TP, ConsumerT


class SeekFirstRecovery(Recovery):
    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        """Call when active table recovery is completed (Faust's, with the seek first)."""
        app: Any = self.app
        consumer = app.consumer
        self.log.info("Restore complete!")
        await app.on_rebalance_complete.send()
        self._set_recovery_ended()
        callbacks = [
            asyncio.ensure_future(
                table.on_recovery_completed(
                    self.actives_for_table[table], self.standbys_for_table[table]
                )
            )
            for table in self.tables.values()
        ]
        if callbacks:
            await asyncio.wait(callbacks)
        assignment = consumer.assignment()
        if app.consumer_generation_id != generation_id:
            self.log.warning(
                f"Recovery rebalancing again app id {app.consumer_generation_id} "
                f"param {generation_id}"
            )
            return
        sources = {tp for tp in assignment if not self._is_changelog_tp(tp)}
        if assignment:
            self.log.info("Seek stream partitions to committed offsets.")
            await self._wait(consumer.perform_seek(), timeout=app.conf.broker_request_timeout)
            if app.consumer_generation_id != generation_id:
                self.log.warning("Recovery rebalancing again while seeking")
                return
        self.completed.set()
        app.flow_control.resume()
        consumer.resume_flow()
        consumer.resume_partitions(sources)
        await app._fetcher.maybe_start()
        self.tables.on_actives_ready()
        if not app.assignor.assigned_standbys():
            self.tables.on_standbys_ready()
        app.on_rebalance_end()
        self.log.info("Worker ready")

    async def _build_highwaters(
        self, consumer: ConsumerT, tps: set[TP], destination: Counter[TP], title: str
    ) -> None:
        """Faust's, with the offsets asked of the broker (see the module docstring)."""
        ends = await end_offsets(consumer, tps)
        # Faust's convention: the offset of the last record, -1 when empty.
        highwaters = {tp: -1 if (end := ends.get(tp)) is None else end - 1 for tp in tps}
        self.log.info(
            "Highwater for %s changelog partitions:\n%s",
            title,
            self._highwater_logtable(highwaters, title=title),
        )
        destination.clear()
        destination.update(highwaters)


async def end_offsets(consumer: ConsumerT, tps: set[TP]) -> dict[TP, int | None]:
    """Each partition's end offset by a ListOffsets request, in the consumer's isolation level."""
    if not tps:
        return {}
    thread: Any = cast(Any, consumer)._thread
    partitions = sorted(tps)
    found = await thread.call_thread(thread._ensure_consumer().end_offsets, partitions)
    return {tp: found.get(tp) for tp in partitions}


class SeekFirstTableManager(TableManager):
    """Faust's table manager, with ``SeekFirstRecovery``: pass as ``TableManager=``."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = SeekFirstRecovery(
                self.app, cast(Any, self), beacon=self.beacon, loop=self.loop
            )
        return self._recovery

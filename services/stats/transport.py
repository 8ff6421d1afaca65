"""faust's Kafka transport, with three consumer settings faust 0.15 does not expose.

* ``isolation_level``: faust reads ``read_uncommitted`` unless ``processing_guarantee`` is
  ``exactly_once``. The sequencer writes room-events in transactions; a sequencer that dies
  mid-transaction leaves records that are later aborted and written again by its successor. Read
  uncommitted, stats would count those events twice. We read ``read_committed``, like every other
  reader of the log.
* ``fetch_max_wait_ms``: hard-coded to 1500 in faust's driver; we use FETCH_MAX_WAIT_MS.
* ``fetch_min_bytes``: 1 in faust's driver (a fetch per transaction); we use FETCH_MIN_BYTES.

And ``_new_offset``: which offset to commit, robust to the holes a transactional log has (see
there), with ``_add_gap``, faust's record of those holes, which that rule does not need.

The three settings are set on the aiokafka consumer faust builds, before it starts, by
:func:`waitroom_platform.compat.override_fetch_settings` (see docs/adr/0004). The hooks overridden
here, and ``StatsApp._new_transport`` that installs this transport, are private to faust:
``tests/unit/test_compat.py`` checks faust still calls them.
"""

from __future__ import annotations

from typing import Any

import aiokafka
from faust.transport.drivers import aiokafka as faust_aiokafka

from waitroom_platform import compat

#: an idle fetch is held this long (records are answered at once whatever it is): stats count per
#: second, so 200 ms costs no figure anything, where 20 ms was fifty empty fetches a second
FETCH_MAX_WAIT_MS = 200
#: and held until this much is there (or that wait is over): a fetch per sequencer transaction
#: (one or two room events each at a few hundred joins/s) cost the consumer's thread 0.7 ms of CPU
#: each, 0.20 of a core at 300 joins/s; with 64 KiB it is 0.01 (docs/benchmarks.md, "Surge
#: capacity", "Stats: a fetch held until 64 KiB")
FETCH_MIN_BYTES = 64 * 1024


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        compat.override_fetch_settings(
            consumer,
            isolation_level="read_committed",
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            fetch_min_bytes=FETCH_MIN_BYTES,
        )
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _new_offset(self, tp: Any) -> int | None:
        """The offset to commit for ``tp``: the lowest offset still being processed, else one past
        the highest acknowledged; ``None`` when that is not past the committed one.

        faust's own rule looks for a run of consecutive acknowledged offsets after the committed
        one and guesses at the holes. A read_committed consumer of a transactional log meets holes
        that are never delivered (each transaction's commit marker, and every aborted record), and
        when one sat right after the committed offset faust never committed again: in a soak,
        stats' committed offsets stopped at ~260 of 2,100 records, and its list of acknowledged
        offsets grew by every record read (a restart would also have replayed from there). The
        consumer reads a partition in order, so an offset below the highest acknowledged that was
        neither acknowledged nor is being processed was never delivered and never will be.
        """
        acked = self._acked[tp]
        if not acked:
            return None
        pending = [m.offset for m in list(self._unacked_messages) if m.tp == tp and not m.acked]
        offset = min(pending) if pending else max(acked) + 1
        done = {o for o in acked if o < offset}
        if done:
            acked[:] = [o for o in acked if o >= offset]
            self._acked_index[tp].difference_update(done)
        committed = self._committed_offset[tp]
        return offset if committed is None or offset > committed else None

    async def _add_gap(self, tp: Any, offset_from: int, offset_to: int) -> None:
        """Nothing: the rule of :meth:`_new_offset` needs no record of the holes.

        faust notes each hole between two fetched offsets in an interval tree and rebuilds the
        whole tree (``merge_overlaps``) at each one, for its own ``_new_offset`` only. A
        transactional log has a hole after every transaction (its commit marker), and the tree
        holds a second of them between two commits: at 300 transactions/s that was 60 % of the
        stats process's CPU (docs/benchmarks.md, "Surge capacity", "Stats: a fetch held until 64 KiB").
        """


class CommittedReadTransport(faust_aiokafka.Transport):
    Consumer = _Consumer

"""faust's Kafka transport, with the two consumer settings faust 0.15 does not expose.

* ``isolation_level``: faust reads ``read_uncommitted`` unless ``processing_guarantee`` is
  ``exactly_once``. The sequencer writes room-events in transactions; a sequencer that dies
  mid-transaction leaves records that are later aborted and written again by its successor. Read
  uncommitted, stats would count those events twice. We read ``read_committed``, like every other
  reader of the log.
* ``fetch_max_wait_ms``: hard-coded to 1500 in faust's driver; we use FETCH_MAX_WAIT_MS.

And ``_new_offset``: which offset to commit, robust to the holes a transactional log has (see there).

The two settings are set on the aiokafka consumer faust builds, before it starts, by
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


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        compat.override_fetch_settings(consumer, isolation_level="read_committed", fetch_max_wait_ms=FETCH_MAX_WAIT_MS)
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
        gap = self._gap.get(tp)
        if gap:
            gap.chop(0, offset)
        committed = self._committed_offset[tp]
        return offset if committed is None or offset > committed else None


class CommittedReadTransport(faust_aiokafka.Transport):
    Consumer = _Consumer

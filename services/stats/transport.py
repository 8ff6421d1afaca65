"""faust's Kafka transport, with the two consumer settings faust 0.15 does not expose.

* ``isolation_level``: faust reads ``read_uncommitted`` unless ``processing_guarantee`` is
  ``exactly_once``. The sequencer writes room-events in transactions; a sequencer that dies
  mid-transaction leaves records that are later aborted and written again by its successor. Read
  uncommitted, stats would count those events twice. We read ``read_committed``, like every other
  reader of the log.
* ``fetch_max_wait_ms``: hard-coded to 1500 in faust's driver; we use FETCH_MAX_WAIT_MS.

Both are set on the aiokafka consumer faust builds, before it starts, by
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


class CommittedReadTransport(faust_aiokafka.Transport):
    Consumer = _Consumer

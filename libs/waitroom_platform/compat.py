"""Every use of aiokafka's private attributes, in one place, for the day aiokafka or faust is upgraded.

aiokafka 0.14 has no public way to do either of these:

* load one topic's metadata for a consumer with manual assignment (``partitions_for_topic`` only
  answers from metadata already loaded): :func:`cluster_client` reads ``AIOKafkaConsumer._client``;
* shorten the wait before a transactional producer retries ``AddPartitionsToTxn`` answered
  ``CONCURRENT_TRANSACTIONS`` (the previous transaction's markers are still being written, KAFKA-5477):
  aiokafka waits a module constant, ``aiokafka.producer.sender.BACKOFF_OVERRIDE`` (20 ms), that no
  setting reaches; :func:`shorten_transaction_retry` sets it. The sequencer starts a transaction right
  after the previous commit, so at low load it met that wait on nearly every batch;
* change settings of a consumer that someone else constructed (faust builds the stats service's
  consumer with ``read_uncommitted`` and a 1500 ms fetch wait): :func:`override_fetch_settings` sets
  ``_isolation_level`` and ``_fetch_max_wait_ms``, which ``start()`` hands to the fetcher it builds.

The stats service also overrides three private faust hooks to put that consumer in place:
``faust.App._new_transport`` (``waitroom_stats.app.StatsApp``), ``Consumer._new_consumer_thread``
and ``AIOKafkaConsumerThread._create_worker_consumer`` (``waitroom_stats.transport``). They stay
there, as subclasses, because this package does not depend on faust. ``tests/unit/test_compat.py``
checks that the installed aiokafka and faust still have, and still use, everything named here.
"""

from __future__ import annotations

from typing import Any

import aiokafka
import aiokafka.producer.sender
from aiokafka import AIOKafkaConsumer

#: set by ``AIOKafkaConsumer.__init__``; the cluster client behind ``partitions_for_topic``
CLIENT = "_client"
#: set by ``AIOKafkaConsumer.__init__`` from its arguments, read by ``start()`` when it builds the fetcher
FETCH_SETTINGS = ("_isolation_level", "_fetch_max_wait_ms", "_fetch_min_bytes")
#: ``None`` until ``start()``; settings changed after that have no effect
FETCHER = "_fetcher"


#: the module constant behind the retry of ``AddPartitionsToTxn`` after ``CONCURRENT_TRANSACTIONS``
TRANSACTION_RETRY = (aiokafka.producer.sender, "BACKOFF_OVERRIDE")


class IncompatibleLibrary(RuntimeError):
    """An installed aiokafka no longer has an attribute this module relies on."""


def cluster_client(consumer: AIOKafkaConsumer) -> Any:
    """The consumer's ``AIOKafkaClient``: ``add_topic`` and ``force_metadata_update`` load metadata."""
    return _get(consumer, CLIENT)


def override_fetch_settings(
    consumer: AIOKafkaConsumer, *, isolation_level: str, fetch_max_wait_ms: int, fetch_min_bytes: int
) -> None:
    """Set ``isolation_level``, ``fetch_max_wait_ms`` and ``fetch_min_bytes`` of a consumer that is not started yet."""
    if _get(consumer, FETCHER) is not None:
        raise RuntimeError("the consumer is started: its fetcher already has its settings")
    for name in FETCH_SETTINGS:
        _get(consumer, name)
    consumer._isolation_level = isolation_level
    consumer._fetch_max_wait_ms = fetch_max_wait_ms
    consumer._fetch_min_bytes = fetch_min_bytes


def shorten_transaction_retry(seconds: float) -> None:
    """Retry ``AddPartitionsToTxn`` after ``CONCURRENT_TRANSACTIONS`` after ``seconds`` (process-wide)."""
    module, name = TRANSACTION_RETRY
    _get(module, name)
    setattr(module, name, seconds)


def _get(obj: object, name: str) -> Any:
    try:
        return getattr(obj, name)
    except AttributeError:
        kind = type(obj)
        raise IncompatibleLibrary(
            f"{kind.__module__}.{kind.__qualname__} has no attribute {name!r} (aiokafka {aiokafka.__version__}); "
            "review waitroom_platform.compat"
        ) from None

"""Create every waitroom topic on a cluster: ``python -m waitroom_platform.topics_cli``.

Reads the same settings as the services (``KAFKA_*``, ``WAITROOM_TOPIC_PREFIX``,
``WAITROOM_ROOM_PARTITIONS``); idempotent, and refuses a topic that exists with fewer partitions
than the registry asks (co-partitioning depends on it). The Helm chart runs it as a hook Job.
"""

from __future__ import annotations

import asyncio
import sys

from waitroom_platform.admin import TopicPartitionMismatch, ensure_service_topics
from waitroom_platform.logging import configure_logging
from waitroom_platform.settings import CommonSettings, KafkaSettings


def main() -> int:
    common = CommonSettings()
    kafka = KafkaSettings()
    configure_logging(common.log_level, common.log_format, service="topics")
    specs = common.topics().all()
    try:
        asyncio.run(ensure_service_topics(kafka, specs))
    except TopicPartitionMismatch as exc:
        sys.stderr.write(f"waitroom-topics: {exc}\n")
        return 1
    sys.stdout.write(f"{len(specs)} topics ready under prefix {common.topic_prefix!r}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Topics the job and the tools create when they are missing: one rule for both.

The local broker does not create topics on first write, and a shop without a catalog, a
published model or feedback readers yet must still run; a broker that refuses to create one
(no permission) stops the start naming the config key. Free of pyflink: the tools call it too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from udfs.config import ConfigError, KafkaConfig
from udfs.kafka_clients import KafkaClients

log = logging.getLogger(__name__)

# The catalog and the control topic hold the latest record per key (item, model target).
COMPACTED = {"cleanup.policy": "compact"}
TOPIC_ALREADY_EXISTS = 36  # created meanwhile by someone else


def ensure_topic(kafka: KafkaConfig, name: str, field: str, configs: Mapping[str, str] | None = None,
                 timeout_s: float = 10.0) -> None:
    """Create topic ``name`` (``kafka.<field>``, for messages), one partition, with ``configs``, when it
    does not exist. A broker that cannot be reached raises kafka-python's ``KafkaError``."""
    admin = KafkaClients.of(kafka).admin(request_timeout_ms=int(timeout_s * 1000))
    try:
        if name in admin.list_topics():
            return
        result = admin.create_topics({name: {"num_partitions": 1, "replication_factor": -1,
                                             "configs": dict(configs or {})}},
                                     raise_errors=False)
        for topic in result["topics"]:
            if topic["error_code"] not in (0, TOPIC_ALREADY_EXISTS):
                raise ConfigError(f"kafka.{field}: {name!r} does not exist and could not be "
                                  f"created (error {topic['error_code']}: {topic.get('error_message') or ''})")
        log.warning("created the topic %s (kafka.%s)%s", name, field, f" {dict(configs)}" if configs else "")
    finally:
        admin.close()

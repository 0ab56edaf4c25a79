"""Counting a topic's records for a benchmark: its end offsets, or reading it back as fast as
kafka-python can."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from udfs.kafka_clients import KafkaClients


class TopicCounter:
    """Records in a topic (sum of end offsets): outputs so far, without reading them."""

    def __init__(self, bootstrap: str, topic: str, security: Mapping[str, Any] | None = None) -> None:
        self.topic = topic
        self._cons = KafkaClients(bootstrap, security).consumer(group_id=None, enable_auto_commit=False)

    def __call__(self) -> int:
        from kafka import TopicPartition

        parts = self._cons.partitions_for_topic(self.topic) or set()
        ends = self._cons.end_offsets([TopicPartition(self.topic, p) for p in parts])
        return int(sum(ends.values()))

    def close(self) -> None:
        self._cons.close()


def consume_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0,
                security: Mapping[str, Any] | None = None) -> tuple[int, float]:
    """Read ``expected`` raw records as fast as kafka-python can; (count, seconds).

    ``security``: kafka-python options (:func:`udfs.kafka_security.python_client_options`).
    """
    cons = KafkaClients(bootstrap, security).consumer(
        topic, auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=int(timeout_s * 1000),
        max_partition_fetch_bytes=8 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024)
    n = 0
    start = time.perf_counter()
    try:
        for _ in cons:
            n += 1
            if n >= expected:
                break
    finally:
        cons.close()
    return n, time.perf_counter() - start

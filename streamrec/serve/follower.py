"""Follows the ``recommendations`` topic (read_committed) into the :class:`Store`.

It assigns itself every partition (no consumer group: each serve instance keeps its
own full view) and starts each at the position the store holds, or at the beginning:
a new or deleted store file is rebuilt from the topic. ``ready`` is set once every
partition has reached the end it had at start: with read_committed that end is the last
stable offset, so an open transaction (an exactly-once job between checkpoints, or one
that died mid-transaction) does not hold readiness back.

:class:`CatalogFollower` follows the catalog topic the same way into the store's item
records (decoded by ``udfs.catalog.decode_catalog_item``, the job's decoder), so lists can
show titles, brands and prices.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from streamrec.serve.lists_decoder import decode_list
from streamrec.serve.store import Store
from udfs.catalog import CatalogItem, decode_catalog_item
from udfs.events import DecodeError, max_event_ts
from udfs.kafka_clients import KafkaClients
from udfs.records import OutputRecord, OutputRecordError

log = logging.getLogger(__name__)

# Records taken per poll: one store transaction each, so a rebuild writes in large batches.
POLL_RECORDS = 5000


class Polled(NamedTuple):
    """One record as the followers read it (librdkafka's message, its parts taken once)."""

    value: bytes | None
    partition: int
    offset: int
    key: bytes | None = None


def _failed(message: Any) -> bool:
    """Raise a message's error unless it only says a partition's end was reached."""
    error = message.error()
    if error is None:
        return False
    from confluent_kafka import KafkaError, KafkaException  # lazy: the serve extra's client

    if error.code() == KafkaError._PARTITION_EOF:
        return True
    raise KafkaException(error)


class Follower:
    """A daemon thread; ``on_lists`` gets the user keys of each stored batch (called in this thread)."""

    def __init__(self, store: Store, bootstrap: str, topic: str, *, security: Mapping[str, Any] | None = None,
                 on_lists: Callable[[list[str]], None] | None = None, poll_ms: int = 200) -> None:
        self.store = store
        self.bootstrap = bootstrap
        self.topic = topic
        self.security = security
        self.on_lists = on_lists
        self.poll_ms = poll_ms
        self.ready = threading.Event()
        self.stopped = threading.Event()
        self.records = 0
        self.bad_records = 0
        self.erased = 0
        self.last_error: str | None = None
        self.last_record_at: float | None = None
        self.lag = 0
        self._thread = threading.Thread(target=self._run, name=f"serve-follower-{topic}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stopped.set()
        self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                self._follow()
            except Exception as exc:  # the broker (or the store) went away: say so, wait, resume from the store
                # the health body shows the type only: the message may name the brokers or the SASL user
                self.last_error = type(exc).__name__
                log.warning("following %s failed (%s: %s); retrying in 2 s", self.topic, self.last_error, exc)
                self.stopped.wait(2.0)

    def state(self) -> str:
        """``ready``, ``catching_up`` (rebuilding the view), ``reconnecting`` (lost the broker or the store,
        retrying) or ``stopped`` (the thread ended)."""
        if not self.alive():
            return "stopped"
        if self.last_error is not None:
            return "reconnecting"
        return "ready" if self.ready.is_set() else "catching_up"

    def _consumer(self) -> Any:
        # librdkafka's consumer does not create a topic it waits for (allow.auto.create.topics is off): a
        # broker that auto-creates topics would make the catalog an uncompacted one
        return KafkaClients(self.bootstrap, self.security).fast_consumer(**{
            "isolation.level": "read_committed", "auto.offset.reset": "earliest",
            "allow.auto.create.topics": False, "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 16 * 1024 * 1024})

    def _partitions(self, consumer: Any) -> list[int]:
        """The topic's partitions, waiting (and saying so) until it exists; empty once stopped."""
        while not self.stopped.is_set():
            meta = consumer.list_topics(self.topic, timeout=10).topics.get(self.topic)
            if meta is not None and meta.error is None and meta.partitions:
                return sorted(meta.partitions)
            self.last_error = f"topic {self.topic!r} not found yet"
            self.stopped.wait(1.0)
        return []

    def _follow(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition  # lazy: the serve extra's client

        consumer = self._consumer()
        try:
            parts = self._partitions(consumer)
            if not parts:
                return
            stored = self._stored_positions()
            consumer.assign([TopicPartition(self.topic, p, stored.get(p, OFFSET_BEGINNING)) for p in parts])
            # (low, high) per partition; with read_committed the high offset is the last stable one
            marks = {p: consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10) for p in parts}
            ends = {p: high for p, (_, high) in marks.items()}
            starts = {p: stored.get(p, low) for p, (low, _) in marks.items()}
            self.last_error = None
            while not self.stopped.is_set():
                batch = [Polled(m.value(), m.partition(), m.offset(), m.key())
                         for m in consumer.consume(POLL_RECORDS, self.poll_ms / 1000) if not _failed(m)]
                # the fetch position, past transaction markers too (a list's offset + 1 may not reach the end)
                read = {tp.partition: tp.offset for tp in consumer.position(
                    [TopicPartition(self.topic, p) for p in parts]) if tp.offset >= 0}
                positions = {p: read.get(p, starts[p]) for p in parts}
                if batch:
                    self._store_batch(batch, positions)
                    self.last_record_at = time.time()
                if not self.ready.is_set():
                    self.lag = sum(max(0, end - positions[p]) for p, end in ends.items())
                    if not self.lag:
                        log.info("serve view of %s rebuilt: %s", self.topic, self._size())
                        self.ready.set()
                else:
                    self.lag = 0
        finally:
            consumer.close()

    def _stored_positions(self) -> dict[int, int]:
        return self.store.positions()

    def _size(self) -> str:
        return f"{self.store.count()} shoppers"

    def _store_batch(self, msgs: list[Any], positions: dict[int, int]) -> None:
        """Decode a polled batch and store it with the positions reached (also when all were unreadable,
        so they are not read again). A tombstone (null value) erases its key's list. Within the batch each
        shopper's last readable record decides (one shopper's records share a partition, in order), so
        the batch is read from its end and a record that a later one of its key replaces is not decoded:
        a topic holds one list per event, a rebuild decodes about one per shopper and batch."""
        latest: dict[str, tuple[OutputRecord, int, int] | None] = {}
        read = 0
        for msg in reversed(msgs):
            key = None if msg.key is None else msg.key.decode("utf-8", "replace")
            if key is not None and key in latest:  # replaced later in the batch: consumed, not checked
                read += msg.value is not None
                continue
            if msg.value is None and key is not None:  # an erased shopper (udfs.records.ERASED_LIST)
                latest[key] = None
                continue
            try:
                record = decode_list(msg.value)
            except OutputRecordError as exc:
                self.bad_records += 1
                log.warning("skipping %s:%d:%d: %s", self.topic, msg.partition, msg.offset, exc)
                continue
            read += 1
            latest.setdefault(str(record.user_id), (record, msg.partition, msg.offset))
        lists = [entry for entry in latest.values() if entry is not None]
        erased = [key for key, entry in latest.items() if entry is None]
        self.store.write(lists, positions, erased)
        self.records += read
        self.erased += len(erased)
        if self.on_lists and latest:
            self.on_lists(sorted(latest))


class CatalogFollower(Follower):
    """Follows the compacted catalog topic into the store's item records; a later ``updated_at`` wins
    (the store applies the job's rule), records the job would dead-letter are skipped and counted,
    among them an ``updated_at`` beyond now + ``max_future_skew_ms`` (``job.max_future_skew_ms``, the
    job's bound: a record far in the future would otherwise win over every later one here while the
    job ignores it). ``on_lists`` is called with no keys after a batch that changed item records."""

    def __init__(self, store: Store, bootstrap: str, topic: str, *, max_future_skew_ms: int,
                 **kwargs: Any) -> None:
        super().__init__(store, bootstrap, topic, **kwargs)
        self.max_future_skew_ms = max_future_skew_ms

    def _stored_positions(self) -> dict[int, int]:
        return self.store.catalog_positions()

    def _size(self) -> str:
        return f"{self.store.item_count()} catalog items"

    def _store_batch(self, msgs: list[Any], positions: dict[int, int]) -> None:
        items: list[CatalogItem] = []
        for msg in msgs:
            if msg.value is None:  # a tombstone: the job dead-letters it, so the item keeps its last record
                self.bad_records += 1
                log.warning("skipping catalog tombstone %s:%d:%d", self.topic, msg.partition, msg.offset)
                continue
            item = decode_catalog_item(msg.value, max_event_ts(self.max_future_skew_ms))
            if isinstance(item, DecodeError):
                self.bad_records += 1
                log.warning("skipping catalog record %s:%d:%d: %s", self.topic, msg.partition, msg.offset,
                            item.reason)
            else:
                items.append(item)
        taken = self.store.write_items(items, positions)
        self.records += len(items)
        if self.on_lists and taken:
            self.on_lists([])  # no shopper's list changed, but what every open page shows may have

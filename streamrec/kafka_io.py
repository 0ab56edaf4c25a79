"""Producing behavior events and consuming recommendation records (kafka-python).

Input records get the producer's wall-clock timestamp and output records the
job's, so the difference between the two is event-to-recommendation latency.

``security`` everywhere: kafka-python options for a secured broker, from
:func:`udfs.kafka_security.python_client_options` (merged over the defaults here).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass
from typing import Any

import msgpack

from streamrec.progress import Progress
from udfs.errors import InputError
from udfs.events import Event, Id, encode_erase, encode_event
from udfs.kafka_clients import KafkaClients


@dataclass
class ReplayStats:
    sent: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


PACE_TICK_S = 0.01


def produce(bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes]], *,
            rate: float = 0.0, security: Mapping[str, Any] | None = None,
            progress: str | None = None, total: int | None = None) -> ReplayStats:
    """Send (key, value) records; ``rate`` records/s, 0 = as fast as possible.

    ``progress``: the label of a progress bar (:mod:`streamrec.progress`: only on a terminal,
    moved every 1,000 records so the loop's cost per record stays an add and a compare) of
    ``total`` records (default: ``len(records)`` when it has one).

    Paced sends go out in bursts at most ``PACE_TICK_S`` early, not one sleep per
    record: per-record sleeps cost this load generator ~0.3 of a core at 250/s on
    the same 2 cores as the job it feeds. A record's Kafka timestamp is its send
    time, so latency is still measured from when it was really sent.
    """
    prod = KafkaClients(bootstrap, security).producer()
    stats = ReplayStats()
    if total is None and isinstance(records, Sized):
        total = len(records)
    bar = Progress(progress or "", total=total, unit="ev") if progress else None
    start = time.perf_counter()
    try:
        for key, value in records:
            prod.send(topic, key=key, value=value)
            stats.sent += 1
            if bar is not None:
                bar.tick()
            if rate > 0:
                ahead = stats.sent / rate - (time.perf_counter() - start)
                if ahead > PACE_TICK_S:
                    time.sleep(ahead)
        prod.flush()
    finally:
        if bar is not None:
            bar.close()
        prod.close()
    stats.seconds = time.perf_counter() - start
    return stats


def event_record(ev: Event) -> tuple[bytes, bytes]:
    """The input topic's record for an event: keyed by user, msgpack value."""
    return str(ev.user_id).encode(), encode_event(ev)


def erase_record(user_id: Id) -> tuple[bytes, bytes]:
    """The input topic's erase request for a shopper (``user_id`` canonical), keyed as their events."""
    return str(user_id).encode(), encode_erase(user_id)


def replay(
    events: Iterable[Event | bytes],
    bootstrap: str,
    topic: str,
    *,
    rate: float = 0.0,
    key_of: Any = None,
    security: Mapping[str, Any] | None = None,
    progress: str | None = None,
) -> ReplayStats:
    """Send events (keyed by user) or raw payloads (keyed by ``key_of``, if given); ``progress``:
    a bar's label (see :func:`produce`), its total the number of events when ``events`` has one."""
    records = (event_record(ev) if isinstance(ev, Event) else (key_of(ev) if key_of else None, ev)
               for ev in events)
    return produce(bootstrap, topic, records, rate=rate, security=security, progress=progress,
                   total=len(events) if isinstance(events, Sized) else None)


@dataclass
class ConsumedRecord:
    key: bytes | None
    value: dict[str, Any]
    timestamp: int
    partition: int
    offset: int
    tombstone: bool = False
    """A null value (``value`` is empty): on the lists topic, the list of an erased shopper."""


def consume(
    bootstrap: str,
    topic: str,
    *,
    max_records: int | None = None,
    timeout_s: float = 10.0,
    from_beginning: bool = True,
    group_id: str | None = None,
    security: Mapping[str, Any] | None = None,
    tombstones: bool = False,
) -> Iterator[ConsumedRecord]:
    """Yield decoded records until ``max_records`` or ``timeout_s`` without new ones; tombstones (null
    values: erased shoppers) only with ``tombstones``, marked so.

    read_committed: with an exactly-once job, only committed lists are seen.
    """
    cons = KafkaClients(bootstrap, security).consumer(
        topic, group_id=group_id, auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=group_id is not None, isolation_level="read_committed",
        consumer_timeout_ms=int(timeout_s * 1000))
    n = 0
    try:
        for msg in cons:
            if msg.value is None:  # a tombstone (an erased shopper's list, udfs.records.ERASED_LIST)
                if not tombstones:
                    continue
                yield ConsumedRecord(msg.key, {}, msg.timestamp, msg.partition, msg.offset, tombstone=True)
            else:
                value = msgpack.unpackb(msg.value, raw=False, strict_map_key=False)
                yield ConsumedRecord(msg.key, value, msg.timestamp, msg.partition, msg.offset)
            n += 1
            if max_records is not None and n >= max_records:
                return
    finally:
        cons.close()


def read_topic(
    bootstrap: str,
    topic: str,
    *,
    idle_timeout_s: float = 30.0,
    security: Mapping[str, Any] | None = None,
) -> list[bytes]:
    """Every value of ``topic`` from the beginning up to the end offsets seen at the start: a
    bounded read of a topic that may keep growing (``streamrec retrain --from-topic``).

    read_committed, no consumer group (nothing is committed). A topic that does not exist is a
    ValueError naming it; no progress for ``idle_timeout_s`` is a TimeoutError (the end offsets
    were announced, so the records should be there)."""
    from kafka import TopicPartition

    cons = KafkaClients(bootstrap, security).consumer(
        group_id=None, enable_auto_commit=False, isolation_level="read_committed", auto_offset_reset="earliest")
    try:
        parts = cons.partitions_for_topic(topic)
        if not parts:
            raise InputError(f"topic {topic!r} does not exist at {bootstrap}")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        cons.assign(tps)
        cons.seek_to_beginning(*tps)
        end = cons.end_offsets(tps)
        pending = {tp for tp in tps if end[tp] > cons.position(tp)}
        values: list[bytes] = []
        last = time.monotonic()
        while pending:
            for tp, msgs in cons.poll(timeout_ms=500).items():
                values.extend(m.value for m in msgs if m.offset < end[tp])
                last = time.monotonic()
            pending = {tp for tp in pending if cons.position(tp) < end[tp]}
            if pending and time.monotonic() - last > idle_timeout_s:
                raise TimeoutError(f"reading {topic!r}: no record for {idle_timeout_s:.0f} s with "
                                   f"{sum(end[tp] - cons.position(tp) for tp in pending)} still before the end")
        return values
    finally:
        cons.close()

"""Producing behavior events and consuming recommendation records (kafka-python).

Input records get the producer's wall-clock timestamp and output records the
job's, so the difference between the two is event-to-recommendation latency.

``security`` everywhere: kafka-python options for a secured broker, from
:func:`udfs.kafka_security.python_client_options` (merged over the defaults here).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass
from typing import Any

import msgpack
from kafka.errors import KafkaError, SaslAuthenticationFailedError

from streamrec.progress import Progress
from udfs.errors import InputError
from udfs.events import Event, Id, encode_erase, encode_event
from udfs.kafka_security import KafkaCredentialsError, librdkafka_options, merged


@dataclass
class ReplayStats:
    sent: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


def producer(bootstrap: str, security: Mapping[str, Any] | None = None, **overrides: Any) -> Any:
    """A kafka-python producer; ``security``: :func:`udfs.kafka_security.python_client_options`."""
    from kafka import KafkaProducer

    opts: dict[str, Any] = {"bootstrap_servers": bootstrap, "linger_ms": 5, "acks": "all",
                            "batch_size": 256 * 1024}
    opts.update(overrides)
    with connect_errors(bootstrap, security):
        return KafkaProducer(**merged(opts, security))


def fast_consumer(bootstrap: str, security: Mapping[str, Any] | None = None, **settings: Any) -> Any:
    """A librdkafka consumer (confluent-kafka, with the ``serve`` extra) for reading a topic in bulk: on the
    local broker it read 800-byte lists at 136,000/s where kafka-python's consumer read 5,900/s, which made
    rebuilding a serve view take hours at a shop's size. Partitions are assigned, never subscribed, so
    ``group.id`` (librdkafka wants one) joins no group and commits nothing. ``settings``: librdkafka's names."""
    from confluent_kafka import Consumer  # lazy: the serve extra's client

    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "group.id": "streamrec-serve", "enable.auto.commit": False,
                            **settings}
    conf.update(librdkafka_options(security))
    return Consumer(conf)


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
    prod = producer(bootstrap, security)
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
    from kafka import KafkaConsumer

    opts = {"bootstrap_servers": bootstrap, "group_id": group_id,
            "auto_offset_reset": "earliest" if from_beginning else "latest",
            "enable_auto_commit": group_id is not None, "isolation_level": "read_committed",
            "consumer_timeout_ms": int(timeout_s * 1000)}
    with connect_errors(bootstrap, security):
        cons = KafkaConsumer(topic, **merged(opts, security))
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
    from kafka import KafkaConsumer, TopicPartition

    opts = {"bootstrap_servers": bootstrap, "group_id": None, "enable_auto_commit": False,
            "isolation_level": "read_committed", "auto_offset_reset": "earliest"}
    with connect_errors(bootstrap, security):
        cons = KafkaConsumer(**merged(opts, security))
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


class _AuthFailures(logging.Filter):
    """Notes how far kafka-python's bootstrap got, from what it logs: it retries a refused login
    like a network error until its bootstrap timeout, then raises only "Unable to bootstrap"."""

    def __init__(self) -> None:
        super().__init__()
        self.refused: list[BaseException] = []
        self.authenticating = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("kafka.net.sasl."):
            self.authenticating = True  # the listener answered and took the mechanism
        args = record.args if isinstance(record.args, tuple) else ()
        self.refused.extend(a for a in args if isinstance(a, SaslAuthenticationFailedError))
        return True


# The SASL mechanisms warn (once per login) when they send credentials without TLS.
_NET_LOGGERS = ("kafka.net.manager", "kafka.net.connection", "kafka.net.sasl.plain", "kafka.net.sasl.scram")


@contextlib.contextmanager
def connect_errors(bootstrap: str, security: Mapping[str, Any] | None) -> Iterator[None]:
    """A client that could not bootstrap from a SASL listener raises :class:`KafkaCredentialsError`
    saying who tried and where the password came from (never the password).

    The broker may close the connection before kafka-python reads its "Invalid username or
    password" answer; a connection closed after the login was sent counts as refused too. Only
    when neither was seen (or with TLS, where the mechanisms log nothing) does the message leave
    open whether the broker is down.
    """
    opts = security or {}
    if not str(opts.get("security_protocol", "")).startswith("SASL_"):
        yield
        return
    watcher = _AuthFailures()
    loggers = [logging.getLogger(name) for name in _NET_LOGGERS]
    for logger in loggers:
        logger.addFilter(watcher)
    try:
        yield
    except KafkaError as exc:
        who = f"{opts['security_protocol']} {opts.get('sasl_mechanism')} as {opts.get('sasl_plain_username')!r}"
        if watcher.refused:
            why = f"the broker refused the credentials ({watcher.refused[-1]})"
        elif watcher.authenticating:
            why = "the broker closed the connection after the login was sent: the credentials were refused"
        else:
            why = f"{exc}: the broker is down or refused the credentials (its log says which)"
        raise KafkaCredentialsError(
            f"cannot connect to Kafka at {bootstrap} with {who}: {why}; check kafka.bootstrap_servers, "
            "kafka.sasl_username and the password (kafka.sasl_password_file or kafka.sasl_password_env)"
        ) from exc
    finally:
        for logger in loggers:
            logger.removeFilter(watcher)

"""The local KRaft broker: it starts, serves real clients, and stops for good."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest

from jobs.layout import required_jars
from streamrec.kafka_io import consume, replay
from streamrec.lab.local import kafka as kafka_local
from streamrec.lab.local.kafka import LocalKafka, kafka_classpath
from udfs.events import Event

pytestmark = pytest.mark.timeout(300)


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.kafka
def test_broker_answers(kafka_broker: LocalKafka) -> None:
    from kafka.admin import KafkaAdminClient

    assert kafka_broker.is_running()
    assert kafka_broker.bootstrap == f"127.0.0.1:{kafka_broker.port}"
    assert kafka_broker.port != kafka_broker.controller_port
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    try:
        assert isinstance(admin.list_topics(), list)
    finally:
        admin.close()


@pytest.mark.kafka
def test_msgpack_roundtrip(kafka_broker: LocalKafka, unique_topic: Callable[..., str]) -> None:
    from kafka import KafkaConsumer, KafkaProducer

    topic = unique_topic("events")
    records = [{"user_id": u, "item_id": 1000 + u, "behavior": "pv", "ts": 1_700_000_000 + u}
               for u in range(5)]
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
    try:
        for rec in records:
            producer.send(topic, key=str(rec["user_id"]).encode(), value=msgpack.packb(rec))
        producer.flush(timeout=30)
    finally:
        producer.close()

    consumer = KafkaConsumer(topic, bootstrap_servers=kafka_broker.bootstrap, group_id=f"{topic}-g",
                             auto_offset_reset="earliest", consumer_timeout_ms=20_000)
    try:
        got = []
        for msg in consumer:
            got.append((msg.key, msgpack.unpackb(msg.value)))
            if len(got) == len(records):
                break
        consumer.commit()  # exercises the group coordinator on the replication-factor-1 offsets topic
    finally:
        consumer.close()
    assert got == [(str(r["user_id"]).encode(), r) for r in records]


@pytest.mark.kafka
def test_kafka_io_roundtrip(kafka_broker: LocalKafka, unique_topic: Callable[..., str]) -> None:
    topic = unique_topic()
    events = [Event(u, 100 + u, 7, "pv", 1_000 + u) for u in range(20)]
    stats = replay(events, kafka_broker.bootstrap, topic)
    got = list(consume(kafka_broker.bootstrap, topic, max_records=20, timeout_s=10))
    assert stats.sent == 20
    assert [r.value for r in got] == [e.to_wire() for e in events]
    assert [r.key for r in got] == [str(e.user_id).encode() for e in events]


@pytest.mark.kafka
def test_create_topics_is_idempotent(kafka_broker: LocalKafka, unique_topic: Callable[..., str]) -> None:
    from kafka import KafkaConsumer

    existing = unique_topic("a", partitions=3)
    fresh = existing + "-b"
    assert kafka_broker.create_topics([existing, fresh, fresh], partitions=3) == [fresh]
    assert kafka_broker.create_topics([existing, fresh], partitions=3) == []
    assert kafka_local.create_topics(kafka_broker.bootstrap, [existing]) == []
    consumer = KafkaConsumer(bootstrap_servers=kafka_broker.bootstrap)
    try:
        assert consumer.partitions_for_topic(existing) == {0, 1, 2}
        assert consumer.partitions_for_topic(fresh) == {0, 1, 2}
    finally:
        consumer.close()


def test_missing_jars_give_the_fetch_instruction(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STREAMREC_CACHE", str(tmp_path / "empty-cache"))
    assert kafka_local.cache_dir() == tmp_path / "empty-cache"
    for call in (kafka_classpath, required_jars, LocalKafka(tmp_path / "data").start):
        with pytest.raises(FileNotFoundError, match=r"make deps.*scripts/fetch_deps\.sh"):
            call()


@pytest.mark.kafka
@pytest.mark.usefixtures("kafka_jars")
def test_stop_ends_the_process(tmp_path: Path) -> None:
    broker = LocalKafka(tmp_path / "data", log_file=tmp_path / "broker.log")
    with broker:
        pid = broker.pid
        assert pid is not None and kafka_local.port_open(broker.port)
    assert broker.process is not None and broker.process.returncode is not None
    assert not kafka_local.pid_alive(pid) and _process_gone(pid)
    assert not kafka_local.port_open(broker.port)
    assert pid not in set(kafka_local.iter_children())


@pytest.mark.kafka
@pytest.mark.usefixtures("kafka_jars")
def test_port_conflict_is_retried_with_new_ports(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        real_free_ports = kafka_local.free_ports
        picks: list[list[int]] = []

        def first_pick_collides(count: int = 2) -> list[int]:
            ports = real_free_ports(count)
            if not picks:
                ports[0] = taken
            picks.append(ports)
            return ports

        monkeypatch.setattr(kafka_local, "free_ports", first_pick_collides)
        with LocalKafka(tmp_path / "data") as broker:
            assert len(picks) == 2
            assert broker.port == picks[1][0] != taken
            assert "Address already in use" in broker.log_file.read_text()


@pytest.mark.kafka
@pytest.mark.usefixtures("kafka_jars")
def test_background_broker_lifecycle(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    libs = kafka_local.cache_dir() / "kafka" / "libs"
    cache = tmp_path / "cache"
    (cache / "kafka").mkdir(parents=True)
    (cache / "kafka" / "libs").symlink_to(libs)
    monkeypatch.setenv("STREAMREC_CACHE", str(cache))
    port, cport = kafka_local.free_ports(2)

    assert kafka_local.status() is None
    state = kafka_local.start_background(["in", "out"], port=port, controller_port=cport)
    try:
        assert state["bootstrap"] == f"127.0.0.1:{port}"
        assert kafka_local.status() == state
        again = kafka_local.start_background(["in", "more"], port=port, controller_port=cport)
        assert again["pid"] == state["pid"]
        assert kafka_local.create_topics(state["bootstrap"], ["in", "out", "more"]) == []
    finally:
        assert kafka_local.stop_background() is True
    assert kafka_local.status() is None
    assert _process_gone(state["pid"])
    assert kafka_local.stop_background() is False


@pytest.mark.kafka
def test_an_append_time_topic_stamps_records_on_arrival(kafka_broker: LocalKafka,
                                                         unique_topic: Callable[..., str]) -> None:
    """The bench's latency topics: the producer's own timestamp (here one an hour old) is replaced by
    the broker's append time; a plain topic keeps it."""
    from kafka import KafkaConsumer, KafkaProducer

    plain = unique_topic("plain")
    stamped = f"{plain}-append-time"
    assert kafka_broker.create_topics([stamped], append_time=[stamped]) == [stamped]
    before_ms = int(time.time() * 1000)
    hour_ago_ms = before_ms - 3_600_000
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
    try:
        for topic in (stamped, plain):
            producer.send(topic, value=b"x", timestamp_ms=hour_ago_ms)
        producer.flush(timeout=30)
    finally:
        producer.close()
    seen = {}
    for topic in (stamped, plain):
        consumer = KafkaConsumer(topic, bootstrap_servers=kafka_broker.bootstrap, group_id=f"{topic}-g",
                                 auto_offset_reset="earliest", consumer_timeout_ms=20_000)
        try:
            seen[topic] = next(iter(consumer))
        finally:
            consumer.close()
    assert seen[plain].timestamp == hour_ago_ms
    assert seen[stamped].timestamp >= before_ms
    assert seen[stamped].timestamp_type == 1  # LogAppendTime

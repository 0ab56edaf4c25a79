"""Event time per Kafka partition, inside the source.

With one watermark for the whole stream, a partition that is an hour behind (a
backlog being caught up) sees its events judged against the other partitions'
newer times, and they all go to the late topic. Per partition, the watermark is
the slowest partition's; a partition that stays quiet stops holding it back.
"""

from __future__ import annotations

import functools
import subprocess
import time

import pytest
from kafka import KafkaProducer

from streamrec.kafka_io import consume, event_record
from tests.support.job_fixtures import T_START, generated_log
from udfs.config import TOPIC_FIELDS
from udfs.events import Event

pytestmark = [pytest.mark.kafka, pytest.mark.flink]

HOUR_MS = 3_600_000


def send(bootstrap: str, topic: str, by_partition: dict[int, list[Event]]) -> None:
    prod = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        for partition, events in by_partition.items():
            for e in events:
                key, value = event_record(e)
                prod.send(topic, key=key, value=value, partition=partition)
        prod.flush()
    finally:
        prod.close()


def read(bootstrap: str, topic: str, want: int, job: subprocess.Popen, timeout_s: float = 240) -> list[dict]:
    out: list[dict] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < want and time.monotonic() < deadline and job.poll() is None:
        out += [r.value for r in consume(bootstrap, topic, timeout_s=3, group_id=f"verify-{topic}")]
    return out


@pytest.fixture
def topics(unique_topic) -> dict[str, str]:
    """A two-partition input topic and one-partition outputs."""
    return {f: unique_topic(f.split("_")[0], partitions=2 if f == "input_topic" else 1) for f in TOPIC_FIELDS}


@pytest.fixture
def start_job(kafka_jobs, topics):
    return functools.partial(kafka_jobs, topics)


def _shift(events: list[Event], user_offset: int, ts_offset: int) -> list[Event]:
    return [e._replace(user_id=int(e.user_id) + user_offset, ts=e.ts + ts_offset) for e in events]


def test_a_partition_an_hour_behind_is_not_late(kafka_broker, topics, start_job):
    base = generated_log(300, seed=12)[:300]
    ahead = _shift(base, 0, HOUR_MS)  # partition 0: the present
    behind = _shift(base, 10_000, 0)  # partition 1: a backlog an hour older, other shoppers
    send(kafka_broker.bootstrap, topics["input_topic"], {0: ahead, 1: behind})  # both waiting when the job starts
    job = start_job()
    accepted = len({(e.user_id, e.item_id, e.behavior, e.ts) for e in ahead + behind})
    lists = read(kafka_broker.bootstrap, topics["output_topic"], accepted, job)
    assert job.poll() is None, "job died"
    late = list(consume(kafka_broker.bootstrap, topics["late_topic"], timeout_s=5))
    assert len(late) == 0, f"{len(late)} events of the partition behind judged late"
    assert len(lists) == accepted


def test_a_quiet_partition_stops_holding_the_watermark(kafka_broker, topics, start_job):
    job = start_job(STREAMREC_JOB_SOURCE_IDLENESS_MS="1000")
    events = [e._replace(ts=T_START + i * 1000) for i, e in enumerate(generated_log(100, seed=5)[:100])]
    send(kafka_broker.bootstrap, topics["input_topic"], {0: events})  # partition 1 gets nothing
    accepted = len({(e.user_id, e.item_id, e.behavior, e.ts) for e in events})
    assert len(read(kafka_broker.bootstrap, topics["output_topic"], accepted, job)) == accepted
    time.sleep(4)  # partition 1 idle past 1 s: the watermark follows partition 0 alone
    stale = Event(777_777, events[0].item_id, events[0].category_id, "pv", T_START)  # 99 s behind, 5 s allowed
    send(kafka_broker.bootstrap, topics["input_topic"], {0: [stale]})
    deadline = time.monotonic() + 60
    late: list = []
    while not late and time.monotonic() < deadline:
        late = list(consume(kafka_broker.bootstrap, topics["late_topic"], timeout_s=3))
    assert job.poll() is None, "job died"
    assert [r.value["event"]["user_id"] for r in late] == [777_777]

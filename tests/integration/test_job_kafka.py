"""The job on the minicluster between real Kafka topics."""

from __future__ import annotations

import functools
import os
import signal
import time

import msgpack
import pytest
from kafka import KafkaProducer

from streamrec.kafka_io import consume, replay
from streamrec.lab.local.procs import stop_group
from tests.support.job_fixtures import generated_log, read_lists
from udfs.reasons import REASON_CODES
from udfs.records import ADDED_OUTPUT_FIELDS, OUTPUT_FIELDS, SCHEMA_VERSION

pytestmark = [pytest.mark.kafka, pytest.mark.flink]

POISON = [
    b"\xc1\xc1",                                                   # not msgpack
    msgpack.packb({"user_id": 1}),                                  # missing fields
    msgpack.packb({"user_id": 1, "item_id": 2, "category_id": 3, "behavior": "pv", "ts": "x"}),
    b"\x81\xa1a\xc6\xff\xff\xff\xff",                               # bin header claiming 4 GB
    msgpack.packb({"user_id": 1, "item_id": 2**64 - 1, "category_id": 3, "behavior": "pv", "ts": 1}),
]


@pytest.fixture
def topics(unique_topic):
    return {f: unique_topic(f.split("_")[0]) for f in ("input_topic", "output_topic", "dlq_topic", "late_topic")}


@pytest.fixture
def start_job(kafka_jobs, topics):
    """Starts `streamrec run` (Kafka in, Kafka out) with extra env settings; stops it after the test."""
    return functools.partial(kafka_jobs, topics)


@pytest.fixture
def running_job(start_job):
    return start_job()


def test_one_record_per_accepted_event_and_poison_on_dlq(kafka_broker, topics, running_job):
    events = generated_log(600, seed=9)
    accepted = len({(e.user_id, e.item_id, e.behavior, e.ts) for e in events})  # duplicates are ignored
    prod = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
    half = len(events) // 2
    replay(events[:half], kafka_broker.bootstrap, topics["input_topic"])
    for raw in POISON:
        prod.send(topics["input_topic"], raw)
    prod.flush()
    replay(events[half:], kafka_broker.bootstrap, topics["input_topic"])

    deadline = time.monotonic() + 180
    out = []
    while len(out) < accepted and time.monotonic() < deadline and running_job.poll() is None:
        out += list(consume(kafka_broker.bootstrap, topics["output_topic"], timeout_s=5,
                            group_id="verify-" + topics["output_topic"]))
    assert running_job.poll() is None, "job died"
    assert len(out) == accepted
    users = {str(e.user_id) for e in events}
    for r in out:
        v = r.value
        assert r.key == str(v["user_id"]).encode() and r.key.decode() in users
        assert set(v) == {*OUTPUT_FIELDS, *ADDED_OUTPUT_FIELDS}
        assert v["schema_version"] == SCHEMA_VERSION
        assert len(v["items"]) == len(v["scores"])  # descending only with ranking.max_per_category 0
        assert len(v["reasons"]) == len(v["items"]) and all(x["code"] in REASON_CODES for x in v["reasons"])
    dlq = list(consume(kafka_broker.bootstrap, topics["dlq_topic"], timeout_s=5))
    assert sorted(d.value["raw"] for d in dlq) == sorted(POISON)
    assert all(d.value["topic"] == topics["input_topic"] and d.value["offset"] >= half for d in dlq)
    assert running_job.poll() is None, "job must keep running after poison input"


def test_event_behind_the_watermark_goes_to_the_late_topic(kafka_broker, topics, running_job):
    events = generated_log(50, seed=4)
    replay(events, kafka_broker.bootstrap, topics["input_topic"])
    deadline = time.monotonic() + 120
    out: list = []
    while len(out) < 1 and time.monotonic() < deadline:
        out += list(consume(kafka_broker.bootstrap, topics["output_topic"], timeout_s=3, max_records=1))
    assert out, "job produced nothing"
    time.sleep(2)  # several watermark intervals: the watermark is now max(ts) - out_of_orderness
    stale = events[-1]._replace(ts=max(e.ts for e in events) - 3_600_000, item_id=424242)
    replay([stale], kafka_broker.bootstrap, topics["input_topic"])
    late: list = []
    deadline = time.monotonic() + 60
    while not late and time.monotonic() < deadline:
        late = list(consume(kafka_broker.bootstrap, topics["late_topic"], timeout_s=3))
    assert len(late) == 1
    assert late[0].value["event"]["item_id"] == 424242 and late[0].value["reason"].startswith("late")
    assert late[0].key == str(stale.user_id).encode()
    recs = list(consume(kafka_broker.bootstrap, topics["output_topic"], timeout_s=3))
    assert all(r.value["trigger"]["item_id"] != 424242 for r in recs)


def test_exactly_once_output_is_complete_and_duplicate_free(kafka_broker, topics, start_job):
    from udfs.config import env_var

    job = start_job(**{env_var("kafka", "delivery_guarantee"): "exactly-once"})
    events = generated_log(300, seed=8)
    accepted = len({(e.user_id, e.item_id, e.behavior, e.ts) for e in events})
    replay(events, kafka_broker.bootstrap, topics["input_topic"])
    out: list = []
    deadline = time.monotonic() + 180
    while len(out) < accepted and time.monotonic() < deadline and job.poll() is None:
        # read_committed (kafka_io.consume): lists appear once their checkpoint commits the transaction
        out += list(consume(kafka_broker.bootstrap, topics["output_topic"], timeout_s=5,
                            group_id="verify-" + topics["output_topic"]))
    assert job.poll() is None
    keys = [(r.value["user_id"], r.value["seq"]) for r in out]
    assert len(keys) == len(set(keys)) == accepted


def test_a_stopped_job_leaves_no_flink_scratch_behind(kafka_broker, topics, start_job, tmp_path):
    """Stopped by SIGTERM, as a supervisor stops it, the MiniCluster never closes: its RPC jar and
    working directory (about 35 MB) stayed in the temp directory after every run until the job kept
    them in a directory of its own and removed that on exit (jobs/scratch.py)."""
    temp = tmp_path / "temp"
    temp.mkdir()
    job = start_job(TMPDIR=str(temp))
    replay(generated_log(200, seed=4), kafka_broker.bootstrap, topics["input_topic"])
    assert read_lists(kafka_broker.bootstrap, topics["output_topic"], 1, job), "no list came out"
    run_dirs = [d for d in (temp / f"streamrec-flink-{os.getuid()}").iterdir() if d.name.startswith(f"{job.pid}-")]
    assert len(run_dirs) == 1, "the job keeps its scratch under its own directory"
    assert list(run_dirs[0].glob("flink-rpc-akka*.jar")), "Flink put its RPC jar somewhere else"
    stop_group(job)
    assert job.returncode == -signal.SIGTERM, "it still dies of the signal"
    assert not run_dirs[0].exists()
    assert "Traceback" not in (tmp_path / "job0.log").read_text(errors="replace"), "a quiet stop"

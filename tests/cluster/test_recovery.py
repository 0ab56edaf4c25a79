"""Recovery on a real broker: the job fails once after a completed checkpoint and restarts from it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import defaultdict

import pytest

from jobs.layout import JOB_SCRIPT, PROJECT_ROOT
from streamrec.kafka_io import consume, replay
from streamrec.lab.local.procs import stop_group
from tests.support.job_fixtures import generated_log, job_env
from tests.support.scenario import PeakRss, group_rss_kb, marked_rss_kb, report
from udfs.config import env_var

pytestmark = [pytest.mark.kafka, pytest.mark.flink]

FAIL_AFTER_S = 8.0  # > 3 checkpoint intervals (job_env sets 2 s)


def _read_all(bootstrap: str, topic: str, want: int, deadline: float, job: subprocess.Popen) -> list:
    """Everything committed on ``topic`` once at least ``want`` records are there (read_committed)."""
    out: list = []
    while time.monotonic() < deadline and job.poll() is None:
        out = list(consume(bootstrap, topic, timeout_s=4))
        if len(out) >= want:
            time.sleep(3)  # let anything extra (duplicates) arrive too
            return list(consume(bootstrap, topic, timeout_s=4))
    return out


# Batching on: requests wait up to 1 s in the ranking stage's buffers, so checkpoints (every 2 s)
# hold buffered requests, and the restore must rank each of them exactly once.
BATCHING = {env_var("ranking", "batching"): "true", env_var("ranking", "batch_timeout_ms"): "1000",
            env_var("ranking", "batch_rows"): "100000", env_var("job", "parallelism"): "2"}


@pytest.mark.parametrize(("guarantee", "batching"),
                         [("exactly-once", False), ("at-least-once", False), ("exactly-once", True)],
                         ids=["exactly-once", "at-least-once", "exactly-once-batched"])
def test_failure_after_a_checkpoint_loses_nothing(guarantee, batching, kafka_broker, unique_topic, fixture_artifact,
                                                  tmp_path):
    topics = {f: unique_topic(f.split("_")[0]) for f in ("input_topic", "output_topic", "dlq_topic", "late_topic")}
    marker = tmp_path / "failed-once"
    flink_logs = tmp_path / "flink-log"
    flink_logs.mkdir()
    env = job_env(kafka_broker.bootstrap, topics, fixture_artifact, FLINK_LOG_DIR=str(flink_logs),
                  **{env_var("kafka", "delivery_guarantee"): guarantee, **(BATCHING if batching else {})})
    events = generated_log(400, seed=31)
    distinct = {(e.user_id, e.item_id, e.behavior, e.ts) for e in events}
    first = events[:200]
    n_first = len({(e.user_id, e.item_id, e.behavior, e.ts) for e in first})
    with (tmp_path / "job.log").open("wb") as log:
        script = PROJECT_ROOT / "tests" / "support" / "fault_job.py"
        job = subprocess.Popen([sys.executable, str(script), str(marker), str(FAIL_AFTER_S)],
                               cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    rss = PeakRss(lambda: group_rss_kb(job.pid)).__enter__()
    try:
        replay(first, kafka_broker.bootstrap, topics["input_topic"])
        before = _read_all(kafka_broker.bootstrap, topics["output_topic"], n_first, time.monotonic() + 180, job)
        assert len(before) >= n_first, f"first half: {len(before)}/{n_first} lists"
        assert not marker.exists()
        time.sleep(FAIL_AFTER_S)  # checkpoints complete meanwhile; the next event triggers the failure
        replay(events[200:], kafka_broker.bootstrap, topics["input_topic"])
        out = _read_all(kafka_broker.bootstrap, topics["output_topic"], len(distinct), time.monotonic() + 240, job)
        assert job.poll() is None, "job exited"
        flink_log = "".join(f.read_text(errors="replace") for f in flink_logs.glob("*.log"))
    finally:
        rss.__exit__()
        stop_group(job)

    assert marker.exists(), "the injected failure never fired"
    assert "injected failure" in flink_log and "RESTARTING" in flink_log, "no restart in the Flink log"
    duplicates = _seq_and_completeness(out, distinct)
    if guarantee == "exactly-once":
        assert duplicates == 0
    report(f"keyed function throws once after checkpoints, {guarantee}{', batched ranking' if batching else ''}",
           events_in=len(distinct),
           lists_out=len(out), duplicates=duplicates, missing=0, restarts=_restarts(flink_log),
           peak_rss_mb=rss.peak_mb)


def _restarts(flink_log: str) -> int:
    """Job restarts recorded in a Flink log."""
    return flink_log.count("switched from state RUNNING to RESTARTING")


def _seq_and_completeness(out: list, distinct: set) -> int:
    """Nothing missing, no seq gaps, and a replayed list repeats its (user, seq) with the
    same trigger (state was restored, not rebuilt); returns the duplicate count."""
    by_key: dict = {}
    seqs: dict = defaultdict(set)
    for r in out:
        v = r.value
        t = v["trigger"]
        trigger = (v["user_id"], t["item_id"], t["behavior"], t["ts"])
        assert by_key.setdefault((v["user_id"], v["seq"]), trigger) == trigger
        seqs[v["user_id"]].add(v["seq"])
    assert set(by_key.values()) == distinct, f"{len(distinct - set(by_key.values()))} lists missing"
    assert all(s == set(range(1, len(s) + 1)) for s in seqs.values()), "gap in a user's seq"
    return len(out) - len(by_key)


@pytest.mark.cluster
def test_taskmanager_killed_mid_stream_restarts_from_checkpoint(kafka_broker, unique_topic, fixture_artifact,
                                                                 tmp_path):
    from streamrec.lab.local.flink_cluster import StandaloneCluster

    topics = {f: unique_topic(f.split("_")[0]) for f in ("input_topic", "output_topic", "dlq_topic", "late_topic")}
    events = generated_log(400, seed=33)
    distinct = {(e.user_id, e.item_id, e.behavior, e.ts) for e in events}
    n_first = len({(e.user_id, e.item_id, e.behavior, e.ts) for e in events[:200]})
    cluster = StandaloneCluster(tmp_path / "flink", slots=1).start()
    rss = PeakRss(lambda: marked_rss_kb(str(cluster.work_dir))).__enter__()
    try:
        env = job_env(kafka_broker.bootstrap, topics, fixture_artifact)
        job_id = cluster.submit_python(str(JOB_SCRIPT),
                                       ["--source", "kafka", "--sink", "kafka"], env=env, python=sys.executable)
        replay(events[:200], kafka_broker.bootstrap, topics["input_topic"])
        deadline = time.monotonic() + 180
        while len(list(consume(kafka_broker.bootstrap, topics["output_topic"], timeout_s=3))) < n_first:
            assert time.monotonic() < deadline, "no output before the kill"
        time.sleep(5)  # checkpoints (every 2 s) complete
        (victim,) = cluster.taskmanager_pids()
        os.kill(victim, signal.SIGKILL)
        replay(events[200:], kafka_broker.bootstrap, topics["input_topic"])  # while the job is down
        cluster.start_taskmanager()
        deadline = time.monotonic() + 240
        out: list = []
        while len(out) < len(distinct) and time.monotonic() < deadline:
            out = list(consume(kafka_broker.bootstrap, topics["output_topic"], timeout_s=4))
        time.sleep(3)
        out = list(consume(kafka_broker.bootstrap, topics["output_topic"], timeout_s=4))
        failures = cluster.rest(f"/jobs/{job_id}/exceptions").get("exceptionHistory", {}).get("entries", [])
        state = cluster.job_state(job_id)
        cluster.flink("cancel", "-m", cluster.address, job_id)
    finally:
        rss.__exit__()
        cluster.stop()
    assert state == "RUNNING"
    assert failures, "no failure recorded: the kill did not hit the job"
    duplicates = _seq_and_completeness(out, distinct)
    report("TaskManager (with its embedded Python worker) SIGKILLed mid-stream, at-least-once",
           events_in=len(distinct), lists_out=len(out), duplicates=duplicates, missing=0, restarts=len(failures),
           peak_rss_mb=rss.peak_mb)


def test_broker_down_for_30s_then_back(kafka_jars, fixture_artifact, tmp_path):
    from streamrec.lab.local.kafka import LocalKafka

    broker = LocalKafka(tmp_path / "kafka").start()
    topics = {f: f"outage-{f.split('_')[0]}" for f in ("input_topic", "output_topic", "dlq_topic", "late_topic")}
    broker.create_topics(topics.values())
    events = generated_log(400, seed=35)
    distinct = {(e.user_id, e.item_id, e.behavior, e.ts) for e in events}
    n_first = len({(e.user_id, e.item_id, e.behavior, e.ts) for e in events[:200]})
    flink_logs = tmp_path / "flink-log"
    flink_logs.mkdir()
    env = job_env(broker.bootstrap, topics, fixture_artifact, FLINK_LOG_DIR=str(flink_logs))
    with (tmp_path / "job.log").open("wb") as log:
        job = subprocess.Popen([sys.executable, "-m", "streamrec.cli", "run", "--source", "kafka", "--sink", "kafka"],
                               env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    rss = PeakRss(lambda: group_rss_kb(job.pid)).__enter__()
    try:
        replay(events[:200], broker.bootstrap, topics["input_topic"])
        out = _read_all(broker.bootstrap, topics["output_topic"], n_first, time.monotonic() + 180, job)
        assert len(out) >= n_first
        time.sleep(3)
        broker.stop()
        time.sleep(30)
        broker = LocalKafka(tmp_path / "kafka", port=broker.port, controller_port=broker.controller_port,
                            keep_data=True).start()
        replay(events[200:], broker.bootstrap, topics["input_topic"])
        out = _read_all(broker.bootstrap, topics["output_topic"], len(distinct), time.monotonic() + 300, job)
        alive = job.poll() is None
    finally:
        rss.__exit__()
        stop_group(job)
        broker.stop()
    flink_log = "".join(f.read_text(errors="replace") for f in flink_logs.glob("*.log"))
    assert alive, "the job gave up instead of recovering"
    duplicates = _seq_and_completeness(out, distinct)
    report("Kafka broker stopped for 30 s, then back, at-least-once", events_in=len(distinct), lists_out=len(out),
           duplicates=duplicates, missing=0, restarts=_restarts(flink_log),
           peak_rss_mb=rss.peak_mb)

"""`flink run -py jobs/recommend_job.py` against a standalone cluster started from bin/."""

from __future__ import annotations

import sys
import time

import pytest

from jobs.layout import JOB_SCRIPT
from streamrec.kafka_io import consume, replay
from streamrec.lab.local.flink_cluster import StandaloneCluster
from tests.support.job_fixtures import generated_log, job_env

pytestmark = [pytest.mark.cluster, pytest.mark.kafka]



def test_submit_see_output_cancel(kafka_broker, unique_topic, fixture_artifact, tmp_path):
    topics = {f: unique_topic(f.split("_")[0]) for f in ("input_topic", "output_topic", "dlq_topic", "late_topic")}
    cluster = StandaloneCluster(tmp_path / "flink").start()
    try:
        env = job_env(kafka_broker.bootstrap, topics, fixture_artifact)
        script = str(JOB_SCRIPT)
        job_id = cluster.submit_python(script, ["--source", "kafka", "--sink", "kafka"], env=env, python=sys.executable)
        events = generated_log(200, seed=13)
        replay(events, kafka_broker.bootstrap, topics["input_topic"])
        out = []
        deadline = time.monotonic() + 180
        while len(out) < len(events) and time.monotonic() < deadline:
            out += list(consume(kafka_broker.bootstrap, topics["output_topic"], timeout_s=5,
                                group_id="verify-" + topics["output_topic"]))
        assert cluster.job_state(job_id) == "RUNNING"
        unique = len({(e.user_id, e.item_id, e.behavior, e.ts) for e in events})
        assert len(out) == unique
        assert {r.value["model_version"] for r in out} == {"fixture-covisit"}
        cluster.flink("cancel", "-m", cluster.jobmanager, job_id)
        deadline = time.monotonic() + 60
        while cluster.job_state(job_id) != "CANCELED" and time.monotonic() < deadline:
            time.sleep(1)
        assert cluster.job_state(job_id) == "CANCELED"
    finally:
        cluster.stop()

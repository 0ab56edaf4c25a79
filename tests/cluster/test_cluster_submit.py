"""`flink run -py jobs/recommend_job.py` against a standalone cluster started from bin/."""

from __future__ import annotations

import re
import sys
import time

import pytest
import yaml

from jobs.layout import JOB_SCRIPT, PROJECT_ROOT
from streamrec.kafka_io import consume, replay
from streamrec.lab.local.flink_cluster import StandaloneCluster
from tests.support.job_fixtures import generated_log, job_env

pytestmark = [pytest.mark.cluster, pytest.mark.kafka]


def compose_submit_guard() -> str:
    """What compose's one-shot submit looks for in `flink list -r` before it submits (docker/compose.yaml)."""
    compose = yaml.safe_load((PROJECT_ROOT / "docker" / "compose.yaml").read_text())
    script = compose["services"]["submit"]["command"][-1]
    return re.search(r"flink list -r -m \S+ \| grep -q '([^']+)'", script).group(1)


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
        # compose's submit finds this running job by the same listing, so a second `up` submits nothing
        assert compose_submit_guard() in cluster.flink("list", "-r", "-m", cluster.jobmanager)
        unique = len({(e.user_id, e.item_id, e.behavior, e.ts) for e in events})
        assert len(out) == unique
        assert {r.value["model_version"] for r in out} == {"fixture-covisit"}
        cluster.flink("cancel", "-m", cluster.jobmanager, job_id)
        deadline = time.monotonic() + 60
        while cluster.job_state(job_id) != "CANCELED" and time.monotonic() < deadline:
            time.sleep(1)
        assert cluster.job_state(job_id) == "CANCELED"
        assert compose_submit_guard() not in cluster.flink("list", "-r", "-m", cluster.jobmanager)
    finally:
        cluster.stop()

"""`streamrec run` between topics of a broker that takes only SASL/PLAIN clients on the listener it is given."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from streamrec.kafka_io import consume, replay
from streamrec.lab.local.procs import stop_group
from tests.conftest import SASL_PASSWORD, SASL_USER
from tests.support.job_fixtures import generated_log, job_env
from udfs.config import env_var

pytestmark = [pytest.mark.kafka, pytest.mark.flink]


def test_job_reads_and_writes_through_sasl_with_the_password_from_a_file(sasl_kafka_broker, fixture_artifact,
                                                                         tmp_path):
    topics = {f: f"sasl-job-{f.split('_')[0]}-{time.monotonic_ns()}"
              for f in ("input_topic", "output_topic", "dlq_topic", "late_topic")}
    sasl_kafka_broker.create_topics(topics.values())  # through the plaintext listener
    password_file = tmp_path / "kafka-password"
    password_file.write_text(SASL_PASSWORD + "\n")
    security_env = {env_var("kafka", "security_protocol"): "SASL_PLAINTEXT",
                    env_var("kafka", "sasl_mechanism"): "PLAIN",
                    env_var("kafka", "sasl_username"): SASL_USER,
                    env_var("kafka", "sasl_password_file"): str(password_file)}
    env = job_env(sasl_kafka_broker.sasl_bootstrap, topics, fixture_artifact, **security_env)
    security = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
                "sasl_plain_username": SASL_USER, "sasl_plain_password": SASL_PASSWORD}
    log_path = tmp_path / "job.log"
    with log_path.open("wb") as log:
        job = subprocess.Popen([sys.executable, "-m", "streamrec.cli", "run", "--source", "kafka", "--sink", "kafka"],
                               env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        events = generated_log(120, seed=5)
        accepted = len({(e.user_id, e.item_id, e.behavior, e.ts) for e in events})
        replay(events, sasl_kafka_broker.sasl_bootstrap, topics["input_topic"], security=security)
        out: list = []
        deadline = time.monotonic() + 180
        while len(out) < accepted and time.monotonic() < deadline and job.poll() is None:
            out += list(consume(sasl_kafka_broker.sasl_bootstrap, topics["output_topic"], timeout_s=5,
                                group_id="verify-" + topics["output_topic"], security=security))
        assert job.poll() is None, "job died:\n" + log_path.read_text()[-3000:]
    finally:
        stop_group(job)
    assert len(out) == accepted
    assert {r.key for r in out} <= {str(e.user_id).encode() for e in events}
    assert SASL_PASSWORD not in log_path.read_text()

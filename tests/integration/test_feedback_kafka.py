"""Online feedback from a running job: the feedback topic gets one record per event that followed a
list of the same shopper, each naming the rank of its item in that list, and the job's counters per
model version and arm reach Prometheus."""

from __future__ import annotations

import re
import time
import urllib.request
from collections import Counter

import pytest

from streamrec.cli import main as cli
from streamrec.kafka_io import consume, replay
from streamrec.lab.local.kafka import free_ports
from tests.support.job_fixtures import generated_log
from udfs.config import TOPIC_FIELDS, env_var
from udfs.events import Event
from udfs.records import decode_feedback_record

pytestmark = [pytest.mark.kafka, pytest.mark.flink]

PREFIX = "flink_taskmanager_job_task_operator_model_version_arm_"


def _drain(bootstrap: str, topic: str, want: int, job, timeout_s: float = 180) -> list:
    out: list = []
    deadline = time.monotonic() + timeout_s
    while len(out) < want and time.monotonic() < deadline:
        assert job.poll() is None, "job died"
        out += [r.value for r in consume(bootstrap, topic, timeout_s=3, group_id="verify-" + topic)]
    return out


def _scraped(port: int, name: str) -> dict[str, float]:
    """Label set -> value of one metric on the job's /metrics."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    return {m.group(1): float(m.group(2)) for m in re.finditer(rf"^{PREFIX}{name}{{(.*)}} (\S+)$", text, re.M)}


def test_feedback_topic_and_counters_per_version(kafka_broker, unique_topic, kafka_jobs, capsys):
    topics = {f: unique_topic(f.split("_")[0]) for f in TOPIC_FIELDS}
    port = free_ports(1)[0]
    job = kafka_jobs(topics, **{env_var("metrics", "prometheus_port"): str(port)})
    bootstrap = kafka_broker.bootstrap
    events = generated_log(400, seed=8)
    replay(events, bootstrap, topics["input_topic"])
    n_lists = len({(e.user_id, e.item_id, e.behavior, e.ts) for e in events})  # redeliveries emit nothing
    lists = {(r["user_id"], r["seq"]): r for r in _drain(bootstrap, topics["output_topic"], n_lists, job)}
    assert len(lists) == n_lists
    # every list but each shopper's first is followed by an event scored against it
    want = n_lists - len({user for user, _ in lists})
    feedback = [decode_feedback_record(v) for v in _drain(bootstrap, topics["feedback_topic"], want, job)]
    assert len(feedback) == want > 100
    for fb in feedback:
        shown = lists[(fb.user_id, fb.list_seq)]
        assert lists[(fb.user_id, fb.list_seq + 1)]["trigger"]["ts"] == fb.ts  # the list that came next
        assert fb.k == len(shown["items"]) and fb.model_version == shown["model_version"] and fb.arm is None
        assert fb.rank == (shown["items"].index(fb.item_id) if fb.item_id in shown["items"] else -1)
    assert Counter(fb.model_version for fb in feedback) == {"fixture-covisit": want}
    hits = sum(fb.hit(10) for fb in feedback)
    assert hits > 0

    # Counts reach Flink with the first event after the flush interval: a new shopper's event (no
    # list before it, so no feedback of its own) hands them over.
    time.sleep(1.5)
    last = max(e.ts for e in events)
    replay([Event(10**9, events[0].item_id, events[0].category_id, "pv", last + 1)], bootstrap,
           topics["input_topic"])
    # one series per subtask; the reporter writes "-" in label values as "_"
    labels = ('arm="none"', 'model_version="fixture_covisit"')

    def total(name: str) -> float:
        return sum(v for k, v in _scraped(port, name).items() if all(lab in k for lab in labels))

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and total("feedback_events") != want:
        time.sleep(2)
    assert total("feedback_events") == want
    assert total("feedback_hits_at_10") == hits

    assert cli(["feedback", "--bootstrap-servers", bootstrap, "--feedback-topic", topics["feedback_topic"],
                "--timeout", "3"]) == 0
    out = capsys.readouterr().out
    assert f"last {want} of {want} feedback records" in out
    assert re.search(rf"fixture-covisit\s+none\s+{want}\s+{hits / want:.4f}", out)

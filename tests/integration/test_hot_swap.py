"""Hot swap on a real broker (docs/operations.md 'Hot swap and A/B tests'): a version announced on the
control topic mid-stream ranks every later list within 30 s, with no list lost or repeated; a
corrupt artifact is refused while the live model keeps serving; a job resumed from its
checkpoint serves the version that was live then, not the one its config names."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from jobs.flink_metrics import info_metric_name
from streamrec.cli import main as cli
from streamrec.kafka_io import produce, replay
from streamrec.lab.local.kafka import free_ports
from streamrec.lab.local.procs import stop_group
from tests.integration.test_prometheus_metrics import _samples, _scrape
from tests.support.job_fixtures import covisit_artifact, generated_log, read_lists
from tests.support.scenario import report
from udfs.artifact import manifest_sha256
from udfs.config import TOPIC_FIELDS, env_var
from udfs.control import CONTROL_KEY, ControlRecord

pytestmark = [pytest.mark.kafka, pytest.mark.flink]


def _announce(bootstrap: str, topic: str, version: str, path: Path) -> int:
    at = int(time.time() * 1000)
    record = ControlRecord("activate", version, str(path), at, manifest_sha256=manifest_sha256(path))
    produce(bootstrap, topic, [(CONTROL_KEY.encode(), record.to_bytes())])
    return at



def _timeline(records: list[dict], announced_at: int) -> list[list]:
    """[seconds from the announcement, model version, lists] per second and version, in time order."""
    counts: Counter = Counter(((r["generated_at"] - announced_at) // 1000, r["model_version"]) for r in records)
    return [[t, v, n] for (t, v), n in sorted(counts.items())]


def _triggers(records: list[dict]) -> list[tuple]:
    return [(r["user_id"], r["trigger"]["item_id"], r["trigger"]["behavior"], r["trigger"]["ts"]) for r in records]


def _distinct(events) -> set[tuple]:
    return {(e.user_id, e.item_id, e.behavior, e.ts) for e in events}


def test_swap_mid_stream_then_a_corrupt_artifact_then_a_restore(kafka_broker, unique_topic, kafka_jobs,
                                                                 fixture_artifact, tmp_path):
    bootstrap = kafka_broker.bootstrap
    topics = {f: unique_topic(f.split("_")[0]) for f in (*TOPIC_FIELDS, "control_topic")}
    v2 = covisit_artifact(tmp_path / "v2", "fixture-v2")
    flink_logs = tmp_path / "flink-log"
    flink_logs.mkdir()
    port = free_ports(1)[0]
    registry = tmp_path / "registry"
    registry_flags = ["--registry", str(registry), "--control-topic", topics["control_topic"],
                      "--bootstrap-servers", bootstrap]
    # The job's own artifact is in the registry's history as live, so a rollback can return to it.
    assert cli(["model", "publish", "--artifact", str(fixture_artifact), "--no-announce", *registry_flags]) == 0
    assert cli(["model", "activate", "--version", "fixture-covisit", "--no-announce", *registry_flags]) == 0
    job = kafka_jobs(topics, FLINK_LOG_DIR=str(flink_logs), **{env_var("metrics", "prometheus_port"): str(port),
                                                               env_var("ranking", "registry_dir"): str(registry)})
    events = generated_log(1000, seed=21)
    first, second, third, fourth = events[:300], events[300:600], events[600:900], events[900:]

    # Events flow steadily while the announcement lands in the middle of them.
    replay(first, bootstrap, topics["input_topic"])
    out = read_lists(bootstrap, topics["output_topic"], len(_distinct(first)), job)
    assert len(out) == len(_distinct(first)), "the job did not start serving"

    def feed() -> None:
        for i in range(0, len(second), 30):
            replay(second[i:i + 30], bootstrap, topics["input_topic"])
            time.sleep(1)

    feeder = threading.Thread(target=feed)
    feeder.start()
    time.sleep(3)
    announced_at = int(time.time() * 1000)
    assert cli(["model", "publish", "--artifact", str(v2), *registry_flags]) == 0
    feeder.join()
    want = len(_distinct(first + second))
    out = read_lists(bootstrap, topics["output_topic"], want, job)
    assert job.poll() is None, "job died"
    assert sorted(_triggers(out)) == sorted(_distinct(first + second)), "a list is missing or repeated"
    versions = [r["model_version"] for r in sorted(out, key=lambda r: r["generated_at"])]
    first_new = versions.index("fixture-v2")
    assert set(versions[:first_new]) == {"fixture-covisit"} and set(versions[first_new:]) == {"fixture-v2"}
    swap_ms = sorted(out, key=lambda r: r["generated_at"])[first_new]["generated_at"] - announced_at
    assert swap_ms <= 30_000, f"first list of the new version {swap_ms} ms after the announcement"
    report("hot swap mid-stream", lists=len(out), missing_or_repeated=0, first_new_list_after_announcement_ms=swap_ms,
           timeline=_timeline(out, announced_at))

    # A version damaged in the registry after it was published: refused, and v2 keeps serving.
    v3 = covisit_artifact(tmp_path / "v3", "fixture-v3")
    assert cli(["model", "publish", "--artifact", str(v3), "--no-announce", *registry_flags]) == 0
    model = registry / "fixture-v3" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    _announce(bootstrap, topics["control_topic"], "fixture-v3", registry / "fixture-v3")
    time.sleep(5)  # a refusal must not wait for events to happen
    replay(third[:150], bootstrap, topics["input_topic"])
    want = len(_distinct(first + second + third[:150]))
    out = read_lists(bootstrap, topics["output_topic"], want, job)
    assert len(out) == want
    later = [r for r in out if (r["user_id"], r["trigger"]["item_id"], r["trigger"]["behavior"],
                                r["trigger"]["ts"]) in _distinct(third[:150]) - _distinct(first + second)]
    assert later and {r["model_version"] for r in later} == {"fixture-v2"}
    # Prometheus: the model gauge says which version serves, the counters what became of each announcement.
    deadline, metrics = time.monotonic() + 60, {}
    while time.monotonic() < deadline:
        text = _scrape(port)
        metrics = {n: [s.rsplit(" ", 1)[1] for s in _samples(text, n)] for n in ("model_swaps", "model_swaps_refused")}
        gauges = {("fixture_v2" in s, s.rsplit(" ", 1)[1]) for s in _samples(text, info_metric_name())}
        if metrics["model_swaps_refused"] == ["1.0"] and gauges == {(True, "1.0"), (False, "0.0")}:
            break
        time.sleep(2)
    assert metrics == {"model_swaps": ["1.0"], "model_swaps_refused": ["1.0"]}, metrics
    assert gauges == {(True, "1.0"), (False, "0.0")}, gauges
    time.sleep(4)  # checkpoints (every 2 s) after the swap
    stop_group(job)
    log = "".join(f.read_text(errors="replace") for f in flink_logs.glob("*.log"))
    assert "refused model fixture-v3" in log and "sha256" in log.lower()

    # Resumed from the checkpoint: the config still names the old artifact, lists come from v2.
    # The registry is still the config's: a model comes from there only.
    job = kafka_jobs(topics, **{env_var("job", "resume_from"): "latest",
                                env_var("ranking", "registry_dir"): str(registry)})
    replay(third[150:], bootstrap, topics["input_topic"])
    want = len(_distinct(events[:900]))
    out = read_lists(bootstrap, topics["output_topic"], want, job)
    resumed = [r for r in out if (r["user_id"], r["trigger"]["item_id"], r["trigger"]["behavior"],
                                  r["trigger"]["ts"]) in _distinct(third[150:]) - _distinct(events[:750])]
    assert resumed and {r["model_version"] for r in resumed} == {"fixture-v2"}

    # A rollback reaches the running job: the version live before v2 ranks the next lists.
    assert cli(["model", "rollback", *registry_flags]) == 0
    time.sleep(5)
    replay(fourth, bootstrap, topics["input_topic"])
    out = read_lists(bootstrap, topics["output_topic"], len(_distinct(events)), job)
    rolled = [r for r in out if (r["user_id"], r["trigger"]["item_id"], r["trigger"]["behavior"],
                                 r["trigger"]["ts"]) in _distinct(fourth) - _distinct(events[:900])]
    assert rolled and {r["model_version"] for r in rolled} == {"fixture-covisit"}

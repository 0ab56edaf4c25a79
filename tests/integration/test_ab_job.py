"""A/B arms on a real broker (docs/operations.md 'Hot swap and A/B tests'): every list carries the arm
the salted shopper hash gives, ranked by that arm's model version (a pinned registry version, or the live model),
and a job resumed from its checkpoint keeps every shopper in the same arm."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from streamrec.kafka_io import replay
from streamrec.lab.local.procs import stop_group
from tests.support.job_fixtures import covisit_artifact, generated_log, read_lists
from udfs.ab import assign_arm
from udfs.config import TOPIC_FIELDS, env_var, load_config

pytestmark = [pytest.mark.kafka, pytest.mark.flink]

ARMS = [{"name": "control", "model_version": "live", "share": 0.5},
        {"name": "treatment", "model_version": "fixture-v2", "share": 0.5}]



def test_arms_follow_the_shopper_hash_and_survive_a_restart(kafka_broker, unique_topic, kafka_jobs, tmp_path):
    bootstrap = kafka_broker.bootstrap
    registry = tmp_path / "registry"
    shutil.copytree(covisit_artifact(tmp_path / "v2", "fixture-v2"), registry / "fixture-v2")
    topics = {f: unique_topic(f.split("_")[0]) for f in TOPIC_FIELDS}
    settings = {env_var("ab", "arms"): json.dumps(ARMS), env_var("ab", "salt"): "exp-7",
                env_var("ranking", "registry_dir"): str(registry)}
    arms = load_config(overrides={"ab": {"arms": ARMS, "salt": "exp-7"}}, environ={}).ab.arms
    version = {"control": "fixture-covisit", "treatment": "fixture-v2"}
    events = generated_log(600, seed=23)
    first, second = events[:300], events[300:]
    n_first = len({(e.user_id, e.item_id, e.behavior, e.ts) for e in first})
    n_all = len({(e.user_id, e.item_id, e.behavior, e.ts) for e in events})

    job = kafka_jobs(topics, **settings)
    replay(first, bootstrap, topics["input_topic"])
    before = read_lists(bootstrap, topics["output_topic"], n_first, job)
    assert len(before) == n_first
    time.sleep(5)  # a checkpoint (every 2 s) after the last list
    stop_group(job)
    job = kafka_jobs(topics, **settings, **{env_var("job", "resume_from"): "latest"})
    replay(second, bootstrap, topics["input_topic"])
    out = read_lists(bootstrap, topics["output_topic"], n_all, job)
    assert len(out) == n_all
    after = out[n_first:]

    for r in out:
        arm = assign_arm(str(r["user_id"]), arms, "exp-7").name
        assert (r["arm"], r["model_version"]) == (arm, version[arm])
    arm_before = {r["user_id"]: r["arm"] for r in before}
    both = [r for r in after if r["user_id"] in arm_before]
    assert both, "no shopper has lists before and after the restart"
    assert all(r["arm"] == arm_before[r["user_id"]] for r in both)
    assert {r["arm"] for r in out} == {"control", "treatment"}

"""Online feedback through the job: on a replay, the job's own HR@10 and NDCG@10 (from its feedback
records) are the prequential figures computed from its lists."""

from __future__ import annotations

import pytest

from jobs.entry import absolute_artifact
from jobs.io import CollectionSource, CollectSink, event_rows
from jobs.pipeline import build_pipeline, create_environment
from streamrec.lab.evaluation.prequential import prequential
from tests.support.job_fixtures import generated_log
from udfs.config import load_config

pytestmark = pytest.mark.flink


def test_online_figures_equal_prequential_on_a_replay(fixture_artifact, tmp_path):
    events = generated_log(3000, seed=5)
    ts = sorted(e.ts for e in events)
    since = ts[len(ts) // 2]  # half the log builds state, half is held out
    result = prequential(events, fixture_artifact, since_ms=since, workdir=tmp_path, baselines=())
    online, model = result["online"], result["rankers"]["model"]
    assert result["consistency"]["identical_lists"] == result["consistency"]["job_lists"] > 0
    # every tested pair is one feedback record, and the figures are the same numbers
    assert online["events"] == result["requests"] > 500
    assert 0 < online["hr@10"] == model["hr@10"]
    assert online["ndcg@10"] == pytest.approx(model["ndcg@10"], rel=1e-12, abs=0)


def test_no_feedback_with_batched_ranking(fixture_artifact):
    """Batched, the lists are ranked where there is no shopper state: the job emits them, and no feedback."""
    cfg = absolute_artifact(load_config(environ={}, overrides={
        "ranking": {"artifact_dir": str(fixture_artifact), "provider": "cpu", "top_k": 10, "batching": True},
        "job": {"checkpoint_interval_ms": 0, "out_of_orderness_ms": 10**9}}))
    events = generated_log(300, seed=9)
    env = create_environment(cfg)
    sink = CollectSink()
    build_pipeline(env, cfg, CollectionSource(event_rows(events, "test-input")), sink)
    out = sink.run()
    assert len(out["recommendations"]) > 200 and out["feedback"] == []

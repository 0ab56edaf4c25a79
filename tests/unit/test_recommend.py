"""The recommender without Flink: top-K, bought items, and the fallback on model faults."""

import re

import numpy as np
import pytest

from udfs.config import load_config
from udfs.events import Event
from udfs.records import ADDED_OUTPUT_FIELDS, OUTPUT_FIELDS
from udfs.runtime import build_recommender
from udfs.state import UserState


def recommender(fixture_artifact, **ranking):
    cfg = load_config(environ={}, overrides={"ranking": {"artifact_dir": str(fixture_artifact), "provider": "cpu",
                                                          **ranking}})
    return build_recommender(cfg)


def first_item(rec):
    return next(iter(rec.artifact.tables.covisit))


def test_lists_sorted_top_k_and_sequence_numbers(fixture_artifact):
    rec = recommender(fixture_artifact, top_k=5)
    item = first_item(rec)
    cat = rec.artifact.tables.item_category[item]
    st = UserState()
    outs = []
    for i in range(3):
        ev = Event(7, item, cat, "pv", 1_700_000_000_000 + i)
        assert rec.apply(st, ev)
        outs += rec.recommend([rec.request(st, ev)])
    assert [o["seq"] for o in outs] == [1, 2, 3]
    for o in outs:
        assert len(o["items"]) == 5 and o["scores"] == sorted(o["scores"], reverse=True)
        assert set(o) == {*OUTPUT_FIELDS, *ADDED_OUTPUT_FIELDS} and o["arm"] is None


class Broken:
    choice = type("C", (), {"label": "cpu"})()

    def score(self, batch):
        raise RuntimeError("CUDA error: device lost")


def test_inference_failure_gives_tagged_fallback_list(fixture_artifact):
    rec = recommender(fixture_artifact, top_k=4)
    rec.ranker = Broken()
    item = first_item(rec)
    st = UserState()
    ev = Event(1, item, rec.artifact.tables.item_category[item], "pv", 1_700_000_000_000)
    rec.apply(st, ev)
    req = rec.request(st, ev)
    out = rec.recommend([req])[0]
    assert out["fallback"].startswith("inference_error: RuntimeError: CUDA error")
    assert out["items"] == req.candidates.items[:4]
    assert rec.counters.inference_failures == 1


def test_many_users_in_one_call_equal_one_by_one(fixture_artifact):
    rec = recommender(fixture_artifact, top_k=10)
    items = list(rec.artifact.tables.covisit)[:6]
    reqs = []
    for u, item in enumerate(items):
        st = UserState()
        ev = Event(u, item, rec.artifact.tables.item_category[item], "cart", 1_700_000_000_000)
        rec.apply(st, ev)
        reqs.append(rec.request(st, ev))
    batched = rec.recommend(reqs)
    for req, b in zip(reqs, batched):
        req.state.emitted -= 1  # recommend() advanced it; replay the same step alone
        single = rec.recommend([req])[0]
        assert single["items"] == b["items"]
        np.testing.assert_allclose(single["scores"], b["scores"], rtol=1e-6)


class Scripted:
    """The real ranker, except that its first call's scores go through ``bad`` (a model fault)."""

    def __init__(self, real, bad):
        self.real, self.bad, self.calls = real, bad, 0
        self.choice = real.choice

    def score(self, batch):
        self.calls += 1
        good = self.real.score(batch)
        return self.bad(good.copy()) if self.calls == 1 else good


def _with(s, i, v):
    s[i] = v
    return s


def _raise(s):
    raise RuntimeError("CUDA error: device lost")


BAD_OUTPUTS = {
    "two_columns": (lambda s: np.stack([s, s], axis=1), r"bad_model_output: shape \(\d+, 2\), expected \(\d+,\)"),
    "scalar": (lambda s: np.float32(1.0), r"bad_model_output: shape \(\), expected"),
    "too_few": (lambda s: s[:-3], r"bad_model_output: (\d+) scores for (\d+) candidate rows"),
    "too_many": (lambda s: np.concatenate([s, s]), r"bad_model_output: (\d+) scores for (\d+) candidate rows"),
    "none": (lambda s: None, r"bad_model_output: scores of dtype object"),
    "strings": (lambda s: s.astype(str), r"bad_model_output: scores of dtype <U"),
    "nan": (lambda s: _with(s, 0, np.nan), r"bad_model_output: 1 of \d+ scores not finite"),
    "inf": (lambda s: _with(s, 2, np.inf), r"bad_model_output: 1 of \d+ scores not finite"),
    "all_neg_inf": (lambda s: np.full_like(s, -np.inf), r"bad_model_output: (\d+) of \1 scores not finite"),
    "raises": (_raise, r"inference_error: RuntimeError: CUDA error"),
}


def one_request(rec, user=1, nth=0):
    item = list(rec.artifact.tables.covisit)[nth]
    st = UserState()
    ev = Event(user, item, rec.artifact.tables.item_category[item], "pv", 1_700_000_000_000)
    rec.apply(st, ev)
    return rec.request(st, ev)


@pytest.mark.parametrize("kind", sorted(BAD_OUTPUTS))
def test_bad_model_output_gives_tagged_fallback_and_the_next_call_ranks(fixture_artifact, kind):
    bad, tag = BAD_OUTPUTS[kind]
    rec = recommender(fixture_artifact, top_k=4)
    req = one_request(rec)
    want = rec.recommend([req])[0]
    assert want["fallback"] is None and len(want["items"]) == 4
    rec.ranker = Scripted(rec.ranker, bad)
    out = rec.recommend([req])[0]  # never an exception
    assert re.match(tag, out["fallback"]), out["fallback"]
    m = re.match(r"bad_model_output: (\d+) scores for (\d+)", out["fallback"])
    if m:
        assert m.group(1) != m.group(2) and int(m.group(2)) == len(req.candidates.items)
    assert out["items"] == req.candidates.items[:4]  # generator order
    assert len(out["scores"]) == 4 and all(np.isfinite(out["scores"]))
    failures = (rec.counters.inference_failures, rec.counters.bad_model_outputs)
    assert failures == ((1, 0) if kind == "raises" else (0, 1))
    again = rec.recommend([req])[0]
    assert again["fallback"] is None
    assert again["items"] == want["items"] and again["scores"] == want["scores"]
    assert again["seq"] == out["seq"] + 1 == want["seq"] + 2


def test_non_finite_scores_cost_only_their_own_users_list(fixture_artifact):
    rec = recommender(fixture_artifact, top_k=5)
    reqs = [one_request(rec, user=u, nth=u) for u in range(3)]
    want = rec.recommend(reqs)
    assert all(w["fallback"] is None for w in want)
    n0 = len(reqs[0].candidates.items)
    rec.ranker = Scripted(rec.ranker, lambda s: _with(s, n0 + 1, np.nan))  # a row of the second user
    out = rec.recommend(reqs)
    assert out[1]["fallback"] == f"bad_model_output: 1 of {len(reqs[1].candidates.items)} scores not finite"
    assert out[1]["items"] == reqs[1].candidates.items[:5]
    for i in (0, 2):
        assert out[i]["fallback"] is None and out[i]["items"] == want[i]["items"]
    assert rec.counters.bad_model_outputs == 1


@pytest.mark.parametrize(("setting", "artifact_rule", "listed"), [
    ("auto", True, False), ("auto", False, True), ("exclude", False, False), ("keep", True, True)])
def test_bought_items_follow_the_artifacts_log_unless_the_config_says(fixture_artifact, setting, artifact_rule,
                                                                     listed):
    rec = recommender(fixture_artifact, bought_items=setting)
    rec.artifact.manifest["config"] = {**rec.artifact.manifest.training_config, "exclude_bought": artifact_rule}
    item = first_item(rec)
    st = UserState()
    ev = Event(7, item, rec.artifact.tables.item_category[item], "buy", 1_700_000_000_000)
    assert rec.apply(st, ev)
    assert (item in rec.request(st, ev).candidates.items) is listed

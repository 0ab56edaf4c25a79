"""Evaluation report and the prequential protocol (streamrec/lab/evaluation/report.py, prequential.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from streamrec.lab.evaluation.diversity_sweep import SWEEP_JSON, SWEEP_PNG, format_sweep, sweep
from streamrec.lab.evaluation.prequential import (
    EmittedList,
    ListKey,
    held_out_pairs,
    novelty,
    prequential,
    read_lists,
)
from streamrec.lab.evaluation.report import evaluate, format_table, offline
from streamrec.lab.generator import START_TS_MS, generate_events
from udfs.events import Event
from udfs.logs import write_userbehavior_csv
from udfs.ranking_metrics import list_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[list[Event], Path, Path]:
    """A tiny generated log inside the Taobao span, its CSV and a tiny trained artifact."""
    from model_export.train import train_model

    d = tmp_path_factory.mktemp("tiny")
    events = sorted(generate_events(2500, n_users=40, n_items=300, n_categories=10, seed=5,
                                    start_ts_ms=START_TS_MS, duration_s=2 * 86400),
                    key=lambda e: e.ts)
    csv = d / "log.csv"
    write_userbehavior_csv(events, csv)
    art = train_model(events, out_dir=d / "art", epochs=1, dim=8, hidden=(16,), n_candidates=30,
                      hard_negatives=10, popularity_negatives=2, table_period_ms=None,
                      parity_requests=100, progress=False)
    return events, csv, art


def test_metrics_by_hand() -> None:
    lists = [["a", "b", "c"], ["x", "y"], ["p", "q", "r", "s"]]
    m = list_metrics(lists, ["b", "z", "p"], [True, False, False], catalog_size=10, k=2)
    # ranks: 1 (hit@2), miss, 0 (hit@2)
    assert m["hr@2"] == pytest.approx(2 / 3)
    assert m["ndcg@2"] == pytest.approx((1 / math.log2(3) + 1.0) / 3)
    assert m["mrr"] == pytest.approx((0.5 + 0 + 1.0) / 3)
    assert m["auc"] == pytest.approx(((3 - 1 - 1) / 2 + (4 - 1 - 0) / 3) / 2)
    assert m["novel_hr@2"] == 1.0
    assert m["novel_ndcg@2"] == pytest.approx(1 / math.log2(3))
    assert m["coverage@2"] == pytest.approx(6 / 10)  # a b x y p q


def test_each_event_is_tested_on_the_users_previous_list() -> None:
    log = [Event(1, "i1", "c", "pv", 1000), Event(2, "j1", "c", "pv", 1500), Event(1, "i2", "c", "pv", 2000),
           Event(1, "i1", "c", "cart", 3000), Event(2, "j2", "c", "pv", 3500), Event(1, "i3", "c", "pv", 4000)]
    # held out from ts 2000: user 1 gets lists seq 1 (i2), 2 (i1 cart), 3 (i3); user 2 one list (j2).
    lists: dict[ListKey, EmittedList] = {
        (1, 1): EmittedList(1, 1, ("i2", "pv", 2000), ["i1", "i3", "i2"]),
        (1, 2): EmittedList(1, 2, ("i1", "cart", 3000), ["i9", "i3"]),
        (1, 3): EmittedList(1, 3, ("i3", "pv", 4000), ["i1"]),
        (2, 1): EmittedList(2, 1, ("j2", "pv", 3500), ["j1"]),
    }
    tested = held_out_pairs(lists, novelty(log))
    assert [(t.list_key, t.target, t.novel) for t in tested] == [((1, 1), "i1", False), ((1, 2), "i3", True)]
    m = list_metrics([lists[t.list_key].items for t in tested], [t.target for t in tested],
                     [t.novel for t in tested], catalog_size=5, k=10)
    # i1 at rank 0 of list 1; i3 at rank 1 of list 2.
    assert m["hr@10"] == 1.0
    assert m["ndcg@10"] == pytest.approx((1.0 + 1 / math.log2(3)) / 2)
    assert m["mrr"] == pytest.approx(0.75)
    assert m["novel_hr@10"] == 1.0
    assert m["coverage@10"] == pytest.approx(4 / 5)  # i1 i3 i2 i9


def test_replay_model_equals_offline_model(tiny) -> None:
    """Same held-out pairs and same model (cap off, item rows frozen as offline): the replay's numbers
    are the offline ones. With the rows learning from the stream (the job's default) the candidates differ."""
    events, _, art = tiny
    off = offline(events, art)
    # whole candidate lists in score order, as offline: no diversity cap
    pre = prequential(events, art, use_job=False, top_k=None, max_per_category=0, online_items=False)
    learning = prequential(events, art, use_job=False, top_k=None, max_per_category=0)
    assert learning["requests"] == pre["requests"]
    # the co-visitation order of the candidates moves (the set barely does on a log this small)
    assert learning["rankers"]["covisit"]["ndcg@10"] != pytest.approx(pre["rankers"]["covisit"]["ndcg@10"])
    assert off["tables_match_artifact"]
    assert pre["requests"] == off["requests"] > 50
    assert pre["novel_requests"] == off["novel_requests"]
    assert pre["candidate_recall"] == pytest.approx(off["candidate_recall"])
    for ranker in ("model", "generator", "covisit", "recent", "covisit+recent", "trending"):
        for metric in ("hr@10", "ndcg@10", "mrr", "auc", "novel_hr@10", "coverage@10"):
            assert pre["rankers"][ranker][metric] == pytest.approx(off["rankers"][ranker][metric], abs=1e-9), (
                ranker, metric)


def test_report_offline_writes_json_png_and_table(tiny, tmp_path) -> None:
    _, csv, art = tiny
    rep = evaluate(csv, art, tmp_path / "out", protocols=("offline",))
    data = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert data["model_version"] == rep["model_version"]
    assert set(data["protocols"]) == {"offline"}
    assert "model" in data["protocols"]["offline"]["rankers"]
    assert (tmp_path / "out" / "evaluation.png").read_bytes()[:8] == PNG_SIGNATURE
    table = format_table(rep)
    assert "| offline | model |" in table


def test_diversity_sweep_trades_accuracy_for_diversity_and_writes_json_png(tiny, tmp_path) -> None:
    events, _, art = tiny
    rep = sweep(events, art, tmp_path / "sweep", caps=(0, 1))
    off, cap1 = rep["rows"]
    assert (off["max_per_category"], cap1["max_per_category"]) == (0, 1)
    # the off row is the plain replay's model; a cap of one item per category diversifies every list
    plain = prequential(events, art, use_job=False, max_per_category=0)["rankers"]["model"]
    assert {m: v for m, v in off.items() if m not in ("max_per_category", "seconds", "auc")} == \
        {m: v for m, v in plain.items() if m != "auc"}  # auc: NaN for truncated lists
    assert cap1["ild@10"] > off["ild@10"]
    saved = json.loads((tmp_path / "sweep" / SWEEP_JSON).read_text())
    assert [r["max_per_category"] for r in saved["rows"]] == [0, 1]
    assert (tmp_path / "sweep" / SWEEP_PNG).read_bytes()[:8] == PNG_SIGNATURE
    assert "| 0 (off) |" in format_sweep(rep)


@pytest.mark.flink
def test_prequential_through_the_job_equals_the_replay(tiny, tmp_path) -> None:
    """The key consistency check: the job's lists are the replay's lists, so the numbers agree;
    with the diversity cap on, so that the job and the replay are shown to re-rank alike."""
    _, csv, art = tiny
    rep = evaluate(csv, art, tmp_path / "out", protocols=("prequential",), max_per_category=2)
    pre = rep["protocols"]["prequential"]
    assert pre["max_per_category"] == 2
    c = pre["consistency"]
    assert c["job_lists"] == c["replay_lists"] > 50
    assert c["identical_lists"] == c["job_lists"]
    assert pre["requests"] > 50
    assert pre["rankers"]["model"] == pytest.approx(pre["replay_model"])
    # (the replay's numbers equal the offline protocol's: test_replay_model_equals_offline)
    assert (tmp_path / "out" / "evaluation.png").read_bytes()[:8] == PNG_SIGNATURE
    assert set(json.loads((tmp_path / "out" / "evaluation.json").read_text())["protocols"]) == {"prequential"}
    assert "| prequential | model |" in format_table(rep)


def test_read_lists_accepts_schema_versions_1_and_2(tmp_path) -> None:
    base = {"user_id": 1, "items": ["a", "b"], "scores": [0.5, 0.25], "trigger": {"item_id": "z", "behavior": "pv",
                                                                                  "ts": 7}}
    v1 = {**base, "schema_version": 1, "seq": 1}
    v2 = {**base, "schema_version": 2, "seq": 2, "reasons": [{"code": "recent"}, {"code": "trending"}]}
    path = tmp_path / "recs.jsonl"
    path.write_text(json.dumps(v1) + "\n" + json.dumps(v2) + "\n")
    lists = read_lists(path)
    assert lists[(1, 1)].items == lists[(1, 2)].items == ["a", "b"]
    assert lists[(1, 1)].reasons == [] and lists[(1, 2)].reasons == v2["reasons"]

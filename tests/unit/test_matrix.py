"""The development matrix (streamrec/lab/evaluation/matrix.py): split, aggregation over seeds, wins, files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from streamrec.lab.evaluation.matrix import (
    JSON_FILE,
    METRICS,
    PNG_FILE,
    RANKERS,
    TABLE_FILE,
    discover_logs,
    format_matrix,
    median_until,
    run_matrix,
    summarize,
    threads_per_log,
)
from streamrec.lab.evaluation.prequential import prequential
from streamrec.lab.generator import START_TS_MS, generate_events
from tests.support.onnx_fixtures import covisit_scorer
from udfs.artifact import write_artifact
from udfs.candidates import build_tables
from udfs.events import Event
from udfs.features import Vocab
from udfs.logs import write_userbehavior_csv

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _run(seed: int, values: dict[str, float]) -> dict:
    rankers = {r: {m: values.get(r, 0.0) for m in METRICS} for r in RANKERS}
    return {"seed": seed, "rankers": rankers, "requests": 10, "novel_requests": 4, "candidate_recall": 0.5,
            "novel_candidate_recall": 0.25, "seconds_train": 1.0}


def test_summary_by_hand() -> None:
    base = {"online:covisit": 0.25, "online:recent": 0.10, "covisit": 0.40}  # a frozen re-ranker is no rival
    raw = {"runs": [_run(0, {"model": 0.30, **base}), _run(1, {"model": 0.20, **base}),
                    _run(2, {"model": 0.31, **base})]}
    s = summarize(raw)
    model = s["rankers"]["model"]["ndcg@10"]
    assert model["mean"] == pytest.approx(0.27)
    assert model["std"] == pytest.approx(math.sqrt(((0.03) ** 2 + (0.07) ** 2 + (0.04) ** 2) / 2))
    assert (model["min"], model["max"], model["n"]) == (0.20, 0.31, 3)
    assert s["rankers"]["covisit"]["ndcg@10"]["std"] == 0.0
    win = s["wins"]["ndcg@10"]
    assert (win["best_baseline"], win["win"], win["verdict"]) == ("online:covisit", True, "win")
    assert win["ratio"] == pytest.approx(0.27 / 0.25)


def test_a_tie_is_not_a_win() -> None:
    s = summarize({"runs": [_run(0, {"model": 0.2, "online:trending": 0.2})]})
    assert s["wins"]["novel_hr@10"]["win"] is False
    assert s["wins"]["novel_hr@10"]["best_baseline"] == "online:trending"


def test_the_paired_interval_decides_the_verdict() -> None:
    """A higher mean inside the interval of the difference is a tie; the verdict comes from ``paired``."""
    paired = {"online:recent": {"ndcg@10": {"diff": 0.01, "ci": (-0.02, 0.04), "verdict": "tie"}}}
    s = summarize({"runs": [_run(0, {"model": 0.21, "online:recent": 0.20})], "paired": paired})
    w = s["wins"]["ndcg@10"]
    assert (w["verdict"], w["win"], w["diff_ci"]) == ("tie", False, (-0.02, 0.04))
    table = format_matrix({"logs": {"x": {"summary": s}}, "seeds": [0], "model_source": "replay"})
    assert "tie 0.2100 vs 0.2000 (online:recent, difference -0.0200 to +0.0400)" in table
    assert "wins 1 of 2 (log, metric) cells, ties 1, loses 0" in table  # novel_hr@10: no interval, means decide


def test_median_split() -> None:
    log = [Event(1, "a", 0, "pv", t) for t in (10, 20, 30, 40, 50)]
    assert median_until(log) == 30
    with pytest.raises(ValueError, match="cannot be split"):
        median_until(log[:1])


def test_discover_logs(tmp_path: Path) -> None:
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "b.csv").write_text("")
    (tmp_path / "a.csv").write_text("")
    (tmp_path / "notes.md").write_text("")
    assert [d.name for d in discover_logs(tmp_path)] == ["a", "shop/b"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no \\*.csv"):
        discover_logs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        discover_logs(tmp_path / "missing")


def fixture_trainer(events, until_ms: int, out_dir: Path, seed: int) -> Path:
    """A stand-in for training (fast, seed-independent): co-visitation scores over tables of the first half."""
    train = [e for e in events if e.ts < until_ms]
    items: dict = {}
    cats: dict = {}
    for e in train:
        items[e.item_id] = items.get(e.item_id, 0) + 1
        cats[e.category_id] = cats.get(e.category_id, 0) + 1
    out_dir.mkdir(parents=True, exist_ok=True)
    model = covisit_scorer(out_dir / "scorer.onnx", seq_len=50)
    return write_artifact(out_dir / "art", model, Vocab.build(items, cats, 2), build_tables(train),
                          {"model_version": f"fixture-{seed}", "seq_len": 50, "opset": 17})


def test_matrix_over_two_logs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "dev").mkdir(parents=True)
    logs = {}
    for name, seed in (("a", 1), ("dev/b", 2)):
        ev = sorted(generate_events(1500, n_users=30, n_items=200, n_categories=8, seed=seed,
                                    start_ts_ms=START_TS_MS, duration_s=86400), key=lambda e: e.ts)
        write_userbehavior_csv(ev, data / f"{name}.csv")
        logs[name] = ev
    out = tmp_path / "out"
    rep = run_matrix(data, out, seeds=(0, 1), trainer=fixture_trainer, use_job=False)
    assert set(rep["logs"]) == {"a", "dev/b"}
    on_disk = json.loads((out / JSON_FILE).read_text())
    assert on_disk["logs"]["a"]["summary"]["wins"] == rep["logs"]["a"]["summary"]["wins"]
    assert (out / PNG_FILE).read_bytes().startswith(PNG_SIGNATURE)
    table = (out / TABLE_FILE).read_text()
    assert "| dev/b | model |" in table and "(log, metric) cells" in table
    # The seed changes nothing here: every spread is zero and the model's numbers are those of one
    # direct prequential run on the same split.
    s = rep["logs"]["dev/b"]["summary"]
    assert all(s["rankers"][r][m]["std"] == 0.0 for r in RANKERS for m in METRICS)
    ev = logs["dev/b"]
    until = median_until(ev)
    assert rep["logs"]["dev/b"]["data"]["until_ms"] == until
    art = fixture_trainer(ev, until, tmp_path / "direct", 0)
    direct = prequential(ev, art, since_ms=until, use_job=False, max_per_category=0)
    for m in METRICS:
        assert s["rankers"]["model"][m]["mean"] == pytest.approx(direct["rankers"]["model"][m])
        assert s["rankers"]["covisit"][m]["mean"] == pytest.approx(direct["rankers"]["covisit"][m])
    assert format_matrix(rep) == table.rstrip("\n")


def test_matrix_names_unknown_logs(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("")
    with pytest.raises(ValueError, match="nope"):
        run_matrix(tmp_path, tmp_path / "out", logs=["nope"], trainer=fixture_trainer, use_job=False)


def test_other_seeds_must_share_the_serving_files(tmp_path: Path) -> None:
    from streamrec.lab.evaluation.prequential import check_same_serving

    ev = sorted(generate_events(800, n_users=20, n_items=100, n_categories=5, seed=4, start_ts_ms=START_TS_MS,
                                duration_s=86400), key=lambda e: e.ts)
    a = fixture_trainer(ev, median_until(ev), tmp_path / "a", 0)
    b = fixture_trainer(ev, median_until(ev), tmp_path / "b", 1)
    check_same_serving(a, b)  # same part of the log: only the model may differ
    c = fixture_trainer(ev, ev[len(ev) // 4].ts, tmp_path / "c", 0)
    with pytest.raises(ValueError, match="tables.msgpack"):
        check_same_serving(a, c)
    res = prequential(ev, a, since_ms=median_until(ev), use_job=False, others=[b], max_per_category=0)
    assert res["direct_consistency"]["identical"] == res["direct_consistency"]["lists"] > 0
    other, model = res["others"][str(b)], res["rankers"]["model"]
    assert set(other) == set(model)
    for m in METRICS:  # (AUC is NaN for top-10 lists)
        assert other[m] == model[m]


def test_direct_replay_lists_are_the_recommenders_with_the_cap_off(tmp_path: Path) -> None:
    ev = sorted(generate_events(800, n_users=20, n_items=100, n_categories=5, seed=6, start_ts_ms=START_TS_MS,
                                duration_s=86400), key=lambda e: e.ts)
    until = median_until(ev)
    art = fixture_trainer(ev, until, tmp_path / "a", 0)
    rec = prequential(ev, art, since_ms=until, use_job=False, max_per_category=0)
    direct = prequential(ev, art, since_ms=until, use_job=False, max_per_category=0, replay_model="direct")
    assert direct["replay_model_source"] == "direct" and "direct_consistency" not in direct
    for m in METRICS:
        assert direct["rankers"]["model"][m] == rec["rankers"]["model"][m]
    with pytest.raises(ValueError, match="replay_model"):
        prequential(ev, art, since_ms=until, use_job=False, replay_model="nope")



def test_new_items_only_moves_touched_items_below_new_ones(tmp_path: Path) -> None:
    """The diagnostic list (the model's order, every touched item below every new one) can only
    raise novel hits and lower repeat hits, request by request; the matrix reports its novel HR."""
    ev = sorted(generate_events(1500, n_users=20, n_items=80, n_categories=5, seed=8, start_ts_ms=START_TS_MS,
                                duration_s=86400), key=lambda e: e.ts)
    until = median_until(ev)
    art = fixture_trainer(ev, until, tmp_path / "a", 0)
    res = prequential(ev, art, since_ms=until, use_job=False, max_per_category=0, replay_model="direct")
    model, new_only = res["rankers"]["model"], res["model_new_items_only"]
    n, n_novel = res["requests"], res["novel_requests"]
    assert 0 < n_novel < n

    def repeat_hits(m: dict) -> float:
        return m["hr@10"] * n - m["novel_hr@10"] * n_novel

    assert new_only["novel_hr@10"] > model["novel_hr@10"]
    assert repeat_hits(new_only) < repeat_hits(model)
    raw = {"runs": [{"rankers": res["rankers"], "model_new_items_only": new_only, "requests": n,
                     "novel_requests": n_novel, "candidate_recall": 0.5, "novel_candidate_recall": 0.5,
                     "seconds_train": 1.0}]}
    assert summarize(raw)["novel_hr_new_items_only"] == new_only["novel_hr@10"]

def test_workers_must_be_positive(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("")
    with pytest.raises(ValueError, match="--workers"):
        run_matrix(tmp_path, tmp_path / "out", workers=0, trainer=fixture_trainer, use_job=False)


def test_logs_in_parallel_processes_match_one_process(tmp_path: Path) -> None:
    """``workers`` > 1 runs each log in its own ``streamrec evaluate --matrix`` process, two at
    once: the report must hold every log, in name order, with the figures of an in-process run
    of the same trainer (training is deterministic for a seed and thread count)."""
    pytest.importorskip("torch")
    data = tmp_path / "data"
    (data / "dev").mkdir(parents=True)
    for name, seed in (("dev/b", 5), ("a", 4)):
        ev = sorted(generate_events(900, n_users=25, n_items=120, n_categories=6, seed=seed,
                                    start_ts_ms=START_TS_MS, duration_s=3 * 86400), key=lambda e: e.ts)
        write_userbehavior_csv(ev, data / f"{name}.csv")
    parallel = run_matrix(data, tmp_path / "par", seeds=(0,), use_job=False, isolate=True, workers=2)
    assert list(parallel["logs"]) == ["a", "dev/b"] and parallel["workers"] == 2
    # Each process trained on the threads its share of the cores gives; the in-process run does the same.
    serial = run_matrix(data, tmp_path / "ser", seeds=(0,), use_job=False, train_threads=threads_per_log(2))
    for name in ("a", "dev/b"):
        got = parallel["logs"][name]["summary"]["rankers"]
        want = serial["logs"][name]["summary"]["rankers"]
        assert got == want
    assert json.loads((tmp_path / "par" / JSON_FILE).read_text())["logs"].keys() == {"a", "dev/b"}

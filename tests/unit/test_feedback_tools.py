"""`streamrec feedback` (rolling figures) and `streamrec ab report` (intervals, plot, JSON)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from streamrec.cli import main
from streamrec.feedback_view import RollingFeedback, without_erased
from streamrec.lab.evaluation.ab_report import ab_report, bootstrap_ratios, percentile_interval, write_report
from udfs.records import FeedbackRecord

T0 = 1_700_000_000_000


def fb(user, rank, version="m1", arm=None, k=10):
    return FeedbackRecord(user, 1, "pv", T0, 1, rank, k, version, arm)


def test_rolling_window_drops_the_oldest_records():
    rolling = RollingFeedback(window=3)
    for record in (fb(1, 0, "v1"), fb(1, -1, "v1"), fb(2, 0, "v2"), fb(2, 1, "v2")):
        rolling.add(record)
    figures = rolling.figures()
    # the first record (a v1 hit) has left the window: v1 keeps its miss, v2 both hits
    assert (figures[("v1", "none")].n, figures[("v1", "none")].hr) == (1, 0.0)
    assert (figures[("v2", "none")].n, figures[("v2", "none")].hr) == (2, 1.0)
    assert figures[("v2", "none")].ndcg == pytest.approx((1 + 1 / math.log2(3)) / 2)
    rolling.add(fb(3, -1, "v2"))
    rolling.add(fb(3, -1, "v2"))
    assert set(rolling.figures()) == {("v2", "none")}  # a version that left the window is gone
    assert "last 3 of 6" in rolling.table()
    with pytest.raises(ValueError, match="--window"):
        RollingFeedback(0)


def test_identical_shoppers_give_a_point_interval_and_exact_difference():
    """Every shopper of an arm alike: every resample is the same, so the interval is the point."""
    records = [fb(u, r, arm="control") for u in range(3) for r in (0, -1)]
    records += [fb(10 + u, 1, arm="b") for u in range(4)]
    report = ab_report(records, resamples=200)
    control, b = report["arms"]["control"], report["arms"]["b"]
    assert (control["records"], control["shoppers"], control["hr@10"]) == (6, 3, 0.5)
    assert control["hr@10_ci"] == pytest.approx((0.5, 0.5)) and control["ndcg@10"] == 0.5
    assert b["hr@10"] == 1.0 and b["ndcg@10"] == pytest.approx(1 / math.log2(3))
    assert b["hr@10_diff"] == 0.5 and b["hr@10_diff_ci"] == pytest.approx((0.5, 0.5))
    assert report["control"] == "control"


def _clustered(rng, shoppers, a, b):
    """Shoppers with their own hit rate (Beta(a, b), mean a / (a + b)) and 1 + Poisson(15) records."""
    p = rng.beta(a, b, shoppers)
    n = 1 + rng.poisson(15, shoppers)
    return n, rng.binomial(n, p).astype(np.float64)


def test_shopper_bootstrap_covers_the_true_rate_where_a_record_level_interval_does_not():
    """Simulation: the rate of each dataset's population is a / (a + b) = 0.25 (record counts do not
    depend on the rate). The shopper bootstrap's 95% interval holds it about 95% of the time; a
    binomial interval over records, which treats a shopper's records as independent, far less."""
    rng = np.random.default_rng(1)
    truth, trials = 0.25, 200
    covered = naive_covered = 0
    for _ in range(trials):
        n, hits = _clustered(rng, 80, 0.5, 1.5)
        (reps,) = bootstrap_ratios(n, [hits], 400, rng)
        lo, hi = percentile_interval(reps)
        covered += lo <= truth <= hi
        rate = hits.sum() / n.sum()
        half = 1.96 * math.sqrt(rate * (1 - rate) / n.sum())
        naive_covered += rate - half <= truth <= rate + half
    assert 0.88 <= covered / trials <= 0.99
    assert naive_covered / trials < 0.8


def test_report_files(tmp_path):
    records = [fb(u, u % 12 - 1, arm=arm) for arm in ("control", "treatment") for u in range(40)]
    report = ab_report(records, resamples=100)
    json_path, png_path = write_report(report, tmp_path / "out")
    written = json.loads(json_path.read_text())
    assert set(written["arms"]) == {"control", "treatment"}
    assert written["arms"]["treatment"]["hr@10_diff_ci"][0] <= 0 <= written["arms"]["treatment"]["hr@10_diff_ci"][1]
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="control arm 'x'"):
        ab_report(records, control="x")


def test_commands_read_a_bounded_runs_feedback_file(tmp_path, capsys):
    path = tmp_path / "out.jsonl.feedback.jsonl"
    records = [fb(u, 0 if u % 2 else -1, version="m1", arm=arm) for arm in ("a", "b") for u in range(10)]
    path.write_text("".join(json.dumps(r.to_map()) + "\n" for r in records) + '{"not": "feedback"}\n')
    assert main(["feedback", "--file", str(path), "--window", "5"]) == 0
    out, err = capsys.readouterr()
    assert "last 5 of 20" in out and "1 records skipped" in err
    assert main(["ab", "report", "--file", str(path), "--out", str(tmp_path / "ab"), "--resamples", "50"]) == 0
    out, _ = capsys.readouterr()
    assert "a: 10 records, 10 shoppers (m1)" in out and (tmp_path / "ab" / "ab_report.png").exists()


def test_an_ab_report_keeps_nothing_of_an_erased_shopper_before_their_tombstone(tmp_path, capsys):
    """The job writes a tombstone for an erased shopper to the feedback topic too (the file sink as
    {"tombstone": KEY}); the report over the whole topic leaves out their records before it, keeps what
    they did after it, and the rolling view passes over the tombstone without calling it unreadable."""
    path = tmp_path / "out.jsonl.feedback.jsonl"
    before = [fb(u, 0, arm=arm) for arm in ("a", "b") for u in range(6)]
    after = [fb(3, -1, arm="a")]
    lines = [*(r.to_map() for r in before), {"tombstone": "3"}, *(r.to_map() for r in after)]
    path.write_text("".join(json.dumps(v) + "\n" for v in lines))
    assert without_erased(lines) == [r.to_map() for r in before if r.user_id != 3] + [after[0].to_map()]
    assert main(["ab", "report", "--file", str(path), "--out", str(tmp_path / "ab"), "--resamples", "50"]) == 0
    out, _ = capsys.readouterr()
    assert "a: 6 records, 6 shoppers (m1)" in out and "b: 5 records, 5 shoppers (m1)" in out
    assert main(["feedback", "--file", str(path), "--window", "100"]) == 0
    out, err = capsys.readouterr()
    assert "last 13 of 13" in out and "skipped" not in err

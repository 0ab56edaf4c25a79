"""Baselines that learn online (model_export/online_baselines.py) and the paired comparison
(streamrec/lab/evaluation/paired.py)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from model_export.online_baselines import NAMES, Moment, OnlineBaselines, online_lists, online_metrics, online_scores
from streamrec.lab.evaluation.matrix import DEFAULT_DATA_DIR, median_until
from streamrec.lab.evaluation.paired import compare, paired_difference
from streamrec.lab.evaluation.prequential import Pair
from udfs.events import Event, Id
from udfs.logs import load_events

HOUR = 3_600_000
Lists = dict[tuple[Id, int], list[Id]]


def ev(user: int, item: str, t: int) -> Event:
    return Event(user, item, 0, "pv", t * 1000)


def test_a_pair_first_seen_in_the_stream_reaches_the_next_list() -> None:
    b = OnlineBaselines(half_life_ms=HOUR, k=5)
    b.update(ev(9, "A", 1))
    assert "B" not in b.lists(9)["online:covisit"]  # nothing counted with A yet
    for user in (1, 2, 3):  # shoppers who touch both
        b.update(ev(user, "A", 10 + user))
        b.update(ev(user, "B", 20 + user))
    lists = b.lists(9)
    assert lists["online:covisit"][0] == "B"
    assert lists["online:recent"] == ["A"]
    assert lists["online:covisit+recent"][:2] == ["A", "B"]  # recent first, at most half of k


def test_online_metrics_score_each_baselines_list_at_its_moment() -> None:
    """Shoppers 1-3 touch A then B; shopper 9 touches A (then B: a new item), and shopper 1
    touches A again (then B, which they touched). Co-visitation lists B first at both moments;
    recent lists A alone for shopper 9 and A, B for shopper 1 (B at rank 1)."""
    log = [ev(u, i, t) for u, t in ((1, 10), (2, 20), (3, 30)) for i in ("A",)]
    log += [ev(u, "B", t + 1) for u, t in ((1, 10), (2, 20), (3, 30))]
    log = sorted(log, key=lambda e: e.ts) + [ev(9, "A", 40), ev(1, "A", 41)]
    moments = [Moment(log[-2], "B", True), Moment(log[-1], "B", False)]
    got = online_metrics(log, moments, k=5, names=("online:covisit", "online:recent"))
    assert got["online:covisit"]["hr@5"] == 1.0 and got["online:covisit"]["novel_hr@5"] == 1.0
    assert got["online:covisit"]["ndcg@5"] == 1.0
    assert got["online:recent"]["hr@5"] == 0.5 and got["online:recent"]["novel_hr@5"] == 0.0
    assert got["online:recent"]["ndcg@5"] == pytest.approx(0.5 / math.log2(3))
    assert not any(key.startswith("coverage") for key in got["online:recent"])
    # Request by request, the same lists: the true item's place (-1: not in the list).
    scores = online_scores(log, moments, k=5, names=("online:covisit", "online:recent"))
    assert scores.metrics == got
    assert scores.places == {"online:covisit": [0, 0], "online:recent": [-1, 1]}


def test_pairs_count_within_the_window_only() -> None:
    b = OnlineBaselines(half_life_ms=HOUR, k=10)
    items = ["A", "B", "C", "D", "E", "F", "G"]
    for t, item in enumerate(items):
        b.update(ev(1, item, t))
    # F is 5 events after A: a pair; G is 6 after: none.
    assert b.co["A"].get("F") == 1.0 and "G" not in b.co["A"]
    assert b.co["G"].get("B") == 1.0  # both ways


def test_the_last_items_weigh_one_point_six_point_four() -> None:
    b = OnlineBaselines(half_life_ms=HOUR, k=10)
    b.co.update({"X": {"n1": 1.0}, "Y": {"n2": 1.5}, "Z": {"n3": 2.6}})
    for t, item in enumerate(["Z", "Y", "X"]):  # X last
        b.update(ev(1, item, t))
    order = b.covisit_order(1)
    # scores: n1 1.0*1, n2 0.6*1.5 = 0.9, n3 0.4*2.6 = 1.04 -> n3, n1, n2 (X, Y, Z themselves are pairs too)
    assert [i for i in order if str(i).startswith("n")] == ["n3", "n1", "n2"]


def test_vsknn_votes_with_the_sessions_that_share_the_shoppers_items() -> None:
    b = OnlineBaselines(half_life_ms=HOUR, k=4)
    for user, items in ((1, "AB"), (2, "AB"), (3, "XAE"), (4, "CD"), (5, "CD"), (6, "CD")):
        for t, item in enumerate(items):
            b.update(ev(user, item, 10 * user + t))
    b.update(ev(9, "A", 100))
    order = b.vsknn_order(9)
    # Sessions 1-3 hold A; B is in two of them, E and X in one: D (three sessions, none with A) never.
    assert order[:2] == ["A", "B"] and set(order[2:]) == {"E", "X"}
    b.update(ev(9, "X", 101))  # X is now the latest item: weight 1, A 1/2; only session 3 holds X
    assert b.vsknn_order(9)[0] in {"X", "A"} and "D" not in b.vsknn_order(9)
    assert b.lists(9)["online:vsknn"][:len(b.vsknn_order(9))] == b.vsknn_order(9)

def test_trending_weighs_later_events_more() -> None:
    b = OnlineBaselines(half_life_ms=HOUR, k=2)
    for t in range(3):
        b.update(Event(t, "old", 0, "pv", 0))
    for t in range(2):
        b.update(Event(10 + t, "new", 0, "pv", 3 * HOUR))  # 2 events 3 half-lives later outweigh 3
    assert b.lists(99)["online:trending"] == ["new", "old"]


def test_lists_are_made_after_their_event_and_keyed_like_the_jobs() -> None:
    log = [ev(1, "A", 1), ev(2, "A", 2), ev(2, "B", 3), ev(1, "A", 1), ev(1, "C", 4)]
    at: dict[tuple[Id, str, int, Id], int] = {("A", "pv", 1000, 1): 1, ("C", "pv", 4000, 1): 2}
    out = online_lists(log, at, 3)
    assert set(out) == set(NAMES)
    assert set(out["online:recent"]) == {(1, 1), (1, 2)}
    assert out["online:recent"][(1, 1)] == ["A"]  # the redelivery of A changed nothing
    assert out["online:recent"][(1, 2)] == ["C", "A"]
    assert out["online:covisit"][(1, 2)][0] != "C"  # C has no pair yet: it is not its own neighbour
    with pytest.raises(ValueError, match="unknown online baselines"):
        online_lists(log, at, 3, names=("online:nope",))


def test_paired_verdicts() -> None:
    users = [u for u in range(40) for _ in range(3)]
    assert paired_difference(users, np.zeros(len(users)))["verdict"] == "tie"
    win = paired_difference(users, np.full(len(users), 0.3))
    assert win["verdict"] == "win" and win["ci"][0] == pytest.approx(0.3)
    rng = np.random.default_rng(1)
    noisy = rng.normal(0.0, 1.0, len(users))
    tie = paired_difference(users, noisy - noisy.mean())
    assert tie["verdict"] == "tie" and tie["ci"][0] < 0 < tie["ci"][1]
    assert paired_difference(users, np.full(len(users), -0.1))["verdict"] == "loss"
    assert paired_difference([], np.zeros(0))["verdict"] == "n/a"
    with pytest.raises(ValueError, match="differences"):
        paired_difference([1], np.zeros(2))


def test_compare_averages_the_seeds_gains_per_event() -> None:
    tested = [Pair((u, 1), "hit", novel=u % 2 == 0) for u in range(30)]
    model_a: Lists = {(u, 1): ["hit"] for u in range(30)}  # rank 0 everywhere
    model_b: Lists = {(u, 1): ["x", "y", "z"] for u in range(30)}  # misses everywhere
    base: Lists = {(u, 1): ["x", "hit"] for u in range(30)}  # rank 1: NDCG 1/log2(3)
    out = compare([model_a, model_b], base, tested, 10, resamples=200)
    assert out["ndcg@10"]["diff"] == pytest.approx(0.5 - 1 / math.log2(3))
    assert out["novel_hr@10"]["diff"] == pytest.approx(0.5 - 1.0)
    assert out["novel_hr@10"]["events"] == 15 and out["novel_hr@10"]["verdict"] == "loss"


REFERENCE = {  # ../shared/data/README.md, "Simple baselines on these logs": recent NDCG@10
    "dev/tmall2014_brand.csv": 0.140,
    "dev/jdata2017_head.csv": 0.617,
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_recent_matches_the_data_readmes_figure(name: str) -> None:
    """The shared logs' README reports the online baselines' figures under the same protocol (split at
    the median event, each later event tested on the list made after the shopper's previous event)."""
    path = Path(DEFAULT_DATA_DIR) / name
    if not path.exists():
        pytest.skip(f"{path} not here")
    events = load_events(path, "userbehavior", sort=True)
    until = median_until(events)
    at: dict = {}
    tested: list[Pair] = []
    seq: dict = defaultdict(int)
    touched: dict = defaultdict(set)
    seen = set()
    for e in events:
        if (e.user_id, e.item_id, e.behavior, e.ts) in seen:
            continue
        seen.add((e.user_id, e.item_id, e.behavior, e.ts))
        if e.ts >= until:
            if seq[e.user_id]:
                tested.append(Pair((e.user_id, seq[e.user_id]), e.item_id, e.item_id not in touched[e.user_id]))
            seq[e.user_id] += 1
            at[(e.item_id, e.behavior, e.ts, e.user_id)] = seq[e.user_id]
        touched[e.user_id].add(e.item_id)
    recent = online_lists(events, at, 10, names=("online:recent",))["online:recent"]
    ndcg = np.mean([1 / math.log2(recent[t.list_key].index(t.target) + 2) if t.target in recent[t.list_key] else 0.0
                    for t in tested])
    assert ndcg == pytest.approx(REFERENCE[name], abs=0.0015)

"""In-stream trending: decayed counts in event time, and a new hit reaching recommendations fast."""

import random

from tests.unit.test_recommend import recommender
from udfs.candidates import SRC_TRENDING
from udfs.events import Event
from udfs.state import UserState
from udfs.trending import TrendingCounter

T0 = 1_700_000_000_000
MINUTE = 60_000


def test_recent_activity_outranks_older_activity_by_half_life():
    tc = TrendingCounter(half_life_ms=10 * MINUTE, size=2, refresh_ms=0)
    for i in range(8):  # 8 views an hour ago: worth 8 / 2**6 = 0.125 now
        tc.add(Event(i, "old", 1, "pv", T0))
    for i in range(2):  # 2 views now
        tc.add(Event(i, "new", 2, "pv", T0 + 60 * MINUTE))
    assert tc.top() == ["new", "old"]
    assert abs(tc.scores["old"] / tc.scores["new"] - 8 / 2 / 64) < 1e-9


def test_buys_weigh_more_than_views_and_arrival_order_does_not_matter():
    events = [Event(u, f"i{u % 7}", 1, ("pv", "cart", "fav", "buy")[u % 4], T0 + u * 1000) for u in range(500)]
    a, b = TrendingCounter(refresh_ms=0), TrendingCounter(refresh_ms=0)
    for e in events:
        a.add(e)
    shuffled = events[:]
    random.Random(3).shuffle(shuffled)
    for e in shuffled:
        b.add(e)
    assert a.top() == b.top()
    end = events[-1].ts
    assert set(a.scores) == set(b.scores)
    assert all(abs(a.score_at(i, end) - b.score_at(i, end)) <= 1e-9 * a.score_at(i, end) for i in a.scores)


def test_size_stays_bounded_and_top_refreshes_on_event_time():
    tc = TrendingCounter(capacity=100, size=5, refresh_ms=10_000)
    for i in range(5000):
        tc.add(Event(i, i, 1, "pv", T0 + i))
    assert len(tc.scores) <= 200 and len(tc.categories) == len(tc.scores)
    first = tc.top()
    for _ in range(50):
        tc.add(Event(1, "hit", 9, "buy", T0 + 5000))
    assert tc.top() is first  # same event-time window: cached
    tc.add(Event(1, "hit", 9, "buy", T0 + 20_000))
    assert tc.top()[0] == "hit"


def _after_a_burst(rec):
    """Normal traffic, then 40 shoppers buy an item the model and tables have never seen, within 40 s."""
    assert "brand-new" not in rec.artifact.tables.item_category
    item = next(iter(rec.artifact.tables.covisit))
    cat = rec.artifact.tables.item_category[item]
    for u in range(200):
        rec.apply(UserState(), Event(u, item, cat, "pv", T0 + u * 100))
    for u in range(40):
        rec.apply(UserState(), Event(1000 + u, "brand-new", "new-cat", "buy", T0 + 30_000 + u * 1000))
    cold = UserState()
    trigger = Event(9999, item, cat, "pv", T0 + 75_000)  # 45 s after the burst began
    rec.apply(cold, trigger)
    return rec.request(cold, trigger)


def test_a_new_hit_item_reaches_a_cold_shoppers_list_within_a_minute(fixture_artifact):
    rec = recommender(fixture_artifact)
    req = _after_a_burst(rec)
    i = req.candidates.items.index("brand-new")
    assert req.candidates.sources[i] & SRC_TRENDING
    assert req.candidates.categories[i] == "new-cat"
    out = rec.recommend([req])[0]
    assert out["fallback"] is None and len(out["items"]) == rec.top_k
    # the model has no embedding for it: it gets the reserved last slot, not a learned rank
    assert out["items"][-1] == "brand-new" and out["items"].count("brand-new") == 1
    assert out["reasons"][-1] == {"code": "fresh_hit"}
    assert all(r["code"] != "fresh_hit" for r in out["reasons"][:-1])


def test_without_fresh_slots_the_model_alone_does_not_show_a_new_hit(fixture_artifact):
    rec = recommender(fixture_artifact, fresh_hit_slots=0)
    req = _after_a_burst(rec)
    assert "brand-new" in req.candidates.items
    assert "brand-new" not in rec.recommend([req])[0]["items"]


def test_known_hot_items_take_no_fresh_slot(fixture_artifact):
    rec = recommender(fixture_artifact, fresh_hit_slots=3)
    item = next(iter(rec.artifact.tables.covisit))
    for u in range(100):  # a hit the model knows: ranked by the model, as any other item
        rec.apply(UserState(), Event(u, item, rec.artifact.tables.item_category[item], "buy", T0 + u))
    assert item in rec.trending.top()[:10] and not rec._trending_view()[2]


def test_zero_half_life_turns_stream_trending_off(fixture_artifact):
    rec = recommender(fixture_artifact, trending_half_life_s=0)
    assert rec.trending is None
    st = UserState()
    ev = Event(1, "x", "y", "pv", T0)
    rec.apply(st, ev)
    cands = rec.request(st, ev).candidates
    from_trending = [i for i, s in zip(cands.items, cands.sources) if s & SRC_TRENDING]
    assert from_trending and set(from_trending) <= set(rec.artifact.tables.trending)


def test_kept_top_equals_a_full_scan_through_rescaling_and_pruning():
    rng = random.Random(5)
    tc = TrendingCounter(half_life_ms=MINUTE, capacity=60, size=10, refresh_ms=0)
    ts = T0
    for n in range(20_000):
        # Zipf-ish popularity over 400 items; event time jumps past a half-life now and then,
        # which rescales and prunes, and 400 items overflow the capacity of 60.
        ts += rng.randint(0, 2 * MINUTE if n % 500 == 0 else 300) + rng.random()
        item = min(int(rng.paretovariate(0.8)), 400)
        tc.add(Event(n, item, item % 9, rng.choice(("pv", "pv", "pv", "cart", "fav", "buy")), int(ts)))
        if n % 97 == 0:
            scan = sorted(tc.scores, key=tc.scores.__getitem__, reverse=True)[: tc.size]
            assert tc.top() == scan, n
    assert len(tc.top()) == tc.size


def test_an_unchanged_top_is_the_same_object_so_derived_views_stay_cached():
    tc = TrendingCounter(size=3, refresh_ms=1000)
    for i in range(6):
        tc.add(Event(i, f"i{i}", 1, "buy", T0 + i))
    first = tc.top()
    tc.add(Event(1, "i5", 1, "buy", T0 + 5000))  # a refresh, same order
    assert tc.top() is first
    for _ in range(3):
        tc.add(Event(1, "late-riser", 1, "buy", T0 + 10_000))
    assert tc.top() is not first and tc.top()[0] == "late-riser"

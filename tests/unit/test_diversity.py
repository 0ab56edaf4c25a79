"""The per-category cap: off leaves lists as they were; on, fewer items share a category."""

from collections import Counter

import numpy as np
import pytest

from udfs.config import ConfigError, load_config
from udfs.diversity import OFF, cap_per_category
from udfs.events import Event
from udfs.runtime import build_recommender
from udfs.state import UserState

T0 = 1_700_000_000_000


def test_cap_skips_over_cap_items_and_keeps_order():
    cats = ["a", "a", "a", "b", "a", "c"]
    # cap 2: rows 0, 1 (a), skip 2 (third a), 3 (b), skip 4, 5 (c) -> 4 rows; no fill needed for k=4
    assert cap_per_category(range(6), cats, 2, 4) == [0, 1, 3, 5]
    # cap 1, k=4: 0 (a), 3 (b), 5 (c), then one skipped row fills the tail: row 1
    assert cap_per_category(range(6), cats, 1, 4) == [0, 3, 5, 1]
    assert cap_per_category([5, 4, 3], cats, OFF, 2) == [5, 4]


def test_a_ranked_array_gives_the_list_of_its_python_order():
    """The job passes np.argsort's array; rows come back as plain ints, as for a list."""
    cats = ["a", "a", "a", "b", "a", "c"]
    order = np.argsort(-np.array([6.0, 5.0, 4.0, 3.0, 2.0, 1.0]), kind="stable")
    for cap, k in ((2, 4), (1, 4), (OFF, 3)):
        got = cap_per_category(order, cats, cap, k)
        assert got == cap_per_category(order.tolist(), cats, cap, k)
        assert all(type(i) is int for i in got)


def test_capped_lists_have_the_prefix_property():
    cats = [i % 3 for i in range(30)]
    order = list(reversed(range(30)))
    assert cap_per_category(order, cats, 2, 6) == cap_per_category(order, cats, 2, 20)[:6]


def recommender(art, **ranking):
    return build_recommender(load_config(environ={}, overrides={"ranking": {
        "artifact_dir": str(art), "provider": "cpu", **ranking}}))


def lists(rec, n_users=8):
    tables = rec.artifact.tables
    out = []
    for u, item in enumerate(list(tables.covisit)[:n_users]):
        st = UserState()
        ev = Event(u, item, tables.item_category[item], "pv", T0)
        rec.apply(st, ev)
        req = rec.request(st, ev)
        rec_out = rec.recommend([req])[0]
        cat_of = dict(zip(req.candidates.items, req.candidates.categories, strict=True))
        out.append((rec_out, [cat_of[i] for i in rec_out["items"]], req))
    return out


def test_knob_off_gives_the_score_order_list(fixture_artifact):
    off = lists(recommender(fixture_artifact, top_k=10, max_per_category=OFF))
    for out, _, req in off:
        # what the job emitted before the cap existed: the top 10 by score, ties in generation order
        rec = recommender(fixture_artifact, top_k=len(req.candidates.items), max_per_category=OFF)
        req.state.emitted -= 1
        whole = rec.recommend([req])[0]
        assert out["items"] == whole["items"][:10] and out["scores"] == whole["scores"][:10]
        assert out["scores"] == sorted(out["scores"], reverse=True)


def test_knob_on_gives_fewer_same_category_items(fixture_artifact):
    off = lists(recommender(fixture_artifact, top_k=10, max_per_category=OFF))
    on = lists(recommender(fixture_artifact, top_k=10, max_per_category=2))
    worst_off = max(max(Counter(c).values()) for _, c, _ in off)
    assert worst_off > 2, "the fixture must have lists the cap changes"
    for (a, ca, _), (b, cb, req) in zip(off, on, strict=True):
        assert len(a["items"]) == len(b["items"])
        assert max(Counter(cb).values()) <= max(Counter(ca).values())
        distinct = len(set(req.candidates.categories))
        if distinct * 2 >= len(b["items"]):  # enough categories to honour the cap everywhere
            assert max(Counter(cb).values()) <= 2
        assert len(b["reasons"]) == len(b["items"])


def test_a_negative_or_non_integer_cap_is_refused_naming_the_key():
    for bad in (-1, "two", 2.5):
        with pytest.raises(ConfigError, match="ranking.max_per_category"):
            load_config(environ={}, overrides={"ranking": {"max_per_category": bad}})


def test_a_cap_at_or_above_top_k_changes_nothing(fixture_artifact):
    off = lists(recommender(fixture_artifact, top_k=5, max_per_category=OFF))
    wide = lists(recommender(fixture_artifact, top_k=5, max_per_category=5))
    assert [a["items"] for a, _, _ in off] == [b["items"] for b, _, _ in wide]

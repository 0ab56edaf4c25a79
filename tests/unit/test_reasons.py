"""Reasons: one per listed item, of documented codes, with evidence the shopper can check."""

import re
from pathlib import Path

from udfs.candidates import (
    SRC_CATEGORY,
    SRC_COVISIT,
    SRC_RECENT,
    SRC_TRENDING,
    Candidates,
    CandidateTables,
    covisit_neighbourhood,
    covisit_scores,
    generate_candidates,
)
from udfs.config import load_config
from udfs.events import Event
from udfs.reasons import REASON_CODES, candidate_reason, list_reasons, render_reason
from udfs.records import SCHEMA_VERSION
from udfs.runtime import build_recommender
from udfs.state import StateLimits, UserState, update_state

CONTRACTS = Path(__file__).resolve().parents[2] / "docs" / "contracts.md"
T0 = 1_700_000_000_000


def touched(*items, beh="pv"):
    st = UserState()
    for i, item in enumerate(items):
        update_state(st, Event(1, item, 1, beh, T0 + i * 1000), StateLimits())
    return st


def test_covisit_because_is_the_largest_contribution():
    # The shopper viewed A then B. Sources, most recent first: B (decay 1), A (decay 0.8); pv weight 1.
    # X: from B 1 * 3.0 = 3.0, from A 0.8 * 1.0 = 0.8 -> B.  Z: from B 1 * 1.0, from A 0.8 * 10 = 8 -> A.
    tables = CandidateTables(covisit={"A": [("X", 1.0), ("Z", 10.0)], "B": [("X", 3.0), ("Z", 1.0)]})
    cov, sources, because = covisit_neighbourhood(touched("A", "B"), tables)
    assert sources == ["B", "A"]
    assert because == {"X": "B", "Z": "A"}
    assert cov["X"] == 3.0 + 0.8 and cov["Z"] == 1.0 + 8.0
    assert covisit_scores(touched("A", "B"), tables) == (cov, sources)


def test_candidate_order_and_scores_unchanged_by_because():
    tables = CandidateTables(covisit={"A": [("X", 1.0), ("Z", 10.0)], "B": [("X", 3.0), ("Z", 1.0)]},
                             trending=["T"], item_category={"X": 5, "Z": 6, "T": 7})
    c = generate_candidates(touched("A", "B"), tables, n=10)
    # covisit first by score (Z 9.0 > X 3.8), then the recent items B, A, then trending.
    assert c.items == ["Z", "X", "B", "A", "T"]
    assert c.because is not None and c.because["Z"] == "A" and c.because["X"] == "B"


def test_covisit_because_is_always_an_item_the_shopper_touched(fixture_artifact):
    rec = build_recommender(load_config(environ={}, overrides={"ranking": {
        "artifact_dir": str(fixture_artifact), "provider": "cpu", "top_k": 10}}))
    tables = rec.artifact.tables
    items = list(tables.covisit)[:4]
    st = UserState()
    for i, item in enumerate(items):
        ev = Event(3, item, tables.item_category[item], "pv", T0 + i * 1000)
        rec.apply(st, ev)
    out = rec.recommend([rec.request(st, ev)])[0]
    assert out["schema_version"] == SCHEMA_VERSION == 2
    assert len(out["reasons"]) == len(out["items"]) == 10
    covisits = [r for r in out["reasons"] if r["code"] == "covisit"]
    assert covisits, "a shopper with co-visited items gets covisit reasons"
    assert all(r["because"] in items for r in covisits)
    assert all(r["code"] in REASON_CODES for r in out["reasons"])


def cands(sources, categories=None, because=None):
    n = len(sources)
    return Candidates(items=[f"i{k}" for k in range(n)], categories=categories or [9] * n, sources=sources,
                      covisit=[0.0] * n, because=because)


def test_reason_takes_the_most_personal_source_with_its_evidence():
    c = cands([SRC_COVISIT | SRC_RECENT, SRC_COVISIT | SRC_TRENDING, SRC_CATEGORY | SRC_TRENDING, SRC_TRENDING],
              categories=[1, 2, 3, 4], because={"i0": "a", "i1": "b"})
    assert [candidate_reason(c, i) for i in range(4)] == [
        {"code": "recent"}, {"code": "covisit", "because": "b"}, {"code": "category", "category_id": 3},
        {"code": "trending"}]


def test_list_reasons_follow_list_order_and_fresh_slots():
    c = cands([SRC_RECENT, SRC_TRENDING, SRC_CATEGORY], categories=[1, 2, 3])
    # list holds rows 2, 0, 1; its last position is a fresh-hit slot
    assert list_reasons(c, [2, 0, 1], fresh_slots=range(2, 3)) == [
        {"code": "category", "category_id": 3}, {"code": "recent"}, {"code": "fresh_hit"}]


def test_every_code_is_documented_in_the_contracts_and_rendered():
    text = CONTRACTS.read_text()
    section = text[text.index("### Reasons"):]
    for code in REASON_CODES:
        assert re.search(rf"\| `{code}` \|", section), f"docs/contracts.md Reasons table lacks {code}"
    sentences = {render_reason({"code": c, "because": 7, "category_id": 3}) for c in REASON_CODES}
    assert len(sentences) == len(REASON_CODES) and "Recommended for you" not in sentences


def test_render_uses_the_shops_names_and_tolerates_unknown_codes():
    names = {42: "the red kettle"}.__getitem__
    assert render_reason({"code": "covisit", "because": 42}, item_name=names) == \
        "Because you viewed the red kettle"
    assert render_reason({"code": "category", "category_id": 3}, category_name={3: "Kitchen"}.__getitem__) == \
        "Popular in Kitchen, a category you like"
    assert render_reason({"code": "from_the_future"}) == "Recommended for you"

"""Item knowledge that learns from the stream (udfs/item_knowledge.py): rows count pairs as the
artifact's table does, stay bounded, decay, and a pair first seen in the stream reaches lists."""

from __future__ import annotations

import random

import pytest

from model_export.dataset import replay_requests
from streamrec.lab.benchmark.item_state import measure
from tests.support.job_fixtures import generated_log
from udfs.candidates import SRC_COVISIT, Candidates, CandidateTables, build_tables, generate_candidates
from udfs.events import Event
from udfs.item_knowledge import (
    ItemKnowledge,
    ItemKnowledgeParams,
    ItemRow,
    earlier_items,
    keep_row,
    remember,
)
from udfs.reasons import list_reasons
from udfs.state import StateLimits, UserState, update_state

T0 = 1_700_000_000_000
HOUR = 3_600_000


def random_log(seed: int, n: int = 600) -> list[Event]:
    rng = random.Random(seed)
    behaviors = ["pv"] * 6 + ["cart", "fav", "buy"]
    ts = [T0 + rng.randrange(0, 48 * HOUR) for _ in range(n)]
    return sorted((Event(rng.randrange(12), rng.randrange(40), 1, rng.choice(behaviors), t) for t in ts),
                  key=lambda e: e.ts)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rows_count_every_pair_as_the_artifacts_table_does(seed: int) -> None:
    """From empty rows, unbounded and undecayed, the stream's counts are build_tables' counts of the same log."""
    events = random_log(seed)
    window_ms = 3 * HOUR
    knowledge = ItemKnowledge({}, ItemKnowledgeParams(window_ms=window_ms, window=5, max_entries=10_000))
    for e in events:
        knowledge.observe(e.user_id, e)
    tables = build_tables(events, window=5, window_ms=window_ms, per_item=10_000)
    counted = {item: dict(row.top(10_000, knowledge.params)) for item, row in knowledge.rows.items()}
    counted = {item: row for item, row in counted.items() if row}
    expected = {item: dict(row) for item, row in tables.covisit.items()}
    assert counted.keys() == expected.keys() and len(expected) > 20
    for item, row in expected.items():
        assert counted[item] == pytest.approx(row, abs=1e-3), item


def test_earlier_items_stop_at_the_time_window_and_skip_the_same_item() -> None:
    recent: list[list[object]] = []
    for item, ts in [("a", 0), ("b", 10), ("c", 20), ("a", 30)]:
        remember(recent, item, ts, window=3)
    assert recent == [["b", 10], ["c", 20], ["a", 30]]
    assert earlier_items(recent, "b", 40, window_ms=25) == ["a", "c"]
    assert earlier_items(recent, "a", 40, window_ms=100) == ["c", "b"]


def test_a_full_row_gives_the_weakest_place_to_a_newcomer_with_its_count() -> None:
    params = ItemKnowledgeParams(window_ms=HOUR, max_entries=2)
    row = ItemRow.seeded([("x", 5.0), ("y", 2.0), ("z", 1.0)], T0, params.max_entries)
    assert row.scores == {"x": 5.0, "y": 2.0}
    row.add("n", 1.0, T0, params)
    assert row.scores == {"x": 5.0, "n": 3.0}  # Space-Saving: y's 2.0 plus its own 1.0
    row.add("x", 1.0, T0, params)
    assert row.top(2, params) == [["x", 6.0], ["n", 3.0]]


def test_counts_decay_with_the_half_life_and_survive_a_rebase() -> None:
    params = ItemKnowledgeParams(window_ms=HOUR, half_life_ms=HOUR)
    row = ItemRow.seeded([("old", 4.0)], T0, params.max_entries)
    row.add("new", 2.0, T0 + 2 * HOUR, params)
    assert row.top(5, params) == [["new", 2.0], ["old", 1.0]]
    row.add("new", 1.0, T0 + 100 * HOUR, params)  # past the rebase exponent
    top = dict(row.top(5, params))
    assert top["new"] == pytest.approx(1.0 + 2.0 * 2.0**-98)
    assert top["old"] == pytest.approx(4.0 * 2.0**-100, abs=1e-9)
    assert ItemRow.from_bytes(row.to_bytes()).top(5, params) == row.top(5, params)


def test_a_shopper_keeps_the_rows_of_their_last_distinct_items_only() -> None:
    st = UserState()
    limits = StateLimits()
    for i, item in enumerate(["a", "b", "a", "c", "d"]):
        update_state(st, Event(1, item, 1, "pv", T0 + i), limits)
        keep_row(st, item, [[f"n-{item}", 1.0]], kept_rows=2)
    assert set(st.rows) == {"c", "d"}


def test_a_pair_first_seen_in_the_stream_reaches_the_next_shoppers_candidates() -> None:
    """Items A and B were never co-visited in training; after shoppers touch both in the stream, a
    shopper who touches A gets B as a co-visitation candidate, with B's reason naming A, on that event."""
    tables = CandidateTables(covisit={"A": [("X", 1.0)], "X": [("A", 1.0)]}, trending=["T1", "T2"],
                             item_category={"A": 1, "B": 1, "X": 1, "T1": 2, "T2": 2})
    knowledge = ItemKnowledge(tables.covisit, ItemKnowledgeParams(window_ms=HOUR))
    limits = StateLimits()

    def touch(user: str, item: str, ts: int) -> UserState:
        st = shoppers.setdefault(user, UserState())
        event = Event(user, item, 1, "pv", ts)
        row = knowledge.observe(user, event)
        update_state(st, event, limits)
        keep_row(st, item, row, kept_rows=3)
        return st

    shoppers: dict[str, UserState] = {}
    st = touch("newcomer", "A", T0)
    assert "B" not in generate_candidates(st, tables, n=10).items
    for n in range(3):
        touch(f"s{n}", "A", T0 + 10 * n + 1)
        touch(f"s{n}", "B", T0 + 10 * n + 2)
    st = touch("newcomer", "A", T0 + 100)
    cands = generate_candidates(st, tables, n=10)
    assert "B" in cands.items
    b = cands.items.index("B")
    assert cands.sources[b] & SRC_COVISIT
    assert cands.because is not None and cands.because["B"] == "A"
    assert list_reasons(cands, [b]) == [{"code": "covisit", "because": "A"}]
    # the artifact's frozen table alone would not have it
    assert "B" not in generate_candidates(UserState(seq=st.seq, affinity=st.affinity), tables, n=10).items


def test_state_cost_report_counts_every_shopper_and_item(fixture_artifact) -> None:
    """streamrec.lab.benchmark.item_state: one state per shopper, one row per touched item, rows bounded,
    and the kept fresh rows are what makes a shopper's value larger."""
    events = generated_log(600, seed=3)
    report = measure(events, fixture_artifact)
    assert report["shopper_state_bytes"]["count"] == len({str(e.user_id) for e in events})
    assert report["item_row_bytes"]["count"] == len({e.item_id for e in events})
    assert 0 < report["item_row_entries"]["max"] <= report["max_entries"]
    with_rows, without = report["shopper_state_bytes"], report["shopper_state_bytes_without_rows"]
    assert with_rows["mean"] > without["mean"] > 0 and with_rows["total_mb"] > without["total_mb"]


def test_training_replays_requests_with_the_rows_the_stream_had_then() -> None:
    """Training runs the job's updater in event order: a request sees every pair counted before it
    (here, three shoppers' A -> B, after the table was built) and never its own next event's."""
    tables = CandidateTables(covisit={"A": [("X", 1.0)], "X": [("A", 1.0)]}, trending=["T1", "T2"],
                             item_category={"A": 1, "B": 1, "X": 1, "T1": 2, "T2": 2})
    events = [Event(f"s{n}", item, 1, "pv", T0 + 10 * n + k) for n in range(3) for k, item in enumerate("AB")]
    events += [Event("late", "A", 1, "pv", T0 + 100), Event("late", "C", 1, "pv", T0 + 101)]

    def requests(items: ItemKnowledge | None) -> dict[tuple[str, int], Candidates]:
        return {(p.trigger.user_id, p.trigger.ts): p.candidates
                for p, _ in replay_requests(events, tables, StateLimits(), 10, items)}

    online = requests(ItemKnowledge({}, ItemKnowledgeParams(window_ms=HOUR)))
    late = online[("late", T0 + 100)]
    assert "B" in late.items and late.sources[late.items.index("B")] & SRC_COVISIT
    assert "B" not in requests(None)[("late", T0 + 100)].items  # the frozen table alone
    assert "B" not in online[("s0", T0)].items  # s0's own A -> B is its label, not yet counted
    assert "B" in online[("s1", T0 + 10)].items  # s0's pair was

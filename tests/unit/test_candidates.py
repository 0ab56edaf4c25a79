"""Candidate generation: co-visitation learned from sequences, bought items as the log says, cold start."""

from udfs.candidates import (
    SRC_COVISIT,
    SRC_RECENT,
    SRC_TRENDING,
    CandidateTables,
    bought_items_recur,
    build_tables,
    covisit_scores,
    generate_candidates,
)
from udfs.events import Event
from udfs.state import StateLimits, UserState, update_state

T0 = 1_600_000_000_000


def seq(user, items, start=0, beh="pv", cat=1):
    return [Event(user, it, cat, beh, T0 + (start + i) * 1000) for i, it in enumerate(items)]


def test_covisitation_counts_items_seen_after_each_other():
    log = seq(1, [10, 11]) + seq(2, [10, 11]) + seq(3, [10, 12])
    t = build_tables(log)
    neighbours = dict(t.covisit[10])
    assert neighbours[11] > neighbours[12] > 0


def test_a_pair_counts_once_per_event_whatever_the_behaviors():
    """A buy pairs as a view does, and an item touched twice in the window pairs once with the
    next event (both measured to find fewer of the next new items when counted otherwise)."""
    log = [Event(1, 10, 1, "pv", T0), Event(1, 11, 1, "buy", T0 + 1000),
           Event(2, 20, 1, "pv", T0), Event(2, 21, 1, "pv", T0 + 1000), Event(2, 20, 1, "pv", T0 + 2000),
           Event(2, 22, 1, "pv", T0 + 3000)]
    t = build_tables(log, window_ms=3_600_000)
    assert dict(t.covisit[10]) == {11: 1.0}
    assert dict(t.covisit[11]) == {10: 0.5}
    # 22 follows 20 (twice in its window) and 21: one count each. 21's row also has 20 after it (1)
    # and before it (1/2).
    assert dict(t.covisit[20])[22] == 1.0 and dict(t.covisit[21]) == {20: 1.5, 22: 1.0}


def test_covisit_sources_weigh_by_recency_not_behavior():
    """Two sources with the same row: the more recent one counts more, bought or only viewed."""
    tables = CandidateTables(covisit={1: [(100, 1.0)], 2: [(200, 1.0)]}, item_category={1: 1, 2: 1, 100: 1, 200: 1})
    state = UserState()
    for e in [Event(7, 1, 1, "buy", T0), Event(7, 2, 1, "pv", T0 + 1000)]:
        update_state(state, e, StateLimits())
    scores, sources = covisit_scores(state, tables)
    assert sources == [2, 1] and scores[200] > scores[100]


def test_covisit_respects_time_window():
    # Shoppers mostly a second apart; one pair two hours apart falls outside the derived window.
    log = seq(2, [20, 21, 22, 23]) + seq(3, [30, 31, 32, 33])
    log += [Event(1, 10, 1, "pv", T0), Event(1, 11, 1, "pv", T0 + 2 * 3600 * 1000)]
    assert 11 not in dict(build_tables(log).covisit.get(10, []))
    assert 11 in dict(build_tables(log, window_ms=3 * 3600 * 1000).covisit.get(10, []))


def test_candidates_follow_covisit_and_exclude_bought():
    log = seq(1, [10, 11]) + seq(2, [10, 11]) + seq(3, [10, 13]) + seq(4, [20, 21, 22])
    tables = build_tables(log)
    st = UserState()
    for e in [Event(9, 10, 1, "pv", T0 + 100_000), Event(9, 13, 1, "buy", T0 + 101_000)]:
        update_state(st, e, StateLimits())
    c = generate_candidates(st, tables, n=10)
    assert c.sources[c.items.index(11)] & SRC_COVISIT
    # co-visited items come before items that are only trending
    assert max(c.items.index(i) for i in (10, 11)) < min(c.items.index(i) for i in (20, 21, 22))
    assert 13 not in c.items  # bought
    assert 10 in c.items and c.sources[c.items.index(10)] & SRC_RECENT
    assert len(c.items) == len(set(c.items)) <= 10
    kept = generate_candidates(st, tables, n=10, exclude_bought=False)
    assert 13 in kept.items and kept.sources[kept.items.index(13)] & SRC_RECENT


def shop(rebuy: bool) -> list[Event]:
    """Shoppers who view three items, buy one, view the others again, and then buy the same item
    again (consumables) or view a fourth (durable goods)."""
    log: list[Event] = []
    for user in range(20):
        items = [100 + user, 200 + user, 300 + user]
        log += seq(user, items, start=user * 100)
        log += seq(user, [items[0]], start=user * 100 + 10, beh="buy")
        log += seq(user, items[1:], start=user * 100 + 20)
        log += seq(user, [items[0] if rebuy else 400 + user], start=user * 100 + 30, beh="buy" if rebuy else "pv")
    return sorted(log, key=lambda e: e.ts)


def test_the_log_decides_whether_bought_items_stay_candidates():
    assert bought_items_recur(shop(rebuy=True))
    assert not bought_items_recur(shop(rebuy=False))
    # one behavior only, nothing touched twice (reviews): nothing to gain from bought items
    assert not bought_items_recur([e for u in range(5) for e in seq(u, [u * 10 + i for i in range(4)], beh="buy")])


def test_cold_start_falls_back_to_trending():
    log = seq(1, [1, 2, 3]) + seq(2, [3, 4]) + seq(3, [3])
    tables = build_tables(log)
    st = UserState()
    update_state(st, Event(99, 777, 5, "pv", T0 + 10**6), StateLimits())  # unknown item and category
    c = generate_candidates(st, tables, n=4)
    assert c.items[0] == 777  # the item just viewed
    trending = [i for i, s in zip(c.items, c.sources) if s & SRC_TRENDING]
    assert trending and trending[0] == tables.trending[0] == 3


def test_tables_roundtrip():
    t = build_tables(seq(1, [1, 2, 3]) + seq(2, ["a", "b"]))
    from udfs.candidates import CandidateTables
    assert CandidateTables.from_bytes(t.to_bytes()) == t

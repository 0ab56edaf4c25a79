"""User state: bounded, order-independent, duplicate-free, serializable."""

import random

import pytest

from udfs.events import Event
from udfs.state import StateLimits, UserState, gap_bucket, update_state

T0 = 1_600_000_000_000
LIMITS = StateLimits(max_seq_len=5, seq_window_ms=3_600_000, max_categories=3,
                     category_half_life_ms=600_000, max_bought=2)


def ev(i, item, cat=1, beh="pv", user=1):
    return Event(user, item, cat, beh, T0 + i * 1000)


def fold(events, limits=LIMITS):
    st = UserState()
    for e in events:
        update_state(st, e, limits)
    return st


def test_sequence_bounded_and_most_recent_kept():
    st = fold([ev(i, 100 + i) for i in range(12)])
    assert [r[1] for r in st.seq] == [107, 108, 109, 110, 111]
    assert st.counts == [12, 0, 0, 0]


def test_time_window_expires_old_events():
    st = fold([ev(0, 1), ev(1, 2), ev(3600 + 10, 3)])
    assert [r[1] for r in st.seq] == [3]


def test_duplicates_ignored():
    st = UserState()
    assert update_state(st, ev(1, 5), LIMITS)
    assert not update_state(st, ev(1, 5), LIMITS)
    assert update_state(st, ev(1, 5, beh="cart"), LIMITS)  # same ts, other behavior: a new action
    assert st.counts == [1, 1, 0, 0]


def test_categories_bounded_and_weighted_by_behavior():
    st = fold([ev(0, 1, cat=10), ev(1, 2, cat=20, beh="buy"), ev(2, 3, cat=30), ev(3, 4, cat=40)])
    assert len(st.affinity) == LIMITS.max_categories
    assert max(st.affinity, key=st.affinity.get) == 20


def test_affinity_decays_with_half_life():
    st = fold([ev(0, 1, cat=10)])
    aff = st.category_affinity(T0 + LIMITS.category_half_life_ms, LIMITS.category_half_life_ms)
    assert aff[10] == pytest.approx(0.5)


def test_bought_items_bounded():
    st = fold([ev(i, 50 + i, beh="buy") for i in range(4)])
    assert st.bought == [52, 53]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_out_of_order_arrival_gives_the_same_state(seed):
    events = [ev(i, 100 + i % 7, cat=i % 4, beh=["pv", "cart", "fav", "buy"][i % 4]) for i in range(40)]
    shuffled = events[:]
    random.Random(seed).shuffle(shuffled)
    limits = StateLimits(max_seq_len=100, seq_window_ms=10**9, max_categories=10,
                         category_half_life_ms=600_000, max_bought=100)
    a, b = fold(events, limits), fold(shuffled, limits)
    assert a.seq == b.seq and a.counts == b.counts and sorted(a.bought) == sorted(b.bought)
    assert a.affinity.keys() == b.affinity.keys()
    for k in a.affinity:
        assert a.affinity[k] == pytest.approx(b.affinity[k])


def test_serialization_roundtrip_and_size():
    st = fold([ev(i, 100 + i, beh="buy" if i % 5 == 0 else "pv") for i in range(30)])
    data = st.to_bytes()
    back = UserState.from_bytes(data)
    assert back == st
    assert len(data) < 400  # compact: 5 rows + counts + 3 categories + 2 bought


def test_empty_state_from_none():
    assert UserState.from_bytes(None) == UserState()


def test_gap_buckets_monotone():
    gaps = [gap_bucket(ms) for ms in (0, 999, 1000, 60_000, 3_600_000, 86_400_000, 10**12)]
    assert gaps == sorted(gaps) and gaps[0] == 0 and gaps[-1] == 20

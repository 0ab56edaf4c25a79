"""Model inputs: the per-candidate history features against their definitions, on a hand-built shopper."""

import math

import numpy as np
import pytest

from udfs.candidates import SRC_COVISIT, SRC_TRENDING, Candidates, CandidateTables
from udfs.events import Event
from udfs.features import DENSE_FEATURES, UserRequest, Vocab, build_batch
from udfs.state import StateLimits, UserState, update_state

T0 = 1_700_000_000_000
SEC = 1000
# The shopper's events (item, behavior, seconds after T0): item "a" three times with a cart,
# "b" once as a buy, "c" twice; "d" (a candidate) never.
HISTORY = [("a", "pv", 0), ("b", "buy", 10), ("a", "cart", 40), ("c", "pv", 100), ("a", "pv", 200), ("c", "fav", 300)]
NOW = T0 + 1_000 * SEC  # the trigger
CANDIDATES = ["d", "a", "b", "c", "e"]


def column(batch, name):
    return batch["dense"][:, DENSE_FEATURES.index(name)].tolist()


@pytest.fixture
def batch():
    state = UserState()
    for item, beh, s in HISTORY:
        update_state(state, Event("u", item, 1, beh, T0 + s * SEC), StateLimits())
    trigger = Event("u", "c", 1, "pv", NOW)
    update_state(state, trigger, StateLimits())
    cands = Candidates(items=CANDIDATES, categories=[1] * 5, sources=[SRC_COVISIT, 0, 0, 0, SRC_TRENDING],
                       covisit=[0.5, 0.0, 0.0, 0.0, 0.0], neighbourhood={"d": 2.0, "e": 1.0})
    vocab = Vocab({i: n + 2 for n, i in enumerate("abcde")}, {1: 2})
    return build_batch([UserRequest(state, cands, trigger)], vocab, CandidateTables(), seq_len=50)


def test_history_features_follow_their_definitions(batch):
    # Latest touch of each item: a at 200 s, b at 10 s, c at the trigger (1000 s); d and e never.
    gap = [min(20, int(math.log2(1 + (1000 - s)))) / 20 for s in (200, 10, 1000)]
    assert column(batch, "in_history") == [0.0, 1.0, 1.0, 1.0, 0.0]
    assert column(batch, "last_touch_gap") == pytest.approx([1.0, *gap, 1.0])
    # Touches: a 3, b 1, c 3 (with the trigger).
    assert column(batch, "log_history_count") == pytest.approx([0.0, math.log1p(3), math.log1p(1), math.log1p(3), 0.0])
    # Strongest behavior, as (index + 1) / 4 with pv, cart, fav, buy = 0..3: a cart, b buy, c fav.
    assert column(batch, "max_history_behavior") == pytest.approx([0.0, 2 / 4, 4 / 4, 3 / 4, 0.0])
    # Distinct items by latest touch: c (the trigger), a, b.
    assert column(batch, "recency_rank") == pytest.approx([0.0, 1 / 2, 1 / 3, 1.0, 0.0])
    assert column(batch, "is_trigger_item") == [0.0, 0.0, 0.0, 1.0, 0.0]


def test_per_shopper_features(batch):
    # 7 events on 3 distinct items: 4 re-touches among the 6 events after the first.
    assert column(batch, "user_repeat_ratio") == pytest.approx([4 / 6] * 5)
    assert column(batch, "log_distinct_touched") == pytest.approx([math.log1p(3)] * 5)
    # The event before the trigger came 700 s earlier: floor(log2(701)) = 9.
    assert column(batch, "trigger_gap") == pytest.approx([9 / 20] * 5)


def test_neighbourhood_rank_and_share(batch):
    assert column(batch, "covisit_rank") == pytest.approx([1.0, 0.0, 0.0, 0.0, 1 / 2])
    assert column(batch, "covisit_share") == pytest.approx([2 / 3, 0.0, 0.0, 0.0, 1 / 3])


def test_history_inputs_are_left_padded(batch):
    hist_item = batch["hist_item"][0]
    assert hist_item[:-7].tolist() == [0] * 43
    assert hist_item[-7:].tolist() == [2, 3, 2, 4, 2, 4, 4]  # a b a c a c c in vocab indices
    assert np.array_equal(batch["cand_item"], [5, 2, 3, 4, 6])


def test_recency_follows_arrival_where_timestamps_tie():
    """A daily clock stamps a day's events alike: the item that arrived last is the latest,
    whatever order the items were first touched in."""
    state = UserState()
    # One day, one timestamp: latest b, then a, then c (behaviors differ: not duplicates).
    for item, beh in [("a", "pv"), ("b", "pv"), ("c", "pv"), ("a", "cart"), ("b", "cart")]:
        update_state(state, Event("u", item, 1, beh, T0), StateLimits())
    trigger = Event("u", "b", 1, "cart", T0)
    cands = Candidates(items=["a", "b", "c", "d"], categories=[1] * 4, sources=[0, 0, 0, SRC_COVISIT],
                       covisit=[0.0, 0.0, 0.0, 0.5], neighbourhood={"d": 1.0})
    vocab = Vocab({i: n + 2 for n, i in enumerate("abcd")}, {1: 2})
    out = build_batch([UserRequest(state, cands, trigger)], vocab, CandidateTables(), seq_len=50)
    assert column(out, "recency_rank") == pytest.approx([1 / 2, 1.0, 1 / 3, 0.0])

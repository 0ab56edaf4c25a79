"""User state: bounded, order-independent, duplicate-free, serializable."""

import math
import random

import msgpack
import pytest

from tests.support.job_fixtures import generated_log
from udfs.events import Event
from udfs.state import STATE_VERSION, WINDOWS, StateLimits, UserState, gap_bucket, update_state

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



def _float_gap_bucket(gap_ms: int) -> int:
    """The definition: floor(log2(1 + seconds)), capped at 20."""
    return min(20, int(math.log2(1.0 + max(gap_ms, 0) / 1000.0)))


def test_gap_bucket_equals_the_float_definition_at_every_edge():
    """The integer form must give the buckets the model was trained on: checked on every ms
    of the first hour, a ms either side of every bucket edge, and random gaps up to 300 years."""
    edges = [1000 * (2**k - 1) + d for k in range(45) for d in (-2, -1, 0, 1, 2)]
    rng = random.Random(7)
    gaps = [*range(-2000, 3_600_000, 7), *edges, *(rng.randrange(-10**13, 10**13) for _ in range(20_000))]
    assert [gap_bucket(g) for g in gaps] == [_float_gap_bucket(g) for g in gaps]
    assert gap_bucket(1000) == 1 and gap_bucket(2999) == 1 and gap_bucket(3000) == 2

# --------------------------------------------------------------------------- windowed counts

MIN = 60_000
W_LIMITS = StateLimits()  # production bounds: 50 rows, 7-day sequence window


def at(ms, item=1, beh="pv", user=1):
    return Event(user, item, 1, beh, T0 + ms)


def test_window_counts_per_behavior():
    st = fold([at(0, 1), at(1000, 2, "cart"), at(2000, 3, "buy")], W_LIMITS)
    assert st.window_counts() == {"10m": [1, 1, 0, 1], "1h": [1, 1, 0, 1], "1d": [1, 1, 0, 1]}
    update_state(st, at(2 * 3_600_000, 4, "fav"), W_LIMITS)
    assert st.window_counts() == {"10m": [0, 0, 1, 0], "1h": [0, 0, 1, 0], "1d": [1, 1, 1, 1]}
    # buckets are pruned relative to max_ts: an earlier at_ts no longer sees the short windows
    assert st.window_counts(T0 + 3000) == {"10m": [0, 0, 0, 0], "1h": [0, 0, 0, 0], "1d": [1, 1, 0, 1]}


@pytest.mark.parametrize("label,length,size", WINDOWS)
def test_window_edges_exact_to_the_bucket(label, length, size):
    now = 1_700_000_000_000 + 12_345  # not aligned to any bucket
    old = [
        Event(1, 1, 1, "pv", now - length),             # exactly one window old: counts
        Event(1, 2, 1, "cart", now - length - size),    # one window + one bucket old: never counts
        Event(1, 3, 1, "pv", now - length - size - 1),  # older still
    ]
    st = UserState()
    for e in [*old, Event(1, 9, 1, "fav", now)]:
        update_state(st, e, W_LIMITS)
    assert st.window_counts(now)[label] == [1, 0, 1, 0]
    # An event between one window and one window + one bucket old counts only when it
    # shares the oldest counted bucket: ages in (length, length + size) are approximate.
    in_bucket = (now - length) // size * size  # start of the oldest counted bucket
    st2 = UserState()
    for e in [Event(1, 1, 1, "buy", in_bucket), Event(1, 2, 1, "buy", in_bucket - 1), Event(1, 9, 1, "fav", now)]:
        update_state(st2, e, W_LIMITS)
    assert st2.window_counts(now)[label] == [0, 0, 1, 1]


def test_window_counts_follow_max_ts():
    st = fold([at(0, 1), at(5 * MIN, 2), at(9 * MIN, 3)], W_LIMITS)
    assert st.window_counts()["10m"] == [3, 0, 0, 0]
    update_state(st, at(16 * MIN, 4), W_LIMITS)  # the first two are now over 10 min + 1 bucket old
    assert st.window_counts()["10m"] == [2, 0, 0, 0]
    assert st.window_counts()["1h"] == [4, 0, 0, 0]
    update_state(st, at(2 * 86_400_000, 5), W_LIMITS)
    assert st.window_counts() == {"10m": [1, 0, 0, 0], "1h": [1, 0, 0, 0], "1d": [1, 0, 0, 0]}
    assert st.counts == [5, 0, 0, 0]  # all-time counts are not windowed


def test_event_older_than_the_horizon_does_not_count():
    st = fold([at(3 * 86_400_000, 1)], W_LIMITS)
    assert update_state(st, at(0, 2, "buy"), W_LIMITS)  # accepted into seq/counts (7-day window) ...
    assert st.window_counts()["1d"] == [1, 0, 0, 0]  # ... but not into any window
    assert st.counts == [1, 0, 0, 1]


def test_window_buckets_bounded_over_a_busy_week():
    rng = random.Random(7)
    behaviors = ["pv", "cart", "fav", "buy"]
    week = 7 * 86_400_000
    events = sorted((Event(1, rng.randrange(5000), rng.randrange(30), rng.choice(behaviors), T0 + rng.randrange(week))
                     for _ in range(10_000)), key=lambda e: e.ts)
    st = UserState()
    most = [0, 0, 0]
    for e in events:
        update_state(st, e, W_LIMITS)
        most = [max(m, len(w) // 5) for m, w in zip(most, st.windows)]
    # at most every bucket a window can reach (one window plus the partial bucket at its
    # old edge), and this log is busy enough to reach that bound in every window
    assert most == [length // size + 1 for _, length, size in WINDOWS] == [11, 13, 25]
    end = st.max_ts
    expected = {label: [sum(1 for e in events if e.behavior == b and end - e.ts <= length) for b in behaviors]
                for label, length, _ in WINDOWS}
    got = st.window_counts()
    for (label, length, size) in WINDOWS:
        # exact to the bucket: at least every event up to `length` old, at most those up to `length + size` old
        upper = [sum(1 for e in events if e.behavior == b and end - e.ts < length + size) for b in behaviors]
        assert all(lo <= g <= hi for lo, g, hi in zip(expected[label], got[label], upper)), label
    assert len(st.to_bytes()) < 2500  # 50 rows + 49 buckets + 20 categories + 100 bought


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_windows_out_of_order_equal_sorted(seed):
    rng = random.Random(seed)
    events = [Event(1, rng.randrange(50), rng.randrange(5), rng.choice(["pv", "cart", "fav", "buy"]),
                    T0 + rng.randrange(3 * 86_400_000)) for _ in range(400)]
    events += [Event(1, 7, 1, "pv", T0 + 3 * 86_400_000 - k * 30_000) for k in range(60)]  # a dense last half hour
    shuffled = events[:]
    rng.shuffle(shuffled)
    limits = StateLimits(max_seq_len=1000, seq_window_ms=10**10)
    a, b = fold(sorted(events, key=lambda e: e.ts), limits), fold(shuffled, limits)
    assert a.windows == b.windows and a.max_ts == b.max_ts
    assert a.window_counts() == b.window_counts()
    for probe in (a.max_ts - 30 * MIN, a.max_ts - 5 * MIN):
        assert a.window_counts(probe) == b.window_counts(probe)


def test_duplicates_not_counted_in_windows():
    st = UserState()
    assert update_state(st, at(0, 5), W_LIMITS)
    assert not update_state(st, at(0, 5), W_LIMITS)
    assert update_state(st, at(0, 5, "cart"), W_LIMITS)
    assert not update_state(st, at(0, 5, "cart"), W_LIMITS)
    assert st.window_counts() == {"10m": [1, 1, 0, 0], "1h": [1, 1, 0, 0], "1d": [1, 1, 0, 0]}


def test_windows_survive_serialization():
    st = fold([at(i * 20_000, i, ["pv", "cart", "fav", "buy"][i % 4]) for i in range(200)], W_LIMITS)
    back = UserState.from_bytes(st.to_bytes())
    assert back == st and back.window_counts() == st.window_counts()


# --------------------------------------------------------------------------- state versions


def test_version_1_bytes_upgrade_with_every_field_kept():
    seq = [[T0, 11, 3, 0], [T0 + 1000, "item-x", "cat-y", 3]]
    counts = [1, 0, 0, 1]
    affinity = {3: 1.0, "cat-y": 4.0}
    bought = ["item-x"]
    v1 = msgpack.packb([1, seq, counts, affinity, T0 + 1000, bought, 7, T0 + 1000], use_bin_type=True)
    st = UserState.from_bytes(v1)
    assert (st.seq, st.counts, st.affinity, st.ref_ts, st.bought, st.emitted, st.max_ts) == (
        seq, counts, affinity, T0 + 1000, bought, 7, T0 + 1000)
    assert st.window_counts() == {"10m": [0, 0, 0, 0], "1h": [0, 0, 0, 0], "1d": [0, 0, 0, 0]}
    # keeps working after the upgrade, and is written back as the current version
    assert update_state(st, Event(1, 12, 3, "cart", T0 + 2000), W_LIMITS)
    assert st.window_counts()["10m"] == [0, 1, 0, 0] and st.counts == [1, 1, 0, 1]
    data = st.to_bytes()
    assert msgpack.unpackb(data, strict_map_key=False)[0] == STATE_VERSION == 4
    assert UserState.from_bytes(data) == st


def test_version_2_bytes_upgrade_with_no_last_list():
    """A state saved before the last list was kept: everything stays, the first list after the upgrade
    starts the shopper's feedback."""
    st = fold([ev(i, 100 + i, beh="cart") for i in range(4)], W_LIMITS)
    st.emitted = 4
    v2 = msgpack.packb([2, st.seq, st.counts, st.affinity, st.ref_ts, st.bought, st.emitted, st.max_ts,
                        st.windows], use_bin_type=True)
    back = UserState.from_bytes(v2)
    assert back.last_list == [] and back.window_counts() == st.window_counts()
    back.last_list = [5, "m1", None, [7, 8]]
    assert UserState.from_bytes(back.to_bytes()) == back


def test_version_3_bytes_upgrade_with_no_fresh_rows():
    """A state saved before fresh item rows were kept: everything stays, the artifact's rows serve."""
    st = fold([ev(i, 100 + i, beh="cart") for i in range(4)], W_LIMITS)
    st.last_list = [5, "m1", None, [7, 8]]
    v3 = msgpack.packb([3, st.seq, st.counts, st.affinity, st.ref_ts, st.bought, st.emitted, st.max_ts,
                        st.windows, st.last_list], use_bin_type=True)
    back = UserState.from_bytes(v3)
    assert back == st and back.rows == {}
    back.rows = {103: [[7, 1.5]]}
    assert UserState.from_bytes(back.to_bytes()) == back


def test_fresh_rows_go_first_when_the_state_is_over_its_bound() -> None:
    st = fold([ev(i, 100 + i) for i in range(3)], W_LIMITS)
    st.rows = {102: [[f"{n:0100d}", 1.0] for n in range(60)]}
    blob, trimmed = st.to_bounded_bytes(4096)
    assert trimmed and len(blob) <= 4096
    assert st.rows == {} and len(st.seq) == 3


@pytest.mark.parametrize("version", [0, 5, 99, "2"])
def test_unknown_state_version_raises(version):
    data = msgpack.packb([version, [], [0, 0, 0, 0], {}, 0, [], 0, 0, [[], [], []]])
    with pytest.raises(ValueError, match="unsupported user state version"):
        UserState.from_bytes(data)


def _long_id_events(n: int) -> list[Event]:
    """A shopper whose ids are all 128-character strings: the largest state the limits allow."""
    return [Event("u" * 128, f"{i:0128d}", f"c{i % 40:0127d}", "buy" if i % 3 == 0 else "pv", T0 + i * 1000)
            for i in range(n)]


def test_state_is_bounded_in_bytes_keeping_the_newest_entries() -> None:
    limits = StateLimits()
    st = UserState()
    for e in _long_id_events(400):
        update_state(st, e, limits)
    full = len(st.to_bytes())
    assert full > limits.max_bytes  # entry limits alone allow ~30 KB with long ids
    newest = st.seq[-1]
    emitted, counts = st.emitted, list(st.counts)
    blob, trimmed = st.to_bounded_bytes(limits.max_bytes)
    assert trimmed and len(blob) <= limits.max_bytes
    back = UserState.from_bytes(blob)
    assert back.seq[-1] == newest and back.seq == st.seq
    assert back.emitted == emitted and back.counts == counts  # list numbers and totals never go back
    assert len(back.bought) < 100 and len(back.affinity) <= limits.max_categories


def test_states_of_int_ids_are_never_trimmed() -> None:
    limits = StateLimits()
    states: dict = {}
    for e in generated_log(6000, seed=2):
        update_state(states.setdefault(e.user_id, UserState()), e, limits)
    for st in states.values():
        before = st.to_bytes()
        blob, trimmed = st.to_bounded_bytes(limits.max_bytes)
        assert not trimmed and blob == before

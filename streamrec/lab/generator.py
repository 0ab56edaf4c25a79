"""A seeded synthetic behavior log, so that tests, the demo and the benchmark run
without any real data, with the structure a recommender needs to learn: popular
items, categories, sessions, co-visitation and a purchase funnel.
"""

from __future__ import annotations

import bisect

import numpy as np

from udfs.errors import InputError
from udfs.events import BEHAVIORS, Event

# The default start of a generated log: 2017-11-25 00:00 UTC+8, like the Taobao sample.
START_TS_MS = 1_511_539_200_000

CST_OFFSET_S = 8 * 3600
# Behavior mix of the real data (users_head sample: 75,693 / 4,494 / 2,351 / 1,749 of 84,287).
FUNNEL: dict[str, float] = {"pv": 0.898, "cart": 0.053, "fav": 0.028, "buy": 0.021}

ZIPF_EXPONENT = 1.1  # item popularity
CATEGORY_SIZE_EXPONENT = 1.0  # items per category
USER_ID_BASE = 1
ITEM_ID_BASE = 1_000_000
CATEGORY_ID_BASE = 9_000_000
N_RELATED = 3
P_RELATED = 0.35  # next view follows the current item's co-visitation list
P_REVISIT = 0.15  # next view returns to an item already seen in the session
P_SWITCH = 0.06  # next view moves to another category
P_EXPLORE = 0.15  # a session (or a switch) leaves the user's preferred categories
P_RELATED_OTHER_CAT = 0.2  # complementary items: related item from another category
P_ACTION_UNSEEN = 0.08  # cart/fav/buy on an item not viewed in the session (bought from the cart page)
P_DRIFT = 0.3  # users whose main interest changes once during the span
MEAN_SESSION_LEN = 8.0
GAP_MEDIAN_S = 20.0
MAX_GAP_S = 1500
SESSION_GAP_S = 1800  # a user's sessions are at least this far apart ...
MERGE_GAP_S = 90  # ... unless they would collide: then the later one continues the earlier
# Relative session starts per hour of day (CST): night trough, evening peak.
# fmt: off
DIURNAL = np.array(
    [0.55, 0.35, 0.22, 0.15, 0.12, 0.13, 0.2, 0.35, 0.55, 0.7, 0.8, 0.85,
     0.85, 0.85, 0.85, 0.85, 0.85, 0.9, 0.95, 1.05, 1.2, 1.3, 1.2, 0.85]
)
# fmt: on
_PREF_CUM: dict[int, tuple[float, ...]] = {1: (1.0,), 2: (2 / 3, 1.0), 3: (0.6, 0.9, 1.0)}


# --------------------------------------------------------------------------- generator


class _CategorySampler:
    """Draws an item of a given category with probability proportional to a weight.

    One sorted cdf over all items, offset by category index (values of category
    c lie in (c, c+1]), so a draw is a single bisect with no per-category arrays.
    """

    def __init__(self, item_cat: np.ndarray, weights: np.ndarray, n_categories: int) -> None:
        self.order = np.argsort(item_cat, kind="stable")
        sorted_cat = item_cat[self.order]
        w = weights[self.order]
        self.start = np.searchsorted(sorted_cat, np.arange(n_categories), side="left")
        self.end = np.searchsorted(sorted_cat, np.arange(n_categories), side="right")
        cs = np.cumsum(w)
        before = np.concatenate(([0.0], cs))[self.start]  # mass before each category
        mass = cs[self.end - 1] - before
        within = (cs - before[sorted_cat]) / mass[sorted_cat]
        self.cdf = sorted_cat + np.minimum(within, 1.0)

    def sample(self, cats: np.ndarray, u: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(self.cdf, cats + u, side="right")
        return self.order[np.minimum(idx, self.end[cats] - 1)]


def _session_lengths(rng: np.random.Generator, n_events: int) -> np.ndarray:
    chunks: list[np.ndarray] = []
    total = 0
    while total < n_events:
        draw = 1 + rng.geometric(1.0 / MEAN_SESSION_LEN, size=int(n_events / MEAN_SESSION_LEN * 1.1) + 8)
        chunks.append(draw)
        total += int(draw.sum())
    lengths = np.concatenate(chunks)
    cum = np.cumsum(lengths)
    n_sess = int(np.searchsorted(cum, n_events, side="left")) + 1
    lengths = lengths[:n_sess].copy()
    lengths[-1] -= int(cum[n_sess - 1]) - n_events
    return lengths


def _session_starts(rng: np.random.Generator, n: int, start_ts_ms: int, duration_s: int) -> np.ndarray:
    """Session start offsets (s) following the CST day/night cycle."""
    hour0 = np.arange(0, duration_s, 3600, dtype=np.int64)
    width = np.minimum(3600, duration_s - hour0)
    hod = ((start_ts_ms // 1000 + CST_OFFSET_S + hour0) // 3600) % 24
    w = DIURNAL[hod] * width
    h = rng.choice(len(hour0), size=n, p=w / w.sum())
    return hour0[h] + (rng.random(n) * width[h]).astype(np.int64)


def _user_prefs(
    rng: np.random.Generator, n_users: int, cat_p: np.ndarray, drift_at: np.ndarray
) -> tuple[list[list[int]], list[list[int]]]:
    """1-3 preferred categories per user, and the set after an interest drift."""
    n_pref = rng.choice([1, 2, 3], size=n_users, p=[0.3, 0.4, 0.3]).tolist()
    draws = rng.choice(len(cat_p), size=(n_users, 8), p=cat_p).tolist()
    drifts = np.isfinite(drift_at).tolist()
    before: list[list[int]] = []
    after: list[list[int]] = []
    for u in range(n_users):
        uniq = list(dict.fromkeys(draws[u]))
        prefs = uniq[: n_pref[u]]
        before.append(prefs)
        spare = uniq[n_pref[u] :]
        after.append([spare[0], *prefs[1:]] if drifts[u] and spare else prefs)
    return before, after


def generate_events(
    n_events: int,
    *,
    n_users: int = 10_000,
    n_items: int = 50_000,
    n_categories: int = 500,
    seed: int = 0,
    start_ts_ms: int = START_TS_MS,
    duration_s: int = 9 * 86400,
) -> list[Event]:
    """Seeded synthetic behavior stream, sorted by ts, users interleaved.

    Structure mirrors what the models rely on: Zipf item popularity, Zipf-sized
    categories, users with 1-3 preferred categories (some drift once), sessions
    that stay mostly in one category and revisit items, per-item co-visitation
    lists, and the real funnel with actions mostly on items viewed in the session.
    Timestamps are whole seconds, like the real data. Random draws are bulk numpy;
    only the sequential session walk is Python.
    """
    if n_events < 0:
        raise InputError("n_events must be >= 0")
    if not 1 <= n_users < ITEM_ID_BASE - USER_ID_BASE:
        raise InputError(f"n_users must be in 1..{ITEM_ID_BASE - USER_ID_BASE - 1}")
    if not 1 <= n_categories <= n_items <= CATEGORY_ID_BASE - ITEM_ID_BASE:
        raise InputError("need 1 <= n_categories <= n_items <= 8,000,000")
    if duration_s < 1:
        raise InputError("duration_s must be >= 1")
    if n_events == 0:
        return []
    rng = np.random.default_rng(seed)

    # Catalog: every category non-empty, sizes Zipf; popularity Zipf over a random item order.
    cat_w = 1.0 / np.arange(1, n_categories + 1) ** CATEGORY_SIZE_EXPONENT
    extra = rng.choice(n_categories, size=n_items - n_categories, p=cat_w / cat_w.sum())
    item_cat = np.concatenate([np.arange(n_categories), extra])
    rng.shuffle(item_cat)
    pop = (rng.permutation(n_items) + 1.0) ** -ZIPF_EXPONENT
    viewer = _CategorySampler(item_cat, pop, n_categories)
    cat_mass = np.bincount(item_cat, weights=pop, minlength=n_categories)
    cat_p = cat_mass / cat_mass.sum()

    # Co-visitation: related items mostly in the same category; tempered weights keep
    # the lists item-specific instead of all pointing at the category's head.
    rel_sampler = _CategorySampler(item_cat, np.sqrt(pop), n_categories)
    rel_cats = np.repeat(item_cat, N_RELATED)
    related = rel_sampler.sample(rel_cats, rng.random(len(rel_cats))).reshape(n_items, N_RELATED)
    other = rng.random(related.shape) < P_RELATED_OTHER_CAT
    global_cdf = np.cumsum(pop) / pop.sum()
    related[other] = np.minimum(np.searchsorted(global_cdf, rng.random(int(other.sum()))), n_items - 1)
    pos = np.empty(n_items, dtype=np.int64)
    pos[viewer.order] = np.arange(n_items)
    self_rel = related == np.arange(n_items)[:, None]
    if self_rel.any():  # point to the category neighbour instead (no-op for singleton categories)
        rows = np.nonzero(self_rel)[0]
        c = item_cat[rows]
        size = viewer.end[c] - viewer.start[c]
        related[self_rel] = viewer.order[viewer.start[c] + (pos[rows] - viewer.start[c] + 1) % size]

    # Users: heavy-tailed activity, preferences, optional drift time.
    activity = rng.lognormal(0.0, 1.0, size=n_users)
    drift_at = np.where(rng.random(n_users) < P_DRIFT, rng.uniform(0, duration_s, n_users), np.inf)
    prefs_before, prefs_after = _user_prefs(rng, n_users, cat_p, drift_at)

    # Sessions: lengths, owners, start times, in-session gaps.
    lengths = _session_lengths(rng, n_events)
    n_sess = len(lengths)
    sess_user = rng.choice(n_users, size=n_sess, p=activity / activity.sum())
    sess_start = _session_starts(rng, n_sess, start_ts_ms, duration_s)
    first = np.zeros(n_events, dtype=bool)
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    first[offsets[:-1]] = True
    gaps = np.clip(rng.lognormal(np.log(GAP_MEDIAN_S), 1.0, n_events), 1, MAX_GAP_S).astype(np.int64)
    gaps[first] = 0
    cum_gap = np.cumsum(gaps)
    in_sess = cum_gap - np.repeat(cum_gap[offsets[:-1]], lengths)
    dur = in_sess[offsets[1:] - 1]
    # Squeeze starts so each session ends inside the span (no pile-up at the last second).
    sess_start = (sess_start * np.maximum(duration_s - 1 - dur, 0)) // duration_s

    # A user's sessions must not overlap: a colliding one continues the previous instead.
    starts = sess_start.tolist()
    users_l = sess_user.tolist()
    dur_l = dur.tolist()
    by_user = np.lexsort((sess_start, sess_user)).tolist()
    prev_u, prev_end = -1, 0
    for k in by_user:
        u, s = users_l[k], starts[k]
        if u == prev_u and s < prev_end + SESSION_GAP_S:
            s = prev_end + MERGE_GAP_S
        starts[k] = s
        prev_u, prev_end = u, s + dur_l[k]
    # Pushing may run past the span's end: pull the user's tail back (order is kept).
    prev_u, limit = -1, 0
    for k in reversed(by_user):
        u = users_l[k]
        if u != prev_u:
            prev_u, limit = u, duration_s - 1
        starts[k] = s = max(min(starts[k], limit - dur_l[k]), 0)
        limit = s - MERGE_GAP_S
    sess_start = np.array(starts, dtype=np.int64)
    event_sess = np.repeat(np.arange(n_sess), lengths)
    ts_s = np.minimum(sess_start[event_sess] + in_sess, duration_s - 1)  # overflow only if span too short

    # Funnel: the first event of a session is a view; the rest are drawn so totals match FUNNEL.
    p = np.array([FUNNEL[b] for b in BEHAVIORS])
    scale = min(n_events / max(n_events - n_sess, 1), 1.0 / (1.0 - p[0]))
    p_rest = np.concatenate(([1.0 - (1.0 - p[0]) * scale], p[1:] * scale))
    beh = rng.choice(len(BEHAVIORS), size=n_events, p=p_rest)
    beh[first] = 0
    u_move, u_pick, u_item = rng.random((3, n_events))
    sess_u = rng.random((2, n_sess))
    explore_cat = rng.choice(n_categories, size=(2, n_sess), p=cat_p)

    cdf = viewer.cdf.tolist()
    order = viewer.order.tolist()
    cat_end = (viewer.end - 1).tolist()
    rel = related.tolist()
    starts_l = sess_start.tolist()
    drift_l = drift_at.tolist()
    out_item = [0] * n_events
    bisect_right = bisect.bisect_right
    p_rel, p_visit, p_switch = P_RELATED, P_RELATED + P_REVISIT, 1.0 - P_SWITCH
    u_pref_l, u_expl_l = sess_u.tolist()
    expl1_l, expl2_l = explore_cat.tolist()

    for s in range(n_sess):
        a, b = int(offsets[s]), int(offsets[s + 1])
        u = users_l[s]
        prefs = prefs_after[u] if starts_l[s] >= drift_l[u] else prefs_before[u]
        if u_expl_l[s] < P_EXPLORE or not prefs:
            cat = expl1_l[s]
        else:
            r = u_pref_l[s]
            cum = _PREF_CUM[len(prefs)]
            j = 0
            while r >= cum[j] and j < len(cum) - 1:
                j += 1
            cat = prefs[j]
        bs, ms, ps, its = beh[a:b].tolist(), u_move[a:b].tolist(), u_pick[a:b].tolist(), u_item[a:b].tolist()
        viewed: list[int] = []
        carted: list[int] = []
        cur = -1
        for i in range(b - a):
            code, m, pk, ui = bs[i], ms[i], ps[i], its[i]
            if code == 0:
                if cur >= 0 and m < p_rel:
                    item = rel[cur][int(pk * N_RELATED)]
                elif viewed and m < p_visit:
                    item = viewed[int(pk * len(viewed))]
                else:
                    if m >= p_switch:
                        v = (m - p_switch) / P_SWITCH
                        cat = expl2_l[s] if v < P_EXPLORE or not prefs else prefs[int(pk * len(prefs))]
                    x = cat + ui
                    item = order[min(bisect_right(cdf, x), cat_end[cat])]
                viewed.append(item)
                cur = item
            else:
                if m < P_ACTION_UNSEEN:
                    x = cat + ui
                    item = order[min(bisect_right(cdf, x), cat_end[cat])]
                elif code == 3 and carted and pk < 0.5:
                    item = carted[int(ui * len(carted))]
                elif pk < 0.75:
                    item = cur
                else:
                    item = viewed[int(ui * len(viewed))]
                if code == 1:
                    carted.append(item)
            out_item[a + i] = item

    items = np.array(out_item, dtype=np.int64)
    ts_ms = start_ts_ms + ts_s * 1000
    # Ties at the same second keep each user's own order (session start, then position).
    idx = np.lexsort((np.arange(n_events), sess_start[event_sess], ts_ms))
    beh_names = np.array(BEHAVIORS, dtype=object)
    return list(
        map(
            Event,
            (sess_user[event_sess][idx] + USER_ID_BASE).tolist(),
            (items[idx] + ITEM_ID_BASE).tolist(),
            (item_cat[items[idx]] + CATEGORY_ID_BASE).tolist(),
            beh_names[beh[idx]].tolist(),
            ts_ms[idx].tolist(),
        )
    )

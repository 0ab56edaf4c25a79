"""Model inputs computed from user state and candidates.

Training and serving call the same function, so the model sees in the job
exactly what it saw in training. Many users' candidates go into one batch:
histories are per user (``[U, L]``) and ``cand_user`` maps each candidate row
to its user, so a history is never copied per candidate.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from udfs.candidates import (
    SRC_CATEGORY,
    SRC_COVISIT,
    SRC_RECENT,
    SRC_TRENDING,
    Candidates,
    CandidateTables,
    covisit_scores,
)
from udfs.catalog import CatalogItem
from udfs.events import Event, Id
from udfs.state import MAX_GAP_BUCKET, UserState, gap_bucket

PAD, OOV = 0, 1
N_GAP_BUCKETS = MAX_GAP_BUCKET + 1
N_BEHAVIORS = 4
DENSE_FEATURES: tuple[str, ...] = (
    "covisit",
    "log_popularity",
    "in_history",
    "last_touch_gap",
    "log_history_count",
    "category_share",
    "same_category_as_trigger",
    "is_trigger_item",
    "log_user_pv",
    "log_user_cart",
    "log_user_fav",
    "log_user_buy",
    "src_covisit",
    "src_recent",
    "src_category",
    "src_trending",
    "max_history_behavior",
    "covisit_rank",
    "covisit_share",
    "category_in_recent",
    "recency_rank",
    "user_repeat_ratio",
    "trigger_gap",
    "log_distinct_touched",
    "brand_share",
    "price_affinity",
)
# The two catalog features (brand, price): 0 for every row unless the batch gets the catalog's
# item attributes, and the job passes them only to a model trained with them
# (``Manifest.catalog_features``), so a model never sees values it was not fitted on.
CATALOG_FEATURES: tuple[str, ...] = ("brand_share", "price_affinity")
# How many of the latest events "category_in_recent" looks at.
RECENT_CATEGORY_EVENTS = 5
INPUT_NAMES: tuple[str, ...] = (
    "hist_item", "hist_cat", "hist_beh", "hist_gap", "cand_user", "cand_item", "cand_cat", "dense",
)


@dataclass
class Vocab:
    """Frequency-thresholded id -> index maps; 0 is padding, 1 the OOV bucket."""

    items: dict[Id, int]
    categories: dict[Id, int]

    @classmethod
    def build(cls, item_counts: dict[Id, int], cat_counts: dict[Id, int], min_count: int) -> Vocab:
        def index(counts: dict[Id, int]) -> dict[Id, int]:
            keep = sorted((k for k, c in counts.items() if c >= min_count), key=lambda k: (-counts[k], str(k)))
            return {k: i + 2 for i, k in enumerate(keep)}

        return cls(index(item_counts), index(cat_counts))

    @property
    def n_items(self) -> int:
        return len(self.items) + 2

    @property
    def n_categories(self) -> int:
        return len(self.categories) + 2

    def to_bytes(self) -> bytes:
        return msgpack.packb({"items": list(self.items), "categories": list(self.categories)})

    @classmethod
    def from_bytes(cls, data: bytes) -> Vocab:
        d = msgpack.unpackb(data, raw=False, strict_map_key=False)
        return cls({k: i + 2 for i, k in enumerate(d["items"])},
                   {k: i + 2 for i, k in enumerate(d["categories"])})


@dataclass
class UserRequest:
    """One user's scoring request: state after the trigger, its candidates."""

    state: UserState
    candidates: Candidates
    trigger: Event
    fresh_hits: frozenset[Any] = frozenset()
    """Stream-hot items the model does not know, as of the trigger (see Recommender)."""


def catalog_profile(seq: Sequence[Any], attributes: Mapping[Id, CatalogItem]) -> tuple[dict[str, int], float | None]:
    """The shopper's brands (count of history rows per brand) and median log price of what
    they touched, from the catalog's records of their history items."""
    brands: dict[str, int] = {}
    log_prices: list[float] = []
    for row in seq:
        rec = attributes.get(row[1])
        if rec is None:
            continue
        if rec.brand:
            brands[rec.brand] = brands.get(rec.brand, 0) + 1
        if rec.price is not None and rec.price > 0:
            log_prices.append(math.log(rec.price))
    return brands, statistics.median(log_prices) if log_prices else None


def catalog_columns(items: Sequence[Id], seq_len: int, brands: dict[str, int], log_price: float | None,
                    attributes: Mapping[Id, CatalogItem]) -> tuple[list[float], list[float]]:
    """``brand_share``: the share of the shopper's history rows with the candidate's brand.
    ``price_affinity``: exp(-|log price - the shopper's median log price|), 1 at the shopper's
    usual price and 1/2 at about twice or half of it: a soft price band in ratios, so no
    currency or price scale is assumed. Both 0 where the catalog lacks the attribute."""
    share: list[float] = []
    affinity: list[float] = []
    for item in items:
        rec = attributes.get(item)
        if rec is None:
            share.append(0.0)
            affinity.append(0.0)
            continue
        share.append(brands.get(rec.brand, 0) / seq_len if rec.brand and seq_len else 0.0)
        price = rec.price
        if log_price is not None and price is not None and price > 0:
            affinity.append(math.exp(-abs(math.log(price) - log_price)))
        else:
            affinity.append(0.0)
    return share, affinity


def build_batch(
    requests: Sequence[UserRequest], vocab: Vocab, tables: CandidateTables, seq_len: int,
    attributes: Mapping[Id, CatalogItem] | None = None,
) -> dict[str, np.ndarray]:
    """The model's inputs for ``requests``; ``attributes`` (item -> catalog record) fills
    :data:`CATALOG_FEATURES`, which are 0 without it."""
    n_users = len(requests)
    n_rows = sum(len(r.candidates.items) for r in requests)
    hist = np.zeros((4, n_users, seq_len), dtype=np.int64)
    cand_user = np.empty(n_rows, dtype=np.int64)
    cand_item = np.empty(n_rows, dtype=np.int64)
    cand_cat = np.empty(n_rows, dtype=np.int64)
    dense = np.zeros((n_rows, len(DENSE_FEATURES)), dtype=np.float32)
    items_v, cats_v, pop = vocab.items, vocab.categories, tables.popularity
    log1p = math.log1p
    row = 0
    for u, req in enumerate(requests):
        st, cands, now = req.state, req.candidates, req.trigger.ts
        seq = st.seq[-seq_len:]
        off = seq_len - len(seq)
        # Per touched item: its latest touch (seq is in time order, so the last write wins),
        # touches and strongest behavior. Repeats: rows whose item an earlier row touched.
        last_touch: dict[Id, int] = {r[1]: r[0] for r in seq}
        touch_count = Counter(r[1] for r in seq)
        max_beh: dict[Id, int] = {}
        for r in seq:
            if r[3] > max_beh.get(r[1], -1):
                max_beh[r[1]] = r[3]
        repeats = len(seq) - len(last_touch)
        if seq:
            hist[0, u, off:] = [items_v.get(r[1], OOV) for r in seq]
            hist[1, u, off:] = [cats_v.get(r[2], OOV) for r in seq]
            hist[2, u, off:] = [r[3] + 1 for r in seq]
            hist[3, u, off:] = [gap_bucket(now - r[0]) for r in seq]
        items, cats = cands.items, cands.categories
        end = row + len(items)
        if end == row:
            continue
        aff = st.affinity
        aff_total = sum(aff.values()) or 1.0
        # Co-visitation rank and share over the user's whole neighbourhood (not just
        # the candidate list, which training subsamples): depends on state and tables only.
        cov_all = cands.neighbourhood if cands.neighbourhood is not None else covisit_scores(st, tables)[0]
        neg_sorted = sorted(-v for v in cov_all.values())
        cov_total = -sum(neg_sorted) or 1.0
        recent_cats = {r[2] for r in st.seq[-RECENT_CATEGORY_EVENTS:]}
        trig_item, trig_cat = req.trigger.item_id, req.trigger.category_id
        src = np.asarray(cands.sources, dtype=np.int64)
        cov_of = [cov_all.get(i) for i in items]
        cand_user[row:end] = u
        cand_item[row:end] = [items_v.get(i, OOV) for i in items]
        cand_cat[row:end] = [cats_v.get(c, OOV) for c in cats]
        d = dense[row:end]
        d[:, 0] = cands.covisit
        d[:, 1] = [log1p(pop.get(i, 0.0)) for i in items]
        d[:, 5] = [aff.get(c, 0.0) / aff_total for c in cats]
        d[:, 6] = [c == trig_cat for c in cats]
        d[:, 8:12] = [log1p(c) for c in st.counts]
        d[:, 12] = (src & SRC_COVISIT) != 0
        d[:, 13] = (src & SRC_RECENT) != 0
        d[:, 14] = (src & SRC_CATEGORY) != 0
        d[:, 15] = (src & SRC_TRENDING) != 0
        # 1 for the top neighbour; 0 for candidates outside the neighbourhood.
        d[:, 17] = [0.0 if c is None else 1.0 / (1.0 + bisect.bisect_left(neg_sorted, -c)) for c in cov_of]
        d[:, 18] = [0.0 if c is None else c / cov_total for c in cov_of]
        d[:, 19] = [c in recent_cats for c in cats]
        # The history features: an untouched candidate has 0 in all of them but the gap (1.0), so
        # only the few touched rows are written, by row index (most candidates are untouched).
        d[:, 3] = 1.0
        touched = [(j, i) for j, i in enumerate(items) if i in last_touch]
        if touched:
            rows = [j for j, _ in touched]
            # Exact recency order of touched items (the gap buckets above tie within a bucket):
            # 1 for the latest distinct item, 1/2 for the one before, ... by place in the
            # sequence, which keeps arrival order where timestamps tie (a log with a daily clock
            # stamps a whole day's events alike), as the candidates' own recency walk does.
            rank: dict[Id, int] = {}
            for r in reversed(seq):
                rank.setdefault(r[1], len(rank))
            d[rows, 2] = 1.0
            d[rows, 3] = [gap_bucket(now - last_touch[i]) / (N_GAP_BUCKETS - 1) for _, i in touched]
            d[rows, 4] = [log1p(touch_count[i]) for _, i in touched]
            d[rows, 16] = [(max_beh[i] + 1) / N_BEHAVIORS for _, i in touched]
            d[rows, 20] = [1.0 / (1.0 + rank[i]) for _, i in touched]
        d[:, 7] = [i == trig_item for i in items]
        # Per shopper, so the model can learn when a repeat or a new item is likelier:
        # the share of their events that re-touched an item, the gap since the previous event.
        d[:, 21] = repeats / (len(seq) - 1) if len(seq) > 1 else 0.0
        d[:, 22] = gap_bucket(now - seq[-2][0]) / (N_GAP_BUCKETS - 1) if len(seq) > 1 else 1.0
        d[:, 23] = math.log1p(len(last_touch))
        if attributes:
            brands, log_price = catalog_profile(seq, attributes)
            d[:, 24], d[:, 25] = catalog_columns(items, len(seq), brands, log_price, attributes)
        row = end
    return {
        "hist_item": hist[0],
        "hist_cat": hist[1],
        "hist_beh": hist[2],
        "hist_gap": hist[3],
        "cand_user": cand_user,
        "cand_item": cand_item,
        "cand_cat": cand_cat,
        "dense": dense,
    }

"""Model inputs computed from user state and candidates.

Training and serving call the same function, so the model sees in the job
exactly what it saw in training. Many users' candidates go into one batch:
histories are per user (``[U, L]``) and ``cand_user`` maps each candidate row
to its user, so a history is never copied per candidate.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

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
from udfs.events import Event, Id
from udfs.state import UserState, gap_bucket

PAD, OOV = 0, 1
N_GAP_BUCKETS = 21
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
)
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


def build_batch(
    requests: Sequence[UserRequest], vocab: Vocab, tables: CandidateTables, seq_len: int
) -> dict[str, np.ndarray]:
    n_users = len(requests)
    n_rows = sum(len(r.candidates.items) for r in requests)
    hist = np.zeros((4, n_users, seq_len), dtype=np.int64)
    cand_user = np.empty(n_rows, dtype=np.int64)
    cand_item = np.empty(n_rows, dtype=np.int64)
    cand_cat = np.empty(n_rows, dtype=np.int64)
    dense = np.zeros((n_rows, len(DENSE_FEATURES)), dtype=np.float32)
    items_v, cats_v, pop = vocab.items, vocab.categories, tables.popularity
    row = 0
    for u, req in enumerate(requests):
        st, cands, now = req.state, req.candidates, req.trigger.ts
        seq = st.seq[-seq_len:]
        off = seq_len - len(seq)
        last_touch: dict[Id, int] = {}
        touch_count: dict[Id, int] = {}
        max_beh: dict[Id, int] = {}
        for j, (ts, item, cat, beh) in enumerate(seq):
            hist[0, u, off + j] = items_v.get(item, OOV)
            hist[1, u, off + j] = cats_v.get(cat, OOV)
            hist[2, u, off + j] = beh + 1
            hist[3, u, off + j] = gap_bucket(now - ts)
            last_touch[item] = ts
            touch_count[item] = touch_count.get(item, 0) + 1
            max_beh[item] = max(max_beh.get(item, 0), beh)
        aff = st.affinity
        aff_total = sum(aff.values()) or 1.0
        user_counts = [math.log1p(c) for c in st.counts]
        # Co-visitation rank and share over the user's whole neighbourhood (not just
        # the candidate list, which training subsamples): depends on state and tables only.
        cov_all, _ = covisit_scores(st, tables)
        cov_sorted = sorted(cov_all.values(), reverse=True)
        neg_sorted = [-v for v in cov_sorted]
        cov_total = sum(cov_sorted) or 1.0
        recent_cats = {row[2] for row in st.seq[-RECENT_CATEGORY_EVENTS:]}
        for item, cat, src, cov in zip(cands.items, cands.categories, cands.sources, cands.covisit):
            cand_user[row] = u
            cand_item[row] = items_v.get(item, OOV)
            cand_cat[row] = cats_v.get(cat, OOV)
            touched = item in last_touch
            d = dense[row]
            d[0] = cov
            d[1] = math.log1p(pop.get(item, 0.0))
            d[2] = 1.0 if touched else 0.0
            d[3] = gap_bucket(now - last_touch[item]) / (N_GAP_BUCKETS - 1) if touched else 1.0
            d[4] = math.log1p(touch_count.get(item, 0))
            d[5] = aff.get(cat, 0.0) / aff_total
            d[6] = 1.0 if cat == req.trigger.category_id else 0.0
            d[7] = 1.0 if item == req.trigger.item_id else 0.0
            d[8:12] = user_counts
            d[12] = 1.0 if src & SRC_COVISIT else 0.0
            d[13] = 1.0 if src & SRC_RECENT else 0.0
            d[14] = 1.0 if src & SRC_CATEGORY else 0.0
            d[15] = 1.0 if src & SRC_TRENDING else 0.0
            d[16] = (max_beh[item] + 1) / N_BEHAVIORS if touched else 0.0
            c = cov_all.get(item)
            if c is not None:
                d[17] = 1.0 / (1.0 + bisect.bisect_left(neg_sorted, -c))  # 1 for the top item
                d[18] = c / cov_total
            d[19] = 1.0 if cat in recent_cats else 0.0
            row += 1
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

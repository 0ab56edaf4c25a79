"""Candidate generation: item co-visitation, the user's recent items and
categories, and trending items; never items the user already bought where the
training log says shoppers do not come back to them (:func:`bought_items_recur`).

Training builds :class:`CandidateTables` from the log; the job loads them from
the artifact. The same function generates candidates offline and online.
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from udfs.events import BEHAVIOR_INDEX, Event, Id
from udfs.item_knowledge import BACKWARD_SHARE, earlier_items, pair_weight, remember
from udfs.state import BEHAVIOR_WEIGHT, UserState
from udfs.timescales import derive_covisit_window_ms, derive_popularity_half_life_ms

# Sources a candidate can come from (bit flags; the first four are also model features).
SRC_COVISIT, SRC_RECENT, SRC_CATEGORY, SRC_TRENDING = 1, 2, 4, 8
# A new catalog item with no behavior yet, similar to what the shopper touched (udfs/catalog.py).
# Not a model feature: the model was trained before the item existed.
SRC_NEW = 16
# How far back in the user's sequence co-visitation looks, and its decay.
COVISIT_SOURCE_ITEMS = 10
COVISIT_RECENCY_DECAY = 0.8


@dataclass
class CandidateTables:
    """Item-to-item co-visitation, popularity and category tables."""

    covisit: dict[Id, list[tuple[Id, float]]] = field(default_factory=dict)
    trending: list[Id] = field(default_factory=list)
    popularity: dict[Id, float] = field(default_factory=dict)
    category_top: dict[Id, list[Id]] = field(default_factory=dict)
    item_category: dict[Id, Id] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        return msgpack.packb(
            {
                "covisit": {k: [[i, s] for i, s in v] for k, v in self.covisit.items()},
                "trending": self.trending,
                "popularity": self.popularity,
                "category_top": self.category_top,
                "item_category": self.item_category,
            },
            use_bin_type=True,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> CandidateTables:
        d = msgpack.unpackb(data, raw=False, strict_map_key=False)
        return cls(
            covisit={k: [(i, s) for i, s in v] for k, v in d["covisit"].items()},
            trending=d["trending"],
            popularity=d["popularity"],
            category_top=d["category_top"],
            item_category=d["item_category"],
        )


def build_tables(
    events: Iterable[Event],
    *,
    window: int = 5,
    window_ms: int | None = None,
    per_item: int = 50,
    trending_size: int = 200,
    per_category: int = 50,
    popularity_half_life_ms: int | None = None,
) -> CandidateTables:
    """Co-visitation: item b counts for item a when the same user touched b
    within ``window`` events and ``window_ms`` after a, once per event of b and as the stream's
    rows count it (:func:`udfs.item_knowledge.earlier_items`, :data:`udfs.item_knowledge.PAIR_WEIGHTS`).
    Popularity decays towards the end of the log so 'trending' means recent.

    ``window_ms`` and ``popularity_half_life_ms`` default to the log's own scales
    (:mod:`udfs.timescales`); training derives them once and passes them to every
    point-in-time table, so all of them use the same scales."""
    by_user: dict[Id, list[Event]] = defaultdict(list)
    items: list[Event] = []
    for e in events:
        by_user[e.user_id].append(e)
        items.append(e)
    if not items:
        return CandidateTables()
    if window_ms is None:
        window_ms = derive_covisit_window_ms(items)
    if popularity_half_life_ms is None:
        popularity_half_life_ms = derive_popularity_half_life_ms(items)
    end_ts = max(e.ts for e in items)
    pop: dict[Id, float] = defaultdict(float)
    item_cat: dict[Id, Id] = {}
    for e in items:
        w = BEHAVIOR_WEIGHT[BEHAVIOR_INDEX[e.behavior]]
        pop[e.item_id] += w * 2.0 ** (-(end_ts - e.ts) / popularity_half_life_ms)
        item_cat[e.item_id] = e.category_id
    co: dict[Id, dict[Id, float]] = defaultdict(lambda: defaultdict(float))
    for seq in by_user.values():
        seq.sort(key=lambda e: e.ts)
        recent: list[list[Any]] = []
        for b in seq:
            w = pair_weight(b.behavior)
            for a in earlier_items(recent, b.item_id, b.ts, window_ms):
                co[a][b.item_id] += w
                co[b.item_id][a] += BACKWARD_SHARE * w
            remember(recent, b.item_id, b.ts, window)
    covisit = {
        a: sorted(((b, round(s, 4)) for b, s in nbrs.items()), key=lambda t: -t[1])[:per_item]
        for a, nbrs in co.items()
    }
    ranked = sorted(pop, key=lambda i: -pop[i])
    by_cat: dict[Id, list[Id]] = defaultdict(list)
    for item in ranked:
        lst = by_cat[item_cat[item]]
        if len(lst) < per_category:
            lst.append(item)
    return CandidateTables(
        covisit=covisit,
        trending=ranked[:trending_size],
        popularity={i: round(s, 4) for i, s in pop.items()},
        category_top=dict(by_cat),
        item_category=item_cat,
    )


@dataclass
class Candidates:
    """Candidate items with per-candidate generator signals, in generation order."""

    items: list[Id]
    categories: list[Id]
    sources: list[int]
    covisit: list[float]
    neighbourhood: dict[Id, float] | None = None
    """Co-visitation scores of every neighbour (the features need them; computed once)."""
    because: dict[Id, Id] | None = None
    """Per neighbour, the touched item that gave the largest share of its co-visitation score
    (a covisit item's reason names it)."""


def _add(out: dict[Id, list[Any]], item: Id, cat: Id, src: int, cov: float = 0.0) -> None:
    row = out.get(item)
    if row is None:
        out[item] = [cat, src, cov]
    else:
        row[1] |= src
        row[2] = max(row[2], cov)


def covisit_scores(state: UserState, tables: CandidateTables) -> tuple[dict[Id, float], list[Id]]:
    """Co-visitation score of every neighbour of the user's last
    ``COVISIT_SOURCE_ITEMS`` distinct items (recency-decayed), and those source items, most
    recent first."""
    cov, sources, _ = covisit_neighbourhood(state, tables)
    return cov, sources


def covisit_neighbourhood(
    state: UserState, tables: CandidateTables
) -> tuple[dict[Id, float], list[Id], dict[Id, Id]]:
    """:func:`covisit_scores`, plus per neighbour the source item whose term was largest.

    A source item with a fresh row in the shopper's state (``state.rows``) uses it, else the
    artifact's row.

    Tracked in the same pass (one comparison per table entry), so reasons cost no second
    walk; on a tie the more recent source keeps it. Scores are summed exactly as before."""
    # The hot loop of every event (~500 table entries): plain dicts and local names, and a
    # neighbour's first term stored as is (0.0 + term is term), so sums match a defaultdict's.
    cov: dict[Id, float] = {}
    best: dict[Id, float] = {}
    because: dict[Id, Id] = {}
    sources: list[Id] = []
    seen: set[Id] = set()
    table = tables.covisit
    # Rows the stream kept learning (udfs/item_knowledge.py) stand in for the artifact's.
    fresh = state.rows
    cov_get, best_get = cov.get, best.get
    for row in reversed(state.seq):
        source = row[1]
        if source in seen:
            continue
        seen.add(source)
        sources.append(source)
        # By recency alone: weighting a source by the shopper's behavior on it (a bought item's
        # neighbours 4 times a viewed one's) found fewer of the next new items on tmall and jdata.
        w = COVISIT_RECENCY_DECAY ** (len(sources) - 1)
        entries = fresh.get(source) if fresh else None
        for other, s in entries if entries is not None else table.get(source, ()):
            term = w * s
            prev = cov_get(other)
            cov[other] = term if prev is None else prev + term
            if term > best_get(other, 0.0):
                best[other] = term
                because[other] = source
        if len(sources) >= COVISIT_SOURCE_ITEMS:
            break
    return cov, sources, because


def generate_candidates(
    state: UserState,
    tables: CandidateTables,
    n: int,
    trending: Sequence[Id] | None = None,
    trending_categories: Mapping[Id, Id] | None = None,
    *,
    blocked: Collection[Id] = (),
    new_items: Sequence[tuple[Id, Id, float]] = (),
    exclude_bought: bool = True,
) -> Candidates:
    """Up to ``n`` candidates: co-visitation of recent items first, then the
    user's recent items, new catalog items like what the user touched
    (``new_items``: ``(item, category, score)``), the top categories, then trending (the
    cold-start fallback). ``blocked`` items (the catalog's out of stock or deleted
    items) are excluded everywhere, and so are bought ones with ``exclude_bought``."""
    bought = set(state.bought) if exclude_bought else set()
    seen_cat: dict[Id, Id] = {row[1]: row[2] for row in state.seq}
    out: dict[Id, list[Any]] = {}

    cov, sources, because = covisit_neighbourhood(state, tables)
    # nlargest is sorted(..., reverse=True)[:k]: stable, so ties keep insertion order.
    item_category, log1p = tables.item_category, math.log1p
    # The first source: each item once, into an empty list, so rows are written directly.
    for item in heapq.nlargest(max(1, n // 2), cov, key=cov.__getitem__):
        if item not in bought and item not in blocked:
            out[item] = [item_category.get(item, seen_cat.get(item, -1)), SRC_COVISIT, log1p(cov[item])]

    for item in sources[: max(1, n // 5)]:
        if item not in bought and item not in blocked:
            _add(out, item, seen_cat[item], SRC_RECENT, math.log1p(cov.get(item, 0.0)))

    # Before the categories' popular items, so the cut at n never drops them (at most n // 10). Best
    # first (the catalog orders them); the score only ordered them: the covisit feature stays
    # what it is for every candidate, the item's co-visitation (none yet for a new item).
    for item, cat, _score in new_items:
        if item not in bought and item not in blocked:
            _add(out, item, cat, SRC_NEW, math.log1p(cov.get(item, 0.0)))

    top_cats = sorted(state.affinity, key=lambda c: -state.affinity[c])[:3]
    per_cat = max(1, n // 10)
    for cat in top_cats:
        for item in tables.category_top.get(cat, ())[:per_cat]:
            if item not in bought and item not in blocked:
                _add(out, item, cat, SRC_CATEGORY, math.log1p(cov.get(item, 0.0)))

    stream_cats = trending_categories or {}
    for item in trending if trending is not None else tables.trending:
        if len(out) >= n:
            break
        if item not in bought and item not in blocked:
            known = tables.item_category.get(item)
            # a new item, seen only in the stream, takes its category from the stream
            _add(out, item, known if known is not None else stream_cats.get(item, -1), SRC_TRENDING,
                 math.log1p(cov.get(item, 0.0)))

    chosen = list(out.items())[:n]
    return Candidates(
        items=[i for i, _ in chosen],
        categories=[r[0] for _, r in chosen],
        sources=[r[1] for _, r in chosen],
        covisit=[r[2] for _, r in chosen],
        neighbourhood=cov,
        because=because,
    )


def bought_items_recur(events: Iterable[Event]) -> bool:
    """Whether shoppers come back to what they bought at least as often as to what they only touched.

    Over the shoppers' events in time order: for every event after a shopper's first, the share of
    their bought items it touches again, and the same for the items they touched without buying;
    summed, each over its item-slots. A shop of durable goods shows bought items rarely touched
    again, and listing them wastes slots; a shop of brands or consumables shows the opposite (on
    the development logs, 4 to 6 times as often per item). False when no bought item is ever
    touched again (nothing to gain, e.g. a log with one behavior only)."""
    bought: dict[Id, set[Id]] = defaultdict(set)
    touched: dict[Id, set[Id]] = defaultdict(set)
    again_bought = again_other = slots_bought = slots_other = 0
    for e in events:
        mine, seen = bought[e.user_id], touched[e.user_id]
        if seen:
            slots_bought += len(mine)
            slots_other += len(seen) - len(mine & seen)
            if e.item_id in mine:
                again_bought += 1
            elif e.item_id in seen:
                again_other += 1
        seen.add(e.item_id)
        if e.behavior == "buy":
            mine.add(e.item_id)
    if not again_bought:
        return False
    # again_bought / slots_bought >= again_other / slots_other, without dividing by zero
    return again_bought * slots_other >= again_other * slots_bought


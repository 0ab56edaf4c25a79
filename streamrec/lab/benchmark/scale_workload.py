"""The store-scale bench's workload and state sizes, computed without a cluster: shoppers shaped
from a log, the bytes each shopper's state takes."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from streamrec.lab.generator import ITEM_ID_BASE, USER_ID_BASE
from udfs.errors import InputError
from udfs.events import Event
from udfs.item_knowledge import ItemKnowledge, keep_row
from udfs.state import StateLimits, UserState, update_state


def shape_shoppers(events: Sequence[Event], shoppers: int) -> list[Event]:
    """The same events, re-keyed so that exactly ``shoppers`` distinct shoppers appear.

    The generator gives far fewer distinct users than events (users draw sessions), so
    each generated user's events, in stream order, are cut into contiguous runs that
    become shoppers of their own: every generated user keeps at least one shopper, and
    the remaining shoppers are shared out in proportion to each user's spare events
    (largest remainders), so a busier user becomes more shoppers, each with a history
    of the user's items, categories and timing. Shopper ids are ``USER_ID_BASE`` ..
    ``USER_ID_BASE + shoppers - 1``, numbered in order of first appearance.
    """
    n = len(events)
    users = np.fromiter((e.user_id for e in events), dtype=np.int64, count=n)
    uniq, first, inverse, counts = np.unique(users, return_index=True, return_inverse=True, return_counts=True)
    n_base = len(uniq)
    if not n_base <= shoppers <= n:
        raise InputError(f"shoppers must be between the log's distinct users ({n_base:,}) and its events ({n:,}); "
                         f"got {shoppers:,}")
    spare = counts - 1
    extra_total = shoppers - n_base
    total_spare = int(spare.sum())
    if extra_total and total_spare:
        exact = spare * (extra_total / total_spare)
        extra = np.floor(exact).astype(np.int64)
        left = extra_total - int(extra.sum())
        if left:
            frac = exact - extra
            # Largest remainders first; ties by first appearance (deterministic).
            order = np.lexsort((first, -frac))
            extra[order[:left]] += 1
    else:
        extra = np.zeros(n_base, dtype=np.int64)
    chunks = 1 + np.minimum(extra, spare)
    # Ids in order of first appearance of the generated user.
    by_appearance = np.argsort(first, kind="stable")
    offset = np.empty(n_base, dtype=np.int64)
    offset[by_appearance] = np.concatenate(([0], np.cumsum(chunks[by_appearance])[:-1]))
    # Position of each event among its user's events, in stream order.
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - np.repeat(starts, counts)
    shopper = USER_ID_BASE + offset[inverse] + rank * chunks[inverse] // counts[inverse]
    return [e._replace(user_id=int(s)) for e, s in zip(events, shopper.tolist(), strict=True)]


def reach_distinct_items(events: Sequence[Event], catalog_items: int, distinct: int, seed: int) -> list[Event]:
    """The same events, with enough of them moved to catalog items the stream never touches
    that exactly ``distinct`` items appear (or the stream's own count, if that is larger).

    A generated stream is Zipf-shaped: a few million events touch a fraction of a large
    catalog, while a store's state has to hold its long tail too. Each moved event takes
    a different untouched item (a seeded walk over the catalog ids ``ITEM_ID_BASE`` ..
    ``ITEM_ID_BASE + catalog_items - 1``) and keeps its shopper, time, behavior and
    category, so shopper histories and the funnel are unchanged. Only an event whose item
    occurs again elsewhere is moved, so no item the stream had disappears.
    """
    have = {e.item_id for e in events}
    need = distinct - len(have)
    if need <= 0:
        return list(events)
    if distinct > catalog_items:
        raise InputError(f"distinct items ({distinct:,}) cannot exceed the catalog's items ({catalog_items:,})")
    rng = np.random.default_rng(seed)
    untouched = np.setdiff1d(np.arange(ITEM_ID_BASE, ITEM_ID_BASE + catalog_items), np.fromiter(
        (i for i in have if isinstance(i, int)), dtype=np.int64))
    tail = rng.permutation(untouched)[:need].tolist()
    if len(tail) < need:
        raise InputError(f"the catalog has only {len(tail):,} untouched items for {need:,} more distinct items")
    left: dict[Any, int] = {}
    for e in events:
        left[e.item_id] = left.get(e.item_id, 0) + 1
    out = list(events)
    for k in rng.permutation(len(out)).tolist():
        if not tail:
            break
        e = out[k]
        if left[e.item_id] > 1:
            left[e.item_id] -= 1
            out[k] = e._replace(item_id=tail.pop())
    if tail:
        raise InputError(f"{len(events):,} events cannot hold {distinct:,} distinct items")
    return out


def replay_state_bytes(events: Iterable[Event], limits: StateLimits, since_ms: int = 0,
                       knowledge: ItemKnowledge | None = None) -> tuple[list[int], int]:
    """Each shopper's stored state size after the stream, and the lists the job emits.

    The job's own steps (``RecommendFunction.process_element``): read the shopper's bytes,
    apply the event (a duplicate changes nothing and emits nothing), count an emitted
    list for events at or after ``since_ms``, write ``UserState.to_bytes()`` back. With
    ``knowledge`` (online item rows, as the job's item steps keep them), every event first
    counts its pairs there, and the shopper keeps the touched item's fresh row as the job does
    (``Recommender.apply``); ``knowledge.rows`` then holds every item's row.
    """
    stored: dict[Any, bytes] = {}
    lists = 0
    for e in events:
        row = knowledge.observe(e.user_id, e) if knowledge is not None else None
        state = UserState.from_bytes(stored.get(e.user_id))
        if not update_state(state, e, limits):
            continue
        if knowledge is not None and row is not None:
            keep_row(state, e.item_id, row, knowledge.params.kept_rows)
        if e.ts >= since_ms:
            state.emitted += 1
            lists += 1
        stored[e.user_id] = state.to_bytes()
    return [len(b) for b in stored.values()], lists


def item_row_bytes(knowledge: ItemKnowledge) -> list[int]:
    """Each item row's stored size: the job's item step keeps one row per touched item in the
    same layout (``ItemRow.to_bytes``, shared with ItemRow.java)."""
    return [len(row.to_bytes()) for row in knowledge.rows.values()]


def nearest_rank(sorted_values: Sequence[int | float], pct: float) -> float:
    """The ``pct`` percentile by nearest rank: an observed value, no interpolation."""
    if not sorted_values:
        raise ValueError("no values")
    k = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return float(sorted_values[k - 1])


def bytes_summary(sizes: Sequence[int]) -> dict[str, float]:
    s = sorted(sizes)
    return {"count": len(s), "total": float(sum(s)), "mean": sum(s) / len(s), "p50": nearest_rank(s, 50),
            "p99": nearest_rank(s, 99), "max": float(s[-1])}

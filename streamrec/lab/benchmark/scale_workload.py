"""The store-scale bench's workload and state sizes, computed without a cluster: shoppers shaped
from a log, the bytes each shopper's state takes."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from streamrec.lab.generator import USER_ID_BASE
from udfs.errors import InputError
from udfs.events import Event
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


def replay_state_bytes(events: Iterable[Event], limits: StateLimits, since_ms: int = 0) -> tuple[list[int], int]:
    """Each shopper's stored state size after the stream, and the lists the job emits.

    The job's own steps (``RecommendFunction.process_element``): read the shopper's bytes,
    apply the event (a duplicate changes nothing and emits nothing), count an emitted
    list for events at or after ``since_ms``, write ``UserState.to_bytes()`` back.
    """
    stored: dict[Any, bytes] = {}
    lists = 0
    for e in events:
        state = UserState.from_bytes(stored.get(e.user_id))
        if not update_state(state, e, limits):
            continue
        if e.ts >= since_ms:
            state.emitted += 1
            lists += 1
        stored[e.user_id] = state.to_bytes()
    return [len(b) for b in stored.values()], lists


def nearest_rank(sorted_values: Sequence[int | float], pct: float) -> float:
    """The ``pct`` percentile by nearest rank: an observed value, no interpolation."""
    if not sorted_values:
        raise ValueError("no values")
    k = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return float(sorted_values[k - 1])


def bytes_summary(sizes: Sequence[int]) -> dict[str, float]:
    s = sorted(sizes)
    return {"shoppers": len(s), "total": float(sum(s)), "mean": sum(s) / len(s), "p50": nearest_rank(s, 50),
            "p99": nearest_rank(s, 99), "max": float(s[-1])}

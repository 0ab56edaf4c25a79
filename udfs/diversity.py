"""Diversity re-ranking: at most ``cap`` items of one category in a list.

A cap rather than maximal marginal relevance: it needs no score scale (model
logits, generator scores and fallbacks all work), a shop can say it in one
sentence, and a greedy cap has the prefix property: the first ``k`` items of a
capped list of any length are the capped list of length ``k``, so a cap measured
on top-10 lists means the same for ``ranking.top_k`` 20.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import islice

import numpy as np

from udfs.events import Id

OFF = 0
"""``ranking.max_per_category`` value that turns the re-ranking off."""


def cap_per_category(order: Iterable[int], categories: Sequence[Id], cap: int, k: int) -> list[int]:
    """The first ``k`` rows of ``order`` (best first) with at most ``cap`` per category.

    Rows over the cap are skipped; when too few categories remain to fill ``k``
    slots, skipped rows fill the tail in their original order, so a list is never
    shortened. ``cap`` = ``OFF`` returns ``order[:k]`` unchanged.
    """
    # A ranked numpy array becomes Python ints once: iterating it yields numpy scalars, each
    # converted again on every use (a third of this function's time per event).
    rows = order.tolist() if isinstance(order, np.ndarray) else order
    if cap == OFF:
        return [int(i) for i in islice(rows, k)]
    taken: list[int] = []
    skipped: list[int] = []
    per: dict[Id, int] = {}
    for i in rows:
        if len(taken) == k:
            break
        i = int(i)
        c = categories[i]
        seen = per.get(c, 0)
        if seen < cap:
            per[c] = seen + 1
            taken.append(i)
        else:
            skipped.append(i)
    return taken + skipped[: k - len(taken)]

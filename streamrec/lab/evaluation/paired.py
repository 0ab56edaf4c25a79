"""Model against a baseline on the same tested events: the difference and its interval.

Both rank the same held-out events, so the comparison is paired: per event, the model's
gain minus the baseline's. The interval is the A/B report's cluster bootstrap over shoppers
(:mod:`streamrec.lab.evaluation.ab_report`): a shopper's events are not independent draws, so
whole shoppers are resampled. A difference whose interval holds 0 is a tie, not a win.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from streamrec.lab.evaluation.ab_report import LEVEL, bootstrap_ratios, percentile_interval
from udfs.events import Id

RESAMPLES = 1000


class Tested(Protocol):
    list_key: tuple[Id, int]
    target: Id
    novel: bool


def request_gains(lists: Mapping[tuple[Id, int], Sequence[Id]], tested: Sequence[Tested], k: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per tested event: NDCG@k of its item in the list before it, and hit@k (0 for no list)."""
    ndcg = np.zeros(len(tested))
    hit = np.zeros(len(tested))
    for i, t in enumerate(tested):
        top = list(lists.get(t.list_key, ()))[:k]
        if t.target in top:
            hit[i] = 1.0
            ndcg[i] = 1.0 / math.log2(top.index(t.target) + 2)
    return ndcg, hit


def paired_difference(users: Sequence[Id], diff: np.ndarray, *, resamples: int = RESAMPLES, seed: int = 0,
                      level: float = LEVEL) -> dict[str, Any]:
    """Mean of ``diff`` (one value per tested event of ``users``), its shopper-bootstrap interval,
    and the verdict: ``win`` above 0, ``loss`` below, ``tie`` when the interval holds 0."""
    if len(users) != len(diff):
        raise ValueError(f"{len(users)} users for {len(diff)} differences")
    if not len(diff):
        return {"diff": math.nan, "ci": (math.nan, math.nan), "verdict": "n/a", "events": 0, "shoppers": 0}
    index: dict[Id, int] = {}
    rows = np.fromiter((index.setdefault(u, len(index)) for u in users), dtype=np.int64, count=len(users))
    n = np.bincount(rows, minlength=len(index)).astype(np.int64)
    sums = np.bincount(rows, weights=diff, minlength=len(index))
    (reps,) = bootstrap_ratios(n, [sums], resamples, np.random.default_rng(seed))
    lo, hi = percentile_interval(reps, level)
    verdict = "win" if lo > 0 else "loss" if hi < 0 else "tie"
    return {"diff": float(diff.mean()), "ci": (lo, hi), "verdict": verdict, "events": len(diff),
            "shoppers": len(index)}


def compare(model_lists: Sequence[Mapping[tuple[Id, int], Sequence[Id]]],
            baseline: Mapping[tuple[Id, int], Sequence[Id]], tested: Sequence[Tested], k: int,
            **bootstrap: Any) -> dict[str, dict[str, Any]]:
    """NDCG@k over every tested event and HR@k over the novel ones: the mean over ``model_lists``
    (one per seed, each event's gain averaged) minus ``baseline``'s, paired by event."""
    gains = [request_gains(lists, tested, k) for lists in model_lists]
    model_ndcg = np.mean([g[0] for g in gains], axis=0)
    model_hit = np.mean([g[1] for g in gains], axis=0)
    base_ndcg, base_hit = request_gains(baseline, tested, k)
    users = [t.list_key[0] for t in tested]
    novel = np.array([t.novel for t in tested], dtype=bool)
    return {
        f"ndcg@{k}": paired_difference(users, model_ndcg - base_ndcg, **bootstrap),
        f"novel_hr@{k}": paired_difference([u for u, v in zip(users, novel, strict=True) if v],
                                           (model_hit - base_hit)[novel], **bootstrap),
    }

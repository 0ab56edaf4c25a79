"""Choices made after fitting, on a validation slice inside the training part.

A next-item model fitted to a shop's log learns that re-touched items are the
likeliest next ones (on the shared logs most requests are repeats), and it
ranks the few new items the shopper will want below every item they already
touched. Whether that trade is right depends on the shop, so it is measured,
not assumed. And where the log gives the model little to learn from, the
simple orders (co-visitation, recent items) can beat it outright. So the final
score is a blend, chosen per log on the validation slice:

    score = model + boost * untouched + prior_weight * baseline_prior(mix)

where ``baseline_prior`` encodes the co-visitation + recent order (``mix`` 0),
the co-visitation order (``mix`` 1) or a mixture (:func:`model_export.model.baseline_prior`).
Weight 0 is the model alone; a large weight is the baselines' order with the
model breaking its ties and settling where touched and new items interleave.
:func:`choose_blend` picks the blend whose list is best against the best
baseline on *both* NDCG@10 and novel-item HR@10 of the validation slice
(maximising the smaller of the two ratios model / best baseline). The best
baselines are the ones that learn online from the same stream and make their own
lists (:func:`model_export.online_baselines.online_metrics`), the ones the model is
compared with: re-rankers of the model's own candidates with frozen tables are
weaker, and a blend tuned against them stops short of what the comparison asks.
They stay in the choice's record (``frozen_baselines``) as a diagnostic. The held-out
part of the log plays no part in the choice.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import product
from typing import Any

import numpy as np
import torch

from model_export.dataset import ExampleSet
from model_export.evaluate import evaluate
from model_export.model import baseline_prior
from udfs.features import DENSE_FEATURES
from udfs.ranking_metrics import K

# Boosts tried, in logits of the model's score. 0 keeps the fitted model's list.
BOOST_GRID: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
# Weights of the baselines' order, in logits per unit of the prior (its touched/untouched
# step is 1 to 2 units); 0 is the model alone.
PRIOR_WEIGHTS: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 32.0)
PRIOR_MIXES: tuple[float, ...] = (0.0, 0.5, 1.0)
TUNED_METRICS = ("ndcg@10", "novel_hr@10")
_IN_HISTORY = DENSE_FEATURES.index("in_history")
# How many of the tried blends the manifest keeps (the best first).
KEEP_TRIED = 12


def _ratio(model: float, base: float) -> float:
    if base > 0:
        return model / base
    return 1.0 if model <= 0 else math.inf


def first_hit_ranks(es: ExampleSet, scores: np.ndarray) -> np.ndarray:
    """Per request, the 0-based rank of its true item when sorted by ``scores`` (higher
    first, ties in candidate order, as ``model_export.evaluate.rank_lists`` ranks), or -1
    when it is not a candidate. Vectorised over requests and without a sort: the rank of the
    true item is how many candidates come before it (a higher score, or the same one earlier
    in the list); the blend grid ranks over a thousand times."""
    lens = np.diff(es.offsets)
    if not len(lens):
        return np.zeros(0, dtype=np.int64)
    width = int(lens.max())
    cols = np.arange(width)
    valid = cols[None, :] < lens[:, None]
    idx = np.minimum(es.offsets[:-1, None] + cols[None, :], max(es.n_rows - 1, 0))
    s = np.where(valid, np.asarray(scores, dtype=np.float64)[idx], -np.inf)
    hit = np.where(valid, es.labels[idx] > 0.5, False)
    if (hit.sum(axis=1) > 1).any():  # several true items: the best placed one, by a full sort
        order = np.argsort(-s, axis=1, kind="stable")
        ranked = np.take_along_axis(hit, order, axis=1)
        return np.where(ranked.any(axis=1), ranked.argmax(axis=1), -1)
    has = hit.any(axis=1)
    at = hit.argmax(axis=1)
    mine = s[np.arange(len(lens)), at][:, None]
    before = valid & ((s > mine) | ((s == mine) & (cols[None, :] < at[:, None])))
    return np.where(has, before.sum(axis=1), -1)


def tuned_metrics(es: ExampleSet, scores: np.ndarray, k: int = K) -> dict[str, float]:
    """NDCG@k and novel-item HR@k of ``scores`` (the values ``evaluate`` gives)."""
    rank = first_hit_ranks(es, scores)
    inside = (rank >= 0) & (rank < k)
    ndcg = np.where(inside, 1.0 / np.log2(np.maximum(rank, 0) + 2.0), 0.0)
    novel = es.novel
    return {f"ndcg@{k}": float(ndcg.mean()) if len(rank) else 0.0,
            f"novel_hr@{k}": float(inside[novel].mean()) if novel.any() else 0.0}


def choose_blend(es: ExampleSet, scores: np.ndarray, *, catalog_size: int,
                 reference: Mapping[str, Mapping[str, float]] | None = None,
                 boosts: tuple[float, ...] = BOOST_GRID, weights: tuple[float, ...] = PRIOR_WEIGHTS,
                 mixes: tuple[float, ...] = PRIOR_MIXES) -> dict[str, Any]:
    """The blend (boost, prior weight, mix) whose list has the largest min over
    :data:`TUNED_METRICS` of model / best baseline on ``es``; ties go to the smaller weight,
    then the smaller boost, then the smaller mix. ``reference``: per baseline, its metrics on
    the same requests (the online baselines'); None: the frozen re-rankers of ``es``'s own
    candidates (:data:`model_export.evaluate.BASELINES`). Returns the choice, the best
    baselines' values, the frozen re-rankers' and the best :data:`KEEP_TRIED` blends tried
    (for the manifest)."""
    if not len(es):
        return {"boost": 0.0, "prior_weight": 0.0, "prior_mix": 0.0, "requests": 0,
                "reason": "no validation requests"}
    dense = es.arrays["dense"]
    untouched = (dense[:, _IN_HISTORY] <= 0).astype(np.float64)
    s = np.asarray(scores, dtype=np.float64)
    frozen = evaluate(es, catalog_size=catalog_size)["rankers"]
    baselines = reference if reference else frozen
    best = {m: max(baselines, key=lambda name: baselines[name][m]) for m in TUNED_METRICS}
    dense_t = torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32))
    priors = {mix: baseline_prior(dense_t, mix).double().numpy() for mix in mixes}
    tried = []
    for w, b, mix in product(weights, boosts, mixes):
        if w == 0 and mix != mixes[0]:
            continue  # the mix does nothing without weight
        m = tuned_metrics(es, s + b * untouched + w * priors[mix])
        ratios = {k: _ratio(m[k], baselines[best[k]][k]) for k in TUNED_METRICS}
        tried.append({"boost": b, "prior_weight": w, "prior_mix": mix, **m, "min_ratio": min(ratios.values())})
    tried.sort(key=lambda t: (-t["min_ratio"], t["prior_weight"], t["boost"], t["prior_mix"]))
    chosen = tried[0]
    return {"boost": chosen["boost"], "prior_weight": chosen["prior_weight"], "prior_mix": chosen["prior_mix"],
            "min_ratio": chosen["min_ratio"], "requests": len(es), "novel_requests": int(es.novel.sum()),
            "best_baselines": {k: {"ranker": best[k], "value": baselines[best[k]][k]} for k in TUNED_METRICS},
            "frozen_baselines": {name: {k: m[k] for k in TUNED_METRICS} for name, m in frozen.items()},
            "model_alone": next(t for t in tried if t["prior_weight"] == 0 and t["boost"] == 0),
            "tried": tried[:KEEP_TRIED], "blends_tried": len(tried)}


def choose_novelty_boost(es: ExampleSet, scores: np.ndarray, *, catalog_size: int,
                         grid: tuple[float, ...] = BOOST_GRID) -> dict[str, Any]:
    """:func:`choose_blend` with the baselines' weight held at 0: the boost alone."""
    return choose_blend(es, scores, catalog_size=catalog_size, boosts=grid, weights=(0.0,), mixes=(0.0,))

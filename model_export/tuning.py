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
baseline on NDCG@10 and novel-item HR@10 of the validation slice: first the
blends that beat that baseline on more of the two metrics by more than the
slice's noise (the difference's 95% interval over shoppers above 0, as the
development matrix judges; :func:`beats_beyond_noise`), a win counting only
where the blend keeps the other metric at least where the model alone has it
(:func:`wins_kept`), then the larger of the smaller ratio model / best
baseline. A validation slice is small (a few hundred novel requests), and a
blend that only matches a baseline there loses to it as often as not on the
held-out part; a clear win on one metric does not. The best
baselines are the ones that learn online from the same stream and make their own
lists (:func:`model_export.online_baselines.online_scores`), the ones the model is
compared with: re-rankers of the model's own candidates with frozen tables are
weaker, and a blend tuned against them stops short of what the comparison asks.
They stay in the choice's record (``frozen_baselines``) as a diagnostic. The held-out
part of the log plays no part in the choice.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import product
from typing import Any

import numpy as np
import torch

from model_export.dataset import ExampleSet
from model_export.evaluate import evaluate
from model_export.model import baseline_prior
from udfs.events import Id
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
# A difference counts as a win only beyond this many standard errors (a 95% interval).
NOISE_Z = 1.96
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


def request_values(places: np.ndarray, novel: np.ndarray, k: int = K) -> dict[str, np.ndarray]:
    """Per request, what it adds to NDCG@k (all requests) and to novel-item HR@k (the novel
    requests only), from the place of its true item in the list (-1: not in it)."""
    inside = (places >= 0) & (places < k)
    ndcg = np.where(inside, 1.0 / np.log2(np.maximum(places, 0) + 2.0), 0.0)
    return {f"ndcg@{k}": ndcg, f"novel_hr@{k}": inside[novel].astype(np.float64)}


def tuned_metrics(es: ExampleSet, scores: np.ndarray, k: int = K) -> dict[str, float]:
    """NDCG@k and novel-item HR@k of ``scores`` (the values ``evaluate`` gives)."""
    return _means(request_values(first_hit_ranks(es, scores), es.novel, k))


def _means(values: Mapping[str, np.ndarray]) -> dict[str, float]:
    return {name: float(v.mean()) if len(v) else 0.0 for name, v in values.items()}


def beats_beyond_noise(diff: np.ndarray, clusters: np.ndarray) -> bool:
    """Whether the mean of paired differences is above 0 by more than :data:`NOISE_Z` standard
    errors, the errors taken over ``clusters`` (each request's shopper: one shopper's requests
    move together, which is why the development matrix resamples shoppers, not requests)."""
    n = len(diff)
    if not n:
        return False
    mean = float(diff.mean())
    spread = np.bincount(clusters, weights=diff - mean)
    return mean - NOISE_Z * math.sqrt(float((spread ** 2).sum())) / n > 0


def wins_kept(won: set[str], ratios: Mapping[str, float], alone: Mapping[str, float]) -> int:
    """How many metrics ``won`` counts: all of them if the blend keeps every other metric's ratio
    at least where the model alone has it (or at 1, where the model alone is above the
    baseline), else none. A blend may give up a metric for a clear win on another only as far as
    the model alone already gives it up: on a log of repeats the model alone is close on NDCG,
    and a boost that wins novel items by pushing every repeat down would cost a shop most of it."""
    kept = all(ratios[k] >= min(1.0, alone[k]) for k in ratios if k not in won)
    return len(won) if kept else 0


def choose_blend(es: ExampleSet, scores: np.ndarray, *, catalog_size: int,
                 reference: Mapping[str, Mapping[str, float]] | None = None,
                 reference_places: Mapping[str, Sequence[int]] | None = None,
                 shoppers: Sequence[Id] | None = None,
                 boosts: tuple[float, ...] = BOOST_GRID, weights: tuple[float, ...] = PRIOR_WEIGHTS,
                 mixes: tuple[float, ...] = PRIOR_MIXES) -> dict[str, Any]:
    """The blend (boost, prior weight, mix) that beats the best baseline beyond noise
    (:func:`beats_beyond_noise`, :func:`wins_kept`) on the most of :data:`TUNED_METRICS`, then
    has the largest min over them of model / best baseline on ``es``; ties go to the smaller
    weight, then the smaller boost, then the smaller mix. ``reference``: per baseline, its metrics on the same
    requests (the online baselines'); None: the frozen re-rankers of ``es``'s own candidates
    (:data:`model_export.evaluate.BASELINES`). ``reference_places`` (per baseline, per request,
    the place of the true item in its list, -1 if absent) and ``shoppers`` (each request's)
    make the wins countable; without them every blend wins none and the ratio alone decides.
    Returns the choice, the best baselines' values, the frozen re-rankers' and the best
    :data:`KEEP_TRIED` blends tried (for the manifest)."""
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
    # Per metric, the best baseline's per-request values and each request's shopper, to pair with.
    theirs: dict[str, np.ndarray] = {}
    clusters: dict[str, np.ndarray] = {}
    if reference and reference_places is not None and shoppers is not None:
        ids: dict[Id, int] = {}
        users = np.array([ids.setdefault(u, len(ids)) for u in shoppers], dtype=np.int64)
        for k in TUNED_METRICS:
            theirs[k] = request_values(np.asarray(reference_places[best[k]], dtype=np.int64), es.novel)[k]
            clusters[k] = users[es.novel] if k.startswith("novel") else users

    def ratios_of(m: Mapping[str, float]) -> dict[str, float]:
        return {k: _ratio(m[k], baselines[best[k]][k]) for k in TUNED_METRICS}

    alone = ratios_of(tuned_metrics(es, s))
    tried = []
    for w, b, mix in product(weights, boosts, mixes):
        if w == 0 and mix != mixes[0]:
            continue  # the mix does nothing without weight
        values = request_values(first_hit_ranks(es, s + b * untouched + w * priors[mix]), es.novel)
        m = _means(values)
        ratios = ratios_of(m)
        won = wins_kept({k for k in theirs if beats_beyond_noise(values[k] - theirs[k], clusters[k])}, ratios, alone)
        tried.append({"boost": b, "prior_weight": w, "prior_mix": mix, **m, "min_ratio": min(ratios.values()),
                      "metrics_won": won})
    tried.sort(key=lambda t: (-t["metrics_won"], -t["min_ratio"], t["prior_weight"], t["boost"], t["prior_mix"]))
    chosen = tried[0]
    return {"boost": chosen["boost"], "prior_weight": chosen["prior_weight"], "prior_mix": chosen["prior_mix"],
            "min_ratio": chosen["min_ratio"], "metrics_won": chosen["metrics_won"], "requests": len(es),
            "novel_requests": int(es.novel.sum()),
            "best_baselines": {k: {"ranker": best[k], "value": baselines[best[k]][k]} for k in TUNED_METRICS},
            "frozen_baselines": {name: {k: m[k] for k in TUNED_METRICS} for name, m in frozen.items()},
            "model_alone": next(t for t in tried if t["prior_weight"] == 0 and t["boost"] == 0),
            "tried": tried[:KEEP_TRIED], "blends_tried": len(tried)}


def choose_novelty_boost(es: ExampleSet, scores: np.ndarray, *, catalog_size: int,
                         grid: tuple[float, ...] = BOOST_GRID) -> dict[str, Any]:
    """:func:`choose_blend` with the baselines' weight held at 0: the boost alone."""
    return choose_blend(es, scores, catalog_size=catalog_size, boosts=grid, weights=(0.0,), mixes=(0.0,))

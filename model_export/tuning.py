"""Choices made after fitting, on a validation slice inside the training part.

A next-item model fitted to a shop's log learns that re-touched items are the
likeliest next ones (on the shared logs most requests are repeats), and it
ranks the few new items the shopper will want below every item they already
touched. Whether that trade is right depends on the shop, so it is measured,
not assumed: :func:`choose_novelty_boost` picks the boost added to the score of
untouched candidates that makes the model's list best against the best
baseline on *both* NDCG@10 and novel-item HR@10 of the validation slice
(maximising the smaller of the two ratios model / best baseline). The held-out
part of the log plays no part in the choice.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from model_export.dataset import ExampleSet
from model_export.evaluate import evaluate
from udfs.features import DENSE_FEATURES

# Boosts tried, in logits of the model's score. 0 keeps the fitted model's list.
BOOST_GRID: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
TUNED_METRICS = ("ndcg@10", "novel_hr@10")
_IN_HISTORY = DENSE_FEATURES.index("in_history")


def _ratio(model: float, base: float) -> float:
    if base > 0:
        return model / base
    return 1.0 if model <= 0 else math.inf


def choose_novelty_boost(es: ExampleSet, scores: np.ndarray, *, catalog_size: int,
                         grid: tuple[float, ...] = BOOST_GRID) -> dict[str, Any]:
    """The boost of ``grid`` whose list has the largest min over :data:`TUNED_METRICS` of
    model / best baseline on ``es`` (ties: the smaller boost). Returns the choice, the
    baselines' best values and every boost's metrics (for the manifest)."""
    if not len(es):
        return {"boost": 0.0, "requests": 0, "reason": "no validation requests"}
    untouched = (es.arrays["dense"][:, _IN_HISTORY] <= 0).astype(np.float64)
    s = np.asarray(scores, dtype=np.float64)
    result = evaluate(es, {f"boost={b}": s + b * untouched for b in grid}, catalog_size=catalog_size)
    rankers = result["rankers"]
    baselines = {name: m for name, m in rankers.items() if not name.startswith("boost=")}
    best = {m: max(baselines, key=lambda name: baselines[name][m]) for m in TUNED_METRICS}
    tried = []
    for b in grid:
        m = rankers[f"boost={b}"]
        ratios = {k: _ratio(m[k], baselines[best[k]][k]) for k in TUNED_METRICS}
        tried.append({"boost": b, **{k: m[k] for k in TUNED_METRICS},
                      "min_ratio": min(ratios.values())})
    chosen = max(tried, key=lambda t: (t["min_ratio"], -t["boost"]))
    return {"boost": chosen["boost"], "min_ratio": chosen["min_ratio"], "requests": len(es),
            "novel_requests": int(es.novel.sum()),
            "best_baselines": {k: {"ranker": best[k], "value": baselines[best[k]][k]} for k in TUNED_METRICS},
            "tried": tried}

"""Offline ranking metrics on held-out requests, for the model and baselines.

Every ranker orders the candidate list exactly as generated (ties keep the
generation order, as the job's stable sort does). A request whose true next
item is not a candidate is a miss for HR/NDCG/MRR; AUC is computed over the
requests whose candidates contain the positive (fraction of negatives ranked
below it). ``novel_*`` metrics cover requests whose next item the user never
touched before. Coverage is distinct items in all top-10 lists divided by the
catalog size (distinct items in the whole log).

Baselines, all from the same dense features the model sees:

* ``generator``: candidate generation order (the job's no-model fallback);
* ``trending``: decayed popularity;
* ``covisit``: co-visitation score, then popularity;
* ``recent``: items the user touched, most recent first, then popularity;
* ``covisit+recent``: touched items by recency, the rest by co-visitation,
  then popularity.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from model_export.dataset import ExampleSet
from udfs.features import DENSE_FEATURES
from udfs.ranking_metrics import K, metrics_from_ranks

_F = {name: i for i, name in enumerate(DENSE_FEATURES)}

# A ranker returns sort keys, most significant last (np.lexsort convention), higher = better.
KeyFn = Callable[[np.ndarray, np.ndarray], list[np.ndarray]]


def _keys_generator(dense: np.ndarray, pos: np.ndarray) -> list[np.ndarray]:
    return [-pos.astype(np.float64)]


def _keys_trending(dense: np.ndarray, pos: np.ndarray) -> list[np.ndarray]:
    return [dense[:, _F["log_popularity"]]]


def _keys_covisit(dense: np.ndarray, pos: np.ndarray) -> list[np.ndarray]:
    return [dense[:, _F["log_popularity"]], dense[:, _F["covisit"]]]


def _recency(dense: np.ndarray) -> np.ndarray:
    # recency_rank: 1 for the latest distinct item touched, 1/2 for the one before, ...; 0 untouched.
    return dense[:, _F["recency_rank"]]


def _keys_recent(dense: np.ndarray, pos: np.ndarray) -> list[np.ndarray]:
    return [dense[:, _F["log_popularity"]], _recency(dense)]


def _keys_covisit_recent(dense: np.ndarray, pos: np.ndarray) -> list[np.ndarray]:
    return [dense[:, _F["log_popularity"]], dense[:, _F["covisit"]], _recency(dense)]


BASELINES: dict[str, KeyFn] = {
    "generator": _keys_generator,
    "trending": _keys_trending,
    "covisit": _keys_covisit,
    "recent": _keys_recent,
    "covisit+recent": _keys_covisit_recent,
}


def rank_lists(es: ExampleSet, keys: list[np.ndarray]) -> list[np.ndarray]:
    """Per request: candidate row indices (global) in ranked order, best first."""
    out = []
    for i in range(len(es)):
        a, b = int(es.offsets[i]), int(es.offsets[i + 1])
        n = b - a
        # lexsort is stable; ascending on -key, ties broken by position (generation order).
        order = np.lexsort([np.arange(n)] + [-k[a:b] for k in keys])
        out.append(order + a)
    return out


def metrics_from_rankings(es: ExampleSet, ranked: list[np.ndarray], catalog_size: int, k: int = K) -> dict:
    """Metrics of each request's candidate order (``ranked``: row indices, best first)."""
    ranks: list[int | None] = []
    top_items: set = set()
    for order in ranked:
        top_items.update(es.items[int(r)] for r in order[:k])
        hits = np.flatnonzero(es.labels[order] > 0.5)
        ranks.append(int(hits[0]) if len(hits) else None)
    return metrics_from_ranks(ranks, [len(o) for o in ranked], es.novel, len(top_items), catalog_size, k)


def evaluate(
    es: ExampleSet, model_scores: dict[str, np.ndarray] | None = None, *, catalog_size: int, k: int = K
) -> dict:
    """Metrics for every baseline and each ``model_scores`` entry (name -> scores [B])."""
    dense = es.arrays["dense"]
    pos = np.arange(es.n_rows) - np.repeat(es.offsets[:-1], es.n_rows_per_request)
    rankers: dict[str, list[np.ndarray]] = {name: fn(dense, pos) for name, fn in BASELINES.items()}
    for name, scores in (model_scores or {}).items():
        rankers[name] = [np.asarray(scores, dtype=np.float64)]
    result: dict = {
        "requests": len(es),
        "novel_requests": int(es.novel.sum()),
        "candidate_recall": float(es.has_positive.mean()) if len(es) else 0.0,
        "novel_candidate_recall": float(es.has_positive[es.novel].mean()) if es.novel.any() else 0.0,
        "catalog_size": catalog_size,
        "k": k,
        "rankers": {},
    }
    for name, keys in rankers.items():
        result["rankers"][name] = metrics_from_rankings(es, rank_lists(es, keys), catalog_size, k)
    return result


def format_table(metrics: dict) -> str:
    rows = metrics["rankers"]
    cols = list(next(iter(rows.values())).keys())
    head = f"{'ranker':<16}" + "".join(f"{c:>14}" for c in cols)
    lines = [head]
    for name, m in rows.items():
        lines.append(f"{name:<16}" + "".join(f"{m[c]:>14.4f}" for c in cols))
    lines.append(
        f"requests={metrics['requests']} novel={metrics['novel_requests']} "
        f"candidate_recall={metrics['candidate_recall']:.4f} "
        f"novel_candidate_recall={metrics['novel_candidate_recall']:.4f}"
    )
    return "\n".join(lines)

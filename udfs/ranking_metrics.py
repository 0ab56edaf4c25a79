"""Ranking metrics from the rank of each request's true next item.

One definition for every protocol: the offline held-out evaluation, the
prequential one through the job, and anything that scores lists online.
``rank`` is the 0-based position of the true item in the ranked list, ``None``
when it is absent (a miss for HR, NDCG and MRR, and left out of AUC).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Mapping, Sequence

import numpy as np

from udfs.events import Id

K = 10


def metrics_from_ranks(ranks: Sequence[int | None], list_lens: Sequence[int], novel: Sequence[bool] | np.ndarray,
                       distinct_top: int, catalog_size: int, k: int = K) -> dict[str, float]:
    """HR/NDCG@k, MRR, AUC, novel HR/NDCG@k and coverage@k.

    AUC per request is the fraction of the other list items ranked below the true
    one, over lists of more than one item that contain it. ``distinct_top`` is the
    number of distinct items in all lists' top ``k``, for coverage.
    """
    n = len(ranks)
    hr = np.zeros(n)
    ndcg = np.zeros(n)
    rr = np.zeros(n)
    auc: list[float] = []
    for i, (rank, length) in enumerate(zip(ranks, list_lens, strict=True)):
        if rank is None:
            continue
        rr[i] = 1.0 / (rank + 1)
        if rank < k:
            hr[i] = 1.0
            ndcg[i] = 1.0 / math.log2(rank + 2)
        if length > 1:
            auc.append((length - 1 - rank) / (length - 1))
    nov = np.asarray(novel, dtype=bool)
    return {
        f"hr@{k}": float(hr.mean()) if n else 0.0,
        f"ndcg@{k}": float(ndcg.mean()) if n else 0.0,
        "mrr": float(rr.mean()) if n else 0.0,
        "auc": float(np.mean(auc)) if auc else float("nan"),
        f"novel_hr@{k}": float(hr[nov].mean()) if nov.any() else 0.0,
        f"novel_ndcg@{k}": float(ndcg[nov].mean()) if nov.any() else 0.0,
        f"coverage@{k}": distinct_top / catalog_size if catalog_size else 0.0,
    }


def list_metrics(ranked: Sequence[Sequence[Id]], targets: Sequence[Id], novel: Sequence[bool],
                 catalog_size: int, k: int = K) -> dict[str, float]:
    """These metrics for lists of item ids and their true next items."""
    ranks: list[int | None] = []
    top: set[Id] = set()
    for lst, target in zip(ranked, targets, strict=True):
        top.update(lst[:k])
        items = list(lst)
        ranks.append(items.index(target) if target in items else None)
    return metrics_from_ranks(ranks, [len(lst) for lst in ranked], novel, len(top), catalog_size, k)


# Beyond the rank of one true item: what a whole served list is worth. ``lists`` are
# item ids, best first; only each list's first ``k`` count.

def precision_recall_f1(lists: Sequence[Sequence[Id]], relevant: Sequence[Collection[Id]],
                        k: int = K) -> dict[str, float]:
    """Mean precision@k (hits / k), recall@k (hits / relevant items) and F1@k (per list, then
    averaged) of each list against its own set of relevant items; lists with none are left out."""
    p: list[float] = []
    r: list[float] = []
    f: list[float] = []
    for lst, rel in zip(lists, relevant, strict=True):
        if not rel:
            continue
        hits = len(set(lst[:k]) & set(rel))
        pi, ri = hits / k, hits / len(rel)
        p.append(pi)
        r.append(ri)
        f.append(2 * pi * ri / (pi + ri) if hits else 0.0)
    return {f"precision@{k}": _mean(p), f"recall@{k}": _mean(r), f"f1@{k}": _mean(f)}


def _mean(xs: Sequence[float]) -> float:
    return float(np.mean(xs)) if xs else 0.0


def intra_list_diversity(lists: Sequence[Sequence[Id]], category_of: Mapping[Id, Id], k: int = K) -> float:
    """Mean over lists of two or more items of the share of item pairs in the first ``k`` whose
    categories differ (0: one category, 1: all distinct). An item without a category is its own."""
    vals: list[float] = []
    for lst in lists:
        top = list(lst[:k])
        n = len(top)
        if n < 2:
            continue
        counts = Counter(category_of.get(i, ("?", i)) for i in top)
        same = sum(c * (c - 1) // 2 for c in counts.values())
        vals.append(1.0 - same / (n * (n - 1) // 2))
    return _mean(vals)


def novelty(lists: Sequence[Sequence[Id]], popularity: Mapping[Id, int], n_users: int, k: int = K) -> float:
    """Mean self-information, in bits, of the items served: -log2((u + 1) / (n_users + 1)) with
    ``u`` the users who touched the item (add-one smoothing: an item nobody touched is finite).
    Higher means less obvious items."""
    bits = [-math.log2((popularity.get(i, 0) + 1) / (n_users + 1)) for lst in lists for i in lst[:k]]
    return _mean(bits)


def catalog_coverage(lists: Sequence[Sequence[Id]], catalog_size: int, k: int = K) -> float:
    """Distinct items in all lists' first ``k`` over the catalog size."""
    return len({i for lst in lists for i in lst[:k]}) / catalog_size if catalog_size else 0.0


def list_quality(lists: Sequence[Sequence[Id]], relevant: Sequence[Collection[Id]], category_of: Mapping[Id, Id],
                 popularity: Mapping[Id, int], n_users: int, catalog_size: int, k: int = K) -> dict[str, float]:
    """Every whole-list metric above, keyed as the evaluation report shows them."""
    return {**precision_recall_f1(lists, relevant, k),
            f"ild@{k}": intra_list_diversity(lists, category_of, k),
            f"coverage@{k}": catalog_coverage(lists, catalog_size, k),
            f"novelty@{k}": novelty(lists, popularity, n_users, k)}

"""Ranking metrics from the rank of each request's true next item.

One definition for every protocol: the offline held-out evaluation, the
prequential one through the job, and anything that scores lists online.
``rank`` is the 0-based position of the true item in the ranked list, ``None``
when it is absent (a miss for HR, NDCG and MRR, and left out of AUC).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

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

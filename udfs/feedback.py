"""Online feedback: was a shopper's next event in the list they were last shown, and where.

The job keeps each shopper's last emitted list in their state (``UserState.last_list``: its
seq, model version, arm and item ids) and, for every event, reports the item's rank in it. The
rule is the prequential protocol's (streamrec/lab/evaluation/prequential.py), so that on a replay
the job's online HR@10 *is* the prequential hr@10 of the same events, not an estimate of it:

- only accepted, non-duplicate events are scored (a redelivery is not a new action, and the
  prequential evaluation does not test it either);
- only events at or after ``job.since_ms``: those are the events that get a list, and the
  prequential pairs are (list i, the trigger of list i + 1);
- only when a list of this shopper exists (the first list of a shopper is tested by nobody);
- against the last list emitted *before* the event, so a record is made before the event's
  own list replaces it (:func:`feedback_for`, then :func:`remember`).

With ``ranking.batching`` the lists are ranked in a second stage that has no user state, so
the keyed stage never sees them; the job produces no feedback then (jobs/functions.py warns).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from udfs.events import Event
from udfs.job_metrics import BatchedCounters
from udfs.ranking_metrics import K
from udfs.records import FeedbackRecord
from udfs.state import UserState

# Flink counters per (model version, arm), see FeedbackCounters: the sums of hits, NDCG and
# reciprocal rank (in millionths, counters being integers) over the events counted.
FEEDBACK_COUNTERS = ("feedback_events", f"feedback_hits_at_{K}", f"feedback_ndcg_at_{K}_micros",
                     "feedback_rr_micros")
# The label value of lists ranked outside any experiment.
NO_ARM = "none"


def remember(state: UserState, record: Mapping[str, Any]) -> None:
    """Keep the list just emitted (an output record) as the one the shopper's next event is scored on."""
    state.last_list = [int(record["seq"]), str(record["model_version"]), record.get("arm"), list(record["items"])]


def feedback_for(state: UserState, event: Event, since_ms: int) -> FeedbackRecord | None:
    """The feedback record of ``event`` (already applied to ``state`` and not a duplicate), or None
    when the protocol of the module doc tests no pair here."""
    if event.ts < since_ms or not state.last_list:
        return None
    seq, version, arm, items = state.last_list
    try:
        rank = items.index(event.item_id)
    except ValueError:
        rank = -1
    return FeedbackRecord(event.user_id, event.item_id, event.behavior, event.ts, int(seq), rank, len(items),
                          str(version), None if arm is None else str(arm))


def ndcg_at(rank: int, k: int = K) -> float:
    """1/log2(rank + 2) within the first ``k``, else 0 (one relevant item: the ideal DCG is 1)."""
    return 1.0 / math.log2(rank + 2) if 0 <= rank < k else 0.0


def reciprocal_rank(rank: int) -> float:
    return 1.0 / (rank + 1) if rank >= 0 else 0.0


class FeedbackCounters:
    """:data:`FEEDBACK_COUNTERS` per (model version, arm), made on first use by ``make_counters``
    (the job: a metric group labelled ``model_version`` and ``arm``), so Prometheus shows each
    version's and arm's hit rate as ``hits / events``. Counts reach Flink at :meth:`flush`."""

    def __init__(self, make_counters: Callable[[str, str], BatchedCounters]) -> None:
        self._make = make_counters
        self._by_label: dict[tuple[str, str], BatchedCounters] = {}

    def record(self, fb: FeedbackRecord) -> None:
        label = (fb.model_version, fb.arm or NO_ARM)
        counters = self._by_label.get(label)
        if counters is None:
            counters = self._by_label[label] = self._make(*label)
        counters.inc("feedback_events")
        if fb.hit(K):
            counters.inc(f"feedback_hits_at_{K}")
            counters.inc(f"feedback_ndcg_at_{K}_micros", round(ndcg_at(fb.rank) * 1e6))
        if fb.rank >= 0:
            counters.inc("feedback_rr_micros", round(reciprocal_rank(fb.rank) * 1e6))

    def flush(self) -> None:
        for counters in self._by_label.values():
            counters.flush()


class OnlineFigures:
    """HR@k and NDCG@k over a set of feedback records (one model version and arm, or all)."""

    def __init__(self, k: int = K) -> None:
        self.k = k
        self.n = 0
        self.hits = 0
        self.ndcg_sum = 0.0

    def add(self, fb: FeedbackRecord) -> None:
        self.n += 1
        if fb.hit(self.k):
            self.hits += 1
            self.ndcg_sum += ndcg_at(fb.rank, self.k)

    @property
    def hr(self) -> float:
        return self.hits / self.n if self.n else 0.0

    @property
    def ndcg(self) -> float:
        return self.ndcg_sum / self.n if self.n else 0.0


def online_figures(records: Iterable[FeedbackRecord], k: int = K) -> dict[tuple[str, str | None], OnlineFigures]:
    """Per (model version, arm): HR@k and NDCG@k of the records."""
    out: dict[tuple[str, str | None], OnlineFigures] = {}
    for fb in records:
        label = (fb.model_version, fb.arm)
        figures = out.get(label)
        if figures is None:
            figures = out[label] = OnlineFigures(k)
        figures.add(fb)
    return out

"""Trending items computed from the stream itself.

The artifact's trending list is as old as the model; a new hit would only show up
after retraining. This counter keeps exponentially decayed, behavior-weighted item
counts in event time over the events a worker sees, and its top items lead the
trending candidates (the artifact's list fills the rest).

With the job keyed by user, each parallel worker sees a uniform share of all
shoppers, so its counts estimate the global ones. The counter lives in memory,
not in Flink state: after a restart it rebuilds within a half-life or two, and
meanwhile the artifact's list covers. Updates commute (sums of weights scaled to
a shared reference time), so arrival order does not change the counts.
"""

from __future__ import annotations

import heapq
import math

from udfs.events import BEHAVIOR_INDEX, Event, Id
from udfs.state import BEHAVIOR_WEIGHT


class TrendingCounter:
    """Decayed item counts with a bounded number of items and a cached top list.

    The ``size`` highest counts are kept as they change (``_best``), because a replayed
    or catching-up stream moves event time far faster than the wall clock: refreshing
    by a scan of all counts then ran every few events and took 8% of the job's time.
    Stored counts only grow between rescalings (which keep their order), so one
    changed count can only push out the current lowest of the best.
    """

    def __init__(self, half_life_ms: int = 10 * 60 * 1000, capacity: int = 5000, size: int = 50,
                 refresh_ms: int = 5000) -> None:
        self.half_life_ms = half_life_ms
        self.capacity = capacity
        self.size = size
        self.refresh_ms = refresh_ms
        self.scores: dict[Id, float] = {}
        self.categories: dict[Id, Id] = {}
        self.ref_ts: int | None = None
        self.max_ts = 0
        self._top: list[Id] = []
        self._top_at: int | None = None
        self._best: dict[Id, float] = {}
        self._floor: Id | None = None

    def add(self, event: Event) -> None:
        if self.ref_ts is None:
            self.ref_ts = event.ts
        # Scores are stored valued at ref_ts; moving ref_ts forward rescales them all,
        # which keeps numbers bounded (done rarely: once per half-life of event time).
        if event.ts - self.ref_ts > self.half_life_ms:
            factor = 2.0 ** (-(event.ts - self.ref_ts) / self.half_life_ms)
            self.scores = {i: s * factor for i, s in self.scores.items() if s * factor > 1e-6}
            self.categories = {i: self.categories[i] for i in self.scores}
            self._best = {i: self.scores[i] for i in self._best if i in self.scores}
            self._floor = min(self._best, key=self._best.__getitem__, default=None)
            self.ref_ts = event.ts
        weight = BEHAVIOR_WEIGHT[BEHAVIOR_INDEX[event.behavior]]
        item = event.item_id
        score = self.scores.get(item, 0.0) + weight * math.pow(2.0, (event.ts - self.ref_ts) / self.half_life_ms)
        self.scores[item] = score
        self.categories[item] = event.category_id
        self.max_ts = max(self.max_ts, event.ts)
        self._offer(item, score)
        if len(self.scores) > 2 * self.capacity:
            keep = heapq.nlargest(self.capacity, self.scores, key=self.scores.__getitem__)
            self.scores = {i: self.scores[i] for i in keep}
            self.categories = {i: self.categories[i] for i in keep}
            if any(i not in self.scores for i in self._best):  # only on a tie at the cut
                self._best = {i: v for i, v in self._best.items() if i in self.scores}
                self._floor = min(self._best, key=self._best.__getitem__, default=None)

    def _offer(self, item: Id, score: float) -> None:
        """Keep ``_best`` the ``size`` highest counts after ``item``'s grew to ``score``."""
        best = self._best
        if item in best:
            best[item] = score
            if item != self._floor:
                return
        elif len(best) < self.size:
            best[item] = score
        elif self._floor is not None and score > best[self._floor]:
            del best[self._floor]
            best[item] = score
        else:
            return
        self._floor = min(best, key=best.__getitem__)

    def score_at(self, item: Id, at_ts: int) -> float:
        """``item``'s decayed count valued at event time ``at_ts``."""
        if self.ref_ts is None:
            return 0.0
        return self.scores.get(item, 0.0) * 2.0 ** (-(at_ts - self.ref_ts) / self.half_life_ms)

    def top(self) -> list[Id]:
        """The ``size`` hottest items, recomputed at most every ``refresh_ms`` of event time."""
        if self._top_at is None or self.max_ts - self._top_at >= self.refresh_ms:
            top = sorted(self._best, key=self._best.__getitem__, reverse=True)
            if top != self._top:  # the same object while unchanged: callers cache on it
                self._top = top
            self._top_at = self.max_ts
        return self._top

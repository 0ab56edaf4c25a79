"""Baselines that learn online from the same stream: what any shop can write in an afternoon.

The matrix's other baselines re-rank the job's candidates with the artifact's tables, frozen at
training time, so they share the job's blind spots. These count as the stream goes, over every
event of the sorted log (the training half warms them up, as it builds the job's state), and
make their own lists from everything they have counted, not from the job's candidates:

- ``online:trending``: the items with the highest time-decayed counts (half-life derived from
  the log by :func:`udfs.timescales.derive_popularity_half_life_ms`, as the job's tables are);
- ``online:recent``: the shopper's last distinct items, most recent first;
- ``online:covisit``: co-visitation counted online: each pair of a shopper's events at most
  :data:`PAIR_WINDOW` events apart counts once both ways; a list scores the neighbours of the
  shopper's last three distinct items, weighted :data:`LAST_ITEM_WEIGHTS`, each item's
  :data:`NEIGHBOURS` strongest neighbours only; trending fills the rest;
- ``online:covisit+recent``: the shopper's recent items first, at most half the list, then
  ``online:covisit``'s order;
- ``online:vsknn``: V-SKNN (Ludewig & Jannach, "Evaluation of session-based recommendation
  algorithms", 2018), with its defaults: of the :data:`VSKNN_SAMPLE` most recent other sessions
  that share an item with the shopper's, the :data:`VSKNN_K` most similar (the shopper's items
  weighted linearly by position, 1 for the latest) vote for their items with their similarity.
  A shopper's session is their last :data:`SESSION_ITEMS` distinct items (these logs mark no
  session ends); trending fills the rest.

Lists are made at the job's moments (after each held-out event the job lists, in the same
``(shopper, seq)`` keys), after the event is counted: test-then-train, so the list that
event ``i`` leads to is tested on event ``i + 1`` and never saw it. The rules are the ones
``../shared/data/README.md`` reports figures for.

Training scores them too (:func:`online_metrics`): the blend of the model with the baselines'
order is chosen against these on the validation slice inside the training part, so the model is
tuned against what it will be compared with, not against re-rankers of its own candidates.
"""

from __future__ import annotations

import heapq
from collections import defaultdict, deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from udfs.errors import InputError
from udfs.events import Event, Id
from udfs.ranking_metrics import K, metrics_from_ranks
from udfs.timescales import derive_popularity_half_life_ms

ONLINE_PREFIX = "online:"
NAMES = ("online:trending", "online:recent", "online:covisit", "online:covisit+recent", "online:vsknn")
PAIR_WINDOW = 5
"""A shopper's two events count as a pair when at most this many events apart."""
LAST_ITEM_WEIGHTS = (1.0, 0.6, 0.4)
"""Weights of the shopper's last, second-last and third-last distinct items in a covisit list."""
NEIGHBOURS = 50
"""Strongest neighbours of each item a covisit list draws on."""
VSKNN_K = 100
"""Neighbour sessions that vote (the paper's default)."""
VSKNN_SAMPLE = 500
"""Most recent sessions sharing an item with the shopper's that are compared (the paper's default)."""
SESSION_ITEMS = 20
"""A shopper's session for V-SKNN: their last distinct items."""
ITEM_SESSIONS = 100
"""Most recent sessions kept per item in the item -> sessions index (bounds the work per list)."""
TRENDING_REFRESH = 64
"""Events between two rebuilds of the trending top list (a list is k items; the counts change slowly)."""


@dataclass
class _Shopper:
    recent: deque[Id] = field(default_factory=lambda: deque(maxlen=PAIR_WINDOW))
    """The items of the last :data:`PAIR_WINDOW` events, oldest first (for pairs)."""
    distinct: list[Id] = field(default_factory=list)
    """Distinct items, most recent first (for ``recent`` and the covisit query)."""


class OnlineBaselines:
    """Counts from every event it is given; :meth:`lists` ranks from the counts so far."""

    def __init__(self, half_life_ms: int, k: int) -> None:
        if half_life_ms <= 0 or k <= 0:
            raise ValueError(f"half_life_ms and k must be positive, not {half_life_ms} and {k}")
        self.half_life_ms = half_life_ms
        self.k = k
        self.co: dict[Id, dict[Id, float]] = defaultdict(dict)
        self.popularity: dict[Id, float] = {}
        self.ref_ts: int | None = None
        self.shoppers: dict[Id, _Shopper] = {}
        self._top: list[Id] = []
        self._since_top = TRENDING_REFRESH
        self.item_sessions: dict[Id, dict[Id, None]] = defaultdict(dict)
        """Per item, the shoppers whose session holds it, least recently active first."""
        self.last_active: dict[Id, int] = {}
        self._clock = 0

    def update(self, e: Event) -> None:
        """Count one event: its pairs with the shopper's last events, its item's decayed count."""
        shopper = self.shoppers.get(e.user_id)
        if shopper is None:
            shopper = self.shoppers[e.user_id] = _Shopper()
        item = e.item_id
        for other in set(shopper.recent):
            if other != item:
                row, back = self.co[item], self.co[other]
                row[other] = row.get(other, 0.0) + 1.0
                back[item] = back.get(item, 0.0) + 1.0
        shopper.recent.append(item)
        if item in shopper.distinct:
            shopper.distinct.remove(item)
        shopper.distinct.insert(0, item)
        for gone in shopper.distinct[max(self.k, len(LAST_ITEM_WEIGHTS), SESSION_ITEMS):]:
            self.item_sessions[gone].pop(e.user_id, None)
        del shopper.distinct[max(self.k, len(LAST_ITEM_WEIGHTS), SESSION_ITEMS):]
        self._clock += 1
        self.last_active[e.user_id] = self._clock
        sessions = self.item_sessions[item]
        sessions.pop(e.user_id, None)
        sessions[e.user_id] = None
        if len(sessions) > ITEM_SESSIONS:
            del sessions[next(iter(sessions))]
        if self.ref_ts is None:
            self.ref_ts = e.ts
        # Decayed counts valued at ref_ts: an event counts 2 ** ((ts - ref_ts) / half-life), so later
        # events weigh more without rescaling every count (a rescale keeps the numbers bounded).
        if e.ts - self.ref_ts > 32 * self.half_life_ms:
            factor = 2.0 ** (-(e.ts - self.ref_ts) / self.half_life_ms)
            self.popularity = {i: s * factor for i, s in self.popularity.items() if s * factor > 1e-9}
            self.ref_ts = e.ts
        self.popularity[item] = self.popularity.get(item, 0.0) + 2.0 ** ((e.ts - self.ref_ts) / self.half_life_ms)
        self._since_top += 1

    def trending(self) -> list[Id]:
        if self._since_top >= TRENDING_REFRESH:
            self._top = heapq.nlargest(self.k, self.popularity, key=self.popularity.__getitem__)
            self._since_top = 0
        return self._top

    def covisit_order(self, user: Id) -> list[Id]:
        """Neighbours of the shopper's last distinct items by weighted count, best first (ties: first seen)."""
        shopper = self.shoppers.get(user)
        scores: dict[Id, float] = {}
        for weight, item in zip(LAST_ITEM_WEIGHTS, shopper.distinct if shopper else (), strict=False):
            row = self.co.get(item)
            if not row:
                continue
            strongest = heapq.nlargest(NEIGHBOURS, row.items(), key=lambda kv: kv[1]) if len(row) > NEIGHBOURS \
                else row.items()
            for other, count in strongest:
                scores[other] = scores.get(other, 0.0) + weight * count
        return heapq.nlargest(self.k, scores, key=scores.__getitem__)

    def vsknn_order(self, user: Id) -> list[Id]:
        """V-SKNN's items for ``user``'s session, best first."""
        shopper = self.shoppers.get(user)
        if shopper is None:
            return []
        session = shopper.distinct[:SESSION_ITEMS]
        n = len(session)
        weight = {item: (n - pos) / n for pos, item in enumerate(session)}  # the latest item 1, linear down
        # Similarity through the index: each shared item adds its weight (the sessions' dot product).
        sim: dict[Id, float] = {}
        for item in session:
            w = weight[item]
            for other in self.item_sessions.get(item, ()):
                sim[other] = sim.get(other, 0.0) + w
        sim.pop(user, None)
        sample = heapq.nlargest(VSKNN_SAMPLE, sim, key=self.last_active.__getitem__)
        # The most similar of the sample; ties: the more recently active session first.
        nearest = heapq.nlargest(VSKNN_K, sample, key=lambda u: (sim[u], self.last_active[u]))
        scores: dict[Id, float] = {}
        for other in nearest:
            for item in self.shoppers[other].distinct[:SESSION_ITEMS]:
                scores[item] = scores.get(item, 0.0) + sim[other]
        return heapq.nlargest(self.k, scores, key=scores.__getitem__)

    def lists(self, user: Id, names: Collection[str] = NAMES) -> dict[str, list[Id]]:
        """The top-k list of each baseline in ``names`` for ``user`` now."""
        k = self.k
        shopper = self.shoppers.get(user)
        recent = list(shopper.distinct[:k]) if shopper else []
        trending = self.trending()
        out: dict[str, list[Id]] = {"online:trending": list(trending), "online:recent": recent}
        if "online:covisit" in names or "online:covisit+recent" in names:
            out["online:covisit"] = _filled(self.covisit_order(user), trending, k)
            out["online:covisit+recent"] = _filled(recent[: k // 2], out["online:covisit"], k)
        if "online:vsknn" in names:
            out["online:vsknn"] = _filled(self.vsknn_order(user), trending, k)
        return {name: out[name] for name in names}


def _filled(head: Iterable[Id], rest: Iterable[Id], k: int) -> list[Id]:
    """``head``, then ``rest`` without repeats, cut at ``k``."""
    out: dict[Id, None] = {}
    for item in head:
        if len(out) >= k:
            break
        out[item] = None
    for item in rest:
        if len(out) >= k:
            break
        out.setdefault(item, None)
    return list(out)


def online_lists(events: Iterable[Event], list_at: Mapping[tuple[Id, str, int, Id], int], k: int,
                 names: Collection[str] = NAMES) -> dict[str, dict[tuple[Id, int], list[Id]]]:
    """Every baseline's list per ``(shopper, seq)``, made right after the event that
    ``list_at`` maps to that seq (keyed ``(item, behavior, ts, shopper)``: the job's held-out
    lists, whose triggers these are). ``events``: the whole log, sorted by time."""
    evs = list(events)
    baselines = OnlineBaselines(derive_popularity_half_life_ms(evs), k)
    unknown = sorted(set(names) - set(NAMES))
    if unknown:
        raise InputError(f"unknown online baselines {unknown}; known: {list(NAMES)}")
    out: dict[str, dict[tuple[Id, int], list[Id]]] = {name: {} for name in names}
    seen: set[tuple[Id, Id, str, int]] = set()
    for e in evs:
        key = (e.user_id, e.item_id, e.behavior, e.ts)
        if key in seen:  # a redelivery, which the job drops too
            continue
        seen.add(key)
        baselines.update(e)
        seq = list_at.get((e.item_id, e.behavior, e.ts, e.user_id))
        if seq is None:
            continue
        for name, items in baselines.lists(e.user_id, names).items():
            out[name][(e.user_id, seq)] = items
    return out


class Moment(NamedTuple):
    """A request to score a baseline on: the event a list follows, the item that came next, and
    whether that item was new to the shopper."""

    trigger: Event
    target: Id
    novel: bool


@dataclass(frozen=True)
class OnlineScores:
    """The baselines' scores over a sequence of moments: their metrics, and per moment the place
    of the true next item in each baseline's list (-1 where the list lacks it), so a choice can
    compare another list with them request by request."""

    metrics: dict[str, dict[str, float]]
    places: dict[str, list[int]]


def online_scores(events: Iterable[Event], moments: Sequence[Moment], k: int = K,
                  names: Collection[str] = NAMES) -> OnlineScores:
    """Each baseline's metrics (:func:`udfs.ranking_metrics.metrics_from_ranks`; coverage left
    out) and places over ``moments``, its lists made by :func:`online_lists` over ``events``
    (sorted by time, holding every trigger)."""
    at = {(m.trigger.item_id, m.trigger.behavior, m.trigger.ts, m.trigger.user_id): i
          for i, m in enumerate(moments)}
    made = online_lists(events, at, k, names)
    targets = [m.target for m in moments]
    novel = [m.novel for m in moments]
    metrics: dict[str, dict[str, float]] = {}
    places: dict[str, list[int]] = {}
    for name, lists in made.items():
        ranked = [lists.get((m.trigger.user_id, i), []) for i, m in enumerate(moments)]
        ranks = [lst.index(t) if t in lst else None for lst, t in zip(ranked, targets, strict=True)]
        scored = metrics_from_ranks(ranks, [len(lst) for lst in ranked], novel, 0, 0, k)
        metrics[name] = {key: value for key, value in scored.items() if not key.startswith("coverage")}
        places[name] = [-1 if r is None else r for r in ranks]
    return OnlineScores(metrics, places)


def online_metrics(events: Iterable[Event], moments: Sequence[Moment], k: int = K,
                   names: Collection[str] = NAMES) -> dict[str, dict[str, float]]:
    """:func:`online_scores`' metrics alone."""
    return online_scores(events, moments, k, names).metrics

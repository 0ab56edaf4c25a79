"""Item knowledge that learns from the stream: co-visitation rows that every event updates.

The artifact's co-visitation table is counted once, on the training half of the log; a shop's
tastes move on after that. Here every accepted event adds its pairs, as ``build_tables`` counts
them (item b counts for each distinct earlier item a of the same shopper, within ``window`` events
and ``window_ms``: ``row[a][b] += 1``, ``row[b][a] += 1 / 2``), to rows that started from the
artifact's (seeded on an item's first touch). Three steps, which the job runs as keyed operators
chained by key (``jobs/items.py``), because a row must see every shopper's events:

1. keyed by shopper: the shopper's last ``window`` items (:func:`earlier_items`, :func:`remember`);
   a new event pairs with them;
2. keyed by item: the item's :class:`ItemRow` (bounded with Space-Saving eviction, optionally
   decayed); the touched item's row, fresh, goes on with the event;
3. keyed by shopper again (the recommend function): the rows of the shopper's last
   ``kept_rows`` items, kept in its state (:func:`keep_row`), stand in for the artifact's rows.

:class:`ItemKnowledge` runs steps 1 and 2 in one object, in the job's order, for the peer and
the replays, so they see what the job sees.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import msgpack

from udfs.config import ItemsConfig
from udfs.events import BEHAVIORS, Event, Id
from udfs.state import UserState

# A pair adds its weight to the earlier item's row, half of it the other way.
BACKWARD_SHARE = 0.5
PAIR_WEIGHTS: dict[str, float] = dict.fromkeys(BEHAVIORS, 1.0)
"""What a pair adds, by the later event's behavior: the same for all. Weighting pairs by intent
(a buy 4, a view 1, as category affinity does) was measured worse: with it, the co-visitation list
of a shopper's last items (touched items left out) found the next new item less often on every
development log with several behaviors (HR@10 of new items, second half of each log: tmall
0.051 -> 0.045, jdata 0.177 -> 0.170, Taobao users_head 0.0115 -> 0.0111). A buy says more about the
shopper than about which items go together; the model sees behaviors in its own inputs."""
# Decayed scores are stored inflated by 2**(age / half-life) and rebased past this exponent, so a
# row is decayed by one multiplication on read instead of one per entry on every update.
_REBASE_EXPONENT = 60.0

Entry = list[Any]
"""``[neighbour item, score]``"""


@dataclass(frozen=True)
class ItemKnowledgeParams:
    """How rows learn; the time scales come from the artifact (the log it was trained on)."""

    window_ms: int
    """Longest gap between the two events of a pair (the artifact's ``covisit_window_ms``)."""
    window: int = 5
    """Events of the same shopper back that a pair reaches (as the artifact's table counted)."""
    max_entries: int = 100
    """Neighbours one item's row keeps; past it the weakest is replaced (Space-Saving)."""
    emit: int = 50
    """Strongest neighbours sent on with an event (the artifact's rows are this long)."""
    half_life_ms: int = 0
    """Time decay of the counts (0: none, as the artifact's table)."""
    kept_rows: int = 3
    """Fresh rows a shopper keeps, for their most recent distinct items."""

    @classmethod
    def configured(cls, items: ItemsConfig, window_ms: int) -> ItemKnowledgeParams:
        """The ``[items]`` section's bounds (training uses its defaults) over a log's time window."""
        return cls(window_ms=window_ms, window=items.window, max_entries=items.max_entries, emit=items.emit,
                   half_life_ms=items.half_life_s * 1000, kept_rows=items.kept_rows)


def pair_weight(behavior: str) -> float:
    return PAIR_WEIGHTS[behavior]


def earlier_items(recent: Sequence[Sequence[Any]], item: Id, ts: int, window_ms: int) -> list[Id]:
    """The shopper's earlier items a new event on ``item`` at ``ts`` pairs with, most recent first.

    ``recent``: ``[item, ts]`` in arrival order (:func:`remember`). As in ``build_tables``, an
    earlier touch of the same item takes a place in the window but makes no pair, and an item
    touched twice in the window pairs once: a shopper flicking between two items says once that
    they go together (counting each flick lowered the lists' new-item hits on tmall and jdata)."""
    out: list[Id] = []
    for other, other_ts in reversed(recent):
        gap = ts - other_ts
        if gap > window_ms:
            break
        if gap >= 0 and other != item and other not in out:
            out.append(other)
    return out


def remember(recent: list[list[Any]], item: Id, ts: int, window: int) -> None:
    recent.append([item, ts])
    if len(recent) > window:
        del recent[: len(recent) - window]


class ItemRow:
    """One item's neighbours and their co-visitation scores, bounded and optionally decayed.

    Scores are stored inflated by ``2 ** ((ts - base_ts) / half_life)`` (no decay: factor 1), so
    the order of stored scores is the order of decayed ones and an update touches one entry.
    """

    __slots__ = ("scores", "base_ts", "last_ts")

    def __init__(self, scores: dict[Id, float], base_ts: int, last_ts: int) -> None:
        self.scores = scores
        self.base_ts = base_ts
        self.last_ts = last_ts

    @classmethod
    def seeded(cls, seed: Iterable[tuple[Id, float]], ts: int, max_entries: int) -> ItemRow:
        """A row that starts from the artifact's (its strongest ``max_entries`` neighbours)."""
        scores: dict[Id, float] = {}
        for other, score in seed:
            if len(scores) >= max_entries:
                break
            scores[other] = float(score)
        return cls(scores, ts, ts)

    def add(self, other: Id, weight: float, ts: int, params: ItemKnowledgeParams) -> None:
        if params.half_life_ms:
            exponent = (ts - self.base_ts) / params.half_life_ms
            if exponent > _REBASE_EXPONENT:
                self._rebase(ts, params.half_life_ms)
                exponent = 0.0
            weight *= 2.0 ** exponent
        scores = self.scores
        current = scores.get(other)
        if current is None and len(scores) >= params.max_entries:
            # Space-Saving: the newcomer takes the weakest entry's place and count, so a pair that
            # keeps coming climbs back while one-offs churn at the bottom.
            weakest = min(scores, key=scores.__getitem__)
            current = scores.pop(weakest)
        scores[other] = weight if current is None else current + weight
        if ts > self.last_ts:
            self.last_ts = ts

    def _rebase(self, ts: int, half_life_ms: int) -> None:
        factor = 2.0 ** (-(ts - self.base_ts) / half_life_ms)
        self.scores = {k: v * factor for k, v in self.scores.items()}
        self.base_ts = ts

    def top(self, n: int, params: ItemKnowledgeParams) -> list[Entry]:
        """The ``n`` strongest neighbours, best first, valued at the row's latest update."""
        factor = 2.0 ** (-(self.last_ts - self.base_ts) / params.half_life_ms) if params.half_life_ms else 1.0
        best = heapq.nlargest(n, self.scores.items(), key=itemgetter(1))
        return [[other, score * factor] for other, score in best]

    def to_bytes(self) -> bytes:
        return msgpack.packb([self.base_ts, self.last_ts, list(self.scores), list(self.scores.values())],
                             use_bin_type=True)

    @classmethod
    def from_bytes(cls, data: bytes) -> ItemRow:
        base_ts, last_ts, items, scores = msgpack.unpackb(data, raw=False)
        return cls(dict(zip(items, scores)), base_ts, last_ts)


def apply_pairs(row: ItemRow, pairs: Iterable[Sequence[Any]], ts: int, params: ItemKnowledgeParams) -> None:
    for other, weight in pairs:
        row.add(other, weight, ts, params)


def keep_row(state: UserState, item: Id, row: list[Entry], kept_rows: int) -> None:
    """Keep ``item``'s fresh row in the shopper's state, and only the rows of their last
    ``kept_rows`` distinct items (the candidates' co-visitation sources that weigh most)."""
    rows = state.rows
    rows[item] = row
    if len(rows) <= kept_rows:
        return
    keep: set[Id] = set()
    for seq_row in reversed(state.seq):
        keep.add(seq_row[1])
        if len(keep) >= kept_rows:
            break
    for other in [k for k in rows if k not in keep]:
        del rows[other]


class ItemKnowledge:
    """Steps 1 and 2 in one process (the peer, replays, training): the same rows as the job's,
    in the job's order at parallelism 1."""

    def __init__(self, seed: dict[Id, list[tuple[Id, float]]], params: ItemKnowledgeParams) -> None:
        self.seed = seed
        self.params = params
        self.rows: dict[Id, ItemRow] = {}
        self.recent: dict[Id, list[list[Any]]] = {}

    def row(self, item: Id, ts: int) -> ItemRow:
        row = self.rows.get(item)
        if row is None:
            row = self.rows[item] = ItemRow.seeded(self.seed.get(item, ()), ts, self.params.max_entries)
        return row

    def forget(self, user: Id) -> None:
        """An erased shopper: their window goes, as the job's item step clears it (ItemPairs.java).
        The rows keep what the shopper's events added: counts over every shopper, no one's history."""
        self.recent.pop(user, None)

    def observe(self, user: Id, event: Event) -> list[Entry]:
        """Count the event's pairs; the touched item's row, fresh, as the job sends it on."""
        params = self.params
        recent = self.recent.setdefault(user, [])
        item, ts = event.item_id, event.ts
        weight = pair_weight(event.behavior)
        earlier = earlier_items(recent, item, ts, params.window_ms)
        for other in earlier:
            self.row(other, ts).add(item, weight, ts, params)
        row = self.row(item, ts)
        for other in earlier:
            row.add(other, BACKWARD_SHARE * weight, ts, params)
        remember(recent, item, ts, params.window)
        return row.top(params.emit, params)

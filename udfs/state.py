"""Per-user behavior state, kept as one compact msgpack value.

One value per user means one state read and one write per event, which is
what PyFlink makes cheap. Updates are order-independent within the sequence
window (sorted insert, commutative counts, decay anchored at a reference
time), so events arriving out of order converge to the same state.

Windowed behavior counts (10 minutes, 1 hour, 1 day) are kept in fixed event-time
buckets, one bucket list per window: 1-minute buckets for 10 minutes, 5-minute
buckets for 1 hour, 1-hour buckets for 1 day. Bucket ``b`` of a window with
bucket size ``B`` holds the per-behavior counts of the events with
``ts // B == b``. Each window is one flat int list sorted by bucket,
``[b, pv, cart, fav, buy, b', ...]``: cheap to (un)pack per event, and the same
events give the same list in any arrival order. Buckets that can no longer fall
inside their window relative to ``max_ts`` are pruned, so a user holds at most
11 + 13 + 25 buckets (about 450 bytes) however active they are.

Accuracy: window edges are exact to the bucket size. A window of length ``W``
valued at ``at_ts`` counts every event with ``at_ts - W <= ts <= at_ts``,
never one with ``ts <= at_ts - W - B``, and an event in between only when it
shares the oldest counted bucket (``(at_ts - W) // B``). At the young end it
counts the whole bucket of ``at_ts``, so for ``at_ts < max_ts`` events up to
``B - 1`` ms newer than ``at_ts`` can be included.

Whether an event counts depends only on its ts and the final ``max_ts`` (an
event is added only to a bucket that pruning at the current ``max_ts`` would
keep, and ``max_ts`` only grows), so the buckets converge regardless of
arrival order too. An event older than a window's horizon relative to
``max_ts`` simply does not count in that window.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

import msgpack

from udfs.events import BEHAVIOR_INDEX, Event, Id

STATE_VERSION = 4
_REC = 5  # ints per bucket record in a window list: bucket, pv, cart, fav, buy
# (label, window length ms, bucket size ms) of the windowed behavior counts.
WINDOWS: tuple[tuple[str, int, int], ...] = (
    ("10m", 10 * 60_000, 60_000),
    ("1h", 3_600_000, 5 * 60_000),
    ("1d", 86_400_000, 3_600_000),
)
# Weight of each behavior in category affinity: intent grows along the funnel.
BEHAVIOR_WEIGHT = (1.0, 3.0, 2.0, 4.0)


@dataclass(frozen=True)
class StateLimits:
    """The bounds that keep a user's state small; mirrors config.StateConfig."""

    max_seq_len: int = 50
    seq_window_ms: int = 7 * 86400 * 1000
    max_categories: int = 20
    category_half_life_ms: int = 86400 * 1000
    max_bought: int = 100
    max_bytes: int = 16 * 1024


@dataclass
class UserState:
    """Recent sequence (sorted by ts), counts, category affinity, bought items.

    ``seq`` rows are ``[ts, item, category, behavior_index]``. ``affinity`` maps
    category -> score valued at ``ref_ts`` (decayed lazily on read). ``windows``
    holds one flat list per entry of :data:`WINDOWS`, records of
    ``bucket (ts // bucket_ms), pv, cart, fav, buy`` sorted by bucket; read it
    through :meth:`window_counts`.
    """

    seq: list[list[Any]] = field(default_factory=list)
    counts: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    affinity: dict[Id, float] = field(default_factory=dict)
    ref_ts: int = 0
    bought: list[Id] = field(default_factory=list)
    emitted: int = 0
    max_ts: int = 0
    windows: list[list[int]] = field(default_factory=lambda: [[] for _ in WINDOWS])
    last_list: list[Any] = field(default_factory=list)
    """The list last emitted for this shopper, ``[seq, model_version, arm, items]`` (empty before the
    first): what the next event is scored against (udfs/feedback.py). Ids only, at most ``top_k``."""
    rows: dict[Id, list[Any]] = field(default_factory=dict)
    """Fresh co-visitation rows of the shopper's last few items, as the stream left them when each
    was touched (udfs/item_knowledge.py): item -> ``[[neighbour, score], ...]``; they stand in for
    the artifact's rows of those items. Empty without online item knowledge."""

    def to_bytes(self) -> bytes:
        # New fields go at the end of the list; from_bytes upgrades older layouts.
        return msgpack.packb(
            [STATE_VERSION, self.seq, self.counts, self.affinity, self.ref_ts, self.bought,
             self.emitted, self.max_ts, self.windows, self.last_list, self.rows],
            use_bin_type=True,
        )

    def to_bounded_bytes(self, max_bytes: int) -> tuple[bytes, bool]:
        """The stored value, at most ``max_bytes`` long; True when entries had to go.

        Entry counts alone do not bound bytes: ids may be 128-character strings, which
        makes a full state ~30 KB instead of ~1.5 KB. Over the limit, the oldest quarter of
        the sequence, the bought items and the weakest categories go in turn until it fits;
        counts, windows, the list number and the last list (``top_k`` ids) always stay, so ``seq``
        never repeats and the next event is still scored against the list it followed. The fresh
        item rows go first: the artifact's rows stand in for them.
        """
        blob = self.to_bytes()
        trimmed = False
        if len(blob) > max_bytes and self.rows:
            trimmed = True
            self.rows = {}
            blob = self.to_bytes()
        while len(blob) > max_bytes and (len(self.seq) > 1 or self.bought or len(self.affinity) > 1):
            trimmed = True
            if len(self.seq) > 1:
                del self.seq[: max(1, len(self.seq) // 4)]
            if self.bought:
                del self.bought[: max(1, len(self.bought) // 4)]
            if len(self.affinity) > 1:
                for cat in sorted(self.affinity, key=self.affinity.__getitem__)[: max(1, len(self.affinity) // 4)]:
                    del self.affinity[cat]
            blob = self.to_bytes()
        return blob, trimmed

    @classmethod
    def from_bytes(cls, data: bytes | None) -> UserState:
        if not data:
            return cls()
        values = msgpack.unpackb(data, raw=False, strict_map_key=False)
        version = values[0]
        if version == STATE_VERSION:
            seq, counts, affinity, ref_ts, bought, emitted, max_ts, windows, last_list, rows = values[1:11]
            return cls(seq, counts, affinity, ref_ts, bought, emitted, max_ts, windows, last_list, rows)
        if version == 3:
            # Written before fresh item rows were kept: the artifact's rows serve until the next events.
            seq, counts, affinity, ref_ts, bought, emitted, max_ts, windows, last_list = values[1:10]
            return cls(seq, counts, affinity, ref_ts, bought, emitted, max_ts, windows, last_list)
        if version == 2:
            # Written before the last list was kept: the shopper's next list starts the feedback.
            seq, counts, affinity, ref_ts, bought, emitted, max_ts, windows = values[1:9]
            return cls(seq, counts, affinity, ref_ts, bought, emitted, max_ts, windows)
        if version == 1:
            # Written before windowed counts existed (e.g. restored from an older savepoint):
            # keep everything, windows start empty and fill from the next events.
            seq, counts, affinity, ref_ts, bought, emitted, max_ts = values[1:8]
            return cls(seq, counts, affinity, ref_ts, bought, emitted, max_ts)
        raise ValueError(f"unsupported user state version {version}")

    @property
    def last_event_ts(self) -> int:
        return self.max_ts

    def category_affinity(self, at_ts: int, half_life_ms: int) -> dict[Id, float]:
        """Affinity valued at ``at_ts``."""
        factor = 2.0 ** (-(at_ts - self.ref_ts) / half_life_ms)
        return {c: s * factor for c, s in self.affinity.items()}

    def window_counts(self, at_ts: int | None = None) -> dict[str, list[int]]:
        """Window label -> ``[pv, cart, fav, buy]`` counts ending at ``at_ts`` (default ``max_ts``).

        Exact to the bucket size (see the module docstring). Buckets are pruned relative
        to ``max_ts``, so an ``at_ts`` before ``max_ts`` may miss events near its old edge.
        """
        at = self.max_ts if at_ts is None else at_ts
        out: dict[str, list[int]] = {}
        for (label, length, size), buckets in zip(WINDOWS, self.windows):
            lo, hi = (at - length) // size, at // size
            total = [0, 0, 0, 0]
            for i in range(0, len(buckets), _REC):
                if lo <= buckets[i] <= hi:
                    total[0] += buckets[i + 1]
                    total[1] += buckets[i + 2]
                    total[2] += buckets[i + 3]
                    total[3] += buckets[i + 4]
            out[label] = total
        return out


def is_duplicate(state: UserState, event: Event) -> bool:
    """Same (item, behavior, ts) already in the sequence: a redelivery, not a new action."""
    beh = BEHAVIOR_INDEX[event.behavior]
    i = bisect.bisect_left(state.seq, event.ts, key=lambda row: row[0])
    while i < len(state.seq) and state.seq[i][0] == event.ts:
        row = state.seq[i]
        if row[1] == event.item_id and row[3] == beh:
            return True
        i += 1
    return False


def _add_affinity(state: UserState, event: Event, beh: int, limits: StateLimits) -> None:
    weight = BEHAVIOR_WEIGHT[beh]
    hl = limits.category_half_life_ms
    if event.ts > state.ref_ts:
        # Move the reference forward so scores stay O(1) and never overflow.
        factor = 2.0 ** (-(event.ts - state.ref_ts) / hl) if state.ref_ts else 1.0
        state.affinity = {c: s * factor for c, s in state.affinity.items()}
        state.ref_ts = event.ts
        contribution = weight
    else:
        contribution = weight * 2.0 ** (-(state.ref_ts - event.ts) / hl)
    cat = event.category_id
    state.affinity[cat] = state.affinity.get(cat, 0.0) + contribution
    if len(state.affinity) > limits.max_categories:
        weakest = min(state.affinity, key=state.affinity.__getitem__)
        del state.affinity[weakest]


def _add_window_counts(state: UserState, ts: int, beh: int, prev_max_ts: int) -> None:
    """Count the event in each window's bucket, then prune buckets the windows left behind.

    A bucket is kept iff ``b >= (max_ts - length) // size``; the event is added only to a
    bucket that rule keeps, and pruning runs when ``max_ts`` moves the cutoff, so the
    result depends on the set of events alone, not their arrival order.
    """
    max_ts = state.max_ts
    for (_, length, size), buckets in zip(WINDOWS, state.windows):
        cutoff = (max_ts - length) // size
        b = ts // size
        if b < cutoff:
            continue  # older than this window can reach; max_ts did not move, nothing to prune
        # Most events land in the newest bucket: search from the end.
        i = len(buckets) - _REC
        while i >= 0 and buckets[i] > b:
            i -= _REC
        if i < 0 or buckets[i] != b:
            i += _REC
            buckets[i:i] = [b, 0, 0, 0, 0]
        buckets[i + 1 + beh] += 1
        if ts > prev_max_ts and cutoff > (prev_max_ts - length) // size:
            j = 0
            while buckets[j] < cutoff:  # stops at the bucket just counted at the latest
                j += _REC
            if j:
                del buckets[:j]


def update_state(state: UserState, event: Event, limits: StateLimits) -> bool:
    """Apply one event; returns False (state untouched) for a duplicate."""
    if is_duplicate(state, event):
        return False
    beh = BEHAVIOR_INDEX[event.behavior]
    row = [event.ts, event.item_id, event.category_id, beh]
    bisect.insort_right(state.seq, row, key=lambda r: r[0])
    prev_max_ts = state.max_ts
    state.max_ts = max(prev_max_ts, event.ts)
    horizon = state.max_ts - limits.seq_window_ms
    drop = 0
    while drop < len(state.seq) and state.seq[drop][0] < horizon:
        drop += 1
    overflow = len(state.seq) - drop - limits.max_seq_len
    if overflow > 0:
        drop += overflow
    if drop:
        del state.seq[:drop]
    state.counts[beh] += 1
    _add_window_counts(state, event.ts, beh, prev_max_ts)
    _add_affinity(state, event, beh, limits)
    if event.behavior == "buy" and limits.max_bought and event.item_id not in state.bought:
        state.bought.append(event.item_id)
        if len(state.bought) > limits.max_bought:
            del state.bought[0]
    return True


MAX_GAP_BUCKET = 20


def gap_bucket(gap_ms: int) -> int:
    """Log2 bucket of a time gap in seconds: 0 = same second, up to 20 (~12 days+).

    floor(log2(1 + gap_ms / 1000)) computed in integers, as the bit length of the whole
    part of 1 + seconds (2**k <= x exactly when 2**k <= floor(x)): several calls per
    candidate row, at half the cost of the float logarithm, with the same buckets
    (tests/unit/test_state.py compares them)."""
    if gap_ms < 1000:
        return 0
    return min(MAX_GAP_BUCKET, ((int(gap_ms) + 1000) // 1000).bit_length() - 1)

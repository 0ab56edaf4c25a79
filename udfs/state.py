"""Per-user behavior state, kept as one compact msgpack value.

One value per user means one state read and one write per event, which is
what PyFlink makes cheap. Updates are order-independent within the sequence
window (sorted insert, commutative counts, decay anchored at a reference
time), so events arriving out of order converge to the same state.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any

import msgpack

from udfs.events import BEHAVIOR_INDEX, Event, Id

STATE_VERSION = 1
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


@dataclass
class UserState:
    """Recent sequence (sorted by ts), counts, category affinity, bought items.

    ``seq`` rows are ``[ts, item, category, behavior_index]``. ``affinity`` maps
    category -> score valued at ``ref_ts`` (decayed lazily on read).
    """

    seq: list[list[Any]] = field(default_factory=list)
    counts: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    affinity: dict[Id, float] = field(default_factory=dict)
    ref_ts: int = 0
    bought: list[Id] = field(default_factory=list)
    emitted: int = 0
    max_ts: int = 0

    def to_bytes(self) -> bytes:
        return msgpack.packb(
            [STATE_VERSION, self.seq, self.counts, self.affinity, self.ref_ts, self.bought,
             self.emitted, self.max_ts],
            use_bin_type=True,
        )

    @classmethod
    def from_bytes(cls, data: bytes | None) -> UserState:
        if not data:
            return cls()
        values = msgpack.unpackb(data, raw=False, strict_map_key=False)
        version = values[0]
        if version != STATE_VERSION:
            raise ValueError(f"unsupported user state version {version}")
        seq, counts, affinity, ref_ts, bought, emitted, max_ts = values[1:8]
        return cls(seq, counts, affinity, ref_ts, bought, emitted, max_ts)

    @property
    def last_event_ts(self) -> int:
        return self.max_ts

    def category_affinity(self, at_ts: int, half_life_ms: int) -> dict[Id, float]:
        """Affinity valued at ``at_ts``."""
        factor = 2.0 ** (-(at_ts - self.ref_ts) / half_life_ms)
        return {c: s * factor for c, s in self.affinity.items()}


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


def update_state(state: UserState, event: Event, limits: StateLimits) -> bool:
    """Apply one event; returns False (state untouched) for a duplicate."""
    if is_duplicate(state, event):
        return False
    beh = BEHAVIOR_INDEX[event.behavior]
    row = [event.ts, event.item_id, event.category_id, beh]
    bisect.insort_right(state.seq, row, key=lambda r: r[0])
    state.max_ts = max(state.max_ts, event.ts)
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
    _add_affinity(state, event, beh, limits)
    if event.behavior == "buy" and limits.max_bought and event.item_id not in state.bought:
        state.bought.append(event.item_id)
        if len(state.bought) > limits.max_bought:
            del state.bought[0]
    return True


def gap_bucket(gap_ms: int) -> int:
    """Log2 bucket of a time gap in seconds: 0 = same second, up to 20 (~12 days+)."""
    seconds = max(gap_ms, 0) / 1000.0
    return min(20, int(math.log2(1.0 + seconds)))

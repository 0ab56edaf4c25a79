"""Time scales derived from a log: no data set's clock, span or pace as a constant.

A log of click sessions moves in seconds, a review log in months. Every
duration the candidate tables and the training protocol need is derived here
from the events themselves:

* :func:`derive_table_period`: how often training rebuilds its point-in-time tables;
* :func:`derive_covisit_window_ms`: how close two events of one shopper must be to
  count as co-visited (a quantile of the log's own gaps between a shopper's events);
* :func:`derive_popularity_half_life_ms`: how fast popularity decays, so that
  "trending" means recent at the log's pace;
* :func:`derive_seq_window_ms`: how old an event a shopper's state still keeps.

Core code (no torch, no Flink): the training side derives them once per
training part and records them in the artifact's manifest.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from udfs.events import Event, Id

PERIODS_PER_SPLIT = 6  # point-in-time table periods in the training part (typical, by event count)
MIN_EVENTS_PER_PERIOD = 200
_S = 1000
NICE_PERIODS_MS = (_S, 5 * _S, 15 * _S, 30 * _S, 60 * _S, 300 * _S, 900 * _S, 1800 * _S, 3600 * _S,
                   3 * 3600 * _S, 6 * 3600 * _S, 12 * 3600 * _S, 86400 * _S, 7 * 86400 * _S, 30 * 86400 * _S)
DAY_MS = 86400 * _S
# Two events of a shopper co-visit when their gap is within this quantile of all of the
# log's gaps between a shopper's consecutive events (on the Taobao sample: about an hour).
COVISIT_GAP_QUANTILE = 0.85
# Popularity halves every this many table periods (on the Taobao sample: two days).
HALF_LIFE_PERIODS = 4
# The shortest sequence window (the config's floor for ``state.seq_window_s``).
MIN_SEQ_WINDOW_MS = 60 * _S


def derive_table_period(train_ts: Sequence[int] | np.ndarray) -> int:
    """The point-in-time table period (ms) for a training part with these event times.

    The training events are cut into about ``PERIODS_PER_SPLIT`` runs of equal
    count (at least ``MIN_EVENTS_PER_PERIOD`` events each where the log allows);
    the period is the median run's duration, rounded down to a round value (1 s,
    5 s, ..., 1 h, 3 h, ..., 1 day, 7 days, 30 days, then whole days). A log of
    minutes gets periods of seconds or minutes, one of months gets days or weeks;
    the median ignores the gaps between bursts of a log with quiet stretches."""
    ts = np.sort(np.asarray(train_ts, dtype=np.int64))
    n = len(ts)
    if n < 2:
        return NICE_PERIODS_MS[0]
    chunk = max(1, n // PERIODS_PER_SPLIT, min(MIN_EVENTS_PER_PERIOD, n // 2))
    ends = ts[chunk::chunk]
    durations = ends - ts[: len(ends) * chunk : chunk]
    raw = int(np.median(durations)) if len(durations) else int(ts[-1] - ts[0])
    if raw >= NICE_PERIODS_MS[-1]:
        return raw // DAY_MS * DAY_MS
    return max((p for p in NICE_PERIODS_MS if p <= raw), default=NICE_PERIODS_MS[0])


def format_period(ms: int) -> str:
    for unit, size in (("d", DAY_MS), ("h", 3600 * _S), ("min", 60 * _S), ("s", _S)):
        if ms >= size and ms % size == 0:
            return f"{ms // size} {unit}"
    return f"{ms} ms"


def shopper_gaps_ms(events: Iterable[Event]) -> np.ndarray:
    """Gaps between each shopper's consecutive events (ms), over all shoppers."""
    last: dict[Id, int] = {}
    gaps: list[int] = []
    for e in sorted(events, key=lambda e: e.ts):
        prev = last.get(e.user_id)
        if prev is not None:
            gaps.append(e.ts - prev)
        last[e.user_id] = e.ts
    return np.asarray(gaps, dtype=np.int64)


def derive_covisit_window_ms(events: Iterable[Event]) -> int:
    """The co-visitation time window: the :data:`COVISIT_GAP_QUANTILE` quantile of the
    shoppers' consecutive gaps, at least one second. A log with a day-granular clock
    gets days (same-day pairs alone would miss most), a click log seconds or minutes."""
    gaps = shopper_gaps_ms(events)
    if not len(gaps):
        return _S
    return max(_S, int(np.quantile(gaps, COVISIT_GAP_QUANTILE)))


def derive_popularity_half_life_ms(events: Iterable[Event]) -> int:
    """Popularity's half-life: :data:`HALF_LIFE_PERIODS` table periods of these events."""
    return HALF_LIFE_PERIODS * derive_table_period([e.ts for e in events])


def derive_seq_window_ms(train_ts: Sequence[int] | np.ndarray) -> int:
    """How long a shopper's events stay in their state: the training part's span, at least
    :data:`MIN_SEQ_WINDOW_MS`.

    The model has seen histories as old as its training log and no older, and the item count
    (``state.max_seq_len``) bounds the state whatever the window. A fixed window is a calendar
    constant: a week holds a Taobao shopper's repeats, while on a four-month log of daily
    visits 38% of the held-out repeats come back after more than a week, and a one-week state
    has forgotten the item by then (recent items then lose to a plain online "recent" list)."""
    ts = np.asarray(train_ts, dtype=np.int64)
    if not len(ts):
        return MIN_SEQ_WINDOW_MS
    return max(MIN_SEQ_WINDOW_MS, int(ts.max() - ts.min()))

"""Time scales derived from the log (udfs/timescales.py) and their use in the candidate tables."""

from __future__ import annotations

import numpy as np
import pytest

from udfs.candidates import build_tables
from udfs.events import Event
from udfs.timescales import (
    COVISIT_GAP_QUANTILE,
    HALF_LIFE_PERIODS,
    MIN_SEQ_WINDOW_MS,
    derive_covisit_window_ms,
    derive_popularity_half_life_ms,
    derive_seq_window_ms,
    derive_table_period,
    shopper_gaps_ms,
)

DAY = 86_400_000


def walk(user: int, items: list[str], start: int, step: int) -> list[Event]:
    return [Event(user, item, 0, "pv", start + i * step) for i, item in enumerate(items)]


def test_gaps_are_per_shopper_not_across_shoppers() -> None:
    log = walk(1, ["a", "b", "c"], 0, 1000) + walk(2, ["x", "y"], 500, 7000)
    assert sorted(shopper_gaps_ms(log).tolist()) == [1000, 1000, 7000]


def test_covisit_window_follows_the_clock_of_the_log() -> None:
    # The same walks, once a second apart and once a day apart: the window scales by the same factor.
    fast = [e for u in range(20) for e in walk(u, [f"i{u}{k}" for k in range(6)], u, 1000)]
    slow = [e for u in range(20) for e in walk(u, [f"i{u}{k}" for k in range(6)], u, DAY)]
    assert derive_covisit_window_ms(fast) == 1000
    assert derive_covisit_window_ms(slow) == DAY


def test_covisit_window_is_the_gap_quantile() -> None:
    gaps = [1000 * (k + 1) for k in range(100)]  # one shopper, gaps 1 s .. 100 s
    ts = np.concatenate([[0], np.cumsum(gaps)])
    log = [Event(1, f"i{k}", 0, "pv", int(t)) for k, t in enumerate(ts)]
    assert derive_covisit_window_ms(log) == int(np.quantile(gaps, COVISIT_GAP_QUANTILE))
    assert derive_covisit_window_ms(log[:1]) == 1000  # no gap at all: the floor


def test_half_life_is_periods_of_the_log() -> None:
    log = [Event(u, f"i{u}", 0, "pv", t) for u, t in enumerate(range(0, 14 * DAY, 3_600_000))]
    assert derive_popularity_half_life_ms(log) == HALF_LIFE_PERIODS * derive_table_period([e.ts for e in log])


@pytest.mark.parametrize("step", [60_000, DAY])
def test_a_day_granular_log_co_visits_across_days(step: int) -> None:
    """Shoppers who touch a then b a step apart: the pair co-visits at either pace (a fixed
    one-hour window dropped the daily one)."""
    log = [e for u in range(10) for e in walk(u, ["a", "b"], u * 7, step)]
    assert dict(build_tables(log).covisit.get("a", [])).get("b", 0) > 0


def test_explicit_scales_override_the_derived_ones() -> None:
    log = [e for u in range(10) for e in walk(u, ["a", "b"], u * 7, DAY)]
    assert "a" not in build_tables(log, window_ms=3_600_000).covisit


@pytest.mark.parametrize("span", [90 * 60_000, 9 * DAY, 120 * DAY, 3000 * DAY])
def test_seq_window_is_the_span_of_the_training_log(span: int) -> None:
    """A log of minutes keeps minutes, one of years keeps years: never a fixed week."""
    rng = np.random.default_rng(0)
    ts = np.sort(rng.integers(0, span, size=500))
    ts[0], ts[-1] = 0, span
    assert derive_seq_window_ms(ts + 1_500_000_000_000) == span


def test_seq_window_has_a_floor() -> None:
    assert derive_seq_window_ms([5, 5, 6]) == MIN_SEQ_WINDOW_MS
    assert derive_seq_window_ms([]) == MIN_SEQ_WINDOW_MS

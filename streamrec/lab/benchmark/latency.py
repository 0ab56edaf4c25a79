"""Event-to-recommendation latency from Kafka timestamps of input and output."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np


def trigger_key(user_id: Any, item_id: Any, behavior: str, ts: int) -> tuple[str, str, str, int]:
    return (str(user_id), str(item_id), behavior, int(ts))


@dataclass
class LatencySummary:
    matched: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    def as_dict(self) -> dict[str, float]:
        return {"matched": self.matched, "p50_ms": self.p50_ms, "p95_ms": self.p95_ms,
                "p99_ms": self.p99_ms, "max_ms": self.max_ms}


TriggerKey = tuple[str, str, str, int]


def latencies(input_ts: dict[TriggerKey, int],
              outputs: Iterable[tuple[dict[str, Any], int]]) -> list[tuple[int, int]]:
    """(input timestamp, latency ms) for every output whose trigger is in ``input_ts``."""
    out = []
    for rec, out_ts in outputs:
        t = rec["trigger"]
        key = trigger_key(rec["user_id"], t["item_id"], t["behavior"], t["ts"])
        if key in input_ts:
            out.append((input_ts[key], out_ts - input_ts[key]))
    return out


def p99_by_interval(pairs: list[tuple[int, int]], interval_ms: int = 10_000) -> list[float]:
    """p99 latency per ``interval_ms`` of input time: tells a warm-up tail from a steady one."""
    if not pairs:
        return []
    start = min(t for t, _ in pairs)
    bins: dict[int, list[int]] = {}
    for t, lat in pairs:
        bins.setdefault((t - start) // interval_ms, []).append(lat)
    return [float(np.percentile(bins[i], 99)) for i in sorted(bins)]


def summarize(input_ts: dict[TriggerKey, int], outputs: Iterable[tuple[dict[str, Any], int]]) -> LatencySummary:
    """``input_ts``: trigger key -> input record timestamp; ``outputs``: (record, output timestamp)."""
    return summarize_pairs(latencies(input_ts, outputs))


def summarize_pairs(pairs: list[tuple[int, int]]) -> LatencySummary:
    """The summary of (input timestamp, latency ms) pairs from :func:`latencies`."""
    lat = [latency for _, latency in pairs]
    if not lat:
        return LatencySummary(0, float("nan"), float("nan"), float("nan"), float("nan"))
    a = np.asarray(lat, dtype=float)
    p50, p95, p99 = (float(np.percentile(a, q)) for q in (50, 95, 99))
    return LatencySummary(len(lat), p50, p95, p99, float(a.max()))


MEDIAN_KEYS = ("p50_ms", "p95_ms", "p99_ms", "max_ms", "achieved_send_rate")
PER_RUN_KEYS = ("p99_ms_per_10s", "busiest_threads")
"""Figures that only mean something for one run: kept in ``runs``, not lifted into the point."""


def median_of_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One latency point from independent runs: medians of their percentiles, every run kept.

    A median of per-run p99s, not a p99 of the pooled samples: one run on a noisy
    neighbour's minute should move the point no more than any other run.
    """
    if not runs:
        raise ValueError("no latency runs")
    point: dict[str, Any] = {k: v for k, v in runs[0].items() if k not in (*MEDIAN_KEYS, *PER_RUN_KEYS)}
    for key in MEDIAN_KEYS:
        values = [r[key] for r in runs if key in r]
        if values:
            point[key] = float(np.median(values))
    point["matched"] = sum(int(r["matched"]) for r in runs)
    point["received"] = sum(int(r.get("received", 0)) for r in runs)
    point["runs"] = runs
    return point

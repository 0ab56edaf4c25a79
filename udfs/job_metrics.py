"""Job counters and histograms that reach Flink's metric system in batches.

In thread mode each ``Counter.inc`` is a call from the embedded interpreter into the
JVM. Five of them per event took about 3% of the keyed thread (py-spy on a p1
TaskManager at full load), while Flink only reads counters every few seconds.
Counts reach Flink with the first event after the interval, and at close; the keyed
function also flushes on a processing-time timer, so a stream that has gone quiet
still shows its last second's counts.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol


class FlinkCounter(Protocol):
    def inc(self, n: int = 1) -> None: ...


class BatchedCounters:
    """Counts in Python and hands the sums to the Flink counters at most every ``interval_s``."""

    def __init__(self, make_counter: Callable[[str], Any], names: Iterable[str], interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._counters: dict[str, FlinkCounter] = {n: make_counter(n) for n in names}
        self._pending = dict.fromkeys(self._counters, 0)
        self._interval_s = interval_s
        self._clock = clock
        self._flushed_at = clock()

    def inc(self, name: str, n: int = 1) -> None:
        self._pending[name] += n

    def due(self) -> bool:
        """Asked once per event: one clock read."""
        return self._clock() - self._flushed_at >= self._interval_s

    def flush(self) -> None:
        for name, n in self._pending.items():
            if n:
                self._counters[name].inc(n)
                self._pending[name] = 0
        self._flushed_at = self._clock()


class Histogram(Protocol):
    def update(self, value: int) -> None: ...


class SampledHistograms:
    """Histogram samples kept in Python and handed to Flink histograms at flush time.

    At most ``max_per_flush`` samples per histogram and interval reach the JVM (a uniform
    reservoir sample of the interval's values), so the cost per event stays one append
    however fast events come; the count of every value is kept in ``seen``.
    """

    def __init__(self, make_histogram: Callable[[str], Histogram], names: Iterable[str], max_per_flush: int = 200,
                 seed: int = 0) -> None:
        import random

        self._histograms = {n: make_histogram(n) for n in names}
        self._samples: dict[str, list[int]] = {n: [] for n in self._histograms}
        self.seen = dict.fromkeys(self._histograms, 0)
        self._max = max_per_flush
        self._rng = random.Random(seed)

    def add(self, name: str, value: float) -> None:
        self.seen[name] += 1
        samples = self._samples[name]
        if len(samples) < self._max:
            samples.append(int(value))
        else:  # reservoir sampling over this interval's values
            j = self._rng.randrange(self.seen[name])
            if j < self._max:
                samples[j] = int(value)

    def flush(self) -> None:
        for name, samples in self._samples.items():
            hist = self._histograms[name]
            for v in samples:
                hist.update(v)
            samples.clear()
        self.seen = dict.fromkeys(self._histograms, 0)


class BucketHistogram:
    """A histogram as Flink counters: one per bucket, plus the sum and the count.

    PyFlink's Python metrics offer counters, gauges, meters and distributions (min, max,
    mean, no quantiles); bucket counters give quantiles to any reader (Prometheus-style
    ``le`` buckets, not cumulative) and ride on :class:`BatchedCounters`, so recording a
    value costs no JVM call. Bucket ``le_B`` counts values in (previous bound, B].
    """

    def __init__(self, prefix: str, bounds: Sequence[int]) -> None:
        self.prefix = prefix
        self.bounds = sorted(bounds)
        self.bucket_names = [f"{prefix}_le_{b}" for b in self.bounds] + [f"{prefix}_le_inf"]
        self.sum_name, self.count_name = f"{prefix}_sum", f"{prefix}_count"

    @property
    def names(self) -> list[str]:
        return [*self.bucket_names, self.sum_name, self.count_name]

    def record(self, counters: BatchedCounters, value: float) -> None:
        counters.inc(self.bucket_names[bisect.bisect_left(self.bounds, value)])
        counters.inc(self.sum_name, int(round(value)))
        counters.inc(self.count_name)


def geometric_bounds(lowest: int, highest: int) -> list[int]:
    """1, 1.5, 2, 3, 4, 6, ... times powers of two between ``lowest`` and ``highest``: quantiles within 50%."""
    out: set[int] = set()
    b = 1
    while b <= highest:
        out.update(v for v in (b, b + b // 2) if lowest <= v <= highest)
        b *= 2
    return sorted(out)


def bucket_quantile(counts: Mapping[str, float], hist: BucketHistogram, q: float) -> float | None:
    """The upper bound of the bucket holding quantile ``q`` (0..1) of recorded values; None when empty
    or in the open last bucket (then the values' maximum is not known)."""
    per_bucket = [counts.get(n, 0.0) for n in hist.bucket_names]
    total = sum(per_bucket)
    if total <= 0:
        return None
    seen = 0.0
    for bound, n in zip([*hist.bounds, None], per_bucket, strict=True):
        seen += n
        if seen >= q * total:
            return None if bound is None else float(bound)
    return None


# The batched ranking stage's histograms: rows per model call, and the time a request waited in
# its buffer (ms).
# "batch_" keeps them apart from the job's Flink histogram ``rows_per_call`` (jobs/functions.py) in
# Prometheus, where a counter ``rows_per_call_count`` would clash with that summary's ``_count``.
ROWS_PER_CALL = BucketHistogram("batch_rows_per_call", geometric_bounds(64, 65536))
BATCH_WAIT_MS = BucketHistogram("batch_wait_ms", geometric_bounds(1, 60_000))

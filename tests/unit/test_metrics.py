"""Counters batched on the Python side reach Flink's counters with the same totals."""

from udfs.job_metrics import BatchedCounters


class FakeCounter:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def inc(self, n: int = 1) -> None:
        self.calls.append(n)


def test_counts_are_handed_over_once_per_interval_with_the_same_totals():
    now = [100.0]
    made: dict[str, FakeCounter] = {}

    def make(name: str) -> FakeCounter:
        made[name] = FakeCounter()
        return made[name]

    m = BatchedCounters(make, ["accepted", "rows"], interval_s=1.0, clock=lambda: now[0])
    assert set(made) == {"accepted", "rows"}
    for _ in range(500):
        m.inc("accepted")
        m.inc("rows", 100)
        assert not m.due()  # the clock has not moved: nothing crosses into the JVM
    assert made["accepted"].calls == [] and made["rows"].calls == []
    now[0] += 1.0
    assert m.due()
    m.flush()
    assert made["accepted"].calls == [500] and made["rows"].calls == [50_000]
    assert not m.due()
    m.inc("accepted", 2)
    m.flush()  # close(): whatever is pending, however recent
    m.flush()  # nothing pending: no zero increments
    assert made["accepted"].calls == [500, 2] and made["rows"].calls == [50_000]


class FakeHistogram:
    def __init__(self) -> None:
        self.values: list[int] = []

    def update(self, value: int) -> None:
        self.values.append(value)


def test_histogram_samples_are_bounded_per_flush_and_drawn_from_the_whole_interval():
    from udfs.job_metrics import SampledHistograms

    made: dict[str, FakeHistogram] = {}

    def make(name: str) -> FakeHistogram:
        made[name] = FakeHistogram()
        return made[name]

    h = SampledHistograms(make, ["latency_ms"], max_per_flush=100)
    for v in range(10):
        h.add("latency_ms", v)
    h.flush()
    assert made["latency_ms"].values == list(range(10))  # under the cap: every value
    for v in range(10_000):
        h.add("latency_ms", v)
    assert h.seen["latency_ms"] == 10_000
    h.flush()
    sample = made["latency_ms"].values[10:]
    assert len(sample) == 100 and len(set(sample)) == 100
    assert sum(v >= 5_000 for v in sample) > 25  # not just the first values of the interval
    h.flush()
    assert len(made["latency_ms"].values) == 110

"""Counters batched on the Python side reach Flink's counters with the same totals."""

from udfs.metrics import BatchedCounters


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

"""Latency from Kafka timestamps: matching outputs to inputs, and p99 over time."""

from streamrec.latency import latencies, p99_by_interval, summarize, trigger_key


def _out(user, item, ts, out_ts):
    return ({"user_id": user, "trigger": {"item_id": item, "behavior": "pv", "ts": ts}}, out_ts)


def test_outputs_are_matched_to_their_inputs_by_trigger():
    inputs = {trigger_key(1, 10, "pv", 5): 1_000, trigger_key("2", "x", "pv", 6): 1_050}
    outs = [_out(1, 10, 5, 1_120), _out("2", "x", 6, 1_300), _out(3, 1, 1, 9_999)]  # the last: no input
    assert latencies(inputs, outs) == [(1_000, 120), (1_050, 250)]
    s = summarize(inputs, outs)
    assert s.matched == 2 and s.max_ms == 250 and 120 < s.p50_ms < 250


def test_p99_per_interval_separates_a_slow_start_from_the_steady_state():
    pairs = [(t, 5_000 if t < 10_000 else 100) for t in range(0, 30_000, 10)]
    assert p99_by_interval(pairs, 10_000) == [5_000.0, 100.0, 100.0]
    assert p99_by_interval([]) == []

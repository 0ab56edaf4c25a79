"""Latency from Kafka timestamps: matching outputs to inputs, and p99 over time."""

import ctypes
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from streamrec.lab.benchmark.bench_report import markdown
from streamrec.lab.benchmark.bench_summary import cpu_budget, jit_share, output_backlog
from streamrec.lab.benchmark.latency import latencies, median_of_runs, p99_by_interval, summarize, trigger_key
from streamrec.lab.benchmark.procstats import busiest_threads, code_commit, thread_cpu_seconds


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


def _run(p99, matched=100):
    return {"matched": matched, "received": matched, "p50_ms": p99 / 4, "p95_ms": p99 / 2, "p99_ms": float(p99),
            "max_ms": 2 * p99, "target_rate": 219.0, "achieved_send_rate": 218.9, "p99_ms_per_10s": [p99],
            "busiest_threads": {"taskmanager0": {"C2 CompilerThre": p99 / 10_000}}}


def test_a_latency_point_is_the_median_of_its_runs_and_keeps_every_run():
    runs = [_run(180), _run(1_300), _run(170, matched=90)]
    point = median_of_runs(runs)
    # one slow run out of three does not move the point; a pooled p99 would
    assert point["p99_ms"] == 180 and point["p50_ms"] == 45 and point["max_ms"] == 360
    assert point["matched"] == 290 and point["target_rate"] == 219.0 and point["runs"] == runs
    # one run's time series and threads are not the point's: they stay with their run
    assert "p99_ms_per_10s" not in point and "busiest_threads" not in point
    with pytest.raises(ValueError):
        median_of_runs([])


def test_the_markdown_report_shows_each_runs_p99_beside_the_median():
    results = {"machine": {"cpus": 2, "platform": "linux"}, "latency_50pct": median_of_runs([_run(180), _run(1_300),
                                                                                             _run(170)])}
    row = next(line for line in markdown(results).splitlines() if line.startswith("| 50% of max"))
    assert "| 180 |" in row and "180, 1,300, 170" in row
    # each run's compiler threads (a TaskManager's C2 at p99 / 10,000 cores in _run): a warm-up shows
    assert "0.02, 0.13, 0.02" in row


def test_jit_share_is_per_taskmanager_and_leaves_other_processes_out():
    run = {"busiest_threads": {"taskmanager0": {"C2 CompilerThre": 0.10, "C1 CompilerThre": 0.02, "recommend": 0.9},
                               "taskmanager1": {"C2 CompilerThre": 0.04},
                               "kafka": {"C2 CompilerThre": 0.5}}}
    assert jit_share(run) == pytest.approx((0.12 + 0.04) / 2)
    assert jit_share({"busiest_threads": {"kafka": {"C2 CompilerThre": 0.5}}}) is None
    assert jit_share({}) is None


def test_the_report_names_the_run_time_and_the_commit_measured(tmp_path):
    results = {"machine": {"cpus": 2, "platform": "linux"}, "started_at": "2026-12-07T06:00:00+0000",
               "commit": "abc123def456"}
    assert "Run 2026-12-07T06:00:00+0000 at commit abc123def456." in markdown(results)
    # This checkout's own commit, dirty or not; a folder outside any checkout has none.
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).parent, check=True).stdout.strip()
    assert (code_commit() or "").split("+")[0] == head
    assert code_commit(tmp_path) is None


def test_cpu_budget_turns_a_window_into_cost_per_event_and_the_rate_the_cores_allow():
    row = {"events_per_s": 400.0, "window_s": 100.0, "cpu_s": {"taskmanager0": 60.0, "taskmanager1": 20.0,
                                                              "kafka": 8.0}}
    b = cpu_budget(row, cores=2)
    # 40,000 events cost 80 s of job CPU and 8 s of broker CPU: 2.2 ms each, so 2 cores allow ~909/s
    assert b["cpu_ms_per_event"] == pytest.approx(2.0) and b["broker_cpu_ms_per_event"] == pytest.approx(0.2)
    assert b["cpu_bound_events_per_s"] == pytest.approx(2 * 40_000 / 88) and b["cores"] == 2
    assert cpu_budget(row, cores=1)["cpu_bound_events_per_s"] == pytest.approx(40_000 / 88)


PR_SET_NAME = 15  # prctl(2)


def _named(name: bytes) -> None:
    """Give the calling thread a kernel name, as the JVM does for its threads (Python does not)."""
    ctypes.CDLL(None).prctl(PR_SET_NAME, name, 0, 0, 0)


def _spin(stop: threading.Event) -> None:
    _named(b"spinner-7")
    while not stop.is_set():
        sum(range(1000))


def _sleep(stop: threading.Event) -> None:
    _named(b"sleeper")
    stop.wait()


def test_thread_cpu_names_the_thread_that_used_it():
    """A thread that spins shows under its name, near one core; one that sleeps does not show."""
    stop = threading.Event()
    busy = threading.Thread(target=_spin, args=(stop,))
    idle = threading.Thread(target=_sleep, args=(stop,))
    before = thread_cpu_seconds(os.getpid())
    start = time.monotonic()
    busy.start()
    idle.start()
    time.sleep(1.0)
    after = thread_cpu_seconds(os.getpid())
    elapsed = time.monotonic() - start
    stop.set()
    busy.join()
    idle.join()
    shares = busiest_threads(before, after, elapsed)
    assert "spinner" in shares and 0.3 < shares["spinner"] <= 1.1  # trailing "-7" folded into the name
    assert shares.get("sleeper", 0.0) < 0.05  # a thread that waits uses (next to) nothing
    assert list(shares.values()) == sorted(shares.values(), reverse=True)


def test_the_markdown_report_lists_each_phases_busiest_threads():
    results = {"machine": {"cpus": 2, "platform": "linux"},
               "job_p1": {"events_per_s": 400.0, "window_s": 60.0, "cpu_s": {"taskmanager0": 70.0},
                          "peak_rss_mb": {"taskmanager0": 1600.0},
                          "busiest_threads": {"taskmanager0": {"recommend -> (M": 0.998, "C2 CompilerThre": 0.14}}}}
    line = next(x for x in markdown(results).splitlines() if x.startswith("- job_p1 taskmanager0"))
    assert line == "- job_p1 taskmanager0: recommend -> (M 1.00, C2 CompilerThre 0.14"


def test_lists_made_faster_than_they_reach_the_topic_are_reported():
    """The topic's growth is what the bench counts; lists the job made beyond it show where it stalled."""
    assert output_backlog(38_791.0, 16_275) == {"lists_made_at_end": 38_791, "lists_not_on_topic_at_end": 22_516}
    assert output_backlog(30_000.0, 31_000)["lists_not_on_topic_at_end"] == 0  # the counter lags: no backlog
    assert output_backlog(0.0, 31_000)["lists_not_on_topic_at_end"] is None  # no counter read
    row = {"events_per_s": 181.0, "window_s": 31.0, "cpu_s": {}, "peak_rss_mb": {}, "outputs_at_end": 16_275,
           **output_backlog(38_791.0, 16_275)}
    text = markdown({"machine": {"cpus": 2, "platform": "linux"}, "job_p2": row,
                     "job_p1": {**row, **output_backlog(30_000.0, 31_000)}})
    lines = [x for x in text.splitlines() if "made but not on the topic" in x]
    assert lines == ["- job_p2: 22516 lists made but not on the topic at the window's end (38791 made, "
                     "16275 on the topic)"]

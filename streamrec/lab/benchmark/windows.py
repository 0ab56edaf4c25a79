"""A benchmark's measuring window: the output topic's growth, CPU and memory over a fixed time
after a warm-up; and the model's own ceiling."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamrec.lab.benchmark.procstats import RssSampler, busiest_threads, cpu_seconds, thread_cpu_seconds
from streamrec.progress import Progress
from udfs.artifact import load_artifact
from udfs.config import Config
from udfs.features import build_batch
from udfs.ranker import OnnxRanker, RankerStats
from udfs.recommend import Recommender
from udfs.runtime import state_limits
from udfs.state import UserState


@dataclass
class WindowResult:
    """Output growth over the window, with CPU and memory of the processes doing the work."""

    events_per_s: float
    window_s: float
    outputs_at_end: int
    startup_s: float
    cpu_s: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    busiest_threads: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per process, its busiest threads' share of one core over the window (:func:`busiest_threads`)."""


def measure_window(
    count: Callable[[], int],
    procs: Callable[[], dict[str, int]],
    *,
    total: int,
    warmup_s: float,
    window_s: float,
    startup_timeout_s: float = 300.0,
    alive: Callable[[], bool] = lambda: True,
    probe: Callable[[], dict[str, float]] | None = None,
    progress: str = "window",
) -> WindowResult:
    """Wait for the first output, warm up, then count outputs over ``window_s`` (a bar labelled
    ``progress`` shows the outputs, polled every 2 s, on a terminal)."""
    t_start = time.monotonic()
    while count() == 0:
        if not alive():
            raise RuntimeError("the process under test stopped before producing output")
        if time.monotonic() - t_start > startup_timeout_s:
            raise RuntimeError(f"no output within {startup_timeout_s:.0f}s")
        time.sleep(1.0)
    startup = time.monotonic() - t_start
    if probe:
        probe()  # Flink's REST metric fetcher fills its cache on first request
    names = procs()
    with RssSampler(lambda: list(procs().values())) as sampler, \
            Progress(progress, total=total, unit="out", every=1) as bar:
        time.sleep(warmup_s)
        c0, t0 = count(), time.monotonic()
        bar.set(c0)
        cpu0 = {n: cpu_seconds(p) for n, p in names.items()}
        threads0 = {n: thread_cpu_seconds(p) for n, p in names.items()}
        while time.monotonic() - t0 < window_s:
            time.sleep(2.0)
            done = count()
            bar.set(done)
            if done >= total or not alive():
                break
        c1, t1 = count(), time.monotonic()
        cpu1 = {n: cpu_seconds(p) for n, p in names.items()}
        threads1 = {n: thread_cpu_seconds(p) for n, p in names.items()}
        p1 = probe() if probe else {}
    span = t1 - t0
    pid_name = {p: n for n, p in names.items()}
    result = WindowResult(
        events_per_s=(c1 - c0) / span if span > 0 else 0.0,
        window_s=span,
        outputs_at_end=c1,
        startup_s=startup,
        cpu_s={n: round(cpu1[n] - cpu0[n], 2) for n in names},
        peak_rss_mb={pid_name.get(p, str(p)): round(v, 1) for p, v in sampler.peak.items()},
        busiest_threads={n: busiest_threads(threads0[n], threads1[n], span) for n in names},
    )
    # Cumulative since the job started: Flink's REST metric cache may still be empty at t0.
    result.extra = dict(p1)
    return result


def model_ceiling(artifact_dir: Path, events: Sequence[Any], cfg: Config, seconds: float) -> dict[str, Any]:
    """onnxruntime alone on the job's own batches (one user's candidates per call, as in the job)."""
    art = load_artifact(artifact_dir)
    rec = Recommender(art, None, state_limits(cfg, art.manifest), top_k=cfg.ranking.top_k,
                      n_candidates=cfg.ranking.n_candidates)
    states: dict[Any, UserState] = {}
    batches = []
    for e in events:
        st = states.setdefault(e.user_id, UserState())
        if rec.apply(st, e):
            batches.append(build_batch([rec.request(st, e)], art.vocab, art.tables, art.seq_len))
    r = cfg.ranking
    ranker = OnnxRanker(art.model_bytes, provider=r.provider, io_binding=r.io_binding,
                        intra_op_threads=r.intra_op_threads)
    for b in batches[:50]:
        ranker.score(b)
    ranker.stats = RankerStats()  # drop warm-up calls
    deadline = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < deadline:
        ranker.score(batches[i % len(batches)])
        i += 1
    s = ranker.stats.summary()
    return {"pairs_per_s": s["rows_per_s"], "calls": s["calls"], "mean_batch_rows": s["mean_batch"],
            "p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"], "provider": ranker.choice.label}

"""What `streamrec bench` derives from its raw windows: the output backlog, rows per model call,
the CPU budget per event, the batching and floor comparisons."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from udfs.config import Config
from udfs.job_metrics import BATCH_WAIT_MS, ROWS_PER_CALL, bucket_quantile

SYSTEMS = ("job_p1", "job_p2", "peer")


JOB_METRICS = ("ranker_rows", "ranker_micros", "recommendations_emitted", "ranker_calls", *ROWS_PER_CALL.names,
               *BATCH_WAIT_MS.names)


def output_backlog(lists_made: float, on_topic: int) -> dict[str, Any]:
    """Lists the job had made (its counter, cumulative) against records on the output topic, at the
    window's end. The counter reaches the REST API late (Flink's metric fetcher caches it), so a
    positive difference is a floor of the lists made but not yet written: the output path, not
    the keyed function, held the throughput the topic shows (seen at parallelism 2 on 2 cores)."""
    made = int(lists_made)
    return {"lists_made_at_end": made, "lists_not_on_topic_at_end": max(0, made - on_topic) if made else None}


def rows_per_call(metrics: Mapping[str, float]) -> dict[str, Any]:
    """Rows per model call from the ranking stage's bucket counters (quantiles are bucket upper
    bounds); the one-stage job, which has no such counters, makes one call per list."""
    calls = metrics.get(ROWS_PER_CALL.count_name) or 0.0
    if calls:
        return {"calls": calls, "mean": metrics.get(ROWS_PER_CALL.sum_name, 0.0) / calls,
                "p50_at_most": bucket_quantile(metrics, ROWS_PER_CALL, 0.5),
                "p99_at_most": bucket_quantile(metrics, ROWS_PER_CALL, 0.99),
                "buckets": {n.removeprefix(f"{ROWS_PER_CALL.prefix}_"): metrics.get(n, 0.0)
                            for n in ROWS_PER_CALL.bucket_names if metrics.get(n)}}
    lists, rows = metrics.get("recommendations_emitted") or 0.0, metrics.get("ranker_rows") or 0.0
    mean = rows / lists if lists else None
    return {"calls": lists, "mean": mean, "p50_at_most": mean, "p99_at_most": mean, "buckets": {}}


def model_bound_events_per_s(model_pairs_per_s: float | None, cores: int, rows_per_event: float | None) -> float | None:
    """Events/s the model alone allows with every core scoring: cores x pairs/s / rows per event."""
    if not model_pairs_per_s or not rows_per_event:
        return None
    return cores * model_pairs_per_s / rows_per_event


def batching_summary(runs: Mapping[bool, Sequence[dict[str, Any]]], paced: Mapping[bool, dict[str, Any]],
                     rate: float, cfg: Config, model_pairs_per_s: float | None, parallelism: int) -> dict[str, Any]:
    """The side-by-side figures: medians over the runs of each side."""
    def median(side: bool, key: str) -> float:
        return float(np.median([r[key] for r in runs[side]]))

    on = runs[True][len(runs[True]) // 2]["rows_per_call"]
    rows_per_event = float(np.median([r["pairs_per_s"] / r["events_per_s"] for r in runs[False]
                                      if r.get("pairs_per_s") and r["events_per_s"]] or [cfg.ranking.n_candidates]))
    bound = model_bound_events_per_s(model_pairs_per_s, os.cpu_count() or 1, rows_per_event)
    off_rate, on_rate = median(False, "events_per_s"), median(True, "events_per_s")
    return {
        "parallelism": parallelism,
        "settings": {"batch_rows": cfg.ranking.batch_rows, "batch_timeout_ms": cfg.ranking.batch_timeout_ms,
                     "batch_shards": cfg.ranking.batch_shards or parallelism,
                     "buffer_timeout_ms": cfg.job.buffer_timeout_ms},
        f"p{parallelism}_events_per_s_off": off_rate,
        f"p{parallelism}_events_per_s_on": on_rate,
        "ratio_on_over_off": on_rate / off_rate if off_rate else None,
        "rows_per_call_p50": on["p50_at_most"],
        "rows_per_call_p99": on["p99_at_most"],
        "rows_per_call_mean": on["mean"],
        "rows_per_call_buckets": on["buckets"],
        "rows_per_call_off": runs[False][0]["rows_per_call"]["mean"],
        "paced_events_per_s": rate,
        "p99_ms_paced_off": paced[False].get("p99_ms"),
        "p99_ms_paced_on": paced[True].get("p99_ms"),
        "p50_ms_paced_off": paced[False].get("p50_ms"),
        "p50_ms_paced_on": paced[True].get("p50_ms"),
        # Model time only, summed over subtasks (GPU: the device's rate inside the job).
        "in_job_pairs_per_s_off": median(False, "in_job_pairs_per_s") if all(
            r.get("in_job_pairs_per_s") for r in runs[False]) else None,
        "in_job_pairs_per_s_on": median(True, "in_job_pairs_per_s") if all(
            r.get("in_job_pairs_per_s") for r in runs[True]) else None,
        "pairs_per_s_on": median(True, "pairs_per_s") if all(r.get("pairs_per_s") for r in runs[True]) else None,
        "model_bound_events_per_s": bound,
        "share_of_model_bound_off": off_rate / bound if bound else None,
        "share_of_model_bound_on": on_rate / bound if bound else None,
        "runs": {"off": list(runs[False]), "on": list(runs[True])},
        "paced": {"off": paced[False], "on": paced[True]},
    }


def floor_summary(runs: Mapping[str | None, Sequence[dict[str, Any]]], model_pairs_per_s: float | None,
                  cores: int, n_candidates: int, parallelism: int) -> dict[str, Any]:
    """The job against itself with its lists replayed (medians over the runs of each): ``job`` as it
    runs, ``model_only`` with candidates, features and the list's assembly replayed but the model
    still called, ``platform`` without the model too. ``model_only``'s share of the model bound is
    the most that faster candidate, feature and list code could bring the job to here.
    ``model_pairs_per_s``: the model alone (the median of the run's measurements)."""
    def median_of(side: str | None, value: Callable[[dict[str, Any]], float]) -> float | None:
        """The median of ``value`` over the side's runs that produced output."""
        values = [value(r) for r in runs.get(side, ()) if r.get("events_per_s")]
        return float(np.median(values)) if values else None

    def median(side: str | None) -> float | None:
        return median_of(side, lambda r: r["events_per_s"])

    def cpu_ms(side: str | None) -> float | None:
        return median_of(side, lambda r: cpu_budget(r, cores)["cpu_ms_per_event"])

    def operator_ms(side: str | None) -> float | None:
        return median_of(side, lambda r: 1000 * operator_cores(r) / r["events_per_s"])

    job_rows = [r["pairs_per_s"] / r["events_per_s"] for r in runs.get(None, ())
                if r.get("pairs_per_s") and r.get("events_per_s")]
    bound = model_bound_events_per_s(model_pairs_per_s, cores, float(np.median(job_rows)) if job_rows
                                     else float(n_candidates))
    job, model_only, platform = median(None), median("model"), median("none")
    return {
        "parallelism": parallelism,
        f"p{parallelism}_events_per_s_job": job,
        f"p{parallelism}_events_per_s_model_only": model_only,
        f"p{parallelism}_events_per_s_platform": platform,
        "cpu_ms_per_event_job": cpu_ms(None),
        "cpu_ms_per_event_model_only": cpu_ms("model"),
        "cpu_ms_per_event_platform": cpu_ms("none"),
        "operator_ms_per_event_job": operator_ms(None),
        "operator_ms_per_event_model_only": operator_ms("model"),
        "operator_ms_per_event_platform": operator_ms("none"),
        "model_alone_pairs_per_s": model_pairs_per_s,
        "model_bound_events_per_s": bound,
        "share_of_model_bound_job": job / bound if job and bound else None,
        "share_of_model_bound_model_only": model_only / bound if model_only and bound else None,
        "runs": {side or "job": list(rs) for side, rs in runs.items()},
    }


# The keyed operator's thread, as the kernel names it ("recommend -> (M..." when chained).
OPERATOR_THREAD = "recommend"


def operator_cores(row: dict[str, Any]) -> float:
    """Cores the keyed operator's threads used over a window, summed over the TaskManagers."""
    return sum(share for threads in (row.get("busiest_threads") or {}).values()
               for name, share in threads.items() if name.startswith(OPERATOR_THREAD))


JIT_THREADS = ("C1 CompilerThre", "C2 CompilerThre")
"""The JVM's compiler threads, as the kernel names them (:func:`procstats.thread_cpu_seconds`)."""


def jit_share(run: dict[str, Any]) -> float | None:
    """Cores the TaskManagers' JIT compilers took over a window (a latency run's timed part), per
    TaskManager: well above a few hundredths, the run measured a JVM still warming up, not the job."""
    managers = [threads for name, threads in (run.get("busiest_threads") or {}).items()
                if name.startswith("taskmanager")]
    if not managers:
        return None
    return sum(t.get(n, 0.0) for t in managers for n in JIT_THREADS) / len(managers)


def without_broker(per_process: dict[str, float]) -> float:
    """Sum of a per-process figure (CPU s, RSS MB) over the system's own processes."""
    return sum(v for k, v in per_process.items() if k != "kafka")


def cpu_budget(row: dict[str, Any], cores: int) -> dict[str, float]:
    """CPU per event of a throughput phase, and the rate that cost allows with ``cores`` busy.

    The bound separates a target that needs more cores than the machine has from one
    the design misses: a phase whose measured rate is near its bound is CPU-bound, and
    no scheduling change lifts it past the bound.
    """
    events = row["events_per_s"] * row["window_s"]
    work = without_broker(row["cpu_s"])
    broker = float(row["cpu_s"].get("kafka", 0.0))
    return {
        "cpu_ms_per_event": 1000 * work / events,
        "broker_cpu_ms_per_event": 1000 * broker / events,
        "cores": cores,
        "cpu_bound_events_per_s": cores * events / (work + broker),
    }


def batching_paced_rate(latency_rates: Sequence[float], off_runs: Sequence[dict[str, Any]]) -> float:
    """The batching phase's paced rate: half the unbatched median, or the first of ``latency_rates``,
    which makes the paced tails of separate runs (with other settings) comparable."""
    if latency_rates:
        return float(latency_rates[0])
    return 0.5 * float(np.median([r["events_per_s"] for r in off_runs]))

"""The store-scale bench's reading of Flink's checkpoint and failure history, its targets, and its
report (results.md)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from streamrec.lab.benchmark.procstats import run_line
from streamrec.lab.benchmark.scale_workload import nearest_rank
from streamrec.lab.markdown import table

RECOVERY_TARGET_S = 60.0
RSS_FLAT_GROWTH = 0.10
"""RSS counts as flat when a segment's last tenth is at most 10% above its first tenth (after warm-up)."""


def merge_history(seen: dict[int, dict[str, Any]], payload: dict[str, Any]) -> None:
    """Fold one ``/jobs/<id>/checkpoints`` payload's history into ``seen`` (by checkpoint id).

    Flink keeps only the last ``web.checkpoints.history`` entries (10 by default), so a
    long run is polled and merged; a later sighting of an id replaces an earlier one
    (IN_PROGRESS becomes COMPLETED or FAILED).
    """
    for entry in payload.get("history") or []:
        seen[int(entry["id"])] = entry


def split_failed(counts: Sequence[tuple[int, int]], started_ms: float | None,
                 window: tuple[float, float] | None) -> dict[str, int]:
    """Failed checkpoints from polled (epoch ms, ``counts.failed``) pairs, by when they failed:
    at start-up (before ``started_ms``, the first list), during the injected failure
    (``window``, epoch ms), or otherwise.

    Flink counts a checkpoint it could not even trigger (tasks still deploying, at start-up or
    after a restart) as failed without a history entry, so the count is followed over time;
    an increase between two polls goes to the period that interval touches first.
    """
    out = {"startup": 0, "injected": 0, "other": 0}
    prev_ms: int | None = None
    prev = 0
    for ms, failed in counts:
        if failed > prev:
            lo = prev_ms if prev_ms is not None else ms
            if started_ms is not None and lo < started_ms:
                out["startup"] += failed - prev
            elif window is not None and ms >= window[0] and lo <= window[1]:
                out["injected"] += failed - prev
            else:
                out["other"] += failed - prev
        prev_ms, prev = ms, max(prev, failed)
    return out


def checkpoint_summary(history: Iterable[dict[str, Any]], interval_ms: int,
                       excused: tuple[float, float] | None = None,
                       failed_counts: Sequence[tuple[int, int]] | None = None,
                       started_ms: float | None = None) -> dict[str, Any]:
    """Per-checkpoint rows and their totals from Flink's checkpoint history entries.

    ``state_size`` is the checkpoint's full state; ``checkpointed_size`` what this
    checkpoint uploaded (smaller than the full state only for incremental RocksDB).
    ``excused``: (from, to) epoch ms of the injected failure; a checkpoint that fails
    inside it is counted apart from the others. ``failed_counts``: polled (epoch ms,
    ``counts.failed``), which also sees failures the history never lists (see
    :func:`split_failed`; ``started_ms``: the first list); without it the history alone is used.
    """
    rows = []
    for e in sorted(history, key=lambda x: int(x["id"])):
        if e.get("is_savepoint"):
            continue
        rows.append({"id": int(e["id"]), "status": e.get("status"), "trigger_ms": e.get("trigger_timestamp"),
                     "duration_ms": e.get("end_to_end_duration"), "state_size": e.get("state_size"),
                     "checkpointed_size": e.get("checkpointed_size"),
                     "failure_ms": e.get("failure_timestamp"), "failure": e.get("failure_message")})
    done = [r for r in rows if r["status"] == "COMPLETED"]
    failed = [r for r in rows if r["status"] == "FAILED"]

    def injected(r: dict[str, Any]) -> bool:
        if excused is None:
            return False
        at = r["failure_ms"] or r["trigger_ms"] or 0
        return excused[0] <= at <= excused[1]

    durations = sorted(int(r["duration_ms"]) for r in done if r["duration_ms"] is not None)
    uploads = sorted(int(r["checkpointed_size"]) for r in done if r["checkpointed_size"] is not None)
    full = [int(r["state_size"]) for r in done if r["state_size"] is not None]
    return {
        "rows": rows,
        "completed": len(done),
        "failed": max(len(failed), failed_counts[-1][1]) if failed_counts else len(failed),
        "failed_in_history": len(failed),
        "failed_by_period": (split_failed(failed_counts, started_ms, excused) if failed_counts else
                             {"startup": 0, "injected": sum(injected(r) for r in failed),
                              "other": sum(not injected(r) for r in failed)}),
        "duration_ms_p50": nearest_rank(durations, 50) if durations else None,
        "duration_ms_max": durations[-1] if durations else None,
        "over_interval": sum(d > interval_ms for d in durations),
        "state_size_last": full[-1] if full else None,
        "state_size_max": max(full) if full else None,
        "checkpointed_size_p50": nearest_rank(uploads, 50) if uploads else None,
        "checkpointed_size_max": uploads[-1] if uploads else None,
        "incremental": any(int(r["checkpointed_size"] or 0) < int(r["state_size"] or 0) for r in done),
    }


def failures_summary(entries: Iterable[dict[str, Any]], window: tuple[float, float] | None) -> dict[str, Any]:
    """The job's failures from Flink's exception history (one entry per failover), split into
    those inside ``window`` (epoch ms: the injected kill until the first new list) and the rest.

    A killed TaskManager can cost several restarts: until the JobManager notices the loss, it
    redeploys to the dead process, fails, and restarts again after its backoff.
    """
    rows: list[dict[str, Any]] = [{"ms": int(e.get("timestamp") or 0), "name": e.get("exceptionName"),
                                   "where": e.get("taskManagerId") or e.get("location")} for e in entries]
    inside = [r for r in rows if window is not None and window[0] <= int(r["ms"]) <= window[1]]
    return {"rows": rows, "during_injected": len(inside), "outside_injected": len(rows) - len(inside)}


def rss_growth(samples: Sequence[tuple[float, float]], skip: float = 0.25) -> float | None:
    """Relative RSS growth over a segment of (t, MB) samples: the median of its last tenth over
    the median of its first tenth, after skipping the first ``skip`` of it (JIT, buffers)."""
    if not samples:
        return None
    t0, t1 = samples[0][0], samples[-1][0]
    kept = [mb for t, mb in samples if t >= t0 + skip * (t1 - t0)]
    if len(kept) < 10:
        return None
    tenth = max(1, len(kept) // 10)
    head, tail = float(np.median(kept[:tenth])), float(np.median(kept[-tenth:]))
    return tail / head - 1.0 if head > 0 else None


def targets(run: dict[str, Any], interval_ms: int) -> list[dict[str, Any]]:
    """The issue's targets for one backend's run: (target, measured, met)."""
    ck = run.get("checkpoints") or {}
    fails = run.get("failures") or {}
    by = ck.get("failed_by_period") or {}
    out = [
        {"target": "0 failed checkpoints (but for the injected kill)",
         "measured": f"{by.get('other')}; in all {ck.get('failed')}: {by.get('startup')} triggered while the tasks "
                     f"first deployed, {by.get('injected')} from the kill until recovery",
         "met": by.get("other") == 0},
        {"target": "no restart but for the injected kill",
         "measured": f"{run.get('restarts')} restarts; failures: {fails.get('during_injected')} from the kill until "
                     f"recovery, {fails.get('outside_injected')} otherwise",
         "met": run.get("restarts") is not None and bool(fails) and fails["outside_injected"] == 0},
        {"target": f"each checkpoint within its interval ({interval_ms / 1000:g} s)",
         "measured": f"max {_s(ck.get('duration_ms_max'))}, {ck.get('over_interval')} over",
         "met": bool(ck.get("completed")) and ck.get("over_interval") == 0},
        {"target": f"recovery within {RECOVERY_TARGET_S:g} s", "measured": _s(_ms(run.get("recovery_s"))),
         "met": run.get("recovery_s") is not None and run["recovery_s"] <= RECOVERY_TARGET_S},
    ]
    if run.get("backend") == "rocksdb":
        growth = [g for g in (run.get("rss_growth") or {}).values() if g is not None]
        out.append({"target": f"TaskManager RSS flat (at most {RSS_FLAT_GROWTH:.0%} growth per segment)",
                    "measured": ", ".join(f"{k} {_pct(v)}" for k, v in (run.get("rss_growth") or {}).items()),
                    "met": bool(growth) and max(growth) <= RSS_FLAT_GROWTH})
    return out


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def _s(ms: float | None) -> str:
    return "-" if ms is None else f"{ms / 1000:.1f} s"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:+.0%}"


def _mb(b: float | None) -> str:
    return "-" if b is None else f"{b / 1e6:,.1f} MB"


def _b(b: float | None) -> str:
    return "-" if b is None else f"{b:,.0f} B"


def markdown(results: dict[str, Any]) -> str:
    """``scale.md``: the workload, one column per backend, and the targets met or not."""
    r = results
    w = r.get("workload", {})
    runs = [r["runs"][b] for b in r.get("backends", []) if b in r.get("runs", {})]
    lines = ["# streamrec bench: store scale", "", run_line(r), "",
             f"Machine: {r.get('machine', {}).get('cpus')} CPUs; model {r.get('model_version')}; "
             f"{w.get('shoppers', 0):,} distinct shoppers, {w.get('events', 0):,} events, "
             f"{w.get('items', 0):,} items in the catalog, {w.get('distinct_items', 0):,} of them in the stream; "
             f"checkpoints every {r.get('checkpoint_interval_ms', 0) / 1000:g} s; "
             f"parallelism {r.get('parallelism')}.", ""]
    sb = w.get("state_bytes") or {}
    if sb:
        lines += [f"Per-shopper state (UserState bytes, exact replay): p50 {_b(sb.get('p50'))}, "
                  f"p99 {_b(sb.get('p99'))}, max {_b(sb.get('max'))}, total {_mb(sb.get('total'))}.", ""]
    ib = w.get("item_row_bytes") or {}
    if ib:
        lines += [f"Per-item state (online item rows, ItemRow bytes, exact replay): {ib.get('count', 0):,} rows, "
                  f"p50 {_b(ib.get('p50'))}, p99 {_b(ib.get('p99'))}, max {_b(ib.get('max'))}, "
                  f"total {_mb(ib.get('total'))}.", ""]
    if not runs:
        return "\n".join(lines) + "\n"
    rows: list[list[str]] = []

    def row(label: str, fn: Callable[[dict[str, Any]], str]) -> None:
        cells = []
        for x in runs:
            try:
                cells.append(fn(x))
            except (KeyError, TypeError, IndexError, ValueError, ZeroDivisionError):
                cells.append("-")
        rows.append([label, *cells])

    def ck(x: dict[str, Any]) -> dict[str, Any]:
        return x.get("checkpoints") or {}

    row("error", lambda x: x.get("error") or "-")
    row("events/s over the run (first list to last, recovery included)", lambda x: f"{x['events_per_s']:,.0f}")
    row("events/s before the kill", lambda x: f"{x['events_per_s_before_kill']:,.0f}")
    row("lists: distinct / expected (duplicates)",
        lambda x: f"{x['distinct_lists']:,} / {x['expected_lists']:,} ({x['duplicates']:,})")
    row("checkpointed state, last full checkpoint", lambda x: _mb(ck(x)["state_size_last"]))
    row("bytes per shopper (checkpointed)", lambda x: _b(ck(x)["state_size_last"] / x["shoppers"]))
    row("checkpoints completed / failed", lambda x: f"{ck(x)['completed']} / {ck(x)['failed']}")
    row("checkpoint duration p50 / max",
        lambda x: f"{_s(ck(x)['duration_ms_p50'])} / {_s(ck(x)['duration_ms_max'])}")
    row("uploaded per checkpoint p50 / max (incremental when below full)",
        lambda x: f"{_mb(ck(x)['checkpointed_size_p50'])} / {_mb(ck(x)['checkpointed_size_max'])}"
                  f"{' (incremental)' if ck(x)['incremental'] else ' (full)'}")
    row("restarts (failures from the kill until recovery / otherwise)",
        lambda x: f"{x['restarts']} ({x['failures']['during_injected']} / {x['failures']['outside_injected']})")
    row("recovery: kill to first new list", lambda x: _s(_ms(x["recovery_s"])))
    row("kill to every subtask running again", lambda x: _s(_ms(x["all_running_after_kill_s"])))
    row("TaskManager RSS, sum: first / peak / last sample",
        lambda x: "{:,.0f} / {:,.0f} / {:,.0f} MB".format(*_rss_points(x)))
    row("RSS growth per segment (before kill, after recovery)",
        lambda x: ", ".join(_pct(v) for v in x["rss_growth"].values()))
    lines += table(["", *(x["backend"] for x in runs)], rows)
    targets = [[x["backend"], t["target"], t["measured"], "met" if t["met"] else "not met"]
               for x in runs for t in x.get("targets", [])]
    lines += ["", *table(["backend", "target", "measured", ""], targets, align="llll")]
    return "\n".join(lines) + "\n"


def _rss_points(run: dict[str, Any]) -> tuple[float, float, float]:
    totals = [s[1] for s in run["rss_samples"]]
    return totals[0], max(totals), totals[-1]


def write_reports(out: Path, results: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "scale.md").write_text(markdown(results))

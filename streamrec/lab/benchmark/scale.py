"""`streamrec bench --phases scale`: a store's state under each state backend.

One seeded workload with an exact number of distinct shoppers (default 1,000,000
shoppers, 100,000 items, 5,000,000 events) goes through the real broker once.
For each state backend (hashmap, rocksdb), on a fresh standalone cluster with its
checkpoints under the out dir, the job reads the whole stream as a backlog while
this process records the output topic's growth, TaskManager RSS, and every
checkpoint of Flink's REST history. At about 60% of the stream one TaskManager
is SIGKILLed and a new one started; recovery is the time from the kill to the
first new list on the output topic. Per-shopper state bytes (p50/p99/max) come
from replaying the workload through :mod:`udfs.state` here, exactly as the job
stores it. Results go to ``DIR/scale.json`` (every raw figure) and ``DIR/scale.md``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from jobs.layout import JOB_SCRIPT
from streamrec.kafka_io import produce
from streamrec.lab.benchmark.bench import TERMINAL, ensure_artifact
from streamrec.lab.benchmark.procstats import machine_info, rss_mb
from streamrec.lab.benchmark.topic_counts import TopicCounter
from streamrec.lab.generator import USER_ID_BASE, generate_events
from streamrec.lab.local.flink_cluster import StandaloneCluster
from streamrec.lab.local.kafka import LocalKafka
from streamrec.lab.local.procs import job_env
from udfs.artifact import read_manifest
from udfs.config import TOPIC_FIELDS, Config
from udfs.errors import InputError
from udfs.events import Event, encode_event
from udfs.kafka_clients import KafkaClients
from udfs.runtime import state_limits
from udfs.state import StateLimits, UserState, update_state

log = logging.getLogger(__name__)

BACKENDS = ("hashmap", "rocksdb")
RECOVERY_TARGET_S = 60.0
RSS_FLAT_GROWTH = 0.10
"""RSS counts as flat when a segment's last tenth is at most 10% above its first tenth (after warm-up)."""


@dataclass(frozen=True)
class ScaleSettings:
    """The store-scale workload; the defaults are the issue's (item 2 of "Store scale")."""

    out_dir: Path
    shoppers: int = 1_000_000
    events: int = 5_000_000
    items: int = 100_000
    categories: int = 500
    seed: int = 13
    artifact: Path | None = None
    train_events: int = 60_000
    backends: tuple[str, ...] = BACKENDS
    parallelism: int = 2
    """One-slot TaskManagers, one per subtask: the kill takes one subtask's process."""
    partitions: int = 2
    checkpoint_interval_ms: int = 10_000
    kill_at: float = 0.6
    """Fraction of the expected lists on the output topic at which one TaskManager is killed."""
    sample_s: float = 2.0
    """RSS and output-count sampling period."""
    tm_memory: str = "3072m"
    max_run_s: float = 6 * 3600.0
    """Give up on a backend after this long (the 1M workload takes over an hour per backend on 2 cores)."""


# ---------------------------------------------------------------- workload (pure)


def shape_shoppers(events: Sequence[Event], shoppers: int) -> list[Event]:
    """The same events, re-keyed so that exactly ``shoppers`` distinct shoppers appear.

    The generator gives far fewer distinct users than events (users draw sessions), so
    each generated user's events, in stream order, are cut into contiguous runs that
    become shoppers of their own: every generated user keeps at least one shopper, and
    the remaining shoppers are shared out in proportion to each user's spare events
    (largest remainders), so a busier user becomes more shoppers, each with a history
    of the user's items, categories and timing. Shopper ids are ``USER_ID_BASE`` ..
    ``USER_ID_BASE + shoppers - 1``, numbered in order of first appearance.
    """
    n = len(events)
    users = np.fromiter((e.user_id for e in events), dtype=np.int64, count=n)
    uniq, first, inverse, counts = np.unique(users, return_index=True, return_inverse=True, return_counts=True)
    n_base = len(uniq)
    if not n_base <= shoppers <= n:
        raise InputError(f"shoppers must be between the log's distinct users ({n_base:,}) and its events ({n:,}); "
                         f"got {shoppers:,}")
    spare = counts - 1
    extra_total = shoppers - n_base
    total_spare = int(spare.sum())
    if extra_total and total_spare:
        exact = spare * (extra_total / total_spare)
        extra = np.floor(exact).astype(np.int64)
        left = extra_total - int(extra.sum())
        if left:
            frac = exact - extra
            # Largest remainders first; ties by first appearance (deterministic).
            order = np.lexsort((first, -frac))
            extra[order[:left]] += 1
    else:
        extra = np.zeros(n_base, dtype=np.int64)
    chunks = 1 + np.minimum(extra, spare)
    # Ids in order of first appearance of the generated user.
    by_appearance = np.argsort(first, kind="stable")
    offset = np.empty(n_base, dtype=np.int64)
    offset[by_appearance] = np.concatenate(([0], np.cumsum(chunks[by_appearance])[:-1]))
    # Position of each event among its user's events, in stream order.
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - np.repeat(starts, counts)
    shopper = USER_ID_BASE + offset[inverse] + rank * chunks[inverse] // counts[inverse]
    return [e._replace(user_id=int(s)) for e, s in zip(events, shopper.tolist(), strict=True)]


def replay_state_bytes(events: Iterable[Event], limits: StateLimits, since_ms: int = 0) -> tuple[list[int], int]:
    """Each shopper's stored state size after the stream, and the lists the job emits.

    The job's own steps (``RecommendFunction.process_element``): read the shopper's bytes,
    apply the event (a duplicate changes nothing and emits nothing), count an emitted
    list for events at or after ``since_ms``, write ``UserState.to_bytes()`` back.
    """
    stored: dict[Any, bytes] = {}
    lists = 0
    for e in events:
        state = UserState.from_bytes(stored.get(e.user_id))
        if not update_state(state, e, limits):
            continue
        if e.ts >= since_ms:
            state.emitted += 1
            lists += 1
        stored[e.user_id] = state.to_bytes()
    return [len(b) for b in stored.values()], lists


def nearest_rank(sorted_values: Sequence[int | float], pct: float) -> float:
    """The ``pct`` percentile by nearest rank: an observed value, no interpolation."""
    if not sorted_values:
        raise ValueError("no values")
    k = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return float(sorted_values[k - 1])


def bytes_summary(sizes: Sequence[int]) -> dict[str, float]:
    s = sorted(sizes)
    return {"shoppers": len(s), "total": float(sum(s)), "mean": sum(s) / len(s), "p50": nearest_rank(s, 50),
            "p99": nearest_rank(s, 99), "max": float(s[-1])}


# ---------------------------------------------------------------- Flink REST (pure parts)


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
    lines = ["# streamrec bench: store scale", "",
             f"Machine: {r.get('machine', {}).get('cpus')} CPUs; model {r.get('model_version')}; "
             f"{w.get('shoppers', 0):,} distinct shoppers, {w.get('events', 0):,} events, "
             f"{w.get('items', 0):,} items; checkpoints every {r.get('checkpoint_interval_ms', 0) / 1000:g} s; "
             f"parallelism {r.get('parallelism')}.", ""]
    sb = w.get("state_bytes") or {}
    if sb:
        lines += [f"Per-shopper state (UserState bytes, exact replay): p50 {_b(sb.get('p50'))}, "
                  f"p99 {_b(sb.get('p99'))}, max {_b(sb.get('max'))}, total {_mb(sb.get('total'))}.", ""]
    if not runs:
        return "\n".join(lines) + "\n"
    head = "| | " + " | ".join(x["backend"] for x in runs) + " |"
    lines += [head, "|---|" + "---:|" * len(runs)]

    def row(label: str, fn: Callable[[dict[str, Any]], str]) -> None:
        cells = []
        for x in runs:
            try:
                cells.append(fn(x))
            except (KeyError, TypeError, IndexError, ValueError, ZeroDivisionError):
                cells.append("-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

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
    lines += ["", "| backend | target | measured | |", "|---|---|---|---|"]
    for x in runs:
        for t in x.get("targets", []):
            lines.append(f"| {x['backend']} | {t['target']} | {t['measured']} | {'met' if t['met'] else 'not met'} |")
    return "\n".join(lines) + "\n"


def _rss_points(run: dict[str, Any]) -> tuple[float, float, float]:
    totals = [s[1] for s in run["rss_samples"]]
    return totals[0], max(totals), totals[-1]


def write_reports(out: Path, results: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "scale.md").write_text(markdown(results))


# ---------------------------------------------------------------- the run


class _Sampler:
    """TaskManager RSS, summed and per process, every ``period`` seconds."""

    def __init__(self, cluster: StandaloneCluster, t0: float, period: float) -> None:
        self.cluster, self.t0, self.period = cluster, t0, period
        self.rss: list[tuple[float, float, dict[int, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            per = {pid: round(rss_mb(pid), 1) for pid in self.cluster.taskmanager_pids()}
            t = round(time.monotonic() - self.t0, 2)
            self.rss.append((t, round(sum(per.values()), 1), per))

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def committed_offsets(bootstrap: str, group: str, topic: str) -> int | None:
    """Input records the job's Kafka source has committed (it commits on each completed checkpoint)."""
    from kafka import TopicPartition

    # Never subscribes or polls: reads the group's committed offsets, never joins or commits.
    cons = KafkaClients(bootstrap).consumer(group_id=group, enable_auto_commit=False)
    try:
        parts = cons.partitions_for_topic(topic) or set()
        found = [cons.committed(TopicPartition(topic, p)) for p in parts]
        return int(sum(o for o in found if o is not None and o >= 0))
    except Exception as exc:  # noqa: BLE001 - a client hiccup must not end a long run; retried next poll
        log.warning("could not read committed offsets of %s: %s", group, exc)
        return None
    finally:
        cons.close()


def count_lists(bootstrap: str, topic: str, timeout_s: float = 30.0) -> tuple[int, int]:
    """(records, distinct (user, seq)) on the output topic, read to its end."""
    cons = KafkaClients(bootstrap).consumer(
        topic, auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=int(timeout_s * 1000),
        max_partition_fetch_bytes=8 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024, isolation_level="read_committed")
    seen: set[tuple[Any, int]] = set()
    n = 0
    try:
        for rec in cons:
            v = msgpack.unpackb(rec.value, raw=False, strict_map_key=False)
            seen.add((v["user_id"], int(v["seq"])))
            n += 1
    finally:
        cons.close()
    return n, len(seen)


class ScaleBench:
    def __init__(self, settings: ScaleSettings, cfg: Config) -> None:
        self.s = settings
        self.cfg = cfg
        self.out = settings.out_dir
        self.artifact = settings.artifact or self.out / "scale-artifact"  # its own catalog (--scale-items)
        self.results: dict[str, Any] = {}
        self.records: list[tuple[bytes, bytes]] = []
        self.expected_lists = 0

    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        s = self.s
        self.results.update(machine_info(), settings={k: str(v) if isinstance(v, Path) else v
                                                      for k, v in asdict(s).items()},
                            backends=list(s.backends), parallelism=s.parallelism,
                            checkpoint_interval_ms=s.checkpoint_interval_ms, runs={})
        self.results["model_version"] = ensure_artifact(self.artifact, train_events=s.train_events, items=s.items,
                                                        categories=s.categories, seed=s.seed)
        self._prepare()
        try:
            with LocalKafka(self.out / "scale-kafka", heap="1g") as broker:
                self.bootstrap = broker.bootstrap
                self.input = "scale-input"
                broker.create_topics([self.input], partitions=s.partitions)
                secs = produce(self.bootstrap, self.input, self.records).seconds
                self.results["kafka_produce_events_per_s"] = len(self.records) / secs
                self.records = []  # on the broker now; the memory goes to the clusters
                for backend in s.backends:
                    try:
                        run = self._backend(broker, backend)
                    except Exception as exc:  # noqa: BLE001 - report it and go on to the next backend
                        log.exception("%s run failed", backend)
                        run = {"backend": backend, "error": f"{type(exc).__name__}: {exc}"}
                    self.results["runs"][backend] = run
                    write_reports(self.out, self.results)
        finally:
            write_reports(self.out, self.results)
        return self.results

    def _prepare(self) -> None:
        s = self.s
        t = time.perf_counter()
        # Base users: about 10 events each before the cut, never more than the shoppers asked for.
        base_users = max(1, min(s.shoppers, s.events // 10))
        raw = generate_events(s.events, n_users=base_users, n_items=s.items, n_categories=s.categories, seed=s.seed)
        events = shape_shoppers(raw, s.shoppers)
        del raw
        distinct = len({e.user_id for e in events})
        log.info("workload: %d events, %d shoppers in %.1fs", len(events), distinct, time.perf_counter() - t)
        t = time.perf_counter()
        limits = state_limits(self.cfg, read_manifest(self.artifact))
        sizes, self.expected_lists = replay_state_bytes(events, limits, self.cfg.job.since_ms)
        replay_s = time.perf_counter() - t
        self.results["workload"] = {
            "events": len(events), "shoppers": distinct, "shoppers_requested": s.shoppers, "items": s.items,
            "generated_users": base_users, "expected_lists": self.expected_lists,
            "distinct_items": len({e.item_id for e in events}),
            "span_ms": [events[0].ts, events[-1].ts] if events else None,
            "state_bytes": bytes_summary(sizes), "state_replay_s": round(replay_s, 1),
        }
        self.records = [(str(e.user_id).encode(), encode_event(e)) for e in events]

    def _env(self, backend: str, topics: dict[str, str]) -> dict[str, str]:
        s = self.s
        settings: dict[str, dict[str, Any]] = {
            "kafka": {"group_id": topics["output_topic"], "starting_offsets": "earliest",
                      "delivery_guarantee": self.cfg.kafka.delivery_guarantee},
            "ranking": {"provider": self.cfg.ranking.provider},
            "job": {"parallelism": s.parallelism, "state_backend": backend,
                    "checkpoint_dir": str((self.out / "scale-checkpoints" / backend).resolve()),
                    "checkpoint_interval_ms": s.checkpoint_interval_ms, "incremental_checkpoints": True,
                    "name": f"streamrec-scale-{backend}"},
        }
        return job_env(self.bootstrap, topics, self.artifact, settings=settings)

    def _backend(self, broker: Any, backend: str) -> dict[str, Any]:
        s = self.s
        topics = {f: f"scale-{backend}-{f.split('_')[0]}" for f in TOPIC_FIELDS}
        topics["input_topic"] = self.input
        broker.create_topics([v for k, v in topics.items() if k != "input_topic"], partitions=s.partitions)
        cluster = StandaloneCluster(self.out / f"flink-scale-{backend}", slots=1, taskmanagers=s.parallelism,
                                    tm_memory=s.tm_memory).start()
        counter = TopicCounter(self.bootstrap, topics["output_topic"])
        run: dict[str, Any] = {"backend": backend, "shoppers": self.results["workload"]["shoppers"],
                               "expected_lists": self.expected_lists}
        history: dict[int, dict[str, Any]] = {}
        failed_counts: list[tuple[int, int]] = []
        try:
            t0 = time.monotonic()
            job_id = cluster.submit_python(str(JOB_SCRIPT), ["--source", "kafka", "--sink", "kafka"],
                                           env=self._env(backend, topics), python=sys.executable)
            run["job_id"] = job_id
            with _Sampler(cluster, t0, s.sample_s) as sampler:
                self._drive(cluster, counter, job_id, topics, run, history, failed_counts, t0)
            run["checkpoint_config"] = _try(lambda: cluster.rest(f"/jobs/{job_id}/checkpoints/config"))
            payload = cluster.rest(f"/jobs/{job_id}/checkpoints")
            merge_history(history, payload)
            if payload.get("counts"):
                failed_counts.append((int(time.time() * 1000), int(payload["counts"]["failed"])))
            run["checkpoint_counts"] = payload.get("counts")
            run["checkpoint_failed_counts"] = failed_counts
            run["checkpoints_payload_last"] = payload
            run["restarts"] = _restarts(cluster, job_id)
            run["job_state"] = cluster.job_state(job_id)
            exceptions = _try(lambda: cluster.rest(f"/jobs/{job_id}/exceptions?maxExceptions=1000"), {})
            failure_entries = (exceptions.get("exceptionHistory") or {}).get("entries") or []
            _cancel(cluster, job_id)
        finally:
            counter.close()
            cluster.stop()
        kill_ms = run.get("kill_wall_ms")
        # The injected failure lasts until the first new list and every subtask runs again.
        recovered = max(run.get("recovery_s") or RECOVERY_TARGET_S, run.get("all_running_after_kill_s") or 0.0)
        excused = (kill_ms, kill_ms + 1000 * recovered) if kill_ms else None
        run["checkpoints"] = checkpoint_summary(history.values(), s.checkpoint_interval_ms, excused, failed_counts,
                                                run.get("first_output_wall_ms"))
        run["failures"] = failures_summary(failure_entries, excused)
        run["rss_samples"] = [[t, total] for t, total, _ in sampler.rss]
        run["rss_per_process"] = [[t, per] for t, _, per in sampler.rss]
        kill_t = run.get("kill_s")
        rec_t = (kill_t or 0) + (run.get("recovery_s") or 0)
        before = [(t, mb) for t, mb, _ in sampler.rss if run.get("first_output_s", 0) <= t < (kill_t or math.inf)]
        after = [(t, mb) for t, mb, _ in sampler.rss if kill_t is not None and t > rec_t]
        run["rss_growth"] = {"before_kill": rss_growth(before), "after_recovery": rss_growth(after)}
        n, distinct = count_lists(self.bootstrap, topics["output_topic"])
        run.update(output_records=n, distinct_lists=distinct, duplicates=n - distinct,
                   missing=self.expected_lists - distinct)
        run["targets"] = targets(run, s.checkpoint_interval_ms)
        log.info("%s: %s", backend, json.dumps({k: v for k, v in run.items() if "rss" not in k and "payload" not in k},
                                               default=str)[:4000])
        return run

    def _drive(self, cluster: StandaloneCluster, counter: TopicCounter, job_id: str, topics: dict[str, str],
               run: dict[str, Any], history: dict[int, dict[str, Any]], failed_counts: list[tuple[int, int]],
               t0: float) -> None:
        """Follow the job to the end of the stream, killing one TaskManager on the way."""
        s = self.s
        total_in = self.results["workload"]["events"]
        kill_at = int(s.kill_at * self.expected_lists)
        outputs: list[tuple[float, int]] = []
        run["outputs"] = outputs
        last_count, last_growth = 0, t0
        baseline: int | None = None
        down_at: float | None = None
        starter: threading.Thread | None = None
        next_poll = 0.0
        deadline = t0 + s.max_run_s
        while True:
            now = time.monotonic()
            if now > deadline:
                raise RuntimeError(f"not done after {s.max_run_s:.0f}s")
            c = counter()
            if c != last_count:
                last_count, last_growth = c, now
                if "first_output_s" not in run:
                    run.update(first_output_s=round(now - t0, 2), first_output_wall_ms=int(time.time() * 1000))
            if not outputs or now - t0 - outputs[-1][0] >= s.sample_s:
                outputs.append((round(now - t0, 2), c))
            if now >= next_poll:  # the REST history holds the last 10 checkpoints only: poll and merge
                payload = _try(lambda: cluster.rest(f"/jobs/{job_id}/checkpoints"), {})
                merge_history(history, payload)
                if payload.get("counts"):
                    failed_counts.append((int(time.time() * 1000), int(payload["counts"]["failed"])))
                next_poll = now + max(1.0, s.checkpoint_interval_ms / 2000)
                state = _try(lambda: cluster.job_state(job_id))
                if state in TERMINAL:
                    raise RuntimeError(f"job ended: {state}")
            if "kill_s" not in run and c >= kill_at:
                victim = cluster.taskmanager_pids()[0]
                os.kill(victim, signal.SIGKILL)
                run.update(kill_s=round(time.monotonic() - t0, 3), kill_wall_ms=int(time.time() * 1000),
                           outputs_at_kill=c, killed_pid=victim)
                starter = threading.Thread(target=_start_tm, args=(cluster, run, t0), daemon=True)
                starter.start()
                continue
            if "kill_s" in run and "all_running_after_kill_s" not in run:
                # The other TaskManager's subtask goes on emitting until the JobManager sees the loss
                # and cancels it: new lists count from the failover on (some subtask not RUNNING),
                # with 2 s for the cancelled subtask's last writes to land.
                running = _all_running(cluster, job_id)
                if running is False and down_at is None:
                    down_at = now
                    run["failover_seen_s"] = round(now - t0 - run["kill_s"], 2)
                elif running and down_at is not None:
                    run["all_running_after_kill_s"] = round(time.monotonic() - t0 - run["kill_s"], 2)
            if down_at is not None and baseline is None and now >= down_at + 2.0:
                baseline = counter()
                run["outputs_settled_after_failover"] = baseline
            if baseline is not None and "recovery_s" not in run and c > baseline:
                run["recovery_s"] = round(now - t0 - run["kill_s"], 2)
            if "recovery_s" in run and c >= self.expected_lists and now - last_growth > 3.0:
                committed = committed_offsets(self.bootstrap, topics["output_topic"], self.input)
                if committed is not None and committed >= total_in:
                    break
            time.sleep(0.25 if "kill_s" in run and "recovery_s" not in run else 1.0)
        if starter is not None:
            starter.join(timeout=120)
        first = run["first_output_s"]
        done = last_growth - t0
        run.update(last_output_s=round(done, 2), run_s=round(done - first, 2),
                   events_per_s=total_in / (done - first) if done > first else None,
                   events_per_s_before_kill=run["outputs_at_kill"] / (run["kill_s"] - first))


def _start_tm(cluster: StandaloneCluster, run: dict[str, Any], t0: float) -> None:
    try:
        cluster.start_taskmanager()
        run["new_taskmanager_registered_s"] = round(time.monotonic() - t0, 2)
    except Exception as exc:  # noqa: BLE001 - recorded; the run then times out without recovery
        run["new_taskmanager_error"] = str(exc)


def _all_running(cluster: StandaloneCluster, job_id: str) -> bool | None:
    """Every subtask of the job RUNNING; None when the REST call failed."""
    job = _try(lambda: cluster.rest(f"/jobs/{job_id}"), None)
    if not job or not job.get("vertices"):
        return None
    return job.get("state") == "RUNNING" and all(
        int((v.get("tasks") or {}).get("RUNNING", 0)) == int(v.get("parallelism", -1)) for v in job["vertices"])


def _try(fn: Callable[[], Any], default: Any = None) -> Any:
    try:
        return fn()
    except (OSError, ValueError, KeyError) as exc:
        log.warning("REST call failed: %s", exc)
        return default


def _restarts(cluster: StandaloneCluster, job_id: str) -> int | None:
    """numRestarts; the REST metric cache may need a few seconds to fill."""
    for _ in range(15):
        found = _try(lambda: cluster.rest(f"/jobs/{job_id}/metrics?get=numRestarts"), [])
        if found:
            return int(float(found[0]["value"]))
        time.sleep(2)
    return None


def _cancel(cluster: StandaloneCluster, job_id: str) -> None:
    try:
        cluster.flink("cancel", "-m", cluster.jobmanager, job_id, timeout=120)
    except RuntimeError as exc:
        log.warning("cancel failed: %s", exc)

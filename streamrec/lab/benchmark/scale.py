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
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import msgpack

from jobs.layout import JOB_SCRIPT
from streamrec.kafka_io import produce
from streamrec.lab.benchmark.bench import TERMINAL, ensure_artifact
from streamrec.lab.benchmark.procstats import machine_info, rss_mb
from streamrec.lab.benchmark.scale_report import (
    RECOVERY_TARGET_S,
    checkpoint_summary,
    failures_summary,
    merge_history,
    rss_growth,
    targets,
    write_reports,
)
from streamrec.lab.benchmark.scale_workload import (
    bytes_summary,
    item_row_bytes,
    reach_distinct_items,
    replay_state_bytes,
    shape_shoppers,
)
from streamrec.lab.benchmark.topic_counts import TopicCounter
from streamrec.lab.generator import generate_events
from streamrec.lab.local.flink_cluster import StandaloneCluster
from streamrec.lab.local.kafka import LocalKafka
from streamrec.lab.local.procs import job_env
from udfs.artifact import load_artifact, read_manifest
from udfs.config import TOPIC_FIELDS, Config
from udfs.events import encode_event
from udfs.kafka_clients import KafkaClients
from udfs.runtime import item_knowledge, state_limits

log = logging.getLogger(__name__)

BACKENDS = ("hashmap", "rocksdb")


@dataclass(frozen=True)
class ScaleSettings:
    """The store-scale workload; the defaults are the issue's (item 2 of "Store scale"). The
    `streamrec bench --scale-*` flags derive from these fields (streamrec/cli/settings_flags.py)."""

    out_dir: Path
    """Results directory."""
    shoppers: int = 1_000_000
    """Scale: distinct shoppers (exact)."""
    events: int = 5_000_000
    """Scale: events through the broker."""
    items: int = 100_000
    """Scale: items in the catalog."""
    categories: int = 500
    """Scale: categories in the catalog."""
    distinct_items: int = 0
    """Scale: distinct items the stream holds at least; events move to untouched catalog items until it does
    (0: the generated stream's own)."""
    seed: int = 13
    """Scale: stream seed."""
    artifact: Path | None = None
    """Scale: model artifact (default: train one on the scale catalog into OUT/scale-artifact)."""
    train_events: int = 60_000
    """Scale: events the scale model is trained on when there is no --scale-artifact."""
    backends: tuple[str, ...] = BACKENDS
    """Scale: state backends, comma-separated."""
    parallelism: int = 2
    """Scale: job parallelism: one-slot TaskManagers, one per subtask (the kill takes one subtask's process)."""
    partitions: int = 2
    """Scale: partitions of the input topic."""
    checkpoint_interval_ms: int = 10_000
    """Scale: checkpoint interval."""
    kill_at: float = 0.6
    """Scale: fraction of the expected lists on the output topic at which one TaskManager is killed."""
    sample_s: float = 2.0
    """Scale: RSS and output-count sampling period, seconds."""
    tm_memory: str = "3072m"
    """Scale: each TaskManager's process memory."""
    max_run_s: float = 6 * 3600.0
    """Scale: give up on a backend after this long (the 1M workload takes over an hour per backend on 2 cores)."""


# ---------------------------------------------------------------- workload (pure)


# ---------------------------------------------------------------- Flink REST (pure parts)


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
        events = reach_distinct_items(shape_shoppers(raw, s.shoppers), s.items, s.distinct_items, s.seed)
        del raw
        distinct = len({e.user_id for e in events})
        log.info("workload: %d events, %d shoppers in %.1fs", len(events), distinct, time.perf_counter() - t)
        t = time.perf_counter()
        limits = state_limits(self.cfg, read_manifest(self.artifact))
        knowledge = item_knowledge(self.cfg, load_artifact(self.artifact))
        sizes, self.expected_lists = replay_state_bytes(events, limits, self.cfg.job.since_ms, knowledge)
        item_rows = item_row_bytes(knowledge) if knowledge else []
        replay_s = time.perf_counter() - t
        self.results["workload"] = {
            "events": len(events), "shoppers": distinct, "shoppers_requested": s.shoppers, "items": s.items,
            "generated_users": base_users, "expected_lists": self.expected_lists,
            "distinct_items": len({e.item_id for e in events}),
            "span_ms": [events[0].ts, events[-1].ts] if events else None,
            "state_bytes": bytes_summary(sizes), "state_replay_s": round(replay_s, 1),
            "item_row_bytes": bytes_summary(item_rows) if item_rows else None,
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

"""`streamrec bench`: the job, the plain-Python peer, the model and Kafka, side by side.

One run, one seeded stream (pre-loaded into Kafka once), one model artifact:

1. the model alone: onnxruntime scoring the job's own (user, candidate) batches in a loop;
2. Kafka alone: producing the stream and consuming it back (kafka-python);
3. the PyFlink job, Kafka in -> Kafka out, on a standalone cluster of separate
   TaskManager processes, at each parallelism;
4. the peer (:mod:`streamrec.lab.benchmark.peer`), one Python process doing the same work;
5. the job's event-to-recommendation latency at fractions of its measured maximum.

Throughput is the output topic's growth over a fixed window after a warm-up, so
start-up is not counted and a phase costs the same whatever the rate. Results
go to ``DIR/results.json``, ``DIR/results.md`` and ``DIR/results.png``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from jobs.layout import JOB_SCRIPT
from streamrec.kafka_io import consume, produce
from streamrec.lab.benchmark.bench_report import write_reports
from streamrec.lab.benchmark.bench_summary import (
    JOB_METRICS,
    SYSTEMS,
    batching_paced_rate,
    batching_summary,
    cpu_budget,
    floor_summary,
    model_bound_events_per_s,
    output_backlog,
    rows_per_call,
)
from streamrec.lab.benchmark.floor import FLOOR_MODES
from streamrec.lab.benchmark.latency import latencies, median_of_runs, p99_by_interval, summarize_pairs, trigger_key
from streamrec.lab.benchmark.procstats import busiest_threads, cpu_seconds, machine_info, thread_cpu_seconds
from streamrec.lab.benchmark.topic_counts import TopicCounter, consume_all
from streamrec.lab.benchmark.windows import measure_window, model_ceiling
from streamrec.lab.generator import generate_events
from streamrec.lab.local.flink_cluster import StandaloneCluster
from streamrec.lab.local.kafka import LocalKafka
from streamrec.lab.local.procs import LOCAL_BROKER_SECURITY, job_env, stop_group
from udfs.artifact import MANIFEST_FILE, verify_manifest
from udfs.config import TOPIC_FIELDS, Config
from udfs.events import encode_event

log = logging.getLogger(__name__)

# The floor phase's job script (streamrec/lab/benchmark/floor.py).
FLOOR_SCRIPT = Path(__file__).with_name("floor_job.py")
TERMINAL = ("FAILED", "CANCELED", "CANCELLING", "FINISHED", "SUSPENDED")


@dataclass(frozen=True)
class BenchSettings:
    """What one bench run measures; the defaults are the issue's workload. The `streamrec bench` flags
    derive from these fields (streamrec/cli/settings_flags.py): each docstring is its flag's help."""

    out_dir: Path
    """Results directory."""
    events: int = 1_000_000
    """Events in the generated stream."""
    users: int = 100_000
    """Users in the stream."""
    items: int = 50_000
    """Items in the catalog."""
    categories: int = 500
    """Categories in the catalog."""
    seed: int = 11
    """Stream seed."""
    artifact: Path | None = None
    """Model artifact (default: train one on train_events events of the stream's catalog into OUT/artifact)."""
    train_events: int = 60_000
    """Events of the stream's catalog the bench model is trained on when there is no --artifact."""
    partitions: int = 2
    """Partitions of the bench's input topic."""
    parallelisms: tuple[int, ...] = (1, 2)
    """Job parallelisms, comma-separated."""
    warmup_s: float = 20.0
    """Seconds after the first output before timing."""
    window_s: float = 90.0
    """Throughput window per phase, seconds."""
    latency_fractions: tuple[float, ...] = (0.5, 0.9)
    """Latency points as fractions of the measured maximum rate (unless --latency-rates)."""
    latency_rates: tuple[float, ...] = ()
    """Absolute events/s for the latency points instead of fractions of the measured maximum; the batching
    phase paces at the first (default: half the unbatched rate)."""
    latency_s: float = 45.0
    """Seconds of paced replay per latency point."""
    latency_repeats: int = 3
    """Independent runs, each on a fresh cluster, per latency point; the point reports their
    medians. Identical runs on a shared 2-core machine have differed several-fold in p99."""
    latency_warmup_s: float = 120.0
    """Paced replay before a latency point's timed part: a fresh cluster's JVMs keep JIT-compiling
    for two minutes at 250 events/s (each TaskManager's compiler threads still took 0.05-0.07 of a
    core in the 45 s after a 60 s warm-up, 0.02 after 120 s), on the cores the job needs."""
    model_seconds: float = 10.0
    """Seconds per batch size in the model phase."""
    batching_repeats: int = 1
    """Batching and floor: throughput runs per side, alternated; medians are reported."""
    batching_paced: bool = True
    """Batching: also the paced tail of each side (latency_repeats runs each) at half the unbatched rate (on/off)."""
    phases: tuple[str, ...] = ("model", "kafka", "job", "peer", "latency", "batching", "floor")
    """Comma-separated: model, kafka, job, peer, latency, batching (job with ranking.batching off and on,
    throughput and the tail at half the unbatched rate), floor (the job beside itself with its lists
    replayed, with and without the model call: what faster candidate, feature and list code could give);
    scale (store scale, its own workload: not a default, over an hour per backend at full size on 2 cores)."""


# ---------------------------------------------------------------- process stats


# ---------------------------------------------------------------- Kafka helpers


# ---------------------------------------------------------------- measurements


# ---------------------------------------------------------------- the run


def _job_env(cfg: Config, bootstrap: str, topics: dict[str, str], artifact: Path, group: str,
             parallelism: int | None = None, batching: bool = False) -> dict[str, str]:
    """The job's environment; ``batching`` on takes the batch settings of ``cfg`` (the bench's own config)."""
    r = cfg.ranking
    settings: dict[str, dict[str, Any]] = {
        "kafka": {"group_id": group, "starting_offsets": "earliest",
                  "delivery_guarantee": cfg.kafka.delivery_guarantee, **LOCAL_BROKER_SECURITY},
        "ranking": {"provider": r.provider, "batching": batching, "batch_rows": r.batch_rows,
                    "batch_timeout_ms": r.batch_timeout_ms, "batch_shards": r.batch_shards},
    }
    if parallelism is not None:
        settings["job"] = {"parallelism": parallelism}
    return job_env(bootstrap, topics, artifact, settings=settings)


def _flink_restarts(cluster: Any, job_id: str) -> int | None:
    try:
        for m in cluster.rest(f"/jobs/{job_id}/metrics?get=numRestarts"):
            return int(float(m["value"]))
    except (OSError, KeyError, ValueError) as exc:
        log.warning("could not read numRestarts: %s", exc)
    return None


def _flink_metrics(cluster: Any, job_id: str, suffixes: Sequence[str]) -> dict[str, float]:
    """Sum over subtasks of the operator metrics whose names end with ``suffixes``."""
    out: dict[str, float] = {}
    try:
        for v in cluster.rest(f"/jobs/{job_id}")["vertices"]:
            base = f"/jobs/{job_id}/vertices/{v['id']}/subtasks/metrics"
            ids = [m["id"] for m in cluster.rest(base) if m["id"].endswith(tuple(suffixes))]
            if ids:
                for m in cluster.rest(f"{base}?get={','.join(ids)}&agg=sum"):
                    key = next(s for s in suffixes if m["id"].endswith(s))
                    out[key] = out.get(key, 0.0) + float(m["sum"])
    except (OSError, KeyError, ValueError) as exc:
        log.warning("could not read job metrics: %s", exc)
    return out


def ensure_artifact(artifact: Path, *, train_events: int, items: int, categories: int, seed: int) -> str:
    """The bench model at ``artifact``, trained there first if missing; returns its version."""
    if not (artifact / MANIFEST_FILE).is_file():
        from model_export.train import train_model  # lazy: torch (the [train] extra), only when training

        # Same seed, items and categories: the generator draws the catalog first, so this
        # log shares the stream's catalog; fewer shoppers give them histories to learn from.
        log.info("training the bench model on %d events of the same catalog", train_events)
        train_log = generate_events(train_events, n_users=max(1, train_events // 30), n_items=items,
                                    n_categories=categories, seed=seed)
        train_model(train_log, until_ms=None, out_dir=artifact, seed=0)
    return str(verify_manifest(artifact).model_version)


class Bench:
    def __init__(self, settings: BenchSettings, cfg: Config) -> None:
        self.s = settings
        self.cfg = cfg
        self.out = settings.out_dir
        self.results: dict[str, Any] = {}
        self.records: list[tuple[bytes, bytes]] = []
        self.events: list[Any] = []
        self.bootstrap = ""
        self.artifact = settings.artifact or self.out / "artifact"
        self._n = 0

    def _topics(self, tag: str) -> dict[str, str]:
        self._n += 1
        return {f: f"bench-{self._n}-{tag}-{f.split('_')[0]}" for f in TOPIC_FIELDS}

    def _create(self, broker: Any, topics: dict[str, str], append_time: tuple[str, ...] = ()) -> None:
        broker.create_topics(list(topics.values()), partitions=self.s.partitions, append_time=append_time)

    def prepare(self) -> None:
        t = time.perf_counter()
        self.events = generate_events(self.s.events, n_users=self.s.users, n_items=self.s.items,
                                      n_categories=self.s.categories, seed=self.s.seed)
        self.records = [(str(e.user_id).encode(), encode_event(e)) for e in self.events]
        log.info("generated %d events in %.1fs", len(self.events), time.perf_counter() - t)
        self.results["model_version"] = ensure_artifact(self.artifact, train_events=self.s.train_events,
                                                        items=self.s.items, categories=self.s.categories,
                                                        seed=self.s.seed)

    def run(self) -> dict[str, Any]:

        self.out.mkdir(parents=True, exist_ok=True)
        self.results.update(machine_info(), settings={k: str(v) if isinstance(v, Path) else v
                                                       for k, v in asdict(self.s).items()})
        self.results["delivery_guarantee"] = self.cfg.kafka.delivery_guarantee
        self.prepare()
        try:
            self._measure()
        finally:
            self._ratios()
            write_reports(self.out, self.results)
        return self.results

    def _measure(self) -> None:
        with LocalKafka(self.out / "kafka", heap="1g") as broker:
            self.bootstrap = broker.bootstrap
            self.broker_pid = broker.pid
            self.input = self._topics("stream")
            self._create(broker, self.input)
            secs = produce(self.bootstrap, self.input["input_topic"], self.records,
                           progress="bench: load stream").seconds
            self.results["kafka_produce_events_per_s"] = len(self.records) / secs
            phases = self.s.phases
            if "model" in phases:
                self.results["model"] = self._model_alone()
                self.results["model_ceiling_pairs_per_s"] = self.results["model"]["pairs_per_s"]
            if "kafka" in phases:
                n, secs = consume_all(self.bootstrap, self.input["input_topic"], len(self.records))
                self.results["kafka_consume_events_per_s"] = n / secs
            if {"job", "latency", "batching", "floor"} & set(phases):
                self._run_cluster_phases(broker)
            if "peer" in phases:
                self.results["peer"] = self._peer(broker)
                self.results["peer_events_per_s"] = self.results["peer"]["events_per_s"]

    def _cluster(self, taskmanagers: int, tag: str) -> Any:
        """A fresh standalone cluster per job: one slot per TaskManager process.

        Fresh because a TaskManager cannot host a second thread-mode PyFlink job:
        PEMJA's native library is already loaded by the first job's class loader,
        and its Java 17 workaround fails (NoSuchFieldException: loadedLibraryNames).
        """
        return StandaloneCluster(self.out / f"flink-{tag}", slots=1, taskmanagers=taskmanagers,
                                 tm_memory="3072m").start()

    def _run_cluster_phases(self, broker: Any) -> None:
        top = max(self.s.parallelisms)
        if "job" in self.s.phases:
            for p in self.s.parallelisms:
                cluster = self._cluster(p, f"p{p}")
                try:
                    res = self._job(cluster, broker, p)
                finally:
                    cluster.stop()
                self.results[f"job_p{p}"] = res
                self.results[f"job_p{p}_events_per_s"] = res["events_per_s"]
                write_reports(self.out, self.results)
        if "latency" in self.s.phases:
            peak = self.results.get(f"job_p{top}_events_per_s")
            if self.s.latency_rates:
                points = [(f"at_{int(r)}_per_s", r) for r in self.s.latency_rates]
            elif peak:
                points = [(f"{int(f * 100)}pct", f * peak) for f in self.s.latency_fractions]
            else:
                raise RuntimeError("latency phase needs the job phase's maximum throughput or --latency-rates")
            for name, rate in points:
                runs = []
                for i in range(self.s.latency_repeats):
                    cluster = self._cluster(top, f"latency-{name}-{i + 1}")
                    try:
                        runs.append(self._latency(cluster, broker, top, rate))
                    finally:
                        cluster.stop()
                lat = median_of_runs(runs)
                self.results[f"latency_{name}"] = lat
                self.results[f"p99_latency_ms_{'at_' if name.endswith('pct') else ''}{name}"] = lat["p99_ms"]
                write_reports(self.out, self.results)
        if "batching" in self.s.phases:
            self.results["batching"] = self._batching(broker, top)
            write_reports(self.out, self.results)
        if "floor" in self.s.phases:
            self.results["floor"] = self._floor(broker, top)
            write_reports(self.out, self.results)

    def _batching(self, broker: Any, parallelism: int) -> dict[str, Any]:
        """Batching off and on side by side: throughput runs alternated, then the paced tail of
        each at half the unbatched rate (or the first ``--latency-rates``), every run on a fresh cluster."""
        runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
        for _ in range(self.s.batching_repeats):
            for batching in (False, True):
                cluster = self._cluster(parallelism, f"batching-{'on' if batching else 'off'}-{len(runs[batching])}")
                try:
                    runs[batching].append(self._job(cluster, broker, parallelism, batching=batching))
                finally:
                    cluster.stop()
        rate = batching_paced_rate(self.s.latency_rates, runs[False])
        paced: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
        for i in range(self.s.latency_repeats if self.s.batching_paced else 0):
            for batching in (False, True):
                cluster = self._cluster(parallelism, f"batching-paced-{'on' if batching else 'off'}-{i}")
                try:
                    paced[batching].append(self._latency(cluster, broker, parallelism, rate, batching=batching))
                finally:
                    cluster.stop()
        return batching_summary(runs, {k: median_of_runs(v) if v else {} for k, v in paced.items()}, rate, self.cfg,
                                self.results.get("model_ceiling_pairs_per_s"), parallelism)

    def _floor(self, broker: Any, parallelism: int) -> dict[str, Any]:
        """The job beside itself with its lists replayed, with and without the model call
        (:mod:`streamrec.lab.benchmark.floor`), alternated, every run on a fresh cluster."""
        runs: dict[str | None, list[dict[str, Any]]] = {None: [], **{mode: [] for mode in FLOOR_MODES}}
        # The model alone before every repeat as well: one 10 s figure on a shared machine has varied by
        # half between runs, and every share below divides by it.
        alone = [self.results["model_ceiling_pairs_per_s"]] if self.results.get("model_ceiling_pairs_per_s") else []
        for _ in range(self.s.batching_repeats):
            alone.append(float(self._model_alone()["pairs_per_s"]))
            for floor in runs:
                cluster = self._cluster(parallelism, f"floor-{floor or 'job'}-{len(runs[floor])}")
                try:
                    runs[floor].append(self._job(cluster, broker, parallelism, floor=floor))
                finally:
                    cluster.stop()
        summary = floor_summary(runs, float(np.median(alone)), os.cpu_count() or 1, self.cfg.ranking.n_candidates,
                                parallelism)
        summary["model_alone_pairs_per_s_runs"] = alone
        return summary

    def _model_alone(self) -> dict[str, Any]:
        """The model alone on the requests of the stream's first 20,000 events (:func:`model_ceiling`)."""
        n = min(len(self.events), 20_000)
        return model_ceiling(self.artifact, self.events[:n], self.cfg, self.s.model_seconds)

    def _submit(self, cluster: Any, env: dict[str, str], floor: str | None = None) -> str:
        script, args = ((FLOOR_SCRIPT, ["--floor", floor]) if floor
                        else (JOB_SCRIPT, ["--source", "kafka", "--sink", "kafka"]))
        return str(cluster.submit_python(str(script), args, env=env, python=sys.executable))

    def _cancel(self, cluster: Any, job_id: str) -> None:
        try:
            cluster.flink("cancel", "-m", cluster.jobmanager, job_id, timeout=120)
        except RuntimeError as exc:
            log.warning("cancel failed: %s", exc)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and cluster.job_state(job_id) not in ("CANCELED", "FAILED"):
            time.sleep(1)

    def _job(self, cluster: Any, broker: Any, parallelism: int, batching: bool = False,
             floor: str | None = None) -> dict[str, Any]:
        """One throughput run; ``floor`` (a :data:`FLOOR_MODES` entry) submits the job with its lists
        replayed (:mod:`streamrec.lab.benchmark.floor`) instead."""
        tag = f"job-p{parallelism}{'-batched' if batching else ''}{f'-floor-{floor}' if floor else ''}"
        topics = {**self._topics(tag), "input_topic": self.input["input_topic"]}
        self._create(broker, {k: v for k, v in topics.items() if k != "input_topic"})
        env = _job_env(self.cfg, self.bootstrap, topics, self.artifact, group=topics["output_topic"],
                       parallelism=parallelism, batching=batching)
        log.info("job at parallelism %d, batching %s%s", parallelism, "on" if batching else "off",
                 f", lists replayed (floor: {floor})" if floor else "")
        job_id = self._submit(cluster, env, floor)
        counter = TopicCounter(self.bootstrap, topics["output_topic"])
        try:
            def procs() -> dict[str, int]:
                pids = cluster.taskmanager_pids()
                named = {f"taskmanager{i}": p for i, p in enumerate(pids)}
                if self.broker_pid:
                    named["kafka"] = self.broker_pid
                return named

            res = measure_window(
                counter, procs, total=len(self.records), warmup_s=self.s.warmup_s, window_s=self.s.window_s,
                alive=lambda: cluster.job_state(job_id) not in TERMINAL, progress=f"job p{parallelism} outputs",
                probe=lambda: _flink_metrics(cluster, job_id, JOB_METRICS),
            )
            restarts = _flink_restarts(cluster, job_id)
        finally:
            counter.close()
            self._cancel(cluster, job_id)
        out = asdict(res)
        rows, micros = res.extra.get("ranker_rows", 0.0), res.extra.get("ranker_micros", 0.0)
        lists = res.extra.get("recommendations_emitted", 0.0)
        # Model time only, summed over subtasks: rows per second of onnxruntime calls.
        out["in_job_pairs_per_s"] = rows / (micros / 1e6) if micros else None
        out["pairs_per_s"] = res.events_per_s * rows / lists if lists else None
        out["parallelism"] = parallelism
        out["batching"] = batching
        out["floor"] = floor
        out["restarts"] = restarts
        out.update(output_backlog(lists, res.outputs_at_end))
        out["rows_per_call"] = rows_per_call(res.extra)
        log.info("job p%d: %s", parallelism, json.dumps(out, default=str))
        return out

    def _peer(self, broker: Any) -> dict[str, Any]:
        topics = {**self._topics("peer"), "input_topic": self.input["input_topic"]}
        self._create(broker, {k: v for k, v in topics.items() if k != "input_topic"})
        env = _job_env(self.cfg, self.bootstrap, topics, self.artifact, group=topics["output_topic"])
        log_path = self.out / "peer.log"
        with log_path.open("wb") as logf:
            proc = subprocess.Popen([sys.executable, "-m", "streamrec.cli", "peer"], env=env, stdout=logf,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        try:
            procs = {"peer": proc.pid}
            if self.broker_pid:
                procs["kafka"] = self.broker_pid
            counter = TopicCounter(self.bootstrap, topics["output_topic"])
            try:
                res = measure_window(counter, lambda: procs, total=len(self.records), warmup_s=self.s.warmup_s,
                                     window_s=self.s.window_s, alive=lambda: proc.poll() is None,
                                     progress="peer outputs")
            finally:
                counter.close()
        finally:
            stop_group(proc, 30)
        log.info("peer: %s", json.dumps(asdict(res), default=str))
        return asdict(res)

    def _latency(self, cluster: Any, broker: Any, parallelism: int, rate: float,
                 batching: bool = False) -> dict[str, Any]:
        topics = self._topics(f"latency-{int(rate)}{'-batched' if batching else ''}")
        # Latency from the event in Kafka to its list in Kafka, both stamped by the broker: the job's
        # sink linger counts, the load generator's own producer linger does not.
        self._create(broker, topics, append_time=(topics["input_topic"], topics["output_topic"]))
        env = _job_env(self.cfg, self.bootstrap, topics, self.artifact, group=topics["output_topic"],
                       parallelism=parallelism, batching=batching)
        n = int(rate * self.s.latency_s)
        n_warm = int(rate * self.s.latency_warmup_s)
        # The stream's start, like the throughput phases: the same work, so the rate
        # fractions mean what they say (later events carry longer histories and cost more).
        records = self.records[: 1 + n_warm + n]
        log.info("latency at %.0f events/s (%d warm-up + %d timed events)", rate, n_warm, n)
        job_id = self._submit(cluster, env)
        counter = TopicCounter(self.bootstrap, topics["output_topic"])
        try:
            produce(self.bootstrap, topics["input_topic"], records[:1])
            deadline = time.monotonic() + 300
            while counter() == 0:
                if time.monotonic() > deadline:
                    raise RuntimeError("the latency job produced nothing in 300s")
                time.sleep(1)
            # Paced warm-up first (JIT, caches), then the timed part at the same rate.
            produce(self.bootstrap, topics["input_topic"], records[1 : 1 + n_warm], rate=rate,
                    progress=f"latency {rate:.0f}/s warm-up")
            procs = {**{f"taskmanager{i}": pid for i, pid in enumerate(cluster.taskmanager_pids())},
                     "kafka": self.broker_pid, "load_generator": os.getpid()}
            cpu_start = {name: cpu_seconds(pid) for name, pid in procs.items()}
            threads_start = {name: thread_cpu_seconds(pid) for name, pid in procs.items()}
            sent_s = produce(self.bootstrap, topics["input_topic"], records[1 + n_warm :], rate=rate,
                             progress=f"latency {rate:.0f}/s timed").seconds
            cpu_timed = {name: round(cpu_seconds(pid) - cpu_start[name], 2) for name, pid in procs.items()}
            threads = {name: busiest_threads(threads_start[name], thread_cpu_seconds(pid), sent_s)
                       for name, pid in procs.items()}
            deadline = time.monotonic() + 120
            while counter() < len(records) and time.monotonic() < deadline:
                time.sleep(1)
        finally:
            counter.close()
            self._cancel(cluster, job_id)
        inputs = {}
        for r in consume(self.bootstrap, topics["input_topic"], max_records=len(records), timeout_s=15):
            v = r.value
            inputs[trigger_key(v["user_id"], v["item_id"], v["behavior"], v["ts"])] = r.timestamp
        timed_keys = set()
        for _, value in records[1 + n_warm :]:
            v = msgpack.unpackb(value, raw=False, strict_map_key=False)
            timed_keys.add(trigger_key(v["user_id"], v["item_id"], v["behavior"], v["ts"]))
        inputs = {k: ts for k, ts in inputs.items() if k in timed_keys}
        outputs = [(r.value, r.timestamp) for r in consume(self.bootstrap, topics["output_topic"],
                                                             max_records=len(records), timeout_s=15)]
        sent = len(records) - 1 - n_warm
        pairs = latencies(inputs, outputs)
        # Every timed event's (input ms, latency ms): a tail's shape and timing, set against the
        # cluster's logs (checkpoints, GC), says more than its percentiles.
        (self.out / f"{topics['input_topic']}.latencies.json").write_text(json.dumps(sorted(pairs)))
        summary: dict[str, Any] = summarize_pairs(pairs).as_dict()
        summary.update(target_rate=rate, achieved_send_rate=sent / sent_s, timed_events=sent,
                       warmup_events=n_warm, received=len(outputs), cpu_s_timed=cpu_timed, timed_s=sent_s,
                       busiest_threads=threads,
                       p99_ms_per_10s=[round(x) for x in p99_by_interval(pairs)])
        log.info("latency at %.0f/s: %s", rate, json.dumps(summary))
        return summary

    def _ratios(self) -> None:
        r = self.results
        cpus = int(r.get("machine", {}).get("cpus") or os.cpu_count() or 1)
        for key in SYSTEMS:
            if r.get(key, {}).get("events_per_s"):
                # The peer is one Python thread: one core is all it can use.
                r[key].update(cpu_budget(r[key], 1 if key == "peer" else cpus))
        p2_bound = r.get("job_p2", {}).get("cpu_bound_events_per_s")
        if p2_bound and r.get("peer_events_per_s"):
            r["ratio_job_p2_cpu_bound_over_peer"] = p2_bound / r["peer_events_per_s"]
        if p2_bound and r.get("job_p1_events_per_s"):
            r["ratio_job_p2_cpu_bound_over_p1"] = p2_bound / r["job_p1_events_per_s"]
        peer = r.get("peer_events_per_s")
        p1, p2 = r.get("job_p1_events_per_s"), r.get("job_p2_events_per_s")
        if peer and p2:
            r["ratio_job_p2_over_peer"] = p2 / peer
        if peer and p1:
            r["ratio_job_p1_over_peer"] = p1 / peer
        if p1 and p2:
            r["ratio_job_p2_over_p1"] = p2 / p1
        ceiling = r.get("model_ceiling_pairs_per_s")
        p2_row = r.get("job_p2", {})
        rows_per_event = (p2_row.get("pairs_per_s") or 0) / p2 if p2 else None
        bound = model_bound_events_per_s(ceiling, cpus, rows_per_event)
        if bound and p2:
            r["model_bound_events_per_s"] = bound
            r["job_p2_share_of_model_bound"] = p2 / bound
        batching = r.get("batching") or {}
        if "job_p2_share_of_model_bound" not in r and batching.get("share_of_model_bound_off"):
            r["job_p2_share_of_model_bound"] = batching["share_of_model_bound_off"]
        floor = r.get("floor") or {}
        if "job_p2_share_of_model_bound" not in r and floor.get("share_of_model_bound_job"):
            r["job_p2_share_of_model_bound"] = floor["share_of_model_bound_job"]
        in_job = [r[k]["in_job_pairs_per_s"] for k in ("job_p1", "job_p2") if r.get(k, {}).get("in_job_pairs_per_s")]
        if in_job:
            # Per-worker ranking speed inside the job (model time only), best configuration at p1.
            r["in_job_pairs_per_s"] = r.get("job_p1", {}).get("in_job_pairs_per_s") or in_job[0]
            if ceiling:
                r["ratio_in_job_ranking_over_ceiling"] = r["in_job_pairs_per_s"] / ceiling


# ---------------------------------------------------------------- reports



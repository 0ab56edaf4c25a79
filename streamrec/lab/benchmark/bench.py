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
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from jobs.layout import JOB_SCRIPT
from streamrec.kafka_io import consume, produce
from streamrec.lab.benchmark.floor import FLOOR_MODES
from streamrec.lab.benchmark.latency import latencies, median_of_runs, p99_by_interval, summarize_pairs, trigger_key
from streamrec.lab.generator import generate_events
from streamrec.lab.local.flink_cluster import StandaloneCluster
from streamrec.lab.local.kafka import LocalKafka
from streamrec.lab.local.procs import LOCAL_BROKER_SECURITY, job_env, stop_group
from streamrec.progress import Progress
from udfs.artifact import MANIFEST_FILE, load_artifact, verify_manifest
from udfs.config import TOPIC_FIELDS, Config
from udfs.events import encode_event
from udfs.features import build_batch
from udfs.job_metrics import BATCH_WAIT_MS, ROWS_PER_CALL, bucket_quantile
from udfs.kafka_clients import KafkaClients
from udfs.ranker import OnnxRanker, RankerStats
from udfs.recommend import Recommender
from udfs.runtime import state_limits
from udfs.state import UserState

log = logging.getLogger(__name__)

# The floor phase's job script (streamrec/lab/benchmark/floor.py).
FLOOR_SCRIPT = Path(__file__).with_name("floor_job.py")
TERMINAL = ("FAILED", "CANCELED", "CANCELLING", "FINISHED", "SUSPENDED")
# Threads per process in a window's CPU breakdown (results.json ``busiest_threads``).
BUSIEST_THREADS = 8


@dataclass(frozen=True)
class BenchSettings:
    """What one bench run measures; the defaults are the issue's workload."""

    out_dir: Path
    events: int = 1_000_000
    users: int = 100_000
    items: int = 50_000
    categories: int = 500
    seed: int = 11
    artifact: Path | None = None
    """Model artifact; None trains one on ``train_events`` generated events of the stream's catalog."""
    train_events: int = 60_000
    partitions: int = 2
    parallelisms: tuple[int, ...] = (1, 2)
    warmup_s: float = 20.0
    window_s: float = 90.0
    """Throughput window per phase, after the warm-up."""
    latency_fractions: tuple[float, ...] = (0.5, 0.9)
    latency_rates: tuple[float, ...] = ()
    """Absolute events/s for the latency points instead of fractions of the measured maximum."""
    latency_s: float = 45.0
    latency_repeats: int = 3
    """Independent runs, each on a fresh cluster, per latency point; the point reports their
    medians. Identical runs on a shared 2-core machine have differed several-fold in p99."""
    latency_warmup_s: float = 60.0
    """Paced replay before a latency point's timed part: a fresh cluster's JVMs JIT-compile for
    about a minute, and p99 in that minute is several times the steady state's."""
    model_seconds: float = 10.0
    batching_repeats: int = 1
    """Throughput runs per side (batching off, on), alternated; the table reports their medians."""
    batching_paced: bool = True
    """Also the paced tail of each side (latency_repeats runs each) at half the unbatched rate."""
    phases: tuple[str, ...] = ("model", "kafka", "job", "peer", "latency", "batching", "floor")


# ---------------------------------------------------------------- process stats


def _clock_ticks() -> int:
    return int(os.sysconf("SC_CLK_TCK"))


def _stat_cpu_seconds(stat: Path, ticks: int) -> float:
    """User + system CPU from a /proc ``stat`` file (a process's or one thread's); OSError if it is gone."""
    fields = stat.read_text().rsplit(")", 1)[1].split()  # after the name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / ticks


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process (all its threads), from /proc."""
    try:
        return _stat_cpu_seconds(Path(f"/proc/{pid}/stat"), _clock_ticks())
    except OSError:
        return 0.0


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """User + system CPU per thread name of one process, from /proc/PID/task: threads that differ
    only in a trailing number (``GC Thread#0``, ``GC Thread#1``) are summed under one name.

    Names are the kernel's, cut at 15 characters: a TaskManager's operator threads are named
    after their operator chain, so the job's Python work shows beside the JIT compilers,
    the Kafka clients and the garbage collector."""
    out: dict[str, float] = {}
    ticks = _clock_ticks()
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            name = (task / "comm").read_text().strip()
            used = _stat_cpu_seconds(task / "stat", ticks)
        except OSError:
            continue  # the thread ended between the listing and the read
        name = name.rstrip("0123456789").rstrip("#-_ ") or name
        out[name] = out.get(name, 0.0) + used
    return out


def busiest_threads(before: dict[str, float], after: dict[str, float], seconds: float,
                    top: int = BUSIEST_THREADS) -> dict[str, float]:
    """The ``top`` thread names by CPU between two :func:`thread_cpu_seconds` readings, as the share
    of one core over ``seconds`` (1.0: a thread that never waited)."""
    used = {n: after[n] - before.get(n, 0.0) for n in after}
    ranked = sorted((n for n in used if used[n] > 0), key=lambda n: -used[n])[:top]
    return {n: round(used[n] / seconds, 3) for n in ranked} if seconds > 0 else {}


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


class RssSampler:
    """Peak RSS per process, sampled twice a second while a phase runs."""

    def __init__(self, pids: Callable[[], Sequence[int]]) -> None:
        self._pids = pids
        self.peak: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for pid in self._pids():
                self.peak[pid] = max(self.peak.get(pid, 0.0), rss_mb(pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------- Kafka helpers


class TopicCounter:
    """Records in a topic (sum of end offsets): outputs so far, without reading them."""

    def __init__(self, bootstrap: str, topic: str, security: Mapping[str, Any] | None = None) -> None:
        self.topic = topic
        self._cons = KafkaClients(bootstrap, security or {}).consumer(group_id=None, enable_auto_commit=False)

    def __call__(self) -> int:
        from kafka import TopicPartition

        parts = self._cons.partitions_for_topic(self.topic) or set()
        ends = self._cons.end_offsets([TopicPartition(self.topic, p) for p in parts])
        return int(sum(ends.values()))

    def close(self) -> None:
        self._cons.close()


def consume_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0,
                security: Mapping[str, Any] | None = None) -> tuple[int, float]:
    """Read ``expected`` raw records as fast as kafka-python can; (count, seconds).

    ``security``: kafka-python options (:func:`udfs.kafka_security.python_client_options`).
    """
    cons = KafkaClients(bootstrap, security or {}).consumer(
        topic, auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=int(timeout_s * 1000),
        max_partition_fetch_bytes=8 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024)
    n = 0
    start = time.perf_counter()
    try:
        for _ in cons:
            n += 1
            if n >= expected:
                break
    finally:
        cons.close()
    return n, time.perf_counter() - start


# ---------------------------------------------------------------- measurements


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

    def _create(self, broker: Any, topics: dict[str, str]) -> None:
        broker.create_topics(list(topics.values()), partitions=self.s.partitions)

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
        self._create(broker, topics)
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
            sent_s = produce(self.bootstrap, topics["input_topic"], records[1 + n_warm :], rate=rate,
                             progress=f"latency {rate:.0f}/s timed").seconds
            cpu_timed = {name: round(cpu_seconds(pid) - cpu_start[name], 2) for name, pid in procs.items()}
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
        summary: dict[str, Any] = summarize_pairs(pairs).as_dict()
        summary.update(target_rate=rate, achieved_send_rate=sent / sent_s, timed_events=sent,
                       warmup_events=n_warm, received=len(outputs), cpu_s_timed=cpu_timed, timed_s=sent_s,
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


def backlog_lines(r: Mapping[str, Any]) -> list[str]:
    """A line per job phase whose lists were made faster than they reached the topic."""
    lines = [f"- {key}: {_fmt(row['lists_not_on_topic_at_end'])} lists made but not on the topic at the "
             f"window's end ({_fmt(row['lists_made_at_end'])} made, {_fmt(row['outputs_at_end'])} on the topic)"
             for key in SYSTEMS if (row := r.get(key)) and row.get("lists_not_on_topic_at_end")]
    if lines:
        lines = ["", "Output behind the job (the events/s above count the topic, which is what a storefront "
                 "sees):", "", *lines]
    return lines


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


def _gpu_name() -> str | None:
    import shutil

    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    res = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    return res.stdout.strip() or None


def machine_info() -> dict[str, Any]:
    import importlib.metadata as md

    versions: dict[str, str | None] = {}
    for pkg in ("apache-flink", "onnxruntime-gpu", "torch", "kafka-python", "msgpack", "numpy"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine()},
        "versions": versions,
        "gpu": _gpu_name(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# ---------------------------------------------------------------- reports


def _fmt(v: Any, digits: int = 0) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def _latency_label(key: str) -> str:
    name = key.removeprefix("latency_")
    return f"{name[:-3]}% of max" if name.endswith("pct") else f"{name.split('_')[1]} events/s"


def markdown(results: dict[str, Any]) -> str:
    r = results
    lines = ["# streamrec bench", "", f"Machine: {r['machine']['cpus']} CPUs, {r['machine']['platform']}; "
             f"model {r.get('model_version')}; settings {json.dumps(r.get('settings', {}))}", "",
             "| system | events/s | ranked pairs/s | CPU s in window | CPU ms per event (broker) "
             "| events/s the CPU allows (cores it can use) | peak RSS MB |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    labels = {"job_p1": "job, parallelism 1", "job_p2": "job, parallelism 2", "peer": "plain-Python peer"}
    for key in SYSTEMS:
        row = r.get(key)
        if row:
            cpu, rss = without_broker(row["cpu_s"]), without_broker(row["peak_rss_mb"])
            per_event = (f"{_fmt(row.get('cpu_ms_per_event'), 2)} ({_fmt(row.get('broker_cpu_ms_per_event'), 2)})"
                         if "cpu_ms_per_event" in row else "-")
            bound = f"{_fmt(row.get('cpu_bound_events_per_s'))} ({row.get('cores', '-')})"
            lines.append(f"| {labels[key]} | {_fmt(row['events_per_s'])} | {_fmt(row.get('pairs_per_s'))} | "
                         f"{_fmt(cpu, 1)} | {per_event} | {bound} | {_fmt(rss)} |")
    if r.get("model"):
        lines.append(f"| model alone (onnxruntime, {r['model']['provider']}) | - | "
                     f"{_fmt(r['model']['pairs_per_s'])} | - | - | - | - |")
    if r.get("kafka_consume_events_per_s"):
        lines.append(f"| Kafka alone (kafka-python produce / consume) | {_fmt(r['kafka_produce_events_per_s'])} / "
                     f"{_fmt(r['kafka_consume_events_per_s'])} | - | - | - | - | - |")
    lines += busiest_threads_lines(r)
    lines += backlog_lines(r)
    guarantee = r.get("delivery_guarantee", "at-least-once")
    lines += ["", f"Latency: medians over independent runs (job, {guarantee}).", "",
              "| latency | target events/s | p50 ms | p95 ms | p99 ms | p99 ms per run | matched |",
              "|---|---:|---:|---:|---:|---|---:|"]
    for k in sorted(k for k in r if k.startswith("latency_")):
        v = r[k]
        per_run = ", ".join(_fmt(run["p99_ms"]) for run in v.get("runs", []))
        lines.append(f"| {_latency_label(k)} | {_fmt(v['target_rate'])} | {_fmt(v['p50_ms'])} | {_fmt(v['p95_ms'])} | "
                     f"{_fmt(v['p99_ms'])} | {per_run} | {v['matched']} |")
    lines += batching_table(r.get("batching"))
    lines += floor_table(r.get("floor"))
    lines += ["", "| ratio | value |", "|---|---:|"]
    for k in sorted(k for k in r if k.startswith("ratio_")):
        lines.append(f"| {k[6:]} | {r[k]:.2f} |")
    return "\n".join(lines) + "\n"


def busiest_threads_lines(r: dict[str, Any]) -> list[str]:
    """Where each throughput phase's CPU went, thread by thread: a phase whose operator thread
    is near 1.0 is bound by that one thread, whatever the process total says."""
    lines: list[str] = []
    for key in SYSTEMS:
        per_proc = (r.get(key) or {}).get("busiest_threads") or {}
        for proc, threads in per_proc.items():
            if threads:
                shown = ", ".join(f"{name} {share:.2f}" for name, share in threads.items())
                lines.append(f"- {key} {proc}: {shown}")
    if lines:
        lines = ["", "Busiest threads (share of one core over the window; names as the kernel cuts them):",
                 "", *lines]
    return lines


def batching_paced_rate(latency_rates: Sequence[float], off_runs: Sequence[dict[str, Any]]) -> float:
    """The batching phase's paced rate: half the unbatched median, or the first of ``latency_rates``,
    which makes the paced tails of separate runs (with other settings) comparable."""
    if latency_rates:
        return float(latency_rates[0])
    return 0.5 * float(np.median([r["events_per_s"] for r in off_runs]))


def batching_table(b: dict[str, Any] | None) -> list[str]:
    """Batching off and on, side by side (medians of each side's runs)."""
    if not b:
        return []
    p = b["parallelism"]
    off, on = b["runs"]["off"], b["runs"]["on"]
    return ["", f"Batched ranking at parallelism {p}, off and on in one run ({json.dumps(b['settings'])}); "
            f"paced at {_fmt(b['paced_events_per_s'])} events/s, half the unbatched rate.", "",
            "| batching | events/s (runs) | rows per model call p50 / p99 (mean) | paced p50 ms | paced p99 ms "
            "| share of the model-alone bound |",
            "|---|---:|---:|---:|---:|---:|",
            f"| off | {_fmt(b[f'p{p}_events_per_s_off'])} ({', '.join(_fmt(r['events_per_s']) for r in off)}) | "
            f"{_fmt(b['rows_per_call_off'])} per call | {_fmt(b['p50_ms_paced_off'])} | "
            f"{_fmt(b['p99_ms_paced_off'])} | "
            f"{_fmt(b['share_of_model_bound_off'], 2)} |",
            f"| on | {_fmt(b[f'p{p}_events_per_s_on'])} ({', '.join(_fmt(r['events_per_s']) for r in on)}) | "
            f"<= {_fmt(b['rows_per_call_p50'])} / <= {_fmt(b['rows_per_call_p99'])} "
            f"({_fmt(b['rows_per_call_mean'])}) | "
            f"{_fmt(b['p50_ms_paced_on'])} | {_fmt(b['p99_ms_paced_on'])} | {_fmt(b['share_of_model_bound_on'], 2)} |"]


def floor_table(f: dict[str, Any] | None) -> list[str]:
    """The job beside itself with its lists replayed (:func:`floor_summary`)."""
    if not f:
        return []
    p = f["parallelism"]
    rows = (("job", "job", "as it runs"),
            ("model_only", "model", "candidates, features and list replayed; the model still called"),
            ("platform", "none", "replayed, no model call: Kafka, Flink, state, encode and decode"))
    lines = ["", f"The floor at parallelism {p}: the job beside itself with its lists replayed, in one run "
             "(medians). The model-only row is the most faster candidate, feature and list code could give.", "",
             "| run | what it does per event | events/s (runs) | CPU ms per event | operator thread ms per event "
             "| share of the model-alone bound |",
             "|---|---|---:|---:|---:|---:|"]
    for key, side, what in rows:
        share = f.get(f"share_of_model_bound_{key}") if key != "platform" else None
        lines.append(f"| {key.replace('_', ' ')} | {what} | {_fmt(f.get(f'p{p}_events_per_s_{key}'))} "
                     f"({', '.join(_fmt(r['events_per_s']) for r in f['runs'].get(side, []))}) | "
                     f"{_fmt(f.get(f'cpu_ms_per_event_{key}'), 2)} | {_fmt(f.get(f'operator_ms_per_event_{key}'), 2)} "
                     f"| {_fmt(share, 2)} |")
    return lines


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = results
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    names, values = [], []
    for key, label in (("job_p1", "job p1"), ("job_p2", "job p2"), ("peer", "peer")):
        if r.get(key):
            names.append(label)
            values.append(r[key]["events_per_s"])
    ax1.bar(names, values, color=["#4c72b0", "#4c72b0", "#dd8452"][: len(names)])
    ax1.set_ylabel("events/s (sustained)")
    ax1.set_title("Throughput, same stream and model")
    lat = [(k[8:], r[k]) for k in sorted(k for k in r if k.startswith("latency_"))]
    if lat:
        x = np.arange(len(lat))
        for i, q in enumerate(("p50_ms", "p95_ms", "p99_ms")):
            ax2.bar(x + (i - 1) * 0.25, [v[q] for _, v in lat], width=0.25, label=q[:-3])
        ax2.set_xticks(x, [_latency_label("latency_" + k) for k, _ in lat])
        ax2.set_ylabel("event -> recommendation, ms")
        ax2.set_title("Job latency (Kafka timestamps)")
        ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(out: Path, results: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "results.md").write_text(markdown(results))
    plot(results, out / "results.png")

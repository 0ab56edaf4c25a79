"""The job graph, independent of where events come from and go to.

Tests, offline replays and production all call :func:`build_pipeline` with a
different source and sink, so they run the same graph.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import site
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pyflink.common import Configuration, WatermarkStrategy
from pyflink.common.typeinfo import Types
from pyflink.datastream import DataStream, KeyedStream, StreamExecutionEnvironment
from pyflink.java_gateway import get_gateway

from jobs.checkpoints import checkpoint_root, resume_path
from jobs.functions import (
    CATALOG_STATE,
    DLQ_TAG,
    ENVELOPE_TYPE,
    FEEDBACK_TAG,
    KEYED_BYTES_TYPE,
    LATE_TAG,
    MODEL_STATE,
    SCORING_TYPE,
    SHARD_KEYED_SCORING_TYPE,
    CatalogRecommendFunction,
    RecommendFunction,
)
from jobs.items import learn_items
from jobs.layout import PROJECT_ROOT, PROMETHEUS_FACTORY, cache_dir, prometheus_jar, required_jars
from jobs.rank_batches import RankBatchFunction
from jobs.rest_tls import ensure_rest_tls, flink_rest_settings, submitted_by_flink_client
from jobs.scratch import local_run_dir
from udfs.config import Config


@dataclass
class PipelineOutputs:
    """Every output stream is Row(key: str, value: msgpack bytes)."""

    recommendations: DataStream
    dead_letters: DataStream
    late_events: DataStream
    feedback: DataStream
    """Per scored event, its rank in the shopper's previous list (udfs/feedback.py); empty with batching."""


class Source(Protocol):
    """Raw records; ``event_time_in_source`` says whether the source assigns event time and
    watermarks itself (per Kafka partition) or leaves them to the envelope."""

    event_time_in_source: bool

    def create(self, env: StreamExecutionEnvironment, config: Config) -> DataStream: ...


class Sink(Protocol):
    def attach(self, outputs: PipelineOutputs, config: Config) -> None: ...


def flink_configuration(config: Config) -> Configuration:
    """Settings that must be in place before the environment is created."""
    conf = Configuration()
    for key, value in flink_settings(config).items():
        conf.set_string(key, value)
    return conf


def flink_settings(config: Config) -> dict[str, str]:
    """Every Flink setting the job makes explicit, rather than leaving it to Flink's defaults."""
    job = config.job
    settings = {
        # Workers must use this interpreter (the one with the project installed), not PATH's.
        "python.executable": sys.executable,
        "python.client.executable": sys.executable,
        "python.execution-mode": job.execution_mode,
        "python.fn-execution.bundle.size": str(job.python_bundle_size),
        "python.fn-execution.bundle.time": str(job.python_bundle_time_ms),
        "state.backend.type": job.state_backend,
        # Durable checkpoints: JobManager memory caps state at 5 MiB, which a store passes in minutes.
        "execution.checkpointing.storage": "filesystem",
        "execution.checkpointing.dir": checkpoint_root(config),
        "execution.checkpointing.externalized-checkpoint-retention":
            "RETAIN_ON_CANCELLATION" if job.checkpoint_retention == "retain" else "DELETE_ON_CANCELLATION",
        "execution.checkpointing.incremental": str(job.incremental_checkpoints).lower(),
        "execution.checkpointing.tolerable-failed-checkpoints": str(job.tolerable_checkpoint_failures),
        **restart_settings(config),
        # A local run's REST API and blob server listen on loopback, and take no jobs over REST.
        # (PyFlink's Beam gRPC servers bind every interface whatever the settings: docs/operations.md.)
        "rest.bind-address": job.bind_address,
        "rest.address": job.bind_address,
        "jobmanager.bind-host": job.bind_address,
        "jobmanager.rpc.address": job.bind_address,
        "taskmanager.bind-host": job.bind_address,
        "taskmanager.host": job.bind_address,
        "web.submit.enable": "false",
    }
    if job.rest_port:
        settings["rest.port"] = str(job.rest_port)
    if job.rest_auth == "mtls" and not submitted_by_flink_client():
        settings.update(flink_rest_settings(ensure_rest_tls(job.rest_tls_dir or None)))
    settings.update(metrics_settings(config))
    if config.ranking.batching:
        # PyFlink's chaining of consecutive Python operators fails job submission when the
        # ranking stage has a Python successor (the bounded runs' collect maps): "Hash collision
        # on user-specified ID rank-batches". Between Kafka topics no Python operator follows a
        # Python one, so there this changes nothing.
        settings["python.operator-chaining.enabled"] = "false"
    resume = resume_path(config)
    if resume:
        settings["execution.state-recovery.path"] = resume
    return settings


def metrics_settings(config: Config) -> dict[str, str]:
    """Flink's Prometheus reporter (``metrics.prometheus_port``; 0: none). Every JobManager and
    TaskManager process serves /metrics on the first free port of the range."""
    port = config.metrics.prometheus_port
    if port == "0":
        return {}
    return {"metrics.reporter.prom.factory.class": PROMETHEUS_FACTORY, "metrics.reporter.prom.port": port}


def restart_settings(config: Config) -> dict[str, str]:
    job = config.job
    if job.restart_strategy == "none":
        return {"restart-strategy.type": "none"}
    if job.restart_strategy == "fixed-delay":
        return {"restart-strategy.type": "fixed-delay",
                "restart-strategy.fixed-delay.attempts": str(job.restart_attempts),
                "restart-strategy.fixed-delay.delay": f"{job.restart_delay_ms} ms"}
    longest = max(job.restart_max_delay_ms, job.restart_delay_ms)
    return {"restart-strategy.type": "exponential-delay",
            "restart-strategy.exponential-delay.initial-backoff": f"{job.restart_delay_ms} ms",
            "restart-strategy.exponential-delay.max-backoff": f"{longest} ms",
            "restart-strategy.exponential-delay.attempts-before-reset-backoff": str(job.restart_attempts)}


def worker_pythonpath() -> str:
    """site-packages and the project root, for PyFlink's thread mode.

    Thread mode embeds CPython through PEMJA, which starts from the base
    interpreter and does not see a virtualenv's site-packages (nor the .pth of
    an editable install) unless PYTHONPATH names them.
    """
    parts = [*site.getsitepackages(), str(PROJECT_ROOT)]
    current = os.environ.get("PYTHONPATH", "")
    return os.pathsep.join(dict.fromkeys([*parts, *filter(None, current.split(os.pathsep))]))


def add_to_jvm_classpath(jars: list[Path]) -> None:
    """Start the local JVM with ``jars`` on its system classpath; must run before the JVM starts.

    A local run's MiniCluster loads metric reporters from the classpath only (not from a plugins
    folder), and PyFlink builds the classpath from FLINK_LIB_DIR. So FLINK_LIB_DIR becomes a folder
    of links to PyFlink's own lib jars plus ``jars``, under the cache, named by what it holds.
    """
    from pyflink.find_flink_home import _find_flink_home

    flink_home = Path(_find_flink_home())
    lib = Path(os.environ.get("FLINK_LIB_DIR", flink_home / "lib"))
    wanted = sorted([*lib.glob("*.jar"), *jars], key=lambda p: p.name)
    digest = hashlib.sha256("\n".join(str(p.resolve()) for p in wanted).encode()).hexdigest()[:16]
    target = cache_dir() / "flink" / f"jvm-lib-{digest}"
    if not target.is_dir():
        tmp = Path(tempfile.mkdtemp(prefix="jvm-lib-", dir=target.parent))
        for jar in wanted:
            (tmp / jar.name).symlink_to(jar.resolve())
        try:
            tmp.rename(target)
        except OSError:  # another job made the same folder first
            shutil.rmtree(tmp, ignore_errors=True)
    os.environ["FLINK_LIB_DIR"] = str(target)


def create_environment(config: Config) -> StreamExecutionEnvironment:
    jars = required_jars()  # before the JVM starts: a missing jar is a clear error, not a py4j one
    # Must be set before the JVM (and so the embedded interpreter) starts.
    os.environ["PYTHONPATH"] = worker_pythonpath()
    if config.metrics.prometheus_port != "0":
        add_to_jvm_classpath([prometheus_jar()])
    # A local run otherwise starts PyFlink's Beam worker-pool server on every interface
    # (beam_worker_pool_service: '[::]:0'), whatever the bind settings. Thread mode never uses
    # it, and process mode then launches its workers as on a cluster. PyFlink's own test
    # harness sets the same (underscored, internal) variable.
    os.environ["_python_worker_execution_mode"] = "process"  # noqa: SIM112 (PyFlink reads this name)
    conf = flink_configuration(config)
    if not submitted_by_flink_client():  # a local MiniCluster: its scratch files are this run's to remove
        conf.set_string("io.tmp.dirs", str(local_run_dir()))
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(config.job.parallelism)
    env.set_buffer_timeout(config.job.buffer_timeout_ms)
    if config.job.checkpoint_interval_ms:
        env.enable_checkpointing(config.job.checkpoint_interval_ms)
    env.add_jars(*[f"file://{j}" for j in jars])
    return env


def key_by_user(raw: DataStream, config: Config, event_time_in_source: bool) -> KeyedStream:
    """Raw records keyed by user, with event-time watermarks, all in the JVM.

    The keyed function is the only Python an event meets: a Python decode, timestamp
    assigner and key selector before the shuffle cost three JVM/Python crossings and
    a pickle round trip per event, and took the GIL from the keyed function in thread
    mode. ``EventEnvelope`` reads just the user id (keying by its pseudonym with
    ``privacy.pseudonymize``) and event time (none for a ts beyond
    wall-clock now + ``job.max_future_skew_ms``, as Python rejects it); the element layout
    is the one PyFlink's own ``key_by`` produces, Row(key, value). A source that assigns
    event time itself (Kafka, per partition) keeps its timestamps and watermarks; any
    other gets them from the envelope here.
    """
    jvm = get_gateway().jvm
    envelope = jvm.io.streamrec.flink.EventEnvelope
    privacy = config.privacy
    # Only where the key lives goes into the graph; each envelope reads the key at open().
    pseudonyms = jvm.io.streamrec.flink.Pseudonyms(privacy.key_file, privacy.key_env) if privacy.pseudonymize else None
    timed = (raw._j_data_stream.map(envelope(config.job.max_future_skew_ms, pseudonyms))
             .name("envelope").uid("envelope"))
    if not event_time_in_source:
        timed = (
            timed.assignTimestampsAndWatermarks(envelope.watermarks(config.job.out_of_orderness_ms))
            .name("event-time")
            .uid("event-time")
        )
    j_keyed = timed.keyBy(jvm.KeyByKeySelector(), Types.ROW([Types.STRING()]).get_java_type_info())
    return KeyedStream(j_keyed, ENVELOPE_TYPE, DataStream(timed))


def source_watermarks(config: Config) -> WatermarkStrategy:
    """Per-partition event time for the Kafka source (``EventEnvelope.sourceWatermarks``)."""
    job = config.job
    return WatermarkStrategy(get_gateway().jvm.io.streamrec.flink.EventEnvelope.sourceWatermarks(
        job.out_of_orderness_ms, job.source_idleness_ms, job.max_future_skew_ms))


def build_pipeline(env: StreamExecutionEnvironment, config: Config, source: Source, sink: Sink,
                   recommend: RecommendFunction | CatalogRecommendFunction | None = None,
                   catalog: Source | None = None) -> PipelineOutputs:
    """The job graph; ``recommend`` replaces the keyed function (fault-injection tests).

    ``catalog``: the item catalog's raw records, broadcast to every instance of the keyed
    function and joined there (docs/contracts.md "Catalog"). A ``recommend`` that is not a
    :class:`CatalogRecommendFunction` runs without it.
    """
    raw = source.create(env, config)
    keyed = key_by_user(raw, config, source.event_time_in_source)
    if config.items.online:
        keyed = learn_items(keyed, config)
    if recommend is None:
        recommend = CatalogRecommendFunction(config) if catalog is not None else RecommendFunction(config)
    if config.ranking.batching:
        recommend.route_to_batches(shard_keys(env, config))
    out_type = SHARD_KEYED_SCORING_TYPE if config.ranking.batching else KEYED_BYTES_TYPE
    if catalog is not None and isinstance(recommend, CatalogRecommendFunction):
        broadcast = catalog.create(env, config).broadcast(CATALOG_STATE, MODEL_STATE)
        joined = keyed.connect(broadcast).process(recommend, output_type=out_type)
    else:
        joined = keyed.process(recommend, output_type=out_type)
    # The keyed stage keeps its uid with batching on or off: user state survives the switch.
    stage = joined.name("recommend").uid("recommend")
    recs = rank_batches(stage, config) if config.ranking.batching else stage
    outputs = PipelineOutputs(recs, stage.get_side_output(DLQ_TAG), stage.get_side_output(LATE_TAG),
                              stage.get_side_output(FEEDBACK_TAG))
    sink.attach(outputs, config)
    return outputs


def shard_keys(env: StreamExecutionEnvironment, config: Config) -> list[str]:
    """One key per batching shard, chosen so that the ranking stage's subtasks hold equal shares.

    Flink places a key by a hash of it (key groups); with a few keys, plain names like "0", "1"
    often land on the same subtask and leave another without a buffer. So each shard's key is
    the first name "<shard>-<n>" that Flink itself assigns to subtask ``shard % parallelism``.
    """
    jvm = get_gateway().jvm
    parallelism = config.job.parallelism
    shards = config.ranking.batch_shards or parallelism
    assignment = jvm.org.apache.flink.runtime.state.KeyGroupRangeAssignment
    max_parallelism = env.get_max_parallelism()
    if max_parallelism <= 0:
        max_parallelism = assignment.computeDefaultMaxParallelism(parallelism)
    keys = []
    for shard in range(shards):
        n = 0
        while True:
            key = jvm.org.apache.flink.types.Row(1)  # the key KeyByKeySelector makes: Row(shard key)
            key.setField(0, f"{shard}-{n}")
            if assignment.assignKeyToParallelOperator(key, max_parallelism, parallelism) == shard % parallelism:
                break
            n += 1
        keys.append(f"{shard}-{n}")
    return keys


def rank_batches(requests: DataStream, config: Config) -> DataStream:
    """The batched ranking stage: scoring requests keyed by shard (in the JVM, like the shoppers),
    ranked many per model call (:class:`jobs.rank_batches.RankBatchFunction`)."""
    jvm = get_gateway().jvm
    j_keyed = requests._j_data_stream.keyBy(jvm.KeyByKeySelector(), Types.ROW([Types.STRING()]).get_java_type_info())
    return (
        KeyedStream(j_keyed, SCORING_TYPE, requests)
        .process(RankBatchFunction(config), output_type=KEYED_BYTES_TYPE)
        .name("rank-batches")
        .uid("rank-batches")
    )

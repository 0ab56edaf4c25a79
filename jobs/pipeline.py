"""The job graph, independent of where events come from and go to.

Tests, offline replays and production all call :func:`build_pipeline` with a
different source and sink, so they run the same graph.
"""

from __future__ import annotations

import os
import site
import sys
from dataclasses import dataclass
from typing import Protocol

from pyflink.common import Configuration, WatermarkStrategy
from pyflink.common.typeinfo import Types
from pyflink.datastream import DataStream, KeyedStream, StreamExecutionEnvironment
from pyflink.java_gateway import get_gateway

from jobs.functions import DLQ_TAG, ENVELOPE_TYPE, KEYED_BYTES_TYPE, LATE_TAG, RecommendFunction
from jobs.layout import PROJECT_ROOT, required_jars
from udfs.config import Config


@dataclass
class PipelineOutputs:
    """Every output stream is Row(key: str, value: msgpack bytes)."""

    recommendations: DataStream
    dead_letters: DataStream
    late_events: DataStream


class Source(Protocol):
    def create(self, env: StreamExecutionEnvironment, watermarks: WatermarkStrategy) -> DataStream: ...


class Sink(Protocol):
    def attach(self, outputs: PipelineOutputs, config: Config) -> None: ...


def flink_configuration(config: Config) -> Configuration:
    """Settings that must be in place before the environment is created."""
    conf = Configuration()
    # Workers must use this interpreter (the one with the project installed), not PATH's.
    conf.set_string("python.executable", sys.executable)
    conf.set_string("python.client.executable", sys.executable)
    conf.set_string("python.execution-mode", config.job.execution_mode)
    conf.set_string("python.fn-execution.bundle.size", str(config.job.python_bundle_size))
    conf.set_string("python.fn-execution.bundle.time", str(config.job.python_bundle_time_ms))
    conf.set_string("state.backend.type", config.job.state_backend)
    return conf


def worker_pythonpath() -> str:
    """site-packages and the project root, for PyFlink's thread mode.

    Thread mode embeds CPython through PEMJA, which starts from the base
    interpreter and does not see a virtualenv's site-packages (nor the .pth of
    an editable install) unless PYTHONPATH names them.
    """
    parts = [*site.getsitepackages(), str(PROJECT_ROOT)]
    current = os.environ.get("PYTHONPATH", "")
    return os.pathsep.join(dict.fromkeys([*parts, *filter(None, current.split(os.pathsep))]))


def create_environment(config: Config) -> StreamExecutionEnvironment:
    jars = required_jars()  # before the JVM starts: a missing jar is a clear error, not a py4j one
    # Must be set before the JVM (and so the embedded interpreter) starts.
    os.environ["PYTHONPATH"] = worker_pythonpath()
    env = StreamExecutionEnvironment.get_execution_environment(flink_configuration(config))
    env.set_parallelism(config.job.parallelism)
    env.set_buffer_timeout(config.job.buffer_timeout_ms)
    if config.job.checkpoint_interval_ms:
        env.enable_checkpointing(config.job.checkpoint_interval_ms)
    env.add_jars(*[f"file://{j}" for j in jars])
    return env


def key_by_user(raw: DataStream, config: Config) -> KeyedStream:
    """Raw records keyed by user, with event-time watermarks, all in the JVM.

    The keyed function is the only Python an event meets: a Python decode, timestamp
    assigner and key selector before the shuffle cost three JVM/Python crossings and
    a pickle round trip per event, and took the GIL from the keyed function in thread
    mode. ``EventEnvelope`` reads just the user id and event time (none for a ts beyond
    wall-clock now + ``job.max_future_skew_ms``, as Python rejects it); the element layout
    is the one PyFlink's own ``key_by`` produces, Row(key, value).
    """
    jvm = get_gateway().jvm
    envelope = jvm.io.streamrec.flink.EventEnvelope
    keyed = raw._j_data_stream.map(envelope(config.job.max_future_skew_ms)).name("envelope").uid("envelope")
    timed = (
        keyed.assignTimestampsAndWatermarks(envelope.watermarks(config.job.out_of_orderness_ms))
        .name("event-time")
        .uid("event-time")
    )
    j_keyed = timed.keyBy(jvm.KeyByKeySelector(), Types.ROW([Types.STRING()]).get_java_type_info())
    return KeyedStream(j_keyed, ENVELOPE_TYPE, DataStream(timed))


def build_pipeline(env: StreamExecutionEnvironment, config: Config, source: Source, sink: Sink,
                   recommend: RecommendFunction | None = None) -> PipelineOutputs:
    """The job graph; ``recommend`` replaces the keyed function (fault-injection tests)."""
    # Watermarks come from the envelope (event time is inside the msgpack payload);
    # the source itself emits none.
    raw = source.create(env, WatermarkStrategy.no_watermarks())
    recs = (
        key_by_user(raw, config)
        .process(recommend or RecommendFunction(config), output_type=KEYED_BYTES_TYPE)
        .name("recommend")
        .uid("recommend")
    )
    outputs = PipelineOutputs(recs, recs.get_side_output(DLQ_TAG), recs.get_side_output(LATE_TAG))
    sink.attach(outputs, config)
    return outputs

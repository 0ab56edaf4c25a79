"""The job graph, independent of where events come from and go to.

Tests, offline replays and production all call :func:`build_pipeline` with a
different source and sink, so they run the same graph.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pyflink.common import Configuration, Duration, WatermarkStrategy
from pyflink.common.typeinfo import Types
from pyflink.datastream import DataStream, StreamExecutionEnvironment

from streamrec.config import Config
from udfs.flink_functions import (
    DLQ_TAG,
    KEYED_BYTES_TYPE,
    LATE_TAG,
    DecodeEvents,
    EventTimestamps,
    RecommendFunction,
    user_key,
)


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
    import site

    root = str(Path(__file__).resolve().parent.parent)
    parts = [*site.getsitepackages(), root]
    current = os.environ.get("PYTHONPATH", "")
    return os.pathsep.join(dict.fromkeys([*parts, *filter(None, current.split(os.pathsep))]))


def create_environment(config: Config, jars: list[str] | None = None) -> StreamExecutionEnvironment:
    # Must be set before the JVM (and so the embedded interpreter) starts.
    os.environ["PYTHONPATH"] = worker_pythonpath()
    env = StreamExecutionEnvironment.get_execution_environment(flink_configuration(config))
    env.set_parallelism(config.job.parallelism)
    if config.job.checkpoint_interval_ms:
        env.enable_checkpointing(config.job.checkpoint_interval_ms)
    if jars:
        env.add_jars(*[f"file://{j}" for j in jars])
    return env


def build_pipeline(env: StreamExecutionEnvironment, config: Config, source: Source, sink: Sink,
                   recommend: RecommendFunction | None = None) -> PipelineOutputs:
    """The job graph; ``recommend`` replaces the keyed function (fault-injection tests)."""
    # Watermarks come after decoding (event time is inside the msgpack payload);
    # the source itself emits none.
    raw = source.create(env, WatermarkStrategy.no_watermarks())
    decoded = raw.process(DecodeEvents(), output_type=Types.PICKLED_BYTE_ARRAY()).name("decode").uid("decode")
    dead_letters = decoded.get_side_output(DLQ_TAG)
    watermarks = (
        WatermarkStrategy.for_bounded_out_of_orderness(Duration.of_millis(config.job.out_of_orderness_ms))
        .with_timestamp_assigner(EventTimestamps())
    )
    timed = decoded.assign_timestamps_and_watermarks(watermarks).name("event-time").uid("event-time")
    recs = (
        timed.key_by(user_key, key_type=Types.STRING())
        .process(recommend or RecommendFunction(config), output_type=KEYED_BYTES_TYPE)
        .name("recommend")
        .uid("recommend")
    )
    outputs = PipelineOutputs(recs, dead_letters, recs.get_side_output(LATE_TAG))
    sink.attach(outputs, config)
    return outputs

"""Running the job: resolve source and sink specs, jars and the artifact, execute.

Used by `streamrec run` (local minicluster) and by `jobs/recommend_job.py`
(`flink run -py` against a cluster), so both run the same code.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamrec.config import Config
from udfs.artifact import verify_manifest

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Endpoint:
    """`kafka` or `file:PATH`."""

    kind: str
    path: Path | None = None

    @classmethod
    def parse(cls, spec: str, flag: str) -> Endpoint:
        if spec == "kafka":
            return cls("kafka")
        if spec.startswith("file:") and len(spec) > 5:
            return cls("file", Path(spec[5:]))
        raise ValueError(f"{flag} must be 'kafka' or 'file:PATH', got {spec!r}")


def absolute_artifact(config: Config) -> Config:
    """Workers may run elsewhere in the file system: pin the artifact path."""
    path = Path(config.ranking.artifact_dir).resolve()
    verify_manifest(path)  # fail in the client, with a clear message, not in a worker
    ranking = config.ranking.model_copy(update={"artifact_dir": str(path)})
    return config.model_copy(update={"ranking": ranking})


def run_job(config: Config, source: Endpoint, sink: Endpoint, recommend: Any = None) -> dict[str, int] | None:
    """Build and execute the pipeline; file sinks get one JSON line per record.

    ``recommend`` (a RecommendFunction subclass instance) is for fault-injection tests.
    """
    from jobs.io import CollectionSource, CollectSink, KafkaEventSource, KafkaSinks, event_rows, write_jsonl
    from jobs.pipeline import build_pipeline, create_environment

    config = absolute_artifact(config)
    env = create_environment(config)
    if source.kind == "kafka":
        src: CollectionSource | KafkaEventSource = KafkaEventSource(config)
    else:
        assert source.path is not None
        src = CollectionSource(event_rows(read_events_file(source.path), f"file:{source.path}"))
    if sink.kind == "kafka":
        build_pipeline(env, config, src, KafkaSinks(config), recommend)
        log.info("submitting streaming job; input %s, output %s", config.kafka.input_topic, config.kafka.output_topic)
        env.execute("streamrec")
        return None
    assert sink.path is not None
    collect = CollectSink()
    build_pipeline(env, config, src, collect, recommend)
    start = time.perf_counter()
    results = collect.run()
    elapsed = time.perf_counter() - start
    sink.path.parent.mkdir(parents=True, exist_ok=True)
    counts = {"recommendations": write_jsonl(sink.path, (v for _, v in results["recommendations"]))}
    for kind, suffix in (("dead_letters", ".dlq.jsonl"), ("late_events", ".late.jsonl")):
        extra = sink.path.with_name(sink.path.name + suffix)
        counts[kind] = write_jsonl(extra, (v for _, v in results[kind])) if results[kind] else 0
        if not results[kind]:
            extra.unlink(missing_ok=True)
    counts["seconds"] = int(elapsed)
    return counts


def read_events_file(path: Path) -> list:
    """Taobao UserBehavior CSV (in file order) or a msgpack events file."""
    from streamrec.data import load_userbehavior, read_events_msgpack

    if not path.is_file():
        raise FileNotFoundError(f"events file not found: {path}")
    if path.suffix in (".msgpack", ".mpk"):
        return read_events_msgpack(path)
    result = load_userbehavior(path)
    report_load(path, result)
    return list(result)


def report_load(path: Path, result: Any) -> None:
    """Say what the loader skipped; an empty run must never look like a clean one."""
    if result.malformed or result.out_of_span:
        log.warning("%s: %d rows, %d events kept, %d malformed (first: %s), %d outside the dataset's span "
                    "(first: %s)", path, result.rows, len(result), result.malformed,
                    result.malformed_examples[:3], result.out_of_span, result.out_of_span_examples[:3])
    if not len(result):
        raise ValueError(f"{path}: no events left after loading ({result.rows} rows); see the warning above")

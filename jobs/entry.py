"""Running the job: flags, source and sink specs, the artifact, execute.

`streamrec run` (local minicluster) and `jobs/recommend_job.py` (`flink run -py`
against a cluster) both call :func:`main` or :func:`run_from_args`, so both take
the same flags and run the same code.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.checkpoints import checkpoint_root, resume_path
from jobs.functions import CatalogRecommendFunction, RecommendFunction
from jobs.io import (
    CollectionSource,
    CollectSink,
    KafkaCatalogSource,
    KafkaEventSource,
    KafkaSinks,
    event_rows,
    write_jsonl,
)
from jobs.pipeline import build_pipeline, create_environment
from udfs.artifact import verify_manifest
from udfs.config import Config, ConfigError
from udfs.errors import InputError, reported
from udfs.flags import JOB_FLAGS, REPORTED_ERRORS, add_config_flags, add_flag, config_from_args, setup_logging
from udfs.logs import load_events
from udfs.privacy import load_key
from udfs.registry import LIVE, RegistryError, verified_version

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
        raise InputError(f"{flag} must be 'kafka' or 'file:PATH', got {spec!r}")


def absolute_artifact(config: Config) -> Config:
    """Workers may run elsewhere in the file system: pin the artifact and registry paths, and check
    every A/B arm's pinned version in the client, with a clear message, not in a worker."""
    path = Path(config.ranking.artifact_dir).resolve()
    verify_manifest(path)  # fail in the client, with a clear message, not in a worker
    registry = Path(config.ranking.registry_dir).resolve()
    for arm in config.ab.arms:
        if arm.model_version != LIVE:
            try:
                verified_version(registry, arm.model_version)
            except RegistryError as exc:
                raise ConfigError(f"ab.arms: arm {arm.name!r}: {exc}") from None
    ranking = config.ranking.model_copy(update={"artifact_dir": str(path), "registry_dir": str(registry)})
    return config.model_copy(update={"ranking": ranking})


def checked_privacy(config: Config) -> Config:
    """With ``privacy.pseudonymize``: read the key once in the client, so a missing or short key stops
    the start naming its source (workers read it again at open()), log its key id, pin the key file's path."""
    privacy = config.privacy
    if not privacy.pseudonymize:
        return config
    key = load_key(privacy)
    log.info("pseudonymous user ids: key %s from %s", key.key_id, key.source)
    if not privacy.key_file:
        return config
    pinned = privacy.model_copy(update={"key_file": str(Path(privacy.key_file).resolve())})
    return config.model_copy(update={"privacy": pinned})


def pinned_resume(config: Config) -> Config:
    """Resolve ``job.resume_from`` (``latest`` scans the checkpoint folder) once, in the client,
    so the log line and the Flink setting name the same checkpoint; logs where state goes."""
    resume = resume_path(config) or ""
    log.info("checkpoints every %d ms to %s (%s backend)%s", config.job.checkpoint_interval_ms,
             checkpoint_root(config), config.job.state_backend,
             f"; resuming from {resume}" if resume else "; fresh start")
    job = config.job.model_copy(update={"resume_from": resume})
    return config.model_copy(update={"job": job})


def run_job(config: Config, source: Endpoint, sink: Endpoint,
            recommend: RecommendFunction | CatalogRecommendFunction | None = None) -> dict[str, int] | None:
    """Build and execute the pipeline; file sinks get one JSON line per record.

    ``recommend`` (a RecommendFunction subclass instance) is for fault-injection tests.
    """
    config = pinned_resume(checked_privacy(absolute_artifact(config)))
    env = create_environment(config)
    catalog: KafkaCatalogSource | None = None
    if source.kind == "kafka":
        src: CollectionSource | KafkaEventSource = KafkaEventSource(config)
        # An unbounded catalog input would keep a bounded file run from ever finishing.
        catalog = KafkaCatalogSource(config)
    else:
        assert source.path is not None
        # File order: event time still applies, so a log grouped by user must be sorted first.
        src = CollectionSource(event_rows(load_events(source.path), f"file:{source.path}"))
    if sink.kind == "kafka":
        build_pipeline(env, config, src, KafkaSinks(config), recommend, catalog)
        log.info("submitting streaming job; input %s, catalog %s, output %s", config.kafka.input_topic,
                 config.kafka.catalog_topic, config.kafka.output_topic)
        env.execute(config.job.name)
        return None
    assert sink.path is not None
    collect = CollectSink()
    build_pipeline(env, config, src, collect, recommend)
    start = time.perf_counter()
    results = collect.run()
    elapsed = time.perf_counter() - start
    sink.path.parent.mkdir(parents=True, exist_ok=True)
    counts = {"recommendations": write_jsonl(sink.path, (v for _, v in results["recommendations"]))}
    for kind, suffix in (("dead_letters", ".dlq.jsonl"), ("late_events", ".late.jsonl"),
                         ("feedback", ".feedback.jsonl")):
        extra = sink.path.with_name(sink.path.name + suffix)
        counts[kind] = write_jsonl(extra, (v for _, v in results[kind])) if results[kind] else 0
        if not results[kind]:
            extra.unlink(missing_ok=True)
    counts["seconds"] = int(elapsed)
    return counts


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `streamrec run` and of `flink run -py jobs/recommend_job.py`."""
    add_flag(p, "run", "--source", "kafka or file:PATH (Taobao CSV or .msgpack)",
             default="kafka")
    add_flag(p, "run", "--sink", "kafka or file:PATH (JSON lines)", default="kafka")
    add_flag(p, "run", "--since", "emit only for events at/after this Unix time (s)")
    add_config_flags(p, list(JOB_FLAGS))


def run_from_args(args: argparse.Namespace) -> int:
    extra: dict[str, dict[str, Any]] = {}
    if args.since:
        extra["job"] = {"since_ms": int(float(args.since) * 1000)}
    cfg = config_from_args(args, extra)
    counts = run_job(cfg, Endpoint.parse(args.source, "--source"), Endpoint.parse(args.sink, "--sink"))
    if counts is not None:
        print(json.dumps(counts))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recommend_job", description="the streamrec job")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        return run_from_args(args)
    except REPORTED_ERRORS as exc:
        print(f"streamrec job: {exc}", file=sys.stderr)
        return reported(exc) or 1

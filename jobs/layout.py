"""Where the project, its entry script and its fetched jars live; the jars every job ships.

The job layer owns this lookup: the job needs the jars at start, and the tools
(local broker, benchmark) reuse ``cache_dir`` for what they fetch and run.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# What `flink run -py` executes on a cluster.
JOB_SCRIPT = PROJECT_ROOT / "jobs" / "recommend_job.py"
FETCH_HINT = "run `make deps` (scripts/fetch_deps.sh fetches them from Maven Central)"
JAVA_HELPERS_JAR = "streamrec-flink.jar"
# Keying and event time run in Java (EventEnvelope, msgpack-core) even with a file
# source, and the Kafka connector carries the source and sinks.
JOB_JAR_PATTERNS = ("flink-sql-connector-kafka-*.jar", "msgpack-core-*.jar", JAVA_HELPERS_JAR)


def cache_dir() -> Path:
    """Where fetched jars and broker state live: ``$STREAMREC_CACHE`` or ``<project>/.cache``."""
    env = os.environ.get("STREAMREC_CACHE")
    return Path(env).expanduser() if env else PROJECT_ROOT / ".cache"


def flink_lib() -> Path:
    return cache_dir() / "flink" / "lib"


def flink_plugins() -> Path:
    """The plugins root the job's JVM gets (FLINK_PLUGINS_DIR): one folder per plugin."""
    return cache_dir() / "flink" / "plugins"


PROMETHEUS_PLUGIN = "metrics-prometheus"
PROMETHEUS_JAR_PATTERN = "flink-metrics-prometheus-*.jar"
PROMETHEUS_FACTORY = "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"


def prometheus_jar() -> Path:
    """Flink's Prometheus reporter as fetched (a plugin folder: a cluster's FLINK_PLUGINS_DIR can be
    the folder above it), or FileNotFoundError with the fetch command."""
    folder = flink_plugins() / PROMETHEUS_PLUGIN
    jars = sorted(folder.glob(PROMETHEUS_JAR_PATTERN))
    if not jars:
        raise FileNotFoundError(f"metrics.prometheus_port is set but {folder} holds no {PROMETHEUS_JAR_PATTERN}; "
                                f"{FETCH_HINT}")
    return jars[-1]


def required_jars() -> list[str]:
    """The newest of each job jar, as absolute paths; a missing one stops the job at start
    with the command that fetches it, not with a py4j error from inside the JVM."""
    lib = flink_lib()
    found = [sorted(lib.glob(pattern)) for pattern in JOB_JAR_PATTERNS]
    missing = [p for p, jars in zip(JOB_JAR_PATTERNS, found, strict=True) if not jars]
    if missing:
        raise FileNotFoundError(
            f"Flink job jars not found in {lib}: {', '.join(missing)}; {FETCH_HINT} "
            "and scripts/build_java.sh builds streamrec-flink.jar"
        )
    return [str(jars[-1].resolve()) for jars in found]

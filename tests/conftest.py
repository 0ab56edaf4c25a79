"""Session fixtures: one real Kafka broker, per-test topics, a small artifact."""

from __future__ import annotations

import inspect
import itertools
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jobs.layout import cache_dir, required_jars
from streamrec.lab.local.kafka import LocalKafka, kafka_classpath

pytest_plugins = ["tests.support.job_fixtures", "tests.support.store_fixtures", "tests.support.serve_fixtures"]


# =============================================================================================
# Local Kafka broker (streamrec.lab.local.kafka)
#
# One real KRaft broker per test session (per xdist worker under `make test`) on free loopback
# ports. Without the fetched jars the tests that need them are skipped locally, but fail under CI
# so a broken setup cannot pass.
# =============================================================================================


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _missing(reason: str) -> None:
    if in_ci():
        pytest.fail(f"CI is set and {reason}", pytrace=False)
    pytest.skip(reason)


def require_kafka_jars() -> str:
    """The broker classpath, or skip (locally) / fail (CI) with the fetch instruction."""
    try:
        return kafka_classpath()
    except FileNotFoundError as exc:
        _missing(str(exc))
        raise


def _jars_present() -> bool:
    try:
        required_jars()
    except FileNotFoundError:
        return False
    return any((cache_dir() / "kafka" / "libs").glob("kafka_2.13-*.jar"))


@pytest.fixture(scope="session")
def kafka_jars() -> str:
    """The broker classpath; tests that request it skip (or fail under CI) without the jars."""
    return require_kafka_jars()


# Every JVM a test starts (brokers, minicluster jobs, standalone clusters, the flink CLI, keytool) lives
# for seconds to a minute: C2 compiles never pay off there, and took a quarter of the suite's CPU.
# JIT tiers change speed only, never behaviour; a deployment keeps the JVM's default.
TEST_JVM_OPTIONS = "-XX:TieredStopAtLevel=1"


def pytest_configure(config: pytest.Config) -> None:
    """C1-only JVMs for everything the tests start (in each xdist worker too), added to any
    ``JAVA_TOOL_OPTIONS`` already set; every JVM reads it, whichever script launches it."""
    current = os.environ.get("JAVA_TOOL_OPTIONS", "")
    if TEST_JVM_OPTIONS not in current.split():
        os.environ["JAVA_TOOL_OPTIONS"] = f"{current} {TEST_JVM_OPTIONS}".strip()


@pytest.fixture(autouse=True)
def _checkpoints_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs started by a test (in this process or a child that inherits the environment)
    checkpoint into the test's own folder, never into the project's ./checkpoints."""
    monkeypatch.setenv("STREAMREC_JOB_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))


# What a test (or a fixture it uses) calls when it trains a torch model.
TRAINING_CALLS = ("train_model(", "retrain(")


def _trains(item: pytest.Item) -> bool:
    """Whether the test or one of its fixtures trains a model: read from their source, so a new
    training test is marked without anyone remembering to."""
    funcs = [getattr(item, "function", None)]
    info = getattr(item, "_fixtureinfo", None)
    for defs in (info.name2fixturedefs.values() if info else ()):
        funcs += [d.func for d in defs]
    for fn in funcs:
        try:
            source = inspect.getsource(fn) if fn is not None else ""
        except (OSError, TypeError):
            continue
        if any(call in source for call in TRAINING_CALLS):
            return True
    return False


def _heaviness(item: pytest.Item) -> int:
    """0 for a standalone-cluster test, 1 for a Flink job, 2 for the broker alone, 3 for the rest."""
    if "cluster" in item.path.parts:
        return 0
    return 1 if item.get_closest_marker("flink") else 2 if item.get_closest_marker("kafka") else 3


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marker ``train`` on every test that trains a torch model (``-m "not train"`` skips them); then
    the heaviest tests first, file order kept within a kind, so that parallel workers
    (``make test``: ``--dist load``) start the minute-long cluster and job tests at once and the
    run ends on short ones instead of one worker finishing a cluster test alone."""
    for item in items:
        if _trains(item):
            item.add_marker(pytest.mark.train)
    items.sort(key=_heaviness)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Every Flink job needs the job jars (EventEnvelope keys events in Java)."""
    if item.get_closest_marker("flink") or item.get_closest_marker("cluster"):
        jars_or_skip()


def jars_or_skip() -> None:
    """Broker jars and the job's Flink jars (connector, msgpack-core, streamrec-flink.jar)."""
    if not _jars_present():
        _missing("Kafka/Flink jars are missing: run `make deps` "
                 "(scripts/fetch_deps.sh, then scripts/build_java.sh)")


@pytest.fixture(scope="session")
def kafka_broker(kafka_jars: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """A running ``LocalKafka``; tests must use their own topics (see ``unique_topic``)."""
    broker = LocalKafka(tmp_path_factory.mktemp("kafka"))
    broker.start(timeout=120)
    try:
        yield broker
    finally:
        broker.stop()


SASL_USER, SASL_PASSWORD = "alice", "alice-secret"


@pytest.fixture(scope="session")
def sasl_kafka_broker(kafka_jars: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """A second ``LocalKafka`` with a SASL_PLAINTEXT (PLAIN) listener for ``SASL_USER``; create topics
    through its plaintext ``bootstrap``, use ``sasl_bootstrap`` for the clients under test."""
    broker = LocalKafka(tmp_path_factory.mktemp("kafka-sasl"), sasl_users={SASL_USER: SASL_PASSWORD})
    broker.start(timeout=120)
    try:
        yield broker
    finally:
        broker.stop()


_topic_counter = itertools.count(1)


@pytest.fixture
def unique_topic(kafka_broker: LocalKafka, request: pytest.FixtureRequest) -> Callable[..., str]:
    """Factory: ``unique_topic(suffix="", partitions=1)`` creates a fresh topic and returns its name.

    Names derive from the test's name plus a session-wide counter, so tests never see each
    other's records on the shared broker.
    """
    base = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[-120:].strip("-") or "test"

    def make(suffix: str = "", partitions: int = 1) -> str:
        parts = [base, re.sub(r"[^a-z0-9]+", "-", suffix.lower()).strip("-"), str(next(_topic_counter))]
        name = "-".join(p for p in parts if p)
        kafka_broker.create_topics([name], partitions=partitions)
        return name

    return make

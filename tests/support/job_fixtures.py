"""Fixtures for job tests: a generated log and a small artifact built from it."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streamrec.kafka_io import consume
from streamrec.lab.generator import generate_events
from streamrec.lab.local.procs import job_env as _job_env
from streamrec.lab.local.procs import stop_group
from tests.support.onnx_fixtures import covisit_scorer
from udfs.artifact import write_artifact
from udfs.candidates import build_tables
from udfs.features import Vocab

T_START = 1_700_000_000_000


def generated_log(n: int = 4000, seed: int = 3):
    return generate_events(n, n_users=60, n_items=400, n_categories=12, seed=seed,
                           start_ts_ms=T_START, duration_s=2 * 86400)


@pytest.fixture(scope="session")
def fixture_artifact(tmp_path_factory) -> Path:
    """Real candidate tables from a generated log, scored by the covisit-scorer graph.

    For tests of the job's plumbing, where expected lists must be derivable from
    the inputs; the trained model has its own tests (test_model.py).
    """
    return covisit_artifact(tmp_path_factory.mktemp("artifact"), "fixture-covisit")


def covisit_artifact(d: Path, model_version: str) -> Path:
    """The fixture artifact under another ``model_version``, in ``d``/art (hot swap and A/B tests)."""
    d.mkdir(parents=True, exist_ok=True)
    log = generated_log()
    items: dict = {}
    cats: dict = {}
    for e in log:
        items[e.item_id] = items.get(e.item_id, 0) + 1
        cats[e.category_id] = cats.get(e.category_id, 0) + 1
    model = covisit_scorer(d / "scorer.onnx", seq_len=50)
    return write_artifact(d / "art", model, Vocab.build(items, cats, 2), build_tables(log),
                          {"model_version": model_version, "seq_len": 50, "opset": 17})


def job_env(bootstrap: str, topics: dict[str, str], artifact: Path, **extra: str) -> dict[str, str]:
    """Environment for a `streamrec run` subprocess: the tests' settings, then ``extra`` env vars.

    A test that names no control topic gets its own (after its input topic): model announcements
    of one test never reach another's job."""
    topics = {"control_topic": topics["input_topic"] + "-control", **topics}
    env = _job_env(bootstrap, topics, artifact, settings={
        "kafka": {"group_id": "g-" + topics["input_topic"]},
        "ranking": {"provider": "cpu"},
        "job": {"checkpoint_interval_ms": 2000},
    })
    env.update(extra)
    return env


RUN_KAFKA = [sys.executable, "-m", "streamrec.cli", "run", "--source", "kafka", "--sink", "kafka"]


def launch_job(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """`streamrec run` between Kafka topics, in its own process group, output to ``log_path``."""
    with log_path.open("wb") as log:
        return subprocess.Popen(RUN_KAFKA, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture
def kafka_jobs(kafka_broker, fixture_artifact, tmp_path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Factory: ``kafka_jobs(topics, **extra_env)`` starts a job on the fixture artifact; all stop after the test."""
    procs: list[subprocess.Popen] = []

    def start(topics: dict[str, str], **extra: str) -> subprocess.Popen:
        env = job_env(kafka_broker.bootstrap, topics, fixture_artifact, **extra)
        procs.append(launch_job(env, tmp_path / f"job{len(procs)}.log"))
        return procs[-1]

    yield start
    for proc in procs:
        stop_group(proc)


def read_lists(bootstrap: str, topic: str, want: int, job: subprocess.Popen, timeout_s: float = 180) -> list[dict]:
    """The topic's values from its beginning, read again until ``want`` are there, the job has died or
    ``timeout_s`` has passed."""
    out: list = []
    deadline = time.monotonic() + timeout_s
    while len(out) < want and time.monotonic() < deadline and job.poll() is None:
        out = [r.value for r in consume(bootstrap, topic, timeout_s=4)]
    return out

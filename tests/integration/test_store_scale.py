"""A store's state: 60,000 shoppers on durable checkpoints, then a resume from the latest one.

JobManager memory holds at most 5 MiB of checkpointed state; past that every
checkpoint failed and the job restarted in a loop. Here the state passes that
cap, checkpoints run every 2 s, and the job must neither fail a checkpoint nor
restart, and must give every event its list. A second run resumes from the
newest retained checkpoint and continues each shopper's sequence numbers.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jobs.rest_tls import ensure_rest_tls, rest_get
from streamrec.kafka_io import consume, replay
from streamrec.lab.generator import generate_events
from streamrec.lab.local.kafka import free_ports
from streamrec.lab.local.procs import stop_group
from tests.support.job_fixtures import T_START, job_env, launch_job
from udfs.config import TOPIC_FIELDS
from udfs.events import Event

pytestmark = [pytest.mark.kafka, pytest.mark.flink]

SHOPPERS = 60_000
EVENTS_EACH = 1
MEMORY_CAP = 5 * 1024 * 1024  # JobManager-memory checkpoint storage's limit


def store_log() -> list[Event]:
    """60,000 shoppers with one event each (their state is still four times the JobManager's 5 MiB cap,
    asserted below), cut from a generated log's sessions so the items, categories and time order stay
    those of a real-looking stream."""
    base = generate_events(SHOPPERS * EVENTS_EACH, n_users=600, n_items=400, n_categories=12, seed=7,
                           start_ts_ms=T_START, duration_s=2 * 86400)
    seen: Counter[Any] = Counter()
    out = []
    for e in base:
        k = seen[e.user_id]
        seen[e.user_id] += 1
        out.append(e._replace(user_id=int(e.user_id) * 100_000 + k // EVENTS_EACH))
    return out


def rest(port: int, path: str) -> Any:
    """The local run's REST API, over the mutual TLS it takes by default (job.rest_auth)."""
    return rest_get(f"127.0.0.1:{port}", path, ensure_rest_tls())


def running_job_id(port: int, timeout_s: float = 120) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            jobs = [j for j in rest(port, "/jobs")["jobs"] if j["status"] == "RUNNING"]
            if jobs:
                return str(jobs[0]["id"])
        except (OSError, urllib.error.URLError, KeyError):
            pass
        time.sleep(1)
    raise AssertionError(f"no running job on the REST port {port} within {timeout_s}s")


def restarts(port: int, job_id: str, timeout_s: float = 60) -> int:
    """Flink's numRestarts; the REST metric cache fills a few seconds after a job starts."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = rest(port, f"/jobs/{job_id}/metrics?get=numRestarts")
        if found:
            return int(float(found[0]["value"]))
        time.sleep(2)
    raise AssertionError(f"no numRestarts metric for {job_id} within {timeout_s}s")


STARTING = "Not all required tasks are currently running"


def wait_all_running(port: int, job_id: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(v["status"] == "RUNNING" for v in rest(port, f"/jobs/{job_id}")["vertices"]):
            return
        time.sleep(0.5)
    raise AssertionError(f"tasks of {job_id} not all running within {timeout_s}s")


def trigger_aborts_while_starting(log_dir: Path) -> int:
    """Flink triggers checkpoints on schedule while the keyed task still loads the model and
    counts each aborted trigger as a failed checkpoint; its log says which ones those were."""
    text = "".join(f.read_text(errors="replace") for f in log_dir.glob("*.log"))
    return sum(1 for line in text.splitlines() if "Failed to trigger checkpoint" in line and STARTING in line)


def job_figures(port: int, job_id: str) -> dict[str, Any]:
    ck = rest(port, f"/jobs/{job_id}/checkpoints")
    latest = (ck.get("latest") or {}).get("completed") or {}
    failures = [h.get("failure_message") for h in ck.get("history", []) if h.get("status") == "FAILED"]
    return {"failures": failures, "completed": ck["counts"]["completed"], "failed": ck["counts"]["failed"],
            "restored": ck["counts"]["restored"], "restarts": restarts(port, job_id),
            "state_bytes": int(latest.get("state_size") or latest.get("checkpointed_size") or 0)}


def _group_pids(pgid: int) -> list[str]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended
        if int(fields[2]) == pgid:
            out.append(stat.parent.name)
    return out


def _socket_inodes(pid: str) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").glob("*"):
        try:
            target = fd.readlink().name
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _address(hex_addr: str) -> str:
    ip, port = hex_addr.split(":")
    raw = bytes.fromhex(ip)
    if len(raw) == 4:  # /proc/net/tcp: little-endian IPv4
        host = ".".join(str(b) for b in raw[::-1])
    else:  # tcp6: four little-endian 32-bit words
        words = [raw[i:i + 4][::-1] for i in range(0, 16, 4)]
        full = b"".join(words)
        host = ipaddress.IPv6Address(full).compressed
        mapped = ipaddress.IPv6Address(full).ipv4_mapped
        host = str(mapped) if mapped else host
    return f"{host}:{int(port, 16)}"


def listeners(pgid: int) -> list[str]:
    """host:port of every TCP socket a process of this group listens on, read from /proc."""
    inodes: set[str] = set()
    for pid in _group_pids(pgid):
        inodes |= _socket_inodes(pid)
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                found.append(_address(cols[1]))
    return found


def collect(bootstrap: str, topic: str, done: Callable[[list[dict[str, Any]]], bool], job: subprocess.Popen,
            timeout_s: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while not done(out) and time.monotonic() < deadline and job.poll() is None:
        out += [r.value for r in consume(bootstrap, topic, timeout_s=5, group_id=f"verify-{topic}")]
    return out


def start(kafka_broker, topics, artifact, tmp_path, name: str, port: int, **extra: str) -> subprocess.Popen:
    logs = tmp_path / f"{name}-flink-log"
    logs.mkdir()
    env = job_env(kafka_broker.bootstrap, topics, artifact, STREAMREC_JOB_REST_PORT=str(port), FLINK_LOG_DIR=str(logs),
                  STREAMREC_RANKING_N_CANDIDATES="20", STREAMREC_RANKING_TOP_K="10", **extra)
    return launch_job(env, tmp_path / f"{name}.log")


def test_sixty_thousand_shoppers_checkpoint_durably_and_resume(kafka_broker, unique_topic, fixture_artifact,
                                                               tmp_path) -> None:
    topics = {f: unique_topic(f.split("_")[0]) for f in TOPIC_FIELDS}
    events = store_log()
    assert len({e.user_id for e in events}) >= SHOPPERS
    port = free_ports(1)[0]
    job = start(kafka_broker, topics, fixture_artifact, tmp_path, "first", port)
    try:
        wait_all_running(port, running_job_id(port))
        replay(events, kafka_broker.bootstrap, topics["input_topic"])
        lists = collect(kafka_broker.bootstrap, topics["output_topic"], lambda out: len(out) >= len(events), job,
                        timeout_s=900)
        assert job.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        job_id = running_job_id(port)
        time.sleep(5)  # one more checkpoint after the last list
        figures = job_figures(port, job_id)
        starting_failures = trigger_aborts_while_starting(tmp_path / "first-flink-log")
        figures["failed"] -= starting_failures
        report = {"shoppers": SHOPPERS, "events": len(events), "lists": len(lists),
                  "failed_while_starting": starting_failures, **figures}
        (tmp_path / "figures.json").write_text(json.dumps(report))
        print("store scale:", json.dumps(report))
        assert figures["state_bytes"] > MEMORY_CAP, figures  # the case JobManager memory cannot hold
        assert figures["failed"] == 0 and figures["completed"] >= 3, figures
        assert figures["restarts"] == 0, figures
        keys = Counter((r["user_id"], r["seq"]) for r in lists)
        assert len(lists) == len(events) and max(keys.values()) == 1, "one list per event, no repeats"
        # Web submission is off: the jar-upload endpoints are gone.
        with pytest.raises(urllib.error.HTTPError):
            rest(port, "/jars")
        bound = listeners(job.pid)
        assert f"127.0.0.1:{port}" in bound, bound
        assert all(addr.startswith(("127.0.0.1:", "::1:")) for addr in bound), f"listening beyond loopback: {bound}"
    finally:
        stop_group(job)  # the minicluster dies with its process: no cancel, the checkpoints stay

    last_seq = {}
    for r in lists:
        last_seq[r["user_id"]] = max(last_seq.get(r["user_id"], 0), r["seq"])
    returning = sorted(last_seq)[:: SHOPPERS // 500][:500]
    t_next = max(e.ts for e in events) + 60_000
    more = [Event(u, events[i].item_id, events[i].category_id, "pv", t_next + i) for i, u in enumerate(returning)]
    port2 = free_ports(1)[0]
    job2 = start(kafka_broker, topics, fixture_artifact, tmp_path, "resumed", port2,
                 STREAMREC_JOB_RESUME_FROM="latest")
    try:
        replay(more, kafka_broker.bootstrap, topics["input_topic"])
        after = collect(kafka_broker.bootstrap, topics["output_topic"],
                        lambda out: sum(r["trigger"]["ts"] >= t_next for r in out) >= len(more), job2, timeout_s=300)
        assert job2.poll() is None, (tmp_path / "resumed.log").read_text()[-3000:]
        figures2 = job_figures(port2, running_job_id(port2))
    finally:
        stop_group(job2)
    assert figures2["restored"] == 1, figures2
    fresh = [r for r in after if r["trigger"]["ts"] >= t_next]
    assert sorted(r["user_id"] for r in fresh) == sorted(returning)
    for r in fresh:  # state came back: each sequence continues where the first run left it
        assert r["seq"] == last_seq[r["user_id"]] + 1, r
    replayed = [r for r in after if r["trigger"]["ts"] < t_next]
    first = {(r["user_id"], r["seq"]): r["items"] for r in lists}
    for r in replayed:  # events after the restored checkpoint come again, with the same lists
        assert first[(r["user_id"], r["seq"])] == r["items"]

"""The job with privacy.pseudonymize on a real broker: no raw user id leaves it.

Events under distinctive string ids, a late event and poison records go in; then every
topic the job wrote (outputs, late, dead letters), its checkpointed state and its logs
(the client's output and the minicluster's log file) are scanned byte by byte for the
raw ids: none. The input topic, which holds them, is scanned the same way first, so the
scan is shown to find what it looks for.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest
from kafka import KafkaConsumer

from streamrec.kafka_io import consume, replay
from streamrec.lab.local.procs import stop_group
from streamrec.serve.follower import Follower
from streamrec.serve.store import SqliteStore
from tests.support.job_fixtures import generated_log
from udfs.config import env_var

pytestmark = [pytest.mark.kafka, pytest.mark.flink]

TOO_BIG = 2**64 - 1  # an id outside int64: its dead-letter reason would quote it


def _raw_id(n: object) -> str:
    return f"raw-shopper-{n}-q7x"


def _replay_raw_shoppers(bootstrap: str, topic: str) -> tuple[list, int]:
    """The generated log under distinctive raw ids, sent to ``topic``; the events and how many the job
    accepts (duplicates are not)."""
    events = [e._replace(user_id=_raw_id(e.user_id)) for e in generated_log(150, seed=12)]
    replay(events, bootstrap, topic)
    return events, len({(e.user_id, e.item_id, e.behavior, e.ts) for e in events})


def _all_bytes(bootstrap: str, topic: str) -> list[bytes]:
    """Every key and value of a topic, as written."""
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, isolation_level="read_committed", consumer_timeout_ms=5000)
    try:
        return [part for msg in consumer for part in (msg.key or b"", msg.value or b"")]
    finally:
        consumer.close()


def _wait_for(bootstrap: str, topic: str, n: int, job: subprocess.Popen, log: Path, timeout_s: float = 180) -> list:
    out: list = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline and job.poll() is None:
        out += list(consume(bootstrap, topic, timeout_s=5, group_id="verify-" + topic))
    assert job.poll() is None, "job died:\n" + log.read_text()[-3000:]
    assert len(out) == n, f"{topic}: {len(out)} of {n}"
    return out


def _pseudonyms(key_file: Path, ids: list[str]) -> dict[str, str]:
    """What the storefront runs: `streamrec pseudonym ID ...`."""
    done = subprocess.run([sys.executable, "-m", "streamrec.cli", "pseudonym", "--key-file", str(key_file), *ids],
                          capture_output=True, text=True, check=True)
    return dict(zip(ids, done.stdout.split(), strict=True))


def test_pseudonymous_job_writes_no_raw_user_id(kafka_broker, unique_topic, kafka_jobs, tmp_path):
    topics = {f: unique_topic(f.split("_")[0]) for f in ("input_topic", "output_topic", "dlq_topic", "late_topic")}
    key_file = tmp_path / "pseudonym.key"
    key_file.write_text(secrets.token_hex(32) + "\n")
    checkpoints = tmp_path / "checkpoints"
    flink_logs = tmp_path / "flink-log"  # the minicluster's own log (the workers' Python logging goes there)
    job = kafka_jobs(topics, **{env_var("privacy", "pseudonymize"): "true",
                                env_var("privacy", "key_file"): str(key_file),
                                env_var("job", "checkpoint_dir"): str(checkpoints),
                                "FLINK_LOG_DIR": str(flink_logs)})
    log = tmp_path / "job0.log"
    bootstrap = kafka_broker.bootstrap

    events, accepted = _replay_raw_shoppers(bootstrap, topics["input_topic"])
    lists = _wait_for(bootstrap, topics["output_topic"], accepted, job, log)

    time.sleep(2)  # the watermark passes the stream's end, so the stale event below is late
    stale = events[-1]._replace(user_id=_raw_id("late"), ts=max(e.ts for e in events) - 3_600_000)
    poison = [
        msgpack.packb({**stale._replace(user_id=_raw_id("poison"), ts=stale.ts + 1).to_wire(), "behavior": "hop"}),
        msgpack.packb({**stale.to_wire(), "user_id": TOO_BIG}),
        b"\xc1" + _raw_id("junk").encode(),
    ]
    replay([stale, *poison], bootstrap, topics["input_topic"])
    late = _wait_for(bootstrap, topics["late_topic"], 1, job, log, timeout_s=60)
    dead = _wait_for(bootstrap, topics["dlq_topic"], len(poison), job, log, timeout_s=60)
    time.sleep(5)  # two checkpoint intervals: the state of every shopper is on disk
    stop_group(job)

    raw_ids = sorted({e.user_id for e in events} | {_raw_id(n) for n in ("late", "poison", "junk")})
    needles = [i.encode() for i in raw_ids] + [str(TOO_BIG).encode()]
    given = _all_bytes(bootstrap, topics["input_topic"])
    assert all(any(n in b for b in given) for n in needles[:-1]), "the scan cannot find the raw ids it was fed"

    written = [b for field in ("output_topic", "late_topic", "dlq_topic") for b in _all_bytes(bootstrap, topics[field])]
    state = [p.read_bytes() for p in checkpoints.rglob("*") if p.is_file()]
    text = log.read_bytes() + b"".join(p.read_bytes() for p in flink_logs.rglob("*") if p.is_file())
    assert state and any(len(s) > 1000 for s in state), "no checkpointed state to scan"
    assert b"INFO jobs.entry: pseudonymous user ids: key" in text  # the client's log
    assert b"streamrec pseudonymous user ids: key" in text  # the keyed function's, in the minicluster's log
    for needle in needles:
        assert not any(needle in b for b in written), needle
        assert not any(needle in s for s in state), needle
        assert needle not in text, needle
    assert key_file.read_text().strip().encode() not in text

    alias = _pseudonyms(key_file, raw_ids)
    users = {e.user_id for e in events}
    assert {r.key.decode() for r in lists} == {alias[u] for u in users}
    assert all(r.value["user_id"] == r.key.decode() for r in lists)
    assert late[0].key.decode() == late[0].value["event"]["user_id"] == alias[_raw_id("late")]
    assert sorted(d.value["reason"] for d in dead) == ["not_msgpack", "out_of_range:user_id", "unknown_behavior"]
    assert all(d.value["raw"] == b"" and d.value["raw_redacted"] for d in dead)


def _lists_topic(bootstrap: str, topic: str, want: int, job: subprocess.Popen, log: Path,
                 timeout_s: float = 180) -> list:
    """The lists topic from its start, tombstones included, read again until ``want`` records are there."""
    out: list = []
    deadline = time.monotonic() + timeout_s
    while len(out) < want and time.monotonic() < deadline and job.poll() is None:
        out = list(consume(bootstrap, topic, timeout_s=4, tombstones=True))
    assert job.poll() is None, "job died:\n" + log.read_text()[-3000:]
    assert len(out) == want, f"{topic}: {len(out)} of {want}"
    return out


def test_streamrec_forget_erases_a_pseudonymous_shopper_from_the_job_and_the_serve_view(
        kafka_broker, unique_topic, kafka_jobs, tmp_path):
    """The storefront runs `streamrec forget RAW_ID`: the job (pseudonymizing) drops the shopper's state and
    writes a tombstone under their pseudonym after their lists; the serve view deletes their list; their
    next event starts a new history (seq 1). Nobody else's list changes."""
    topics = {f: unique_topic(f.split("_")[0]) for f in ("input_topic", "output_topic")}
    key_file = tmp_path / "pseudonym.key"
    key_file.write_text(secrets.token_hex(32) + "\n")
    job = kafka_jobs(topics, **{env_var("privacy", "pseudonymize"): "true",
                                env_var("privacy", "key_file"): str(key_file)})
    log = tmp_path / "job0.log"
    bootstrap = kafka_broker.bootstrap
    events, accepted = _replay_raw_shoppers(bootstrap, topics["input_topic"])
    _lists_topic(bootstrap, topics["output_topic"], accepted, job, log)

    victim = events[0].user_id
    alias = _pseudonyms(key_file, [victim])[victim]
    done = subprocess.run([sys.executable, "-m", "streamrec.cli", "forget", "--bootstrap-servers", bootstrap,
                           "--topic", topics["input_topic"], victim], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout)["erase_requests"] == 1
    lists = _lists_topic(bootstrap, topics["output_topic"], accepted + 1, job, log)
    last = lists[-1]
    assert last.tombstone and last.key.decode() == alias
    assert sum(r.tombstone for r in lists) == 1

    store = SqliteStore(tmp_path / "view.sqlite", topics["output_topic"])
    follower = Follower(store, bootstrap, topics["output_topic"])
    follower.start()
    try:
        assert follower.ready.wait(60), follower.last_error
        shoppers = {r.key.decode() for r in lists}
        assert store.get(alias) is None and store.count() == len(shoppers) - 1 and follower.erased == 1
        assert all(store.get(s) is not None for s in shoppers - {alias})

        again = events[-1]._replace(user_id=victim, ts=max(e.ts for e in events) + 1000)
        replay([again], bootstrap, topics["input_topic"])
        fresh = _lists_topic(bootstrap, topics["output_topic"], accepted + 2, job, log)[-1]
        assert fresh.key.decode() == alias and fresh.value["seq"] == 1
        deadline = time.monotonic() + 30
        while store.get(alias) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        stored = store.get(alias)
        assert stored is not None and stored.record.seq == 1
    finally:
        follower.stop()


def test_nothing_of_an_erased_shopper_stays_in_checkpointed_state_and_a_restore_does_not_bring_them_back(
        kafka_broker, unique_topic, kafka_jobs, tmp_path):
    """With the default state backend (hashmap): after the erase request and a few checkpoints, no file
    under the checkpoint folder holds the erased shopper's id (every other shopper's is there: the scan
    finds what it looks for). A job restored from the latest checkpoint gives the erased shopper seq 1 on
    their next event and another shopper the next seq of the history it kept. (RocksDB keeps erased keys
    in the SST files checkpoints copy until it compacts them: docs/operations.md "Erasing a shopper".)"""
    topics = {f: unique_topic(f.split("_")[0]) for f in ("input_topic", "output_topic")}
    checkpoints = tmp_path / "checkpoints"
    settings = {env_var("job", "checkpoint_dir"): str(checkpoints)}
    job = kafka_jobs(topics, **settings)
    log = tmp_path / "job0.log"
    bootstrap = kafka_broker.bootstrap
    events, accepted = _replay_raw_shoppers(bootstrap, topics["input_topic"])
    lists = _lists_topic(bootstrap, topics["output_topic"], accepted, job, log)
    victim, other = events[0].user_id, next(e.user_id for e in events if e.user_id != events[0].user_id)
    others_seq = max(r.value["seq"] for r in lists if r.key.decode() == other)

    subprocess.run([sys.executable, "-m", "streamrec.cli", "forget", "--bootstrap-servers", bootstrap,
                    "--topic", topics["input_topic"], victim], capture_output=True, text=True, check=True)
    assert _lists_topic(bootstrap, topics["output_topic"], accepted + 1, job, log)[-1].tombstone
    time.sleep(8)  # the quiet-flush timer has fired, and checkpoints after the request replaced those before
    stop_group(job)

    state = {p: p.read_bytes() for p in checkpoints.rglob("*") if p.is_file()}
    assert any(other.encode() in b for b in state.values()), "the scan cannot find a shopper's id in state"
    assert [p for p, b in state.items() if victim.encode() in b] == []

    job = kafka_jobs(topics, **settings, **{env_var("job", "resume_from"): "latest"})
    log = tmp_path / "job1.log"
    last_ts = max(e.ts for e in events)
    again = [events[-1]._replace(user_id=victim, ts=last_ts + 1000),
             events[-1]._replace(user_id=other, ts=last_ts + 2000)]
    replay(again, bootstrap, topics["input_topic"])
    after = _lists_topic(bootstrap, topics["output_topic"], accepted + 3, job, log)[-2:]
    assert {r.key.decode(): r.value["seq"] for r in after} == {victim: 1, other: others_seq + 1}

"""Savepoint, stop, restart from the savepoint, also after a state-layout upgrade: every user's state is kept.

Against a real broker and a standalone cluster, like test_cluster_submit.py. Each list
on the output topic carries the user's ``seq`` (``UserState.emitted`` after the event)
and its trigger event, so the output shows whether the restored job had the users' state:

- lost state restarts a user's ``seq`` at 1 after the restart, recommends items the user
  bought before it, and ranks from an empty history; every list is compared with an
  offline replay of the whole log through the same ``Recommender`` (continuous state),
  and the test checks that this replay with state dropped at the restart would differ;
- the upgrade case runs the pre-v2 layout first (tests/support/savepoint_job.py v1-writer), then
  the current job, then a probe that reads every user's stored state as the current job
  left it in a second savepoint, and compares it field by field with the offline replay.

Before each resubmission the TaskManagers are replaced by fresh ones: a TaskManager runs one
thread-mode PyFlink job per lifetime (docs/operations.md; on the same TaskManager the restored job fails
at open() with ``NoSuchFieldException: loadedLibraryNames``, whatever its state).

In-stream trending is switched off (``ranking.trending_half_life_s=0``): its counts live in
the operator's memory, not in keyed state, so they start empty after any restore and would
make lists after a restart differ for a reason other than user state.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from jobs.layout import JOB_SCRIPT, PROJECT_ROOT
from streamrec.kafka_io import ConsumedRecord, consume, replay
from streamrec.lab.local.flink_cluster import StandaloneCluster
from tests.support.job_fixtures import generated_log, job_env
from tests.support.scenario import PeakRss, marked_rss_kb, report
from tests.support.state_versions import state_version, to_v1_bytes
from udfs.config import Config, env_var, load_config
from udfs.events import Event
from udfs.feedback import remember
from udfs.runtime import build_recommender, item_knowledge
from udfs.state import UserState

pytestmark = [pytest.mark.cluster, pytest.mark.kafka]

JOB = str(JOB_SCRIPT)
TEST_JOB = str(PROJECT_ROOT / "tests" / "support" / "savepoint_job.py")
ARGS = ["--source", "kafka", "--sink", "kafka"]

Key = tuple[Any, Any, str, int]  # a list's trigger: (user, item, behavior, ts)


def key_of(e: Event) -> Key:
    return (e.user_id, e.item_id, e.behavior, e.ts)


def trigger(r: ConsumedRecord) -> Key:
    v = r.value
    t = v["trigger"]
    return (v["user_id"], t["item_id"], t["behavior"], t["ts"])


# ---------------------------------------------------------------------------------------------
# Offline replay: what a job that never lost state emits
# ---------------------------------------------------------------------------------------------


class Replay:
    """The job's per-event work (item rows, ``Recommender.apply``/``request``/``recommend``) over a
    log, with users' state kept in a dict; ``restart`` passes every state through its stored bytes,
    as a savepoint and restore do (``encode`` rewrites them, e.g. to the v1 layout). The item rows
    are keyed state of their own operators: a savepoint keeps them as they are, so they live on."""

    def __init__(self, config: Config) -> None:
        self.rec = build_recommender(config)
        self.items = item_knowledge(config, self.rec.artifact)
        self.kept_rows = config.items.kept_rows
        self.states: dict[Any, UserState] = {}

    def feed(self, events: Iterable[Event], encode: Callable[[bytes], bytes] | None = None) -> dict[Key, dict]:
        """``encode``: the job stores each user's state through it after every event (an old job's
        layout, which keeps less: the v1 layout has no item rows, so none carry to the next event)."""
        out = {}
        for e in events:
            st = self.states.setdefault(e.user_id, UserState())
            row = self.items.observe(str(e.user_id), e) if self.items is not None else None
            if self.rec.apply(st, e, row, self.kept_rows):
                out[key_of(e)] = record = self.rec.recommend([self.rec.request(st, e)])[0]
                remember(st, record)  # the list the job keeps for online feedback
            if encode is not None:
                self.states[e.user_id] = UserState.from_bytes(encode(st.to_bytes()))
        return out

    def restart(self, encode: Callable[[bytes], bytes] | None = None) -> None:
        self.states = {u: UserState.from_bytes(encode(s.to_bytes()) if encode else s.to_bytes())
                       for u, s in self.states.items()}


# ---------------------------------------------------------------------------------------------
# Cluster and topic plumbing
# ---------------------------------------------------------------------------------------------


def setup_env(kafka_broker, unique_topic, artifact: Path) -> tuple[dict[str, str], dict[str, str], Config]:
    topics = {f: unique_topic(f.split("_")[0]) for f in ("input_topic", "output_topic", "dlq_topic", "late_topic")}
    env = job_env(kafka_broker.bootstrap, topics, artifact, **{env_var("ranking", "trending_half_life_s"): "0"})
    config = load_config(environ=env)
    # The default guarantee, which job_env keeps. At-least-once may duplicate after a failure
    # (replay from a checkpoint), but a stop-with-savepoint is no failure: the savepoint's
    # source offsets are exactly what was processed and the sink flushed at the savepoint
    # barrier, so the test asserts no duplicates, and that no run recorded a failure.
    assert config.kafka.delivery_guarantee == "at-least-once"
    return topics, env, config


def read_until(bootstrap: str, topic: str, want: int, cluster: StandaloneCluster, job_id: str,
               timeout: float = 150) -> list[ConsumedRecord]:
    """Everything on ``topic`` once at least ``want`` lists are there, plus any that follow within a few seconds."""
    deadline = time.monotonic() + timeout
    out: list[ConsumedRecord] = []
    while len(out) < want:
        state = cluster.job_state(job_id)
        assert state in ("CREATED", "INITIALIZING", "RUNNING"), f"job {job_id} is {state}"
        assert_no_failures(cluster, job_id)  # fail fast, with the cause, rather than time out
        assert time.monotonic() < deadline, f"{len(out)}/{want} lists after {timeout}s (job {state})"
        out = list(consume(bootstrap, topic, timeout_s=2))
    time.sleep(2)  # anything extra (a duplicate) arrives too
    return list(consume(bootstrap, topic, timeout_s=2))


def resume_from_savepoint(cluster: StandaloneCluster, job_id: str, savepoint_dir: Path, env: dict[str, str],
                          send_while_down: Callable[[], None], script: str, job_args: list[str]) -> tuple[str, str]:
    """Stop ``job_id`` with a savepoint, send input while no job runs, and resubmit ``script``
    from the savepoint on fresh TaskManagers (docs/operations.md: one thread-mode job per TaskManager
    lifetime); returns (new job id, savepoint path)."""
    savepoint = cluster.stop_with_savepoint(job_id, savepoint_dir)
    send_while_down()
    cluster.restart_taskmanagers()
    return cluster.submit_python(script, job_args, env=env, python=sys.executable, savepoint=savepoint), savepoint


def assert_clean_restore(cluster: StandaloneCluster, job_id: str, savepoint: str) -> None:
    assert cluster.job_state(job_id) == "RUNNING"
    restored = cluster.restored_from(job_id)
    assert restored is not None and restored.removeprefix("file:").rstrip("/") == \
        savepoint.removeprefix("file:").rstrip("/"), f"restored from {restored!r}, not the savepoint {savepoint!r}"
    assert_no_failures(cluster, job_id)


def assert_no_failures(cluster: StandaloneCluster, job_id: str) -> None:
    entries = cluster.rest(f"/jobs/{job_id}/exceptions").get("exceptionHistory", {}).get("entries", [])
    assert not entries, (f"job {job_id} failed ({len(entries)}x): {entries[0].get('stacktrace', '')[:1500]}\n"
                         f"logs in {cluster.log_dir}")


# ---------------------------------------------------------------------------------------------
# What the output must show
# ---------------------------------------------------------------------------------------------


def check_lists(out: list[ConsumedRecord], expected: dict[Key, dict]) -> None:
    """One list per distinct event, none extra, each with the seq and items of the replay."""
    got = Counter(trigger(r) for r in out)
    missing = expected.keys() - got.keys()
    extra = got.keys() - expected.keys()
    dups = {k: n for k, n in got.items() if n > 1}
    assert not missing, f"{len(missing)}/{len(expected)} events without a list, e.g. {sorted(missing)[:3]}"
    assert not extra, f"{len(extra)} lists for no input event, e.g. {sorted(extra)[:3]}"
    assert not dups, f"{len(dups)} events with more than one list, e.g. {list(dups.items())[:3]}"
    bad_seq, bad_items = [], []
    for r in out:
        want = expected[trigger(r)]
        if r.value["seq"] != want["seq"]:
            bad_seq.append((trigger(r), r.value["seq"], want["seq"]))
        if r.value["items"] != want["items"]:
            bad_items.append((trigger(r), r.value["items"], want["items"]))
    assert not bad_seq, (f"{len(bad_seq)} lists with the wrong seq (trigger, got, want), e.g. {bad_seq[:3]}: "
                         "a seq starting over after the restart means the user's state was lost")
    assert not bad_items, (f"{len(bad_items)} lists differ from the replay with state kept (trigger, got, want), "
                           f"e.g. {bad_items[:1]}")


def check_seq_continues(before: list[ConsumedRecord], after: list[ConsumedRecord]) -> int:
    """Per user, the first seq after the restart follows the last one before it; returns how
    many users had lists on both sides."""
    last: dict[Any, int] = {}
    for r in before:
        last[r.value["user_id"]] = max(last.get(r.value["user_id"], 0), r.value["seq"])
    first: dict[Any, int] = {}
    for r in after:
        first[r.value["user_id"]] = min(first.get(r.value["user_id"], 1 << 62), r.value["seq"])
    both = last.keys() & first.keys()
    broken = {u: (last[u], first[u]) for u in both if first[u] != last[u] + 1}
    assert not broken, f"seq does not continue across the restart (last before, first after): {broken}"
    assert all(first[u] == 1 for u in first.keys() - last.keys())
    return len(both)


def check_bought_excluded(pre_events: list[Event], after: list[ConsumedRecord]) -> int:
    """No list after the restart holds an item its user bought before it; returns how many
    such lists had bought items to exclude."""
    bought: dict[Any, set] = defaultdict(set)
    for e in pre_events:
        if e.behavior == "buy":
            bought[e.user_id].add(e.item_id)
    shown = [(r.value["user_id"], sorted(set(r.value["items"]) & bought[r.value["user_id"]]))
             for r in after if set(r.value["items"]) & bought[r.value["user_id"]]]
    assert not shown, f"{len(shown)} lists after the restart recommend items bought before it: {shown[:3]}"
    return sum(1 for r in after if bought[r.value["user_id"]])


def assert_state_loss_would_show(config: Config, pre: list[Event], post: list[Event],
                                 expected_post: dict[Key, dict]) -> None:
    """The same log with every state dropped at the restart: the checks above must see it."""
    lost = Replay(config)
    lost.feed(pre)
    lost.states = {}
    lost_out = lost.feed(post)
    bought = {(e.user_id, e.item_id) for e in pre if e.behavior == "buy"}
    wrong_seq = sum(lost_out[k]["seq"] != v["seq"] for k, v in expected_post.items())
    wrong_items = sum(lost_out[k]["items"] != v["items"] for k, v in expected_post.items())
    rebought = sum(any((k[0], i) in bought for i in lost_out[k]["items"]) for k in expected_post)
    print(f"with state lost at the restart: {wrong_seq} seqs, {wrong_items} item lists of {len(expected_post)} "
          f"would differ, {rebought} lists would recommend items bought before it")
    # Sensitivity of the chosen log (a different generator may need another seed).
    assert wrong_seq >= 10 and wrong_items >= 10 and rebought >= 1


class Laps:
    """Phase timings for the test's report line."""

    def __init__(self) -> None:
        self.start = self.last = time.monotonic()
        self.laps: list[str] = []

    def __call__(self, name: str) -> None:
        now = time.monotonic()
        self.laps.append(f"{name} {now - self.last:.0f}s")
        self.last = now

    def __str__(self) -> str:
        return f"{', '.join(self.laps)}; total {time.monotonic() - self.start:.0f}s"


# ---------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batching", [False, True], ids=["one-stage", "batched"])
def test_stop_with_savepoint_and_restart_keeps_every_users_state(batching, kafka_broker, unique_topic,
                                                                  fixture_artifact, tmp_path):
    lap = Laps()
    topics, env, config = setup_env(kafka_broker, unique_topic, fixture_artifact)
    if batching:  # the ranking stage's buffers and timers go through the savepoint too
        env.update({env_var("ranking", "batching"): "true", env_var("ranking", "batch_timeout_ms"): "200"})
    bootstrap, out_topic = kafka_broker.bootstrap, topics["output_topic"]
    events = generated_log(800, seed=56)
    pre, post = events[:400], events[400:]
    replayed = Replay(config)
    expected = replayed.feed(pre)
    n_pre = len(expected)
    replayed.restart()
    expected_post = replayed.feed(post)
    expected.update(expected_post)
    assert_state_loss_would_show(config, pre, post, expected_post)
    lap("replay offline")

    cluster = StandaloneCluster(tmp_path / "flink").start()
    rss = PeakRss(lambda: marked_rss_kb(str(cluster.work_dir))).__enter__()
    try:
        lap("cluster start")
        job1 = cluster.submit_python(JOB, ARGS, env=env, python=sys.executable)
        lap("submit")
        replay(pre, bootstrap, topics["input_topic"])
        before = read_until(bootstrap, out_topic, n_pre, cluster, job1)
        assert_no_failures(cluster, job1)
        lap("first part")
        job2, savepoint = resume_from_savepoint(cluster, job1, tmp_path / "savepoints", env,
                                                lambda: replay(post, bootstrap, topics["input_topic"]), JOB, ARGS)
        lap("stop with savepoint, TaskManager restart, submit from savepoint")
        out = read_until(bootstrap, out_topic, len(expected), cluster, job2)
        assert_clean_restore(cluster, job2, savepoint)
        lap("second part")
        cluster.flink("cancel", "-m", cluster.address, job2)
    finally:
        rss.__exit__()
        cluster.stop()

    assert len(before) == n_pre  # every pre-stop list was out before the stop
    boundary = max(r.offset for r in before)
    after = [r for r in out if r.offset > boundary]
    check_lists(out, expected)
    users_across = check_seq_continues(before, after)
    buyer_lists = check_bought_excluded(pre, after)
    assert users_across >= 5 and buyer_lists >= 1, (users_across, buyer_lists)
    print(f"plain: {len(expected)} events, {len(out)} lists, {users_across} users across the restart, "
          f"{buyer_lists} lists of pre-restart buyers; {lap}")
    scenario = "stop with savepoint, input while stopped, restart from the savepoint"
    report(scenario + (", batched ranking" if batching else ""), events_in=len(expected),
           lists_out=len(out), duplicates=len(out) - len(expected), missing=0, restarts=0, resubmissions=1,
           users_across_restart=users_across, peak_rss_mb=rss.peak_mb)


def test_restart_after_upgrade_to_a_new_state_field_keeps_every_users_state(kafka_broker, unique_topic,
                                                                            fixture_artifact, tmp_path):
    lap = Laps()
    topics, env, config = setup_env(kafka_broker, unique_topic, fixture_artifact)
    bootstrap, out_topic = kafka_broker.bootstrap, topics["output_topic"]
    events = generated_log(800, seed=51)
    pre, post = events[:400], events[400:]
    replayed = Replay(config)
    expected = replayed.feed(pre, to_v1_bytes)  # the old job writes v1 state after every event
    n_pre = len(expected)
    replayed.restart(to_v1_bytes)  # the old job's savepoint: v1 state, no windows
    expected_post = replayed.feed(post)
    expected.update(expected_post)
    assert_state_loss_would_show(config, pre, post, expected_post)
    replayed.restart()  # the current job's savepoint
    upgraded = {u: UserState.from_bytes(s.to_bytes()) for u, s in replayed.states.items()}
    # Third part: one more event per user, so the probe reads every user's state.
    last_ts = events[-1].ts
    probe = [Event(u, s.seq[-1][1], s.seq[-1][2], "pv", last_ts + 1000 * (i + 1))
             for i, (u, s) in enumerate(sorted(upgraded.items()))]
    expected.update(replayed.feed(probe))
    probe_file = tmp_path / "probe.jsonl"
    lap("replay offline")

    cluster = StandaloneCluster(tmp_path / "flink").start()
    rss = PeakRss(lambda: marked_rss_kb(str(cluster.work_dir))).__enter__()
    try:
        lap("cluster start")
        old = cluster.submit_python(TEST_JOB, ["v1-writer", *ARGS], env=env, python=sys.executable)
        replay(pre, bootstrap, topics["input_topic"])
        before = read_until(bootstrap, out_topic, n_pre, cluster, old)
        assert_no_failures(cluster, old)
        lap("old job, first part")
        new, savepoint_v1 = resume_from_savepoint(cluster, old, tmp_path / "savepoints", env,
                                                  lambda: replay(post, bootstrap, topics["input_topic"]), JOB, ARGS)
        lap("stop with savepoint, TaskManager restart, submit from savepoint")
        out_new = read_until(bootstrap, out_topic, n_pre + len(expected_post), cluster, new)
        assert_clean_restore(cluster, new, savepoint_v1)
        lap("current job, second part")
        job3, savepoint_v2 = resume_from_savepoint(cluster, new, tmp_path / "savepoints", env,
                                                   lambda: replay(probe, bootstrap, topics["input_topic"]),
                                                   TEST_JOB, ["probe", str(probe_file), *ARGS])
        lap("stop with savepoint, TaskManager restart, submit the probe from savepoint")
        out = read_until(bootstrap, out_topic, len(expected), cluster, job3)
        assert_clean_restore(cluster, job3, savepoint_v2)
        lap("probe job, third part")
        cluster.flink("cancel", "-m", cluster.address, job3)
    finally:
        rss.__exit__()
        cluster.stop()

    # The lists: complete, no duplicates, seq and items as with state kept, across both restarts.
    assert len(before) == n_pre
    check_lists(out, expected)
    boundary = max(r.offset for r in before)
    after_upgrade = [r for r in out_new if r.offset > boundary]
    users_across = check_seq_continues(before, after_upgrade)
    buyer_lists = check_bought_excluded(pre, after_upgrade)
    assert users_across >= 5 and buyer_lists >= 1, (users_across, buyer_lists)

    # The stored state, as the current job left it in its savepoint, user by user.
    found: dict[str, bytes] = {}
    for line in probe_file.read_text().splitlines():
        rec = json.loads(line)
        found.setdefault(rec["user"], bytes.fromhex(rec["state"]))
    users = {str(u): u for u in upgraded}  # the probe names users by their key, a string
    assert found.keys() == users.keys(), "the probe did not see every user"
    touched = {str(e.user_id) for e in post}
    versions = {u: state_version(b) for u, b in found.items()}
    # Users without events after the upgrade still hold what the old job wrote: the old job
    # really wrote v1, and the current one read it (their lists in the probe run are right).
    # Everyone the current job updated was rewritten as the current version, windows included.
    assert {u for u, v in versions.items() if v == 1} == found.keys() - touched
    assert all(versions[u] not in (None, 1) for u in touched & found.keys())
    assert found.keys() - touched and touched & found.keys()
    wrong = [u for u in found if UserState.from_bytes(found[u]) != upgraded[users[u]]]
    assert not wrong, (f"{len(wrong)} users' stored state differs from the replay, e.g. user {wrong[0]}: "
                       f"{UserState.from_bytes(found[wrong[0]])} != {upgraded[users[wrong[0]]]}")
    # The new field works: filled from the events after the upgrade only (v1 held no windows),
    # so for users active on both sides it differs from a replay that never dropped it.
    never_dropped = Replay(config)
    never_dropped.feed(pre + post)
    assert all(any(upgraded[users[u]].windows) for u in touched)
    refilled = [u for u in touched if upgraded[users[u]].windows != never_dropped.states[users[u]].windows]
    assert refilled, "no user's windows show the upgrade: did the old job write v1?"
    print(f"upgrade: {len(expected)} events, {len(out)} lists, {users_across} users across the upgrade, "
          f"{buyer_lists} lists of pre-upgrade buyers, {len(found.keys() - touched)} users still v1, "
          f"{len(touched)} rewritten, {len(refilled)} with windows refilled; {lap}")
    report("savepoint of v1-state job, restart with v2 code (new state field), then a second savepoint",
           events_in=len(expected), lists_out=len(out), duplicates=len(out) - len(expected), missing=0, restarts=0,
           resubmissions=2, users_across_restart=users_across, users_still_v1=len(found.keys() - touched),
           users_rewritten_v2=len(touched), peak_rss_mb=rss.peak_mb)

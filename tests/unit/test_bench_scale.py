"""The store-scale bench's pure parts: workload shaping, state bytes, checkpoint history, the table."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from streamrec.cli import build_parser
from streamrec.lab.benchmark.scale_report import (
    checkpoint_summary,
    failures_summary,
    markdown,
    merge_history,
    rss_growth,
    split_failed,
    targets,
)
from streamrec.lab.benchmark.scale_workload import (
    bytes_summary,
    item_row_bytes,
    nearest_rank,
    reach_distinct_items,
    replay_state_bytes,
    shape_shoppers,
)
from streamrec.lab.generator import ITEM_ID_BASE, USER_ID_BASE, generate_events
from udfs.events import Event
from udfs.item_knowledge import ItemKnowledge, ItemKnowledgeParams, ItemRow
from udfs.state import StateLimits, UserState, update_state

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.mark.parametrize("shoppers", [900, 2_000, 7_777, 12_000])
def test_shaping_gives_exactly_the_shoppers_asked_for_and_keeps_the_stream(shoppers):
    base = generate_events(12_000, n_users=1_000, n_items=500, n_categories=20, seed=3)
    n_base = len({e.user_id for e in base})
    if shoppers < n_base:
        with pytest.raises(ValueError, match="distinct users"):
            shape_shoppers(base, shoppers)
        return
    out = shape_shoppers(base, shoppers)
    ids = {e.user_id for e in out}
    assert ids == set(range(USER_ID_BASE, USER_ID_BASE + shoppers))
    # Same events in the same order; only the shopper changes.
    assert [(e.item_id, e.category_id, e.behavior, e.ts) for e in out] == \
        [(e.item_id, e.category_id, e.behavior, e.ts) for e in base]
    # Each shopper is cut from one generated user, as one contiguous run of that user's events.
    owner: dict[int, int] = {}
    for b, e in zip(base, out, strict=True):
        assert owner.setdefault(e.user_id, b.user_id) == b.user_id
    runs: dict[int, list[int]] = {}
    for b, e in zip(base, out, strict=True):
        runs.setdefault(b.user_id, [])
        if not runs[b.user_id] or runs[b.user_id][-1] != e.user_id:
            assert e.user_id not in runs[b.user_id], "a shopper's events are not one run"
            runs[b.user_id].append(e.user_id)
    if shoppers == len(base):
        assert max(Counter(e.user_id for e in out).values()) == 1


@pytest.mark.parametrize("distinct", [3_000, 4_999, 5_000])
def test_the_stream_reaches_the_distinct_items_asked_for_and_keeps_everything_else(distinct):
    base = generate_events(9_000, n_users=300, n_items=5_000, n_categories=20, seed=4)
    had = {e.item_id for e in base}
    assert len(had) < distinct  # the Zipf stream alone falls short
    out = reach_distinct_items(base, 5_000, distinct, seed=4)
    items = {e.item_id for e in out}
    assert len(items) == distinct and had <= items
    assert items <= set(range(ITEM_ID_BASE, ITEM_ID_BASE + 5_000))
    moved = [(b, e) for b, e in zip(base, out, strict=True) if b.item_id != e.item_id]
    assert len(moved) == distinct - len(had)
    # A moved event takes an item the stream never had, each its own; nothing else changes.
    assert all(e.item_id not in had for _, e in moved)
    assert len({e.item_id for _, e in moved}) == len(moved)
    assert [(e.user_id, e.category_id, e.behavior, e.ts) for e in out] == \
        [(e.user_id, e.category_id, e.behavior, e.ts) for e in base]
    assert reach_distinct_items(base, 5_000, distinct, seed=4) == out  # seeded


def test_reaching_distinct_items_keeps_a_richer_stream_and_refuses_the_impossible():
    base = generate_events(2_000, n_users=100, n_items=400, n_categories=10, seed=5)
    assert reach_distinct_items(base, 400, 10, seed=1) == base
    with pytest.raises(ValueError, match="catalog"):
        reach_distinct_items(base, 400, 401, seed=1)
    few = base[:50]
    with pytest.raises(ValueError, match="cannot hold"):
        reach_distinct_items(few, 400, 200, seed=1)


def test_shaping_refuses_more_shoppers_than_events():
    base = generate_events(100, n_users=10, n_items=50, n_categories=5, seed=1)
    with pytest.raises(ValueError, match="events"):
        shape_shoppers(base, 101)


def test_busier_users_become_more_shoppers():
    base = [Event(1, 10, 100, "pv", t) for t in range(90)] + [Event(2, 11, 100, "pv", 100 + t) for t in range(10)]
    out = shape_shoppers(base, 20)
    per_user = Counter()
    for b, e in zip(base, out, strict=True):
        per_user[(b.user_id, e.user_id)] += 1
    shoppers_of = Counter(u for u, _ in per_user)
    assert shoppers_of[1] + shoppers_of[2] == 20 and shoppers_of[1] > 4 * shoppers_of[2]
    sizes = [n for (u, _), n in per_user.items() if u == 1]
    assert max(sizes) - min(sizes) <= 1  # near-equal runs


def test_state_bytes_replay_is_what_the_job_stores():
    limits = StateLimits()
    events = [Event(1, 10, 100, "pv", 1_000), Event(2, 11, 100, "pv", 2_000), Event(1, 12, 101, "cart", 3_000),
              Event(1, 12, 101, "cart", 3_000)]  # the last: a duplicate, no list, no change
    sizes, lists = replay_state_bytes(events, limits)
    assert lists == 3
    want = {}
    for uid in (1, 2):
        st = UserState()
        for e in events[:3]:
            if e.user_id == uid and update_state(st, e, limits):
                st.emitted += 1
        want[uid] = len(st.to_bytes())
    assert sorted(sizes) == sorted(want.values())
    _, later = replay_state_bytes(events, limits, since_ms=2_500)
    assert later == 1  # state is still kept before since_ms, but no list is emitted


def test_with_item_knowledge_shoppers_keep_their_items_rows_and_every_touched_item_has_one():
    events = generate_events(3_000, n_users=100, n_items=400, n_categories=10, seed=6)
    limits = StateLimits()
    knowledge = ItemKnowledge({}, ItemKnowledgeParams(window_ms=3_600_000, max_entries=8, kept_rows=2))
    with_rows, lists = replay_state_bytes(events, limits, knowledge=knowledge)
    without, lists_without = replay_state_bytes(events, limits)
    assert lists == lists_without  # item rows change no list count
    # Shoppers in the same order: each keeps up to two rows on top of the same state.
    assert len(with_rows) == len(without) and all(a >= b for a, b in zip(with_rows, without, strict=True))
    assert sum(with_rows) > sum(without)
    # One row per touched item, in the job's layout, none past max_entries however often touched.
    sizes = item_row_bytes(knowledge)
    assert len(sizes) == len({e.item_id for e in events}) == len(knowledge.rows)
    rows = [ItemRow.from_bytes(r.to_bytes()) for r in knowledge.rows.values()]
    assert sorted(sizes) == sorted(len(r.to_bytes()) for r in rows)
    assert max(len(r.scores) for r in rows) == 8


def test_percentiles_are_nearest_rank_over_every_shopper():
    sizes = list(range(1, 101))  # 1..100
    s = bytes_summary(sizes[::-1])
    assert (s["count"], s["p50"], s["p99"], s["max"], s["total"]) == (100, 50.0, 99.0, 100.0, 5050.0)
    assert nearest_rank([7], 99) == 7.0
    assert nearest_rank([1, 2, 3], 0) == 1.0
    with pytest.raises(ValueError):
        nearest_rank([], 50)


def _payloads():
    """Polls of /jobs/<id>/checkpoints (counts and history) from a small RocksDB run of the bench."""
    return json.loads((DATA / "flink_checkpoints_rocksdb.json").read_text())


def test_checkpoint_history_merges_polls_and_summarizes():
    polls = _payloads()
    seen: dict[int, dict] = {}
    for p in polls:
        merge_history(seen, p)
    ids = sorted(seen)
    assert ids == list(range(ids[0], ids[-1] + 1)), "every checkpoint across polls, none lost to the 10-entry cap"
    assert all(e["status"] != "IN_PROGRESS" for e in seen.values()), "a later sighting replaces IN_PROGRESS"
    summary = checkpoint_summary(seen.values(), interval_ms=10_000)
    done = [e for e in seen.values() if e["status"] == "COMPLETED"]
    assert summary["completed"] == len(done)
    assert summary["failed"] == sum(e["status"] == "FAILED" for e in seen.values())
    assert summary["duration_ms_max"] == max(e["end_to_end_duration"] for e in done)
    last = max(done, key=lambda e: e["id"])
    assert summary["state_size_last"] == last["state_size"]
    assert summary["incremental"] == any(e["checkpointed_size"] < e["state_size"] for e in done)
    assert [r["id"] for r in summary["rows"]] == ids
    # Recorded on a real cluster: triggers that failed while tasks deployed have no history entry.
    assert polls[-1]["counts"]["failed"] > summary["failed"]


def test_failed_checkpoints_inside_the_injected_failure_are_counted_apart():
    hist = [{"id": 1, "status": "COMPLETED", "trigger_timestamp": 1_000, "end_to_end_duration": 800,
             "state_size": 100, "checkpointed_size": 100},
            {"id": 2, "status": "FAILED", "trigger_timestamp": 11_000, "failure_timestamp": 12_000},
            {"id": 3, "status": "FAILED", "trigger_timestamp": 41_000, "failure_timestamp": 41_500},
            {"id": 4, "status": "COMPLETED", "trigger_timestamp": 51_000, "end_to_end_duration": 12_000,
             "state_size": 300, "checkpointed_size": 120}]
    s = checkpoint_summary(hist, interval_ms=10_000, excused=(11_500, 30_000))
    assert (s["failed"], s["failed_by_period"]["other"], s["over_interval"]) == (2, 1, 1)
    assert s["incremental"] and s["state_size_last"] == 300 and s["checkpointed_size_max"] == 120


def test_failed_checkpoints_without_history_entries_are_placed_by_polled_counts():
    # Triggers while tasks deploy (at start-up, after a restart) raise counts.failed with no history entry.
    polls = [(0, 0), (5_000, 1), (10_000, 1), (15_000, 2), (20_000, 5), (25_000, 5), (60_000, 6)]
    by = split_failed(polls, started_ms=7_000, window=(16_000, 22_000))
    assert by == {"startup": 1, "injected": 3, "other": 2}  # other: (10 s, 15 s] and the 60 s one
    assert split_failed(polls, None, None) == {"startup": 0, "injected": 0, "other": 6}
    assert split_failed([(0, 2)], 10, (20, 30))["startup"] == 2  # already failed at the first poll
    hist = [{"id": 1, "status": "FAILED", "trigger_timestamp": 17_500, "failure_timestamp": 17_600}]
    s = checkpoint_summary(hist, 10_000, (16_000, 22_000), polls, started_ms=7_000)
    assert (s["failed"], s["failed_in_history"], s["failed_by_period"]["other"]) == (6, 1, 2)


def test_failures_while_recovering_from_the_kill_are_told_apart_from_others():
    entries = [{"timestamp": 1_000, "exceptionName": "java.lang.RuntimeException"},
               {"timestamp": 10_100, "exceptionName": "RemoteTransportException"},
               {"timestamp": 11_000, "exceptionName": "RecipientUnreachableException"},
               {"timestamp": 70_000, "exceptionName": "java.lang.RuntimeException"}]
    f = failures_summary(entries, (10_000, 40_000))
    assert (f["during_injected"], f["outside_injected"]) == (2, 2)
    assert failures_summary(entries, None)["outside_injected"] == 4
    assert [r["name"] for r in f["rows"]][1] == "RemoteTransportException"


def test_rss_growth_ignores_warm_up_and_sees_a_leak():
    flat = [(t, 1000.0 + (500 if t < 20 else 0)) for t in range(100)]
    assert rss_growth(flat) == pytest.approx(0.0)
    leak = [(t, 1000.0 + 10 * t) for t in range(100)]
    assert rss_growth(leak) > 0.3
    assert rss_growth([(0, 1.0)]) is None


def _run(backend: str, **over):
    run = {"backend": backend, "shoppers": 1000, "expected_lists": 5000, "distinct_lists": 5000, "duplicates": 40,
           "events_per_s": 1234.5, "events_per_s_before_kill": 1500.0, "restarts": 1, "recovery_s": 31.0,
           "rss_samples": [[0, 2000.0], [2, 2600.0], [4, 2500.0]],
           "rss_growth": {"before_kill": 0.02, "after_recovery": 0.05},
           "failures": failures_summary([{"timestamp": 5_000}, {"timestamp": 9_000}], (4_000, 35_000)),
           "checkpoints": checkpoint_summary([{"id": 1, "status": "COMPLETED", "trigger_timestamp": 0,
                                               "end_to_end_duration": 900, "state_size": 2_000_000,
                                               "checkpointed_size": 500_000}], 10_000)}
    run.update(over)
    run["targets"] = targets(run, 10_000)
    return run


def test_targets_say_met_or_not_met():
    good = {t["target"]: t["met"] for t in _run("rocksdb")["targets"]}
    assert all(good.values()) and any("RSS flat" in k for k in good)
    bad = _run("rocksdb", restarts=3, recovery_s=75.0, rss_growth={"before_kill": 0.4, "after_recovery": None},
               failures=failures_summary([{"timestamp": 5_000}, {"timestamp": 90_000}], (4_000, 79_000)))
    verdict = {t["target"].split(" ")[0]: t["met"] for t in bad["targets"]}
    assert verdict["no"] is False and verdict["recovery"] is False and verdict["TaskManager"] is False
    assert all("RSS" not in t["target"] for t in _run("hashmap")["targets"])  # heap state grows by design


def test_table_has_one_column_per_backend_and_the_verdicts():
    results = {"machine": {"cpus": 2}, "model_version": "m1", "checkpoint_interval_ms": 10_000, "parallelism": 2,
               "started_at": "2026-12-07T06:00:00+0000", "commit": "abc123def456",
               "backends": ["hashmap", "rocksdb"],
               "workload": {"shoppers": 1000, "events": 5000, "items": 100, "distinct_items": 90,
                            "state_bytes": bytes_summary([100, 150, 400]),
                            "item_row_bytes": bytes_summary([40, 900, 1200, 60])},
               "runs": {"hashmap": _run("hashmap"),
                        "rocksdb": _run("rocksdb", recovery_s=75.0)}}
    md = markdown(results)
    assert "| | hashmap | rocksdb |" in md
    assert "| events/s over the run (first list to last, recovery included) | 1,234 | 1,234 |" in md
    assert "| bytes per shopper (checkpointed) | 2,000 B | 2,000 B |" in md
    assert "p50 150 B, p99 400 B, max 400 B" in md
    assert "100 items in the catalog, 90 of them in the stream" in md
    assert "Run 2026-12-07T06:00:00+0000 at commit abc123def456." in md
    assert "item rows, ItemRow bytes, exact replay): 4 rows, p50 60 B, p99 1,200 B, max 1,200 B" in md
    assert "| rocksdb | recovery within 60 s | 75.0 s | not met |" in md
    assert "| hashmap | recovery within 60 s | 31.0 s | met |" in md
    assert "(incremental)" in md
    # A backend whose run failed still gets its column, with the error and dashes.
    results["runs"]["rocksdb"] = {"backend": "rocksdb", "error": "RuntimeError: job ended: FAILED"}
    md = markdown(results)
    assert "| error | - | RuntimeError: job ended: FAILED |" in md
    assert "| restarts (failures from the kill until recovery / otherwise) | 1 (2 / 0) | - |" in md


def test_bench_parser_takes_the_scale_phase_and_its_workload_flags():
    args = build_parser().parse_args(["bench", "--phases", "scale", "--scale-shoppers", "50000",
                                      "--scale-events", "150000", "--scale-items", "20000"])
    assert (args.phases, args.scale_shoppers, args.scale_events, args.scale_items) == \
        ("scale", "50000", "150000", "20000")
    defaults = build_parser().parse_args(["bench"])
    assert (defaults.scale_shoppers, defaults.scale_events, defaults.scale_items) == ("1000000", "5000000", "100000")
    assert "scale" not in defaults.phases  # over an hour per backend: never part of a plain `make bench`

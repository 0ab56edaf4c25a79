"""The bench's floor phase: a replayed list keeps a real list's shape and model call; the summary's shares."""

from streamrec.lab.benchmark.bench_report import floor_table
from streamrec.lab.benchmark.bench_summary import floor_summary
from streamrec.lab.benchmark.floor import ReplayingRecommender
from udfs.config import load_config
from udfs.events import Event
from udfs.runtime import build_recommender
from udfs.state import UserState


def replaying(fixture_artifact, with_model):
    cfg = load_config(environ={}, overrides={"ranking": {"artifact_dir": str(fixture_artifact), "provider": "cpu",
                                                          "top_k": 5}})
    return ReplayingRecommender.replaying(build_recommender(cfg), with_model)


def list_for(rec, user, item, ts, state=None):
    state = state or UserState()
    ev = Event(user, item, rec.artifact.tables.item_category[item], "pv", ts)
    assert rec.apply(state, ev)
    req = rec.request(state, ev)
    return req, rec.recommend([req])[0]


def two_items(rec):
    first, *rest = rec.artifact.tables.covisit
    return first, next(i for i in rest if i != first)


def test_first_list_is_real_and_later_ones_replay_it_with_their_own_trigger(fixture_artifact):
    rec = replaying(fixture_artifact, with_model=True)
    a, b = two_items(rec)
    first_req, first = list_for(rec, "u1", a, 1_700_000_000_000)
    assert first["fallback"] is None and len(first["items"]) == 5 and first["trigger"]["item_id"] == a
    calls, rows = rec.ranker.stats.calls, rec.ranker.stats.rows
    state = UserState()
    list_for(rec, "u2", b, 1_700_000_001_000, state)
    req, replayed = list_for(rec, "u2", a, 1_700_000_002_000, state)
    # The first list's candidates and items; the shopper's own user, list number and trigger.
    assert req.candidates is first_req.candidates
    assert replayed["items"] == first["items"] and replayed["scores"] == first["scores"]
    assert replayed["user_id"] == "u2" and replayed["seq"] == 2
    assert replayed["trigger"] == {"item_id": a, "behavior": "pv", "ts": 1_700_000_002_000}
    # Each replay is one real model call over as many rows as the first list had.
    assert rec.ranker.stats.calls == calls + 2
    assert rec.ranker.stats.rows == rows + 2 * len(first_req.candidates.items)
    assert rec.counters.emitted == 3


def test_without_the_model_a_replay_makes_no_call(fixture_artifact):
    rec = replaying(fixture_artifact, with_model=False)
    a, b = two_items(rec)
    list_for(rec, "u1", a, 1_700_000_000_000)
    calls = rec.ranker.stats.calls
    _, replayed = list_for(rec, "u2", b, 1_700_000_001_000)
    assert rec.ranker.stats.calls == calls and replayed["user_id"] == "u2" and replayed["seq"] == 1


def run(rate, pairs_per_event=100.0, cpu=60.0, operator=0.5):
    threads = {"recommend -> (M": operator, "C2 CompilerThre": 0.1}
    return {"events_per_s": rate, "window_s": 60.0, "pairs_per_s": rate * pairs_per_event,
            "cpu_s": {"taskmanager0": cpu, "kafka": 6.0},
            "busiest_threads": {"taskmanager0": threads, "taskmanager1": threads, "kafka": {"C2 CompilerThre": 0.1}}}


def test_floor_summary_takes_medians_and_shares_of_the_model_bound():
    runs = {None: [run(400.0), run(500.0), run(600.0)], "model": [run(900.0), run(800.0)],
            "none": [run(3000.0, pairs_per_event=0.0)]}
    # 2 cores x 100,000 pairs/s / 100 rows per event = 2,000 events/s.
    f = floor_summary(runs, 100_000.0, cores=2, n_candidates=100, parallelism=2)
    assert f["model_bound_events_per_s"] == 2000.0
    assert f["p2_events_per_s_job"] == 500.0 and f["share_of_model_bound_job"] == 0.25
    assert f["p2_events_per_s_model_only"] == 850.0 and f["share_of_model_bound_model_only"] == 0.425
    assert f["p2_events_per_s_platform"] == 3000.0
    # 60 CPU s over 500 x 60 events, the broker's apart.
    assert f["cpu_ms_per_event_job"] == 2.0
    # Two operator threads at half a core each: 1 core over 500 events/s (JIT and broker threads apart).
    assert f["operator_ms_per_event_job"] == 2.0
    table = "\n".join(floor_table(f))
    assert "| model only |" in table and "| 0.42 |" in table and "| platform |" in table


def test_floor_summary_without_a_model_figure_gives_no_share():
    f = floor_summary({None: [run(500.0)], "model": [run(800.0)], "none": []}, None, cores=2, n_candidates=100,
                      parallelism=2)
    assert f["share_of_model_bound_job"] is None and f["p2_events_per_s_platform"] is None
    assert "| platform |" in "\n".join(floor_table(f))

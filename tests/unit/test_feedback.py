"""Online feedback (udfs/feedback.py): which events are scored, against which list, and that the
scores are the prequential protocol's on the same lists."""

from __future__ import annotations

import math
import random

import pytest

from streamrec.lab.evaluation.prequential import EmittedList, held_out_pairs
from udfs.events import Event
from udfs.feedback import FeedbackCounters, feedback_for, ndcg_at, online_figures, remember
from udfs.ranking_metrics import list_metrics
from udfs.records import OutputRecordError, decode_feedback_record, encode_feedback_record
from udfs.state import StateLimits, UserState, update_state

T0 = 1_700_000_000_000
LIMITS = StateLimits()


def shown(state: UserState, items: list, version: str = "m1", arm: str | None = None) -> dict:
    """What the job does when it emits a list: the seq advances and the list is remembered."""
    state.emitted += 1
    record = {"seq": state.emitted, "items": items, "model_version": version, "arm": arm}
    remember(state, record)
    return record


def test_no_previous_list_no_feedback():
    st = UserState()
    e = Event(1, 10, 1, "pv", T0)
    assert update_state(st, e, LIMITS)
    assert feedback_for(st, e, 0) is None


def test_hit_gives_the_rank_and_the_lists_labels():
    st = UserState()
    shown(st, [5, 6, 7], version="m2", arm="treatment")
    e = Event("u1", 7, 1, "cart", T0 + 5)
    update_state(st, e, LIMITS)
    fb = feedback_for(st, e, 0)
    assert fb is not None
    assert (fb.user_id, fb.item_id, fb.behavior, fb.ts) == ("u1", 7, "cart", T0 + 5)
    assert (fb.list_seq, fb.rank, fb.k, fb.model_version, fb.arm) == (1, 2, 3, "m2", "treatment")
    assert fb.hit(10) and not fb.hit(2)


def test_miss_is_rank_minus_one():
    st = UserState()
    shown(st, ["a", "b"])
    e = Event(1, "z", 1, "pv", T0)
    update_state(st, e, LIMITS)
    fb = feedback_for(st, e, 0)
    assert fb is not None and fb.rank == -1 and fb.k == 2 and fb.arm is None and not fb.hit(10)


def test_events_before_since_are_not_scored():
    """Only events that get a list of their own are tested (prequential: list i vs trigger of i + 1)."""
    st = UserState()
    shown(st, [1, 2])
    early = Event(1, 1, 1, "pv", T0 - 1)
    update_state(st, early, LIMITS)
    assert feedback_for(st, early, since_ms=T0) is None
    on_time = Event(1, 1, 1, "pv", T0)
    update_state(st, on_time, LIMITS)
    fb = feedback_for(st, on_time, since_ms=T0)
    assert fb is not None and fb.rank == 0


def test_scored_against_the_list_before_the_event():
    st = UserState()
    shown(st, [1, 2])
    shown(st, [3, 4])
    e = Event(1, 3, 1, "pv", T0)
    update_state(st, e, LIMITS)
    fb = feedback_for(st, e, 0)
    assert fb is not None and (fb.list_seq, fb.rank) == (2, 0)


def test_last_list_survives_serialization_and_trimming():
    st = UserState()
    for i in range(400):  # 128-character ids: the state must be trimmed to fit
        update_state(st, Event("u" * 128, f"{i:0128d}", f"c{i % 40:0127d}", "pv", T0 + i), LIMITS)
    last = shown(st, [f"{i:0128d}" for i in range(20)])
    blob, trimmed = st.to_bounded_bytes(LIMITS.max_bytes)
    assert trimmed
    assert UserState.from_bytes(blob).last_list == [last["seq"], "m1", None, last["items"]]


def test_record_round_trip_and_rejections():
    st = UserState()
    shown(st, [1, 2, 3], arm="control")
    e = Event(9, 2, 1, "buy", T0)
    update_state(st, e, LIMITS)
    fb = feedback_for(st, e, 0)
    assert fb is not None
    key, value = encode_feedback_record(fb)
    assert key == "9" and decode_feedback_record(value) == fb
    assert decode_feedback_record(fb.to_map()) == fb  # the file sink's JSON lines carry the map
    with pytest.raises(OutputRecordError, match="missing_field: rank"):
        decode_feedback_record({k: v for k, v in fb.to_map().items() if k != "rank"})
    with pytest.raises(OutputRecordError, match="schema_version"):
        decode_feedback_record({**fb.to_map(), "schema_version": 2})
    with pytest.raises(OutputRecordError, match="not_msgpack"):
        decode_feedback_record(b"\xc1")


class _Counters:
    def __init__(self) -> None:
        self.pending: dict[str, int] = {}
        self.flushed: dict[str, int] = {}

    def inc(self, name: str, n: int = 1) -> None:
        self.pending[name] = self.pending.get(name, 0) + n

    def flush(self) -> None:
        for name, n in self.pending.items():
            self.flushed[name] = self.flushed.get(name, 0) + n
        self.pending.clear()


def test_counters_per_version_and_arm():
    made: dict[tuple[str, str], _Counters] = {}

    def make(version: str, arm: str) -> _Counters:
        made[(version, arm)] = _Counters()
        return made[(version, arm)]

    counters = FeedbackCounters(make)  # type: ignore[arg-type]
    st = UserState()
    for version, arm, item in (("m1", None, 1), ("m1", None, 99), ("m2", "b", 2)):
        shown(st, [1, 2, 3], version=version, arm=arm)
        e = Event(1, item, 1, "pv", T0 + item)
        update_state(st, e, LIMITS)
        fb = feedback_for(st, e, 0)
        assert fb is not None
        counters.record(fb)
    counters.flush()
    assert set(made) == {("m1", "none"), ("m2", "b")}
    m1, m2 = made[("m1", "none")].flushed, made[("m2", "b")].flushed
    assert m1 == {"feedback_events": 2, "feedback_hits_at_10": 1, "feedback_ndcg_at_10_micros": 1_000_000,
                  "feedback_rr_micros": 1_000_000}
    # rank 1: NDCG 1/log2(3), reciprocal rank 1/2
    assert m2["feedback_ndcg_at_10_micros"] == round(1e6 / math.log2(3)) and m2["feedback_rr_micros"] == 500_000


def test_online_figures_equal_the_prequential_metrics_on_the_same_lists():
    """The job's order of work (apply, score against the last list, emit, remember) over a random
    log with redeliveries, out-of-order users and a since cut, with random lists standing in for
    the model: the records' HR@10 and NDCG@10 are what the prequential code computes from the lists."""
    rng = random.Random(7)
    since = T0 + 500
    events = []
    for i in range(1000):
        e = Event(rng.randrange(30), rng.randrange(40), 1, rng.choice(["pv", "cart"]), T0 + i)
        events.append(e)
        if rng.random() < 0.1:
            events.append(e)  # a redelivery: not tested, emits nothing
    states: dict = {}
    lists: dict = {}
    records = []
    for e in events:
        st = states.setdefault(e.user_id, UserState())
        if not update_state(st, e, LIMITS):
            continue
        fb = feedback_for(st, e, since)
        if fb is not None:
            records.append(fb)
        if e.ts >= since:
            record = shown(st, rng.sample(range(40), 12)[: rng.choice([10, 12])])
            lists[(e.user_id, record["seq"])] = EmittedList(e.user_id, record["seq"], (e.item_id, e.behavior, e.ts),
                                                            record["items"])
    tested = held_out_pairs(lists, {})
    expected = list_metrics([lists[t.list_key].items for t in tested], [t.target for t in tested],
                            [False] * len(tested), 40)
    (figures,) = online_figures(records).values()
    assert len(tested) == figures.n > 100 and figures.hits > 10
    assert figures.hr == expected["hr@10"]
    assert figures.ndcg == pytest.approx(expected["ndcg@10"], rel=1e-12)


def test_ndcg_at():
    assert ndcg_at(0) == 1.0 and ndcg_at(-1) == 0.0 and ndcg_at(10) == 0.0
    assert ndcg_at(2) == pytest.approx(0.5)

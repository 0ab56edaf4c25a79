"""The plain-Python peer: same records as the job's logic, batching that changes nothing, Kafka end to end.

Only the end-to-end tests need the broker and carry the ``kafka`` mark; the
Batcher tests run in ``make test-fast`` too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgpack
import numpy as np
import pytest
from kafka import KafkaProducer

from streamrec.kafka_io import consume, replay
from streamrec.lab.benchmark.peer import Batcher, PeerStats, apply_catalog, run_peer
from tests.integration.test_job_kafka import POISON
from tests.support.job_fixtures import generated_log
from udfs.catalog import CatalogItem, encode_catalog_item
from udfs.config import Config, PrivacyConfig, load_config
from udfs.events import Erase, Event, max_event_ts
from udfs.feedback import feedback_for, remember
from udfs.item_knowledge import ItemKnowledge
from udfs.privacy import load_key
from udfs.recommend import Recommender
from udfs.records import encode_feedback_record
from udfs.runtime import build_recommender, item_knowledge
from udfs.state import UserState

H = 3_600_000


def make_config(artifact: Path, **sections: dict[str, Any]) -> Config:
    overrides: dict[str, dict[str, Any]] = {"ranking": {"artifact_dir": str(artifact), "provider": "cpu"}}
    for name, values in sections.items():
        overrides[name] = {**overrides.get(name, {}), **values}
    return load_config(environ={}, overrides=overrides)


def job_logic(rec: Recommender, events: Sequence[Event], since_ms: int = 0,
              items: ItemKnowledge | None = None,
              kept_rows: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The job's keyed function without Flink (jobs/functions.py ``_recommend``; no lateness here):
    per event, learn the item row (the job's keyed item steps, when ``items`` is given), apply,
    score against the last list, then rank one event per model call and remember the new list.
    Returns (lists, feedback records)."""
    states: dict[str, UserState] = {}
    lists, feedback = [], []
    for ev in events:
        st = states.setdefault(str(ev.user_id), UserState())
        row = items.observe(str(ev.user_id), ev) if items is not None else None
        if not rec.apply(st, ev, row, kept_rows):
            continue
        fb = feedback_for(st, ev, since_ms)
        if fb is not None:
            feedback.append(msgpack.unpackb(encode_feedback_record(fb)[1], raw=False))
        if ev.ts >= since_ms:
            record = rec.recommend([rec.request(st, ev)])[0]
            remember(st, record)
            lists.append(record)
    return lists, feedback


def one_by_one(rec: Recommender, events: Sequence[Event], since_ms: int = 0) -> list[dict[str, Any]]:
    """The job's lists (:func:`job_logic`) with item knowledge frozen (the Batchers here are built without it)."""
    return job_logic(rec, events, since_ms)[0]


def as_configured(config: Config, events: Sequence[Event]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """:func:`job_logic` as ``config`` sets the job up, item knowledge included (what :func:`run_peer` builds)."""
    rec = build_recommender(config)
    return job_logic(rec, events, items=item_knowledge(config, rec.artifact), kept_rows=config.items.kept_rows)


def by_user_seq(records: Sequence[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    keyed = {(str(r["user_id"]), r["seq"]): r for r in records}
    assert len(keyed) == len(records), "a (user, seq) pair appeared twice"
    return keyed


def assert_same_lists(got: Sequence[dict[str, Any]], want: Sequence[dict[str, Any]], rtol: float = 1e-5) -> None:
    g, w = by_user_seq(got), by_user_seq(want)
    assert g.keys() == w.keys()
    for k, ref in w.items():
        r = g[k]
        assert r["trigger"] == ref["trigger"], k
        assert r["items"] == ref["items"], k
        np.testing.assert_allclose(r["scores"], ref["scores"], rtol=rtol, atol=1e-6, err_msg=str(k))
        assert (r["model_version"], r["provider"], r["fallback"]) == (ref["model_version"], ref["provider"], None)


def chunks(events: Sequence[Event], sizes: Sequence[int]) -> list[list[Event]]:
    out, i, j = [], 0, 0
    while i < len(events):
        n = sizes[j % len(sizes)]
        out.append(list(events[i:i + n]))
        i, j = i + n, j + 1
    return out


# ---------------------------------------------------------------------------------------------
# Batcher, no Kafka
# ---------------------------------------------------------------------------------------------


def test_an_erase_request_in_a_poll_tombstones_after_the_shoppers_pending_list(fixture_artifact):
    """As the job: the shopper's list buffered before the request leaves first, then the tombstone, then
    lists built from nothing before it (seq 1 again, no item window: equal to a shopper never seen)."""
    cfg = make_config(fixture_artifact, ranking={"top_k": 5})
    rec = build_recommender(cfg)
    items = list(rec.artifact.tables.covisit)[:4]
    cat = rec.artifact.tables.item_category
    t = 1_700_000_000_000
    before = [Event(1, items[0], cat[items[0]], "pv", t), Event(2, items[1], cat[items[1]], "pv", t + 1000)]
    after = [Event(1, items[2], cat[items[2]], "cart", t + 2000), Event(2, items[3], cat[items[3]], "pv", t + 3000)]
    batcher = Batcher.from_config(rec, cfg)
    out = batcher.process([*before, Erase(1), *after])
    assert [(k, None if v is None else msgpack.unpackb(v)["seq"]) for k, v in out.lists()] == \
        [("1", 1), ("2", 1), ("1", None), ("1", 1), ("2", 2)]
    assert batcher.erased == 1 and "1" in batcher.states and ("1", None) in out.feedback
    fresh = Batcher.from_config(build_recommender(cfg), cfg).process([after[0]]).records[0]
    assert (out.records[2]["items"], out.records[2]["scores"]) == (fresh["items"], fresh["scores"])
    assert batcher.items is not None and [e[0] for e in batcher.items.recent["1"]] == [items[2]]


def test_repeated_user_flushes_the_pending_batch_first(fixture_artifact):
    rec = build_recommender(make_config(fixture_artifact, ranking={"top_k": 5}))
    items = list(rec.artifact.tables.covisit)[:4]
    cat = rec.artifact.tables.item_category
    t = 1_700_000_000_000
    events = [
        Event(1, items[0], cat[items[0]], "pv", t),
        Event(2, items[1], cat[items[1]], "pv", t + 1000),
        Event(1, items[2], cat[items[2]], "cart", t + 2000),  # user 1 again: flush [1, 2] first
        Event(3, items[3], cat[items[3]], "pv", t + 3000),
        Event(2, items[0], cat[items[0]], "fav", t + 4000),   # user 2: pending [1, 3] -> [1, 3, 2]
        Event(3, items[2], cat[items[2]], "pv", t + 5000),    # user 3 again: flush [1, 3, 2]
    ]
    batcher = Batcher(rec)
    out = batcher.process(events)
    assert batcher.batches == 3 and batcher.emitted == 6 and batcher.rows_scored > 0
    assert [(r["user_id"], r["seq"]) for r in out.records] == [(1, 1), (2, 1), (1, 2), (3, 1), (2, 2), (3, 2)]
    # The first list of user 1 was scored before its second event changed the state.
    ref = one_by_one(build_recommender(make_config(fixture_artifact, ranking={"top_k": 5})), events)
    assert_same_lists(out.records, ref, rtol=0)
    assert out.records[0]["trigger"]["item_id"] == items[0]
    # State was written after scoring, with the emitted counter advanced.
    assert UserState.from_bytes(batcher.states["1"][0]).emitted == 2
    assert UserState.from_bytes(batcher.states["2"][0]).emitted == 2
    assert UserState.from_bytes(batcher.states["3"][0]).emitted == 2


def test_repeated_user_in_copy_mode_stays_in_one_model_call(fixture_artifact):
    rec = build_recommender(make_config(fixture_artifact, ranking={"top_k": 5}))
    items = list(rec.artifact.tables.covisit)[:3]
    cat = rec.artifact.tables.item_category
    t = 1_700_000_000_000
    events = [
        Event(1, items[0], cat[items[0]], "pv", t - H),      # before since: state only
        Event(1, items[0], cat[items[0]], "pv", t),
        Event(2, items[1], cat[items[1]], "pv", t + 1000),
        Event(1, items[1], cat[items[1]], "cart", t + 2000),
        Event(1, items[1], cat[items[1]], "cart", t + 2000),  # duplicate of the pending copy
        Event(1, items[2], cat[items[2]], "buy", t + 3000),
    ]
    batcher = Batcher(rec, since_ms=t, on_repeat="copy")
    out = batcher.process(events[:1])  # user 1's state exists before the poll
    out = batcher.process(events[1:])
    assert batcher.batches == 1 and batcher.duplicates == 1
    assert [(r["user_id"], r["seq"]) for r in out.records] == [(1, 1), (2, 1), (1, 2), (1, 3)]
    ref = one_by_one(build_recommender(make_config(fixture_artifact, ranking={"top_k": 5})), events, since_ms=t)
    assert_same_lists(out.records, ref, rtol=0)
    final = UserState.from_bytes(batcher.states["1"][0])
    assert final.emitted == 3 and final.counts == [2, 1, 0, 1] and final.bought == [items[2]]
    # A pre-`since` event of a user with an unscored request keeps that request's increment.
    batcher = Batcher(build_recommender(make_config(fixture_artifact)), since_ms=t, on_repeat="copy")
    out = batcher.process([Event(4, items[0], cat[items[0]], "pv", t), Event(4, items[1], cat[items[1]], "pv", t - 1),
                           Event(4, items[2], cat[items[2]], "pv", t + 1)])
    assert [r["seq"] for r in out.records] == [1, 2]
    assert UserState.from_bytes(batcher.states["4"][0]).emitted == 2


@pytest.mark.parametrize("on_repeat", ["flush", "copy"])
def test_poll_boundaries_do_not_change_the_lists(fixture_artifact, on_repeat):
    events = generated_log(300, seed=5)
    ref = one_by_one(build_recommender(make_config(fixture_artifact)), events)
    batcher = Batcher(build_recommender(make_config(fixture_artifact)), on_repeat=on_repeat)
    got: list[dict[str, Any]] = []
    polls = chunks(events, [1, 37, 120, 5])
    for poll in polls:
        got += batcher.process(poll).records
    assert batcher.batches < len(got) == len(ref)
    if on_repeat == "copy":
        assert batcher.batches == len(polls)
    assert_same_lists(got, ref, rtol=0)


@pytest.mark.parametrize("on_repeat", ["flush", "copy"])
def test_online_item_rows_across_polls_give_the_jobs_lists(fixture_artifact, on_repeat):
    """With item rows learning from every event (the default), batching and poll boundaries still
    change nothing, and the rows do reach the lists: they differ from the frozen table's."""
    cfg = make_config(fixture_artifact)
    events = generated_log(300, seed=5)
    want = as_configured(cfg, events)[0]
    rec = build_recommender(cfg)
    batcher = Batcher(rec, on_repeat=on_repeat, items=item_knowledge(cfg, rec.artifact),
                      kept_rows=cfg.items.kept_rows)
    got: list[dict[str, Any]] = []
    for poll in chunks(events, [1, 37, 120, 5]):
        got += batcher.process(poll).records
    assert_same_lists(got, want, rtol=0)
    frozen = one_by_one(build_recommender(cfg), events)
    assert any(a["items"] != b["items"] for a, b in zip(want, frozen, strict=True))


@pytest.mark.parametrize("on_repeat", ["flush", "copy"])
def test_peer_feedback_is_the_jobs_whatever_the_polls(fixture_artifact, on_repeat):
    """The peer does the job's feedback work: the same records, scored against the same lists, in
    either repeat mode (in "copy" a repeat's record waits for the pending list) and across polls."""
    events = generated_log(300, seed=5)
    since = sorted(e.ts for e in events)[len(events) // 4]
    want = job_logic(build_recommender(make_config(fixture_artifact)), events, since)[1]
    batcher = Batcher(build_recommender(make_config(fixture_artifact)), since_ms=since, on_repeat=on_repeat)
    got = []
    for poll in chunks(events, [1, 37, 120, 5]):
        got += [msgpack.unpackb(value, raw=False) for _, value in batcher.process(poll).feedback]
    assert len(want) > 50 and any(r["rank"] >= 0 for r in want), "the log must test hits and misses"

    def order(rs: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
        return sorted((str(r["user_id"]), r["list_seq"], r["ts"]) for r in rs)

    assert order(got) == order(want) and batcher.feedback == len(want)
    assert sorted(map(str, got)) == sorted(map(str, want))
    last = UserState.from_bytes(batcher.states[str(events[-1].user_id)][0]).last_list
    assert last and last[0] >= 1, "the stored state keeps the shopper's last list"


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []

    def send(self, topic: str, key: bytes, value: bytes) -> str:
        self.sent.append((topic, key, value))
        return "future"

    def reasons(self) -> list[str]:
        return [msgpack.unpackb(value, raw=False)["reason"].split(":")[0] for _, _, value in self.sent]


def catalog_msg(offset: int, value: bytes | None) -> SimpleNamespace:
    return SimpleNamespace(topic="cat", partition=0, offset=offset, timestamp=1, value=value)


def test_peer_applies_catalog_records_as_the_job_does(fixture_artifact):
    """A deleted item leaves every later list; an unreadable catalog record is a dead letter; a stale
    record (older updated_at) changes nothing."""
    rec = build_recommender(make_config(fixture_artifact), catalog=True)
    events = generated_log(200, seed=4)
    before = Batcher(build_recommender(make_config(fixture_artifact), catalog=True)).process(events).records
    shown = Counter(i for r in before for i in r["items"]).most_common(1)[0][0]
    gone = CatalogItem(shown, rec.artifact.tables.item_category.get(shown, 0), None, None, None, None, 2_000, True)
    stale = gone._replace(deleted=False, updated_at=1_000)
    stats, producer = PeerStats(), FakeProducer()
    records = [catalog_msg(0, encode_catalog_item(gone)), catalog_msg(1, b"\xc1"),
               catalog_msg(2, encode_catalog_item(stale))]
    futures = apply_catalog(rec, records, producer, "dlq", stats, None)
    assert stats.catalog_applied == 1 and stats.catalog_dead_lettered == 1 and futures == ["future"]
    assert [t for t, _, _ in producer.sent] == ["dlq"]
    assert msgpack.unpackb(producer.sent[0][2], raw=False)["offset"] == 1
    after = Batcher(rec).process(events).records
    assert len(after) == len(before) and all(shown not in r["items"] for r in after)


def test_a_future_updated_at_cannot_keep_an_item_sellable_and_tombstones_and_a_full_catalog_are_dead_letters(
        fixture_artifact):
    """A record at updated_at 9,999,999,999,999 would win over every later one, the delete at now
    included; it is refused as the job refuses it. A tombstone (value None), and a new item past
    catalog.max_items, are dead letters too, with their reasons."""
    rec = build_recommender(make_config(fixture_artifact, catalog={"max_items": 2}), catalog=True)
    now = max_event_ts(0)
    frozen = CatalogItem("sku-1", 1, None, None, 5, None, 9_999_999_999_999)
    records = [catalog_msg(0, encode_catalog_item(frozen)),
               catalog_msg(1, encode_catalog_item(frozen._replace(updated_at=now - 1))),
               catalog_msg(2, encode_catalog_item(frozen._replace(updated_at=now, deleted=True))),
               catalog_msg(3, None),
               catalog_msg(4, encode_catalog_item(frozen._replace(item_id="sku-2", updated_at=now))),
               catalog_msg(5, encode_catalog_item(frozen._replace(item_id="sku-3", updated_at=now)))]
    stats, producer = PeerStats(), FakeProducer()
    apply_catalog(rec, records, producer, "dlq", stats, max_event_ts(300_000))
    assert rec.catalog is not None and "sku-1" in rec.catalog.unavailable
    assert producer.reasons() == ["future_timestamp", "tombstone", "catalog_full"]
    assert stats.catalog_applied == 3 and stats.catalog_dead_lettered == 3


@pytest.mark.parametrize("on_repeat", ["flush", "copy"])
def test_batched_scores_match_one_by_one_with_a_real_din_graph(tmp_path, on_repeat):
    """The covisit fixture graph is exact by construction; a DIN graph does real float math."""
    torch = pytest.importorskip("torch")
    from model_export.model import DIN, ModelConfig, export_onnx
    from udfs.artifact import write_artifact
    from udfs.candidates import build_tables
    from udfs.features import Vocab

    log = generated_log(2000, seed=3)
    items: dict[Any, int] = {}
    cats: dict[Any, int] = {}
    for e in log:
        items[e.item_id] = items.get(e.item_id, 0) + 1
        cats[e.category_id] = cats.get(e.category_id, 0) + 1
    vocab = Vocab.build(items, cats, 2)
    torch.manual_seed(0)
    model = DIN(ModelConfig(n_items=vocab.n_items, n_categories=vocab.n_categories, dim=8, attn_hidden=8,
                            hidden=(32, 16)))
    onnx_path = export_onnx(model, tmp_path / "din.onnx", seq_len=50)
    art = write_artifact(tmp_path / "art", onnx_path, vocab, build_tables(log),
                         {"model_version": "random-din", "seq_len": 50, "opset": 17})
    events = generated_log(400, seed=11)
    ref = one_by_one(build_recommender(make_config(art)), events)
    batcher = Batcher(build_recommender(make_config(art)), on_repeat=on_repeat)
    got = batcher.process(events).records
    # Sessions make users repeat right away: "flush" batches little, "copy" scores the poll at once.
    assert batcher.batches == (1 if on_repeat == "copy" else batcher.batches) < len(got)
    assert_same_lists(got, ref, rtol=1e-5)


def test_late_duplicate_since_and_ttl(fixture_artifact):
    rec = build_recommender(make_config(fixture_artifact))
    item = next(iter(rec.artifact.tables.covisit))
    cat = rec.artifact.tables.item_category[item]
    t = 1_700_000_000_000
    now = [0.0]
    batcher = Batcher(rec, out_of_orderness_ms=5000, allowed_lateness_ms=1000, since_ms=t - 2 * H, ttl_s=60,
                      clock=lambda: now[0])
    early = Event(1, item, cat, "pv", t - 3 * H)  # before since: state only
    first = Event(1, item, cat, "pv", t)
    stale = Event(2, item, cat, "pv", t - 6002)  # behind watermark (t - 5000 - 1) - 1000
    edge = Event(3, item, cat, "pv", t - 6001)   # exactly at the allowed lateness: kept
    out = batcher.process([early, first, first, stale, edge])
    assert batcher.duplicates == 1 and batcher.late == 1
    assert [(r["user_id"], r["seq"]) for r in out.records] == [(1, 1), (3, 1)]
    (key, value), = out.late
    late = msgpack.unpackb(value, raw=False)
    assert key == "2" and late["event"] == stale.to_wire() and late["watermark"] == t - 5001
    assert late["reason"].startswith("late: ts")
    assert UserState.from_bytes(batcher.states["1"][0]).counts[0] == 2  # early + first
    now[0] = 61.0  # user 1 and 3 idle past the TTL: state gone, sequence numbers restart
    out = batcher.process([Event(1, item, cat, "cart", t + 1000)])
    assert batcher.expired == 2 and list(batcher.states) == ["1"]
    assert out.records[0]["seq"] == 1


# ---------------------------------------------------------------------------------------------
# Kafka end to end
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def peer_config(kafka_broker, unique_topic, fixture_artifact) -> Config:
    topics = {f: unique_topic(f.split("_")[0]) for f in ("input_topic", "output_topic", "dlq_topic", "late_topic",
                                                          "feedback_topic", "catalog_topic")}
    return make_config(fixture_artifact, kafka={"bootstrap_servers": kafka_broker.bootstrap,
                                                "group_id": "g-" + topics["input_topic"], **topics})


@pytest.mark.kafka
@pytest.mark.parametrize("on_repeat", ["flush", "copy"])
def test_peer_end_to_end_same_lists_as_the_job_logic(kafka_broker, peer_config, on_repeat):
    k = peer_config.kafka
    events = generated_log(300, seed=9)
    half = len(events) // 2
    replay(events[:half], kafka_broker.bootstrap, k.input_topic)
    prod = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
    for raw in POISON:
        prod.send(k.input_topic, raw)
    prod.flush()
    prod.close()
    replay(events[half:], kafka_broker.bootstrap, k.input_topic)
    total = len(events) + len(POISON)

    stats = run_peer(peer_config, max_events=total, idle_timeout_s=20, on_repeat=on_repeat)

    accepted = len({(str(e.user_id), e.item_id, e.behavior, e.ts) for e in events})
    assert (stats.records, stats.events, stats.bad, stats.late) == (total, len(events), len(POISON), 0)
    assert stats.duplicates == len(events) - accepted and stats.emitted == accepted
    assert 0 < stats.batches < stats.emitted and stats.rows_scored == stats.ranker["rows"]
    assert stats.provider == "cpu" and stats.seconds > 0 and stats.cpu_seconds > 0 and stats.peak_rss_mb > 0
    print(f"\npeer ({on_repeat}): {stats.records} records in {stats.seconds:.2f}s = "
          f"{stats.events_per_s:.0f} records/s, "
          f"cpu {stats.cpu_seconds:.2f}s, {stats.polls} polls, {stats.batches} model calls, "
          f"mean batch {stats.ranker['mean_batch']:.0f} rows, rss {stats.peak_rss_mb:.0f} MB")

    out = list(consume(kafka_broker.bootstrap, k.output_topic, timeout_s=2))  # all flushed already
    assert len(out) == accepted
    records = [r.value for r in out]
    for r in out:
        assert r.key == str(r.value["user_id"]).encode()
        assert r.value["model_version"] == "fixture-covisit" and r.value["provider"] == "cpu"
    seqs: dict[str, list[int]] = {}
    for v in records:
        seqs.setdefault(str(v["user_id"]), []).append(v["seq"])
    assert all(s == list(range(1, len(s) + 1)) for s in seqs.values())
    assert peer_config.items.online, "the default config learns item rows online: the peer must too"
    want_lists, want = as_configured(peer_config, events)
    assert_same_lists(records, want_lists, rtol=0)

    # The job's feedback work: one record per accepted event after the shopper's first list.
    feedback = [r.value for r in consume(kafka_broker.bootstrap, k.feedback_topic, timeout_s=2)]
    assert stats.feedback == len(feedback) == len(want) > 0
    assert sorted(map(str, feedback)) == sorted(map(str, want))

    dlq = list(consume(kafka_broker.bootstrap, k.dlq_topic, timeout_s=2))
    assert sorted(d.value["raw"] for d in dlq) == sorted(POISON)
    for d in dlq:
        v = d.value
        assert v["topic"] == k.input_topic and v["partition"] == 0 and half <= v["offset"] < half + len(POISON)
        assert d.key == f"{k.input_topic}:0:{v['offset']}".encode()
        assert v["reason"].split(":")[0] in ("not_msgpack", "missing_field", "bad_type", "out_of_range")

    # Offsets were committed: resuming the group from its committed offsets finds nothing new.
    resumed = peer_config.model_copy(update={"kafka": k.model_copy(update={"starting_offsets": "committed"})})
    again = run_peer(resumed, idle_timeout_s=2)
    assert again.records == 0 and again.polls == 0


@pytest.mark.kafka
def test_pseudonymous_peer_keys_lists_by_pseudonym_and_redacts_dead_letters(kafka_broker, peer_config, tmp_path):
    key_file = tmp_path / "pseudonym.key"
    key_file.write_text("peer-test-key-" + "k" * 32 + "\n")
    privacy = PrivacyConfig(pseudonymize=True, key_file=str(key_file))
    config = peer_config.model_copy(update={"privacy": privacy})
    k = config.kafka
    events = generated_log(80, seed=2)
    replay(events, kafka_broker.bootstrap, k.input_topic)
    prod = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
    for raw in POISON:
        prod.send(k.input_topic, raw)
    prod.flush()
    prod.close()

    stats = run_peer(config, max_events=len(events) + len(POISON), idle_timeout_s=20)

    key = load_key(privacy)
    out = list(consume(kafka_broker.bootstrap, k.output_topic, timeout_s=2))
    assert len(out) == stats.emitted > 0
    assert {r.key.decode() for r in out} == {key.pseudonym(e.user_id) for e in events}
    assert all(r.value["user_id"] == r.key.decode() for r in out)
    dlq = list(consume(kafka_broker.bootstrap, k.dlq_topic, timeout_s=2))
    assert len(dlq) == len(POISON)
    assert all(d.value["raw"] == b"" and d.value["raw_redacted"] and ": " not in d.value["reason"] for d in dlq)

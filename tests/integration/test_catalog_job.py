"""The catalog join on a real broker: out-of-stock and deleted items leave every later list,
a new catalog item reaches a cold shopper's list with reason ``new_in_catalog``, and a bad
catalog record is a dead letter."""

from __future__ import annotations

import time
from collections import Counter

import msgpack
import pytest
from kafka import KafkaProducer

from streamrec.catalog_files import catalog_records, write_catalog_jsonl
from streamrec.cli import main as cli
from streamrec.kafka_io import consume, produce, replay
from tests.support.job_fixtures import generated_log
from udfs.artifact import load_artifact
from udfs.catalog import CatalogItem, encode_catalog_item
from udfs.config import TOPIC_FIELDS
from udfs.events import Event
from udfs.reasons import REASON_CODES

pytestmark = [pytest.mark.kafka, pytest.mark.flink]

NEW_ITEM = "new-in-catalog-1"
COLD_USER = 987654321
BAD_RECORD = msgpack.packb({"item_id": 1, "category_id": 2, "updated_at": "yesterday"})


def trigger(user, item, behavior, ts) -> tuple:
    return (str(user), str(item), behavior, ts)


def replay_catalog(bootstrap: str, topic: str, items: list[CatalogItem]) -> None:
    produce(bootstrap, topic, catalog_records(items))


def collect(bootstrap: str, topic: str, want: int, job, timeout_s: float = 180) -> list:
    out: list = []
    deadline = time.monotonic() + timeout_s
    while len(out) < want and time.monotonic() < deadline and job.poll() is None:
        out += list(consume(bootstrap, topic, timeout_s=5, group_id="verify-" + topic))
    assert job.poll() is None, "job died"
    return out


def test_catalog_rules_hold_in_the_running_job(kafka_broker, unique_topic, kafka_jobs, fixture_artifact, tmp_path):
    topics = {f: unique_topic(f.split("_")[0]) for f in TOPIC_FIELDS}
    job = kafka_jobs(topics)
    bootstrap = kafka_broker.bootstrap
    events = generated_log(600, seed=11)
    half = len(events) // 2
    first, second = events[:half], events[half:]
    first_keys = {trigger(e.user_id, e.item_id, e.behavior, e.ts) for e in first}

    # Before the catalog: which items do lists hold most?
    replay(first, bootstrap, topics["input_topic"])
    before = collect(bootstrap, topics["output_topic"], len(first_keys), job)
    assert before, "job produced nothing"
    counts = Counter(i for r in before for i in r.value["items"])
    popular = [i for i, _ in counts.most_common(4)]
    category = {**load_artifact(fixture_artifact).tables.item_category, **{e.item_id: e.category_id for e in events}}

    # The catalog: three popular items out of stock, one deleted, one new item; then a bad record.
    t0 = int(time.time() * 1000)
    cold_item = first[0]
    records = [CatalogItem(i, category[i], None, None, 0, None, t0, False) for i in popular[:3]]
    records.append(CatalogItem(popular[3], category[popular[3]], None, None, 5, None, t0, True))
    records.append(CatalogItem(NEW_ITEM, cold_item.category_id, "Newco", 9.5, 10, "fresh new thing", t0, False))
    shelf = tmp_path / "catalog.jsonl"
    write_catalog_jsonl(records, shelf)
    assert cli(["catalog", "publish", "--file", str(shelf), "--topic", topics["catalog_topic"],
                "--bootstrap-servers", bootstrap]) == 0
    # A restock dated far in the future (it would win over every later record) and a tombstone (the
    # job reads no key for it) are dead letters too, and the item stays out of stock.
    future = records[0]._replace(stock=5, updated_at=9_999_999_999_999)
    prod = KafkaProducer(bootstrap_servers=bootstrap)
    prod.send(topics["catalog_topic"], key=str(future.item_id).encode(), value=encode_catalog_item(future))
    prod.send(topics["catalog_topic"], key=str(popular[1]).encode(), value=None)
    prod.send(topics["catalog_topic"], key=b"1", value=BAD_RECORD)
    prod.flush()
    prod.close()
    # One partition, read in order: the bad record's dead letter means the job has taken the rest,
    # and it must come within the rule's minute.
    dlq: list = []
    deadline = time.monotonic() + 60
    while len(dlq) < 3 and time.monotonic() < deadline:
        dlq = list(consume(bootstrap, topics["dlq_topic"], timeout_s=3))
    assert [d.value["reason"].split(":")[0] for d in dlq] == ["future_timestamp", "tombstone", "bad_type"]
    assert dlq[2].value["raw"] == BAD_RECORD and dlq[2].value["topic"] == topics["catalog_topic"]
    assert dlq[2].value["reason"].startswith("bad_type:updated_at")

    # After it: the rest of the log, and a shopper with no history touching the new item's category.
    last_ts = max(e.ts for e in events)
    cold = Event(COLD_USER, cold_item.item_id, cold_item.category_id, "pv", last_ts + 1000)
    replay([*second, cold], bootstrap, topics["input_topic"])
    later_keys = {trigger(e.user_id, e.item_id, e.behavior, e.ts) for e in [*second, cold]} - first_keys
    out = collect(bootstrap, topics["output_topic"], len(later_keys), job)
    later = [r.value for r in out
             if trigger(r.value["user_id"], r.value["trigger"]["item_id"], r.value["trigger"]["behavior"],
                        r.value["trigger"]["ts"]) in later_keys]
    assert len(later) == len(later_keys)
    blocked = set(popular)
    assert not [r for r in later if blocked & set(r["items"])], "a list holds an out-of-stock or deleted item"
    # Every list keeps one reason per item, in order, of a documented code.
    assert all(len(r["reasons"]) == len(r["items"]) and all(x["code"] in REASON_CODES for x in r["reasons"])
               for r in later)

    cold_lists = [r for r in later if r["user_id"] == COLD_USER]
    assert len(cold_lists) == 1
    assert NEW_ITEM in cold_lists[0]["items"]
    assert cold_lists[0]["reasons"][cold_lists[0]["items"].index(NEW_ITEM)] == {"code": "new_in_catalog"}


def test_a_catalog_read_while_events_are_idle_never_makes_events_late(kafka_broker, unique_topic, kafka_jobs):
    """The catalog has no event time: its records' Kafka timestamps (publish time, years after the
    log's events) must not become the job's watermark while the events' input is idle."""
    topics = {f: unique_topic(f.split("_")[0]) for f in TOPIC_FIELDS}
    job = kafka_jobs(topics, STREAMREC_JOB_SOURCE_IDLENESS_MS="1000")
    bootstrap = kafka_broker.bootstrap
    events = generated_log(200, seed=12)
    replay(events[:1], bootstrap, topics["input_topic"])
    assert collect(bootstrap, topics["output_topic"], 1, job), "job produced nothing"
    # Events idle now; the catalog trickles in for several idleness periods, then the rest of the log.
    now = int(time.time() * 1000)
    for k in range(5):
        shelf = [CatalogItem(f"shelf-{k}-{j}", 1, None, None, 3, None, now, False) for j in range(10)]
        replay_catalog(bootstrap, topics["catalog_topic"], shelf)
        time.sleep(1.5)
    replay(events[1:], bootstrap, topics["input_topic"])
    keys = {trigger(e.user_id, e.item_id, e.behavior, e.ts) for e in events}
    collect(bootstrap, topics["output_topic"], len(keys) - 1, job)
    late = list(consume(bootstrap, topics["late_topic"], timeout_s=3))
    assert late == []

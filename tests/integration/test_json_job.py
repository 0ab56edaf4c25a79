"""A shop's JSON events, with its own field names, behavior names and ISO 8601 times, through the job
between real Kafka topics: the same lists as the same events sent as canonical msgpack."""

from __future__ import annotations

import datetime as dt
import json

import msgpack
import pytest
from kafka import KafkaProducer

from jobs.io import to_json
from streamrec.kafka_io import consume, replay
from tests.support.job_fixtures import generated_log, read_lists
from tests.support.schemas import validator

pytestmark = [pytest.mark.kafka, pytest.mark.flink]

TOPICS = ("input_topic", "output_topic", "dlq_topic", "late_topic")
THEIR_BEHAVIOR = {"pv": "view", "cart": "add_to_cart", "fav": "wishlist", "buy": "purchase"}
SHOP_ENV = {
    "STREAMREC_INPUT_FORMAT": "json",
    "STREAMREC_INPUT_USER_FIELD": "uid",
    "STREAMREC_INPUT_ITEM_FIELD": "sku",
    "STREAMREC_INPUT_CATEGORY_FIELD": "cat",
    "STREAMREC_INPUT_BEHAVIOR_FIELD": "event_type",
    "STREAMREC_INPUT_TS_FIELD": "timestamp",
    "STREAMREC_INPUT_TS_UNIT": "iso8601",
    "STREAMREC_INPUT_BEHAVIORS": ",".join(f"{theirs}={ours}" for ours, theirs in THEIR_BEHAVIOR.items()),
}
POISON = [b"{not json", b'["a", "list"]', json.dumps({"uid": 1, "sku": 2, "cat": 3, "event_type": "click",
                                                      "timestamp": "2023-11-14T22:13:20Z"}).encode()]


def iso(ts_ms: int, hours: int) -> str:
    """``ts_ms`` as an ISO 8601 string at a UTC offset of ``hours``, to the millisecond."""
    zone = dt.timezone(dt.timedelta(hours=hours))
    return dt.datetime.fromtimestamp(ts_ms / 1000, zone).isoformat(timespec="milliseconds")


def shop_json(i: int, event) -> bytes:
    """The event as a shop would send it: its own names, string ids for some shoppers, local times."""
    return json.dumps({
        "uid": str(event.user_id) if i % 2 else event.user_id,
        "sku": event.item_id,
        "cat": event.category_id,
        "event_type": THEIR_BEHAVIOR[event.behavior],
        "timestamp": iso(event.ts, 8 if i % 3 else 0),
        "page": "/p/" + str(event.item_id),
    }).encode()


def without_generated_at(lists: list[dict]) -> list[dict]:
    return sorted(({k: v for k, v in r.items() if k != "generated_at"} for r in lists),
                  key=lambda r: (str(r["user_id"]), r["seq"]))


def test_a_json_stream_in_the_shops_names_gives_the_lists_of_its_msgpack_twin(kafka_broker, unique_topic, kafka_jobs):
    events = generated_log(400, seed=21)
    accepted = len({(e.user_id, e.item_id, e.behavior, e.ts) for e in events})
    twin = {f: unique_topic("twin-" + f.split("_")[0]) for f in TOPICS}
    shop = {f: unique_topic("shop-" + f.split("_")[0]) for f in TOPICS}
    replay(events, kafka_broker.bootstrap, twin["input_topic"])
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
    for i, event in enumerate(events):
        producer.send(shop["input_topic"], key=str(event.user_id).encode(), value=shop_json(i, event))
        if i in (50, 150, 250):
            producer.send(shop["input_topic"], POISON[i // 100])
    producer.flush()

    twin_job = kafka_jobs(twin)
    shop_job = kafka_jobs(shop, **SHOP_ENV)
    twin_lists = read_lists(kafka_broker.bootstrap, twin["output_topic"], accepted, twin_job)
    shop_lists = read_lists(kafka_broker.bootstrap, shop["output_topic"], accepted, shop_job)

    assert shop_job.poll() is None and twin_job.poll() is None, "a job died"
    assert len(twin_lists) == accepted
    assert without_generated_at(shop_lists) == without_generated_at(twin_lists)
    dead = list(consume(kafka_broker.bootstrap, shop["dlq_topic"], timeout_s=5))
    assert sorted(d.value["raw"] for d in dead) == sorted(POISON)
    lists, dead_letters = validator("list"), validator("dead_letter")
    for r in shop_lists:
        lists.validate(r)
    for d in dead:
        dead_letters.validate(to_json("dead_letters", msgpack.packb(d.value, use_bin_type=True), ""))
    assert sorted(d.value["reason"].split(":")[0] for d in dead) == ["not_a_map", "not_json", "unknown_behavior"]

"""`streamrec serve`: lookups, errors, trending, metrics and the page's events (in process), and the
follower against the real broker: rebuild from the topic, resume after a restart, live updates."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import msgpack
import pytest
from kafka import KafkaProducer
from starlette.testclient import TestClient

from streamrec.lab.local.kafka import free_ports
from streamrec.lab.local.serve_process import ServeProcess, get_json
from streamrec.serve import follower as follower_module
from streamrec.serve.app import build_app
from streamrec.serve.context import MAX_EVENT_BODY, ServeContext
from streamrec.serve.follower import CatalogFollower, Follower
from streamrec.serve.lists_decoder import decode_list
from streamrec.serve.store import RedisStore, SqliteStore, Store
from tests.support.serve_fixtures import StubFollower, open_access, output_value, put_list
from tests.support.store_fixtures import StoreFactory
from udfs.catalog import CatalogItem, encode_catalog_item
from udfs.config import Config
from udfs.events import decode_event
from udfs.reasons import render_reason
from udfs.records import decode_output_record


@contextmanager
def following(store: Store, bootstrap: str, topic: str) -> Iterator[Follower]:
    """A follower of ``topic`` into ``store``, started and caught up; stopped on leaving."""
    f = Follower(store, bootstrap, topic)
    f.start()
    try:
        assert f.ready.wait(60), f.last_error
        yield f
    finally:
        f.stop()


def test_lookup_returns_the_latest_list_with_reasons_version_arm_and_age(served):
    client, store, _, _ = served
    put_list(store, output_value(42, 1, [7, 8]), 0)
    put_list(store, output_value(42, 2, [11, "x-9", 8], arm="b", model_version="m-2"), 1)
    r = client.get("/v1/users/42/recommendations")
    assert r.status_code == 200
    body = r.json()
    assert body["known"] is True and body["trending"] is False
    assert (body["seq"], body["model_version"], body["arm"], body["provider"]) == (2, "m-2", "b", "cpu")
    assert [i["item_id"] for i in body["items"]] == [11, "x-9", 8]
    assert body["items"][0]["reason"] == {"code": "covisit", "because": 5}
    assert body["items"][0]["because"] == render_reason({"code": "covisit", "because": 5}, lambda i: f"item {i}")
    assert body["items"][0]["category_id"] == 4 and "category_id" not in body["items"][1]
    assert 0 <= body["age_ms"] < 60_000
    # "42" and 42 are one shopper (the id rule); a string id is looked up as itself
    assert client.get("/v1/users/%2042/recommendations").json()["known"] is False


def test_unknown_shopper_gets_the_trending_list_marked_as_such(served):
    client, store, _, _ = served
    put_list(store, output_value(1, 1, [7, 8, 9]), 0)
    put_list(store, output_value(2, 1, [8, 9, 10]), 1)
    body = client.get("/v1/users/unknown-shopper/recommendations").json()
    assert body["known"] is False and body["trending"] is True and body["age_ms"] is None
    # counted over the stored lists, an item placed for "trending" twice (output_value: all but the first):
    # 9: 2 + 2, 8: 2 + 1 (covisit in the second list), 10: 2, 7: 1 (cut: trending_size 3)
    assert [i["item_id"] for i in body["items"]] == [9, 8, 10]
    assert all(i["reason"] == {"code": "trending"} and i["because"] == "Trending now" for i in body["items"])


@pytest.mark.parametrize("raw, why", [
    ("a%01b", "bad_id:user_id: control character U+0001"),
    ("x" * 129, "out_of_range:user_id"),
    ("99999999999999999999999", None),  # too big for int64: stays a string id, looked up as such (unknown)
])
def test_malformed_ids_get_a_400_with_the_reason_never_a_500(served, raw, why):
    client, _, _, _ = served
    r = client.get(f"/v1/users/{raw}/recommendations")
    if why is None:
        assert r.status_code == 200 and r.json()["known"] is False
        return
    assert r.status_code == 400 and why in r.json()["error"]
    s = client.get(f"/v1/users/{raw}/recommendations/stream")
    assert s.status_code == 400 and why in s.json()["error"]


def test_posted_event_is_validated_then_sent_with_the_catalog_category(served):
    client, _, _, sent = served
    r = client.post("/v1/events", json={"user_id": "42", "item_id": 11, "behavior": "cart"})
    assert r.status_code == 202, r.text
    assert r.json()["topic"] == "events" and r.json()["event"]["category_id"] == 4
    ev = sent[-1]
    assert (ev.user_id, ev.item_id, ev.category_id, ev.behavior) == (42, 11, 4, "cart")
    assert abs(ev.ts - time.time() * 1000) < 60_000
    bad = [(b"{", "not JSON"), (b"[1]", "JSON object"), (json.dumps({"user_id": 1, "item_id": 2}), "missing field"),
           (json.dumps({"user_id": 1, "item_id": 2, "behavior": "steal"}), "behavior must be one of"),
           (json.dumps({"user_id": True, "item_id": 2, "behavior": "pv"}), "invalid user_id: bad_type")]
    for body, why in bad:
        r = client.post("/v1/events", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and why in r.json()["error"], (body, r.text)
    r = client.post("/v1/events", content=b"x" * 5000, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "body over" in r.json()["error"]
    assert len(sent) == 1


def test_a_failing_broker_is_a_503_naming_the_error_but_not_the_brokers(served):
    client, _, ctx, _ = served

    def down(event):
        raise ConnectionError("broker kafka-7.internal:9093 unreachable as user 'alice'")

    ctx.send_event = down
    r = client.post("/v1/events", json={"user_id": 1, "item_id": 2, "behavior": "pv"})
    assert r.status_code == 503 and "ConnectionError" in r.json()["error"]
    assert "kafka-7" not in r.text and "alice" not in r.text


def test_health_and_metrics(served, tmp_path):
    client, store, ctx, _ = served
    put_list(store, output_value(42, 1, [7]), 0)
    client.get("/v1/users/42/recommendations")
    client.get("/v1/users/a%01/recommendations")
    assert client.get("/healthz").json()["status"] == "ok"
    text = client.get("/metrics").text
    assert 'streamrec_serve_requests_total{route="recommendations",code="200"} 1' in text
    assert 'streamrec_serve_requests_total{route="recommendations",code="400"} 1' in text
    assert "streamrec_serve_lookup_seconds_count 1" in text and "streamrec_serve_shoppers 1" in text
    ctx.follower.ready.clear()
    r = client.get("/healthz")
    assert r.status_code == 503 and r.json()["status"] == "catching_up"
    assert client.get("/nope").status_code == 404
    assert client.get("/v1/users?limit=0").status_code == 400
    assert client.get("/v1/users").json()["users"] == [42]
    assert "EventSource" in client.get("/").text


def test_store_of_another_topic_starts_empty(make_store: StoreFactory):
    store = make_store("s", "a")
    store.write([(decode_output_record(output_value(1, 1, [2])), 0, 0)], {0: 1})
    store.close()
    again = make_store("s", "a")
    assert again.positions() == {0: 1} and again.get("1").record.items == [2] and again.count() == 1
    again.close()
    other = make_store("s", "b")
    assert other.positions() == {} and other.get("1") is None and other.count() == 0
    assert other.recent_users(10) == [] and other.trending(5, 100) == []


@pytest.mark.parametrize("mark", ["json-0", None])
def test_a_sqlite_store_of_an_older_list_format_is_rebuilt_from_the_topic(tmp_path, mark):
    """Lists are stored as msgpack; a file written as JSON before (marked so, or unmarked as the first
    versions left it) must not be read as msgpack: its lists and positions go, the follower rebuilds."""
    path = tmp_path / "view.sqlite"
    store = SqliteStore(path, "recs", "catalog")
    store.write([(decode_output_record(output_value(1, 1, [2])), 0, 0)], {0: 1})
    store.write_items([_cat(7, 1, "Kettle")], {0: 1})
    with sqlite3.connect(path) as con:
        con.execute("UPDATE lists SET body = ?", ('{"user_id": 1}',))
        if mark is None:
            con.execute("DELETE FROM meta WHERE key = 'lists_format'")
        else:
            con.execute("UPDATE meta SET value = ? WHERE key = 'lists_format'", (mark,))
    store.close()
    again = SqliteStore(path, "recs", "catalog")
    assert (again.count(), again.positions(), again.get("1")) == (0, {}, None)
    assert again.item_count() == 1 and again.catalog_positions() == {0: 1}  # the catalog's view is not lists
    again.write([(decode_output_record(output_value(1, 2, [3])), 0, 5)], {0: 6})
    assert again.get("1").record.items == [3] and again.trending(5, 10) == [3] and again.recent_users(5) == [1]


def test_store_write_is_all_or_nothing(make_store: StoreFactory):
    """A batch with a list that cannot be stored leaves neither its other lists nor the positions behind,
    so a restart reads the batch again rather than skipping it."""
    store = make_store("s", "a")
    put_list(store, output_value(1, 1, [2]), 0)
    good = decode_output_record(output_value(2, 1, [3]))
    bad = good._replace(user_id=3, items=[object()])  # not JSON-encodable: fails mid-batch
    with pytest.raises(TypeError):
        store.write([(good, 0, 1), (bad, 0, 2)], {0: 3})
    assert store.positions() == {0: 1} and store.get("2") is None and store.count() == 1


def test_later_offsets_win_and_recent_users_are_newest_first(make_store: StoreFactory):
    store = make_store("s", "a")
    store.write([(decode_output_record(output_value(u, 1, [u])), 0, u) for u in (1, 2, 3)], {0: 4})
    store.write([(decode_output_record(output_value(1, 2, [10, 11])), 0, 4)], {0: 5})
    assert store.get("1").record.items == [10, 11] and store.get("1").offset == 4
    assert store.recent_users(2) == [1, 3] and store.count() == 3


def _cat(item, updated_at, title=None, price=None, brand=None, category=4, **over) -> CatalogItem:
    return CatalogItem(item_id=item, category_id=category, brand=brand, price=price, stock=over.pop("stock", None),
                       title=title, updated_at=updated_at, **over)


def test_catalog_records_a_later_updated_at_wins_whatever_the_order(make_store: StoreFactory):
    store = make_store("s", "recs")
    assert store.catalog_positions() == {} and store.items([7]) == {}
    taken = store.write_items([_cat(7, 200, "Kettle", 30.0), _cat(7, 100, "Old kettle", 10.0),  # older: ignored
                               _cat("x-9", 50, "Mug", None, "Acme")], {0: 3})
    assert taken == 2
    got = store.items([7, "x-9", 8])
    assert set(got) == {7, "x-9"} and got[7].title == "Kettle" and got[7].price == 30.0
    assert got["x-9"].brand == "Acme" and got["x-9"].price is None
    # a later batch: an older record is ignored, a tie keeps the stored one, a later one replaces it
    assert store.write_items([_cat(7, 150, "Older"), _cat("x-9", 50, "Tie")], {0: 5}) == 0
    assert store.items([7])[7].title == "Kettle" and store.items(["x-9"])["x-9"].title == "Mug"
    assert store.write_items([_cat(7, 300, "Kettle 2", 25.0, stock=0)], {0: 6}) == 1
    assert store.items([7])[7] == _cat(7, 300, "Kettle 2", 25.0, stock=0)
    assert store.catalog_positions() == {0: 6} and store.item_count() == 2
    # lists and items are separate views: another catalog topic empties the items only
    put_list(store, output_value(1, 1, [7]), 0)
    store.close()
    again = make_store("s", "recs")
    assert again.catalog_positions() == {0: 6} and again.item_count() == 2  # no catalog topic named: kept
    again.close()
    if make_store.backend == "sqlite":
        other = SqliteStore(make_store.tmp_path / "s.sqlite", "recs", catalog_topic="other-catalog")
    else:
        other = RedisStore(make_store.redis_url, "recs", prefix=make_store._prefix("s"), catalog_topic="other-catalog")
    assert other.item_count() == 0 and other.catalog_positions() == {} and other.count() == 1


def test_lookup_adds_title_brand_and_price_where_the_catalog_has_them(served):
    client, store, ctx, _ = served
    ctx.catalog_follower = StubFollower()
    store.write_items([_cat(11, 1, "Blue kettle", 29.5, "Acme", category=9), _cat(5, 1, "Teapot"),
                       _cat(8, 1, None, 3.0)], {0: 3})
    put_list(store, output_value(42, 1, [11, "x-9", 8]), 0)
    items = client.get("/v1/users/42/recommendations").json()["items"]
    assert {k: items[0][k] for k in ("title", "brand", "price")} == {"title": "Blue kettle", "brand": "Acme",
                                                                     "price": 29.5}
    assert items[0]["category_id"] == 4  # the model artifact's category comes first
    assert items[0]["because"] == "Because you viewed Teapot"  # output_value: covisit because item 5
    assert not {"title", "brand", "price"} & set(items[1])  # no catalog record
    assert items[2]["price"] == 3.0 and "title" not in items[2] and items[2]["category_id"] == 4
    trending = client.get("/v1/users/someone-new/recommendations").json()["items"]
    assert [(i["item_id"], i.get("title"), i.get("price")) for i in trending] == \
        [("x-9", None, None), (8, None, 3.0), (11, "Blue kettle", 29.5)]  # trending counts: 2, 2, 1
    health = client.get("/healthz").json()
    assert health["catalog"]["items"] == 3 and health["catalog"]["ready"] is True



def test_an_item_the_catalog_now_says_cannot_be_sold_never_leaves_the_api(served):
    """The stored list is as old as the shopper's last event; the catalog's later word wins at read time."""
    client, store, ctx, _ = served
    ctx.catalog_follower = StubFollower()
    put_list(store, output_value(42, 1, [11, 12, 13, 14]), 0)
    store.write_items([_cat(11, 1, "Kettle", stock=0), _cat(12, 1, "Mug", deleted=True), _cat(13, 1, "Cup", stock=3)],
                      {0: 3})
    body = client.get("/v1/users/42/recommendations").json()
    assert [i["item_id"] for i in body["items"]] == [13, 14]  # 14: no record, sellable
    assert body["filtered"] == {"unavailable": 2, "excluded": 0, "other_category": 0} and body["total"] == 2
    store.write_items([_cat(11, 2, "Kettle", stock=5)], {0: 4})  # back in stock: back in the list
    assert [i["item_id"] for i in client.get("/v1/users/42/recommendations").json()["items"]] == [11, 13, 14]
    trending = client.get("/v1/users/someone-new/recommendations").json()
    assert 12 not in [i["item_id"] for i in trending["items"]] and trending["filtered"]["unavailable"] == 1


def test_lookup_takes_n_offset_exclude_and_category(served):
    client, store, ctx, _ = served
    ctx.catalog_follower = StubFollower()
    put_list(store, output_value(42, 1, [1, 2, 3, 4, 5, 6]), 0)
    store.write_items([_cat(i, 1, f"item {i}", category=7 if i % 2 else 8) for i in range(1, 7)], {0: 6})
    get = lambda q: client.get(f"/v1/users/42/recommendations?{q}")  # noqa: E731
    ids = lambda r: [i["item_id"] for i in r.json()["items"]]  # noqa: E731
    assert ids(get("n=2")) == [1, 2] and ids(get("n=2&offset=2")) == [3, 4] and ids(get("offset=5")) == [6]
    r = get("exclude=2,5&n=3")
    assert ids(r) == [1, 3, 4] and r.json()["filtered"]["excluded"] == 2 and r.json()["total"] == 4
    # the category of an item: the model artifact's first (output_value's items have category 4), then the catalog's
    ctx.catalog.item_category.clear()
    r = get("category=7")
    assert ids(r) == [1, 3, 5] and r.json()["filtered"]["other_category"] == 3
    for bad, name in (("n=0", "n must"), ("n=abc", "n must"), ("n=1001", "n must"), ("offset=-1", "offset must"),
                      ("exclude=" + ",".join(map(str, range(201))), "exclude takes"),
                      ("category=" + "x" * 300, "invalid category")):
        r = get(bad)
        assert r.status_code == 400 and name in r.json()["error"], (bad, r.text)


def test_a_lookup_revalidates_with_its_etag_and_changes_with_the_list(served):
    client, store, ctx, _ = served
    put_list(store, output_value(42, 1, [1, 2]), 0)
    first = client.get("/v1/users/42/recommendations")
    assert first.headers["cache-control"] == "private, no-cache" and first.headers["etag"].startswith('W/"')
    time.sleep(0.01)  # age_ms moves: the validator does not
    again = client.get("/v1/users/42/recommendations", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == first.headers["etag"]
    other_page = client.get("/v1/users/42/recommendations?n=1", headers={"If-None-Match": first.headers["etag"]})
    assert other_page.status_code == 200  # another answer, another validator
    put_list(store, output_value(42, 2, [2, 1]), 1)
    changed = client.get("/v1/users/42/recommendations", headers={"If-None-Match": first.headers["etag"]})
    assert changed.status_code == 200 and changed.headers["etag"] != first.headers["etag"]


def test_a_batch_lookup_answers_each_shopper_in_order_and_is_bounded(served):
    client, store, ctx, _ = served
    put_list(store, output_value(42, 1, [1, 2, 3]), 0)
    put_list(store, output_value(7, 1, [4, 5]), 1)
    r = client.get("/v1/recommendations?users=7,someone-new,42&n=1")
    assert r.status_code == 200
    bodies = r.json()["users"]
    assert [(b["user_id"], b["known"]) for b in bodies] == [(7, True), ("someone-new", False), (42, True)]
    assert [i["item_id"] for i in bodies[0]["items"]] == [4] and len(bodies[1]["items"]) <= 1  # n=1 for each
    single = client.get("/v1/users/42/recommendations?n=1").json()
    assert {k: v for k, v in bodies[2].items() if k != "age_ms"} == {k: v for k, v in single.items() if k != "age_ms"}
    for query, message in (("", "at least one"), ("users=" + ",".join(map(str, range(101))), "at most 100"),
                           ("users=1&n=0", "n must")):
        bad = client.get(f"/v1/recommendations?{query}")
        assert bad.status_code == 400 and message in bad.json()["error"], (query, bad.text)

# --- against the real broker ------------------------------------------------------------------


def _wait(predicate, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.kafka
def test_follower_rebuilds_from_the_topic_resumes_after_restart_and_skips_bad_records(kafka_broker, unique_topic,
                                                                                     make_store: StoreFactory):
    topic = unique_topic("recs", partitions=2)
    prod = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
    for user in range(20):
        prod.send(topic, key=str(user).encode(), value=output_value(user, 1, [100 + user]))
        prod.send(topic, key=str(user).encode(), value=output_value(user, 2, [200 + user, 7]))
    prod.send(topic, key=b"junk", value=b"\xc1")
    prod.send(topic, key=b"old", value=msgpack.packb({"schema_version": 99}))
    prod.flush()

    store = make_store("view", topic)
    with following(store, kafka_broker.bootstrap, topic) as f:
        assert store.count() == 20 and f.bad_records == 2
        assert all(store.get(str(u)).record.items == [200 + u, 7] for u in range(20))
    positions = store.positions()
    assert sum(positions.values()) == 42

    # while it is down, newer lists arrive; after a restart only those are read
    prod.send(topic, key=b"3", value=output_value(3, 3, [333]))
    prod.flush()
    with following(store, kafka_broker.bootstrap, topic) as f2:
        _wait(lambda: f2.records >= 1, what="the new list")
        assert f2.records == 1 and store.get("3").record.items == [333]
    # a deleted store is rebuilt from the beginning of the topic
    store.close()
    make_store.wipe("view")
    fresh = make_store("view", topic)
    with following(fresh, kafka_broker.bootstrap, topic) as f3:
        assert fresh.count() == 20 and fresh.get("3").record.items == [333] and f3.records == 41
    prod.close()


@pytest.mark.kafka
def test_serve_process_reads_committed_lists_streams_changes_and_sends_page_events(kafka_broker, unique_topic,
                                                                                   tmp_path):
    out_topic, in_topic = unique_topic("recs"), unique_topic("events")
    tx = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, transactional_id="serve-test-" + out_topic)
    tx.init_transactions()
    tx.begin_transaction()
    tx.send(out_topic, key=b"42", value=output_value(42, 1, [1, 2]))
    tx.commit_transaction()
    tx.begin_transaction()
    tx.send(out_topic, key=b"42", value=output_value(42, 2, [666]))
    tx.abort_transaction()  # read_committed: never shown

    serve = ServeProcess(kafka_broker.bootstrap, in_topic, out_topic, tmp_path / "serve.sqlite",
                         tmp_path / "serve.log", settings={"serve": {"accept_events": True}})
    serve.start()
    base = serve.base
    try:
        status, body = get_json(base + "/v1/users/42/recommendations")
        assert status == 200 and body["seq"] == 1 and [i["item_id"] for i in body["items"]] == [1, 2]

        # the live stream: the current list at once, then the next committed one
        import urllib.request
        stream = urllib.request.urlopen(base + "/v1/users/42/recommendations/stream", timeout=30)
        first = _next_sse(stream)
        assert first["seq"] == 1
        tx.begin_transaction()
        tx.send(out_topic, key=b"42", value=output_value(42, 3, [3, 4, 5]))
        tx.commit_transaction()
        update = _next_sse(stream)
        assert update["seq"] == 3 and [i["item_id"] for i in update["items"]] == [3, 4, 5]
        stream.close()

        # a click on the page: one event in the input topic, in the job's input layout
        req = urllib.request.Request(base + "/v1/events", method="POST",
                                     data=json.dumps({"user_id": 42, "item_id": 4, "behavior": "buy",
                                                      "category_id": 9}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=15) as r:
            assert r.status == 202
        from kafka import KafkaConsumer
        cons = KafkaConsumer(in_topic, bootstrap_servers=kafka_broker.bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=10_000)
        msgs = list(cons)
        cons.close()
        assert len(msgs) == 1 and msgs[0].key == b"42"
        ev = decode_event(msgs[0].value)
        assert (ev.user_id, ev.item_id, ev.category_id, ev.behavior) == (42, 4, 9, "buy")
        metrics = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        assert 'streamrec_serve_events_sent_total{behavior="buy"} 1' in metrics
        assert "streamrec_serve_ready 1" in metrics
    finally:
        serve.stop()
        tx.close()


def _next_sse(stream) -> dict:
    """The data of the next `list` event of a text/event-stream response."""
    event, data = None, []
    while True:
        line = stream.readline().decode().rstrip("\n")
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "" and data:
            if event == "list":
                return json.loads("\n".join(data))
            event, data = None, []


def test_serve_without_the_extra_names_it(monkeypatch, capsys):
    import sys

    from streamrec.cli import main
    for name in [m for m in sys.modules if m.startswith(("streamrec.serve.", "starlette"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "starlette", None)  # as if not installed
    assert main(["serve", "--port", "1"]) == 2
    assert "'serve' extra" in capsys.readouterr().err


@pytest.mark.kafka
def test_an_open_transaction_at_the_end_does_not_hold_readiness(kafka_broker, unique_topic, make_store: StoreFactory):
    topic = unique_topic("recs")
    prod = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, transactional_id="open-" + topic)
    prod.init_transactions()
    prod.begin_transaction()
    prod.send(topic, key=b"1", value=output_value(1, 1, [10]))
    prod.commit_transaction()
    prod.begin_transaction()  # a job that died mid-transaction: the broker aborts it only after its timeout
    prod.send(topic, key=b"1", value=output_value(1, 2, [20]))
    prod.flush()
    store = make_store("view", topic)
    try:
        with following(store, kafka_broker.bootstrap, topic):
            assert store.get("1").record.items == [10]  # read_committed: the end is the last stable offset
            prod.commit_transaction()
            _wait(lambda: store.get("1").record.items == [20], what="the list committed later")
    finally:
        prod.close()


def test_store_is_chosen_by_config_and_redis_without_its_client_names_the_extra(monkeypatch, tmp_path, capsys,
                                                                               redis_server):
    from streamrec.cli import main
    from streamrec.serve.server import open_store
    from streamrec.serve.store import RedisStore, SqliteStore
    from udfs.config import load_config

    sqlite = open_store(load_config(environ={"STREAMREC_SERVE_STORE_PATH": str(tmp_path / "v.sqlite")}))
    assert isinstance(sqlite, SqliteStore)
    sqlite.close()
    cfg = load_config(environ={"STREAMREC_SERVE_STORE": "redis", "STREAMREC_SERVE_REDIS_URL": redis_server.url,
                               "STREAMREC_SERVE_REDIS_PREFIX": "cfg-test", "STREAMREC_KAFKA_OUTPUT_TOPIC": "t"})
    store = open_store(cfg)
    assert isinstance(store, RedisStore) and store.prefix == "cfg-test" and store.positions() == {}
    store.close()

    monkeypatch.setitem(sys.modules, "redis", None)  # as if the extra were not installed
    with pytest.raises(ImportError, match="'serve' extra"):
        open_store(cfg)
    monkeypatch.setenv("STREAMREC_SERVE_STORE", "redis")
    assert main(["serve", "--port", "1"]) == 2
    assert "'serve' extra" in capsys.readouterr().err


@pytest.mark.parametrize(("env", "key"), [
    ({"STREAMREC_SERVE_STORE": "memcached"}, "serve.store"),
    ({"STREAMREC_SERVE_REDIS_URL": "127.0.0.1:6379"}, "serve.redis_url"),
    ({"STREAMREC_SERVE_REDIS_PREFIX": "has space"}, "serve.redis_prefix"),
])
def test_bad_store_settings_name_the_key(env, key):
    from udfs.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(environ=env)


@pytest.mark.kafka
def test_serve_process_follows_the_catalog_topic_for_titles_and_prices(kafka_broker, unique_topic, tmp_path):
    out_topic, in_topic, cat_topic = unique_topic("recs"), unique_topic("events"), unique_topic("catalog")
    kafka_broker.create_topics([cat_topic], compacted=[cat_topic])
    prod = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
    prod.send(out_topic, key=b"42", value=output_value(42, 1, [11, 12, 13]))

    def publish(item: CatalogItem) -> None:
        prod.send(cat_topic, key=str(item.item_id).encode(), value=encode_catalog_item(item))

    publish(_cat(11, 2_000, "Blue kettle", 29.5, "Acme"))
    publish(_cat(11, 1_000, "Stale kettle", 99.0))  # older, read later: the job's rule ignores it
    publish(_cat(12, 1_000, "Green mug", 4.0))
    prod.send(cat_topic, key=b"junk", value=b"\xc1")  # the job would dead-letter it
    prod.flush()

    serve = ServeProcess(kafka_broker.bootstrap, in_topic, out_topic, tmp_path / "serve.sqlite",
                         tmp_path / "serve.log", settings={"kafka": {"catalog_topic": cat_topic}})

    def items() -> list[dict]:
        status, body = get_json(serve.base + "/v1/users/42/recommendations")
        assert status == 200
        return body["items"]

    serve.start()
    try:
        _wait(lambda: get_json(serve.base + "/healthz")[1]["catalog"]["records_consumed"] == 3, what="the catalog")
        got = items()
        assert (got[0]["title"], got[0]["brand"], got[0]["price"]) == ("Blue kettle", "Acme", 29.5)
        assert (got[1]["title"], got[1]["price"]) == ("Green mug", 4.0) and "title" not in got[2]
        assert get_json(serve.base + "/healthz")[1]["catalog"]["bad_records"] == 1
        import urllib.request
        stream = urllib.request.urlopen(serve.base + "/v1/users/42/recommendations/stream", timeout=30)
        assert _next_sse(stream)["items"][1]["price"] == 4.0
        publish(_cat(12, 3_000, "Green mug", 3.5))  # a price change reaches the open page and the next lookup
        prod.flush()
        pushed = _next_sse(stream)
        stream.close()
        assert pushed["seq"] == 1 and pushed["items"][1]["price"] == 3.5
        assert items()[1]["price"] == 3.5
    finally:
        serve.stop()
    # a restart resumes after the stored catalog positions: nothing is read again
    serve.start()
    try:
        assert items()[1]["price"] == 3.5
        catalog = get_json(serve.base + "/healthz")[1]["catalog"]
        assert catalog["records_consumed"] == 0 and catalog["items"] == 2
    finally:
        serve.stop()
        prod.close()


@pytest.mark.kafka
def test_serve_process_on_redis_keeps_its_view_across_a_restart(kafka_broker, unique_topic, redis_server, tmp_path):
    out_topic, in_topic = unique_topic("recs"), unique_topic("events")
    prod = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
    for user in range(5):
        prod.send(out_topic, key=str(user).encode(), value=output_value(user, 1, [100 + user]))
    prod.flush()
    prefix = "proc-" + out_topic
    serve = ServeProcess(kafka_broker.bootstrap, in_topic, out_topic, tmp_path / "unused.sqlite",
                         tmp_path / "serve.log",
                         settings={"serve": {"store": "redis", "redis_url": redis_server.url, "redis_prefix": prefix}})
    serve.start()
    try:
        assert get_json(serve.base + "/v1/users/3/recommendations")[1]["items"][0]["item_id"] == 103
        assert get_json(serve.base + "/healthz")[1]["shoppers"] == 5
    finally:
        serve.stop()
    assert not (tmp_path / "unused.sqlite").exists()  # the view is in Redis
    store = RedisStore(redis_server.url, out_topic, prefix=prefix)
    assert store.count() == 5 and store.positions() == {0: 5}
    store.close()
    serve.start()  # resumes after the offsets in Redis: nothing is read again
    try:
        health = get_json(serve.base + "/healthz")[1]
        assert health["lists_consumed"] == 0 and health["shoppers"] == 5
    finally:
        serve.stop()
        prod.close()


# --- hardening: followers never stop on one record; 503s and 4xx, never 500s ---------------------


class _Msg(NamedTuple):
    """A polled Kafka record as the followers read it."""

    value: bytes | None
    partition: int
    offset: int
    key: bytes | None = None


def test_the_lists_follower_counts_and_skips_unreadable_records_and_moves_on(make_store: StoreFactory):
    store = make_store("s", "recs")
    f = Follower(store, "127.0.0.1:1", "recs")
    bad = [None, output_value(2, 1, [7], scores=["x"]), output_value(3, 1, [7], scores=[None]),
           output_value(4, 1, [7], trigger="pv"), output_value(5, 1, [7], trigger=5),
           output_value(6, 1, [[1, 2]]), output_value(7, 1, [{"a": 1}]),
           # parts a lookup passes on as they are: bytes or NaN there would fail the batch's write or the
           # shopper's every lookup (a 500)
           output_value(b"\x01", 1, [7]), output_value(9, 1, [7], trigger={"x": b"\x01"}),
           output_value(10, 1, [7], trigger={"x": math.nan}), output_value(11, 1, [7], fallback=math.nan),
           output_value(12, 1, [7], fallback=b"cold"), output_value(13, 1, [7], reasons=[{"code": "covisit",
                                                                                          "because": [1, 2]}]),
           output_value(14, 1, [7], reasons=[{"code": "x", "detail": math.inf}]),
           output_value(15, 1, [7], trigger={1: "pv"})]
    values = [*bad, output_value(1, 1, [7, 8])]
    f._store_batch([_Msg(v, 0, i) for i, v in enumerate(values)], {0: len(values)})
    assert (f.bad_records, f.records) == (len(bad), 1)
    # the batch's positions are stored: nothing is read again
    assert store.positions() == {0: len(values)} and store.count() == 1 and store.get("1") is not None


def test_a_lists_tombstone_erases_the_shoppers_list_and_a_later_list_comes_back(make_store: StoreFactory):
    """The job's list for an erased shopper is a tombstone (null value, the shopper's key): the view drops
    their list, in the store's one transaction; within a batch each shopper's last record decides."""
    store = make_store("s", "recs")
    put_list(store, output_value(1, 4, [7]), 0)
    put_list(store, output_value(2, 9, [8]), 1)
    put_list(store, output_value(3, 2, [9]), 2)
    f = Follower(store, "127.0.0.1:1", "recs")
    msgs = [_Msg(None, 0, 3, b"1"),  # erased
            _Msg(output_value(2, 10, [8, 6]), 0, 4), _Msg(None, 0, 5, b"2"),  # a list, then erased
            _Msg(None, 0, 6, b"3"), _Msg(output_value(3, 1, [5]), 0, 7),  # erased, then a new first list
            _Msg(None, 0, 8, b"404")]  # a shopper the view never held
    f._store_batch(msgs, {0: 9})
    assert (store.get("1"), store.get("2"), store.get("404")) == (None, None, None)
    again = store.get("3")
    assert again is not None and (again.record.seq, again.record.items, again.offset) == (1, [5], 7)
    assert (f.erased, f.bad_records, store.count(), store.positions()) == (3, 0, 1, {0: 9})
    assert "1" not in map(str, store.recent_users(10)) and "2" not in map(str, store.recent_users(10))


def test_within_a_batch_the_lists_follower_decodes_only_each_shoppers_last_readable_list(
        make_store: StoreFactory, monkeypatch: pytest.MonkeyPatch):
    """The topic holds a list per event: a rebuild checks the last one per shopper and batch, and when that
    one is unreadable the one before it stands, as if the batch had been read in order."""
    decoded: list[bytes] = []
    monkeypatch.setattr(follower_module, "decode_list", lambda raw: decoded.append(raw) or decode_list(raw))
    store = make_store("s", "recs")
    f = Follower(store, "127.0.0.1:1", "recs")
    msgs = [_Msg(output_value(1, 1, [7]), 0, 0, b"1"), _Msg(output_value(2, 1, [8]), 0, 1, b"2"),
            _Msg(output_value(1, 2, [9]), 0, 2, b"1"), _Msg(output_value(2, 2, [6]), 0, 3, b"2"),
            _Msg(output_value(2, 3, [5], scores=["x"]), 0, 4, b"2")]
    f._store_batch(msgs, {0: 5})
    one, two = store.get("1"), store.get("2")
    assert one is not None and (one.record.seq, one.record.items, one.offset) == (2, [9], 2)
    assert two is not None and (two.record.seq, two.record.items, two.offset) == (2, [6], 3)
    assert (f.records, f.bad_records, len(decoded)) == (4, 1, 3)


def test_a_catalog_tombstone_is_a_counted_skip_not_a_batch_retried_forever(make_store: StoreFactory):
    store = make_store("s", "recs")
    f = CatalogFollower(store, "127.0.0.1:1", "catalog", max_future_skew_ms=Config().job.max_future_skew_ms)
    msgs = [_Msg(encode_catalog_item(_cat(7, 1, "Kettle")), 0, 0, b"7"), _Msg(None, 0, 1, b"7"),
            _Msg(encode_catalog_item(_cat(8, 1, "Mug")), 0, 2, b"8")]
    f._store_batch(msgs, {0: 3})
    assert (f.bad_records, f.records) == (1, 2)
    assert store.catalog_positions() == {0: 3} and store.items([7])[7].title == "Kettle"


def test_a_catalog_record_beyond_now_plus_the_skew_is_skipped_as_the_job_dead_letters_it(make_store: StoreFactory):
    """A record far in the future would win over every later one in serve (a later updated_at wins) while
    the job refuses it: the two would disagree on the item forever."""
    skew = Config().job.max_future_skew_ms
    store = make_store("s", "recs")
    f = CatalogFollower(store, "127.0.0.1:1", "catalog", max_future_skew_ms=skew)
    now = int(time.time() * 1000)
    far = _cat(7, now + 10 * skew + 3_600_000, "Frozen kettle")
    msgs = [_Msg(encode_catalog_item(_cat(7, now - 1000, "Kettle")), 0, 0, b"7"),
            _Msg(encode_catalog_item(far), 0, 1, b"7"),
            _Msg(encode_catalog_item(_cat(7, now, "Kettle, new")), 0, 2, b"7")]
    f._store_batch(msgs, {0: 3})
    assert (f.bad_records, f.records) == (1, 2)
    assert store.items([7])[7].title == "Kettle, new"


def test_livez_and_readyz_are_apart_and_readiness_names_each_follower(served):
    client, _, ctx, _ = served
    ctx.follower = StubFollower(ready=False)
    ctx.catalog_follower = StubFollower(ready=False, topic="catalog")
    assert client.get("/livez").status_code == 200
    r = client.get("/readyz")
    assert r.status_code == 503
    followers = r.json()["followers"]
    assert followers["lists"]["topic"] == "recs" and followers["lists"]["state"] == "catching_up"
    assert followers["catalog"]["topic"] == "catalog" and followers["catalog"]["state"] == "catching_up"
    ctx.follower.ready.set()  # the catalog's follower does not hold readiness back
    assert client.get("/readyz").status_code == 200
    ctx.follower.last_error = "NoBrokersAvailable"
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["followers"]["lists"]["state"] == "reconnecting"
    assert client.get("/livez").status_code == 200  # the process is alive: a restart would not help


@contextmanager
def _client_over(store: Store) -> Iterator[TestClient]:
    """The app over ``store`` alone (no broker, open access), answering errors as a client would see them."""
    ctx = ServeContext(store=store, follower=StubFollower(), send_event=lambda e: {},  # type: ignore[arg-type]
                       input_topic="events", access=open_access())
    with TestClient(build_app(ctx), base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
        yield client


def test_with_the_redis_store_down_every_route_is_a_503_with_retry_after():
    closed = free_ports(1)[0]
    store = RedisStore(f"redis://127.0.0.1:{closed}/0", "recs")
    with _client_over(store) as client:
        for path in ("/v1/users/42/recommendations", "/v1/users/42/recommendations/stream", "/v1/users",
                     "/healthz", "/readyz", "/metrics"):
            r = client.get(path)
            assert r.status_code == 503 and int(r.headers["retry-after"]) > 0, (path, r.status_code, r.text)
            assert str(closed) not in r.text
        assert client.get("/livez").status_code == 200


def test_a_stuck_redis_is_a_503_within_the_client_timeout_not_a_held_request():
    """A Redis that takes the connection and never answers (stopped, swapping, a full network buffer): the
    request ends with the client's socket timeout as a 503, it does not wait with the client."""
    with socket.socket() as stuck:
        stuck.bind(("127.0.0.1", 0))
        stuck.listen(16)  # the kernel completes the handshake; nothing ever reads or answers
        port = stuck.getsockname()[1]
        store = RedisStore(f"redis://127.0.0.1:{port}/0", "recs", timeout_s=0.3)
        with _client_over(store) as client:
            for path in ("/v1/users/42/recommendations", "/readyz"):
                t0 = time.monotonic()
                r = client.get(path)
                assert r.status_code == 503 and int(r.headers["retry-after"]) > 0, (path, r.status_code, r.text)
                assert time.monotonic() - t0 < 3.0 and str(port) not in r.text


def test_an_sqlite_file_that_cannot_be_opened_is_a_503_too(tmp_path):
    """The SQLite store's counterpart of a Redis that is down: each request thread opens its own
    connection, and a file that cannot be opened then is a 503 with Retry-After, not a 500."""
    path = tmp_path / "view.sqlite"
    store = SqliteStore(path, "recs")  # the schema, written on this (the test's) thread's connection
    for leftover in tmp_path.glob("view.sqlite*"):
        leftover.unlink()
    path.mkdir()  # what is at the path now cannot be opened as a database by a request's thread
    with _client_over(store) as client:
        for route in ("/v1/users/42/recommendations", "/healthz", "/readyz"):
            r = client.get(route)
            assert r.status_code == 503 and int(r.headers["retry-after"]) > 0, (route, r.status_code, r.text)
        assert client.get("/livez").status_code == 200


def test_an_sqlite_file_overwritten_with_garbage_is_a_503_not_a_500(tmp_path):
    """A file that is no longer a database (a restore gone wrong, a full disk's torn write) is the
    operator's to fix, as a locked one is: a 503 with Retry-After, never a 500."""
    path = tmp_path / "view.sqlite"
    store = SqliteStore(path, "recs")
    for leftover in tmp_path.glob("view.sqlite*"):
        leftover.unlink()
    path.write_bytes(b"not a database, " * 512)
    with _client_over(store) as client:
        for route in ("/v1/users/42/recommendations", "/readyz"):
            r = client.get(route)
            assert r.status_code == 503 and int(r.headers["retry-after"]) > 0, (route, r.status_code, r.text)


class _LoopWatch:
    """A store that notes each call made on a thread running an event loop (a request would wait on it)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.on_loop: list[str] = []

    def __getattr__(self, name: str):
        method = getattr(self._store, name)

        def call(*args, **kwargs):
            try:
                asyncio.get_running_loop()
                self.on_loop.append(name)
            except RuntimeError:
                pass
            return method(*args, **kwargs)

        return call


def test_store_calls_run_off_the_event_loop(served):
    client, store, ctx, _ = served
    put_list(store, output_value(42, 1, [7]), 0)
    ctx.store = watch = _LoopWatch(store)  # type: ignore[assignment]
    ctx.catalog_follower = StubFollower(topic="catalog")
    for path in ("/v1/users/42/recommendations", "/v1/users/7/recommendations", "/v1/users", "/healthz", "/metrics"):
        assert client.get(path).status_code == 200, path
    with client.stream("GET", "/v1/users/42/recommendations/stream") as s:
        assert next(s.iter_lines()).startswith("event: list")
    assert watch.on_loop == []
    assert client.get("/readyz").status_code == 200 and watch.on_loop == []


def test_a_nan_score_or_an_unhashable_item_in_a_stored_list_never_reaches_a_response(served):
    client, store, _, _ = served
    put_list(store, output_value(1, 1, [7, 8], scores=[float("nan"), 0.5]), 0)
    # a list stored by an older version, which let an unhashable item through
    older = decode_output_record(output_value(2, 1, [7, 9]))._replace(items=[[1, 2], 9])
    store.write([(older, 0, 1)], {0: 2})
    first = client.get("/v1/users/1/recommendations")
    assert first.status_code == 200
    assert [(i["item_id"], i["score"]) for i in first.json()["items"]] == [(7, None), (8, 0.5)]
    second = client.get("/v1/users/2/recommendations")
    assert second.status_code == 200 and [i["item_id"] for i in second.json()["items"]] == [9]
    trending = client.get("/v1/users/someone-new/recommendations")
    assert trending.status_code == 200 and [1, 2] not in [i["item_id"] for i in trending.json()["items"]]


def _asgi_post(app, headers: list[tuple[bytes, bytes]], chunks: Iterator[bytes]) -> tuple[int, int]:
    """POST /v1/events straight to the ASGI app, the body from ``chunks``: (status, chunks read)."""
    read = 0
    status: list[int] = []

    async def receive():
        nonlocal read
        chunk = next(chunks, None)
        read += 1
        return {"type": "http.request", "body": chunk or b"", "more_body": chunk is not None}

    async def send(message):
        if message["type"] == "http.response.start":
            status.append(message["status"])

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/events", "raw_path": b"/v1/events", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"), *headers],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8080)}
    asyncio.run(app(scope, receive, send))
    return status[0], read


def test_a_body_over_the_limit_is_a_413_declared_or_chunked_and_never_read_whole(served):
    client, _, ctx, sent = served
    app = build_app(ctx)
    # a declared length over the limit: answered before a byte of the body is read
    assert _asgi_post(app, [(b"content-length", b"1000000000")], iter([b"x" * 1024] * 1000)) == (413, 0)
    # chunked: reading stops once the limit is passed
    status, read = _asgi_post(app, [(b"transfer-encoding", b"chunked")], iter([b"x" * 1024] * 1000))
    assert status == 413 and read <= MAX_EVENT_BODY // 1024 + 2
    assert sent == []


def test_deeply_nested_json_is_a_400(served):
    client, _, _, sent = served
    r = client.post("/v1/events", content=b"[" * 4000, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "nested" in r.json()["error"]
    assert sent == []

"""Guest sessions and similar items (streamrec/serve/guest.py): the job's recommender, read-time rules."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from streamrec.serve.app import build_app
from streamrec.serve.context import ServeContext
from streamrec.serve.guest import GuestRanker
from tests.support.serve_fixtures import StubFollower, open_access
from tests.support.store_fixtures import StoreFactory
from udfs.catalog import CatalogItem
from udfs.config import load_config
from udfs.events import Event
from udfs.runtime import build_recommender
from udfs.state import UserState

T0 = 1_700_000_000_000


@pytest.fixture
def guest_app(make_store: StoreFactory, fixture_artifact):
    cfg = load_config(environ={}, overrides={"ranking": {"artifact_dir": str(fixture_artifact), "provider": "cpu"}})
    guest = GuestRanker.from_config(cfg)
    assert guest is not None
    store = make_store("s", "recs")
    ctx = ServeContext(store=store, follower=StubFollower(), send_event=lambda e: {}, input_topic="events",  # type: ignore[arg-type]
                       access=open_access(), guest=guest, catalog_follower=StubFollower(topic="catalog"))
    with TestClient(build_app(ctx), base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
        yield client, store, guest, cfg


def test_a_guest_session_gets_the_list_the_job_would_give_a_new_shopper(guest_app):
    client, _, guest, cfg = guest_app
    tables = guest.recommender.artifact.tables
    a, b = list(tables.covisit)[:2]
    posted = [{"item_id": a, "behavior": "pv", "ts": T0}, {"item_id": b, "behavior": "cart", "ts": T0 + 5000}]
    r = client.post("/v1/sessions/recommendations", json={"events": posted})
    assert r.status_code == 200, r.text
    body = r.json()
    # the job's recommender, fed the same two events as a new shopper's first ones
    rec = build_recommender(cfg)
    rec.trending = None  # the service sees no stream
    state = UserState()
    events = [Event("x", a, tables.item_category[a], "pv", T0),
              Event("x", b, tables.item_category[b], "cart", T0 + 5000)]
    for e in events:
        rec.apply(state, e)
    expected = rec.recommend([rec.request(state, events[-1])])[0]
    assert [i["item_id"] for i in body["items"]] == expected["items"]
    assert body["session"] is True and body["model_version"] == "fixture-covisit"
    assert body["total"] == len(expected["items"])


def test_a_guest_list_obeys_the_catalog_and_the_filters(guest_app):
    client, store, guest, _ = guest_app
    a = list(guest.recommender.artifact.tables.covisit)[0]
    session = {"events": [{"item_id": a, "behavior": "pv"}]}
    full = [i["item_id"] for i in client.post("/v1/sessions/recommendations", json=session).json()["items"]]
    gone = full[0]
    store.write_items([CatalogItem(gone, 0, None, None, 0, "Sold out", 1)], {0: 1})
    r = client.post(f"/v1/sessions/recommendations?n=3&exclude={full[1]}", json=session).json()
    assert gone not in [i["item_id"] for i in r["items"]] and full[1] not in [i["item_id"] for i in r["items"]]
    assert r["filtered"]["unavailable"] == 1 and r["filtered"]["excluded"] == 1 and len(r["items"]) == 3


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"events": []}, 400, "body must be"),
    ({"events": [{"item_id": 1}]}, 400, "item_id and behavior"),
    ({"events": [{"item_id": 1, "behavior": "like"}]}, 400, "behavior must be one of"),
    ({"events": [{"item_id": 1, "behavior": "pv", "ts": "yesterday"}]}, 400, "epoch milliseconds"),
    ({"events": [{"item_id": 1, "behavior": "pv"}] * 51}, 400, "at most 50"),
])
def test_a_bad_session_is_a_400_naming_the_field(guest_app, body, status, message):
    client = guest_app[0]
    r = client.post("/v1/sessions/recommendations", json=body)
    assert r.status_code == status and message in r.json()["error"], r.text
    assert client.post("/v1/sessions/recommendations", content=b"{}", headers={"content-type": "text/plain"}
                       ).status_code == 415


def test_similar_items_are_the_artifacts_neighbours_under_the_catalogs_rule(guest_app):
    client, store, guest, _ = guest_app
    tables = guest.recommender.artifact.tables
    item = max(tables.covisit, key=lambda i: len(tables.covisit[i]))
    neighbours = [i for i, _ in tables.covisit[item]]
    body = client.get(f"/v1/items/{item}/similar").json()
    assert body["known"] is True and [i["item_id"] for i in body["items"]] == neighbours[:10]
    store.write_items([CatalogItem(neighbours[0], 0, None, None, None, "Gone", 1, deleted=True)], {0: 1})
    body = client.get(f"/v1/items/{item}/similar?n=3").json()
    assert [i["item_id"] for i in body["items"]] == neighbours[1:4] and body["filtered"]["unavailable"] == 1
    unknown = client.get("/v1/items/never-seen-item/similar").json()
    assert unknown["known"] is False and unknown["items"] == []


def test_without_an_artifact_the_guest_routes_say_so(make_store: StoreFactory, tmp_path):
    cfg = load_config(environ={}, overrides={"ranking": {"artifact_dir": str(tmp_path / "none")}})
    assert GuestRanker.from_config(cfg) is None
    ctx = ServeContext(store=make_store("s", "recs"), follower=StubFollower(), send_event=lambda e: {},  # type: ignore[arg-type]
                       input_topic="events", access=open_access())
    with TestClient(build_app(ctx), base_url="http://127.0.0.1") as client:
        r = client.get("/v1/items/1/similar")
        assert r.status_code == 404 and "ranking.artifact_dir" in r.json()["error"]
        assert client.post("/v1/sessions/recommendations", json={"events": []}).status_code == 404

"""Helpers for the serve tests: output records in the shared layout, a stand-in follower, and ``served``:
the app in process over a store of each backend."""

from __future__ import annotations

import time
from typing import Any

import pytest
from starlette.testclient import TestClient

from streamrec.serve.access import Access
from streamrec.serve.app import build_app
from streamrec.serve.context import Catalog, ServeContext
from streamrec.serve.follower import Follower
from streamrec.serve.store import Store
from tests.support.store_fixtures import StoreFactory
from udfs.records import SCHEMA_VERSION, decode_output_record, encode_output_record


def output_value(user: Any, seq: int, items: list[Any], **over: Any) -> bytes:
    rec = {"schema_version": SCHEMA_VERSION, "user_id": user, "seq": seq, "items": items,
           "scores": [1.0 / (i + 1) for i in range(len(items))],
           "reasons": [{"code": "covisit", "because": 5} if i == 0 else {"code": "trending"}
                       for i in range(len(items))],
           "trigger": {"item_id": 5, "behavior": "pv", "ts": 1_700_000_000_000}, "model_version": "m-1",
           "provider": "cpu", "fallback": None, "generated_at": int(time.time() * 1000)}
    rec.update(over)
    return encode_output_record(rec)


def put_list(store: Store, value: bytes, offset: int) -> None:
    store.write([(decode_output_record(value), 0, offset)], {0: offset + 1})


class StubFollower(Follower):
    """Stands in for the Kafka follower in the in-process tests: never started, alive."""

    def __init__(self, ready: bool = True, topic: str = "recs") -> None:
        super().__init__(None, "127.0.0.1:1", topic)  # type: ignore[arg-type]
        if ready:
            self.ready.set()

    def alive(self) -> bool:
        return True


def open_access(**over) -> Access:
    """Loopback hosts, no token, events and the shopper listing on (the demo's settings)."""
    return Access(**{"token": None, "allowed_hosts": ("127.0.0.1",), "allowed_origins": (), "accept_events": True,
                     "list_users": True, **over})


@pytest.fixture
def served(make_store: StoreFactory):
    """The app in process over a store of each backend (SQLite, Redis)."""
    store = make_store("s", "recs")
    sent: list = []

    def send(event):
        sent.append(event)
        return {"partition": 0, "offset": len(sent) - 1}

    ctx = ServeContext(store=store, follower=StubFollower(), send_event=send, input_topic="events",  # type: ignore[arg-type]
                       trending_size=3, catalog=Catalog(item_category={11: 4}), access=open_access())
    with TestClient(build_app(ctx), base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
        yield client, store, ctx, sent



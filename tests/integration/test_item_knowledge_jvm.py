"""The job's item steps in Java (ItemPairs.java, ItemRows.java) agree with udfs/item_knowledge.py.

The peer and the replays learn item rows in Python; the job learns them in the JVM. Run over the
same raw events (ids of both kinds, canonical-int strings, invalid records, full rows that evict,
decay past a rebase), ``ItemKnowledgeRun`` (the Java steps' own ``step`` methods, maps for the
keyed states) must hand every event's shopper the row Python's ``ItemKnowledge`` hands it.
"""

from __future__ import annotations

import hashlib
import random

import msgpack
import pytest

from udfs.candidates import build_tables
from udfs.config import load_config
from udfs.events import DecodeError, Event, decode_event, encode_event
from udfs.item_knowledge import ItemKnowledge, ItemKnowledgeParams

pytestmark = pytest.mark.flink

T0 = 1_700_000_000_000
HOUR = 3_600_000
NO_TIME = -(2**63)


@pytest.fixture(scope="module")
def jvm():
    from pyflink.java_gateway import get_gateway

    from jobs.pipeline import create_environment

    create_environment(load_config(environ={}))  # puts the job jars on the client JVM's class path
    return get_gateway()


def raw_log(seed: int, n: int, ts_of) -> list[bytes]:
    """Events over a few shoppers and items: int ids, string ids, canonical-int strings ("7" is 7),
    and some records that are not events."""
    rng = random.Random(seed)
    items: list[object] = [*range(20), "sku-a", "sku-b", "7", "12", "sku-ü"]
    behaviors = ["pv"] * 6 + ["cart", "fav", "buy"]
    out = []
    for i in range(n):
        if rng.random() < 0.03:
            out.append(msgpack.packb({"user_id": 1, "item_id": [1], "behavior": "pv", "ts": T0}))
            continue
        event = Event(rng.choice([1, 2, 3, "u4"]), rng.choice(items), 1, rng.choice(behaviors), ts_of(rng, i))
        out.append(encode_event(event))
    return out


def java_run(jvm, params: ItemKnowledgeParams, tables: bytes):
    """The job's two steps, built as the job builds them; the table handed over instead of read."""
    from jobs.items import java_item_steps

    sha = hashlib.sha256(tables).hexdigest()
    pairs, rows = java_item_steps(params, "unused", sha, window_ttl_ms=86_400_000, row_ttl_ms=86_400_000)
    return jvm.jvm.io.streamrec.flink.ItemKnowledgeRun(pairs, rows, tables, sha)


def compare(jvm, raw: list[bytes], params: ItemKnowledgeParams, seed_events: list[Event]) -> int:
    """Both twins over ``raw``; the number of events whose rows were compared."""
    tables = build_tables(seed_events, window=params.window, window_ms=params.window_ms, per_item=params.emit)
    python = ItemKnowledge(tables.covisit, params)
    java = java_run(jvm, params, tables.to_bytes())
    compared = 0
    for record in raw:
        event = decode_event(record)
        ts = NO_TIME if isinstance(event, DecodeError) else event.ts
        got = bytes(java.observe("k", record, ts))  # the envelope's key: one key stands for all
        if isinstance(event, DecodeError):
            assert got == b""
            continue
        expected = python.observe("k", event)
        assert msgpack.unpackb(got, raw=False) == expected, (compared, event)
        compared += 1
    return compared


@pytest.mark.parametrize("seed", [0, 1])
def test_java_rows_are_pythons_event_for_event(jvm, seed: int) -> None:
    params = ItemKnowledgeParams(window_ms=2 * HOUR, window=3, max_entries=6, emit=4)
    raw = raw_log(seed, 800, lambda rng, i: T0 + i * 60_000 + rng.randrange(0, 3 * HOUR))
    seed_events = [e for e in map(decode_event, raw_log(seed + 10, 300, lambda rng, i: T0 - HOUR + i))
                   if isinstance(e, Event)]
    assert compare(jvm, raw, params, seed_events) > 700


def test_java_rows_decay_and_rebase_as_pythons(jvm) -> None:
    """On whole half-lives every power of two is exact in both languages, so rows match exactly,
    across a rebase (more than 60 half-lives between updates)."""
    params = ItemKnowledgeParams(window_ms=400 * HOUR, window=4, max_entries=5, emit=5, half_life_ms=HOUR)
    raw = raw_log(2, 400, lambda rng, i: T0 + HOUR * (i // 3 + (70 if i > 200 else 0)))
    assert compare(jvm, raw, params, []) > 350


def test_a_table_replaced_since_submission_is_refused(jvm) -> None:
    tables = build_tables([Event(1, 1, 1, "pv", T0), Event(1, 2, 1, "pv", T0 + 1)], window_ms=HOUR).to_bytes()
    readseed = jvm.jvm.io.streamrec.flink.ItemRows.readSeed
    assert readseed(tables, hashlib.sha256(tables).hexdigest()).size() == 2
    with pytest.raises(Exception, match="replaced since the job was submitted"):
        readseed(tables + b"\x00", hashlib.sha256(tables).hexdigest())

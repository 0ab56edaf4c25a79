"""EventEnvelope.java, the JVM's reading of a raw event, agrees with udfs/events.py.

The envelope keys events and gives them their event time before any Python runs.
Its key must equal Python's str(user_id) for every valid event, and a record that
Python rejects must never carry an event time (it would move the watermark).
"""

from __future__ import annotations

import msgpack
import pytest

from tests.job_fixtures import generated_log
from tests.poison import EXTRA_KINDS, KINDS, poison_records
from udfs.config import load_config
from udfs.events import Event, decode_event, encode_event

pytestmark = pytest.mark.flink

NO_TIME = -(2**63)


@pytest.fixture(scope="module")
def peek():
    from py4j.java_gateway import get_field
    from pyflink.java_gateway import get_gateway

    from jobs.pipeline import create_environment

    create_environment(load_config())  # puts the job jars on the client JVM's class path
    envelope = get_gateway().jvm.io.streamrec.flink.EventEnvelope

    def read(raw: bytes) -> tuple[str, int]:
        p = envelope.peek(raw)
        return get_field(p, "key"), get_field(p, "eventTs")

    return read


def _raw_map(*pairs) -> bytes:
    """A msgpack map written pair by pair, so a key may repeat."""
    return bytes([0x80 | len(pairs)]) + b"".join(msgpack.packb(k) + msgpack.packb(v) for k, v in pairs)


def test_valid_events_keyed_as_python_keys_them(peek):
    events = generated_log(200, seed=5)[:200] + [
        Event("shopper-é🙂", "i-1", "c-1", "fav", 1_700_000_000_000),
        Event(-(2**63), 2**63 - 1, 0, "buy", 0),
        Event("x" * 128, 1, 1, "cart", 10**13 - 1),
    ]
    for e in events:
        raw = encode_event(e)
        assert not hasattr(decode_event(raw), "reason")
        assert peek(raw) == (str(e.user_id), e.ts)


def test_rejected_records_never_carry_event_time(peek):
    records = poison_records(len(KINDS) * 20, seed=11) + poison_records(2, seed=1, kinds=EXTRA_KINDS)
    good = {"user_id": 1, "item_id": 2, "category_id": 3, "behavior": "pv", "ts": 1_700_000_000_000}
    records += [
        (_raw_map(*good.items(), ("ts", 1.7e12)), "last ts wins"),
        (_raw_map(*good.items(), ("user_id", 2**63)), "last user_id wins"),
        (_raw_map(*good.items(), ("nested", [[1] * 1025])), "inner array past Python's limit"),
        (encode_event(Event(1, 2, 3, "pv", 5)) + b"\x00", "trailing byte"),
    ]
    for raw, kind in records:
        assert hasattr(decode_event(raw), "reason"), kind
        assert peek(raw)[1] == NO_TIME, kind


def test_a_repeated_key_means_what_python_says(peek):
    raw = _raw_map(("user_id", 1), ("item_id", 2), ("category_id", 3), ("behavior", "pv"), ("ts", 9),
                   ("user_id", "later"))
    event = decode_event(raw)
    assert isinstance(event, Event) and event.user_id == "later"
    assert peek(raw) == ("later", 9)

"""JsonInput.java: a shop's JSON events, with its own names, become the canonical event the rest of the
job reads; what cannot be translated becomes a dead letter holding the shop's original bytes.

The translator is built from the config as the job builds it (``jobs.io.json_input``), and its output
goes through the job's own readers: the Python decoder and the JVM envelope.
"""

from __future__ import annotations

import json

import pytest

from udfs.config import load_config
from udfs.events import REASON_CODES, TRANSLATION_REASON_CODES, DecodeError, Erase, Event, decode_input, encode_event

pytestmark = pytest.mark.flink

NO_TIME = -(2**63)
SHOP = {"input": {"format": "json", "user_field": "uid", "item_field": "sku", "category_field": "cat",
                  "behavior_field": "event_type", "ts_field": "timestamp", "ts_unit": "iso8601",
                  "behaviors": "view=pv,add_to_cart=cart,wishlist=fav,purchase=buy"}}


@pytest.fixture(scope="module")
def jvm():
    from pyflink.java_gateway import get_gateway

    from jobs.pipeline import create_environment

    create_environment(load_config())  # puts the job jars on the client JVM's class path
    return get_gateway().jvm


def translator(jvm, **overrides: str):
    from jobs.io import json_input

    return json_input(load_config(overrides={"input": {**SHOP["input"], **overrides}}, environ={}))


def decode(raw: bytes) -> Event | Erase | DecodeError:
    return decode_input(raw, translated=True)


def record(**fields) -> bytes:
    return json.dumps(fields).encode()


def test_the_shops_names_units_and_behaviors_become_the_canonical_event(jvm):
    shop = translator(jvm)
    raw = record(uid="u-7", sku=42, cat="shoes", event_type="add_to_cart", timestamp="2023-11-14T22:13:20.250Z",
                 price=9.5, page={"nested": [1, 2]})
    assert decode(bytes(shop.translate(raw))) == Event("u-7", 42, "shoes", "cart", 1_700_000_000_250)


@pytest.mark.parametrize(("unit", "value", "ms"), [
    ("ms", 1_700_000_000_250, 1_700_000_000_250),
    ("ms", "1700000000250", 1_700_000_000_250),
    ("ms", 1_700_000_000_250.0, 1_700_000_000_250),
    ("s", 1_700_000_000, 1_700_000_000_000),
    ("s", 1_700_000_000.123, 1_700_000_000_123),  # the decimal as written, not its nearest double
    ("s", "1700000000.5", 1_700_000_000_500),
    ("iso8601", "2023-11-14T22:13:20Z", 1_700_000_000_000),
    ("iso8601", "2023-11-15T06:13:20.001+08:00", 1_700_000_000_001),
    ("iso8601", "2023-11-14T22:13:20", 1_700_000_000_000),  # no offset: UTC
    ("iso8601", "2023-11-14 22:13:20", 1_700_000_000_000),
])
def test_event_time_in_each_unit(jvm, unit, value, ms):
    shop = translator(jvm, ts_unit=unit)
    result = decode(bytes(shop.translate(record(uid=1, sku=2, cat=3, event_type="view", timestamp=value))))
    assert isinstance(result, Event) and result.ts == ms


def test_ids_follow_the_id_rule_after_translation(jvm):
    shop = translator(jvm)
    result = decode(bytes(shop.translate(record(uid="42", sku="0042", cat=7, event_type="pv",
                                                timestamp="2023-11-14T22:13:20Z"))))
    assert result == Event(42, "0042", 7, "pv", 1_700_000_000_000)


def test_without_category_or_behavior_fields_every_event_is_a_view_in_category_0(jvm):
    shop = translator(jvm, category_field="", behavior_field="")
    result = decode(bytes(shop.translate(record(uid=1, sku=2, timestamp="2023-11-14T22:13:20Z", cat="ignored"))))
    assert result == Event(1, 2, 0, "pv", 1_700_000_000_000)


def test_an_erase_request_in_the_shops_names(jvm):
    shop = translator(jvm)
    assert decode(bytes(shop.translate(record(uid="u-7", erase=True)))) == Erase("u-7")
    bad = record(uid="u-7", erase=True, sku=1)
    result = decode(bytes(shop.translate(bad)))
    assert isinstance(result, DecodeError) and result.reason.startswith("bad_erase") and result.raw == bad


UNTRANSLATABLE = [
    (b"\xff\xfe{}", "not_json"),
    (b'{"uid": 1,', "not_json"),
    (b'{"uid": 1} trailing', "not_json"),
    (b'{"uid": 1, "uid": 2, "sku": 2, "cat": 3, "event_type": "view", "timestamp": "2023-11-14T22:13:20Z"}',
     "not_json"),
    (b"", "not_json"),
    (b"[1, 2]", "not_a_map"),
    (record(sku=2, cat=3, event_type="view", timestamp="2023-11-14T22:13:20Z"), "missing_field:user_id (uid)"),
    (record(uid=1.5, sku=2, cat=3, event_type="view", timestamp="2023-11-14T22:13:20Z"), "bad_type:user_id"),
    (record(uid=True, sku=2, cat=3, event_type="view", timestamp="2023-11-14T22:13:20Z"), "bad_type:user_id"),
    (record(uid=2**64, sku=2, cat=3, event_type="view", timestamp="2023-11-14T22:13:20Z"), "out_of_range:user_id"),
    (record(uid="a\x07b", sku=2, cat=3, event_type="view", timestamp="2023-11-14T22:13:20Z"), "bad_id:user_id"),
    (record(uid=1, sku=2, cat=3, event_type="click", timestamp="2023-11-14T22:13:20Z"), "unknown_behavior"),
    (record(uid=1, sku=2, cat=3, event_type="view", timestamp="yesterday"), "bad_type:ts"),
    (record(uid=1, sku=2, cat=3, event_type="view", timestamp=1_700_000_000), "bad_type:ts"),
    (b'{"uid": 1, "pad": "' + b"x" * 70_000 + b'"}', "too_large"),
    (b'{"uid": 1, "pad": "' + b"x" * 65_530 + b'"}', "too_large"),  # over 64 KiB by a few bytes
    (b'{"uid": 1, "pad": "' + b"x" * 65_400 + b'"', "not_json"),  # under it, and its reason still fits
]


@pytest.mark.parametrize(("raw", "reason"), UNTRANSLATABLE)
def test_what_cannot_be_translated_is_a_dead_letter_with_the_original_bytes(jvm, raw, reason):
    result = decode(bytes(translator(jvm).translate(raw)))
    assert isinstance(result, DecodeError)
    assert result.reason.startswith(reason), result.reason
    assert result.reason.split(":")[0] in (*REASON_CODES, *TRANSLATION_REASON_CODES)
    assert result.raw == raw


def test_a_negative_or_far_time_is_out_of_range_in_every_unit(jvm):
    for unit, value in (("ms", -1), ("s", 10**11), ("iso8601", "1969-12-31T23:59:59Z")):
        result = decode(bytes(translator(jvm, ts_unit=unit).translate(
            record(uid=1, sku=2, cat=3, event_type="view", timestamp=value))))
        assert isinstance(result, DecodeError) and result.reason.startswith("out_of_range:ts"), (unit, result)


def test_the_envelope_keys_and_times_the_translation_as_it_does_a_msgpack_event(jvm):
    from py4j.java_gateway import get_field

    envelope = jvm.io.streamrec.flink.EventEnvelope(60_000)
    shop = translator(jvm, ts_unit="ms")
    for uid in ("u-7", 42, "42", "\u0041\u030a"):  # "Å" decomposed: the key is its NFC form
        raw = record(uid=uid, sku=2, cat=3, event_type="view", timestamp=1_700_000_000_000)
        translated = bytes(shop.translate(raw))
        event = decode(translated)
        assert isinstance(event, Event)
        peeked = envelope.peek(translated)
        twin = envelope.peek(encode_event(event))
        assert (get_field(peeked, "key"), get_field(peeked, "eventTs")) == (str(event.user_id), 1_700_000_000_000)
        assert (get_field(twin, "key"), get_field(twin, "eventTs")) == (str(event.user_id), 1_700_000_000_000)
    failed = envelope.peek(bytes(shop.translate(b"not json")))
    assert (get_field(failed, "key"), get_field(failed, "eventTs")) == ("", NO_TIME)

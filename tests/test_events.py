"""Decoding and validation: every kind of bad input is a DecodeError with a reason."""

import msgpack
import pytest

from udfs.events import MAX_EVENT_BYTES, DecodeError, Event, decode_event, encode_event

GOOD = {"user_id": 1, "item_id": 2268318, "category_id": 2520377, "behavior": "pv", "ts": 1511544070000}


def pack(obj):
    return msgpack.packb(obj, use_bin_type=True)


def test_roundtrip():
    ev = Event(1, "sku-9", 3, "buy", 1511544070000)
    assert decode_event(encode_event(ev)) == ev


def test_string_ids_accepted():
    ev = decode_event(pack({**GOOD, "user_id": "u-1", "item_id": "i-2"}))
    assert isinstance(ev, Event) and ev.user_id == "u-1"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "not_msgpack"),
        (b"\xc1", "not_msgpack"),
        (pack(GOOD)[:-3], "not_msgpack"),
        (pack([1, 2, 3]), "not_a_map"),
        (pack({k: v for k, v in GOOD.items() if k != "ts"}), "missing_field:ts"),
        (pack({**GOOD, "behavior": "like"}), "unknown_behavior"),
        (pack({**GOOD, "behavior": 1}), "bad_type:behavior"),
        (pack({**GOOD, "ts": "2017"}), "bad_type:ts"),
        (pack({**GOOD, "ts": 1.5}), "bad_type:ts"),
        (pack({**GOOD, "ts": -1}), "out_of_range:ts"),
        (pack({**GOOD, "item_id": 2**64 - 1}), "out_of_range:item_id"),
        (pack({**GOOD, "user_id": ""}), "out_of_range:user_id"),
        (pack({**GOOD, "user_id": True}), "bad_type:user_id"),
        (pack({**GOOD, "category_id": [1]}), "bad_type:category_id"),
        (pack({**GOOD, "pad": "x" * MAX_EVENT_BYTES}), "too_large"),
        # bin 32 header claiming 4 GB: rejected by the limit, nothing allocated
        (b"\x81\xa1a\xc6\xff\xff\xff\xff", "not_msgpack"),
        # invalid UTF-8 in a str
        (b"\x81\xa2\xff\xfe\x01", "not_msgpack"),
        # deeply nested maps
        (b"\x81\xa1a" * 2000 + b"\x01", "not_msgpack"),
    ],
)
def test_bad_input_is_a_value_with_reason(raw, reason):
    result = decode_event(raw)
    assert isinstance(result, DecodeError)
    assert result.reason.startswith(reason), result.reason
    assert result.raw == raw

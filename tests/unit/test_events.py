"""Decoding and validation: every kind of bad input is a DecodeError with a reason."""

import time

import msgpack
import pytest

from tests.support.id_vectors import ACCEPTED, EVENT_VECTORS, REJECTED
from udfs.config import Config
from udfs.events import (
    MAX_EVENT_BYTES,
    MAX_TS_MS,
    REASON_CODES,
    DecodeError,
    Erase,
    Event,
    InvalidId,
    canonical_id,
    decode_event,
    decode_input,
    encode_erase,
    encode_event,
    max_event_ts,
)

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


def test_every_reason_is_a_listed_code():
    raws = [b"", pack([1]), pack({}), pack({**GOOD, "ts": "x"}), pack({**GOOD, "user_id": "a\x00"}),
            pack({**GOOD, "behavior": "like"}), pack({**GOOD, "ts": -1}), pack({**GOOD, "pad": "x" * MAX_EVENT_BYTES}),
            pack({**GOOD, "ts": MAX_TS_MS - 1}), pack({"user_id": 1, "erase": 1})]
    results = [decode_input(r, max_ts_ms=GOOD["ts"]) for r in raws]
    codes = [r.reason.split(":")[0] for r in results if isinstance(r, DecodeError)]
    assert codes == ["not_msgpack", "not_a_map", "missing_field", "bad_type", "bad_id", "unknown_behavior",
                     "out_of_range", "too_large", "future_timestamp", "bad_erase"]
    assert set(codes) == set(REASON_CODES)


# --------------------------------------------------------------------------- erase requests


def test_an_erase_request_names_the_canonical_shopper_and_is_no_event():
    for user in (42, "42", "shopper-7", " 42"):
        raw = encode_erase(user)
        assert decode_input(raw) == Erase(canonical_id(user))
        # readers that know events only (decode_event) keep calling it a record without an item
        assert decode_event(raw).reason == "missing_field:item_id"
    assert decode_input(encode_erase("7"), pseudonym=lambda u: f"p-{u}") == Erase("p-7")
    assert decode_input(pack(GOOD)) == decode_event(pack(GOOD))


@pytest.mark.parametrize("obj", [
    {"user_id": 1, "erase": False}, {"user_id": 1, "erase": 1}, {"user_id": 1, "erase": "true"},
    {"user_id": 1, "erase": True, "ts": 5}, {**GOOD, "erase": True}, {"erase": True},
    {"user_id": 1, "erase": None},
])
def test_a_malformed_erase_request_is_a_bad_erase_dead_letter_not_an_event(obj):
    result = decode_input(pack(obj))
    assert isinstance(result, DecodeError) and result.reason.startswith("bad_erase"), result


@pytest.mark.parametrize("user", [True, 2**64 - 1, "", "a\x00b", [1]])
def test_an_erase_request_with_a_bad_id_names_the_id_rule(user):
    result = decode_input(pack({"user_id": user, "erase": True}))
    assert isinstance(result, DecodeError) and result.reason.split(":")[0] in ("bad_type", "out_of_range", "bad_id")


# --------------------------------------------------------------------------- event time bound

SKEW_MS = Config().job.max_future_skew_ms


def test_default_skew_is_five_minutes():
    assert SKEW_MS == 300_000


def test_the_bound_is_exact_and_pure():
    raw = pack({**GOOD, "ts": 1000})
    assert decode_event(raw, max_ts_ms=1000) == decode_event(raw)
    result = decode_event(pack({**GOOD, "ts": 1001}), max_ts_ms=1000)
    assert isinstance(result, DecodeError) and result.reason.startswith("future_timestamp"), result
    assert isinstance(decode_event(pack({**GOOD, "ts": MAX_TS_MS - 1})), Event)  # no bound: only the range


def test_max_event_ts_is_wall_clock_plus_skew():
    before = int(time.time() * 1000)
    bound = max_event_ts(SKEW_MS)
    assert before + SKEW_MS <= bound <= int(time.time() * 1000) + SKEW_MS + 1


@pytest.mark.parametrize(
    ("offset_ms", "accepted"),
    [(-SKEW_MS - 86_400_000, True), (SKEW_MS - 60_000, True), (SKEW_MS + 60_000, False), (None, False)],
    ids=["yesterday", "skew-60s", "skew+60s", "year-2286"],
)
def test_future_timestamps_are_dead_letters(offset_ms, accepted):
    now = int(time.time() * 1000)
    ts = MAX_TS_MS - 1 if offset_ms is None else now + offset_ms
    result = decode_event(pack({**GOOD, "ts": ts}), max_event_ts(SKEW_MS))
    if accepted:
        assert isinstance(result, Event) and result.ts == ts
    else:
        assert isinstance(result, DecodeError) and result.reason.startswith("future_timestamp:"), result


# --------------------------------------------------------------------------- the id rule


@pytest.mark.parametrize("vector", ACCEPTED, ids=[v.note for v in ACCEPTED])
@pytest.mark.parametrize("field", ["user_id", "item_id", "category_id"])
def test_ids_are_canonical(field, vector):
    ev = decode_event(pack({**GOOD, field: vector.raw}))
    assert isinstance(ev, Event), ev
    got = getattr(ev, field)
    assert got == vector.id and type(got) is type(vector.id)
    assert canonical_id(got) == got  # canonical ids are fixed points


@pytest.mark.parametrize("vector", REJECTED, ids=[v.note for v in REJECTED])
@pytest.mark.parametrize("field", ["user_id", "item_id", "category_id"])
def test_ids_breaking_the_rule_are_dead_letters(field, vector):
    result = decode_event(pack({**GOOD, field: vector.raw}))
    assert isinstance(result, DecodeError) and result.reason.startswith(f"{vector.reject}:{field}:"), result
    with pytest.raises(InvalidId):
        canonical_id(vector.raw)


def test_a_decimal_string_and_its_int_are_one_shopper():
    as_int = decode_event(pack({**GOOD, "user_id": 42}))
    as_str = decode_event(pack({**GOOD, "user_id": "42"}))
    assert as_int == as_str and encode_event(as_str) == pack({**GOOD, "user_id": 42})


@pytest.mark.parametrize("vector", EVENT_VECTORS, ids=[v.note for v in EVENT_VECTORS])
def test_event_byte_vectors_shared_with_the_envelope(vector):
    out = decode_event(vector.raw)
    if vector.reject is None:
        assert out == Event(1, 2, 3, "pv", 1_700_000_000_000)
    else:
        assert isinstance(out, DecodeError) and out.reason.startswith(vector.reject), out


def test_a_record_the_json_source_could_not_translate_is_a_dead_letter_with_the_shops_bytes():
    """The map JsonInput.java writes for what it cannot translate; its reason and the original bytes."""
    original = b'{"uid": 1, "sku": '
    wrapped = msgpack.packb({"input_error": "not_json: unexpected end", "raw": original}, use_bin_type=True)
    assert decode_input(wrapped, translated=True) == DecodeError("not_json: unexpected end", original)
    # Not translated: a msgpack producer cannot pose as the translator; it is a map with no event fields.
    assert decode_input(wrapped).reason.startswith("missing_field:user_id")
    forged = msgpack.packb({"input_error": 1, "raw": "text"}, use_bin_type=True)
    assert decode_input(forged, translated=True) == DecodeError(
        "not_a_map: an untranslated record's input_error and raw are str and bytes", forged)


def test_a_translated_event_is_read_as_any_canonical_event():
    event = Event(7, 8, 9, "buy", 1_700_000_000_000)
    assert decode_input(encode_event(event), translated=True) == event
    big = b"{" + b" " * 70_000 + b"}"  # the source passes an oversized record untouched
    assert decode_input(big, translated=True).reason.startswith("too_large")

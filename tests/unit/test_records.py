"""Dead letters always fit the DLQ producer's request limit and keep what identifies the original."""

import hashlib

import msgpack

from udfs.events import DecodeError, decode_event
from udfs.records import MAX_DLQ_RAW_BYTES, dead_letter_record

KAFKA_DEFAULT_MAX_REQUEST = 1024 * 1024


def _unpack(value: bytes) -> dict:
    return msgpack.unpackb(value, raw=False, strict_map_key=False)


def test_small_dead_letter_keeps_every_byte_and_its_coordinates():
    err = decode_event(b"\xc1\xc1")
    assert isinstance(err, DecodeError)
    key, value = dead_letter_record(err, "events", 3, 41, 1700)
    body = _unpack(value)
    assert key == "events:3:41"
    assert body["raw"] == b"\xc1\xc1" and body["raw_len"] == 2 and body["raw_truncated"] is False
    assert (body["topic"], body["partition"], body["offset"], body["timestamp"]) == ("events", 3, 41, 1700)
    assert body["reason"].startswith("not_msgpack")


def test_a_record_near_the_broker_limit_still_fits_one_produce_request():
    raw = b"\xdb" + (1_048_400).to_bytes(4, "big") + b"x" * 1_048_400  # str32; a stock broker accepts it
    err = decode_event(raw)
    assert isinstance(err, DecodeError) and err.reason.startswith("too_large")
    key, value = dead_letter_record(err, "events", 0, 9, None)
    assert len(value) + len(key) < KAFKA_DEFAULT_MAX_REQUEST - 1024
    body = _unpack(value)
    assert body["raw_truncated"] is True and body["raw_len"] == len(raw)
    assert body["raw"] == raw[:MAX_DLQ_RAW_BYTES]
    assert body["raw_sha256"] == hashlib.sha256(raw).hexdigest()


def test_offsetless_records_are_keyed_by_topic():
    key, _ = dead_letter_record(DecodeError("x", b""), "file:events.msgpack", 0, -1, None)
    assert key == "file:events.msgpack"


def _output(**over):
    from udfs.records import SCHEMA_VERSION
    rec = {"schema_version": SCHEMA_VERSION, "user_id": 7, "seq": 3, "items": [11, "x"], "scores": [0.5, 0.25],
           "reasons": [{"code": "recent"}, {"code": "covisit", "because": 4}],
           "trigger": {"item_id": 4, "behavior": "pv", "ts": 1}, "model_version": "din-1", "provider": "cpu",
           "fallback": None, "generated_at": 1700}
    rec.update(over)
    return rec


def test_output_record_round_trips_through_the_shared_layout():
    from udfs.records import OUTPUT_FIELDS, decode_output_record, encode_output_record
    rec = _output()
    assert set(rec) == set(OUTPUT_FIELDS)
    out = decode_output_record(encode_output_record(rec))
    assert out._asdict() == {**rec, "arm": None}
    assert decode_output_record(encode_output_record(_output(arm="b"))).arm == "b"


def test_output_record_errors_say_what_is_wrong():
    import pytest

    from udfs.records import OutputRecordError, decode_output_record, encode_output_record
    v1 = _output(schema_version=1)
    del v1["reasons"]
    assert decode_output_record(encode_output_record(v1)).reasons == []
    bad = {b"\xc1": "not_msgpack", msgpack.packb([1]): "not_a_map",
           encode_output_record(_output(schema_version=9)): "schema_version 9",
           encode_output_record({k: v for k, v in _output().items() if k != "seq"}): "missing_field: seq",
           encode_output_record(_output(scores=[1.0])): "one length"}
    for raw, why in bad.items():
        with pytest.raises(OutputRecordError, match=why):
            decode_output_record(raw)

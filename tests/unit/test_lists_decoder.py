"""The serve follower's fast list decoder gives the reference decoder's verdict on every record, and
takes its fast path for the lists the job writes (else it would be the reference with extra steps)."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import pytest

from streamrec.serve import lists_decoder
from streamrec.serve.lists_decoder import decode_list
from tests.integration.test_peer import as_configured, make_config
from tests.support.job_fixtures import generated_log
from tests.support.serve_fixtures import output_value
from udfs.records import OutputRecord, OutputRecordError, decode_output_record, encode_output_record


def _verdict(decode: Any, raw: Any) -> OutputRecord | str:
    try:
        return decode(raw)
    except OutputRecordError as exc:
        return f"error: {exc}"


ODD_BUT_READABLE = [
    output_value(1, 1, [7, "x"]),
    output_value("u-1", 1, [7], arm="b"),
    output_value(1, 1, [7], extra_field={"later": [1, 2]}),  # a later writer's field: ignored by both
    output_value(1, 1, [7], scores=[3]),  # an int score
    output_value(1, True, [7]),  # the reference takes a bool seq (isinstance int)
    output_value(1, 1, [7], trigger=None),
    output_value(1, 1, [7], trigger={"item_id": 5, "nested": {"a": [1, 2.5]}}),
    output_value(1, 1, [7], reasons=[{"code": "x", "weight": 0.5}]),
    output_value(1, 1, [7], reasons=["plain"]),  # a non-map reason reads as {}
    output_value(1, 1, [7, 8], reasons=[]),
    output_value(1, 1, [7], model_version=3),  # the reference makes it a string
    output_value(1, 1, [7], schema_version=1),
    output_value(1, 1, [7], scores=[math.nan]),
    output_value(1, 1, []),
]
BROKEN = [
    None, b"", b"\xc1", msgpack.packb([1]), output_value(1, 1, [7], schema_version=9),
    encode_output_record({"schema_version": 2, "user_id": 1}),
    output_value(1, 1, [7], scores=["x"]), output_value(1, 1, [7], scores=[None]), output_value(1, 1, [7, 8],
                                                                                                scores=[1.0]),
    output_value(1, 1, [7], trigger="pv"), output_value(1, 1, [7], trigger=5), output_value(1, 1, [[1, 2]]),
    output_value(1, 1, [True]), output_value(b"\x01", 1, [7]), output_value(1, 1, [7], trigger={"x": b"\x01"}),
    output_value(1, 1, [7], trigger={"x": math.nan}), output_value(1, 1, [7], fallback=math.nan),
    output_value(1, 1, [7], fallback=b"cold"),
    output_value(1, 1, [7], reasons=[{"code": "covisit", "because": [1, 2]}]),
    output_value(1, 1, [7], reasons=[{"code": "covisit", "because": None}]),
    output_value(1, 1, [7], reasons=[{"code": "x", "detail": math.inf}]), output_value(1, 1, [7], trigger={1: "pv"}),
    output_value(1, 1.5, [7]),  # type: ignore[arg-type]
    output_value(1, 1, [7], generated_at="now"),
    msgpack.packb({**msgpack.unpackb(output_value(1, 1, [7])), "items": msgpack.ExtType(1, b"x")}),
]


@pytest.mark.parametrize("raw", ODD_BUT_READABLE + BROKEN)
def test_every_record_gets_the_reference_verdict(raw: Any):
    # by repr: a NaN score is the same verdict but never equal to itself
    assert repr(_verdict(decode_list, raw)) == repr(_verdict(decode_output_record, raw))


def test_the_cases_cover_both_verdicts():
    assert not any(isinstance(_verdict(decode_output_record, raw), str) for raw in ODD_BUT_READABLE)
    assert all(isinstance(_verdict(decode_output_record, raw), str) for raw in BROKEN)


def test_the_jobs_lists_take_the_fast_path(fixture_artifact, monkeypatch):
    """Lists of the job's own logic (reasons, triggers, ids as it writes them) never reach the reference."""
    lists, _ = as_configured(make_config(fixture_artifact), generated_log(600))
    assert lists
    raws = [encode_output_record(rec) for rec in lists]
    expected = [decode_output_record(raw) for raw in raws]
    reached: list[bytes] = []
    monkeypatch.setattr(lists_decoder, "decode_output_record", lambda raw: reached.append(raw))
    assert [decode_list(raw) for raw in raws] == expected
    assert reached == []

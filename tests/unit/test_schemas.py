"""docs/schemas/: the JSON Schemas of the topics' records hold for the records the code writes, and refuse
records the readers refuse. The job's own records are checked in tests/integration/test_json_job.py."""

from __future__ import annotations

import jsonschema
import msgpack
import pytest

from jobs.io import to_json
from tests.support.job_fixtures import generated_log
from tests.support.poison import poison_records
from tests.support.schemas import NAMES, schema, validator
from udfs.config import load_config
from udfs.events import MAX_EVENT_BYTES, DecodeError, decode_input, encode_erase, encode_event
from udfs.feedback import feedback_for, remember
from udfs.records import dead_letter_record, encode_feedback_record, encode_output_record
from udfs.runtime import build_recommender
from udfs.state import UserState


def unpack(raw: bytes) -> object:
    return msgpack.unpackb(raw, raw=False, strict_map_key=False)


@pytest.mark.parametrize("name", NAMES)
def test_each_schema_is_a_valid_draft_2020_12_schema(name):
    jsonschema.Draft202012Validator.check_schema(schema(name))


def test_events_and_erase_requests_the_decoder_takes_hold_and_those_it_refuses_do_not():
    events = validator("event")
    for event in generated_log(200, seed=5):
        events.validate(unpack(encode_event(event)))
    events.validate(unpack(encode_erase("u-7")))
    refused = [raw for raw, _ in poison_records(200, seed=1) if isinstance(decode_input(raw), DecodeError)]
    assert len(refused) == 200
    # What JSON cannot say: a record's size, and a whole float (12.0) apart from an integer.
    held = [raw for raw in refused if (obj := _unpack_or_none(raw)) is not None and events.is_valid(obj)]
    unsaid = [raw for raw in held if len(raw) <= MAX_EVENT_BYTES and not _whole_float_in(unpack(raw))]
    assert unsaid == [], unsaid


def _whole_float_in(obj: object) -> bool:
    return isinstance(obj, dict) and any(isinstance(v, float) and v.is_integer() for v in obj.values())


def _unpack_or_none(raw: bytes) -> object:
    try:
        return unpack(raw)
    except Exception:  # not msgpack at all: nothing for a schema to say
        return None


def test_lists_feedback_and_dead_letters_as_the_job_writes_them(fixture_artifact):
    cfg = load_config(environ={}, overrides={"ranking": {"artifact_dir": str(fixture_artifact), "provider": "cpu"}})
    rec = build_recommender(cfg)
    lists, feedback = validator("list"), validator("feedback")
    states: dict = {}
    n_feedback = 0
    for event in generated_log(300, seed=6):
        state = states.setdefault(event.user_id, UserState())
        if not rec.apply(state, event):
            continue
        fb = feedback_for(state, event, 0)
        if fb is not None:
            feedback.validate(unpack(encode_feedback_record(fb)[1]))
            n_feedback += 1
        for out in rec.recommend([rec.request(state, event)]):
            lists.validate(unpack(encode_output_record(out)))
            remember(state, out)
    assert n_feedback > 100
    dead = validator("dead_letter")
    for i, (raw, _) in enumerate(poison_records(200, seed=1)):
        for redact in (False, True):
            _, value = dead_letter_record(DecodeError("not_msgpack: x", raw), "events", 0, i, 1, redact)
            dead.validate(to_json("dead_letters", value, ""))


def test_a_list_missing_a_field_or_with_a_float_id_is_refused():
    lists = validator("list")
    good = {"schema_version": 2, "user_id": 1, "seq": 1, "items": [2], "scores": [0.5],
            "reasons": [{"code": "covisit", "because": 3}], "trigger": {"item_id": 3, "behavior": "pv", "ts": 1},
            "model_version": "m", "provider": "cpu", "fallback": None, "generated_at": 1}
    lists.validate(good)
    assert not lists.is_valid({k: v for k, v in good.items() if k != "reasons"})
    assert not lists.is_valid({**good, "items": [2.5]})
    assert not lists.is_valid({**good, "schema_version": 1})

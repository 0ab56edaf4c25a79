"""EventEnvelope.java, the JVM's reading of a raw event, agrees with udfs/events.py.

The envelope keys events and gives them their event time before any Python runs.
Its key must equal Python's str(user_id) for every valid event (ids by the rule in
tests/id_vectors.json), and a record that Python rejects must never carry an event
time (it would move the watermark); nor may one whose ts is beyond wall-clock now +
job.max_future_skew_ms. The two read the clock apart, so the tests stay a minute away
from that bound, and check the bound itself exactly with a given one.
"""

from __future__ import annotations

import time

import msgpack
import pytest

from tests.support.id_vectors import ACCEPTED, EVENT_VECTORS, ID_VECTORS, REJECTED
from tests.support.job_fixtures import generated_log
from tests.support.poison import EXTRA_KINDS, KINDS, poison_records
from udfs.config import load_config
from udfs.events import (
    MAX_TS_MS,
    DecodeError,
    Erase,
    Event,
    decode_event,
    decode_input,
    encode_erase,
    encode_event,
    max_event_ts,
)
from udfs.privacy import pseudonym

pytestmark = pytest.mark.flink

NO_TIME = -(2**63)
SKEW_MS = load_config(environ={}).job.max_future_skew_ms
GOOD = {"user_id": 1, "item_id": 2, "category_id": 3, "behavior": "pv", "ts": 1_700_000_000_000}


def _now_ms() -> int:
    return int(time.time() * 1000)


def _decode(raw: bytes) -> Event | DecodeError:
    """What the keyed function decides: the bound the job applies now."""
    return decode_event(raw, max_event_ts(SKEW_MS))


@pytest.fixture(scope="module")
def envelope():
    from pyflink.java_gateway import get_gateway

    from jobs.pipeline import create_environment

    create_environment(load_config())  # puts the job jars on the client JVM's class path
    return get_gateway().jvm.io.streamrec.flink.EventEnvelope


@pytest.fixture(scope="module")
def peek(envelope):
    """The job's envelope (configured skew, its own clock), as (key, event time)."""
    from py4j.java_gateway import get_field

    job_envelope = envelope(SKEW_MS)

    def read(raw: bytes) -> tuple[str, int]:
        p = job_envelope.peek(raw)
        return get_field(p, "key"), get_field(p, "eventTs")

    return read


def _raw_map(*pairs) -> bytes:
    """A msgpack map written pair by pair, so a key may repeat."""
    return bytes([0x80 | len(pairs)]) + b"".join(msgpack.packb(k) + msgpack.packb(v) for k, v in pairs)


def test_valid_events_keyed_as_python_keys_them(peek):
    events = generated_log(200, seed=5)[:200] + [
        Event("shopper-é🙂", "i-1", "c-1", "fav", 1_700_000_000_000),
        Event(-(2**63), 2**63 - 1, 0, "buy", 0),
        Event("x" * 128, 1, 1, "cart", _now_ms() + SKEW_MS - 60_000),
    ]
    for e in events:
        raw = encode_event(e)
        assert _decode(raw) == e
        assert peek(raw) == (str(e.user_id), e.ts)


def test_rejected_records_never_carry_event_time(peek):
    records = poison_records(len(KINDS) * 20, seed=11) + poison_records(2, seed=1, kinds=EXTRA_KINDS)
    records += [
        (_raw_map(*GOOD.items(), ("ts", 1.7e12)), "last ts wins"),
        (_raw_map(*GOOD.items(), ("user_id", 2**63)), "last user_id wins"),
        (_raw_map(*GOOD.items(), ("nested", [[1] * 1025])), "inner array past Python's limit"),
        (encode_event(Event(1, 2, 3, "pv", 5)) + b"\x00", "trailing byte"),
        (_raw_map(*GOOD.items(), ("ts", _now_ms() + SKEW_MS + 60_000)), "a minute past now + skew"),
        (_raw_map(*GOOD.items(), ("ts", MAX_TS_MS - 1)), "year 2286"),
    ]
    for raw, kind in records:
        assert isinstance(_decode(raw), DecodeError), kind
        assert peek(raw)[1] == NO_TIME, kind


def test_future_timestamps_keep_their_key_but_get_no_time(peek):
    """The keyed function still sees the record, under its user, and dead-letters it."""
    for ts in (_now_ms() + SKEW_MS + 60_000, MAX_TS_MS - 1):
        raw = encode_event(Event("u-7", 2, 3, "buy", ts))
        result = _decode(raw)
        assert isinstance(result, DecodeError) and result.reason.startswith("future_timestamp:")
        assert peek(raw) == ("u-7", NO_TIME)
    near = _now_ms() + SKEW_MS - 60_000
    assert peek(encode_event(Event("u-7", 2, 3, "buy", near))) == ("u-7", near)


def test_the_bound_is_the_same_number_on_both_sides(envelope):
    """Given the same bound (no clocks involved), the two agree to the millisecond."""
    from py4j.java_gateway import get_field

    for ts, bound in ((1000, 1000), (1001, 1000), (MAX_TS_MS - 1, 2**63 - 1)):
        raw = encode_event(Event(1, 2, 3, "pv", ts))
        accepted = isinstance(decode_event(raw, bound), Event)
        assert get_field(envelope.peekUntil(raw, bound), "eventTs") == (ts if accepted else NO_TIME), (ts, bound)


def test_the_skew_travels_with_the_envelope(envelope):
    before = _now_ms()
    bound = envelope(SKEW_MS).maxTsMs()
    assert before + SKEW_MS <= bound <= _now_ms() + SKEW_MS
    assert envelope(2**63 - 1).maxTsMs() == 2**63 - 1  # saturates


# --------------------------------------------------------------------------- the id rule


@pytest.mark.parametrize("vector", ACCEPTED, ids=[v.note for v in ACCEPTED])
def test_user_ids_keyed_by_the_id_rule(peek, vector):
    raw = msgpack.packb({**GOOD, "user_id": vector.raw})
    event = _decode(raw)
    assert isinstance(event, Event) and event.user_id == vector.id and type(event.user_id) is type(vector.id)
    assert peek(raw) == (str(vector.id), GOOD["ts"])  # the keyed function's check: key == str(user_id)


@pytest.mark.parametrize("vector", REJECTED, ids=[v.note for v in REJECTED])
def test_user_ids_breaking_the_rule_get_no_key_and_no_time(peek, vector):
    raw = msgpack.packb({**GOOD, "user_id": vector.raw})
    assert isinstance(_decode(raw), DecodeError)
    assert peek(raw) == ("", NO_TIME)


@pytest.mark.parametrize("field", ["item_id", "category_id"])
def test_other_ids_give_a_time_exactly_when_python_accepts_them(peek, field):
    for vector in ID_VECTORS:
        raw = msgpack.packb({**GOOD, field: vector.raw})
        accepted = isinstance(_decode(raw), Event)
        assert accepted == (vector.reject is None), vector.note
        assert peek(raw) == ("1", GOOD["ts"] if accepted else NO_TIME), vector.note


def test_a_repeated_key_means_what_python_says(peek):
    raw = _raw_map(("user_id", 1), ("item_id", 2), ("category_id", 3), ("behavior", "pv"), ("ts", 9),
                   ("user_id", "later"))
    event = decode_event(raw)
    assert isinstance(event, Event) and event.user_id == "later"
    assert peek(raw) == ("later", 9)


# --------------------------------------------------------------------------- pseudonyms (privacy.pseudonymize)

PSEUDONYM_KEY = b"0123456789abcdef0123456789abcdef-envelope"


@pytest.fixture(scope="module")
def pseudonymous_key_of(envelope, tmp_path_factory):
    """The job's envelope with privacy.pseudonymize, key read from a file at open(): raw record -> key."""
    from pyflink.java_gateway import get_gateway

    gateway = get_gateway()
    path = tmp_path_factory.mktemp("key") / "pseudonym.key"
    path.write_bytes(PSEUDONYM_KEY + b"\r\n")
    job_envelope = envelope(SKEW_MS, gateway.jvm.io.streamrec.flink.Pseudonyms(str(path), ""))
    job_envelope.open(None)

    def key_of(raw: bytes) -> str:
        fields = gateway.new_array(gateway.jvm.Object, 5)
        fields[0], fields[4] = "in", raw
        return job_envelope.map(gateway.jvm.org.apache.flink.types.Row.of(fields)).getField(0)

    return key_of


@pytest.mark.parametrize("vector", ACCEPTED, ids=[v.note for v in ACCEPTED])
def test_pseudonymous_envelope_keys_by_the_pseudonym_python_gives(pseudonymous_key_of, vector):
    raw = msgpack.packb({**GOOD, "user_id": vector.raw})
    event = decode_event(raw, pseudonym=lambda user: pseudonym(user, PSEUDONYM_KEY))
    assert isinstance(event, Event)
    assert pseudonymous_key_of(raw) == event.user_id == pseudonym(vector.raw, PSEUDONYM_KEY)


def test_pseudonymous_envelope_leaves_unreadable_ids_unkeyed(pseudonymous_key_of):
    for vector in REJECTED:
        assert pseudonymous_key_of(msgpack.packb({**GOOD, "user_id": vector.raw})) == "", vector.note


def test_the_jvm_reads_the_key_as_python_does_and_names_the_source_not_the_key(envelope, tmp_path):
    from py4j.protocol import Py4JJavaError
    from pyflink.java_gateway import get_gateway

    pseudonyms = get_gateway().jvm.io.streamrec.flink.Pseudonyms
    path = tmp_path / "k"
    path.write_bytes(PSEUDONYM_KEY + b" \t\n")
    assert bytes(pseudonyms.loadKey(str(path), "")) == PSEUDONYM_KEY
    path.write_bytes(b"short-secret\n")
    with pytest.raises(Py4JJavaError) as err:
        pseudonyms.loadKey(str(path), "")
    message = str(err.value.java_exception.getMessage())
    assert f"privacy.key_file ({path})" in message and "12 bytes, at least 32" in message
    assert "short-secret" not in message


@pytest.mark.parametrize("vector", EVENT_VECTORS, ids=[v.note for v in EVENT_VECTORS])
def test_event_byte_vectors_get_a_time_exactly_when_python_accepts_them(peek, vector):
    accepted = isinstance(_decode(vector.raw), Event)
    assert accepted == (vector.reject is None)
    key, ts = peek(vector.raw)
    assert ts == (GOOD["ts"] if accepted else NO_TIME)
    if accepted:
        assert key == "1"


ERASE_LIKE = [
    {"user_id": 42, "erase": True}, {"user_id": "shopper-9", "erase": True}, {"erase": True, "user_id": "42"},
    {"user_id": 42, "erase": False}, {"user_id": 42, "erase": 1}, {"user_id": 42, "erase": True, "ts": 5},
    {"user_id": "", "erase": True}, {"user_id": 2**64 - 1, "erase": True}, {"user_id": [1], "erase": True},
    {"erase": True}, {**GOOD, "erase": True}, GOOD, [42, True], {"user_id": "a\x00", "erase": True},
]


@pytest.mark.parametrize("obj", ERASE_LIKE, ids=range(len(ERASE_LIKE)))
def test_the_jvm_takes_a_record_for_an_erase_request_exactly_when_python_does(envelope, peek, obj):
    """The item step clears a shopper's window on what EventEnvelope.isErase accepts; the keyed function
    drops their state on what decode_input accepts: the two must be the same records, keyed alike and
    with no event time (an erase request moves no watermark)."""
    raw = msgpack.packb(obj, use_bin_type=True)
    python = decode_input(raw, max_event_ts(SKEW_MS))
    assert envelope.isErase(raw) == isinstance(python, Erase)
    if isinstance(python, Erase):
        assert peek(raw) == (str(python.user_id), NO_TIME)
    assert envelope.isErase(encode_erase("shopper-9"))  # what `streamrec forget` writes

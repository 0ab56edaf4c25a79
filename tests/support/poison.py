"""Seeded malformed input: records the job must dead-letter without stopping.

:func:`poison_records` cycles through :data:`KINDS`, drawing the details of each
record (which field is wrong, how a valid event is cut short, ...) from a seeded
generator, so the same ``(n, seed)`` always gives the same bytes. Every record
must come back from :func:`udfs.events.decode_event` as a ``DecodeError`` whose
reason starts with one of :data:`REASON_PREFIXES` for its kind; tests and a load
tool can both rely on that.

Sizes: ``huge_string`` records are mostly near the decoder's limit
(:data:`udfs.events.MAX_EVENT_BYTES`): a 60 KB string in a field (under the
limit, so it reaches validation) or one byte over it. Every ``huge_every``-th
one carries a 1 MB (10**6 bytes) string instead; that is still under Kafka's
default 1 MiB message limit with room for the dead-letter wrapper, so the
stream can go through a stock broker and back out on the DLQ topic.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import msgpack

from udfs.events import MAX_EVENT_BYTES, MAX_TS_MS

KINDS: tuple[str, ...] = (
    "truncated",         # a valid event cut short
    "wrong_type",        # ts as str, user_id as float, behavior as int, ...
    "huge_header",       # bin32 / str32 / array32 / map32 header claiming 4 GB, nothing after it
    "deep_nesting",      # 10,000 levels of arrays or maps, at the top or inside a field
    "huge_string",       # 60 KB string field (under the size limit), just over it, or 1 MB
    "invalid_utf8",      # a str header followed by b"\xff\xfe", as a value or a key
    "not_a_map",         # array, int, str, nil, bin, float or bool at the top level
    "unknown_behavior",  # a behavior outside pv/cart/fav/buy
    "out_of_range_ts",   # negative, >= MAX_TS_MS, or beyond int64
    "empty",             # zero bytes
    "missing_field",     # one of the five fields left out
    "trailing_bytes",    # a valid event followed by more bytes
    "ext_type",          # a msgpack ext value (the decoder allows none)
)

# Not in the default cycle (10,000 of them would be 700 MB): a ~1 MiB record that a stock
# broker and kafka-python producer accept. Its whole dead letter would exceed the DLQ
# producer's max.request.size and restart the job in a loop (RecordTooLargeException);
# udfs.records caps the raw bytes it carries. The poison test sends one.
EXTRA_KINDS: tuple[str, ...] = ("near_kafka_limit",)
NEAR_KAFKA_LIMIT_BYTES = 1_048_400

# What decode_event's reason starts with, per kind.
REASON_PREFIXES: dict[str, tuple[str, ...]] = {
    "truncated": ("not_msgpack",),
    "wrong_type": ("bad_type",),
    "huge_header": ("not_msgpack",),
    "deep_nesting": ("not_msgpack",),
    "huge_string": ("too_large", "out_of_range", "unknown_behavior"),
    "invalid_utf8": ("not_msgpack",),
    "not_a_map": ("not_a_map",),
    "unknown_behavior": ("unknown_behavior",),
    "out_of_range_ts": ("out_of_range:ts",),
    "empty": ("not_msgpack",),
    "missing_field": ("missing_field",),
    "trailing_bytes": ("not_msgpack",),
    "ext_type": ("not_msgpack",),
    "near_kafka_limit": ("too_large",),
}

NEST_DEPTH = 10_000
NEAR_LIMIT_STR = 60_000
ONE_MB_STR = 1_000_000
FIELDS = ("user_id", "item_id", "category_id", "behavior", "ts")


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _event(rng: random.Random) -> dict[str, Any]:
    """A valid event map with ids and a ts drawn from plausible ranges."""
    return {
        "user_id": rng.randrange(1, 1_000_000),
        "item_id": rng.randrange(1_000_000, 5_000_000),
        "category_id": rng.randrange(9_000_000, 9_010_000),
        "behavior": rng.choice(("pv", "cart", "fav", "buy")),
        "ts": rng.randrange(1_500_000_000_000, 1_800_000_000_000),
    }


def _map_with_raw(fields: dict[str, Any], name: str, raw_value: bytes) -> bytes:
    """An event map whose field ``name`` is the given pre-encoded msgpack bytes."""
    parts = [bytes([0x80 | len(fields)])]
    for key, value in fields.items():
        parts.append(_pack(key))
        parts.append(raw_value if key == name else _pack(value))
    return b"".join(parts)


def _truncated(rng: random.Random, i: int) -> bytes:
    whole = _pack(_event(rng))
    return whole[: rng.randrange(1, len(whole))]


_WRONG_TYPES: tuple[tuple[str, Any], ...] = (
    ("ts", "1700000000000"),
    ("user_id", 12.0),
    ("behavior", 0),
    ("item_id", None),
    ("category_id", True),
    ("ts", 1.7e12),
    ("user_id", b"\x00\x01"),
    ("item_id", [1, 2]),
    ("ts", False),
    ("category_id", {"id": 3}),
)


def _wrong_type(rng: random.Random, i: int) -> bytes:
    ev = _event(rng)
    name, value = _WRONG_TYPES[i % len(_WRONG_TYPES)]
    ev[name] = value
    return _pack(ev)


_HUGE_HEADERS: tuple[bytes, ...] = (
    b"\x81\xa1a\xc6\xff\xff\xff\xff",  # {"a": bin32 of 4 GB}
    b"\x81\xa1a\xdb\xff\xff\xff\xff",  # {"a": str32 of 4 GB}
    b"\xc6\xff\xff\xff\xff",           # bin32 of 4 GB at the top
    b"\xdb\xff\xff\xff\xff",           # str32 of 4 GB at the top
    b"\xdd\xff\xff\xff\xff",           # array32 of 4G elements
    b"\xdf\xff\xff\xff\xff",           # map32 of 4G pairs
)


def _huge_header(rng: random.Random, i: int) -> bytes:
    header = _HUGE_HEADERS[i % len(_HUGE_HEADERS)]
    return header + rng.randbytes(rng.randrange(0, 16))  # a few bytes of "content", never 4 GB


def _deep_nesting(rng: random.Random, i: int) -> bytes:
    variant = i % 3
    if variant == 0:
        return b"\x91" * NEST_DEPTH + b"\xc0"  # [[[...[nil]...]]]
    if variant == 1:
        return b"\x81\xa1a" * NEST_DEPTH + b"\xc0"  # {"a": {"a": ... nil}}
    return _map_with_raw(_event(rng), rng.choice(FIELDS), b"\x91" * NEST_DEPTH + b"\x01")


def _huge_string(rng: random.Random, i: int, huge_every: int) -> bytes:
    ev = _event(rng)
    if huge_every and i % huge_every == huge_every - 1:
        ev["item_id"] = "x" * ONE_MB_STR  # far over the limit
        return _pack(ev)
    variant = i % 3
    if variant == 0:
        ev["item_id"] = "i" * NEAR_LIMIT_STR  # under the limit: decoded, then rejected as an id
    elif variant == 1:
        ev["behavior"] = "b" * NEAR_LIMIT_STR  # under the limit: decoded, then an unknown behavior
    else:
        ev["note"] = ""
        pad = MAX_EVENT_BYTES + 1 - (len(_pack(ev)) + 2)  # fixstr header (1 byte) becomes str16 (3)
        ev["note"] = "n" * pad  # exactly one byte over the limit
        raw = _pack(ev)
        assert len(raw) == MAX_EVENT_BYTES + 1
        return raw
    return _pack(ev)


def _invalid_utf8(rng: random.Random, i: int) -> bytes:
    ev = _event(rng)
    variant = i % 3
    if variant == 0:
        return _map_with_raw(ev, "behavior", b"\xa2\xff\xfe")
    if variant == 1:
        ev["user_id"] = "user"
        return _map_with_raw(ev, "user_id", b"\xa6us\xff\xfeer")
    # the bad string is a key: "ts" spelled as two invalid bytes
    del ev["ts"]
    return bytes([0x85]) + _pack(ev)[1:] + b"\xa2\xff\xfe" + _pack(1_700_000_000_000)


def _not_a_map(rng: random.Random, i: int) -> bytes:
    ev = _event(rng)
    choices: tuple[Any, ...] = ([ev[f] for f in FIELDS], ev["user_id"], "pv", None, b"\x00\x01", 3.5, True, [])
    return _pack(choices[i % len(choices)])


_UNKNOWN_BEHAVIORS = ("click", "", "PV", "buy ", "view", "purchase", "\u8d2d\u4e70", "x" * 100)


def _unknown_behavior(rng: random.Random, i: int) -> bytes:
    ev = _event(rng)
    ev["behavior"] = _UNKNOWN_BEHAVIORS[i % len(_UNKNOWN_BEHAVIORS)]
    return _pack(ev)


_BAD_TS = (-1, MAX_TS_MS, 2**63 - 1, 2**64 - 1, -(2**63), MAX_TS_MS * 1000)


def _out_of_range_ts(rng: random.Random, i: int) -> bytes:
    ev = _event(rng)
    ev["ts"] = _BAD_TS[i % len(_BAD_TS)]
    return _pack(ev)


def _empty(rng: random.Random, i: int) -> bytes:
    return b""


def _missing_field(rng: random.Random, i: int) -> bytes:
    ev = _event(rng)
    del ev[FIELDS[i % len(FIELDS)]]
    return _pack(ev)


def _trailing_bytes(rng: random.Random, i: int) -> bytes:
    tail = (b"\x00", b"\xc0", _pack(_event(rng)), rng.randbytes(8))
    return _pack(_event(rng)) + tail[i % len(tail)]


def _ext_type(rng: random.Random, i: int) -> bytes:
    ev = _event(rng)
    return _map_with_raw(ev, rng.choice(FIELDS), b"\xd4\x01" + rng.randbytes(1))  # fixext1, type 1


def _near_kafka_limit(rng: random.Random, i: int) -> bytes:
    ev = _event(rng)
    ev["item_id"] = ""
    ev["item_id"] = "k" * (NEAR_KAFKA_LIMIT_BYTES - len(_pack(ev)) - 4)  # fixstr -> str32 header: +4
    raw = _pack(ev)
    assert len(raw) == NEAR_KAFKA_LIMIT_BYTES
    return raw


def poison_records(
    n: int,
    seed: int = 0,
    *,
    kinds: Sequence[str] = KINDS,
    huge_every: int = 50,
) -> list[tuple[bytes, str]]:
    """``n`` malformed records as ``(raw bytes, kind)``, cycling through ``kinds``.

    ``huge_every``: every that many-th ``huge_string`` record carries a 1 MB string
    (0: never), so the bulk of a large batch stays small.
    """
    unknown = [k for k in kinds if k not in REASON_PREFIXES]
    if unknown:
        raise ValueError(f"unknown poison kinds {unknown}; known: {', '.join(KINDS)}")
    makers: dict[str, Callable[[random.Random, int], bytes]] = {
        "truncated": _truncated,
        "wrong_type": _wrong_type,
        "huge_header": _huge_header,
        "deep_nesting": _deep_nesting,
        "huge_string": lambda rng, i: _huge_string(rng, i, huge_every),
        "invalid_utf8": _invalid_utf8,
        "not_a_map": _not_a_map,
        "unknown_behavior": _unknown_behavior,
        "out_of_range_ts": _out_of_range_ts,
        "empty": _empty,
        "missing_field": _missing_field,
        "trailing_bytes": _trailing_bytes,
        "ext_type": _ext_type,
        "near_kafka_limit": _near_kafka_limit,
    }
    rng = random.Random(seed)
    seen = dict.fromkeys(kinds, 0)
    out: list[tuple[bytes, str]] = []
    for j in range(n):
        kind = kinds[j % len(kinds)]
        out.append((makers[kind](rng, seen[kind]), kind))
        seen[kind] += 1
    return out

"""Behavior events: the input contract, decoding and validation.

Decoding never raises: a bad record is returned as a :class:`DecodeError`
value so the job can route it to the dead-letter topic and keep running.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import msgpack

BEHAVIORS: tuple[str, ...] = ("pv", "cart", "fav", "buy")
BEHAVIOR_INDEX: dict[str, int] = {b: i for i, b in enumerate(BEHAVIORS)}

MAX_EVENT_BYTES = 64 * 1024
MAX_STR_ID_LEN = 128
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# ms since epoch; anything outside [1970, ~2286) is a unit or encoding mistake.
MAX_TS_MS = 10**13
# What a dead letter's reason starts with (README, "Dead letters").
REASON_CODES: tuple[str, ...] = (
    "too_large", "not_msgpack", "not_a_map", "missing_field", "bad_type", "unknown_behavior",
    "out_of_range", "future_timestamp",
)

Id = int | str
FIELDS = ("user_id", "item_id", "category_id", "behavior", "ts")


class Event(NamedTuple):
    """One shopper action. ``ts`` is event time in milliseconds since epoch."""

    user_id: Id
    item_id: Id
    category_id: Id
    behavior: str
    ts: int

    def to_wire(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "item_id": self.item_id,
            "category_id": self.category_id,
            "behavior": self.behavior,
            "ts": self.ts,
        }


class DecodeError(NamedTuple):
    """A record that failed decoding; ``raw`` is kept byte-for-byte."""

    reason: str
    raw: bytes


def encode_event(event: Event) -> bytes:
    return msgpack.packb(event.to_wire(), use_bin_type=True)


def _check_id(name: str, value: Any) -> str | None:
    if isinstance(value, bool):
        return f"bad_type:{name}: bool is not an id"
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            return f"out_of_range:{name}: {value} does not fit in int64"
        return None
    if isinstance(value, str):
        if not 0 < len(value) <= MAX_STR_ID_LEN:
            return f"out_of_range:{name}: string id length {len(value)} not in 1..{MAX_STR_ID_LEN}"
        return None
    return f"bad_type:{name}: expected int or str, got {type(value).__name__}"


def max_event_ts(max_future_skew_ms: int) -> int:
    """The latest acceptable event time now: wall-clock ms plus ``job.max_future_skew_ms``."""
    return time.time_ns() // 1_000_000 + max_future_skew_ms


def _validate(obj: Any, raw: bytes, max_ts_ms: int | None) -> Event | DecodeError:
    if not isinstance(obj, dict):
        return DecodeError(f"not_a_map: top level is {type(obj).__name__}", raw)
    for name in FIELDS:
        if name not in obj:
            return DecodeError(f"missing_field:{name}", raw)
    for name in ("user_id", "item_id", "category_id"):
        problem = _check_id(name, obj[name])
        if problem:
            return DecodeError(problem, raw)
    behavior = obj["behavior"]
    if not isinstance(behavior, str):
        return DecodeError(f"bad_type:behavior: expected str, got {type(behavior).__name__}", raw)
    if behavior not in BEHAVIOR_INDEX:
        return DecodeError(f"unknown_behavior: {behavior[:32]!r}", raw)
    ts = obj["ts"]
    if isinstance(ts, bool) or not isinstance(ts, int):
        return DecodeError(f"bad_type:ts: expected int ms, got {type(ts).__name__}", raw)
    if not 0 <= ts < MAX_TS_MS:
        return DecodeError(f"out_of_range:ts: {ts} is not milliseconds since epoch", raw)
    if max_ts_ms is not None and ts > max_ts_ms:
        return DecodeError(f"future_timestamp: ts {ts} is {ts - max_ts_ms} ms beyond now + job.max_future_skew_ms",
                           raw)
    return Event(obj["user_id"], obj["item_id"], obj["category_id"], behavior, ts)


def decode_event(raw: bytes, max_ts_ms: int | None = None) -> Event | DecodeError:
    """Decode one msgpack record; limits stop hostile headers before allocation.

    ``max_ts_ms``: the latest event time accepted (the caller passes
    :func:`max_event_ts`, so this stays pure); a later ``ts`` is a
    ``future_timestamp`` dead letter. ``None``: no bound.
    """
    if len(raw) > MAX_EVENT_BYTES:
        return DecodeError(f"too_large: {len(raw)} bytes > {MAX_EVENT_BYTES}", raw)
    try:
        obj = msgpack.unpackb(
            raw,
            raw=False,
            strict_map_key=False,
            max_bin_len=MAX_EVENT_BYTES,
            max_str_len=MAX_EVENT_BYTES,
            max_array_len=1024,
            max_map_len=64,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types; all mean "not our format"
        return DecodeError(f"not_msgpack: {type(exc).__name__}: {str(exc)[:120]}", raw)
    return _validate(obj, raw, max_ts_ms)

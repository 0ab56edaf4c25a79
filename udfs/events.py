"""Behavior events: the input contract, decoding and validation.

Decoding never raises: a bad record is returned as a :class:`DecodeError`
value so the job can route it to the dead-letter topic and keep running.
"""

from __future__ import annotations

import re
import time
import unicodedata
from collections.abc import Callable
from typing import Any, NamedTuple

import msgpack

from udfs.errors import InputError

BEHAVIORS: tuple[str, ...] = ("pv", "cart", "fav", "buy")
BEHAVIOR_INDEX: dict[str, int] = {b: i for i, b in enumerate(BEHAVIORS)}

MAX_EVENT_BYTES = 64 * 1024
MAX_STR_ID_LEN = 128
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# ms since epoch; anything outside [1970, ~2286) is a unit or encoding mistake.
MAX_TS_MS = 10**13
# The canonical decimal form of an integer: "0", or an optional "-", a non-zero digit,
# then digits (ASCII only: no "+", no leading zeros, no whitespace).
_CANONICAL_INT = re.compile(r"0|-?[1-9][0-9]*")
# Unicode category Cc: C0 controls, DEL and C1 controls (a fixed set in every version).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")

# What decode_event's reasons start with (docs/contracts.md, "Dead letters"; the job adds key_mismatch).
REASON_CODES: tuple[str, ...] = (
    "too_large", "not_msgpack", "not_a_map", "missing_field", "bad_type", "bad_id", "unknown_behavior",
    "out_of_range", "future_timestamp", "bad_erase",
)

# The one reason only the JSON source gives (JsonInput.java); its others are the codes above.
TRANSLATION_REASON_CODES: tuple[str, ...] = ("not_json",)

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


class Erase(NamedTuple):
    """A request to forget a shopper (``{"user_id": ..., "erase": true}`` on the input topic): the job
    drops the shopper's state and sends a tombstone for their list (docs/operations.md "Erasing a shopper")."""

    user_id: Id


ERASE_FIELDS = frozenset(("user_id", "erase"))
# An input record the job's source could not translate from JSON (JsonInput.java): its map's two keys.
UNTRANSLATED_FIELDS = frozenset(("input_error", "raw"))
# Room for that map's keys and reason around a record of up to MAX_EVENT_BYTES.
UNTRANSLATED_OVERHEAD = 1024


class DecodeError(NamedTuple):
    """A record that failed decoding; ``raw`` is kept byte-for-byte."""

    reason: str
    raw: bytes


def encode_event(event: Event) -> bytes:
    return msgpack.packb(event.to_wire(), use_bin_type=True)


def encode_erase(user_id: Id) -> bytes:
    """The input-topic record that erases ``user_id`` (keyed by ``str(user_id)``, as an event is)."""
    return msgpack.packb({"user_id": user_id, "erase": True}, use_bin_type=True)


def behavior_pairs(text: str, key: str) -> tuple[tuple[str, str], ...]:
    """A behavior-name mapping as written in a flag or a config key (``click=pv,order=buy``): the
    (their name, ours) pairs, in order. ``key`` names the flag or key in the error for an entry
    without ``=``; the caller checks the names against :data:`BEHAVIORS` with its own rule."""
    pairs = []
    for entry in filter(None, (e.strip() for e in text.split(","))):
        if "=" not in entry:
            raise InputError(f"{key}: expected NAME=OURS (OURS one of {', '.join(BEHAVIORS)}), got {entry!r}")
        name, ours = (x.strip() for x in entry.split("=", 1))
        pairs.append((name, ours))
    return tuple(pairs)


class InvalidId(InputError):
    """An id that breaks the id rule; ``reason`` is a dead-letter reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def canonical_id(value: Any, name: str = "id") -> Id:
    """The one value that stands for this id, or :class:`InvalidId` (the id rule, docs/contracts.md).

    Integers must fit in int64. Strings are NFC-normalised, then must be 1..128 code
    points with no control character (category Cc); a string that is the canonical
    decimal form of an int64 is that integer, so ``"42"`` and ``42`` are one shopper
    (``"042"``, ``"+42"``, ``" 42"`` and ``"-0"`` stay strings). ``str()`` of the result is
    the job's key, which ``EventEnvelope.java`` computes by the same rule.
    """
    if isinstance(value, bool):
        raise InvalidId(f"bad_type:{name}: bool is not an id")
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise InvalidId(f"out_of_range:{name}: {value} does not fit in int64")
        return value
    if not isinstance(value, str):
        raise InvalidId(f"bad_type:{name}: expected int or str, got {type(value).__name__}")
    if not unicodedata.is_normalized("NFC", value):
        value = unicodedata.normalize("NFC", value)
    if not 0 < len(value) <= MAX_STR_ID_LEN:
        raise InvalidId(f"out_of_range:{name}: string id length {len(value)} (after NFC) not in 1..{MAX_STR_ID_LEN}")
    control = _CONTROL.search(value)
    if control:
        raise InvalidId(f"bad_id:{name}: control character U+{ord(control.group()):04X} at {control.start()}")
    if _CANONICAL_INT.fullmatch(value):
        number = int(value)
        if INT64_MIN <= number <= INT64_MAX:
            return number
    return value


def max_event_ts(max_future_skew_ms: int) -> int:
    """The latest acceptable event time now: wall-clock ms plus ``job.max_future_skew_ms``."""
    return time.time_ns() // 1_000_000 + max_future_skew_ms


def _validate(obj: Any, raw: bytes, max_ts_ms: int | None,
              pseudonym: Callable[[Id], str] | None) -> Event | DecodeError:
    if not isinstance(obj, dict):
        return DecodeError(f"not_a_map: top level is {type(obj).__name__}", raw)
    for name in FIELDS:
        if name not in obj:
            return DecodeError(f"missing_field:{name}", raw)
    try:
        user = canonical_id(obj["user_id"], "user_id")
        item = canonical_id(obj["item_id"], "item_id")
        category = canonical_id(obj["category_id"], "category_id")
    except InvalidId as exc:
        return DecodeError(exc.reason, raw)
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
    return Event(user if pseudonym is None else pseudonym(user), item, category, behavior, ts)


def decode_event(raw: bytes, max_ts_ms: int | None = None,
                 pseudonym: Callable[[Id], str] | None = None) -> Event | DecodeError:
    """Decode one msgpack record; limits stop hostile headers before allocation.

    Ids come back canonical (:func:`canonical_id`). ``max_ts_ms``: the latest event
    time accepted (the caller passes :func:`max_event_ts`, so this stays pure); a
    later ``ts`` is a ``future_timestamp`` dead letter. ``None``: no bound.
    ``pseudonym``: replaces the user id of a valid event (``privacy.pseudonymize``,
    :mod:`udfs.privacy`), here where it is first read, so no later stage sees the raw id.
    An erase request is not an event here (``missing_field``): readers of the input topic
    that honour erasure call :func:`decode_input`.
    """
    obj = _unpack(raw)
    return obj if isinstance(obj, DecodeError) else _validate(obj, raw, max_ts_ms, pseudonym)


def decode_input(raw: bytes, max_ts_ms: int | None = None, pseudonym: Callable[[Id], str] | None = None, *,
                 translated: bool = False) -> Event | Erase | DecodeError:
    """An input-topic record: an event (:func:`decode_event`), or an erase request, a map of exactly
    ``user_id`` and ``erase: true`` (anything else with an ``erase`` key is a ``bad_erase`` dead
    letter, so a mistyped request is seen rather than taken for an event). The pseudonym applies as
    to events, so the request reaches the state the shopper's events built.

    ``translated``: the source translated the topic's JSON (``input.format = json``), so a record it
    could not translate arrives as ``{input_error, raw}`` and becomes a dead letter holding the
    shop's original bytes. Only then: a msgpack producer cannot pose as the translator."""
    obj = _unpack(raw, MAX_EVENT_BYTES + UNTRANSLATED_OVERHEAD if translated else MAX_EVENT_BYTES)
    if translated and isinstance(obj, dict) and obj.keys() == UNTRANSLATED_FIELDS:
        return _untranslated(obj, raw)
    if len(raw) > MAX_EVENT_BYTES:
        return DecodeError(f"too_large: {len(raw)} bytes > {MAX_EVENT_BYTES}", raw)
    if isinstance(obj, DecodeError):
        return obj
    if isinstance(obj, dict) and "erase" in obj:
        return _validate_erase(obj, raw, pseudonym)
    return _validate(obj, raw, max_ts_ms, pseudonym)


def _validate_erase(obj: dict[Any, Any], raw: bytes, pseudonym: Callable[[Id], str] | None) -> Erase | DecodeError:
    if obj.keys() != ERASE_FIELDS:
        fields = sorted(map(str, obj.keys()))[:8]
        return DecodeError(f"bad_erase: an erase request holds user_id and erase only, got {fields}", raw)
    if obj["erase"] is not True:
        return DecodeError(f"bad_erase: erase must be true, got {obj['erase']!r:.32}", raw)
    try:
        user = canonical_id(obj["user_id"], "user_id")
    except InvalidId as exc:
        return DecodeError(exc.reason, raw)
    return Erase(user if pseudonym is None else pseudonym(user))


def _untranslated(obj: dict[Any, Any], raw: bytes) -> DecodeError:
    reason, original = obj["input_error"], obj["raw"]
    if not isinstance(reason, str) or not isinstance(original, bytes):  # not the translator's; keep it whole
        return DecodeError("not_a_map: an untranslated record's input_error and raw are str and bytes", raw)
    return DecodeError(reason, original)


def _unpack(raw: bytes, max_bytes: int = MAX_EVENT_BYTES) -> Any:
    """The record's msgpack object, or a :class:`DecodeError`; limits stop hostile headers before allocation."""
    if len(raw) > max_bytes:
        return DecodeError(f"too_large: {len(raw)} bytes > {MAX_EVENT_BYTES}", raw)
    try:
        return msgpack.unpackb(
            raw,
            raw=False,
            strict_map_key=False,
            max_bin_len=max_bytes,
            max_str_len=max_bytes,
            max_array_len=1024,
            max_map_len=64,
            max_ext_len=0,
            ext_hook=_no_ext,
        )
    except Exception as exc:  # msgpack raises many types; all mean "not our format"
        return DecodeError(f"not_msgpack: {type(exc).__name__}: {str(exc)[:120]}", raw)


def _no_ext(code: int, data: bytes) -> Any:
    """``max_ext_len=0`` still lets a zero-length ext through; an ext of any length is not an event
    (EventEnvelope.java refuses them all, so the two agree on the key)."""
    raise ValueError(f"ext type {code} is not an event")

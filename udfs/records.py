"""Output, dead-letter and late-event records: one layout for the Flink job and the peer.

Free of pyflink so the plain-Python peer and tests can import it.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, NamedTuple

import msgpack

from udfs.errors import InputError
from udfs.events import DecodeError, Event
from udfs.privacy import redact_reason

# Version of the output record (docs/contracts.md "Output"): 2 added `reasons`, one per item.
# Adding a field keeps the number; removing, renaming or retyping one bumps it.
SCHEMA_VERSION = 2

# A dead letter must fit the DLQ producer's default max.request.size (1 MiB): a
# record the broker accepted on the input topic can be up to that size itself, and
# a dead letter that cannot be written fails the sink and restarts the job, forever.
# Bytes beyond this are cut; the length and sha256 of the whole record are kept, and
# partition/offset still point at the original.
MAX_DLQ_RAW_BYTES = 512 * 1024

# The output record's fields (docs/contracts.md "Output"), all present in every record of SCHEMA_VERSION.
OUTPUT_FIELDS = ("schema_version", "user_id", "seq", "items", "scores", "reasons", "trigger", "model_version",
                 "provider", "fallback", "generated_at")
# Fields added within SCHEMA_VERSION: this writer always writes them, a reader takes a record without them.
ADDED_OUTPUT_FIELDS = ("arm",)
# Versions a reader accepts: 1 had no `reasons`.
READABLE_VERSIONS = (1, 2)
# Largest output record a reader decodes (a list of 1,000 long string ids with reasons fits).
MAX_OUTPUT_BYTES = 1024 * 1024
# How deep the parts of a list that a lookup passes on as they are (trigger, reasons) may nest.
MAX_PLAIN_DEPTH = 8


class OutputRecordError(InputError):
    """Bytes that are not an output record this code can read."""


class OutputRecord(NamedTuple):
    """One decoded output record. ``reasons`` is empty for a version-1 record;
    ``arm`` is the experiment arm where a later writer adds one (``None`` otherwise)."""

    schema_version: int
    user_id: Any
    seq: int
    items: list[Any]
    scores: list[float]
    reasons: list[dict[str, Any]]
    trigger: dict[str, Any]
    model_version: str
    provider: str
    fallback: str | None
    generated_at: int
    arm: str | None = None


# Exact types, as msgpack gives them: a type lookup per value is what lets a serve view rebuild at tens of
# thousands of lists a second (bool is its own type here, so it is no id).
_ID_TYPES = frozenset((int, str))
_SCALARS = frozenset((type(None), bool, int, str))
_NUMBERS = frozenset((int, float))


def _is_id(value: Any) -> bool:
    return type(value) in _ID_TYPES


def _plain(value: Any, depth: int = MAX_PLAIN_DEPTH) -> bool:
    """JSON data a response can carry as it is: no bytes, no NaN or infinity, string keys, bounded nesting.
    A follower stores what the decoder accepts and a lookup answers with it, so a value JSON cannot
    hold would fail every later lookup of that shopper (or every write of the follower's batch).
    Scalars inside a container are checked in its loop, without a call each."""
    kind = type(value)
    if kind in _SCALARS:
        return True
    if kind is float:
        return math.isfinite(value)
    if depth <= 0:
        return False
    if kind is list:
        return all(type(v) in _SCALARS or _plain(v, depth - 1) for v in value)
    if kind is dict:
        for k, v in value.items():
            if type(k) is not str or (type(v) not in _SCALARS and not _plain(v, depth - 1)):
                return False
        return True
    return False


def _check_parts(obj: dict[str, Any], reasons: list[Any]) -> None:
    """The fields a lookup passes on: ids where ids belong, plain JSON data elsewhere."""
    if not _is_id(obj["user_id"]):
        raise OutputRecordError(f"bad_type: user_id must be an id (int or str), got {type(obj['user_id']).__name__}")
    if obj["trigger"] is not None and not isinstance(obj["trigger"], dict):
        raise OutputRecordError(f"bad_type: trigger must be a map or null, got {type(obj['trigger']).__name__}")
    if not _plain(obj["trigger"]):
        raise OutputRecordError("bad_value: trigger holds bytes, NaN, a non-string key or deep nesting")
    if not _plain(reasons, MAX_PLAIN_DEPTH + 1):
        raise OutputRecordError("bad_value: a reason holds bytes, NaN, a non-string key or deep nesting")
    for r in reasons:
        if type(r) is dict and "because" in r and type(r["because"]) not in _ID_TYPES:
            raise OutputRecordError("bad_type: a reason's because must be an item id")
    if obj["fallback"] is not None and not isinstance(obj["fallback"], str):
        raise OutputRecordError(f"bad_type: fallback must be a string or null, got {type(obj['fallback']).__name__}")


# The lists topic's value for an erased shopper: the job emits it (an empty value) and the sink
# writes it as Kafka's tombstone, a null value (KeyedBytesSerializer.java), which compaction and the
# serve followers take as "delete this shopper's list" (docs/operations.md "Erasing a shopper").
ERASED_LIST = b""
# How a tombstone reads where a record is a map (the file sink's JSON lines, `streamrec consume`):
# {"tombstone": KEY}, the key of the erased shopper.
TOMBSTONE_FIELD = "tombstone"


def tombstone_key(value: object) -> str | None:
    """The erased shopper's key if ``value`` is a tombstone's map, else None."""
    if isinstance(value, dict) and len(value) == 1 and isinstance(value.get(TOMBSTONE_FIELD), str):
        return value[TOMBSTONE_FIELD]
    return None


def encode_output_record(record: dict[str, Any]) -> bytes:
    """The ``recommendations`` topic's value for ``udfs.recommend.output_record``'s map."""
    return msgpack.packb(record, use_bin_type=True)


def decode_output_record(raw: bytes | None) -> OutputRecord:
    """Read one ``recommendations`` value; :class:`OutputRecordError` says what is wrong with it.

    Unknown extra fields are ignored (a later writer may add some), a missing one or an
    unknown version is an error. Never raises anything else: a follower skips what this rejects and
    moves on, so one odd record cannot stop it."""
    if not isinstance(raw, (bytes, bytearray)):
        raise OutputRecordError(f"no_value: {type(raw).__name__} instead of bytes (a tombstone?)")
    if len(raw) > MAX_OUTPUT_BYTES:
        raise OutputRecordError(f"too_large: {len(raw)} bytes > {MAX_OUTPUT_BYTES}")
    try:
        obj = msgpack.unpackb(raw, raw=False, strict_map_key=False, max_ext_len=0)
    except Exception as exc:  # msgpack raises many types; all mean "not our format"
        raise OutputRecordError(f"not_msgpack: {type(exc).__name__}: {str(exc)[:120]}") from None
    if not isinstance(obj, dict):
        raise OutputRecordError(f"not_a_map: top level is {type(obj).__name__}")
    version = obj.get("schema_version")
    if version not in READABLE_VERSIONS:
        raise OutputRecordError(f"schema_version {version!r} not in {READABLE_VERSIONS}")
    missing = [f for f in OUTPUT_FIELDS if f not in obj and not (f == "reasons" and version == 1)]
    if missing:
        raise OutputRecordError(f"missing_field: {', '.join(missing)}")
    items, scores = obj["items"], obj["scores"]
    reasons = obj.get("reasons") or []
    if not isinstance(items, list) or not isinstance(scores, list) or len(items) != len(scores):
        raise OutputRecordError("bad_type: items and scores must be lists of one length")
    if not isinstance(reasons, list) or (reasons and len(reasons) != len(items)):
        raise OutputRecordError("bad_type: reasons must be a list, one per item")
    if not isinstance(obj["generated_at"], int) or not isinstance(obj["seq"], int):
        raise OutputRecordError("bad_type: seq and generated_at must be integers")
    if not _ID_TYPES.issuperset(map(type, items)):
        raise OutputRecordError("bad_type: items must be ids (int or str)")
    if not _NUMBERS.issuperset(map(type, scores)):
        raise OutputRecordError("bad_type: scores must be numbers")
    _check_parts(obj, reasons)
    arm = obj.get("arm")
    return OutputRecord(version, obj["user_id"], obj["seq"], items, [float(s) for s in scores],
                        [r if isinstance(r, dict) else {} for r in reasons], dict(obj["trigger"] or {}),
                        str(obj["model_version"]), str(obj["provider"]), obj["fallback"], obj["generated_at"],
                        None if arm is None else str(arm))


def dead_letter_record(error: DecodeError, topic: str | None, partition: int | None, offset: int | None,
                       timestamp: int | None, redact: bool = False) -> tuple[str, bytes]:
    """DLQ ``(key, value)``: the original bytes, where they came from and why.

    ``redact`` (``privacy.redact_dead_letters``): the raw bytes and the reason's detail
    may hold the raw user id, so only the reason code, the coordinates and the length
    are kept (``raw`` is empty, ``raw_redacted`` true; no hash: an unkeyed hash of a
    record with guessable fields gives the id away).
    """
    if redact:
        return _redacted_dead_letter(error, topic, partition, offset, timestamp)
    raw = error.raw
    body = {
        "reason": error.reason,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "timestamp": timestamp,
        "raw": raw[:MAX_DLQ_RAW_BYTES],
        "raw_len": len(raw),
        "raw_truncated": len(raw) > MAX_DLQ_RAW_BYTES,
    }
    if body["raw_truncated"]:
        body["raw_sha256"] = hashlib.sha256(raw).hexdigest()
    return _dead_letter_key(topic, partition, offset), msgpack.packb(body, use_bin_type=True)


def _redacted_dead_letter(error: DecodeError, topic: str | None, partition: int | None, offset: int | None,
                          timestamp: int | None) -> tuple[str, bytes]:
    body = {"reason": redact_reason(error.reason), "topic": topic, "partition": partition, "offset": offset,
            "timestamp": timestamp, "raw": b"", "raw_len": len(error.raw), "raw_truncated": False,
            "raw_redacted": True}
    return _dead_letter_key(topic, partition, offset), msgpack.packb(body, use_bin_type=True)


def _dead_letter_key(topic: str | None, partition: int | None, offset: int | None) -> str:
    return f"{topic}:{partition}:{offset}" if offset is not None and offset >= 0 else (topic or "")


def late_event_record(event: Event, watermark: int, lateness_ms: int) -> tuple[str, bytes]:
    """Late-topic ``(key, value)``, keyed by user."""
    value = msgpack.packb(
        {"reason": f"late: ts {event.ts} < watermark {watermark} - allowed lateness {lateness_ms}",
         "event": event.to_wire(), "watermark": watermark},
        use_bin_type=True,
    )
    return str(event.user_id), value


# The feedback record (docs/operations.md "Online feedback"), one per accepted, non-duplicate event of a shopper
# who was shown a list before it; version rules as for the output record.
FEEDBACK_SCHEMA_VERSION = 1
FEEDBACK_FIELDS = ("schema_version", "user_id", "item_id", "behavior", "ts", "list_seq", "rank", "k",
                   "model_version", "arm")


class FeedbackRecord(NamedTuple):
    """Whether a shopper's event hit the list they were last shown. ``rank`` is the item's 0-based
    position in that list, -1 when absent; ``k`` the list's length; ``list_seq``, ``model_version``
    and ``arm`` are the list's (``arm`` None without an experiment). ``user_id`` is the job's key
    (the pseudonym under ``privacy.pseudonymize``)."""

    user_id: Any
    item_id: Any
    behavior: str
    ts: int
    list_seq: int
    rank: int
    k: int
    model_version: str
    arm: str | None = None

    def hit(self, k: int) -> bool:
        return 0 <= self.rank < k

    def to_map(self) -> dict[str, Any]:
        return {"schema_version": FEEDBACK_SCHEMA_VERSION, **self._asdict()}


def encode_feedback_record(record: FeedbackRecord) -> tuple[str, bytes]:
    """Feedback-topic ``(key, value)``, keyed by user like the lists, so a shopper's records keep order."""
    return str(record.user_id), msgpack.packb(record.to_map(), use_bin_type=True)


def decode_feedback_record(raw: bytes | dict[str, Any]) -> FeedbackRecord:
    """A feedback record from the topic's bytes or from its map (the file sink's JSON lines);
    :class:`OutputRecordError` says what is wrong with it. Extra fields are ignored."""
    if isinstance(raw, (bytes, bytearray)):
        try:
            obj = msgpack.unpackb(raw, raw=False, strict_map_key=False, max_ext_len=0)
        except Exception as exc:  # msgpack raises many types; all mean "not our format"
            raise OutputRecordError(f"not_msgpack: {type(exc).__name__}: {str(exc)[:120]}") from None
    else:
        obj = raw
    if not isinstance(obj, dict):
        raise OutputRecordError(f"not_a_map: top level is {type(obj).__name__}")
    if obj.get("schema_version") != FEEDBACK_SCHEMA_VERSION:
        raise OutputRecordError(f"feedback schema_version {obj.get('schema_version')!r} != {FEEDBACK_SCHEMA_VERSION}")
    missing = [f for f in FEEDBACK_FIELDS if f not in obj]
    if missing:
        raise OutputRecordError(f"missing_field: {', '.join(missing)}")
    ints = ("ts", "list_seq", "rank", "k")
    if not all(isinstance(obj[f], int) and not isinstance(obj[f], bool) for f in ints):
        raise OutputRecordError(f"bad_type: {', '.join(ints)} must be integers")
    arm = obj["arm"]
    return FeedbackRecord(obj["user_id"], obj["item_id"], str(obj["behavior"]), obj["ts"], obj["list_seq"],
                          obj["rank"], obj["k"], str(obj["model_version"]), None if arm is None else str(arm))

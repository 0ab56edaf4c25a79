"""Output, dead-letter and late-event records: one layout for the Flink job and the peer.

Free of pyflink so the plain-Python peer and tests can import it.
"""

from __future__ import annotations

import hashlib

import msgpack

from udfs.events import DecodeError, Event
from udfs.privacy import redact_reason

# Version of the output record (README "Output"): 2 added `reasons`, one per item.
# Adding a field keeps the number; removing, renaming or retyping one bumps it.
SCHEMA_VERSION = 2

# A dead letter must fit the DLQ producer's default max.request.size (1 MiB): a
# record the broker accepted on the input topic can be up to that size itself, and
# a dead letter that cannot be written fails the sink and restarts the job, forever.
# Bytes beyond this are cut; the length and sha256 of the whole record are kept, and
# partition/offset still point at the original.
MAX_DLQ_RAW_BYTES = 512 * 1024


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

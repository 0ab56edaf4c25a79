"""The id rule's test vectors (``tests/id_vectors.json``), for the Python and the JVM tests alike."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

PATH = Path(__file__).with_suffix(".json")


class IdVector(NamedTuple):
    raw: Any  # the id as sent
    id: Any  # the canonical id (str() of it is the job's key), or None when rejected
    reject: str | None  # the dead-letter reason code, or None when accepted
    note: str


def _load() -> list[IdVector]:
    out = []
    for v in json.loads(PATH.read_text())["vectors"]:
        n = v.get("repeat", 1)
        raw, ident = v["raw"], v.get("id")
        if n != 1:
            raw, ident = raw * n, (ident * n if ident is not None else None)
        out.append(IdVector(raw, ident, v.get("reject"), v["note"] + (f" (x{n})" if n != 1 else "")))
    return out


ID_VECTORS: list[IdVector] = _load()
ACCEPTED = [v for v in ID_VECTORS if v.reject is None]
REJECTED = [v for v in ID_VECTORS if v.reject is not None]


TAIL = bytes.fromhex("a7757365725f696401a76974656d5f696402ab63617465676f72795f696403a86265686176696f72a27076"
                     "a27473cf0000018bcfe56800")
"""user_id 1, item_id 2, category_id 3, behavior pv, ts 1700000000000: the last five entries of each event vector."""


class EventVector(NamedTuple):
    raw: bytes
    reject: str | None  # Python's dead-letter reason code, or None when accepted
    note: str


EVENT_VECTORS: list[EventVector] = [
    EventVector(b"".join(bytes.fromhex(part) * n for part, n in v["hex"]) + TAIL, v["reject"], v["note"])
    for v in json.loads(PATH.read_text())["events"]
]

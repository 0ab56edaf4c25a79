"""Helpers for the serve tests: output records in the shared layout."""

from __future__ import annotations

import time
from typing import Any

from udfs.records import SCHEMA_VERSION, encode_output_record


def output_value(user: Any, seq: int, items: list[Any], **over: Any) -> bytes:
    rec = {"schema_version": SCHEMA_VERSION, "user_id": user, "seq": seq, "items": items,
           "scores": [1.0 / (i + 1) for i in range(len(items))],
           "reasons": [{"code": "covisit", "because": 5} if i == 0 else {"code": "trending"}
                       for i in range(len(items))],
           "trigger": {"item_id": 5, "behavior": "pv", "ts": 1_700_000_000_000}, "model_version": "m-1",
           "provider": "cpu", "fallback": None, "generated_at": int(time.time() * 1000)}
    rec.update(over)
    return encode_output_record(rec)

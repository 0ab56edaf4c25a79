"""Model announcements on the control topic: one record layout for the publisher and the job.

``streamrec model publish`` and ``rollback`` write one record per announcement; the job reads
them as a broadcast stream and swaps to the announced version (docs/operations.md 'Model registry and
retraining', 'Hot swap and A/B tests'). Free of pyflink and of the registry's writer, so both sides import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from udfs.artifact import SHA256_HEX
from udfs.errors import InputError

CONTROL_VERSION = 1
ACTIONS = ("activate",)
# The topic's key: one key, so a compacted control topic keeps the last announcement.
CONTROL_KEY = "model"


class ControlRecordError(InputError):
    """Bytes that are not a control record this code can read; the message is the reason."""


@dataclass(frozen=True)
class ControlRecord:
    """``activate``: rank with ``model_version``, an artifact folder at ``path``, from now on.

    ``arm`` names the A/B arm the announcement is for; ``None`` is the live model (every arm
    whose ``model_version`` is ``live``, and every list when no experiment runs).

    ``manifest_sha256``: the sha256 of the version's ``manifest.json`` as published; the job
    installs that manifest only. ``None`` in records written before it existed (an added field,
    so the layout keeps its version: older jobs ignore it)."""

    action: str
    model_version: str
    path: str
    announced_at: int
    arm: str | None = None
    manifest_sha256: str | None = None

    def to_bytes(self) -> bytes:
        obj = {"control_version": CONTROL_VERSION, "action": self.action, "model_version": self.model_version,
               "path": self.path, "announced_at": self.announced_at, "arm": self.arm}
        if self.manifest_sha256 is not None:
            obj["manifest_sha256"] = self.manifest_sha256
        return msgpack.packb(obj, use_bin_type=True)


def decode_control(raw: bytes) -> ControlRecord:
    """Read one control record; :class:`ControlRecordError` says what is wrong with it."""
    try:
        obj: Any = msgpack.unpackb(raw, raw=False, strict_map_key=False, max_ext_len=0)
    except Exception as exc:  # msgpack raises many types; all mean "not our format"
        raise ControlRecordError(f"not_msgpack: {type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise ControlRecordError(f"not_a_map: top level is {type(obj).__name__}")
    if obj.get("control_version") != CONTROL_VERSION:
        raise ControlRecordError(f"control_version {obj.get('control_version')!r} is not {CONTROL_VERSION}")
    if obj.get("action") not in ACTIONS:
        raise ControlRecordError(f"action {obj.get('action')!r} not in {ACTIONS}")
    for name in ("model_version", "path"):
        if not isinstance(obj.get(name), str) or not obj[name]:
            raise ControlRecordError(f"bad_field: {name} must be a non-empty string")
    if not isinstance(obj.get("announced_at"), int):
        raise ControlRecordError("bad_field: announced_at must be an integer (ms)")
    arm = obj.get("arm")
    if arm is not None and not isinstance(arm, str):
        raise ControlRecordError("bad_field: arm must be a string or null")
    digest = obj.get("manifest_sha256")
    if digest is not None and not (isinstance(digest, str) and SHA256_HEX.fullmatch(digest)):
        raise ControlRecordError("bad_field: manifest_sha256 must be 64 lowercase hex digits")
    return ControlRecord(obj["action"], obj["model_version"], obj["path"], obj["announced_at"], arm, digest)

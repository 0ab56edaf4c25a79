"""A/B arms by shopper hash: which experiment arm ranks a shopper's lists.

The arm is a pure function of (salt, shopper key): no state, so it is the same on every
parallel instance, after every restart and in every tool that recomputes it
(docs/operations.md 'Hot swap and A/B tests'). The key is the id the job is keyed by, the pseudonym when
``privacy.pseudonymize`` is on, so the raw id is never needed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol


class Arm(Protocol):
    """What assignment needs of an arm (``udfs.config.ArmConfig`` has it)."""

    @property
    def name(self) -> str: ...

    @property
    def share(self) -> float: ...


def unit_hash(salt: str, key: str) -> float:
    """A uniform number in [0, 1) from SHA-256 of salt and key: independent of Python's per-process
    string hash seed, and of how ids are spread (sequential ids land anywhere)."""
    digest = hashlib.sha256(f"{salt}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_arm(key: str, arms: Sequence[Arm], salt: str) -> Arm:
    """The arm whose cumulative share interval holds the key's hash (shares add up to 1; the last
    arm takes any rounding remainder)."""
    if not arms:
        raise ValueError("assign_arm needs at least one arm")
    u = unit_hash(salt, key)
    edge = 0.0
    for arm in arms:
        edge += arm.share
        if u < edge:
            return arm
    return arms[-1]

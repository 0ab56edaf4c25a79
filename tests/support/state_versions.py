"""Keyed functions for the savepoint tests: "old code" that writes v1 user state, and a probe.

Importable by the job's Python worker (the project root is on its PYTHONPATH), which
a class defined in a test's ``__main__`` would not be. Test-only: nothing here belongs
in the production modules.
"""

from __future__ import annotations

import json
from typing import Any

import msgpack

from jobs.functions import CatalogRecommendFunction, RecommendFunction
from udfs.state import UserState


def to_v1_bytes(data: bytes) -> bytes:
    """Current user-state bytes in the v1 layout, which predates ``windows``:
    ``[1, seq, counts, affinity, ref_ts, bought, emitted, max_ts]``."""
    s = UserState.from_bytes(data)
    return msgpack.packb([1, s.seq, s.counts, s.affinity, s.ref_ts, s.bought, s.emitted, s.max_ts],
                         use_bin_type=True)


def state_version(data: bytes | None) -> int | None:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)[0] if data else None


class _V1ValueState:
    """ValueState proxy: reads pass through, writes are stored in the v1 layout."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def value(self) -> Any:
        return self._inner.value()

    def update(self, value: bytes) -> None:
        self._inner.update(to_v1_bytes(value))

    def __getattr__(self, name: str) -> Any:  # clear() and anything else ValueState has
        return getattr(self._inner, name)


class V1StateWriter(RecommendFunction):
    """The job as it was before STATE_VERSION 2: same logic, user state written as v1.

    Reading goes through ``UserState.from_bytes``, which reads v1 as v1 code did (no
    windows); only the stored bytes differ, so a savepoint of this job holds v1 state.
    """

    def open(self, runtime_context: Any) -> None:
        super().open(runtime_context)
        self.state = _V1ValueState(self.state)


class StateProbe(CatalogRecommendFunction):
    """The current job, plus: the stored state of each user, as found before the user's
    first event in this run, is appended to ``path`` as a JSON line ``{"user", "state"}``
    (state: the raw bytes in hex, "" for none). Wraps ``process_element`` without
    depending on the element layout: the user is the current key.

    It joins the catalog as the current job does: the probe restores the current job's
    savepoint, which holds the catalog source's offsets and the broadcast state, and Flink
    refuses a savepoint with state for an operator the restored program lacks.
    """

    def __init__(self, config: Any, path: str) -> None:
        super().__init__(config)
        self.path = path
        self._seen: set[str] = set()

    def process_element(self, value: Any, ctx: Any) -> Any:
        key = ctx.get_current_key()
        user = str(key[0] if isinstance(key, tuple) else key)  # a Row(key) on some key_by paths
        if user not in self._seen:
            self._seen.add(user)
            raw = self.state.value()
            with open(self.path, "a") as f:
                f.write(json.dumps({"user": user, "state": bytes(raw).hex() if raw else ""}) + "\n")
        yield from super().process_element(value, ctx)

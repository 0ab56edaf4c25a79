"""Fault injection for recovery tests: a RecommendFunction that fails once.

Importable by the job's Python worker (the project root is on its PYTHONPATH),
which a class defined in a test's ``__main__`` would not be.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from jobs.functions import RecommendFunction


class FailOnce(RecommendFunction):
    """Raises on the first event seen ``after_s`` after the first one, once per marker file.

    The marker outlives the restart, so the restored job runs normally. With a
    checkpoint interval well below ``after_s``, the failure comes after a completed
    checkpoint, so recovery replays from it rather than from the start.
    """

    def __init__(self, config: Any, marker: str, after_s: float) -> None:
        super().__init__(config)
        self.marker = marker
        self.after_s = after_s
        self._first: float | None = None

    def process_element(self, value: Any, ctx: Any) -> Any:
        now = time.monotonic()
        if self._first is None:
            self._first = now
        marker = Path(self.marker)
        if now - self._first >= self.after_s and not marker.exists():
            marker.write_text(f"failed on event {tuple(value)}\n")
            raise RuntimeError("injected failure (tests/support/faults.py FailOnce)")
        yield from super().process_element(value, ctx)


class FlakyModel(RecommendFunction):
    """The model raises on every ``every``-th call, as a lost GPU or a bad input would; with
    ``bad_every``, every ``bad_every``-th other call returns scores of the wrong shape."""

    def __init__(self, config: Any, every: int, bad_every: int = 0) -> None:
        super().__init__(config)
        self.every = every
        self.bad_every = bad_every

    def open(self, runtime_context: Any) -> None:
        super().open(runtime_context)
        ranker = self.recommender.ranker
        assert ranker is not None
        score, calls = ranker.score, [0]

        def flaky(batch: Any) -> Any:
            calls[0] += 1
            if calls[0] % self.every == 0:
                raise RuntimeError("CUDA error: device lost (injected)")
            if self.bad_every and calls[0] % self.bad_every == 0:
                return score(batch)[:, None]  # [B, 1]: one column, not one score per row
            return score(batch)

        ranker.score = flaky  # type: ignore[method-assign]

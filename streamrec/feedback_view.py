"""`streamrec feedback`: rolling online HR@10 and NDCG@10 per model version and arm.

The job scores each event against the shopper's previous list (udfs/feedback.py) and writes
the result to ``kafka.feedback_topic``; this reads that topic (read_committed, so an
exactly-once job's aborted records never count) and keeps the figures of the last ``window``
records. One window over all records, not one per version: right after a model swap the new
version's share of the window grows as the old one's shrinks, so the two are compared on the
same recent traffic.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TextIO

from udfs.errors import InputError
from udfs.feedback import NO_ARM, OnlineFigures, ndcg_at
from udfs.ranking_metrics import K
from udfs.records import FeedbackRecord, OutputRecordError, decode_feedback_record, tombstone_key

Label = tuple[str, str]  # (model version, arm)


class RollingFeedback:
    """HR@k and NDCG@k of the last ``window`` records, per (model version, arm); O(1) per record."""

    def __init__(self, window: int, k: int = K) -> None:
        if window < 1:
            raise InputError(f"--window must be at least 1, got {window}")
        self.window = window
        self.k = k
        self._records: deque[tuple[Label, bool, float]] = deque()
        self._figures: dict[Label, OnlineFigures] = {}
        self.seen = 0

    def add(self, fb: FeedbackRecord) -> None:
        label = (fb.model_version, fb.arm or NO_ARM)
        hit = fb.hit(self.k)
        gain = ndcg_at(fb.rank, self.k)
        self._records.append((label, hit, gain))
        figures = self._figures.setdefault(label, OnlineFigures(self.k))
        figures.n += 1
        figures.hits += hit
        figures.ndcg_sum += gain
        self.seen += 1
        if len(self._records) > self.window:
            old, old_hit, old_gain = self._records.popleft()
            gone = self._figures[old]
            gone.n -= 1
            gone.hits -= old_hit
            gone.ndcg_sum -= old_gain
            if gone.n == 0:
                del self._figures[old]

    def figures(self) -> dict[Label, OnlineFigures]:
        return dict(sorted(self._figures.items()))

    def table(self) -> str:
        """One line per version and arm: records in the window, HR@k, NDCG@k."""
        rows = [("model_version", "arm", "records", f"HR@{self.k}", f"NDCG@{self.k}")]
        for (version, arm), f in self.figures().items():
            # A long running sum of float gains drifts; clamp the tiny negative a window can leave.
            rows.append((version, arm, str(f.n), f"{f.hr:.4f}", f"{max(f.ndcg, 0.0):.4f}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        return "\n".join([f"last {min(self.seen, self.window)} of {self.seen} feedback records", *lines])


def decoded(values: Iterable[object], skipped: list[str]) -> Iterator[FeedbackRecord]:
    """Feedback records from topic values (maps) or raw bytes; what cannot be read is noted in ``skipped``;
    tombstones (``{"tombstone": KEY}``: an erased shopper) are passed over."""
    for value in values:
        if tombstone_key(value) is not None:
            continue
        try:
            yield decode_feedback_record(value)  # type: ignore[arg-type]
        except OutputRecordError as exc:
            skipped.append(str(exc))


def without_erased(values: Iterable[object]) -> list[object]:
    """The values with every erased shopper's records before their tombstone left out (and the tombstones):
    a report over the whole topic (``streamrec ab report``) keeps nothing of a shopper who asked to be
    forgotten, although the topic holds their records until its retention removes them."""
    kept = list(values)
    erased_at = {key: i for i, v in enumerate(kept) if (key := tombstone_key(v)) is not None}
    if not erased_at:
        return kept
    return [v for i, v in enumerate(kept) if tombstone_key(v) is None and i > erased_at.get(_user_key(v), -1)]


def _user_key(value: object) -> str:
    """The shopper key of a feedback map ("" for anything else: no tombstone names it)."""
    return str(value["user_id"]) if isinstance(value, dict) and "user_id" in value else ""


def show(records: Iterable[FeedbackRecord], window: int, out: TextIO, *, follow: bool = False,
         every_s: float = 2.0, clock: Callable[[], float] = time.monotonic) -> RollingFeedback:
    """Fold ``records`` into a rolling window; print the table at the end, and with ``follow``
    also at most every ``every_s`` seconds while records arrive."""
    rolling = RollingFeedback(window)
    now = clock
    printed = now()
    for fb in records:
        rolling.add(fb)
        if follow and now() - printed >= every_s:
            print(rolling.table() + "\n", file=out, flush=True)
            printed = now()
    print(rolling.table(), file=out, flush=True)
    return rolling

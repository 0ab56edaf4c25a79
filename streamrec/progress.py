"""Progress bars for the long loops of the tools (`streamrec replay`, `streamrec bench`).

A bar is drawn only when stderr is a terminal and ``--no-progress`` was not given, so logs
and CI output stay clean. Loops call :meth:`Progress.tick` per record; the bar itself is
touched once every ``every`` records, so a tight producer loop pays one integer add and
compare per record rather than tqdm's per-update bookkeeping.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

_enabled = True


def set_enabled(enabled: bool) -> None:
    """Turn bars on or off for this process (the CLI's ``--no-progress``)."""
    global _enabled
    _enabled = enabled


def enabled() -> bool:
    """Whether a bar would be drawn now: not switched off, and stderr is a terminal."""
    return _enabled and sys.stderr.isatty()


class Progress:
    """A tqdm bar fed in steps of ``every``; a no-op object when bars are off."""

    def __init__(self, desc: str, total: int | None = None, unit: str = "rec", every: int = 1000) -> None:
        self.every = max(1, every)
        self._pending = 0
        self._bar: Any = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, mininterval=0.5,
                              file=sys.stderr) if enabled() else None

    def tick(self, n: int = 1) -> None:
        """Count ``n`` more records; the bar moves every ``every`` of them."""
        if self._bar is None:
            return
        self._pending += n
        if self._pending >= self.every:
            self._bar.update(self._pending)
            self._pending = 0

    def set(self, done: int) -> None:
        """Move the bar to an absolute count (loops that poll a counter rather than step)."""
        if self._bar is not None:
            self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            if self._pending:
                self._bar.update(self._pending)
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

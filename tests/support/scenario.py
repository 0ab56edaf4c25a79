"""What each fault scenario observed (records in and out, duplicates, missing, restarts,
peak memory), one JSON line per scenario in test-results/scenarios.jsonl, so a run's
figures can be quoted as measured rather than copied from a terminal."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jobs.layout import PROJECT_ROOT

REPORT = Path(os.environ.get("STREAMREC_SCENARIO_REPORT", PROJECT_ROOT / "test-results" / "scenarios.jsonl"))


def _processes() -> list[tuple[str, str]]:
    """(pid, stat) of every process, skipping ones that exit while we look."""
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                out.append((entry.path, Path(entry.path, "stat").read_text()))
            except OSError:
                continue
    return out


def _rss_kb(proc_path: str) -> int | None:
    try:
        for line in Path(proc_path, "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def group_rss_kb(pgid: int) -> tuple[int, int]:
    """(sum of VmRSS in kB, process count) over the processes of one process group."""
    total = procs = 0
    for path, stat in _processes():
        try:
            # fields after "(comm)": state ppid pgrp ...; comm may hold spaces and parens
            if int(stat[stat.rindex(")") + 2:].split()[2]) != pgid:
                continue
        except (ValueError, IndexError):
            continue
        rss = _rss_kb(path)
        if rss is not None:
            total, procs = total + rss, procs + 1
    return total, procs


def marked_rss_kb(marker: str) -> tuple[int, int]:
    """(sum of VmRSS in kB, process count) over processes whose command line holds ``marker``
    (a standalone cluster's JVMs carry its work directory in their -D options)."""
    total = procs = 0
    for path, _ in _processes():
        if not _cmdline_has(path, marker):
            continue
        rss = _rss_kb(path)
        if rss is not None:
            total, procs = total + rss, procs + 1
    return total, procs


def live_heap_mb(marker: str) -> float:
    """The heap the JVM whose command line holds ``marker`` keeps after a full collection
    (``jcmd GC.run``, then jstat's used columns): what it holds on to, which RSS cannot tell
    from a heap it has not yet collected or returned."""
    pids = [Path(path).name for path, _ in _processes() if _cmdline_has(path, marker, "java")]
    if len(pids) != 1:
        raise RuntimeError(f"want one JVM with {marker!r} in its command line, found {len(pids)}")
    subprocess.run(["jcmd", pids[0], "GC.run"], check=True, capture_output=True, timeout=120)
    header, values = subprocess.run(["jstat", "-gc", pids[0]], check=True, capture_output=True, text=True,
                                    timeout=60).stdout.split("\n")[:2]
    row = dict(zip(header.split(), map(float, values.split()), strict=True))
    return (row["S0U"] + row["S1U"] + row["EU"] + row["OU"]) / 1024


def _cmdline_has(proc_path: str, *needles: str) -> bool:
    try:
        cmdline = Path(proc_path, "cmdline").read_bytes()
    except OSError:
        return False
    return all(n.encode() in cmdline for n in needles)


class PeakRss(threading.Thread):
    """Samples ``measure()`` (kB, processes) every ``every_s`` while in a ``with`` block."""

    def __init__(self, measure: Callable[[], tuple[int, int]], every_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.measure, self.every_s = measure, every_s
        self.peak_kb = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak_kb = max(self.peak_kb, self.measure()[0])
            self._halt.wait(self.every_s)

    def __enter__(self) -> PeakRss:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._halt.set()
        self.join(timeout=10)

    @property
    def peak_mb(self) -> float:
        return round(self.peak_kb / 1024, 1)


def report(scenario: str, **observed: Any) -> None:
    """Print and append one scenario's observations."""
    line = json.dumps({"scenario": scenario, **observed, "at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    print(line)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    with REPORT.open("a") as f:
        f.write(line + "\n")

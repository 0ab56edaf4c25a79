"""What a benchmark reads about its processes and machine from /proc and the platform: CPU
seconds per process and thread, the busiest threads, resident memory."""

from __future__ import annotations

import os
import platform
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

CODE_ROOT = Path(__file__).resolve().parents[3]
"""The checkout this code runs from."""
# Threads per process in a window's CPU breakdown (results.json ``busiest_threads``).
BUSIEST_THREADS = 8


def _clock_ticks() -> int:
    return int(os.sysconf("SC_CLK_TCK"))


def _stat_cpu_seconds(stat: Path, ticks: int) -> float:
    """User + system CPU from a /proc ``stat`` file (a process's or one thread's); OSError if it is gone."""
    fields = stat.read_text().rsplit(")", 1)[1].split()  # after the name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / ticks


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process (all its threads), from /proc."""
    try:
        return _stat_cpu_seconds(Path(f"/proc/{pid}/stat"), _clock_ticks())
    except OSError:
        return 0.0


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """User + system CPU per thread name of one process, from /proc/PID/task: threads that differ
    only in a trailing number (``GC Thread#0``, ``GC Thread#1``) are summed under one name.

    Names are the kernel's, cut at 15 characters: a TaskManager's operator threads are named
    after their operator chain, so the job's Python work shows beside the JIT compilers,
    the Kafka clients and the garbage collector."""
    out: dict[str, float] = {}
    ticks = _clock_ticks()
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            name = (task / "comm").read_text().strip()
            used = _stat_cpu_seconds(task / "stat", ticks)
        except OSError:
            continue  # the thread ended between the listing and the read
        name = name.rstrip("0123456789").rstrip("#-_ ") or name
        out[name] = out.get(name, 0.0) + used
    return out


def busiest_threads(before: dict[str, float], after: dict[str, float], seconds: float,
                    top: int = BUSIEST_THREADS) -> dict[str, float]:
    """The ``top`` thread names by CPU between two :func:`thread_cpu_seconds` readings, as the share
    of one core over ``seconds`` (1.0: a thread that never waited)."""
    used = {n: after[n] - before.get(n, 0.0) for n in after}
    ranked = sorted((n for n in used if used[n] > 0), key=lambda n: -used[n])[:top]
    return {n: round(used[n] / seconds, 3) for n in ranked} if seconds > 0 else {}


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


class RssSampler:
    """Peak RSS per process, sampled twice a second while a phase runs."""

    def __init__(self, pids: Callable[[], Sequence[int]]) -> None:
        self._pids = pids
        self.peak: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for pid in self._pids():
                self.peak[pid] = max(self.peak.get(pid, 0.0), rss_mb(pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _gpu_name() -> str | None:
    import shutil

    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    res = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    return res.stdout.strip() or None


def machine_info() -> dict[str, Any]:
    import importlib.metadata as md

    versions: dict[str, str | None] = {}
    for pkg in ("apache-flink", "onnxruntime-gpu", "torch", "kafka-python", "msgpack", "numpy"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine()},
        "versions": versions,
        "gpu": _gpu_name(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": code_commit(),
    }


def run_line(results: dict[str, Any]) -> str:
    """A report's first line: when the run started and the commit it measured (machine_info's)."""
    return f"Run {results.get('started_at', '?')} at commit {results.get('commit') or 'unknown'}."


def code_commit(root: Path = CODE_ROOT) -> str | None:
    """The commit of the code a run measures (``+dirty`` when tracked files differ from it), so a
    results file names what it was run on; None outside a git checkout."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if dirty else head

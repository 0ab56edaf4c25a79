"""Where a local run's Flink keeps its scratch files, and who removes them.

A local run's MiniCluster unpacks its RPC system (a 24 MB jar) and lays out a working directory
(blobs, local state) under Flink's ``io.tmp.dirs``, by default the system temp directory, and deletes
them only when the cluster closes. A streaming job never closes: it is stopped by a signal, and each
stop used to leave about 35 MB in /tmp, enough over many restarts (a supervisor's, or a test suite's)
to fill a disk. So each local run gets a directory of its own, named by its process id, under one
root per user; the run removes it when it exits (SIGTERM included), and every run first removes the
directories of runs whose process is gone (those that were SIGKILLed).
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import signal
import stat
import tempfile
import threading
from pathlib import Path
from types import FrameType

from udfs.errors import UserError


class UnsafeScratchRoot(UserError):
    """The scratch root is not a private directory of this user's."""


def scratch_root() -> Path:
    """One root per user in the system temp directory (``TMPDIR`` moves it)."""
    return Path(tempfile.gettempdir()) / f"streamrec-flink-{os.getuid()}"


@functools.cache
def local_run_dir() -> Path:
    """This process's scratch directory, made once: a process's gateway JVM is one MiniCluster host."""
    root = private_root(scratch_root())
    sweep_stale(root)
    run_dir = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=root))
    atexit.register(shutil.rmtree, run_dir, True)
    remove_on_sigterm(run_dir)
    return run_dir


def private_root(root: Path) -> Path:
    """Make ``root`` or take it as it is, if it is this user's alone. Its name is predictable and
    the temp directory is everyone's: anyone who made it first, or as a link to a directory of
    theirs, could swap the RPC jar the job loads for code of their own."""
    root.mkdir(mode=0o700, exist_ok=True)
    st = root.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise UnsafeScratchRoot(
            f"{root} (where a local run keeps Flink's scratch files) must be a directory of this user's "
            f"that others cannot open (mode 700); it is not: remove it, or set TMPDIR to another directory")
    return root


def sweep_stale(root: Path) -> list[Path]:
    """Remove the run directories whose process no longer exists; returns them."""
    removed = []
    for run_dir in root.iterdir():
        pid = owner_pid(run_dir)
        if pid is not None and pid != os.getpid() and not process_alive(pid):
            shutil.rmtree(run_dir, ignore_errors=True)
            removed.append(run_dir)
    return removed


def owner_pid(run_dir: Path) -> int | None:
    """The process id a run directory's name starts with; None for anything else in the root."""
    head = run_dir.name.split("-", 1)[0]
    return int(head) if run_dir.is_dir() and head.isdigit() else None


def process_alive(pid: int) -> bool:
    """Whether the process runs (zombies count as dead: they have exited, just not been reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    try:
        proc_stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return proc_stat.rsplit(")", 1)[-1].split()[0] != "Z"


def remove_on_sigterm(run_dir: Path) -> None:
    """On SIGTERM, remove ``run_dir`` and then die of the signal as before. The handler does not
    raise SystemExit: Python's teardown would then talk to a gateway JVM that the same signal has
    already stopped, and fill the log with py4j's connection tracebacks. Leaves a handler someone
    already installed alone, and does nothing off the main thread, where handlers cannot be set."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def remove_and_die(signum: int, _frame: FrameType | None) -> None:
        shutil.rmtree(run_dir, ignore_errors=True)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, remove_and_die)

"""A local run's Flink scratch directory: removed at exit, on SIGTERM, and by the next run after a SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.scratch import UnsafeScratchRoot, owner_pid, private_root, scratch_root, sweep_stale

PROJECT = Path(__file__).resolve().parents[2]
HOLD_A_RUN_DIR = ("import time; from jobs.scratch import local_run_dir; "
                  "print(local_run_dir(), flush=True); time.sleep(60)")


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_sweep_removes_only_the_directories_of_gone_processes(tmp_path):
    gone = tmp_path / f"{dead_pid()}-abc"
    alive = tmp_path / f"{os.getppid()}-def"
    mine = tmp_path / f"{os.getpid()}-ghi"
    other = tmp_path / "notes"
    for d in (gone, alive, mine, other):
        d.mkdir()
        (d / "flink-rpc-akka.jar").write_bytes(b"x")
    assert sweep_stale(tmp_path) == [gone]
    assert not gone.exists() and alive.exists() and mine.exists() and other.exists()


def test_owner_pid_reads_only_run_directories(tmp_path):
    (tmp_path / "123-x").mkdir()
    (tmp_path / "456-file").write_text("")
    assert owner_pid(tmp_path / "123-x") == 123
    assert owner_pid(tmp_path / "456-file") is None
    assert owner_pid(tmp_path / "notes") is None


def hold_run_dir(temp: Path) -> tuple[subprocess.Popen, Path]:
    env = {**os.environ, "TMPDIR": str(temp), "PYTHONPATH": str(PROJECT)}
    proc = subprocess.Popen([sys.executable, "-c", HOLD_A_RUN_DIR], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    run_dir = Path(proc.stdout.readline().strip())
    assert run_dir.parent == temp / scratch_root().name and run_dir.is_dir()
    return proc, run_dir


def test_sigterm_removes_the_run_directory(tmp_path):
    proc, run_dir = hold_run_dir(tmp_path)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == -signal.SIGTERM, "it still dies of the signal, as without the handler"
    assert not run_dir.exists()


def test_a_sigkilled_runs_directory_goes_at_the_next_run(tmp_path):
    proc, killed_dir = hold_run_dir(tmp_path)
    proc.kill()
    proc.wait(30)
    assert killed_dir.exists(), "SIGKILL leaves it: nothing in the process runs"
    nxt, _ = hold_run_dir(tmp_path)
    nxt.terminate()
    nxt.wait(30)
    assert not killed_dir.exists()


def test_a_root_others_can_reach_is_refused(tmp_path):
    """A predictable name in a temp directory everyone writes: a link or an open directory there
    could be someone else's, and the job loads code (the RPC jar) from it."""
    elsewhere = tmp_path / "theirs"
    elsewhere.mkdir()
    link = tmp_path / "link"
    link.symlink_to(elsewhere)
    with pytest.raises(UnsafeScratchRoot, match="TMPDIR"):
        private_root(link)
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(UnsafeScratchRoot):
        private_root(shared)
    assert private_root(tmp_path / "mine").stat().st_mode & 0o777 == 0o700

"""Durable checkpoints: where they go, which one a restart resumes from, and the Flink
settings the job makes explicit instead of inheriting Flink's defaults."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jobs.checkpoints import checkpoint_root, latest_checkpoint, resume_path
from jobs.pipeline import flink_settings
from udfs.config import ConfigError, load_config


def _cfg(tmp_path: Path, **job: object):
    return load_config(environ={}, overrides={"job": {"checkpoint_dir": str(tmp_path / "ck"), **job}})


def _checkpoint(root: Path, job_id: str, n: int, mtime: int, complete: bool = True) -> Path:
    d = root / job_id / f"chk-{n}"
    d.mkdir(parents=True)
    if complete:
        (d / "_metadata").write_bytes(b"x")
        os.utime(d / "_metadata", (mtime, mtime))
        os.utime(d, (mtime, mtime))
    return d


def test_a_local_checkpoint_dir_becomes_an_absolute_uri_per_job_name(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(environ={}, overrides={"job": {"checkpoint_dir": "ck", "name": "shop-a"}})
    assert checkpoint_root(cfg) == (tmp_path / "ck" / "shop-a").as_uri()
    remote = load_config(environ={}, overrides={"job": {"checkpoint_dir": "s3://bucket/ck/", "name": "b"}})
    assert checkpoint_root(remote) == "s3://bucket/ck/b"


def test_latest_is_the_newest_complete_checkpoint_of_any_run(tmp_path) -> None:
    root = tmp_path / "ck" / "streamrec"
    _checkpoint(root, "job1", 7, mtime=1_000)
    newest = _checkpoint(root, "job2", 3, mtime=2_000)
    _checkpoint(root, "job2", 4, mtime=3_000, complete=False)  # in progress: no _metadata yet
    assert latest_checkpoint(root) == newest
    assert resume_path(_cfg(tmp_path, resume_from="latest")) == str(newest)


def test_resume_errors_name_the_key(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"job.resume_from: 'latest' found no complete checkpoint"):
        resume_path(_cfg(tmp_path, resume_from="latest"))
    with pytest.raises(ConfigError, match=r"job.resume_from: no checkpoint or savepoint at"):
        resume_path(_cfg(tmp_path, resume_from=str(tmp_path / "nothing")))
    remote = load_config(environ={}, overrides={"job": {"checkpoint_dir": "s3://b/ck", "resume_from": "latest"}})
    with pytest.raises(ConfigError, match=r"job.resume_from: 'latest' needs a local job.checkpoint_dir"):
        resume_path(remote)
    assert resume_path(_cfg(tmp_path)) is None


def test_settings_leave_no_state_in_jobmanager_memory_and_no_open_port(tmp_path) -> None:
    s = flink_settings(_cfg(tmp_path, state_backend="rocksdb", restart_strategy="fixed-delay",
                            restart_attempts=4, restart_delay_ms=2500, bind_address="127.0.0.1"))
    assert s["execution.checkpointing.storage"] == "filesystem"
    assert s["execution.checkpointing.dir"] == (tmp_path / "ck" / "streamrec").as_uri()
    assert s["execution.checkpointing.externalized-checkpoint-retention"] == "RETAIN_ON_CANCELLATION"
    assert s["execution.checkpointing.incremental"] == "true"
    assert (s["restart-strategy.type"], s["restart-strategy.fixed-delay.attempts"],
            s["restart-strategy.fixed-delay.delay"]) == ("fixed-delay", "4", "2500 ms")
    for key in ("rest.bind-address", "jobmanager.bind-host", "taskmanager.bind-host", "taskmanager.host"):
        assert s[key] == "127.0.0.1", key
    assert s["web.submit.enable"] == "false"
    assert "execution.state-recovery.path" not in s
    exp = flink_settings(_cfg(tmp_path, restart_delay_ms=500, restart_max_delay_ms=100))
    assert exp["restart-strategy.type"] == "exponential-delay"
    assert exp["restart-strategy.exponential-delay.max-backoff"] == "500 ms"  # never below the first delay


def test_resume_reaches_flink(tmp_path) -> None:
    chk = _checkpoint(tmp_path / "ck" / "streamrec", "j", 1, mtime=5)
    s = flink_settings(_cfg(tmp_path, resume_from="latest"))
    assert s["execution.state-recovery.path"] == str(chk)


def test_exactly_once_without_checkpoints_fails_fast_naming_the_keys() -> None:
    with pytest.raises(ConfigError, match=r"exactly-once needs job.checkpoint_interval_ms > 0"):
        load_config(environ={}, overrides={"kafka": {"delivery_guarantee": "exactly-once"},
                                           "job": {"checkpoint_interval_ms": 0}})
    with pytest.raises(ConfigError, match=r"kafka.transaction_timeout_ms \(60000\) must exceed twice"):
        load_config(environ={}, overrides={"kafka": {"delivery_guarantee": "exactly-once",
                                                     "transaction_timeout_ms": 60_000},
                                           "job": {"checkpoint_interval_ms": 30_000}})
    load_config(environ={}, overrides={"kafka": {"delivery_guarantee": "at-least-once"},
                                       "job": {"checkpoint_interval_ms": 0}})

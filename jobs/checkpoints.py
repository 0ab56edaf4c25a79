"""Where a job's checkpoints live, and which one a restart resumes from.

Checkpoints go to ``job.checkpoint_dir``/``job.name`` (a local path or any Flink
filesystem URI), never to JobManager memory, whose 5 MiB cap a store's state
passes within minutes. Flink writes ``<root>/<job id>/chk-<n>/_metadata``;
``job.resume_from = latest`` picks the newest complete one of this job name.
"""

from __future__ import annotations

import re
from pathlib import Path

from udfs.config import Config, ConfigError

METADATA = "_metadata"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def checkpoint_root(config: Config) -> str:
    """This job's checkpoint root as a URI: a local path is made absolute, since workers
    may run with another working directory."""
    base = config.job.checkpoint_dir
    if _SCHEME.match(base):
        return f"{base.rstrip('/')}/{config.job.name}"
    return (Path(base).expanduser().resolve() / config.job.name).as_uri()


def local_path(uri: str) -> Path | None:
    """The local directory of a ``file:`` URI or plain path; None for remote filesystems."""
    if uri.startswith("file://"):
        return Path(uri[len("file://"):])
    if _SCHEME.match(uri):
        return None
    return Path(uri)


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint (a ``chk-<n>`` folder holding ``_metadata``) under ``root``."""
    found = [m.parent for m in root.glob(f"*/chk-*/{METADATA}") if m.is_file()]
    if not found:
        return None
    return max(found, key=lambda d: (d.stat().st_mtime_ns, int(d.name.split("-")[1])))


def resume_path(config: Config) -> str | None:
    """What ``job.resume_from`` names, checked before the job starts; None for a fresh start."""
    wanted = config.job.resume_from.strip()
    if not wanted:
        return None
    if wanted != "latest":
        path = local_path(wanted)
        if path is not None and not (path / METADATA).is_file() and not path.is_file():
            raise ConfigError(f"job.resume_from: no checkpoint or savepoint at {wanted} (no {METADATA} there)")
        return str(path.resolve()) if path is not None else wanted
    root = local_path(checkpoint_root(config))
    if root is None:
        raise ConfigError("job.resume_from: 'latest' needs a local job.checkpoint_dir; give the checkpoint's "
                          "path on a remote filesystem instead")
    latest = latest_checkpoint(root)
    if latest is None:
        raise ConfigError(f"job.resume_from: 'latest' found no complete checkpoint under {root}")
    return str(latest)

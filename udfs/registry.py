"""The model registry's layout and reads: one folder per ``model_version``, each a complete
artifact verified by its manifest, and a history of what was announced live.

Layout (docs/operations.md 'Model registry and retraining')::

    <registry_dir>/<model_version>/      the artifact, as `streamrec train` writes it
    <registry_dir>/history.jsonl         one JSON line per announcement: {"model_version", "action", "at"}

The writer (publish, rollback) lives in the tools (:mod:`streamrec.registry_writer`); the job only
reads: it resolves a version to its folder and verifies it before loading.
"""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass
from pathlib import Path

from udfs.artifact import ArtifactError, Manifest, name_problem, verify_manifest
from udfs.errors import UserError

HISTORY_FILE = "history.jsonl"
# The A/B arm version that follows the announced live model.
LIVE = "live"


class RegistryError(UserError, RuntimeError):
    """A registry, or a version in it, that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class Announcement:
    model_version: str
    action: str
    at: int


def version_dir(registry_dir: str | Path, model_version: str) -> Path:
    """The folder of ``model_version``; a version that is not a plain name is refused (it becomes a path)."""
    problem = name_problem(model_version)
    if problem:
        raise RegistryError(f"model version {model_version!r}: {problem}")
    return Path(registry_dir) / model_version


def verified_version(registry_dir: str | Path, model_version: str) -> tuple[Path, Manifest]:
    """The folder and manifest of a complete, intact version whose manifest names it."""
    path = version_dir(registry_dir, model_version)
    if not path.is_dir():
        raise RegistryError(f"model version {model_version!r} is not in the registry {registry_dir}")
    try:
        manifest = verify_manifest(path)
    except ArtifactError as exc:
        raise RegistryError(f"model version {model_version!r} in {registry_dir}: {exc}") from exc
    if manifest.model_version != model_version:
        raise RegistryError(f"{path}: manifest says model_version {manifest.model_version!r}")
    return path, manifest


def announced_dir(registry_dir: str | Path, model_version: str, path: str) -> Path:
    """The folder a model announcement may load: its version's own folder directly under the
    registry, resolved. An announcement is a message anyone who can write the control topic can
    send, so its ``path`` is only checked, never trusted: it must resolve to that folder (symlinks
    followed), the folder must not itself lead elsewhere, and neither it nor the registry may be
    writable by group or others (a model there could be replaced by someone else)."""
    root = Path(registry_dir).resolve()
    own = version_dir(root, model_version)
    if not own.is_dir():
        raise RegistryError(f"model version {model_version!r} is not in the registry {root} (ranking.registry_dir)")
    folder = own.resolve()
    if folder != own:
        raise RegistryError(f"{own} leads to {folder}: a version's folder must be its own, in the registry {root}")
    if Path(path).resolve() != folder:
        raise RegistryError(f"the announcement names {path}, not model version {model_version!r}'s folder {folder} "
                            "in ranking.registry_dir: a model is installed from the registry only")
    for p in (root, folder):
        mode = p.stat().st_mode
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise RegistryError(f"{p} is writable by group or others (mode {stat.filemode(mode)}): "
                                f"a model there could be replaced; `chmod go-w {p}`")
    return folder


def history(registry_dir: str | Path) -> list[Announcement]:
    """Every announcement, oldest first (empty for a new registry)."""
    path = Path(registry_dir) / HISTORY_FILE
    if not path.is_file():
        return []
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            out.append(Announcement(str(obj["model_version"]), str(obj["action"]), int(obj["at"])))
        except (ValueError, KeyError, TypeError) as exc:
            raise RegistryError(f"{path}:{n}: not an announcement: {exc}") from None
    return out


def live_version(registry_dir: str | Path) -> str | None:
    """The version announced last, or None when nothing was announced."""
    h = history(registry_dir)
    return h[-1].model_version if h else None


def versions(registry_dir: str | Path) -> list[str]:
    """Names of the version folders, sorted; folders whose name cannot be a version (the
    writer's hidden temporary copies, ``.publishing-*``) are not versions."""
    root = Path(registry_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and name_problem(p.name) is None)

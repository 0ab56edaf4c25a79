"""The model registry's writer: publish a verified artifact, announce a version, roll back.

The job reads the registry (:mod:`udfs.registry`) and the control topic (:mod:`udfs.control`);
this module is the only writer. What it guarantees:

* a version folder is complete and intact or absent: the artifact is verified, copied into a
  hidden temporary folder inside the registry, the copy verified again (the source may change
  while it is copied) and only then renamed to its ``model_version``, which is atomic on one
  file system; a failed publish leaves nothing behind;
* a version is never replaced: publishing the same ``model_version`` again with the same files
  is a no-op, with other files it is refused (a running job may be loading that folder);
* ``history.jsonl`` records an announcement only after it went out on the control topic, so
  the registry's live version is the one the job was told about;
* an announcement names the version's folder and the sha256 of its manifest: the job installs
  that folder of its own registry, with that very manifest, and nothing else;
* the registry and its version folders are writable by their owner only (the job refuses a
  model from a folder others could write).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from streamrec.kafka_io import produce
from udfs.artifact import MANIFEST_FILE, ArtifactError, Manifest, manifest_sha256, verify_manifest
from udfs.config import ConfigError, KafkaConfig
from udfs.control import CONTROL_KEY, ControlRecord
from udfs.kafka_security import python_client_options
from udfs.registry import (
    HISTORY_FILE,
    Announcement,
    RegistryError,
    history,
    live_version,
    verified_version,
    version_dir,
    versions,
)
from udfs.topics import COMPACTED, ensure_topic

log = logging.getLogger(__name__)

ACTIVATE = "activate"
ROLLBACK = "rollback"
HISTORY_ACTIONS = (ACTIVATE, ROLLBACK)
TMP_PREFIX = ".publishing-"
# streamrec retrain's decision, stored in the new artifact's manifest (``retrain``): publish it, or
# keep the live version because the new one scored lower on the held-out requests.
RETRAIN_METRIC = "ndcg@10"
RETRAIN_PUBLISH, KEEP_LIVE = "publish", "keep_live"


def now_ms() -> int:
    return int(time.time() * 1000)


def _same_files(a: Manifest, b: Manifest) -> list[str]:
    """Names of the files whose hashes differ between two manifests (or that only one lists)."""
    fa, fb = dict(a["files"]), dict(b["files"])
    return sorted(n for n in set(fa) | set(fb) if fa.get(n) != fb.get(n))


def kept_back(manifest: Manifest) -> str | None:
    """Why ``streamrec retrain`` decided not to publish this artifact (its manifest's ``retrain``
    comparison), or None: it decided to publish it, or it did not come from a retrain."""
    report = manifest.get("retrain") or {}
    if report.get("decision") != KEEP_LIVE:
        return None
    new, live = report.get("new") or {}, report.get("live") or {}
    return (f"retrain kept it back: {RETRAIN_METRIC} {new.get('metrics', {}).get(RETRAIN_METRIC)} against "
            f"the live {live.get('model_version')}'s {live.get('metrics', {}).get(RETRAIN_METRIC)}")


def publish(registry_dir: str | Path, artifact_dir: str | Path, *, force: bool = False) -> Path:
    """Copy a verified artifact into the registry as ``<registry_dir>/<model_version>``; returns that
    folder (absolute). Idempotent for an identical version (every listed file's sha256 equal);
    :class:`RegistryError` for a different artifact under a version name already taken, and for an
    artifact ``streamrec retrain`` kept back as worse than the live version, unless ``force``."""
    src = Path(artifact_dir)
    try:
        manifest = verify_manifest(src)
    except ArtifactError as exc:
        raise RegistryError(f"not published: {exc}") from exc
    reason = kept_back(manifest)
    if reason is not None and not force:
        raise RegistryError(f"not published: {reason}; --force publishes it anyway")
    version = manifest.model_version
    root = Path(registry_dir).resolve()
    dest = version_dir(root, version)
    if dest.exists():
        return _existing(root, version, manifest)
    root.mkdir(mode=0o755, parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{version}-", dir=root))
    try:
        # Only what the manifest lists, and the manifest: the registry holds what was verified.
        for name in manifest["files"]:
            shutil.copyfile(src / name, tmp / name)
        shutil.copyfile(src / MANIFEST_FILE, tmp / MANIFEST_FILE)
        copied = verify_manifest(tmp)
        if _same_files(copied, manifest) or copied.model_version != version:
            raise RegistryError(f"not published: {src} changed while it was copied; publish it again")
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the job may run as another user
        try:
            tmp.rename(dest)
        except OSError:
            if dest.is_dir():  # another publisher won the race: same rules as above
                return _existing(root, version, manifest)
            raise
    except ArtifactError as exc:
        raise RegistryError(f"not published: the copy of {src} does not verify: {exc}") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("published %s into %s", version, root)
    return dest


def _existing(root: Path, version: str, manifest: Manifest) -> Path:
    path, there = verified_version(root, version)
    differ = _same_files(there, manifest)
    if differ:
        raise RegistryError(
            f"model version {version!r} is already in the registry {root} with other files "
            f"({', '.join(differ)} differ); a version is never replaced: give the artifact another model_version")
    log.info("%s is already in %s with the same files", version, root)
    return path


def announce(registry_dir: str | Path, version: str, action: str = ACTIVATE, at_ms: int | None = None) -> Announcement:
    """Record in ``history.jsonl`` that ``version`` went live (``activate``, or ``rollback`` when a
    rollback brought it back); the version must be in the registry and intact."""
    if action not in HISTORY_ACTIONS:
        raise ValueError(f"announcement action must be one of {HISTORY_ACTIONS}, not {action!r}")
    verified_version(registry_dir, version)
    entry = Announcement(version, action, now_ms() if at_ms is None else int(at_ms))
    line = json.dumps({"model_version": entry.model_version, "action": entry.action, "at": entry.at})
    with (Path(registry_dir) / HISTORY_FILE).open("a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
    return entry


def live_stack(registry_dir: str | Path) -> list[str]:
    """The versions that were live, oldest first, with rolled-back ones taken off: the last is
    live now, the one before it is what a rollback returns to.

    An ``activate`` of the version already live adds nothing (a repeated publish); a ``rollback``
    to X takes the top off, so the version rolled away from is never returned to by the next
    rollback, and a second rollback goes on back in time."""
    stack: list[str] = []
    for a in history(registry_dir):
        if a.action == ROLLBACK:
            if stack:
                stack.pop()
            if not stack or stack[-1] != a.model_version:
                stack.append(a.model_version)
        elif not stack or stack[-1] != a.model_version:
            stack.append(a.model_version)
    return stack


def rollback_target(registry_dir: str | Path) -> str:
    """The version live before the current one; :class:`RegistryError` when there is none."""
    stack = live_stack(registry_dir)
    if not stack:
        raise RegistryError(f"nothing to roll back: no version was ever announced in {registry_dir}")
    if len(stack) < 2:
        raise RegistryError(f"nothing to roll back to: {stack[-1]!r} is the only version that was live "
                            f"in {registry_dir}")
    return stack[-2]


def _announcement(registry_dir: str | Path, version: str, at: int) -> ControlRecord:
    """The control record of an intact version: its folder, resolved, and its manifest's sha256."""
    path, _ = verified_version(registry_dir, version)
    return ControlRecord(ACTIVATE, version, str(path.resolve()), at, manifest_sha256=manifest_sha256(path))


def rollback(registry_dir: str | Path, send: Any = None) -> str:
    """Announce the version live before the current one and record it; returns that version.

    ``send``: called with the :class:`ControlRecord` before the history is written (the Kafka
    announcement, :func:`send_control`); None records it without telling a job."""
    target = rollback_target(registry_dir)
    entry_at = now_ms()
    record = _announcement(registry_dir, target, entry_at)
    if send is not None:
        send(record)
    announce(registry_dir, target, ROLLBACK, entry_at)
    return target


def activate(registry_dir: str | Path, version: str, send: Any = None) -> Announcement:
    """Announce ``version`` (already in the registry) live: control record first, then history.
    ``send`` None records it live without telling a job (a registry without a broker, tests)."""
    at = now_ms()
    record = _announcement(registry_dir, version, at)
    if send is not None:
        send(record)
    return announce(registry_dir, version, ACTIVATE, at)


# --- the control topic ------------------------------------------------------------------------

def ensure_control_topic(kafka: KafkaConfig, topic: str) -> None:
    """Create the control topic, compacted, when it is missing (:func:`udfs.topics.ensure_topic`):
    compaction on the one key keeps the last announcement for a job that starts later."""
    from kafka.errors import KafkaError

    try:
        ensure_topic(kafka, topic, "control_topic", COMPACTED)
    except KafkaError as exc:
        raise ConfigError(f"cannot reach Kafka at {kafka.bootstrap_servers} to announce on {topic!r}: {exc}; "
                          "the version is in the registry but not live (once the broker is up: "
                          "`streamrec model activate --version VERSION`, or publish again)") from exc


def send_control(kafka: KafkaConfig, topic: str, record: ControlRecord) -> None:
    """Write one announcement to the control topic, keyed by :data:`CONTROL_KEY`, and wait for the
    broker's acknowledgement (``acks=all``)."""
    from kafka.errors import KafkaError

    security = python_client_options(kafka)
    ensure_control_topic(kafka, topic)
    try:
        produce(kafka.bootstrap_servers, topic, [(CONTROL_KEY.encode(), record.to_bytes())], security=security)
    except KafkaError as exc:
        raise ConfigError(f"announcing {record.model_version} on {topic!r} at {kafka.bootstrap_servers} failed: "
                          f"{exc}; the version is in the registry but not live") from exc


def control_sender(kafka: KafkaConfig, topic: str | None = None) -> Any:
    """``send`` for :func:`activate` and :func:`rollback`: the config's control topic by default."""
    chosen = topic or kafka.control_topic
    return lambda record: send_control(kafka, chosen, record)


# --- listing ----------------------------------------------------------------------------------

def listing(registry_dir: str | Path) -> list[dict[str, Any]]:
    """Every version folder, oldest publication first: live or not, when it went live first,
    its headline metrics, and the retraining comparison when it has one; a folder that does
    not verify is listed with its problem instead of hidden."""
    live = live_version(registry_dir)
    first_live: dict[str, int] = {}
    for a in history(registry_dir):
        first_live.setdefault(a.model_version, a.at)
    rows = []
    for name in versions(registry_dir):
        row: dict[str, Any] = {"model_version": name, "live": name == live, "announced_at": first_live.get(name)}
        try:
            path, m = verified_version(registry_dir, name)
        except RegistryError as exc:
            row["problem"] = str(exc)
            rows.append(row)
            continue
        model = (m.metrics.get("rankers") or {}).get("model") or {}
        # The copy's manifest is written by publish, so its time is the publication's.
        published = int((path / MANIFEST_FILE).stat().st_mtime * 1000)
        row.update({"published_at": published, "created_at": m.get("created_at"),
                    "hr@10": model.get("hr@10"), "ndcg@10": model.get("ndcg@10"),
                    "train_until_ms": m.train_span.get("until_ms")})
        if isinstance(m.get("retrain"), dict):
            row["retrain_decision"] = m["retrain"].get("decision")
        rows.append(row)
    rows.sort(key=lambda r: (r.get("published_at") or 0, r["model_version"]))
    return rows

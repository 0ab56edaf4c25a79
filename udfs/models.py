"""The models one keyed instance ranks with, and their hot swap (docs/operations.md 'Hot swap and A/B tests').

The live model ranks every list unless an A/B arm pins another registry version; arms whose
version is ``live`` follow it. An announced version is verified, loaded and warmed up on a
background thread while events keep flowing through the current model; the next event after
the load finishes is the first one ranked by the new model, so a swap falls between two
events and never drops or repeats a list. A version that fails any step is refused, and the
model it was meant to replace keeps serving.

A model comes from the registry only: an announcement is installed from its version's own
folder under ``ranking.registry_dir`` and only with the manifest it names by sha256
(:func:`udfs.registry.announced_dir`). Every load has ``ranking.model_load_timeout_s``: one
that hangs is refused like one that fails. After a restore, :meth:`ModelSet.restore` installs
the newest of a target's :class:`KeptAnnouncements` that loads in that time, and the
config's model keeps serving when none does: a bad artifact never fails the restore.

Free of Flink: the keyed function calls :meth:`ModelSet.announce` for a control record and
:meth:`ModelSet.poll` before each event.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Protocol

import msgpack

from udfs.ab import assign_arm
from udfs.artifact import Artifact
from udfs.control import ControlRecord, decode_control
from udfs.errors import StreamrecError
from udfs.events import Event
from udfs.ranker import OnnxRanker
from udfs.recommend import Recommender
from udfs.registry import LIVE, RegistryError, announced_dir, verified_version
from udfs.state import UserState

log = logging.getLogger(__name__)

# Announcements that loaded, kept per target for a restore: the live one and those before it.
KEPT_ANNOUNCEMENTS = 8


class ModelRefused(StreamrecError, RuntimeError):
    """An announced model that cannot serve; the message says why."""


class ModelLoader(Protocol):
    """Builds models with the job's ranking settings (``udfs.runtime.ConfigModels``)."""

    def load(self, path: str, manifest_sha256: str | None) -> tuple[Artifact, OnnxRanker]: ...

    def recommender(self, artifact: Artifact, ranker: OnnxRanker | None,
                    like: Recommender | None) -> Recommender: ...


class ArmSpec(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def model_version(self) -> str: ...

    @property
    def share(self) -> float: ...


@dataclass(frozen=True)
class SwapOutcome:
    """What became of one announcement: installed (``refused`` None) or refused, and why."""

    record: ControlRecord
    refused: str | None = None


@dataclass(frozen=True)
class _Ready:
    record: ControlRecord
    artifact: Artifact
    ranker: OnnxRanker


def warm_up(recommender: Recommender) -> None:
    """Rank one list for a shopper who touched the most popular item, on a private state: the
    first real list after a swap must not pay the session's first-call cost, and a model whose
    outputs cannot rank a list (wrong shape, NaN) is refused before it serves anyone."""
    tables = recommender.artifact.tables
    item = next(iter(tables.trending), None) or max(tables.popularity, key=tables.popularity.__getitem__, default=None)
    if item is None:
        raise ModelRefused("the artifact's tables hold no item to warm up with")
    state = UserState()
    event = Event("warm-up", item, tables.item_category.get(item, "unknown"), "pv", 1)
    recommender.apply(state, event)
    record = recommender.recommend([recommender.request(state, event)])[0]
    if record["fallback"]:
        raise ModelRefused(f"warm-up list fell back: {record['fallback']}")


def _in_thread(work: Callable[[], _Ready]) -> Future[_Ready]:
    """Run ``work`` on a daemon thread of its own: a load that hangs (a stalled file system, a
    session that never opens) holds only that thread, never a later load or the interpreter's exit."""
    future: Future[_Ready] = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(work())
        except BaseException as exc:  # handed to whoever reads the future
            future.set_exception(exc)

    threading.Thread(target=run, name="streamrec-model-load", daemon=True).start()
    return future


class ModelSet:
    """The live recommender, the arms' pinned ones, and at most one load in flight per target.

    ``registry_dir``: where every model but the config's comes from; ``load_timeout_s``: the
    longest one load may take (``ranking.model_load_timeout_s``)."""

    def __init__(self, live: Recommender, loader: ModelLoader, *, registry_dir: str | Path, load_timeout_s: float,
                 arms: Sequence[ArmSpec] = (), salt: str = "") -> None:
        self.live = live
        self.loader = loader
        self.registry_dir = registry_dir
        self.load_timeout_s = load_timeout_s
        self.arms = tuple(arms)
        self.salt = salt
        self.pinned: dict[str, Recommender] = {}
        for arm in self.arms:
            if arm.model_version != LIVE:
                path, _ = verified_version(registry_dir, arm.model_version)
                self.pinned[arm.name] = self._install(self._load(ControlRecord(
                    "activate", arm.model_version, str(path), 0, arm.name)))
        self._pending: dict[str | None, tuple[ControlRecord, Future[_Ready], float]] = {}

    def all(self) -> list[Recommender]:
        """Every recommender in use (for metrics): the live one first."""
        return [self.live, *(r for r in self.pinned.values() if r is not self.live)]

    def for_key(self, key: str) -> tuple[Recommender, str | None]:
        """The recommender and arm name for a shopper (no arm without an experiment)."""
        if not self.arms:
            return self.live, None
        arm = assign_arm(key, self.arms, self.salt)
        return self.pinned.get(arm.name, self.live), arm.name

    def _load(self, record: ControlRecord) -> _Ready:
        """Verify, load and warm up (any thread); raises :class:`ModelRefused`."""
        try:
            folder = announced_dir(self.registry_dir, record.model_version, record.path)
        except RegistryError as exc:
            raise ModelRefused(str(exc)) from exc
        try:
            artifact, ranker = self.loader.load(str(folder), record.manifest_sha256)
        except Exception as exc:  # verification, tables, onnxruntime: all mean "cannot serve"
            raise ModelRefused(f"{type(exc).__name__}: {str(exc)[:300]}") from exc
        if artifact.model_version != record.model_version:
            raise ModelRefused(f"{folder} holds model_version {artifact.model_version!r}, "
                               f"not the announced {record.model_version!r}")
        try:
            warm_up(self.loader.recommender(artifact, ranker, None))
        except ModelRefused:
            raise
        except Exception as exc:  # a model that raises on its first list cannot serve
            raise ModelRefused(f"warm-up failed: {type(exc).__name__}: {str(exc)[:300]}") from exc
        return _Ready(record, artifact, ranker)

    def _install(self, ready: _Ready) -> Recommender:
        """On the event thread: a recommender over the new model, sharing the live one's stream state
        and its ranker's running totals (the job's model counters never step back at a swap)."""
        if self.live.ranker is not None:
            ready.ranker.stats = self.live.ranker.stats
        return self.loader.recommender(ready.artifact, ready.ranker, self.live)

    def _target(self, record: ControlRecord) -> str | None:
        if record.arm is None:
            return None
        if record.arm not in {a.name for a in self.arms}:
            raise ModelRefused(f"arm {record.arm!r} is not in ab.arms {[a.name for a in self.arms]}")
        return record.arm

    def _too_slow(self) -> str:
        return f"not loaded within ranking.model_load_timeout_s ({self.load_timeout_s:g} s)"

    def announce(self, record: ControlRecord) -> SwapOutcome | None:
        """Start loading ``record``'s model in the background; a later announcement for the same
        target replaces one still loading. Refused at once (returned) when it names an unknown arm
        or no manifest sha256 (an announcement written before announcements carried one)."""
        try:
            target = self._target(record)
        except ModelRefused as exc:
            return SwapOutcome(record, str(exc))
        if record.manifest_sha256 is None:
            return SwapOutcome(record, "the announcement names no manifest_sha256 (written by an older "
                                       f"`streamrec model`): announce it again (`streamrec model activate "
                                       f"--version {record.model_version}`)")
        old = self._pending.pop(target, None)
        if old is not None:
            old[1].cancel()
        self._pending[target] = (record, _in_thread(partial(self._load, record)), time.monotonic())
        return None

    def restore(self, candidates: Sequence[ControlRecord]) -> list[SwapOutcome]:
        """After a restore, on this thread: install the first of one target's ``candidates`` (newest
        first) that loads, each given ``load_timeout_s``; what was tried, in order. When none loads,
        the model serving now (the config's) keeps serving: a restore never fails on a model, and
        takes at most ``len(candidates) * load_timeout_s``. Announcements written before they
        carried a manifest sha256 are accepted here (they were checked when they were announced,
        and a checkpoint is the job's own)."""
        out = []
        for record in candidates:
            try:
                target = self._target(record)
                future = _in_thread(partial(self._load, record))
                try:
                    ready = future.result(timeout=self.load_timeout_s)
                except TimeoutError:
                    raise ModelRefused(self._too_slow()) from None
                self._swap(target, ready)
                out.append(SwapOutcome(record))
                return out
            except ModelRefused as exc:
                out.append(SwapOutcome(record, str(exc)))
        return out

    def poll(self) -> list[SwapOutcome]:
        """Install every finished load (between two events), and refuse every load that has taken
        longer than ``load_timeout_s``; the outcomes, in no particular order."""
        if not self._pending:
            return []
        out = []
        now = time.monotonic()
        for target, (record, future, started) in list(self._pending.items()):
            if not future.done():
                if now - started > self.load_timeout_s:
                    del self._pending[target]
                    future.cancel()
                    out.append(SwapOutcome(record, self._too_slow()))
                continue
            del self._pending[target]
            if future.cancelled():
                continue
            try:
                ready = future.result()
            except ModelRefused as exc:
                out.append(SwapOutcome(record, str(exc)))
                continue
            self._swap(target, ready)
            out.append(SwapOutcome(ready.record))
        return out

    def wait(self, timeout_s: float | None = None) -> list[SwapOutcome]:
        """Block until every load in flight is done, then :meth:`poll` (bounded runs and tests)."""
        for _, future, _ in list(self._pending.values()):
            with contextlib.suppress(CancelledError):  # cancelled: poll skips it
                future.exception(timeout=timeout_s)
        return self.poll()

    def _swap(self, target: str | None, ready: _Ready) -> None:
        new = self._install(ready)
        if target is None:
            old = self.live
            self.live = new
            log.warning("streamrec model swap: %s -> %s", old.artifact.model_version, new.artifact.model_version)
        else:
            old_version = self.pinned[target].artifact.model_version if target in self.pinned else LIVE
            self.pinned[target] = new
            log.warning("streamrec model swap for arm %s: %s -> %s", target, old_version,
                        new.artifact.model_version)

    def close(self) -> None:
        """Stop waiting for loads in flight (their threads are daemons and end on their own)."""
        for _, future, _ in self._pending.values():
            future.cancel()
        self._pending.clear()


@dataclass
class KeptAnnouncements:
    """One target's announcements kept in the job's checkpointed state, the candidates of a restore.

    ``kept``: announcements that loaded, in the order they went live, newest last, at most
    :data:`KEPT_ANNOUNCEMENTS`; an announcement that was refused never enters it, so no run of
    refusals pushes the live model out. ``pending``: the announcement still loading, if any: Flink
    lets the job write this state only when a broadcast record arrives, not when the background load
    ends, so the newest announcement waits here until its outcome is written; a restore tries it
    first (it may have gone live before the checkpoint) and falls back to ``kept``."""

    kept: list[bytes] = field(default_factory=list)
    pending: bytes | None = None

    @classmethod
    def from_bytes(cls, blob: bytes | None) -> KeptAnnouncements:
        """Read the state's value; a list is the layout before ``pending`` (every announcement, kept
        as it arrived): read as kept, each still tried under the load timeout."""
        if blob is None:
            return cls()
        obj = msgpack.unpackb(blob)
        if isinstance(obj, list):
            return cls([bytes(r) for r in obj])
        return cls([bytes(r) for r in obj["kept"]], obj["pending"])

    def to_bytes(self) -> bytes:
        return msgpack.packb({"kept": self.kept, "pending": self.pending}, use_bin_type=True)

    def announced(self, record: ControlRecord) -> None:
        """An announcement whose load started: it replaces one still pending (whose load it cancels)."""
        self.pending = record.to_bytes()

    def settle(self, outcome: SwapOutcome) -> None:
        """Record what became of an announcement: installed ones join ``kept`` as the newest."""
        raw = outcome.record.to_bytes()
        if self.pending == raw:
            self.pending = None
        if outcome.refused is None:
            self.kept = [*(r for r in self.kept if r != raw), raw][-KEPT_ANNOUNCEMENTS:]

    def candidates(self) -> list[ControlRecord]:
        """What a restore tries, newest first: the pending announcement, then the kept ones."""
        raws = [*([self.pending] if self.pending is not None else []), *reversed(self.kept)]
        return [decode_control(r) for r in raws]

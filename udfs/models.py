"""The models one keyed instance ranks with, and their hot swap (README 'Hot swap and A/B tests').

The live model ranks every list unless an A/B arm pins another registry version; arms whose
version is ``live`` follow it. An announced version is verified, loaded and warmed up on a
background thread while events keep flowing through the current model; the next event after
the load finishes is the first one ranked by the new model, so a swap falls between two
events and never drops or repeats a list. A version that fails any step is refused, and the
model it was meant to replace keeps serving.

Free of Flink: the keyed function calls :meth:`ModelSet.announce` for a control record and
:meth:`ModelSet.poll` before each event.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from udfs.ab import assign_arm
from udfs.artifact import Artifact
from udfs.control import ControlRecord
from udfs.events import Event
from udfs.ranker import OnnxRanker
from udfs.recommend import Recommender
from udfs.registry import LIVE, verified_version
from udfs.state import UserState

log = logging.getLogger(__name__)


class ModelRefused(RuntimeError):
    """An announced model that cannot serve; the message says why."""


class ModelLoader(Protocol):
    """Builds models with the job's ranking settings (``udfs.runtime.ConfigModels``)."""

    def load(self, path: str) -> tuple[Artifact, OnnxRanker]: ...

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


class ModelSet:
    """The live recommender, the arms' pinned ones, and at most one load in flight per target."""

    def __init__(self, live: Recommender, loader: ModelLoader, arms: Sequence[ArmSpec] = (), salt: str = "",
                 registry_dir: str | Path = "") -> None:
        self.live = live
        self.loader = loader
        self.arms = tuple(arms)
        self.salt = salt
        self.pinned: dict[str, Recommender] = {}
        for arm in self.arms:
            if arm.model_version != LIVE:
                path, _ = verified_version(registry_dir, arm.model_version)
                self.pinned[arm.name] = self._install(self._load(ControlRecord(
                    "activate", arm.model_version, str(path), 0, arm.name)))
        self._pending: dict[str | None, tuple[ControlRecord, Future[_Ready]]] = {}
        self._pool: ThreadPoolExecutor | None = None

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
            artifact, ranker = self.loader.load(record.path)
        except Exception as exc:  # verification, tables, onnxruntime: all mean "cannot serve"
            raise ModelRefused(f"{type(exc).__name__}: {str(exc)[:300]}") from exc
        if artifact.model_version != record.model_version:
            raise ModelRefused(f"{record.path} holds model_version {artifact.model_version!r}, "
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

    def announce(self, record: ControlRecord) -> SwapOutcome | None:
        """Start loading ``record``'s model in the background; a later announcement for the same
        target replaces one still loading. Refused at once (returned) when it names an unknown arm."""
        try:
            target = self._target(record)
        except ModelRefused as exc:
            return SwapOutcome(record, str(exc))
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamrec-model-load")
        old = self._pending.pop(target, None)
        if old is not None:
            old[1].cancel()
        self._pending[target] = (record, self._pool.submit(self._load, record))
        return None

    def load_now(self, record: ControlRecord) -> SwapOutcome:
        """Load and install on this thread (after a restore: the first list must come from the model
        that was live at the checkpoint)."""
        try:
            target = self._target(record)
            self._swap(target, self._load(record))
            return SwapOutcome(record)
        except ModelRefused as exc:
            return SwapOutcome(record, str(exc))

    def poll(self) -> list[SwapOutcome]:
        """Install every finished load (between two events); the outcomes, in no particular order."""
        if not self._pending:
            return []
        out = []
        for target, (record, future) in list(self._pending.items()):
            if not future.done():
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
        for _, future in list(self._pending.values()):
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
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

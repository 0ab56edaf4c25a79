"""Lists for shoppers the job has none for, and an item's neighbours, with the job's own code.

A guest (no account, or a shopper whose events the job has not seen) posts the few items of the
session; this builds their state with :func:`udfs.state.update_state` and ranks with
:class:`udfs.recommend.Recommender` over the artifact ``streamrec serve`` is configured with: the
job's candidate generation, features and model, not a copy. No stream state joins in (the
service sees no stream): trending candidates are the artifact's, and the catalog's rule applies
when the answer is read (:mod:`streamrec.serve.listing`), as for stored lists.

``similar`` gives an item's co-visitation neighbours from the same artifact: the item knowledge
the job ranks with today (frozen at training; docs/model.md "The model").
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from udfs.artifact import MANIFEST_FILE, ArtifactError, load_artifact
from udfs.config import Config
from udfs.events import Event, Id
from udfs.recommend import Recommender
from udfs.runtime import make_ranker, recommender_of
from udfs.state import UserState

log = logging.getLogger(__name__)

MAX_SESSION_EVENTS = 50
"""Most events a guest session may post."""


class GuestRanker:
    """The job's recommender for posted sessions; one model call at a time (the calls are ~1 ms)."""

    def __init__(self, recommender: Recommender) -> None:
        self.recommender = recommender
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: Config) -> GuestRanker | None:
        """None when no readable artifact is configured (the routes then say so)."""
        path = config.ranking.artifact_dir
        if not Path(path, MANIFEST_FILE).is_file():
            return None
        try:
            artifact = load_artifact(path)
        except ArtifactError as exc:
            log.warning("model artifact at %s unreadable (%s): no guest lists or similar items", path, exc)
            return None
        return cls(recommender_of(config, artifact, make_ranker(config, artifact), trending=None, catalog=None))

    @property
    def item_category(self) -> dict[Id, Id]:
        return self.recommender.artifact.tables.item_category

    def session_list(self, events: Sequence[Event]) -> dict[str, Any]:
        """The output record the job would emit after the last of ``events`` (a new shopper's first ones)."""
        if not events:
            raise ValueError("a session needs at least one event")
        state = UserState()
        ordered = sorted(events, key=lambda e: e.ts)
        with self._lock:
            for e in ordered:
                self.recommender.apply(state, e)
            request = self.recommender.request(state, ordered[-1])
            return self.recommender.recommend([request])[0]

    def similar(self, item: Id, n: int) -> list[tuple[Id, float]] | None:
        """The item's ``n`` strongest co-visitation neighbours; None for an item the artifact never saw."""
        tables = self.recommender.artifact.tables
        if item not in tables.covisit and item not in tables.item_category:
            return None
        return [(other, float(score)) for other, score in tables.covisit.get(item, [])[:n]]

"""The job with its list-building replayed: what everything but that code costs.

The bench's ``floor`` phase submits the job's own graph, sources, sinks and keyed function, with
one change: after an instance has built its first list for real, every later event replays that
list's candidates and items instead of generating candidates, building features and assembling a
list. Everything else still runs per event: Kafka in and out, the shuffle by shopper, the event's
decode, the state's read, update and write, trending, feedback, the output record's encode. With
``with_model`` the model still scores the first list's real feature rows on every event, as many
rows as a real list.

So the phase's events/s is the most that making the candidate, feature and list code faster
could give the job on this machine: the share of the model-alone bound at which the job would
stand if that code cost nothing. Without the model it is the platform's own cost per event.
Bench code only: the job never imports this.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from pyflink.datastream import RuntimeContext

from jobs.entry import Endpoint, run_job
from jobs.functions import CatalogRecommendFunction
from udfs.config import Config
from udfs.errors import reported
from udfs.events import Event
from udfs.features import UserRequest, build_batch
from udfs.flags import JOB_FLAGS, REPORTED_ERRORS, add_config_flags, config_from_args, setup_logging
from udfs.recommend import Recommender
from udfs.state import UserState

# --floor: what the replaying job still does per event besides the platform's work.
FLOOR_MODES = ("model", "none")


class ReplayingRecommender(Recommender):
    """A :class:`Recommender` that builds its first list for real and replays it after that.

    A replayed list has the first list's items, scores and reasons, and the shopper's own
    ``user_id``, ``seq`` and trigger, so the output record has a real list's size. With
    ``with_model`` each replay scores the first list's model inputs (a real call, as many rows).
    """

    with_model: bool = True
    _first: UserRequest | None = None
    _inputs: dict[str, np.ndarray] | None = None
    _record: dict[str, Any] | None = None

    @classmethod
    def replaying(cls, recommender: Recommender, with_model: bool) -> ReplayingRecommender:
        """``recommender`` (already loaded: artifact, ranker, catalog, trending) as a replaying one."""
        replaying = cls.__new__(cls)
        replaying.__dict__.update(recommender.__dict__)
        replaying.with_model = with_model
        return replaying

    def request(self, state: UserState, event: Event) -> UserRequest:
        if self._first is None:
            return super().request(state, event)
        return UserRequest(state, self._first.candidates, event)

    def recommend(self, requests: Sequence[UserRequest], arm: str | None = None) -> list[dict[str, Any]]:
        if self._first is None:
            out = super().recommend(requests, arm)
            first = requests[0]
            self._first = first
            self._inputs = build_batch([first], self.artifact.vocab, self.artifact.tables, self.artifact.seq_len,
                                       self.item_attributes()) if self.ranker is not None else None
            self._record = out[0]
            return out
        out = []
        for req in requests:
            req.state.emitted += 1
            if self.with_model and self.ranker is not None and self._inputs is not None:
                self.ranker.score(self._inputs)
            t = req.trigger
            assert self._record is not None  # set with _first
            out.append({**self._record, "user_id": t.user_id, "seq": req.state.emitted, "arm": arm,
                        "trigger": {"item_id": t.item_id, "behavior": t.behavior, "ts": t.ts},
                        "generated_at": int(time.time() * 1000)})
        self.counters.emitted += len(out)
        return out


class ReplayingFunction(CatalogRecommendFunction):
    """The job's keyed function (with the catalog join, as a Kafka job runs it), its live
    recommender replaced by a :class:`ReplayingRecommender`."""

    def __init__(self, config: Config, with_model: bool) -> None:
        super().__init__(config)
        self.with_model = with_model

    def open(self, runtime_context: RuntimeContext) -> None:
        super().open(runtime_context)
        self.recommender = ReplayingRecommender.replaying(self.recommender, self.with_model)
        self.models.live = self.recommender


def main(argv: Sequence[str] | None = None) -> int:
    """`flink run -py streamrec/lab/benchmark/floor_job.py --floor model|none [config flags]`."""
    parser = argparse.ArgumentParser(prog="floor", description="the streamrec job, its lists replayed")
    parser.add_argument("--floor", choices=FLOOR_MODES, required=True,
                        help="model: each replay still calls the model; none: no model call")
    add_config_flags(parser, list(JOB_FLAGS))
    args = parser.parse_args(argv)
    setup_logging(False)
    cfg = config_from_args(args)
    if cfg.ranking.batching:
        print("floor: replays the one-stage job; ranking.batching must be off", file=sys.stderr)
        return 2
    try:
        run_job(cfg, Endpoint("kafka"), Endpoint("kafka"), ReplayingFunction(cfg, args.floor == "model"))
    except REPORTED_ERRORS as exc:
        print(f"floor: {exc}", file=sys.stderr)
        return reported(exc) or 1
    return 0

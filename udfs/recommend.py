"""The recommendation step, free of Flink: state update, candidates, ranking,
top-K and the output record. The Flink function, offline replays and the
plain-Python peer all call this, so they do the same work.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from udfs.artifact import Artifact
from udfs.batching import PreparedRequest, merge_features
from udfs.candidates import SRC_NEW, generate_candidates
from udfs.catalog import Catalog, CatalogItem
from udfs.diversity import OFF, cap_per_category
from udfs.events import Event, Id
from udfs.features import UserRequest, build_batch
from udfs.item_knowledge import Entry, keep_row
from udfs.ranker import OnnxRanker, ProviderChoice, check_scores
from udfs.reasons import list_reasons
from udfs.records import SCHEMA_VERSION
from udfs.state import StateLimits, UserState, update_state
from udfs.trending import TrendingCounter

log = logging.getLogger(__name__)

# A model-unknown item must be among this many stream-hottest items to take a fresh-hit slot.
FRESH_HIT_TOP = 10


def output_record(
    req: PreparedRequest,
    items: Sequence[Id],
    scores: Sequence[float],
    reasons: Sequence[dict[str, Any]],
    *,
    model_version: str,
    provider: str,
    fallback: str | None,
    arm: str | None = None,
) -> dict[str, Any]:
    """The versioned output record (docs/contracts.md: 'Output records'); ``arm`` is the A/B arm that ranked
    it (None without an experiment)."""
    t = req.trigger
    return {
        "schema_version": SCHEMA_VERSION,
        "user_id": t.user_id,
        "seq": req.seq,
        "items": list(items),
        "scores": [round(float(s), 6) for s in scores],
        "reasons": list(reasons),
        "trigger": {"item_id": t.item_id, "behavior": t.behavior, "ts": t.ts},
        "model_version": model_version,
        "provider": provider,
        "fallback": fallback,
        "generated_at": int(time.time() * 1000),
        "arm": arm,
    }


@dataclass
class RecommenderCounters:
    events: int = 0
    duplicates: int = 0
    emitted: int = 0
    inference_failures: int = 0
    """Model calls that raised."""
    bad_model_outputs: int = 0
    """Model calls whose output could not rank some or all of their lists (shape, count, NaN/inf)."""


class Recommender:
    """Holds the artifact tables and one ranker; stateless across users."""

    def __init__(
        self,
        artifact: Artifact,
        ranker: OnnxRanker | None,
        limits: StateLimits,
        *,
        top_k: int,
        n_candidates: int,
        trending: TrendingCounter | None = None,
        fresh_hit_slots: int = 0,
        max_per_category: int = OFF,
        catalog: Catalog | None = None,
        new_item_slots: int = 0,
        exclude_bought: bool | None = None,
    ) -> None:
        self.artifact = artifact
        # None: as the artifact's training log says (read per request, so a swapped artifact's own rule holds).
        self.exclude_bought = exclude_bought
        self.catalog = catalog
        self.new_item_slots = new_item_slots if catalog is not None else 0
        self.trending = trending
        self.fresh_hit_slots = fresh_hit_slots if trending is not None else 0
        # Derived from one trending top list, rebuilt only when it changes:
        # (top, candidate trending list, fresh hits the model does not know).
        self._trend_view: tuple[list[Id], list[Id], frozenset[Id]] | None = None
        self.ranker = ranker
        self.limits = limits
        self.top_k = top_k
        self.n_candidates = n_candidates
        self.max_per_category = max_per_category
        self.counters = RecommenderCounters()

    @property
    def provider(self) -> ProviderChoice | None:
        return self.ranker.choice if self.ranker else None

    def item_attributes(self) -> Mapping[Id, CatalogItem] | None:
        """The catalog's records for the brand and price features, for a model trained with
        them only: a model trained without them has never seen them other than 0."""
        if self.catalog is None or not self.artifact.manifest.catalog_features:
            return None
        return self.catalog.items

    def apply(self, state: UserState, event: Event, row: list[Entry] | None = None, kept_rows: int = 0) -> bool:
        """Update state; False for a duplicate event (nothing to emit).

        ``row``: the touched item's co-visitation row as the stream left it (udfs/item_knowledge.py),
        kept with the shopper's rows of their last ``kept_rows`` items; None without online item
        knowledge."""
        self.counters.events += 1
        if update_state(state, event, self.limits):
            if row is not None:
                keep_row(state, event.item_id, row, kept_rows)
            if self.catalog is not None:
                self.catalog.touched(event.item_id)
            if self.trending is not None:
                self.trending.add(event)
            return True
        self.counters.duplicates += 1
        return False

    def request(self, state: UserState, event: Event) -> UserRequest:
        catalog = self.catalog
        # The catalog's rules act on candidates, so nothing later (ranking, the cap, the reserved
        # slots) can bring back an item that is out of stock or deleted.
        rules: dict[str, Any] = {} if catalog is None else {
            "blocked": catalog.unavailable,
            "new_items": catalog.new_item_candidates(state, max(self.new_item_slots, self.n_candidates // 10)),
        }
        rules["exclude_bought"] = (self.artifact.manifest.exclude_bought if self.exclude_bought is None
                                   else self.exclude_bought)
        if self.trending is None:
            cands = generate_candidates(state, self.artifact.tables, self.n_candidates, **rules)
            return UserRequest(state, cands, event)
        _, trending, fresh = self._trending_view()
        cands = generate_candidates(state, self.artifact.tables, self.n_candidates,
                                    trending=trending, trending_categories=self.trending.categories, **rules)
        # Taken now, not when the batch is scored: a list must not depend on which
        # other events share its model call.
        return UserRequest(state, cands, event, fresh if self.fresh_hit_slots else frozenset())

    def _trending_view(self) -> tuple[list[Id], list[Id], frozenset[Id]]:
        """In-stream hot items first, then the artifact's list; and the hottest items the
        model has no embedding for (fresh hits)."""
        assert self.trending is not None
        top = self.trending.top()
        if self._trend_view is None or self._trend_view[0] is not top:
            hot, known = set(top), self.artifact.vocab.items
            merged = top + [i for i in self.artifact.tables.trending if i not in hot]
            fresh = frozenset(i for i in top[:FRESH_HIT_TOP] if i not in known)
            self._trend_view = (top, merged, fresh)
        return self._trend_view

    def _with_fresh_hits(self, req: PreparedRequest, order: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, int]:
        """Put the best-scored fresh hits among this user's candidates in the last slots;
        also how many slots at the end they took.

        A brand-new item has no learned embedding, so the model ranks it low however
        hot it is; without a reserved slot a new hit would never reach a list.
        """
        fresh = req.fresh_hits
        if not fresh:
            return order, 0
        shown = set(order.tolist())
        picks = [i for i, item in enumerate(req.candidates.items) if item in fresh and i not in shown]
        if not picks:
            return order, 0
        picks = sorted(picks, key=lambda i: -s[i])[: min(self.fresh_hit_slots, len(order))]
        keep = order[: len(order) - len(picks)]
        return np.concatenate([keep, np.asarray(picks, dtype=order.dtype)]), len(picks)

    def _with_new_items(self, req: PreparedRequest, order: np.ndarray, s: np.ndarray | None,
                        tail: int) -> np.ndarray:
        """Put the best new catalog items among the candidates just before the last ``tail``
        slots (the fresh hits), unless they made the list on their own.

        A new item has no embedding and no behavior, so the model would rank it low; without a
        reserved slot it could never reach a list, and so never earn behavior."""
        if not self.new_item_slots:
            return order
        cands = req.candidates
        shown = set(order.tolist())
        picks = [i for i, src in enumerate(cands.sources) if src & SRC_NEW and i not in shown]
        room = len(order) - tail
        if not picks or room <= 0:
            return order
        if s is not None:
            picks = sorted(picks, key=lambda i: -s[i])
        picks = picks[: min(self.new_item_slots, room)]
        head = order[: room - len(picks)]
        return np.concatenate([head, np.asarray(picks, dtype=order.dtype), order[room:]])

    def _top(self, req: PreparedRequest, ranked: np.ndarray) -> np.ndarray:
        """The first ``top_k`` rows of ``ranked``, under the per-category cap when it is on.

        Off, this is exactly ``ranked[:top_k]``: lists are unchanged."""
        if self.max_per_category == OFF:
            return ranked[: self.top_k]
        picked = cap_per_category(ranked, req.candidates.categories, self.max_per_category, self.top_k)
        return np.asarray(picked, dtype=ranked.dtype)

    def prepare(self, req: UserRequest, features: bool = True) -> PreparedRequest:
        """Advance the shopper's list count and take everything ranking needs from ``req``.

        What a list depends on is fixed here, at the trigger: the batched stage ranks
        the result later, with other shoppers' rows, and must emit the list the
        one-event path would have. ``features=False`` leaves the model inputs out (no model).
        Features that cannot be built are left out too, and the model call that would
        take them falls back, as a model fault does.
        """
        req.state.emitted += 1
        inputs: dict[str, np.ndarray] | None = None
        error = None
        if features:
            try:
                inputs = build_batch([req], self.artifact.vocab, self.artifact.tables, self.artifact.seq_len,
                                     self.item_attributes())
            except Exception as exc:  # a bad state must not stop recommendations
                error = f"{type(exc).__name__}: {str(exc)[:200]}"
                log.exception("building model inputs failed; the list will fall back")
        return PreparedRequest.of(req, req.state.emitted, inputs, error)

    def recommend(self, requests: Sequence[UserRequest], arm: str | None = None) -> list[dict[str, Any]]:
        """Rank all users' candidates in one model call, then cut top-K per user."""
        if not requests:
            return []
        return self.rank([self.prepare(r, features=self.ranker is not None) for r in requests], arm)

    def _score(self, requests: Sequence[PreparedRequest]) -> tuple[np.ndarray | None, str | None]:
        """One model call over every request's rows: (scores, None) or (None, why not)."""
        if self.ranker is None:
            return None, "no_model"
        try:
            raw = self.ranker.score(merge_features(requests))
        except Exception as exc:  # a model fault must not stop recommendations
            self.counters.inference_failures += 1
            log.exception("ranking failed; emitting generator-order fallback lists")
            return None, f"inference_error: {type(exc).__name__}: {str(exc)[:200]}"
        problem = check_scores(raw, sum(len(r.candidates.items) for r in requests))
        return (np.asarray(raw), None) if problem is None else (None, f"bad_model_output: {problem}")

    def rank(self, requests: Sequence[PreparedRequest], arm: str | None = None) -> list[dict[str, Any]]:
        """Rank prepared requests in one model call, then cut top-K per user, in request order;
        ``arm`` is the A/B arm every list of the call belongs to.

        Never raises for a model fault: a call that raises, or scores that are not one
        number per candidate row, give every list of the call in generator order with
        ``fallback`` tagged; NaN/inf scores do so for the lists they fall in.
        """
        if not requests:
            return []
        label = self.ranker.choice.label if self.ranker else "none"
        scores, fallback = self._score(requests)
        out = []
        offset = 0
        any_bad = fallback is not None and fallback.startswith("bad_model_output")
        for req in requests:
            n = len(req.candidates.items)
            s = scores[offset : offset + n] if scores is not None else None
            user_fallback = fallback
            if s is not None and not np.isfinite(s).all():
                bad = n - int(np.isfinite(s).sum())
                user_fallback, s, any_bad = f"bad_model_output: {bad} of {n} scores not finite", None, True
            n_fresh = 0
            if s is not None:
                order, n_fresh = self._with_fresh_hits(req, self._top(req, np.argsort(-s, kind="stable")), s)
                order = self._with_new_items(req, order, s, n_fresh)
                top = s[order].tolist()
            else:
                order = self._with_new_items(req, self._top(req, np.arange(n)), None, 0)
                top = [req.candidates.covisit[i] for i in order]
            items = [req.candidates.items[i] for i in order]
            reasons = list_reasons(req.candidates, order, range(len(order) - n_fresh, len(order)))
            offset += n
            out.append(
                output_record(req, items, top, reasons, model_version=self.artifact.model_version,
                              provider=label, fallback=user_fallback, arm=arm)
            )
        if any_bad:
            self.counters.bad_model_outputs += 1
            log.warning("unusable model output (%s); emitting generator-order fallback lists",
                        next(r["fallback"] for r in out if r["fallback"]))
        self.counters.emitted += len(out)
        return out

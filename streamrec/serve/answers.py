"""The service's answers, free of HTTP: a shopper's list, a guest session's, an item's neighbours,
readiness and health; each item filtered by the catalog and the request's query."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from streamrec.serve.context import (
    SIMILAR_N,
    BadRequest,
    Catalog,
    ServeContext,
)
from streamrec.serve.follower import Follower
from streamrec.serve.guest import GuestRanker
from streamrec.serve.listing import (
    EVERYTHING,
    MAX_N,
    ListQuery,
    shown,
)
from udfs.catalog import CatalogItem
from udfs.events import Event, Id, InvalidId, canonical_id
from udfs.reasons import render_reason
from udfs.records import OutputRecord


def parse_id(raw: str, name: str) -> Id:
    """The canonical id (docs/contracts.md, the id rule) of a path or body value, or :class:`BadRequest`."""
    try:
        return canonical_id(raw, name)
    except InvalidId as exc:
        raise BadRequest(f"invalid {name}: {exc.reason}") from None


def listable(item: Any) -> bool:
    """An id a response can carry (a list stored by an older version may hold anything)."""
    return isinstance(item, (int, str)) and not isinstance(item, bool)


def _score(score: Any) -> float | None:
    """A finite score, else null: JSON has no NaN, and one odd score must not fail the response."""
    return float(score) if isinstance(score, (int, float)) and math.isfinite(score) else None


def _item(catalog: Catalog, records: dict[Id, CatalogItem], item: Id, score: float | None,
          reason: dict[str, Any]) -> dict[str, Any]:
    def item_name(i: Id) -> str:
        title = records[i].title if i in records else None
        return title or f"item {i}"

    out: dict[str, Any] = {"item_id": item, "score": _score(score), "reason": reason,
                           "because": render_reason(reason, item_name, catalog.category_name)}
    if item in catalog.item_category:
        out["category_id"] = catalog.item_category[item]
    rec = records.get(item)
    if rec is not None:
        for name in ("title", "brand", "price"):
            value = getattr(rec, name)
            if value is not None:
                out[name] = value
        out.setdefault("category_id", rec.category_id)
    return out


def _catalog_records(ctx: ServeContext, items: list[Id], reasons: list[dict[str, Any]]) -> dict[Id, CatalogItem]:
    """One store read for the listed items and the items their reasons name ("because you viewed")."""
    if ctx.catalog_follower is None:
        return {}
    named = [r["because"] for r in reasons if r.get("code") == "covisit" and "because" in r]
    return ctx.store.items([*items, *named])


def _shown_list(ctx: ServeContext, items: Sequence[Any], scores: Sequence[Any], reasons: Sequence[Any] | None,
                query: ListQuery) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A ranked list's response items (ids only, with the catalog's records) after the read-time rules."""
    listed = [(i, s, r) for i, s, r in zip(items, scores, reasons or [{}] * len(items)) if listable(i)]
    records = _catalog_records(ctx, [i for i, _, _ in listed], [r for _, _, r in listed])
    return shown([_item(ctx.catalog, records, i, s, r) for i, s, r in listed], records, query)


def session_answer(ctx: ServeContext, guest: GuestRanker, events: Sequence[Event], query: ListQuery) -> dict[str, Any]:
    """A guest session's list (blocking: a model call and store reads), shaped as a lookup's."""
    record = guest.session_list(events)
    items, counts = _shown_list(ctx, record["items"], record["scores"], record["reasons"], query)
    return {"user_id": None, "known": False, "trending": False, "session": True,
            "model_version": record["model_version"], "provider": record["provider"], "fallback": record["fallback"],
            "items": items, **counts}


def similar_answer(ctx: ServeContext, guest: GuestRanker, item: Id, query: ListQuery) -> dict[str, Any]:
    """An item's neighbours (blocking: store reads); ``known`` False for an item the artifact never saw."""
    neighbours = guest.similar(item, MAX_N)
    pairs = neighbours or []
    reasons = [{"code": "covisit", "because": item}] * len(pairs)
    items, counts = _shown_list(ctx, [i for i, _ in pairs], [s for _, s in pairs], reasons,
                                query if query.n is not None else replace(query, n=SIMILAR_N))
    return {"item_id": item, "known": neighbours is not None,
            "model_version": guest.recommender.artifact.model_version, "items": items, **counts}


def lookup(ctx: ServeContext, user: Id, query: ListQuery = EVERYTHING) -> dict[str, Any]:
    """The response body for one shopper (blocking: store reads). Items that are not ids are left out;
    the followed catalog's rule, ``query``'s filters and page apply at read time
    (:mod:`streamrec.serve.listing`)."""
    stored = ctx.store.get(ctx.key_of(user))
    now = int(time.time() * 1000)
    if stored is None:
        trending = [i for i in ctx.trending() if listable(i)]
        records = _catalog_records(ctx, trending, [])
        items, counts = shown([_item(ctx.catalog, records, i, None, {"code": "trending"}) for i in trending],
                              records, query)
        return {"user_id": user, "known": False, "trending": True, "model_version": None, "provider": None,
                "arm": None, "fallback": None, "seq": None, "generated_at": None, "age_ms": None, "trigger": None,
                "items": items, **counts}
    rec: OutputRecord = stored.record
    items, counts = _shown_list(ctx, rec.items, rec.scores, rec.reasons, query)
    return {"user_id": user, "known": True, "trending": False, "model_version": rec.model_version,
            "provider": rec.provider, "arm": rec.arm, "fallback": rec.fallback, "seq": rec.seq,
            "generated_at": rec.generated_at, "age_ms": max(0, now - rec.generated_at), "trigger": rec.trigger,
            "schema_version": rec.schema_version, "items": items, **counts}


def _follower_status(f: Follower) -> dict[str, Any]:
    return {"topic": f.topic, "state": f.state(), "catch_up_remaining": f.lag, "records_consumed": f.records,
            "bad_records": f.bad_records, "erased": f.erased}


def readiness(ctx: ServeContext) -> tuple[bool, dict[str, Any]]:
    """Whether lookups answer from a rebuilt view, and each follower's state (no store reads)."""
    followers = {"lists": _follower_status(ctx.follower)}
    if ctx.catalog_follower is not None:
        followers["catalog"] = _follower_status(ctx.catalog_follower)
    ready = followers["lists"]["state"] == "ready"
    return ready, {"status": "ready" if ready else "not_ready", "followers": followers}


def health(ctx: ServeContext) -> tuple[bool, dict[str, Any]]:
    """``/healthz``'s body, as before ``/readyz`` (blocking: store counts)."""
    f = ctx.follower
    ok = f.ready.is_set() and f.alive() and f.last_error is None
    status = "ok" if ok else ("catching_up" if f.alive() and not f.ready.is_set() else "degraded")
    body: dict[str, Any] = {
            "status": status, "ready": f.ready.is_set(), "follower_alive": f.alive(), "last_error": f.last_error,
            "catch_up_remaining": f.lag, "shoppers": ctx.store.count(), "lists_consumed": f.records}
    c = ctx.catalog_follower
    if c is not None:
        body["catalog"] = {"ready": c.ready.is_set(), "follower_alive": c.alive(), "last_error": c.last_error,
                           "items": ctx.store.item_count(), "records_consumed": c.records,
                           "bad_records": c.bad_records}
    return ok, body

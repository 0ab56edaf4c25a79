"""The HTTP side of `streamrec serve` (Starlette).

Routes:

- ``GET /v1/users/{user_id}/recommendations``: the shopper's latest list, with reasons (code,
  evidence and the sentence ``udfs.reasons.render_reason`` gives), model version, provider,
  experiment arm (when the record has one) and age; a shopper without a list gets the trending
  list, marked ``"trending": true``. Items the catalog topic has a record of carry its ``title``,
  ``brand`` and ``price`` (and reasons name them by title). An id that breaks the id rule is a
  400 with the reason.
- ``GET /v1/users/{user_id}/recommendations/stream``: the same body as server-sent events, sent
  now and whenever the shopper's list changes (the live page).
- ``POST /v1/events``: ``{"user_id", "item_id", "behavior", ["category_id"]}`` -> one behavior
  event into the input topic, stamped now (the page's view/cart/buy buttons).
- ``GET /v1/users``: shoppers whose lists changed last (the page's picker).
- ``GET /healthz`` (503 until the view is rebuilt, or when the follower is down; the catalog's
  follower is reported, but a missing catalog topic does not make the service unhealthy), ``GET /metrics``.
- ``GET /``: the live storefront page.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from streamrec.serve.follower import Follower
from streamrec.serve.metrics import ServeMetrics
from streamrec.serve.store import Store
from udfs.catalog import CatalogItem
from udfs.events import BEHAVIORS, Event, Id, InvalidId, canonical_id
from udfs.reasons import render_reason
from udfs.records import OutputRecord

log = logging.getLogger(__name__)

SSE_HEARTBEAT_S = 15.0
TRENDING_REFRESH_S = 1.0
MAX_EVENT_BODY = 4096


class BadRequest(ValueError):
    """A client mistake: answered 400 with this message."""


@dataclass
class Catalog:
    """Item categories from the model artifact's tables, when one is configured (what a click on the
    page sends as the event's category). Titles, brands and prices come from the catalog topic, kept
    in the store by :class:`streamrec.serve.follower.CatalogFollower`."""

    item_category: dict[Id, Id] = field(default_factory=dict)

    def category_name(self, category: Id) -> str:
        return f"category {category}"


@dataclass
class ServeContext:
    """Everything the routes share; built by :func:`streamrec.serve.server.build_context`."""

    store: Store
    follower: Follower
    """Follows the recommendations topic; its readiness is the service's."""
    send_event: Callable[[Event], dict[str, Any]]
    """Produces one event to the input topic and returns its coordinates (blocking)."""
    input_topic: str
    trending_size: int = 20
    trending_window: int = 1000
    catalog: Catalog = field(default_factory=Catalog)
    key_of: Callable[[Id], str] = str
    """The output topic's key of a shopper id: ``str`` or, with privacy.pseudonymize, the pseudonym."""
    catalog_follower: Follower | None = None
    """Follows the catalog topic into the store's item records (None: titles and prices are not shown)."""
    metrics: ServeMetrics = field(default_factory=ServeMetrics)
    subscribers: dict[str, set[asyncio.Queue[None]]] = field(default_factory=dict)
    loop: asyncio.AbstractEventLoop | None = None
    _trending: list[Id] | None = None
    _trending_at: float = 0.0

    def trending(self) -> list[Id]:
        """The trending list, as last computed by the follower thread (here only the first time:
        after a restart with nothing new in the topic)."""
        if self._trending is None:
            self._refresh_trending()
        return self._trending or []

    def _refresh_trending(self) -> None:
        self._trending = self.store.trending(self.trending_size, self.trending_window)
        self._trending_at = time.monotonic()

    def lists_changed(self, keys: list[str]) -> None:
        """Called by the follower thread after storing lists: recount trending (at most every
        TRENDING_REFRESH_S, off the request path) and wake the streams of these shoppers."""
        if time.monotonic() - self._trending_at >= TRENDING_REFRESH_S:
            self._refresh_trending()
        loop = self.loop
        if loop is None or not self.subscribers:
            return
        loop.call_soon_threadsafe(self._wake, keys)

    def catalog_changed(self, _keys: list[str]) -> None:
        """Called by the catalog follower after storing newer item records: every open stream sends its
        list again, so a new title or price reaches the page without a new list."""
        loop = self.loop
        if loop is None or not self.subscribers:
            return
        loop.call_soon_threadsafe(lambda: self._wake(list(self.subscribers)))

    def _wake(self, keys: list[str]) -> None:
        for key in keys:
            for queue in self.subscribers.get(key, ()):
                if queue.empty():
                    queue.put_nowait(None)


def parse_id(raw: str, name: str) -> Id:
    """The canonical id (README, the id rule) of a path or body value, or :class:`BadRequest`."""
    try:
        return canonical_id(raw, name)
    except InvalidId as exc:
        raise BadRequest(f"invalid {name}: {exc.reason}") from None


def _item(catalog: Catalog, records: dict[Id, CatalogItem], item: Id, score: float | None,
          reason: dict[str, Any]) -> dict[str, Any]:
    def item_name(i: Id) -> str:
        title = records[i].title if i in records else None
        return title or f"item {i}"

    out: dict[str, Any] = {"item_id": item, "score": score, "reason": reason,
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


def lookup(ctx: ServeContext, user: Id) -> dict[str, Any]:
    """The response body for one shopper."""
    stored = ctx.store.get(ctx.key_of(user))
    now = int(time.time() * 1000)
    if stored is None:
        trending = ctx.trending()
        records = _catalog_records(ctx, trending, [])
        return {"user_id": user, "known": False, "trending": True, "model_version": None, "provider": None,
                "arm": None, "fallback": None, "seq": None, "generated_at": None, "age_ms": None, "trigger": None,
                "items": [_item(ctx.catalog, records, i, None, {"code": "trending"}) for i in trending]}
    rec: OutputRecord = stored.record
    reasons = rec.reasons or [{}] * len(rec.items)
    records = _catalog_records(ctx, rec.items, reasons)
    return {"user_id": user, "known": True, "trending": False, "model_version": rec.model_version,
            "provider": rec.provider, "arm": rec.arm, "fallback": rec.fallback, "seq": rec.seq,
            "generated_at": rec.generated_at, "age_ms": max(0, now - rec.generated_at), "trigger": rec.trigger,
            "schema_version": rec.schema_version,
            "items": [_item(ctx.catalog, records, i, s, r) for i, s, r in zip(rec.items, rec.scores, reasons)]}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def build_app(ctx: ServeContext) -> Starlette:
    metrics = ctx.metrics

    async def recommendations(request: Request) -> Response:
        start = time.perf_counter()
        try:
            user = parse_id(request.path_params["user_id"], "user_id")
        except BadRequest as exc:
            metrics.request("recommendations", 400)
            return _error(400, str(exc))
        body = lookup(ctx, user)
        response = JSONResponse(body)
        metrics.lookup(time.perf_counter() - start)
        metrics.request("recommendations", 200)
        return response

    async def stream(request: Request) -> Response:
        try:
            user = parse_id(request.path_params["user_id"], "user_id")
        except BadRequest as exc:
            metrics.request("stream", 400)
            return _error(400, str(exc))
        metrics.request("stream", 200)
        key = ctx.key_of(user)
        queue: asyncio.Queue[None] = asyncio.Queue()

        async def events() -> AsyncIterator[str]:
            ctx.subscribers.setdefault(key, set()).add(queue)
            try:
                yield f"event: list\ndata: {json.dumps(lookup(ctx, user))}\n\n"
                while True:
                    try:
                        await asyncio.wait_for(queue.get(), SSE_HEARTBEAT_S)
                    except asyncio.TimeoutError:
                        yield ": heartbeat\n\n"
                        continue
                    yield f"event: list\ndata: {json.dumps(lookup(ctx, user))}\n\n"
            finally:
                subs = ctx.subscribers.get(key)
                if subs is not None:
                    subs.discard(queue)
                    if not subs:
                        ctx.subscribers.pop(key, None)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def send_event(request: Request) -> Response:
        try:
            event = _event_from_body(await request.body(), ctx.catalog)
        except BadRequest as exc:
            metrics.request("events", 400)
            return _error(400, str(exc))
        try:
            where = await run_in_threadpool(ctx.send_event, event)
        except Exception as exc:  # the broker is down: the page says so, the service stays up
            metrics.request("events", 503)
            return _error(503, f"could not send the event to {ctx.input_topic}: {type(exc).__name__}: {exc}")
        metrics.event_sent(event.behavior)
        metrics.request("events", 202)
        return JSONResponse({"event": event.to_wire(), "topic": ctx.input_topic, **where}, status_code=202)

    async def users(request: Request) -> Response:
        try:
            limit = int(request.query_params.get("limit", "20"))
            if not 1 <= limit <= 1000:
                raise ValueError
        except ValueError:
            metrics.request("users", 400)
            return _error(400, "limit must be an integer in 1..1000")
        metrics.request("users", 200)
        return JSONResponse({"users": ctx.store.recent_users(limit)})

    async def healthz(request: Request) -> Response:
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
        return JSONResponse(body, status_code=200 if ok else 503)

    async def metrics_text(request: Request) -> Response:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    async def page(request: Request) -> Response:
        html = resources.files("streamrec.serve").joinpath("static/index.html").read_text()
        return HTMLResponse(html)

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(404, f"no route {request.method} {request.url.path}")

    async def internal(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path, exc_info=exc)
        return _error(500, f"internal error: {type(exc).__name__}")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        ctx.loop = asyncio.get_running_loop()
        yield
        ctx.loop = None

    f = ctx.follower
    metrics.gauge("streamrec_serve_lists_consumed_total", "Lists read from the recommendations topic.",
                  lambda: f.records)
    metrics.gauge("streamrec_serve_bad_records_total", "Records of the topic that are not readable output records.",
                  lambda: f.bad_records)
    metrics.gauge("streamrec_serve_ready", "1 once the view is rebuilt from the topic.", lambda: f.ready.is_set())
    metrics.gauge("streamrec_serve_catch_up_remaining", "Records left to read before the view is rebuilt.",
                  lambda: f.lag)
    metrics.gauge("streamrec_serve_shoppers", "Shoppers with a stored list.", ctx.store.count)
    metrics.gauge("streamrec_serve_stream_clients", "Open live-page streams.",
                  lambda: sum(len(s) for s in ctx.subscribers.values()))

    routes = [
        Route("/v1/users/{user_id}/recommendations", recommendations),
        Route("/v1/users/{user_id}/recommendations/stream", stream),
        Route("/v1/users", users),
        Route("/v1/events", send_event, methods=["POST"]),
        Route("/healthz", healthz),
        Route("/metrics", metrics_text),
        Route("/", page),
    ]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: not_found, 500: internal})


def _event_from_body(body: bytes, catalog: Catalog) -> Event:
    if len(body) > MAX_EVENT_BODY:
        raise BadRequest(f"body over {MAX_EVENT_BODY} bytes")
    try:
        obj = json.loads(body)
    except ValueError as exc:
        raise BadRequest(f"body is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise BadRequest("body must be a JSON object {user_id, item_id, behavior[, category_id]}")
    for name in ("user_id", "item_id", "behavior"):
        if name not in obj:
            raise BadRequest(f"missing field {name}")
    user = _body_id(obj["user_id"], "user_id")
    item = _body_id(obj["item_id"], "item_id")
    category = _body_id(obj["category_id"], "category_id") if "category_id" in obj \
        else catalog.item_category.get(item, 0)
    behavior = obj["behavior"]
    if behavior not in BEHAVIORS:
        raise BadRequest(f"behavior must be one of {', '.join(BEHAVIORS)}, got {str(behavior)[:32]!r}")
    return Event(user, item, category, behavior, int(time.time() * 1000))


def _body_id(value: Any, name: str) -> Id:
    try:
        return canonical_id(value, name)
    except InvalidId as exc:
        raise BadRequest(f"invalid {name}: {exc.reason}") from None

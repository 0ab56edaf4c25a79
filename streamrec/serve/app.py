"""The HTTP side of `streamrec serve` (Starlette).

Routes:

- ``GET /v1/users/{user_id}/recommendations``: the shopper's latest list, with reasons (code,
  evidence and the sentence ``udfs.reasons.render_reason`` gives), model version, provider,
  experiment arm (when the record has one) and age; a shopper without a list gets the trending
  list, marked ``"trending": true``. Items the catalog topic has a record of carry its ``title``,
  ``brand`` and ``price`` (and reasons name them by title). An id that breaks the id rule is a
  400 with the reason.
  Read time: an item the followed catalog says cannot be sold is left out; ``exclude``
  (comma-separated item ids), ``category``, ``offset`` and ``n`` filter and page the rest, and
  ``total``, ``offset`` and ``filtered`` say what each step took out (:mod:`streamrec.serve.listing`).
  A weak ``ETag`` (all but ``age_ms``) and ``Cache-Control: private, no-cache``: ``If-None-Match``
  gets a 304 while the answer is unchanged.
- ``GET /v1/recommendations?users=ID,ID,...``: the same answer for up to 100 shoppers at once, in
  order, with the same parameters.
- ``GET /v1/users/{user_id}/recommendations/stream``: the same body as server-sent events, sent
  now and whenever the shopper's list changes (the live page).
- ``POST /v1/events``: ``{"user_id", "item_id", "behavior", ["category_id"]}`` -> one behavior
  event into the input topic, stamped now (the page's view/cart/buy buttons); only with
  ``serve.accept_events``, a JSON content type and a body of at most :data:`MAX_EVENT_BODY` bytes.
- ``DELETE /v1/users/{user_id}``: erase the shopper (an erase request into the input topic, their list out
  of the view at once); only behind the API token.
- ``GET /v1/users``: shoppers whose lists changed last (the page's picker); only with ``serve.list_users``.
- ``GET /livez`` (200 while the process answers), ``GET /readyz`` (503 until the lists' view is rebuilt,
  or while its follower has lost the broker; names each follower and its state; the catalog's does not
  hold readiness back), ``GET /healthz`` (as before: readiness with counts), ``GET /metrics``.
- ``GET /``: the live storefront page; ``GET /openapi.json`` and ``GET /docs``: the OpenAPI 3
  document of these routes, from their docstrings (:mod:`streamrec.serve.openapi`).

Who may call them is :mod:`streamrec.serve.access`. Store calls run in the thread pool, never on the
event loop; a store that cannot be reached is a 503 with ``Retry-After`` on every route that reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from streamrec.serve.access import Access, AccessGuard
from streamrec.serve.follower import Follower
from streamrec.serve.guest import MAX_SESSION_EVENTS, GuestRanker
from streamrec.serve.listing import (
    CACHE_CONTROL,
    EVERYTHING,
    MAX_N,
    ListQuery,
    ListQueryError,
    etag_matches,
    list_etag,
    parse_list_query,
    parse_users,
    shown,
)
from streamrec.serve.openapi import docs_page, openapi_json
from streamrec.serve.serve_metrics import ServeMetrics
from streamrec.serve.store import Store, StoreUnavailable
from udfs.catalog import CatalogItem
from udfs.config import ServeConfig
from udfs.errors import InputError
from udfs.events import BEHAVIORS, Event, Id, InvalidId, canonical_id
from udfs.reasons import render_reason
from udfs.records import OutputRecord

log = logging.getLogger(__name__)

SSE_HEARTBEAT_S = 15.0
TRENDING_REFRESH_S = 1.0
MAX_EVENT_BODY = 4096
MAX_SESSION_BODY = 16384
SIMILAR_N = 10
"""Neighbours a similar-items answer gives without ``n``."""
GUEST = "guest"
"""The user id of a posted session's events (no shopper's state is read or written)."""
STORE_RETRY_AFTER_S = 5
"""What a 503 for an unreachable store tells the client to wait (Retry-After)."""


class ClientError(InputError):
    """A request the service refuses: answered ``status`` with this message."""

    status = 400


class BadRequest(ClientError):
    """A client mistake: answered 400 with this message."""


class Refused(ClientError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


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
    send_erase: Callable[[Id], dict[str, Any]] | None = None
    """Produces one erase request to the input topic and returns its coordinates (blocking); None: none."""
    trending_size: int = 20
    trending_window: int = 1000
    catalog: Catalog = field(default_factory=Catalog)
    key_of: Callable[[Id], str] = str
    """The output topic's key of a shopper id: ``str`` or, with privacy.pseudonymize, the pseudonym."""
    catalog_follower: Follower | None = None
    """Follows the catalog topic into the store's item records (None: titles and prices are not shown)."""
    access: Access = field(default_factory=lambda: Access.from_config(ServeConfig()))
    """Who may call what (the defaults: loopback hosts, no token, no writes, no shopper listing)."""
    metrics: ServeMetrics = field(default_factory=ServeMetrics)
    guest: GuestRanker | None = None
    """The job's recommender over the configured artifact: guest sessions and similar items (None: no artifact)."""
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


def _listable(item: Any) -> bool:
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
    listed = [(i, s, r) for i, s, r in zip(items, scores, reasons or [{}] * len(items)) if _listable(i)]
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
        trending = [i for i in ctx.trending() if _listable(i)]
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


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


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


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to be over ``limit``: by its declared
    Content-Length before a byte is read, or while reading a chunked one."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest("Content-Length is not a number")
        if int(declared) > limit:
            raise Refused(413, f"body over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise Refused(413, f"body over {limit} bytes")
    return bytes(body)


def build_app(ctx: ServeContext) -> Starlette:
    metrics = ctx.metrics

    async def recommendations(request: Request) -> Response:
        """
        ---
        summary: A shopper's latest list
        description: The followed catalog's rule at read time, then exclude, category and the page.
        parameters:
          - $ref: '#/components/parameters/user_id'
          - $ref: '#/components/parameters/n'
          - $ref: '#/components/parameters/offset'
          - $ref: '#/components/parameters/exclude'
          - $ref: '#/components/parameters/category'
        responses:
          200:
            description: The list (a shopper without one gets the trending list, known false).
            content: {application/json: {schema: {$ref: '#/components/schemas/Lookup'}}}
          304: {description: Unchanged since the ETag in If-None-Match.}
          400: {$ref: '#/components/responses/BadRequest'}
          503: {description: The store cannot be reached; Retry-After says when to try again.}
        """
        start = time.perf_counter()
        try:
            user = parse_id(request.path_params["user_id"], "user_id")
            query = parse_list_query(request.query_params)
        except (BadRequest, ListQueryError) as exc:
            metrics.request("recommendations", 400)
            return _error(400, str(exc))
        body = await run_in_threadpool(lookup, ctx, user, query)
        etag = list_etag(body)
        headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
        metrics.lookup(time.perf_counter() - start)
        if etag_matches(request.headers.get("if-none-match"), etag):
            metrics.request("recommendations", 304)
            return Response(status_code=304, headers=headers)
        metrics.request("recommendations", 200)
        return JSONResponse(body, headers=headers)

    async def batch(request: Request) -> Response:
        """
        ---
        summary: Many shoppers' lists in one call
        parameters:
          - $ref: '#/components/parameters/users'
          - $ref: '#/components/parameters/n'
          - $ref: '#/components/parameters/offset'
          - $ref: '#/components/parameters/exclude'
          - $ref: '#/components/parameters/category'
        responses:
          200:
            description: One answer per shopper, in the order asked.
            content: {application/json: {schema: {$ref: '#/components/schemas/Batch'}}}
          400: {$ref: '#/components/responses/BadRequest'}
          503: {description: The store cannot be reached.}
        """
        try:
            users = [parse_id(u, "user_id") for u in parse_users(request.query_params.get("users"))]
            query = parse_list_query(request.query_params)
        except (BadRequest, ListQueryError) as exc:
            metrics.request("batch", 400)
            return _error(400, str(exc))
        bodies = await run_in_threadpool(lambda: [lookup(ctx, u, query) for u in users])
        metrics.request("batch", 200)
        return JSONResponse({"users": bodies}, headers={"Cache-Control": CACHE_CONTROL})

    async def session(request: Request) -> Response:
        """
        ---
        summary: A list for a guest from the items of their session
        description: The job's candidates, features and model over the configured artifact; the catalog's
          rule, filters and page as for a lookup.
        parameters:
          - $ref: '#/components/parameters/n'
          - $ref: '#/components/parameters/offset'
          - $ref: '#/components/parameters/exclude'
          - $ref: '#/components/parameters/category'
        requestBody:
          required: true
          content: {application/json: {schema: {$ref: '#/components/schemas/Session'}}}
        responses:
          200:
            description: The list, shaped as a lookup's (session true).
            content: {application/json: {schema: {$ref: '#/components/schemas/Lookup'}}}
          400: {$ref: '#/components/responses/BadRequest'}
          404: {description: No model artifact is configured.}
          413: {description: The body is too large.}
          415: {description: Not sent as application/json.}
        """
        try:
            guest = _guest(ctx)
            _json_content(request)
            events = _session_from_body(await read_body(request, MAX_SESSION_BODY), guest.item_category)
            query = parse_list_query(request.query_params)
        except (ClientError, ListQueryError) as exc:
            status = exc.status if isinstance(exc, ClientError) else 400
            metrics.request("sessions", status)
            return _error(status, str(exc))
        body = await run_in_threadpool(session_answer, ctx, guest, events, query)
        metrics.request("sessions", 200)
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    async def similar(request: Request) -> Response:
        """
        ---
        summary: An item's most similar items (co-visitation neighbours the job ranks with)
        parameters:
          - {name: item_id, in: path, required: true, schema: {type: string}}
          - $ref: '#/components/parameters/n'
          - $ref: '#/components/parameters/offset'
          - $ref: '#/components/parameters/exclude'
          - $ref: '#/components/parameters/category'
        responses:
          200: {description: 'The neighbours, best first (known false: an item the model never saw).'}
          400: {$ref: '#/components/responses/BadRequest'}
          404: {description: No model artifact is configured.}
        """
        try:
            guest = _guest(ctx)
            item = parse_id(request.path_params["item_id"], "item_id")
            query = parse_list_query(request.query_params)
        except (ClientError, ListQueryError) as exc:
            status = exc.status if isinstance(exc, ClientError) else 400
            metrics.request("similar", status)
            return _error(status, str(exc))
        body = await run_in_threadpool(similar_answer, ctx, guest, item, query)
        metrics.request("similar", 200)
        return JSONResponse(body, headers={"Cache-Control": "public, max-age=60"})

    async def stream(request: Request) -> Response:
        """
        ---
        summary: A shopper's list as server-sent events, now and on every change
        parameters: [{$ref: '#/components/parameters/user_id'}]
        responses:
          200: {description: 'text/event-stream: "list" events with the lookup body, heartbeats between.'}
          400: {description: A bad id.}
          503: {description: The store cannot be reached.}
        """
        try:
            user = parse_id(request.path_params["user_id"], "user_id")
        except BadRequest as exc:
            metrics.request("stream", 400)
            return _error(400, str(exc))
        key = ctx.key_of(user)
        queue: asyncio.Queue[None] = asyncio.Queue()
        first = await run_in_threadpool(lookup, ctx, user)  # before the 200: a store that is down is a 503
        metrics.request("stream", 200)

        async def events() -> AsyncIterator[str]:
            ctx.subscribers.setdefault(key, set()).add(queue)
            try:
                yield f"event: list\ndata: {json.dumps(first, allow_nan=False)}\n\n"
                while True:
                    try:
                        await asyncio.wait_for(queue.get(), SSE_HEARTBEAT_S)
                    except asyncio.TimeoutError:
                        yield ": heartbeat\n\n"
                        continue
                    try:
                        body = await run_in_threadpool(lookup, ctx, user)
                    except StoreUnavailable:
                        return  # the page's EventSource reconnects, and gets the 503 until the store is back
                    yield f"event: list\ndata: {json.dumps(body, allow_nan=False)}\n\n"
            finally:
                subs = ctx.subscribers.get(key)
                if subs is not None:
                    subs.discard(queue)
                    if not subs:
                        ctx.subscribers.pop(key, None)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def send_event(request: Request) -> Response:
        """
        ---
        summary: One behavior event into the input topic (only with serve.accept_events)
        requestBody:
          required: true
          content:
            application/json:
              schema: {$ref: '#/components/schemas/Event'}
        responses:
          202: {description: Sent; the topic, partition and offset.}
          400: {description: A bad body, named.}
          403: {description: Events are off, or the Origin is not allowed.}
          413: {description: The body is too large.}
          415: {description: Not sent as application/json.}
          503: {description: The broker cannot be reached.}
        """
        try:
            if not ctx.access.accept_events:
                raise Refused(403, "sending events is off (serve.accept_events)")
            _json_content(request)
            event = _event_from_body(await read_body(request, MAX_EVENT_BODY), ctx.catalog)
        except ClientError as exc:
            metrics.request("events", exc.status)
            return _error(exc.status, str(exc))
        try:
            where = await run_in_threadpool(ctx.send_event, event)
        except Exception as exc:  # the broker is down: the page says so, the service stays up
            # the detail (it may name the brokers or the SASL user) goes to the log, not to the client
            log.warning("could not send an event to %s: %s: %s", ctx.input_topic, type(exc).__name__, exc)
            metrics.request("events", 503)
            return _error(503, f"could not send the event to the input topic ({type(exc).__name__})")
        metrics.event_sent(event.behavior)
        metrics.request("events", 202)
        return JSONResponse({"event": event.to_wire(), "topic": ctx.input_topic, **where}, status_code=202)

    async def erase(request: Request) -> Response:
        """
        ---
        summary: Erase a shopper (only behind the API token)
        description: One erase request into the input topic (the job drops the shopper's state and
          writes a tombstone for their list); their list leaves this view at once. The token is required
          even on loopback, so no page can erase a shopper for a visitor.
        parameters:
          - $ref: '#/components/parameters/user_id'
        responses:
          202: {description: 'The request is on the input topic (topic, partition, offset); the view has no list.'}
          400: {$ref: '#/components/responses/BadRequest'}
          401: {description: No or a wrong API token.}
          403: {description: No API token is configured (serve.api_token_file or serve.api_token_env).}
          503: {description: The broker cannot be reached (nothing was erased), or the view's store cannot
            (the request is sent; the job's tombstone removes the list when the store is back).}
        """
        if ctx.access.token is None or ctx.send_erase is None:
            metrics.request("erase", 403)
            return _error(403, "erasing a shopper needs the API token (serve.api_token_file or serve.api_token_env)")
        try:
            user = parse_id(request.path_params["user_id"], "user_id")
        except BadRequest as exc:
            metrics.request("erase", 400)
            return _error(400, str(exc))
        try:
            where = await run_in_threadpool(ctx.send_erase, user)
        except Exception as exc:  # the broker is down: nothing was erased, say so
            log.warning("could not send an erase request to %s: %s: %s", ctx.input_topic, type(exc).__name__, exc)
            metrics.request("erase", 503)
            return _error(503, f"could not send the erase request to the input topic ({type(exc).__name__})")
        key = ctx.key_of(user)
        await run_in_threadpool(ctx.store.write, [], {}, [key])  # a store that is down: the handler's 503
        ctx.lists_changed([key])
        metrics.request("erase", 202)
        return JSONResponse({"user_id": user, "topic": ctx.input_topic, **where}, status_code=202)

    async def users(request: Request) -> Response:
        """
        ---
        summary: Shoppers whose lists changed last (only with serve.list_users)
        parameters:
          - {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 1000, default: 20}}
        responses:
          200: {description: The shopper ids, newest first.}
          400: {description: A bad limit.}
          403: {description: Listing shoppers is off.}
        """
        if not ctx.access.list_users:
            metrics.request("users", 403)
            return _error(403, "listing shoppers is off (serve.list_users)")
        try:
            limit = int(request.query_params.get("limit", "20"))
            if not 1 <= limit <= 1000:
                raise ValueError
        except ValueError:
            metrics.request("users", 400)
            return _error(400, "limit must be an integer in 1..1000")
        found = await run_in_threadpool(ctx.store.recent_users, limit)
        metrics.request("users", 200)
        return JSONResponse({"users": [u for u in found if _listable(u)]})

    async def livez(request: Request) -> Response:
        """
        ---
        summary: Liveness (200 while the process answers)
        responses: {200: {description: Alive.}}
        """
        return JSONResponse({"status": "alive"})

    async def readyz(request: Request) -> Response:
        """
        ---
        summary: Readiness (200 once the lists' view is rebuilt), each follower's state
        responses: {200: {description: Ready.}, 503: {description: Catching up, reconnecting, or the store is down.}}
        """
        ready, body = readiness(ctx)
        body["shoppers"] = await run_in_threadpool(ctx.store.count)  # the store answers, or this is a 503
        return JSONResponse(body, status_code=200 if ready else 503)

    async def healthz(request: Request) -> Response:
        """
        ---
        summary: Health with counts (kept for compatibility)
        responses: {200: {description: ok.}, 503: {description: Catching up or degraded.}}
        """
        ok, body = await run_in_threadpool(health, ctx)
        return JSONResponse(body, status_code=200 if ok else 503)

    async def metrics_text(request: Request) -> Response:
        """
        ---
        summary: Prometheus metrics
        responses: {200: {description: The text exposition format.}}
        """
        text = await run_in_threadpool(metrics.render)  # some gauges read the store
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    async def page(request: Request) -> Response:
        html = resources.files("streamrec.serve").joinpath("static/index.html").read_text()
        return HTMLResponse(html)

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(404, "no such route")  # the path is not echoed: it may hold a shopper's id

    async def store_down(request: Request, exc: Exception) -> Response:
        log.warning("store unavailable on %s: %s", request.url.path, exc)
        return _error(503, "the service's store is unavailable; retry later",
                      headers={"Retry-After": str(STORE_RETRY_AFTER_S)})

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
    metrics.gauge("streamrec_serve_erased_total", "Shoppers' lists deleted by a tombstone on the topic (erasure).",
                  lambda: f.erased)
    metrics.gauge("streamrec_serve_ready", "1 once the view is rebuilt from the topic.", lambda: f.ready.is_set())
    metrics.gauge("streamrec_serve_catch_up_remaining", "Records left to read before the view is rebuilt.",
                  lambda: f.lag)
    metrics.gauge("streamrec_serve_shoppers", "Shoppers with a stored list.", ctx.store.count)
    metrics.gauge("streamrec_serve_stream_clients", "Open live-page streams.",
                  lambda: sum(len(s) for s in ctx.subscribers.values()))

    routes = [
        Route("/v1/users/{user_id}/recommendations", recommendations),
        Route("/v1/users/{user_id}/recommendations/stream", stream),
        Route("/v1/recommendations", batch),
        Route("/v1/users", users),
        Route("/v1/users/{user_id}", erase, methods=["DELETE"]),
        Route("/v1/events", send_event, methods=["POST"]),
        Route("/v1/sessions/recommendations", session, methods=["POST"]),
        Route("/v1/items/{item_id}/similar", similar),
        Route("/livez", livez),
        Route("/readyz", readyz),
        Route("/healthz", healthz),
        Route("/metrics", metrics_text),
        Route("/openapi.json", openapi_json, include_in_schema=False),
        Route("/docs", docs_page, include_in_schema=False),
        Route("/", page, include_in_schema=False),
    ]
    return Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(AccessGuard, access=ctx.access)],
                     exception_handlers={404: not_found, 500: internal, StoreUnavailable: store_down})


def _event_from_body(body: bytes, catalog: Catalog) -> Event:
    try:
        obj = json.loads(body)
    except ValueError as exc:
        raise BadRequest(f"body is not JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("body is nested too deeply") from None
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


def _guest(ctx: ServeContext) -> GuestRanker:
    if ctx.guest is None:
        raise Refused(404, "no model artifact here (ranking.artifact_dir): no guest lists or similar items")
    return ctx.guest


def _json_content(request: Request) -> None:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise Refused(415, "the body must be sent as Content-Type: application/json")


def _session_from_body(body: bytes, item_category: Mapping[Id, Id]) -> list[Event]:
    """``{"events": [{"item_id", "behavior"[, "category_id"][, "ts"]}, ...]}``: a guest's session, in order
    (without ``ts``, stamped now)."""
    try:
        obj = json.loads(body)
    except ValueError as exc:
        raise BadRequest(f"body is not JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("body is nested too deeply") from None
    events = obj.get("events") if isinstance(obj, dict) else None
    if not isinstance(events, list) or not events:
        raise BadRequest('body must be {"events": [{"item_id", "behavior"[, "category_id"][, "ts"]}, ...]}')
    if len(events) > MAX_SESSION_EVENTS:
        raise BadRequest(f"events takes at most {MAX_SESSION_EVENTS}, not {len(events)}")
    now = int(time.time() * 1000)
    out = []
    for i, e in enumerate(events):
        if not isinstance(e, dict) or "item_id" not in e or "behavior" not in e:
            raise BadRequest(f"events[{i}] must be an object with item_id and behavior")
        item = _body_id(e["item_id"], f"events[{i}].item_id")
        category = _body_id(e["category_id"], f"events[{i}].category_id") if "category_id" in e \
            else item_category.get(item, 0)
        if e["behavior"] not in BEHAVIORS:
            raise BadRequest(f"events[{i}].behavior must be one of {', '.join(BEHAVIORS)}")
        ts = e.get("ts", now)
        if not isinstance(ts, int) or isinstance(ts, bool) or not 0 <= ts <= now + 60_000:
            raise BadRequest(f"events[{i}].ts must be epoch milliseconds, not after now")
        out.append(Event(GUEST, item, category, e["behavior"], ts))
    return out


def _body_id(value: Any, name: str) -> Id:
    try:
        return canonical_id(value, name)
    except InvalidId as exc:
        raise BadRequest(f"invalid {name}: {exc.reason}") from None

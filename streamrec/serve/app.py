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
import time
from collections.abc import AsyncIterator
from importlib import resources

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from streamrec.serve.access import AccessGuard
from streamrec.serve.answers import health, listable, lookup, parse_id, readiness, session_answer, similar_answer
from streamrec.serve.bodies import event_from_body, require_json_content, session_from_body
from streamrec.serve.context import (
    MAX_EVENT_BODY,
    MAX_SESSION_BODY,
    SSE_HEARTBEAT_S,
    STORE_RETRY_AFTER_S,
    BadRequest,
    ClientError,
    Refused,
    ServeContext,
)
from streamrec.serve.guest import GuestRanker
from streamrec.serve.listing import (
    CACHE_CONTROL,
    ListQueryError,
    etag_matches,
    list_etag,
    parse_list_query,
    parse_users,
)
from streamrec.serve.openapi import docs_page, openapi_json
from streamrec.serve.store import StoreUnavailable

log = logging.getLogger(__name__)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


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
            require_json_content(request)
            events = session_from_body(await read_body(request, MAX_SESSION_BODY), guest.item_category)
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
            require_json_content(request)
            event = event_from_body(await read_body(request, MAX_EVENT_BODY), ctx.catalog)
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
        return JSONResponse({"users": [u for u in found if listable(u)]})

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


def _guest(ctx: ServeContext) -> GuestRanker:
    if ctx.guest is None:
        raise Refused(404, "no model artifact here (ranking.artifact_dir): no guest lists or similar items")
    return ctx.guest



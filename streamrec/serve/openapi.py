"""The lookup service's OpenAPI 3 document, generated from the routes themselves.

Starlette's schema generator walks the app's routes and reads each handler's docstring (YAML after
``---``): the paths and methods come from the routing table, the operation from the text next to
the code. The parameters the lookup routes share, and their bounds, are built here from
:mod:`streamrec.serve.listing`'s constants, so a bound is stated once. ``/docs`` renders the same
document as a page (no script from elsewhere: the service may run where the internet is not).
"""

from __future__ import annotations

import html
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute
from starlette.schemas import SchemaGenerator

from streamrec.about import package_version
from streamrec.serve.guest import MAX_SESSION_EVENTS
from streamrec.serve.listing import MAX_BATCH, MAX_EXCLUDE, MAX_N
from udfs.events import BEHAVIORS


def _query(name: str, description: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description, "schema": schema}


PARAMETERS: dict[str, dict[str, Any]] = {
    "user_id": {"name": "user_id", "in": "path", "required": True, "schema": {"type": "string"},
                "description": "The shopper's id (the id rule: docs/contracts.md 'Input events')."},
    "n": _query("n", "Items per page (all by default).", {"type": "integer", "minimum": 1, "maximum": MAX_N}),
    "offset": _query("offset", "Items to skip, after the filters.", {"type": "integer", "minimum": 0, "default": 0}),
    "exclude": _query("exclude", f"Comma-separated item ids to leave out (at most {MAX_EXCLUDE}; e.g. the cart).",
                      {"type": "string"}),
    "category": _query("category", "Only items of this category.", {"type": "string"}),
    "users": _query("users", f"Comma-separated shopper ids, at most {MAX_BATCH}.", {"type": "string"}, required=True),
}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]},
    "Event": {"type": "object", "required": ["user_id", "item_id", "behavior"],
              "properties": {"user_id": {}, "item_id": {}, "category_id": {},
                             "behavior": {"type": "string", "enum": list(BEHAVIORS)}}},
    "Session": {"type": "object", "required": ["events"], "properties": {"events": {
        "type": "array", "maxItems": MAX_SESSION_EVENTS, "items": {
            "type": "object", "required": ["item_id", "behavior"],
            "properties": {"item_id": {}, "category_id": {}, "ts": {"type": "integer"},
                           "behavior": {"type": "string", "enum": list(BEHAVIORS)}}}}}},
    "Batch": {"type": "object", "properties": {"users": {"type": "array",
                                                         "items": {"$ref": "#/components/schemas/Lookup"}}}},
    "Lookup": {
        "type": "object",
        "description": "A shopper's list as the lookup answers it (docs/serve.md 'Lookup service and live page').",
        "properties": {
            "user_id": {}, "known": {"type": "boolean"}, "trending": {"type": "boolean"},
            "model_version": {"type": "string", "nullable": True}, "seq": {"type": "integer", "nullable": True},
            "age_ms": {"type": "integer", "nullable": True}, "total": {"type": "integer"},
            "offset": {"type": "integer"},
            "filtered": {"type": "object", "properties": {k: {"type": "integer"} for k in
                                                          ("unavailable", "excluded", "other_category")}},
            "items": {"type": "array", "items": {"type": "object", "properties": {
                "item_id": {}, "score": {"type": "number", "nullable": True}, "reason": {"type": "object"},
                "because": {"type": "string"}, "category_id": {}, "title": {"type": "string"},
                "brand": {"type": "string"}, "price": {"type": "number"}}}},
        },
    },
}


RESPONSES: dict[str, dict[str, Any]] = {
    "BadRequest": {"description": "A bad id or parameter; the error names it.",
                   "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
}


def generator() -> SchemaGenerator:
    return SchemaGenerator({
        "openapi": "3.0.3",
        "info": {"title": "streamrec serve", "version": package_version(),
                 "description": "Per-shopper recommendation lists from the job's output topic."},
        "components": {"parameters": PARAMETERS, "schemas": SCHEMAS, "responses": RESPONSES,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    })


def document(routes: list[BaseRoute]) -> dict[str, Any]:
    return generator().get_schema(routes=routes)


async def openapi_json(request: Request) -> Response:
    return JSONResponse(document(request.app.routes))


def _cell(value: Any) -> str:
    return html.escape(str(value))


async def docs_page(request: Request) -> Response:
    """The document as a page: one section per path and method, its parameters and responses."""
    doc = document(request.app.routes)
    params = doc["components"]["parameters"]
    parts = [f"<h1>{_cell(doc['info']['title'])} {_cell(doc['info']['version'])}</h1>",
             f"<p>{_cell(doc['info']['description'])} The document: <a href='/openapi.json'>/openapi.json</a>.</p>"]
    for path, methods in sorted(doc.get("paths", {}).items()):
        for method, op in methods.items():
            parts.append(f"<h2><code>{_cell(method.upper())} {_cell(path)}</code></h2>"
                         f"<p>{_cell(op.get('summary', ''))}</p><p>{_cell(op.get('description', ''))}</p>")
            rows = []
            for p in op.get("parameters", []):
                p = params[p["$ref"].rsplit("/", 1)[1]] if "$ref" in p else p
                rows.append(f"<tr><td><code>{_cell(p['name'])}</code></td><td>{_cell(p['in'])}</td>"
                            f"<td>{_cell(p.get('description', ''))}</td></tr>")
            if rows:
                parts.append("<table><tr><th>parameter</th><th>in</th><th></th></tr>" + "".join(rows) + "</table>")
            parts.append("<ul>" + "".join(f"<li>{_cell(code)}: {_cell(r.get('description', ''))}</li>"
                                          for code, r in op.get("responses", {}).items()) + "</ul>")
    return HTMLResponse("<!doctype html><meta charset='utf-8'><title>streamrec serve API</title>"
                        "<style>body{font-family:sans-serif;max-width:60em;margin:auto}td{padding:0 1em}</style>"
                        + "".join(parts))

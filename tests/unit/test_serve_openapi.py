"""The lookup service's OpenAPI document (streamrec/serve/openapi.py) against its routes."""

from __future__ import annotations

from typing import Any

from starlette.routing import Route
from starlette.testclient import TestClient

from streamrec.serve.app import build_app
from streamrec.serve.context import ServeContext
from streamrec.serve.listing import MAX_N
from streamrec.serve.store import SqliteStore
from tests.support.serve_fixtures import StubFollower, open_access


def _app(tmp_path):
    ctx = ServeContext(store=SqliteStore(tmp_path / "s.sqlite", "recs"), follower=StubFollower(),  # type: ignore[arg-type]
                       send_event=lambda e: {}, input_topic="events", access=open_access())
    return build_app(ctx)


def undocumented(app, doc: dict[str, Any]) -> set[tuple[str, str]]:
    """(path, method) of every schema-included route that the document lacks, or documents without
    a summary or responses."""
    served = {(r.path, m.lower()) for r in app.routes if isinstance(r, Route) and r.include_in_schema
              for m in (r.methods or {"GET"}) if m != "HEAD"}
    return {(path, method) for path, method in served
            if not (op := doc["paths"].get(path, {}).get(method)) or not op.get("summary") or not op.get("responses")}


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [node["$ref"]] if "$ref" in node else [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def test_every_route_is_documented_with_its_methods_and_every_reference_resolves(tmp_path):
    app = _app(tmp_path)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        doc = client.get("/openapi.json").json()
        page = client.get("/docs")
    assert doc["openapi"].startswith("3.") and doc["info"]["title"] == "streamrec serve"
    assert undocumented(app, doc) == set()
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert ("/v1/users/{user_id}/recommendations", "get") in documented and ("/v1/events", "post") in documented
    for (path, method) in documented:
        op = doc["paths"][path][method]
        # a path parameter the route has is declared
        declared = {_resolve(doc, p["$ref"])["name"] if "$ref" in p else p["name"] for p in op.get("parameters", [])}
        assert ("{user_id}" in path) == ("user_id" in declared), (path, declared)
    for ref in _refs(doc):
        assert _resolve(doc, ref), ref
    assert doc["components"]["parameters"]["n"]["schema"]["maximum"] == MAX_N  # one bound, from the code
    assert page.status_code == 200 and "GET /v1/users/{user_id}/recommendations" in page.text
    assert "<script" not in page.text


def test_a_route_without_a_documented_operation_is_caught(tmp_path):
    """The rule above, planted: a route whose handler has no schema docstring shows up as undocumented."""
    app = _app(tmp_path)

    async def planted(request):  # noqa: ANN001
        raise AssertionError("not called")

    app.router.routes.append(Route("/v1/planted", planted))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        doc = client.get("/openapi.json").json()
    assert undocumented(app, doc) == {("/v1/planted", "get")}

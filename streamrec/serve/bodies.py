"""Request bodies read strictly: a posted event, a guest session, the ids in them; anything else is
a 400 naming the field."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request

from streamrec.serve.context import (
    GUEST,
    BadRequest,
    Catalog,
    Refused,
)
from streamrec.serve.guest import MAX_SESSION_EVENTS
from udfs.events import BEHAVIORS, Event, Id, InvalidId, canonical_id


def json_body(body: bytes) -> Any:
    """The parsed JSON of a request body, or :class:`BadRequest` saying why not."""
    try:
        return json.loads(body)
    except ValueError as exc:
        raise BadRequest(f"body is not JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("body is nested too deeply") from None


def event_from_body(body: bytes, catalog: Catalog) -> Event:
    obj = json_body(body)
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


def require_json_content(request: Request) -> None:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise Refused(415, "the body must be sent as Content-Type: application/json")


def session_from_body(body: bytes, item_category: Mapping[Id, Id]) -> list[Event]:
    """``{"events": [{"item_id", "behavior"[, "category_id"][, "ts"]}, ...]}``: a guest's session, in order
    (without ``ts``, stamped now)."""
    obj = json_body(body)
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

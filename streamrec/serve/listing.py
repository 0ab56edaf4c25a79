"""What one lookup shows of a stored list: read-time catalog rules, the caller's filters, a page.

A stored list is as old as the shopper's last event; the catalog moves in between. So the
lookup applies the followed catalog again when it answers: an item the catalog now says cannot
be sold (:attr:`udfs.catalog.CatalogItem.available`, the job's own rule) never leaves the API,
whatever the stored list says. Then the caller's filters (``exclude``: the items already in the
cart; ``category``) and the page (``offset``, ``n``). The response says how many items each step
took out, so a storefront can tell a short list from an empty catalog.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from udfs.catalog import CatalogItem
from udfs.errors import InputError
from udfs.events import Id, InvalidId, canonical_id

MAX_N = 1000
"""Largest page (``n``) a lookup returns."""
MAX_EXCLUDE = 200
"""Most ids ``exclude`` takes: a cart, not a catalog."""
MAX_BATCH = 100
"""Most shoppers one batch lookup takes."""
CACHE_CONTROL = "private, no-cache"
"""A shopper's list: a browser may keep it, a shared cache may not, and each use revalidates (a
304 when the ``ETag`` still matches)."""


class ListQueryError(InputError):
    """A lookup parameter that cannot be used; the message names it."""


@dataclass(frozen=True)
class ListQuery:
    """A lookup's filters and page: all items, in list order, by default."""

    n: int | None = None
    offset: int = 0
    exclude: frozenset[Id] = frozenset()
    category: Id | None = None


EVERYTHING = ListQuery()
"""No filter and no page: the whole list, as the live page's stream shows it."""


def _count(params: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    raw = params.get(name)
    if raw is None:
        return None
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ListQueryError(f"{name} must be a whole number from {low} to {high}, not {raw[:40]!r}")
    return int(raw)


def _id(raw: str, name: str) -> Id:
    try:
        return canonical_id(raw, name)
    except InvalidId as exc:
        raise ListQueryError(f"invalid {name}: {exc.reason}") from None


def parse_list_query(params: Mapping[str, str]) -> ListQuery:
    """``n``, ``offset``, ``exclude`` (comma-separated item ids) and ``category`` from a query string."""
    n = _count(params, "n", 1, MAX_N)
    offset = _count(params, "offset", 0, 1_000_000) or 0
    raw = params.get("exclude", "")
    parts = [p for p in raw.split(",") if p.strip()] if raw else []
    if len(parts) > MAX_EXCLUDE:
        raise ListQueryError(f"exclude takes at most {MAX_EXCLUDE} item ids, not {len(parts)}")
    exclude = frozenset(_id(p.strip(), "exclude item id") for p in parts)
    category = _id(params["category"], "category") if "category" in params else None
    return ListQuery(n, offset, exclude, category)


def shown(items: Sequence[dict[str, Any]], records: Mapping[Id, CatalogItem], query: ListQuery
          ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The response items of ``items`` (each with ``item_id`` and, where known, ``category_id``) after
    the catalog's rule, the filters and the page; and the counts: how many each step took out, and
    ``total`` (what a page can reach)."""
    sellable = [it for it in items if (rec := records.get(it["item_id"])) is None or rec.available]
    wanted = [it for it in sellable if it["item_id"] not in query.exclude]
    in_category = wanted if query.category is None else [it for it in wanted
                                                           if it.get("category_id") == query.category]
    end = None if query.n is None else query.offset + query.n
    return in_category[query.offset:end], {
        "total": len(in_category), "offset": query.offset,
        "filtered": {"unavailable": len(items) - len(sellable), "excluded": len(sellable) - len(wanted),
                     "other_category": len(wanted) - len(in_category)},
    }


def list_etag(body: Mapping[str, Any]) -> str:
    """A weak validator of a lookup's answer: everything in it but ``age_ms``, which grows by the
    millisecond while the list stays the same (a 304 leaves the client its earlier age)."""
    stable = {k: v for k, v in body.items() if k != "age_ms"}
    digest = hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()[:32]
    return f'W/"{digest}"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``etag`` (or is ``*``); weak comparison."""
    if not if_none_match:
        return False
    tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return "*" in tags or etag.removeprefix("W/") in tags


def parse_users(raw: str | None) -> list[str]:
    """The ``users`` of a batch lookup, comma-separated, in order, at most :data:`MAX_BATCH`."""
    users = [u.strip() for u in (raw or "").split(",") if u.strip()]
    if not users:
        raise ListQueryError("users must name at least one shopper id (users=ID,ID,...)")
    if len(users) > MAX_BATCH:
        raise ListQueryError(f"users takes at most {MAX_BATCH} shopper ids, not {len(users)}")
    return users

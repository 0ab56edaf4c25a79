"""What the service's routes share: the context, its limits, and the refusals a client gets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from streamrec.serve.access import Access
from streamrec.serve.follower import Follower
from streamrec.serve.guest import GuestRanker
from streamrec.serve.serve_metrics import ServeMetrics
from streamrec.serve.store import Store
from udfs.config import ServeConfig
from udfs.errors import InputError
from udfs.events import Event, Id

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

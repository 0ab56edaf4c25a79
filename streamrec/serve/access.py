"""Who may use `streamrec serve`, checked before any route runs or any body is read.

- ``Host`` must be one of ``serve.allowed_hosts`` (loopback names by default): a page of another
  site that rebinds its DNS name to 127.0.0.1 still sends its own name, and gets a 400.
- With a token (``serve.api_token_file`` or ``serve.api_token_env``; required when the service
  binds beyond loopback), every request but the probes and the scrape (:data:`OPEN_PATHS`, which
  hold no shopper data) must send ``Authorization: Bearer TOKEN``, else 401.
- A write (any method but GET and HEAD) from a browser of another origin (its ``Origin`` is
  neither the service's own nor one of ``serve.allowed_origins``) is a 403: a form or ``fetch``
  of another site cannot send events in a shopper's name.

The token is read like the pseudonym key (:mod:`udfs.privacy`): from a file or a variable, trailing
whitespace removed, never a config value, never shown (an :class:`ApiToken` shows its source only).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from udfs.config import ConfigError, ServeConfig
from udfs.privacy import strip_key

MIN_TOKEN_BYTES = 16
OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})
"""Probes and the Prometheus scrape: counts and states only, reachable without the token."""
SAFE_METHODS = frozenset({"GET", "HEAD"})


class ApiToken:
    """The bearer token, read from its source; its repr shows the source only."""

    __slots__ = ("_token", "source")

    def __init__(self, token: bytes, source: str) -> None:
        if len(token) < MIN_TOKEN_BYTES:
            raise ConfigError(f"{source}: the API token has {len(token)} bytes, at least {MIN_TOKEN_BYTES} needed "
                              "(e.g. `openssl rand -hex 32`)")
        self._token = token
        self.source = source

    def matches(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header carries this token (compared in constant time)."""
        scheme, _, presented = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode("utf-8"), self._token)

    def __repr__(self) -> str:
        return f"ApiToken(source={self.source!r})"

    __str__ = __repr__


def load_api_token(serve: ServeConfig, environ: Mapping[str, str] | None = None) -> ApiToken | None:
    """The token from ``serve.api_token_file`` or ``serve.api_token_env`` (None: neither is set);
    errors name the source, never the token."""
    env = os.environ if environ is None else environ
    if serve.api_token_file:
        source = f"serve.api_token_file ({serve.api_token_file})"
        try:
            raw = Path(serve.api_token_file).read_bytes()
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read the API token: {exc.strerror}") from None
    elif serve.api_token_env:
        source = f"serve.api_token_env (${serve.api_token_env})"
        if serve.api_token_env not in env:
            raise ConfigError(f"{source}: environment variable {serve.api_token_env!r} is not set")
        raw = env[serve.api_token_env].encode("utf-8")
    else:
        return None
    return ApiToken(strip_key(raw), source)


@dataclass(frozen=True)
class Access:
    """The service's access settings (``serve.*``), the token read."""

    token: ApiToken | None
    allowed_hosts: tuple[str, ...]
    allowed_origins: tuple[str, ...]
    accept_events: bool
    list_users: bool

    @classmethod
    def from_config(cls, serve: ServeConfig, environ: Mapping[str, str] | None = None) -> Access:
        return cls(load_api_token(serve, environ), serve.allowed_hosts, serve.allowed_origins,
                   serve.accept_events, serve.list_users)

    def refusal(self, headers: Headers, method: str, path: str) -> tuple[int, str] | None:
        """The status and message that refuse this request, or None to let it through."""
        host = headers.get("host", "")
        if "*" not in self.allowed_hosts and host_name(host) not in self.allowed_hosts:
            return 400, "Host header not allowed (serve.allowed_hosts)"
        if self.token is not None and path not in OPEN_PATHS and not self.token.matches(headers.get("authorization")):
            return 401, "missing or wrong API token (Authorization: Bearer TOKEN)"
        origin = headers.get("origin")
        if method not in SAFE_METHODS and origin is not None and not self._own_or_allowed(origin, host):
            return 403, "writes from another origin are refused (serve.allowed_origins)"
        return None

    def _own_or_allowed(self, origin: str, host: str) -> bool:
        origin = origin.lower()
        return origin in self.allowed_origins or (origin != "null" and urlsplit(origin).netloc == host.lower())


def host_name(host: str) -> str:
    """The name of a ``Host`` header, without the port (``[::1]:8080`` -> ``::1``)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class AccessGuard:
    """ASGI middleware answering a refused request itself: the route and its body are never reached."""

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refused = self.access.refusal(Headers(scope=scope), scope["method"], scope["path"])
            if refused is not None:
                status, message = refused
                extra: dict[str, Any] = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
                await JSONResponse({"error": message}, status_code=status, headers=extra)(scope, receive, send)
                return
        await self.app(scope, receive, send)

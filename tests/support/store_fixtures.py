"""Fixtures for the serve view's stores: a real redis-server per session, and ``make_store``, which
opens either backend, so the store tests run against SQLite and Redis alike."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from streamrec.lab.local.kafka import free_ports
from streamrec.serve.store import RedisStore, SqliteStore, Store
from tests.conftest import _missing

REDIS_SERVER = "redis-server"


class RedisServer:
    """One Debian redis-server on a free loopback port, without persistence (each test uses its own
    key prefix); ``url`` once it answers PING."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_ports(1)[0]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> None:
        log = (self.workdir / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--daemonize", "no"], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)  # PING: the protocol answers, not just TCP
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited {self.proc.returncode}: "
                                       f"{(self.workdir / 'redis.log').read_text()[-2000:]}")
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} did not answer PING in {timeout_s:.0f}s")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A running redis-server; skipped locally (failed under CI) without Debian's redis-server."""
    if shutil.which(REDIS_SERVER) is None:
        _missing("redis-server is missing: `make redis` (apt-get install -y redis-server)")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


_prefix_counter = itertools.count(1)


class StoreFactory:
    """Opens the view store of one backend by name; ``wipe(name)`` is the backend's "delete the store"."""

    def __init__(self, backend: str, tmp_path: Path, redis_url: str | None) -> None:
        self.backend = backend
        self.tmp_path = tmp_path
        self.redis_url = redis_url
        self._run = next(_prefix_counter)

    def _prefix(self, name: str) -> str:
        return f"test{self._run}:{name}"

    def __call__(self, name: str, topic: str) -> Store:
        if self.backend == "redis":
            assert self.redis_url is not None
            return RedisStore(self.redis_url, topic, prefix=self._prefix(name))
        return SqliteStore(self.tmp_path / f"{name}.sqlite", topic)

    def wipe(self, name: str) -> None:
        if self.backend == "redis":
            client = redis.Redis.from_url(self.redis_url)
            keys = list(client.scan_iter(match=f"{self._prefix(name)}:*"))
            if keys:
                client.delete(*keys)
            client.close()
        else:
            (self.tmp_path / f"{name}.sqlite").unlink()


@pytest.fixture(params=["sqlite", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """``make_store(name, topic)``: a store of the parametrized backend (the test runs once per backend)."""
    url = request.getfixturevalue("redis_server").url if request.param == "redis" else None
    return StoreFactory(request.param, tmp_path, url)

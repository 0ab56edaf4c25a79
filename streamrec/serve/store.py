"""The serve view: the latest list per shopper, the latest catalog record per item, and the
positions read in both topics.

Two implementations of one :class:`Store` protocol, chosen by ``serve.store``:

- :class:`SqliteStore` (the default): one file; each reader thread opens its own
  connection (WAL: readers never wait for the writer).
- :class:`RedisStore`: a Redis server at ``serve.redis_url`` (the ``redis`` client comes
  with the ``serve`` extra), for a view kept outside the service's machine or shared by
  several of its instances' readers.

Both write lists (or catalog records) and positions in one transaction (SQLite's, or
MULTI/EXEC), so after a restart each follower resumes exactly after the last record it
stored, and an empty store is rebuilt from the topics' start. One writer per topic (its
follower thread). Catalog records follow the job's rule (``udfs.catalog.Catalog.apply``):
a record replaces an item's stored one only when its ``updated_at`` is later.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

import msgpack
import msgspec

from udfs.catalog import CatalogItem, catalog_key
from udfs.errors import StreamrecError
from udfs.events import Id
from udfs.records import OutputRecord

SCHEMA = """
CREATE TABLE IF NOT EXISTS lists (
  user_key TEXT PRIMARY KEY,
  body BLOB NOT NULL,
  generated_at INTEGER NOT NULL,
  stored_at INTEGER NOT NULL,
  partition INTEGER NOT NULL,
  offset INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS lists_by_time ON lists (stored_at);
CREATE TABLE IF NOT EXISTS positions (
  partition INTEGER PRIMARY KEY,
  next_offset INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
  item_key TEXT PRIMARY KEY,
  body TEXT NOT NULL,
  updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS catalog_positions (
  partition INTEGER PRIMARY KEY,
  next_offset INTEGER NOT NULL
);
"""


REDIS_TIMEOUT_S = 2.0
"""Connect and socket timeout of the Redis client: a Redis that is down or stuck fails a request fast
(a 503) instead of holding it."""

P = ParamSpec("P")
R = TypeVar("R")


class StoreUnavailable(StreamrecError, RuntimeError):
    """The store cannot be reached now (Redis down or stuck): the routes answer 503 with Retry-After."""


@dataclass(frozen=True)
class Stored:
    """One shopper's latest list as stored: the decoded record and where it came from."""

    record: OutputRecord
    partition: int
    offset: int


# How SQLite holds a list: the checked record as msgpack (a tenth of the cost of JSON to write, which bounded
# a rebuild). A store written in another format is emptied and rebuilt from the topic.
LISTS_FORMAT = "msgpack-1"


_blob_encoder = msgspec.msgpack.Encoder()  # the same msgpack bytes as msgpack.packb, a third faster


def record_blob(rec: OutputRecord) -> bytes:
    return _blob_encoder.encode(rec._asdict())


def record_from_blob(blob: bytes) -> dict[str, Any]:
    return msgpack.unpackb(blob, raw=False)


def record_json(rec: OutputRecord) -> str:
    return json.dumps(rec._asdict(), separators=(",", ":"))


def item_json(item: CatalogItem) -> str:
    return json.dumps(item.to_wire(), separators=(",", ":"))


def item_from_json(body: str) -> CatalogItem:
    return CatalogItem(**json.loads(body))


def latest_per_item(items: Iterable[CatalogItem]) -> dict[str, CatalogItem]:
    """Each item's latest record of a batch by ``updated_at`` (a tie keeps the first read), by item key."""
    out: dict[str, CatalogItem] = {}
    for item in items:
        key = catalog_key(item.item_id)
        current = out.get(key)
        if current is None or item.updated_at > current.updated_at:
            out[key] = item
    return out


class Store(Protocol):
    """What the follower writes and the routes read; a store of another topic starts empty."""

    topic: str

    def positions(self) -> dict[int, int]:
        """Next offset to read, by partition (empty: rebuild from the topic's start)."""
        ...

    def write(self, records: Iterable[tuple[OutputRecord, int, int]], positions: dict[int, int],
              erased: Collection[str] = ()) -> int:
        """Store ``(record, partition, offset)``, delete the lists of the ``erased`` shopper keys, and store
        the positions reached, atomically; the lists written. A key is in one of the two at most."""
        ...

    def get(self, user_key: str) -> Stored | None: ...

    def count(self) -> int: ...

    def recent_users(self, limit: int) -> list[Any]:
        """The shoppers whose lists changed last, newest first (the page's picker)."""
        ...

    def trending(self, size: int, window: int) -> list[Any]:
        """The trending list over the ``window`` most recently stored lists (:func:`count_trending`)."""
        ...

    def catalog_positions(self) -> dict[int, int]:
        """Next offset to read in the catalog topic, by partition."""
        ...

    def write_items(self, items: Iterable[CatalogItem], positions: dict[int, int]) -> int:
        """Store catalog records whose ``updated_at`` is later than the item's stored one, and the catalog
        positions reached, atomically; the records taken."""
        ...

    def items(self, ids: Iterable[Id]) -> dict[Id, CatalogItem]:
        """The stored catalog records of these items (those the catalog has)."""
        ...

    def item_count(self) -> int: ...

    def close(self) -> None: ...


def count_trending(records: Iterable[Mapping[str, Any]], size: int) -> list[Any]:
    """Items most often listed in these stored lists (as maps), counting an item placed for a
    trending or fresh-hit reason twice (those say it is hot shop-wide); ties by the item's JSON."""
    counts: Counter[str] = Counter()
    ids: dict[str, Any] = {}
    for rec in records:
        reasons = rec["reasons"] or [{}] * len(rec["items"])
        for item, reason in zip(rec["items"], reasons):
            key = json.dumps(item)
            ids[key] = item
            counts[key] += 2 if reason.get("code") in ("trending", "fresh_hit") else 1
    return [ids[k] for k, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:size]]


def _sqlite_available(method: Callable[Concatenate[SqliteStore, P], R]) -> Callable[Concatenate[SqliteStore, P], R]:
    """An SQLite file that cannot be used now (locked past the busy timeout, an I/O error, a full disk,
    a file that cannot be opened, a file that is not or no longer a database) is :class:`StoreUnavailable`,
    a 503, as a Redis that is down; other SQLite errors (integrity, programming) are bugs and stay errors."""

    @functools.wraps(method)
    def call(self: SqliteStore, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            if not isinstance(exc, sqlite3.OperationalError) and type(exc) is not sqlite3.DatabaseError:
                raise
            raise StoreUnavailable(f"the SQLite store cannot be used now ({exc})") from exc

    return call


class SqliteStore:
    """SQLite file at ``path`` holding the view of ``topic``; a store of another topic is emptied."""

    def __init__(self, path: str | Path, topic: str, catalog_topic: str = "") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.topic = topic
        self.catalog_topic = catalog_topic
        self._local = threading.local()
        con = self._con()
        with con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(SCHEMA)
            for key, value, tables, unmarked in (
                    ("topic", topic, ("lists", "positions"), False),
                    ("catalog_topic", catalog_topic, ("items", "catalog_positions"), False),
                    ("lists_format", LISTS_FORMAT, ("lists", "positions"), True)):  # unmarked: an older format
                row = con.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
                if (row[0] != value) if row is not None else unmarked:
                    for table in tables:
                        con.execute(f"DELETE FROM {table}")
                con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def _con(self) -> sqlite3.Connection:
        """This thread's connection."""
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            con.execute("PRAGMA synchronous=NORMAL")
            con.execute("PRAGMA mmap_size=1073741824")  # lookups read mapped pages, not copies through read()
            self._local.con = con
        return con

    @_sqlite_available
    def positions(self) -> dict[int, int]:
        """Next offset to read, by partition."""
        return dict(self._con().execute("SELECT partition, next_offset FROM positions").fetchall())

    @_sqlite_available
    def write(self, records: Iterable[tuple[OutputRecord, int, int]], positions: dict[int, int],
              erased: Collection[str] = ()) -> int:
        """Store ``(record, partition, offset)`` (a later offset replaces a shopper's list), delete the
        ``erased`` shoppers' lists, and store the positions reached, in one transaction; the number of
        lists written."""
        now = int(time.time() * 1000)
        rows = [(str(r.user_id), record_blob(r), r.generated_at, now, p, o) for r, p, o in records]
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            con.executemany("INSERT OR REPLACE INTO lists VALUES (?, ?, ?, ?, ?, ?)", rows)
            con.executemany("DELETE FROM lists WHERE user_key=?", [(key,) for key in erased])
            con.executemany("INSERT OR REPLACE INTO positions VALUES (?, ?)", positions.items())
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return len(rows)

    @_sqlite_available
    def get(self, user_key: str) -> Stored | None:
        row = self._con().execute("SELECT body, partition, offset FROM lists WHERE user_key=?",
                                  (user_key,)).fetchone()
        if row is None:
            return None
        return Stored(OutputRecord(**record_from_blob(row[0])), row[1], row[2])

    @_sqlite_available
    def count(self) -> int:
        return int(self._con().execute("SELECT count(*) FROM lists").fetchone()[0])

    @_sqlite_available
    def recent_users(self, limit: int) -> list[Any]:
        """The shoppers whose lists changed last, newest first (the page's picker)."""
        rows = self._con().execute("SELECT body FROM lists ORDER BY stored_at DESC, offset DESC LIMIT ?",
                                   (limit,)).fetchall()
        return [record_from_blob(b)["user_id"] for (b,) in rows]

    @_sqlite_available
    def trending(self, size: int, window: int) -> list[Any]:
        rows = self._con().execute("SELECT body FROM lists ORDER BY stored_at DESC, offset DESC LIMIT ?",
                                   (window,)).fetchall()
        return count_trending((record_from_blob(body) for (body,) in rows), size)

    @_sqlite_available
    def catalog_positions(self) -> dict[int, int]:
        return dict(self._con().execute("SELECT partition, next_offset FROM catalog_positions").fetchall())

    @_sqlite_available
    def write_items(self, items: Iterable[CatalogItem], positions: dict[int, int]) -> int:
        latest = latest_per_item(items)
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            taken = 0
            for key, item in latest.items():
                cur = con.execute("INSERT INTO items VALUES (?, ?, ?) ON CONFLICT(item_key) DO UPDATE SET "
                                  "body=excluded.body, updated_at=excluded.updated_at "
                                  "WHERE excluded.updated_at > items.updated_at",
                                  (key, item_json(item), item.updated_at))
                taken += cur.rowcount
            con.executemany("INSERT OR REPLACE INTO catalog_positions VALUES (?, ?)", positions.items())
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return taken

    @_sqlite_available
    def items(self, ids: Iterable[Id]) -> dict[Id, CatalogItem]:
        keys = {catalog_key(i): i for i in ids}
        if not keys:
            return {}
        marks = ",".join("?" * len(keys))
        rows = self._con().execute(f"SELECT item_key, body FROM items WHERE item_key IN ({marks})",
                                   list(keys)).fetchall()
        return {keys[k]: item_from_json(body) for k, body in rows}

    @_sqlite_available
    def item_count(self) -> int:
        return int(self._con().execute("SELECT count(*) FROM items").fetchone()[0])

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None


def _reachable(method: Callable[Concatenate[RedisStore, P], R]) -> Callable[Concatenate[RedisStore, P], R]:
    """Checks the view's topics on the first call that reaches Redis, and turns a Redis that cannot be
    reached into :class:`StoreUnavailable` (the message names no address)."""

    @functools.wraps(method)
    def call(self: RedisStore, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            if not self._checked:
                self._check_topics()
            return method(self, *args, **kwargs)
        except self._down as exc:
            raise StoreUnavailable(f"the Redis store is unreachable ({type(exc).__name__})") from exc

    return call


class RedisStore:
    """The view of ``topic`` in Redis at ``url``, under keys ``{prefix}:*``; a view of another topic
    there is deleted first.

    Keys: ``lists`` (hash: user key -> JSON of the record, partition and offset), ``recent``
    (sorted set: user key by store sequence, so "most recently stored" is one ZREVRANGE),
    ``seq`` (that sequence's counter), ``positions`` (hash: partition -> next offset), ``topic``;
    for the catalog ``items`` (hash: item key -> JSON of the record), ``catalog_positions`` and
    ``catalog_topic``. The later-``updated_at`` check reads the stored records before MULTI: sound
    because the catalog follower is the one writer of ``items``.
    Whether the view survives a Redis restart is the server's persistence setting (AOF or RDB);
    one that comes back empty is rebuilt from the topic like a deleted SQLite file.
    Nothing is sent to Redis before the first call, so the service starts (and answers 503) while
    Redis is down.
    """

    def __init__(self, url: str, topic: str, prefix: str = "streamrec:serve", catalog_topic: str = "",
                 timeout_s: float = REDIS_TIMEOUT_S) -> None:
        try:
            import redis  # lazy: the serve extra's Redis client, needed only with serve.store = "redis"
        except ImportError as exc:
            raise ImportError(f"serve.store = \"redis\" needs the redis client of the 'serve' extra: {exc}",
                              name="redis") from exc

        self.topic = topic
        self.catalog_topic = catalog_topic
        self.prefix = prefix
        self._r: Any = redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=timeout_s,
                                            socket_timeout=timeout_s)
        self._down: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)
        self._checked = False
        self._lists, self._recent = f"{prefix}:lists", f"{prefix}:recent"
        self._seq, self._positions = f"{prefix}:seq", f"{prefix}:positions"
        self._items, self._catalog_positions = f"{prefix}:items", f"{prefix}:catalog_positions"

    def _check_topics(self) -> None:
        """A view of another topic is deleted, once, before the first read or write."""
        p = self.prefix
        for meta, value, keys in ((f"{p}:topic", self.topic, (self._lists, self._recent, self._seq, self._positions)),
                                  (f"{p}:catalog_topic", self.catalog_topic, (self._items, self._catalog_positions))):
            stored = self._r.get(meta)
            if stored is not None and stored != value:
                self._r.delete(*keys)  # the view of another topic
            self._r.set(meta, value)
        self._checked = True

    @_reachable
    def positions(self) -> dict[int, int]:
        return {int(p): int(o) for p, o in self._r.hgetall(self._positions).items()}

    @_reachable
    def write(self, records: Iterable[tuple[OutputRecord, int, int]], positions: dict[int, int],
              erased: Collection[str] = ()) -> int:
        """One MULTI/EXEC: the lists (a later offset first in ``recent``), the ``erased`` shoppers' lists
        deleted, and the positions reached."""
        rows = sorted(records, key=lambda rpo: rpo[2])
        first = int(self._r.incrby(self._seq, len(rows))) - len(rows) + 1 if rows else 0
        pipe = self._r.pipeline(transaction=True)
        if erased:
            pipe.hdel(self._lists, *erased)
            pipe.zrem(self._recent, *erased)
        if rows:
            pipe.hset(self._lists, mapping={
                str(r.user_id): json.dumps({"b": record_json(r), "p": p, "o": o}, separators=(",", ":"))
                for r, p, o in rows})
            pipe.zadd(self._recent, {str(r.user_id): first + i for i, (r, _, _) in enumerate(rows)})
        if positions:
            pipe.hset(self._positions, mapping={str(p): o for p, o in positions.items()})
        pipe.execute()
        return len(rows)

    @_reachable
    def get(self, user_key: str) -> Stored | None:
        raw = self._r.hget(self._lists, user_key)
        if raw is None:
            return None
        row = json.loads(raw)
        return Stored(OutputRecord(**json.loads(row["b"])), row["p"], row["o"])

    @_reachable
    def count(self) -> int:
        return int(self._r.hlen(self._lists))

    def _recent_bodies(self, limit: int) -> list[str]:
        keys = self._r.zrevrange(self._recent, 0, limit - 1)
        if not keys:
            return []
        return [json.loads(raw)["b"] for raw in self._r.hmget(self._lists, keys) if raw is not None]

    @_reachable
    def recent_users(self, limit: int) -> list[Any]:
        return [json.loads(b)["user_id"] for b in self._recent_bodies(limit)]

    @_reachable
    def trending(self, size: int, window: int) -> list[Any]:
        return count_trending(map(json.loads, self._recent_bodies(window)), size)

    @_reachable
    def catalog_positions(self) -> dict[int, int]:
        return {int(p): int(o) for p, o in self._r.hgetall(self._catalog_positions).items()}

    @_reachable
    def write_items(self, items: Iterable[CatalogItem], positions: dict[int, int]) -> int:
        latest = latest_per_item(items)
        keys = list(latest)
        stored = self._r.hmget(self._items, keys) if keys else []
        taken = {k: item_json(latest[k]) for k, old in zip(keys, stored)
                 if old is None or latest[k].updated_at > json.loads(old)["updated_at"]}
        pipe = self._r.pipeline(transaction=True)
        if taken:
            pipe.hset(self._items, mapping=taken)
        if positions:
            pipe.hset(self._catalog_positions, mapping={str(p): o for p, o in positions.items()})
        pipe.execute()
        return len(taken)

    @_reachable
    def items(self, ids: Iterable[Id]) -> dict[Id, CatalogItem]:
        keys = {catalog_key(i): i for i in ids}
        if not keys:
            return {}
        bodies = self._r.hmget(self._items, list(keys))
        return {i: item_from_json(b) for i, b in zip(keys.values(), bodies) if b is not None}

    @_reachable
    def item_count(self) -> int:
        return int(self._r.hlen(self._items))

    def close(self) -> None:
        self._r.close()

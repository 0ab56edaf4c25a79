"""The serve view: the latest list per shopper and the topic positions read, in SQLite.

Lists and positions are written in one transaction, so after a restart the follower
resumes exactly after the last list it stored. One writer (the follower thread); each
reader thread opens its own connection (WAL: readers never wait for the writer).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from udfs.records import OutputRecord

SCHEMA = """
CREATE TABLE IF NOT EXISTS lists (
  user_key TEXT PRIMARY KEY,
  body TEXT NOT NULL,
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
"""


@dataclass(frozen=True)
class Stored:
    """One shopper's latest list as stored: the decoded record and where it came from."""

    record: OutputRecord
    partition: int
    offset: int


def record_json(rec: OutputRecord) -> str:
    return json.dumps(rec._asdict(), separators=(",", ":"))


class Store:
    """SQLite file at ``path`` holding the view of ``topic``; a store of another topic is emptied."""

    def __init__(self, path: str | Path, topic: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.topic = topic
        self._local = threading.local()
        con = self._con()
        with con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(SCHEMA)
            row = con.execute("SELECT value FROM meta WHERE key='topic'").fetchone()
            if row is not None and row[0] != topic:
                con.execute("DELETE FROM lists")
                con.execute("DELETE FROM positions")
            con.execute("INSERT OR REPLACE INTO meta VALUES ('topic', ?)", (topic,))

    def _con(self) -> sqlite3.Connection:
        """This thread's connection."""
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            con.execute("PRAGMA synchronous=NORMAL")
            con.execute("PRAGMA mmap_size=1073741824")  # lookups read mapped pages, not copies through read()
            self._local.con = con
        return con

    def positions(self) -> dict[int, int]:
        """Next offset to read, by partition."""
        return dict(self._con().execute("SELECT partition, next_offset FROM positions").fetchall())

    def write(self, records: Iterable[tuple[OutputRecord, int, int]], positions: dict[int, int]) -> int:
        """Store ``(record, partition, offset)`` (a later offset replaces a shopper's list) and the
        positions reached, in one transaction; the number of lists written."""
        now = int(time.time() * 1000)
        rows = [(str(r.user_id), record_json(r), r.generated_at, now, p, o) for r, p, o in records]
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            con.executemany("INSERT OR REPLACE INTO lists VALUES (?, ?, ?, ?, ?, ?)", rows)
            con.executemany("INSERT OR REPLACE INTO positions VALUES (?, ?)", positions.items())
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return len(rows)

    def get(self, user_key: str) -> Stored | None:
        row = self._con().execute("SELECT body, partition, offset FROM lists WHERE user_key=?",
                                  (user_key,)).fetchone()
        if row is None:
            return None
        return Stored(OutputRecord(**json.loads(row[0])), row[1], row[2])

    def count(self) -> int:
        return int(self._con().execute("SELECT count(*) FROM lists").fetchone()[0])

    def recent_users(self, limit: int) -> list[Any]:
        """The shoppers whose lists changed last, newest first (the page's picker)."""
        rows = self._con().execute("SELECT body FROM lists ORDER BY stored_at DESC, offset DESC LIMIT ?",
                                   (limit,)).fetchall()
        return [json.loads(b)["user_id"] for (b,) in rows]

    def trending(self, size: int, window: int) -> list[Any]:
        """Items most often listed across the ``window`` most recently stored lists, counting an item
        placed for a trending or fresh-hit reason twice (those say it is hot shop-wide)."""
        counts: Counter[str] = Counter()
        ids: dict[str, Any] = {}
        rows = self._con().execute("SELECT body FROM lists ORDER BY stored_at DESC, offset DESC LIMIT ?",
                                   (window,)).fetchall()
        for (body,) in rows:
            rec = json.loads(body)
            reasons = rec["reasons"] or [{}] * len(rec["items"])
            for item, reason in zip(rec["items"], reasons):
                key = json.dumps(item)
                ids[key] = item
                counts[key] += 2 if reason.get("code") in ("trending", "fresh_hit") else 1
        return [ids[k] for k, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:size]]

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

"""Behavior logs on disk: the UserBehavior CSV layout and msgpack replay files.

The job's file source, training, evaluation and the tools all read logs here,
so a log loads the same way wherever it is used.
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import IO

import msgpack

from udfs.events import BEHAVIORS, FIELDS, INT64_MAX, MAX_TS_MS, Event, encode_event

log = logging.getLogger(__name__)

# 2017-11-25 00:00 to 2017-12-04 00:00 China Standard Time (UTC+8), end exclusive.
TAOBAO_SPAN_MS: tuple[int, int] = (1_511_539_200_000, 1_512_316_800_000)
MAX_EXAMPLES = 5
MSGPACK_SUFFIXES = (".msgpack", ".mpk")
FORMATS = ("auto", "userbehavior", "generated")


# --------------------------------------------------------------------------- real data


@dataclass
class LoadResult:
    """Events plus what was skipped, so a caller can tell a clean load from a lossy one."""

    events: list[Event] = field(default_factory=list)
    rows: int = 0
    malformed: int = 0
    malformed_examples: list[tuple[int, str]] = field(default_factory=list)
    out_of_span: int = 0
    out_of_span_examples: list[tuple[int, int]] = field(default_factory=list)

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)

    def behavior_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(BEHAVIORS, 0)
        for e in self.events:
            counts[e.behavior] += 1
        return counts


def _open_text(path: str | Path) -> IO[str]:
    p = str(path)
    if p.endswith(".gz"):
        return gzip.open(p, "rt", encoding="utf-8", newline="")
    return open(p, encoding="utf-8", newline="")


def _parse_row(line: str) -> Event | str:
    parts = line.rstrip("\r\n").split(",")
    if len(parts) != 5:
        return f"expected 5 fields, got {len(parts)}"
    try:
        user, item, cat, ts_s = int(parts[0]), int(parts[1]), int(parts[2]), int(parts[4])
    except ValueError as exc:
        return f"not an integer: {exc}"
    for name, v in (("user_id", user), ("item_id", item), ("category_id", cat)):
        if not 0 <= v <= INT64_MAX:
            return f"{name} {v} out of range"
    behavior = parts[3].strip()
    if behavior not in BEHAVIORS:
        return f"unknown behavior {behavior[:16]!r}"
    ts = ts_s * 1000
    if not 0 <= ts < MAX_TS_MS:
        return f"timestamp {ts_s} is not Unix seconds"
    return Event(user, item, cat, behavior, ts)


def load_userbehavior(
    path: str | Path,
    *,
    sort: bool = False,
    drop_out_of_span: bool = True,
    span_ms: tuple[int, int] = TAOBAO_SPAN_MS,
) -> LoadResult:
    """Parse a UserBehavior CSV (no header; ts in seconds) into events with ts in ms.

    Bad lines are skipped and counted rather than raised: the original data has
    them and one line must not cost a whole load. Rows outside ``span_ms`` are
    dropped by default because a single far-future timestamp would advance a
    replay's watermark and make every later event late. ``sort`` orders stably
    by ts, since the published file is grouped by user, not by time.
    """
    lo, hi = span_ms
    res = LoadResult()
    events = res.events
    with _open_text(path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            res.rows += 1
            ev = _parse_row(line)
            if isinstance(ev, str):
                res.malformed += 1
                if len(res.malformed_examples) < MAX_EXAMPLES:
                    res.malformed_examples.append((line_no, ev))
                continue
            if drop_out_of_span and not lo <= ev.ts < hi:
                res.out_of_span += 1
                if len(res.out_of_span_examples) < MAX_EXAMPLES:
                    res.out_of_span_examples.append((line_no, ev.ts))
                continue
            events.append(ev)
    if sort:
        events.sort(key=attrgetter("ts"))
    return res


def write_userbehavior_csv(events: Iterable[Event], path: str | Path) -> int:
    """Write the Taobao CSV format so generated data feeds anything that reads the real one.

    The format has second resolution: ts is floored to seconds (the generator
    emits whole seconds, so its output round-trips exactly).
    """
    n = 0
    with open(path, "w", encoding="utf-8", newline="") as f:
        write = f.write
        for e in events:
            write(f"{e.user_id},{e.item_id},{e.category_id},{e.behavior},{e.ts // 1000}\n")
            n += 1
    return n


# --------------------------------------------------------------------------- replay files


def write_events_msgpack(events: Iterable[Event], path: str | Path) -> int:
    """Write the Kafka topic's wire format (concatenated msgpack maps) for replay."""
    n = 0
    with open(path, "wb") as f:
        for e in events:
            f.write(encode_event(e))
            n += 1
    return n


def iter_events_msgpack(path: str | Path) -> Iterator[Event]:
    """Stream a replay file back; a broken record raises, since we wrote the file ourselves."""
    with open(path, "rb") as f:
        for i, obj in enumerate(msgpack.Unpacker(f, raw=False, strict_map_key=False)):
            if not isinstance(obj, dict) or any(k not in obj for k in FIELDS):
                raise ValueError(f"{path}: record {i} is not an event map: {obj!r:.100}")
            yield Event(*(obj[k] for k in FIELDS))


def read_events_msgpack(path: str | Path) -> list[Event]:
    return list(iter_events_msgpack(path))




# --------------------------------------------------------------------------- any log file


def load_events(path: str | Path, fmt: str = "auto", *, sort: bool = False) -> list[Event]:
    """A UserBehavior CSV or a msgpack replay file (``auto``: by suffix), as events.

    ``sort`` orders stably by event time (the published CSV is grouped by user).
    What the CSV loader skipped is logged, and a log with no event left is an
    error: an empty run must never look like a clean one.
    """
    p = Path(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; known: {', '.join(FORMATS)}")
    if not p.is_file():
        raise FileNotFoundError(f"events file not found: {p}")
    if fmt == "generated" or (fmt == "auto" and p.suffix in MSGPACK_SUFFIXES):
        events = read_events_msgpack(p)
        if sort:
            events.sort(key=attrgetter("ts"))
        return events
    result = load_userbehavior(p, sort=sort)
    report_load(p, result)
    return result.events


def report_load(path: Path, result: LoadResult) -> None:
    """Say what the loader skipped; raise when nothing is left."""
    if result.malformed or result.out_of_span:
        log.warning("%s: %d rows, %d events kept, %d malformed (first: %s), %d outside the dataset's span "
                    "(first: %s)", path, result.rows, len(result), result.malformed,
                    result.malformed_examples[:3], result.out_of_span, result.out_of_span_examples[:3])
    if not len(result):
        raise ValueError(f"{path}: no events left after loading ({result.rows} rows); see the warning above")

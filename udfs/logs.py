"""Behavior logs on disk: the UserBehavior CSV layout and msgpack replay files.

The job's file source, training, evaluation and the tools all read logs here,
so a log loads the same way wherever it is used.
"""

from __future__ import annotations

import csv
import gzip
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from operator import attrgetter
from pathlib import Path
from typing import IO, Any

import msgpack

from udfs.errors import InputError
from udfs.events import (
    BEHAVIORS,
    FIELDS,
    INT64_MAX,
    MAX_STR_ID_LEN,
    MAX_TS_MS,
    Event,
    Id,
    behavior_pairs,
    encode_event,
)

log = logging.getLogger(__name__)

MAX_EXAMPLES = 5
MSGPACK_SUFFIXES = (".msgpack", ".mpk")
PARQUET_SUFFIXES = (".parquet", ".pq")
ARROW_SUFFIXES = (".arrow", ".feather", ".ipc")
FORMATS = ("auto", "userbehavior", "csv", "generated", "parquet", "arrow")
LOG_FIELDS = ("user", "item", "category", "behavior", "ts")
REQUIRED_FIELDS = ("user", "item", "ts")
TS_UNITS = {"s": 1000, "ms": 1}
SKIP_COLUMN = ("", "-", "_")
# The stray-timestamp rule: the bulk of a log lies between its 0.1% and 99.9%
# quantiles of event time; a row more than STRAY_MARGIN of that bulk's span
# (at least STRAY_MIN_MARGIN_MS) outside it is dropped.
STRAY_QUANTILE = 0.001
STRAY_MARGIN = 0.25
STRAY_MIN_MARGIN_MS = 60_000


# --------------------------------------------------------------------------- CSV layouts


@dataclass(frozen=True)
class CsvLayout:
    """Where a CSV keeps each event field, and how to read it.

    ``columns`` maps a field (``user``, ``item``, ``ts``, optional ``category``
    and ``behavior``) to a 0-based column position or a header name. A missing
    category reads as 0, a missing behavior as ``pv``. ``behaviors`` maps the
    log's behavior names to ours (``pv cart fav buy``, which always map to
    themselves); any other name makes the row malformed. ``header``: ``None``
    skips the first line when its timestamp is not a number, ``True`` always,
    ``False`` never. ``int_ids``: ids must be integers (the Taobao layout);
    otherwise a non-integer id is kept as a string.
    """

    columns: tuple[tuple[str, int | str], ...]
    ts_unit: str = "s"
    behaviors: tuple[tuple[str, str], ...] = ()
    header: bool | None = None
    int_ids: bool = False

    def __post_init__(self) -> None:
        fields = [f for f, _ in self.columns]
        unknown = [f for f in fields if f not in LOG_FIELDS]
        if unknown:
            raise InputError(f"--columns: unknown field {unknown[0]!r}; fields are {', '.join(LOG_FIELDS)}")
        dup = {f for f in fields if fields.count(f) > 1}
        if dup:
            raise InputError(f"--columns: field {sorted(dup)[0]!r} given twice")
        missing = [f for f in REQUIRED_FIELDS if f not in fields]
        if missing:
            raise InputError(f"--columns: no column for {', '.join(missing)} (required: user, item, ts)")
        if self.ts_unit not in TS_UNITS:
            raise InputError(f"--ts-unit must be one of {', '.join(TS_UNITS)}, not {self.ts_unit!r}")
        bad = [ours for _, ours in self.behaviors if ours not in BEHAVIORS]
        if bad:
            raise InputError(f"--behaviors: {bad[0]!r} is not one of {', '.join(BEHAVIORS)}")
        if self.header is False and any(isinstance(c, str) for _, c in self.columns):
            raise InputError("--columns names a column but the file has no header line; use positions")

    @classmethod
    def parse(cls, columns: str, ts_unit: str = "s", behaviors: str = "") -> CsvLayout:
        """From flags: ``--columns`` is a comma-separated list of either fields in file
        order (``user,item,-,behavior,ts``; ``-`` skips a column) or ``field=COLUMN``
        entries, COLUMN a header name or a 0-based position (``user=session,item=item_id,ts=time``).
        ``--behaviors`` maps names: ``click=pv,order=buy``."""
        entries = [c.strip() for c in columns.split(",")]
        mapped: list[tuple[str, int | str]] = []
        for pos, entry in enumerate(entries):
            if "=" in entry:
                f, ref = (x.strip() for x in entry.split("=", 1))
                mapped.append((f, int(ref) if ref.isdigit() else ref))
            elif entry not in SKIP_COLUMN:
                mapped.append((entry, pos))
        return cls(tuple(mapped), ts_unit=ts_unit, behaviors=behavior_pairs(behaviors, "--behaviors"))


USERBEHAVIOR = CsvLayout(tuple((f, i) for i, f in enumerate(LOG_FIELDS)), ts_unit="s", header=False,
                         int_ids=True)


# --------------------------------------------------------------------------- real data


@dataclass
class LoadResult:
    """Events plus what was skipped, so a caller can tell a clean load from a lossy one.

    ``out_of_span`` counts rows with stray timestamps (see :func:`stray_bounds`),
    ``bounds_ms`` is the window that was kept."""

    events: list[Event] = field(default_factory=list)
    rows: int = 0
    malformed: int = 0
    malformed_examples: list[tuple[int, str]] = field(default_factory=list)
    out_of_span: int = 0
    out_of_span_examples: list[tuple[int, int]] = field(default_factory=list)
    bounds_ms: tuple[int, int] | None = None

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


def stray_bounds(ts: Sequence[int]) -> tuple[int, int] | None:
    """The kept window ``[lo, hi]`` of event times (ms), from the log itself: the bulk
    between the 0.1% and 99.9% quantiles (at least one row trimmed at each end),
    widened by 25% of the bulk's span (at least a minute) on each side. At most
    0.1% + 0.1% of the rows can fall outside, however the log is distributed, and
    no calendar is involved. ``None`` (keep all) for fewer than 3 rows."""
    n = len(ts)
    if n < 3:
        return None
    s = sorted(ts)
    k = max(1, math.ceil(STRAY_QUANTILE * n))
    if n <= 2 * k:
        return None
    lo, hi = s[k], s[n - 1 - k]
    margin = max(int(STRAY_MARGIN * (hi - lo)), STRAY_MIN_MARGIN_MS)
    return lo - margin, hi + margin


def _parse_id(text: str, name: str, int_ids: bool) -> Id | str:
    """The id, or an error message prefixed with '!'."""
    t = text.strip()
    try:
        v = int(t)
    except ValueError:
        if int_ids:
            return f"!{name} {t[:16]!r} is not an integer"
        if not 0 < len(t) <= MAX_STR_ID_LEN:
            return f"!{name} length {len(t)} not in 1..{MAX_STR_ID_LEN}"
        return t
    if not 0 <= v <= INT64_MAX:
        return f"!{name} {v} out of range"
    return v


class _RowParser:
    def __init__(self, layout: CsvLayout, header: list[str] | None) -> None:
        pos: dict[str, int] = {}
        for f, ref in layout.columns:
            if isinstance(ref, str):
                if header is None:
                    raise InputError(f"column {ref!r} (--columns {f}={ref}) needs a header line; use positions")
                names = [h.strip() for h in header]
                if ref not in names:
                    raise InputError(f"no column named {ref!r} in the header ({', '.join(names)[:200]})")
                pos[f] = names.index(ref)
            else:
                pos[f] = ref
        self.pos = pos
        self.width = max(pos.values()) + 1
        self.exact = layout.int_ids  # the Taobao layout: exactly 5 fields
        self.scale = TS_UNITS[layout.ts_unit]
        self.int_ids = layout.int_ids
        self.behaviors = {b: b for b in BEHAVIORS} | dict(layout.behaviors)

    def ts_ok(self, parts: Sequence[str]) -> bool:
        p = self.pos["ts"]
        try:
            float(parts[p])
        except (ValueError, IndexError):
            return False
        return True

    def parse(self, parts: Sequence[str]) -> Event | str:
        if self.exact and len(parts) != len(LOG_FIELDS):
            return f"expected {len(LOG_FIELDS)} fields, got {len(parts)}"
        if len(parts) < self.width:
            return f"expected at least {self.width} fields, got {len(parts)}"
        pos = self.pos
        ids: list[Id] = []
        for f, name in (("user", "user_id"), ("item", "item_id"), ("category", "category_id")):
            if f not in pos:
                ids.append(0)
                continue
            v = _parse_id(parts[pos[f]], name, self.int_ids)
            if isinstance(v, str) and v.startswith("!"):
                return v[1:]
            ids.append(v)
        if "behavior" in pos:
            raw = parts[pos["behavior"]].strip()
            behavior = self.behaviors.get(raw)
            if behavior is None:
                return f"unknown behavior {raw[:16]!r}"
        else:
            behavior = "pv"
        t = parts[pos["ts"]].strip()
        try:
            ts = int(t) * self.scale
        except ValueError:
            try:
                ts = round(float(t) * self.scale)
            except ValueError:
                return f"timestamp {t[:24]!r} is not a number"
        if not 0 <= ts < MAX_TS_MS:
            return f"timestamp {t[:24]} is not Unix {'seconds' if self.scale == 1000 else 'milliseconds'}"
        return Event(ids[0], ids[1], ids[2], behavior, ts)


def load_csv(path: str | Path, layout: CsvLayout, *, sort: bool = False, drop_stray: bool = True) -> LoadResult:
    """Parse a behavior CSV laid out as ``layout`` into events with ts in ms.

    Bad lines are skipped and counted rather than raised: real logs have them
    and one line must not cost a whole load. Rows with stray timestamps (see
    :func:`stray_bounds`) are dropped by default, because a single far-future
    timestamp would advance a replay's watermark and make every later event
    late. ``sort`` orders stably by ts (a log may be grouped by user).
    """
    res = LoadResult()
    parsed: list[tuple[int, Event]] = []
    with _open_text(path) as f:
        lines = ((n, line) for n, line in enumerate(f, start=1) if line.strip())
        reader: Iterator[tuple[int, list[str]]]
        if layout.int_ids:  # the Taobao layout: plain split, no quoting (fast)
            reader = ((n, line.rstrip("\r\n").split(",")) for n, line in lines)
        else:
            numbers: list[int] = []

            def numbered() -> Iterator[str]:
                for n, line in lines:
                    numbers.append(n)
                    yield line

            rows = csv.reader(numbered())
            reader = ((numbers[-1], r) for r in rows)
        first = next(reader, None)
        header = None
        if first is not None and layout.header is not False:
            named = any(isinstance(c, str) for _, c in layout.columns)
            if layout.header or named:
                header = first[1]
            else:
                probe = _RowParser(layout, None)
                if len(first[1]) >= probe.width and not probe.ts_ok(first[1]):
                    header = first[1]  # a header line: not data, not malformed
        parser = _RowParser(layout, header)
        stream = reader if header is not None or first is None else _chain(first, reader)
        for line_no, parts in stream:
            res.rows += 1
            ev = parser.parse(parts)
            if isinstance(ev, str):
                res.malformed += 1
                if len(res.malformed_examples) < MAX_EXAMPLES:
                    res.malformed_examples.append((line_no, ev))
                continue
            parsed.append((line_no, ev))
    return _kept(res, parsed, sort=sort, drop_stray=drop_stray)


def _kept(res: LoadResult, parsed: list[tuple[int, Event]], *, sort: bool, drop_stray: bool) -> LoadResult:
    """``res`` with the parsed rows, less the stray timestamps (:func:`stray_bounds`), sorted if asked."""
    bounds = stray_bounds([e.ts for _, e in parsed]) if drop_stray else None
    res.bounds_ms = bounds
    events = res.events
    if bounds is None:
        events.extend(e for _, e in parsed)
    else:
        lo, hi = bounds
        for line_no, ev in parsed:
            if lo <= ev.ts <= hi:
                events.append(ev)
                continue
            res.out_of_span += 1
            if len(res.out_of_span_examples) < MAX_EXAMPLES:
                res.out_of_span_examples.append((line_no, ev.ts))
    if sort:
        events.sort(key=attrgetter("ts"))
    return res


def load_table(path: str | Path, layout: CsvLayout, fmt: str, *, sort: bool = False,
               drop_stray: bool = True) -> LoadResult:
    """A Parquet file or an Arrow IPC (Feather) file, laid out as ``layout`` (columns by name or
    position, as a CSV's header), through pyarrow; every row goes through the CSV loader's row rules
    (ids, behaviors, timestamps), so a table and its CSV twin load the same events. A timestamp
    column of Arrow's timestamp type is read as epoch milliseconds, whatever ``--ts-unit`` says.

    pyarrow is imported here, for these formats only (Flink's install brings it)."""
    import pyarrow.ipc as ipc
    import pyarrow.parquet as pq

    table = pq.read_table(path) if fmt == "parquet" else ipc.open_file(str(path)).read_all()
    return load_arrow(table, layout, str(path), sort=sort, drop_stray=drop_stray)


def load_arrow(table: Any, layout: CsvLayout, source: str, *, sort: bool = False,
               drop_stray: bool = True) -> LoadResult:
    """An Arrow table's events by ``layout`` and the CSV loader's row rules (:func:`load_table`);
    ``source`` names it in errors."""
    import pyarrow as pa

    names = table.column_names
    parser = _RowParser(replace(layout, header=True), names)
    ts_col = parser.pos["ts"]
    if ts_col < len(names) and pa.types.is_timestamp(table.schema.field(ts_col).type):
        table = table.set_column(ts_col, names[ts_col], table.column(ts_col).cast(pa.timestamp("ms")).cast(pa.int64()))
        parser.scale = TS_UNITS["ms"]
    if parser.width > len(names):
        raise InputError(f"{source}: the layout needs {parser.width} columns, the table has {len(names)} ({names})")
    wanted = sorted(set(parser.pos.values()))
    # The parser reads each row as the tuple of the wanted columns only: no per-row list of the table's width.
    parser.pos = {f: wanted.index(i) for f, i in parser.pos.items()}
    parser.width = len(wanted)
    res = LoadResult()
    parsed: list[tuple[int, Event]] = []
    for row, parts in enumerate(zip(*(_texts(table.column(i)) for i in wanted)), start=1):
        res.rows += 1
        ev = parser.parse(parts)
        if isinstance(ev, str):
            res.malformed += 1
            if len(res.malformed_examples) < MAX_EXAMPLES:
                res.malformed_examples.append((row, ev))
            continue
        parsed.append((row, ev))
    return _kept(res, parsed, sort=sort, drop_stray=drop_stray)


def _texts(column: Any) -> list[str]:
    """A table column as the CSV text of each value (:func:`_cell`); strings and integers are
    converted by pyarrow in one pass (through numpy: ten times faster than ``to_pylist`` here),
    other types value by value."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = column.type
    if pa.types.is_integer(kind):
        column = pc.cast(column, pa.string())
    elif not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        return [_cell(v) for v in column.to_pylist()]
    texts: list[str] = pc.fill_null(column, "").to_numpy(zero_copy_only=False).tolist()
    return texts


def _cell(value: object) -> str:
    """A table value as the CSV text it would be: a whole float (an id column with nulls in it) as an integer."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _chain(first: tuple[int, list[str]], rest: Iterator[tuple[int, list[str]]]) -> Iterator[tuple[int, list[str]]]:
    yield first
    yield from rest


def load_userbehavior(path: str | Path, *, sort: bool = False, drop_out_of_span: bool = True) -> LoadResult:
    """The Taobao UserBehavior CSV (no header; ``user,item,category,behavior,ts``; integer
    ids; ts in seconds): :func:`load_csv` with the fixed :data:`USERBEHAVIOR` layout."""
    return load_csv(path, USERBEHAVIOR, sort=sort, drop_stray=drop_out_of_span)


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
                raise InputError(f"{path}: record {i} is not an event map: {obj!r:.100}")
            yield Event(*(obj[k] for k in FIELDS))


def read_events_msgpack(path: str | Path) -> list[Event]:
    return list(iter_events_msgpack(path))




# --------------------------------------------------------------------------- any log file


def load_events(path: str | Path, fmt: str = "auto", *, sort: bool = False,
                layout: CsvLayout | None = None) -> list[Event]:
    """A behavior log as events: ``userbehavior`` (the Taobao CSV), ``csv`` (any CSV,
    laid out as ``layout``), ``parquet`` or ``arrow`` (a table, laid out as ``layout`` or in the
    Taobao column order), ``generated`` (a msgpack replay file) or ``auto`` (by suffix: msgpack,
    Parquet, Arrow IPC; else ``layout`` or the Taobao CSV).

    ``sort`` orders stably by event time (the published CSV is grouped by user).
    What the CSV loader skipped is logged, and a log with no event left is an
    error: an empty run must never look like a clean one.
    """
    p = Path(path)
    if fmt not in FORMATS:
        raise InputError(f"unknown log format {fmt!r}; known: {', '.join(FORMATS)}")
    if fmt == "csv" and layout is None:
        raise InputError("--format csv needs --columns (e.g. --columns user,item,category,behavior,ts)")
    if fmt not in ("csv", "auto", "parquet", "arrow") and layout is not None and layout != USERBEHAVIOR:
        raise InputError(f"--columns/--ts-unit/--behaviors apply to --format csv, parquet and arrow, not {fmt}")
    if not p.is_file():
        raise FileNotFoundError(f"events file not found: {p}")
    if fmt == "generated" or (fmt == "auto" and layout is None and p.suffix in MSGPACK_SUFFIXES):
        events = read_events_msgpack(p)
        if sort:
            events.sort(key=attrgetter("ts"))
        return events
    table_fmt = fmt if fmt in ("parquet", "arrow") else "parquet" if fmt == "auto" and p.suffix in PARQUET_SUFFIXES \
        else "arrow" if fmt == "auto" and p.suffix in ARROW_SUFFIXES else None
    if table_fmt is not None:
        result = load_table(p, layout or USERBEHAVIOR, table_fmt, sort=sort)
        report_load(p, result)
        return result.events
    result = load_csv(p, layout if fmt in ("csv", "auto") and layout is not None else USERBEHAVIOR, sort=sort)
    report_load(p, result)
    return result.events


def report_load(path: Path, result: LoadResult) -> None:
    """Say what the loader skipped; raise when nothing is left."""
    if result.malformed or result.out_of_span:
        lo, hi = result.bounds_ms or (None, None)
        log.warning("%s: %d rows, %d events kept, %d malformed (first: %s), %d with stray timestamps outside "
                    "the log's bulk, kept window %s..%s ms (first (line, ts ms): %s)", path, result.rows,
                    len(result), result.malformed, result.malformed_examples[:3], result.out_of_span, lo, hi,
                    result.out_of_span_examples[:3])
    if not len(result):
        raise InputError(f"{path}: no events left after loading ({result.rows} rows, {result.malformed} "
                         f"malformed, first: {result.malformed_examples[:3]}); check --format/--columns/"
                         "--ts-unit/--behaviors")

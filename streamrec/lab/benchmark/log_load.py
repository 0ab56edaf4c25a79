"""How long a training log takes to load, by format and reader, on the same events.

For each log: its Parquet and Arrow IPC twins are written from it (through pyarrow, ids and times
as the CSV holds them), then four readers load it, in rotating order, ``repeats`` times each:

- ``csv``: today's CSV reader (:func:`udfs.logs.load_csv`);
- ``csv_pyarrow``: pyarrow's CSV reader, every column as text, then the same row rules
  (:func:`udfs.logs.load_arrow`): the candidate for reading CSV through pyarrow too;
- ``parquet``, ``arrow``: the twins through :func:`udfs.logs.load_table`.

Every reader must give the same events as ``csv`` (the run fails otherwise). Times are medians
of wall-clock seconds in this process, after one unrecorded load of each (imports, page cache).
"""

from __future__ import annotations

import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.feather as feather
import pyarrow.parquet as pq

from streamrec.lab.evaluation.matrix import DEFAULT_DATA_DIR
from streamrec.lab.generator import generate_events
from streamrec.lab.markdown import table
from udfs.errors import InputError
from udfs.logs import USERBEHAVIOR, LoadResult, load_arrow, load_csv, load_table, write_userbehavior_csv

READERS = ("csv", "csv_pyarrow", "parquet", "arrow")
TAOBAO_COLUMNS = ["user", "item", "category", "behavior", "ts"]


@dataclass(frozen=True)
class LoadBenchSettings:
    """`streamrec bench-load`'s flags derive from these fields (streamrec/cli/settings_flags.py)."""

    out_dir: Path
    """Results folder."""
    logs: tuple[Path, ...] = ()
    """Logs in the Taobao CSV layout, comma-separated (default: the largest CSV under ../shared/data, if any)."""
    generated_events: int = 1_000_000
    """Also a generated log of this many events, at a shop's scale (0: none)."""
    repeats: int = 5
    """Timed loads per reader and log, in rotating order; medians are reported."""
    seed: int = 7
    """Seed of the generated log."""


def largest_shared_log(data: Path = DEFAULT_DATA_DIR) -> Path | None:
    """The largest CSV log under ``data`` (its subfolders too), or None."""
    logs = sorted(data.glob("**/*.csv"), key=lambda p: p.stat().st_size) if data.is_dir() else []
    return logs[-1] if logs else None


@dataclass
class LogLoad:
    log: str
    rows: int
    events: int
    csv_bytes: int
    seconds: dict[str, list[float]] = field(default_factory=dict)

    def median(self, reader: str) -> float:
        return statistics.median(self.seconds[reader])


def _csv_through_pyarrow(path: Path) -> LoadResult:
    table = pcsv.read_csv(path, read_options=pcsv.ReadOptions(column_names=[str(i) for i in range(5)]),
                          convert_options=pcsv.ConvertOptions(column_types={str(i): pa.string() for i in range(5)}))
    return load_arrow(table, USERBEHAVIOR, str(path))


def _twins(path: Path, folder: Path) -> tuple[Path, Path]:
    """The log as Parquet and as Arrow IPC, typed as pyarrow reads the CSV (ints stay ints)."""
    table = pcsv.read_csv(path, read_options=pcsv.ReadOptions(column_names=TAOBAO_COLUMNS))
    parquet, arrow = folder / f"{path.stem}.parquet", folder / f"{path.stem}.arrow"
    pq.write_table(table, parquet)
    feather.write_feather(table, arrow, compression="uncompressed")
    return parquet, arrow


def measure_log(path: Path, repeats: int, folder: Path) -> LogLoad:
    parquet, arrow = _twins(path, folder)
    readers: dict[str, Callable[[], LoadResult]] = {
        "csv": lambda: load_csv(path, USERBEHAVIOR),
        "csv_pyarrow": lambda: _csv_through_pyarrow(path),
        "parquet": lambda: load_table(parquet, USERBEHAVIOR, "parquet"),
        "arrow": lambda: load_table(arrow, USERBEHAVIOR, "arrow"),
    }
    reference = readers["csv"]()
    for name, read in readers.items():
        if read().events != reference.events:
            raise InputError(f"{path}: the {name} reader loads other events than the CSV reader")
    result = LogLoad(str(path), reference.rows, len(reference.events), path.stat().st_size,
                     {name: [] for name in readers})
    for r in range(repeats):
        for name in READERS[r % len(READERS):] + READERS[:r % len(READERS)]:
            start = time.perf_counter()
            readers[name]()
            result.seconds[name].append(time.perf_counter() - start)
    return result


def run_load_bench(settings: LoadBenchSettings) -> dict[str, Any]:
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="log-load-") as tmp:
        shared = largest_shared_log()
        logs = list(settings.logs) or ([shared] if shared else [])
        if settings.generated_events:
            generated = Path(tmp) / f"generated_{settings.generated_events}.csv"
            write_userbehavior_csv(generate_events(settings.generated_events, n_users=100_000, n_items=100_000,
                                                   seed=settings.seed), generated)
            logs.append(generated)
        for path in logs:
            results.append(measure_log(path, settings.repeats, Path(tmp)))
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.platform(),
              "settings": {**asdict(settings), "out_dir": str(settings.out_dir), "logs": [str(p) for p in logs]},
              "logs": [asdict(r) | {"medians": {n: r.median(n) for n in READERS}} for r in results]}
    (settings.out_dir / "log_load.json").write_text(json.dumps(report, indent=2))
    (settings.out_dir / "log_load.md").write_text(markdown(report))
    return report


def markdown(report: dict[str, Any]) -> str:
    cells = [[Path(log["log"]).name, f"{log['rows']:,}", f"{log['csv_bytes'] / 1e6:.1f}",
              *(f"{log['medians'][n]:.3f}" for n in READERS),
              *(f"{log['medians'][n] / log['medians']['csv']:.2f}" for n in READERS[1:])] for log in report["logs"]]
    header = ["log", "rows", "CSV MB", *(f"{n} s" for n in READERS), *(f"{n} / csv" for n in READERS[1:])]
    lines = [f"Log load time, median of {report['settings']['repeats']} loads each, {report['date']}", "",
             *table(header, cells)]
    return "\n".join(lines) + "\n"

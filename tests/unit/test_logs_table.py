"""Behavior logs as Parquet and Arrow IPC tables (udfs/logs.load_table): the same events as the CSV twin."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from streamrec.lab.benchmark import log_load
from streamrec.lab.evaluation.matrix import DEFAULT_DATA_DIR
from streamrec.lab.generator import START_TS_MS, generate_events
from udfs.errors import InputError
from udfs.logs import CsvLayout, load_events, write_userbehavior_csv


def _events(n: int = 600):
    return sorted(generate_events(n, n_users=20, n_items=80, n_categories=5, seed=7, start_ts_ms=START_TS_MS,
                                  duration_s=86400), key=lambda e: e.ts)


def _taobao_table(csv: Path) -> pa.Table:
    """The CSV's rows as a table in the Taobao column order, with the column types a warehouse export has."""
    rows = [line.split(",") for line in csv.read_text().splitlines()]
    return pa.table({"user": pa.array([int(r[0]) for r in rows], pa.int64()),
                     "item": pa.array([int(r[1]) for r in rows], pa.int64()),
                     "category": pa.array([int(r[2]) for r in rows], pa.int64()),
                     "behavior": pa.array([r[3] for r in rows]),
                     "ts": pa.array([int(r[4]) for r in rows], pa.int64())})


def test_a_parquet_and_an_arrow_twin_load_the_csvs_events(tmp_path):
    csv = tmp_path / "log.csv"
    write_userbehavior_csv(_events(), csv)
    table = _taobao_table(csv)
    pq.write_table(table, tmp_path / "log.parquet")
    with ipc.new_file(str(tmp_path / "log.arrow"), table.schema) as w:
        w.write_table(table)
    expected = load_events(csv, sort=True)
    assert load_events(tmp_path / "log.parquet", sort=True) == expected  # auto, by suffix
    assert load_events(tmp_path / "log.arrow", "arrow", sort=True) == expected


def test_a_shops_own_column_names_types_and_behaviors(tmp_path):
    events = _events()
    table = pa.table({
        "sku": pa.array([str(e.item_id) for e in events]),
        "uid": pa.array([f"u-{e.user_id}" for e in events]),
        "event_type": pa.array(["click" if e.behavior == "pv" else e.behavior for e in events]),
        "at": pa.array([e.ts for e in events], pa.timestamp("ms", tz="UTC")),
        "ignored": pa.array([1.5] * len(events)),
    })
    path = tmp_path / "shop.parquet"
    pq.write_table(table, path)
    layout = CsvLayout.parse("user=uid,item=sku,behavior=event_type,ts=at", "s", "click=pv")
    got = load_events(path, "parquet", layout=layout)
    assert [(e.user_id, e.item_id, e.behavior, e.ts, e.category_id) for e in got] == [
        (f"u-{e.user_id}", e.item_id, e.behavior, e.ts, 0) for e in events]  # timestamp type: epoch ms


def test_bad_rows_are_counted_not_raised_and_a_missing_column_is_named(tmp_path, caplog):
    table = pa.table({"user": [1, 2, None], "item": [5, 6, 7], "category": [1, 1, 1], "behavior": ["pv", "x", "pv"],
                      "ts": [1_700_000_000, 1_700_000_001, 1_700_000_002]})
    path = tmp_path / "bad.parquet"
    pq.write_table(table, path)
    got = load_events(path)
    assert [e.user_id for e in got] == [1]  # unknown behavior, null user: malformed
    assert "2 malformed" in caplog.text
    with pytest.raises(ValueError, match="no column named 'uid'"):
        load_events(path, "parquet", layout=CsvLayout.parse("user=uid,item=item,ts=ts"))


@pytest.mark.parametrize("name", ["dev/jdata2017_head.csv"])
def test_a_shared_logs_parquet_twin_loads_the_same_events(tmp_path, name):
    path = Path(DEFAULT_DATA_DIR) / name
    if not path.exists():
        pytest.skip(f"{path} not here")
    pq.write_table(_taobao_table(path), tmp_path / "twin.parquet")
    assert load_events(tmp_path / "twin.parquet", sort=True) == load_events(path, sort=True)


def test_the_load_bench_times_every_reader_on_the_same_events(tmp_path, monkeypatch):
    monkeypatch.setattr(log_load, "largest_shared_log", lambda: None)
    report = log_load.run_load_bench(log_load.LoadBenchSettings(tmp_path, generated_events=3000, repeats=2))
    (log,) = report["logs"]
    assert log["rows"] == 3000 and set(log["medians"]) == set(log_load.READERS)
    assert all(len(times) == 2 for times in log["seconds"].values())
    assert "generated_3000.csv | 3,000" in (tmp_path / "log_load.md").read_text()


def test_the_load_bench_refuses_a_reader_that_loads_other_events(tmp_path, monkeypatch):
    real = log_load.load_arrow

    def one_row_short(*args, **kwargs):
        result = real(*args, **kwargs)
        result.events.pop()
        return result

    monkeypatch.setattr(log_load, "load_arrow", one_row_short)
    monkeypatch.setattr(log_load, "largest_shared_log", lambda: None)
    with pytest.raises(InputError, match="csv_pyarrow reader loads other events"):
        log_load.run_load_bench(log_load.LoadBenchSettings(tmp_path, generated_events=500, repeats=1))

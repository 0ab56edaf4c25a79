"""`streamrec run --source file:CSV --sink file:OUT` end to end through the CLI."""

import json
import subprocess
import sys

import pytest

from streamrec.lab.generator import START_TS_MS, generate_events
from udfs.logs import write_userbehavior_csv
from udfs.records import ADDED_OUTPUT_FIELDS, OUTPUT_FIELDS

pytestmark = pytest.mark.flink


def test_file_source_to_json_lines(fixture_artifact, tmp_path):
    # same catalog as the fixture
    events = generate_events(300, n_users=60, n_items=400, n_categories=12, seed=17,
                             start_ts_ms=START_TS_MS, duration_s=86400)
    csv = tmp_path / "events.csv"
    write_userbehavior_csv(events, csv)
    with csv.open("a") as f:
        f.write("not,a,valid,row\n")  # malformed line: counted by the loader, not a crash
    out = tmp_path / "out" / "recs.jsonl"
    res = subprocess.run([sys.executable, "-m", "streamrec.cli", "run", "--source", f"file:{csv}",
                          "--sink", f"file:{out}", "--artifact", str(fixture_artifact), "--provider", "cpu"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    unique = len({(e.user_id, e.item_id, e.behavior, e.ts) for e in events})
    assert len(lines) == unique
    assert json.loads(res.stdout.strip().splitlines()[-1])["recommendations"] == unique
    assert {tuple(sorted(r)) for r in lines} == {tuple(sorted({*OUTPUT_FIELDS, *ADDED_OUTPUT_FIELDS}))}


def test_a_file_with_no_usable_rows_is_an_error_not_an_empty_run(fixture_artifact, tmp_path):
    csv = tmp_path / "bad.csv"
    csv.write_text("1,2,3,click,1300000000\n1,2,x,pv,1300000000\n")  # an unknown behavior, a non-integer id
    res = subprocess.run([sys.executable, "-m", "streamrec.cli", "run", "--source", f"file:{csv}", "--sink",
                          f"file:{tmp_path / 'o.jsonl'}", "--artifact", str(fixture_artifact)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "no events left" in res.stderr and "2 malformed" in res.stderr


def test_bad_config_fails_fast_naming_the_key(fixture_artifact, tmp_path):
    res = subprocess.run([sys.executable, "-m", "streamrec.cli", "run", "--source", "file:x.csv", "--sink",
                          "file:y.jsonl", "--parallelism", "0", "--artifact", str(fixture_artifact)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "job.parallelism" in res.stderr

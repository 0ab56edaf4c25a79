"""`streamrec bench --compare REF` on a throwaway git repository whose two commits carry a stand-in
`streamrec` (a shell script writing a results.json from the rate its tree holds): the worktree
build, the ABBA order, the medians and ratios, the environment each side gets, and the errors."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from streamrec.cli import bench_commands, build_parser
from streamrec.lab.benchmark import compare as cmp

# The stand-in bench: reads --out, writes the rates its tree holds, and logs which tree ran and
# whether it inherited the compare switch.
FAKE_BENCH = """#!/usr/bin/env bash
set -eu
all="$*"
out=""
while [ $# -gt 0 ]; do [ "$1" = "--out" ] && out="$2"; shift; done
here="$(cd "$(dirname "$0")/../.." && pwd)"
mkdir -p "$out"
echo "$(cat "$here/name.txt") ${STREAMREC_BENCH_COMPARE:-none} $all" >> "$ORDER_LOG"
p2=$(sed -n "$(( $(wc -l < "$ORDER_LOG") ))p" "$here/p2.txt" 2>/dev/null || true)
[ -n "$p2" ] || p2=$(head -1 "$here/p2.txt")
cat > "$out/results.json" <<JSON
{"job_p1_events_per_s": $(cat "$here/p1.txt"), "job_p2_events_per_s": $p2,
 "job_p2": {"cpu_ms_per_event": 2.0},
 "latency_at_250_per_s": {"p50_ms": 30.0, "p95_ms": 80.0, "p99_ms": 150.0}}
JSON
"""
# `make deps` in the REF tree: installs the stand-in as the venv's streamrec.
MAKEFILE = "deps:\n\tmkdir -p .venv/bin && cp fake_bench.sh .venv/bin/streamrec && chmod +x .venv/bin/streamrec\n"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def _commit(repo: Path, name: str, p1: str, p2: str) -> str:
    for file, text in (("name.txt", name), ("p1.txt", p1), ("p2.txt", p2), ("fake_bench.sh", FAKE_BENCH),
                       ("Makefile", MAKEFILE), (".gitignore", ".venv/\n.cache/\n")):
        (repo / file).write_text(text + ("\n" if not text.endswith("\n") else ""))
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-q", "-m", name)
    return _git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two commits: 'old' (p1 900, p2 1,400) and 'new' (p1 800, p2 the values in turn), checked out at new,
    with the stand-in installed in the checkout's own venv."""
    root = tmp_path / "repo"
    root.mkdir()
    _git(root, "init", "-q")
    _commit(root, "old", "900", "1400")
    _commit(root, "new", "800", "700\n760\n740\n720")
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "streamrec").write_text(FAKE_BENCH)
    (bin_dir / "streamrec").chmod((bin_dir / "streamrec").stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("ORDER_LOG", str(tmp_path / "order.log"))
    monkeypatch.setenv(f"{cmp.ENV_PREFIX}BENCH_COMPARE", "HEAD~1")  # as if set for the parent: never inherited
    return root


def _order(repo: Path) -> list[list[str]]:
    return [line.split() for line in (repo.parent / "order.log").read_text().splitlines()]


def test_compare_builds_ref_in_a_worktree_and_alternates_abba(repo: Path, tmp_path: Path) -> None:
    values = {"events": "300000", "phases": "job", "parallelisms": "1,2", "window_s": "60",
              "latency_rates": "", "cfg__ranking__provider": "cpu"}
    result = cmp.compare(repo, "HEAD~1", values, tmp_path / "out", repeats=2)

    tree = cmp.worktree_dir(repo, result.ref)
    assert (tree / ".venv" / "bin" / "streamrec").is_file(), "REF's own make deps built its venv"
    assert (tree / "name.txt").read_text().strip() == "old"
    order = _order(repo)
    assert [o[0] for o in order] == ["old", "new", "new", "old"]
    assert {o[1] for o in order} == {"none"}, "a side's bench must not inherit the compare switch"
    out = tmp_path / "out"
    assert order[0][2:] == ["bench", "--events", "300000", "--parallelisms", "1,2", "--window-s", "60",
                            "--phases", "job", "--provider", "cpu", "--artifact", str(out / "artifact-ref"),
                            "--out", str(out / "01-ref")]
    rows = {r["figure"]: r for r in result.rows}
    p2 = rows["job p2 events/s"]
    assert p2["ref_runs"] == [1400.0, 1400.0]
    assert p2["this_runs"] == [760.0, 740.0]  # the stand-in's second and third lines: runs 2 and 3
    assert p2["ratio"] == pytest.approx(750.0 / 1400.0)
    assert rows["job p1 events/s"]["ratio"] == pytest.approx(800 / 900)
    assert rows["latency at 250/s p99 ms"]["this_median"] == 150.0
    assert not rows["latency at 250/s p99 ms"]["higher_is_better"]
    saved = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert saved["ref"] == result.ref and len(saved["runs"]["this"]) == 2
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "| job p2 events/s | 1,400 | 750 | 0.54 (worse) |" in md
    assert "medians over 2 REF and 2 of this tree's run(s)" in md
    assert not result.same_stream and "generators make different streams" in md, "neither tree has a generator"


def test_a_relative_out_holds_both_sides_results(repo: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """REF's bench runs in its worktree: a relative --out (the Makefile's) must still land here."""
    monkeypatch.chdir(tmp_path)
    result = cmp.compare(repo, "HEAD~1", {"phases": "job"}, Path("rel-out"), repeats=1)
    assert (tmp_path / "rel-out" / "01-ref" / "results.json").is_file()
    assert (tmp_path / "rel-out" / "02-this" / "results.json").is_file()
    assert not (cmp.worktree_dir(repo, result.ref) / "rel-out").exists()
    assert _order(repo)[0][-1] == str(tmp_path / "rel-out" / "01-ref")


def test_a_second_compare_reuses_the_built_tree(repo: Path, tmp_path: Path) -> None:
    first = cmp.compare(repo, "HEAD~1", {"phases": "job"}, tmp_path / "a", repeats=1)
    marker = cmp.worktree_dir(repo, first.ref) / "kept.txt"
    marker.write_text("still here")
    cmp.compare(repo, "HEAD~1", {"phases": "job"}, tmp_path / "b", repeats=1)
    assert marker.read_text() == "still here"


def test_unknown_ref_failed_build_and_failed_run_are_compare_errors(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(cmp.CompareError, match="rev-parse"):
        cmp.compare(repo, "no-such-ref", {}, tmp_path / "x", repeats=1)
    with pytest.raises(cmp.CompareError, match="at least 1"):
        cmp.compare(repo, "HEAD~1", {}, tmp_path / "x", repeats=0)
    (repo / "Makefile").write_text("deps:\n\texit 3\n")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qam", "broken build")
    with pytest.raises(cmp.CompareError, match="make deps failed .*deps.log"):
        cmp.compare(repo, "HEAD", {}, tmp_path / "x", repeats=1)
    (repo / ".venv" / "bin" / "streamrec").write_text("#!/usr/bin/env bash\nexit 4\n")
    with pytest.raises(cmp.CompareError, match=r"this .* bench failed \(exit 4\); see .*bench.log"):
        cmp.compare(repo, "HEAD~2", {}, tmp_path / "y", repeats=1)


def test_this_side_is_marked_dirty_with_uncommitted_changes(repo: Path) -> None:
    assert not cmp.this_side(repo).commit.endswith("+dirty")
    (repo / "p1.txt").write_text("1\n")
    assert cmp.this_side(repo).commit.endswith("+dirty")


GENERATOR = """from collections import namedtuple
E = namedtuple("E", "user_id item_id category_id behavior ts")
STEP = {step}
def generate_events(n, *, seed=0, n_users=10, n_items=10):
    return [E(i % n_users, (i * seed) % n_items, 1, "pv", i * STEP) for i in range(n)]
"""


def test_stream_fingerprint_runs_each_sides_own_generator(repo: Path) -> None:
    side = cmp.Side("this", repo, "c")
    (repo / ".venv" / "bin" / "python").symlink_to(sys.executable)
    stream = {"seed": 11, "n_users": 100, "n_items": 50}
    assert cmp.stream_fingerprint(side, stream) is None, "no generator in the tree"
    gen = repo / "streamrec" / "generator.py"
    gen.parent.mkdir()
    (gen.parent / "a_tool.py").write_text('PATTERN = "def generate_events("\n')  # names it, defines nothing
    _git(repo, "add", "-A")
    assert cmp.stream_fingerprint(side, stream) is None, "a module that only names the generator"
    gen.write_text(GENERATOR.format(step=1000))
    _git(repo, "add", "-A")
    first = cmp.stream_fingerprint(side, stream)
    assert first is not None and first == cmp.stream_fingerprint(side, stream)
    assert cmp.stream_fingerprint(side, {**stream, "seed": 12}) != first
    gen.write_text(GENERATOR.format(step=999))
    assert cmp.stream_fingerprint(side, stream) not in (None, first)


def test_schedule_is_abba() -> None:
    assert cmp.schedule(1) == [0, 1]
    assert cmp.schedule(3) == [0, 1, 1, 0, 0, 1]


def test_bench_parser_takes_compare_flags() -> None:
    args = build_parser().parse_args(["bench", "--compare", "HEAD~1", "--compare-repeats", "3",
                                      "--phases", "job", "--events", "1000"])
    assert args.compare == "HEAD~1" and args.compare_repeats == "3"
    assert cmp.bench_argv(vars(args))[:4] == ["--events", "1000", "--users", "100000"]


def test_the_command_compares_the_checkout_it_runs_from(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`streamrec bench --compare` hands compare() the project's root: the tree with the Makefile
    whose venv runs this side's bench and where REF's worktree is cached, not the package folder."""
    seen: list[Path] = []

    def fake_compare(repo: Path, *_: object, **__: object) -> None:
        seen.append(repo)
        raise cmp.CompareError("stop here")

    monkeypatch.setattr(bench_commands, "compare", fake_compare)
    args = build_parser().parse_args(["bench", "--compare", "HEAD", "--out", str(tmp_path)])
    assert bench_commands.cmd_bench_compare(args) == 2
    assert (seen[0] / "Makefile").is_file() and (seen[0] / "pyproject.toml").is_file()
    assert cmp.this_side(seen[0]).root == seen[0]


def test_side_env_keeps_config_overrides_and_drops_the_switch() -> None:
    side = cmp.Side("ref", Path("/tmp/x"), "abc", {"STREAMREC_CACHE": "/tmp/x/.cache"})
    env = cmp.side_env(side, {"STREAMREC_JOB_BUFFER_TIMEOUT_MS": "100", "STREAMREC_BENCH_COMPARE": "main",
                              "STREAMREC_CACHE": "/elsewhere", "PATH": os.environ.get("PATH", "")})
    assert env["STREAMREC_JOB_BUFFER_TIMEOUT_MS"] == "100"
    assert env["STREAMREC_CACHE"] == "/tmp/x/.cache"
    assert "STREAMREC_BENCH_COMPARE" not in env


def test_a_compare_against_another_commit_removes_the_older_build(repo: Path, tmp_path: Path) -> None:
    """Each build holds a venv of about 7 GB: only the one in use stays."""
    first = cmp.compare(repo, "HEAD~1", {"phases": "job"}, tmp_path / "a", repeats=1)
    old_tree = cmp.worktree_dir(repo, first.ref)
    second = cmp.compare(repo, "HEAD", {"phases": "job"}, tmp_path / "b", repeats=1)
    assert not old_tree.exists() and not old_tree.with_name(f"{old_tree.name}-deps.log").exists()
    assert cmp.worktree_dir(repo, second.ref).is_dir()
    assert str(old_tree) not in _git(repo, "worktree", "list")

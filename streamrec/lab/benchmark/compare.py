"""`streamrec bench --compare REF`: this tree's bench beside another commit's, alternated.

A regression in events/s is easy to miss when each bench run is read on its own: the
machines are shared, and one figure on a 2-core machine can move by a third between
runs. So the comparison builds REF in a git worktree with its own virtualenv and jars
(``make deps`` there, cached under ``.cache/compare/<commit>``), then runs REF's own
``streamrec bench`` and this tree's, with the same flags and the same environment, in
ABBA order (REF, this, this, REF, ...) so that drift in the machine's load falls on both
sides alike. Each side generates the seeded stream with its own generator; both are run
on the same seed first, and the report says when their streams differ.

What comes out (``OUT/compare.json``, ``OUT/compare.md``, and the table on stdout): each
figure's median per side, the ratio of the medians (this tree over REF), and every run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streamrec.lab.markdown import table
from udfs.config import ENV_PREFIX
from udfs.errors import UserError

log = logging.getLogger(__name__)

# The bench flags both sides are given, as (argparse destination, flag): flags that `streamrec bench`
# has had since before the comparison existed, so an older REF understands every one.
PASSED_FLAGS = (*((dest, f"--{dest.replace('_', '-')}") for dest in (
    "events", "users", "items", "seed", "parallelisms", "warmup_s", "window_s", "latency_s", "latency_warmup_s",
    "latency_repeats", "latency_rates", "phases")),
    ("cfg__ranking__provider", "--provider"), ("cfg__kafka__delivery_guarantee", "--delivery-guarantee"))
# Environment entries a side's run must not inherit: the child bench would compare again.
NOT_INHERITED = (f"{ENV_PREFIX}BENCH_COMPARE", f"{ENV_PREFIX}BENCH_COMPARE_REPEATS", f"{ENV_PREFIX}BENCH_OUT")
# Figures compared, as (name, path into results.json, higher is better).
FIGURES: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("job p1 events/s", ("job_p1_events_per_s",), True),
    ("job p2 events/s", ("job_p2_events_per_s",), True),
    ("peer events/s", ("peer_events_per_s",), True),
    ("p2 / p1", ("ratio_job_p2_over_p1",), True),
    ("p2 / peer", ("ratio_job_p2_over_peer",), True),
    ("model alone pairs/s", ("model_ceiling_pairs_per_s",), True),
    ("job p1 CPU ms per event", ("job_p1", "cpu_ms_per_event"), False),
    ("job p2 CPU ms per event", ("job_p2", "cpu_ms_per_event"), False),
)
# Latency points are named by rate (``latency_at_250_per_s``) or by share (``latency_50pct``).
LATENCY_QUANTILES = (("p50", "p50_ms"), ("p95", "p95_ms"), ("p99", "p99_ms"))
# The generator's arguments that shape the bench stream: (keyword, bench flag's destination, the
# bench's default).
STREAM_SETTINGS = (("seed", "seed", 11), ("n_users", "users", 100_000), ("n_items", "items", 50_000))
# A ratio this far from 1 is marked better or worse in the table.
MARKED_CHANGE = 0.05
# Events each side's generator makes for the same-stream check.
FINGERPRINT_EVENTS = 5000


class CompareError(UserError, RuntimeError):
    """REF cannot be resolved or built; the message says which step failed and where its log is."""


@dataclass(frozen=True)
class Side:
    """One tree in the comparison: where it is, its commit, and the `streamrec` of its own venv."""

    name: str
    root: Path
    commit: str
    env: Mapping[str, str] = field(default_factory=dict)
    """Environment entries this side's runs set on top of the caller's."""

    @property
    def streamrec(self) -> Path:
        return self.root / ".venv" / "bin" / "streamrec"


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise CompareError(f"git {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip()


def resolve(repo: Path, ref: str) -> str:
    """The full commit id of ``ref`` (a branch, tag, hash or ``HEAD~1``), or CompareError."""
    return git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")


def worktree_dir(repo: Path, commit: str) -> Path:
    return repo / ".cache" / "compare" / commit[:12]


def prepare_ref(repo: Path, commit: str, runner: Callable[..., Any] = subprocess.run) -> Side:
    """REF checked out in its own worktree, with its own venv and jars from its own ``make deps``.

    Built once per commit: a later comparison against the same commit reuses the tree
    (``make deps`` there is then a no-op). Its jars and broker live in its own cache, since
    the Java helpers are compiled per tree and must match that tree's Python.
    """
    tree = worktree_dir(repo, commit)
    prune_other_builds(repo, keep=tree)
    if not (tree / ".git").exists():
        tree.parent.mkdir(parents=True, exist_ok=True)
        git(repo, "worktree", "add", "--detach", "--force", str(tree), commit)
    cache = tree / ".cache"
    build_log = tree.parent / f"{commit[:12]}-deps.log"
    log.info("building %s in %s (make deps; log %s)", commit[:12], tree, build_log)
    with build_log.open("w") as out:
        done = runner(["make", "-C", str(tree), "deps", f"CACHE={cache}"], stdout=out, stderr=subprocess.STDOUT,
                      env={**os.environ, "STREAMREC_CACHE": str(cache)})
    if done.returncode != 0:
        raise CompareError(f"make deps failed for {commit[:12]} in {tree}; see {build_log}")
    return Side("ref", tree, commit, {"STREAMREC_CACHE": str(cache)})


def prune_other_builds(repo: Path, keep: Path) -> list[Path]:
    """Remove every other commit's build under ``.cache/compare`` (worktree and deps log): each holds
    a venv with torch and its CUDA wheels, about 7 GB, and a few comparisons against different
    commits would otherwise fill the disk. Returns the trees removed."""
    root = keep.parent
    removed = []
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        if entry == keep or entry.name.startswith(keep.name):
            continue
        if entry.is_dir():
            try:
                git(repo, "worktree", "remove", "--force", str(entry))
            except CompareError:  # not (or no longer) a worktree of this repository
                shutil.rmtree(entry)
            removed.append(entry)
        else:
            entry.unlink()
    git(repo, "worktree", "prune")
    return removed


def this_side(repo: Path) -> Side:
    """The tree this command runs from, as it is on disk (uncommitted changes included)."""
    dirty = git(repo, "status", "--porcelain", "--untracked-files=no")
    commit = git(repo, "rev-parse", "HEAD")
    return Side("this", repo, commit + ("+dirty" if dirty else ""))


def stream_fingerprint(side: Side, stream: Mapping[str, int],
                       runner: Callable[..., Any] = subprocess.run) -> str | None:
    """A hash of the events the side's own generator makes for ``stream`` (the bench's seed, users
    and items; fewer events), computed in the side's venv. The generator has moved between modules
    over time, so it is found by its function's name. None when the side has no generator that can
    be called this way."""
    found = subprocess.run(["git", "-C", str(side.root), "grep", "-l", "-E", r"^def generate_events\(", "--", "*.py"],
                           capture_output=True, text=True)
    paths = [p for p in found.stdout.split() if not p.startswith("tests/")]
    if found.returncode != 0 or not paths:
        return None
    module = paths[0].removesuffix(".py").replace("/", ".")
    code = (f"import hashlib; from {module} import generate_events as g; "
            f"ev = g({FINGERPRINT_EVENTS}, {', '.join(f'{k}={int(v)}' for k, v in stream.items())}); "
            "print(hashlib.sha256(repr([(e.user_id, e.item_id, e.category_id, e.behavior, e.ts) for e in ev])"
            ".encode()).hexdigest())")
    done = runner([str(side.root / ".venv" / "bin" / "python"), "-c", code], cwd=str(side.root),
                  capture_output=True, text=True, env=side_env(side, os.environ))
    return done.stdout.strip() or None if done.returncode == 0 else None


def bench_argv(values: Mapping[str, Any]) -> list[str]:
    """The shared flags of `streamrec bench`, from argparse values by destination."""
    argv: list[str] = []
    for dest, flag in PASSED_FLAGS:
        value = values.get(dest)
        if value is None or value == "":
            continue
        argv += [flag, str(value)]
    return argv


def artifact_argv(values: Mapping[str, Any], out: Path, side: Side) -> list[str]:
    """The model artifact of a side's runs: the caller's ``--artifact`` when given, else one per side
    under ``out``, trained by that side's own code in its first run and reused by its later ones
    (an artifact layout can change between commits)."""
    given = values.get("artifact")
    return ["--artifact", str(given) if given else str(out / f"artifact-{side.name}")]


def side_env(side: Side, base: Mapping[str, str]) -> dict[str, str]:
    """The caller's environment (config overrides included: both sides run the same settings) plus
    the side's own entries, less what would make the side's bench compare again."""
    return {**{k: v for k, v in base.items() if k not in NOT_INHERITED}, **side.env}


def schedule(repeats: int) -> list[int]:
    """Which side runs when, ABBA: 0 is REF, 1 this tree; each repeat runs both."""
    order: list[int] = []
    for i in range(repeats):
        order += [0, 1] if i % 2 == 0 else [1, 0]
    return order


def run_side(side: Side, argv: Sequence[str], out: Path, runner: Callable[..., Any] = subprocess.run) -> dict[str, Any]:
    """One bench run of ``side`` into ``out``; its results.json, or CompareError naming the log."""
    out.mkdir(parents=True, exist_ok=True)
    run_log = out / "bench.log"
    started = time.monotonic()
    with run_log.open("w") as logf:
        done = runner([str(side.streamrec), "bench", *argv, "--out", str(out)], cwd=str(side.root),
                      stdout=logf, stderr=subprocess.STDOUT, env=side_env(side, os.environ))
    results = out / "results.json"
    if done.returncode != 0 or not results.is_file():
        raise CompareError(f"{side.name} ({side.commit[:12]}) bench failed (exit {done.returncode}); see {run_log}")
    data: dict[str, Any] = json.loads(results.read_text())
    log.info("%s (%s): bench done in %.0f s", side.name, side.commit[:12], time.monotonic() - started)
    return data


def dig(results: Mapping[str, Any], path: Sequence[str]) -> float | None:
    value: Any = results
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def figures(results: Mapping[str, Any]) -> dict[str, float]:
    """The compared figures of one results.json: throughput, ratios, CPU per event, latency points."""
    out = {name: v for name, path, _ in FIGURES if (v := dig(results, path)) is not None}
    for key in sorted(results):
        if key.startswith("latency_") and isinstance(results[key], Mapping):
            point = key.removeprefix("latency_").replace("_per_s", "/s").replace("_", " ")
            for label, field_name in LATENCY_QUANTILES:
                v = dig(results, (key, field_name))
                if v is not None:
                    out[f"latency {point} {label} ms"] = v
    return out


def higher_is_better(name: str) -> bool:
    for figure, _, higher in FIGURES:
        if figure == name:
            return higher
    return not name.startswith("latency")


@dataclass
class Comparison:
    ref: str
    this: str
    argv: list[str]
    runs: dict[str, list[dict[str, float]]]
    """Per side ("ref", "this"), the figures of each run, in run order."""
    same_stream: bool = True
    rows: list[dict[str, Any]] = field(default_factory=list)

    def summarize(self) -> Comparison:
        names = list(dict.fromkeys(n for side in ("ref", "this") for run in self.runs[side] for n in run))
        self.rows = []
        for name in names:
            ref = [r[name] for r in self.runs["ref"] if name in r]
            this = [r[name] for r in self.runs["this"] if name in r]
            ref_median = float(np.median(ref)) if ref else None
            this_median = float(np.median(this)) if this else None
            ratio = this_median / ref_median if ref_median and this_median is not None else None
            self.rows.append({"figure": name, "ref_median": ref_median, "this_median": this_median,
                              "ratio": ratio, "higher_is_better": higher_is_better(name), "ref_runs": ref,
                              "this_runs": this})
        return self


def markdown(c: Comparison) -> str:
    lines = [f"# bench --compare: this tree ({c.this[:12]}) against {c.ref[:12]}", "",
             f"Flags on both sides: `{' '.join(c.argv)}`; runs alternated ABBA; medians over "
             f"{len(c.runs['ref'])} REF and {len(c.runs['this'])} of this tree's run(s).", ""]
    if not c.same_stream:
        lines += ["**The two commits' generators make different streams** (or one could not be run): "
                  "each side benched its own stream of the same size and seed.", ""]
    cells = []
    for row in c.rows:
        ratio = row["ratio"]
        mark = ""
        if ratio is not None and abs(ratio - 1) >= MARKED_CHANGE:
            mark = " (better)" if (ratio > 1) == row["higher_is_better"] else " (worse)"
        cells.append([row["figure"], _fmt(row["ref_median"]), _fmt(row["this_median"]),
                      f"{'' if ratio is None else f'{ratio:.2f}'}{mark}", ", ".join(_fmt(v) for v in row["ref_runs"]),
                      ", ".join(_fmt(v) for v in row["this_runs"])])
    lines += table(["figure", "ref median", "this median", "this / ref", "ref runs", "this runs"], cells,
                   align="lrrrll")
    lines += ["", f"A ratio within {MARKED_CHANGE:.0%} of 1 is left unmarked: on a shared machine that is inside "
              "a run's spread."]
    return "\n".join(lines) + "\n"


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"


def compare(repo: Path, ref: str, values: Mapping[str, Any], out: Path, repeats: int,
            runner: Callable[..., Any] = subprocess.run) -> Comparison:
    """Build REF, run both benches alternated, write compare.json and compare.md under ``out``.

    ``out`` is made absolute first: REF's bench runs in its own worktree, where a relative path
    would put its results (and its artifact) under that tree instead of here."""
    if repeats < 1:
        raise CompareError(f"--compare-repeats must be at least 1, got {repeats}")
    out = Path(out).resolve()
    commit = resolve(repo, ref)
    sides = [prepare_ref(repo, commit, runner), this_side(repo)]
    argv = bench_argv(values)
    stream = {name: int(values.get(flag) or default) for name, flag, default in STREAM_SETTINGS}
    prints = [stream_fingerprint(side, stream, runner) for side in sides]
    result = Comparison(ref=commit, this=sides[1].commit, argv=argv, runs={"ref": [], "this": []},
                        same_stream=prints[0] is not None and prints[0] == prints[1])
    if not result.same_stream:
        log.warning("the two generators make different streams for %s (or one could not be run): "
                    "each side benches its own stream", stream)
    out.mkdir(parents=True, exist_ok=True)
    for i, which in enumerate(schedule(repeats)):
        side = sides[which]
        data = run_side(side, [*argv, *artifact_argv(values, out, side)], out / f"{i + 1:02d}-{side.name}", runner)
        result.runs[side.name].append(figures(data))
        write(out, result.summarize())
    return result


def write(out: Path, c: Comparison) -> None:
    (out / "compare.json").write_text(json.dumps(asdict(c), indent=2) + "\n")
    (out / "compare.md").write_text(markdown(c))

"""The development matrix: every log, every ranker, several seeds, one table.

For each log (every ``*.csv`` under the data folder, in the Taobao layout
``user,item,category,behavior,ts`` that all the shared logs use):

1. split at the median event (the time of event ``n // 2`` of the sorted log);
2. per seed, train on the first half with the defaults of
   :func:`model_export.train.train_model` (the same code and settings for every log);
3. score the second half prequentially (:func:`streamrec.lab.evaluation.prequential.prequential`),
   once for all seeds: the first seed's ``model`` lists come from the bounded job
   (``use_job``; the pure-Python replay's lists must equal them, ``scoring.consistency``
   in the report), the other seeds' models re-rank the same replayed candidates, and the
   baselines re-rank them by their rules: one job and one replay per log, whatever the
   number of seeds. (On 2 cores the Amazon log takes about 20 minutes for 3 seeds:
   99,000 held-out requests of 100 candidates each, built and scored.)

Each log runs in its own process (one bounded job per PyFlink gateway), ``workers``
of them at once, largest first: a log's run keeps about one core busy, so two at
once on 2 cores bring the five shared logs from about 40 to 25 minutes.

Two kinds of baselines: the online ones (:mod:`model_export.online_baselines`: counters
and V-SKNN that learn from every event of the stream and make their own lists) are the ones
the model must beat; the frozen ones (:data:`FROZEN`: the job's candidates re-ranked by rules
over the artifact's tables) are diagnostics.

The report gives, per log x ranker x metric, the mean and spread (sample
standard deviation, min and max) over seeds, and per log and metric of
:data:`WIN_METRICS` a verdict against the best online baseline: win, tie or loss by the 95%
paired shopper-bootstrap interval of the difference (:mod:`streamrec.lab.evaluation.paired`; the
model's per-event gain averaged over seeds). Baselines do not depend on the seed, so their
spread is zero.

``streamrec evaluate --matrix`` and ``make eval-matrix`` call :func:`run_matrix`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from jobs.layout import PROJECT_ROOT
from model_export.online_baselines import NAMES as ONLINE_NAMES
from streamrec.lab.evaluation.prequential import prequential
from streamrec.lab.evaluation.report import json_safe
from streamrec.lab.markdown import table
from udfs.diversity import OFF
from udfs.errors import InputError
from udfs.events import Event
from udfs.logs import load_events

log = logging.getLogger(__name__)

METRICS = ("ndcg@10", "hr@10", "novel_hr@10", "coverage@10")
WIN_METRICS = ("ndcg@10", "novel_hr@10")
# Re-rankers of the job's own candidates with the artifact's frozen tables: diagnostics only.
FROZEN = ("trending", "recent", "covisit", "covisit+recent", "generator")
RANKERS = (*FROZEN, *ONLINE_NAMES, "model")
LOG_FORMAT = "userbehavior"
JSON_FILE = "matrix.json"
PNG_FILE = "matrix.png"
TABLE_FILE = "matrix.md"
# Where the project's development logs live: ``shared/data`` beside the checkout.
DEFAULT_DATA_DIR = PROJECT_ROOT.parent / "shared" / "data"

# (events, until_ms, out_dir, seed) -> artifact directory
Trainer = Callable[[Sequence[Event], int, Path, int], Path]
# Torch threads per training when logs run one at a time; with several at once, the cores split.
TRAIN_THREADS = 2


@dataclass(frozen=True)
class DevLog:
    name: str
    path: Path


def discover_logs(data_dir: str | Path) -> list[DevLog]:
    """Every ``*.csv`` under ``data_dir`` (recursively), named by its path below it without suffix."""
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"--data {root}: no such folder (the development logs, e.g. ../shared/data)")
    logs = [DevLog(p.relative_to(root).with_suffix("").as_posix(), p) for p in sorted(root.rglob("*.csv"))]
    if not logs:
        raise FileNotFoundError(f"--data {root}: no *.csv log below it")
    return logs


def median_until(events: Sequence[Event]) -> int:
    """The split: the time of the median event of the time-sorted log. Events at that
    time or later are held out, so at most half the log trains."""
    if len(events) < 2:
        raise InputError(f"a log of {len(events)} events cannot be split")
    return int(events[len(events) // 2].ts)


def default_trainer(events: Sequence[Event], until_ms: int, out_dir: Path, seed: int, *,
                    threads: int = TRAIN_THREADS) -> Path:
    from model_export.train import train_model  # lazy: torch (the [train] extra) takes ~6 s to import

    return train_model(events, until_ms=until_ms, out_dir=out_dir, seed=seed, progress=False,
                       held_out_metrics=False, threads=threads)


def run_log(dev: DevLog, seeds: Sequence[int], work: Path, *, trainer: Trainer = default_trainer,
            use_job: bool = True, provider: str = "cpu") -> dict[str, Any]:
    """Train once per seed, then score every seed's model on one replay of the log.

    The first seed's lists come from the bounded job (``use_job``; the replay's must equal
    them); the other seeds' models re-rank the same candidates in the replay (their
    vocabulary and tables are the first's, :func:`~streamrec.lab.evaluation.prequential.check_same_serving`).
    The baselines do not depend on the seed and are scored once."""
    t0 = time.perf_counter()
    events = load_events(dev.path, LOG_FORMAT, sort=True)
    until = median_until(events)
    arts: list[Path] = []
    train_s: list[float] = []
    for seed in seeds:
        t = time.perf_counter()
        arts.append(trainer(events, until, work / dev.name / f"seed{seed}", seed))
        train_s.append(round(time.perf_counter() - t, 2))
    t = time.perf_counter()
    # The diversity cap off: every ranker's list is its own order (the cap is a product choice
    # measured by --diversity-sweep, not part of the ranking compared here).
    res = prequential(events, arts[0], since_ms=until, provider=provider, workdir=work, use_job=use_job,
                      others=arts[1:], max_per_category=OFF, replay_model="direct", online=True)
    score_s = round(time.perf_counter() - t, 2)
    common = {k: res[k] for k in ("requests", "novel_requests", "candidate_recall", "novel_candidate_recall")}
    baselines = {r: m for r, m in res["rankers"].items() if r != "model"}
    runs = [{"seed": seeds[0], "artifact": str(arts[0]), "model_source": res["model_source"],
             "rankers": res["rankers"], "model_new_items_only": res.get("model_new_items_only"), **common}]
    for seed, art in zip(seeds[1:], arts[1:], strict=True):
        runs.append({"seed": seed, "artifact": str(art), "model_source": "replay",
                     "rankers": {**baselines, "model": res["others"][str(art)]}, **common})
    for run, secs in zip(runs, train_s, strict=True):
        run["seconds_train"] = secs
        log.info("%s seed %d: model ndcg@10 %.4f novel_hr@10 %.4f (%s)", dev.name, run["seed"],
                 run["rankers"]["model"]["ndcg@10"], run["rankers"]["model"]["novel_hr@10"], run["model_source"])
    scoring = {k: res.get(k) for k in ("consistency", "direct_consistency", "seconds_replay", "seconds_job",
                                       "job_counts")}
    return {"name": dev.name, "path": str(dev.path), "events": len(events), "until_ms": until,
            "users": len({e.user_id for e in events}), "runs": runs, "paired": res.get("paired", {}),
            "scoring": {**scoring, "seconds": score_s},
            "seconds": round(time.perf_counter() - t0, 2)}


def spread(values: Sequence[float]) -> dict[str, float]:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "min": min(vals), "max": max(vals), "n": len(vals)}


def summarize(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Per ranker and metric: mean and spread over the log's seeds; per metric of :data:`WIN_METRICS`,
    the model against the best baseline that learns online (the frozen re-rankers are diagnostics):
    ``verdict`` win, tie or loss by the paired shopper-bootstrap interval of the difference
    (``raw["paired"]``; without it, by the means alone), ``win`` only for a win."""
    runs = raw["runs"]
    table = {r: {m: spread([run["rankers"].get(r, {}).get(m, math.nan) for run in runs]) for m in METRICS}
             for r in RANKERS}
    wins: dict[str, Any] = {}
    for m in WIN_METRICS:
        best = max(ONLINE_NAMES, key=lambda r: _or_low(table[r][m]["mean"]))
        model, base = table["model"][m]["mean"], table[best][m]["mean"]
        paired = (raw.get("paired") or {}).get(best, {}).get(m)
        verdict = paired["verdict"] if paired else ("win" if model > base else "loss")
        wins[m] = {"best_baseline": best, "baseline": base, "model": model, "verdict": verdict,
                   "win": verdict == "win", "diff_ci": paired["ci"] if paired else None,
                   "ratio": model / base if base > 0 else math.inf}
    extra = {k: spread([run[k] for run in runs]) for k in
             ("candidate_recall", "novel_candidate_recall", "seconds_train")}
    # What the first seed's model would get on new items with all k slots given to them: the most
    # a list that also shows repeats can reach against a baseline that shows new items only.
    new_only = (runs[0].get("model_new_items_only") or {}) if runs else {}
    return {"rankers": table, "wins": wins, "requests": runs[0]["requests"] if runs else 0,
            "novel_requests": runs[0]["novel_requests"] if runs else 0,
            "novel_hr_new_items_only": new_only.get("novel_hr@10"), **extra}


def _or_low(value: float) -> float:
    """A mean to rank by, NaN (no figure) last."""
    return value if math.isfinite(value) else -math.inf


def log_in_subprocess(dev: DevLog, data_dir: str | Path, seeds: Sequence[int], out: Path, *, use_job: bool,
                      provider: str, train_threads: int = TRAIN_THREADS) -> dict[str, Any]:
    """One log's matrix entry from a fresh ``streamrec evaluate --matrix --logs NAME`` process.

    One bounded job per process: after two jobs, a third in the same PyFlink gateway failed
    to load the project's Java classes (``Could not found the Java class ...EventEnvelope``)."""
    sub = out / "logs" / dev.name
    cmd = [sys.executable, "-m", "streamrec.cli", "evaluate", "--matrix", "--data", str(data_dir), "--logs",
           dev.name, "--seeds", ",".join(map(str, seeds)), "--out", str(sub),
           "--model-source", "job" if use_job else "replay", "--provider", provider,
           "--workers", "1", "--train-threads", str(train_threads)]
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"matrix run of {dev.name} failed ({done.returncode}): {done.stderr[-2000:]}")
    entry: dict[str, Any] = json.loads((sub / JSON_FILE).read_text())["logs"][dev.name]
    return entry


def write_report(report: dict[str, Any], out: Path) -> dict[str, Any]:
    """JSON, Markdown and plot of the logs done so far (rewritten after each log), logs by name;
    returns what it wrote."""
    report = json_safe({**report, "logs": dict(sorted(report["logs"].items()))})
    (out / JSON_FILE).write_text(json.dumps(report, indent=2, sort_keys=True))
    (out / TABLE_FILE).write_text(format_matrix(report) + "\n")
    plot_matrix(report, out / PNG_FILE)
    return report


def default_workers() -> int:
    """Logs run at once by default: one per two cores, at least one. A log's run keeps about
    one core busy (the bounded job runs at parallelism 1, the replay in one Python thread,
    training on :data:`TRAIN_THREADS`), so two at once on 2 cores nearly halve the wall time."""
    return max(1, min(2, os.cpu_count() or 1))


def threads_per_log(workers: int, train_threads: int = TRAIN_THREADS) -> int:
    """Torch threads for each log's training: ``train_threads`` when logs run one at a time,
    else the cores split between the ``workers`` logs running at once (at least one each)."""
    return max(1, (os.cpu_count() or 1) // workers) if workers > 1 else train_threads


def run_matrix(data_dir: str | Path, out_dir: str | Path, *, seeds: Sequence[int] = (0, 1, 2),
               logs: Sequence[str] | None = None, trainer: Trainer | None = None,
               use_job: bool = True, provider: str = "cpu", isolate: bool = False, workers: int = 1,
               train_threads: int = TRAIN_THREADS) -> dict[str, Any]:
    """Run every log (or the ``logs`` named) x ``seeds``; write JSON, a Markdown table and a plot,
    after every log (a failure later keeps what is done). ``isolate``: each log in its own
    process (:func:`log_in_subprocess`; ``trainer`` is then the default one), ``workers`` of
    them at once, the largest logs first, each training on ``cores // workers`` threads."""
    if workers < 1:
        raise InputError(f"--workers must be at least 1, not {workers}")
    t0 = time.perf_counter()
    out = Path(out_dir)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    devs = discover_logs(data_dir)
    if logs:
        unknown = sorted(set(logs) - {d.name for d in devs})
        if unknown:
            raise InputError(f"--logs: {unknown} not under {data_dir} (have {[d.name for d in devs]})")
        devs = [d for d in devs if d.name in set(logs)]
    report: dict[str, Any] = {"data_dir": str(Path(data_dir).resolve()), "seeds": list(seeds),
                              "model_source": "job" if use_job else "replay", "split": "median event",
                              "logs": {}, "workers": workers if isolate else 1}

    written: dict[str, Any] = {}

    def finished(name: str, entry: dict[str, Any]) -> None:
        report["logs"][name] = entry
        report["seconds_total"] = round(time.perf_counter() - t0, 2)
        written.update(write_report(report, out))

    if isolate:
        threads = threads_per_log(workers, train_threads)
        largest_first = sorted(devs, key=lambda d: -d.path.stat().st_size)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(log_in_subprocess, dev, data_dir, seeds, out, use_job=use_job,
                                   provider=provider, train_threads=threads): dev for dev in largest_first}
            for future in as_completed(futures):
                finished(futures[future].name, future.result())
    else:
        train = trainer or partial(default_trainer, threads=train_threads)
        for dev in devs:
            raw = run_log(dev, seeds, work, trainer=train, use_job=use_job, provider=provider)
            finished(dev.name, {"data": {k: raw[k] for k in ("path", "events", "users", "until_ms")},
                                "summary": summarize(raw), "runs": raw["runs"],
                                "scoring": raw["scoring"], "seconds": raw["seconds"]})
    return written  # the report as last written, after the last log


def _cell(s: Mapping[str, Any]) -> str:
    mean, std = s.get("mean"), s.get("std")
    if mean is None:
        return "n/a"
    return f"{mean:.4f} ± {std:.4f}" if std else f"{mean:.4f}"


_VERDICT = {"win": "**WIN**", "tie": "tie", "loss": "loss", "n/a": "n/a"}


def _verdict(w: Mapping[str, Any]) -> str:
    """A cell's verdict; reports written before verdicts had only ``win``."""
    return str(w.get("verdict") or ("win" if w["win"] else "loss"))


def format_matrix(report: Mapping[str, Any]) -> str:
    """One Markdown table (log x ranker rows, metric columns, mean ± sample std over seeds), the
    model's row marked per win metric (WIN / loss against the best baseline), and a wins summary."""
    rows = []
    for name, entry in report["logs"].items():
        s = entry["summary"]
        for r in RANKERS:
            cells = []
            for m in METRICS:
                c = _cell(s["rankers"][r][m])
                if r == "model" and m in s["wins"]:
                    c += " " + _VERDICT[_verdict(s["wins"][m])]
                cells.append(c)
            rows.append([name, r, *cells])
    lines = table(["log", "ranker", *METRICS], rows, align="ll" + "r" * len(METRICS))
    summary_rows = []
    for name, entry in report["logs"].items():
        s = entry["summary"]
        cells = []
        for m in WIN_METRICS:
            w = s["wins"][m]
            ci = w.get("diff_ci")
            interval = f", difference {ci[0]:+.4f} to {ci[1]:+.4f}" if ci else ""
            cells.append(f"{_VERDICT[_verdict(w)]} {w['model']:.4f} vs {w['baseline']:.4f} "
                         f"({w['best_baseline']}{interval})")
        bound = s.get("novel_hr_new_items_only")
        summary_rows.append([name, f"{s['requests']} ({s['novel_requests']})",
                             f"{s['candidate_recall']['mean']:.4f} ({s['novel_candidate_recall']['mean']:.4f})",
                             *cells, "-" if bound is None else f"{bound:.4f}"])
    lines += ["", *table(["log", "requests (novel)", "candidate recall (novel)",
                          *(f"{m}: model vs best baseline" for m in WIN_METRICS),
                          "novel_hr@10, every slot a new item (model, first seed)"], summary_rows,
                         align="lrr" + "l" * len(WIN_METRICS) + "r")]
    verdicts = [_verdict(w) for e in report["logs"].values() for w in e["summary"]["wins"].values()]
    lines += ["", f"model wins {verdicts.count('win')} of {len(verdicts)} (log, metric) cells, ties "
              f"{verdicts.count('tie')}, loses {verdicts.count('loss')}, against the best baseline that learns "
              f"online (95% paired shopper-bootstrap interval of the difference; a tie holds 0); seeds "
              f"{report['seeds']}, model lists from the {report['model_source']}; "
              f"{report.get('seconds_total', 0):.0f} s in all"]
    return "\n".join(lines)


def plot_matrix(report: Mapping[str, Any], path: str | Path) -> Path:
    """One panel per win metric: grouped bars (log x ranker), error bars = sample std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(report["logs"])
    fig, axes = plt.subplots(len(WIN_METRICS), 1, figsize=(max(7.0, 2.2 * len(names)), 4.2 * len(WIN_METRICS)),
                             squeeze=False)
    w = 0.8 / len(RANKERS)
    x = np.arange(len(names))
    for ax, m in zip(axes[:, 0], WIN_METRICS, strict=True):
        for j, r in enumerate(RANKERS):
            cells = [report["logs"][n]["summary"]["rankers"][r][m] for n in names]
            mean = [c["mean"] or 0.0 for c in cells]
            err = [c["std"] or 0.0 for c in cells]
            ax.bar(x + (j - (len(RANKERS) - 1) / 2) * w, mean, w, yerr=err, label=r, capsize=2,
                   hatch="//" if r == "model" else None)
        ax.set_xticks(x, names, rotation=15, ha="right")
        ax.set_ylabel(m)
        ax.set_title(f"{m}, mean over seeds {report['seeds']}")
        ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)

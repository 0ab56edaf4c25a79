"""`streamrec ab report`: per-arm online HR@10 and NDCG@10 with 95% intervals, a plot and a JSON.

The figures are the job's own feedback records (udfs/feedback.py): each event scored against
the list the shopper was shown before it, under the arm that ranked that list.

Intervals: a percentile bootstrap over *shoppers* (a cluster bootstrap), ``RESAMPLES``
resamples with a fixed seed. The records of one shopper are not independent draws: a shopper
who finds the lists useful hits again and again, and an arm is assigned per shopper, so the
unit the experiment randomizes is the shopper, not the event. A binomial (normal) interval over
records treats n correlated records as n independent ones and comes out too narrow, the more so
the more events a shopper has. Resampling whole shoppers keeps each one's records together, so
the interval reflects the between-shopper spread, and it needs no normality of the ratio
(hits over records, where shoppers have different record counts). Each arm is resampled on its
own (arms hold disjoint shoppers); the difference to the control arm is taken replicate by
replicate. With few shoppers (under ~30 per arm) any interval is rough; the report gives the
counts beside it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from udfs.errors import InputError
from udfs.feedback import NO_ARM, ndcg_at
from udfs.ranking_metrics import K
from udfs.records import FeedbackRecord

RESAMPLES = 2000
LEVEL = 0.95
JSON_FILE = "ab_report.json"
PNG_FILE = "ab_report.png"
# Resampled index matrices are chunked to about this many entries (memory, not speed).
CHUNK_ENTRIES = 4_000_000


@dataclass
class Shoppers:
    """One arm's records summed per shopper: records, hits@k and NDCG@k gains."""

    n: list[int] = field(default_factory=list)
    hits: list[int] = field(default_factory=list)
    gain: list[float] = field(default_factory=list)
    versions: set[str] = field(default_factory=set)


def per_shopper(records: Iterable[FeedbackRecord], k: int = K) -> dict[str, Shoppers]:
    """Arm -> its shoppers' sums (lists outside an experiment fall under ``none``)."""
    sums: dict[str, dict[Any, list[float]]] = defaultdict(dict)
    versions: dict[str, set[str]] = defaultdict(set)
    for fb in records:
        arm = fb.arm or NO_ARM
        versions[arm].add(fb.model_version)
        row = sums[arm].setdefault(fb.user_id, [0, 0, 0.0])
        row[0] += 1
        if fb.hit(k):
            row[1] += 1
            row[2] += ndcg_at(fb.rank, k)
    out = {}
    for arm in sorted(sums):
        rows = list(sums[arm].values())
        out[arm] = Shoppers([int(r[0]) for r in rows], [int(r[1]) for r in rows], [r[2] for r in rows],
                            versions[arm])
    return out


def bootstrap_ratios(n: np.ndarray, values: Sequence[np.ndarray], resamples: int,
                     rng: np.random.Generator) -> list[np.ndarray]:
    """Per value array: ``resamples`` replicates of sum(value) / sum(n) over shoppers drawn with replacement
    (the same draws for every value array)."""
    shoppers = len(n)
    out: list[list[np.ndarray]] = [[] for _ in values]
    chunk = max(1, min(resamples, CHUNK_ENTRIES // max(shoppers, 1)))
    done = 0
    while done < resamples:
        size = min(chunk, resamples - done)
        idx = rng.integers(0, shoppers, size=(size, shoppers))
        total = n[idx].sum(axis=1)
        for j, v in enumerate(values):
            out[j].append(v[idx].sum(axis=1) / total)
        done += size
    return [np.concatenate(parts) for parts in out]


def percentile_interval(replicates: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(replicates, [tail, 100.0 - tail])
    return float(lo), float(hi)


def ab_report(records: Iterable[FeedbackRecord], *, control: str | None = None, resamples: int = RESAMPLES,
              seed: int = 0, level: float = LEVEL, k: int = K) -> dict[str, Any]:
    """Per arm: records, shoppers, model versions, HR@k and NDCG@k with their intervals, and the
    difference to ``control`` (default: an arm named ``control``, else the first by name)."""
    arms = per_shopper(records, k)
    rng = np.random.default_rng(seed)
    hr_key, ndcg_key = f"hr@{k}", f"ndcg@{k}"
    out: dict[str, Any] = {"k": k, "level": level, "resamples": resamples, "seed": seed,
                           "interval": "percentile bootstrap over shoppers (cluster bootstrap)", "arms": {}}
    replicates: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for arm, s in arms.items():
        n = np.asarray(s.n, dtype=np.int64)
        hits = np.asarray(s.hits, dtype=np.float64)
        gain = np.asarray(s.gain, dtype=np.float64)
        hr_reps, ndcg_reps = bootstrap_ratios(n, [hits, gain], resamples, rng)
        replicates[arm] = (hr_reps, ndcg_reps)
        out["arms"][arm] = {
            "records": int(n.sum()), "shoppers": len(n), "model_versions": sorted(s.versions),
            hr_key: float(hits.sum() / n.sum()), f"{hr_key}_ci": percentile_interval(hr_reps, level),
            ndcg_key: float(gain.sum() / n.sum()), f"{ndcg_key}_ci": percentile_interval(ndcg_reps, level),
        }
    if control is None:
        control = "control" if "control" in arms else (next(iter(arms)) if arms else None)
    elif control not in arms:
        raise InputError(f"control arm {control!r} has no feedback records (arms: {', '.join(arms) or 'none'})")
    out["control"] = control
    if control is not None:
        base = out["arms"][control]
        for arm, figures in out["arms"].items():
            if arm == control:
                continue
            for i, key in enumerate((hr_key, ndcg_key)):
                diff = replicates[arm][i] - replicates[control][i]
                figures[f"{key}_diff"] = figures[key] - base[key]
                figures[f"{key}_diff_ci"] = percentile_interval(diff, level)
    return out


def format_report(report: dict[str, Any]) -> str:
    k, pct = report["k"], round(report["level"] * 100)
    lines = [f"per arm, {pct}% intervals: {report['interval']}, {report['resamples']} resamples"]
    for arm, f in report["arms"].items():
        parts = [f"{arm}: {f['records']} records, {f['shoppers']} shoppers ({', '.join(f['model_versions'])})"]
        for key, name in ((f"hr@{k}", f"HR@{k}"), (f"ndcg@{k}", f"NDCG@{k}")):
            lo, hi = f[f"{key}_ci"]
            text = f"  {name} {f[key]:.4f} [{lo:.4f}, {hi:.4f}]"
            if f"{key}_diff" in f:
                dlo, dhi = f[f"{key}_diff_ci"]
                text += f"  vs {report['control']}: {f[f'{key}_diff']:+.4f} [{dlo:+.4f}, {dhi:+.4f}]"
            parts.append(text)
        lines.extend(parts)
    return "\n".join(lines)


def plot(report: dict[str, Any], path: str | Path) -> Path:
    """Per arm, HR@k and NDCG@k as points with their intervals, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = report["k"]
    arms = list(report["arms"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, (key, name) in zip(axes, ((f"hr@{k}", f"HR@{k}"), (f"ndcg@{k}", f"NDCG@{k}")), strict=True):
        values = [report["arms"][a][key] for a in arms]
        lows = [v - report["arms"][a][f"{key}_ci"][0] for a, v in zip(arms, values, strict=True)]
        highs = [report["arms"][a][f"{key}_ci"][1] - v for a, v in zip(arms, values, strict=True)]
        x = np.arange(len(arms))
        ax.errorbar(x, values, yerr=[lows, highs], fmt="o", capsize=6)
        for xi, v in zip(x, values, strict=True):
            ax.annotate(f"{v:.3f}", (xi, v), textcoords="offset points", xytext=(8, 0), fontsize=8)
        ax.set_xticks(x, [f"{a}\n({report['arms'][a]['shoppers']} shoppers)" for a in arms])
        ax.set_xlim(-0.6, len(arms) - 0.4)
        ax.set_title(f"online {name}, {round(report['level'] * 100)}% interval")
        ax.margins(y=0.25)
    fig.suptitle("per arm, shopper-level bootstrap intervals")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def write_report(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """``ab_report.json`` and ``ab_report.png`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / JSON_FILE
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    return json_path, plot(report, out / PNG_FILE)

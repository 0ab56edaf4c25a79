"""Accuracy against diversity over the range of ``ranking.max_per_category``.

For each cap, the prequential replay (:func:`streamrec.lab.evaluation.prequential.prequential`,
``use_job=False``: the job's own :class:`udfs.recommend.Recommender`, so the cap is
applied exactly as the job applies it) serves the held-out lists and scores the
``model`` lists on every metric. Baselines are skipped: the cap re-ranks only what
the job serves. ``streamrec evaluate --diversity-sweep [CAPS]`` writes
``diversity_sweep.json`` (one row per cap) and ``diversity_sweep.png`` (NDCG@10 and
HR@10 against intra-list diversity, each point labelled with its cap).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from streamrec.lab.evaluation.prequential import prequential
from streamrec.lab.evaluation.report import json_safe
from udfs.artifact import verify_manifest
from udfs.errors import InputError
from udfs.events import Event
from udfs.ranking_metrics import K

log = logging.getLogger(__name__)

SWEEP_JSON = "diversity_sweep.json"
SWEEP_PNG = "diversity_sweep.png"
# 0 is off; past the largest same-category run in a top-10 list a cap changes nothing.
DEFAULT_CAPS = (0, 1, 2, 3, 4, 5, 6, 8)
SWEEP_COLUMNS = ("ndcg@10", "hr@10", "precision@10", "recall@10", "f1@10", "ild@10", "coverage@10",
                 "novelty@10")


def parse_caps(text: str) -> tuple[int, ...]:
    """``"0,2,4"`` -> (0, 2, 4); each a whole number >= 0 (the config validates the upper bound)."""
    try:
        caps = tuple(int(c) for c in text.split(",") if c.strip())
    except ValueError:
        raise InputError(f"--diversity-sweep: comma-separated whole numbers, got {text!r}") from None
    if not caps or any(c < 0 for c in caps):
        raise InputError(f"--diversity-sweep: caps must be >= 0 (0 = off), got {text!r}")
    return caps


def sweep(events: Sequence[Event], artifact_dir: str | Path, out_dir: str | Path,
          caps: Sequence[int] = DEFAULT_CAPS, *, provider: str = "cpu", k: int = K) -> dict[str, Any]:
    """Score the model's served lists at every cap; write the JSON and the plot; return the report."""
    rows = []
    base: dict[str, Any] = {}
    for cap in caps:
        t0 = time.perf_counter()
        res = prequential(events, artifact_dir, provider=provider, use_job=False, k=k, max_per_category=cap,
                          baselines=())
        base = {key: res[key] for key in ("requests", "novel_requests", "catalog_size", "top_k", "since_ms")}
        rows.append({"max_per_category": cap, **res["rankers"]["model"],
                     "seconds": round(time.perf_counter() - t0, 2)})
        log.info("max_per_category %d: %s", cap, {c: round(rows[-1][c], 4) for c in SWEEP_COLUMNS})
    report = json_safe({"artifact_dir": str(Path(artifact_dir).resolve()),
                        "model_version": verify_manifest(artifact_dir).model_version, **base, "k": k, "rows": rows})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / SWEEP_JSON).write_text(json.dumps(report, indent=2, sort_keys=True))
    plot_sweep(report, out / SWEEP_PNG)
    return report


def plot_sweep(report: dict[str, Any], path: str | Path) -> Path:
    """Left: NDCG@10 and HR@10 against intra-list diversity, one point per cap (labelled; 0 = off).
    Right: catalog coverage and novelty per cap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    by_ild = sorted(rows, key=lambda r: r["ild@10"])  # 0 (off) is the least diverse, not a cap below 1
    label = [("off" if r["max_per_category"] == 0 else str(r["max_per_category"])) for r in by_ild]
    ild = [r["ild@10"] for r in by_ild]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for metric, marker in (("ndcg@10", "o"), ("hr@10", "s")):
        ys = [r[metric] for r in by_ild]
        ax.plot(ild, ys, marker=marker, label=metric.upper())
        for x, y, lab in zip(ild, ys, label, strict=True):
            ax.annotate(lab, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("intra-list diversity @10 (share of item pairs across categories)")
    ax.set_ylabel("accuracy")
    ax.set_title("accuracy vs diversity, by ranking.max_per_category")
    ax.legend()
    x = list(range(len(by_ild)))
    ax2.plot(x, [r["coverage@10"] for r in by_ild], marker="o", color="tab:green", label="catalog coverage@10")
    ax2.set_ylabel("coverage")
    ax2.set_xticks(x, label)
    ax2.set_xlabel("ranking.max_per_category (least to most diverse)")
    twin = ax2.twinx()
    twin.plot(x, [r["novelty@10"] for r in by_ild], marker="s", color="tab:red", label="novelty@10 (bits)")
    twin.set_ylabel("novelty (bits)")
    ax2.legend(loc="lower left")
    twin.legend(loc="center left")
    ax2.set_title("coverage and novelty")
    fig.suptitle(f"{report.get('model_version')}: {report.get('requests', 0)} held-out lists")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def format_sweep(report: dict[str, Any]) -> str:
    """A Markdown table: one row per cap."""
    lines = ["| max_per_category | " + " | ".join(SWEEP_COLUMNS) + " |", "|" + "---|" * (len(SWEEP_COLUMNS) + 1)]
    for r in report["rows"]:
        cap = "0 (off)" if r["max_per_category"] == 0 else str(r["max_per_category"])
        lines.append(f"| {cap} | " + " | ".join(f"{r[c]:.4f}" for c in SWEEP_COLUMNS) + " |")
    return "\n".join(lines)

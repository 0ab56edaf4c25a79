"""Evaluation report: every ranker x metric x protocol, as JSON, a PNG and a Markdown table.

Protocols:

* ``offline``: exactly the evaluation ``train_model`` runs
  (:func:`model_export.dataset.build_training_data` with the manifest's
  training settings and split ``train_span.until_ms``, then
  :func:`model_export.evaluate.evaluate` on the held-out requests, the model
  scored by the artifact's ONNX file);
* ``prequential``: the same log through the streaming job (see
  :mod:`streamrec.lab.evaluation.prequential`), baselines on the same candidates from the
  job's pure-Python replay.

``streamrec evaluate --events FILE --artifact DIR --out DIR [--protocol ...]``
calls :func:`evaluate`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from model_export.dataset import build_training_data
from model_export.evaluate import evaluate as evaluate_offline
from model_export.onnx_io import onnx_session, predict_onnx
from streamrec.lab.evaluation.prequential import prequential
from udfs.artifact import load_artifact, verify_manifest
from udfs.errors import InputError
from udfs.events import Event
from udfs.logs import CsvLayout, load_events

log = logging.getLogger(__name__)

PROTOCOLS = ("offline", "prequential")
JSON_FILE = "evaluation.json"
PNG_FILE = "evaluation.png"
TABLE_METRICS = ("hr@10", "ndcg@10", "mrr", "auc", "novel_hr@10", "novel_ndcg@10", "precision@10", "recall@10",
                 "f1@10", "ild@10", "coverage@10", "novelty@10")


def offline(events: Sequence[Event], artifact_dir: str | Path, *, threads: int = 2) -> dict[str, Any]:
    """The held-out evaluation of ``train_model``, recomputed for the artifact's model."""
    t0 = time.perf_counter()
    art = load_artifact(artifact_dir)
    m = art.manifest
    cfg = m.training_config
    data = build_training_data(
        events, until_ms=m.until_ms, limits=m.state_limits,
        n_candidates=m.n_candidates, seq_len=art.seq_len,
        hard_negatives=int(cfg.get("hard_negatives", 20)),
        popularity_negatives=int(cfg.get("popularity_negatives", 5)),
        force_positive=bool(cfg.get("force_positive", False)),
        table_period_ms=cfg.get("table_period_ms", 86400 * 1000),
        min_count=int(cfg.get("vocab_min_count", 2)), seed=int(cfg.get("seed", 0)),
    )
    matches = (data.vocab.items == art.vocab.items and data.vocab.categories == art.vocab.categories
               and data.tables.to_bytes() == art.tables.to_bytes())
    if not matches:
        log.warning("vocabulary/tables rebuilt from %s differ from the artifact's: not its training log?",
                    artifact_dir)
    session = onnx_session(art.model_path, threads=threads)
    scores = predict_onnx(session, data.eval)
    result = evaluate_offline(data.eval, {"model": scores}, catalog_size=data.catalog_size)
    result["since_ms"] = data.until_ms
    result["tables_match_artifact"] = bool(matches)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result


def evaluate(
    events_path: str | Path,
    artifact_dir: str | Path,
    out_dir: str | Path,
    protocols: Sequence[str] = PROTOCOLS,
    *,
    provider: str = "cpu",
    fmt: str = "auto",
    layout: CsvLayout | None = None,
    max_per_category: int | None = None,
) -> dict[str, Any]:
    """Evaluate the artifact on ``events_path`` under ``protocols``; write ``out_dir/evaluation.json``
    and ``out_dir/evaluation.png``; return the report (the JSON's content). ``fmt`` and
    ``layout``: how to read the log (:func:`udfs.logs.load_events`); ``max_per_category``: the
    job's diversity cap in the prequential protocol (None: the config default)."""
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown or not protocols:
        raise InputError(f"protocols must be among {PROTOCOLS}, got {list(protocols)}")
    t0 = time.perf_counter()
    manifest = verify_manifest(artifact_dir)
    events = load_events(events_path, fmt, sort=True, layout=layout)
    until = manifest.until_ms
    report: dict[str, Any] = {
        "events_path": str(Path(events_path).resolve()),
        "artifact_dir": str(Path(artifact_dir).resolve()),
        "model_version": manifest.model_version,
        "data": {
            "events": len(events),
            "users": len({e.user_id for e in events}),
            "items": len({e.item_id for e in events}),
            "start_ms": events[0].ts if events else None,
            "end_ms": events[-1].ts if events else None,
            "until_ms": until,
            "held_out_events": sum(1 for e in events if e.ts >= until),
            "train_span": manifest.train_span,
        },
        "protocols": {},
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for p in protocols:
        log.info("protocol %s ...", p)
        if p == "offline":
            report["protocols"][p] = offline(events, artifact_dir)
        else:
            t = time.perf_counter()
            res = prequential(events, artifact_dir, since_ms=until, provider=provider, workdir=out,
                              max_per_category=max_per_category)
            res["seconds"] = round(time.perf_counter() - t, 2)
            report["protocols"][p] = res
    report["seconds_total"] = round(time.perf_counter() - t0, 2)
    report = json_safe(report)
    (out / JSON_FILE).write_text(json.dumps(report, indent=2, sort_keys=True))
    plot(report, out / PNG_FILE)
    return report


def json_safe(x: Any) -> Any:
    """NaN/inf are not JSON: null instead."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    return x


def plot(report: dict[str, Any], path: str | Path) -> Path:
    """Grouped bars of NDCG@10 and novel HR@10 per ranker, one panel per protocol."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    protos = list(report["protocols"])
    fig, axes = plt.subplots(1, len(protos), figsize=(6.5 * len(protos), 4.5), squeeze=False)
    for ax, p in zip(axes[0], protos, strict=True):
        rankers = report["protocols"][p]["rankers"]
        names = list(rankers)
        x = np.arange(len(names))
        w = 0.38
        for j, (metric, label) in enumerate((("ndcg@10", "NDCG@10"), ("novel_hr@10", "novel HR@10"))):
            vals = [rankers[n].get(metric) or 0.0 for n in names]
            bars = ax.bar(x + (j - 0.5) * w, vals, w, label=label)
            ax.bar_label(bars, fmt="%.3f", fontsize=7, rotation=90, padding=2)
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.set_title(f"{p} ({report['protocols'][p].get('requests', 0)} requests)")
        ax.set_ylabel("metric")
        ax.margins(y=0.2)
        ax.legend()
    fig.suptitle(f"{report.get('model_version')} on {Path(report.get('events_path', '')).name}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def format_table(report: dict[str, Any]) -> str:
    """A Markdown table: one row per protocol x ranker; a summary line per protocol below."""
    head = "| protocol | ranker | " + " | ".join(TABLE_METRICS) + " |"
    lines = [head, "|" + "---|" * (len(TABLE_METRICS) + 2)]
    for p, res in report["protocols"].items():
        for name, m in res["rankers"].items():
            lines.append(f"| {p} | {name} | " + " | ".join(_fmt(m.get(c)) for c in TABLE_METRICS) + " |")
    lines.append("")
    for p, res in report["protocols"].items():
        extra = ""
        if "consistency" in res:
            c = res["consistency"]
            extra = f", job lists identical to replay: {c['identical_lists']}/{c['job_lists']}"
        if "online" in res:  # the job's own figures, from its feedback records (docs/operations.md "Online feedback")
            o = res["online"]
            extra += (f", the job's online HR@10 {_fmt(o['hr@10'])} NDCG@10 {_fmt(o['ndcg@10'])} "
                      f"over {o['events']} feedback records")
        lines.append(
            f"- {p}: {res['requests']} requests ({res['novel_requests']} novel), candidate recall "
            f"{_fmt(res['candidate_recall'])} (novel {_fmt(res['novel_candidate_recall'])}), "
            f"catalog {res['catalog_size']}, {res.get('seconds', 'n/a')} s{extra}"
        )
    return "\n".join(lines)

"""What the catalog's brand and price features change: the same log trained with and without them.

For each seed the model is trained twice on the same events and split, once with the
catalog (``train_model(catalog=...)``: ``brand_share`` and ``price_affinity`` filled in)
and once without (both 0), and each is scored on the held-out part by the training
code's own evaluation. The report gives NDCG@10, HR@10 and novel-item HR@10 per arm
(mean and sample std over seeds) and the per-seed differences, so a change smaller than
the seeds' spread reads as none.

    python -m streamrec.lab.evaluation.catalog_features --events LOG --catalog CATALOG --out DIR

``streamrec generate --out LOG`` writes a log and its catalog (``NAME.catalog.jsonl``
beside ``NAME.msgpack``). Writes ``catalog_features.json`` and ``catalog_features.md`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from model_export.train import train_model
from streamrec.catalog_files import read_catalog_file
from streamrec.lab.markdown import table
from udfs.artifact import read_manifest
from udfs.catalog import CatalogItem
from udfs.events import Event
from udfs.logs import load_events

METRICS = ("ndcg@10", "hr@10", "novel_hr@10")
ARMS = ("without", "with")
JSON_FILE, MD_FILE = "catalog_features.json", "catalog_features.md"


def held_out(events: Sequence[Event], catalog: Sequence[CatalogItem] | None, seed: int,
             epochs: int) -> dict[str, float]:
    """The model's held-out metrics for one training run."""
    with tempfile.TemporaryDirectory() as tmp:
        out = train_model(events, out_dir=Path(tmp) / "model", seed=seed, epochs=epochs, catalog=catalog,
                          progress=False)
        model = read_manifest(out).metrics["rankers"]["model"]
    return {m: float(model[m]) for m in METRICS}


def summarize(runs: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Mean and sample std per arm and metric; the per-seed difference (with - without)."""
    out: dict[str, Any] = {}
    for metric in METRICS:
        cell: dict[str, Any] = {}
        for arm in ARMS:
            values = [r[metric] for r in runs[arm]]
            cell[arm] = {"mean": statistics.fmean(values),
                         "std": statistics.stdev(values) if len(values) > 1 else 0.0}
        diffs = [w[metric] - o[metric] for w, o in zip(runs["with"], runs["without"], strict=True)]
        cell["diff"] = {"mean": statistics.fmean(diffs), "std": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
                        "per_seed": diffs}
        out[metric] = cell
    return out


def markdown(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [f"Held-out metrics of the model trained without and with the catalog's brand and price "
             f"features; {meta['events']} events, {meta['catalog_items']} catalog items, seeds {meta['seeds']}.",
             ""]
    lines += table(["metric", "without", "with", "with - without (per seed)"],
                   [[metric, f"{cell['without']['mean']:.4f} ± {cell['without']['std']:.4f}",
                     f"{cell['with']['mean']:.4f} ± {cell['with']['std']:.4f}",
                     f"{cell['diff']['mean']:+.4f} ({', '.join(f'{d:+.4f}' for d in cell['diff']['per_seed'])})"]
                    for metric, cell in summary.items()], align="llll")
    return "\n".join(lines) + "\n"


def run(events: Sequence[Event], catalog: Sequence[CatalogItem], seeds: Sequence[int], out_dir: Path,
        epochs: int = 2) -> dict[str, Any]:
    t0 = time.time()
    runs: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
    for seed in seeds:
        runs["without"].append(held_out(events, None, seed, epochs))
        runs["with"].append(held_out(events, catalog, seed, epochs))
    summary = summarize(runs)
    meta = {"events": len(events), "catalog_items": len(catalog), "seeds": list(seeds), "epochs": epochs,
            "seconds": round(time.time() - t0, 1)}
    report = {"meta": meta, "runs": runs, "summary": summary}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / JSON_FILE).write_text(json.dumps(report, indent=2))
    (out_dir / MD_FILE).write_text(markdown(summary, meta))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", required=True, help="a log (format detected)")
    p.add_argument("--catalog", required=True, help="its catalog (CSV or JSON lines)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--out", default="eval-catalog-features")
    args = p.parse_args(argv)
    events = load_events(args.events, "auto", sort=True)
    catalog = read_catalog_file(Path(args.catalog)).items
    report = run(events, catalog, [int(s) for s in args.seeds.split(",")], Path(args.out), args.epochs)
    print(markdown(report["summary"], report["meta"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

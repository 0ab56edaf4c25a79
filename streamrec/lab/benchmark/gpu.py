"""The summary of `make bench-gpu` (scripts/bench_gpu.sh): the model alone beside the job's batched ranking.

The script runs `streamrec bench --phases model,batching` (the job, batching off and on) and
`streamrec bench-model` (the model alone at 1k-16k rows per call: fp32 with and without IO
binding, fp16, int8); this reads both results files and writes ``summary.json`` and
``summary.md`` next to them. Every figure comes from those files, with the provider each
was measured on: a CPU smoke run says CPU, and no figure is called a GPU figure unless the
model bench ran on the CUDA provider.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from streamrec.lab.markdown import table

# The targets: the model alone on one H100, and the job against the model alone.
MODEL_TARGET_PAIRS_PER_S = 1_000_000
JOB_TARGET_SHARE_OF_MODEL = 0.5


def best_model_rows(model: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per engine, its fastest batch size (pairs/s at the median call time)."""
    best: dict[str, dict[str, Any]] = {}
    for r in model.get("results", []):
        if r["engine"] not in best or r["pairs_per_s"] > best[r["engine"]]["pairs_per_s"]:
            best[r["engine"]] = r
    return best


def summarize(job: Mapping[str, Any], model: Mapping[str, Any]) -> dict[str, Any]:
    m = model.get("machine", {})
    on_gpu = m.get("provider_used") == "CUDAExecutionProvider"
    best = best_model_rows(model)
    fp32 = best.get("ort_fp32_iobind") or best.get("ort_fp32") or {}
    b = job.get("batching") or {}
    in_job = b.get("in_job_pairs_per_s_on")
    model_pairs = fp32.get("pairs_per_s")
    return {
        "provider": m.get("provider_used"),
        "gpu": m.get("gpu") or job.get("gpu"),
        "measured_on_gpu": on_gpu,
        "model_alone": {e: {"batch": r["batch"], "pairs_per_s": r["pairs_per_s"], "p50_ms": r["p50_ms"]}
                        for e, r in best.items()},
        "model_alone_fp32_pairs_per_s": model_pairs,
        "model_target_pairs_per_s": MODEL_TARGET_PAIRS_PER_S,
        "model_meets_target": bool(on_gpu and model_pairs and model_pairs >= MODEL_TARGET_PAIRS_PER_S),
        "job_parallelism": b.get("parallelism"),
        "job_batch_settings": b.get("settings"),
        "job_rows_per_call_p50": b.get("rows_per_call_p50"),
        "job_rows_per_call_mean": b.get("rows_per_call_mean"),
        "job_events_per_s_on": b.get(f"p{b.get('parallelism')}_events_per_s_on"),
        "job_events_per_s_off": b.get(f"p{b.get('parallelism')}_events_per_s_off"),
        "job_pairs_per_s_on": b.get("pairs_per_s_on"),
        "job_in_job_pairs_per_s_on": in_job,
        "job_in_job_share_of_model_alone": in_job / model_pairs if in_job and model_pairs else None,
        "job_target_share_of_model_alone": JOB_TARGET_SHARE_OF_MODEL,
    }


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:,.0f}" if isinstance(v, float) else str(v)


def markdown(s: Mapping[str, Any]) -> str:
    where = (f"GPU {s['gpu']} (CUDA provider)" if s["measured_on_gpu"] else
             f"provider {s['provider']}: NOT a GPU measurement (smoke run or CPU fallback)")
    lines = ["# bench-gpu", "", f"Measured on {where}.", "",
             *table(["model alone (best batch)", "rows per call", "p50 ms", "pairs/s"],
                    [[engine, r["batch"], f"{r['p50_ms']:.3f}", _fmt(r["pairs_per_s"])]
                     for engine, r in s["model_alone"].items()])]
    share = s["job_in_job_share_of_model_alone"]
    lines += ["", f"Job at parallelism {s['job_parallelism']}, batching {json.dumps(s['job_batch_settings'])}: "
              f"{_fmt(s['job_events_per_s_on'])} events/s on ({_fmt(s['job_events_per_s_off'])} off), "
              f"{_fmt(s['job_pairs_per_s_on'])} pairs/s end to end; rows per call p50 <= "
              f"{_fmt(s['job_rows_per_call_p50'])} (mean {_fmt(s['job_rows_per_call_mean'])}); "
              f"in-job model pairs/s {_fmt(s['job_in_job_pairs_per_s_on'])}"
              + (f" = {share:.2f} of the model alone (target {s['job_target_share_of_model_alone']})." if share
                 else "."),
              "", f"Model-alone target {s['model_target_pairs_per_s']:,} pairs/s (fp32, IO binding): "
              f"{'met' if s['model_meets_target'] else 'not met' if s['measured_on_gpu'] else 'not applicable'}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="summarize a bench-gpu run (job and model-alone results)")
    p.add_argument("--job", required=True, help="results.json of `streamrec bench --phases model,batching`")
    p.add_argument("--model", required=True, help="model_bench.json of `streamrec bench-model`")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    s = summarize(json.loads(Path(a.job).read_text()), json.loads(Path(a.model).read_text()))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(s, indent=2, default=str))
    (out / "summary.md").write_text(markdown(s))
    print(markdown(s))


if __name__ == "__main__":
    main()

"""Model-only benchmark: torch eager vs onnxruntime fp32 / fp16 / int8 per batch size.

A batch of ``B`` rows is ``B`` scored (user, candidate) pairs from
``ceil(B / per_user)`` users (``per_user=100`` candidates, as the job's default),
with random valid inputs (:func:`model_export.variants.synthetic_batch`): the
model's cost depends on shapes, not on values. onnxruntime runs through
:class:`udfs.ranker.OnnxRanker`, the wrapper the job uses (fp32 with IO binding
on and off); torch runs the artifact's state dict (``weights_only=True``) under
``torch.inference_mode`` on CUDA when available and the provider allows,
timed including the host-to-device copy and synchronisation.

Variants are built into ``out_dir/variants`` (never into the artifact) unless
the artifact already has them. Runs unchanged on a GPU machine (CUDA provider).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model_export.variants import FP32_FILE, VARIANT_FILES, build_variants, held_out_batches, synthetic_batch
from streamrec.lab.markdown import table
from udfs.artifact import read_manifest
from udfs.features import INPUT_NAMES
from udfs.logs import load_events
from udfs.ranker import OnnxRanker

DEFAULT_BATCH_SIZES = (1, 4, 16, 64, 256, 1024, 4096)
PER_USER = 100


def _repeats_for(rows: int, repeats: int) -> int:
    """Fewer repeats for big batches (each call is longer); at least 5."""
    return max(5, min(repeats, int(repeats * 256 / max(rows, 256))))


def _time_calls(fn: Callable[[], Any], repeats: int, budget_s: float, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    lat: list[float] = []
    start = time.perf_counter()
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        lat.append((time.perf_counter() - t) * 1000.0)
        if len(lat) >= 3 and time.perf_counter() - start > budget_s:
            break
    return lat


def _torch_runner(artifact_dir: Path, provider: str, threads: int) -> tuple[Any, str, Callable[..., Any]]:
    import torch  # the [train] extra, ~6 s to import: only this engine needs it

    from model_export.model import CHECKPOINT_FILE, DIN, ModelConfig  # lazy: torch, as above

    model = DIN(ModelConfig.from_dict(read_manifest(artifact_dir).model_config))
    model.load_state_dict(torch.load(artifact_dir / CHECKPOINT_FILE, weights_only=True, map_location="cpu"))
    model.eval()
    device = "cuda" if provider != "cpu" and torch.cuda.is_available() else "cpu"
    if device == "cpu" and threads:
        torch.set_num_threads(threads)
    model.to(device)

    def call(batch: Mapping[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            args = [torch.from_numpy(batch[n]).to(device) for n in INPUT_NAMES]
            out = model(*args)
            return out.cpu().numpy()

    return model, device, call


def _machine(provider_choice: Any) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "onnxruntime_providers": ort.get_available_providers(),
        "torch": torch.__version__,
        "torch_cuda": torch.cuda.is_available(),
        "provider_used": provider_choice.provider,
        "provider_label": provider_choice.label,
        "provider_fallback_reason": provider_choice.fallback_reason,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _engines(artifact_dir: Path, variant_dir: Path, provider: str, threads: int) -> tuple[dict[str, Any], Any]:
    fp32 = str(artifact_dir / FP32_FILE)
    engines: dict[str, Any] = {
        "ort_fp32": OnnxRanker(fp32, provider=provider, io_binding="off", intra_op_threads=threads),  # type: ignore[arg-type]
        "ort_fp32_iobind": OnnxRanker(fp32, provider=provider, io_binding="on", intra_op_threads=threads),  # type: ignore[arg-type]
    }
    for name, fname in VARIANT_FILES.items():
        engines[f"ort_{name}"] = OnnxRanker(str(variant_dir / fname), provider=provider,  # type: ignore[arg-type]
                                            intra_op_threads=threads)
    return engines, engines["ort_fp32"].choice


def _markdown(res: Mapping[str, Any]) -> str:
    m = res["machine"]
    lines = [
        "# Model benchmark",
        "",
        f"artifact `{res['artifact_dir']}`, provider {m['provider_used']} ({m['provider_label']}), "
        f"torch on {res['torch_device']}, {res['threads']} intra-op thread(s), "
        f"{m['cpu_count']} CPUs, {m['platform']}, onnxruntime {m['onnxruntime']}, torch {m['torch']}"
        + (f", GPU {m['gpu']}" if m.get("gpu") else ""),
        "",
        "Rows = scored (user, candidate) pairs, 100 candidates per user. Latency per call, ms.",
        "",
        *table(["engine", "batch", "users", "repeats", "p50 ms", "p99 ms", "pairs/s"],
               [[r["engine"], r["batch"], r["users"], r["repeats"], f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}",
                 f"{r['pairs_per_s']:,.0f}"] for r in res["results"]]),
    ]
    par = res.get("parity") or {}
    if par:
        cells = [[name, p["usable"], f"{p['max_abs_diff']:.3g}", f"{p['score_std']:.3g}", p["requests"],
                  p["requests_order_changed"], f"{p['top10_overlap_mean']:.4f} / {p['top10_overlap_min']:.2f}"]
                 for name in VARIANT_FILES if (p := par.get(name))]
        lines += ["", f"Parity vs ORT fp32 ({res.get('parity_source')} batches):", "",
                  *table(["variant", "usable", "max abs diff", "score std", "requests", "order changed (beyond ties)",
                          "top-10 overlap mean / min"], cells, align="llrrrrr")]
    return "\n".join(lines) + "\n"


def run(
    artifact_dir: str | Path,
    out_dir: str | Path,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    repeats: int = 50,
    provider: str = "auto",
    *,
    threads: int = 1,
    budget_s: float = 1.5,
    sample_batches: Sequence[Mapping[str, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Time every engine at every batch size; write ``model_bench.json`` / ``.md`` into ``out_dir``.

    ``repeats`` is the most timed calls per (engine, batch); big batches get fewer
    (:func:`_repeats_for`) and each cell stops after ``budget_s`` seconds (min 3 calls).
    ``sample_batches`` (e.g. :func:`model_export.variants.held_out_batches`) feed the
    variants' parity check; without them it uses synthetic batches and says so.
    """
    artifact = Path(artifact_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(artifact)
    mc, seq_len = manifest.model_config, manifest.seq_len

    def make(rows: int, seed: int) -> dict[str, np.ndarray]:
        return synthetic_batch(rows, int(mc["n_items"]), int(mc["n_categories"]), seq_len, PER_USER, seed)

    parity: dict[str, Any] | None = None
    if all((artifact / f).is_file() for f in VARIANT_FILES.values()):
        variant_dir = artifact
    else:
        variant_dir = out / "variants"
        source = "held-out" if sample_batches is not None else "synthetic"
        batches = list(sample_batches) if sample_batches is not None else [make(1000, s) for s in range(4)]
        parity = build_variants(artifact, batches, variant_dir, threads=threads)
        parity["source"] = source

    engines, choice = _engines(artifact, variant_dir, provider, threads)
    _, torch_device, torch_call = _torch_runner(artifact, provider, threads)
    calls: dict[str, Callable[[Mapping[str, np.ndarray]], np.ndarray]] = {"torch": torch_call}
    calls.update({name: e.score for name, e in engines.items()})

    results: list[dict[str, Any]] = []
    for rows in batch_sizes:
        batch = make(int(rows), seed=int(rows))
        n = _repeats_for(int(rows), repeats)
        for name, fn in calls.items():
            lat = _time_calls(functools.partial(fn, batch), n, budget_s)
            p50 = float(np.median(lat))
            results.append({
                "engine": name, "batch": int(rows), "users": math.ceil(rows / PER_USER), "repeats": len(lat),
                "p50_ms": p50, "p99_ms": float(np.percentile(lat, 99)), "mean_ms": float(np.mean(lat)),
                "pairs_per_s": rows / (p50 / 1000.0) if p50 > 0 else 0.0,
            })
    res: dict[str, Any] = {
        "artifact_dir": str(artifact),
        "model_version": manifest.model_version,
        "batch_sizes": [int(b) for b in batch_sizes],
        "per_user": PER_USER,
        "threads": threads,
        "torch_device": torch_device,
        "machine": _machine(choice),
        "engines": list(calls),
        "variant_dir": str(variant_dir),
        "parity": parity,
        "parity_source": parity.get("source") if parity else None,
        "results": results,
    }
    (out / "model_bench.json").write_text(json.dumps(res, indent=2, default=str))
    (out / "model_bench.md").write_text(_markdown(res))
    return res


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="benchmark the ranking model: torch vs onnxruntime fp32/fp16/int8")
    p.add_argument("--artifact", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--batch-sizes", default=",".join(map(str, DEFAULT_BATCH_SIZES)))
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--provider", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--events", help="UserBehavior CSV the artifact was trained from: held-out parity batches")
    p.add_argument("--parity-requests", type=int, default=2000)
    a = p.parse_args(argv)
    sample = None
    if a.events:
        sample = held_out_batches(a.artifact, load_events(a.events, sort=True), a.parity_requests)
    res = run(a.artifact, a.out, [int(b) for b in a.batch_sizes.split(",")], a.repeats, a.provider,
              threads=a.threads, sample_batches=sample)
    print(_markdown(res))


if __name__ == "__main__":
    main()

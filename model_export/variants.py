"""Reduced-precision variants of an artifact's ranking model, with a parity check.

From the fp32 ``model.onnx`` of an artifact this writes

* ``model.fp16.onnx``: weights and activations in float16
  (``onnxruntime.transformers.float16.convert_float_to_float16`` with
  ``keep_io_types=True``, so inputs and the ``score`` output keep the fp32
  model's dtypes and the job's feature code feeds it unchanged);
* ``model.int8.onnx``: dynamic quantization (``quantize_dynamic``, QInt8
  weights; MatMul and Gather, i.e. the attention projections and the
  embedding tables; ORT's dynamic quantizer leaves Gemm in fp32).

Nothing here edits a manifest: :func:`build_variants` returns the parity
figures and a ``usable`` flag per variant for the caller to record.

The parity rule (:func:`check_parity`, :func:`is_usable`) is about ranking,
the only thing the job uses scores for. A request is one user's candidates
(rows sharing a ``cand_user`` value within a batch). Reference ties are not
an order: candidates whose reference scores differ by no more than
``tol = rel_tol * max(1, max|ref score| in the request)`` may come out in
either order. A request *changes order* if some pair that the reference
separates by more than ``tol`` is not strictly in the same order in the
variant (a variant tie on such a pair counts as a change).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model_export.dataset import replay_requests, sort_events
from model_export.onnx_io import onnx_session
from udfs.artifact import MODEL_FILE, load_artifact
from udfs.features import DENSE_FEATURES, INPUT_NAMES, N_BEHAVIORS, N_GAP_BUCKETS, UserRequest, build_batch
from udfs.logs import load_events

log = logging.getLogger(__name__)

FP32_FILE = MODEL_FILE
VARIANT_FILES = {"fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
REL_TOL = 1e-5  # reference ties: score gap <= REL_TOL * max(1, max |score|) in the request
MAX_DIFF_FRACTION = 0.05  # usable: max |variant - ref| <= MAX_DIFF_FRACTION * std(ref scores)
MIN_ORDER_OK_FRACTION = 0.99  # usable: >= 99% of requests without an order change beyond ties
TOP_K = 10
SENSITIVITY_TOLS = (1e-4, 1e-3, 1e-2)  # also reported: order changes at these looser tie tolerances

Batch = Mapping[str, np.ndarray]


# --------------------------------------------------------------------------------- variants


def make_fp16(src: str | Path, dst: str | Path) -> Path:
    """float16 weights and compute; inputs/outputs keep their fp32-model dtypes."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    fp16 = convert_float_to_float16(model, keep_io_types=True)
    onnx.save(fp16, str(dst))
    return Path(dst)


def make_int8(src: str | Path, dst: str | Path) -> Path:
    """Dynamic quantization, int8 weights (QInt8), activations quantized per call."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    return Path(dst)


def _score(session: Any, batches: Sequence[Batch]) -> list[np.ndarray]:
    names = [i.name for i in session.get_inputs()]
    return [np.asarray(session.run(["score"], {n: b[n] for n in names})[0], dtype=np.float32)
            for b in batches]


# ----------------------------------------------------------------------------------- parity


def requests_of(cand_user: np.ndarray) -> list[np.ndarray]:
    """Row indices of each request (user) in a batch, users in order of first appearance."""
    cu = np.asarray(cand_user)
    if len(cu) == 0:
        return []
    order = np.argsort(cu, kind="stable")
    bounds = np.flatnonzero(np.diff(cu[order])) + 1
    groups = np.split(order, bounds)
    groups.sort(key=lambda g: int(g[0]))
    return groups


def order_changed(ref: np.ndarray, var: np.ndarray, rel_tol: float = REL_TOL) -> bool:
    """True if a pair the reference separates by more than the tie tolerance is not kept.

    ``tol = rel_tol * max(1, max|ref|)``; pairs with ``ref[i] - ref[j] > tol`` need
    ``var[i] > var[j]`` (strict). Pairs within ``tol`` are ties and may swap.
    """
    ref = np.asarray(ref, dtype=np.float64)
    var = np.asarray(var, dtype=np.float64)
    if len(ref) < 2:
        return False
    tol = rel_tol * max(1.0, float(np.max(np.abs(ref))))
    separated = (ref[:, None] - ref[None, :]) > tol
    kept = var[:, None] > var[None, :]
    return bool(np.any(separated & ~kept))


def top_k_overlap(ref: np.ndarray, var: np.ndarray, k: int = TOP_K) -> float:
    """|top-k(ref) & top-k(var)| / min(k, n); stable order breaks exact ties."""
    n = len(ref)
    if n == 0:
        return 1.0
    kk = min(k, n)
    a = set(np.argsort(-np.asarray(ref), kind="stable")[:kk].tolist())
    b = set(np.argsort(-np.asarray(var), kind="stable")[:kk].tolist())
    return len(a & b) / kk


def compare_scores(
    ref_scores: Sequence[np.ndarray],
    var_scores: Sequence[np.ndarray],
    batches: Sequence[Batch],
    rel_tol: float = REL_TOL,
) -> dict[str, Any]:
    """Parity figures for already computed scores (one array per batch)."""
    diffs: list[np.ndarray] = []
    refs: list[np.ndarray] = []
    requests = changed = 0
    overlaps: list[float] = []
    loose = {t: 0 for t in SENSITIVITY_TOLS}
    for ref, var, batch in zip(ref_scores, var_scores, batches, strict=True):
        ref = np.asarray(ref, dtype=np.float32)
        var = np.asarray(var, dtype=np.float32)
        if ref.shape != var.shape:
            raise ValueError(f"score shapes differ: {ref.shape} vs {var.shape}")
        diffs.append(np.abs(ref.astype(np.float64) - var.astype(np.float64)))
        refs.append(ref)
        for rows in requests_of(batch["cand_user"]):
            requests += 1
            changed += order_changed(ref[rows], var[rows], rel_tol)
            overlaps.append(top_k_overlap(ref[rows], var[rows]))
            for t in loose:
                loose[t] += order_changed(ref[rows], var[rows], t)
    d = np.concatenate(diffs) if diffs else np.zeros(0)
    r = np.concatenate(refs) if refs else np.zeros(0, dtype=np.float32)
    all_finite = bool(np.all(np.isfinite(d)))
    return {
        "rows": int(len(d)),
        "requests": requests,
        "requests_order_changed": changed,
        "order_ok_fraction": (requests - changed) / requests if requests else 1.0,
        "max_abs_diff": float(np.max(d)) if len(d) else 0.0,
        "mean_abs_diff": float(np.mean(d)) if len(d) else 0.0,
        "score_std": float(np.std(r)) if len(r) else 0.0,
        "score_max_abs": float(np.max(np.abs(r))) if len(r) else 0.0,
        "top10_overlap_mean": float(np.mean(overlaps)) if overlaps else 1.0,
        "top10_overlap_min": float(np.min(overlaps)) if overlaps else 1.0,
        "rel_tol": rel_tol,
        "requests_order_changed_at_rel_tol": {f"{t:g}": n for t, n in loose.items()},
        "finite": all_finite,
    }


def is_usable(parity: Mapping[str, Any], max_diff_fraction: float = MAX_DIFF_FRACTION,
              min_order_ok: float = MIN_ORDER_OK_FRACTION) -> bool:
    """The usability rule, exactly:

    ``finite`` and ``requests > 0`` and
    ``max_abs_diff <= max_diff_fraction * score_std`` (default 5% of the reference
    scores' standard deviation over all compared rows; a constant-score model
    needs ``max_abs_diff <= 1e-6``) and
    ``order_ok_fraction >= min_order_ok`` (default 0.99: at least 99% of requests
    with no order change beyond ties, see :func:`order_changed`).
    """
    if not parity.get("finite", False) or not parity.get("requests"):
        return False
    scale = float(parity["score_std"])
    limit = max_diff_fraction * scale if scale > 0 else 1e-6
    return float(parity["max_abs_diff"]) <= limit and float(parity["order_ok_fraction"]) >= min_order_ok


def check_parity(ref_path: str | Path, variant_path: str | Path, batches: Sequence[Batch],
                 rel_tol: float = REL_TOL, threads: int = 1) -> dict[str, Any]:
    """Score ``batches`` with both models (CPU) and compare; adds ``usable`` (:func:`is_usable`)."""
    ref = _score(onnx_session(ref_path, threads), batches)
    var = _score(onnx_session(variant_path, threads), batches)
    out = compare_scores(ref, var, batches, rel_tol)
    out["usable"] = is_usable(out)
    return out


def build_variants(artifact_dir: str | Path, sample_batches: Sequence[Batch],
                   out_dir: str | Path | None = None, threads: int = 1) -> dict[str, Any]:
    """Write ``model.fp16.onnx`` and ``model.int8.onnx`` and check them on ``sample_batches``.

    Files go to ``out_dir`` (default: ``artifact_dir``) next to a copy of ``model.onnx``;
    the manifest is never read for writing nor changed. Returns
    ``{"fp16": {...parity, "usable", "file", "bytes", "seconds"}, "int8": {...},
    "fp32_bytes": int, "rule": str}`` for the caller to put into a manifest.
    """
    src = Path(artifact_dir) / FP32_FILE
    out = Path(out_dir) if out_dir is not None else Path(artifact_dir)
    out.mkdir(parents=True, exist_ok=True)
    ref = out / FP32_FILE
    if ref.resolve() != src.resolve():
        shutil.copyfile(src, ref)
    result: dict[str, Any] = {"fp32_bytes": ref.stat().st_size, "rule": " ".join(is_usable.__doc__.split())
                              if is_usable.__doc__ else ""}
    makers = {"fp16": make_fp16, "int8": make_int8}
    for name, fname in VARIANT_FILES.items():
        t = time.perf_counter()
        path = makers[name](ref, out / fname)
        parity = check_parity(ref, path, sample_batches, threads=threads)
        parity.update(file=str(path), bytes=path.stat().st_size, seconds=round(time.perf_counter() - t, 2))
        result[name] = parity
        log.info("%s variant: usable=%s %s", name, parity["usable"], parity)
    return result


# ------------------------------------------------------------------------------ sample data


def held_out_batches(artifact_dir: str | Path, events: Iterable[Any], n_requests: int = 2000,
                     requests_per_batch: int = 64) -> list[dict[str, np.ndarray]]:
    """Batches of held-out requests (trigger at/after the artifact's ``until_ms``).

    Replays ``events`` through the training code path (:func:`replay_requests` with the
    artifact's state limits and candidate count, its tables and vocabulary, and
    :func:`udfs.features.build_batch`), i.e. exactly the inputs the job builds.
    """
    art = load_artifact(artifact_dir)
    limits, n_cand, until = art.manifest.state_limits, art.manifest.n_candidates, art.manifest.until_ms
    reqs: list[UserRequest] = []
    for pending, _ in replay_requests(sort_events(events), lambda ts: art.tables if ts >= until else None,
                                      limits, n_cand, exclude_bought=art.manifest.exclude_bought):
        if len(pending.candidates.items) == 0:
            continue
        reqs.append(UserRequest(pending.state, pending.candidates, pending.trigger))
        if len(reqs) >= n_requests:
            break
    return [build_batch(reqs[i:i + requests_per_batch], art.vocab, art.tables, art.seq_len)
            for i in range(0, len(reqs), requests_per_batch)]


def synthetic_batch(n_rows: int, n_items: int, n_categories: int, seq_len: int,
                    per_user: int = 100, seed: int = 0) -> dict[str, np.ndarray]:
    """Valid random inputs: ``ceil(n_rows / per_user)`` users, ``per_user`` rows each (last one fewer)."""
    rng = np.random.default_rng(seed)
    n_users = max(1, math.ceil(n_rows / per_user))
    lens = rng.integers(1, seq_len + 1, n_users)
    pad = np.arange(seq_len)[None, :] < (seq_len - lens)[:, None]  # left padding, as build_batch

    def hist(high: int, low: int = 1) -> np.ndarray:
        h = rng.integers(low, high, (n_users, seq_len), dtype=np.int64)
        h[pad] = 0
        return h

    dense = rng.random((n_rows, len(DENSE_FEATURES)), dtype=np.float32)
    return {
        "hist_item": hist(n_items),
        "hist_cat": hist(n_categories),
        "hist_beh": hist(N_BEHAVIORS + 1),
        "hist_gap": hist(N_GAP_BUCKETS, 0),
        "cand_user": (np.arange(n_rows, dtype=np.int64) // per_user),
        "cand_item": rng.integers(1, n_items, n_rows, dtype=np.int64),
        "cand_cat": rng.integers(1, n_categories, n_rows, dtype=np.int64),
        "dense": dense,
    }


def check_batch(batch: Batch) -> None:
    missing = [n for n in INPUT_NAMES if n not in batch]
    if missing:
        raise ValueError(f"batch lacks inputs {missing}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="build fp16/int8 variants of an artifact's model and check parity")
    p.add_argument("--artifact", required=True)
    p.add_argument("--out", required=True, help="directory for the variant files (not the artifact's)")
    p.add_argument("--events", help="UserBehavior CSV the artifact was trained from (held-out requests)")
    p.add_argument("--requests", type=int, default=2000)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if a.events:
        batches = held_out_batches(a.artifact, load_events(a.events, sort=True), a.requests)
    else:
        art = load_artifact(a.artifact)
        mc = art.manifest.model_config
        batches = [synthetic_batch(64 * 100, mc["n_items"], mc["n_categories"], art.seq_len, seed=s)
                   for s in range(max(1, a.requests // 64))]
    res = build_variants(a.artifact, batches, a.out)
    Path(a.out, "variants_parity.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()

"""Train the DIN ranker, export it to ONNX, check parity, evaluate, write the artifact.

``train_model`` is the entry point (``streamrec train`` calls it). With
``until_ms=None`` the split is at 80% of the log's span (see
:func:`model_export.dataset.default_until`): tables, vocabulary and training
examples use events before it, evaluation uses requests at/after it.

Training runs on a GPU when one is present (``device="auto"``, see
:func:`resolve_device`); everything after training (parity, evaluation, ONNX
export, the checkpoint) uses the model's CPU copy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from model_export.dataset import ExampleSet, build_training_data, concat_sets
from model_export.evaluate import evaluate, format_table
from model_export.model import CHECKPOINT_FILE, DIN, ModelConfig, export_onnx
from model_export.online_baselines import online_scores
from model_export.onnx_io import onnx_session, onnx_signature, predict_onnx
from model_export.tuning import choose_blend
from model_export.variants import REL_TOL, order_changed
from udfs.artifact import MODEL_FILE, write_artifact
from udfs.catalog import CatalogItem, load_catalog
from udfs.errors import InputError
from udfs.events import Event, Id
from udfs.features import INPUT_NAMES
from udfs.logs import load_events
from udfs.state import StateLimits
from udfs.timescales import format_period

log = logging.getLogger(__name__)

OPSET = 17
DeviceMode = Literal["auto", "cpu", "cuda"]
DEVICE_MODES: tuple[str, ...] = ("auto", "cpu", "cuda")


def resolve_device(mode: str, cuda_available: bool) -> str:
    """The torch device training runs on: ``"cuda"`` or ``"cpu"``.

    ``auto`` takes CUDA when torch sees a GPU, else the CPU; ``cuda`` without a
    GPU is an error rather than a silent CPU run.
    """
    if mode not in DEVICE_MODES:
        raise InputError(f"--device must be one of {', '.join(DEVICE_MODES)}, not {mode!r}")
    if mode == "cuda" and not cuda_available:
        raise InputError("--device cuda (STREAMREC_TRAIN_DEVICE) was asked for but torch sees no CUDA GPU "
                         "(torch.cuda.is_available() is False); use --device auto or --device cpu")
    if mode == "cpu":
        return "cpu"
    return "cuda" if cuda_available else "cpu"


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def _to_torch(batch: dict[str, np.ndarray], device: str = "cpu") -> list[Any]:
    return [torch.from_numpy(np.ascontiguousarray(batch[n])).to(device) for n in INPUT_NAMES]


def predict_torch(model: Any, es: ExampleSet, batch_requests: int = 512) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(es), batch_requests):
            idx = np.arange(s, min(s + batch_requests, len(es)))
            batch, _ = es.batch(idx)
            out.append(model(*_to_torch(batch)).numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def check_parity(torch_scores: np.ndarray, onnx_scores: np.ndarray, es: ExampleSet) -> dict[str, Any]:
    """Max abs difference and ranking order per request, torch vs onnxruntime.

    ``order_identical`` is tie-aware (model_export.variants.order_changed): candidates
    whose torch scores differ by at most the tie tolerance may swap, any other
    pair must keep its order. Exact-order swaps are counted too, for information.
    """
    diff = float(np.max(np.abs(torch_scores - onnx_scores))) if len(torch_scores) else 0.0
    changed = exact_mismatch = 0
    for i in range(len(es)):
        a, b = int(es.offsets[i]), int(es.offsets[i + 1])
        if order_changed(torch_scores[a:b], onnx_scores[a:b], REL_TOL):
            changed += 1
        if not np.array_equal(np.argsort(-torch_scores[a:b], kind="stable"),
                              np.argsort(-onnx_scores[a:b], kind="stable")):
            exact_mismatch += 1
    return {"max_abs_diff": diff, "order_identical": changed == 0, "tie_rel_tol": REL_TOL, "requests": len(es),
            "requests_order_changed": changed, "requests_exact_order_mismatch": exact_mismatch,
            "rows": int(len(torch_scores))}


def _subset(es: ExampleSet, n: int) -> ExampleSet:
    return es.select(np.arange(min(n, len(es))))


def _listwise_loss(logits: Any, labels: Any, cand_user: Any, n_users: int, weights: Any = None) -> Any:
    """Softmax cross-entropy of each request's positive against its own candidates
    (``weights``: optional per-request weights [U])."""
    m = torch.full((n_users,), -1e30, dtype=logits.dtype, device=logits.device).scatter_reduce(
        0, cand_user, logits.detach(), reduce="amax")
    e = torch.exp(logits - m[cand_user])
    denom = torch.zeros(n_users, dtype=logits.dtype, device=logits.device).index_add(0, cand_user, e)
    log_z = torch.log(denom) + m
    pos = labels > 0.5
    nll = log_z[cand_user[pos]] - logits[pos]
    if weights is None:
        return nll.mean()
    w = weights[cand_user[pos]]
    return (nll * w).sum() / w.sum()


def novel_request_weight(novel: np.ndarray, share: float) -> float:
    """Weight w of novel requests so that they carry ``share`` of the total weight:
    w * p / (w * p + 1 - p) = share, with p the novel fraction; at least 1."""
    p = float(np.mean(novel)) if len(novel) else 0.0
    if share <= 0 or p <= 0 or p >= 1:
        return 1.0
    share = min(share, 0.99)
    return max(1.0, share / (1.0 - share) * (1.0 - p) / p)


def fit(
    tr: ExampleSet,
    cfg: Any,
    *,
    seed: int = 0,
    epochs: int = 3,
    batch_size: int = 256,
    lr: float = 2e-3,
    loss: str = "bce",
    novel_weight: float | None = None,
    novel_share: float = 0.4,
    progress: bool = True,
    device: str = "cpu",
) -> tuple[Any, list[dict[str, float]]]:
    """Train a fresh DIN on ``tr``; deterministic for a given seed and thread count.

    ``device`` is a resolved torch device (:func:`resolve_device`): the model and
    each batch move there; the returned model is back on the CPU. Bitwise
    determinism is checked on the CPU; on CUDA, deterministic algorithms are
    requested (warn-only) but not guaranteed for every op.

    ``novel_weight`` scales the loss of requests whose positive the user never
    touched before (for BCE: the positive row), so the few novel positives are
    not drowned by re-touched ones. ``None`` derives it from ``novel_share``:
    the weight that gives novel requests that share of the total request weight
    (never below 1). On the Taobao sample only ~4% of training requests are novel
    (a re-touched item is the easy, dominant signal) and the model ranked novel
    candidates below almost every seen item; ``novel_share=0`` disables it."""
    if device == "cuda":
        # cuBLAS is deterministic only with a fixed workspace (read when CUDA initialises).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    _seed_everything(seed)
    model = DIN(cfg)
    model.set_dense_stats(tr.arrays["dense"])
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    if novel_weight is None:
        novel_weight = novel_request_weight(tr.novel, novel_share)
    req_w = np.where(tr.novel, novel_weight, 1.0).astype(np.float32)
    rng = np.random.default_rng(seed)
    n_batches = (len(tr) + batch_size - 1) // batch_size
    history: list[dict[str, float]] = []
    for epoch in range(epochs):
        model.train()
        perm = rng.permutation(len(tr))
        total, count = 0.0, 0
        bar = tqdm(range(n_batches), desc=f"epoch {epoch + 1}/{epochs}", disable=not progress,
                   mininterval=1.0)
        for b in bar:
            idx = perm[b * batch_size : (b + 1) * batch_size]
            batch, labels = tr.batch(idx)
            inputs = _to_torch(batch, device)
            logits = model(*inputs)
            y = torch.from_numpy(labels).to(device)
            w_req = torch.from_numpy(req_w[idx]).to(device)
            if loss == "softmax":
                value = _listwise_loss(logits, y, inputs[4], len(idx), w_req)
            else:
                w_row = torch.where(y > 0.5, w_req[inputs[4]], torch.ones_like(y))
                value = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, weight=w_row)
            opt.zero_grad()
            value.backward()
            opt.step()
            total += float(value.detach()) * len(idx)
            count += len(idx)
            if b % 20 == 0:
                bar.set_postfix(loss=f"{total / count:.4f}")
        history.append({"epoch": epoch + 1, "train_loss": total / max(count, 1)})
    model.eval()
    # Parity, evaluation, export and the checkpoint all use the CPU copy, so the
    # saved state dict loads (weights_only=True) on a machine without a GPU.
    model.to("cpu")
    return model, history


def _when(ms: int) -> str:
    return f"{ms // 1000} = {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(ms // 1000))} UTC"


def no_examples_message(data: Any, requested: int | str | None) -> str:
    """Why a log gave no training examples, and what to change."""
    period = data.table_period_ms
    how = "derived from the log" if requested == "auto" else "as set"
    tables = (f"point-in-time candidate tables every {format_period(period)} ({how}; "
              f"requests in the first {format_period(period)} of the log have no tables and are skipped)"
              if period else "candidate tables from the whole training part")
    return (f"no training examples: {data.train_events} events of {data.train_users} users before the split "
            f"({_when(data.until_ms)}), {tables}. A training example needs a user with two events before "
            "the split whose next item is among the candidates generated after the first. Move the split "
            "later with --until (Unix seconds), or use a log with more events per user")


def catalog_summary(attributes: Mapping[Id, CatalogItem] | None) -> dict[str, int] | None:
    """How much of the catalog the brand and price features could use, for the manifest."""
    if attributes is None:
        return None
    records = attributes.values()
    return {"items": len(attributes), "with_brand": sum(1 for r in records if r.brand),
            "with_price": sum(1 for r in records if r.price is not None and r.price > 0)}


def train_model(
    events: Iterable[Event],
    *,
    until_ms: int | None = None,
    out_dir: str | os.PathLike[str],
    seed: int = 0,
    epochs: int = 2,
    seq_len: int = 50,
    n_candidates: int = 100,
    limits: StateLimits | None = None,
    dim: int = 24,
    hidden: tuple[int, ...] = (128, 64),
    batch_size: int = 256,
    lr: float = 2e-3,
    hard_negatives: int = 20,
    popularity_negatives: int = 5,
    force_positive: bool = False,
    table_period_ms: int | str | None = "auto",
    loss: str = "bce",
    novel_weight: float | None = None,
    novel_share: float = 0.4,
    threads: int = 2,
    parity_requests: int = 2000,
    progress: bool = True,
    device: DeviceMode = "auto",
    validation_share: float = 0.2,
    held_out_metrics: bool = True,
    catalog: Sequence[CatalogItem] | None = None,
) -> Path:
    """Build examples, train, export ONNX, check parity, evaluate and write the artifact.

    ``limits``: the shoppers' state limits (``udfs.runtime.state_limits``); by default the
    job's defaults with ``max_seq_len`` equal to ``seq_len`` and the sequence window derived
    from the training part (:func:`udfs.timescales.derive_seq_window_ms`). The manifest
    records them; a job whose ``state.seq_window_s`` is ``auto`` keeps its artifact's window.
    ``device``: ``auto`` trains on CUDA when
    torch sees a GPU, else on the CPU; ``cuda`` without one raises ValueError
    (:func:`resolve_device`). ``table_period_ms="auto"`` derives the point-in-time
    table period from the log (:func:`udfs.timescales.derive_table_period`); the
    manifest records the period used.

    ``validation_share`` > 0: the model is first fitted without the latest share of
    the training events, the novelty boost is chosen on those requests
    (:func:`model_export.tuning.choose_blend`: the boost and the baselines' weight), then the model is fitted
    again on the whole training part and gets that boost. 0 fits once, boost 0.
    ``held_out_metrics=False`` skips scoring the held-out part (the manifest's
    ``metrics`` stay empty), for callers that score it themselves, as the
    development matrix does through the job. ``catalog``: the shop's catalog records;
    with some, the model learns the brand and price features
    (``udfs.features.CATALOG_FEATURES``) and the manifest says so (``catalog_features``),
    which is what makes the job fill them. Returns the artifact directory.
    """
    train_device = resolve_device(device, torch.cuda.is_available())
    gpu = torch.cuda.get_device_name(0) if train_device == "cuda" else None
    log.info("training on %s%s (--device %s)", train_device, f" ({gpu})" if gpu else "", device)
    t0 = time.time()
    torch.set_num_threads(max(1, threads))
    _seed_everything(seed)
    attributes = load_catalog(catalog).items if catalog else None
    data = build_training_data(
        events, until_ms=until_ms, limits=limits, n_candidates=n_candidates, seq_len=seq_len,
        hard_negatives=hard_negatives, popularity_negatives=popularity_negatives,
        force_positive=force_positive, table_period_ms=table_period_ms, seed=seed, progress=progress,
        validation_share=validation_share, max_eval_requests=None if held_out_metrics else parity_requests,
        attributes=attributes,
    )
    early, ev = data.train, data.eval
    tr = concat_sets([early, data.validation_train]) if len(data.validation_train) else early
    if len(tr) == 0:
        raise InputError(no_examples_message(data, table_period_ms))
    if len(ev) == 0:
        log.warning("no held-out requests: no user has two events at or after the split (%s); the metrics "
                    "are empty. Move the split earlier with --until (Unix seconds)", _when(data.until_ms))
    t_data = time.time() - t0
    log.info("examples: train %d requests / %d rows, eval %d requests / %d rows (%.1fs); split at %s, "
             "table period %s", len(tr), tr.n_rows, len(ev), ev.n_rows, t_data, _when(data.until_ms),
             format_period(data.table_period_ms) if data.table_period_ms else "none")

    cfg = ModelConfig(n_items=data.vocab.n_items, n_categories=data.vocab.n_categories, dim=dim,
                      hidden=tuple(hidden))
    fit_args: dict[str, Any] = {"seed": seed, "epochs": epochs, "batch_size": batch_size, "lr": lr, "loss": loss,
                                "novel_weight": novel_weight, "novel_share": novel_share, "progress": progress,
                                "device": train_device}
    no_blend = {"boost": 0.0, "prior_weight": 0.0, "prior_mix": 0.0}
    tuning: dict[str, Any] = {**no_blend, "reason": "validation_share is 0"}
    if len(data.validation) and len(early):
        first, _ = fit(early, cfg, **fit_args)
        reference = online_scores(data.train_part, data.validation_moments)
        tuning = choose_blend(data.validation, predict_torch(first, data.validation),
                              catalog_size=data.catalog_size, reference=reference.metrics,
                              reference_places=reference.places,
                              shoppers=[m.trigger.user_id for m in data.validation_moments])
        best = tuning["best_baselines"]
        log.info("blend chosen on %d validation requests: novelty boost %.2f, baselines' weight %.2f (mix %.1f); "
                 "metrics won beyond noise %d, min ratio to the best online baselines (%s) %.3f "
                 "(the model alone: %.3f)", tuning["requests"],
                 tuning["boost"], tuning["prior_weight"], tuning["prior_mix"], tuning["metrics_won"],
                 ", ".join(f"{k} {v['ranker']} {v['value']:.4f}" for k, v in best.items()), tuning["min_ratio"],
                 tuning["model_alone"]["min_ratio"])
    elif validation_share > 0:
        tuning = {**no_blend, "reason": "the validation slice or the part before it has no request"}
    model, history = fit(tr, cfg, **fit_args)
    model.novelty_boost.fill_(float(tuning["boost"]))
    model.prior_weight.fill_(float(tuning["prior_weight"]))
    model.prior_mix.fill_(float(tuning["prior_mix"]))
    t_train = time.time() - t0 - t_data

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        onnx_path = export_onnx(model, Path(tmp) / MODEL_FILE, seq_len=seq_len, opset=OPSET)
        ckpt = Path(tmp) / CHECKPOINT_FILE
        torch.save(model.state_dict(), ckpt)
        session = onnx_session(onnx_path, threads=max(1, threads))

        sample = _subset(ev if len(ev) else tr, parity_requests)
        parity = check_parity(predict_torch(model, sample), predict_onnx(session, sample), sample)
        if parity["max_abs_diff"] >= 1e-4 or not parity["order_identical"]:
            raise RuntimeError(f"ONNX export parity failed: {parity}")
        metrics: dict[str, Any] = {}
        if held_out_metrics:
            metrics = evaluate(ev, {"model": predict_onnx(session, ev)}, catalog_size=data.catalog_size)
            if progress:
                print(format_table(metrics))

        sha = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
        manifest = {
            "model_version": f"din-{sha[:8]}",
            "seq_len": seq_len,
            "opset": OPSET,
            "signature": onnx_signature(onnx_path),
            "train_span": {
                "start_ms": data.train_start_ms,
                "end_ms": data.train_end_ms,
                "until_ms": data.until_ms,
                "events": data.train_events,
                "users": data.train_users,
                "train_requests": len(tr),
                "validation_since_ms": data.validation_since_ms,
                "validation_requests": len(data.validation),
                "train_rows": tr.n_rows,
                "eval_requests": len(ev) if held_out_metrics else None,
            },
            "metrics": metrics,
            "catalog_features": attributes is not None,
            "catalog": catalog_summary(attributes),
            "parity": parity,
            "model_config": cfg.to_dict(),
            "config": {
                "seed": seed, "epochs": epochs, "seq_len": seq_len, "n_candidates": n_candidates,
                "batch_size": batch_size, "lr": lr, "hard_negatives": hard_negatives,
                "popularity_negatives": popularity_negatives, "force_positive": force_positive,
                "table_period_ms": data.table_period_ms,
                "covisit_window_ms": data.covisit_window_ms,
                "exclude_bought": data.exclude_bought,
                "popularity_half_life_ms": data.popularity_half_life_ms,
                "table_period_requested": table_period_ms,
                "loss": loss, "novel_weight": novel_weight, "novel_share": novel_share,
                "novel_weight_used": novel_request_weight(tr.novel, novel_share)
                if novel_weight is None else novel_weight,
                "optimizer": "adam", "dim": dim, "hidden": list(hidden),
                "state_limits": asdict(data.limits), "vocab_min_count": 2,
                "validation_share": validation_share, "novelty_boost": float(tuning["boost"]),
                "prior_weight": float(tuning["prior_weight"]), "prior_mix": float(tuning["prior_mix"]),
            },
            "tuning": tuning,
            "training": {"history": history, "seconds_data": round(t_data, 2),
                         "seconds_train": round(t_train, 2),
                         "seconds_total": round(time.time() - t0, 2),
                         "torch": torch.__version__, "device": train_device, "device_requested": device,
                         "gpu": gpu},
        }
        # NaN (e.g. AUC with no positives) is not JSON: write null instead.
        manifest = json.loads(json.dumps(manifest, default=str).replace("NaN", "null"))
        path = write_artifact(out, onnx_path, data.vocab, data.tables, manifest,
                              extra_files={CHECKPOINT_FILE: ckpt})
    log.info("artifact %s written in %.1fs", path, time.time() - t0)
    return path




def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="train the DIN ranker on a UserBehavior CSV")
    p.add_argument("--events", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--until-ms", type=int, default=None)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=list(DEVICE_MODES),
                   help="training device: auto (CUDA when present), cpu or cuda")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    t = time.time()
    path = train_model(load_events(a.events, sort=True), until_ms=a.until_ms, out_dir=a.out, seed=a.seed,
                       epochs=a.epochs, device=a.device)
    print(f"artifact {path} in {time.time() - t:.1f}s")


if __name__ == "__main__":
    main()

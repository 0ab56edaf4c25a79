"""fp16 / int8 model variants, the tie-aware parity check, and the model benchmark."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from model_export.model import CHECKPOINT_FILE, DIN, ModelConfig, export_onnx  # noqa: E402
from model_export.variants import (  # noqa: E402
    build_variants,
    check_parity,
    compare_scores,
    is_usable,
    order_changed,
    synthetic_batch,
    top_k_overlap,
)
from streamrec.lab.benchmark.inference import run  # noqa: E402
from udfs.features import INPUT_NAMES  # noqa: E402
from udfs.ranker import OnnxRanker  # noqa: E402

torch.set_num_threads(1)
SEQ_LEN = 8
CFG = ModelConfig(n_items=7, n_categories=5, dim=4, attn_hidden=4, hidden=(8,))


@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory):
    """model.onnx + model.pt + a manifest with model_config (what the bench reads)."""
    d = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    m = DIN(CFG)
    m.eval()
    export_onnx(m, d / "model.onnx", seq_len=SEQ_LEN)
    torch.save(m.state_dict(), d / CHECKPOINT_FILE)
    (d / "manifest.json").write_text(json.dumps({"model_config": CFG.to_dict(), "seq_len": SEQ_LEN,
                                                 "model_version": "din-tiny"}))
    return d


def _batches(n: int = 3) -> list[dict[str, np.ndarray]]:
    return [synthetic_batch(120, CFG.n_items, CFG.n_categories, SEQ_LEN, per_user=20, seed=s) for s in range(n)]


def test_variants_written_with_fp32_io_and_shapes(tiny_artifact, tmp_path) -> None:
    manifest_before = (tiny_artifact / "manifest.json").read_text()
    res = build_variants(tiny_artifact, _batches(), out_dir=tmp_path)
    assert (tiny_artifact / "manifest.json").read_text() == manifest_before
    assert not (tiny_artifact / "model.fp16.onnx").exists()
    batch = _batches(1)[0]
    for name in ("fp16", "int8"):
        path = tmp_path / f"model.{name}.onnx"
        assert path.is_file() and res[name]["file"] == str(path)
        ranker = OnnxRanker(str(path), provider="cpu")
        assert ranker.input_names == list(INPUT_NAMES)
        out = ranker.score(batch)
        assert out.shape == (120,) and out.dtype == np.float32 and np.isfinite(out).all()
        p = res[name]
        assert p["requests"] == 18 and p["rows"] == 360
        assert isinstance(p["usable"], bool) and p["usable"] == is_usable(p)
    # fp32 against itself: identical, usable.
    same = check_parity(tmp_path / "model.onnx", tmp_path / "model.onnx", _batches(1))
    assert same["max_abs_diff"] == 0.0 and same["requests_order_changed"] == 0 and same["usable"]


def test_order_check_is_tie_aware() -> None:
    ref = np.array([3.0, 2.0, 2.0 + 1e-7, 1.0], dtype=np.float32)
    tie_swap = np.array([3.0, 2.0 + 1e-7, 2.0, 1.0], dtype=np.float32)  # tied pair swaps: not a change
    assert not order_changed(ref, tie_swap)
    real_swap = np.array([3.0, 1.0, 2.0, 2.0], dtype=np.float32)  # 2.0 vs 1.0 swapped: a change
    assert order_changed(ref, real_swap)
    # A variant tie on a pair the reference separates is a change too.
    assert order_changed(np.array([2.0, 1.0]), np.array([1.5, 1.5]))
    assert top_k_overlap(ref, tie_swap) == 1.0


def test_compare_scores_counts_requests() -> None:
    batch = {"cand_user": np.array([0, 0, 0, 1, 1, 1], dtype=np.int64)}
    ref = np.array([3.0, 2.0, 2.0 + 1e-7, 5.0, 4.0, 3.0], dtype=np.float32)
    var = ref.copy()
    var[[1, 2]] = var[[2, 1]]  # user 0: tie swap only
    var[[4, 5]] = var[[5, 4]]  # user 1: real swap
    p = compare_scores([ref], [var], [batch])
    assert p["requests"] == 2 and p["requests_order_changed"] == 1
    assert p["order_ok_fraction"] == 0.5 and not is_usable(p)
    p_tie = compare_scores([ref], [np.where(np.arange(6) < 3, var, ref)], [batch])
    assert p_tie["requests_order_changed"] == 0 and p_tie["max_abs_diff"] == pytest.approx(1e-7, abs=1e-7)
    assert is_usable(p_tie)


def test_bench_writes_json_and_markdown(tiny_artifact, tmp_path) -> None:
    res = run(tiny_artifact, tmp_path, batch_sizes=(1, 16), repeats=1, provider="cpu")
    data = json.loads((tmp_path / "model_bench.json").read_text())
    assert data == json.loads(json.dumps(res, default=str))
    assert {"machine", "results", "batch_sizes", "engines", "parity", "torch_device"} <= set(data)
    assert {"cpu_count", "platform", "onnxruntime", "onnxruntime_providers", "torch",
            "provider_used"} <= set(data["machine"])
    assert data["machine"]["provider_used"] == "CPUExecutionProvider"
    engines = {"torch", "ort_fp32", "ort_fp32_iobind", "ort_fp16", "ort_int8"}
    assert set(data["engines"]) == engines
    assert {(r["engine"], r["batch"]) for r in data["results"]} == {(e, b) for e in engines for b in (1, 16)}
    for r in data["results"]:
        assert r["p50_ms"] > 0 and r["p99_ms"] >= r["p50_ms"] and r["pairs_per_s"] > 0 and r["users"] == 1
    assert {"fp16", "int8"} <= set(data["parity"])
    assert "| engine |" in (tmp_path / "model_bench.md").read_text()

"""Reading exported models without torch: signature, CPU sessions, scoring example sets.

Training writes the ONNX model with torch; evaluation and the variant checks only
read it, and must not pay for importing torch (the [train] extra) to do so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from model_export.dataset import ExampleSet


def onnx_signature(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Names, dtypes and shapes of the exported graph's inputs and outputs."""
    import onnx  # the [train] extra: only training writes signatures

    m = onnx.load(str(path))

    def describe(values: Any) -> list[dict[str, Any]]:
        out = []
        for v in values:
            t = v.type.tensor_type
            shape = [d.dim_param or d.dim_value for d in t.shape.dim]
            out.append({"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                        "shape": shape})
        return out

    inits = {i.name for i in m.graph.initializer}
    return {"inputs": describe([i for i in m.graph.input if i.name not in inits]),
            "outputs": describe(m.graph.output)}


def onnx_session(path: str | Path, threads: int = 1) -> Any:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def predict_onnx(session: Any, es: ExampleSet, batch_requests: int = 512) -> np.ndarray:
    out = []
    for s in range(0, len(es), batch_requests):
        idx = np.arange(s, min(s + batch_requests, len(es)))
        batch, _ = es.batch(idx)
        out.append(session.run(["score"], batch)[0])
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

"""onnxruntime inference for the ranking model, GPU when present.

`onnxruntime-gpu` lists the CUDA provider as *available* even on a machine
without a GPU; the session then quietly runs on CPU. So the provider is
decided by what the created session reports, and a CPU fallback carries a
reason that the job logs and puts in every output record.
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
ProviderMode = Literal["auto", "cuda", "cpu"]
IoBindingMode = Literal["auto", "on", "off"]


def _import_on_python_thread(name: str) -> Any:
    """Import ``name`` on a thread started by ``threading``.

    onnxruntime's extension init calls ``PyGILState_Ensure()``. PyFlink's thread
    mode (PEMJA) runs Python on JVM threads whose thread states are unknown to
    the GILState API, so that call waits for the GIL its own thread holds: a
    deadlock whenever the import happens there. ``threading`` threads are
    registered, so the import completes; the caller waits, GIL released.
    """
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["module"] = importlib.import_module(name)
        except BaseException as exc:  # re-raised in the caller
            result["error"] = exc

    t = threading.Thread(target=target, name=f"import-{name}", daemon=True)
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return result["module"]


def _ort() -> Any:
    mod = sys.modules.get("onnxruntime")
    if mod is not None:
        return mod
    try:
        return _import_on_python_thread("onnxruntime")
    except ImportError as exc:  # pragma: no cover - exercised only on broken installs
        raise ImportError(
            "onnxruntime is required for ranking: pip install onnxruntime-gpu (or onnxruntime)"
        ) from exc


@dataclass(frozen=True)
class ProviderChoice:
    """What was asked for, what the session runs on, and why if they differ."""

    requested: ProviderMode
    provider: str
    fallback_reason: str | None = None

    @property
    def label(self) -> str:
        """Short label for output records: 'cuda', 'cpu' or 'cpu-fallback'."""
        if self.provider == CUDA:
            return "cuda"
        return "cpu-fallback" if self.fallback_reason else "cpu"


def providers_to_try(mode: ProviderMode, available: Sequence[str]) -> list[str]:
    if mode == "cpu":
        return [CPU]
    if mode == "cuda" and CUDA not in available:
        raise RuntimeError(
            f"ranking.provider=cuda but this onnxruntime build offers {list(available)}; "
            "install onnxruntime-gpu or use provider=auto"
        )
    return [CUDA, CPU] if CUDA in available else [CPU]


def choose_provider(mode: ProviderMode, requested: Sequence[str], actual: Sequence[str]) -> ProviderChoice:
    """Decide from the session's actual providers; strict 'cuda' refuses a CPU session."""
    got = actual[0] if actual else CPU
    if got == CUDA:
        return ProviderChoice(mode, CUDA)
    if mode == "cpu":
        return ProviderChoice(mode, CPU)
    if CUDA in requested:
        reason = "CUDA provider failed to initialise (no GPU or CUDA libraries); running on CPU"
    else:
        reason = "this onnxruntime build has no CUDA provider; running on CPU"
    if mode == "cuda":
        raise RuntimeError(f"ranking.provider=cuda: {reason}")
    return ProviderChoice(mode, CPU, reason)


@dataclass
class RankerStats:
    calls: int = 0
    rows: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)

    def record(self, rows: int, seconds: float) -> None:
        self.calls += 1
        self.rows += rows
        self.seconds += seconds
        if len(self.latencies_ms) < 100_000:
            self.latencies_ms.append(seconds * 1000.0)

    def summary(self) -> dict[str, float]:
        lat = np.asarray(self.latencies_ms or [0.0])
        return {
            "calls": self.calls,
            "rows": self.rows,
            "mean_batch": self.rows / self.calls if self.calls else 0.0,
            "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)),
            "rows_per_s": self.rows / self.seconds if self.seconds else 0.0,
        }


class OnnxRanker:
    """One session per Python worker; many (user, candidate) rows per call."""

    def __init__(
        self,
        model_path: str,
        provider: ProviderMode = "auto",
        io_binding: IoBindingMode = "auto",
        intra_op_threads: int = 1,
    ) -> None:
        ort = _ort()
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads:
            opts.intra_op_num_threads = intra_op_threads
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # CUDA-missing noise is reported by us, once, with a reason
        requested = providers_to_try(provider, ort.get_available_providers())
        self.session = ort.InferenceSession(model_path, sess_options=opts, providers=requested)
        self.choice = choose_provider(provider, requested, self.session.get_providers())
        self.use_io_binding = io_binding == "on" or (io_binding == "auto" and self.choice.provider == CUDA)
        self.device = "cuda" if self.choice.provider == CUDA else "cpu"
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name
        self.stats = RankerStats()
        self._out_buffers: dict[int, Any] = {}
        if self.choice.fallback_reason:
            log.warning("ranking on %s: %s", self.choice.provider, self.choice.fallback_reason)
        else:
            log.info("ranking on %s (io_binding=%s)", self.choice.provider, self.use_io_binding)

    def score(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        start = time.perf_counter()
        if self.use_io_binding:
            out = self._run_bound(inputs)
        else:
            feeds = {name: inputs[name] for name in self.input_names}
            out = self.session.run([self.output_name], feeds)[0]
        self.stats.record(len(out), time.perf_counter() - start)
        return out

    def _output_for(self, rows: int) -> Any:
        """Pre-allocated output on the session's device, reused for a repeated batch size."""
        buf = self._out_buffers.get(rows)
        if buf is None:
            if len(self._out_buffers) >= 16:
                self._out_buffers.pop(next(iter(self._out_buffers)))
            buf = _ort().OrtValue.ortvalue_from_shape_and_type([rows], np.float32, self.device, 0)
            self._out_buffers[rows] = buf
        return buf

    def _run_bound(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        ort = _ort()
        rows = int(inputs["cand_item"].shape[0])
        binding = self.session.io_binding()
        for name in self.input_names:
            arr = np.ascontiguousarray(inputs[name])
            if self.device == "cpu":
                binding.bind_cpu_input(name, arr)
            else:
                binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(arr, self.device, 0))
        out = self._output_for(rows)
        binding.bind_ortvalue_output(self.output_name, out)
        self.session.run_with_iobinding(binding)
        return np.array(out.numpy(), copy=True)

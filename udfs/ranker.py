"""onnxruntime inference for the ranking model, GPU when present.

`onnxruntime-gpu` lists the CUDA provider as *available* even on a machine
without a GPU; the session then quietly runs on CPU. So the provider is
decided by what the created session reports, and a CPU fallback carries a
reason that the job logs and puts in every output record.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
ProviderMode = Literal["auto", "cuda", "cpu"]
IoBindingMode = Literal["auto", "on", "off"]

# Per-user inputs ``[U, L]`` (see udfs.features.INPUT_NAMES); every other input is per row, ``[B, ...]``.
USER_INPUTS: tuple[str, ...] = ("hist_item", "hist_cat", "hist_beh", "hist_gap")
# IO binding pads U and B to a power-of-two bucket, at least MIN_BUCKET; at most
# MAX_BUCKETS buckets are kept per input (and for the output).
MIN_BUCKET = 64
MAX_BUCKETS = 8
_ONNX_NP_DTYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def capacity_bucket(n: int, minimum: int = MIN_BUCKET) -> int:
    """Smallest power of two >= ``n``, at least ``minimum``."""
    return max(minimum, 1 << max(n - 1, 0).bit_length())


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


_ORT_LOCK = threading.Lock()
_ORT_MODULE: Any = None


def _ort() -> Any:
    """onnxruntime, imported once per process.

    Under a lock: two operators opening at once (the ranking stage's subtasks in one
    thread-mode TaskManager) otherwise race, and the second finds the first's
    half-initialised module in ``sys.modules`` (AttributeError: no SessionOptions).
    """
    global _ORT_MODULE
    if _ORT_MODULE is not None:
        return _ORT_MODULE
    with _ORT_LOCK:
        if _ORT_MODULE is None:
            mod = sys.modules.get("onnxruntime")
            if mod is None or not hasattr(mod, "InferenceSession"):
                try:
                    mod = _import_on_python_thread("onnxruntime")
                except ImportError as exc:  # pragma: no cover - exercised only on broken installs
                    raise ImportError(
                        "onnxruntime is required for ranking: pip install onnxruntime-gpu (or onnxruntime)"
                    ) from exc
            _ORT_MODULE = mod
    return _ORT_MODULE


def preload_cuda_libraries(ort: Any) -> str | None:
    """Load the CUDA/cuDNN libraries that ``onnxruntime-gpu[cuda,cudnn]`` installed as wheels.

    The CUDA provider dlopens libcublas, libcurand, libcudnn... by soname and does
    not look in ``site-packages/nvidia``; ``preload_dlls`` loads them from there.
    Its complaints are printed, not raised; they are returned for the log, since a
    failed CUDA start is reported anyway as a CPU fallback with its reason.
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return "this onnxruntime has no preload_dlls"
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            preload()
    except Exception as exc:  # never fatal: the session start decides
        return f"preload_dlls failed: {type(exc).__name__}: {exc}"
    return " ".join(printed.getvalue().split()) or None


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


ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")


def installed_build(distributions: Mapping[str, str] | None = None) -> str:
    """For a session without a CUDA provider: which onnxruntime distributions are installed, and what
    to do for CUDA. Both ship the one ``onnxruntime`` module, so with both the one installed last is
    the one imported. ``distributions``: name -> version (default: read from the environment)."""
    if distributions is None:
        from importlib import metadata

        distributions = {}
        for name in ORT_DISTRIBUTIONS:
            with contextlib.suppress(metadata.PackageNotFoundError):
                distributions[name] = metadata.version(name)
    if set(distributions) == set(ORT_DISTRIBUTIONS):
        return ("onnxruntime and onnxruntime-gpu are both installed and the CPU one provides the module: "
                "pip install --force-reinstall --no-deps onnxruntime-gpu==" + distributions["onnxruntime-gpu"])
    if "onnxruntime" in distributions:
        return "the CPU package onnxruntime is installed; pip install '.[gpu]' brings onnxruntime-gpu"
    return "installed: " + (", ".join(f"{n} {v}" for n, v in distributions.items()) or "no onnxruntime distribution")


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
        reason = f"this onnxruntime build has no CUDA provider ({installed_build()}); running on CPU"
    if mode == "cuda":
        raise RuntimeError(f"ranking.provider=cuda: {reason}")
    return ProviderChoice(mode, CPU, reason)


def check_scores(scores: Any, rows: int) -> str | None:
    """Why ``scores`` cannot rank ``rows`` candidate rows, or None when they are one number per row.

    A model can return the wrong shape, too few or too many scores, or a type that
    is not a number (a corrupt or mismatched graph); any of these would otherwise
    raise while cutting the lists, or rank with garbage. Non-finite values are
    checked per user by the caller, so one user's NaN does not cost others their list.
    """
    try:
        arr = np.asarray(scores)
    except Exception as exc:  # a model output numpy cannot read
        return f"not an array ({type(exc).__name__})"
    if arr.dtype.kind not in "fiu":
        return f"scores of dtype {arr.dtype}, expected numbers"
    if arr.ndim != 1:
        return f"shape {arr.shape}, expected ({rows},): one score per candidate row"
    if len(arr) != rows:
        return f"{len(arr)} scores for {rows} candidate rows"
    return None


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


@dataclass
class _InputBuffer:
    """A reused model input: host staging array and the device OrtValue it is copied into."""

    host: np.ndarray
    value: Any


class OnnxRanker:
    """One session per Python worker; many (user, candidate) rows per call.

    ``model`` is a path to an ONNX file or the serialized model's bytes.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes,
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
        if CUDA in requested:
            problem = preload_cuda_libraries(ort)
            if problem:
                log.info("preloading CUDA libraries: %s", problem)
        # A path is read by onnxruntime; bytes (an artifact's verified model.onnx) are used
        # as given, so the session runs exactly what was hashed.
        source = bytes(model) if isinstance(model, (bytes, bytearray, memoryview)) else os.fspath(model)
        self.session = ort.InferenceSession(source, sess_options=opts, providers=requested)
        self.choice = choose_provider(provider, requested, self.session.get_providers())
        self.use_io_binding = io_binding == "on" or (io_binding == "auto" and self.choice.provider == CUDA)
        self.device = "cuda" if self.choice.provider == CUDA else "cpu"
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name
        self._input_dtypes = {i.name: _ONNX_NP_DTYPES.get(i.type) for i in self.session.get_inputs()}
        self._output_dtype = _ONNX_NP_DTYPES.get(self.session.get_outputs()[0].type) or np.float32
        self.stats = RankerStats()
        # IO binding buffers on the session's device: outputs keyed by the row bucket,
        # inputs by (input name, bucket); both least-recently-used first.
        self._out_buffers: OrderedDict[int, Any] = OrderedDict()
        self._in_buffers: OrderedDict[tuple[str, int], _InputBuffer] = OrderedDict()
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

    def _output_for(self, bucket: int) -> Any:
        """Pre-allocated output ``[bucket]`` on the session's device, reused across calls."""
        buf = self._out_buffers.get(bucket)
        if buf is None:
            if len(self._out_buffers) >= MAX_BUCKETS:
                self._out_buffers.popitem(last=False)
            buf = _ort().OrtValue.ortvalue_from_shape_and_type([bucket], self._output_dtype, self.device, 0)
            self._out_buffers[bucket] = buf
        else:
            self._out_buffers.move_to_end(bucket)
        return buf

    def _input_for(self, name: str, bucket: int, arr: np.ndarray) -> Any:
        """Input ``name`` padded to ``bucket`` rows, copied into its reused device buffer.

        Rows past ``len(arr)`` are padding: zeros, which every input accepts (padding
        ids, an all-padding history, ``cand_user=0``: the first user, always present
        since the user dimension is padded too).
        """
        dtype = np.dtype(self._input_dtypes.get(name) or arr.dtype)
        shape = (bucket, *arr.shape[1:])
        key = (name, bucket)
        buf = self._in_buffers.get(key)
        if buf is None or buf.host.shape != shape or buf.host.dtype != dtype:
            if buf is None and len(self._in_buffers) >= MAX_BUCKETS * len(self.input_names):
                self._in_buffers.popitem(last=False)
            host = np.zeros(shape, dtype=dtype)
            value = _ort().OrtValue.ortvalue_from_shape_and_type(list(shape), dtype, self.device, 0)
            buf = _InputBuffer(host, value)
            self._in_buffers[key] = buf
        else:
            self._in_buffers.move_to_end(key)
        n = arr.shape[0]
        buf.host[:n] = arr
        buf.host[n:] = 0  # a previous call in this bucket may have left more rows
        buf.value.update_inplace(buf.host)
        return buf.value

    def _run_bound(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Run with IO binding on reused, pre-allocated input and output buffers.

        The user dimension ``U`` (per-user ``hist_*`` inputs) and the row dimension
        ``B`` (every other input, and the output) are each padded to a power-of-two
        bucket (:func:`capacity_bucket`), so repeated calls of similar size reuse
        the same device buffers; the first ``B`` scores are returned.
        """
        rows = int(inputs["cand_item"].shape[0])
        users = next((int(inputs[n].shape[0]) for n in self.input_names if n in USER_INPUTS), 0)
        row_bucket, user_bucket = capacity_bucket(rows), capacity_bucket(users)
        binding = self.session.io_binding()
        for name in self.input_names:
            arr = np.asarray(inputs[name])
            per_user = name in USER_INPUTS
            expected = users if per_user else rows
            if arr.ndim == 0 or arr.shape[0] != expected:
                raise ValueError(f"input {name} has {arr.shape[0] if arr.ndim else 0} rows, expected {expected} "
                                 f"({'users' if per_user else 'candidate rows'})")
            value = self._input_for(name, user_bucket if per_user else row_bucket, arr)
            binding.bind_ortvalue_input(name, value)
        out = self._output_for(row_bucket)
        binding.bind_ortvalue_output(self.output_name, out)
        self.session.run_with_iobinding(binding)
        return np.array(out.numpy()[:rows], copy=True)


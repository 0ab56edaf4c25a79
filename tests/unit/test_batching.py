"""Batched ranking without a cluster: the wire format, the rank step and the buffering stage.

The stage itself (``jobs.rank_batches.RankBatchFunction``) runs here against in-memory stand-ins
for Flink's keyed state, timers and metric group; tests/integration/test_pipeline.py runs it in Flink.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

import msgpack
import numpy as np
import pytest
from pyflink.common import Row

from jobs.functions import END_OF_INPUT
from jobs.rank_batches import RankBatchFunction
from streamrec.lab.benchmark.bench_report import markdown
from streamrec.lab.benchmark.bench_summary import batching_paced_rate, batching_summary, rows_per_call
from streamrec.lab.benchmark.gpu import markdown as gpu_markdown
from streamrec.lab.benchmark.gpu import summarize
from tests.support.job_fixtures import generated_log
from udfs.batching import decode_request, encode_request, merge_features, shard_of
from udfs.config import load_config
from udfs.features import build_batch
from udfs.job_metrics import BATCH_WAIT_MS, ROWS_PER_CALL, bucket_quantile
from udfs.runtime import build_recommender
from udfs.state import UserState


def _config(fixture_artifact, **ranking):
    return load_config(environ={}, overrides={"ranking": {
        "artifact_dir": str(fixture_artifact), "provider": "cpu", "top_k": 10, **ranking}})


def _prepared(rec, events):
    """Each event's prepared request, states advanced in arrival order (the keyed stage's work)."""
    states: dict = defaultdict(UserState)
    out = []
    for e in events:
        if rec.apply(states[e.user_id], e):
            out.append(rec.prepare(rec.request(states[e.user_id], e)))
    return out


def _same_lists(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert (x["user_id"], x["seq"], x["trigger"], x["items"], x["reasons"], x["fallback"]) == \
            (y["user_id"], y["seq"], y["trigger"], y["items"], y["reasons"], y["fallback"])
        np.testing.assert_allclose(x["scores"], y["scores"], rtol=1e-6)


def test_a_request_through_the_wire_ranks_in_any_company_as_it_ranks_alone(fixture_artifact):
    cfg = _config(fixture_artifact)
    events = generated_log(400, seed=17)
    alone = build_recommender(cfg)
    single = [alone.rank([p])[0] for p in _prepared(alone, events)]
    batched = build_recommender(cfg)
    wire = [decode_request(encode_request(p)) for p in _prepared(batched, events)]
    together: list[dict] = []
    for start, size in ((0, 1), (1, 7), (8, 64), (72, len(wire))):  # calls of 1, 7, 64 and the rest
        together += batched.rank(wire[start : start + size])
    _same_lists(together, single)
    assert batched.ranker is not None and batched.ranker.stats.calls == 4


def test_merged_features_are_what_build_batch_gives_for_the_users_together(fixture_artifact):
    rec = build_recommender(_config(fixture_artifact))
    states: dict = defaultdict(UserState)
    reqs = []
    for e in generated_log(60, seed=5):
        if rec.apply(states[e.user_id], e):
            reqs.append(rec.request(states[e.user_id], e))
    art = rec.artifact
    merged = merge_features([decode_request(encode_request(rec.prepare(r))) for r in reqs])
    whole = build_batch(reqs, art.vocab, art.tables, art.seq_len)
    assert merged.keys() == whole.keys()
    for name, arr in whole.items():
        np.testing.assert_array_equal(merged[name], arr, err_msg=name)
        assert merged[name].dtype == arr.dtype, name
    one, alone = merge_features([rec.prepare(reqs[0])]), build_batch(reqs[:1], art.vocab, art.tables, art.seq_len)
    assert one.keys() == alone.keys() and all(np.array_equal(one[n], alone[n]) for n in alone)


def test_missing_features_make_the_call_fall_back_not_raise(fixture_artifact):
    rec = build_recommender(_config(fixture_artifact))
    good, bad = _prepared(rec, generated_log(40, seed=9))[:2]
    bad.features, bad.error = None, "KeyError: 'x'"
    out = rec.rank([good, decode_request(encode_request(bad))])
    assert all(r["fallback"].startswith("inference_error: ValueError: model inputs missing") for r in out)
    assert all(r["items"] for r in out)


def test_shards_are_stable_and_spread():
    assert shard_of("user-1", 4) == shard_of("user-1", 4)
    counts = np.bincount([shard_of(str(u), 4) for u in range(4000)], minlength=4)
    assert counts.min() > 800


# ---------------------------------------------------------------- the stage, on stand-ins


class FakeList:
    def __init__(self) -> None:
        self.items: list[Any] = []

    def add(self, v: Any) -> None:
        self.items.append(v)

    def get(self) -> list[Any]:
        return list(self.items)

    def clear(self) -> None:
        self.items = []


class FakeValue:
    def __init__(self) -> None:
        self.v: Any = None

    def value(self) -> Any:
        return self.v

    def update(self, v: Any) -> None:
        self.v = v

    def clear(self) -> None:
        self.v = None


class FakeCounter:
    def __init__(self) -> None:
        self.n = 0

    def inc(self, n: int = 1) -> None:
        self.n += n


class FakeRuntime:
    """Keyed state for one key (one shard), and the operator's counters."""

    def __init__(self) -> None:
        self.lists: dict[str, FakeList] = {}
        self.values: dict[str, FakeValue] = {}
        self.counters: dict[str, FakeCounter] = defaultdict(FakeCounter)

    def get_list_state(self, desc: Any) -> FakeList:
        return self.lists.setdefault(desc.name, FakeList())

    def get_state(self, desc: Any) -> FakeValue:
        return self.values.setdefault(desc.name, FakeValue())

    def get_metrics_group(self) -> Any:
        return type("G", (), {"counter": lambda _, name: self.counters[name]})()

    def count(self, name: str) -> int:
        return self.counters[name].n


class FakeTimers:
    def __init__(self) -> None:
        self.now = 1_000
        self.processing: set[int] = set()
        self.event: set[int] = set()

    def current_processing_time(self) -> int:
        return self.now

    def register_processing_time_timer(self, t: int) -> None:
        self.processing.add(t)

    def delete_processing_time_timer(self, t: int) -> None:
        self.processing.discard(t)

    def register_event_time_timer(self, t: int) -> None:
        self.event.add(t)


class FakeCtx:
    def __init__(self, timers: FakeTimers) -> None:
        self.timers = timers

    def timer_service(self) -> FakeTimers:
        return self.timers


@pytest.fixture
def stage(fixture_artifact):
    cfg = _config(fixture_artifact, batching=True, batch_rows=350, batch_timeout_ms=50)
    fn = RankBatchFunction(cfg)
    runtime = FakeRuntime()
    fn.open(runtime)
    timers = FakeTimers()
    return fn, runtime, timers, build_recommender(cfg)


def _send(fn, timers, prepared) -> list:
    row = Row(str(prepared.trigger.user_id), prepared.rows, encode_request(prepared))
    return list(fn.process_element(row, FakeCtx(timers)))


def test_the_stage_ranks_on_size_then_on_its_timer_in_arrival_order(stage):
    fn, runtime, timers, rec = stage
    prepared = _prepared(rec, generated_log(200, seed=23))[:7]
    assert all(p.rows == 100 for p in prepared)  # so 350 rows fill a buffer on the 4th request
    out = []
    for i, p in enumerate(prepared):
        timers.now += 1
        out += _send(fn, timers, p)
        if i < 3:
            assert out == [] and timers.processing == {1_051}  # one deadline: the first request's
    assert len(out) == 4 and timers.processing == {1_055}  # ranked on size; the old timer deleted
    assert timers.event == {END_OF_INPUT}
    timers.now = 1_055
    out += list(fn.on_timer(1_055, FakeCtx(timers)))
    assert len(out) == 7
    assert list(fn.on_timer(1_051, FakeCtx(timers))) == []  # a stale timer finds nothing
    fn.close()

    records = [msgpack.unpackb(r[1], raw=False, strict_map_key=False) for r in out]
    _same_lists(records, [build_recommender(fn.config).rank([p])[0] for p in prepared])
    assert [r[0] for r in out] == [str(p.trigger.user_id) for p in prepared]

    assert runtime.count("ranker_calls") == 2 and runtime.count("recommendations_emitted") == 7
    assert runtime.count("batch_rows_per_call_count") == 2 and runtime.count("batch_rows_per_call_sum") == 700
    assert runtime.count("batch_rows_per_call_le_384") == 1 and runtime.count("batch_rows_per_call_le_512") == 1
    counts = {n: float(runtime.count(n)) for n in ROWS_PER_CALL.names}
    assert bucket_quantile(counts, ROWS_PER_CALL, 0.5) == 384.0
    # Waits: 3, 2, 1 and 0 ms for the four ranked on size; 50, 49 and 48 ms for the three the timer ranked.
    assert runtime.count("batch_wait_ms_sum") == 3 + 2 + 1 + 0 + (1_055 - 1_005) + (1_055 - 1_006) + (1_055 - 1_007)
    assert runtime.count("batch_wait_ms_count") == 7
    assert sum(runtime.count(n) for n in BATCH_WAIT_MS.bucket_names) == 7


def test_the_end_of_input_timer_ranks_what_is_left(stage):
    fn, _, timers, rec = stage
    p = _prepared(rec, generated_log(50, seed=29))[0]
    assert _send(fn, timers, p) == []
    out = list(fn.on_timer(END_OF_INPUT, FakeCtx(timers)))
    assert len(out) == 1 and out[0][0] == str(p.trigger.user_id)


def test_the_bench_summary_reports_medians_quantiles_and_the_model_bound():
    bucket = {"batch_rows_per_call_le_1024": 30.0, "batch_rows_per_call_le_1536": 69.0,
              "batch_rows_per_call_le_6144": 1.0, "batch_rows_per_call_sum": 130_000.0,
              "batch_rows_per_call_count": 100.0}
    on = rows_per_call(bucket)
    assert (on["p50_at_most"], on["p99_at_most"], on["mean"]) == (1536.0, 1536.0, 1300.0)
    assert rows_per_call(dict(bucket, batch_rows_per_call_le_6144=2.0))["p99_at_most"] == 6144.0
    off = rows_per_call({"recommendations_emitted": 50.0, "ranker_rows": 5000.0})
    assert off["mean"] == 100.0 and off["buckets"] == {}

    def run(rate: float, rpc: dict) -> dict:
        return {"events_per_s": rate, "pairs_per_s": rate * 100, "rows_per_call": rpc}

    cfg = load_config(environ={}, overrides={"ranking": {"batching": True, "batch_rows": 2048}})
    paced = {False: {"p50_ms": 40.0, "p99_ms": 400.0}, True: {"p50_ms": 30.0, "p99_ms": 200.0}}
    runs = {False: [run(1000.0, off), run(1200.0, off), run(1100.0, off)],
            True: [run(900.0, on), run(1300.0, on), run(1000.0, on)]}
    b = batching_summary(runs, paced, 550.0, cfg, model_pairs_per_s=200_000.0, parallelism=2)
    assert (b["p2_events_per_s_off"], b["p2_events_per_s_on"]) == (1100.0, 1000.0)  # medians, not means
    assert (b["p99_ms_paced_off"], b["p99_ms_paced_on"], b["rows_per_call_p50"]) == (400.0, 200.0, 1536.0)
    cores = os.cpu_count()
    assert b["model_bound_events_per_s"] == pytest.approx(cores * 2000.0)
    assert b["share_of_model_bound_off"] == pytest.approx(1100.0 / (cores * 2000.0))
    text = markdown({"machine": {"cpus": cores, "platform": "x"}, "batching": b})
    assert "| on | 1,000 (900, 1,300, 1,000) | <= 1,536 / <= 1,536 (1,300) | 30 | 200 |" in text
    assert b["settings"]["buffer_timeout_ms"] == cfg.job.buffer_timeout_ms
    # paced at half the unbatched median, or at a given rate (so separate runs compare)
    assert batching_paced_rate((), runs[False]) == 550.0
    assert batching_paced_rate((340.0, 600.0), runs[False]) == 340.0


def test_the_gpu_summary_claims_gpu_figures_only_from_the_cuda_provider():
    model = {"machine": {"provider_used": "CPUExecutionProvider"}, "results": [
        {"engine": "ort_fp32_iobind", "batch": 1000, "pairs_per_s": 2e6, "p50_ms": 0.5},
        {"engine": "ort_fp32_iobind", "batch": 4000, "pairs_per_s": 3e6, "p50_ms": 1.3},
        {"engine": "ort_fp16", "batch": 4000, "pairs_per_s": 1e6, "p50_ms": 4.0}]}
    job = {"batching": {"parallelism": 2, "settings": {}, "in_job_pairs_per_s_on": 1.5e6, "p2_events_per_s_on": 10.0}}
    s = summarize(job, model)
    assert s["model_alone_fp32_pairs_per_s"] == 3e6 and s["job_in_job_share_of_model_alone"] == 0.5
    assert not s["measured_on_gpu"] and not s["model_meets_target"]  # fast, but not a GPU figure
    assert "NOT a GPU measurement" in gpu_markdown(s)
    model["machine"] = {"provider_used": "CUDAExecutionProvider", "gpu": "NVIDIA H100"}
    s = summarize(job, model)
    assert s["measured_on_gpu"] and s["model_meets_target"] and "GPU NVIDIA H100" in gpu_markdown(s)

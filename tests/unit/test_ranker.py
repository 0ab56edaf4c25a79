"""The onnxruntime wrapper: provider selection, reported fallback, IO binding, batching."""

import numpy as np
import pytest

from tests.support.onnx_fixtures import covisit_scorer
from udfs.candidates import build_tables, generate_candidates
from udfs.events import Event
from udfs.features import DENSE_FEATURES, UserRequest, Vocab, build_batch
from udfs.ranker import (
    CPU,
    CUDA,
    MIN_BUCKET,
    OnnxRanker,
    capacity_bucket,
    choose_provider,
    preload_cuda_libraries,
    providers_to_try,
)
from udfs.state import StateLimits, UserState, update_state


def test_provider_order():
    assert providers_to_try("cpu", [CUDA, CPU]) == [CPU]
    assert providers_to_try("auto", [CUDA, CPU]) == [CUDA, CPU]
    assert providers_to_try("auto", [CPU]) == [CPU]
    with pytest.raises(RuntimeError, match="provider=cuda"):
        providers_to_try("cuda", [CPU])


def test_choice_reports_fallback_never_silently():
    c = choose_provider("auto", [CUDA, CPU], [CPU])
    assert c.provider == CPU and c.fallback_reason and c.label == "cpu-fallback"
    c = choose_provider("auto", [CPU], [CPU])
    assert c.fallback_reason and "no CUDA provider" in c.fallback_reason
    assert choose_provider("cpu", [CPU], [CPU]).label == "cpu"
    assert choose_provider("auto", [CUDA, CPU], [CUDA, CPU]).label == "cuda"
    with pytest.raises(RuntimeError, match="provider=cuda"):
        choose_provider("cuda", [CUDA, CPU], [CPU])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return covisit_scorer(tmp_path_factory.mktemp("m") / "m.onnx", seq_len=8)


def batch(n_users=3, n_cands=5, seed=0):
    rng = np.random.default_rng(seed)
    b = {n: rng.integers(0, 5, (n_users, 8)) for n in ("hist_item", "hist_cat", "hist_beh", "hist_gap")}
    b["cand_user"] = np.repeat(np.arange(n_users), n_cands)
    b["cand_item"] = rng.integers(0, 5, n_users * n_cands)
    b["cand_cat"] = rng.integers(0, 5, n_users * n_cands)
    b["dense"] = rng.random((n_users * n_cands, len(DENSE_FEATURES)), dtype=np.float32)
    return b


def test_auto_on_this_machine_is_reported(model):
    r = OnnxRanker(str(model), provider="auto")
    # Either CUDA really runs, or the CPU fallback carries a reason: never a silent CPU.
    assert (r.choice.provider == CUDA and r.choice.fallback_reason is None) or (
        r.choice.provider == CPU and r.choice.fallback_reason)


@pytest.mark.parametrize("io_binding", ["off", "on"])
def test_scores_match_the_graph(model, io_binding):
    r = OnnxRanker(str(model), provider="cpu", io_binding=io_binding)
    assert r.use_io_binding == (io_binding == "on")
    for n_users in (1, 4, 4, 2):  # repeated size reuses the bound output buffer
        b = batch(n_users)
        np.testing.assert_allclose(r.score(b), b["dense"][:, DENSE_FEATURES.index("covisit")], rtol=1e-6)
    if io_binding == "on":
        assert set(r._out_buffers) == {64}  # 5, 20 and 10 rows all pad to the smallest bucket
    s = r.stats.summary()
    assert s["calls"] == 4 and s["rows"] == 5 + 20 + 20 + 10


def test_capacity_bucket():
    assert [capacity_bucket(n) for n in (0, 1, 63, 64, 65, 1000, 4096, 4097)] == [
        64, 64, 64, 64, 128, 1024, 4096, 8192]
    assert capacity_bucket(3, minimum=1) == 4 and MIN_BUCKET == 64


def rows_batch(n_users, n_rows, seed=0):
    """Random valid inputs with U users and B rows, users in any order, some without rows."""
    rng = np.random.default_rng(seed)
    b = {n: rng.integers(0, 5, (n_users, 8)) for n in ("hist_item", "hist_cat", "hist_beh", "hist_gap")}
    b["cand_user"] = rng.integers(0, n_users, n_rows)
    b["cand_item"] = rng.integers(0, 5, n_rows)
    b["cand_cat"] = rng.integers(0, 5, n_rows)
    b["dense"] = rng.random((n_rows, len(DENSE_FEATURES)), dtype=np.float32)
    return b


# (U, B): a single row, the bucket boundary and one past it, U > B, U in a bigger bucket than B.
SIZES = [(1, 1), (3, 64), (2, 65), (40, 5), (70, 64), (3, 64)]


def test_io_binding_reuses_padded_input_buffers(model):
    r = OnnxRanker(str(model), provider="cpu", io_binding="on")
    ref = OnnxRanker(str(model), provider="cpu", io_binding="off")
    seen: dict = {}
    for i, (u, n) in enumerate(SIZES):
        b = rows_batch(u, n, seed=i)
        got = r.score(b)
        assert got.shape == (n,)
        np.testing.assert_allclose(got, ref.score(b), rtol=1e-6)
        for key, buf in r._in_buffers.items():
            assert buf.value.shape()[0] == key[1] == buf.host.shape[0]
            seen.setdefault(key, id(buf.value))
            assert id(buf.value) == seen[key]  # the same OrtValue, updated in place
    # U and B are bucketed separately: U in {64, 128}, B in {64, 128}.
    assert {k for k in r._in_buffers if k[0] == "hist_item"} == {("hist_item", 64), ("hist_item", 128)}
    assert {k for k in r._in_buffers if k[0] == "dense"} == {("dense", 64), ("dense", 128)}
    assert len(r._in_buffers) == 2 * len(r.input_names) and set(r._out_buffers) == {64, 128}
    # A smaller batch after a bigger one in the same bucket: stale rows are re-padded.
    big, small = rows_batch(3, 60, seed=10), rows_batch(2, 7, seed=11)
    r.score(big)
    np.testing.assert_allclose(r.score(small), ref.score(small), rtol=1e-6)
    assert (r._in_buffers[("cand_user", 64)].host[7:] == 0).all()


def test_io_binding_buffer_count_is_bounded(model):
    from udfs.ranker import MAX_BUCKETS

    r = OnnxRanker(str(model), provider="cpu", io_binding="on")
    for k in range(MAX_BUCKETS + 3):
        n = MIN_BUCKET * 2**k // 2 + 1  # a new bucket each call
        b = rows_batch(1, n, seed=k)
        np.testing.assert_allclose(r.score(b), b["dense"][:, DENSE_FEATURES.index("covisit")], rtol=1e-6)
    assert len(r._out_buffers) <= MAX_BUCKETS
    assert len(r._in_buffers) <= MAX_BUCKETS * len(r.input_names)


def test_io_binding_rejects_mismatched_rows(model):
    r = OnnxRanker(str(model), provider="cpu", io_binding="on")
    b = rows_batch(2, 5)
    b["dense"] = b["dense"][:4]
    with pytest.raises(ValueError, match="dense"):
        r.score(b)


def test_io_binding_matches_plain_path_on_the_din_graph(tmp_path):
    """The real model gathers user rows by cand_user: padding must keep every index valid."""
    torch = pytest.importorskip("torch")
    from model_export.model import DIN, ModelConfig, example_inputs, export_onnx

    torch.manual_seed(0)
    m = DIN(ModelConfig(n_items=7, n_categories=5, dim=4, attn_hidden=4, hidden=(8,)))
    m.eval()
    path = export_onnx(m, tmp_path / "din.onnx", seq_len=8)
    plain = OnnxRanker(str(path), provider="cpu", io_binding="off")
    bound = OnnxRanker(str(path), provider="cpu", io_binding="on")
    for u, n in SIZES:
        args = example_inputs(n_users=u, n_rows=n, seq_len=8, seed=u * 1000 + n)
        b = {name: a.numpy() for name, a in zip(plain.input_names, args, strict=True)}
        with torch.no_grad():
            want = m(*args).numpy()
        np.testing.assert_allclose(bound.score(b), plain.score(b), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(bound.score(b), want, rtol=1e-4, atol=1e-5)


def test_build_batch_shapes_and_user_mapping():
    t0 = 1_600_000_000_000
    events = [Event(u, 100 + (u + i) % 6, 1 + i % 2, "pv", t0 + i * 1000) for u in range(3) for i in range(6)]
    tables = build_tables(events)
    vocab = Vocab.build({e.item_id: 2 for e in events}, {1: 5, 2: 5}, min_count=2)
    reqs = []
    for u in range(3):
        st = UserState()
        for e in events:
            if e.user_id == u:
                update_state(st, e, StateLimits())
        reqs.append(UserRequest(st, generate_candidates(st, tables, 4), events[u * 6 + 5]))
    b = build_batch(reqs, vocab, tables, seq_len=8)
    n = sum(len(r.candidates.items) for r in reqs)
    assert b["hist_item"].shape == (3, 8) and b["dense"].shape == (n, len(DENSE_FEATURES))
    assert list(b["cand_user"]) == [u for u, r in enumerate(reqs) for _ in r.candidates.items]
    # 6 events per user, left-padded to 8: two padding slots, behavior index 0
    assert (b["hist_beh"][:, :2] == 0).all() and (b["hist_beh"][:, 2:] == 1).all()


class _FakeOrt:
    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.calls = 0

    def preload_dlls(self) -> None:
        self.calls += 1
        if self.behaviour == "print":
            print("Failed to load libcurand.so.10: not found")
        elif self.behaviour == "raise":
            raise OSError("boom")


@pytest.mark.parametrize(("behaviour", "expected"), [
    ("quiet", None),
    ("print", "Failed to load libcurand.so.10: not found"),
    ("raise", "preload_dlls failed: OSError: boom"),
])
def test_cuda_preload_reports_problems_instead_of_printing_or_raising(behaviour, expected, capsys):
    fake = _FakeOrt(behaviour)
    assert preload_cuda_libraries(fake) == expected
    assert fake.calls == 1
    assert capsys.readouterr().out == ""


def test_cuda_preload_tolerates_an_old_onnxruntime():
    assert preload_cuda_libraries(object()) == "this onnxruntime has no preload_dlls"


@pytest.mark.parametrize("mode", ["auto", "cpu"])
def test_cuda_libraries_are_preloaded_only_when_cuda_is_tried(model, mode, monkeypatch):
    import udfs.ranker as ranker_mod

    calls = []
    monkeypatch.setattr(ranker_mod, "preload_cuda_libraries", lambda ort: calls.append(ort) or None)
    r = OnnxRanker(model, provider=mode)
    tried_cuda = mode == "auto" and CUDA in ranker_mod._ort().get_available_providers()
    assert len(calls) == (1 if tried_cuda else 0)
    assert r.choice.requested == mode


def test_the_cpu_fallback_says_which_onnxruntime_is_installed_and_what_to_do():
    from udfs.ranker import installed_build

    assert "pip install '.[gpu]'" in installed_build({"onnxruntime": "1.31.1"})
    both = installed_build({"onnxruntime": "1.31.1", "onnxruntime-gpu": "1.31.1"})
    assert "both installed" in both and "--force-reinstall --no-deps onnxruntime-gpu==1.31.1" in both
    assert installed_build({}) == "installed: no onnxruntime distribution"

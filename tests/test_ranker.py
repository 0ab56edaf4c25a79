"""The onnxruntime wrapper: provider selection, reported fallback, IO binding, batching."""

import numpy as np
import pytest

from tests.onnx_fixtures import covisit_scorer
from udfs.candidates import build_tables, generate_candidates
from udfs.events import Event
from udfs.features import DENSE_FEATURES, UserRequest, Vocab, build_batch
from udfs.ranker import CPU, CUDA, OnnxRanker, choose_provider, providers_to_try
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
        assert set(r._out_buffers) == {5, 20, 10}
    s = r.stats.summary()
    assert s["calls"] == 4 and s["rows"] == 5 + 20 + 20 + 10


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

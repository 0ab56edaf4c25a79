"""DIN model, ONNX export parity, dataset labelling and a tiny end-to-end training."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from model_export.dataset import build_training_data  # noqa: E402
from model_export.evaluate import evaluate  # noqa: E402
from model_export.model import CHECKPOINT_FILE, DIN, ModelConfig, example_inputs, export_onnx  # noqa: E402
from model_export.onnx_io import onnx_session  # noqa: E402
from model_export.train import train_model  # noqa: E402
from udfs.artifact import load_artifact  # noqa: E402
from udfs.events import Event  # noqa: E402
from udfs.features import DENSE_FEATURES, INPUT_NAMES  # noqa: E402
from udfs.state import StateLimits  # noqa: E402

torch.set_num_threads(1)
SEQ_LEN = 8
H = 3600 * 1000


def feeds(args) -> dict[str, np.ndarray]:
    return {n: a.numpy() for n, a in zip(INPUT_NAMES, args, strict=True)}


def tiny_model(seed: int = 0) -> DIN:
    torch.manual_seed(seed)
    m = DIN(ModelConfig(n_items=7, n_categories=5, dim=4, attn_hidden=4, hidden=(8,)))
    m.eval()
    return m


def synthetic_log(n_users: int = 24, per_user: int = 30, seed: int = 0) -> list[Event]:
    """Users walk through item 'chains' (i -> i+1 within a category), with noise."""
    rng = random.Random(seed)
    events = []
    t0 = 1_600_000_000_000
    for u in range(n_users):
        item = rng.randrange(40)
        ts = t0 + rng.randrange(3600) * 1000
        for _ in range(per_user):
            beh = rng.choices(["pv", "cart", "fav", "buy"], weights=[85, 7, 5, 3])[0]
            events.append(Event(u, item, item // 8, beh, ts))
            item = (item + 1) % 40 if rng.random() < 0.7 else rng.randrange(40)
            ts += rng.randrange(60, 4 * 3600) * 1000
    return events


def test_forward_shapes_and_padding_only_rows() -> None:
    m = tiny_model()
    args = example_inputs(n_users=3, n_rows=10, seq_len=SEQ_LEN)
    with torch.no_grad():
        out = m(*args)
    assert out.shape == (10,) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # A user whose history is all padding still gets finite scores.
    hist = [a.clone() for a in args]
    hist[2][0] = 0
    with torch.no_grad():
        assert torch.isfinite(m(*hist)).all()


def test_onnx_export_matches_torch_with_other_dynamic_sizes(tmp_path) -> None:
    m = tiny_model()
    path = export_onnx(m, tmp_path / "m.onnx", seq_len=SEQ_LEN)
    sess = onnx_session(path)
    assert [i.name for i in sess.get_inputs()] == list(INPUT_NAMES)
    assert [o.name for o in sess.get_outputs()] == ["score"]
    for n_users, n_rows in [(1, 1), (5, 23), (17, 200)]:  # export traced U=3, B=7
        args = example_inputs(n_users=n_users, n_rows=n_rows, seq_len=SEQ_LEN, seed=n_rows)
        with torch.no_grad():
            ref = m(*args).numpy()
        got = sess.run(["score"], feeds(args))[0]
        assert got.shape == (n_rows,) and got.dtype == np.float32
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


def _hand_log() -> list[Event]:
    # until = 4.5h. user 1: a b c a (train: a->b; b->c crosses the split; eval: c->a)
    # user 2: b c d e (train: b->c; c->d crosses the split; eval: d->e)
    return [
        Event(1, "a", "x", "pv", 1 * H),
        Event(2, "b", "x", "pv", 2 * H),
        Event(1, "b", "x", "pv", 3 * H),
        Event(2, "c", "y", "pv", 4 * H),
        Event(1, "c", "y", "cart", 5 * H),
        Event(1, "c", "y", "cart", 5 * H),  # redelivery: no request, no "next event"
        Event(1, "a", "x", "buy", 7 * H),
        Event(2, "d", "y", "pv", 8 * H),
        Event(2, "e", "y", "fav", 9 * H),
    ]


def test_dataset_labels_positives_from_next_event() -> None:
    events = _hand_log()
    until = 9 * H // 2
    data = build_training_data(events, until_ms=until, n_candidates=10, seq_len=SEQ_LEN,
                               hard_negatives=20, popularity_negatives=0, force_positive=True,
                               table_period_ms=None, seed=0)
    # Expected (trigger -> next item) pairs, derived from the per-user, deduplicated log.
    by_user: dict = {}
    seen = set()
    for e in sorted(events, key=lambda e: e.ts):
        key = (e.user_id, e.item_id, e.behavior, e.ts)
        if key not in seen:
            seen.add(key)
            by_user.setdefault(e.user_id, []).append(e)
    train_pairs, eval_pairs = [], []
    for evs in by_user.values():
        for cur, nxt in zip(evs, evs[1:], strict=False):
            if cur.ts >= until:
                eval_pairs.append((cur, nxt))
            elif nxt.ts < until:
                train_pairs.append((cur, nxt))
    tr, ev = data.train, data.eval
    assert len(tr) == len(train_pairs) and len(ev) == len(eval_pairs)
    got_train = sorted(
        (int(tr.trigger_ts[i]), [tr.items[r] for r in range(tr.offsets[i], tr.offsets[i + 1])
                                 if tr.labels[r] == 1.0])
        for i in range(len(tr))
    )
    assert got_train == sorted((cur.ts, [nxt.item_id]) for cur, nxt in train_pairs)
    for i in range(len(ev)):
        rows = range(ev.offsets[i], ev.offsets[i + 1])
        cur, nxt = next(p for p in eval_pairs if p[0].ts == ev.trigger_ts[i])
        assert [ev.labels[r] for r in rows] == [1.0 if ev.items[r] == nxt.item_id else 0.0 for r in rows]
        assert bool(ev.has_positive[i]) == (nxt.item_id in [ev.items[r] for r in rows])
    assert len(tr) == 2 and len(ev) == 2
    # user 1's eval target "a" was touched before (not novel); user 2's "e" is new (novel).
    novel = {int(ts): bool(n) for ts, n in zip(ev.trigger_ts, ev.novel, strict=True)}
    assert novel == {5 * H: False, 8 * H: True}
    # Vocab and tables only see training events: "d" (eval only) is out of vocabulary.
    assert "d" not in data.vocab.items and "d" not in data.tables.popularity
    assert data.train.arrays["dense"].shape[1] == len(DENSE_FEATURES)


def test_evaluate_baselines_and_perfect_model() -> None:
    data = build_training_data(synthetic_log(), n_candidates=20, seq_len=SEQ_LEN, seed=0)
    ev = data.eval
    m = evaluate(ev, {"oracle": ev.labels}, catalog_size=data.catalog_size)
    assert {"generator", "trending", "covisit", "recent", "covisit+recent", "oracle"} <= set(m["rankers"])
    oracle = m["rankers"]["oracle"]
    assert oracle["hr@10"] == pytest.approx(m["candidate_recall"])
    assert oracle["auc"] == pytest.approx(1.0)
    for r in m["rankers"].values():
        assert r["hr@10"] <= m["candidate_recall"] + 1e-9
        assert 0.0 <= r["ndcg@10"] <= r["hr@10"] <= 1.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    events = synthetic_log()
    kw = dict(seed=3, epochs=2, seq_len=SEQ_LEN, n_candidates=20, dim=8, hidden=(16,), batch_size=32,
              threads=1, progress=False)
    a = train_model(events, out_dir=tmp_path_factory.mktemp("a"), **kw)
    b = train_model(events, out_dir=tmp_path_factory.mktemp("b"), **kw)
    return a, b


def test_train_writes_loadable_artifact(trained) -> None:
    path, _ = trained
    art = load_artifact(path)
    man = art.manifest
    assert art.seq_len == SEQ_LEN and man["opset"] in (17, 18)
    assert art.model_version.startswith("din-")
    assert man["parity"]["max_abs_diff"] < 1e-4 and man["parity"]["order_identical"] is True
    span = man["train_span"]
    assert span["start_ms"] <= span["end_ms"] < span["until_ms"] and span["events"] > 0
    assert "model" in man["metrics"]["rankers"] and "covisit" in man["metrics"]["rankers"]
    assert man["training"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert man["training"]["device_requested"] == "auto"
    sig = man["signature"]
    assert [i["name"] for i in sig["inputs"]] == list(INPUT_NAMES)
    assert sig["outputs"][0]["name"] == "score" and sig["outputs"][0]["dtype"] == "float32"
    json.dumps(man, allow_nan=False)
    # The artifact's ONNX model scores a batch built by the job's own feature code.
    sess = onnx_session(art.model_path)
    out = sess.run(["score"], feeds(example_inputs(2, 9, SEQ_LEN)))[0]
    assert out.shape == (9,)


def test_checkpoint_round_trip(trained) -> None:
    path, _ = trained
    art = load_artifact(path)
    state = torch.load(path / CHECKPOINT_FILE, weights_only=True)
    m = DIN(ModelConfig.from_dict(art.manifest["model_config"]))
    m.load_state_dict(state)
    m.eval()
    args = example_inputs(3, 11, SEQ_LEN, seed=5)
    with torch.no_grad():
        ref = m(*args).numpy()
    got = onnx_session(art.model_path).run(["score"], feeds(args))[0]
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


def test_training_is_deterministic(trained) -> None:
    a, b = trained
    args = feeds(example_inputs(4, 30, SEQ_LEN, seed=9))
    sa = onnx_session(a / "model.onnx").run(["score"], args)[0]
    sb = onnx_session(b / "model.onnx").run(["score"], args)[0]
    np.testing.assert_array_equal(sa, sb)
    ma, mb = (load_artifact(p).manifest for p in (a, b))
    assert ma["model_version"] == mb["model_version"]
    assert ma["metrics"] == mb["metrics"]


def test_novel_request_weight_balances_share() -> None:
    from model_export.train import novel_request_weight

    novel = np.array([True] * 4 + [False] * 96)
    w = novel_request_weight(novel, 0.4)
    assert w * 4 / (w * 4 + 96) == pytest.approx(0.4)
    assert novel_request_weight(novel, 0.0) == 1.0
    assert novel_request_weight(np.array([True] * 60 + [False] * 40), 0.4) == 1.0  # never below 1
    assert novel_request_weight(np.zeros(5, dtype=bool), 0.4) == 1.0


def test_covisit_rank_share_and_recent_category_features() -> None:
    from udfs.candidates import Candidates, CandidateTables
    from udfs.features import UserRequest, Vocab, build_batch
    from udfs.state import StateLimits, UserState, update_state

    tables = CandidateTables(covisit={"a": [("b", 3.0), ("c", 1.0)]}, popularity={"b": 1.0, "c": 1.0},
                             item_category={"a": "x", "b": "x", "c": "y"})
    st = UserState()
    ev = Event(user_id="u", item_id="a", category_id="x", behavior="pv", ts=1000)
    update_state(st, ev, StateLimits())
    cands = Candidates(items=["c", "b", "z"], categories=["y", "x", "q"], sources=[1, 1, 8],
                       covisit=[0.0, 0.0, 0.0])
    d = build_batch([UserRequest(st, cands, ev)], Vocab({}, {}), tables, 4)["dense"]
    f = {n: i for i, n in enumerate(DENSE_FEATURES)}
    np.testing.assert_allclose(d[:, f["covisit_rank"]], [0.5, 1.0, 0.0])
    np.testing.assert_allclose(d[:, f["covisit_share"]], [0.25, 0.75, 0.0])
    np.testing.assert_allclose(d[:, f["category_in_recent"]], [0.0, 1.0, 0.0])


@pytest.mark.parametrize("n_events,duration_s,users,expected_period", [
    (4000, 2 * 3600, 80, (60 * 1000, 3600 * 1000)),  # a log of two hours: minutes
    (3000, 90 * 86400, 150, (86400 * 1000, 30 * 86400 * 1000)),  # 90 sparse days: days to weeks
])
def test_train_on_logs_of_any_span(tmp_path, n_events, duration_s, users, expected_period) -> None:
    """The split and the point-in-time table period come from the log, so a log of hours
    and one of months both give training and held-out requests."""
    from streamrec.lab.generator import generate_events

    events = generate_events(n_events, n_users=users, n_items=300, n_categories=10, seed=2,
                             start_ts_ms=1_400_000_000_000, duration_s=duration_s)
    art = train_model(events, out_dir=tmp_path / "art", epochs=1, seq_len=SEQ_LEN, n_candidates=20, dim=8,
                      hidden=(16,), hard_negatives=5, popularity_negatives=2, parity_requests=50,
                      progress=False, threads=1)
    m = load_artifact(art).manifest
    span = m.train_span
    assert span["train_requests"] > 0 and span["eval_requests"] > 0
    period = m.training_config["table_period_ms"]
    assert expected_period[0] <= period <= expected_period[1]
    assert m.training_config["table_period_requested"] == "auto"
    # The offline protocol rebuilds the same examples from the manifest's settings.
    data = build_training_data(events, until_ms=m.until_ms, limits=m.state_limits, n_candidates=20,
                               seq_len=SEQ_LEN, hard_negatives=5,
                               popularity_negatives=2, table_period_ms=period, seed=0)
    assert len(data.train) == span["train_requests"] and len(data.eval) == span["eval_requests"]


def test_table_period_and_split_follow_the_log() -> None:
    from model_export.dataset import default_until
    from udfs.timescales import derive_table_period

    day = 86400 * 1000
    assert derive_table_period(np.arange(0, 7 * day, 60_000)) == day  # a week, evenly: one day
    assert derive_table_period(np.arange(0, 2 * 3600 * 1000, 1000)) == 15 * 60 * 1000  # two hours: 15 min
    # Three bursts of an hour a month apart: periods of the bursts' scale, not the gaps'.
    bursts = np.concatenate([np.arange(k * 30 * day, k * 30 * day + 3600 * 1000, 1000) for k in range(3)])
    assert derive_table_period(bursts) <= 3600 * 1000
    # A log that grows: 80% of the span would hold out most events; the split holds out at most half.
    grow = [Event(1, 1, 1, "pv", int(t)) for t in (np.linspace(0, 1, 5000) ** 0.2 * 1e9)]
    until = default_until(grow)
    assert 0.1 <= sum(e.ts >= until for e in grow) / len(grow) <= 0.5


def _returning_shoppers(gap_ms: int) -> list[Event]:
    """Shoppers who touch a few items, come back ``gap_ms`` later and touch the first one again."""
    log = []
    for u in range(40):
        start = u * 60_000
        items = [f"i{(u + k) % 12}" for k in range(3)]
        log += [Event(u, item, "c", "pv", start + k * 60_000) for k, item in enumerate(items)]
        log.append(Event(u, items[-1], "c", "cart", start + gap_ms))
        log.append(Event(u, items[0], "c", "pv", start + gap_ms + 60_000))
    return log


def _touched_positives(es) -> np.ndarray:
    """Per request: whether its next item is a candidate the shopper's state still holds (in_history)."""
    dense = es.arrays["dense"][:, DENSE_FEATURES.index("in_history")]
    hit = (es.labels > 0.5) & (dense > 0)
    return np.array([hit[es.offsets[i]:es.offsets[i + 1]].any() for i in range(len(es))])


def test_state_keeps_repeats_as_old_as_the_training_log_shows() -> None:
    """Shoppers come back after 30 days to an item they touched: the derived window (the training
    span) keeps it in their state, a touched candidate; a fixed one-week window had forgotten it."""
    log = _returning_shoppers(30 * 86_400_000)
    until = min(e.ts for e in log if e.behavior == "cart" and e.user_id >= 20)  # half the shoppers return in training
    kw = dict(until_ms=until, n_candidates=20, seq_len=SEQ_LEN, table_period_ms=None, seed=0)
    derived = build_training_data(log, **kw)
    assert derived.limits.seq_window_ms == max(e.ts for e in log if e.ts < until) - min(e.ts for e in log)
    assert derived.limits.max_seq_len == SEQ_LEN
    repeats = ~derived.eval.novel
    assert repeats.sum() == 20 and _touched_positives(derived.eval)[repeats].all()
    week = build_training_data(log, limits=StateLimits(max_seq_len=SEQ_LEN, seq_window_ms=7 * 86_400_000), **kw)
    assert not _touched_positives(week.eval).any()

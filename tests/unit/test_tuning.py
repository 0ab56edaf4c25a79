"""The validation slice inside the training part and the novelty boost chosen on it."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from model_export.dataset import ExampleSet, build_training_data  # noqa: E402
from model_export.evaluate import evaluate  # noqa: E402
from model_export.model import DIN, IN_HISTORY, ModelConfig, baseline_prior, example_inputs, export_onnx  # noqa: E402
from model_export.onnx_io import onnx_session  # noqa: E402
from model_export.tuning import (  # noqa: E402
    KEEP_TRIED,
    TUNED_METRICS,
    beats_beyond_noise,
    choose_blend,
    choose_novelty_boost,
    tuned_metrics,
    wins_kept,
)
from tests.unit.test_model import SEQ_LEN, feeds, synthetic_log  # noqa: E402
from udfs.features import DENSE_FEATURES, INPUT_NAMES  # noqa: E402

_REC = DENSE_FEATURES.index("recency_rank")


def _request(target_touched: bool) -> tuple[np.ndarray, np.ndarray]:
    """11 touched candidates (recency ranks 0..10) then one untouched; dense rows and labels."""
    dense = np.zeros((12, len(DENSE_FEATURES)), dtype=np.float32)
    dense[:11, IN_HISTORY] = 1.0
    dense[:11, _REC] = [1.0 / (1 + r) for r in range(11)]
    labels = np.zeros(12, dtype=np.float32)
    labels[0 if target_touched else 11] = 1.0
    return dense, labels


def _two_requests() -> tuple[ExampleSet, np.ndarray]:
    """Request A re-touches its latest item, request B wants its one untouched item; the model
    scores touched items 1 + recency rank and untouched ones 0."""
    (da, la), (db, lb) = _request(True), _request(False)
    dense = np.concatenate([da, db])
    es = ExampleSet({"dense": dense}, np.concatenate([la, lb]), np.array([0, 12, 24]),
                    [f"a{i}" for i in range(12)] + [f"b{i}" for i in range(12)],
                    np.array([False, True]), np.array([True, True]), np.array([1, 2]))
    scores = np.where(dense[:, IN_HISTORY] > 0, 1.0 + dense[:, _REC], 0.0)
    return es, scores


def test_the_boost_that_wins_both_metrics_is_chosen() -> None:
    """Request A re-touches its latest item, request B wants the untouched one. Every baseline
    ranks B's item last (12th: a miss), so the best baseline NDCG@10 is 0.5 (recent) and novel
    HR@10 is 0. The model scores touched items 1 + recency rank, untouched 0 (+ boost):

    * boost 1.0: B's item stays 12th, ratios (NDCG 1.0, novel 0/0 = 1.0), min 1.0;
    * boost 1.5: B's item ties the 2nd touched one and follows it (rank 2): NDCG (1 + 1/2) / 2, min 1.5;
    * boost 2.0: it ties the 1st and follows it (rank 1), A's stays first: NDCG (1 + 1/log2 3) / 2;
    * boost 3.0: B's item first, A's second: the same NDCG, so the smaller boost, 2.0, wins.
    """
    es, scores = _two_requests()
    out = choose_novelty_boost(es, scores, catalog_size=24, grid=(0.0, 1.0, 1.5, 2.0, 3.0))
    assert out["best_baselines"]["ndcg@10"]["value"] == pytest.approx(0.5)
    assert out["best_baselines"]["novel_hr@10"]["value"] == 0.0
    tried = {t["boost"]: t for t in out["tried"]}
    assert tried[1.0]["min_ratio"] == pytest.approx(1.0)
    assert tried[1.5]["ndcg@10"] == pytest.approx(0.75)
    assert tried[2.0]["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3)) / 2)
    assert tried[3.0]["ndcg@10"] == pytest.approx(tried[2.0]["ndcg@10"])
    assert out["boost"] == 2.0
    assert out["min_ratio"] == pytest.approx((1 + 1 / math.log2(3)) / 2 / 0.5)


def test_the_blend_is_measured_against_the_reference_baselines() -> None:
    """The same two requests, measured against a reference (the online baselines) that hits
    every next item first: NDCG 1.0 and novel HR 1.0 to beat. Boost 1.0 now misses B's novel
    item against a reference that finds it (min ratio 0), and boost 2.0's list is worth its NDCG
    over 1.0, not over the frozen recent order's 0.5. The frozen re-rankers stay on record."""
    es, scores = _two_requests()
    reference = {"online:x": {"ndcg@10": 1.0, "novel_hr@10": 1.0}, "online:y": {"ndcg@10": 0.2, "novel_hr@10": 0.0}}
    out = choose_blend(es, scores, catalog_size=24, reference=reference, boosts=(0.0, 1.0, 2.0), weights=(0.0,),
                       mixes=(0.0,))
    assert out["best_baselines"] == {"ndcg@10": {"ranker": "online:x", "value": 1.0},
                                     "novel_hr@10": {"ranker": "online:x", "value": 1.0}}
    tried = {t["boost"]: t for t in out["tried"]}
    assert tried[1.0]["min_ratio"] == 0.0
    assert out["boost"] == 2.0 and out["min_ratio"] == pytest.approx((1 + 1 / math.log2(3)) / 2)
    assert out["frozen_baselines"]["recent"]["ndcg@10"] == pytest.approx(0.5)


def _shoppers(n: int) -> tuple[ExampleSet, np.ndarray, list[str]]:
    """Per shopper, three requests that re-touch their latest item, one that wants its untouched
    item and one whose next item is no candidate (novel, a miss for every list); scores as in
    :func:`_two_requests`. Boost 0 keeps the repeats first (NDCG@10 3/5, no new item found);
    boost 3 puts the untouched item first everywhere (NDCG@10 (3/log2 3 + 1)/5, novel HR 1/2)."""
    one = [_request(True)] * 3 + [_request(False), (_request(False)[0], np.zeros(12, np.float32))]
    parts = one * n
    dense = np.concatenate([d for d, _ in parts])
    labels = np.concatenate([lab for _, lab in parts])
    m = len(parts)
    es = ExampleSet({"dense": dense}, labels, np.arange(0, 12 * m + 1, 12), [f"i{i}" for i in range(12 * m)],
                    np.array([False, False, False, True, True] * n), np.array(([True] * 4 + [False]) * n), np.arange(m))
    scores = np.where(dense[:, IN_HISTORY] > 0, 1.0 + dense[:, _REC], 0.0)
    return es, scores, [f"s{j // 5}" for j in range(m)]


def test_a_blend_that_beats_the_best_baseline_beyond_noise_goes_before_one_that_only_matches_it() -> None:
    """The baseline's list is boost 3's (the true items at places 1, 0 and none): boost 3 matches
    it on both metrics (ratios 1), boost 0 beats it on NDCG@10 in every shopper's requests and
    finds no new item (smaller ratio 0). With the baseline's places the clear win counts first;
    without them the smaller ratio alone decides, as before."""
    es, scores, shoppers = _shoppers(20)
    places = [1, 1, 1, 0, -1] * 20
    reference = {"online:x": {"ndcg@10": (3 / math.log2(3) + 1) / 5, "novel_hr@10": 0.5}}
    grid = {"boosts": (0.0, 3.0), "weights": (0.0,), "mixes": (0.0,)}
    out = choose_blend(es, scores, catalog_size=12, reference=reference, reference_places={"online:x": places},
                       shoppers=shoppers, **grid)
    tried = {t["boost"]: t for t in out["tried"]}
    assert tried[0.0]["ndcg@10"] == pytest.approx(3 / 5) and tried[0.0]["novel_hr@10"] == 0.0
    assert tried[3.0]["ndcg@10"] == pytest.approx(reference["online:x"]["ndcg@10"])
    assert tried[3.0]["novel_hr@10"] == pytest.approx(0.5)
    assert (tried[0.0]["metrics_won"], tried[3.0]["metrics_won"]) == (1, 0)
    assert tried[3.0]["min_ratio"] == pytest.approx(1.0) and tried[0.0]["min_ratio"] == 0.0
    assert out["boost"] == 0.0 and out["metrics_won"] == 1
    alone = choose_blend(es, scores, catalog_size=12, reference=reference, **grid)
    assert alone["boost"] == 3.0 and alone["metrics_won"] == 0


def test_a_win_must_clear_the_noise_of_the_shoppers_it_rests_on() -> None:
    """A mean difference of 0.1 over 100 requests: carried by one shopper's ten requests it is
    inside the noise (that shopper alone could be chance); spread over a hundred shoppers, or
    the same in every request, it is a win. No difference is never one."""
    diff = np.array([1.0] * 10 + [0.0] * 90)
    assert not beats_beyond_noise(diff, np.arange(100) // 10)
    assert beats_beyond_noise(diff, np.arange(100))
    assert beats_beyond_noise(np.full(100, 0.1), np.arange(100) // 10)
    assert not beats_beyond_noise(np.zeros(100), np.arange(100))
    assert not beats_beyond_noise(np.zeros(0), np.zeros(0, dtype=np.int64))


def test_a_win_counts_only_if_the_other_metric_stays_where_the_model_alone_has_it() -> None:
    """The model alone at 0.99 of the baseline's NDCG@10 and 0.92 of its novel-item HR@10 (a log
    of repeats): a blend that wins novel items by falling to 0.6 on NDCG@10 counts no win, one
    that keeps 0.99 does. Where the model alone is far below (0.2 of novel-item HR@10, a log of
    brands), a blend that wins NDCG@10 at 0.6 of it counts its win; above the baseline, the
    floor is parity."""
    repeats = {"ndcg@10": 0.99, "novel_hr@10": 0.92}
    assert wins_kept({"novel_hr@10"}, {"ndcg@10": 0.6, "novel_hr@10": 1.15}, repeats) == 0
    assert wins_kept({"novel_hr@10"}, {"ndcg@10": 0.99, "novel_hr@10": 1.1}, repeats) == 1
    brands = {"ndcg@10": 1.1, "novel_hr@10": 0.2}
    assert wins_kept({"ndcg@10"}, {"ndcg@10": 1.08, "novel_hr@10": 0.6}, brands) == 1
    assert wins_kept({"ndcg@10"}, {"ndcg@10": 1.08, "novel_hr@10": 0.1}, brands) == 0
    assert wins_kept({"novel_hr@10"}, {"ndcg@10": 0.95, "novel_hr@10": 1.2}, brands) == 0
    assert wins_kept({"ndcg@10", "novel_hr@10"}, {"ndcg@10": 1.1, "novel_hr@10": 1.1}, repeats) == 2
    assert wins_kept(set(), {"ndcg@10": 0.5, "novel_hr@10": 0.5}, repeats) == 0


def test_no_validation_requests_means_no_boost() -> None:
    empty = ExampleSet({"dense": np.zeros((0, len(DENSE_FEATURES)), np.float32)}, np.zeros(0, np.float32),
                       np.array([0]), [], np.zeros(0, bool), np.zeros(0, bool), np.zeros(0, np.int64))
    assert choose_novelty_boost(empty, np.zeros(0), catalog_size=1)["boost"] == 0.0


def test_validation_slice_is_the_latest_training_requests() -> None:
    events = synthetic_log()
    plain = build_training_data(events, n_candidates=20, seq_len=SEQ_LEN, table_period_ms=None)
    data = build_training_data(events, n_candidates=20, seq_len=SEQ_LEN, table_period_ms=None,
                               validation_share=0.25)
    since, until = data.validation_since_ms, data.until_ms
    assert since < until and plain.validation_since_ms == until and len(plain.validation) == 0
    assert (data.train.trigger_ts < since).all()
    assert ((data.validation.trigger_ts >= since) & (data.validation.trigger_ts < until)).all()
    assert ((data.validation_train.trigger_ts >= since) & (data.validation_train.trigger_ts < until)).all()
    # As served: requests whose next item the generator missed stay in (as misses), and only the
    # others become training examples; together with the early ones, the training set of a run
    # without a slice. The held-out part is the same.
    assert len(data.validation_train) == int(data.validation.has_positive.sum()) < len(data.validation)
    assert len(data.train) + len(data.validation_train) == len(plain.train)
    np.testing.assert_array_equal(data.eval.labels, plain.eval.labels)
    with pytest.raises(ValueError, match="validation_share"):
        build_training_data(events, validation_share=1.0)


def test_the_validation_moments_are_the_validation_requests() -> None:
    """The online baselines are scored on the requests the blend is chosen on: one moment per
    validation request, its trigger inside the slice, as many new next items as the slice has,
    and the events they count are the training part's."""
    events = synthetic_log()
    data = build_training_data(events, n_candidates=20, seq_len=SEQ_LEN, table_period_ms=None,
                               validation_share=0.25)
    moments = data.validation_moments
    assert len(moments) == len(data.validation) > 0
    assert all(data.validation_since_ms <= m.trigger.ts < data.until_ms for m in moments)
    assert sum(m.novel for m in moments) == int(data.validation.novel.sum())
    assert sorted(m.trigger.ts for m in moments) == sorted(data.validation.trigger_ts.tolist())
    assert data.train_part == sorted((e for e in events if e.ts < data.until_ms), key=lambda e: e.ts)


def test_the_boost_is_part_of_the_exported_graph(tmp_path) -> None:
    torch.manual_seed(0)
    m = DIN(ModelConfig(n_items=7, n_categories=5, dim=4, attn_hidden=4, hidden=(8,)))
    m.eval()
    args = example_inputs(n_users=3, n_rows=40, seq_len=SEQ_LEN, seed=2)
    args[INPUT_NAMES.index("dense")][:, IN_HISTORY] = (torch.arange(40) % 2).float()  # every other row touched
    with torch.no_grad():
        before = m(*args).numpy()
    m.novelty_boost.fill_(1.25)
    sess = onnx_session(export_onnx(m, tmp_path / "m.onnx", seq_len=SEQ_LEN))
    got = sess.run(["score"], feeds(args))[0]
    untouched = np.arange(40) % 2 == 0
    np.testing.assert_allclose(got[untouched], before[untouched] + 1.25, atol=1e-5)
    np.testing.assert_allclose(got[~untouched], before[~untouched], atol=1e-5)


def _random_requests(seed: int, n: int = 300) -> tuple[ExampleSet, np.ndarray]:
    """Requests of 5 to 30 candidates with consistent baseline features (co-visitation
    rank follows the co-visitation score, recency rank is set for touched rows only),
    scores with ties, one or no true item each."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(5, 31, size=n)
    offsets = np.concatenate([[0], np.cumsum(lens)])
    rows = int(offsets[-1])
    dense = np.zeros((rows, len(DENSE_FEATURES)), dtype=np.float32)
    labels = np.zeros(rows, dtype=np.float32)
    novel = np.zeros(n, dtype=bool)
    for i, (a, b) in enumerate(zip(offsets[:-1], offsets[1:], strict=True)):
        m = b - a
        touched = rng.random(m) < 0.4
        cov = np.where(rng.random(m) < 0.6, rng.integers(1, 6, size=m) / 5.0, 0.0)  # ties on purpose
        dense[a:b, IN_HISTORY] = touched
        dense[a:b, _F["covisit"]] = cov
        dense[a:b, _F["covisit_rank"]] = [0.0 if c == 0 else 1.0 / (1 + np.sum(cov > c)) for c in cov]
        dense[a:b, _REC] = np.where(touched, 1.0 / (1 + np.argsort(np.argsort(-rng.random(m)))), 0.0)
        dense[a:b, _F["log_popularity"]] = rng.permutation(m) / 3.0
        if rng.random() < 0.8:
            hit = int(rng.integers(m))
            labels[a + hit] = 1.0
            novel[i] = not touched[hit]
    es = ExampleSet({"dense": dense}, labels, offsets, list(range(rows)), novel, np.ones(n, bool), np.zeros(n))
    return es, np.round(rng.normal(size=rows), 1)


_F = {name: i for i, name in enumerate(DENSE_FEATURES)}


@pytest.mark.parametrize("seed", [0, 1])
def test_fast_metrics_equal_the_evaluation(seed) -> None:
    """The blend grid ranks by counting; it must give evaluate()'s figures, ties included."""
    es, scores = _random_requests(seed)
    fast = tuned_metrics(es, scores)
    full = evaluate(es, {"m": scores}, catalog_size=10)["rankers"]["m"]
    for k in TUNED_METRICS:
        assert fast[k] == pytest.approx(full[k], abs=1e-12)


def test_fast_ranks_take_the_best_placed_of_several_true_items() -> None:
    es, scores = _random_requests(2)
    for a, b in zip(es.offsets[:-1:3], es.offsets[1::3], strict=True):  # every third request: two true items
        es.labels[a] = es.labels[b - 1] = 1.0
    fast = tuned_metrics(es, scores)
    full = evaluate(es, {"m": scores}, catalog_size=10)["rankers"]["m"]
    assert fast["ndcg@10"] == pytest.approx(full["ndcg@10"], abs=1e-12)


@pytest.mark.parametrize("mix,baseline", [(0.0, "covisit+recent"), (1.0, "covisit")])
def test_the_prior_orders_as_the_baselines_do(mix, baseline) -> None:
    es, _ = _random_requests(3)
    prior = baseline_prior(torch.from_numpy(es.arrays["dense"]), mix).double().numpy()
    got = tuned_metrics(es, prior)
    want = evaluate(es, catalog_size=10)["rankers"][baseline]
    for k in TUNED_METRICS:
        assert got[k] == pytest.approx(want[k], abs=1e-12)


def test_a_model_that_loses_is_blended_with_the_baselines() -> None:
    """Scores of pure noise lose to the baselines; the chosen blend leans on them and comes
    closer to the best baselines than the model alone (a list cannot equal two baselines at
    once: the best on NDCG and the best on novel items differ)."""
    es, scores = _random_requests(4)
    # The shopper's next item: the co-visitation + recent order's first, for 2 of 3 requests.
    prior = baseline_prior(torch.from_numpy(es.arrays["dense"]), 0.0).numpy()
    rng = np.random.default_rng(5)
    for i, (a, b) in enumerate(zip(es.offsets[:-1], es.offsets[1:], strict=True)):
        if rng.random() < 2 / 3:
            es.labels[a:b] = 0.0
            top = a + int(np.argmax(prior[a:b]))
            es.labels[top] = 1.0
            es.novel[i] = es.arrays["dense"][top, IN_HISTORY] <= 0
    out = choose_blend(es, scores, catalog_size=10)
    assert out["model_alone"]["min_ratio"] < 0.9
    assert out["prior_weight"] > 0
    assert out["min_ratio"] > out["model_alone"]["min_ratio"] + 0.1
    assert out["tried"][0]["min_ratio"] == out["min_ratio"] and len(out["tried"]) <= KEEP_TRIED


def test_the_blend_is_part_of_the_exported_graph(tmp_path) -> None:
    torch.manual_seed(0)
    m = DIN(ModelConfig(n_items=7, n_categories=5, dim=4, attn_hidden=4, hidden=(8,)))
    m.eval()
    args = example_inputs(n_users=3, n_rows=40, seq_len=SEQ_LEN, seed=3)
    dense = args[INPUT_NAMES.index("dense")]
    with torch.no_grad():
        before = m(*args).numpy()
    m.prior_weight.fill_(2.0)
    m.prior_mix.fill_(0.5)
    sess = onnx_session(export_onnx(m, tmp_path / "m.onnx", seq_len=SEQ_LEN))
    got = sess.run(["score"], feeds(args))[0]
    np.testing.assert_allclose(got, before + 2.0 * baseline_prior(dense, 0.5).numpy(), atol=1e-5)

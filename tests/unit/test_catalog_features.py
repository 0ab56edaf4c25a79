"""The catalog's brand and price as model features: computed alike in training and the job,
filled only for a model trained with them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from model_export.train import train_model
from streamrec.catalog_files import catalog_for_events
from streamrec.lab.generator import generate_events
from udfs.artifact import load_artifact
from udfs.candidates import Candidates, CandidateTables
from udfs.catalog import CatalogItem
from udfs.config import load_config
from udfs.events import Event
from udfs.features import CATALOG_FEATURES, DENSE_FEATURES, UserRequest, Vocab, build_batch
from udfs.runtime import build_recommender
from udfs.state import StateLimits, UserState, update_state

F = {name: i for i, name in enumerate(DENSE_FEATURES)}


def rec(item_id, brand, price) -> CatalogItem:
    return CatalogItem(item_id, 1, brand, price, None, None, 0)


def request() -> UserRequest:
    """A shopper who touched 10 (brand a, 10.0), 11 (brand a, 40.0), 12 (brand b, 20.0);
    candidates 20 (a, 20.0), 21 (c, 40.0), 22 (no record), 23 (a record with neither)."""
    st = UserState()
    for ts, item in enumerate([10, 11, 12], start=1):
        update_state(st, Event(1, item, 1, "pv", ts * 1000), StateLimits())
    cands = Candidates(items=[20, 21, 22, 23], categories=[1, 1, 1, 1], sources=[0] * 4, covisit=[0.0] * 4)
    return UserRequest(st, cands, Event(1, 12, 1, "pv", 3000))


ATTRS = {10: rec(10, "a", 10.0), 11: rec(11, "a", 40.0), 12: rec(12, "b", 20.0),
         20: rec(20, "a", 20.0), 21: rec(21, "c", 40.0), 23: rec(23, None, None)}


def test_brand_share_and_price_affinity_from_what_the_shopper_touched() -> None:
    dense = build_batch([request()], Vocab({}, {}), CandidateTables(), 50, ATTRS)["dense"]
    # Two of three history rows have brand a; the shopper's median price is 20.
    np.testing.assert_allclose(dense[:, F["brand_share"]], [2 / 3, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(dense[:, F["price_affinity"]], [1.0, math.exp(-math.log(2.0)), 0.0, 0.0])


def test_without_the_catalog_the_catalog_features_are_zero() -> None:
    dense = build_batch([request()], Vocab({}, {}), CandidateTables(), 50)["dense"]
    assert not dense[:, [F[n] for n in CATALOG_FEATURES]].any()
    # The other features do not depend on the catalog.
    with_catalog = build_batch([request()], Vocab({}, {}), CandidateTables(), 50, ATTRS)["dense"]
    others = [i for n, i in F.items() if n not in CATALOG_FEATURES]
    np.testing.assert_array_equal(dense[:, others], with_catalog[:, others])


@pytest.mark.parametrize("trained_with_catalog", [False, True])
def test_the_job_fills_them_for_a_model_trained_with_them_only(fixture_artifact, trained_with_catalog) -> None:
    recommender = build_recommender(load_config(environ={}, overrides={"ranking": {
        "artifact_dir": str(fixture_artifact), "provider": "cpu"}}), catalog=True)
    recommender.artifact.manifest["catalog_features"] = trained_with_catalog
    assert recommender.catalog is not None
    item = next(iter(recommender.artifact.tables.popularity))
    recommender.catalog.apply(CatalogItem(item, 1, "brand", 9.5, 3, None, 1))
    seen: list[np.ndarray] = []
    score = recommender.ranker.score

    def capture(batch):
        seen.append(batch["dense"])
        return score(batch)

    recommender.ranker.score = capture
    state = UserState()
    event = Event("u", item, 1, "pv", 1_000)
    recommender.apply(state, event)
    recommender.recommend([recommender.request(state, event)])
    filled = seen[0][:, [F[n] for n in CATALOG_FEATURES]].any()
    assert filled == trained_with_catalog
    assert (recommender.item_attributes() is not None) == trained_with_catalog


def test_training_with_a_catalog_learns_them_and_says_so(tmp_path) -> None:
    events = generate_events(3000, n_users=80, n_items=300, n_categories=10, seed=2,
                             start_ts_ms=1_400_000_000_000, duration_s=2 * 86400)
    catalog = catalog_for_events(events, seed=2, updated_at=0)
    art = train_model(events, out_dir=tmp_path / "art", epochs=1, seq_len=20, n_candidates=20, dim=8,
                      hidden=(16,), hard_negatives=5, popularity_negatives=2, parity_requests=50,
                      progress=False, threads=1, catalog=catalog)
    m = load_artifact(art).manifest
    assert m.catalog_features
    assert m["catalog"] == {"items": len({c.item_id for c in catalog}),
                            "with_brand": sum(1 for c in catalog if c.brand),
                            "with_price": sum(1 for c in catalog if c.price)}

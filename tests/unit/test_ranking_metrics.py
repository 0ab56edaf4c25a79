"""Whole-list metrics on examples small enough to compute by hand."""

import math

import pytest

from udfs.ranking_metrics import catalog_coverage, intra_list_diversity, list_quality, novelty, precision_recall_f1


def test_precision_recall_f1_per_list_then_averaged():
    # list 1, top 2 = a, b; relevant a, c, d, e: 1 hit -> P 1/2, R 1/4, F1 2 * 1/8 / (3/4) = 1/3
    # list 2, top 2 = x, y; relevant q: no hit -> 0, 0, 0; list 3 has no relevant items: left out
    m = precision_recall_f1([["a", "b", "c"], ["x", "y"], ["a"]], [{"a", "c", "d", "e"}, {"q"}, set()], k=2)
    assert m["precision@2"] == pytest.approx(0.25)
    assert m["recall@2"] == pytest.approx(0.125)
    assert m["f1@2"] == pytest.approx(1 / 6)


def test_intra_list_diversity_is_the_share_of_pairs_across_categories():
    cats = {"a": 1, "b": 1, "c": 2, "d": 3, "e": 3, "f": 4}
    lists = [["a", "b", "c"], ["d", "e"], ["f"]]
    # [a b c]: 3 pairs, one (a, b) within a category -> 2/3; [d e]: 0; [f]: too short, left out
    assert intra_list_diversity(lists, cats, k=3) == pytest.approx(1 / 3)
    assert intra_list_diversity(lists, cats, k=2) == 0.0  # [a b] and [d e]
    assert intra_list_diversity([["u", "v"]], {}, k=2) == 1.0  # no category: each item its own


def test_novelty_is_mean_self_information_with_add_one_smoothing():
    # 7 users; a touched by 3: -log2(4/8) = 1 bit; b by none: -log2(1/8) = 3 bits
    assert novelty([["a", "b"]], {"a": 3}, n_users=7, k=2) == pytest.approx(2.0)
    assert novelty([["a", "b"]], {"a": 3}, n_users=7, k=1) == pytest.approx(1.0)


def test_catalog_coverage_counts_distinct_items_in_the_top_k():
    assert catalog_coverage([["a", "b"], ["b", "c"]], 10, k=2) == pytest.approx(0.3)
    assert catalog_coverage([["a", "b"], ["b", "c"]], 10, k=1) == pytest.approx(0.2)


def test_list_quality_holds_every_metric_under_its_report_key():
    m = list_quality([["a", "b"]], [{"a"}], {"a": 1, "b": 2}, {"a": 1, "b": 1}, 3, 4, k=2)
    assert m == {"precision@2": 0.5, "recall@2": 1.0, "f1@2": pytest.approx(2 / 3), "ild@2": 1.0,
                 "coverage@2": 0.5, "novelty@2": pytest.approx(-math.log2(2 / 4))}

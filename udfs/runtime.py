"""Worker-side construction of the recommender from config (runs in `open()`)."""

from __future__ import annotations

import gc
import logging

from udfs.artifact import Artifact, Manifest, load_artifact
from udfs.catalog import Catalog
from udfs.config import Config
from udfs.item_knowledge import ItemKnowledge, ItemKnowledgeParams
from udfs.ranker import OnnxRanker
from udfs.recommend import Recommender
from udfs.state import StateLimits
from udfs.trending import TrendingCounter

log = logging.getLogger(__name__)


def state_limits(config: Config, manifest: Manifest) -> StateLimits:
    """The shoppers' state limits: the config's, the sequence window the artifact's where the config
    says ``auto`` (the window its training log derived)."""
    s = config.state
    window_ms = manifest.state_limits.seq_window_ms if s.seq_window_s == "auto" else s.seq_window_s * 1000
    return StateLimits(
        max_seq_len=s.max_seq_len,
        seq_window_ms=window_ms,
        max_categories=s.max_categories,
        category_half_life_ms=s.category_half_life_s * 1000,
        max_bought=s.max_bought,
        max_bytes=s.max_bytes,
    )


def state_settings(limits: StateLimits) -> dict[str, int]:
    """The ``state`` config section that gives these limits (the inverse of :func:`state_limits`)."""
    return {
        "max_seq_len": limits.max_seq_len,
        "seq_window_s": limits.seq_window_ms // 1000,
        "max_categories": limits.max_categories,
        "category_half_life_s": limits.category_half_life_ms // 1000,
        "max_bought": limits.max_bought,
        "max_bytes": limits.max_bytes,
    }


def item_params(config: Config, manifest: Manifest) -> ItemKnowledgeParams:
    """How item rows learn: the config's bounds, the time window the artifact's table was counted with
    (an artifact older than that field: the shopper's sequence window)."""
    window_ms = manifest.covisit_window_ms
    return ItemKnowledgeParams.configured(
        config.items, window_ms if window_ms is not None else state_limits(config, manifest).seq_window_ms)


def item_knowledge(config: Config, artifact: Artifact) -> ItemKnowledge | None:
    """The in-process item knowledge (peer, replays) the job's keyed steps keep; None when
    ``items.online`` is off."""
    if not config.items.online:
        return None
    return ItemKnowledge(artifact.tables.covisit, item_params(config, artifact.manifest))


def build_recommender(config: Config, catalog: bool = False, with_ranker: bool = True) -> Recommender:
    """``catalog``: join an (initially empty) :class:`Catalog` that the caller fills from the
    catalog topic; items the artifact's log has behavior for are never new.
    ``with_ranker=False``: no model session (the keyed stage of a batched job prepares, never ranks)."""
    r = config.ranking
    artifact = load_artifact(r.artifact_dir)
    ranker = make_ranker(config, artifact) if with_ranker else None
    trending = TrendingCounter(half_life_ms=r.trending_half_life_s * 1000) if r.trending_half_life_s else None
    return recommender_of(config, artifact, ranker, trending,
                          Catalog(artifact.tables.popularity, config.catalog) if catalog else None)


def make_ranker(config: Config, artifact: Artifact) -> OnnxRanker:
    r = config.ranking
    return OnnxRanker(artifact.model_bytes, provider=r.provider, io_binding=r.io_binding,
                      intra_op_threads=r.intra_op_threads)


def recommender_of(config: Config, artifact: Artifact, ranker: OnnxRanker | None, trending: TrendingCounter | None,
                   catalog: Catalog | None) -> Recommender:
    """A recommender over ``artifact`` with the config's ranking settings; ``trending`` and ``catalog``
    are stream state, shared by every model one instance ranks with."""
    r = config.ranking
    return Recommender(artifact, ranker, state_limits(config, artifact.manifest), top_k=r.top_k,
                       n_candidates=r.n_candidates, trending=trending, fresh_hit_slots=r.fresh_hit_slots,
                       max_per_category=r.max_per_category, catalog=catalog, new_item_slots=r.new_item_slots,
                       exclude_bought=None if r.bought_items == "auto" else r.bought_items == "exclude")


class ConfigModels:
    """Loads models for :class:`udfs.models.ModelSet` with this config's ranking settings."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def load(self, path: str, manifest_sha256: str | None) -> tuple[Artifact, OnnxRanker]:
        artifact = load_artifact(path, manifest_sha256)
        return artifact, make_ranker(self.config, artifact)

    def recommender(self, artifact: Artifact, ranker: OnnxRanker | None, like: Recommender | None) -> Recommender:
        return recommender_of(self.config, artifact, ranker, like.trending if like else None,
                              like.catalog if like else None)


def warn_if_catalog_features_unfed(recommender: Recommender) -> None:
    """For the stage that builds the model's inputs: a model trained with the catalog's brand and
    price features, in a run that joins no catalog, sees them 0, as a model trained without them."""
    artifact = recommender.artifact
    if artifact.manifest.catalog_features and recommender.catalog is None:
        log.warning("model %s was trained with the catalog's brand and price features, and this run joins no "
                    "catalog (a file source): they are 0 for every candidate, as for a model trained without "
                    "them", artifact.model_version)


def freeze_loaded_objects() -> None:
    """Exempt the artifact's tables (tens of thousands of long-lived objects) from the
    cyclic GC: each full collection otherwise walks them all, a ~35 ms pause here."""
    gc.collect()
    gc.freeze()

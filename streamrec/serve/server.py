"""Builds the serve process from the config and runs it under uvicorn."""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import Any

from streamrec.kafka_io import erase_record, event_record
from streamrec.serve.access import Access
from streamrec.serve.app import build_app
from streamrec.serve.context import Catalog, ServeContext
from streamrec.serve.follower import CatalogFollower, Follower
from streamrec.serve.guest import GuestRanker
from streamrec.serve.store import RedisStore, SqliteStore, Store
from udfs.artifact import MANIFEST_FILE, ArtifactError, load_artifact
from udfs.config import Config
from udfs.events import Event, Id
from udfs.kafka_clients import KafkaClients
from udfs.kafka_security import python_client_options
from udfs.privacy import load_key

log = logging.getLogger(__name__)


def load_catalog(artifact_dir: str) -> Catalog:
    """Item categories from the model artifact when there is one (so a click on a listed item
    sends its category); an empty catalog otherwise."""
    if not Path(artifact_dir, MANIFEST_FILE).is_file():
        log.info("no model artifact at %s: events sent from the page carry category 0", artifact_dir)
        return Catalog()
    try:
        tables = load_artifact(artifact_dir).tables
    except ArtifactError as exc:
        log.warning("model artifact at %s unreadable (%s): events sent from the page carry category 0",
                    artifact_dir, exc)
        return Catalog()
    return Catalog(item_category=dict(tables.item_category))


class EventSender:
    """One producer, made at the first click (the service starts without the input topic)."""

    def __init__(self, bootstrap: str, topic: str, security: dict[str, Any] | None) -> None:
        self.bootstrap, self.topic, self.security = bootstrap, topic, security
        self._producer: Any = None

    def __call__(self, event: Event) -> dict[str, Any]:
        return self._send(*event_record(event))

    def _send(self, key: bytes, value: bytes) -> dict[str, Any]:
        if self._producer is None:
            self._producer = KafkaClients(self.bootstrap, self.security).producer(linger_ms=0)
        meta = self._producer.send(self.topic, key=key, value=value).get(timeout=10)
        return {"partition": meta.partition, "offset": meta.offset}

    def erase(self, user: Id) -> dict[str, Any]:
        """An erase request for ``user`` (``streamrec forget``'s record), sent as an event is."""
        return self._send(*erase_record(user))

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()


def open_store(cfg: Config, store_path: str | None = None) -> Store:
    """The view's store that ``serve.store`` names, for the output topic."""
    if cfg.serve.store == "redis":
        return RedisStore(cfg.serve.redis_url, cfg.kafka.output_topic, prefix=cfg.serve.redis_prefix,
                          catalog_topic=cfg.kafka.catalog_topic)
    return SqliteStore(store_path or cfg.serve.store_path, cfg.kafka.output_topic,
                       catalog_topic=cfg.kafka.catalog_topic)


def build_context(cfg: Config, store_path: str | None = None) -> tuple[ServeContext, EventSender]:
    security = python_client_options(cfg.kafka)
    access = Access.from_config(cfg.serve)  # the token is read (and checked) before anything starts
    store = open_store(cfg, store_path)
    sender = EventSender(cfg.kafka.bootstrap_servers, cfg.kafka.input_topic, security)
    key_of: Any = str
    if cfg.privacy.pseudonymize:
        key = load_key(cfg.privacy)

        def key_of(user: Id) -> str:
            return str(key.pseudonym(user))

    follower = Follower(store, cfg.kafka.bootstrap_servers, cfg.kafka.output_topic, security=security)
    catalog = CatalogFollower(store, cfg.kafka.bootstrap_servers, cfg.kafka.catalog_topic, security=security,
                              poll_ms=500, max_future_skew_ms=cfg.job.max_future_skew_ms)
    ctx = ServeContext(store=store, follower=follower, catalog_follower=catalog, send_event=sender,
                       send_erase=sender.erase,
                       input_topic=cfg.kafka.input_topic,
                       trending_size=cfg.serve.trending_size, trending_window=cfg.serve.trending_window,
                       catalog=load_catalog(cfg.ranking.artifact_dir), key_of=key_of, access=access,
                       guest=GuestRanker.from_config(cfg))
    follower.on_lists = ctx.lists_changed
    catalog.on_lists = ctx.catalog_changed
    return ctx, sender


def serve(cfg: Config, port: int | None = None, host: str | None = None) -> int:
    import uvicorn  # lazy: the serve extra

    ctx, sender = build_context(cfg)
    # What is loaded now (the model's tables, the catalog, the libraries) lives as long as the process:
    # out of the collector's reach, no collection walks it again. A rebuild allocates some 25 containers
    # per list, so collections run every few lists and would otherwise each pay for all of it.
    gc.freeze()
    ctx.follower.start()
    if ctx.catalog_follower is not None:
        ctx.catalog_follower.start()
    try:
        uvicorn.run(build_app(ctx), host=host or cfg.serve.bind_address, port=port or cfg.serve.port,
                    log_level="info", access_log=False)
    finally:
        ctx.follower.stop()
        if ctx.catalog_follower is not None:
            ctx.catalog_follower.stop()
        sender.close()
        ctx.store.close()
    return 0

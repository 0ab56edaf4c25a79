"""The Flink Python functions of the job: thin wrappers over the pure logic.

Element shapes between operators:
- raw input: Row(topic, partition, offset, timestamp, value: bytes)
- keyed input (EventEnvelope.java): Row(topic, partition, offset, timestamp, event_ts, value),
  keyed by the user id as a string (its pseudonym with ``privacy.pseudonymize``); with online item
  knowledge (jobs/items.py) one more field, ``row``: the touched item's fresh co-visitation row
- outputs (recommendations, dead letters, late events, feedback): Row(key: str, value: bytes)
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence
from typing import Any

import msgpack
from pyflink.common import Row, Time
from pyflink.common.typeinfo import Types
from pyflink.datastream import KeyedBroadcastProcessFunction, KeyedProcessFunction, OutputTag, RuntimeContext
from pyflink.datastream.state import MapStateDescriptor, StateTtlConfig, ValueStateDescriptor

from jobs.flink_metrics import MODEL_INFO, MODEL_INFO_LABELS, InfoMetric, java_histogram_factory
from udfs.batching import PreparedRequest, encode_erasure, encode_request, shard_of
from udfs.catalog import COUNTS as CATALOG_COUNTS
from udfs.catalog import Catalog, CatalogFull, CatalogItem, catalog_key, decode_catalog_item
from udfs.config import Config
from udfs.control import ControlRecord, ControlRecordError, decode_control
from udfs.events import DecodeError, Erase, Event, decode_input, max_event_ts
from udfs.feedback import FEEDBACK_COUNTERS, FeedbackCounters, feedback_for, remember
from udfs.job_metrics import BatchedCounters, SampledHistograms
from udfs.models import KeptAnnouncements, ModelSet, SwapOutcome
from udfs.privacy import load_key
from udfs.recommend import Recommender
from udfs.records import (
    ERASED_LIST,
    dead_letter_record,
    encode_feedback_record,
    encode_output_record,
    late_event_record,
)
from udfs.runtime import ConfigModels, build_recommender, freeze_loaded_objects, warn_if_catalog_features_unfed
from udfs.state import UserState

log = logging.getLogger(__name__)

RAW_TYPE = Types.ROW_NAMED(
    ["topic", "partition", "offset", "timestamp", "value"],
    [Types.STRING(), Types.INT(), Types.LONG(), Types.LONG(), Types.PRIMITIVE_ARRAY(Types.BYTE())],
)
ENVELOPE_TYPE = Types.ROW_NAMED(
    ["topic", "partition", "offset", "timestamp", "event_ts", "value"],
    [Types.STRING(), Types.INT(), Types.LONG(), Types.LONG(), Types.LONG(), Types.PRIMITIVE_ARRAY(Types.BYTE())],
)
# The keyed input with online item knowledge: the envelope and the touched item's row (msgpack, b"" for none).
FRESH_ENVELOPE_TYPE = Types.ROW_NAMED(
    ["topic", "partition", "offset", "timestamp", "event_ts", "value", "row"],
    [Types.STRING(), Types.INT(), Types.LONG(), Types.LONG(), Types.LONG(), Types.PRIMITIVE_ARRAY(Types.BYTE()),
     Types.PRIMITIVE_ARRAY(Types.BYTE())],
)
KEYED_BYTES_TYPE = Types.ROW_NAMED(["key", "value"], [Types.STRING(), Types.PRIMITIVE_ARRAY(Types.BYTE())])
# A scoring request on its way to the batched ranking stage: the shopper, its candidate rows, the
# encoded request (udfs/batching.py); sent as Row(shard key, SCORING_TYPE), the layout Java's keyBy reads.
SCORING_TYPE = Types.ROW_NAMED(["key", "rows", "value"],
                               [Types.STRING(), Types.INT(), Types.PRIMITIVE_ARRAY(Types.BYTE())])
SHARD_KEYED_SCORING_TYPE = Types.ROW([Types.STRING(), SCORING_TYPE])
DLQ_TAG = OutputTag("dead-letters", KEYED_BYTES_TYPE)
LATE_TAG = OutputTag("late-events", KEYED_BYTES_TYPE)
FEEDBACK_TAG = OutputTag("feedback", KEYED_BYTES_TYPE)
# Histograms (thread mode): input record's Kafka timestamp to list emitted, time inside one model
# call, candidate rows per call.
HISTOGRAMS = ("event_to_list_ms", "model_call_us", "rows_per_call")
COUNTERS = ("events_accepted", "events_dead_lettered", "events_late", "events_duplicate", "recommendations_emitted",
            "ranking_fallbacks", "ranker_rows", "ranker_micros", "states_trimmed", "catalog_applied",
            "catalog_stale", "catalog_dead_lettered", *CATALOG_COUNTS, "model_swaps", "model_swaps_refused",
            "model_restore_fallbacks", "shoppers_erased")
# A million catalog records are a million long-lived tuples: each full cyclic-GC pass would walk
# them all (as the artifact's tables, see freeze_loaded_objects), so they leave the GC's view in steps.
GC_FREEZE_EVERY = 50_000
# Every parallel instance holds the whole catalog: item key -> the record's msgpack bytes, as read.
CATALOG_STATE = MapStateDescriptor("catalog", Types.STRING(), Types.PICKLED_BYTE_ARRAY())
# Model announcements by target ("" for the live model, else the arm's name): the ones that loaded and
# the one loading (udfs.models.KeptAnnouncements). A restore installs the newest one that loads.
MODEL_STATE = MapStateDescriptor("models", Types.STRING(), Types.PICKLED_BYTE_ARRAY())
BATCH_COUNTERS = ("recommendations_emitted", "ranking_fallbacks", "ranker_rows", "ranker_micros", "ranker_calls")
# An event-time timer here fires only on the watermark that ends a bounded input:
# processing-time timers still pending then are dropped, not fired (FLINK-14231).
END_OF_INPUT = 2**63 - 1
# Counters and histograms pending in Python reach Flink this long after the first event that left
# them pending, whether or not more events come.
QUIET_FLUSH_MS = 2000


OLDER_MODEL, CONFIG_MODEL = "older_model", "config_model"


def restore_fallback(candidates: Sequence[ControlRecord], outcomes: Sequence[SwapOutcome]) -> str | None:
    """Whether a restore fell back from the model live at the checkpoint (the first candidate): to an
    older kept one (:data:`OLDER_MODEL`) or to the config's (:data:`CONFIG_MODEL`); None when the
    first loaded or there was nothing to restore."""
    if not candidates or (outcomes and outcomes[0].refused is None):
        return None
    return OLDER_MODEL if outcomes and outcomes[-1].refused is None else CONFIG_MODEL


def value_state_with_ttl(name: str, ttl_s: int) -> ValueStateDescriptor:
    """A bytes value per key that expires ``ttl_s`` after its last write (processing time)."""
    ttl = (
        StateTtlConfig.new_builder(Time.seconds(ttl_s))
        .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
        .set_state_visibility(StateTtlConfig.StateVisibility.NeverReturnExpired)
        # PyFlink's default background cleanup builds a RocksDB strategy whose
        # java.time.Duration needs a py4j gateway, which a TaskManager's thread-mode
        # worker does not have (FileNotFoundError at open() on a real cluster).
        # The same cleanup, spelled out without a Duration:
        .disable_cleanup_in_background()
        .cleanup_incrementally(10, False)
        .cleanup_full_snapshot()
        .build()
    )
    desc = ValueStateDescriptor(name, Types.PICKLED_BYTE_ARRAY())
    desc.enable_time_to_live(ttl)
    return desc


def dead_letter(error: DecodeError, topic: str | None, partition: int | None, offset: int | None,
                timestamp: int | None, redact: bool = False) -> Row:
    return Row(*dead_letter_record(error, topic, partition, offset, timestamp, redact))


def late_record(event: Event, watermark: int, lateness_ms: int) -> Row:
    return Row(*late_event_record(event, watermark, lateness_ms))


def log_provider(recommender: Recommender) -> None:
    choice = recommender.provider
    log.warning("streamrec ranker provider: %s%s", choice.provider if choice else "none",
                f" (fallback: {choice.fallback_reason})" if choice and choice.fallback_reason else "")


def flush_ranker_metrics(recommender: Recommender, metrics: BatchedCounters, seen: tuple[int, int]) -> tuple[int, int]:
    """Hand the model's rows and time since ``seen`` to the counters; returns the new totals."""
    ranker = recommender.ranker
    if ranker is not None:
        rows, micros = ranker.stats.rows, int(ranker.stats.seconds * 1e6)
        metrics.inc("ranker_rows", rows - seen[0])
        metrics.inc("ranker_micros", micros - seen[1])
        seen = (rows, micros)
    metrics.flush()
    return seen


def fresh_row(value: Row) -> list[Any] | None:
    """The touched item's fresh co-visitation row riding with the event (FRESH_ENVELOPE_TYPE); None
    without online item knowledge, or for an event whose item row could not be read."""
    if len(value) < 7:
        return None
    blob = as_bytes(value[6])
    return msgpack.unpackb(blob, raw=False) if blob else None


def as_bytes(value: Any) -> bytes:
    """Java byte[] reaches Python as bytes or, on some paths, as signed ints."""
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return bytes(b & 0xFF for b in value)


def subtask_index(runtime_context: RuntimeContext) -> int:
    """This instance's index. PyFlink 2.x's thread-mode ``get_index_of_this_subtask`` calls a Java
    method that Flink 2.0 moved under ``getTaskInfo()``, and raises AttributeError."""
    try:
        return int(runtime_context.get_index_of_this_subtask())
    except AttributeError:
        j_context = runtime_context._runtime_context
        return int(j_context.getTaskInfo().getIndexOfThisSubtask())


class _Recommending:
    """Per user: decode, update the compact state, generate candidates, rank, emit top-K.

    Decoding happens here, not in an operator of its own, so an event crosses from
    the JVM into Python once. Bad records become dead letters, never exceptions.
    The keyed function with and without the catalog join share it.
    """

    joins_catalog = False

    def __init__(self, config: Config) -> None:
        self.config = config
        self.shard_keys: list[str] = []

    def route_to_batches(self, shard_keys: list[str]) -> None:
        """Emit scoring requests for the batched ranking stage, keyed by ``shard_keys[shard]``,
        instead of ranking here (set while the graph is built: ``ranking.batching``)."""
        self.shard_keys = list(shard_keys)

    def open(self, runtime_context: RuntimeContext) -> None:
        cfg = self.config
        # Batched, the model lives in the ranking stage: no session here.
        self.recommender = build_recommender(cfg, catalog=self.joins_catalog, with_ranker=not self.shard_keys)
        warn_if_catalog_features_unfed(self.recommender)
        # Batched, the ranking stage holds the model: no arms (the config refuses them), no swaps.
        self.models = ModelSet(self.recommender, ConfigModels(cfg), registry_dir=cfg.ranking.registry_dir,
                               load_timeout_s=cfg.ranking.model_load_timeout_s,
                               arms=() if self.shard_keys else cfg.ab.arms, salt=cfg.ab.salt)
        # What became of announcements since MODEL_STATE was last written (only the broadcast side may).
        self._unsaved: list[SwapOutcome] = []
        freeze_loaded_objects()
        self.state = runtime_context.get_state(value_state_with_ttl("user-state", cfg.state.ttl_s))
        # ranker_rows / ranker_micros: rows the model scored and time inside it, for
        # in-job vs model-alone throughput.
        group = runtime_context.get_metrics_group()
        self.metrics = BatchedCounters(group.counter, COUNTERS)
        make_histogram = java_histogram_factory(group)
        self.histograms = SampledHistograms(make_histogram, HISTOGRAMS) if make_histogram else None
        self._metric_group = group
        self._model_infos: dict[str, InfoMetric] = {}
        self._model_info()
        self._ranker_seen = (0, 0)
        self._flush_timer = False
        self.lateness = cfg.job.allowed_lateness_ms
        self.max_future_skew_ms = cfg.job.max_future_skew_ms
        # JSON input is translated in the source; what it could not translate comes as {input_error, raw}.
        self.translated = cfg.input.format == "json"
        self.since_ms = cfg.job.since_ms
        self.max_state_bytes = cfg.state.max_bytes
        self.pseudonym = None
        if cfg.privacy.pseudonymize:
            # Read here, in the worker, never carried in the pickled function (see udfs/privacy.py).
            key = load_key(cfg.privacy)
            self.pseudonym = key.pseudonym
            log.warning("streamrec pseudonymous user ids: key %s from %s", key.key_id, key.source)
        self.redact_dead_letters = cfg.privacy.redact_dead_letters
        self.kept_rows = cfg.items.kept_rows
        self.subtask = subtask_index(runtime_context)
        self.feedback = FeedbackCounters(lambda version, arm: BatchedCounters(
            group.add_group("model_version", version).add_group("arm", arm).counter, FEEDBACK_COUNTERS))
        if not self.shard_keys:
            log_provider(self.recommender)
        elif self.subtask == 0:
            log.warning("streamrec: no online feedback with ranking.batching (lists are ranked in a stage "
                        "without the shoppers' state)")

    def close(self) -> None:
        self._flush_metrics()
        self.models.close()

    def on_timer(self, timestamp: int, ctx: Any) -> Any:
        """The quiet-stream flush: the only timer this function sets."""
        self._flush_timer = False
        self._flush_metrics()
        yield from ()

    def _model_info(self) -> None:
        """One info metric per model version this instance has ranked with: 1 while the version is in
        use (live, or pinned by an arm), 0 after a swap took it out."""
        in_use = {r.artifact.model_version: r for r in self.models.all()}
        for version, recommender in in_use.items():
            if version in self._model_infos:
                continue
            choice = recommender.provider
            labels = dict(zip(MODEL_INFO_LABELS, (version, choice.label if choice else "none")))
            try:
                self._model_infos[version] = InfoMetric(self._metric_group, MODEL_INFO, labels)
            except Exception:  # a metric must never stop the job
                log.exception("streamrec: no model info metric for %s", version)
        for version, metric in self._model_infos.items():
            metric.set(version in in_use)

    def _report(self, outcomes: list[SwapOutcome]) -> None:
        """Log and count what became of announcements, and update the model info metrics; the counters
        leave at once (swaps are rare, and a dashboard should not wait for the next flush interval)."""
        if not outcomes:
            return
        self._unsaved.extend(outcomes)
        for outcome in outcomes:
            r = outcome.record
            if outcome.refused is None:
                self._model_info()
                self.metrics.inc("model_swaps")
                log.warning("streamrec now ranking %s with model %s", f"arm {r.arm}" if r.arm else "live lists",
                            r.model_version)
            else:
                self.metrics.inc("model_swaps_refused")
                log.error("streamrec refused model %s from %s (%s): %s; the current model keeps serving",
                          r.model_version, r.path, f"arm {r.arm}" if r.arm else "live", outcome.refused)
        self.metrics.flush()

    def _recommend(self, value: Row, ctx: Any) -> Any:
        if self.metrics.due():
            self._flush_metrics()
        if not self._flush_timer:
            # Counts otherwise reach Flink with the next event only: after a burst, a quiet stream's
            # dashboards would show the burst's last second never.
            timers = ctx.timer_service()
            timers.register_processing_time_timer(timers.current_processing_time() + QUIET_FLUSH_MS)
            self._flush_timer = True
        self._report(self.models.poll())
        raw = as_bytes(value[5])
        # A ts beyond now + skew is a dead letter here and got no event time in the envelope.
        result = decode_input(raw, max_event_ts(self.max_future_skew_ms), self.pseudonym, translated=self.translated)
        key = ctx.get_current_key()
        if isinstance(key, Row):
            key = key[0]
        if isinstance(result, DecodeError) or str(result.user_id) != key:
            # A key the envelope could not read means Python cannot decode it either;
            # the second test is a guard that the two readers agree.
            error = result if isinstance(result, DecodeError) else DecodeError(
                f"key_mismatch: envelope key {key!r} != user_id", raw)
            self.metrics.inc("events_dead_lettered")
            yield DLQ_TAG, dead_letter(error, value[0], value[1], value[2], value[3], self.redact_dead_letters)
            return
        if isinstance(result, Erase):
            yield from self._erase(key)
            return
        self.metrics.inc("events_accepted")
        event = result
        watermark = ctx.timer_service().current_watermark()
        if event.ts < watermark - self.lateness:
            self.metrics.inc("events_late")
            yield LATE_TAG, late_record(event, watermark, self.lateness)
            return
        state = UserState.from_bytes(self.state.value())
        recommender, arm = self.models.for_key(key)
        if not recommender.apply(state, event, fresh_row(value), self.kept_rows):
            self.metrics.inc("events_duplicate")
            return
        if not self.shard_keys:
            yield from self._feedback(state, event)
        elif state.last_list:
            state.last_list = []  # lists ranked from here on are not seen here: switched back, score none stale
        if event.ts >= self.since_ms:
            req = recommender.request(state, event)
            if self.shard_keys:
                yield self._scoring_request(key, recommender.prepare(req))
            else:
                ranker = recommender.ranker
                before = (ranker.stats.calls, ranker.stats.rows, ranker.stats.seconds) if ranker else None
                record = recommender.recommend([req], arm)[0]
                if self.histograms is not None:
                    self._observe(recommender, record, value[3], before)
                if record["fallback"]:
                    self.metrics.inc("ranking_fallbacks")
                self.metrics.inc("recommendations_emitted")
                remember(state, record)
                yield Row(str(event.user_id), encode_output_record(record))
        blob, trimmed = state.to_bounded_bytes(self.max_state_bytes)
        if trimmed:
            self.metrics.inc("states_trimmed")
        self.state.update(blob)

    def _erase(self, key: str) -> Any:
        """Forget the shopper: their state goes (the item step already cleared their item window), and
        their list leaves the lists topic as a tombstone, after any list of theirs still being ranked."""
        self.state.clear()
        self.metrics.inc("shoppers_erased")
        if self.shard_keys:
            yield Row(self.shard_keys[shard_of(key, len(self.shard_keys))], Row(key, 0, encode_erasure(key)))
        else:
            yield FEEDBACK_TAG, Row(key, ERASED_LIST)  # readers of the feedback topic drop what came before
            yield Row(key, ERASED_LIST)

    def _feedback(self, state: UserState, event: Event) -> Any:
        """The event scored against the shopper's last list (udfs/feedback.py), before its own replaces it."""
        fb = feedback_for(state, event, self.since_ms)
        if fb is not None:
            self.feedback.record(fb)
            yield FEEDBACK_TAG, Row(*encode_feedback_record(fb))

    def _observe(self, recommender: Recommender, record: dict[str, Any], input_ts: int | None,
                 before: tuple[int, int, float] | None) -> None:
        assert self.histograms is not None
        if input_ts is not None and input_ts > 0:
            self.histograms.add("event_to_list_ms", max(0, record["generated_at"] - input_ts))
        ranker = recommender.ranker
        if ranker is not None and before is not None and ranker.stats.calls > before[0]:
            self.histograms.add("model_call_us", (ranker.stats.seconds - before[2]) * 1e6)
            self.histograms.add("rows_per_call", ranker.stats.rows - before[1])

    def _scoring_request(self, key: str, prepared: PreparedRequest) -> Row:
        shard = self.shard_keys[shard_of(key, len(self.shard_keys))]
        return Row(shard, Row(key, prepared.rows, encode_request(prepared)))

    def _flush_metrics(self) -> None:
        self._ranker_seen = flush_ranker_metrics(self.recommender, self.metrics, self._ranker_seen)
        self.feedback.flush()
        if self.histograms is not None:
            self.histograms.flush()


class RecommendFunction(_Recommending, KeyedProcessFunction):
    """The keyed function alone: no catalog (file sources, bounded runs)."""

    def process_element(self, value: Row, ctx: KeyedProcessFunction.Context) -> Any:
        yield from self._recommend(value, ctx)


class CatalogRecommendFunction(_Recommending, KeyedBroadcastProcessFunction):
    """The keyed function joined with the broadcast catalog and model announcements
    (docs/contracts.md "Catalog", docs/operations.md "Hot swap and A/B tests").

    Every instance sees every catalog record and every announcement (the two topics arrive on one
    broadcast input, told apart by topic). Flink's broadcast state (JVM, checkpointed) keeps each
    item's latest record as read, and the newest announcements per target; a Python
    :class:`~udfs.catalog.Catalog` mirrors the catalog for lookups, since a JVM call per candidate
    would cost more than the ranking. After a restore the mirror is rebuilt and the model that was
    live at the checkpoint installed, once, before the first element of either input.
    """

    joins_catalog = True

    def open(self, runtime_context: RuntimeContext) -> None:
        super().open(runtime_context)
        self._restored = False
        self.control_topic = self.config.kafka.control_topic

    def _catalog(self) -> Catalog:
        catalog = self.recommender.catalog
        assert catalog is not None
        return catalog

    def _restore(self, ctx: Any) -> None:
        if self._restored:
            return
        self._restored = True
        catalog = self._catalog()
        refused = 0
        for _, blob in ctx.get_broadcast_state(CATALOG_STATE).items():
            item = decode_catalog_item(blob)
            if not isinstance(item, DecodeError):  # only valid records were ever stored
                try:
                    catalog.apply(item)
                except CatalogFull:  # catalog.max_items lowered since the checkpoint
                    refused += 1
        self._count_catalog()
        if refused:
            log.error("streamrec catalog restore: %d items over catalog.max_items (%d) left out", refused,
                      catalog.limits.max_items)
        if len(catalog):
            gc.freeze()
            log.warning("streamrec catalog restored: %d items", len(catalog))
        if not self.shard_keys:
            for target, blob in ctx.get_broadcast_state(MODEL_STATE).items():
                self._restore_model(target, KeptAnnouncements.from_bytes(blob))

    def _restore_model(self, target: str, kept: KeptAnnouncements) -> None:
        """Install the newest of a target's kept announcements that loads in time: the model live at the
        checkpoint; one that fails or hangs is logged and counted, and the one before it tried."""
        candidates = kept.candidates()
        outcomes = self.models.restore(candidates)
        self._report(outcomes)
        fallback = restore_fallback(candidates, outcomes)
        if fallback is None:
            return
        self.metrics.inc("model_restore_fallbacks")
        self.metrics.flush()
        what = f"arm {target}" if target else "live lists"
        if fallback == OLDER_MODEL:
            log.error("streamrec restored %s with model %s, older than the checkpoint's newest", what,
                      outcomes[-1].record.model_version)
        else:
            log.error("streamrec restored %s with the config's model (ranking.artifact_dir): no kept model "
                      "loaded within ranking.model_load_timeout_s", what)

    def _save_outcomes(self, ctx: KeyedBroadcastProcessFunction.Context) -> None:
        """Write what became of announcements into MODEL_STATE: a model that loaded becomes a restore candidate."""
        state = ctx.get_broadcast_state(MODEL_STATE)
        for outcome in self._unsaved:
            target = outcome.record.arm or ""
            kept = KeptAnnouncements.from_bytes(state.get(target) if state.contains(target) else None)
            kept.settle(outcome)
            state.put(target, kept.to_bytes())
        self._unsaved.clear()

    def process_element(self, value: Row, ctx: KeyedBroadcastProcessFunction.ReadOnlyContext) -> Any:
        self._restore(ctx)
        yield from self._recommend(value, ctx)

    def process_broadcast_element(self, value: Row, ctx: KeyedBroadcastProcessFunction.Context) -> Any:
        self._restore(ctx)
        self._report(self.models.poll())
        self._save_outcomes(ctx)
        if value[0] == self.control_topic:
            yield from self._announcement(value, ctx)
            return
        raw = as_bytes(value[4])
        item = decode_catalog_item(raw, max_event_ts(self.max_future_skew_ms))
        error = self._apply_catalog(item, raw, ctx) if isinstance(item, CatalogItem) else item
        self._count_catalog()
        if error is not None and self.subtask == 0:  # every instance sees the record; one dead letter
            self.metrics.inc("catalog_dead_lettered")
            yield DLQ_TAG, dead_letter(error, value[0], value[1], value[2], value[3])

    def _apply_catalog(self, item: CatalogItem, raw: bytes, ctx: KeyedBroadcastProcessFunction.Context
                       ) -> DecodeError | None:
        """Into the mirror and, when taken, the broadcast state; a record refused at
        ``catalog.max_items`` comes back as a dead letter."""
        catalog = self._catalog()
        try:
            taken = catalog.apply(item)
        except CatalogFull as exc:
            return DecodeError(exc.reason, raw)
        if taken:
            ctx.get_broadcast_state(CATALOG_STATE).put(catalog_key(item.item_id), raw)
            self.metrics.inc("catalog_applied")
            if len(catalog) % GC_FREEZE_EVERY == 0:
                gc.freeze()
        else:
            self.metrics.inc("catalog_stale")
        return None

    def _count_catalog(self) -> None:
        for name, n in self._catalog().take_counts().items():
            self.metrics.inc(name, n)

    def _announcement(self, value: Row, ctx: KeyedBroadcastProcessFunction.Context) -> Any:
        """A model announcement: start loading it (the swap happens between two later events); an
        unreadable one is a dead letter, and no model changes."""
        raw = as_bytes(value[4])
        try:
            record = decode_control(raw)
        except ControlRecordError as exc:
            self.metrics.inc("model_swaps_refused")
            if self.subtask == 0:
                yield DLQ_TAG, dead_letter(DecodeError(f"control: {exc}", raw), value[0], value[1], value[2],
                                           value[3])
            return
        if self.shard_keys:
            self.metrics.inc("model_swaps_refused")
            log.error("streamrec ignores model %s: hot swap needs ranking.batching off", record.model_version)
            return
        refused = self.models.announce(record)
        if refused is not None:
            self._report([refused])
            return
        state = ctx.get_broadcast_state(MODEL_STATE)
        target = record.arm or ""
        kept = KeptAnnouncements.from_bytes(state.get(target) if state.contains(target) else None)
        kept.announced(record)
        state.put(target, kept.to_bytes())



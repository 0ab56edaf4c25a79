"""Sources and sinks that plug into :func:`jobs.pipeline.build_pipeline`."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import KafkaError
from pyflink.common import Duration, Row, WatermarkStrategy
from pyflink.common.typeinfo import Types
from pyflink.datastream import DataStream, StreamExecutionEnvironment
from pyflink.datastream.connectors.base import DeliveryGuarantee
from pyflink.datastream.connectors.kafka import (
    KafkaOffsetResetStrategy,
    KafkaOffsetsInitializer,
    KafkaSink,
    KafkaSource,
)
from pyflink.java_gateway import get_gateway

from jobs.functions import RAW_TYPE, as_bytes
from jobs.pipeline import PipelineOutputs, source_watermarks
from udfs.config import Config, ConfigError
from udfs.events import Event, encode_event
from udfs.kafka_clients import KafkaClients
from udfs.kafka_security import java_client_properties, python_client_options
from udfs.records import ERASED_LIST, TOMBSTONE_FIELD
from udfs.topics import COMPACTED, ensure_topic

# Values travel back to the client as JSON text: a Java byte[] crosses py4j byte by
# byte, which made collecting ~20k lists take over ten minutes.
TAGGED_TYPE = Types.ROW_NAMED(["kind", "key", "value"], [Types.STRING(), Types.STRING(), Types.STRING()])
KINDS = ("recommendations", "dead_letters", "late_events", "feedback")
TRANSACTION_MAX_KEY = "transaction.max.timeout.ms"

log = logging.getLogger(__name__)


def _jvm() -> Any:
    return get_gateway().jvm


# The catalog has no event time, and must never move the job's event-time clock: its watermark
# trails its records' Kafka timestamps by a century, so it is below any event's (a catalog read
# while the events' input is idle once pushed the clock to the catalog's publish time, and every
# later event of a replayed log was late). While records flow it holds the clock still; after
# CATALOG_IDLENESS_MS without records it is idle and leaves the clock to the events.
CATALOG_IDLENESS_MS = 1000
CATALOG_WATERMARK_LAG_DAYS = 36_500


# The catalog and control topics are quiet: most fetches of their readers find nothing. With the
# events' fetch wait (``kafka.source_fetch_max_wait_ms``, 20 ms) every idle reader asked the broker 50
# times a second, and the broker's CPU on a 2-core machine is the job's. A quiet topic's fetch is answered
# as soon as one record is there (min bytes 1), else after half a second: a catalog change or a
# model announcement still reaches the job at once, and an idle reader costs two requests a second.
QUIET_FETCH_MAX_WAIT_MS = 500
QUIET_FETCH_MIN_BYTES = 1


def _raw_kafka_source(config: Config, topics: list[str], group_id: str, starting: Any,
                      fetch_max_wait_ms: int, fetch_min_bytes: int, translator: Any = None) -> KafkaSource:
    """A KafkaSource of raw records with their coordinates (see RawRecordDeserializer.java);
    ``translator``: a ``JsonInput`` that turns each value into the canonical event (:func:`json_input`)."""
    k = config.kafka
    builder = (
        KafkaSource.builder()
        .set_bootstrap_servers(k.bootstrap_servers)
        .set_topics(*topics)
        .set_group_id(group_id)
        .set_starting_offsets(starting)
        .set_property("isolation.level", "read_committed")
        .set_property("partition.discovery.interval.ms", "30000")
        .set_property("fetch.max.wait.ms", str(fetch_max_wait_ms))
        .set_property("fetch.min.bytes", str(fetch_min_bytes))
    )
    for key, value in java_client_properties(k).items():
        builder.set_property(key, str(value))
    # PyFlink only exposes value-only deserializers; ours keeps partition/offset.
    builder._j_builder.setDeserializer(_jvm().io.streamrec.flink.RawRecordDeserializer(translator))
    return builder.build()


def json_input(config: Config) -> Any:
    """The JVM translator of ``input.format = json`` (``JsonInput.java``), or None for msgpack input."""
    i = config.input
    if i.format != "json":
        return None
    jvm = _jvm()
    behaviors = jvm.java.util.HashMap()
    for theirs, ours in i.behavior_map().items():
        behaviors.put(theirs, ours)
    return jvm.io.streamrec.flink.JsonInput(i.user_field, i.item_field, i.category_field, i.behavior_field,
                                            i.ts_field, i.ts_unit, behaviors)


@dataclass
class KafkaEventSource:
    """Raw Kafka records with their coordinates (see RawRecordDeserializer.java)."""

    config: Config

    event_time_in_source = True

    def create(self, env: StreamExecutionEnvironment, config: Config) -> DataStream:
        k = config.kafka
        starting = {
            "earliest": KafkaOffsetsInitializer.earliest(),
            "latest": KafkaOffsetsInitializer.latest(),
            "committed": KafkaOffsetsInitializer.committed_offsets(KafkaOffsetResetStrategy.EARLIEST),
        }[k.starting_offsets]
        source = _raw_kafka_source(config, [k.input_topic], k.group_id, starting, k.source_fetch_max_wait_ms,
                                   k.source_fetch_min_bytes, json_input(config))
        return env.from_source(source, source_watermarks(config), "kafka-events").uid("kafka-source")


@dataclass
class KafkaCatalogSource:
    """The catalog's and the model announcements' raw records (one broadcast input, told apart by
    topic), always from the earliest offset: the compacted catalog topic is the whole catalog, and
    the control topic ends with the live model's announcement, so a fresh start must see all of
    both (a restore resumes from the checkpoint's offsets, with the broadcast state of that
    checkpoint)."""

    config: Config

    event_time_in_source = True

    def create(self, env: StreamExecutionEnvironment, config: Config) -> DataStream:
        k = config.kafka
        for topic_field in ("catalog_topic", "control_topic"):  # a shop without a catalog or a model yet
            ensure_topic(k, getattr(k, topic_field), topic_field, COMPACTED)
        source = _raw_kafka_source(config, [k.catalog_topic, k.control_topic], f"{k.group_id}-catalog",
                                   KafkaOffsetsInitializer.earliest(), QUIET_FETCH_MAX_WAIT_MS, QUIET_FETCH_MIN_BYTES)
        watermarks = (WatermarkStrategy.for_bounded_out_of_orderness(Duration.of_days(CATALOG_WATERMARK_LAG_DAYS))
                      .with_idleness(Duration.of_millis(CATALOG_IDLENESS_MS)))
        return env.from_source(source, watermarks, "kafka-catalog").uid("kafka-catalog")


@dataclass
class KafkaSinks:
    """Recommendations, dead letters and late events, each to its topic, keyed."""

    config: Config

    def _sink(self, topic: str) -> Any:
        k = self.config.kafka
        guarantee = {
            "at-least-once": DeliveryGuarantee.AT_LEAST_ONCE,
            "exactly-once": DeliveryGuarantee.EXACTLY_ONCE,
            "none": DeliveryGuarantee.NONE,
        }[k.delivery_guarantee]
        builder = KafkaSink.builder().set_bootstrap_servers(k.bootstrap_servers).set_delivery_guarantee(guarantee)
        builder.set_property("linger.ms", str(k.sink_linger_ms))
        for key, value in java_client_properties(k).items():
            builder.set_property(key, str(value))
        if k.delivery_guarantee == "exactly-once":
            # One prefix per job name and topic: two jobs never fence each other's transactions.
            builder.set_transactional_id_prefix(f"{k.transactional_id_prefix}-{self.config.job.name}-{topic}")
            builder.set_property("transaction.timeout.ms", str(k.transaction_timeout_ms))
        # PyFlink's set_record_serializer assumes its own builder's schema class.
        builder._j_builder.setRecordSerializer(_jvm().io.streamrec.flink.KeyedBytesSerializer(topic))
        return builder.build()

    def attach(self, outputs: PipelineOutputs, config: Config) -> None:
        if config.kafka.delivery_guarantee == "exactly-once":
            check_transaction_timeout(config)
        # Feedback is newer than the other outputs: a deployment that predates it has no such topic,
        # and a sink writing to a missing topic fails the job (brokers rarely auto-create).
        ensure_topic(config.kafka, config.kafka.feedback_topic, "feedback_topic")
        topics = config.kafka.topics()
        for stream, topic_field, name in (  # the catalog's dead letters go with the events'

            (outputs.recommendations, "output_topic", "recommendations"),
            (outputs.dead_letters, "dlq_topic", "dead-letters"),
            (outputs.late_events, "late_topic", "late-events"),
            (outputs.feedback, "feedback_topic", "feedback"),
        ):
            stream.sink_to(self._sink(topics[topic_field])).name(f"kafka-{name}").uid(f"sink-{name}")


def broker_transaction_max_ms(bootstrap: str, timeout_s: float = 10.0,
                              security: Mapping[str, Any] | None = None) -> int | None:
    """The broker's ``transaction.max.timeout.ms``; None when it cannot be read.

    ``security``: kafka-python options (:func:`udfs.kafka_security.python_client_options`).
    """
    try:
        admin = KafkaClients(bootstrap, security).admin(request_timeout_ms=int(timeout_s * 1000))
    except KafkaError as exc:
        log.warning("cannot reach %s to check transaction.max.timeout.ms: %s", bootstrap, exc)
        return None
    try:
        broker = admin.describe_cluster()["brokers"][0]["broker_id"]
        found = admin.describe_configs([ConfigResource(ConfigResourceType.BROKER, str(broker), [TRANSACTION_MAX_KEY])],
                                       config_filter="all")
    except (KafkaError, KeyError, IndexError, ValueError) as exc:
        log.warning("cannot read transaction.max.timeout.ms from %s: %s", bootstrap, exc)
        return None
    finally:
        admin.close()
    for per_name in found.values():
        for configs in per_name.values():
            entry = configs.get(TRANSACTION_MAX_KEY)
            if entry is not None:
                return int(entry["value"] if isinstance(entry, dict) else entry)
    return None


def check_transaction_timeout(config: Config) -> None:
    """Refuse to start when the sinks' transaction timeout is above the broker's maximum: every
    transaction would fail at its start and the job would restart in a loop."""
    k = config.kafka
    limit = broker_transaction_max_ms(k.bootstrap_servers, security=python_client_options(k))
    if limit is not None and k.transaction_timeout_ms > limit:
        raise ConfigError(f"kafka.transaction_timeout_ms ({k.transaction_timeout_ms}) exceeds the broker's "
                          f"{TRANSACTION_MAX_KEY} ({limit}); lower it or raise the broker's limit")


def event_rows(events: Iterable[Event], origin: str) -> list[Row]:
    """Events as raw source rows (msgpack values), offsets = position in the input."""
    return [Row(origin, 0, i, e.ts, encode_event(e)) for i, e in enumerate(events)]


@dataclass
class CollectionSource:
    """Bounded source of raw rows, for files and tests."""

    rows: list[Row]

    event_time_in_source = False

    def create(self, env: StreamExecutionEnvironment, config: Config) -> DataStream:
        return env.from_collection(self.rows, type_info=RAW_TYPE)


def _tag(kind: str) -> Any:
    return lambda r: Row(kind, r[0], json.dumps(to_json(kind, as_bytes(r[1]), r[0]), separators=(",", ":")))


@dataclass
class CollectSink:
    """Brings every output back to the client, tagged by kind (bounded runs only)."""

    stream: DataStream | None = None
    results: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def attach(self, outputs: PipelineOutputs, config: Config) -> None:
        recs = outputs.recommendations.map(_tag(KINDS[0]), output_type=TAGGED_TYPE)
        dlq = outputs.dead_letters.map(_tag(KINDS[1]), output_type=TAGGED_TYPE)
        late = outputs.late_events.map(_tag(KINDS[2]), output_type=TAGGED_TYPE)
        feedback = outputs.feedback.map(_tag(KINDS[3]), output_type=TAGGED_TYPE)
        self.stream = recs.union(dlq, late, feedback)

    def run(self) -> dict[str, list[tuple[str, str]]]:
        """Execute; per kind, (key, JSON text of the output record)."""
        assert self.stream is not None, "attach() first"
        self.results = {k: [] for k in KINDS}
        with self.stream.execute_and_collect("streamrec-bounded") as rows:
            for row in rows:
                self.results[row[0]].append((row[1], row[2]))
        return self.results


def to_json(kind: str, value: bytes, key: str) -> dict[str, Any]:
    """Output values as JSON objects; raw bytes of dead letters as base64; an erased shopper's
    tombstone (``udfs.records.ERASED_LIST``, a null value on Kafka) as ``{"tombstone": key}``."""
    if value == ERASED_LIST:
        return {TOMBSTONE_FIELD: key}
    obj = msgpack.unpackb(value, raw=False, strict_map_key=False)
    if kind == "dead_letters":
        obj["raw_b64"] = base64.b64encode(obj.pop("raw")).decode()
    return obj


def write_jsonl(path: Path, lines: Iterable[str]) -> int:
    n = 0
    with path.open("w") as f:
        for line in lines:
            f.write(line + "\n")
            n += 1
    return n


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open() as f:
        for line in f:
            if line.strip():
                yield json.loads(line)

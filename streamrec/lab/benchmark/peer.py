"""The plain-Python peer of the Flink job, for the benchmark.

What a team would write instead of the Flink job: one Python process with a
Kafka consumer, the same per-user state logic, the same candidates and the
same onnxruntime model, and a Kafka producer. It does the work of
``jobs.functions.RecommendFunction`` (decode, state, candidates, ranking) with the same
code (:class:`udfs.recommend.Recommender`), and writes the same records to the
same topics:

- each input record is decoded with :func:`udfs.events.decode_input` (an erase request
  drops the shopper and sends a tombstone, as the job does), with the job's bound
  on event time (wall-clock now + ``job.max_future_skew_ms``); a bad
  one becomes a dead letter (same msgpack layout and key as the job's);
- per user, state is one msgpack value (``UserState.to_bytes``/``from_bytes`` per
  event, what Flink's state serialization costs), dropped after ``state.ttl_s`` of
  wall-clock time without a write (the job's processing-time TTL);
- duplicates are skipped; events behind the watermark minus
  ``job.allowed_lateness_ms`` go to the late topic;
- the requests of one poll are scored in ONE model call (the job scores one
  event per call). A request references its user's state object, which the
  next event of the same user would change, so a user who appears again within
  the poll is handled by ``on_repeat``: ``"flush"`` scores the pending batch
  first; ``"copy"`` gives the new event its own state object, decoded from the
  pending one's bytes (the same one decode and one encode per event), so the
  poll stays one model call. Both give each list exactly the state after its
  own event. ``"flush"`` is the default; in a log sorted by time a user's
  events come in sessions (runs of one user), where it degenerates to about
  one user per model call;
- online feedback as in the job (:mod:`udfs.feedback`): every accepted event at or
  after ``job.since_ms`` is scored against the shopper's last list, kept in state,
  and its record goes to ``kafka.feedback_topic``; in ``"copy"`` mode a repeat's
  feedback waits for the pending list it is scored against;
- the catalog as in the job: records of ``kafka.catalog_topic`` are applied before
  the events of the same poll (stock rules, new-item slots, brand and price
  features), bad ones dead-lettered;
- at-least-once: after a poll's outputs are sent, the producer is flushed and
  only then the consumed offsets are committed.

Differences from the job, on purpose and small:

- The watermark is per event and deterministic: ``max ts of the events before
  this one - out_of_orderness_ms - 1`` (Flink's bounded-out-of-orderness formula),
  over all partitions this process reads. Flink emits it periodically (200 ms),
  so its watermark lags; the peer's is never behind it and may classify a few
  more events as late under heavy disorder. Results do not depend on how the
  records were split into polls.
- Batching changes which rows share a model call; a row's score does not depend
  on the other rows (histories are per user), so lists are the same up to float
  rounding of the batched kernels.

Entry point: :func:`run_peer`. The pure part (state, lateness, batching,
output records) is :class:`Batcher`, usable without Kafka.
"""

from __future__ import annotations

import logging
import resource
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from udfs.catalog import CatalogFull, decode_catalog_item
from udfs.config import Config
from udfs.errors import UserError
from udfs.events import DecodeError, Erase, Event, decode_input, max_event_ts
from udfs.features import UserRequest
from udfs.feedback import feedback_for, remember
from udfs.item_knowledge import ItemKnowledge
from udfs.kafka_clients import KafkaClients
from udfs.privacy import load_key
from udfs.recommend import Recommender
from udfs.records import dead_letter_record, encode_feedback_record, encode_output_record, late_event_record
from udfs.runtime import build_recommender, freeze_loaded_objects, item_knowledge
from udfs.state import UserState
from udfs.topics import ensure_topic

log = logging.getLogger(__name__)

INT64_MIN = -(2**63)
MAX_POLL_RECORDS = 500
OnRepeat = Literal["flush", "copy"]


@dataclass
class PollOutput:
    """What one :meth:`Batcher.process` call produced, in emission order."""

    records: list[dict[str, Any]] = field(default_factory=list)
    """Recommendation records (the job's output map); key = ``str(record["user_id"])``."""
    late: list[tuple[str, bytes]] = field(default_factory=list)
    """Late-topic ``(key, msgpack value)`` pairs."""
    feedback: list[tuple[str, bytes | None]] = field(default_factory=list)
    """Feedback-topic ``(key, msgpack value)`` pairs (udfs/feedback.py), as the job emits them; None: an
    erased shopper's tombstone."""
    erased: list[tuple[int, str]] = field(default_factory=list)
    """Erased shoppers: ``(position in records, key)``, the tombstone goes before that record."""

    def lists(self) -> Iterator[tuple[str, bytes | None]]:
        """The lists topic's ``(key, value)`` records in emission order; None: a tombstone."""
        erased = iter(self.erased)
        pending = next(erased, None)
        for i, record in enumerate(self.records):
            while pending is not None and pending[0] <= i:
                yield pending[1], None
                pending = next(erased, None)
            yield str(record["user_id"]), encode_output_record(record)
        while pending is not None:
            yield pending[1], None
            pending = next(erased, None)


class Batcher:
    """Per-user state, lateness, duplicates and batched scoring, free of Kafka.

    State is keyed by ``str(user_id)`` like the job's ``key_by`` and held as msgpack
    bytes with the wall-clock time (``clock``) of its last write, oldest first, so the
    TTL sweep at the start of each :meth:`process` call only looks at expired users.

    ``on_repeat`` decides what a user's second event within one :meth:`process` call
    does while the first one's request is still unscored (see the module docstring).
    """

    def __init__(
        self,
        recommender: Recommender,
        *,
        out_of_orderness_ms: int = 5000,
        allowed_lateness_ms: int = 0,
        since_ms: int = 0,
        ttl_s: float = 14 * 86400,
        clock: Callable[[], float] = time.monotonic,
        on_repeat: OnRepeat = "flush",
        items: ItemKnowledge | None = None,
        kept_rows: int = 0,
    ) -> None:
        if on_repeat not in ("flush", "copy"):
            raise ValueError(f"on_repeat must be 'flush' or 'copy', not {on_repeat!r}")
        self.recommender = recommender
        # Online item knowledge, as the job's keyed steps keep it (they see every decoded event,
        # late ones too, before the recommend function).
        self.items = items
        self.kept_rows = kept_rows
        self.on_repeat = on_repeat
        self.out_of_orderness_ms = out_of_orderness_ms
        self.lateness = allowed_lateness_ms
        self.since_ms = since_ms
        self.ttl_s = ttl_s
        self.clock = clock
        self.states: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self.max_ts: int | None = None
        self.events = 0
        self.late = 0
        self.duplicates = 0
        self.emitted = 0
        self.fallbacks = 0
        self.batches = 0
        self.rows_scored = 0
        self.expired = 0
        self.feedback = 0
        self.erased = 0
        self._pending: list[UserRequest] = []
        # Per user with an unscored request: the latest state object (written at the flush)
        # and how many increments of `emitted` scoring still owes it (0 or 1).
        self._pending_users: dict[str, UserState] = {}
        self._unscored: dict[str, int] = {}
        # "copy" mode: per user, the index in _pending of their unscored request; and events whose
        # feedback is scored against such a request's list once it is ranked.
        self._pending_index: dict[str, int] = {}
        self._deferred_feedback: list[tuple[int, Event]] = []

    @classmethod
    def from_config(cls, recommender: Recommender, config: Config, **kw: Any) -> Batcher:
        j = config.job
        return cls(recommender, out_of_orderness_ms=j.out_of_orderness_ms, allowed_lateness_ms=j.allowed_lateness_ms,
                   since_ms=j.since_ms, ttl_s=config.state.ttl_s,
                   items=item_knowledge(config, recommender.artifact), kept_rows=config.items.kept_rows, **kw)

    @property
    def watermark(self) -> int:
        """Flink's bounded-out-of-orderness watermark over the events seen so far."""
        if self.max_ts is None:
            return INT64_MIN
        return self.max_ts - self.out_of_orderness_ms - 1

    def expire(self) -> int:
        """Drop users whose state was last written more than ``ttl_s`` ago; returns how many."""
        cutoff = self.clock() - self.ttl_s
        n = 0
        while self.states:
            key, (_, written) = next(iter(self.states.items()))
            if written >= cutoff:
                break
            del self.states[key]
            n += 1
        self.expired += n
        return n

    def process(self, events: Iterable[Event | Erase]) -> PollOutput:
        """Apply one poll's events and erase requests in order; returns its outputs (all requests scored)."""
        self.expire()
        out = PollOutput()
        for event in events:
            if isinstance(event, Erase):
                self._erase(str(event.user_id), out)
                continue
            self.events += 1
            watermark = self.watermark
            if self.max_ts is None or event.ts > self.max_ts:
                self.max_ts = event.ts
            row = self.items.observe(str(event.user_id), event) if self.items is not None else None
            if event.ts < watermark - self.lateness:
                self.late += 1
                out.late.append(late_event_record(event, watermark, self.lateness))
                continue
            key = str(event.user_id)
            pending = self._pending_users.get(key)
            if pending is not None and self.on_repeat == "flush":
                self._flush(out)  # the pending request still reads this user's state
                pending = None
            if pending is not None:
                # A request of this user is unscored: continue from a copy of its state, with
                # the `emitted` increment that scoring will give the pending object.
                state = UserState.from_bytes(pending.to_bytes())
                state.emitted += self._unscored[key]
            else:
                stored = self.states.get(key)
                state = UserState.from_bytes(stored[0] if stored else None)
            if not self.recommender.apply(state, event, row, self.kept_rows):
                self.duplicates += 1
                continue
            if pending is not None and event.ts >= self.since_ms:
                # The list this event is scored on is the pending request's, not ranked yet.
                self._deferred_feedback.append((self._pending_index[key], event))
            else:
                self._feedback(state, event, out)
            if event.ts >= self.since_ms:
                self._pending_index[key] = len(self._pending)
                self._pending.append(self.recommender.request(state, event))
                self._pending_users[key] = state  # written after scoring: recommend() bumps `emitted`
                self._unscored[key] = 1
            elif pending is not None:
                self._pending_users[key] = state  # already counts the pending increment
                self._unscored[key] = 0
            else:
                self._write(key, state)
        self._flush(out)
        return out

    def _erase(self, key: str, out: PollOutput) -> None:
        """As the job: the shopper's lists so far go out, then their state, item window and list go."""
        self._flush(out)
        self.states.pop(key, None)
        if self.items is not None:
            self.items.forget(key)
        out.erased.append((len(out.records), key))
        out.feedback.append((key, None))
        self.erased += 1

    def _feedback(self, state: UserState, event: Event, out: PollOutput) -> None:
        fb = feedback_for(state, event, self.since_ms)
        if fb is not None:
            self.feedback += 1
            out.feedback.append(encode_feedback_record(fb))

    def _write(self, key: str, state: UserState) -> None:
        blob, _ = state.to_bounded_bytes(self.recommender.limits.max_bytes)
        self.states[key] = (blob, self.clock())
        self.states.move_to_end(key)

    def _flush(self, out: PollOutput) -> None:
        if not self._pending:
            return
        records = self.recommender.recommend(self._pending)
        self.batches += 1
        self.rows_scored += sum(len(r.candidates.items) for r in self._pending)
        # Each shopper's newest list is the one their next event is scored on. Only the newest state
        # object of a shopper is written ("copy" mode may hold older ones, or one taken before its list).
        newest = {str(r["user_id"]): r for r in records}
        for key, state in self._pending_users.items():
            if key in newest:
                remember(state, newest[key])
            self._write(key, state)
        for index, event in self._deferred_feedback:
            scored_on = UserState()
            remember(scored_on, records[index])
            self._feedback(scored_on, event, out)
        self.emitted += len(records)
        self.fallbacks += sum(1 for r in records if r["fallback"])
        out.records.extend(records)
        self._pending = []
        self._pending_users = {}
        self._unscored = {}
        self._pending_index = {}
        self._deferred_feedback = []


@dataclass
class PeerStats:
    """Counts and costs of one :func:`run_peer` run."""

    events: int = 0
    """Input records that decoded into events (the job's ``events_accepted``)."""
    bad: int = 0
    """Input records dead-lettered."""
    late: int = 0
    duplicates: int = 0
    emitted: int = 0
    fallbacks: int = 0
    polls: int = 0
    """Polls that returned records."""
    batches: int = 0
    """Model calls."""
    rows_scored: int = 0
    seconds: float = 0.0
    """Wall time from the first record received to the last poll's outputs flushed and committed."""
    cpu_seconds: float = 0.0
    """Process CPU time (all threads) over the same span."""
    peak_rss_mb: float = 0.0
    """Peak RSS of this process so far (``ru_maxrss``): includes whatever ran before the peer."""
    feedback: int = 0
    """Feedback records produced."""
    catalog_applied: int = 0
    """Catalog records that changed the catalog (stale ones are read and dropped, as in the job)."""
    catalog_dead_lettered: int = 0
    """Catalog records that could not be read: dead-lettered and skipped (the job's ``catalog_dead_lettered``)."""
    ranker: dict[str, float] = field(default_factory=dict)
    """``OnnxRanker.stats.summary()`` at the end."""
    provider: str = "none"
    """Ranker provider label: ``cuda``, ``cpu`` or ``cpu-fallback``."""

    @property
    def records(self) -> int:
        """Input records consumed (good + bad)."""
        return self.events + self.bad

    @property
    def events_per_s(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0


def _offset_reset(starting_offsets: str) -> str:
    return "latest" if starting_offsets == "latest" else "earliest"


def _open_consumer(config: Config) -> Any:
    """Consumer assigned to every partition of the input topic, positioned like the job's source.

    ``earliest``/``latest`` ignore committed offsets (as Flink's ``OffsetsInitializer`` does);
    ``committed`` resumes from the group's offsets, earliest where there are none.
    Manual assignment: one process owns all partitions, no group rebalance delay.
    """
    from kafka import TopicPartition

    k = config.kafka
    consumer = KafkaClients.of(k).consumer(
        group_id=k.group_id + "-peer",
        auto_offset_reset=_offset_reset(k.starting_offsets),
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_poll_records=MAX_POLL_RECORDS,
        fetch_min_bytes=1,
        fetch_max_wait_ms=100,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=32 * 1024 * 1024,
        receive_buffer_bytes=4 * 1024 * 1024,
    )
    try:
        deadline = time.monotonic() + 30
        parts = consumer.partitions_for_topic(k.input_topic)
        while not parts and time.monotonic() < deadline:
            time.sleep(0.2)
            parts = consumer.partitions_for_topic(k.input_topic)
        if not parts:
            raise RuntimeError(f"input topic {k.input_topic!r} not found on {k.bootstrap_servers}")
        tps = [TopicPartition(k.input_topic, p) for p in sorted(parts)]
        # The catalog, read whole like the job's broadcast input, when the topic exists.
        catalog_parts = consumer.partitions_for_topic(k.catalog_topic) or ()
        catalog = [TopicPartition(k.catalog_topic, p) for p in sorted(catalog_parts)]
        consumer.assign(tps + catalog)
        if catalog:
            consumer.seek_to_beginning(*catalog)
        if k.starting_offsets == "earliest":
            consumer.seek_to_beginning(*tps)
        elif k.starting_offsets == "latest":
            consumer.seek_to_end(*tps)
    except BaseException:
        consumer.close()
        raise
    return consumer


def apply_catalog(recommender: Recommender, messages: Iterable[Any], prod: Any, dlq_topic: str,
                  stats: PeerStats, max_ts_ms: int | None) -> list[Any]:
    """Catalog records into the recommender's catalog, as the job's broadcast side applies them;
    an unreadable one, one with ``updated_at`` past ``max_ts_ms``, a tombstone, or one refused at
    ``catalog.max_items`` is a dead letter. Returns the dead letters' send futures."""
    catalog = recommender.catalog
    assert catalog is not None
    futures = []
    for msg in messages:
        raw = msg.value if msg.value is not None else b""
        item = decode_catalog_item(raw, max_ts_ms)
        if not isinstance(item, DecodeError):
            try:
                stats.catalog_applied += catalog.apply(item)
                continue
            except CatalogFull as exc:
                item = DecodeError(exc.reason, raw)
        key, value = dead_letter_record(item, msg.topic, msg.partition, msg.offset, msg.timestamp)
        futures.append(prod.send(dlq_topic, key=key.encode(), value=value))
        stats.catalog_dead_lettered += 1
    return futures


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def run_peer(
    config: Config,
    *,
    max_events: int | None = None,
    idle_timeout_s: float = 10.0,
    stop: threading.Event | None = None,
    on_repeat: OnRepeat = "flush",
) -> PeerStats:
    """Consume ``kafka.input_topic``, recommend, produce, like the Flink job but in one process.

    Reads with group ``kafka.group_id + "-peer"`` (read_committed, no auto-commit),
    builds the recommender from ``ranking.artifact_dir`` (relative to the cwd), and
    writes recommendations, dead letters and late events to the job's topics with the
    job's keys and layouts. Per poll (at most 500 records): decode, update state, score
    all requests in one model call (see :class:`Batcher`), send, ``flush()``, commit.

    Stops after ``max_events`` input records (good + bad), after ``idle_timeout_s``
    without records, or when ``stop`` is set; returns :class:`PeerStats`. ``on_repeat``:
    see :class:`Batcher`.
    """
    k = config.kafka
    if config.input.format != "msgpack":
        raise UserError(f"the peer reads msgpack events; input.format is {config.input.format} "
                        "(the job translates JSON in its Kafka source, which the peer does not have)")
    recommender = build_recommender(config, catalog=True)
    freeze_loaded_objects()
    choice = recommender.provider
    if choice is not None and choice.fallback_reason:
        log.warning("peer ranker provider: %s (fallback: %s)", choice.provider, choice.fallback_reason)
    else:
        log.info("peer ranker provider: %s", choice.provider if choice else "none")
    batcher = Batcher.from_config(recommender, config, on_repeat=on_repeat)
    # privacy.pseudonymize: user ids replaced where decoded, dead letters redacted, as in the job.
    pseudonym = load_key(config.privacy).pseudonym if config.privacy.pseudonymize else None
    redact = config.privacy.redact_dead_letters
    stats = PeerStats(provider=choice.label if choice else "none")
    # As the job's sinks do: a deployment that predates the feedback topic has none.
    ensure_topic(k, k.feedback_topic, "feedback_topic")
    consumer = _open_consumer(config)
    prod = KafkaClients.of(k).producer()
    dlq_topic, late_topic, out_topic, feedback_topic = k.dlq_topic, k.late_topic, k.output_topic, k.feedback_topic
    first_at: float | None = None
    cpu_at = 0.0
    last_record_at = time.monotonic()
    consumed = 0
    try:
        while stop is None or not stop.is_set():
            if max_events is not None and consumed >= max_events:
                break
            idle = time.monotonic() - last_record_at
            if idle >= idle_timeout_s:
                break
            want = MAX_POLL_RECORDS if max_events is None else min(MAX_POLL_RECORDS, max_events - consumed)
            polled = consumer.poll(timeout_ms=int(min(0.5, idle_timeout_s - idle) * 1000) + 1, max_records=want)
            if not polled:
                continue
            if first_at is None:
                first_at, cpu_at = time.perf_counter(), time.process_time()
            last_record_at = time.monotonic()
            stats.polls += 1
            futures = []
            events: list[Event | Erase] = []
            max_ts = max_event_ts(config.job.max_future_skew_ms)  # once per poll, like the job's per event
            for tp, messages in polled.items():
                if tp.topic == k.catalog_topic:
                    futures += apply_catalog(recommender, messages, prod, dlq_topic, stats, max_ts)
                    continue
                for msg in messages:
                    consumed += 1
                    result = decode_input(msg.value if msg.value is not None else b"", max_ts, pseudonym)
                    if isinstance(result, DecodeError):
                        stats.bad += 1
                        key, value = dead_letter_record(result, msg.topic, msg.partition, msg.offset, msg.timestamp,
                                                        redact)
                        futures.append(prod.send(dlq_topic, key=key.encode(), value=value))
                    else:
                        events.append(result)
            out = batcher.process(events)
            for key, value in out.late:
                futures.append(prod.send(late_topic, key=key.encode(), value=value))
            for key, scored in out.feedback:
                futures.append(prod.send(feedback_topic, key=key.encode(), value=scored))
            for key, listed in out.lists():
                futures.append(prod.send(out_topic, key=key.encode(), value=listed))
            prod.flush()
            for f in futures:
                if f.failed():
                    raise RuntimeError(f"producing to Kafka failed: {f.exception!r}")
            consumer.commit()
            stats.seconds = time.perf_counter() - first_at
            stats.cpu_seconds = time.process_time() - cpu_at
    finally:
        try:
            prod.close()
        finally:
            consumer.close()
    stats.events, stats.late, stats.duplicates = batcher.events, batcher.late, batcher.duplicates
    stats.emitted, stats.fallbacks, stats.feedback = batcher.emitted, batcher.fallbacks, batcher.feedback
    stats.batches, stats.rows_scored = batcher.batches, batcher.rows_scored
    stats.peak_rss_mb = _peak_rss_mb()
    stats.ranker = recommender.ranker.stats.summary() if recommender.ranker else {}
    log.info("peer: %d records (%d bad, %d late, %d duplicates), %d lists in %d model calls, %.1f records/s",
             stats.records, stats.bad, stats.late, stats.duplicates, stats.emitted, stats.batches,
             stats.events_per_s)
    return stats

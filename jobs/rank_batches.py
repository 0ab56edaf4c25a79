"""The batched ranking stage: requests from every shopper keyed to a shard, ranked in one model call
per batch."""

from __future__ import annotations

from typing import Any

from pyflink.common import Row
from pyflink.common.typeinfo import Types
from pyflink.datastream import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import ListStateDescriptor, ValueStateDescriptor

from jobs.functions import BATCH_COUNTERS, END_OF_INPUT, as_bytes, flush_ranker_metrics, log_provider
from udfs.batching import decode_request, erased_key
from udfs.config import Config
from udfs.job_metrics import BATCH_WAIT_MS, ROWS_PER_CALL, BatchedCounters
from udfs.records import ERASED_LIST, encode_output_record
from udfs.runtime import build_recommender, freeze_loaded_objects


class RankBatchFunction(KeyedProcessFunction):
    """Per shard of the shoppers: buffer scoring requests, rank a buffer in one model call.

    The buffer is keyed state, so a checkpoint holds every request not yet ranked, and a
    restore ranks it: no list is lost or repeated. A buffer is ranked once it holds
    ``ranking.batch_rows`` rows, ``ranking.batch_timeout_ms`` after its first request
    (processing time), or when a bounded input ends. Lists leave in buffer order, and a
    shopper's requests all go to one shard over one channel, so each shopper's lists keep
    event order.
    """

    def __init__(self, config: Config) -> None:
        self.config = config

    def open(self, runtime_context: RuntimeContext) -> None:
        cfg = self.config
        self.recommender = build_recommender(cfg)
        freeze_loaded_objects()
        # (arrival ms, encoded request), in arrival order; and (rows buffered, flush deadline).
        self.buffer = runtime_context.get_list_state(ListStateDescriptor("batch", Types.PICKLED_BYTE_ARRAY()))
        self.pending = runtime_context.get_state(ValueStateDescriptor("batch-pending", Types.PICKLED_BYTE_ARRAY()))
        log_provider(self.recommender)
        self.batch_rows = cfg.ranking.batch_rows
        self.timeout_ms = cfg.ranking.batch_timeout_ms
        names = (*BATCH_COUNTERS, *ROWS_PER_CALL.names, *BATCH_WAIT_MS.names)
        self.metrics = BatchedCounters(runtime_context.get_metrics_group().counter, names)
        self._ranker_seen = (0, 0)

    def close(self) -> None:
        self._flush_metrics()

    def process_element(self, value: Row, ctx: KeyedProcessFunction.Context) -> Any:
        if self.metrics.due():
            self._flush_metrics()
        timers = ctx.timer_service()
        now = timers.current_processing_time()
        pending = self.pending.value()
        if pending is None:
            deadline = now + self.timeout_ms
            timers.register_processing_time_timer(deadline)
            timers.register_event_time_timer(END_OF_INPUT)
            pending = (0, deadline)
        rows = pending[0] + int(value[1])
        item = (now, as_bytes(value[2]))
        if rows < self.batch_rows:
            self.buffer.add(item)
            self.pending.update((rows, pending[1]))
            return
        timers.delete_processing_time_timer(pending[1])
        yield from self._rank([*(self.buffer.get() or []), item], now)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Any:
        if self.pending.value() is None:
            return  # ranked on size since; a stale timer
        yield from self._rank(list(self.buffer.get() or []), ctx.timer_service().current_processing_time())

    def _rank(self, items: list[tuple[int, bytes]], now: int) -> Any:
        self.buffer.clear()
        self.pending.clear()
        if not items:
            return
        erased = [erased_key(payload) for _, payload in items]
        requests = [decode_request(payload) for (_, payload), key in zip(items, erased, strict=True) if key is None]
        records = iter(self.recommender.rank(requests) if requests else ())
        if requests:
            ROWS_PER_CALL.record(self.metrics, sum(r.rows for r in requests))
            self.metrics.inc("ranker_calls")
        for (arrived, _), key in zip(items, erased, strict=True):
            if key is not None:  # an erased shopper: the tombstone after their lists buffered before it
                yield Row(key, ERASED_LIST)
                continue
            record = next(records)
            BATCH_WAIT_MS.record(self.metrics, max(0, now - arrived))
            if record["fallback"]:
                self.metrics.inc("ranking_fallbacks")
            self.metrics.inc("recommendations_emitted")
            yield Row(str(record["user_id"]), encode_output_record(record))

    def _flush_metrics(self) -> None:
        self._ranker_seen = flush_ranker_metrics(self.recommender, self.metrics, self._ranker_seen)

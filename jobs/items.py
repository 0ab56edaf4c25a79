"""The job's item knowledge that learns from the stream: two keyed steps before the recommend function.

A co-visitation row must see every shopper's events, so it lives in state keyed by item; a shopper's
list needs the rows of the shopper's items, so the event reaches the recommend function, keyed by
shopper again, with the touched item's row. Thread mode has no cycles and no async I/O, so the three
steps are keyed operators chained by key (udfs/item_knowledge.py has the logic, and its
``ItemKnowledge`` the same steps in one process):

    keyed by shopper: PairFunction (the shopper's last items)  --pairs, keyed by item-->
    keyed by item: ItemRowFunction (each item's row)  --the event and the touched item's row, keyed by shopper-->
    the recommend function (jobs/functions.py)

Element shapes: PairFunction sends ``Row(item key, ITEM_MESSAGE_TYPE)``: an event message (``user`` set)
carries the envelope and the pairs for the touched item's row; a pair message (``user`` empty) the
pairs for an earlier item's row. ItemRowFunction sends ``Row(user key, FRESH_ENVELOPE_TYPE)``.
A record that does not decode passes both steps untouched, keyed by its shopper, and becomes a
dead letter in the recommend function, as without these steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgpack
from pyflink.common import Row
from pyflink.common.typeinfo import Types
from pyflink.datastream import KeyedProcessFunction, RuntimeContext

from jobs.functions import FRESH_ENVELOPE_TYPE, as_bytes, value_state_with_ttl
from udfs.artifact import load_artifact
from udfs.config import Config
from udfs.events import DecodeError, decode_event, max_event_ts
from udfs.item_knowledge import (
    BACKWARD_SHARE,
    ItemRow,
    apply_pairs,
    behavior_weight,
    earlier_items,
    remember,
)
from udfs.runtime import item_params

_BYTES = Types.PRIMITIVE_ARRAY(Types.BYTE())
ITEM_MESSAGE_TYPE = Types.ROW_NAMED(
    ["user", "topic", "partition", "offset", "timestamp", "event_ts", "value", "pairs"],
    [Types.STRING(), Types.STRING(), Types.INT(), Types.LONG(), Types.LONG(), Types.LONG(), _BYTES, _BYTES],
)
ITEM_KEYED_TYPE = Types.ROW([Types.STRING(), ITEM_MESSAGE_TYPE])
# The envelope fields of a pair message (topic, partition, offset, timestamp, event_ts, value): empty,
# so up to ``items.window`` records per event do not each carry the raw event across two boundaries.
_NO_ENVELOPE = ("", 0, 0, 0, 0, b"")
USER_KEYED_FRESH_TYPE = Types.ROW([Types.STRING(), FRESH_ENVELOPE_TYPE])


def current_key(ctx: Any) -> str:
    key = ctx.get_current_key()
    return str(key[0] if isinstance(key, Row) else key)


class PairFunction(KeyedProcessFunction):
    """Keyed by shopper: pairs a new event with the shopper's last ``items.window`` items."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def open(self, runtime_context: RuntimeContext) -> None:
        cfg = self.config
        self.params = item_params(cfg, load_artifact(cfg.ranking.artifact_dir))
        self.max_future_skew_ms = cfg.job.max_future_skew_ms
        self.state = runtime_context.get_state(value_state_with_ttl("recent-items", cfg.state.ttl_s))

    def process_element(self, value: Row, ctx: KeyedProcessFunction.Context) -> Iterator[Row]:
        user = current_key(ctx)
        raw = as_bytes(value[5])
        envelope = (value[0], value[1], value[2], value[3], value[4], raw)
        event = decode_event(raw, max_event_ts(self.max_future_skew_ms))
        if isinstance(event, DecodeError):
            yield Row(user, Row(user, *envelope, b""))
            return
        params = self.params
        blob = self.state.value()
        recent: list[list[Any]] = msgpack.unpackb(blob, raw=False) if blob else []
        item, weight = event.item_id, behavior_weight(event.behavior)
        earlier = earlier_items(recent, item, event.ts, params.window_ms)
        for other in earlier:  # a pair update needs no envelope: item-rows sends nothing on for it
            yield Row(str(other), Row("", *_NO_ENVELOPE, msgpack.packb([other, [[item, weight]], event.ts])))
        back = [[other, BACKWARD_SHARE * weight] for other in earlier]
        yield Row(str(item), Row(user, *envelope, msgpack.packb([item, back, event.ts])))
        remember(recent, item, event.ts, params.window)
        self.state.update(msgpack.packb(recent))


class ItemRowFunction(KeyedProcessFunction):
    """Keyed by item: the item's row, seeded from the artifact's on first touch; an event goes on to
    its shopper with the touched item's row, fresh."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def open(self, runtime_context: RuntimeContext) -> None:
        cfg = self.config
        artifact = load_artifact(cfg.ranking.artifact_dir)
        self.seed = artifact.tables.covisit
        self.params = item_params(cfg, artifact)
        self.state = runtime_context.get_state(value_state_with_ttl("item-row", cfg.items.ttl_s))

    def process_element(self, value: Row, ctx: KeyedProcessFunction.Context) -> Iterator[Row]:
        user, envelope, pairs_blob = value[0], tuple(value[1:7]), as_bytes(value[7])
        if not pairs_blob:  # a record that did not decode: on to the dead letters
            yield Row(user, Row(*envelope, b""))
            return
        item, pairs, ts = msgpack.unpackb(pairs_blob, raw=False)
        params = self.params
        blob = self.state.value()
        row = ItemRow.from_bytes(blob) if blob else ItemRow.seeded(self.seed.get(item, ()), ts, params.max_entries)
        apply_pairs(row, pairs, ts, params)
        self.state.update(row.to_bytes())
        if user:
            yield Row(user, Row(*envelope, msgpack.packb(row.top(params.emit, params))))


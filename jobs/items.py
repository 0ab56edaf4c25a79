"""The job's item knowledge that learns from the stream: two keyed steps before the recommend function.

A co-visitation row must see every shopper's events, so it lives in state keyed by item; a shopper's
list needs the rows of the shopper's items, so the event reaches the recommend function, keyed by
shopper again, with the touched item's row. Thread mode has no cycles and no async I/O, so the three
steps are keyed operators chained by key:

    keyed by shopper: ItemPairs (the shopper's last items)  --pairs, keyed by item-->
    keyed by item: ItemRows (each item's row)  --the event and the touched item's row, keyed by shopper-->
    the recommend function (jobs/functions.py)

Both item steps run in the JVM (``jobs/java/io/streamrec/flink/ItemPairs.java``, ``ItemRows.java``):
as Python functions they added six Python records per event and took the GIL from the recommend
function, a third of the job's throughput. ``udfs/item_knowledge.py`` holds the same logic in Python
(the peer and the replays run it) and is the reference the Java steps are tested against
(``ItemKnowledgeRun.java``, tests/integration/test_item_knowledge_jvm.py).

Element shapes: ItemPairs sends ``Row(item key, ITEM_MESSAGE_TYPE)``: an event message (``user`` set)
carries the envelope and the pairs for the touched item's row; a pair message (``user`` empty) the
pairs for an earlier item's row. ItemRows sends ``Row(user key, FRESH_ENVELOPE_TYPE)``.
A record that does not decode passes both steps untouched, keyed by its shopper, and becomes a
dead letter in the recommend function, as without these steps.
"""

from __future__ import annotations

from typing import Any

from pyflink.common.typeinfo import Types
from pyflink.datastream import DataStream, KeyedStream
from pyflink.java_gateway import get_gateway

from jobs.functions import FRESH_ENVELOPE_TYPE
from udfs.artifact import TABLES_FILE, read_manifest
from udfs.config import Config
from udfs.events import BEHAVIORS
from udfs.item_knowledge import BACKWARD_SHARE, ItemKnowledgeParams, pair_weight
from udfs.runtime import item_params

_BYTES = Types.PRIMITIVE_ARRAY(Types.BYTE())
ITEM_MESSAGE_TYPE = Types.ROW_NAMED(
    ["user", "topic", "partition", "offset", "timestamp", "event_ts", "value", "pairs"],
    [Types.STRING(), Types.STRING(), Types.INT(), Types.LONG(), Types.LONG(), Types.LONG(), _BYTES, _BYTES],
)
ITEM_KEYED_TYPE = Types.ROW([Types.STRING(), ITEM_MESSAGE_TYPE])
USER_KEYED_FRESH_TYPE = Types.ROW([Types.STRING(), FRESH_ENVELOPE_TYPE])
_KEY_TYPE = Types.ROW([Types.STRING()])


def item_steps(config: Config) -> tuple[Any, Any]:
    """The two Java functions, configured: the config's bounds and the artifact's time window and
    table (each worker reads the table at open() and checks it against the manifest's sha256; the
    client verified the whole artifact before building the graph, jobs/entry.absolute_artifact)."""
    path = config.ranking.artifact_dir
    manifest = read_manifest(path)
    return java_item_steps(item_params(config, manifest), f"{path}/{TABLES_FILE}", manifest["files"][TABLES_FILE],
                           window_ttl_ms=config.state.ttl_s * 1000, row_ttl_ms=config.items.ttl_s * 1000)


def java_item_steps(params: ItemKnowledgeParams, tables_path: str, tables_sha256: str, *,
                    window_ttl_ms: int, row_ttl_ms: int) -> tuple[Any, Any]:
    """``ItemPairs`` and ``ItemRows`` with ``params`` and the Python reference's pair weights and
    backward share, so the job and the parity test build them alike."""
    gateway = get_gateway()
    behaviors = gateway.new_array(gateway.jvm.String, len(BEHAVIORS))
    weights = gateway.new_array(gateway.jvm.double, len(BEHAVIORS))
    for i, behavior in enumerate(BEHAVIORS):
        behaviors[i] = behavior
        weights[i] = pair_weight(behavior)
    flink = gateway.jvm.io.streamrec.flink
    pairs = flink.ItemPairs(params.window_ms, params.window, BACKWARD_SHARE, behaviors, weights, window_ttl_ms)
    rows = flink.ItemRows(tables_path, tables_sha256, params.max_entries, params.emit, params.half_life_ms,
                          row_ttl_ms)
    return pairs, rows


def learn_items(keyed: KeyedStream, config: Config) -> KeyedStream:
    """The shoppers' events pair up by shopper, the pairs update the rows keyed by item, and each event
    comes back keyed by its shopper with its item's fresh row; all of it in the JVM."""
    jvm = get_gateway().jvm
    key_type = _KEY_TYPE.get_java_type_info()
    pair_step, row_step = item_steps(config)
    pairs = (keyed._j_data_stream.process(pair_step, ITEM_KEYED_TYPE.get_java_type_info())
             .name("item-pairs").uid("item-pairs"))
    rows = (pairs.keyBy(jvm.KeyByKeySelector(), key_type)
            .process(row_step, USER_KEYED_FRESH_TYPE.get_java_type_info())
            .name("item-rows").uid("item-rows"))
    return KeyedStream(rows.keyBy(jvm.KeyByKeySelector(), key_type), FRESH_ENVELOPE_TYPE, DataStream(rows))

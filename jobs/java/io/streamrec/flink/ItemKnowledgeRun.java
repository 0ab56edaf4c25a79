package io.streamrec.flink;

import java.io.IOException;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;

/**
 * The job's two item-knowledge steps in one process, in the job's order at parallelism 1: each
 * event through {@link ItemPairs#step}, each message it sends through {@link ItemRows#step}, with
 * maps standing in for the keyed states. What the Python twin ({@code udfs/item_knowledge.py
 * ItemKnowledge}, run by the peer and the replays) is checked against, message for message.
 */
public class ItemKnowledgeRun {
    private final ItemPairs pairs;
    private final ItemRows rows;
    private final Map<String, byte[]> windows = new HashMap<>();
    private final Map<String, byte[]> itemRows = new HashMap<>();

    public ItemKnowledgeRun(ItemPairs pairs, ItemRows rows, byte[] tables, String tablesSha256) throws IOException {
        this.pairs = pairs;
        this.rows = rows;
        rows.useSeed(ItemRows.readSeed(tables, tablesSha256));
    }

    /** The fresh row the event's shopper receives (msgpack; empty for a record that did not decode). */
    public byte[] observe(String user, byte[] raw, long eventTs) throws IOException {
        Row envelope = Row.of("", 0, 0L, 0L, eventTs, raw);
        List<Row> messages = new ArrayList<>();
        byte[] window = pairs.step(user, envelope, windows.get(user), new ListCollector(messages));
        if (window != null) {
            windows.put(user, window);
        }
        List<Row> fresh = new ArrayList<>();
        for (Row message : messages) {
            String item = (String) message.getField(0);
            byte[] row = rows.step((Row) message.getField(1), itemRows.get(item), new ListCollector(fresh));
            if (row != null) {
                itemRows.put(item, row);
            }
        }
        if (fresh.size() != 1) {
            throw new IllegalStateException("one event, " + fresh.size() + " fresh rows");
        }
        return (byte[]) ((Row) fresh.get(0).getField(1)).getField(6);
    }

    private static final class ListCollector implements Collector<Row> {
        private final List<Row> out;

        ListCollector(List<Row> out) {
            this.out = out;
        }

        @Override
        public void collect(Row record) {
            out.add(record);
        }

        @Override
        public void close() {
        }
    }
}

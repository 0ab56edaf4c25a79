package io.streamrec.flink;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.Arrays;
import java.util.HashMap;
import java.util.Map;

import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;
import org.msgpack.core.MessagePack;
import org.msgpack.core.MessageUnpacker;
import org.msgpack.value.ValueType;

/**
 * Keyed by item: each item's {@link ItemRow}, seeded from the artifact's co-visitation table on its
 * first touch, updated by every pair message; an event message goes on to its shopper with the
 * touched item's row, fresh (the second of the job's item-knowledge steps, {@code jobs/items.py}).
 *
 * <p>In: {@link ItemPairs}' output. Out: Row(user key, Row(topic, partition, offset, timestamp,
 * event_ts, value, row)), row {@code [[item, score], ...]} (empty bytes for a record that did not
 * decode, which passes untouched).
 */
public class ItemRows extends KeyedProcessFunction<Row, Row, Row> {
    private final String tablesPath;
    private final String tablesSha256;
    private final int maxEntries;
    private final int emit;
    private final long halfLifeMs;
    private final long ttlMs;
    private transient Map<String, byte[]> seed;
    private transient ValueState<byte[]> rows;

    /**
     * @param tablesPath the artifact's tables.msgpack, and {@code tablesSha256} its hash from the
     *     manifest the client verified: a file replaced since is refused, as Python's loader does
     */
    public ItemRows(String tablesPath, String tablesSha256, int maxEntries, int emit, long halfLifeMs,
                    long ttlMs) {
        this.tablesPath = tablesPath;
        this.tablesSha256 = tablesSha256;
        this.maxEntries = maxEntries;
        this.emit = emit;
        this.halfLifeMs = halfLifeMs;
        this.ttlMs = ttlMs;
    }

    @Override
    public void open(OpenContext context) throws IOException {
        useSeed(readSeed(Files.readAllBytes(Paths.get(tablesPath)), tablesSha256));
        ValueStateDescriptor<byte[]> desc =
                new ValueStateDescriptor<>("item-row", PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO);
        desc.enableTimeToLive(ItemPairs.ttl(ttlMs));
        rows = getRuntimeContext().getState(desc);
    }

    @Override
    public void processElement(Row value, Context ctx, Collector<Row> out) throws Exception {
        byte[] next = step((Row) value.getField(1), rows.value(), out);
        if (next != null) {
            rows.update(next);
        }
    }

    /** One message: the event on to its shopper into {@code out}; the item's new row (null: unchanged). */
    byte[] step(Row message, byte[] rowBlob, Collector<Row> out) throws IOException {
        String user = (String) message.getField(0);
        byte[] pairs = (byte[]) message.getField(7);
        if (pairs.length == 0) { // a record that did not decode: on to the dead letters
            out.collect(Row.of(user, fresh(message, ItemPairs.NONE)));
            return null;
        }
        try (MessageUnpacker in = MessagePack.newDefaultUnpacker(pairs)) {
            in.unpackArrayHeader();
            Object item = ItemRow.readId(in);
            int n = in.unpackArrayHeader();
            Object[] others = new Object[n];
            double[] weights = new double[n];
            for (int i = 0; i < n; i++) {
                in.unpackArrayHeader();
                others[i] = ItemRow.readId(in);
                weights[i] = in.unpackDouble();
            }
            long ts = in.unpackLong();
            ItemRow row = rowBlob != null ? ItemRow.fromBytes(rowBlob)
                    : ItemRow.seeded(seed.get(String.valueOf(item)), ts, maxEntries);
            for (int i = 0; i < n; i++) {
                row.add(others[i], weights[i], ts, maxEntries, halfLifeMs);
            }
            if (!user.isEmpty()) {
                out.collect(Row.of(user, fresh(message, row.top(emit, halfLifeMs))));
            }
            return row.toBytes();
        }
    }

    /** The artifact's rows, already read (the one-process {@link ItemKnowledgeRun}). */
    void useSeed(Map<String, byte[]> rows) {
        seed = rows;
    }

    private static Row fresh(Row message, byte[] row) {
        return Row.of(message.getField(1), message.getField(2), message.getField(3), message.getField(4),
                message.getField(5), message.getField(6), row);
    }

    /**
     * The artifact's co-visitation rows, each kept as its msgpack bytes by item key (parsed on the
     * item's first touch only), from tables.msgpack {@code {"covisit": {item: [[item, score], ...]},
     * ...}}; refused if the bytes are not the ones the manifest names.
     */
    public static Map<String, byte[]> readSeed(byte[] tables, String sha256) throws IOException {
        StringBuilder hex = new StringBuilder();
        for (byte b : sha256(tables)) {
            hex.append(String.format("%02x", b));
        }
        String actual = hex.toString();
        if (!actual.equals(sha256)) {
            throw new IOException("artifact tables have sha256 " + actual + ", the manifest says " + sha256
                    + " (replaced since the job was submitted)");
        }
        Map<String, byte[]> seed = new HashMap<>();
        try (MessageUnpacker in = MessagePack.newDefaultUnpacker(tables)) {
            int sections = in.unpackMapHeader();
            for (int s = 0; s < sections; s++) {
                if (in.getNextFormat().getValueType() != ValueType.STRING) {
                    in.skipValue(2);
                    continue;
                }
                if (!in.unpackString().equals("covisit")) {
                    in.skipValue();
                    continue;
                }
                int items = in.unpackMapHeader();
                for (int i = 0; i < items; i++) {
                    String key = String.valueOf(ItemRow.readId(in));
                    int start = (int) in.getTotalReadBytes();
                    in.skipValue();
                    seed.put(key, Arrays.copyOfRange(tables, start, (int) in.getTotalReadBytes()));
                }
            }
        }
        return seed;
    }

    private static byte[] sha256(byte[] data) {
        try {
            return MessageDigest.getInstance("SHA-256").digest(data);
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }
}

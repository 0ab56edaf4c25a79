package io.streamrec.flink;

import java.io.IOException;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import org.msgpack.core.MessageBufferPacker;
import org.msgpack.core.MessagePack;
import org.msgpack.core.MessagePacker;
import org.msgpack.core.MessageUnpacker;
import org.msgpack.value.ValueType;

/**
 * One item's neighbours and their co-visitation scores, bounded (Space-Saving) and optionally
 * decayed: the JVM twin of {@code udfs/item_knowledge.py ItemRow}, which stays the reference (the
 * peer and the replays run it). Same arithmetic in the same order, same tie order (insertion order
 * of a {@link LinkedHashMap}, as a Python dict), same msgpack layout in state
 * ({@code [base_ts, last_ts, [items], [scores]]}) and on the wire ({@code [[item, score], ...]}), so
 * a test compares the two row by row. Item ids are {@link Long} or {@link String}, the two kinds
 * Python's {@code canonical_id} gives; {@code String.valueOf(id)} is the item's key.
 *
 * <p>Scores are stored inflated by {@code 2^((ts - baseTs) / halfLife)} (no decay: factor 1), so an
 * update touches one entry and the order of stored scores is the order of decayed ones.
 */
public final class ItemRow {
    /** Decayed scores are rebased past this exponent (as in Python). */
    static final double REBASE_EXPONENT = 60.0;

    private LinkedHashMap<Object, Double> scores;
    private long baseTs;
    private long lastTs;

    ItemRow(LinkedHashMap<Object, Double> scores, long baseTs, long lastTs) {
        this.scores = scores;
        this.baseTs = baseTs;
        this.lastTs = lastTs;
    }

    /** A row that starts from the artifact's: its strongest {@code maxEntries} neighbours. */
    public static ItemRow seeded(byte[] seedRow, long ts, int maxEntries) throws IOException {
        LinkedHashMap<Object, Double> scores = new LinkedHashMap<>();
        if (seedRow != null) {
            try (MessageUnpacker in = MessagePack.newDefaultUnpacker(seedRow)) {
                int n = in.unpackArrayHeader();
                for (int i = 0; i < n && scores.size() < maxEntries; i++) {
                    in.unpackArrayHeader();
                    Object other = readId(in);
                    scores.put(other, readNumber(in));
                }
            }
        }
        return new ItemRow(scores, ts, ts);
    }

    public void add(Object other, double weight, long ts, int maxEntries, long halfLifeMs) {
        if (halfLifeMs > 0) {
            double exponent = (double) (ts - baseTs) / halfLifeMs;
            if (exponent > REBASE_EXPONENT) {
                rebase(ts, halfLifeMs);
                exponent = 0.0;
            }
            weight *= Math.pow(2.0, exponent);
        }
        Double current = scores.get(other);
        if (current == null && scores.size() >= maxEntries) {
            // Space-Saving: the newcomer takes the weakest entry's place and count, so a pair that
            // keeps coming climbs back while one-offs churn at the bottom.
            Object weakest = null;
            double least = Double.POSITIVE_INFINITY;
            for (Map.Entry<Object, Double> e : scores.entrySet()) {
                if (weakest == null || e.getValue() < least) {
                    weakest = e.getKey();
                    least = e.getValue();
                }
            }
            current = scores.remove(weakest);
        }
        scores.put(other, current == null ? weight : current + weight);
        if (ts > lastTs) {
            lastTs = ts;
        }
    }

    private void rebase(long ts, long halfLifeMs) {
        double factor = Math.pow(2.0, -((double) (ts - baseTs) / halfLifeMs));
        LinkedHashMap<Object, Double> rebased = new LinkedHashMap<>();
        for (Map.Entry<Object, Double> e : scores.entrySet()) {
            rebased.put(e.getKey(), e.getValue() * factor);
        }
        scores = rebased;
        baseTs = ts;
    }

    /** The {@code n} strongest neighbours, best first (ties: first inserted first), valued at the
     * row's latest update, as msgpack {@code [[item, score], ...]}. */
    public byte[] top(int n, long halfLifeMs) throws IOException {
        double factor = halfLifeMs > 0 ? Math.pow(2.0, -((double) (lastTs - baseTs) / halfLifeMs)) : 1.0;
        List<Map.Entry<Object, Double>> best = new ArrayList<>(scores.entrySet());
        best.sort((a, b) -> Double.compare(b.getValue(), a.getValue())); // stable, as heapq.nlargest
        int size = Math.min(n, best.size());
        try (MessageBufferPacker out = MessagePack.newDefaultBufferPacker()) {
            out.packArrayHeader(size);
            for (int i = 0; i < size; i++) {
                Map.Entry<Object, Double> e = best.get(i);
                out.packArrayHeader(2);
                writeId(out, e.getKey());
                out.packDouble(e.getValue() * factor);
            }
            return out.toByteArray();
        }
    }

    public int size() {
        return scores.size();
    }

    public byte[] toBytes() throws IOException {
        try (MessageBufferPacker out = MessagePack.newDefaultBufferPacker()) {
            out.packArrayHeader(4);
            out.packLong(baseTs);
            out.packLong(lastTs);
            out.packArrayHeader(scores.size());
            for (Object other : scores.keySet()) {
                writeId(out, other);
            }
            out.packArrayHeader(scores.size());
            for (double score : scores.values()) {
                out.packDouble(score);
            }
            return out.toByteArray();
        }
    }

    public static ItemRow fromBytes(byte[] data) throws IOException {
        try (MessageUnpacker in = MessagePack.newDefaultUnpacker(data)) {
            in.unpackArrayHeader();
            long baseTs = in.unpackLong();
            long lastTs = in.unpackLong();
            int n = in.unpackArrayHeader();
            Object[] items = new Object[n];
            for (int i = 0; i < n; i++) {
                items[i] = readId(in);
            }
            in.unpackArrayHeader();
            LinkedHashMap<Object, Double> scores = new LinkedHashMap<>();
            for (int i = 0; i < n; i++) {
                scores.put(items[i], readNumber(in));
            }
            return new ItemRow(scores, baseTs, lastTs);
        }
    }

    /** An item id as Python's unpacker gives it: an int ({@link Long}) or a str. */
    static Object readId(MessageUnpacker in) throws IOException {
        if (in.getNextFormat().getValueType() == ValueType.INTEGER) {
            return in.unpackLong();
        }
        return in.unpackString();
    }

    static void writeId(MessagePacker out, Object id) throws IOException {
        if (id instanceof Long) {
            out.packLong((Long) id);
        } else {
            out.packString((String) id);
        }
    }

    /** A score written by Python: a float, or an int where the count was whole. */
    static double readNumber(MessageUnpacker in) throws IOException {
        if (in.getNextFormat().getValueType() == ValueType.INTEGER) {
            return in.unpackLong();
        }
        return in.unpackDouble();
    }
}

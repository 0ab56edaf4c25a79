package io.streamrec.flink;

import java.io.IOException;
import java.math.BigInteger;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.regex.Pattern;

import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.StateTtlConfig;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;
import org.msgpack.core.MessageBufferPacker;
import org.msgpack.core.MessagePack;
import org.msgpack.core.MessageUnpacker;
import org.msgpack.value.ValueType;

/**
 * Keyed by shopper: pairs a new event with the shopper's last {@code window} items, the first of
 * the job's two item-knowledge steps ({@code jobs/items.py}; the Python reference is
 * {@code udfs/item_knowledge.py}: {@code earlier_items}, {@code remember}, {@code ItemKnowledge}).
 *
 * <p>In: Row(user key, Row(topic, partition, offset, timestamp, event_ts, value)), as
 * {@link EventEnvelope} keys it. Out: Row(item key, Row(user, topic, partition, offset, timestamp,
 * event_ts, value, pairs)): one event message to the touched item's row (user set, the envelope,
 * pairs {@code [item, [[earlier, weight * backwardShare], ...], ts]}), and one pair message to each
 * earlier item's row (user empty, no envelope, pairs {@code [earlier, [[item, weight]], ts]}). A record
 * the envelope found invalid (event_ts {@link EventEnvelope#NO_TIME}) or whose item cannot be read
 * goes on keyed by its shopper with empty pairs: the recommend function makes it a dead letter. An
 * erase request ({@link EventEnvelope#isErase}) goes on the same way, after the shopper's window is cleared.
 */
public class ItemPairs extends KeyedProcessFunction<Row, Row, Row> {
    static final byte[] NONE = new byte[0];
    private static final Pattern CANONICAL_INT = Pattern.compile("0|-?[1-9][0-9]*");
    private static final BigInteger INT64_MIN = BigInteger.valueOf(Long.MIN_VALUE);
    private static final BigInteger INT64_MAX = BigInteger.valueOf(Long.MAX_VALUE);

    private final long windowMs;
    private final int window;
    private final double backwardShare;
    private final HashMap<String, Double> weights;
    private final long ttlMs;
    private transient ValueState<byte[]> recent;

    /**
     * @param behaviors the behaviors, and {@code weights} their pair weights (udfs/item_knowledge.py PAIR_WEIGHTS)
     * @param ttlMs how long a shopper's window outlives their last event (state.ttl_s)
     */
    public ItemPairs(long windowMs, int window, double backwardShare, String[] behaviors, double[] weights,
                     long ttlMs) {
        if (window < 1 || behaviors.length != weights.length) {
            throw new IllegalArgumentException("window must be >= 1 and each behavior needs a weight");
        }
        this.windowMs = windowMs;
        this.window = window;
        this.backwardShare = backwardShare;
        this.weights = new HashMap<>();
        for (int i = 0; i < behaviors.length; i++) {
            this.weights.put(behaviors[i], weights[i]);
        }
        this.ttlMs = ttlMs;
    }

    @Override
    public void open(OpenContext context) {
        ValueStateDescriptor<byte[]> desc =
                new ValueStateDescriptor<>("item-window", PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO);
        desc.enableTimeToLive(ttl(ttlMs));
        recent = getRuntimeContext().getState(desc);
    }

    /** Expiry after the last write, as the Python states' (jobs/functions.py value_state_with_ttl). */
    static StateTtlConfig ttl(long ttlMs) {
        return StateTtlConfig.newBuilder(Duration.ofMillis(ttlMs))
                .setUpdateType(StateTtlConfig.UpdateType.OnCreateAndWrite)
                .setStateVisibility(StateTtlConfig.StateVisibility.NeverReturnExpired)
                .cleanupIncrementally(10, false)
                .cleanupFullSnapshot()
                .build();
    }

    @Override
    public void processElement(Row value, Context ctx, Collector<Row> out) throws Exception {
        Row envelope = (Row) value.getField(1);
        if ((Long) envelope.getField(4) == EventEnvelope.NO_TIME && EventEnvelope.isErase((byte[]) envelope.getField(5))) {
            recent.clear(); // an erased shopper's next event pairs with nothing before it (docs/operations.md "Erasing a shopper")
        }
        byte[] next = step((String) value.getField(0), envelope, recent.value(), out);
        if (next != null) {
            recent.update(next);
        }
    }

    /** One event: its messages into {@code out}; the shopper's new window (null: unchanged). */
    byte[] step(String user, Row envelope, byte[] windowBlob, Collector<Row> out) throws IOException {
        long eventTs = (Long) envelope.getField(4);
        Object[] touch = eventTs == EventEnvelope.NO_TIME ? null : readTouch((byte[]) envelope.getField(5), weights);
        if (touch == null) {
            out.collect(Row.of(user, eventMessage(user, envelope, NONE)));
            return null;
        }
        Object item = touch[0];
        double weight = (Double) touch[1];
        List<Object[]> window = readWindow(windowBlob);
        List<Object> earlier = earlierItems(window, item, eventTs, windowMs);
        for (Object other : earlier) { // a pair update needs no envelope: item-rows sends nothing on for it
            out.collect(Row.of(String.valueOf(other),
                    Row.of("", "", 0, 0L, 0L, 0L, NONE, pairs(other, List.of(item), weight, eventTs))));
        }
        out.collect(Row.of(String.valueOf(item),
                eventMessage(user, envelope, pairs(item, earlier, backwardShare * weight, eventTs))));
        remember(window, item, eventTs, this.window);
        return writeWindow(window);
    }

    static Row eventMessage(String user, Row envelope, byte[] pairs) {
        return Row.of(user, envelope.getField(0), envelope.getField(1), envelope.getField(2),
                envelope.getField(3), envelope.getField(4), envelope.getField(5), pairs);
    }

    /** The shopper's earlier items a new event on {@code item} at {@code ts} pairs with, most recent
     * first; an earlier touch of the same item takes a place in the window but makes no pair, and an
     * item touched twice in the window pairs once. */
    static List<Object> earlierItems(List<Object[]> window, Object item, long ts, long windowMs) {
        List<Object> out = new ArrayList<>();
        for (int i = window.size() - 1; i >= 0; i--) {
            long gap = ts - (Long) window.get(i)[1];
            if (gap > windowMs) {
                break;
            }
            Object other = window.get(i)[0];
            if (gap >= 0 && !other.equals(item) && !out.contains(other)) {
                out.add(other);
            }
        }
        return out;
    }

    static void remember(List<Object[]> window, Object item, long ts, int size) {
        window.add(new Object[] {item, ts});
        while (window.size() > size) {
            window.remove(0);
        }
    }

    /** {@code [item, [[other, weight], ...], ts]}: what one item's row adds. */
    static byte[] pairs(Object item, List<Object> others, double weight, long ts) throws IOException {
        try (MessageBufferPacker out = MessagePack.newDefaultBufferPacker()) {
            out.packArrayHeader(3);
            ItemRow.writeId(out, item);
            out.packArrayHeader(others.size());
            for (Object other : others) {
                out.packArrayHeader(2);
                ItemRow.writeId(out, other);
                out.packDouble(weight);
            }
            out.packLong(ts);
            return out.toByteArray();
        }
    }

    static List<Object[]> readWindow(byte[] blob) throws IOException {
        List<Object[]> window = new ArrayList<>();
        if (blob == null || blob.length == 0) {
            return window;
        }
        try (MessageUnpacker in = MessagePack.newDefaultUnpacker(blob)) {
            int n = in.unpackArrayHeader();
            for (int i = 0; i < n; i++) {
                in.unpackArrayHeader();
                window.add(new Object[] {ItemRow.readId(in), in.unpackLong()});
            }
        }
        return window;
    }

    static byte[] writeWindow(List<Object[]> window) throws IOException {
        try (MessageBufferPacker out = MessagePack.newDefaultBufferPacker()) {
            out.packArrayHeader(window.size());
            for (Object[] touch : window) {
                out.packArrayHeader(2);
                ItemRow.writeId(out, touch[0]);
                out.packLong((Long) touch[1]);
            }
            return out.toByteArray();
        }
    }

    /**
     * The item (as Python's {@code canonical_id} gives it) and its behavior's weight from a raw
     * event the envelope accepted; null if either cannot be read (Python then decides why).
     */
    static Object[] readTouch(byte[] raw, Map<String, Double> weights) {
        Object item = null;
        Double weight = null;
        try (MessageUnpacker in = MessagePack.newDefaultUnpacker(raw)) {
            int entries = in.unpackMapHeader();
            for (int i = 0; i < entries; i++) {
                if (in.getNextFormat().getValueType() != ValueType.STRING) {
                    in.skipValue(2);
                    continue;
                }
                String name = in.unpackString();
                if (name.equals("item_id")) {
                    item = canonicalId(in);
                } else if (name.equals("behavior") && in.getNextFormat().getValueType() == ValueType.STRING) {
                    weight = weights.get(in.unpackString());
                } else {
                    in.skipValue();
                }
            }
        } catch (IOException | RuntimeException e) {
            return null;
        }
        return item == null || weight == null ? null : new Object[] {item, weight};
    }

    /** udfs/events.py canonical_id: an int64 stays one; a string is NFC'd, checked, and is an int
     * when it is an int64's canonical decimal. */
    static Object canonicalId(MessageUnpacker in) throws IOException {
        ValueType type = in.getNextFormat().getValueType();
        if (type == ValueType.INTEGER) {
            BigInteger id = in.unpackBigInteger();
            return id.bitLength() <= 63 ? (Object) id.longValue() : null;
        }
        if (type != ValueType.STRING) {
            in.skipValue();
            return null;
        }
        String id = EventEnvelope.canonicalStringId(in.unpackString());
        if (id != null && CANONICAL_INT.matcher(id).matches()) {
            BigInteger number = new BigInteger(id);
            if (number.compareTo(INT64_MIN) >= 0 && number.compareTo(INT64_MAX) <= 0) {
                return number.longValue();
            }
        }
        return id;
    }
}

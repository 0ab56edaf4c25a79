package io.streamrec.flink;

import java.io.IOException;
import java.math.BigInteger;
import java.nio.charset.CodingErrorAction;
import java.text.Normalizer;
import java.time.Duration;
import java.util.Set;

import org.apache.flink.api.common.eventtime.SerializableTimestampAssigner;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.functions.RichMapFunction;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.typeutils.ResultTypeQueryable;
import org.apache.flink.types.Row;
import org.msgpack.core.MessagePack;
import org.msgpack.core.MessageUnpacker;
import org.msgpack.value.ValueType;

/**
 * Reads only the user id and event time out of a raw msgpack event, so keying and
 * watermarks run in the JVM and the first Python code an event meets is the keyed
 * function (which decodes and validates it in full: this class never rejects).
 *
 * <p>In: Row(topic, partition, offset, timestamp, value). Out: Row(key, Row(topic,
 * partition, offset, timestamp, event_ts, value)), the layout PyFlink's own key_by
 * gives a keyed Python function. A record whose user id cannot be read gets key
 * {@link #UNKEYED}; one that is not a valid event gets event_ts {@link #NO_TIME} (no
 * effect on watermarks). Python decodes it and makes it a dead letter. So does an event
 * whose ts is beyond wall-clock now + {@code job.max_future_skew_ms}: one far-future ts
 * would otherwise move the watermark and make every later event late.
 *
 * <p>The key is the user id by the id rule (docs/contracts.md), as Python's {@code
 * str(canonical_id(user_id))} spells it: decimal for an int64; for a string, its NFC form
 * (which is already the decimal of the int Python turns a canonical-int string into).
 * With {@code privacy.pseudonymize} the key is that id's pseudonym ({@link Pseudonyms}),
 * so the shuffle, the keyed state and everything downstream see only pseudonyms.
 */
public class EventEnvelope extends RichMapFunction<Row, Row> implements ResultTypeQueryable<Row> {
    public static final String UNKEYED = "";
    public static final long NO_TIME = Long.MIN_VALUE;
    /** The same limits as udfs/events.py. */
    static final int MAX_EVENT_BYTES = 64 * 1024;
    static final int MAX_MAP_LEN = 64;
    static final int MAX_ARRAY_LEN = 1024;
    /** Python's unpacker holds at most this many nested containers, the event's map included. */
    static final int MAX_DEPTH = 1024;
    static final int MAX_STR_ID_LEN = 128;
    static final Set<String> BEHAVIORS = Set.of("pv", "cart", "fav", "buy");
    static final BigInteger MAX_TS_MS = BigInteger.valueOf(10_000_000_000_000L);

    /** A string header may claim 4 GB; nothing larger than an event is ever read. */
    private static final MessagePack.UnpackerConfig LIMITS =
            new MessagePack.UnpackerConfig()
                    .withStringSizeLimit(MAX_EVENT_BYTES)
                    .withActionOnMalformedString(CodingErrorAction.REPORT)
                    .withActionOnUnmappableString(CodingErrorAction.REPORT);

    public static final TypeInformation<Row> EVENT_TYPE = Types.ROW_NAMED(
            new String[] {"topic", "partition", "offset", "timestamp", "event_ts", "value"},
            Types.STRING, Types.INT, Types.LONG, Types.LONG, Types.LONG,
            PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO);
    public static final TypeInformation<Row> KEYED_TYPE = Types.ROW(Types.STRING, EVENT_TYPE);

    private final long maxFutureSkewMs;
    /** null: keys are the user ids themselves. */
    private final Pseudonyms pseudonyms;

    /** @param maxFutureSkewMs {@code job.max_future_skew_ms}: how far past wall-clock now a ts may be */
    public EventEnvelope(long maxFutureSkewMs) {
        this(maxFutureSkewMs, null);
    }

    /** @param pseudonyms keys by pseudonym ({@code privacy.pseudonymize}); null keys by user id */
    public EventEnvelope(long maxFutureSkewMs, Pseudonyms pseudonyms) {
        if (maxFutureSkewMs < 0) {
            throw new IllegalArgumentException("maxFutureSkewMs must be >= 0, got " + maxFutureSkewMs);
        }
        this.maxFutureSkewMs = maxFutureSkewMs;
        this.pseudonyms = pseudonyms;
    }

    @Override
    public void open(OpenContext context) throws Exception {
        if (pseudonyms != null) {
            pseudonyms.open();
        }
    }

    @Override
    public Row map(Row raw) {
        byte[] value = (byte[]) raw.getField(4);
        Peeked p = peek(value);
        String key = pseudonyms == null || p.key.equals(UNKEYED) ? p.key : pseudonyms.apply(p.key);
        return Row.of(key, Row.of(raw.getField(0), raw.getField(1), raw.getField(2), raw.getField(3), p.eventTs, value));
    }

    @Override
    public TypeInformation<Row> getProducedType() {
        return KEYED_TYPE;
    }

    /** {@link #peekUntil(byte[], long)} with the bound this envelope applies now. */
    public Peeked peek(byte[] value) {
        return peekUntil(value, maxTsMs());
    }

    /** The latest acceptable event time: wall-clock now + the skew (saturating). */
    public long maxTsMs() {
        long now = System.currentTimeMillis();
        return now > Long.MAX_VALUE - maxFutureSkewMs ? Long.MAX_VALUE : now + maxFutureSkewMs;
    }

    /**
     * Event time inside the Kafka source, so watermarks are kept per partition: a partition
     * catching up on old events holds the watermark back instead of the others' events
     * turning late. The timestamp is {@link #peek}'s reading of the raw record (field 4),
     * Long.MIN_VALUE for one Python would reject, which moves no watermark. A partition with
     * no records for {@code idlenessMs} stops holding the watermark back (0: never idle).
     */
    public static WatermarkStrategy<Row> sourceWatermarks(
            long outOfOrdernessMs, long idlenessMs, long maxFutureSkewMs) {
        WatermarkStrategy<Row> strategy =
                WatermarkStrategy.<Row>forBoundedOutOfOrderness(Duration.ofMillis(outOfOrdernessMs))
                        .withTimestampAssigner(new RawEventTime(new EventEnvelope(maxFutureSkewMs)));
        return idlenessMs > 0 ? strategy.withIdleness(Duration.ofMillis(idlenessMs)) : strategy;
    }

    static final class RawEventTime implements SerializableTimestampAssigner<Row> {
        private final EventEnvelope envelope;

        RawEventTime(EventEnvelope envelope) {
            this.envelope = envelope;
        }

        @Override
        public long extractTimestamp(Row raw, long recordTimestamp) {
            return envelope.peek((byte[]) raw.getField(4)).eventTs;
        }
    }

    /** Event time from the envelope, for sources without their own (files, collections). */
    public static WatermarkStrategy<Row> watermarks(long outOfOrdernessMs) {
        return WatermarkStrategy.<Row>forBoundedOutOfOrderness(Duration.ofMillis(outOfOrdernessMs))
                .withTimestampAssigner(new EventTime());
    }

    static final class EventTime implements SerializableTimestampAssigner<Row> {
        @Override
        public long extractTimestamp(Row element, long recordTimestamp) {
            return (Long) ((Row) element.getField(1)).getField(4);
        }
    }

    /**
     * The user id whenever it can be read; the event time only when the whole record
     * would pass udfs/events.py, so a malformed record with a plausible "ts" cannot
     * move the watermark (and make good events late); nor does one whose ts is beyond
     * {@code maxTsMs}. Disagreeing with Python here costs at most a watermark
     * contribution: Python still decides what is valid (and dead-letters a key mismatch).
     */
    public static Peeked peekUntil(byte[] value, long maxTsMs) {
        if (value == null || value.length > MAX_EVENT_BYTES) {
            return Peeked.NOTHING;
        }
        String user = null;
        Long time = null;
        boolean item = false;
        boolean category = false;
        boolean behavior = false;
        try (MessageUnpacker in = LIMITS.newUnpacker(value)) {
            if (!in.hasNext() || in.getNextFormat().getValueType() != ValueType.MAP) {
                return Peeked.NOTHING;
            }
            int entries = in.unpackMapHeader();
            if (entries > MAX_MAP_LEN) {
                return Peeked.NOTHING;
            }
            for (int i = 0; i < entries; i++) {
                ValueType keyType = in.getNextFormat().getValueType();
                if (keyType == ValueType.MAP || keyType == ValueType.ARRAY) {
                    throw new IOException("a map or array as a map key"); // unhashable in Python
                }
                if (keyType != ValueType.STRING) {
                    skipChecked(in, 2);
                    continue;
                }
                String name = in.unpackString();
                switch (name) {
                    case "user_id": user = readId(in); break;
                    case "item_id": item = readId(in) != null; break;
                    case "category_id": category = readId(in) != null; break;
                    case "behavior": behavior = readBehavior(in); break;
                    case "ts": time = readTs(in); break;
                    default: skipChecked(in, 1);
                }
            }
            boolean valid = !in.hasNext() && user != null && item && category && behavior && time != null
                    && time <= maxTsMs;
            return new Peeked(user == null ? UNKEYED : user, valid ? time : NO_TIME);
        } catch (Exception e) {
            // malformed: Python's decode says why, on the dead-letter topic
            return user == null ? Peeked.NOTHING : new Peeked(user, NO_TIME);
        }
    }

    /**
     * Whether {@code value} is an erase request as udfs/events.py decode_input reads one: a map of
     * exactly {@code user_id} (a valid id) and {@code erase: true}. The envelope keys it by the
     * shopper with {@link #NO_TIME} (it is no event); the item step forgets the shopper's window on it.
     */
    public static boolean isErase(byte[] value) {
        if (value == null || value.length > MAX_EVENT_BYTES) {
            return false;
        }
        try (MessageUnpacker in = LIMITS.newUnpacker(value)) {
            if (!in.hasNext() || in.getNextFormat().getValueType() != ValueType.MAP || in.unpackMapHeader() != 2) {
                return false;
            }
            boolean user = false;
            boolean erase = false;
            for (int i = 0; i < 2; i++) {
                if (in.getNextFormat().getValueType() != ValueType.STRING) {
                    return false;
                }
                String name = in.unpackString();
                if (name.equals("user_id")) {
                    user = readId(in) != null;
                } else if (name.equals("erase") && in.getNextFormat().getValueType() == ValueType.BOOLEAN) {
                    erase = in.unpackBoolean();
                } else {
                    return false;
                }
            }
            return user && erase && !in.hasNext();
        } catch (Exception e) {
            return false;
        }
    }

    /** What the envelope read: the key, and the event time or {@link #NO_TIME}. */
    public static final class Peeked {
        static final Peeked NOTHING = new Peeked(UNKEYED, NO_TIME);
        public final String key;
        public final long eventTs;

        Peeked(String key, long eventTs) {
            this.key = key;
            this.eventTs = eventTs;
        }
    }

    /** An id as Python's str(canonical_id(...)) spells it, or null if invalid. */
    private static String readId(MessageUnpacker in) throws IOException {
        ValueType type = in.getNextFormat().getValueType();
        if (type == ValueType.INTEGER) {
            BigInteger id = in.unpackBigInteger();
            return id.bitLength() <= 63 ? id.toString() : null;
        }
        if (type == ValueType.STRING) {
            return canonicalStringId(in.unpackString());
        }
        skipChecked(in, 1);
        return null;
    }

    /**
     * The id rule for strings (udfs/events.py canonical_id): NFC, then 1..128 code
     * points, no control character (Cc: U+0000-U+001F, U+007F-U+009F); null if it
     * breaks the rule. A canonical-int64 string needs no conversion here: Python makes
     * it an int whose str() is this same string.
     */
    static String canonicalStringId(String raw) {
        String id = Normalizer.isNormalized(raw, Normalizer.Form.NFC)
                ? raw : Normalizer.normalize(raw, Normalizer.Form.NFC);
        int chars = id.codePointCount(0, id.length());
        if (chars < 1 || chars > MAX_STR_ID_LEN) {
            return null;
        }
        for (int i = 0; i < id.length(); i++) {
            char c = id.charAt(i);
            if (c <= 0x1F || (c >= 0x7F && c <= 0x9F)) {
                return null;
            }
        }
        return id;
    }

    private static boolean readBehavior(MessageUnpacker in) throws IOException {
        if (in.getNextFormat().getValueType() != ValueType.STRING) {
            skipChecked(in, 1);
            return false;
        }
        return BEHAVIORS.contains(in.unpackString());
    }

    private static Long readTs(MessageUnpacker in) throws IOException {
        if (in.getNextFormat().getValueType() != ValueType.INTEGER) {
            skipChecked(in, 1);
            return null;
        }
        BigInteger ts = in.unpackBigInteger();
        return ts.signum() >= 0 && ts.compareTo(MAX_TS_MS) < 0 ? ts.longValue() : null;
    }

    /**
     * Skips values inside the event's map under Python's unpack limits; throws where Python's
     * unpackb would: too long, nested past {@link #MAX_DEPTH}, a map or array as a map key, an ext.
     */
    private static void skipChecked(MessageUnpacker in, int values) throws IOException {
        // Per container opened below the event's map: values left, and whether it is a map.
        long[] left = new long[MAX_DEPTH];
        boolean[] map = new boolean[MAX_DEPTH];
        int top = 0;
        left[0] = values;
        while (top >= 0) {
            if (left[top] == 0) {
                top--;
                continue;
            }
            boolean key = map[top] && left[top] % 2 == 0;
            left[top]--;
            ValueType type = in.getNextFormat().getValueType();
            if (key && (type == ValueType.MAP || type == ValueType.ARRAY)) {
                throw new IOException("a map or array as a map key");
            }
            switch (type) {
                case MAP:
                case ARRAY: {
                    boolean isMap = type == ValueType.MAP;
                    int n = isMap ? in.unpackMapHeader() : in.unpackArrayHeader();
                    if (n > (isMap ? MAX_MAP_LEN : MAX_ARRAY_LEN)) {
                        throw new IOException(isMap ? "map too long" : "array too long");
                    }
                    if (top + 2 > MAX_DEPTH) { // the event's map and top + 1 containers below it
                        throw new IOException("nested too deep");
                    }
                    top++;
                    left[top] = isMap ? 2L * n : n;
                    map[top] = isMap;
                    break;
                }
                case EXTENSION:
                    throw new IOException("ext types are not events");
                case STRING:
                    in.unpackString(); // REPORT on malformed UTF-8, like Python's strict decode
                    break;
                default:
                    in.skipValue();
            }
        }
    }
}

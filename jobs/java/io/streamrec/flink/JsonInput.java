package io.streamrec.flink;

import java.io.IOException;
import java.io.Serializable;
import java.math.BigDecimal;
import java.math.BigInteger;
import java.math.RoundingMode;
import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.time.LocalDateTime;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.time.format.DateTimeFormatter;
import java.time.format.DateTimeParseException;
import java.time.temporal.TemporalAccessor;
import java.util.HashMap;
import java.util.Map;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonParser;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.DeserializationFeature;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.msgpack.core.MessageBufferPacker;
import org.msgpack.core.MessagePack;

/**
 * Translates a shop's JSON event (its own field names, behavior names and timestamp unit:
 * {@code [input]} in the config, docs/contracts.md "Input formats") into the canonical msgpack
 * event, once, in the Kafka source. Every later stage (the envelope's key and event time, the item
 * steps, the Python decoder) reads the same canonical bytes, so they cannot disagree about a JSON
 * record.
 *
 * <p>A record it cannot translate (not UTF-8 JSON, not an object, a mapped field missing, an id
 * that breaks the id rule, an unmapped behavior, a timestamp it cannot read) becomes
 * {@code {input_error: reason, raw: original bytes}}: the envelope finds no key and no time in it,
 * and the Python decoder (udfs/events.py, {@code decode_input(..., translated=True)}) turns it into
 * a dead letter holding the shop's original bytes (at most 64 KiB, with a reason of at most a few
 * hundred bytes; a larger record passes untouched and is refused as too_large). Never throws.
 */
public final class JsonInput implements Serializable {
    private static final long serialVersionUID = 1L;
    /** The keys of an untranslatable record's map; udfs/events.py reads the same names. */
    public static final String ERROR_KEY = "input_error";
    public static final String RAW_KEY = "raw";
    static final String ERASE = "erase";
    static final int MAX_QUOTE = 32;
    private static final DateTimeFormatter ISO = DateTimeFormatter.ISO_DATE_TIME;

    private final String userField;
    private final String itemField;
    /** "": the shop's events carry no category; every event gets category 0 (as a log without one). */
    private final String categoryField;
    /** "": the shop's events carry no behavior; every event is a view ({@code pv}). */
    private final String behaviorField;
    private final String tsField;
    /** "ms", "s" or "iso8601". */
    private final String tsUnit;
    /** The shop's behavior names to ours; ours always map to themselves. */
    private final HashMap<String, String> behaviors;
    private transient ObjectMapper mapper;

    public JsonInput(String userField, String itemField, String categoryField, String behaviorField,
                     String tsField, String tsUnit, Map<String, String> behaviors) {
        if (!tsUnit.equals("ms") && !tsUnit.equals("s") && !tsUnit.equals("iso8601")) {
            throw new IllegalArgumentException("tsUnit must be ms, s or iso8601, got " + tsUnit);
        }
        this.userField = userField;
        this.itemField = itemField;
        this.categoryField = categoryField;
        this.behaviorField = behaviorField;
        this.tsField = tsField;
        this.tsUnit = tsUnit;
        this.behaviors = new HashMap<>();
        for (String ours : EventEnvelope.BEHAVIORS) {
            this.behaviors.put(ours, ours);
        }
        this.behaviors.putAll(behaviors);
    }

    private ObjectMapper mapper() {
        if (mapper == null) {
            mapper = new ObjectMapper()
                    .enable(JsonParser.Feature.STRICT_DUPLICATE_DETECTION)
                    .enable(DeserializationFeature.FAIL_ON_TRAILING_TOKENS)
                    .enable(DeserializationFeature.USE_BIG_INTEGER_FOR_INTS)
                    .enable(DeserializationFeature.USE_BIG_DECIMAL_FOR_FLOATS);
        }
        return mapper;
    }

    /** Thrown inside a translation: its message is the dead letter's reason. */
    static final class Untranslatable extends Exception {
        private static final long serialVersionUID = 1L;

        Untranslatable(String reason) {
            super(reason, null, false, false);
        }
    }

    /** The canonical msgpack event or erase request for {@code raw}, or the untranslatable record's map. */
    public byte[] translate(byte[] raw) {
        if (raw.length > EventEnvelope.MAX_EVENT_BYTES) {
            return raw; // as it came: every reader refuses it as too_large, and the dead letter keeps it
        }
        try {
            return canonical(raw);
        } catch (Untranslatable e) {
            return failure(e.getMessage(), raw);
        } catch (IOException | RuntimeException e) {
            return failure("not_json: " + e.getClass().getSimpleName(), raw);
        }
    }

    private byte[] canonical(byte[] raw) throws Untranslatable, IOException {
        JsonNode root = parse(raw);
        if (!root.isObject()) {
            throw new Untranslatable("not_a_map: top level is " + root.getNodeType().name().toLowerCase());
        }
        MessageBufferPacker out = MessagePack.newDefaultBufferPacker();
        if (root.has(ERASE)) {
            erase(root, out);
            return out.toByteArray();
        }
        out.packMapHeader(5);
        out.packString("user_id");
        packId(out, required(root, userField, "user_id"), "user_id");
        out.packString("item_id");
        packId(out, required(root, itemField, "item_id"), "item_id");
        out.packString("category_id");
        if (categoryField.isEmpty()) {
            out.packInt(0);
        } else {
            packId(out, required(root, categoryField, "category_id"), "category_id");
        }
        out.packString("behavior");
        out.packString(behaviorField.isEmpty() ? "pv" : behavior(required(root, behaviorField, "behavior")));
        out.packString("ts");
        out.packLong(timestamp(required(root, tsField, "ts")));
        return out.toByteArray();
    }

    private JsonNode parse(byte[] raw) throws Untranslatable {
        String text;
        try {
            text = StandardCharsets.UTF_8.newDecoder()
                    .onMalformedInput(CodingErrorAction.REPORT)
                    .onUnmappableCharacter(CodingErrorAction.REPORT)
                    .decode(ByteBuffer.wrap(raw)).toString();
        } catch (CharacterCodingException e) {
            throw new Untranslatable("not_json: not UTF-8");
        }
        try {
            JsonNode root = mapper().readTree(text);
            if (root == null || root.isMissingNode()) {
                throw new Untranslatable("not_json: empty");
            }
            return root;
        } catch (IOException e) {
            String detail = e.getMessage() == null ? "" : e.getMessage().split("\n", 2)[0];
            throw new Untranslatable("not_json: " + quote(detail, 120));
        }
    }

    /** {@code {"<user field>": id, "erase": true}} and nothing else, as udfs/events.py reads an erase. */
    private void erase(JsonNode root, MessageBufferPacker out) throws Untranslatable, IOException {
        JsonNode flag = root.get(ERASE);
        if (root.size() != 2 || !root.has(userField)) {
            throw new Untranslatable("bad_erase: an erase request holds " + userField + " and erase only");
        }
        if (!flag.isBoolean() || !flag.booleanValue()) {
            throw new Untranslatable("bad_erase: erase must be true");
        }
        out.packMapHeader(2);
        out.packString("user_id");
        packId(out, root.get(userField), "user_id");
        out.packString(ERASE);
        out.packBoolean(true);
    }

    private static JsonNode required(JsonNode root, String theirs, String ours) throws Untranslatable {
        JsonNode value = root.get(theirs);
        if (value == null) {
            throw new Untranslatable("missing_field:" + ours + (theirs.equals(ours) ? "" : " (" + theirs + ")"));
        }
        return value;
    }

    /** An id by the id rule (udfs/events.py canonical_id): an integer in int64 or a valid string. */
    private static void packId(MessageBufferPacker out, JsonNode value, String name) throws Untranslatable, IOException {
        if (value.isIntegralNumber()) {
            BigInteger id = value.bigIntegerValue();
            if (id.bitLength() > 63) {
                throw new Untranslatable("out_of_range:" + name + ": " + quote(id.toString(), MAX_QUOTE)
                        + " does not fit in int64");
            }
            out.packLong(id.longValue());
        } else if (value.isTextual()) {
            String id = EventEnvelope.canonicalStringId(value.textValue());
            if (id == null) {
                throw new Untranslatable("bad_id:" + name + ": breaks the id rule (1-128 characters, no control character)");
            }
            out.packString(id);
        } else {
            throw new Untranslatable("bad_type:" + name + ": expected an integer or a string, got "
                    + value.getNodeType().name().toLowerCase());
        }
    }

    private String behavior(JsonNode value) throws Untranslatable {
        if (!value.isTextual()) {
            throw new Untranslatable("bad_type:behavior: expected a string, got " + value.getNodeType().name().toLowerCase());
        }
        String ours = behaviors.get(value.textValue());
        if (ours == null) {
            throw new Untranslatable("unknown_behavior: " + quote(value.textValue(), MAX_QUOTE)
                    + " (map it with input.behaviors)");
        }
        return ours;
    }

    /** Event time in ms since the epoch, from the unit the config names. */
    long timestamp(JsonNode value) throws Untranslatable {
        BigDecimal ms;
        if (tsUnit.equals("iso8601")) {
            if (!value.isTextual()) {
                throw new Untranslatable("bad_type:ts: expected an ISO 8601 string, got "
                        + value.getNodeType().name().toLowerCase());
            }
            ms = BigDecimal.valueOf(isoMillis(value.textValue()));
        } else {
            BigDecimal number = number(value);
            ms = tsUnit.equals("s") ? number.movePointRight(3) : number;
            if (tsUnit.equals("ms") && ms.stripTrailingZeros().scale() > 0) {
                throw new Untranslatable("bad_type:ts: ms must be a whole number, got " + quote(number.toPlainString(), MAX_QUOTE));
            }
        }
        BigInteger whole = ms.setScale(0, RoundingMode.FLOOR).toBigIntegerExact();
        if (whole.signum() < 0 || whole.compareTo(EventEnvelope.MAX_TS_MS) >= 0) {
            throw new Untranslatable("out_of_range:ts: " + quote(whole.toString(), MAX_QUOTE)
                    + " ms is not a time since the epoch (input.ts_unit is " + tsUnit + ")");
        }
        return whole.longValue();
    }

    /** A JSON number, or a string holding one (many producers quote their timestamps). */
    private static BigDecimal number(JsonNode value) throws Untranslatable {
        if (value.isNumber()) {
            return value.decimalValue();
        }
        if (value.isTextual()) {
            String text = value.textValue();
            if (text.length() <= MAX_QUOTE && text.matches("-?[0-9]+(\\.[0-9]+)?")) {
                return new BigDecimal(text);
            }
            throw new Untranslatable("bad_type:ts: not a number: " + quote(text, MAX_QUOTE));
        }
        throw new Untranslatable("bad_type:ts: expected a number, got " + value.getNodeType().name().toLowerCase());
    }

    /** ISO 8601 date-time; with no offset it is UTC. A space may stand for the 'T'. */
    static long isoMillis(String text) throws Untranslatable {
        String iso = text.length() > 10 && text.charAt(10) == ' ' ? text.substring(0, 10) + 'T' + text.substring(11) : text;
        try {
            TemporalAccessor parsed = ISO.parseBest(iso, OffsetDateTime::from, LocalDateTime::from);
            if (parsed instanceof LocalDateTime) {
                return ((LocalDateTime) parsed).toInstant(ZoneOffset.UTC).toEpochMilli();
            }
            return ((OffsetDateTime) parsed).toInstant().toEpochMilli();
        } catch (DateTimeParseException | ArithmeticException e) {
            throw new Untranslatable("bad_type:ts: not an ISO 8601 date-time: " + quote(text, MAX_QUOTE));
        }
    }

    private static byte[] failure(String reason, byte[] raw) {
        try (MessageBufferPacker out = MessagePack.newDefaultBufferPacker()) {
            out.packMapHeader(2);
            out.packString(ERROR_KEY);
            out.packString(reason);
            out.packString(RAW_KEY);
            out.packBinaryHeader(raw.length);
            out.writePayload(raw);
            return out.toByteArray();
        } catch (IOException e) {
            throw new IllegalStateException("msgpack into memory failed", e);
        }
    }

    /** A value quoted in a reason: at most {@code max} characters, control characters escaped. */
    static String quote(String value, int max) {
        String cut = value.length() > max ? value.substring(0, max) + "..." : value;
        StringBuilder b = new StringBuilder("'");
        for (int i = 0; i < cut.length(); i++) {
            char c = cut.charAt(i);
            if (c < 0x20 || (c >= 0x7f && c <= 0x9f)) {
                b.append(String.format("\\u%04x", (int) c));
            } else {
                b.append(c);
            }
        }
        return b.append('\'').toString();
    }
}

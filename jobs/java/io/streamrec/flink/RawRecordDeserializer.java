package io.streamrec.flink;

import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.connector.kafka.source.reader.deserializer.KafkaRecordDeserializationSchema;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;
import org.apache.flink.kafka.shaded.org.apache.kafka.clients.consumer.ConsumerRecord;

/**
 * Passes Kafka records through untouched, with their coordinates, so Python can
 * decode them and send bad ones to the dead-letter topic with topic/partition/offset.
 * Compiled against flink-sql-connector-kafka, which shades the Kafka client.
 * Never throws: a record that cannot be decoded is data, not a job failure.
 *
 * <p>With a {@link JsonInput} (the events' source under {@code input.format = json}) each value is
 * translated into the canonical msgpack event here, before event time is read from it.
 */
public class RawRecordDeserializer implements KafkaRecordDeserializationSchema<Row> {
    private static final byte[] EMPTY = new byte[0];
    /** null: values pass untouched. */
    private final JsonInput json;

    public RawRecordDeserializer() {
        this(null);
    }

    public RawRecordDeserializer(JsonInput json) {
        this.json = json;
    }

    @Override
    public void deserialize(ConsumerRecord<byte[], byte[]> record, Collector<Row> out) {
        byte[] value = record.value() == null ? EMPTY : record.value();
        if (json != null) {
            value = json.translate(value);
        }
        out.collect(Row.of(record.topic(), record.partition(), record.offset(), record.timestamp(), value));
    }

    @Override
    public TypeInformation<Row> getProducedType() {
        return Types.ROW_NAMED(
                new String[] {"topic", "partition", "offset", "timestamp", "value"},
                Types.STRING, Types.INT, Types.LONG, Types.LONG,
                PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO);
    }
}

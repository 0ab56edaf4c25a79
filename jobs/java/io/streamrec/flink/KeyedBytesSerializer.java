package io.streamrec.flink;

import java.nio.charset.StandardCharsets;
import org.apache.flink.connector.kafka.sink.KafkaRecordSerializationSchema;
import org.apache.flink.types.Row;
import org.apache.flink.kafka.shaded.org.apache.kafka.clients.producer.ProducerRecord;

/**
 * Writes Row(key: String, value: byte[]) to one topic: the key as UTF-8, the value as is.
 * The record timestamp is left to the producer (send time), which is what
 * event-to-recommendation latency is measured against. An empty value is written as null, Kafka's
 * tombstone: the job's list for an erased shopper (udfs/records.py ERASED_LIST).
 */
public class KeyedBytesSerializer implements KafkaRecordSerializationSchema<Row> {
    private final String topic;

    public KeyedBytesSerializer(String topic) {
        this.topic = topic;
    }

    @Override
    public ProducerRecord<byte[], byte[]> serialize(Row element, KafkaSinkContext context, Long timestamp) {
        Object key = element.getField(0);
        byte[] keyBytes = key == null ? null : key.toString().getBytes(StandardCharsets.UTF_8);
        byte[] value = (byte[]) element.getField(1);
        return new ProducerRecord<>(topic, null, null, keyBytes, value == null || value.length == 0 ? null : value);
    }
}

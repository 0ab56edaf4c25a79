"""Integration tier: the real local Kafka broker and Flink minicluster jobs."""

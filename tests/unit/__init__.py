"""Unit tier: no broker, no JVM job, no cluster (some tests train tiny torch models: marker `train`)."""

"""One factory builds every Python Kafka client (udfs/kafka_clients.py); nobody else does.

The rule is read from the source: no module of the product, the job, training or the lab
calls a Kafka client class itself. The factory's clients carry the config's brokers and
security options, and work against the real broker.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from udfs.config import KafkaConfig
from udfs.kafka_clients import PRODUCER_DEFAULTS, KafkaClients

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("udfs", "jobs", "model_export", "streamrec")
CLIENT_CLASSES = {"KafkaConsumer", "KafkaProducer", "KafkaAdminClient", "Consumer", "Producer", "AdminClient"}
FACTORY = ROOT / "udfs" / "kafka_clients.py"


def client_calls(source: str) -> list[str]:
    """Names of Kafka client classes called in ``source`` (``KafkaConsumer(...)``, ``kafka.KafkaProducer(...)``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            if name in CLIENT_CLASSES:
                found.append(name)
    return found


def test_the_rule_sees_a_planted_client() -> None:
    planted = "import kafka\nfrom kafka import KafkaConsumer\nc = KafkaConsumer('t')\np = kafka.KafkaProducer()\n"
    assert client_calls(planted) == ["KafkaConsumer", "KafkaProducer"]
    assert client_calls("clients.consumer('t')\nKafkaClients('b').producer()\n") == []


def test_no_module_but_the_factory_builds_a_kafka_client() -> None:
    builders = {str(p.relative_to(ROOT)): calls for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))
                if (calls := client_calls(p.read_text())) and p != FACTORY}
    assert not builders, f"Kafka clients built outside udfs/kafka_clients.py: {builders}"
    assert client_calls(FACTORY.read_text()), "the factory itself builds none: the rule looks in the wrong place"


def test_clients_carry_the_configs_brokers_and_security_options() -> None:
    kafka = KafkaConfig(bootstrap_servers="broker-a:9093,broker-b:9093", security_protocol="SSL")
    clients = KafkaClients.of(kafka)
    opts = clients._options({"group_id": None})
    assert opts["bootstrap_servers"] == "broker-a:9093,broker-b:9093"
    assert opts["security_protocol"] == "SSL" and "group_id" in opts
    # The caller's options never override the security ones.
    assert clients._options({"security_protocol": "PLAINTEXT"})["security_protocol"] == "SSL"
    assert PRODUCER_DEFAULTS["acks"] == "all"


@pytest.mark.kafka
def test_the_factorys_clients_round_trip_on_the_broker(kafka_broker, unique_topic) -> None:
    clients = KafkaClients(kafka_broker.bootstrap)
    topic = unique_topic("clients")
    admin = clients.admin()
    try:
        assert topic in admin.list_topics()
    finally:
        admin.close()
    prod = clients.producer(linger_ms=0)
    prod.send(topic, key=b"k", value=b"v").get(timeout=10)
    prod.close()
    cons = clients.consumer(topic, auto_offset_reset="earliest", consumer_timeout_ms=10_000)
    try:
        assert [(m.key, m.value) for m in cons][:1] == [(b"k", b"v")]
    finally:
        cons.close()

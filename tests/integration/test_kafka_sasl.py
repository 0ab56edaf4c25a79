"""A broker with a SASL/PLAIN listener: the tools authenticate with the configured password, and a
wrong one fails with a clear error in bounded time."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import pytest

from streamrec.cli import main as cli_main
from streamrec.kafka_io import consume, produce, replay
from streamrec.lab.local.kafka import LocalKafka
from streamrec.serve.follower import Follower
from streamrec.serve.store import SqliteStore
from tests.conftest import SASL_PASSWORD, SASL_USER
from tests.support.serve_fixtures import output_value
from udfs.config import KafkaConfig, env_var, load_config
from udfs.events import Event
from udfs.kafka_security import KafkaCredentialsError, python_client_options

pytestmark = pytest.mark.timeout(300)

_n = itertools.count(1)


def sasl_settings(broker: LocalKafka, password_file: Path) -> dict[str, str]:
    return {"bootstrap_servers": broker.sasl_bootstrap, "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "PLAIN", "sasl_username": SASL_USER, "sasl_password_file": str(password_file)}


def sasl_kafka_config(broker: LocalKafka, tmp_path: Path, password: str = SASL_PASSWORD) -> KafkaConfig:
    pw = tmp_path / f"password-{next(_n)}"
    pw.write_text(password + "\n")
    env = {env_var("kafka", k): v for k, v in sasl_settings(broker, pw).items()}
    return load_config(environ=env).kafka


def test_config_writes_the_sasl_listener_only_when_asked(tmp_path: Path) -> None:
    plain = LocalKafka(tmp_path / "a", port=1, controller_port=2)
    plain.data_dir.mkdir()
    plain._write_config()
    assert "SASL" not in plain.config_file.read_text()
    with pytest.raises(ValueError, match="no SASL listener"):
        _ = plain.sasl_bootstrap
    sasl = LocalKafka(tmp_path / "b", port=1, controller_port=2, sasl_users={"u": "p1"}, sasl_port=3)
    sasl.data_dir.mkdir()
    sasl._write_config()
    props = dict(line.split("=", 1) for line in sasl.config_file.read_text().splitlines())
    assert props["listeners"].endswith(",SASL_PLAINTEXT://127.0.0.1:3")
    assert props["advertised.listeners"].endswith(",SASL_PLAINTEXT://127.0.0.1:3")
    assert props["sasl.enabled.mechanisms"] == "PLAIN" and props["inter.broker.listener.name"] == "PLAINTEXT"
    assert props["listener.name.sasl_plaintext.plain.sasl.jaas.config"].endswith('user_u="p1";')
    with pytest.raises(ValueError, match="sasl_users"):
        LocalKafka(tmp_path / "c", sasl_users={"u": 'p"'})


@pytest.mark.kafka
def test_replay_and_consume_through_sasl(sasl_kafka_broker: LocalKafka, tmp_path: Path) -> None:
    topic = f"sasl-roundtrip-{next(_n)}"
    sasl_kafka_broker.create_topics([topic])  # through the plaintext listener
    k = sasl_kafka_config(sasl_kafka_broker, tmp_path)
    security = python_client_options(k)
    events = [Event(u, 100 + u, 7, "pv", 1_000 + u) for u in range(10)]
    assert replay(events, k.bootstrap_servers, topic, security=security).sent == 10
    got = list(consume(k.bootstrap_servers, topic, max_records=10, timeout_s=10, security=security))
    assert [r.value for r in got] == [e.to_wire() for e in events]


@pytest.mark.kafka
def test_cli_consume_through_sasl(sasl_kafka_broker: LocalKafka, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    topic = f"sasl-cli-{next(_n)}"
    sasl_kafka_broker.create_topics([topic])
    replay([Event(7, 8, 9, "buy", 1_000)], sasl_kafka_broker.bootstrap, topic)
    pw = tmp_path / "pw"
    pw.write_text(SASL_PASSWORD)
    for key, value in sasl_settings(sasl_kafka_broker, pw).items():
        monkeypatch.setenv(env_var("kafka", key), value)
    assert cli_main(["consume", "--topic", topic, "--max", "1", "--timeout", "10"]) == 0
    assert json.loads(capsys.readouterr().out)["item_id"] == 8


@pytest.mark.kafka
def test_wrong_password_fails_clearly_in_bounded_time(sasl_kafka_broker: LocalKafka, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    topic = f"sasl-wrong-{next(_n)}"
    sasl_kafka_broker.create_topics([topic])
    k = sasl_kafka_config(sasl_kafka_broker, tmp_path, password="not-the-password")
    # kafka-python retries a refused login until its bootstrap timeout (30 s by default)
    security = {**python_client_options(k), "bootstrap_timeout_ms": 5000}
    for call in (lambda: replay([Event(1, 2, 3, "pv", 4)], k.bootstrap_servers, topic, security=security),
                 lambda: list(consume(k.bootstrap_servers, topic, timeout_s=2, security=security))):
        t0 = time.monotonic()
        with pytest.raises(KafkaCredentialsError) as err:
            call()
        assert time.monotonic() - t0 < 20
        message = str(err.value)
        assert k.bootstrap_servers in message and "'alice'" in message and "kafka.sasl_password_file" in message
        assert "credentials were refused" in message or "refused the credentials (" in message
        assert "not-the-password" not in message
    assert "not-the-password" not in caplog.text


@pytest.mark.kafka
def test_transaction_timeout_check_reads_the_broker_through_sasl(sasl_kafka_broker: LocalKafka,
                                                                 tmp_path: Path) -> None:
    from jobs.io import broker_transaction_max_ms  # pyflink: only this test needs it

    k = sasl_kafka_config(sasl_kafka_broker, tmp_path)
    assert broker_transaction_max_ms(k.bootstrap_servers, security=python_client_options(k)) == 900_000


def test_the_serve_view_rebuilds_through_sasl_with_librdkafka(sasl_kafka_broker: LocalKafka, tmp_path: Path) -> None:
    """The serve follower's consumer (confluent-kafka) takes the same kafka.* settings as kafka-python's
    clients (udfs.kafka_security.librdkafka_options); a wrong password leaves it reconnecting, not serving."""
    topic = f"sasl-view-{next(_n)}"
    sasl_kafka_broker.create_topics([topic])
    k = sasl_kafka_config(sasl_kafka_broker, tmp_path)
    security = python_client_options(k)
    produce(k.bootstrap_servers, topic, [(str(u).encode(), output_value(u, 1, [u + 100])) for u in range(20)],
            security=security)
    store = SqliteStore(tmp_path / "view.sqlite", topic)
    follower = Follower(store, k.bootstrap_servers, topic, security=security)
    follower.start()
    try:
        assert follower.ready.wait(60), follower.last_error
        assert store.count() == 20 and store.get("7").record.items == [107]
    finally:
        follower.stop()
    wrong = python_client_options(sasl_kafka_config(sasl_kafka_broker, tmp_path, password="not-the-password"))
    denied = Follower(SqliteStore(tmp_path / "denied.sqlite", topic), k.bootstrap_servers, topic, security=wrong)
    denied.start()
    try:
        assert not denied.ready.wait(15) and denied.state() == "reconnecting"
    finally:
        denied.stop()

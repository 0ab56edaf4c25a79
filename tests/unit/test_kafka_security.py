"""Kafka client security: config validation, the Java and kafka-python mappings, no secret shown."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from udfs.config import Config, ConfigError, env_var, load_config
from udfs.config_render import config_env
from udfs.kafka_security import (
    SHADED_PREFIX,
    ClientProperties,
    Secret,
    java_client_properties,
    librdkafka_options,
    python_client_options,
    sasl_password,
)

PASSWORD = "pa$$-w0rd\"with\\quote"


def kafka_env(**fields: str) -> dict[str, str]:
    return {env_var("kafka", k): v for k, v in fields.items()}


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "kafka-password"
    path.write_text(PASSWORD + "\n")
    return path


def sasl_config(password_file: Path, mechanism: str = "PLAIN", protocol: str = "SASL_PLAINTEXT",
                **more: str) -> Config:
    return load_config(environ=kafka_env(security_protocol=protocol, sasl_mechanism=mechanism,
                                         sasl_username="alice", sasl_password_file=str(password_file), **more))


def test_plaintext_default_maps_to_plaintext_only() -> None:
    k = Config().kafka
    assert java_client_properties(k) == {"security.protocol": "PLAINTEXT"}
    assert python_client_options(k) == {"security_protocol": "PLAINTEXT"}


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_maps_to_both_clients_with_the_shaded_login_module(password_file: Path, mechanism: str) -> None:
    k = sasl_config(password_file, mechanism).kafka
    java = java_client_properties(k)
    module = "plain.PlainLoginModule" if mechanism == "PLAIN" else "scram.ScramLoginModule"
    assert java["security.protocol"] == "SASL_PLAINTEXT" and java["sasl.mechanism"] == mechanism
    assert java["sasl.jaas.config"] == (
        f"{SHADED_PREFIX}org.apache.kafka.common.security.{module} required "
        'username="alice" password="pa$$-w0rd\\"with\\\\quote";')
    unshaded = java_client_properties(k, shaded=False)["sasl.jaas.config"]
    assert unshaded.startswith(f"org.apache.kafka.common.security.{module} required")
    py = python_client_options(k)
    assert py == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": mechanism,
                  "sasl_plain_username": "alice", "sasl_plain_password": PASSWORD}


def test_password_from_the_named_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KAFKA_PW", PASSWORD)
    cfg = load_config(environ={**kafka_env(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                                           sasl_username="bob", sasl_password_env="MY_KAFKA_PW"),
                               "MY_KAFKA_PW": PASSWORD})
    assert python_client_options(cfg.kafka)["sasl_plain_password"] == PASSWORD
    assert sasl_password(cfg.kafka, {"MY_KAFKA_PW": "other"}) == "other"
    with pytest.raises(ConfigError, match="kafka.sasl_password_env: environment variable 'MY_KAFKA_PW' is not set"):
        sasl_password(cfg.kafka, {})


def test_tls_maps_to_pem_truststore_and_keystore(tmp_path: Path) -> None:
    ca, cert, key = tmp_path / "ca.pem", tmp_path / "client.pem", tmp_path / "client.key"
    ca.write_text("-----BEGIN CERTIFICATE-----\nca\n-----END CERTIFICATE-----\n")
    cert.write_text("-----BEGIN CERTIFICATE-----\nclient\n-----END CERTIFICATE-----\n")
    key.write_text("-----BEGIN PRIVATE KEY-----\nsecret-key-bytes\n-----END PRIVATE KEY-----\n")
    cfg = load_config(environ=kafka_env(security_protocol="SSL", ssl_cafile=str(ca), ssl_certfile=str(cert),
                                        ssl_keyfile=str(key)))
    java = java_client_properties(cfg.kafka)
    assert java["ssl.truststore.type"] == "PEM" and java["ssl.truststore.location"] == str(ca)
    assert java["ssl.keystore.type"] == "PEM"
    assert java["ssl.keystore.certificate.chain"] == cert.read_text()
    assert java["ssl.keystore.key"] == key.read_text()
    assert "secret-key-bytes" not in repr(java)
    assert python_client_options(cfg.kafka) == {"security_protocol": "SSL", "ssl_cafile": str(ca),
                                                "ssl_certfile": str(cert), "ssl_keyfile": str(key)}
    key.write_text("-----BEGIN RSA PRIVATE KEY-----\nx\n-----END RSA PRIVATE KEY-----\n")
    with pytest.raises(ConfigError, match=r"kafka\.ssl_keyfile: .*PKCS#8"):
        java_client_properties(cfg.kafka)


@pytest.mark.parametrize(("fields", "message"), [
    ({"security_protocol": "SASL_PLAINTEXT"}, r"kafka\.sasl_mechanism is required"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN"}, r"kafka\.sasl_username is required"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_username": "a"},
     r"exactly one of kafka\.sasl_password_file and kafka\.sasl_password_env"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_username": "a",
      "sasl_password_file": "/nonexistent/pw"}, r"kafka\.sasl_password_file: file not found: /nonexistent/pw"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_username": "a",
      "sasl_password_env": "NOT_SET_ANYWHERE"}, r"kafka\.sasl_password_env: .*'NOT_SET_ANYWHERE' is not set"),
    ({"sasl_mechanism": "PLAIN"}, r"kafka\.sasl_mechanism is set but kafka\.security_protocol is PLAINTEXT"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "GSSAPI"}, r"kafka\.sasl_mechanism"),
    ({"security_protocol": "TLS"}, r"kafka\.security_protocol"),
    ({"ssl_cafile": "/x.pem"}, r"kafka\.ssl_cafile is set but kafka\.security_protocol is PLAINTEXT"),
    ({"security_protocol": "SSL", "ssl_cafile": "/nonexistent/ca.pem"}, r"kafka\.ssl_cafile: file not found"),
    ({"security_protocol": "SSL", "ssl_certfile": "/x.pem"}, r"kafka\.ssl_certfile and kafka\.ssl_keyfile go together"),
])
def test_bad_security_settings_fail_naming_the_key(fields: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(environ=kafka_env(**fields))


def test_a_password_in_the_config_file_is_refused_without_echoing_it(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[kafka]\nsecurity_protocol = "SASL_PLAINTEXT"\nsasl_password = "{PASSWORD[:6]}"\n')
    with pytest.raises(ConfigError) as err:
        load_config(cfg, environ={})
    assert "kafka.sasl_password" in str(err.value) and "value hidden" in str(err.value)
    assert PASSWORD[:6] not in str(err.value)


def test_secrets_stay_out_of_reprs_errors_and_logs(password_file: Path, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    cfg = sasl_config(password_file)
    java, py = java_client_properties(cfg.kafka), python_client_options(cfg.kafka)
    assert isinstance(java, ClientProperties) and isinstance(py["sasl_plain_password"], Secret)
    shown = [str(cfg), repr(cfg), cfg.model_dump_json(), str(java), repr(java), str(py), repr(py),
             repr(py["sasl_plain_password"]), f"{list(py.values())}"]
    for text in shown:
        assert PASSWORD not in text and "pa$$" not in text, text
    assert str(password_file) in repr(cfg)  # where it lives is shown, what it is is not
    # kafka-python logs its admin client's options at debug level
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("kafka.admin.client").debug("Starting KafkaAdminClient with configuration: %s", py)
        logging.getLogger("test").info("options %r, jaas %r", py, java["sasl.jaas.config"])
    assert "pa$$" not in caplog.text and "**********" in caplog.text
    # errors name the key, not the value
    password_file.write_text("")
    with pytest.raises(ConfigError, match=r"kafka\.sasl_password_file .*: the password is empty"):
        python_client_options(cfg.kafka)
    password_file.unlink()
    with pytest.raises(ConfigError, match=r"kafka\.sasl_password_file: cannot read"):
        java_client_properties(cfg.kafka)


def test_secret_still_works_as_the_string_the_clients_need() -> None:
    s = Secret("abc")
    assert s == "abc" and s.encode() == b"abc" and "\0".join(["u", s]) == "u\0abc"
    assert type(str(s)) is str and str(s) == "abc"


def test_jobs_on_the_local_plaintext_broker_drop_secured_settings_from_the_environment(password_file: Path) -> None:
    from streamrec.lab.local.procs import LOCAL_BROKER_SECURITY  # tools layer: only this test needs it

    secured = kafka_env(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="alice",
                        sasl_password_file=str(password_file))
    assert load_config(environ=secured).kafka.security_protocol == "SASL_PLAINTEXT"
    overridden = {**secured, **config_env({"kafka": LOCAL_BROKER_SECURITY})}
    assert python_client_options(load_config(environ=overridden).kafka) == {"security_protocol": "PLAINTEXT"}


def test_librdkafka_gets_the_same_settings_under_its_names_and_masks_the_password(password_file: Path,
                                                                                  tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    k = sasl_config(password_file, "SCRAM-SHA-512", "SASL_SSL", ssl_cafile=str(ca)).kafka
    rd = librdkafka_options(python_client_options(k))
    assert rd == {"security.protocol": "sasl_ssl", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "alice",
                  "sasl.password": PASSWORD, "ssl.ca.location": str(ca)}
    assert PASSWORD not in repr(rd)
    assert librdkafka_options(None) == {} and librdkafka_options(python_client_options(Config().kafka)) == {
        "security.protocol": "plaintext"}
    with pytest.raises(ValueError, match="no librdkafka setting"):
        librdkafka_options({"api_version": (2, 0)})

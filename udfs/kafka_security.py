"""Kafka client security from the config: one mapping for the Java clients, one for kafka-python.

The config (:class:`udfs.config.KafkaConfig`) holds only where secrets live: the SASL password
comes from a file (``kafka.sasl_password_file``) or an environment variable the config names
(``kafka.sasl_password_env``), read here when a client is built. A secret read here is wrapped in
:class:`Secret`, and the mappings are :class:`ClientProperties`, so neither shows it in a repr
(kafka-python logs its admin client's options at debug level, for one).

The job's Flink Kafka connector (``flink-sql-connector-kafka``) relocates the Kafka client under
``org.apache.flink.kafka.shaded``, so its ``sasl.jaas.config`` names the relocated login module:
with the plain ``org.apache.kafka...`` name the job fails with ``No LoginModule found``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from udfs.config import ConfigError, KafkaConfig

SHADED_PREFIX = "org.apache.flink.kafka.shaded."
LOGIN_MODULES = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}
MASK = "**********"
# Keys whose values are secret, in the Java and the kafka-python spellings.
SECRET_KEYS = frozenset({"sasl.jaas.config", "ssl.keystore.key", "sasl_plain_password", "sasl.password"})


class KafkaCredentialsError(ConfigError):
    """The broker refused the client's credentials (a wrong user name or password, say)."""


class Secret(str):
    """A string that keeps its value for the clients but shows ``'**********'`` as its repr.

    ``str()`` and formatting still give the value (the clients need it); containers and
    logging of options use repr.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(MASK)


class ClientProperties(dict[str, Any]):
    """Client settings whose repr/str masks the secret values; unpack with ``**`` as usual."""

    def __repr__(self) -> str:
        return repr({k: (MASK if k in SECRET_KEYS else v) for k, v in self.items()})

    __str__ = __repr__


def uses_sasl(k: KafkaConfig) -> bool:
    return k.security_protocol.startswith("SASL_")


def uses_tls(k: KafkaConfig) -> bool:
    return k.security_protocol in ("SSL", "SASL_SSL")


def sasl_password(k: KafkaConfig, environ: Mapping[str, str] | None = None) -> Secret:
    """The SASL password from ``kafka.sasl_password_file`` or the variable ``kafka.sasl_password_env`` names.

    A trailing newline of the file is dropped. Errors name the key and never the value.
    """
    if k.sasl_password_file:
        path = Path(k.sasl_password_file)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"kafka.sasl_password_file: cannot read {path}: {exc.strerror}") from None
        password = text.rstrip("\r\n")
        source = f"kafka.sasl_password_file ({path})"
    else:
        env = os.environ if environ is None else environ
        name = k.sasl_password_env
        if not name or name not in env:
            raise ConfigError(f"kafka.sasl_password_env: environment variable {name!r} is not set")
        password = env[name]
        source = f"kafka.sasl_password_env ({name})"
    if not password:
        raise ConfigError(f"{source}: the password is empty")
    return Secret(password)


def _jaas_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _read_pem(path: str, key: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"kafka.{key}: cannot read {path}: {exc.strerror}") from None


def java_client_properties(k: KafkaConfig, environ: Mapping[str, str] | None = None, *,
                           shaded: bool = True) -> ClientProperties:
    """Properties for the Java clients (the job's Kafka source and sinks, via ``set_property``).

    PEM files, not Java key stores: ``ssl.truststore.type=PEM`` with ``ssl.truststore.location``
    (the CA file must be readable at that path on every TaskManager); a client certificate goes
    in as ``ssl.keystore.type=PEM`` with ``ssl.keystore.certificate.chain`` and ``ssl.keystore.key``
    read from ``kafka.ssl_certfile``/``kafka.ssl_keyfile`` (Kafka's PEM key store takes an
    unencrypted PKCS#8 key). ``shaded``: the login module's relocated name (the sql connector jar).
    """
    props = ClientProperties({"security.protocol": k.security_protocol})
    if uses_sasl(k):
        module = (SHADED_PREFIX if shaded else "") + LOGIN_MODULES[k.sasl_mechanism]
        password = sasl_password(k, environ)
        props["sasl.mechanism"] = k.sasl_mechanism
        props["sasl.jaas.config"] = Secret(
            f"{module} required username={_jaas_quote(k.sasl_username)} password={_jaas_quote(password)};")
    if uses_tls(k):
        if k.ssl_cafile:
            props["ssl.truststore.type"] = "PEM"
            props["ssl.truststore.location"] = str(Path(k.ssl_cafile).resolve())
        if k.ssl_certfile:
            key = _read_pem(k.ssl_keyfile, "ssl_keyfile")
            if "BEGIN PRIVATE KEY" not in key:
                raise ConfigError("kafka.ssl_keyfile: the Java client takes an unencrypted PKCS#8 PEM key "
                                  "(-----BEGIN PRIVATE KEY-----); convert it with `openssl pkcs8 -topk8 -nocrypt`")
            props["ssl.keystore.type"] = "PEM"
            props["ssl.keystore.certificate.chain"] = _read_pem(k.ssl_certfile, "ssl_certfile")
            props["ssl.keystore.key"] = Secret(key)
    return props


def python_client_options(k: KafkaConfig, environ: Mapping[str, str] | None = None) -> ClientProperties:
    """Keyword arguments for kafka-python's ``KafkaProducer``/``KafkaConsumer``/``KafkaAdminClient``."""
    opts = ClientProperties({"security_protocol": k.security_protocol})
    if uses_sasl(k):
        opts["sasl_mechanism"] = k.sasl_mechanism
        opts["sasl_plain_username"] = k.sasl_username
        opts["sasl_plain_password"] = sasl_password(k, environ)
    if uses_tls(k):
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            value = getattr(k, name)
            if value:
                opts[name] = value
    return opts


# kafka-python's option names (python_client_options) as librdkafka names the same settings.
_LIBRDKAFKA_NAMES = {"security_protocol": "security.protocol", "sasl_mechanism": "sasl.mechanism",
                     "sasl_plain_username": "sasl.username", "sasl_plain_password": "sasl.password",
                     "ssl_cafile": "ssl.ca.location", "ssl_certfile": "ssl.certificate.location",
                     "ssl_keyfile": "ssl.key.location"}


def librdkafka_options(python_options: Mapping[str, Any] | None) -> ClientProperties:
    """:func:`python_client_options` for a librdkafka client (confluent-kafka: the serve view's consumer),
    so both kinds of client are configured from the one ``kafka.*`` section."""
    out = ClientProperties()
    for name, value in (python_options or {}).items():
        if name not in _LIBRDKAFKA_NAMES:
            raise ValueError(f"no librdkafka setting for the client option {name!r}")
        out[_LIBRDKAFKA_NAMES[name]] = value.lower() if name == "security_protocol" else value
    return out


def describe(k: KafkaConfig) -> str:
    """How clients authenticate, for messages: never the secret, only where it comes from."""
    if not uses_sasl(k):
        return k.security_protocol
    source = (f"password file {k.sasl_password_file}" if k.sasl_password_file
              else f"password from ${k.sasl_password_env}")
    return f"{k.security_protocol} {k.sasl_mechanism} as {k.sasl_username!r} ({source})"


def merged(base: Mapping[str, Any], security: Mapping[str, Any] | None) -> dict[str, Any]:
    """``base`` options with the security options on top (kept as :class:`ClientProperties`)."""
    out = ClientProperties(base)
    out.update(security or {})
    return out

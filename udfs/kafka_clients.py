"""Every Python Kafka client streamrec builds, in one place: producer, consumer, admin, bulk reader.

A :class:`KafkaClients` holds where the brokers are and the kafka-python security options
(:func:`udfs.kafka_security.python_client_options`); each client it builds gets them, and a
client that cannot log in to a SASL listener raises :class:`KafkaCredentialsError` naming who
tried and where the password came from (:func:`connect_errors`). Callers pass only what their
use needs (offsets, timeouts, fetch sizes). The job's Java clients are configured apart, by
:func:`udfs.kafka_security.java_client_properties`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError, KafkaTimeoutError, SaslAuthenticationFailedError

from udfs.config import KafkaConfig
from udfs.errors import UserError
from udfs.kafka_security import KafkaCredentialsError, librdkafka_options, merged, python_client_options

# A producer's defaults: batches of up to 256 KiB, flushed within 5 ms, every replica's ack.
PRODUCER_DEFAULTS: Mapping[str, Any] = {"linger_ms": 5, "acks": "all", "batch_size": 256 * 1024}
# The bulk reader joins no group (partitions are assigned), but librdkafka wants a group id.
FAST_CONSUMER_GROUP = "streamrec-serve"
# How long a kafka-python client tries to reach a broker before it gives up (its own default is 30 s):
# a wrong address or a stopped broker is then named within seconds, not after half a minute.
BOOTSTRAP_TIMEOUT_MS = 10_000


class KafkaUnreachable(UserError, KafkaError):
    """No broker answered at the configured address; a KafkaError too, for callers that only warn."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""  # KafkaError's own would prefix the class name


@dataclass(frozen=True)
class KafkaClients:
    """The clients of one cluster: ``bootstrap`` servers, kafka-python ``security`` options (None: none)."""

    bootstrap: str
    security: Mapping[str, Any] | None = None

    @classmethod
    def of(cls, kafka: KafkaConfig) -> KafkaClients:
        """The clients of ``kafka`` (the config's brokers and credentials)."""
        return cls(kafka.bootstrap_servers, python_client_options(kafka))

    def _options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        return merged({"bootstrap_servers": self.bootstrap, "bootstrap_timeout_ms": BOOTSTRAP_TIMEOUT_MS, **options},
                      self.security)

    def producer(self, **options: Any) -> Any:
        """A kafka-python producer (:data:`PRODUCER_DEFAULTS`, then ``options``)."""
        with connect_errors(self.bootstrap, self.security):
            return KafkaProducer(**self._options({**PRODUCER_DEFAULTS, **options}))

    def consumer(self, *topics: str, **options: Any) -> Any:
        """A kafka-python consumer, subscribed to ``topics`` when any are given."""
        with connect_errors(self.bootstrap, self.security):
            return KafkaConsumer(*topics, **self._options(options))

    def admin(self, **options: Any) -> Any:
        """A kafka-python admin client."""
        with connect_errors(self.bootstrap, self.security):
            return KafkaAdminClient(**self._options(options))

    def fast_consumer(self, **settings: Any) -> Any:
        """A librdkafka consumer (confluent-kafka, with the ``serve`` extra) for reading a topic in bulk:
        on the local broker it read 800-byte lists at 136,000/s where kafka-python's consumer read
        5,900/s, which made rebuilding a serve view take hours at a shop's size. Partitions are
        assigned, never subscribed, so the group id joins no group and commits nothing.
        ``settings``: librdkafka's names."""
        from confluent_kafka import Consumer  # lazy: the serve extra's client

        conf: dict[str, Any] = {"bootstrap.servers": self.bootstrap, "group.id": FAST_CONSUMER_GROUP,
                                "enable.auto.commit": False, **settings}
        conf.update(librdkafka_options(self.security))
        return Consumer(conf)


class _AuthFailures(logging.Filter):
    """Notes how far kafka-python's bootstrap got, from what it logs: it retries a refused login
    like a network error until its bootstrap timeout, then raises only "Unable to bootstrap"."""

    def __init__(self) -> None:
        super().__init__()
        self.refused: list[BaseException] = []
        self.authenticating = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("kafka.net.sasl."):
            self.authenticating = True  # the listener answered and took the mechanism
        args = record.args if isinstance(record.args, tuple) else ()
        self.refused.extend(a for a in args if isinstance(a, SaslAuthenticationFailedError))
        return True


# The SASL mechanisms warn (once per login) when they send credentials without TLS.
_NET_LOGGERS = ("kafka.net.manager", "kafka.net.connection", "kafka.net.sasl.plain", "kafka.net.sasl.scram")


@contextlib.contextmanager
def connect_errors(bootstrap: str, security: Mapping[str, Any] | None) -> Iterator[None]:
    """A client that reached no broker raises :class:`KafkaUnreachable` naming the address and what to
    check; one that could not bootstrap from a SASL listener raises :class:`KafkaCredentialsError`
    saying who tried and where the password came from (never the password).

    The broker may close the connection before kafka-python reads its "Invalid username or
    password" answer; a connection closed after the login was sent counts as refused too. Only
    when neither was seen (or with TLS, where the mechanisms log nothing) does the message leave
    open whether the broker is down.
    """
    opts = security or {}
    if not str(opts.get("security_protocol", "")).startswith("SASL_"):
        try:
            yield
        except KafkaTimeoutError as exc:
            raise KafkaUnreachable(
                f"no Kafka broker answered at {bootstrap} ({exc}): check kafka.bootstrap_servers "
                "(--bootstrap-servers, STREAMREC_KAFKA_BOOTSTRAP_SERVERS), that the broker runs (`streamrec kafka "
                "status` for the local one) and that this machine reaches it") from exc
        return
    watcher = _AuthFailures()
    loggers = [logging.getLogger(name) for name in _NET_LOGGERS]
    for logger in loggers:
        logger.addFilter(watcher)
    try:
        yield
    except KafkaError as exc:
        who = f"{opts['security_protocol']} {opts.get('sasl_mechanism')} as {opts.get('sasl_plain_username')!r}"
        if watcher.refused:
            why = f"the broker refused the credentials ({watcher.refused[-1]})"
        elif watcher.authenticating:
            why = "the broker closed the connection after the login was sent: the credentials were refused"
        else:
            why = f"{exc}: the broker is down or refused the credentials (its log says which)"
        raise KafkaCredentialsError(
            f"cannot connect to Kafka at {bootstrap} with {who}: {why}; check kafka.bootstrap_servers, "
            "kafka.sasl_username and the password (kafka.sasl_password_file or kafka.sasl_password_env)"
        ) from exc
    finally:
        for logger in loggers:
            logger.removeFilter(watcher)

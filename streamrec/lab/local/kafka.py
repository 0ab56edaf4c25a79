"""A real single-node Apache Kafka broker (KRaft) on loopback, for the demo, the CLI and tests.

The broker is the genuine ``kafka_2.13`` 4.2.0 from Maven Central (``scripts/fetch_deps.sh``
copies its classpath into the cache), so tests exercise the same protocol the Flink connector
speaks in production, without Docker or a system-wide install. It runs as a child JVM in its
own session: Ctrl-C in a terminal does not reach it, and stopping it never touches the caller.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from jobs.layout import FETCH_HINT, cache_dir
from jobs.scratch import process_alive
from udfs.errors import InputError, StreamrecError
from udfs.kafka_clients import KafkaClients

DEFAULT_PORT = 39092
DEFAULT_CONTROLLER_PORT = 39093
BROKER_MAIN = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"
_BIND_ERROR = "Address already in use"
_PORT_ATTEMPTS = 3

# Children started by this interpreter: their exit is observed with poll(), because a
# signalled child stays a zombie (and looks alive to kill(pid, 0)) until it is reaped.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}

_LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = OUT
logger.state.name = state.change.logger
logger.state.level = warn
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = warn
logger.coordinator.name = org.apache.kafka.coordinator
logger.coordinator.level = warn
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = warn
"""


class KafkaStartError(StreamrecError, RuntimeError):
    """The broker did not come up; the message carries the tail of its log."""


def kafka_classpath() -> str:
    """The broker's classpath; raises ``FileNotFoundError`` telling how to fetch missing jars."""
    libs = cache_dir() / "kafka" / "libs"
    jars = sorted(libs.glob("*.jar"))
    if not any(j.name.startswith("kafka_2.13-") for j in jars):
        raise FileNotFoundError(f"Kafka broker jars not found in {libs}: {FETCH_HINT}")
    return os.pathsep.join(str(j) for j in jars)


def free_ports(count: int = 2) -> list[int]:
    """Distinct ports the OS reports free right now; a race with other processes is still possible."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on the port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _cluster_id() -> str:
    """A Kafka-style cluster id (url-safe base64 of a random UUID, never starting with '-')."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def _admin(bootstrap: str, timeout_s: float = 10.0) -> Any:
    ms = int(timeout_s * 1000)
    return KafkaClients(bootstrap).admin(client_id="streamrec-kafka-local", request_timeout_ms=ms,
                                         bootstrap_timeout_ms=ms)


def create_topics(bootstrap: str, names: Iterable[str], partitions: int = 1,
                  timeout_s: float = 30.0, compacted: Iterable[str] = (),
                  append_time: Iterable[str] = ()) -> list[str]:
    """Create topics that do not exist yet and wait until all have leaders; returns the new ones.

    Idempotent, so callers may pass their full topic list on every start. ``compacted``: those
    of ``names`` that keep only each key's latest record (the item catalog). ``append_time``: those
    whose records the broker stamps when it appends them (``LogAppendTime``), not the producer when
    its client was handed them: a latency read from such a topic includes the producer's linger.
    """
    from kafka.errors import for_code

    wanted = list(dict.fromkeys(names))
    if not wanted:
        return []
    admin = _admin(bootstrap, timeout_s)
    try:
        compact = set(compacted)
        spec: dict[str, dict[str, Any]] = {n: {"num_partitions": partitions, "replication_factor": 1}
                                           for n in wanted}
        for name in compact & set(wanted):
            spec[name].setdefault("configs", {})["cleanup.policy"] = "compact"
        for name in set(append_time) & set(wanted):
            spec[name].setdefault("configs", {})["message.timestamp.type"] = "LogAppendTime"
        result = admin.create_topics(spec, timeout_ms=int(timeout_s * 1000), raise_errors=False)
        created = []
        for topic in result["topics"]:
            code = topic["error_code"]
            if code == 0:
                created.append(topic["name"])
            elif code != 36:  # TOPIC_ALREADY_EXISTS
                err = for_code(code)
                raise RuntimeError(f"creating topic {topic['name']!r} failed: {err.__name__} "
                                   f"{topic.get('error_message') or ''}".rstrip())
        admin.wait_for_topics(wanted, timeout_ms=int(timeout_s * 1000))
        return created
    finally:
        admin.close()


def pid_alive(pid: int) -> bool:
    """Whether the process runs: a child of ours by its Popen (which reaps it), any other by its pid."""
    child = _CHILDREN.get(pid)
    if child is not None:
        return child.poll() is None
    return process_alive(pid)


_alive = pid_alive


def _is_kafka(pid: int) -> bool:
    """Guards against a recycled pid in a stale state file."""
    try:
        return BROKER_MAIN.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid_alive(pid)


def _terminate(pid: int, timeout_s: float = 20.0) -> None:
    """SIGTERM the broker's process group (a clean shutdown), SIGKILL it if that takes too long."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + (timeout_s if sig == signal.SIGTERM else 5.0)
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.1)
        if not pid_alive(pid):
            break
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(5)


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no broker log)"
    return "\n".join(text.splitlines()[-lines:])


class LocalKafka:
    """One KRaft broker+controller on 127.0.0.1.

    ``port``/``controller_port`` of ``None`` pick free ports, and a start that loses the race
    for them (``Address already in use``) is retried with new ones; fixed ports are used as given.
    The data directory is formatted afresh on every start unless ``keep_data`` is true.

    ``sasl_users`` (``{user: password}``) adds a SASL_PLAINTEXT listener with the PLAIN mechanism
    on ``sasl_port`` (``None``: a free port), at :attr:`sasl_bootstrap`; the PLAINTEXT listener
    stays (inter-broker traffic and the readiness check use it). The passwords are written to
    ``server.properties`` in the data directory: for tests and local runs only.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int | None = None,
        controller_port: int | None = None,
        log_file: str | os.PathLike[str] | None = None,
        *,
        num_partitions: int = 1,
        heap: str = "512m",
        keep_data: bool = False,
        sasl_users: Mapping[str, str] | None = None,
        sasl_port: int | None = None,
    ) -> None:
        for user, password in (sasl_users or {}).items():
            if not user or any(c in f"{user}{password}" for c in '"\\\n\r;= '):
                raise InputError("sasl_users: names and passwords must be non-empty and free of quotes, "
                                 "backslashes, line breaks, ';', '=' and spaces")
        self.data_dir = Path(data_dir).resolve()
        self.log_file = Path(log_file).resolve() if log_file else self.data_dir / "broker.log"
        self._fixed_ports = port is not None or controller_port is not None
        self.port = port or 0
        self.controller_port = controller_port or 0
        self.sasl_users = dict(sasl_users or {})
        self._fixed_sasl_port = sasl_port is not None
        self.sasl_port = sasl_port or 0
        self.num_partitions = num_partitions
        self.heap = heap
        self.keep_data = keep_data
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def sasl_bootstrap(self) -> str:
        """Address of the SASL_PLAINTEXT (PLAIN) listener; only with ``sasl_users``."""
        if not self.sasl_users:
            raise InputError("this broker has no SASL listener (pass sasl_users)")
        return f"127.0.0.1:{self.sasl_port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def config_file(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "kraft-logs"

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 90.0) -> LocalKafka:
        """Format storage, launch the JVM and block until the broker answers metadata requests."""
        if self.is_running():
            return self
        classpath = kafka_classpath()
        t0 = time.monotonic()
        attempts = 1 if self._fixed_ports else _PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            self._choose_ports()
            log_start = self.log_file.stat().st_size if self.log_file.exists() else 0
            self._launch(classpath)
            try:
                self.wait_ready(timeout)
            except KafkaStartError:
                with self.log_file.open("rb") as log:
                    log.seek(log_start)
                    bind_conflict = _BIND_ERROR.encode() in log.read()
                self.stop()
                if bind_conflict and attempt < attempts:
                    self.port = self.controller_port = 0
                    if not self._fixed_sasl_port:
                        self.sasl_port = 0
                    self.keep_data = False
                    continue
                raise
            self.startup_s = time.monotonic() - t0
            return self
        raise AssertionError("unreachable")

    def _choose_ports(self) -> None:
        if self._fixed_ports:
            self.port = self.port or DEFAULT_PORT
            self.controller_port = self.controller_port or DEFAULT_CONTROLLER_PORT
            busy = [p for p in (self.port, self.controller_port, self.sasl_port) if p and port_open(p)]
            if busy:
                raise KafkaStartError(f"port(s) {busy} on 127.0.0.1 are already in use; "
                                      "stop whatever listens there or choose other ports")
        elif not (self.port and self.controller_port):
            self.port, self.controller_port = free_ports(2)
        if self.sasl_users and not self.sasl_port:
            taken = {self.port, self.controller_port}
            self.sasl_port = next(p for p in free_ports(3) if p not in taken)

    def _write_config(self) -> None:
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port},"
                                    f"CONTROLLER://127.0.0.1:{self.controller_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.log_dir),
            "num.partitions": str(self.num_partitions),
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            # Fewer internal partitions: the first consumer group comes up in well under a second.
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "num.network.threads": "2",
            "num.io.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
        }
        if self.sasl_users:
            sasl = f"SASL_PLAINTEXT://127.0.0.1:{self.sasl_port}"
            props["listeners"] += "," + sasl
            props["advertised.listeners"] += "," + sasl
            props["listener.security.protocol.map"] += ",SASL_PLAINTEXT:SASL_PLAINTEXT"
            props["sasl.enabled.mechanisms"] = "PLAIN"  # the broker's default is GSSAPI
            users = " ".join(f'user_{u}="{p}"' for u, p in self.sasl_users.items())
            props["listener.name.sasl_plaintext.plain.sasl.jaas.config"] = (
                f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};")
        self.config_file.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.data_dir / "log4j2.properties").write_text(_LOG4J2)

    def _launch(self, classpath: str) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        formatted = (self.log_dir / "meta.properties").is_file()
        if formatted and not self.keep_data:
            shutil.rmtree(self.log_dir)
            formatted = False
        self._write_config()
        # log4j's own shutdown hook would stop logging before Kafka's shutdown hook runs.
        common = ["-Djava.awt.headless=true", "-Dlog4j2.shutdownHookEnabled=false",
                  f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}", "-cp", classpath]
        with self.log_file.open("ab") as log:
            if not formatted:
                fmt = subprocess.run(
                    ["java", "-Xmx256m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", *common,
                     STORAGE_TOOL, "format", "--config", str(self.config_file),
                     "--cluster-id", _cluster_id(), "--standalone"],
                    stdout=log, stderr=subprocess.STDOUT, check=False, timeout=120)
                if fmt.returncode != 0:
                    raise KafkaStartError(f"formatting Kafka storage failed (exit {fmt.returncode}); "
                                          f"log {self.log_file}:\n{_log_tail(self.log_file)}")
            jvm = ["java", f"-Xmx{self.heap}", "-Xms64m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", *common]
            self.process = subprocess.Popen([*jvm, BROKER_MAIN, str(self.config_file)],
                                            stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        _CHILDREN[self.process.pid] = self.process

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Poll until the broker lists topics; raise with its log tail if it died or timed out."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise KafkaStartError(f"Kafka broker exited (code {code}) before it was ready; "
                                      f"log {self.log_file}:\n{_log_tail(self.log_file)}")
            if port_open(self.port):
                try:
                    admin = _admin(self.bootstrap, timeout_s=max(1.0, min(5.0, deadline - time.monotonic())))
                    try:
                        admin.list_topics()
                        return
                    finally:
                        admin.close()
                except Exception as exc:  # the broker may accept connections before it serves requests
                    last_error = exc
            time.sleep(0.2)
        raise KafkaStartError(f"Kafka broker at {self.bootstrap} not ready after {timeout:.0f} s "
                              f"(last error: {last_error!r}); log {self.log_file}:\n"
                              + _log_tail(self.log_file))

    def create_topics(self, names: Iterable[str], partitions: int = 1, compacted: Iterable[str] = (),
                      append_time: Iterable[str] = ()) -> list[str]:
        """Idempotently create topics on this broker; returns the names that were new."""
        return create_topics(self.bootstrap, names, partitions, compacted=compacted, append_time=append_time)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, wait up to ``timeout`` s for a clean shutdown, then SIGKILL."""
        if self.process is None:
            return
        if self.process.poll() is None:
            _terminate(self.process.pid, timeout)
        else:
            _CHILDREN.pop(self.process.pid, None)
        self.process.wait()

    def __enter__(self) -> LocalKafka:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


# --- persistent broker for the CLI and the demo ------------------------------------------------

def run_dir() -> Path:
    return cache_dir() / "kafka" / "run"


def _state_file() -> Path:
    return run_dir() / "state.json"


def _read_state() -> dict[str, Any] | None:
    try:
        return json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return None


def status() -> dict[str, Any] | None:
    """The background broker's state (pid, ports, bootstrap, log) if it runs and answers, else None."""
    state = _read_state()
    if not state:
        return None
    pid = int(state.get("pid", 0))
    if pid <= 0 or not pid_alive(pid) or not _is_kafka(pid) or not port_open(int(state["port"])):
        return None
    return state


def start_background(
    topics: Iterable[str] = (),
    port: int = DEFAULT_PORT,
    controller_port: int = DEFAULT_CONTROLLER_PORT,
    *,
    partitions: int = 1,
    timeout: float = 90.0,
    compacted: Iterable[str] = (),
) -> dict[str, Any]:
    """Start a broker that outlives this process (or reuse the running one) and create ``topics``.

    The state json under ``cache_dir()/kafka/run`` lets later ``status``/``stop_background``
    calls, possibly from other processes, find it.
    """
    topics = list(topics)
    state = status()
    if state is None:
        stale = _read_state()
        if stale and pid_alive(int(stale.get("pid", 0))) and _is_kafka(int(stale["pid"])):
            _terminate(int(stale["pid"]))  # running but not answering: replace it
        _state_file().unlink(missing_ok=True)
        broker = LocalKafka(run_dir() / "data", port, controller_port, run_dir() / "broker.log",
                            num_partitions=partitions)
        broker.start(timeout)
        assert broker.pid is not None
        state = {"pid": broker.pid, "port": broker.port, "controller_port": broker.controller_port,
                 "bootstrap": broker.bootstrap, "data_dir": str(broker.data_dir),
                 "log_file": str(broker.log_file), "started_at": time.time(),
                 "startup_s": round(broker.startup_s or 0.0, 2)}
        _state_file().write_text(json.dumps(state, indent=2))
    if topics:
        create_topics(state["bootstrap"], topics, partitions, compacted=compacted)
    return state


def stop_background(timeout: float = 20.0) -> bool:
    """Stop the background broker; returns whether one was running."""
    state = _read_state()
    running = False
    if state:
        pid = int(state.get("pid", 0))
        if pid > 0 and pid_alive(pid) and _is_kafka(pid):
            _terminate(pid, timeout)
            running = True
    _state_file().unlink(missing_ok=True)
    return running


def iter_children() -> Iterator[int]:
    """Pids of brokers this interpreter started and has not stopped (for leak checks in tests)."""
    return iter([pid for pid, p in _CHILDREN.items() if p.poll() is None])

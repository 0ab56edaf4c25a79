"""One validated, frozen configuration for the job and the CLI.

Precedence, lowest to highest: field defaults < config file (TOML) <
environment (``STREAMREC_<SECTION>_<FIELD>``) < command-line flags. Bad values
fail at start with the dotted key in the message, never mid-stream.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import tomllib
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from udfs.config_base import Section
from udfs.errors import UserError
from udfs.input_config import InputConfig

ENV_PREFIX = "STREAMREC_"
# The job's topics, by config field: one list for the job, the local broker and the tools.
TOPIC_FIELDS = ("input_topic", "output_topic", "dlq_topic", "late_topic", "catalog_topic", "feedback_topic",
                "control_topic")


class KafkaConfig(Section):
    bootstrap_servers: str = "127.0.0.1:39092"
    """Kafka bootstrap servers; the default is the broker `streamrec kafka start` runs."""
    input_topic: str = "behavior-events"
    """Topic of msgpack behavior events."""
    output_topic: str = "recommendations"
    """Topic the top-K lists are written to, keyed by user id."""
    dlq_topic: str = "behavior-events-dlq"
    """Dead-letter topic: malformed input with its original bytes and the reason."""
    late_topic: str = "behavior-events-late"
    """Events later than the allowed lateness, with the reason."""
    catalog_topic: str = Field("item-catalog", min_length=1)
    """Compacted topic of msgpack catalog records keyed by item id (docs/contracts.md 'Catalog'); a Kafka-source
    job joins it: out-of-stock and deleted items leave every list, new items reach similar shoppers."""
    control_topic: str = Field("model-control", min_length=1)
    """Topic of model announcements (`streamrec model publish`/`rollback`): a running job loads the announced
    version in the background and swaps to it between two events (docs/operations.md 'Hot swap and A/B tests')."""
    feedback_topic: str = Field("recommendation-feedback", min_length=1)
    """Topic of online feedback: per accepted event, whether its item was in the shopper's previous list and at
    which rank, with that list's model version and arm (docs/operations.md 'Online feedback')."""
    group_id: str = "streamrec-job"
    """Consumer group of the job's Kafka source."""
    starting_offsets: Literal["earliest", "latest", "committed"] = "earliest"
    """Where the job starts reading when it has no checkpoint."""
    delivery_guarantee: Literal["at-least-once", "exactly-once", "none"] = "at-least-once"
    """KafkaSink delivery guarantee."""
    transactional_id_prefix: str = "streamrec"
    """Stable prefix of sink transactional ids (exactly-once only); the job name and topic follow it."""
    transaction_timeout_ms: int = Field(900_000, ge=1000)
    """Kafka transaction timeout of the exactly-once sinks; checked at start against the broker's
    transaction.max.timeout.ms."""
    sink_linger_ms: int = Field(20, ge=0, le=1000)
    """Producer linger of the job's sinks: a longer wait sends fewer, larger requests. At 5 (with a
    5 ms source fetch wait, when the source still waited for 16 KiB) lists came 28 ms after their events
    at 250 events/s instead of 47, and the peak at parallelism 2 fell 15% (docs/benchmarks.md)."""
    source_fetch_max_wait_ms: int = Field(20, ge=0, le=10000)
    """Longest the broker holds a fetch of the job's source while fewer than source_fetch_min_bytes are
    there: with min bytes 1, how often an idle source asks (50 times a second at 20)."""
    source_fetch_min_bytes: int = Field(1, ge=1)
    """Bytes the broker waits for before answering a fetch of the job's source. 1 answers as soon as an
    event is there, and a backlog's fetches are full anyway; at 16 KiB each event of a stream paced below
    that size waited up to source_fetch_max_wait_ms (docs/benchmarks.md)."""
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """How every client (the job, the CLI, the peer, the bench) talks to the brokers."""
    sasl_mechanism: Literal["", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = ""
    """SASL mechanism; required with SASL_PLAINTEXT and SASL_SSL."""
    sasl_username: str = ""
    """SASL user name; required with SASL_PLAINTEXT and SASL_SSL."""
    sasl_password_file: str = ""
    """File holding the SASL password (one trailing newline ignored); never put the password itself in the config."""
    sasl_password_env: str = ""
    """Name of an environment variable holding the SASL password (instead of sasl_password_file)."""
    ssl_cafile: str = ""
    """PEM file of the CA certificates that sign the brokers' certificates (SSL, SASL_SSL; default: the system's)."""
    ssl_certfile: str = ""
    """PEM client certificate (chain) for TLS client authentication; needs ssl_keyfile."""
    ssl_keyfile: str = ""
    """Unencrypted PKCS#8 PEM private key of ssl_certfile."""

    def topics(self) -> dict[str, str]:
        """Every topic the job reads or writes, by config field (see ``TOPIC_FIELDS``)."""
        return {f: str(getattr(self, f)) for f in TOPIC_FIELDS}

    @model_validator(mode="after")
    def _security_checks(self, info: ValidationInfo) -> KafkaConfig:
        """Fail at start, naming the key: a secured broker misconfigured fails every client later.
        Only where the password lives is checked here (it is read when a client is built)."""
        protocol = self.security_protocol
        sasl = protocol.startswith("SASL_")
        if sasl:
            if not self.sasl_mechanism:
                raise ValueError(f"kafka.sasl_mechanism is required with kafka.security_protocol {protocol} "
                                 "(PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)")
            if not self.sasl_username:
                raise ValueError(f"kafka.sasl_username is required with kafka.security_protocol {protocol}")
            if bool(self.sasl_password_file) == bool(self.sasl_password_env):
                raise ValueError(f"kafka.security_protocol {protocol} needs exactly one of kafka.sasl_password_file "
                                 "and kafka.sasl_password_env (where the password is read from)")
            if any(c in self.sasl_username for c in "\"\\\n\r"):
                raise ValueError("kafka.sasl_username must not contain quotes, backslashes or line breaks")
            if self.sasl_password_env:
                context = info.context if isinstance(info.context, Mapping) else {}
                environ = context.get("environ", os.environ)
                if self.sasl_password_env not in environ:
                    raise ValueError(f"kafka.sasl_password_env: environment variable "
                                     f"{self.sasl_password_env!r} is not set")
        else:
            for key in ("sasl_mechanism", "sasl_username", "sasl_password_file", "sasl_password_env"):
                if getattr(self, key):
                    raise ValueError(f"kafka.{key} is set but kafka.security_protocol is {protocol}: "
                                     "SASL needs SASL_PLAINTEXT or SASL_SSL")
        if protocol not in ("SSL", "SASL_SSL"):
            for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
                if getattr(self, key):
                    raise ValueError(f"kafka.{key} is set but kafka.security_protocol is {protocol}: "
                                     "TLS needs SSL or SASL_SSL")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ValueError("kafka.ssl_certfile and kafka.ssl_keyfile go together (client certificate and its key)")
        for key in ("sasl_password_file", "ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, key)
            if path and not Path(path).is_file():
                raise ValueError(f"kafka.{key}: file not found: {path}")
        return self


class StateConfig(Section):
    max_seq_len: int = Field(50, ge=1, le=1000)
    """Most recent events kept per user (the model's sequence length)."""
    seq_window_s: Annotated[int, Field(ge=60)] | Literal["auto"] = "auto"
    """Events older than this (event time, seconds) leave the recent sequence; auto keeps the model artifact's
    window, the span of its training log (the model has seen no older history)."""
    max_categories: int = Field(20, ge=1, le=1000)
    """Category-affinity entries kept per user (lowest evicted)."""
    category_half_life_s: int = Field(86400, ge=1)
    """Half-life of the time decay on category affinity."""
    max_bought: int = Field(100, ge=0, le=10000)
    """Bought items remembered per user so they are never recommended again."""
    max_bytes: int = Field(16 * 1024, ge=4096, le=1 << 20)
    """Largest stored state per user; past it the oldest entries go (only long string ids get there)."""
    ttl_s: int = Field(14 * 86400, ge=60)
    """Processing-time TTL of a user's state: idle users cost nothing."""


class CatalogConfig(Section):
    """Every instance of the job holds the whole catalog: these bound it (sized for a million items)."""

    max_items: int = Field(2_000_000, ge=1)
    """Items each instance holds (deleted ones too: they must stay blocked); at it, a record for another item is
    a dead letter (catalog_full) and counted (catalog_refused)."""
    max_title_words: int = Field(32, ge=0, le=256)
    """Title words of a new item indexed for similarity (its first ones); the rest are counted
    (catalog_title_words_dropped)."""
    max_index_keys: int = Field(1_000_000, ge=1)
    """Categories, brands and title words in the new-item index; at it, the key least recently added to is evicted
    (catalog_index_evicted)."""


class ItemsConfig(Section):
    """Item knowledge that learns from the stream (udfs/item_knowledge.py): every event's co-visitation
    pairs update per-item rows in keyed, checkpointed state, seeded from the artifact's table."""

    online: bool = True
    """Rows learn from every event (two keyed steps before the recommend function); false: the artifact's
    table as trained, frozen."""
    window: int = Field(5, ge=1, le=50)
    """A shopper's earlier events a new one pairs with (within the artifact's co-visitation window in time)."""
    max_entries: int = Field(100, ge=1, le=10_000)
    """Neighbours one item's row keeps; past it the weakest gives its place (Space-Saving)."""
    emit: int = Field(50, ge=1, le=1000)
    """Strongest neighbours of the touched item sent on with each event."""
    kept_rows: int = Field(3, ge=1, le=50)
    """Fresh rows a shopper keeps in state, for their most recent distinct items (older items use the
    artifact's rows)."""
    half_life_s: int = Field(0, ge=0)
    """Time decay of the rows' counts (0: none, as the artifact's table counts)."""
    ttl_s: int = Field(30 * 86400, ge=60)
    """Processing-time TTL of an item's row: items nobody touches cost nothing."""

    @model_validator(mode="after")
    def _emit_fits(self) -> ItemsConfig:
        if self.emit > self.max_entries:
            raise ValueError(f"items.emit ({self.emit}) must not exceed items.max_entries ({self.max_entries})")
        return self


class JobConfig(Section):
    parallelism: int = Field(1, ge=1, le=256)
    """Flink parallelism of the job."""
    execution_mode: Literal["thread", "process"] = "thread"
    """PyFlink Python execution mode; thread mode is ~9x faster on keyed state here."""
    out_of_orderness_ms: int = Field(5000, ge=0)
    """Bounded out-of-orderness of the event-time watermark."""
    allowed_lateness_ms: int = Field(0, ge=0)
    """Extra lateness tolerated behind the watermark before an event counts as late."""
    source_idleness_ms: int = Field(30_000, ge=0)
    """A Kafka partition without records for this long stops holding the watermark back (0: never)."""
    max_future_skew_ms: int = Field(300000, ge=0)
    """Dead-letter events with ts past wall-clock now + this: a far-future ts would make every later event late."""
    checkpoint_interval_ms: int = Field(10000, ge=0)
    """Checkpoint interval; 0 disables checkpointing."""
    state_backend: Literal["hashmap", "rocksdb"] = "hashmap"
    """Flink state backend."""
    since_ms: int = Field(0, ge=0)
    """Emit recommendations only for events at or after this time (state is built from all)."""
    python_bundle_size: int = Field(50, ge=1)
    """PyFlink `python.fn-execution.bundle.size`."""
    python_bundle_time_ms: int = Field(5, ge=1)
    """PyFlink `python.fn-execution.bundle.time`, bounds latency added by bundling."""
    buffer_timeout_ms: int = Field(5, ge=0)
    """Flink `execution.buffer-timeout`: longest a record waits in a network buffer at each shuffle (three
    with online item knowledge). Flink's own 100 added ~80 ms to the median list at 250 events/s, 10 about
    8 ms more than 5, and 2 doubled p99 at that rate (docs/benchmarks.md)."""
    name: str = Field("streamrec", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    """Job name: names the Flink job, its checkpoint folder and its sinks' transactional ids."""
    checkpoint_dir: str = "checkpoints"
    """Checkpoint storage: a local path (made absolute at start) or a Flink filesystem URI (file://, s3://,
    hdfs://) every TaskManager can reach; each job writes under <dir>/<name>."""
    checkpoint_retention: Literal["retain", "delete"] = "retain"
    """Keep the last checkpoint when the job is cancelled, so a restart can resume from it."""
    incremental_checkpoints: bool = True
    """RocksDB only: each checkpoint uploads only the state files written since the last one."""
    tolerable_checkpoint_failures: int = Field(3, ge=0)
    """Consecutive failed checkpoints the job tolerates before it restarts."""
    restart_strategy: Literal["exponential-delay", "fixed-delay", "none"] = "exponential-delay"
    """What Flink does after a failure: restart with a growing delay, a fixed delay, or fail the job."""
    restart_attempts: int = Field(10, ge=1)
    """Restarts before the job fails: in a row for fixed-delay, before the backoff resets for exponential."""
    restart_delay_ms: int = Field(1000, ge=0)
    """Delay before a restart (fixed-delay), or the first delay (exponential-delay)."""
    restart_max_delay_ms: int = Field(60_000, ge=0)
    """Longest delay between restarts with exponential-delay."""
    resume_from: str = ""
    """Start from this checkpoint or savepoint (a path or URI); `latest` is the newest retained checkpoint
    under checkpoint_dir/<name>; empty starts fresh."""
    bind_address: str = "127.0.0.1"
    """Address a local run's REST API and blob server bind to; job submission over REST is off."""
    rest_port: int = Field(0, ge=0, le=65535)
    """REST port of a local run, for checkpoint and restart metrics (0: any free port)."""
    rest_auth: Literal["mtls", "none"] = "mtls"
    """A local run's REST API: `mtls` takes only clients that present the run's own certificate (from
    rest_tls_dir), so nobody else on the machine submits a job to it; `none` is open to every local user.
    A job submitted with `flink run` leaves this to its cluster."""
    rest_tls_dir: str = ""
    """Folder of the local REST certificate (made on first use, owner-only); empty: <cache>/rest-tls."""


class RankingConfig(Section):
    artifact_dir: str = "artifacts/model"
    """Directory of the exported model artifact (manifest.json, model.onnx, tables)."""
    registry_dir: str = "artifacts/registry"
    """Model registry: one folder per model_version, each a verified artifact (`streamrec model publish`);
    the job loads announced and A/B versions from it."""
    model_load_timeout_s: float = Field(60, gt=0, le=3600)
    """Longest one model load may take (verify, open the session, warm up): a slower announced version is
    refused; after a restore each kept version gets this long, newest first, before the next is tried and,
    when none loads, artifact_dir serves."""
    top_k: int = Field(20, ge=1, le=1000)
    """Length of each emitted recommendation list."""
    n_candidates: int = Field(100, ge=1, le=5000)
    """Candidates scored per event."""
    provider: Literal["auto", "cuda", "cpu"] = "auto"
    """onnxruntime provider: auto uses CUDA when present and reports a CPU fallback."""
    io_binding: Literal["auto", "on", "off"] = "auto"
    """onnxruntime IO binding with reused buffers; auto turns it on for CUDA."""
    intra_op_threads: int = Field(1, ge=0, le=64)
    """onnxruntime intra-op threads per session (0 = onnxruntime default)."""
    trending_half_life_s: int = Field(600, ge=0)
    """Half-life of the in-stream trending counts that lead trending candidates (0 = artifact list only)."""
    fresh_hit_slots: int = Field(1, ge=0, le=10)
    """Last list slots kept for in-stream hits the model has never seen (it cannot rank them yet; 0 = none)."""
    new_item_slots: int = Field(1, ge=0, le=10)
    """List slots kept, before the fresh-hit slots, for new catalog items with no behavior yet that are like what
    the shopper touched (the model cannot rank them yet; 0 = none; needs the catalog join)."""
    bought_items: Literal["auto", "exclude", "keep"] = "auto"
    """Items a shopper bought as candidates for their lists: auto follows the model artifact, whose training
    log decided it (excluded unless shoppers there came back to bought items at least as often as to items
    they only touched); exclude or keep overrule it (a shop's policy)."""
    max_per_category: int = Field(5, ge=0, le=1000)
    """Diversity: at most this many items of one category in a list, best first; over-cap items fill the
    tail only when too few categories remain (0 = off: lists in score order; a cap >= top_k never applies).
    The default is measured: docs/model.md 'Diversity'."""
    batching: bool = False
    """Rank many shoppers' candidates in one model call: a second stage, keyed by a shard of the shopper,
    buffers scoring requests in checkpointed state and calls the model per batch (docs/design.md 'Batched ranking')."""
    batch_rows: int = Field(4096, ge=1, le=1 << 20)
    """With batching: a buffer is ranked as soon as it holds this many candidate rows."""
    batch_timeout_ms: int = Field(20, ge=1, le=60_000)
    """With batching: the longest a request waits in a buffer before it is ranked with whatever is there."""
    batch_shards: int = Field(0, ge=0, le=4096)
    """With batching: buffers (shards of the shoppers) in the job; each subtask of the ranking stage holds
    an equal share (0 = one per subtask, job.parallelism)."""


class PrivacyConfig(Section):
    pseudonymize: bool = False
    """Replace user ids by HMAC-SHA256(key, id) where they are read: state, outputs, late and dead-letter topics
    and logs then hold no raw user id (`streamrec pseudonym ID` gives the storefront the same key)."""
    key_file: str = ""
    """File holding the pseudonym key (at least 32 bytes; trailing whitespace ignored); never put the key itself
    in the config."""
    key_env: str = ""
    """Name of an environment variable holding the pseudonym key (instead of key_file)."""
    keep_raw_dead_letters: bool = False
    """With pseudonymize: dead letters keep the raw bytes (which hold the raw user id) and the full reason; off,
    only the reason code and the length."""

    @property
    def redact_dead_letters(self) -> bool:
        """Dead letters lose raw bytes and reason detail: pseudonymous and not told to keep them."""
        return self.pseudonymize and not self.keep_raw_dead_letters

    @model_validator(mode="after")
    def _key_source(self, info: ValidationInfo) -> PrivacyConfig:
        """Fail at start, naming the key: where the key lives is checked here, the key when the job starts."""
        if self.key_file and self.key_env:
            raise ValueError("privacy.key_file and privacy.key_env are both set: name one source of the key")
        if not self.pseudonymize:
            return self
        if not (self.key_file or self.key_env):
            raise ValueError("privacy.pseudonymize needs privacy.key_file or privacy.key_env (where the pseudonym "
                             "key is read from)")
        if self.key_file and not Path(self.key_file).is_file():
            raise ValueError(f"privacy.key_file: file not found: {self.key_file}")
        if self.key_env:
            context = info.context if isinstance(info.context, Mapping) else {}
            if self.key_env not in context.get("environ", os.environ):
                raise ValueError(f"privacy.key_env: environment variable {self.key_env!r} is not set")
        return self


class ServeConfig(Section):
    bind_address: str = "127.0.0.1"
    """Address `streamrec serve` listens on (0.0.0.0 in a container)."""
    port: int = Field(8080, ge=1, le=65535)
    """HTTP port of `streamrec serve`."""
    store: Literal["sqlite", "redis"] = "sqlite"
    """Where the view (latest list per shopper, topic positions read) is kept: "sqlite" (store_path) or "redis"
    (redis_url; the redis client comes with the serve extra). Either survives restarts; an empty one is rebuilt
    from the recommendations topic."""
    store_path: str = "serve/recommendations.sqlite"
    """SQLite file holding the latest list per shopper and the topic positions read (store "sqlite"); it survives
    restarts, and a missing file is rebuilt from the recommendations topic."""
    redis_url: str = Field("redis://127.0.0.1:6379/0", pattern=r"^(redis|rediss|unix)://\S+$")
    """Redis server of store "redis" (redis://HOST:PORT/DB, rediss:// for TLS, unix://PATH); its persistence
    (AOF or RDB) decides whether the view outlives a Redis restart."""
    redis_prefix: str = Field("streamrec:serve", pattern=r"^[A-Za-z0-9_.:-]+$")
    """Prefix of every Redis key of the view, so one Redis can hold other data (or another service's view)."""
    trending_size: int = Field(20, ge=1, le=1000)
    """Length of the trending list an unknown shopper gets."""
    trending_window: int = Field(1000, ge=10, le=1_000_000)
    """The trending list counts the items of this many most recent lists."""
    api_token_file: str = ""
    """File holding the bearer token every request must send (Authorization: Bearer TOKEN; at least 16 bytes,
    trailing whitespace ignored); required when bind_address is beyond loopback. Never put the token itself in
    the config."""
    api_token_env: str = ""
    """Name of an environment variable holding the bearer token (instead of api_token_file)."""
    allowed_hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
    """Host header names (without the port) the service answers; any other is a 400, so a page of another site
    cannot reach it by DNS rebinding. "*" allows any. In the environment: comma-separated."""
    allowed_origins: tuple[str, ...] = ()
    """Origins (scheme://host[:port]) besides the service's own from which a browser may POST; a write from any
    other Origin is a 403. In the environment: comma-separated."""
    accept_events: bool = False
    """Accept POST /v1/events (the page's view, cart and buy buttons write to the input topic); off: 403."""
    list_users: bool = False
    """Answer GET /v1/users (the page's shopper picker: who got a list last); off: 403."""

    @field_validator("allowed_hosts", "allowed_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        """From the environment or a flag a list comes as one comma-separated string."""
        if isinstance(value, str):
            return tuple(v.strip().lower() for v in value.split(",") if v.strip())
        return value

    @model_validator(mode="after")
    def _access(self, info: ValidationInfo) -> ServeConfig:
        """Fail at start, naming the key: where the token lives is checked here, the token when serve starts."""
        if self.api_token_file and self.api_token_env:
            raise ValueError("serve.api_token_file and serve.api_token_env are both set: name one source of the token")
        if self.api_token_file and not Path(self.api_token_file).is_file():
            raise ValueError(f"serve.api_token_file: file not found: {self.api_token_file}")
        if self.api_token_env:
            context = info.context if isinstance(info.context, Mapping) else {}
            if self.api_token_env not in context.get("environ", os.environ):
                raise ValueError(f"serve.api_token_env: environment variable {self.api_token_env!r} is not set")
        if not is_loopback(self.bind_address) and not (self.api_token_file or self.api_token_env):
            raise ValueError(f"serve.bind_address {self.bind_address} is beyond loopback: set serve.api_token_file "
                             "or serve.api_token_env (every request then needs the token)")
        return self


def is_loopback(address: str) -> bool:
    """Whether a bind address is reachable from this machine only."""
    if address.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve beyond loopback


class ArmConfig(Section):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    """The arm's name, carried by every list it ranks."""
    model_version: str = Field(min_length=1)
    """The registry version this arm ranks with; "live" follows the announced version (or ranking.artifact_dir)."""
    share: float = Field(gt=0, le=1)
    """Share of shoppers in this arm; the shares of all arms add up to 1."""


class AbConfig(Section):
    arms: tuple[ArmConfig, ...] = ()
    """Experiment arms (docs/operations.md 'Hot swap and A/B tests'); empty: no experiment, every list ranked by
    the live model."""
    salt: str = Field("streamrec-ab", min_length=1)
    """Salt of the shopper hash that assigns arms: a new salt reshuffles shoppers for a new experiment."""

    @field_validator("arms", mode="before")
    @classmethod
    def _arms_from_json(cls, value: Any) -> Any:
        """From the environment (STREAMREC_AB_ARMS) or a flag the arms come as one JSON list of maps."""
        if isinstance(value, str):
            try:
                return json.loads(value) if value.strip() else ()
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a JSON list of {{name, model_version, share}} maps: {exc}") from None
        return value

    @model_validator(mode="after")
    def _arms(self) -> AbConfig:
        if not self.arms:
            return self
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"ab.arms: arm names must be unique, got {names}")
        total = sum(a.share for a in self.arms)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"ab.arms: shares must add up to 1, got {total:g}")
        return self


class MetricsConfig(Section):
    prometheus_port: str = Field("0", pattern=r"^(0|[1-9][0-9]{0,4}(-[1-9][0-9]{0,4})?)$")
    """Port (or range, e.g. 9249-9259: one per JobManager/TaskManager process) of Flink's Prometheus reporter
    in the job; 0: no reporter."""


class Config(Section):
    kafka: KafkaConfig = KafkaConfig()
    input: InputConfig = InputConfig()
    state: StateConfig = StateConfig()
    catalog: CatalogConfig = CatalogConfig()
    job: JobConfig = JobConfig()
    ranking: RankingConfig = RankingConfig()
    items: ItemsConfig = ItemsConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    serve: ServeConfig = ServeConfig()
    metrics: MetricsConfig = MetricsConfig()
    ab: AbConfig = AbConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        if self.ranking.top_k > self.ranking.n_candidates:
            raise ValueError(
                f"ranking.top_k ({self.ranking.top_k}) must not exceed "
                f"ranking.n_candidates ({self.ranking.n_candidates})"
            )
        if self.ab.arms and self.ranking.batching:
            raise ValueError("ab.arms needs ranking.batching = false: the batched ranking stage holds one model")
        if self.kafka.delivery_guarantee == "exactly-once":
            if not self.job.checkpoint_interval_ms:
                raise ValueError("kafka.delivery_guarantee exactly-once needs job.checkpoint_interval_ms > 0: "
                                 "its transactions commit on checkpoints, so without them nothing is ever published")
            if self.kafka.transaction_timeout_ms <= 2 * self.job.checkpoint_interval_ms:
                raise ValueError(
                    f"kafka.transaction_timeout_ms ({self.kafka.transaction_timeout_ms}) must exceed twice "
                    f"job.checkpoint_interval_ms ({self.job.checkpoint_interval_ms}): a transaction stays open "
                    "from one checkpoint to the next, and through a restart")
        return self


class ConfigError(UserError, ValueError):
    """Invalid configuration; the message names the offending key."""


SECTIONS: dict[str, type[Section]] = {
    "kafka": KafkaConfig,
    "input": InputConfig,
    "state": StateConfig,
    "catalog": CatalogConfig,
    "job": JobConfig,
    "ranking": RankingConfig,
    "items": ItemsConfig,
    "privacy": PrivacyConfig,
    "serve": ServeConfig,
    "metrics": MetricsConfig,
    "ab": AbConfig,
}


def env_var(section: str, field: str) -> str:
    return f"{ENV_PREFIX}{section.upper()}_{field.upper()}"


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for section, model in SECTIONS.items():
        for field in model.model_fields:
            name = env_var(section, field)
            if name in environ:
                found.setdefault(section, {})[field] = environ[name]
    return found


def _format_error(err: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration ({origin}):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        value = e.get("input")
        if isinstance(value, Mapping):  # a whole section: the message names the key
            lines.append(f"  {key}: {e['msg']}")
        elif _looks_secret(key):
            lines.append(f"  {key}: {e['msg']} (value hidden: keep secrets out of the config, "
                         "see kafka.sasl_password_file and privacy.key_file, or their _env forms)")
        else:
            lines.append(f"  {key}: {e['msg']} (got {value!r})")
    return "\n".join(lines)


def _looks_secret(key: str) -> bool:
    """A key (say a stray ``kafka.sasl_password``) whose value must not be echoed in an error."""
    last = key.rsplit(".", 1)[-1].lower()
    if last == "key" or last.endswith("_key"):  # a stray privacy.key or privacy.hmac_key
        return True
    return (any(w in last for w in ("password", "secret", "token", "jaas"))
            and not last.endswith(("_file", "_env")))


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the config from file, environment and overrides (flags)."""
    data: dict[str, Any] = {}
    origin = "defaults"
    env = os.environ if environ is None else environ
    path = path or env.get(f"{ENV_PREFIX}CONFIG")
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p} (from --config or {ENV_PREFIX}CONFIG)")
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from exc
        origin = str(p)
    data = _deep_merge(data, _from_env(env))
    if overrides:
        data = _deep_merge(data, {s: dict(v) for s, v in overrides.items() if v})
    try:
        return Config.model_validate(data, context={"environ": env})
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, origin + " + environment + flags")) from None

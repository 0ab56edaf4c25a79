"""The local broker and the data in and out of Kafka: kafka, replay, consume, generate, catalog, pseudonym, forget."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from streamrec import progress
from streamrec.catalog_files import (
    catalog_for_events,
    catalog_path,
    catalog_records,
    read_catalog_file,
    write_catalog_jsonl,
)
from streamrec.cli.common import (
    add_log_flags,
    add_no_progress,
    log_source,
)
from streamrec.kafka_io import consume, erase_record, produce, replay
from streamrec.lab.generator import generate_events
from streamrec.lab.local import kafka as kafka_local
from udfs.config import ConfigError
from udfs.events import InvalidId, canonical_id
from udfs.flags import add_config_flags, add_flag, config_from_args
from udfs.kafka_security import python_client_options
from udfs.logs import load_events, write_events_msgpack, write_userbehavior_csv
from udfs.privacy import load_key
from udfs.records import TOMBSTONE_FIELD


def cmd_kafka(args: argparse.Namespace) -> int:
    kafka = config_from_args(args).kafka
    # The control topic too (compacted: the last announcement is what a starting job needs);
    # it is not in TOPIC_FIELDS, whose topics the job's own startup reads or writes.
    topics = [*kafka.topics().values(), kafka.control_topic]
    if args.action == "start":
        info = kafka_local.start_background(topics=topics, compacted=[kafka.catalog_topic, kafka.control_topic])
        print(info["bootstrap"])
    elif args.action == "stop":
        stopped = kafka_local.stop_background()
        print("stopped" if stopped else "not running")
    else:
        current = kafka_local.status()
        if not current:
            print("not running")
            return 1
        print(current["bootstrap"])
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    fmt, layout = log_source(args)
    events = load_events(args.events, fmt, sort=True, layout=layout)
    if args.limit:
        events = events[: int(args.limit)]
    topic = args.topic or cfg.kafka.input_topic
    progress.set_enabled(not args.no_progress)
    stats = replay(events, cfg.kafka.bootstrap_servers, topic, rate=float(args.rate or 0),
                   security=python_client_options(cfg.kafka), progress=f"replay -> {topic}")
    print(json.dumps({"sent": stats.sent, "topic": topic, "seconds": round(stats.seconds, 2),
                      "events_per_s": round(stats.rate, 1)}))
    return 0


def cmd_consume(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    topic = args.topic or cfg.kafka.output_topic
    max_n = int(args.max) if args.max else None
    for rec in consume(cfg.kafka.bootstrap_servers, topic, max_records=max_n, timeout_s=float(args.timeout),
                       security=python_client_options(cfg.kafka), tombstones=True):
        value = rec.value
        if rec.tombstone:  # the shopper under this key was erased
            value = {TOMBSTONE_FIELD: (rec.key or b"").decode("utf-8", "replace")}
        if isinstance(value, dict) and isinstance(value.get("raw"), bytes):
            value = {**value, "raw": value["raw"].hex()}
        print(json.dumps(value, default=str), flush=True)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    events = generate_events(
        int(args.n_events), n_users=int(args.users), n_items=int(args.items),
        n_categories=int(args.categories), seed=int(args.seed),
        start_ts_ms=1_700_000_000_000, duration_s=int(args.duration_s),
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    n = write_userbehavior_csv(events, out) if out.suffix == ".csv" else write_events_msgpack(events, out)
    # The demo and the tests publish it with `streamrec catalog publish --file`.
    catalog = catalog_path(out)
    n_items = write_catalog_jsonl(catalog_for_events(events, int(args.seed), 1_700_000_000_000), catalog)
    print(json.dumps({"events": n, "out": str(out), "catalog_items": n_items, "catalog": str(catalog)}))
    return 0


def cmd_catalog(args: argparse.Namespace) -> int:
    """Publish a catalog file to the catalog topic; bad rows are named and left out, as the job would."""
    cfg = config_from_args(args)
    found = read_catalog_file(Path(args.file))
    for line, reason in found.rejected[:20]:
        print(f"{args.file}:{line}: {reason}", file=sys.stderr)
    topic = args.topic or cfg.kafka.catalog_topic
    stats = produce(cfg.kafka.bootstrap_servers, topic, catalog_records(found.items),
                    security=python_client_options(cfg.kafka))
    print(json.dumps({"published": stats.sent, "rejected": len(found.rejected), "topic": topic}))
    return 1 if found.rejected else 0


def cmd_pseudonym(args: argparse.Namespace) -> int:
    """One pseudonym per line, in the order given: the Kafka key and user_id of that shopper's lists."""
    key = load_key(config_from_args(args).privacy)
    for user_id in args.ids:
        print(key.pseudonym(user_id))
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    """Erase shoppers: one erase request per id on the input topic, which the job turns into dropped
    state and a tombstone for the shopper's list (docs/operations.md "Erasing a shopper")."""
    cfg = config_from_args(args)
    try:
        users = [canonical_id(raw, "user_id") for raw in args.ids]
    except InvalidId as exc:
        raise ConfigError(f"ID: {exc.reason}") from exc
    topic = args.topic or cfg.kafka.input_topic
    stats = produce(cfg.kafka.bootstrap_servers, topic, [erase_record(u) for u in users],
                    security=python_client_options(cfg.kafka))
    print(json.dumps({"erase_requests": stats.sent, "topic": topic, "user_ids": users}))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the kafka, replay, consume, generate, catalog, pseudonym, forget commands."""
    p = sub.add_parser("kafka", help="the local Kafka broker (KRaft, loopback)")
    p.add_argument("action", choices=["start", "stop", "status"])
    add_config_flags(p, ["--input-topic", "--output-topic", "--dlq-topic", "--catalog-topic", "--control-topic"])
    p.set_defaults(func=cmd_kafka)

    p = sub.add_parser("replay", help="produce behavior events to Kafka")
    add_flag(p, "replay", "--events", "events file", required=False)
    add_log_flags(p, "replay")
    add_flag(p, "replay", "--rate", "events per second, 0 = unthrottled", default="0")
    add_flag(p, "replay", "--limit", "send at most this many events")
    add_flag(p, "replay", "--topic", "topic (default: kafka.input_topic)")
    add_config_flags(p, ["--bootstrap-servers"])
    add_no_progress(p)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("consume", help="print output records as JSON lines")
    add_flag(p, "consume", "--topic", "topic (default: kafka.output_topic)")
    add_flag(p, "consume", "--max", "stop after this many records")
    add_flag(p, "consume", "--timeout", "stop after this many idle seconds", default="10")
    add_config_flags(p, ["--bootstrap-servers"])
    p.set_defaults(func=cmd_consume)

    p = sub.add_parser("generate", help="write a seeded synthetic behavior log")
    add_flag(p, "generate", "--out", "output file (.msgpack or .csv)", required=False)
    add_flag(p, "generate", "--n-events", "number of events", default="20000")
    add_flag(p, "generate", "--users", "number of users", default="500")
    add_flag(p, "generate", "--items", "number of items", default="5000")
    add_flag(p, "generate", "--categories", "number of categories", default="100")
    add_flag(p, "generate", "--duration-s", "span of the log", default=str(3 * 86400))
    add_flag(p, "generate", "--seed", "random seed", default="7")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("catalog", help="the item catalog topic")
    p.add_argument("action", choices=["publish"])
    add_flag(p, "catalog", "--file", "catalog file: CSV with a header naming the fields, or JSON "
             "lines (docs/contracts.md 'Catalog')", required=False)
    add_flag(p, "catalog", "--topic", "topic (default: kafka.catalog_topic)")
    add_config_flags(p, ["--bootstrap-servers"])
    p.set_defaults(func=cmd_catalog)

    p = sub.add_parser("pseudonym", help="a shopper's pseudonym (privacy.pseudonymize): the key of their lists")
    p.add_argument("ids", nargs="+", metavar="ID", help="user ids as the shop knows them ('42' and 42 are one)")
    add_config_flags(p, ["--key-file", "--key-env"])
    p.set_defaults(func=cmd_pseudonym)

    p = sub.add_parser("forget", help="erase shoppers: their state, item window and stored list (a request on "
                       "the input topic)")
    p.add_argument("ids", nargs="+", metavar="ID", help="user ids as the shop knows them ('42' and 42 are one); "
                   "with privacy.pseudonymize the job maps them as it maps events")
    add_flag(p, "forget", "--topic", "topic (default: kafka.input_topic)")
    add_config_flags(p, ["--bootstrap-servers"])
    p.set_defaults(func=cmd_forget)

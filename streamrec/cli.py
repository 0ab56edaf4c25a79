"""`streamrec`: the command line. Every flag has an environment fallback (shown
in --help); other settings come from the config file (--config / STREAMREC_CONFIG).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from jobs.entry import add_run_arguments, run_from_args
from streamrec import progress, registry
from streamrec.about import package_version
from streamrec.catalog_files import (
    catalog_for_events,
    catalog_path,
    catalog_records,
    read_catalog_file,
    write_catalog_jsonl,
)
from streamrec.feedback_view import decoded, show, without_erased
from streamrec.kafka_io import consume, erase_record, produce, read_topic, replay
from streamrec.lab.benchmark.bench import Bench, BenchSettings, markdown
from streamrec.lab.benchmark.compare import CompareError, compare
from streamrec.lab.benchmark.compare import markdown as compare_markdown
from streamrec.lab.benchmark.model import main as bench_model_main
from streamrec.lab.benchmark.peer import run_peer
from streamrec.lab.benchmark.scale import ScaleBench, ScaleSettings
from streamrec.lab.benchmark.scale import markdown as scale_markdown
from streamrec.lab.benchmark.serve_latency import ServeBenchSettings, run_serve_bench
from streamrec.lab.benchmark.serve_latency import markdown as serve_markdown
from streamrec.lab.demo import run_demo
from streamrec.lab.evaluation import ab_report as ab
from streamrec.lab.evaluation.diversity_sweep import (
    DEFAULT_CAPS,
    SWEEP_JSON,
    SWEEP_PNG,
    format_sweep,
    parse_caps,
    sweep,
)
from streamrec.lab.evaluation.evaluate import evaluate, format_table
from streamrec.lab.evaluation.matrix import (
    DEFAULT_DATA_DIR,
    TRAIN_THREADS,
    default_workers,
    format_matrix,
    run_matrix,
)
from streamrec.lab.evaluation.matrix import JSON_FILE as MATRIX_JSON
from streamrec.lab.evaluation.matrix import PNG_FILE as MATRIX_PNG
from streamrec.lab.evaluation.matrix import TABLE_FILE as MATRIX_TABLE
from streamrec.lab.generator import generate_events
from streamrec.lab.local import kafka as kafka_local
from streamrec.retrain import decode_records, drop_stray, format_report, retrain
from udfs.artifact import verify_manifest
from udfs.catalog import CatalogItem
from udfs.config import ENV_PREFIX, ConfigError
from udfs.errors import InputError, reported
from udfs.events import InvalidId, canonical_id
from udfs.flags import CONFIG_FLAGS, REPORTED_ERRORS, add_config_flags, add_flag, config_from_args, setup_logging
from udfs.kafka_security import python_client_options
from udfs.logs import FORMATS, TS_UNITS, CsvLayout, load_events, write_events_msgpack, write_userbehavior_csv
from udfs.privacy import load_key
from udfs.records import TOMBSTONE_FIELD

# --- logs --------------------------------------------------------------------------------------

def add_log_flags(p: argparse.ArgumentParser, env: str, default: str = "userbehavior") -> None:
    """--format and the generic CSV layout flags of a command that reads a behavior log."""
    add_flag(p, "--format", f"{ENV_PREFIX}{env}_FORMAT", "userbehavior (the Taobao CSV: user,item,category,"
             "behavior,ts in s, no header), csv (any CSV: see --columns), parquet or arrow (a table, Taobao column "
             "order or --columns), generated (msgpack) or auto (by suffix: msgpack, .parquet, .arrow/.feather; "
             "else CSV)", default=default, choices=list(FORMATS))
    add_flag(p, "--columns", f"{ENV_PREFIX}{env}_COLUMNS",
             "with --format csv, parquet or arrow: the file's columns in order (user,item,category,behavior,ts; "
             "- skips one) or FIELD=NAME|POSITION entries (user=session,item=item_id,ts=time); "
             "category and behavior are optional (0, pv)")
    add_flag(p, "--ts-unit", f"{ENV_PREFIX}{env}_TS_UNIT", "with --format csv: timestamp unit",
             default="s", choices=list(TS_UNITS))
    add_flag(p, "--behaviors", f"{ENV_PREFIX}{env}_BEHAVIORS", "with --format csv: the log's behavior names "
             "mapped to pv/cart/fav/buy (click=pv,order=buy); an unmapped name makes the row malformed",
             default="")


def _env_on(name: str) -> bool:
    return os.environ.get(name, "") in ("1", "true", "yes")


def add_no_progress(p: argparse.ArgumentParser) -> None:
    """Bars are drawn on a terminal only; this turns them off there too (a recorded session)."""
    p.add_argument("--no-progress", action="store_true",
                   default=os.environ.get(f"{ENV_PREFIX}NO_PROGRESS", "") in ("1", "true", "yes"),
                   help=f"no progress bars (none are drawn off a terminal) [env: {ENV_PREFIX}NO_PROGRESS=1]")


def add_switch(p: argparse.ArgumentParser, flag: str, env: str, help: str) -> None:
    """An on/off flag whose environment fallback (1, true or yes) is named in --help, as every flag's is."""
    p.add_argument(flag, action="store_true", default=os.environ.get(env, "") in ("1", "true", "yes"),
                   help=f"{help} [env: {env}=1]")


def log_source(args: argparse.Namespace) -> tuple[str, CsvLayout | None]:
    """The log format and CSV layout the flags describe; ``load_events`` checks that they fit."""
    if args.columns:
        return args.format, CsvLayout.parse(args.columns, args.ts_unit, args.behaviors)
    if args.ts_unit != "s" or args.behaviors:
        raise ConfigError("--ts-unit and --behaviors apply to --format csv with --columns")
    return args.format, None


# --- kafka -------------------------------------------------------------------------------------

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


# --- replay / consume / generate ---------------------------------------------------------------

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


def _feedback_values(args: argparse.Namespace, follow: bool = False) -> Iterator[object]:
    """Feedback maps from ``--file`` (the bounded job's OUT.feedback.jsonl) or the feedback topic."""
    if getattr(args, "file", None):
        with open(args.file, encoding="utf-8") as f:
            yield from (json.loads(line) for line in f if line.strip())
        return
    cfg = config_from_args(args)
    timeout = 10 ** 9 if follow else float(args.timeout)
    for rec in consume(cfg.kafka.bootstrap_servers, cfg.kafka.feedback_topic, timeout_s=timeout,
                       security=python_client_options(cfg.kafka), tombstones=True):
        yield {TOMBSTONE_FIELD: (rec.key or b"").decode("utf-8", "replace")} if rec.tombstone else rec.value


def cmd_feedback(args: argparse.Namespace) -> int:
    """Rolling online HR@10 and NDCG@10 per model version and arm (README 'Online feedback')."""
    skipped: list[str] = []
    show(decoded(_feedback_values(args, args.follow), skipped), int(args.window), sys.stdout, follow=args.follow)
    if skipped:
        print(f"{len(skipped)} records skipped, first: {skipped[0]}", file=sys.stderr)
    return 0


def cmd_ab(args: argparse.Namespace) -> int:
    """Per-arm online figures with shopper-bootstrap intervals, a plot and a JSON."""
    skipped: list[str] = []
    records = list(decoded(without_erased(_feedback_values(args)), skipped))
    if not records:
        raise ConfigError("no feedback records read" + (f" ({len(skipped)} unreadable)" if skipped else ""))
    report = ab.ab_report(records, control=args.control or None, resamples=int(args.resamples))
    json_path, png_path = ab.write_report(report, args.out)
    print(ab.format_report(report))
    print(json.dumps({"json": str(json_path), "plot": str(png_path), "skipped": len(skipped)}))
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
    state and a tombstone for the shopper's list (README "Erasing a shopper")."""
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


# --- train / run / demo ------------------------------------------------------------------------

def training_catalog(path: Path) -> list[CatalogItem]:
    """The catalog file's valid records; the rejected ones are reported, as ``catalog publish``
    reports them, and training goes on without them."""
    read = read_catalog_file(path)
    for line, reason in read.rejected[:5]:
        print(f"streamrec train: {path}:{line}: {reason} (skipped)", file=sys.stderr)
    if read.rejected:
        print(f"streamrec train: {len(read.rejected)} catalog record(s) skipped", file=sys.stderr)
    if not read.items:
        raise InputError(f"--catalog {path}: no valid catalog record")
    return read.items


def trainer() -> Callable[..., Path]:
    """The training entry point (:func:`model_export.train.train_model`) of train and retrain."""
    from model_export.train import train_model  # lazy: torch (the [train] extra) takes ~6 s to import

    return train_model


def cmd_train(args: argparse.Namespace) -> int:
    train_model = trainer()
    fmt, layout = log_source(args)
    events = load_events(args.events, fmt, sort=True, layout=layout)
    until_ms = int(float(args.until) * 1000) if args.until else None
    catalog = training_catalog(Path(args.catalog)) if args.catalog else None
    out = train_model(events, until_ms=until_ms, out_dir=Path(args.out), seed=int(args.seed),
                      device=args.device, catalog=catalog)
    manifest = verify_manifest(out)
    print(json.dumps({"artifact": str(out), "model_version": manifest.model_version,
                      "metrics": manifest.metrics}, indent=2))
    return 0


# --- model registry / retrain ------------------------------------------------------------------

def _when(ms: int | None) -> str:
    import time

    return "-" if ms is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000))


def cmd_model(args: argparse.Namespace) -> int:
    """The registry (ranking.registry_dir) and the control topic (kafka.control_topic) of the config."""
    cfg = config_from_args(args)
    root = cfg.ranking.registry_dir
    send = None if args.no_announce else registry.control_sender(cfg.kafka)
    if args.action == "list":
        rows = registry.listing(root)
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        if not rows:
            print(f"no version in {root}")
            return 0
        print(f"{'':2}{'model_version':<22}{'published (UTC)':<21}{'first live (UTC)':<21}"
              f"{'hr@10':>8}{'ndcg@10':>9}  retrain")
        for r in rows:
            if "problem" in r:
                print(f"{'!':<2}{r['model_version']:<22}{r['problem']}")
                continue
            metric = "".join(f"{r[k]:>{w}.4f}" if r.get(k) is not None else f"{'-':>{w}}"
                             for k, w in (("hr@10", 8), ("ndcg@10", 9)))
            print(f"{'*' if r['live'] else '':<2}{r['model_version']:<22}{_when(r.get('published_at')):<21}"
                  f"{_when(r.get('announced_at')):<21}{metric}  {r.get('retrain_decision') or '-'}")
        return 0
    if args.action == "publish":
        _require(args, "artifact")
        path = registry.publish(root, args.artifact, force=args.force)
        version = path.name
        if not args.no_announce:  # --no-announce: in the registry, not live
            registry.activate(root, version, send)
        print(json.dumps({"published": str(path), "model_version": version, "announced": not args.no_announce,
                          "control_topic": None if args.no_announce else cfg.kafka.control_topic}))
        return 0
    if args.action == "activate":
        _require(args, "version")
        registry.activate(root, args.version, send)
        print(json.dumps({"live": args.version, "announced": not args.no_announce}))
        return 0
    version = registry.rollback(root, send)
    print(json.dumps({"live": version, "action": "rollback", "announced": not args.no_announce}))
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if bool(args.from_topic) == bool(args.events):
        raise ConfigError("retrain: give exactly one of --from-topic TOPIC and --events FILE")
    if args.from_topic:
        raw = read_topic(cfg.kafka.bootstrap_servers, args.from_topic, security=python_client_options(cfg.kafka))
        decoded, bad, reasons = decode_records(raw)
        events, stray = drop_stray(decoded)
        print(f"streamrec retrain: {len(raw)} records from {args.from_topic}, {bad} not events"
              f"{' (' + '; '.join(reasons) + ')' if reasons else ''}, {stray} with stray timestamps",
              file=sys.stderr)
        source = f"topic {args.from_topic} at {cfg.kafka.bootstrap_servers}: {len(raw)} records, {bad} skipped"
    else:
        fmt, layout = log_source(args)
        events = load_events(args.events, fmt, sort=True, layout=layout)
        source = f"file {Path(args.events).resolve()}"
    catalog = training_catalog(Path(args.catalog)) if args.catalog else None
    announce = None if args.no_announce or args.dry_run else registry.control_sender(cfg.kafka)
    report = retrain(events, trainer(), hours=float(args.hours), registry_dir=cfg.ranking.registry_dir,
                     out_dir=args.out, source=source, seed=int(args.seed), catalog=catalog,
                     train_kwargs={"device": args.device, "progress": not args.no_progress},
                     publish=not args.dry_run, announce=announce)
    print(format_report(report))
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.matrix:
        return cmd_matrix(args)
    _require(args, "events")
    protocols = tuple(p.strip() for p in args.protocol.split(",") if p.strip())
    fmt, layout = log_source(args)
    cap = None if args.max_per_category in (None, "") else int(args.max_per_category)
    if args.diversity_sweep:
        caps = parse_caps(args.diversity_sweep)
        rep = sweep(load_events(args.events, fmt, sort=True, layout=layout), args.artifact, args.out, caps,
                    provider=args.provider)
        print(format_sweep(rep))
        print(f"sweep: {Path(args.out) / SWEEP_JSON}, plot: {Path(args.out) / SWEEP_PNG}")
        return 0
    report = evaluate(args.events, args.artifact, args.out, protocols=protocols, provider=args.provider,
                      fmt=fmt, layout=layout, max_per_category=cap)
    print(format_table(report))
    print(f"report: {Path(args.out) / 'evaluation.json'}, plot: {Path(args.out) / 'evaluation.png'}")
    return 0


def _positive_int(flag: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{flag}: a positive integer, not {text!r}") from None
    if value < 1:
        raise ConfigError(f"{flag}: a positive integer, not {value}")
    return value


def _int_list(flag: str, text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{flag}: comma-separated integers, not {text!r}") from None
    if not values:
        raise ConfigError(f"{flag}: at least one value")
    return values


def cmd_matrix(args: argparse.Namespace) -> int:
    seeds = _int_list("--seeds", args.seeds)
    logs = [x.strip() for x in args.logs.split(",") if x.strip()] if args.logs else None
    use_job = args.model_source == "job"
    # Several logs with the job: one process per log (see matrix.log_in_subprocess).
    workers = _positive_int("--workers", args.workers) if args.workers else default_workers()
    threads = _positive_int("--train-threads", args.train_threads)
    report = run_matrix(args.data, args.out, seeds=seeds, logs=logs, use_job=use_job, provider=args.provider,
                        isolate=use_job and (logs is None or len(logs) > 1), workers=workers,
                        train_threads=threads)
    print(format_matrix(report))
    out = Path(args.out)
    print(f"report: {out / MATRIX_JSON}, table: {out / MATRIX_TABLE}, plot: {out / MATRIX_PNG}")
    return 0


def cmd_bench_model(args: argparse.Namespace) -> int:
    argv = ["--artifact", args.artifact, "--out", args.out, "--provider", args.provider,
            "--batch-sizes", args.batch_sizes, "--repeats", str(args.repeats)]
    if args.events:
        argv += ["--events", args.events]
    bench_model_main(argv)
    return 0


def cmd_peer(args: argparse.Namespace) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stats = run_peer(config_from_args(args), max_events=int(args.max_events) if args.max_events else None,
                     idle_timeout_s=float(args.idle_timeout), stop=stop)
    print(json.dumps(dataclasses.asdict(stats), default=str), flush=True)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    def ints(text: str) -> tuple[int, ...]:
        return tuple(int(x) for x in text.split(",") if x.strip())

    if args.compare:
        return cmd_bench_compare(args)
    phases = tuple(p.strip() for p in args.phases.split(",") if p.strip())
    cfg = config_from_args(args)
    progress.set_enabled(not args.no_progress)
    others = tuple(p for p in phases if p != "scale")
    if others:
        settings = BenchSettings(
            out_dir=Path(args.out), events=int(args.events), users=int(args.users), items=int(args.items),
            seed=int(args.seed), artifact=Path(args.artifact) if args.artifact else None,
            parallelisms=ints(args.parallelisms), warmup_s=float(args.warmup_s), window_s=float(args.window_s),
            latency_s=float(args.latency_s), latency_warmup_s=float(args.latency_warmup_s),
            latency_repeats=int(args.latency_repeats), batching_repeats=int(args.batching_repeats),
            train_events=int(args.train_events),
            batching_paced=args.batching_paced == "on",
            latency_rates=tuple(float(x) for x in args.latency_rates.split(",") if x.strip()),
            phases=others,
        )
        results = Bench(settings, cfg).run()
        print(markdown(results))
        print(f"results: {settings.out_dir / 'results.json'}, {settings.out_dir / 'results.md'}, "
              f"{settings.out_dir / 'results.png'}")
    if "scale" in phases:
        scale = ScaleSettings(
            out_dir=Path(args.out), shoppers=int(args.scale_shoppers), events=int(args.scale_events),
            items=int(args.scale_items), artifact=Path(args.scale_artifact) if args.scale_artifact else None,
            backends=tuple(b.strip() for b in args.scale_backends.split(",") if b.strip()),
            parallelism=int(args.scale_parallelism), checkpoint_interval_ms=int(args.scale_checkpoint_interval_ms),
        )
        print(scale_markdown(ScaleBench(scale, cfg).run()))
        print(f"results: {scale.out_dir / 'scale.json'}, {scale.out_dir / 'scale.md'}")
    return 0


def cmd_bench_compare(args: argparse.Namespace) -> int:
    """This tree's bench beside REF's (streamrec/lab/benchmark/compare.py)."""
    repo = Path(__file__).resolve().parents[1]
    try:
        result = compare(repo, args.compare, vars(args), Path(args.out), int(args.compare_repeats))
    except CompareError as exc:
        print(f"streamrec bench --compare: {exc}", file=sys.stderr)
        return 2
    print(compare_markdown(result))
    print(f"results: {Path(args.out) / 'compare.json'}, {Path(args.out) / 'compare.md'}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from streamrec.serve.server import serve  # lazy: starlette and uvicorn, the [serve] extra

        return serve(config_from_args(args))  # serve.store = "redis" imports the extra's redis client here
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in SERVE_EXTRA:
            raise
        print(f"streamrec serve: needs the 'serve' extra (pip install -c constraints.txt '.[serve]'): {exc}",
              file=sys.stderr)
        return 2


SERVE_EXTRA = ("starlette", "uvicorn", "redis")


def cmd_bench_serve(args: argparse.Namespace) -> int:
    settings = ServeBenchSettings(Path(args.out), rate=float(args.rate), duration_s=float(args.duration),
                                  shoppers=int(args.shoppers), connections=int(args.connections),
                                  routes=tuple(r.strip() for r in args.routes.split(",") if r.strip()),
                                  guest_rate=float(args.guest_rate))
    print(serve_markdown(run_serve_bench(settings)))
    print(f"results: {settings.out_dir / 'serve_latency.json'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(config_from_args(args), events=int(args.events), rate=float(args.rate))


# --- parser ------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamrec", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"streamrec {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("kafka", help="the local Kafka broker (KRaft, loopback)")
    p.add_argument("action", choices=["start", "stop", "status"])
    add_config_flags(p, ["--input-topic", "--output-topic", "--dlq-topic", "--catalog-topic", "--control-topic"])
    p.set_defaults(func=cmd_kafka)

    p = sub.add_parser("replay", help="produce behavior events to Kafka")
    add_flag(p, "--events", f"{ENV_PREFIX}REPLAY_EVENTS", "events file", required=False)
    add_log_flags(p, "REPLAY")
    add_flag(p, "--rate", f"{ENV_PREFIX}REPLAY_RATE", "events per second, 0 = unthrottled", default="0")
    add_flag(p, "--limit", f"{ENV_PREFIX}REPLAY_LIMIT", "send at most this many events")
    add_flag(p, "--topic", f"{ENV_PREFIX}REPLAY_TOPIC", "topic (default: kafka.input_topic)")
    add_config_flags(p, ["--bootstrap-servers"])
    add_no_progress(p)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("consume", help="print output records as JSON lines")
    add_flag(p, "--topic", f"{ENV_PREFIX}CONSUME_TOPIC", "topic (default: kafka.output_topic)")
    add_flag(p, "--max", f"{ENV_PREFIX}CONSUME_MAX", "stop after this many records")
    add_flag(p, "--timeout", f"{ENV_PREFIX}CONSUME_TIMEOUT", "stop after this many idle seconds", default="10")
    add_config_flags(p, ["--bootstrap-servers"])
    p.set_defaults(func=cmd_consume)

    p = sub.add_parser("feedback", help="rolling online HR@10 and NDCG@10 per model version and arm")
    add_flag(p, "--window", f"{ENV_PREFIX}FEEDBACK_WINDOW", "over the last N feedback records", default="10000")
    p.add_argument("--follow", action="store_true", default=_env_on(f"{ENV_PREFIX}FEEDBACK_FOLLOW"),
                   help=f"keep reading, print the table every 2 s [env: {ENV_PREFIX}FEEDBACK_FOLLOW=1]")
    add_flag(p, "--file", f"{ENV_PREFIX}FEEDBACK_FILE", "read a bounded run's OUT.feedback.jsonl instead of the topic")
    add_flag(p, "--timeout", f"{ENV_PREFIX}FEEDBACK_TIMEOUT", "without --follow: stop after this many idle "
             "seconds", default="5")
    add_config_flags(p, ["--bootstrap-servers", "--feedback-topic"])
    p.set_defaults(func=cmd_feedback)

    p = sub.add_parser("ab", help="A/B experiments: per-arm online figures")
    p.add_argument("action", choices=["report"])
    source = p.add_mutually_exclusive_group()
    source.add_argument("--from-topic", action="store_true", default=_env_on(f"{ENV_PREFIX}AB_FROM_TOPIC"),
                        help=f"read kafka.feedback_topic (the default) [env: {ENV_PREFIX}AB_FROM_TOPIC=1]")
    source.add_argument("--file", default=os.environ.get(f"{ENV_PREFIX}AB_FILE"),
                        help=f"a bounded run's OUT.feedback.jsonl [env: {ENV_PREFIX}AB_FILE]")
    add_flag(p, "--out", f"{ENV_PREFIX}AB_OUT", "folder for ab_report.json and ab_report.png", default="ab-report")
    add_flag(p, "--control", f"{ENV_PREFIX}AB_CONTROL", "the arm others are compared with (default: 'control' "
             "if present, else the first by name)", default="")
    add_flag(p, "--resamples", f"{ENV_PREFIX}AB_RESAMPLES", "bootstrap resamples", default="2000")
    add_flag(p, "--timeout", f"{ENV_PREFIX}AB_TIMEOUT", "stop reading the topic after this many idle seconds",
             default="5")
    add_config_flags(p, ["--bootstrap-servers", "--feedback-topic"])
    p.set_defaults(func=cmd_ab)

    p = sub.add_parser("generate", help="write a seeded synthetic behavior log")
    add_flag(p, "--out", f"{ENV_PREFIX}GENERATE_OUT", "output file (.msgpack or .csv)", required=False)
    add_flag(p, "--n-events", f"{ENV_PREFIX}GENERATE_N_EVENTS", "number of events", default="20000")
    add_flag(p, "--users", f"{ENV_PREFIX}GENERATE_USERS", "number of users", default="500")
    add_flag(p, "--items", f"{ENV_PREFIX}GENERATE_ITEMS", "number of items", default="5000")
    add_flag(p, "--categories", f"{ENV_PREFIX}GENERATE_CATEGORIES", "number of categories", default="100")
    add_flag(p, "--duration-s", f"{ENV_PREFIX}GENERATE_DURATION_S", "span of the log", default=str(3 * 86400))
    add_flag(p, "--seed", f"{ENV_PREFIX}GENERATE_SEED", "random seed", default="7")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("catalog", help="the item catalog topic")
    p.add_argument("action", choices=["publish"])
    add_flag(p, "--file", f"{ENV_PREFIX}CATALOG_FILE", "catalog file: CSV with a header naming the fields, or JSON "
             "lines (README 'Catalog')", required=False)
    add_flag(p, "--topic", f"{ENV_PREFIX}CATALOG_TOPIC", "topic (default: kafka.catalog_topic)")
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
    add_flag(p, "--topic", f"{ENV_PREFIX}FORGET_TOPIC", "topic (default: kafka.input_topic)")
    add_config_flags(p, ["--bootstrap-servers"])
    p.set_defaults(func=cmd_forget)

    p = sub.add_parser("train", help="train, evaluate and export the ranking model")
    add_flag(p, "--events", f"{ENV_PREFIX}TRAIN_EVENTS", "events file", required=False)
    add_log_flags(p, "TRAIN")
    add_flag(p, "--until", f"{ENV_PREFIX}TRAIN_UNTIL", "train on events before this Unix time (s); "
             "later ones are held out for evaluation (default: 80%% of the log's span, moved so that 10-50%% "
             "of the events are held out)")
    add_flag(p, "--out", f"{ENV_PREFIX}TRAIN_OUT", "artifact directory", default="artifacts/model")
    add_flag(p, "--seed", f"{ENV_PREFIX}TRAIN_SEED", "random seed", default="0")
    add_flag(p, "--device", f"{ENV_PREFIX}TRAIN_DEVICE", "torch device for training: auto (CUDA when "
             "torch sees a GPU, else CPU), cpu, or cuda (an error without a GPU)", default="auto",
             choices=["auto", "cpu", "cuda"])
    add_flag(p, "--catalog", f"{ENV_PREFIX}TRAIN_CATALOG", "the shop's catalog (CSV or JSON lines, as `catalog "
             "publish` reads): the model learns brand and price features from it, and the job fills them",
             required=False)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("model", help="the model registry: publish an artifact, list versions, roll back")
    p.add_argument("action", choices=["publish", "list", "rollback", "activate"],
                   help="publish: verify and copy --artifact into the registry and announce it live; list; "
                        "rollback: announce the version live before the current one; activate: announce --version")
    add_flag(p, "--artifact", f"{ENV_PREFIX}MODEL_ARTIFACT", "publish: the artifact folder", required=False)
    add_flag(p, "--version", f"{ENV_PREFIX}MODEL_VERSION", "activate: a model_version in the registry",
             required=False)
    add_switch(p, "--no-announce", f"{ENV_PREFIX}MODEL_NO_ANNOUNCE", "publish: copy only, not live; "
               "rollback/activate: record it live in the registry's history without a control record (no job "
               "is told)")
    add_switch(p, "--json", f"{ENV_PREFIX}MODEL_JSON", "list: JSON instead of a table")
    add_switch(p, "--force", f"{ENV_PREFIX}MODEL_FORCE", "publish: even an artifact `streamrec retrain` kept "
               "back as worse than the live version (refused without it)")
    add_config_flags(p, ["--registry", "--control-topic", "--bootstrap-servers"])
    p.set_defaults(func=cmd_model)

    p = sub.add_parser("retrain", help="train on the last hours of the stream, publish if not worse than live")
    add_flag(p, "--from-topic", f"{ENV_PREFIX}RETRAIN_FROM_TOPIC", "read the events of this topic, from the "
             "beginning to its end now (e.g. behavior-events)")
    add_flag(p, "--events", f"{ENV_PREFIX}RETRAIN_EVENTS", "or read them from a log file")
    add_log_flags(p, "RETRAIN")
    add_flag(p, "--hours", f"{ENV_PREFIX}RETRAIN_HOURS", "train on the last H hours before the newest event",
             required=False, default="24")
    add_flag(p, "--out", f"{ENV_PREFIX}RETRAIN_OUT", "where the new artifact is written (kept when not "
             "published)", default="artifacts/retrain")
    add_flag(p, "--seed", f"{ENV_PREFIX}RETRAIN_SEED", "random seed", default="0")
    add_flag(p, "--device", f"{ENV_PREFIX}RETRAIN_DEVICE", "torch device: auto, cpu or cuda", default="auto",
             choices=["auto", "cpu", "cuda"])
    add_flag(p, "--catalog", f"{ENV_PREFIX}RETRAIN_CATALOG", "the shop's catalog, as for `streamrec train`")
    add_flag(p, "--json-out", f"{ENV_PREFIX}RETRAIN_JSON_OUT", "also write the comparison as JSON here")
    add_switch(p, "--dry-run", f"{ENV_PREFIX}RETRAIN_DRY_RUN", "compare and store the comparison in the new "
               "manifest; publish nothing")
    add_switch(p, "--no-announce", f"{ENV_PREFIX}RETRAIN_NO_ANNOUNCE", "publish the folder if not worse, but do "
               "not make it live")
    add_no_progress(p)
    add_config_flags(p, ["--registry", "--control-topic", "--bootstrap-servers"])
    p.set_defaults(func=cmd_retrain)

    p = sub.add_parser("run", help="run the job on the local minicluster")
    add_run_arguments(p)
    p.set_defaults(func=run_from_args)

    p = sub.add_parser("evaluate", help="offline and prequential (through the job) evaluation vs baselines")
    add_flag(p, "--events", f"{ENV_PREFIX}EVAL_EVENTS", "the artifact's log", required=False)
    add_log_flags(p, "EVAL", default="auto")
    add_flag(p, "--artifact", f"{ENV_PREFIX}EVAL_ARTIFACT", "model artifact", default="artifacts/model")
    add_flag(p, "--out", f"{ENV_PREFIX}EVAL_OUT", "report directory", default="eval-results")
    add_flag(p, "--protocol", f"{ENV_PREFIX}EVAL_PROTOCOL", "comma-separated: offline, prequential",
             default="offline,prequential")
    add_flag(p, "--provider", f"{ENV_PREFIX}EVAL_PROVIDER", "onnxruntime provider for the job", default="cpu",
             choices=["auto", "cuda", "cpu"])
    p.add_argument("--matrix", action="store_true",
                   default=os.environ.get(f"{ENV_PREFIX}EVAL_MATRIX", "") in ("1", "true", "yes"),
                   help="the development matrix: every log under --data, split at its median event, "
                        f"trained per seed, scored prequentially; --events and --artifact are not used "
                        f"[env: {ENV_PREFIX}EVAL_MATRIX=1]")
    add_flag(p, "--data", f"{ENV_PREFIX}EVAL_DATA", "with --matrix: folder of logs (*.csv, Taobao layout)",
             default=str(DEFAULT_DATA_DIR))
    add_flag(p, "--seeds", f"{ENV_PREFIX}EVAL_SEEDS", "with --matrix: comma-separated training seeds",
             default="0,1,2")
    add_flag(p, "--logs", f"{ENV_PREFIX}EVAL_LOGS", "with --matrix: only these logs (names as in the table, "
             "e.g. dev/jdata2017_head)")
    add_flag(p, "--workers", f"{ENV_PREFIX}EVAL_WORKERS", "with --matrix: logs run at once, each in its own "
             "process (default: one per two cores, at least one)")
    add_flag(p, "--train-threads", f"{ENV_PREFIX}EVAL_TRAIN_THREADS", "with --matrix: torch threads per "
             "training when logs run one at a time (with several at once: cores / workers)",
             default=str(TRAIN_THREADS))
    add_flag(p, "--model-source", f"{ENV_PREFIX}EVAL_MODEL_SOURCE",
             "with --matrix: the model's lists from the bounded job or from its pure-Python replay",
             default="job", choices=["job", "replay"])
    add_flag(p, "--max-per-category", f"{ENV_PREFIX}EVAL_MAX_PER_CATEGORY",
             "the job's diversity cap (ranking.max_per_category) in the prequential protocol; "
             "empty: the config default")
    add_flag(p, "--diversity-sweep", f"{ENV_PREFIX}EVAL_DIVERSITY_SWEEP",
             "instead of the protocols: the model's prequential replay at each ranking.max_per_category in "
             f"CAPS (comma-separated, 0 = off; bare flag: {','.join(map(str, DEFAULT_CAPS))}); writes "
             f"{SWEEP_JSON} and {SWEEP_PNG}", nargs="?", const=",".join(map(str, DEFAULT_CAPS)), metavar="CAPS")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("bench-model", help="scored pairs/s and latency: torch vs onnxruntime fp32/fp16/int8")
    add_flag(p, "--artifact", f"{ENV_PREFIX}BENCH_MODEL_ARTIFACT", "model artifact", default="artifacts/model")
    add_flag(p, "--out", f"{ENV_PREFIX}BENCH_MODEL_OUT", "results directory", default="bench-results")
    add_flag(p, "--events", f"{ENV_PREFIX}BENCH_MODEL_EVENTS",
             "the artifact's training log, for held-out parity batches")
    add_flag(p, "--provider", f"{ENV_PREFIX}BENCH_MODEL_PROVIDER", "auto, cuda or cpu", default="auto",
             choices=["auto", "cuda", "cpu"])
    add_flag(p, "--batch-sizes", f"{ENV_PREFIX}BENCH_MODEL_BATCH_SIZES", "comma-separated rows per call",
             default="1,4,16,64,256,1024,4096")
    add_flag(p, "--repeats", f"{ENV_PREFIX}BENCH_MODEL_REPEATS", "timed calls per cell (fewer for big batches)",
             default="50")
    p.set_defaults(func=cmd_bench_model)

    p = sub.add_parser("peer", help="the plain-Python consumer loop doing the job's work (benchmark peer)")
    add_flag(p, "--max-events", f"{ENV_PREFIX}PEER_MAX_EVENTS", "stop after this many input records")
    add_flag(p, "--idle-timeout", f"{ENV_PREFIX}PEER_IDLE_TIMEOUT", "stop after this many idle seconds",
             default="30")
    add_config_flags(p, [f for f in CONFIG_FLAGS if f != "--resume"])  # the peer keeps no Flink state
    p.set_defaults(func=cmd_peer)

    p = sub.add_parser("bench", help="job (p1, p2) vs plain-Python peer vs model and Kafka ceilings, latency")
    add_flag(p, "--out", f"{ENV_PREFIX}BENCH_OUT", "results directory", default="bench-results")
    add_flag(p, "--events", f"{ENV_PREFIX}BENCH_EVENTS", "events in the generated stream", default="1000000")
    add_flag(p, "--users", f"{ENV_PREFIX}BENCH_USERS", "users in the stream", default="100000")
    add_flag(p, "--items", f"{ENV_PREFIX}BENCH_ITEMS", "items in the catalog", default="50000")
    add_flag(p, "--seed", f"{ENV_PREFIX}BENCH_SEED", "stream seed", default="11")
    add_flag(p, "--train-events", f"{ENV_PREFIX}BENCH_TRAIN_EVENTS",
             "events of the stream's catalog the bench model is trained on when there is no --artifact",
             default="60000")
    add_flag(p, "--artifact", f"{ENV_PREFIX}BENCH_ARTIFACT",
             "model artifact (default: train one on 60,000 events of the stream's catalog into OUT/artifact)")
    add_flag(p, "--parallelisms", f"{ENV_PREFIX}BENCH_PARALLELISMS", "job parallelisms, comma-separated",
             default="1,2")
    add_flag(p, "--warmup-s", f"{ENV_PREFIX}BENCH_WARMUP_S", "seconds after the first output before timing",
             default="20")
    add_flag(p, "--window-s", f"{ENV_PREFIX}BENCH_WINDOW_S", "throughput window per phase, seconds", default="90")
    add_flag(p, "--latency-s", f"{ENV_PREFIX}BENCH_LATENCY_S", "seconds of paced replay per latency point",
             default="45")
    add_flag(p, "--latency-warmup-s", f"{ENV_PREFIX}BENCH_LATENCY_WARMUP_S",
             "seconds of paced replay before each latency point's timed part (JIT warm-up)", default="60")
    add_flag(p, "--latency-repeats", f"{ENV_PREFIX}BENCH_LATENCY_REPEATS",
             "independent runs per latency point, each on a fresh cluster; medians are reported", default="3")
    add_flag(p, "--latency-rates", f"{ENV_PREFIX}BENCH_LATENCY_RATES",
             "absolute events/s for the latency points (default: 50%% and 90%% of the measured maximum); "
             "the batching phase paces at the first (default: half the unbatched rate)",
             default="")
    add_flag(p, "--phases", f"{ENV_PREFIX}BENCH_PHASES",
             "comma-separated: model, kafka, job, peer, latency, batching (job with ranking.batching off and on, "
             "throughput and the tail at half the unbatched rate), floor (the job beside itself with its lists "
             "replayed, with and without the model call: what faster candidate, feature and list code could give); "
             "scale (store scale, its own workload: not a "
             "default, over an hour per backend at full size on 2 cores)",
             default="model,kafka,job,peer,latency,batching,floor")
    add_flag(p, "--batching-repeats", f"{ENV_PREFIX}BENCH_BATCHING_REPEATS",
             "batching and floor: throughput runs per side, alternated; medians are reported", default="1")
    add_flag(p, "--batching-paced", f"{ENV_PREFIX}BENCH_BATCHING_PACED",
             "batching: also the paced tail of each side at half the unbatched rate (on/off)", default="on")
    add_flag(p, "--scale-shoppers", f"{ENV_PREFIX}BENCH_SCALE_SHOPPERS", "scale: distinct shoppers (exact)",
             default="1000000")
    add_flag(p, "--scale-events", f"{ENV_PREFIX}BENCH_SCALE_EVENTS", "scale: events through the broker",
             default="5000000")
    add_flag(p, "--scale-items", f"{ENV_PREFIX}BENCH_SCALE_ITEMS", "scale: items in the catalog", default="100000")
    add_flag(p, "--scale-backends", f"{ENV_PREFIX}BENCH_SCALE_BACKENDS", "scale: state backends, comma-separated",
             default="hashmap,rocksdb")
    add_flag(p, "--scale-parallelism", f"{ENV_PREFIX}BENCH_SCALE_PARALLELISM",
             "scale: job parallelism (one one-slot TaskManager each)", default="2")
    add_flag(p, "--scale-checkpoint-interval-ms", f"{ENV_PREFIX}BENCH_SCALE_CHECKPOINT_INTERVAL_MS",
             "scale: checkpoint interval", default="10000")
    add_flag(p, "--scale-artifact", f"{ENV_PREFIX}BENCH_SCALE_ARTIFACT",
             "scale: model artifact (default: train one on the scale catalog into OUT/scale-artifact)")
    add_flag(p, "--compare", f"{ENV_PREFIX}BENCH_COMPARE",
             "instead of one bench: build REF (a commit, branch or tag) in a worktree with its own venv and run "
             "its bench and this tree's alternately with the same flags, then print each figure's ratio "
             "(OUT/compare.json, OUT/compare.md)", metavar="REF")
    add_flag(p, "--compare-repeats", f"{ENV_PREFIX}BENCH_COMPARE_REPEATS",
             "with --compare: bench runs per side, in ABBA order; medians are reported", default="2")
    add_config_flags(p, ["--provider", "--delivery-guarantee"])
    add_no_progress(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("serve", help="HTTP lookup service and live storefront page over the recommendations topic")
    add_config_flags(p, ["--port", "--bind-address", "--store", "--store-backend", "--redis-url",
                         "--bootstrap-servers", "--input-topic",
                         "--output-topic", "--artifact", "--key-file", "--key-env"])
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("bench-serve", help="latency of streamrec serve's routes at fixed request rates (open loop), "
                       "and its view's rebuild")
    add_flag(p, "--out", f"{ENV_PREFIX}BENCH_SERVE_OUT", "results folder", default="bench-results/serve")
    add_flag(p, "--rate", f"{ENV_PREFIX}BENCH_SERVE_RATE", "lookups per second", default="1000")
    add_flag(p, "--duration", f"{ENV_PREFIX}BENCH_SERVE_DURATION", "timed seconds (after 5 s of warm-up)",
             default="60")
    add_flag(p, "--shoppers", f"{ENV_PREFIX}BENCH_SERVE_SHOPPERS", "lists in the topic", default="100000")
    add_flag(p, "--connections", f"{ENV_PREFIX}BENCH_SERVE_CONNECTIONS", "keep-alive client connections",
             default="64")
    add_flag(p, "--routes", f"{ENV_PREFIX}BENCH_SERVE_ROUTES", "routes to time, in order",
             default="lookup,batch,similar,guest")
    add_flag(p, "--guest-rate", f"{ENV_PREFIX}BENCH_SERVE_GUEST_RATE", "guest lists per second", default="100")
    p.set_defaults(func=cmd_bench_serve)

    p = sub.add_parser("demo", help="broker + model + job + replay, recommendations on screen")
    add_flag(p, "--events", f"{ENV_PREFIX}DEMO_EVENTS", "events to replay", default="1500")
    add_flag(p, "--rate", f"{ENV_PREFIX}DEMO_RATE",
             "replay rate, events/s (below the job's capacity, so latency is not queueing)", default="60")
    add_config_flags(p, ["--artifact", "--provider"])
    p.set_defaults(func=cmd_demo)
    return parser


def _require(args: argparse.Namespace, *names: str) -> None:
    missing = [n for n in names if getattr(args, n, None) in (None, "")]
    if missing:
        flags = ", ".join("--" + n.replace("_", "-") for n in missing)
        raise ConfigError(f"{args.command}: missing {flags}")


REQUIRED = {"replay": ("events",), "train": ("events",), "generate": ("out",), "catalog": ("file",)}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        _require(args, *REQUIRED.get(args.command, ()))
        return int(args.func(args) or 0)
    except REPORTED_ERRORS as exc:
        print(f"streamrec {args.command}: {exc}", file=sys.stderr)
        return reported(exc) or 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

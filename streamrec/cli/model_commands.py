"""The model: train, the registry (model), retrain, and run (the job)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from jobs.entry import add_run_arguments, run_from_args
from streamrec import registry_writer as writer
from streamrec.catalog_files import (
    read_catalog_file,
)
from streamrec.cli.common import (
    add_log_flags,
    add_no_progress,
    log_source,
    require,
    when_text,
)
from streamrec.kafka_io import read_topic
from streamrec.retrain import decode_records, drop_stray, format_report, retrain
from udfs.artifact import verify_manifest
from udfs.catalog import CatalogItem
from udfs.config import ConfigError
from udfs.errors import InputError
from udfs.flags import add_config_flags, add_flag, add_switch, config_from_args
from udfs.kafka_security import python_client_options
from udfs.logs import load_events


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


def cmd_model(args: argparse.Namespace) -> int:
    """The registry (ranking.registry_dir) and the control topic (kafka.control_topic) of the config."""
    cfg = config_from_args(args)
    root = cfg.ranking.registry_dir
    send = None if args.no_announce else writer.control_sender(cfg.kafka)
    if args.action == "list":
        rows = writer.listing(root)
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
            print(f"{'*' if r['live'] else '':<2}{r['model_version']:<22}{when_text(r.get('published_at')):<21}"
                  f"{when_text(r.get('announced_at')):<21}{metric}  {r.get('retrain_decision') or '-'}")
        return 0
    if args.action == "publish":
        require(args, "artifact")
        path = writer.publish(root, args.artifact, force=args.force)
        version = path.name
        if not args.no_announce:  # --no-announce: in the registry, not live
            writer.activate(root, version, send)
        print(json.dumps({"published": str(path), "model_version": version, "announced": not args.no_announce,
                          "control_topic": None if args.no_announce else cfg.kafka.control_topic}))
        return 0
    if args.action == "activate":
        require(args, "version")
        writer.activate(root, args.version, send)
        print(json.dumps({"live": args.version, "announced": not args.no_announce}))
        return 0
    version = writer.rollback(root, send)
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
    announce = None if args.no_announce or args.dry_run else writer.control_sender(cfg.kafka)
    report = retrain(events, trainer(), hours=float(args.hours), registry_dir=cfg.ranking.registry_dir,
                     out_dir=args.out, source=source, seed=int(args.seed), catalog=catalog,
                     train_kwargs={"device": args.device, "progress": not args.no_progress},
                     publish=not args.dry_run, announce=announce)
    print(format_report(report))
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the train, model, retrain, run commands."""
    p = sub.add_parser("train", help="train, evaluate and export the ranking model")
    add_flag(p, "train", "--events", "events file", required=False)
    add_log_flags(p, "train")
    add_flag(p, "train", "--until", "train on events before this Unix time (s); "
             "later ones are held out for evaluation (default: 80%% of the log's span, moved so that 10-50%% "
             "of the events are held out)")
    add_flag(p, "train", "--out", "artifact directory", default="artifacts/model")
    add_flag(p, "train", "--seed", "random seed", default="0")
    add_flag(p, "train", "--device", "torch device for training: auto (CUDA when "
             "torch sees a GPU, else CPU), cpu, or cuda (an error without a GPU)", default="auto",
             choices=["auto", "cpu", "cuda"])
    add_flag(p, "train", "--catalog", "the shop's catalog (CSV or JSON lines, as `catalog "
             "publish` reads): the model learns brand and price features from it, and the job fills them",
             required=False)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("model", help="the model registry: publish an artifact, list versions, roll back")
    p.add_argument("action", choices=["publish", "list", "rollback", "activate"],
                   help="publish: verify and copy --artifact into the registry and announce it live; list; "
                        "rollback: announce the version live before the current one; activate: announce --version")
    add_flag(p, "model", "--artifact", "publish: the artifact folder", required=False)
    add_flag(p, "model", "--version", "activate: a model_version in the registry",
             required=False)
    add_switch(p, "model", "--no-announce", "publish: copy only, not live; "
               "rollback/activate: record it live in the registry's history without a control record (no job "
               "is told)")
    add_switch(p, "model", "--json", "list: JSON instead of a table")
    add_switch(p, "model", "--force", "publish: even an artifact `streamrec retrain` kept "
               "back as worse than the live version (refused without it)")
    add_config_flags(p, ["--registry", "--control-topic", "--bootstrap-servers"])
    p.set_defaults(func=cmd_model)

    p = sub.add_parser("retrain", help="train on the last hours of the stream, publish if not worse than live")
    add_flag(p, "retrain", "--from-topic", "read the events of this topic, from the "
             "beginning to its end now (e.g. behavior-events)")
    add_flag(p, "retrain", "--events", "or read them from a log file")
    add_log_flags(p, "retrain")
    add_flag(p, "retrain", "--hours", "train on the last H hours before the newest event",
             required=False, default="24")
    add_flag(p, "retrain", "--out", "where the new artifact is written (kept when not "
             "published)", default="artifacts/retrain")
    add_flag(p, "retrain", "--seed", "random seed", default="0")
    add_flag(p, "retrain", "--device", "torch device: auto, cpu or cuda", default="auto",
             choices=["auto", "cpu", "cuda"])
    add_flag(p, "retrain", "--catalog", "the shop's catalog, as for `streamrec train`")
    add_flag(p, "retrain", "--json-out", "also write the comparison as JSON here")
    add_switch(p, "retrain", "--dry-run", "compare and store the comparison in the new "
               "manifest; publish nothing")
    add_switch(p, "retrain", "--no-announce", "publish the folder if not worse, but do "
               "not make it live")
    add_no_progress(p)
    add_config_flags(p, ["--registry", "--control-topic", "--bootstrap-servers"])
    p.set_defaults(func=cmd_retrain)

    p = sub.add_parser("run", help="run the job on the local minicluster")
    add_run_arguments(p)
    p.set_defaults(func=run_from_args)

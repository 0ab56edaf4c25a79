"""Online figures from the feedback topic: feedback, ab."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator

from streamrec.cli.common import (
    env_on,
)
from streamrec.feedback_view import decoded, show, without_erased
from streamrec.kafka_io import consume
from streamrec.lab.evaluation import ab_report as ab
from udfs.config import ENV_PREFIX, ConfigError
from udfs.flags import add_config_flags, add_flag, config_from_args
from udfs.kafka_security import python_client_options
from udfs.records import TOMBSTONE_FIELD


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
    """Rolling online HR@10 and NDCG@10 per model version and arm (docs/operations.md 'Online feedback')."""
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


def register(sub: argparse._SubParsersAction) -> None:
    """Add the feedback, ab commands."""
    p = sub.add_parser("feedback", help="rolling online HR@10 and NDCG@10 per model version and arm")
    add_flag(p, "--window", f"{ENV_PREFIX}FEEDBACK_WINDOW", "over the last N feedback records", default="10000")
    p.add_argument("--follow", action="store_true", default=env_on(f"{ENV_PREFIX}FEEDBACK_FOLLOW"),
                   help=f"keep reading, print the table every 2 s [env: {ENV_PREFIX}FEEDBACK_FOLLOW=1]")
    add_flag(p, "--file", f"{ENV_PREFIX}FEEDBACK_FILE", "read a bounded run's OUT.feedback.jsonl instead of the topic")
    add_flag(p, "--timeout", f"{ENV_PREFIX}FEEDBACK_TIMEOUT", "without --follow: stop after this many idle "
             "seconds", default="5")
    add_config_flags(p, ["--bootstrap-servers", "--feedback-topic"])
    p.set_defaults(func=cmd_feedback)

    p = sub.add_parser("ab", help="A/B experiments: per-arm online figures")
    p.add_argument("action", choices=["report"])
    source = p.add_mutually_exclusive_group()
    source.add_argument("--from-topic", action="store_true", default=env_on(f"{ENV_PREFIX}AB_FROM_TOPIC"),
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

"""Online figures from the feedback topic: feedback, ab."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator

from streamrec.feedback_view import decoded, show, without_erased
from streamrec.kafka_io import consume
from streamrec.lab.evaluation import ab_report as ab
from udfs.config import ConfigError
from udfs.flags import add_config_flags, add_flag, add_switch, config_from_args
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
    add_flag(p, "feedback", "--window", "over the last N feedback records", default="10000")
    add_switch(p, "feedback", "--follow", "keep reading, print the table every 2 s")
    add_flag(p, "feedback", "--file", "read a bounded run's OUT.feedback.jsonl instead of the topic")
    add_flag(p, "feedback", "--timeout", "without --follow: stop after this many idle "
             "seconds", default="5")
    add_config_flags(p, ["--bootstrap-servers", "--feedback-topic"])
    p.set_defaults(func=cmd_feedback)

    p = sub.add_parser("ab", help="A/B experiments: per-arm online figures")
    p.add_argument("action", choices=["report"])
    source = p.add_mutually_exclusive_group()
    add_switch(source, "ab", "--from-topic", "read kafka.feedback_topic (the default)")
    add_flag(source, "ab", "--file", "a bounded run's OUT.feedback.jsonl")
    add_flag(p, "ab", "--out", "folder for ab_report.json and ab_report.png", default="ab-report")
    add_flag(p, "ab", "--control", "the arm others are compared with (default: 'control' "
             "if present, else the first by name)", default="")
    add_flag(p, "ab", "--resamples", "bootstrap resamples", default="2000")
    add_flag(p, "ab", "--timeout", "stop reading the topic after this many idle seconds",
             default="5")
    add_config_flags(p, ["--bootstrap-servers", "--feedback-topic"])
    p.set_defaults(func=cmd_ab)

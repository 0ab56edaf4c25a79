"""The demo: broker, model, job and replay, recommendations on screen."""

from __future__ import annotations

import argparse

from streamrec.lab.demo import run_demo
from udfs.flags import add_config_flags, add_flag, config_from_args


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(config_from_args(args), events=int(args.events), rate=float(args.rate))


def register(sub: argparse._SubParsersAction) -> None:
    """Add the demo command."""
    p = sub.add_parser("demo", help="broker + model + job + replay, recommendations on screen")
    add_flag(p, "demo", "--events", "events to replay", default="1500")
    add_flag(p, "demo", "--rate",
             "replay rate, events/s (below the job's capacity, so latency is not queueing)", default="60")
    add_config_flags(p, ["--artifact", "--provider"])
    p.set_defaults(func=cmd_demo)

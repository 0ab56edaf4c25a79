"""`streamrec`: the command line, one module per command group. Every flag has an environment fallback (shown
in --help); other settings come from the config file (--config / STREAMREC_CONFIG).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from streamrec.about import package_version
from streamrec.cli import (
    bench_commands,
    data_commands,
    demo_commands,
    evaluation_commands,
    feedback_commands,
    model_commands,
    serve_commands,
)
from streamrec.cli.common import require
from udfs.errors import reported
from udfs.flags import REPORTED_ERRORS, setup_logging

# The command groups, in the order --help lists them.
GROUPS = (data_commands, feedback_commands, model_commands, evaluation_commands, bench_commands, serve_commands,
          demo_commands)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamrec", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"streamrec {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
    return parser


REQUIRED = {"replay": ("events",), "train": ("events",), "generate": ("out",), "catalog": ("file",)}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        require(args, *REQUIRED.get(args.command, ()))
        return int(args.func(args) or 0)
    except REPORTED_ERRORS as exc:
        print(f"streamrec {args.command}: {exc}", file=sys.stderr)
        return reported(exc) or 1
    except KeyboardInterrupt:
        return 130

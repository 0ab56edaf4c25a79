"""Flags and helpers the command modules share."""

from __future__ import annotations

import argparse
import os

from udfs.config import ENV_PREFIX, ConfigError
from udfs.flags import add_flag
from udfs.logs import FORMATS, TS_UNITS, CsvLayout


def add_log_flags(p: argparse.ArgumentParser, command: str) -> None:
    """--format and the generic CSV layout flags of a command that reads a behavior log; every such
    command defaults to ``auto``, so one file means the same to replay, train, retrain and evaluate."""
    add_flag(p, command, "--format", "userbehavior (the Taobao CSV: user,item,category,"
             "behavior,ts in s, no header), csv (any CSV: see --columns), parquet or arrow (a table, Taobao column "
             "order or --columns), generated (msgpack) or auto (by suffix: msgpack, .parquet, .arrow/.feather; "
             "else CSV: the Taobao layout, or --columns)", default="auto", choices=list(FORMATS))
    add_flag(p, command, "--columns",
             "with --format csv, parquet or arrow: the file's columns in order (user,item,category,behavior,ts; "
             "- skips one) or FIELD=NAME|POSITION entries (user=session,item=item_id,ts=time); "
             "category and behavior are optional (0, pv)")
    add_flag(p, command, "--ts-unit", "with --format csv: timestamp unit",
             default="s", choices=list(TS_UNITS))
    add_flag(p, command, "--behaviors", "with --format csv: the log's behavior names "
             "mapped to pv/cart/fav/buy (click=pv,order=buy); an unmapped name makes the row malformed",
             default="")


def add_no_progress(p: argparse.ArgumentParser) -> None:
    """Bars are drawn on a terminal only; this turns them off there too (a recorded session)."""
    p.add_argument("--no-progress", action="store_true",
                   default=os.environ.get(f"{ENV_PREFIX}NO_PROGRESS", "") in ("1", "true", "yes"),
                   help=f"no progress bars (none are drawn off a terminal) [env: {ENV_PREFIX}NO_PROGRESS=1]")


def log_source(args: argparse.Namespace) -> tuple[str, CsvLayout | None]:
    """The log format and CSV layout the flags describe; ``load_events`` checks that they fit."""
    if args.columns:
        return args.format, CsvLayout.parse(args.columns, args.ts_unit, args.behaviors)
    if args.ts_unit != "s" or args.behaviors:
        raise ConfigError("--ts-unit and --behaviors apply to --format csv with --columns")
    return args.format, None


def positive_int(flag: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{flag}: a positive integer, not {text!r}") from None
    if value < 1:
        raise ConfigError(f"{flag}: a positive integer, not {value}")
    return value


def int_list(flag: str, text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{flag}: comma-separated integers, not {text!r}") from None
    if not values:
        raise ConfigError(f"{flag}: at least one value")
    return values


def when_text(ms: int | None) -> str:
    import time

    return "-" if ms is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000))


def require(args: argparse.Namespace, *names: str) -> None:
    missing = [n for n in names if getattr(args, n, None) in (None, "")]
    if missing:
        flags = ", ".join("--" + n.replace("_", "-") for n in missing)
        raise ConfigError(f"{args.command}: missing {flags}")

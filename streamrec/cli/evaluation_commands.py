"""Evaluation: offline, prequential through the job, the development matrix and the diversity sweep."""

from __future__ import annotations

import argparse
from pathlib import Path

from streamrec.cli.common import (
    add_log_flags,
    int_list,
    log_source,
    positive_int,
    require,
)
from streamrec.lab.evaluation.diversity_sweep import (
    DEFAULT_CAPS,
    SWEEP_JSON,
    SWEEP_PNG,
    format_sweep,
    parse_caps,
    sweep,
)
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
from streamrec.lab.evaluation.report import evaluate, format_table
from udfs.flags import add_flag, add_switch
from udfs.logs import load_events


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.matrix:
        return cmd_matrix(args)
    require(args, "events")
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


def cmd_matrix(args: argparse.Namespace) -> int:
    seeds = int_list("--seeds", args.seeds)
    logs = [x.strip() for x in args.logs.split(",") if x.strip()] if args.logs else None
    use_job = args.model_source == "job"
    # Several logs with the job: one process per log (see matrix.log_in_subprocess).
    workers = positive_int("--workers", args.workers) if args.workers else default_workers()
    threads = positive_int("--train-threads", args.train_threads)
    report = run_matrix(args.data, args.out, seeds=seeds, logs=logs, use_job=use_job, provider=args.provider,
                        isolate=use_job and (logs is None or len(logs) > 1), workers=workers,
                        train_threads=threads)
    print(format_matrix(report))
    out = Path(args.out)
    print(f"report: {out / MATRIX_JSON}, table: {out / MATRIX_TABLE}, plot: {out / MATRIX_PNG}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the evaluate command."""
    p = sub.add_parser("evaluate", help="offline and prequential (through the job) evaluation vs baselines")
    add_flag(p, "evaluate", "--events", "the artifact's log", required=False)
    add_log_flags(p, "evaluate")
    add_flag(p, "evaluate", "--artifact", "model artifact", default="artifacts/model")
    add_flag(p, "evaluate", "--out", "report directory", default="eval-results")
    add_flag(p, "evaluate", "--protocol", "comma-separated: offline, prequential",
             default="offline,prequential")
    add_flag(p, "evaluate", "--provider", "onnxruntime provider for the job", default="cpu",
             choices=["auto", "cuda", "cpu"])
    add_switch(p, "evaluate", "--matrix", "the development matrix: every log under --data, split at its median "
               "event, trained per seed, scored prequentially; --events and --artifact are not used")
    add_flag(p, "evaluate", "--data", "with --matrix: folder of logs (*.csv, Taobao layout)",
             default=str(DEFAULT_DATA_DIR))
    add_flag(p, "evaluate", "--seeds", "with --matrix: comma-separated training seeds",
             default="0,1,2")
    add_flag(p, "evaluate", "--logs", "with --matrix: only these logs (names as in the table, "
             "e.g. dev/jdata2017_head)")
    add_flag(p, "evaluate", "--workers", "with --matrix: logs run at once, each in its own "
             "process (default: one per two cores, at least one)")
    add_flag(p, "evaluate", "--train-threads", "with --matrix: torch threads per "
             "training when logs run one at a time (with several at once: cores / workers)",
             default=str(TRAIN_THREADS))
    add_flag(p, "evaluate", "--model-source",
             "with --matrix: the model's lists from the bounded job or from its pure-Python replay",
             default="job", choices=["job", "replay"])
    add_flag(p, "evaluate", "--max-per-category",
             "the job's diversity cap (ranking.max_per_category) in the prequential protocol; "
             "empty: the config default")
    add_flag(p, "evaluate", "--diversity-sweep",
             "instead of the protocols: the model's prequential replay at each ranking.max_per_category in "
             f"CAPS (comma-separated, 0 = off; bare flag: {','.join(map(str, DEFAULT_CAPS))}); writes "
             f"{SWEEP_JSON} and {SWEEP_PNG}", nargs="?", const=",".join(map(str, DEFAULT_CAPS)), metavar="CAPS")
    p.set_defaults(func=cmd_evaluate)

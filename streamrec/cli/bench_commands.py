"""Benchmarks: bench (and --compare), bench-model, peer, bench-serve."""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import threading
from pathlib import Path

from jobs.layout import PROJECT_ROOT
from streamrec import progress
from streamrec.cli.common import (
    add_no_progress,
)
from streamrec.cli.settings_flags import SettingsFlags, add_settings_flags, settings_from_args
from streamrec.lab.benchmark.bench import Bench, BenchSettings
from streamrec.lab.benchmark.bench_report import markdown
from streamrec.lab.benchmark.compare import CompareError, compare
from streamrec.lab.benchmark.compare import markdown as compare_markdown
from streamrec.lab.benchmark.inference import main as bench_model_main
from streamrec.lab.benchmark.log_load import LoadBenchSettings, run_load_bench
from streamrec.lab.benchmark.log_load import markdown as load_markdown
from streamrec.lab.benchmark.peer import run_peer
from streamrec.lab.benchmark.scale import ScaleBench, ScaleSettings
from streamrec.lab.benchmark.scale_report import markdown as scale_markdown
from streamrec.lab.benchmark.serve_latency import ServeBenchSettings, run_serve_bench
from streamrec.lab.benchmark.serve_latency import markdown as serve_markdown
from udfs.flags import CONFIG_FLAGS, add_config_flags, add_flag, config_from_args

# Each bench's flags, from its settings dataclass (streamrec/cli/settings_flags.py).
BENCH_FLAGS = SettingsFlags(BenchSettings, "bench", names={"out_dir": "--out"}, defaults={"out_dir": "bench-results"})
SCALE_FLAGS = SettingsFlags(ScaleSettings, "bench", prefix="scale-", skip=frozenset({"out_dir"}))
SERVE_FLAGS = SettingsFlags(ServeBenchSettings, "bench-serve", names={"out_dir": "--out", "duration_s": "--duration"},
                            defaults={"out_dir": "bench-results/serve"})
LOAD_FLAGS = SettingsFlags(LoadBenchSettings, "bench-load", names={"out_dir": "--out"},
                           defaults={"out_dir": "bench-results/log-load"})


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
    if args.compare:
        return cmd_bench_compare(args)
    phases = tuple(p.strip() for p in args.phases.split(",") if p.strip())
    cfg = config_from_args(args)
    progress.set_enabled(not args.no_progress)
    others = tuple(p for p in phases if p != "scale")
    out = Path(args.out)
    if others:
        settings = settings_from_args(BENCH_FLAGS, args, phases=others)
        results = Bench(settings, cfg).run()
        print(markdown(results))
        print(f"results: {out / 'results.json'}, {out / 'results.md'}, {out / 'results.png'}")
    if "scale" in phases:
        scale = settings_from_args(SCALE_FLAGS, args, out_dir=out)
        print(scale_markdown(ScaleBench(scale, cfg).run()))
        print(f"results: {out / 'scale.json'}, {out / 'scale.md'}")
    return 0


def cmd_bench_compare(args: argparse.Namespace) -> int:
    """This tree's bench beside REF's (streamrec/lab/benchmark/compare.py)."""
    try:
        result = compare(PROJECT_ROOT, args.compare, vars(args), Path(args.out), int(args.compare_repeats))
    except CompareError as exc:
        print(f"streamrec bench --compare: {exc}", file=sys.stderr)
        return 2
    print(compare_markdown(result))
    print(f"results: {Path(args.out) / 'compare.json'}, {Path(args.out) / 'compare.md'}")
    return 0


def cmd_bench_serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(SERVE_FLAGS, args)
    print(serve_markdown(run_serve_bench(settings)))
    print(f"results: {settings.out_dir / 'serve_latency.json'}")
    return 0


def cmd_bench_load(args: argparse.Namespace) -> int:
    settings = settings_from_args(LOAD_FLAGS, args)
    print(load_markdown(run_load_bench(settings)))
    print(f"results: {settings.out_dir / 'log_load.json'}, {settings.out_dir / 'log_load.md'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the bench-model, peer, bench, bench-serve commands."""
    p = sub.add_parser("bench-model", help="scored pairs/s and latency: torch vs onnxruntime fp32/fp16/int8")
    add_flag(p, "bench-model", "--artifact", "model artifact", default="artifacts/model")
    add_flag(p, "bench-model", "--out", "results directory", default="bench-results")
    add_flag(p, "bench-model", "--events",
             "the artifact's training log, for held-out parity batches")
    add_flag(p, "bench-model", "--provider", "auto, cuda or cpu", default="auto",
             choices=["auto", "cuda", "cpu"])
    add_flag(p, "bench-model", "--batch-sizes", "comma-separated rows per call",
             default="1,4,16,64,256,1024,4096")
    add_flag(p, "bench-model", "--repeats", "timed calls per cell (fewer for big batches)",
             default="50")
    p.set_defaults(func=cmd_bench_model)

    p = sub.add_parser("peer", help="the plain-Python consumer loop doing the job's work (benchmark peer)")
    add_flag(p, "peer", "--max-events", "stop after this many input records")
    add_flag(p, "peer", "--idle-timeout", "stop after this many idle seconds",
             default="30")
    add_config_flags(p, [f for f in CONFIG_FLAGS if f != "--resume"])  # the peer keeps no Flink state
    p.set_defaults(func=cmd_peer)

    p = sub.add_parser("bench", help="job (p1, p2) vs plain-Python peer vs model and Kafka ceilings, latency")
    add_settings_flags(p, BENCH_FLAGS)
    add_settings_flags(p, SCALE_FLAGS)
    add_flag(p, "bench", "--compare",
             "instead of one bench: build REF (a commit, branch or tag) in a worktree with its own venv and run "
             "its bench and this tree's alternately with the same flags, then print each figure's ratio "
             "(OUT/compare.json, OUT/compare.md)", metavar="REF")
    add_flag(p, "bench", "--compare-repeats",
             "with --compare: bench runs per side, in ABBA order; medians are reported", default="2")
    add_config_flags(p, ["--provider", "--delivery-guarantee"])
    add_no_progress(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("bench-serve", help="latency of streamrec serve's routes at fixed request rates (open loop), "
                       "and its view's rebuild")
    add_settings_flags(p, SERVE_FLAGS)
    p.set_defaults(func=cmd_bench_serve)

    p = sub.add_parser("bench-load", help="load time of a training log by format and reader (CSV, pyarrow's CSV, "
                       "Parquet, Arrow), on the same events")
    add_settings_flags(p, LOAD_FLAGS)
    p.set_defaults(func=cmd_bench_load)

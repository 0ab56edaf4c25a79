"""Benchmarks: bench (and --compare), bench-model, peer, bench-serve."""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import threading
from pathlib import Path

from streamrec import progress
from streamrec.cli.common import (
    add_no_progress,
)
from streamrec.lab.benchmark.bench import Bench, BenchSettings
from streamrec.lab.benchmark.bench_report import markdown
from streamrec.lab.benchmark.compare import CompareError, compare
from streamrec.lab.benchmark.compare import markdown as compare_markdown
from streamrec.lab.benchmark.inference import main as bench_model_main
from streamrec.lab.benchmark.peer import run_peer
from streamrec.lab.benchmark.scale import ScaleBench, ScaleSettings
from streamrec.lab.benchmark.scale_report import markdown as scale_markdown
from streamrec.lab.benchmark.serve_latency import ServeBenchSettings, run_serve_bench
from streamrec.lab.benchmark.serve_latency import markdown as serve_markdown
from udfs.flags import CONFIG_FLAGS, add_config_flags, add_flag, config_from_args


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


def cmd_bench_serve(args: argparse.Namespace) -> int:
    settings = ServeBenchSettings(Path(args.out), rate=float(args.rate), duration_s=float(args.duration),
                                  shoppers=int(args.shoppers), connections=int(args.connections),
                                  routes=tuple(r.strip() for r in args.routes.split(",") if r.strip()),
                                  guest_rate=float(args.guest_rate))
    print(serve_markdown(run_serve_bench(settings)))
    print(f"results: {settings.out_dir / 'serve_latency.json'}")
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
    add_flag(p, "bench", "--out", "results directory", default="bench-results")
    add_flag(p, "bench", "--events", "events in the generated stream", default="1000000")
    add_flag(p, "bench", "--users", "users in the stream", default="100000")
    add_flag(p, "bench", "--items", "items in the catalog", default="50000")
    add_flag(p, "bench", "--seed", "stream seed", default="11")
    add_flag(p, "bench", "--train-events",
             "events of the stream's catalog the bench model is trained on when there is no --artifact",
             default="60000")
    add_flag(p, "bench", "--artifact",
             "model artifact (default: train one on 60,000 events of the stream's catalog into OUT/artifact)")
    add_flag(p, "bench", "--parallelisms", "job parallelisms, comma-separated",
             default="1,2")
    add_flag(p, "bench", "--warmup-s", "seconds after the first output before timing",
             default="20")
    add_flag(p, "bench", "--window-s", "throughput window per phase, seconds", default="90")
    add_flag(p, "bench", "--latency-s", "seconds of paced replay per latency point",
             default="45")
    add_flag(p, "bench", "--latency-warmup-s",
             "seconds of paced replay before each latency point's timed part (JIT warm-up)", default="60")
    add_flag(p, "bench", "--latency-repeats",
             "independent runs per latency point, each on a fresh cluster; medians are reported", default="3")
    add_flag(p, "bench", "--latency-rates",
             "absolute events/s for the latency points (default: 50%% and 90%% of the measured maximum); "
             "the batching phase paces at the first (default: half the unbatched rate)",
             default="")
    add_flag(p, "bench", "--phases",
             "comma-separated: model, kafka, job, peer, latency, batching (job with ranking.batching off and on, "
             "throughput and the tail at half the unbatched rate), floor (the job beside itself with its lists "
             "replayed, with and without the model call: what faster candidate, feature and list code could give); "
             "scale (store scale, its own workload: not a "
             "default, over an hour per backend at full size on 2 cores)",
             default="model,kafka,job,peer,latency,batching,floor")
    add_flag(p, "bench", "--batching-repeats",
             "batching and floor: throughput runs per side, alternated; medians are reported", default="1")
    add_flag(p, "bench", "--batching-paced",
             "batching: also the paced tail of each side at half the unbatched rate (on/off)", default="on")
    add_flag(p, "bench", "--scale-shoppers", "scale: distinct shoppers (exact)",
             default="1000000")
    add_flag(p, "bench", "--scale-events", "scale: events through the broker",
             default="5000000")
    add_flag(p, "bench", "--scale-items", "scale: items in the catalog", default="100000")
    add_flag(p, "bench", "--scale-backends", "scale: state backends, comma-separated",
             default="hashmap,rocksdb")
    add_flag(p, "bench", "--scale-parallelism",
             "scale: job parallelism (one one-slot TaskManager each)", default="2")
    add_flag(p, "bench", "--scale-checkpoint-interval-ms",
             "scale: checkpoint interval", default="10000")
    add_flag(p, "bench", "--scale-artifact",
             "scale: model artifact (default: train one on the scale catalog into OUT/scale-artifact)")
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
    add_flag(p, "bench-serve", "--out", "results folder", default="bench-results/serve")
    add_flag(p, "bench-serve", "--rate", "lookups per second", default="1000")
    add_flag(p, "bench-serve", "--duration", "timed seconds (after 5 s of warm-up)",
             default="60")
    add_flag(p, "bench-serve", "--shoppers", "lists in the topic", default="100000")
    add_flag(p, "bench-serve", "--connections", "keep-alive client connections",
             default="64")
    add_flag(p, "bench-serve", "--routes", "routes to time, in order",
             default="lookup,batch,similar,guest")
    add_flag(p, "bench-serve", "--guest-rate", "guest lists per second", default="100")
    p.set_defaults(func=cmd_bench_serve)

"""Where an event's CPU goes outside Flink: both stages' Python work, in one process, under cProfile.

    python -m streamrec.lab.benchmark.profile_events --artifact DIR [--events N] [--per-call K] [--top T]

Replays a generated stream (the bench's catalog sizes) through what the job's Python does
per event with batching on: state decode and update, candidates, features and the scoring
request (the keyed stage), then decode, one model call per ``--per-call`` requests,
top-K, reasons and the output record (the ranking stage). Flink's own costs (state
backend, serialization between JVM and Python, timers) are not in it; py-spy on a
thread-mode TaskManager shows those. Prints the per-event time of the whole, of the model,
and the functions by cumulative time (cProfile roughly doubles pure-Python costs).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from typing import Any

import msgpack

from streamrec.lab.generator import generate_events
from udfs.batching import decode_request, encode_request
from udfs.config import load_config
from udfs.events import Event
from udfs.recommend import Recommender
from udfs.runtime import build_recommender
from udfs.state import UserState


def replay(rec: Recommender, events: list[Event], per_call: int, max_bytes: int) -> None:
    blobs: dict[Any, bytes] = {}
    buffer: list[bytes] = []
    for e in events:
        state = UserState.from_bytes(blobs.get(e.user_id))
        if rec.apply(state, e):
            buffer.append(encode_request(rec.prepare(rec.request(state, e))))
        blobs[e.user_id], _ = state.to_bounded_bytes(max_bytes)
        if len(buffer) >= per_call:
            for record in rec.rank([decode_request(b) for b in buffer]):
                msgpack.packb(record, use_bin_type=True)
            buffer = []


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--artifact", required=True)
    p.add_argument("--events", type=int, default=15_000)
    p.add_argument("--per-call", type=int, default=20, help="requests per model call")
    p.add_argument("--top", type=int, default=30)
    a = p.parse_args(argv)
    cfg = load_config(environ={}, overrides={"ranking": {"artifact_dir": a.artifact, "provider": "cpu"}})
    rec = build_recommender(cfg)
    events = generate_events(a.events, n_users=a.events // 3, n_items=50_000, n_categories=500, seed=11)
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.runcall(replay, rec, events, a.per_call, cfg.state.max_bytes)
    wall = time.perf_counter() - start
    model = rec.ranker.stats.seconds if rec.ranker else 0.0
    print(f"{a.events} events: {1000 * wall / a.events:.3f} ms per event under cProfile, "
          f"{1000 * model / a.events:.3f} of them in the model")
    pstats.Stats(profile).sort_stats("cumulative").print_stats(a.top)


if __name__ == "__main__":
    main()

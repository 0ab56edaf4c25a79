"""What online item knowledge costs in state: ``python -m streamrec.lab.benchmark.item_state ARTIFACT [LOG]``.

Replays a log (default: the bench's generated stream) through the job's per-event work in one
process (:class:`~udfs.item_knowledge.ItemKnowledge`, ``Recommender.apply``) with the default
config, then measures what the job's keyed state would hold: each shopper's state value with its
kept fresh rows and without them, each item's row (``item-rows``), each shopper's recent items
(``item-pairs``). Sizes are the stored bytes (msgpack), before the backend's own overhead.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack

from streamrec.lab.generator import generate_events
from udfs.config import load_config
from udfs.events import Event
from udfs.logs import load_events
from udfs.runtime import build_recommender, item_knowledge
from udfs.state import UserState

# The bench's stream (streamrec bench defaults on the compare table's flags).
BENCH_STREAM = {"n_events": 300_000, "n_users": 100_000, "n_items": 50_000, "seed": 11}


def _summary(sizes: Sequence[int]) -> dict[str, float]:
    ordered = sorted(sizes)
    return {"count": len(ordered), "mean": round(statistics.mean(ordered), 1) if ordered else 0.0,
            "median": ordered[len(ordered) // 2] if ordered else 0,
            "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else 0,
            "max": ordered[-1] if ordered else 0, "total_mb": round(sum(ordered) / 1e6, 2)}


def measure(events: Sequence[Event], artifact_dir: str | Path) -> dict[str, Any]:
    """State sizes after replaying ``events`` (time-sorted) with item knowledge on."""
    config = load_config(environ={}, overrides={"ranking": {"artifact_dir": str(artifact_dir), "provider": "cpu"},
                                                "items": {"online": True}})
    rec = build_recommender(config, with_ranker=False)
    knowledge = item_knowledge(config, rec.artifact)
    assert knowledge is not None  # items.online is set just above
    states: dict[str, UserState] = {}
    for e in events:
        user = str(e.user_id)
        state = states.setdefault(user, UserState())
        rec.apply(state, e, knowledge.observe(user, e), config.items.kept_rows)
    with_rows = [len(s.to_bytes()) for s in states.values()]
    for s in states.values():
        s.rows = {}
    return {
        "events": len(events),
        "kept_rows": config.items.kept_rows, "emit": config.items.emit, "max_entries": config.items.max_entries,
        "shopper_state_bytes": _summary(with_rows),
        "shopper_state_bytes_without_rows": _summary([len(s.to_bytes()) for s in states.values()]),
        "item_row_bytes": _summary([len(r.to_bytes()) for r in knowledge.rows.values()]),
        "item_row_entries": _summary([len(r.scores) for r in knowledge.rows.values()]),
        "recent_items_bytes": _summary([len(msgpack.packb(v)) for v in knowledge.recent.values()]),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", help="model artifact directory (its co-visitation table seeds the rows)")
    parser.add_argument("log", nargs="?", help="a behavior log (CSV, Parquet, ...); default: the bench's stream")
    args = parser.parse_args(argv)
    events = (load_events(args.log, sort=True) if args.log
              else sorted(generate_events(BENCH_STREAM["n_events"], n_users=BENCH_STREAM["n_users"],
                                          n_items=BENCH_STREAM["n_items"], seed=BENCH_STREAM["seed"]),
                          key=lambda e: e.ts))
    print(json.dumps(measure(events, args.artifact), indent=2))


if __name__ == "__main__":
    main()

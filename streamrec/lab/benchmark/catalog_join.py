"""The catalog join's two designs, measured: memory and events/s at 100,000 and 1,000,000 items.

``python -m streamrec.lab.benchmark.catalog_join [--out docs/bench/catalog] [--items 100000,1000000]``
writes ``catalog_join.json`` and ``catalog_join.md``. What each design costs, per parallel
instance of the keyed function:

- **broadcast**: every instance holds the whole catalog. Flink's broadcast state keeps each
  item's record as read (key + msgpack bytes: the payload is summed here; the JVM's per-entry
  overhead comes on top), and the Python :class:`~udfs.catalog.Catalog` mirror is measured
  with ``tracemalloc`` after loading every record. Per event the keyed function does the
  job's own work (:class:`~udfs.recommend.Recommender` ``apply``/``request``/``recommend``)
  with the catalog's rules on.
- **keyed by item**: each item's record lives on one instance (state ``1/p`` of the
  catalog), but a list's candidates are spread over every instance: each event fans out one
  record per candidate keyed by item, each is checked against that item's state and answered,
  and the answers are gathered again by user. Simulated in process: per candidate, pack the
  request, look up and decode the item's record, pack the verdict, unpack it on the user's
  side. No network, no Flink: a lower bound on what that design costs per event. It cannot
  serve new items by content similarity (that needs an index across items), so its lists
  carry the stock/deleted rule only.

Both run the keyed function's work without the model (``ranker=None``: generator order), as
the model's cost is the same whichever way the catalog is joined. Single process, one core.

``--job`` adds the broadcast design in the real job (``streamrec run`` on the local
minicluster, parallelism 1, thread mode, a local broker): the catalog is published first,
a bad record after it marks its end (its dead letter means the job has read everything
before it); then the memory of the job's processes (client, JVM and the embedded Python:
RSS summed over its process group) and the events/s of a backlog of events with the model,
against the same run with an empty catalog.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack

from streamrec.catalog_files import catalog_records
from streamrec.kafka_io import consume, event_record, produce
from streamrec.lab.benchmark.bench import ensure_artifact
from streamrec.lab.benchmark.procstats import rss_mb
from streamrec.lab.benchmark.topic_counts import TopicCounter
from streamrec.lab.generator import generate_events
from streamrec.lab.local.kafka import LocalKafka
from streamrec.lab.local.procs import LOCAL_BROKER_SECURITY, job_env, stop_group
from streamrec.lab.markdown import table
from udfs.artifact import Artifact, Manifest
from udfs.candidates import build_tables
from udfs.catalog import Catalog, CatalogItem, catalog_key, decode_catalog_item, encode_catalog_item
from udfs.config import TOPIC_FIELDS
from udfs.events import Event
from udfs.features import Vocab
from udfs.recommend import Recommender
from udfs.state import StateLimits, UserState

DEFAULT_ITEMS = (100_000, 1_000_000)
EVENTS = 3_000
N_CANDIDATES = 100
TOP_K = 20
OUT_OF_STOCK_SHARE = 0.02
NEW_SHARE = 0.01
WORDS = ("red", "blue", "wool", "steel", "compact", "deluxe", "travel", "kitchen", "sport", "winter", "lamp", "mug")


def workload(n_items: int, seed: int = 5) -> tuple[list[Event], list[CatalogItem]]:
    """A generated log over ``n_items`` items and a catalog of all of them: a share out of stock,
    a share new (in the catalog, absent from the log the tables are built from)."""
    events = generate_events(EVENTS * 4, n_users=2_000, n_items=n_items, n_categories=max(50, n_items // 500),
                             seed=seed, start_ts_ms=1_700_000_000_000, duration_s=86400)
    rng = random.Random(seed)
    first_cat = 9_000_000
    n_cats = max(50, n_items // 500)
    items = []
    for k in range(n_items):
        stock = 0 if rng.random() < OUT_OF_STOCK_SHARE else rng.randrange(1, 100)
        title = " ".join(rng.choice(WORDS) for _ in range(3))
        items.append(CatalogItem(1_000_000 + k, first_cat + k % n_cats, f"brand{k % 40}", 10.0, stock, title,
                                 1_700_000_000_000, False))
    new = [CatalogItem(50_000_000 + k, first_cat + k % n_cats, f"brand{k % 40}", 10.0, 5, "new deluxe lamp",
                       1_700_000_000_000, False) for k in range(int(n_items * NEW_SHARE))]
    return events, items + new


def _recommender(events: Sequence[Event], catalog: Catalog | None) -> Recommender:
    history = events[: len(events) - EVENTS]
    tables = build_tables(history)
    vocab = Vocab.build({i: 1 for i in tables.popularity}, {c: 1 for c in tables.category_top}, 1)
    artifact = Artifact(Path("."), Manifest({"model_version": "bench", "seq_len": 50}), vocab, tables, b"")
    return Recommender(artifact, None, StateLimits(), top_k=TOP_K, n_candidates=N_CANDIDATES, catalog=catalog,
                       new_item_slots=1 if catalog is not None else 0)


def _events_per_s(rec: Recommender, events: Sequence[Event], keyed_check: dict[str, bytes] | None = None) -> float:
    """The keyed function's per-event work over the last ``EVENTS`` events (state from the rest)."""
    states: dict[Any, UserState] = {}
    for e in events[: len(events) - EVENTS]:
        rec.apply(states.setdefault(e.user_id, UserState()), e)
    timed = events[len(events) - EVENTS:]
    start = time.perf_counter()
    for e in timed:
        st = states.setdefault(e.user_id, UserState())
        if rec.apply(st, e):
            req = rec.request(st, e)
            if keyed_check is not None:
                _keyed_round_trip(e.user_id, req.candidates.items, keyed_check)
            msgpack.packb(rec.recommend([req])[0], use_bin_type=True)
    return len(timed) / (time.perf_counter() - start)


def _keyed_round_trip(user: Any, candidates: Sequence[Any], state: dict[str, bytes]) -> set[Any]:
    """One event's candidates through state keyed by item: fan out, look up, answer, gather.

    Every candidate, not just the listed ones: a blocked item must be replaced before the cut."""
    verdicts = []
    for item in candidates:
        request = msgpack.packb((user, item))
        _, wanted = msgpack.unpackb(request)
        blob = state.get(catalog_key(wanted))
        entry = decode_catalog_item(blob) if blob is not None else None
        ok = not isinstance(entry, CatalogItem) or entry.available
        verdicts.append(msgpack.packb((wanted, ok)))
    return {i for i, ok in (msgpack.unpackb(v) for v in verdicts) if ok}


def _mirror_bytes(items: Sequence[CatalogItem], known: Any) -> tuple[Catalog, int]:
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    catalog = Catalog(known=known)
    for item in items:
        catalog.apply(item)
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return catalog, used


def measure(n_items: int) -> dict[str, Any]:
    events, items = workload(n_items)
    started = time.perf_counter()
    wire = [encode_catalog_item(i) for i in items]
    payload = sum(len(catalog_key(i.item_id)) + len(b) for i, b in zip(items, wire, strict=True))
    decode_s = time.perf_counter()
    decoded = [decode_catalog_item(b) for b in wire]
    decode_rate = len(decoded) / (time.perf_counter() - decode_s)
    plain = _recommender(events, None)
    catalog, mirror = _mirror_bytes(items, plain.artifact.tables.popularity)
    joined = _recommender(events, catalog)
    keyed_state = {catalog_key(i.item_id): b for i, b in zip(items, wire, strict=True)}
    result = {
        "items": len(items),
        "out_of_stock": len(catalog.unavailable),
        "catalog_records_decoded_per_s": round(decode_rate),
        "state_payload_mb": round(payload / 1e6, 1),
        "broadcast": {
            "per_instance_mb": round((payload + mirror) / 1e6, 1),
            "python_mirror_mb": round(mirror / 1e6, 1),
            "events_per_s": round(_events_per_s(joined, events), 1),
        },
        "keyed_by_item": {
            "per_instance_mb_at_p": {p: round(payload / p / 1e6, 1) for p in (1, 2, 4, 8)},
            "events_per_s": round(_events_per_s(plain, events, keyed_state), 1),
        },
        "no_catalog_events_per_s": round(_events_per_s(_recommender(events, None), events), 1),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return result


JOB_EVENTS = 3_000
BENCH_ITEMS = 5_000


def _group_rss_mb(pid: int) -> float:
    """RSS of every process in ``pid``'s process group (the job's client, its JVM, their children)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pid:
                    total += rss_mb(int(entry.name))
            except (ProcessLookupError, PermissionError):
                continue
    return total


def _wait_for(topic: str, bootstrap: str, want: int, timeout_s: float) -> float:
    counter = TopicCounter(bootstrap, topic)
    start = time.perf_counter()
    try:
        while counter() < want:
            if time.perf_counter() - start > timeout_s:
                raise TimeoutError(f"{topic}: {counter()} of {want} records after {timeout_s:.0f} s")
            time.sleep(0.2)
    finally:
        counter.close()
    return time.perf_counter() - start


def job_run(broker: LocalKafka, artifact: Path, n_items: int, out: Path) -> dict[str, Any]:
    """One job with a catalog of ``n_items`` (0: empty): memory once it is read, then events/s."""
    topics = {f: f"cj-{n_items}-{f.split('_')[0]}" for f in TOPIC_FIELDS}
    broker.create_topics(list(topics.values()), compacted=[topics["catalog_topic"]])
    items = workload(n_items)[1] if n_items else []
    t = time.perf_counter()
    produce(broker.bootstrap, topics["catalog_topic"], catalog_records(items))
    produce(broker.bootstrap, topics["catalog_topic"], [(b"end", b"\xc1")])  # not msgpack: a dead letter
    publish_s = time.perf_counter() - t
    env = job_env(broker.bootstrap, topics, artifact, settings={
        "kafka": {"group_id": topics["output_topic"], **LOCAL_BROKER_SECURITY},
        "ranking": {"provider": "cpu"}, "job": {"checkpoint_interval_ms": 0}})
    with (out / f"job-{n_items}.log").open("wb") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "streamrec.cli", "run", "--source", "kafka", "--sink", "kafka"],
                                env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        load_s = _wait_for(topics["dlq_topic"], broker.bootstrap, 1, 900)
        time.sleep(3)
        rss = _group_rss_mb(proc.pid)
        events = generate_events(JOB_EVENTS, n_users=300, n_items=BENCH_ITEMS, n_categories=100, seed=3)
        produce(broker.bootstrap, topics["input_topic"], (event_record(e) for e in events[:1]))
        _wait_for(topics["output_topic"], broker.bootstrap, 1, 300)  # warm: the model is loaded
        t = time.perf_counter()
        produce(broker.bootstrap, topics["input_topic"], (event_record(e) for e in events[1:]))
        accepted = len({(e.user_id, e.item_id, e.behavior, e.ts) for e in events})
        _wait_for(topics["output_topic"], broker.bootstrap, accepted, 600)
        rate = (accepted - 1) / (time.perf_counter() - t)
        dead = [r.value["reason"] for r in consume(broker.bootstrap, topics["dlq_topic"], timeout_s=2)]
    finally:
        stop_group(proc)
    return {"items": len(items), "publish_s": round(publish_s, 1), "catalog_read_s": round(load_s, 1),
            "job_rss_mb": round(rss), "events_per_s": round(rate, 1), "dead_letters": dead}


def job_phase(sizes: Sequence[int], out: Path) -> list[dict[str, Any]]:
    artifact = out / "artifact"
    ensure_artifact(artifact, train_events=20_000, items=BENCH_ITEMS, categories=100, seed=3)
    with LocalKafka(out / "kafka", heap="1g") as broker:
        return [job_run(broker, artifact, n, out) for n in (0, *sizes)]


def job_markdown(runs: list[dict[str, Any]]) -> str:
    base = runs[0]
    lines = table(["catalog items", "job RSS (client + JVM + Python)", "over the empty catalog",
                   "events/s with the model", "catalog read by the job"],
                  [[f"{r['items']:,}", f"{r['job_rss_mb']:,} MB", f"+{r['job_rss_mb'] - base['job_rss_mb']:,} MB",
                    f"{r['events_per_s']:,}", f"{r['catalog_read_s']} s"] for r in runs], align="rrrrr")
    return "\n".join(lines) + "\n"


def markdown(results: list[dict[str, Any]]) -> str:
    cells: list[list[str]] = []
    for r in results:
        b, k = r["broadcast"], r["keyed_by_item"]
        at = k["per_instance_mb_at_p"]
        cells += [[f"{r['items']:,}", "broadcast", f"{b['per_instance_mb']} MB at any parallelism "
                   f"({r['state_payload_mb']} MB state payload + {b['python_mirror_mb']} MB Python mirror)",
                   f"{b['events_per_s']:,}"],
                  [f"{r['items']:,}", "keyed by item", f"{at[1]} MB / p ({at[4]} MB at p=4)",
                   f"{k['events_per_s']:,} (lower bound)"],
                  [f"{r['items']:,}", "no catalog", "0", f"{r['no_catalog_events_per_s']:,}"]]
    lines = table(["items", "design", "memory per instance", "events/s (keyed function, no model)"], cells,
                  align="rllr")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="catalog_join", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="docs/bench/catalog")
    parser.add_argument("--items", default=",".join(str(n) for n in DEFAULT_ITEMS))
    parser.add_argument("--job", action="store_true", help="also run the broadcast design in the real job")
    parser.add_argument("--skip-in-process", action="store_true", help="only the --job runs")
    parser.add_argument("--work", default="/tmp/streamrec-catalog-bench",
                        help="--job: broker data, the bench model and job logs (not results)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = [int(n) for n in args.items.split(",")]
    meta = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "events_timed": EVENTS, "n_candidates": N_CANDIDATES, "top_k": TOP_K}
    if not args.skip_in_process:
        results = [measure(n) for n in sizes]
        (out / "catalog_join.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
        (out / "catalog_join.md").write_text(markdown(results))
        print(markdown(results))
    if args.job:
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
        runs = job_phase(sizes, work)
        (out / "catalog_job.json").write_text(json.dumps({"meta": {**meta, "job_events": JOB_EVENTS}, "runs": runs},
                                                         indent=2) + "\n")
        (out / "catalog_job.md").write_text(job_markdown(runs))
        print(job_markdown(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Lookup latency of `streamrec serve` under an open-loop load.

A local broker gets ``shoppers`` lists (top 20 with reasons, in the output layout of
:mod:`udfs.records`) in a fresh topic; a real `streamrec serve` process rebuilds its
view from that topic (timed: start to a 200 from /healthz); then this process sends
``GET /v1/users/{id}/recommendations`` at a fixed ``rate`` for ``duration_s`` over
``connections`` keep-alive connections, a share of them for shoppers it has never
seen (the trending answer).

Open loop: request *i* is due at ``start + i / rate`` whatever happened before it,
and its latency runs from when it was due to its last response byte, so time spent
waiting for a free connection when the server falls behind counts (no coordinated
omission). The client runs on the same machine as the server and shares its cores.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from streamrec.kafka_io import produce
from streamrec.local.kafka import LocalKafka
from streamrec.local.serve import ServeProcess, get_json
from udfs.records import SCHEMA_VERSION, encode_output_record

RESULTS_JSON = "serve_latency.json"
RESULTS_MD = "serve_latency.md"


@dataclass
class ServeBenchSettings:
    out_dir: Path
    rate: float = 1000.0
    """Requests per second, open loop."""
    duration_s: float = 60.0
    """Timed part."""
    warmup_s: float = 5.0
    """Requests at ``rate`` before the timed part (not counted)."""
    shoppers: int = 100_000
    """Lists in the topic (one per shopper)."""
    unknown_share: float = 0.1
    """Share of requests for shoppers without a list."""
    connections: int = 64
    seed: int = 0


def bench_lists(n: int, seed: int, top_k: int = 20, n_items: int = 50_000) -> list[tuple[bytes, bytes]]:
    """``(key, value)`` output records for shoppers 0..n-1."""
    rng = random.Random(seed)
    now = int(time.time() * 1000)
    codes = ("recent", "covisit", "category", "trending")
    records = []
    for user in range(n):
        items = rng.sample(range(n_items), top_k)
        reasons: list[dict[str, Any]] = []
        for item in items:
            code = rng.choice(codes)
            reasons.append({"code": code, **({"because": rng.randrange(n_items)} if code == "covisit" else {}),
                            **({"category_id": item % 100} if code == "category" else {})})
        rec = {"schema_version": SCHEMA_VERSION, "user_id": user, "seq": 1, "items": items,
               "scores": sorted((round(rng.random(), 6) for _ in items), reverse=True), "reasons": reasons,
               "trigger": {"item_id": items[0], "behavior": "pv", "ts": now}, "model_version": "bench",
               "provider": "cpu", "fallback": None, "generated_at": now}
        records.append((str(user).encode(), encode_output_record(rec)))
    return records


async def _load(host: str, port: int, paths: list[str], rate: float, connections: int
                ) -> tuple[np.ndarray, dict[int, int], float]:
    """Send ``paths[i]`` at ``start + i / rate``; per-request latency (s), statuses, wall seconds."""
    loop = asyncio.get_running_loop()
    n = len(paths)
    lat = np.full(n, np.nan)
    statuses: dict[int, int] = {}
    queue: asyncio.Queue[int | None] = asyncio.Queue()
    start = loop.time() + 0.5

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while (i := await queue.get()) is not None:
                writer.write(f"GET {paths[i]} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
                lat[i] = loop.time() - (start + i / rate)
                code = int(head[9:12])
                statuses[code] = statuses.get(code, 0) + 1
        finally:
            writer.close()

    async def schedule() -> None:
        for i in range(n):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            queue.put_nowait(i)
        for _ in range(connections):
            queue.put_nowait(None)

    t0 = time.perf_counter()
    await asyncio.gather(schedule(), *(worker() for _ in range(connections)))
    return lat, statuses, time.perf_counter() - t0 - 0.5


def _paths(s: ServeBenchSettings, n: int, rng: random.Random) -> list[str]:
    def user() -> str:
        return f"new-{rng.randrange(10**9)}" if rng.random() < s.unknown_share else str(rng.randrange(s.shoppers))

    return [f"/v1/users/{user()}/recommendations" for _ in range(n)]


def run_serve_bench(s: ServeBenchSettings) -> dict[str, Any]:
    s.out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(s.seed)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        work = Path(tmp)
        broker = LocalKafka(work / "kafka").start(timeout=120)
        try:
            topic, events = "bench-recommendations", "bench-events"
            broker.create_topics([topic, events], partitions=2)
            produced = produce(broker.bootstrap, topic, bench_lists(s.shoppers, s.seed))
            serve = ServeProcess(broker.bootstrap, events, topic, work / "serve.sqlite", work / "serve.log")
            rebuild_s = serve.start(timeout_s=600)
            try:
                _, health = get_json(serve.base + "/healthz")
                if health["shoppers"] != s.shoppers:
                    raise RuntimeError(f"serve holds {health['shoppers']} lists, {s.shoppers} were produced")
                asyncio.run(_load("127.0.0.1", serve.port, _paths(s, int(s.rate * s.warmup_s), rng), s.rate,
                                  s.connections))
                cpu_before = _cpu_seconds(serve.pid)
                lat, statuses, wall = asyncio.run(_load("127.0.0.1", serve.port,
                                                        _paths(s, int(s.rate * s.duration_s), rng), s.rate,
                                                        s.connections))
                server_cpu = _cpu_seconds(serve.pid) - cpu_before
            finally:
                serve.stop()
        finally:
            broker.stop()
    ms = lat[~np.isnan(lat)] * 1000
    result = {
        "settings": {**asdict(s), "out_dir": str(s.out_dir)},
        "requests": int(len(lat)), "answered": int(len(ms)), "statuses": {str(k): v for k, v in statuses.items()},
        "achieved_rate": round(len(ms) / wall, 1),
        "server_cpu": {"seconds": round(server_cpu, 2), "cores": round(server_cpu / wall, 3),
                       "ms_per_request": round(1000 * server_cpu / max(1, len(ms)), 4)},
        "latency_ms": {q: round(float(np.percentile(ms, p)), 3) for q, p in
                       (("p50", 50), ("p90", 90), ("p99", 99), ("p999", 99.9))} | {"max": round(float(ms.max()), 3)},
        "rebuild": {"lists": s.shoppers, "seconds": round(rebuild_s, 2),
                    "lists_per_s": round(s.shoppers / rebuild_s, 1), "produce_s": round(produced.seconds, 2)},
        "machine": {"cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                    "python": platform.python_version(),
                    "versions": {p: _version(p) for p in ("starlette", "uvicorn", "httptools", "uvloop")}},
    }
    (s.out_dir / RESULTS_JSON).write_text(json.dumps(result, indent=2) + "\n")
    (s.out_dir / RESULTS_MD).write_text(markdown(result))
    return result


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc; Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def markdown(r: dict[str, Any]) -> str:
    lat, st = r["latency_ms"], r["settings"]
    return (f"| rate (req/s) | achieved | requests | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | statuses |\n"
            f"|---|---|---|---|---|---|---|---|---|\n"
            f"| {st['rate']:.0f} | {r['achieved_rate']:.0f} | {r['requests']} | {lat['p50']} | {lat['p90']} | "
            f"{lat['p99']} | {lat['p999']} | {lat['max']} | {r['statuses']} |\n\n"
            f"View rebuilt from the topic: {r['rebuild']['lists']} lists in {r['rebuild']['seconds']} s "
            f"({r['rebuild']['lists_per_s']} lists/s, start to healthy). {st['unknown_share']:.0%} of requests for "
            f"unknown shoppers; {st['connections']} keep-alive connections; {r['machine']['cpus']} CPUs, load "
            f"{r['machine']['loadavg_before'][0]:.1f} before. Server CPU: {r['server_cpu']['cores']} cores "
            f"({r['server_cpu']['ms_per_request']} ms per request).\n")

"""Latency of `streamrec serve`'s routes under an open-loop load, and how fast it rebuilds its view.

A local broker gets ``shoppers`` lists (top 20 with reasons, in the output layout of
:mod:`udfs.records`) in a fresh topic; a real `streamrec serve` process, over the bench model
(:func:`streamrec.lab.benchmark.bench.ensure_artifact`, trained once), rebuilds its view from that
topic (timed: start to a 200 from /healthz); then this process sends each route in turn at a fixed
rate for ``duration_s`` over ``connections`` keep-alive connections:

- ``lookup``: ``GET /v1/users/{id}/recommendations``, a share of them for shoppers it has never
  seen (the trending answer);
- ``batch``: ``GET /v1/recommendations?users=`` with ``batch_users`` shoppers, at ``rate / batch_users``
  (the same shoppers a second as the lookups);
- ``similar``: ``GET /v1/items/{id}/similar`` for items of the model's catalog;
- ``guest``: ``POST /v1/sessions/recommendations`` with a session of ``guest_events`` items: the
  job's candidates and model per request, so at its own (lower) ``guest_rate``.

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
from streamrec.lab.benchmark.bench import ensure_artifact
from streamrec.lab.local.kafka import LocalKafka
from streamrec.lab.local.serve_process import ServeProcess, get_json
from streamrec.lab.markdown import table
from udfs.artifact import load_artifact
from udfs.errors import InputError
from udfs.records import SCHEMA_VERSION, encode_output_record

RESULTS_JSON = "serve_latency.json"
RESULTS_MD = "serve_latency.md"


@dataclass
class ServeBenchSettings:
    """`streamrec bench-serve`'s flags derive from these fields (streamrec/cli/settings_flags.py)."""

    out_dir: Path
    """Results folder."""
    rate: float = 1000.0
    """Lookups per second, open loop."""
    duration_s: float = 60.0
    """Timed seconds (after the warm-up)."""
    warmup_s: float = 5.0
    """Seconds of requests at the rate before the timed part (not counted)."""
    shoppers: int = 100_000
    """Lists in the topic (one per shopper)."""
    unknown_share: float = 0.1
    """Share of requests for shoppers without a list."""
    connections: int = 64
    """Keep-alive client connections."""
    seed: int = 0
    """Seed of the shoppers and items asked for."""
    routes: tuple[str, ...] = ("lookup", "batch", "similar", "guest")
    """Routes to time, in order."""
    guest_rate: float = 100.0
    """Guest lists per second (each one ranks candidates with the model)."""
    batch_users: int = 10
    """Shoppers per batch request."""
    guest_events: int = 5
    """Items in each guest session."""
    artifact: Path | None = None
    """The bench model (trained there if missing); default: OUT/artifact."""


ROUTES = ("lookup", "batch", "similar", "guest")
# The bench model's log (ensure_artifact): its catalog is the similar and guest requests' items.
MODEL_ITEMS, MODEL_CATEGORIES, MODEL_EVENTS, MODEL_SEED = 5_000, 100, 20_000, 3


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


def http_get(path: str, host: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


def http_post_json(path: str, host: str, body: Any) -> bytes:
    data = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


async def _load(host: str, port: int, requests: list[bytes], rate: float, connections: int
                ) -> tuple[np.ndarray, dict[int, int], float]:
    """Send ``requests[i]`` (raw HTTP/1.1) at ``start + i / rate``; per-request latency (s), statuses,
    wall seconds."""
    loop = asyncio.get_running_loop()
    n = len(requests)
    lat = np.full(n, np.nan)
    statuses: dict[int, int] = {}
    queue: asyncio.Queue[int | None] = asyncio.Queue()
    start = loop.time() + 0.5

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while (i := await queue.get()) is not None:
                writer.write(requests[i])
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


class RequestMaker:
    """The requests of each route, drawn from the shoppers in the topic and the model's items."""

    def __init__(self, s: ServeBenchSettings, host: str, items: list[Any], rng: random.Random) -> None:
        self.s, self.host, self.items, self.rng = s, host, items, rng

    def shopper(self) -> str:
        s, rng = self.s, self.rng
        return f"new-{rng.randrange(10**9)}" if rng.random() < s.unknown_share else str(rng.randrange(s.shoppers))

    def make(self, route: str, n: int) -> list[bytes]:
        rng, host = self.rng, self.host
        if route == "lookup":
            return [http_get(f"/v1/users/{self.shopper()}/recommendations", host) for _ in range(n)]
        if route == "batch":
            return [http_get("/v1/recommendations?users=" + ",".join(self.shopper() for _ in range(self.s.batch_users)),
                             host) for _ in range(n)]
        if route == "similar":
            return [http_get(f"/v1/items/{rng.choice(self.items)}/similar?n=10", host) for _ in range(n)]
        if route == "guest":
            return [http_post_json("/v1/sessions/recommendations", host, {"events": [
                {"item_id": item, "behavior": "pv"} for item in rng.sample(self.items, self.s.guest_events)]})
                for _ in range(n)]
        raise InputError(f"unknown route {route!r}; routes: {', '.join(ROUTES)}")


def route_rate(s: ServeBenchSettings, route: str) -> float:
    """Requests per second of a route: ``rate`` shoppers or items a second (a batch names ``batch_users``
    shoppers), guests at ``guest_rate``."""
    if route == "guest":
        return s.guest_rate
    return s.rate / s.batch_users if route == "batch" else s.rate


def _run_route(serve: ServeProcess, maker: RequestMaker, route: str, rate: float) -> dict[str, Any]:
    """Warm up, then the timed part of one route; its latency figures and the server's CPU."""
    s = maker.s
    asyncio.run(_load("127.0.0.1", serve.port, maker.make(route, int(rate * s.warmup_s)), rate, s.connections))
    cpu_before = _cpu_seconds(serve.pid)
    lat, statuses, wall = asyncio.run(_load("127.0.0.1", serve.port, maker.make(route, int(rate * s.duration_s)),
                                            rate, s.connections))
    server_cpu = _cpu_seconds(serve.pid) - cpu_before
    if set(statuses) != {200}:  # latencies of refusals or errors say nothing about the route
        raise RuntimeError(f"{route}: answered {statuses}, not all 200")
    ms = lat[~np.isnan(lat)] * 1000
    return {"rate": rate, "requests": int(len(lat)), "answered": int(len(ms)),
            "statuses": {str(k): v for k, v in statuses.items()}, "achieved_rate": round(len(ms) / wall, 1),
            "server_cpu": {"seconds": round(server_cpu, 2), "cores": round(server_cpu / wall, 3),
                           "ms_per_request": round(1000 * server_cpu / max(1, len(ms)), 4)},
            "latency_ms": {**{q: round(float(np.percentile(ms, p)), 3) for q, p in
                              (("p50", 50), ("p90", 90), ("p99", 99), ("p999", 99.9))},
                           "max": round(float(ms.max()), 3)}}


def run_serve_bench(s: ServeBenchSettings) -> dict[str, Any]:
    unknown = set(s.routes) - set(ROUTES)
    if unknown:
        raise InputError(f"unknown routes {sorted(unknown)}; routes: {', '.join(ROUTES)}")
    s.out_dir.mkdir(parents=True, exist_ok=True)
    artifact = s.artifact or s.out_dir / "artifact"
    model_version = ensure_artifact(artifact, train_events=MODEL_EVENTS, items=MODEL_ITEMS,
                                    categories=MODEL_CATEGORIES, seed=MODEL_SEED)
    items = sorted(load_artifact(artifact).tables.covisit, key=str)
    rng = random.Random(s.seed)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        work = Path(tmp)
        broker = LocalKafka(work / "kafka").start(timeout=120)
        try:
            topic, events = "bench-recommendations", "bench-events"
            broker.create_topics([topic, events], partitions=2)
            produced = produce(broker.bootstrap, topic, bench_lists(s.shoppers, s.seed))
            serve = ServeProcess(broker.bootstrap, events, topic, work / "serve.sqlite", work / "serve.log",
                                 artifact=artifact)
            rebuild_s = serve.start(timeout_s=3600)
            try:
                _, health = get_json(serve.base + "/healthz")
                if health["shoppers"] != s.shoppers:
                    raise RuntimeError(f"serve holds {health['shoppers']} lists, {s.shoppers} were produced")
                # the service's own Host: any other is refused (serve.allowed_hosts)
                maker = RequestMaker(s, f"127.0.0.1:{serve.port}", items, rng)
                routes = {r: _run_route(serve, maker, r, route_rate(s, r)) for r in s.routes}
            finally:
                serve.stop()
        finally:
            broker.stop()
    result = {
        "settings": {**asdict(s), "out_dir": str(s.out_dir), "artifact": str(artifact)},
        "model_version": model_version, "routes": routes,
        "rebuild": {"lists": s.shoppers, "seconds": round(rebuild_s, 2),
                    "lists_per_s": round(s.shoppers / rebuild_s, 1), "produce_s": round(produced.seconds, 2)},
        "machine": {"cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                    "python": platform.python_version(),
                    "versions": {p: _version(p) for p in ("starlette", "uvicorn", "httptools", "uvloop",
                                                          "confluent-kafka")}},
    }
    (s.out_dir / RESULTS_JSON).write_text(json.dumps(result, indent=2, default=str) + "\n")
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
    st = r["settings"]
    cells = [[route, f"{f['rate']:.0f}", f"{f['achieved_rate']:.0f}", f["requests"], f["latency_ms"]["p50"],
              f["latency_ms"]["p90"], f["latency_ms"]["p99"], f["latency_ms"]["p999"], f["latency_ms"]["max"],
              f["server_cpu"]["cores"], f["server_cpu"]["ms_per_request"]] for route, f in r["routes"].items()]
    rows = table(["route", "rate (req/s)", "achieved", "requests", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms",
                  "server cores", "server ms/request"], cells)
    return ("\n".join(rows) + "\n\n"
            f"View rebuilt from the topic: {r['rebuild']['lists']} lists in {r['rebuild']['seconds']} s "
            f"({r['rebuild']['lists_per_s']} lists/s, start to healthy). {st['unknown_share']:.0%} of lookups for "
            f"unknown shoppers; batch: {st['batch_users']} shoppers; guest: sessions of {st['guest_events']} items; "
            f"model {r['model_version']}; {st['connections']} keep-alive connections; {r['machine']['cpus']} CPUs, "
            f"load {r['machine']['loadavg_before'][0]:.1f} before.\n")

"""`make demo`: broker, model, job and replay, with recommendations on screen.

Everything started here is stopped here, also on Ctrl-C or failure. Each run
uses fresh topics, so a rerun never replays an earlier run's events.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from streamrec.catalog_files import catalog_for_events, catalog_records
from streamrec.kafka_io import consume, produce, replay
from streamrec.lab.benchmark.latency import summarize, trigger_key
from streamrec.lab.generator import generate_events
from streamrec.lab.local import kafka as kafka_local
from streamrec.lab.local.procs import LOCAL_BROKER_SECURITY, job_env, stop_group
from udfs.artifact import MANIFEST_FILE, ArtifactError, verify_manifest
from udfs.config import Config
from udfs.feedback import OnlineFigures
from udfs.reasons import render_reason
from udfs.records import decode_feedback_record

DEMO_SEED = 11
TRAIN_EVENTS = 40_000
DEMO_DAYS = 4


def _say(msg: str) -> None:
    print(f"\033[1m[demo]\033[0m {msg}", flush=True)


def ensure_artifact(cfg: Config) -> Path:
    """Train on the embedded generator's log when no artifact exists yet, or when the one there
    does not fit this code (built by an older version: the job would refuse it)."""
    path = Path(cfg.ranking.artifact_dir)
    why = f"no model at {path}"
    if (path / MANIFEST_FILE).is_file():
        try:
            verify_manifest(path)
            _say(f"using model artifact {path}")
            return path
        except ArtifactError as exc:
            why = f"the model at {path} does not fit this code ({str(exc)[:160]})"
    from model_export.train import train_model  # lazy: torch (the [train] extra), only when training

    _say(f"{why}: generating {TRAIN_EVENTS:,} events and training one (a minute or two)")
    events = generate_events(TRAIN_EVENTS, n_users=800, n_items=4000, n_categories=60, seed=DEMO_SEED,
                             start_ts_ms=1_700_000_000_000, duration_s=DEMO_DAYS * 86400)
    train_model(events, until_ms=None, out_dir=path, seed=0)
    return path


def demo_events(n: int) -> list[Any]:
    """A continuation of the training log: same shoppers and catalog, later days."""
    events = generate_events(TRAIN_EVENTS + n, n_users=800, n_items=4000, n_categories=60, seed=DEMO_SEED,
                             start_ts_ms=1_700_000_000_000, duration_s=DEMO_DAYS * 86400)
    return events[-n:]


def _fmt(rec: dict[str, Any], latency_ms: int | None) -> str:
    t = rec["trigger"]
    items = ", ".join(str(i) for i in rec["items"][:5])
    lat = f"{latency_ms:>5} ms" if latency_ms is not None else "    ? ms"
    why = rec.get("reasons") or []  # schema version 1 lists have none
    first = f"  first: {render_reason(why[0], item_name=lambda i: f'item {i}')}" if why else ""
    return (f"user {rec['user_id']:>6} {t['behavior']:>4} item {t['item_id']:>8} -> "
            f"top5 [{items}]  ({rec['provider']}, {lat}){first}")


def online_summary(bootstrap: str, topic: str) -> dict[str, Any]:
    """The job's own feedback (docs/operations.md 'Online feedback'): each event scored against the list its
    shopper was shown before it."""
    records = [decode_feedback_record(r.value) for r in consume(bootstrap, topic, timeout_s=5)]
    figures = OnlineFigures()
    for fb in records:
        figures.add(fb)
    _say(f"online feedback on {topic}: {figures.n:,} events scored against the shopper's previous list; "
         f"HR@10 {figures.hr:.4f}, NDCG@10 {figures.ndcg:.4f} (`streamrec feedback` follows it live)")
    return {"events_scored": figures.n, "hr@10": round(figures.hr, 4), "ndcg@10": round(figures.ndcg, 4)}


def run_demo(cfg: Config, *, events: int, rate: float) -> int:
    suffix = time.strftime("%Y%m%d%H%M%S")
    topics = {f: f"demo-{suffix}-{name}" for f, name in cfg.kafka.topics().items()}
    started_broker = kafka_local.status() is None
    job: subprocess.Popen[bytes] | None = None
    try:
        compacted = [topics["catalog_topic"], topics["control_topic"]]
        info = kafka_local.start_background(topics=list(topics.values()), compacted=compacted) \
            if started_broker else kafka_local.status()
        assert info is not None
        bootstrap = info["bootstrap"]
        if not started_broker:
            kafka_local.create_topics(bootstrap, list(topics.values()), compacted=compacted)
        _say(f"Kafka broker at {bootstrap}; topics {', '.join(topics.values())}")
        artifact = ensure_artifact(cfg)

        env = job_env(bootstrap, topics, artifact, settings={"ranking": {"provider": cfg.ranking.provider},
                                                             "kafka": LOCAL_BROKER_SECURITY})
        log_path = Path(artifact).parent / f"demo-job-{suffix}.log"
        _say(f"starting the PyFlink job on the local minicluster (log: {log_path})")
        with log_path.open("wb") as log_file:
            job = subprocess.Popen([sys.executable, "-m", "streamrec.cli", "run", "--source", "kafka",
                                    "--sink", "kafka"], env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        evs = demo_events(events)
        # The shop's catalog of those items, so the job's catalog join has one (docs/contracts.md "Catalog").
        shelf = produce(bootstrap, topics["catalog_topic"],
                        catalog_records(catalog_for_events(evs, DEMO_SEED, 1_700_000_000_000)))
        _say(f"published {shelf.sent:,} catalog records to {topics['catalog_topic']}")
        # One event first: its list arriving means the job is up, so the timed part
        # below measures the running job, not the minicluster's start-up.
        replay(evs[:1], bootstrap, topics["input_topic"])
        if not list(consume(bootstrap, topics["output_topic"], max_records=1, timeout_s=180)):
            _say(f"the job produced nothing within 3 minutes; job log: {log_path}")
            return 1
        _say("job is up; first recommendation received")
        _say(f"replaying {len(evs) - 1:,} behavior events at {rate:g}/s into {topics['input_topic']}")
        t_start_ms = int(time.time() * 1000)
        stats = replay(evs[1:], bootstrap, topics["input_topic"], rate=rate)
        stats.sent += 1
        _say(f"sent {stats.sent:,} events in {stats.seconds:.1f} s")

        inputs = {}
        for r in consume(bootstrap, topics["input_topic"], max_records=len(evs), timeout_s=10):
            v = r.value
            inputs[trigger_key(v["user_id"], v["item_id"], v["behavior"], v["ts"])] = r.timestamp
        _say("recommendations arriving on " + topics["output_topic"] + ":")
        outputs: list[tuple[dict[str, Any], int]] = []
        for rec in consume(bootstrap, topics["output_topic"], max_records=len(evs), timeout_s=90):
            t = rec.value["trigger"]
            key = trigger_key(rec.value["user_id"], t["item_id"], t["behavior"], t["ts"])
            outputs.append((rec.value, rec.timestamp))
            if len(outputs) <= 15 or len(outputs) % 500 == 0:
                one = rec.timestamp - inputs[key] if key in inputs else None
                print("  " + _fmt(rec.value, one), flush=True)
            if job.poll() is not None:
                break
        if not outputs:
            _say(f"no recommendations arrived; job log: {log_path}")
            return 1
        timed = outputs[1:]  # the warm-up event's list is not a steady-state figure
        lat = summarize(inputs, timed)
        span_ms = max(ts for _, ts in timed) - t_start_ms if timed else 0
        summary = {
            "events_sent": stats.sent,
            "recommendations": len(outputs),
            "events_per_s": round(len(timed) / (span_ms / 1000), 1) if span_ms > 0 else None,
            "latency_ms": {k: round(v, 1) for k, v in lat.as_dict().items()},
            "provider": outputs[-1][0]["provider"],
            "model_version": outputs[-1][0]["model_version"],
        }
        summary["online"] = online_summary(bootstrap, topics["feedback_topic"])
        _say("summary: " + json.dumps(summary))
        if len(outputs) != stats.sent:
            _say(f"note: {stats.sent - len(outputs)} events produced no list (duplicates or late; see job log)")
        return 0
    finally:
        if job is not None and job.poll() is None:
            _say("stopping the job")
            stop_group(job)
        if started_broker:
            _say("stopping the Kafka broker")
            kafka_local.stop_background()

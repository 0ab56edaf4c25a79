"""Retraining from the stream: train on the last hours, compare with the live version, publish if not worse.

``streamrec retrain (--from-topic TOPIC | --events FILE) --hours H`` calls :func:`retrain`:

1. the window: events of the last ``H`` hours, counted back from the newest event in the data
   (not the wall clock: a replayed log, or a topic read after a pause, has its own clock);
2. the split: :func:`model_export.dataset.default_until`, the one ``streamrec train`` uses, so the
   held-out slice is the window's newest 10-50% of events, sized by the data and not by a
   constant per data set;
3. a new artifact from :func:`model_export.train.train_model` on the window, split there;
4. both the new artifact and the registry's live version scored on the same held-out events,
   each with its own vocabulary and candidate tables
   (:func:`model_export.dataset.held_out_requests`), by :func:`model_export.evaluate.evaluate`;
5. the comparison printed and stored in the new manifest (``retrain``), and the new version
   published and announced only if its NDCG@10 is not below the live one's.

The live version is scored as it serves: with the tables it shipped. A live model whose
training span reaches into the held-out slice has seen those events; the comparison says so
(``live.saw_held_out``) instead of hiding it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from model_export.dataset import default_until, held_out_requests, sort_events
from model_export.evaluate import evaluate
from model_export.onnx_io import onnx_session, predict_onnx
from streamrec import registry_writer as writer
from udfs.artifact import add_manifest_fields, load_artifact
from udfs.catalog import CatalogItem, load_catalog
from udfs.errors import InputError
from udfs.events import DecodeError, Erase, Event, Id, decode_input
from udfs.logs import stray_bounds
from udfs.registry import live_version, verified_version

log = logging.getLogger(__name__)

HOUR_MS = 3_600_000
REPORTED = ("hr@10", "ndcg@10", "mrr", "novel_hr@10", "novel_ndcg@10")
# The deciding metric and the decisions live with the registry's writer, which refuses to publish
# an artifact a retrain kept back (streamrec.registry_writer.kept_back).
METRIC, PUBLISH, KEEP_LIVE = writer.RETRAIN_METRIC, writer.RETRAIN_PUBLISH, writer.KEEP_LIVE


def window(events: Sequence[Event], hours: float) -> list[Event]:
    """Events of the last ``hours`` before the newest one (inclusive), in event-time order."""
    if hours <= 0:
        raise InputError(f"--hours must be positive, not {hours}")
    evs = sort_events(events)
    if not evs:
        raise InputError("no events to retrain on")
    since = evs[-1].ts - int(hours * HOUR_MS)
    return [e for e in evs if e.ts >= since]


def drop_stray(events: Sequence[Event]) -> tuple[list[Event], int]:
    """Events inside the log's own bulk (:func:`udfs.logs.stray_bounds`, what the file loaders
    apply): one stray future timestamp in a topic would otherwise be "the newest event" and
    leave the window empty. Returns the kept events and how many were dropped."""
    bounds = stray_bounds([e.ts for e in events])
    if bounds is None:
        return list(events), 0
    lo, hi = bounds
    kept = [e for e in events if lo <= e.ts <= hi]
    return kept, len(events) - len(kept)


def decode_records(values: Iterable[bytes]) -> tuple[list[Event], int, list[str]]:
    """Events from raw input-topic values; undecodable ones are counted (and the first reasons
    kept), as the job sends them to its dead-letter topic. An erase request drops the shopper's
    events before it, so a model is never trained on an erased shopper's history."""
    events: list[Event] = []
    erased_at: dict[Id, int] = {}  # shopper -> how many events were read before their last erase request
    bad = 0
    reasons: list[str] = []
    for raw in values:
        ev = decode_input(raw)
        if isinstance(ev, DecodeError):
            bad += 1
            if len(reasons) < 5:
                reasons.append(ev.reason)
        elif isinstance(ev, Erase):
            erased_at[ev.user_id] = len(events)
        else:
            events.append(ev)
    if erased_at:
        events = [e for i, e in enumerate(events) if i >= erased_at.get(e.user_id, 0)]
    return events, bad, reasons


def score(events: Sequence[Event], until_ms: int, artifact_dir: str | Path, *, catalog_size: int,
          attributes: Mapping[Id, CatalogItem] | None = None, threads: int = 1) -> dict[str, Any]:
    """The artifact's offline metrics on the held-out requests of ``events`` (trigger at/after
    ``until_ms``), served with its own vocabulary, tables and state limits."""
    art = load_artifact(artifact_dir)
    m = art.manifest
    if m.catalog_features and attributes is None:
        raise InputError(f"{artifact_dir} ({m.model_version}) was trained with catalog features: "
                         "give the catalog with --catalog, or its scores would be those of a model without them")
    es = held_out_requests(events, until_ms, vocab=art.vocab, tables=art.tables, limits=m.state_limits,
                           n_candidates=m.n_candidates, seq_len=art.seq_len,
                           attributes=attributes if m.catalog_features else None,
                           exclude_bought=m.exclude_bought)
    session = onnx_session(art.model_path, threads=threads)
    result = evaluate(es, {"model": predict_onnx(session, es)}, catalog_size=catalog_size)
    return result


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    model = result["rankers"]["model"]
    return {**{k: model[k] for k in REPORTED}, "requests": result["requests"],
            "novel_requests": result["novel_requests"], "candidate_recall": result["candidate_recall"]}


def decide(new_metric: float, live_metric: float | None) -> str:
    """Publish when there is no live version or the new one is not worse on :data:`METRIC`."""
    return PUBLISH if live_metric is None or new_metric >= live_metric else KEEP_LIVE


def retrain(
    events: Sequence[Event],
    train_model: Callable[..., Path],
    *,
    hours: float,
    registry_dir: str | Path,
    out_dir: str | Path,
    source: str,
    seed: int = 0,
    catalog: Sequence[CatalogItem] | None = None,
    train_kwargs: Mapping[str, Any] | None = None,
    publish: bool = True,
    announce: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """Train on the window, compare with the live version, publish and announce when not worse.

    ``train_model``: :func:`model_export.train.train_model`, passed in by the caller so that
    importing this module does not import torch (the CLI imports it at start).

    ``source``: where the events came from, for the record. ``publish=False``: compare and
    store, change nothing in the registry (``--dry-run``). ``announce``: sends the control
    record of a published version (:func:`streamrec.registry_writer.control_sender`), after which it
    is recorded live in the registry's history; None publishes the folder only, not live
    (``--no-announce``). Returns the comparison, also stored in the new manifest as ``retrain``."""
    t0 = time.time()
    win = window(events, hours)
    until = default_until(win)
    held_out = [e for e in win if e.ts >= until]
    catalog_size = len({e.item_id for e in win})
    log.info("window: %d events from %d to %d ms; held out from %d ms: %d events", len(win), win[0].ts,
             win[-1].ts, until, len(held_out))
    out = train_model(win, until_ms=until, out_dir=out_dir, seed=seed, catalog=catalog,
                      **dict(train_kwargs or {}))
    attributes = load_catalog(catalog).items if catalog else None
    new = load_artifact(out).manifest
    new_scores = _summary(score(win, until, out, catalog_size=catalog_size, attributes=attributes))
    if not new_scores["requests"]:
        raise InputError(f"the held-out slice of the last {hours} h has no request (no shopper with two events "
                         "after the split): retrain over more hours")

    live = live_version(registry_dir)
    live_part: dict[str, Any] | None = None
    if live is not None:
        live_dir, live_manifest = verified_version(registry_dir, live)
        live_scores = _summary(score(win, until, live_dir, catalog_size=catalog_size, attributes=attributes))
        live_part = {"model_version": live, "metrics": live_scores,
                     "train_until_ms": live_manifest.train_span.get("until_ms"),
                     # its tables or training examples include held-out events: an edge for it
                     "saw_held_out": int(live_manifest.train_span.get("end_ms") or 0) >= until}
    decision = decide(new_scores[METRIC], live_part["metrics"][METRIC] if live_part else None)
    report: dict[str, Any] = {
        "source": source,
        "window": {"hours": hours, "start_ms": win[0].ts, "end_ms": win[-1].ts, "events": len(win),
                   "users": len({e.user_id for e in win})},
        "held_out": {"since_ms": until, "end_ms": win[-1].ts, "events": len(held_out),
                     "requests": new_scores["requests"], "catalog_size": catalog_size},
        "new": {"model_version": new.model_version, "metrics": new_scores},
        "live": live_part,
        "rule": f"publish when new {METRIC} >= live {METRIC} (or no live version)",
        "decision": decision,
        "decided_at": writer.now_ms(),
    }
    add_manifest_fields(out, {"retrain": report})
    if decision == PUBLISH and publish:
        path = writer.publish(registry_dir, out)
        report["published"] = str(path)
        if announce is not None:
            writer.activate(registry_dir, new.model_version, announce)
        report["announced"] = announce is not None
    else:
        report["published"] = None
        report["announced"] = False
    report["seconds"] = round(time.time() - t0, 1)
    return report


def format_report(report: dict[str, Any]) -> str:
    """The comparison as a few lines for the terminal (the JSON has every figure)."""
    def when(ms: int) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000))

    w, h = report["window"], report["held_out"]
    lines = [
        f"source: {report['source']}",
        f"window: last {w['hours']} h of the data, {when(w['start_ms'])} .. {when(w['end_ms'])} UTC, "
        f"{w['events']} events, {w['users']} shoppers",
        f"held out: from {when(h['since_ms'])} UTC, {h['events']} events, {h['requests']} requests",
        f"{'version':<28}" + "".join(f"{k:>14}" for k in REPORTED),
    ]
    rows = [("new " + report["new"]["model_version"], report["new"]["metrics"])]
    if report["live"]:
        rows.append(("live " + report["live"]["model_version"], report["live"]["metrics"]))
    for name, m in rows:
        lines.append(f"{name:<28}" + "".join(f"{m[k]:>14.4f}" for k in REPORTED))
    if report["live"] is None:
        lines.append("live: none in the registry")
    elif report["live"]["saw_held_out"]:
        lines.append("note: the live version was trained on events of the held-out slice")
    lines.append(f"rule: {report['rule']}")
    if report.get("published"):
        done = f", published {report['published']}" + (", announced" if report.get("announced") else ", not announced")
    else:
        done = ", nothing published"
    lines.append(f"decision: {report['decision']}{done}")
    return "\n".join(lines)

"""`streamrec bench`'s report: results.md (the tables) and results.png, from results.json's content."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from streamrec.lab.benchmark.bench_summary import SYSTEMS, jit_share, without_broker
from streamrec.lab.benchmark.procstats import run_line
from streamrec.lab.markdown import table


def backlog_lines(r: Mapping[str, Any]) -> list[str]:
    """A line per job phase whose lists were made faster than they reached the topic."""
    lines = [f"- {key}: {_fmt(row['lists_not_on_topic_at_end'])} lists made but not on the topic at the "
             f"window's end ({_fmt(row['lists_made_at_end'])} made, {_fmt(row['outputs_at_end'])} on the topic)"
             for key in SYSTEMS if (row := r.get(key)) and row.get("lists_not_on_topic_at_end")]
    if lines:
        lines = ["", "Output behind the job (the events/s above count the topic, which is what a storefront "
                 "sees):", "", *lines]
    return lines


def _fmt(v: Any, digits: int = 0) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def _latency_label(key: str) -> str:
    name = key.removeprefix("latency_")
    return f"{name[:-3]}% of max" if name.endswith("pct") else f"{name.split('_')[1]} events/s"


def markdown(results: dict[str, Any]) -> str:
    r = results
    lines = ["# streamrec bench", "", run_line(r), "",
             f"Machine: {r['machine']['cpus']} CPUs, {r['machine']['platform']}; "
             f"model {r.get('model_version')}; settings {json.dumps(r.get('settings', {}))}", ""]
    labels = {"job_p1": "job, parallelism 1", "job_p2": "job, parallelism 2", "peer": "plain-Python peer"}
    rows: list[list[str]] = []
    for key in SYSTEMS:
        row = r.get(key)
        if row:
            cpu, rss = without_broker(row["cpu_s"]), without_broker(row["peak_rss_mb"])
            per_event = (f"{_fmt(row.get('cpu_ms_per_event'), 2)} ({_fmt(row.get('broker_cpu_ms_per_event'), 2)})"
                         if "cpu_ms_per_event" in row else "-")
            bound = f"{_fmt(row.get('cpu_bound_events_per_s'))} ({row.get('cores', '-')})"
            rows.append([labels[key], _fmt(row["events_per_s"]), _fmt(row.get("pairs_per_s")), _fmt(cpu, 1),
                         per_event, bound, _fmt(rss)])
    if r.get("model"):
        rows.append([f"model alone (onnxruntime, {r['model']['provider']})", "-", _fmt(r["model"]["pairs_per_s"]),
                     "-", "-", "-", "-"])
    if r.get("kafka_consume_events_per_s"):
        rows.append(["Kafka alone (kafka-python produce / consume)",
                     f"{_fmt(r['kafka_produce_events_per_s'])} / {_fmt(r['kafka_consume_events_per_s'])}",
                     "-", "-", "-", "-", "-"])
    lines += table(["system", "events/s", "ranked pairs/s", "CPU s in window", "CPU ms per event (broker)",
                    "events/s the CPU allows (cores it can use)", "peak RSS MB"], rows)
    lines += busiest_threads_lines(r)
    lines += backlog_lines(r)
    guarantee = r.get("delivery_guarantee", "at-least-once")
    lines += ["", f"Latency: event at the broker to its list at the broker, medians over independent runs "
                  f"(job, {guarantee}).", ""]
    latency = [[_latency_label(k), _fmt(v["target_rate"]), _fmt(v["p50_ms"]), _fmt(v["p95_ms"]), _fmt(v["p99_ms"]),
                ", ".join(_fmt(run["p99_ms"]) for run in v.get("runs", [])),
                ", ".join("-" if (s := jit_share(run)) is None else f"{s:.2f}" for run in v.get("runs", [])),
                v["matched"]]
               for k, v in sorted((k, v) for k, v in r.items() if k.startswith("latency_"))]
    lines += table(["latency", "target events/s", "p50 ms", "p95 ms", "p99 ms", "p99 ms per run",
                    "JIT cores per TaskManager per run", "matched"], latency, align="lrrrrllr")
    lines += batching_table(r.get("batching"))
    lines += floor_table(r.get("floor"))
    ratios = [[k[6:], f"{r[k]:.2f}"] for k in sorted(k for k in r if k.startswith("ratio_"))]
    lines += ["", *table(["ratio", "value"], ratios)]
    return "\n".join(lines) + "\n"


def busiest_threads_lines(r: dict[str, Any]) -> list[str]:
    """Where each throughput phase's CPU went, thread by thread: a phase whose operator thread
    is near 1.0 is bound by that one thread, whatever the process total says."""
    lines: list[str] = []
    for key in SYSTEMS:
        per_proc = (r.get(key) or {}).get("busiest_threads") or {}
        for proc, threads in per_proc.items():
            if threads:
                shown = ", ".join(f"{name} {share:.2f}" for name, share in threads.items())
                lines.append(f"- {key} {proc}: {shown}")
    if lines:
        lines = ["", "Busiest threads (share of one core over the window; names as the kernel cuts them):",
                 "", *lines]
    return lines


def batching_table(b: dict[str, Any] | None) -> list[str]:
    """Batching off and on, side by side (medians of each side's runs)."""
    if not b:
        return []
    p = b["parallelism"]
    off, on = b["runs"]["off"], b["runs"]["on"]
    return ["", f"Batched ranking at parallelism {p}, off and on in one run ({json.dumps(b['settings'])}); "
            f"paced at {_fmt(b['paced_events_per_s'])} events/s, half the unbatched rate.", "",
            *table(["batching", "events/s (runs)", "rows per model call p50 / p99 (mean)", "paced p50 ms",
                    "paced p99 ms", "share of the model-alone bound"], [
                ["off", f"{_fmt(b[f'p{p}_events_per_s_off'])} ({', '.join(_fmt(r['events_per_s']) for r in off)})",
                 f"{_fmt(b['rows_per_call_off'])} per call", _fmt(b["p50_ms_paced_off"]), _fmt(b["p99_ms_paced_off"]),
                 _fmt(b["share_of_model_bound_off"], 2)],
                ["on", f"{_fmt(b[f'p{p}_events_per_s_on'])} ({', '.join(_fmt(r['events_per_s']) for r in on)})",
                 f"<= {_fmt(b['rows_per_call_p50'])} / <= {_fmt(b['rows_per_call_p99'])} "
                 f"({_fmt(b['rows_per_call_mean'])})",
                 _fmt(b["p50_ms_paced_on"]), _fmt(b["p99_ms_paced_on"]), _fmt(b["share_of_model_bound_on"], 2)]])]


def floor_table(f: dict[str, Any] | None) -> list[str]:
    """The job beside itself with its lists replayed (:func:`floor_summary`)."""
    if not f:
        return []
    p = f["parallelism"]
    rows = (("job", "job", "as it runs"),
            ("model_only", "model", "candidates, features and list replayed; the model still called"),
            ("platform", "none", "replayed, no model call: Kafka, Flink, state, encode and decode"))
    lines = ["", f"The floor at parallelism {p}: the job beside itself with its lists replayed, in one run "
             "(medians). The model-only row is the most faster candidate, feature and list code could give.", ""]
    cells = []
    for key, side, what in rows:
        share = f.get(f"share_of_model_bound_{key}") if key != "platform" else None
        cells.append([key.replace("_", " "), what, f"{_fmt(f.get(f'p{p}_events_per_s_{key}'))} "
                      f"({', '.join(_fmt(r['events_per_s']) for r in f['runs'].get(side, []))})",
                      _fmt(f.get(f"cpu_ms_per_event_{key}"), 2), _fmt(f.get(f"operator_ms_per_event_{key}"), 2),
                      _fmt(share, 2)])
    return lines + table(["run", "what it does per event", "events/s (runs)", "CPU ms per event",
                          "operator thread ms per event", "share of the model-alone bound"], cells, align="llrrrr")


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = results
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    names, values = [], []
    for key, label in (("job_p1", "job p1"), ("job_p2", "job p2"), ("peer", "peer")):
        if r.get(key):
            names.append(label)
            values.append(r[key]["events_per_s"])
    ax1.bar(names, values, color=["#4c72b0", "#4c72b0", "#dd8452"][: len(names)])
    ax1.set_ylabel("events/s (sustained)")
    ax1.set_title("Throughput, same stream and model")
    lat = [(k[8:], r[k]) for k in sorted(k for k in r if k.startswith("latency_"))]
    if lat:
        x = np.arange(len(lat))
        for i, q in enumerate(("p50_ms", "p95_ms", "p99_ms")):
            ax2.bar(x + (i - 1) * 0.25, [v[q] for _, v in lat], width=0.25, label=q[:-3])
        ax2.set_xticks(x, [_latency_label("latency_" + k) for k, _ in lat])
        ax2.set_ylabel("event -> recommendation, ms")
        ax2.set_title("Job latency (broker timestamps)")
        ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(out: Path, results: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "results.md").write_text(markdown(results))
    plot(results, out / "results.png")

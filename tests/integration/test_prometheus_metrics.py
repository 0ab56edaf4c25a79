"""Flink's Prometheus reporter in a real run: metrics.prometheus_port set, the job's /metrics endpoint
scraped while it processes events, every job metric found (counters, histograms, the model info metric)."""

from __future__ import annotations

import re
import time
import urllib.request

import pytest

from jobs.flink_metrics import info_metric_name
from jobs.functions import COUNTERS, HISTOGRAMS
from jobs.layout import PROJECT_ROOT
from jobs.pipeline import metrics_settings
from streamrec.kafka_io import replay
from streamrec.lab.local.kafka import free_ports
from tests.support.job_fixtures import generated_log
from udfs.config import env_var, load_config

PREFIX = "flink_taskmanager_job_task_operator_"


def test_reporter_settings_follow_the_config():
    assert metrics_settings(load_config(environ={})) == {}
    cfg = load_config(overrides={"metrics": {"prometheus_port": "9249-9259"}}, environ={})
    assert metrics_settings(cfg) == {
        "metrics.reporter.prom.factory.class": "org.apache.flink.metrics.prometheus.PrometheusReporterFactory",
        "metrics.reporter.prom.port": "9249-9259"}
    with pytest.raises(ValueError, match="metrics.prometheus_port"):
        load_config(overrides={"metrics": {"prometheus_port": "http"}}, environ={})


def _scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return r.read().decode()
    except OSError:
        return ""


def _samples(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if re.match(rf"{PREFIX}{name}(_count|_sum)?[{{ ]", line)]


def _counted(text: str, name: str) -> bool:
    return any(float(s.rsplit(" ", 1)[1]) > 0 for s in _samples(text, name))


@pytest.mark.kafka
@pytest.mark.flink
def test_scrape_finds_every_job_metric_during_a_run(kafka_broker, unique_topic, kafka_jobs):
    topics = {f: unique_topic(f.split("_")[0]) for f in ("input_topic", "output_topic", "dlq_topic", "late_topic")}
    port = free_ports(1)[0]
    job = kafka_jobs(topics, **{env_var("metrics", "prometheus_port"): str(port)})
    replay(generated_log(400, seed=6), kafka_broker.bootstrap, topics["input_topic"])
    wanted = [*COUNTERS, *HISTOGRAMS, info_metric_name()]
    text, missing = "", wanted
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert job.poll() is None, "job died"
        text = _scrape(port)
        missing = [m for m in wanted if not _samples(text, m)]
        # the reporter publishes a histogram as soon as it is registered, with count 0 until its
        # first value; wait until every counted metric has seen one (the scrape races the events)
        if not missing and all(_counted(text, m) for m in ("events_accepted", *(h + "_count" for h in HISTOGRAMS))):
            break
        time.sleep(2)
    assert not missing, f"not on /metrics: {missing}\n{text[-3000:]}"
    # Every job metric the Grafana dashboard queries, Flink's own Kafka source metrics included, is
    # on a running job's scrape (ranker_* only with ranking.batching, off here).
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if not line.startswith("#")}
    on_dashboard = {m for m in re.findall(r"flink_\w+", (PROJECT_ROOT / "docker" / "grafana" / "dashboards"
                                                           / "streamrec.json").read_text())}
    assert on_dashboard and not on_dashboard - names, sorted(on_dashboard - names)
    for name in HISTOGRAMS:  # summaries with quantiles and a count of sampled values
        assert any('quantile="0.99"' in s for s in _samples(text, name)), name
        assert _counted(text, name + "_count"), name
    info = _samples(text, info_metric_name())
    # held in a Flink counter (no Python callback for the metric threads), exported as a gauge
    assert f"# TYPE {PREFIX}{info_metric_name()} gauge" in text, [x for x in text.splitlines() if "model_info" in x]
    # the reporter writes "-" in label values as "_"
    assert any('model_version="fixture_covisit"' in s and 'provider="cpu"' in s and s.endswith(" 1.0")
               for s in info), info

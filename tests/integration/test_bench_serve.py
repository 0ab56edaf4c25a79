"""`streamrec bench-serve` end to end, small: every route answers 200 under its load, and the results say so.

The bench's figures are measured by running it (docs/serve.md "Lookup service and live page"); this keeps its
requests valid against the service as the service changes (a Host header the allow list refuses, a
body a route no longer takes: the bench raises rather than time refusals)."""

from __future__ import annotations

import json

import pytest

from streamrec.lab.benchmark.serve_latency import RESULTS_JSON, ROUTES, ServeBenchSettings, markdown, run_serve_bench

pytestmark = pytest.mark.kafka


def test_every_route_is_timed_with_all_requests_answered(tmp_path, fixture_artifact):
    s = ServeBenchSettings(tmp_path / "out", rate=40, duration_s=1.0, warmup_s=0.25, shoppers=300, connections=4,
                           guest_rate=20, artifact=fixture_artifact)
    result = run_serve_bench(s)
    assert list(result["routes"]) == list(ROUTES)
    for route, figures in result["routes"].items():
        assert figures["statuses"] == {"200": figures["answered"]} and figures["answered"] == figures["requests"], route
        assert 0 < figures["latency_ms"]["p50"] <= figures["latency_ms"]["max"], route
    assert result["rebuild"]["lists"] == 300 and result["rebuild"]["lists_per_s"] > 0
    assert json.loads((tmp_path / "out" / RESULTS_JSON).read_text())["routes"].keys() == result["routes"].keys()
    assert "| guest |" in markdown(result)
    with pytest.raises(ValueError, match="unknown routes"):
        run_serve_bench(ServeBenchSettings(tmp_path / "x", routes=("lookup", "everything")))

"""The model info metric: labels as groups, a value of 0 or 1, and no Python gauge anywhere in the job."""

import ast
from pathlib import Path

from jobs.flink_metrics import MODEL_INFO, InfoMetric, info_metric_name

ROOT = Path(__file__).resolve().parents[2]


class RecordingCounter:
    def __init__(self) -> None:
        self.count = 0

    def inc(self, n: int = 1) -> None:
        self.count += n

    def dec(self, n: int = 1) -> None:
        self.count -= n


class RecordingGroup:
    """PyFlink's MetricGroup surface that InfoMetric uses: groups by key and value, and counters."""

    def __init__(self, path: tuple[str, ...] = (), registry: dict | None = None) -> None:
        self.path, self.registry = path, {} if registry is None else registry

    def add_group(self, key: str, value: str) -> "RecordingGroup":
        return RecordingGroup((*self.path, key, value), self.registry)

    def counter(self, name: str) -> RecordingCounter:
        return self.registry.setdefault((*self.path, name), RecordingCounter())


def test_info_metric_carries_labels_as_groups_and_holds_zero_or_one():
    group = RecordingGroup()
    metric = InfoMetric(group, MODEL_INFO, {"model_version": "din-1", "provider": "cpu"})
    counter = group.registry[("model_version", "din-1", "provider", "cpu", MODEL_INFO)]
    assert counter.count == 0
    metric.set(True)
    metric.set(True)
    assert counter.count == 1
    metric.set(False)
    assert counter.count == 0 and metric.value == 0
    assert info_metric_name() == "model_version_provider_model_info"


def _gauge_calls(path: Path) -> list[int]:
    tree = ast.parse(path.read_text())
    return [n.lineno for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "gauge"]


def test_no_python_gauge_in_the_job():
    """A PyFlink gauge is read by Flink's metric threads calling into Python; a read during a task's
    close crashes the TaskManager. Every job metric is a counter or a Java histogram instead."""
    found = {str(p.relative_to(ROOT)): lines for d in ("jobs", "udfs") for p in sorted((ROOT / d).glob("*.py"))
             if (lines := _gauge_calls(p))}
    assert found == {}

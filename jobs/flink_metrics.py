"""Flink metric objects the Python API lacks: histograms (thread mode) and an info metric.

PyFlink's metric group offers counters, gauges, meters and distributions, but no
histogram; Flink's Prometheus reporter exports a histogram as a summary (quantiles and
count). In thread mode the group wraps the Java ``MetricGroup`` and pemja can build a
Java histogram for it; in process mode there is none, and the job runs without them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

HISTOGRAM_CLASS = "org.apache.flink.runtime.metrics.DescriptiveStatisticsHistogram"
RESERVOIR = 1024


def java_histogram_factory(group: Any) -> Callable[[str], Any] | None:
    """``name -> Flink histogram`` on ``group``, or None where the Python worker cannot make one."""
    j_group = getattr(group, "_metrics", None)
    try:
        from pemja import findClass  # the embedded (thread-mode) interpreter's bridge to the JVM
    except ImportError:
        findClass = None  # noqa: N806
    if j_group is None or findClass is None:
        log.warning("streamrec: no Flink histograms in this execution mode (thread mode has them)")
        return None
    histogram = findClass(HISTOGRAM_CLASS)
    return lambda name: j_group.histogram(name, histogram(RESERVOIR))


# The model info metric: its labels, in group order, and its name.
MODEL_INFO_LABELS = ("model_version", "provider")
MODEL_INFO = "model_info"


class InfoMetric:
    """A metric (1: true now, 0: no longer) whose labels (key-value metric groups) carry the
    information, e.g. the model version: Prometheus scrapes numbers only. The Prometheus reporter
    puts each group's key into the metric's name too (:func:`info_metric_name`) and replaces
    characters other than letters, digits and ``_`` in label values by ``_``.

    A Flink counter held at 0 or 1, not a gauge: PyFlink's gauge is read by Flink's metric
    threads calling back into the Python interpreter (pemja), and a read that comes while the task
    closes finds the interpreter torn down and kills the TaskManager (SIGSEGV in ``take_gil``,
    seen when a metric query met a cancelled job). A counter's value lives in the JVM, so reading
    it never enters Python; the reporter exports it as a gauge.
    """

    def __init__(self, group: Any, name: str, labels: dict[str, str]) -> None:
        for key, label in labels.items():
            group = group.add_group(key, label)
        self._counter = group.counter(name)
        self.value = 0

    def set(self, value: bool) -> None:
        """1 for true, 0 for false; only a change reaches the JVM."""
        new = int(value)
        if new > self.value:
            self._counter.inc(new - self.value)
        elif new < self.value:
            self._counter.dec(self.value - new)
        self.value = new


def info_metric_name(name: str = MODEL_INFO, labels: tuple[str, ...] = MODEL_INFO_LABELS) -> str:
    """The operator-scope name Flink's Prometheus reporter gives an :class:`InfoMetric`."""
    return "_".join([*labels, name])

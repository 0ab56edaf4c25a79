"""The serve process's own metrics in the Prometheus text format (no client library needed)."""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Callable

LOOKUP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class ServeMetrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.events_sent: dict[str, int] = defaultdict(int)
        self.lookup_counts = [0] * (len(LOOKUP_BUCKETS) + 1)
        self.lookup_sum = 0.0
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def request(self, route: str, code: int) -> None:
        with self._lock:
            self.requests[(route, code)] += 1

    def lookup(self, seconds: float) -> None:
        with self._lock:
            self.lookup_counts[bisect.bisect_left(LOOKUP_BUCKETS, seconds)] += 1
            self.lookup_sum += seconds

    def event_sent(self, behavior: str) -> None:
        with self._lock:
            self.events_sent[behavior] += 1

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """A value read at scrape time (counters kept elsewhere are exposed this way too)."""
        self.gauges[name] = (help_text, read)

    def render(self) -> str:
        out = ["# HELP streamrec_serve_requests_total HTTP requests by route and status.",
               "# TYPE streamrec_serve_requests_total counter"]
        with self._lock:
            for (route, code), n in sorted(self.requests.items()):
                out.append(f'streamrec_serve_requests_total{{route="{route}",code="{code}"}} {n}')
            out += ["# HELP streamrec_serve_events_sent_total Behavior events the page sent to the input topic.",
                    "# TYPE streamrec_serve_events_sent_total counter"]
            for behavior, n in sorted(self.events_sent.items()):
                out.append(f'streamrec_serve_events_sent_total{{behavior="{behavior}"}} {n}')
            out += ["# HELP streamrec_serve_lookup_seconds Time to answer one recommendations lookup.",
                    "# TYPE streamrec_serve_lookup_seconds histogram"]
            cumulative = 0
            for le, n in zip(LOOKUP_BUCKETS, self.lookup_counts):
                cumulative += n
                out.append(f'streamrec_serve_lookup_seconds_bucket{{le="{le}"}} {cumulative}')
            cumulative += self.lookup_counts[-1]
            out.append(f'streamrec_serve_lookup_seconds_bucket{{le="+Inf"}} {cumulative}')
            out.append(f"streamrec_serve_lookup_seconds_sum {self.lookup_sum:.6f}")
            out.append(f"streamrec_serve_lookup_seconds_count {cumulative}")
        for name, (help_text, read) in sorted(self.gauges.items()):
            kind = "counter" if name.endswith("_total") else "gauge"
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {read():g}"]
        return "\n".join(out) + "\n"

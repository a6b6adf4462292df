"""The request metrics clients most often scrape from TF Serving, in Prometheus text format.

``:tensorflow:serving:request_count{model_name, status}`` and the histogram
``:tensorflow:serving:request_latency{model_name, API, entrypoint}`` (microseconds, TF Serving's
buckets 10 * 1.8^k), recorded as util.cc and http_server.cc record them: every request is
counted with its status code, latency only for successful ones.

Hardened against what a client controls: label values are escaped per the text format (a model
name from a URL cannot inject lines), and only configured models get their own series - every
other name is counted under ``model_name="(unknown)"``, so the exposition cannot grow without
bound.
"""

from __future__ import annotations

import bisect
import collections
import threading

UNKNOWN_MODEL = "(unknown)"
BUCKETS_US = [10 * 1.8**k for k in range(33)]


def escape_label(value: str) -> str:
    """Prometheus text format: backslash, double quote and line feed are escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _Histogram:
    def __init__(self) -> None:
        self.buckets = [0] * len(BUCKETS_US)
        self.total = 0.0
        self.count = 0

    def observe(self, us: float) -> None:
        i = bisect.bisect_left(BUCKETS_US, us)
        if i < len(self.buckets):
            self.buckets[i] += 1
        self.total += us
        self.count += 1


class Metrics:
    """Counters and latency histograms, safe to record from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count: collections.Counter = collections.Counter()
        self.latency: dict[tuple[str, str, str], _Histogram] = collections.defaultdict(_Histogram)

    def record(self, model: str | None, api: str, entrypoint: str, code: str, seconds: float) -> None:
        """``model`` None (not a configured model) goes to the one ``(unknown)`` series."""
        name = UNKNOWN_MODEL if model is None else model
        with self._lock:
            self.count[(name, code)] += 1
            if code == "OK":
                self.latency[(name, api, entrypoint)].observe(seconds * 1e6)

    def text(self) -> str:
        with self._lock:
            lines = ["# HELP :tensorflow:serving:request_count The total number of requests.",
                     "# TYPE :tensorflow:serving:request_count counter"]
            for (m, st), n in sorted(self.count.items()):
                lines.append(f':tensorflow:serving:request_count{{model_name="{escape_label(m)}",'
                             f'status="{escape_label(st)}"}} {n}')
            lines += ["# HELP :tensorflow:serving:request_latency Distribution of wall time (in microseconds) "
                      "for Tensorflow Serving request.",
                      "# TYPE :tensorflow:serving:request_latency histogram"]
            for (m, api, entry), h in sorted(self.latency.items()):
                lab = (f'model_name="{escape_label(m)}",API="{escape_label(api)}",'
                       f'entrypoint="{escape_label(entry)}"')
                cumulative = 0
                for le, n in zip(BUCKETS_US, h.buckets, strict=True):
                    cumulative += n
                    lines.append(f':tensorflow:serving:request_latency_bucket{{{lab},le="{le:.6g}"}} {cumulative}')
                lines.append(f':tensorflow:serving:request_latency_bucket{{{lab},le="+Inf"}} {h.count}')
                lines.append(f":tensorflow:serving:request_latency_sum{{{lab}}} {h.total:.1f}")
                lines.append(f":tensorflow:serving:request_latency_count{{{lab}}} {h.count}")
        return "\n".join(lines) + "\n"

"""The request metrics clients most often scrape from TF Serving, in Prometheus text format.

Step 1 of the split: moved as is; hardening (escaping, bounded series) follows.
"""

from __future__ import annotations

import collections
import threading


class Metrics:
    """``:tensorflow:serving:request_count`` and ``request_latency`` (sum/count)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count: collections.Counter = collections.Counter()
        self.latency: dict[tuple[str, str], list[float]] = collections.defaultdict(lambda: [0.0, 0])

    def record(self, model: str, api: str, code: str, seconds: float) -> None:
        with self._lock:
            self.count[(model, "OK" if code == "OK" else code)] += 1
            cell = self.latency[(model, api)]
            cell[0] += seconds * 1e6
            cell[1] += 1

    def text(self) -> str:
        with self._lock:
            lines = ["# TYPE :tensorflow:serving:request_count counter"]
            for (m, st), n in sorted(self.count.items()):
                lines.append(f':tensorflow:serving:request_count{{model_name="{m}",status="{st}"}} {n}')
            lines.append("# TYPE :tensorflow:serving:request_latency histogram")
            for (m, api), (s, n) in sorted(self.latency.items()):
                lab = f'model_name="{m}",API="{api}",entrypoint="REST_or_GRPC"'
                lines.append(f":tensorflow:serving:request_latency_sum{{{lab}}} {s:.1f}")
                lines.append(f":tensorflow:serving:request_latency_count{{{lab}}} {n}")
        return "\n".join(lines) + "\n"

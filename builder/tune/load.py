"""Closed-loop concurrent gRPC clients: N callers, each sending its next request as soon as the
previous answer arrives, for a fixed time; throughput and latency percentiles of what completed.

Why a separate, minimal process: the clients must not compete with the server for Python's GIL
(the local server is Python too), and their own cost must be small next to the model's. So the
client sends one pre-serialized ``PredictRequest`` through a raw gRPC method (no protobuf or
TensorFlow import, no per-request encoding) and only checks the status. ``LoadClient`` keeps
that child (``python -m builder.tune.load``) alive across measurements; ``closed_loop`` is the
in-process API it runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
DEFAULT_WARMUP_SECONDS = 0.5


@dataclass
class LoadResult:
    """One measurement point: ``concurrency`` closed-loop clients for ``seconds``."""

    concurrency: int
    seconds: float
    requests: int  # answered OK inside the window
    errors: dict[str, int] = field(default_factory=dict)  # gRPC status name -> count
    rps: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    mean_ms: float = 0.0
    load_avg: tuple[float, float, float] | None = None  # os.getloadavg() when the point ended
    window: tuple[float, float] | None = None  # time.monotonic() when the window opened, closed
    client_cpu_s: float | None = None  # CPU seconds the client process used inside the window
    server_cpu_s: float | None = None  # filled in by a caller that samples the server's CPU

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def as_dict(self) -> dict:
        d = asdict(self)
        d["load_avg"] = list(self.load_avg) if self.load_avg else None
        d["window"] = list(self.window) if self.window else None
        d["requests_per_cpu_s"] = self.requests_per_cpu_s
        return d

    @property
    def requests_per_cpu_s(self) -> float | None:
        """Requests answered per CPU-second of server plus clients: throughput with the
        neighbours' share of a shared CPU taken out."""
        if self.server_cpu_s is None or self.client_cpu_s is None:
            return None
        cpu = self.server_cpu_s + self.client_cpu_s
        return round(self.requests / cpu, 3) if cpu > 0 else None

    @classmethod
    def from_dict(cls, d: dict) -> LoadResult:
        d = {k: v for k, v in d.items() if k != "requests_per_cpu_s"}
        for k in ("load_avg", "window"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending list; 0 for an empty one."""
    if not sorted_values:
        return 0.0
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def summarize(concurrency: int, seconds: float, latencies: list[float], errors: Counter) -> LoadResult:
    lat = sorted(latencies)
    ms = [v * 1000 for v in lat]
    return LoadResult(
        concurrency=concurrency, seconds=round(seconds, 3), requests=len(lat), errors=dict(errors),
        rps=round(len(lat) / seconds, 2) if seconds > 0 else 0.0,
        p50_ms=round(percentile(ms, 50), 2), p90_ms=round(percentile(ms, 90), 2),
        p99_ms=round(percentile(ms, 99), 2), max_ms=round(ms[-1], 2) if ms else 0.0,
        mean_ms=round(sum(ms) / len(ms), 2) if ms else 0.0,
        load_avg=tuple(round(v, 2) for v in os.getloadavg()),
    )


def closed_loop(target: str, request: bytes, concurrency: int, seconds: float,
                warmup_seconds: float = DEFAULT_WARMUP_SECONDS, timeout: float = 120.0,
                method: str = PREDICT_METHOD, max_warmup_seconds: float = 60.0) -> LoadResult:
    """``concurrency`` threads, one channel each (as separate client processes would have), send
    ``request`` back to back.

    Steady state only: the window opens once every client has had an answer (so each has gone
    round the loop once and the queue holds its steady share) and ``warmup_seconds`` have passed;
    it closes ``seconds`` later. Requests answered inside the window are counted, whenever they
    started; the clients then stop and the ones still in flight are waited for (not counted), so
    the next measurement starts on an idle server."""
    import grpc

    start = time.monotonic()
    answered = threading.Semaphore(0)
    stop = threading.Event()
    records: list[list[tuple[float, float, str]]] = [[] for _ in range(concurrency)]
    options = [("grpc.max_receive_message_length", 2**31 - 1), ("grpc.max_send_message_length", 2**31 - 1)]

    def client(mine: list[tuple[float, float, str]]) -> None:
        with grpc.insecure_channel(target, options=options) as ch:
            call = ch.unary_unary(method)  # raw bytes in and out
            first = True
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    call(request, timeout=timeout)
                    code = "OK"
                except grpc.RpcError as e:
                    code = e.code().name
                t1 = time.monotonic()
                mine.append((t1, t1 - t0, code))
                if first:
                    first = False
                    answered.release()
                if code != "OK":
                    time.sleep(0.001)  # refused at once: do not spin

    threads = [threading.Thread(target=client, args=(records[i],), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    warm_end = start + max_warmup_seconds
    for _ in range(concurrency):
        if not answered.acquire(timeout=max(warm_end - time.monotonic(), 0.0)):
            break
    time.sleep(max(start + warmup_seconds - time.monotonic(), 0.0))
    t_open, cpu_open = time.monotonic(), time.process_time()
    time.sleep(seconds)
    t_close, cpu_close = time.monotonic(), time.process_time()
    stop.set()
    for t in threads:
        t.join(timeout=timeout + 5)
    latencies, errors = [], Counter()
    for mine in records:
        for t1, lat, code in mine:
            if t_open <= t1 <= t_close:
                if code == "OK":
                    latencies.append(lat)
                else:
                    errors[code] += 1
    r = summarize(concurrency, t_close - t_open, latencies, errors)
    r.window, r.client_cpu_s = (t_open, t_close), round(cpu_close - cpu_open, 3)
    return r


class LoadClient:
    """The closed-loop clients in one long-lived child process (``python -m builder.tune.load``),
    so they do not share the GIL with an in-process server. Each ``measure`` is one command line
    in, one JSON result line out; the child stays idle in between, so the caller can reconfigure
    the server or reset its counters between measurements."""

    def __init__(self, request: bytes, workdir: str | os.PathLike) -> None:
        tag = f"{os.getpid()}-{id(self)}"
        self._req_file = Path(workdir) / f"request-{tag}.bin"
        self._err_file = Path(workdir) / f"load-{tag}.err"
        self._req_file.write_bytes(request)
        root = Path(__file__).resolve().parents[2]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        self._err = open(self._err_file, "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen([sys.executable, "-m", "builder.tune.load", "--request", str(self._req_file)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, text=True,
                                     env=env, cwd=str(root))

    def measure(self, target: str, concurrency: int, seconds: float,
                warmup_seconds: float = DEFAULT_WARMUP_SECONDS) -> LoadResult:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        cmd = {"target": target, "concurrency": int(concurrency), "seconds": seconds, "warmup_seconds": warmup_seconds}
        try:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        line = self.proc.stdout.readline()
        while line and not line.startswith("{"):
            line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=10)
            tail = self._err_file.read_text(errors="replace").strip()[-2000:]
            raise RuntimeError(f"load generator exited {self.proc.returncode}: {tail}")
        return LoadResult.from_dict(json.loads(line))

    def close(self) -> None:
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (subprocess.TimeoutExpired, OSError):
            self.proc.kill()
            self.proc.wait(timeout=10)
        finally:
            self._err.close()
            self._req_file.unlink(missing_ok=True)
            self._err_file.unlink(missing_ok=True)

    def __enter__(self) -> LoadClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_levels_in_child(target: str, request: bytes, levels: Iterable[int], seconds: float,
                        warmup_seconds: float = DEFAULT_WARMUP_SECONDS, workdir: str | os.PathLike = ".",
                        before_level: Callable[[int], None] | None = None) -> list[LoadResult]:
    """One ``closed_loop`` per level, in a ``LoadClient`` child; ``before_level`` runs before each."""
    out = []
    with LoadClient(request, workdir) as client:
        for c in levels:
            if before_level:
                before_level(int(c))
            out.append(client.measure(target, int(c), seconds, warmup_seconds))
    return out


def prime(target: str, request: bytes, n: int = 2, timeout: float = 300.0) -> None:
    """Send ``n`` requests one after the other and wait for the answers: the first run of a new
    input shape in a fresh session is slow and must not land in a measurement."""
    import grpc

    with grpc.insecure_channel(target) as ch:
        call = ch.unary_unary(PREDICT_METHOD)
        for _ in range(n):
            call(request, timeout=timeout)


def main(argv: list[str] | None = None) -> int:
    """Child side of ``LoadClient``: one JSON command per stdin line, one JSON result per line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--request", required=True, help="file holding one serialized PredictRequest")
    a = p.parse_args(argv)
    request = Path(a.request).read_bytes()
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        r = closed_loop(cmd["target"], request, int(cmd["concurrency"]), float(cmd["seconds"]),
                        float(cmd.get("warmup_seconds", DEFAULT_WARMUP_SECONDS)))
        print(json.dumps(r.as_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

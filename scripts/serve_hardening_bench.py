#!/usr/bin/env python3
"""Measure the local server's memory and latency goals (issue 11, item 3) - a benchmark, not a
test: it prints numbers (with the CPU model and flags) and never asserts on timings.

For each server tree (this checkout, and optionally ``--baseline DIR``, e.g. an older revision
unpacked with ``git archive REV | tar -x -C DIR``), ``python -m builder serve`` runs as a child
process on 127.0.0.1 and is measured from outside:

  frontend  16 keep-alive REST clients sending 2-row predicts for ``--seconds``: req/s, p50, p99
  idle      600 idle TCP connections: server threads and RSS growth (then closed)
  memory    one ``--body_mb`` MB row-format body to a classifier-like model (64 floats in,
            2 out) and to the toy model (4 in, 4 out): peak RSS above idle (VmHWM after
            resetting it through /proc/PID/clear_refs), as a multiple of the body size
  stall     4 clients sending 2-row predicts while one ``--big_mb`` MB body is sent and
            answered: p50 / p99 / max latency of the small requests during the big one

usage: PYTHONPATH=. .venv/bin/python scripts/serve_hardening_bench.py [--baseline DIR]
       [--body_mb 200] [--big_mb 50] [--seconds 10] [--json results.json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def cpu_info() -> dict:
    text = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
    flags = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
    wanted = ("avx", "avx2", "avx512f", "avx512_bf16", "amx_bf16", "fma", "sse4_2")
    have = set(flags.group(1).split()) if flags else set()
    return {"model": model.group(1).strip() if model else "unknown", "cores": os.cpu_count(),
            "flags": [f for f in wanted if f in have], "load_average": os.getloadavg()}


def build_repo(root: Path) -> Path:
    """toy/1 (integration fixture) and wide/1: x[-1,64] float -> logits[-1,2] (a classifier's
    shape: big input rows, small output)."""
    import tensorflow as tf

    from integration_tests.fixture_models import build_toy_version, write_models_config

    build_toy_version(root, "toy", 1)
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as sess:
        x = v1.placeholder(tf.float32, [None, 64], name="x")
        w = v1.Variable(np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32), name="w")
        logits = tf.identity(tf.matmul(x, w), name="logits")
        sess.run(v1.global_variables_initializer())
        info = v1.saved_model.utils.build_tensor_info
        sig = v1.saved_model.signature_def_utils.build_signature_def(
            {"x": info(x)}, {"logits": info(logits)}, v1.saved_model.signature_constants.PREDICT_METHOD_NAME)
        b = v1.saved_model.Builder(str(root / "wide" / "1"))
        b.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={"serving_default": sig})
        b.save()
    return write_models_config(root / "models.config", [
        {"name": "toy", "base_path": root / "toy"}, {"name": "wide", "base_path": root / "wide"}])


class Server:
    """``python -m builder serve`` from ``tree`` in a child process."""

    def __init__(self, tree: Path, config: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(tree), "TF_CPP_MIN_LOG_LEVEL": "3"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "builder", "serve", "--port", "0", "--rest_api_port", "0",
             "--model_config_file", str(config), "--file_system_poll_wait_seconds", "0"],
            cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.port = 0
        while not self.port:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"server from {tree} exited ({self.proc.wait()})")
            m = re.match(r"REST listening on [^:]+:(\d+)", line)
            self.port = int(m.group(1)) if m else 0
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def status(self, key: str) -> int:
        """A /proc/PID/status field in kB (VmRSS, VmHWM) or a count (Threads)."""
        m = re.search(rf"^{key}:\s*(\d+)", Path(f"/proc/{self.proc.pid}/status").read_text(), re.M)
        return int(m.group(1))

    def reset_peak(self) -> None:
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def post(port: int, path: str, body: bytes, timeout: float = 600) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def small_client(port: int, stop: threading.Event, out: list[float], errors: list[str]) -> None:
    body = json.dumps({"instances": np.random.default_rng(1).uniform(-1, 1, (2, 4)).tolist()}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/v1/models/toy:predict", body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                errors.append(f"HTTP {resp.status}")
        except (OSError, http.client.HTTPException) as e:
            errors.append(type(e).__name__)
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        out.append(time.perf_counter() - t0)
    conn.close()


def percentiles(samples: list[float]) -> dict:
    a = np.asarray(samples or [0.0]) * 1e3
    return {"n": len(samples), "p50_ms": round(float(np.percentile(a, 50)), 2),
            "p99_ms": round(float(np.percentile(a, 99)), 2), "max_ms": round(float(a.max()), 2)}


def frontend(server: Server, seconds: float) -> dict:
    stop, samples, errors = threading.Event(), [[] for _ in range(16)], []
    threads = [threading.Thread(target=small_client, args=(server.port, stop, s, errors)) for s in samples]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    flat = [x for s in samples for x in s]
    return {"requests_per_s": round(len(flat) / seconds, 1), **percentiles(flat), "errors": len(errors)}


def idle(server: Server, n: int = 600) -> dict:
    threads0, rss0 = server.status("Threads"), server.status("VmRSS")
    socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(n)]
    time.sleep(2.0)
    out = {"connections": n, "threads_before": threads0, "threads_with_idle": server.status("Threads"),
           "rss_growth_mb": round((server.status("VmRSS") - rss0) / 1024, 1)}
    for s in socks:
        s.close()
    return out


def rows_body(mb: float, width: int, seed: int = 2) -> bytes:
    rows = max(1, int(mb * 1e6 / (width * 20.5)))
    x = np.random.default_rng(seed).uniform(-1, 1, (rows, width))
    return json.dumps({"instances": x.tolist()}).encode()


def memory(server: Server, body: bytes, model: str) -> dict:
    time.sleep(1.0)
    idle_kb = server.status("VmRSS")
    server.reset_peak()
    t0 = time.perf_counter()
    status, answer = post(server.port, f"/v1/models/{model}:predict", body)
    seconds = time.perf_counter() - t0
    peak_kb = server.status("VmHWM")
    mb = len(body) / 1e6
    above = (peak_kb - idle_kb) * 1024 / 1e6
    return {"model": model, "body_mb": round(mb, 1), "status": status, "answer_mb": round(len(answer) / 1e6, 1),
            "seconds": round(seconds, 2), "idle_rss_mb": round(idle_kb * 1024 / 1e6, 1),
            "peak_above_idle_mb": round(above, 1), "peak_over_body": round(above / mb, 2),
            "rss_after_mb": round(server.status("VmRSS") * 1024 / 1e6, 1)}


def stall(server: Server, body: bytes) -> dict:
    stop, samples, errors = threading.Event(), [[] for _ in range(4)], []
    threads = [threading.Thread(target=small_client, args=(server.port, stop, s, errors)) for s in samples]
    for t in threads:
        t.start()
    time.sleep(1.0)
    before = [len(s) for s in samples]
    t0 = time.perf_counter()
    status, _ = post(server.port, "/v1/models/wide:predict", body)
    big_seconds = time.perf_counter() - t0
    during = [x for s, b in zip(samples, before, strict=True) for x in s[b:]]
    stop.set()
    for t in threads:
        t.join()
    return {"big_body_mb": round(len(body) / 1e6, 1), "big_status": status, "big_seconds": round(big_seconds, 2),
            "small_during_big": percentiles(during), "small_errors": len(errors)}


def measure(tree: Path, config: Path, args: argparse.Namespace, bodies: dict) -> dict:
    server = Server(tree, config)
    try:
        out = {"tree": str(tree), "frontend": frontend(server, args.seconds), "idle": idle(server)}
        out["memory"] = [memory(server, bodies["wide"], "wide"), memory(server, bodies["toy"], "toy")]
        out["stall"] = stall(server, bodies["big"])
        return out
    finally:
        server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, help="another checkout to measure side by side")
    ap.add_argument("--body_mb", type=float, default=200.0)
    ap.add_argument("--big_mb", type=float, default=50.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results: dict = {"cpu": cpu_info(), "command": " ".join(sys.argv)}
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        config = build_repo(Path(tmp))
        bodies = {"wide": rows_body(args.body_mb, 64), "toy": rows_body(args.body_mb, 4),
                  "big": rows_body(args.big_mb, 64, seed=3)}
        trees = [("current", ROOT)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
        for label, tree in trees:
            results[label] = measure(tree, config, args, bodies)
            print(json.dumps({label: results[label]}, indent=1), flush=True)
    results["cpu"]["load_average_after"] = os.getloadavg()
    print(json.dumps(results["cpu"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

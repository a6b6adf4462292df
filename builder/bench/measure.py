"""Measuring: timed repeats (one client thread or many), latency/throughput statistics, the
accuracy delta, the machine's FP32 GEMM peak and a model's FLOPs, and what the machine was (CPU
model and SIMD flags, GPUs, TensorRT) and how busy it was while the numbers were taken.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from builder.bench.runners import Runner


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), NaN for no values."""
    return float(np.percentile(values, q)) if values else float("nan")


def summarize(latencies: list[list[float]], throughputs: list[float]) -> dict[str, Any]:
    """Latency percentiles over all timed runs (seconds in, milliseconds out) and min/median/max
    of the per-repeat throughputs and per-repeat p50s."""
    flat = [x for rep in latencies for x in rep]
    p50s = [percentile(rep, 50) * 1e3 for rep in latencies if rep]
    return {
        "runs": len(flat),
        "latency_ms": {
            "p50": percentile(flat, 50) * 1e3, "p90": percentile(flat, 90) * 1e3,
            "p99": percentile(flat, 99) * 1e3, "min": min(flat) * 1e3 if flat else float("nan"),
            "max": max(flat) * 1e3 if flat else float("nan"),
            "mean": float(np.mean(flat)) * 1e3 if flat else float("nan"),
        },
        "p50_per_repeat_ms": _mmm(p50s),
        "throughput": _mmm(throughputs),
    }


def _mmm(values: list[float]) -> dict[str, float]:
    if not values:
        return {"min": float("nan"), "median": float("nan"), "max": float("nan")}
    return {"min": float(min(values)), "median": float(np.median(values)), "max": float(max(values))}


def measure_gemm(n: int = 2048, runs: int = 5, repeats: int = 3) -> dict[str, Any]:
    """FP32 GEMM throughput of this machine in a TF session (the same threading the in-process
    candidates get): best, median and worst of ``repeats`` x ``runs`` n x n x n matmuls."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    with tf.Graph().as_default() as g, tf.compat.v1.Session(graph=g) as sess:
        va = tf.compat.v1.Variable(a)
        vb = tf.compat.v1.Variable(b)
        c = tf.matmul(va, vb)
        s = tf.reduce_sum(c)  # fetch a scalar: the 16 MB product stays inside TF
        sess.run(tf.compat.v1.global_variables_initializer())
        sess.run(s)
        rates = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(runs):
                sess.run(s)
            dt = time.perf_counter() - t0
            rates.append(2.0 * n ** 3 * runs / dt / 1e9)
    return {"n": n, "runs": runs, "repeats": repeats, "gflops": _mmm(rates)}


_FLOPS_CACHE: dict[str, float | None] = {}


def graph_flops(graph_def: Any, input_tensors: dict[str, str], sample: dict[str, np.ndarray]
                ) -> float | None:
    """FLOPs per item from ``tf.compat.v1.profiler`` (float_operation) on the graph imported
    with a fixed batch of 1, so every Conv2D/MatMul has the static shape the profiler needs.
    None when nothing is countable (e.g. TensorRT engine ops hide their FLOPs)."""
    import tensorflow as tf

    key = hashlib.sha256(graph_def.SerializeToString(deterministic=True)).hexdigest()
    key += json.dumps(sorted(input_tensors.items()))
    if key in _FLOPS_CACHE:
        return _FLOPS_CACHE[key]
    result: float | None = None
    with tf.Graph().as_default() as g:
        input_map = {}
        for alias, tensor in input_tensors.items():
            arr = sample[alias]
            input_map[tensor] = tf.compat.v1.placeholder(
                tf.as_dtype(arr.dtype) if arr.dtype != object else tf.string,
                [1, *arr.shape[1:]], name=f"bench_input_{len(input_map)}")
        try:
            tf.compat.v1.import_graph_def(graph_def, input_map=input_map, name="m")
            builder = tf.compat.v1.profiler.ProfileOptionBuilder
            opts = builder(builder.float_operation()).with_empty_output().build()
            prof = tf.compat.v1.profiler.profile(g, options=opts)
            result = float(prof.total_float_ops) or None
        except (ValueError, tf.errors.OpError, KeyError):
            result = None
    _FLOPS_CACHE[key] = result
    return result


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: CPU/GPU model, cores, memory, software versions."""
    import tensorflow as tf

    info: dict[str, Any] = {
        "hostname_hash": hashlib.sha256(platform.node().encode()).hexdigest()[:12],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        **_cpu_details(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gb": _mem_total_gb(),
        "tensorflow": tf.__version__,
        "tensorflow_serving_api": _dist_version("tensorflow-serving-api"),
        "numpy": np.__version__,
    }
    try:
        build = dict(tf.sysconfig.get_build_info())
    except Exception:  # noqa: BLE001 - build info is best effort
        build = {}
    info["tf_built_with_cuda"] = bool(build.get("is_cuda_build"))
    info["cuda_version"] = build.get("cuda_version")
    info["cudnn_version"] = build.get("cudnn_version")
    gpus = []
    try:
        for d in tf.config.list_physical_devices("GPU"):
            details = tf.config.experimental.get_device_details(d)
            gpus.append({"name": details.get("device_name", d.name),
                         "compute_capability": details.get("compute_capability")})
    except Exception:  # noqa: BLE001
        pass
    info["gpus"] = gpus
    info["tensorrt_linked"], info["tensorrt_loaded"] = _tensorrt_versions()
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


_SIMD_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def _cpu_details() -> dict[str, Any]:
    """Family/model and the SIMD extensions that decide TF's kernels: VMs often hide the exact
    CPU name ("AMD EPYC"), these still tell a Zen 1 from a Zen 4."""
    out: dict[str, Any] = {"cpu_family": None, "cpu_model_number": None, "cpu_simd": []}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = (x.strip() for x in line.partition(":"))
        if key == "cpu family" and out["cpu_family"] is None:
            out["cpu_family"] = int(value)
        elif key == "model" and out["cpu_model_number"] is None and value.isdigit():
            out["cpu_model_number"] = int(value)
        elif key == "flags" and not out["cpu_simd"]:
            flags = set(value.split())
            out["cpu_simd"] = [f for f in _SIMD_FLAGS if f in flags]
    return out


def cpu_description(m: dict[str, Any]) -> str:
    """'AMD EPYC (family 23 model 1; avx2, fma)' from a ``machine_info`` dict."""
    extra = []
    if m.get("cpu_family") is not None:
        extra.append(f"family {m['cpu_family']} model {m.get('cpu_model_number')}")
    simd = [f for f in m.get("cpu_simd") or [] if f != "avx"]
    if simd:
        extra.append(", ".join(simd))
    return f"{m['cpu_model']} ({'; '.join(extra)})" if extra else m["cpu_model"]


def _mem_total_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError):
        pass
    return None


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _tensorrt_versions() -> tuple[str | None, str | None]:
    """(TensorRT version TF was built against, version actually loadable here). The loaded
    version is only asked for when TF says TensorRT is usable: without libnvinfer TF's stub
    aborts the whole process on that call."""
    try:
        from tensorflow.python.compiler.tensorrt import utils as trt_utils

        py = trt_utils._pywrap_py_utils
        linked = ".".join(map(str, py.get_linked_tensorrt_version()))
        enabled = bool(py.is_tensorrt_enabled())
    except Exception:  # noqa: BLE001 - TF without TensorRT
        return None, None
    loaded = None
    if enabled:
        try:
            loaded = ".".join(map(str, py.get_loaded_tensorrt_version()))
        except Exception:  # noqa: BLE001
            loaded = None
    return (None if linked in ("0.0.0", "") else linked), (None if loaded in ("0.0.0", "") else loaded)


class LoadMeter:
    """How busy the machine was while we measured: all CPUs (from /proc/stat) vs this process
    (plus ``pids``, e.g. a local server under test), so a reader can tell a quiet run from one
    taken under other people's load."""

    def __init__(self, pids: tuple[int, ...] = ()) -> None:
        self.pids = tuple(pids)
        self.t0 = time.monotonic()
        self.stat0 = proc_stat()
        self.self0 = _own_cpu_seconds()
        self.pids0 = {p: _pid_cpu_seconds(p) for p in self.pids}
        self.load0 = os.getloadavg() if hasattr(os, "getloadavg") else None

    def finish(self) -> dict[str, Any]:
        wall = time.monotonic() - self.t0
        stat1 = proc_stat()
        own = _own_cpu_seconds() - self.self0
        servers = 0.0
        for p, c0 in self.pids0.items():
            c1 = _pid_cpu_seconds(p)
            if c0 is not None and c1 is not None:
                servers += c1 - c0
        out: dict[str, Any] = {
            "wall_seconds": round(wall, 2),
            "loadavg_start": list(self.load0) if self.load0 else None,
            "loadavg_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "this_process_cpu_seconds": round(own, 2),
            "server_pids": list(self.pids),
            "server_cpu_seconds": round(servers, 2),
        }
        if self.stat0 and stat1 and wall > 0:
            busy = (stat1[0] - self.stat0[0]) / os.sysconf("SC_CLK_TCK")
            ncpu = os.cpu_count() or 1
            out["all_cpu_busy_fraction"] = round(min(1.0, busy / (wall * ncpu)), 3)
            out["this_process_cpu_fraction"] = round(own / (wall * ncpu), 3)
            out["server_cpu_fraction"] = round(servers / (wall * ncpu), 3)
            out["other_cpu_fraction"] = round(min(1.0, max(0.0, busy - own - servers) / (wall * ncpu)), 3)
        return out


def _pid_cpu_seconds(pid: int) -> float | None:
    """utime + stime of another process (Linux /proc), None if it is gone or unreadable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        fields = text[text.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def proc_stat() -> tuple[int, int] | None:
    try:
        parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        vals = [int(x) for x in parts]
    except (OSError, ValueError, IndexError):
        return None
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    total = sum(vals[:8])
    return total - idle, total


def _own_cpu_seconds() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed_repeat(runner: Runner, prepared: Any, runs: int | None, seconds: float | None,
                  items: int) -> tuple[list[float], float]:
    """One repeat: latencies of each run, and items/s over the repeat's wall time."""
    latencies: list[float] = []
    deadline = None if seconds is None else time.perf_counter() + seconds
    if runner.concurrency <= 1:
        t0 = time.perf_counter()
        while True:
            s = time.perf_counter()
            runner.run(prepared)
            latencies.append(time.perf_counter() - s)
            if runs is not None and len(latencies) >= runs:
                break
            if deadline is not None and time.perf_counter() >= deadline:
                break
        wall = time.perf_counter() - t0
        return latencies, items * len(latencies) / wall
    lock = threading.Lock()
    issued = [0]
    errors: list[BaseException] = []

    def worker() -> None:
        while True:
            with lock:
                if errors or (runs is not None and issued[0] >= runs) or \
                        (deadline is not None and issued[0] > 0 and time.perf_counter() >= deadline):
                    return
                issued[0] += 1
            s = time.perf_counter()
            try:
                runner.run(prepared)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                errors.append(e)
                return
            latencies.append(time.perf_counter() - s)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(runner.concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return latencies, items * len(latencies) / wall


def accuracy(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], aliases: list[str]
              ) -> dict[str, Any]:
    from builder.export import parity

    report = parity.compare({a: ref[a] for a in aliases}, {a: got[a] for a in aliases if a in got},
                            atol=0.0, rtol=0.0)
    j = report.as_json()
    return {"max_abs_diff": j["max_abs_diff"], "min_cosine": j["min_cosine"],
            "outputs": {k: {"max_abs_diff": v["max_abs_diff"], "min_cosine": v["min_cosine"]}
                        for k, v in j["outputs"].items()}}

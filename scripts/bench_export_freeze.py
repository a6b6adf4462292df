"""Served speed of the default FaceNet export vs its frozen and unfrozen forms, side by side.

WHY: the export keeps variables as variables unless the graph holds nothing freezing would lose;
this script measures whether freezing such a graph is worth it, on the built-in FaceNet example
(Inception-ResNet-v1, 160x160). It exports the checkpoint flow three times (default, --freeze,
--nofreeze), loads all three in ONE process the way TF Serving does (TF1 ``loader.load``), and
times them interleaved (round-robin call by call, so background load hits all alike): batch-1
latency p50 and batch-100 throughput. The CPU model, its flags and ``uptime`` go with the numbers.

Usage: .venv/bin/python scripts/bench_export_freeze.py [--example DIR] [--rounds 10] [--runs 20]
       [--tiny] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def cpu_info() -> dict[str, str]:
    """CPU model and the SIMD flags that matter for TF's kernels, from /proc/cpuinfo."""
    model, flags, ids = platform.processor(), [], {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "model name" and model in ("", "x86_64"):
                model = value
            elif key in ("cpu family", "model") and key not in ids:
                ids[key] = value
            elif key == "flags":
                flags = value.split()
                break
    except OSError:
        pass
    if ids:  # virtual machines often report only "AMD EPYC": family/model tell the generation
        model += f" (family {ids.get('cpu family', '?')}, model {ids.get('model', '?')})"
    wanted = [f for f in flags if f.startswith(("avx", "amx", "fma")) or f in ("sse4_2",)]
    return {"model": model, "flags": " ".join(sorted(wanted)), "cores": str(os.cpu_count())}


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "n/a"


def export_variants(example: dict, repo: Path) -> dict[str, Path]:
    from builder.export import pipeline

    size = example["image_size"]
    flags = dict(inputs=["input"], outputs=["embeddings"], feed={"phase_train": "false"},
                 input_alias={"input": "images"}, input_shapes={"input": f"?x{size}x{size}x3"})
    out = {}
    for label, freeze in (("default", None), ("frozen", True), ("unfrozen", False)):
        r = pipeline.export(pipeline.ExportOptions(model=str(example["checkpoint_dir"]), name=label,
                                                   repo=str(repo), batch_sizes=[1], freeze=freeze, **flags),
                            quiet=True)
        print(f"exported {label}: frozen={r.build_info['freeze']['frozen']} ({r.build_info['freeze']['reason']})",
              flush=True)
        out[label] = r.path
    return out


class Loaded:
    """One exported version in its own graph/session, as TF Serving loads it."""

    def __init__(self, path: Path):
        import tensorflow as tf

        self.graph = tf.Graph()
        self.sess = tf.compat.v1.Session(graph=self.graph)
        with self.graph.as_default():
            mg = tf.compat.v1.saved_model.loader.load(self.sess, ["serve"], str(path))
        sig = mg.signature_def["serving_default"]
        self.fn = self.sess.make_callable(sig.outputs["embeddings"].name, [sig.inputs["images"].name])

    def __call__(self, x):
        return self.fn(x)


def measure(models: dict[str, Loaded], size: int, rounds: int, runs: int) -> dict[str, dict[str, float]]:
    """Round-robin at the finest grain (one call per candidate in turn), so load that comes and
    goes hits every candidate alike; medians and bests of the per-call figures."""
    import numpy as np

    rng = np.random.default_rng(0)
    x1 = rng.standard_normal((1, size, size, 3)).astype(np.float32)
    x100 = rng.standard_normal((100, size, size, 3)).astype(np.float32)
    ref = next(iter(models.values()))(x100)
    for k, m in models.items():  # warm up (Grappler runs at the first call) and check agreement
        m(x1)
        assert float(np.abs(m(x100) - ref).max()) < 1e-4, k
    lat: dict[str, list[float]] = {k: [] for k in models}
    thr: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds * runs):
        for k, m in models.items():
            t = time.perf_counter()
            m(x1)
            lat[k].append(time.perf_counter() - t)
    for _ in range(rounds):
        for k, m in models.items():
            t = time.perf_counter()
            m(x100)
            thr[k].append(100 / (time.perf_counter() - t))
    return {k: {"batch1_p50_ms": 1e3 * statistics.median(lat[k]), "batch1_best_ms": 1e3 * min(lat[k]),
                "batch100_items_per_s": statistics.median(thr[k]), "batch100_best_items_per_s": max(thr[k]),
                "batch1_calls": len(lat[k]), "batch100_calls": len(thr[k])} for k in models}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--example", type=Path, default=None, help="existing example dir (python -m builder example)")
    ap.add_argument("--tiny", action="store_true", help="the tiny example (smoke test)")
    ap.add_argument("--rounds", type=int, default=10, help="batch-100 calls per candidate")
    ap.add_argument("--runs", type=int, default=20, help="batch-1 calls per candidate per round")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    from builder.example.facenet import write_example

    work = Path(tempfile.mkdtemp(prefix="bench-freeze-"))
    example_dir = a.example or work / "example"
    if a.example and (a.example / "checkpoint").is_dir():
        example = _existing(a.example, a.tiny)
    else:
        example = write_example(example_dir, tiny=a.tiny, log=None)
    paths = export_variants(example, work / "repo")
    load_before = uptime()
    models = {k: Loaded(p) for k, p in paths.items()}
    result = {"cpu": cpu_info(), "uptime_before": load_before,
              "results": measure(models, example["image_size"], a.rounds, a.runs), "uptime_after": uptime(),
              "command": " ".join([Path(sys.executable).name, *sys.argv])}
    base = result["results"]["unfrozen"]
    print(f"CPU: {result['cpu']['model']} ({result['cpu']['cores']} cores; {result['cpu']['flags']})")
    print(f"load before: {load_before}\nload after:  {result['uptime_after']}")
    print("| export | batch-1 p50 ms (best) | batch-100 items/s median (best) | batch-1 vs unfrozen | "
          "batch-100 vs unfrozen |")
    print("|---|---|---|---|---|")
    for k, r in result["results"].items():
        print(f"| {k} | {r['batch1_p50_ms']:.1f} ({r['batch1_best_ms']:.1f}) | {r['batch100_items_per_s']:.1f} "
              f"({r['batch100_best_items_per_s']:.1f}) | {base['batch1_p50_ms'] / r['batch1_p50_ms']:.2f}x | "
              f"{r['batch100_items_per_s'] / base['batch100_items_per_s']:.2f}x |")
    if a.out:
        a.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _existing(path: Path, tiny: bool) -> dict:
    """Roles of an example written earlier (same layout write_example produces)."""
    from builder.example.facenet import architecture

    arch = architecture(tiny=tiny)
    return {"checkpoint_dir": path / "checkpoint", "image_size": arch.image_size}


if __name__ == "__main__":
    sys.exit(main())

"""Produce the committed FaceNet benchmark (docs/benchmarks/) and measure the builder itself.

WHY: the README's headline table must be reproducible by one command on any machine, and the
cost of the builder (wall time, peak memory of ``export``) is part of what users weigh. Steps:

1. write the built-in FaceNet example if it is missing (``python -m builder example``);
2. export it through every input flow (checkpoint, frozen graph, SavedModel) and once CPU-
   optimised, each in its own process, recording wall time, CPU time and peak RSS (``wait4``
   rusage of that process) -> docs/benchmarks/export_cost.{md,json};
3. serve the plain export with ``python -m builder serve`` on free ports;
4. run ``python -m builder benchmark`` over checkpoint flow, frozen-graph flow, exported
   SavedModel, CPU-optimised SavedModel and gRPC through the local server
   -> docs/benchmarks/facenet_cpu.{json,md,png}.

``--gpu`` (GPU hosts with TF-TRT) adds TF-TRT FP32/FP16/INT8 exports and candidates and writes
facenet_gpu.* instead. ``--tiny`` runs the same steps on the tiny example (a smoke test; its
outputs go to the work directory, never to docs/).

Usage: scripts/bench_facenet [--gpu] [--tiny] [--seconds 20] [--repeats 3] [--batch_sizes 1,8,100]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from builder.bench import measure, report
from builder.core import log

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

PY = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() \
    else sys.executable
_LOG = log.get("bench_facenet")
GOAL_SECONDS = 30.0
GOAL_RSS_GB = 3.0


def loader_flags(image_size: int) -> list[str]:
    """How FaceNet's graph is cut: feed the ``input`` Identity, fold phase_train=False."""
    return ["--inputs", "input", "--outputs", "embeddings", "--feed", "phase_train=false",
            "--input_alias", "input=images", "--input_shapes", f"input=?x{image_size}x{image_size}x3"]


def rel(p: Path) -> str:
    """Paths relative to the project, so recorded commands read the same on every machine."""
    try:
        return str(Path(p).resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


def run_measured(cmd: list[str], log: Path) -> dict:
    """Run ``cmd`` in its own process; wall time, CPU time and peak RSS of exactly that process
    (``os.wait4``), plus how busy the rest of the machine was meanwhile."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
    stat0 = measure.proc_stat()
    t0 = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - t0
    stat1 = measure.proc_stat()
    cpu = usage.ru_utime + usage.ru_stime
    out = {"command": shlex.join(["python", *cmd[1:]]), "exit_code": proc.returncode,
           "wall_seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
           "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "log": rel(log)}
    if stat0 and stat1:
        busy = (stat1[0] - stat0[0]) / os.sysconf("SC_CLK_TCK")
        ncpu = os.cpu_count() or 1
        out["other_cpu_fraction"] = round(min(1.0, max(0.0, busy - cpu) / (wall * ncpu)), 3)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise SystemExit(f"bench_facenet: {shlex.join(cmd)} failed (exit {proc.returncode}):\n"
                         + "\n".join(tail))
    return out


def say(text: str) -> None:
    """Progress on the builder log channel (stderr), prefixed with the script's name."""
    _LOG.info(f"[bench_facenet] {text}")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--example", default=None, help="FaceNet example dir (default example_model, "
                    "written if missing)")
    ap.add_argument("--work", default=str(ROOT / "build" / "bench_facenet"),
                    help="scratch dir for the repository and logs (recreated)")
    ap.add_argument("--docs", default=str(ROOT / "docs" / "benchmarks"), help="where results go")
    ap.add_argument("--batch_sizes", default="1,8,100")
    ap.add_argument("--seconds", type=float, default=20.0, help="time budget per repeat")
    ap.add_argument("--runs", type=int, default=50, help="cap on timed runs per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=1, help="gRPC client threads")
    ap.add_argument("--tiny", action="store_true", help="smoke test on the tiny example")
    ap.add_argument("--gpu", action="store_true", help="add TF-TRT FP32/FP16/INT8 candidates")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    log.setup()
    work = Path(args.work).resolve()
    image = 80 if args.tiny else 160
    example = Path(args.example).resolve() if args.example else (
        work / "example_tiny" if args.tiny else ROOT / "example_model")
    docs = (work / "docs") if args.tiny else Path(args.docs).resolve()
    basename = "facenet_gpu" if args.gpu else "facenet_cpu"
    if args.gpu:
        import tensorflow as tf

        if not tf.config.list_physical_devices("GPU"):
            print("bench_facenet: --gpu needs an NVIDIA GPU visible to TensorFlow (none here); the "
                  "TF-TRT numbers are only measured on GPU hosts", file=sys.stderr)
            return 2
    repo = work / "repo"
    logs = work / "logs"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    docs.mkdir(parents=True, exist_ok=True)

    # 1. the example
    if not (example / "checkpoint").is_dir():
        say(f"writing the FaceNet example to {rel(example)} ...")
        cmd = [PY, "-m", "builder", "example", "--out", str(example)] + (["--tiny"] if args.tiny else [])
        r = run_measured(cmd, logs / "example.log")
        say(f"  {r['wall_seconds']:.0f} s")
    # 2. exports, each measured; 3. the local server, 4. the benchmark
    cost = _exports(args, example, work, repo, logs, image)
    bench_cost = _serve_and_benchmark(args, example, repo, logs, docs, basename, image)
    if not args.gpu:
        _write_export_cost(docs, cost, bench_cost, example)
    say(f"wrote {rel(docs / (basename + '.md'))}, .json, .png"
        + ("" if args.gpu else f" and {rel(docs / 'export_cost.md')}"))
    print((docs / f"{basename}.md").read_text())
    return 0


def _exports(args: argparse.Namespace, example: Path, work: Path, repo: Path, logs: Path,
             image: int) -> list[dict]:
    """Every export flow (and the CPU-optimised one; TF-TRT with --gpu), each in its own
    measured process."""
    exports = [("checkpoint", "facenet", example / "checkpoint", []),
               ("frozen", "facenet_frozen", example / "frozen" / "facenet.pb", []),
               ("savedmodel", "facenet_savedmodel", example / "savedmodel", []),
               ("checkpoint", "facenet_cpu", example / "checkpoint", ["--optimize", "cpu"])]
    if args.gpu:
        calib = work / "calibration.npz"
        _write_calibration(calib, image)
        exports += [("checkpoint", f"facenet_trt_{p}", example / "checkpoint",
                     ["--optimize", "tftrt", "--precision", p]
                     + (["--calibration_data", str(calib)] if p == "int8" else []))
                    for p in ("fp32", "fp16", "int8")]
    cost = []
    for flow, name, model, extra in exports:
        say(f"export {name} ({flow} flow{' ' + ' '.join(extra) if extra else ''}) ...")
        cmd = [PY, "-m", "builder", "export", "--flow", flow, "--model", rel(model), "--name", name,
               "--repo", rel(repo), *loader_flags(image), *extra]
        r = run_measured(cmd, logs / f"export_{name}.log")
        info = json.loads((repo / name / "1" / "assets.extra" / "build_info.json").read_text())
        r.update(flow=flow, name=name, optimize=info["optimizer"], precision=info["precision"],
                 export_seconds=info["export_seconds"], parity=info["parity"])
        cost.append(r)
        say(f"  {r['wall_seconds']:.1f} s wall, {r['cpu_seconds']:.1f} s CPU, "
            f"peak RSS {r['peak_rss_mb'] / 1024:.2f} GB, other load {r.get('other_cpu_fraction', 0):.0%}")
    return cost


def _serve_and_benchmark(args: argparse.Namespace, example: Path, repo: Path, logs: Path,
                         docs: Path, basename: str, image: int) -> dict:
    """``python -m builder serve`` on the plain export, then ``python -m builder benchmark``
    over every candidate plus gRPC through that server; returns the benchmark's own cost."""
    from builder.serve.server import ModelEntry, ProcessServer, model_server_config_text

    config = Path(args.work).resolve() / "models.config"
    config.write_text(model_server_config_text([ModelEntry("facenet", str(repo / "facenet"))]))
    say("starting python -m builder serve for facenet ...")
    server = ProcessServer(config, file_system_poll_wait_seconds=0, start_timeout=600)
    try:
        server.start()
        ready = server.wait_until_ready(900)
        say(f"  serving on gRPC {server.grpc_target} (ready after {ready:.0f} s)")
        cands = [f"checkpoint={rel(example / 'checkpoint')}",
                 f"frozen={rel(example / 'frozen' / 'facenet.pb')}",
                 f"export={rel(repo / 'facenet' / '1')}",
                 f"cpu={rel(repo / 'facenet_cpu' / '1')}"]
        if args.gpu:
            cands += [f"trt_{p}={rel(repo / f'facenet_trt_{p}' / '1')}" for p in ("fp32", "fp16", "int8")]
        cmd = [PY, "-m", "builder", "benchmark", "--candidates", ",".join(cands),
               "--grpc", f"{server.grpc_target}/facenet", "--concurrency", str(args.concurrency),
               "--batch_sizes", args.batch_sizes, "--warmup", str(args.warmup),
               "--repeats", str(args.repeats), "--seconds", str(args.seconds), "--runs", str(args.runs),
               *loader_flags(image), "--server_pids", str(server.proc.pid),
               "--out", rel(docs), "--basename", basename]
        return _run_benchmark(cmd, logs)
    finally:
        server.stop()


def _run_benchmark(cmd: list[str], logs: Path) -> dict:
    """The benchmark in its own process, its progress lines relayed live."""
    say("benchmark: " + shlex.join(["python", *cmd[1:]]))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    t0 = time.monotonic()
    with open(logs / "benchmark.log", "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.PIPE, text=True, env=env)
        assert proc.stderr is not None
        for line in proc.stderr:  # progress lines, live
            if line.startswith(("[batch", "loading", "  loaded", "measuring", "counting", "  ")):
                print("  " + line.rstrip(), file=sys.stderr, flush=True)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        print((logs / "benchmark.log").read_text()[-2000:], file=sys.stderr)
        raise SystemExit("bench_facenet: the benchmark failed")
    return {"wall_seconds": round(time.monotonic() - t0, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def _write_calibration(path: Path, image: int) -> None:
    """INT8 calibration inputs for TF-TRT: the same generator as the parity samples (this
    example has no real faces; with a real model, calibrate on real images)."""
    import numpy as np

    from builder.core.model import TensorInfo
    from builder.export import parity

    x = parity.generate_samples([TensorInfo("images", "input:0", "float32", [None, image, image, 3])],
                                64, seed=1)
    np.savez(path, **x)


def _write_export_cost(docs: Path, cost: list[dict], bench_cost: dict, example: Path) -> None:
    machine = measure.machine_info()
    doc = {"machine": machine, "goal": {"seconds": GOAL_SECONDS, "peak_rss_gb": GOAL_RSS_GB},
           "exports": cost, "benchmark_process": bench_cost}
    (docs / "export_cost.json").write_text(json.dumps(report.jsonable(doc), indent=2) + "\n")
    lines = [
        "# What the builder costs: `export` of the FaceNet example",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {measure.cpu_description(machine)}"
        f", {machine['cpus_usable']} cores, {machine['memory_gb']} GB RAM, {platform.system()}, "
        f"TensorFlow {machine['tensorflow']}, by `scripts/bench_facenet`. Each export runs in its "
        "own process and includes loading, writing the SavedModel, warmup records, golden outputs "
        "and the parity check; peak RSS is that process's maximum resident set (wait4 rusage).",
        "",
        f"Goal: an export of the FaceNet checkpoint in under {GOAL_SECONDS:.0f} s with a peak RSS "
        f"under {GOAL_RSS_GB:.0f} GB on the machine measured.",
        "",
        "| export | wall s | CPU s (user+sys) | peak RSS GB | other processes' CPU | parity max abs diff | goal |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for c in cost:
        label = f"{c['flow']} flow" + (f", --optimize {c['optimize']}" if c["optimize"] != "none" else "")
        ok_t = c["wall_seconds"] < GOAL_SECONDS
        ok_m = c["peak_rss_mb"] / 1024 < GOAL_RSS_GB
        goal = "met" if ok_t and ok_m else ", ".join(
            x for x, ok in (("time missed", ok_t), ("memory missed", ok_m)) if not ok)
        lines.append(f"| {label} (`{c['name']}`) | {c['wall_seconds']:.1f} | {c['cpu_seconds']:.1f} | "
                     f"{c['peak_rss_mb'] / 1024:.2f} | {c.get('other_cpu_fraction', 0) * 100:.0f}% | "
                     f"{c['parity']['max_abs_diff']:.2g} | {goal} |")
    lines += [
        "",
        "\"Other processes' CPU\" is the share of all cores used by anything else during that "
        "export: the machine is shared, and wall time grows with it while CPU time does not.",
        f"The benchmark process itself peaked at {bench_cost['peak_rss_mb'] / 1024:.2f} GB RSS "
        f"(four FaceNet sessions loaded at once) and took {bench_cost['wall_seconds'] / 60:.1f} min.",
        "",
        "Commands:",
        "",
        *[f"    {c['command'].replace(str(ROOT) + '/', '')}" for c in cost],
        "",
    ]
    (docs / "export_cost.md").write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Benchmark the ``cpu`` optimiser on the FaceNet example against the unoptimised export and
the seed's checkpoint flow, in ONE run, side by side.

Candidates (all in TF1 sessions with the default ConfigProto, as TF Serving runs SavedModels):

- ``checkpoint``: the seed's flow -- ``import_meta_graph`` + ``restore`` of the training
  MetaGraph, fed ``input:0`` and ``phase_train:0=False`` (FaceNet's ``compare.py``);
- ``export none``: ``python -m builder export --optimize none`` (frozen, pruned SavedModel);
- ``export cpu``: the same with ``--optimize cpu``.

Measured: batch-1 latency (p50/p90) and batch-100 throughput, interleaved over ``--rounds`` so
load from other processes hits every candidate alike; the FP32 GEMM throughput of this machine
in the same run (a 2048^3 ``tf.matmul``, best of several) and the model's FLOP per image
(counted from the graph's Conv2D/MatMul shapes), so each candidate's share of the GEMM peak
can be given. ``--precision_study`` adds the reduced-precision investigation (oneDNN bf16
auto-mixed-precision on the cpu-optimised graph; stock int8 ``QuantizedConv2D`` kernels vs
FP32 ``Conv2D`` on FaceNet-sized layers).

Usage: .venv/bin/python scripts/bench_cpu_optimize.py [--example DIR] [--rounds 3]
       [--precision_study] [--markdown docs/bench_cpu_optimize.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def cpu_facts() -> dict[str, Any]:
    flags: set[str] = set()
    model = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            if line.startswith("model name") and model in ("?", ""):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {
        "model": model,
        "cores": os.cpu_count(),
        "avx2": "avx2" in flags,
        "avx512f": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "avx512_vnni": "avx512_vnni" in flags or "avx512vnni" in flags,
        "avx_vnni": "avx_vnni" in flags,
    }


def gemm_gflops(n: int = 2048, repeats: int = 8) -> float:
    """Best FP32 matmul throughput through TensorFlow (oneDNN), GFLOP/s."""
    import tensorflow as tf

    v1 = tf.compat.v1
    with tf.Graph().as_default() as g:
        # variables, not constants: Grappler would fold a product of constants away
        a = v1.Variable(np.random.default_rng(0).normal(size=(n, n)).astype(np.float32))
        b = v1.Variable(np.random.default_rng(1).normal(size=(n, n)).astype(np.float32))
        c = tf.reduce_sum(tf.matmul(a, b))
        with v1.Session(graph=g) as s:
            s.run(v1.global_variables_initializer())
            s.run(c)
            best = min(_timed(lambda: s.run(c)) for _ in range(repeats))
    return 2.0 * n ** 3 / best / 1e9


def numpy_gemm_gflops(n: int = 2048, repeats: int = 4) -> float:
    """Best FP32 matmul throughput through numpy's BLAS (OpenBLAS in the wheel), GFLOP/s."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(n, n)).astype(np.float32)
    b = rng.normal(size=(n, n)).astype(np.float32)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2.0 * n ** 3 / best / 1e9


def _median_time(sess: Any, fetch: Any, feed: dict, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(fetch, feed)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def flops_per_image(graph_def: Any, input_tensor: str, image_shape: tuple[int, ...]) -> float:
    """2 * MACs of every Conv2D / DepthwiseConv2dNative / MatMul at batch 1."""
    import tensorflow as tf

    v1 = tf.compat.v1
    with tf.Graph().as_default() as g:
        x = tf.zeros((1, *image_shape), tf.float32)
        v1.import_graph_def(graph_def, input_map={input_tensor: x}, name="")
        total = 0.0
        for op in g.get_operations():
            if op.type in ("Conv2D", "DepthwiseConv2dNative"):
                _, ho, wo, cout = op.outputs[0].shape.as_list()
                kh, kw, cin, _ = op.inputs[1].shape.as_list()
                per_output = kh * kw * (cin if op.type == "Conv2D" else 1)
                total += 2.0 * ho * wo * cout * per_output
            elif op.type == "MatMul":
                a = op.inputs[0].shape.as_list()
                b = op.outputs[0].shape.as_list()
                k = a[0] if op.get_attr("transpose_a") else a[1]
                total += 2.0 * b[0] * b[1] * k
    return total


class Candidate:
    def __init__(self, name: str, sess: Any, feed_in: Any, fetch: Any, extra_feed: dict | None = None,
                 nodes: int = 0, t0: float | None = None):
        self.name, self.sess, self.feed_in, self.fetch = name, sess, feed_in, fetch
        self.extra_feed = extra_feed or {}
        self.nodes = nodes
        self.b1: list[float] = []
        self.b100: list[float] = []
        self.kernels: dict[str, int] = {}
        # load + first batch-1 answer: what a server pays before it is ready
        self.run(np.zeros((1, *[int(d) for d in self.feed_in.shape[1:]]), np.float32))
        self.load_seconds = time.perf_counter() - t0 if t0 is not None else float("nan")

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.sess.run(self.fetch, {self.feed_in: x, **self.extra_feed})

    def op_time_shares(self, x: np.ndarray) -> dict[str, float]:
        """Share of summed kernel time per op type in one traced run (FULL_TRACE)."""
        import tensorflow as tf

        v1 = tf.compat.v1
        md = v1.RunMetadata()
        self.sess.run(self.fetch, {self.feed_in: x, **self.extra_feed},
                      options=v1.RunOptions(trace_level=v1.RunOptions.FULL_TRACE), run_metadata=md)
        tot: dict[str, float] = {}
        for dev in md.step_stats.dev_stats:
            for ns in dev.node_stats:
                label = ns.timeline_label
                op = label.split(" = ", 1)[1].split("(", 1)[0] if " = " in label else ns.node_name
                tot[op] = tot.get(op, 0.0) + ns.all_end_rel_micros
        total = sum(tot.values()) or 1.0
        return {k: v / total for k, v in sorted(tot.items(), key=lambda kv: -kv[1])}

    def runtime_kernels(self, x: np.ndarray) -> dict[str, int]:
        """Op types TF actually executes after its load-time Grappler pass (partition graphs)."""
        import tensorflow as tf

        v1 = tf.compat.v1
        md = v1.RunMetadata()
        self.sess.run(self.fetch, {self.feed_in: x, **self.extra_feed},
                      options=v1.RunOptions(output_partition_graphs=True), run_metadata=md)
        c: dict[str, int] = {}
        for pg in md.partition_graphs:
            for n in pg.node:
                c[n.op] = c.get(n.op, 0) + 1
        self.kernels = c
        return c


def checkpoint_candidate(ckpt_dir: Path) -> Candidate:
    import tensorflow as tf

    v1 = tf.compat.v1
    g = tf.Graph()
    t0 = time.perf_counter()
    with g.as_default():
        meta = next(ckpt_dir.glob("*.meta"))
        saver = v1.train.import_meta_graph(str(meta), clear_devices=True)
        sess = v1.Session(graph=g)
        saver.restore(sess, tf.train.latest_checkpoint(str(ckpt_dir)))
    return Candidate("checkpoint (seed flow)", sess, g.get_tensor_by_name("input:0"),
                     g.get_tensor_by_name("embeddings:0"),
                     {g.get_tensor_by_name("phase_train:0"): False},
                     nodes=len(g.as_graph_def().node), t0=t0)


def saved_model_candidate(name: str, path: Path) -> Candidate:
    import tensorflow as tf

    v1 = tf.compat.v1
    g = tf.Graph()
    t0 = time.perf_counter()
    sess = v1.Session(graph=g)
    with g.as_default():
        mg = v1.saved_model.loader.load(sess, ["serve"], str(path))
    sig = mg.signature_def["serving_default"]
    return Candidate(name, sess, g.get_tensor_by_name(sig.inputs["images"].name),
                     g.get_tensor_by_name(sig.outputs["embeddings"].name),
                     nodes=len(mg.graph_def.node), t0=t0)


def export_version(example: Path, repo: Path, optimize: str, size: int) -> tuple[Path, str, dict]:
    """Run the real export pipeline; checkpoint flow first (the seed's), frozen as fallback."""
    from builder.core.errors import BuilderError
    from builder.export import pipeline as ex

    common = dict(name=f"facenet_{optimize}", repo=str(repo), inputs=["input"],
                  outputs=["embeddings"], feed={"phase_train": "false"},
                  input_alias={"input": "images"}, input_shapes={"input": f"?x{size}x{size}x3"},
                  optimize=optimize, batch_sizes=[1, 100], warmup_records=1, num_samples=8)
    errors = []
    for flow, model in (("checkpoint", example / "checkpoint"),
                        ("frozen", example / "frozen" / "facenet.pb")):
        try:
            res = ex.export(ex.ExportOptions(model=str(model), flow=flow, **common), quiet=True)
            return res.path, flow, res.build_info
        except BuilderError as e:
            errors.append(f"{flow}: {e}")
            print(f"  export --optimize {optimize} via the {flow} flow failed: {e}", file=sys.stderr)
    raise SystemExit("export failed for every flow:\n" + "\n".join(errors))


def measure(cands: list[Candidate], x1: np.ndarray, x100: np.ndarray, rounds: int, b1_runs: int,
            b100_runs: int, gemm: list[float]) -> None:
    for c in cands:  # warm-up: first runs allocate and let Grappler/oneDNN settle
        c.run(x1)
        c.run(x100)
    for r in range(rounds):
        order = cands[r % len(cands):] + cands[: r % len(cands)]
        for c in order:
            for _ in range(b1_runs):
                c.b1.append(_timed(lambda c=c: c.run(x1)))
            for _ in range(b100_runs):
                c.b100.append(_timed(lambda c=c: c.run(x100)))
        gemm.append(max(gemm_gflops(repeats=3), numpy_gemm_gflops(repeats=2)))
        print(f"  round {r + 1}/{rounds} done", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


# --------------------------------------------------------------------------- precision study


def bf16_study(cpu_sm: Path, x100: np.ndarray, ref: np.ndarray, runs: int) -> dict[str, Any]:
    """oneDNN bf16 auto mixed precision switched on for the cpu-optimised SavedModel's session."""
    import tensorflow as tf
    from tensorflow.core.protobuf import rewriter_config_pb2

    v1 = tf.compat.v1
    cfg = v1.ConfigProto()
    cfg.graph_options.rewrite_options.auto_mixed_precision_onednn_bfloat16 = (
        rewriter_config_pb2.RewriterConfig.ON)
    g = tf.Graph()
    sess = v1.Session(graph=g, config=cfg)
    with g.as_default():
        mg = v1.saved_model.loader.load(sess, ["serve"], str(cpu_sm))
    sig = mg.signature_def["serving_default"]
    fin = g.get_tensor_by_name(sig.inputs["images"].name)
    fout = g.get_tensor_by_name(sig.outputs["embeddings"].name)
    out = sess.run(fout, {fin: x100})
    times = [_timed(lambda: sess.run(fout, {fin: x100})) for _ in range(runs)]
    sess.close()
    cos = np.sum(out * ref, axis=1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1))
    return {"img_s": x100.shape[0] / statistics.median(times),
            "best_img_s": x100.shape[0] / min(times),
            "min_cosine": float(cos.min()), "max_abs_diff": float(np.abs(out - ref).max())}


def int8_study(runs: int) -> list[dict[str, Any]]:
    """Stock TF 2.17 int8 conv kernels (QuantizeV2 -> QuantizedConv2D -> Dequantize) against
    FP32 Conv2D on FaceNet-shaped layers at batch 100. QuantizedConv2D runs with quint8 inputs
    and filters (the combination stock TF registers; a qint8 filter fails at run time with
    "Missing 0-th output" in TF 2.17.1)."""
    import tensorflow as tf

    v1 = tf.compat.v1
    rng = np.random.default_rng(0)
    layers = [("block35 3x3, 35x35x32->32", (100, 35, 35, 32), (3, 3, 32, 32)),
              ("block17 1x1, 17x17x896->128", (100, 17, 17, 896), (1, 1, 896, 128))]
    rows = []
    for label, xs, ws in layers:
        x = np.abs(rng.normal(size=xs)).astype(np.float32)  # post-ReLU activations
        w = rng.normal(0, 0.05, size=ws).astype(np.float32)
        with tf.Graph().as_default() as g, v1.Session(graph=g) as s:
            xi = v1.placeholder(tf.float32, xs)
            wc = v1.Variable(w)
            f32 = tf.nn.conv2d(xi, wc, 1, "SAME")
            wabs = float(np.abs(w).max())
            qx = tf.raw_ops.QuantizeV2(input=xi, min_range=0.0, max_range=float(x.max()),
                                       T=tf.quint8)
            qw = tf.raw_ops.QuantizeV2(input=wc, min_range=-wabs, max_range=wabs, T=tf.quint8)
            qconv = tf.raw_ops.QuantizedConv2D(
                input=qx.output, filter=qw.output, min_input=qx.output_min,
                max_input=qx.output_max, min_filter=qw.output_min, max_filter=qw.output_max,
                strides=[1, 1, 1, 1], padding="SAME", out_type=tf.qint32)
            q = tf.raw_ops.Dequantize(input=qconv.output, min_range=qconv.min_output,
                                      max_range=qconv.max_output)
            s.run(v1.global_variables_initializer())
            sums = (tf.reduce_sum(f32), tf.reduce_sum(q))
            try:
                s.run(sums, {xi: x})
            except tf.errors.OpError as e:
                rows.append({"layer": label, "error": " ".join(str(e).split())[:200]})
                continue
            t32 = _median_time(s, sums[0], {xi: x}, runs)
            t8 = _median_time(s, sums[1], {xi: x}, runs)
            a, b = s.run([f32, q], {xi: x})
            a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
            cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
            rows.append({"layer": label, "fp32_ms": t32 * 1e3, "int8_ms": t8 * 1e3,
                         "speedup": t32 / t8, "min_cosine": float(cos.min())})
    return rows


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--example", help="existing FaceNet example dir (python -m builder example); "
                                      "default: write the full example to a temp dir")
    ap.add_argument("--tiny", action="store_true", help="use the tiny example (smoke test only)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--b1_runs", type=int, default=20)
    ap.add_argument("--b100_runs", type=int, default=3)
    ap.add_argument("--precision_study", action="store_true")
    ap.add_argument("--markdown", help="also write the Markdown report to this file")
    args = ap.parse_args(argv)

    import tensorflow as tf

    from builder.example import facenet as fx

    work = Path(tempfile.mkdtemp(prefix="bench-cpu-opt-"))
    load_start = os.getloadavg()[0]
    if args.example:
        example = Path(args.example)
    else:
        example = work / "example"
        fx.write_example(example, tiny=args.tiny, log=None)
    size = fx.architecture(tiny=args.tiny).image_size
    print(f"example: {example} ({size}x{size})", file=sys.stderr)

    repo = work / "repo"
    none_path, none_flow, none_info = export_version(example, repo, "none", size)
    cpu_path, cpu_flow, cpu_info = export_version(example, repo, "cpu", size)

    gemm_before = max(gemm_gflops(), numpy_gemm_gflops())
    with tf.Graph().as_default():
        mg = tf.compat.v1.saved_model.loader.load(tf.compat.v1.Session(), ["serve"], str(cpu_path))
        sig = mg.signature_def["serving_default"]
        gflop = flops_per_image(mg.graph_def, sig.inputs["images"].name, (size, size, 3)) / 1e9

    cands = [checkpoint_candidate(example / "checkpoint"),
             saved_model_candidate(f"export --optimize none ({none_flow} flow)", none_path),
             saved_model_candidate(f"export --optimize cpu ({cpu_flow} flow)", cpu_path)]
    rng = np.random.default_rng(0)
    x100 = rng.normal(size=(100, size, size, 3)).astype(np.float32)
    x1 = x100[:1]
    ref = cands[0].run(x100)
    diffs = [float(np.abs(c.run(x100) - ref).max()) for c in cands]
    for c in cands:
        c.runtime_kernels(x1)
    gemms = [gemm_before]
    measure(cands, x1, x100, args.rounds, args.b1_runs, args.b100_runs, gemms)
    gemm_after = max(gemm_gflops(), numpy_gemm_gflops())
    gemms.append(gemm_after)
    shares = cands[2].op_time_shares(x100)
    gemm = max(gemms)

    study = None
    if args.precision_study:
        print("  precision study ...", file=sys.stderr, flush=True)
        fp32_times = cands[2].b100
        study = {"bf16": bf16_study(cpu_path, x100, cands[2].run(x100), max(3, args.b100_runs)),
                 "fp32_img_s": 100 / statistics.median(fp32_times),
                 "int8": int8_study(5)}
    for c in cands:
        c.sess.close()
    load_end = os.getloadavg()[0]

    facts = cpu_facts()
    base = 100 / statistics.median(cands[0].b100)
    lines = [
        "# CPU optimiser benchmark (FaceNet example, Inception-ResNet-v1)",
        "",
        f"Generated by `scripts/bench_cpu_optimize.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
        f"TensorFlow {tf.__version__}, CPU: {facts['model']}, {facts['cores']} cores "
        f"(AVX2 {'yes' if facts['avx2'] else 'no'}, AVX-512 {'yes' if facts['avx512f'] else 'no'}, "
        f"AVX512-BF16 {'yes' if facts['avx512_bf16'] else 'no'}, AMX {'yes' if facts['amx_bf16'] else 'no'}).",
        "",
        f"Model: {size}x{size}x3 -> {ref.shape[1]}-d embeddings, {gflop:.2f} GFLOP per image (2 x MACs of every "
        f"Conv2D/MatMul). FP32 GEMM throughput measured in the same run: {gemm:.0f} GFLOP/s "
        f"(2048^3 matmul, the better of tf.matmul and numpy/OpenBLAS; best of all measurements: "
        f"{', '.join(f'{g:.0f}' for g in gemms)} before, between the rounds and after).",
        "",
        f"{args.rounds} interleaved rounds x ({args.b1_runs} batch-1 runs + {args.b100_runs} batch-100 "
        f"runs) per candidate. Load average {load_start:.1f} at start, {load_end:.1f} at end: other "
        "processes share these cores, so absolute numbers are noisy; the interleaving keeps the "
        "comparison fair, and 'best' shows the least-disturbed run.",
        "",
        "| candidate | graph nodes | load + 1st answer s | batch-1 p50 ms | batch-1 p90 ms | "
        "batch-100 img/s (median) | img/s (best) | vs checkpoint (median) | % of GEMM (median) | "
        "% of GEMM (best) | max abs diff vs checkpoint |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c, d in zip(cands, diffs):
        med = 100 / statistics.median(c.b100)
        best = 100 / min(c.b100)
        lines.append(
            f"| {c.name} | {c.nodes} | {c.load_seconds:.1f} | {pct(c.b1, 50) * 1e3:.1f} | "
            f"{pct(c.b1, 90) * 1e3:.1f} | "
            f"{med:.1f} | {best:.1f} | {med / base:.2f}x | {100 * med * gflop / gemm:.0f}% | "
            f"{100 * best * gflop / gemm:.0f}% | {d:.2g} |"
        )
    interesting = ("_FusedConv2D", "Conv2D", "FusedBatchNormV3", "Switch", "Merge", "Relu", "AddV2",
                   "Mul", "BiasAdd")
    lines += [
        "",
        "What TensorFlow executes after its own load-time Grappler pass (partition graphs, batch 1):",
        "",
        "| candidate | executed nodes | " + " | ".join(interesting) + " |",
        "|---|---:|" + "---:|" * len(interesting),
    ]
    for c in cands:
        lines.append(f"| {c.name} | {sum(c.kernels.values())} | "
                     + " | ".join(str(c.kernels.get(k, 0)) for k in interesting) + " |")
    top = [(k, v) for k, v in shares.items() if v >= 0.001][:8]
    lines += [
        "",
        "Where the time goes in the cpu export at batch 100 (share of summed kernel time, one traced "
        "run): " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in top) + ".",
    ]
    opt = cpu_info.get("optimization", {})
    lines += [
        "",
        f"cpu optimiser: {opt.get('nodes_before')} -> {opt.get('nodes_after')} nodes in "
        f"{opt.get('seconds')} s; passes: "
        + ", ".join(p["name"] + (f" ({p.get('total')} folds)" if p["name"] == "fold_batch_norm" else "")
                    for p in opt.get("passes", [])) + ".",
        f"Export parity (FP32, 8 samples): none max_abs_diff={none_info['parity']['max_abs_diff']:.2g}, "
        f"cpu max_abs_diff={cpu_info['parity']['max_abs_diff']:.2g}.",
    ]
    if study:
        b = study["bf16"]
        lines += [
            "",
            "## Reduced precision on this CPU",
            "",
            "| variant | batch-100 img/s (median) | speed-up vs FP32 cpu export | min cosine vs FP32 | max abs diff |",
            "|---|---:|---:|---:|---:|",
            f"| FP32 (export --optimize cpu) | {study['fp32_img_s']:.1f} | 1.00x | 1 | 0 |",
            f"| bf16 (oneDNN auto-mixed-precision, session option) | {b['img_s']:.1f} | "
            f"{b['img_s'] / study['fp32_img_s']:.2f}x | {b['min_cosine']:.5f} | {b['max_abs_diff']:.2g} |",
            "",
            ("The bf16 pass left the graph in FP32 (outputs bit-identical): oneDNN only rewrites to "
             "bf16 on CPUs with AVX512-BF16 or AMX, which this one lacks; the speed difference is "
             "noise." if b["max_abs_diff"] == 0.0 else
             "The bf16 pass rewrote the graph (outputs differ from FP32)."),
            "",
            "Stock int8 kernels (QuantizeV2 -> QuantizedConv2D -> Dequantize) vs FP32 Conv2D, batch 100:",
            "",
            "| layer | FP32 ms | int8 ms | speed-up | min cosine |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in study["int8"]:
            if "error" in r:
                lines.append(f"| {r['layer']} | - | - | fails: {r['error']} | - |")
            else:
                lines.append(f"| {r['layer']} | {r['fp32_ms']:.1f} | {r['int8_ms']:.1f} | "
                             f"{r['speedup']:.2f}x | {r['min_cosine']:.5f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

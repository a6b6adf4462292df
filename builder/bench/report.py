"""Reporting: the results document as Markdown (machine, settings, one table, how it was
measured), a latency/throughput PNG, and results.json -- each file written to a temporary name
and renamed, so a reader never sees a half-written one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from builder.bench.candidates import SERVER_KINDS
from builder.bench.measure import cpu_description


def flops_text(f: float) -> str:
    for unit, scale in (("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
        if f >= scale:
            return f"{f / scale:.3f} {unit}"
    return f"{f:.0f} FLOP"


def _fmt(v: Any, spec: str = ".1f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def _fmt_diff(v: float | None) -> str:
    if v is None:
        return "-"
    return "0" if v == 0 else f"{v:.2g}"


def render_markdown(doc: dict[str, Any], png_name: str | None = None) -> str:
    """The results as a Markdown section: machine, settings, one table, how it was measured."""
    lines = _machine_lines(doc) + _table_lines(doc) + _notes_lines(doc)
    if png_name:
        lines += ["", f"![latency and throughput vs batch size]({png_name})"]
    return "\n".join(lines) + "\n"


def _machine_lines(doc: dict[str, Any]) -> list[str]:
    """What it ran on, the GEMM peak, and how busy the machine was meanwhile."""
    m, load = doc["machine"], doc["load"]
    gpu = ", ".join(g["name"] for g in m.get("gpus", [])) or "none"
    lines = [
        f"Measured {doc['created']} on {cpu_description(m)}, {m['cpus_usable'] or m['cpu_count']} "
        f"cores, {m['memory_gb']} GB RAM, GPU: {gpu}; TensorFlow {m['tensorflow']}, "
        f"TensorRT {m.get('tensorrt_loaded') or 'not loadable'} (TF built against "
        f"{m.get('tensorrt_linked') or 'none'}).",
        "",
    ]
    if doc.get("gemm"):
        g = doc["gemm"]
        best = g.get("best", g["gflops"]["max"])
        lines.append(f"FP32 GEMM throughput of the {m['cpu_model']}: {best:.1f} GFLOP/s (best "
                     f"{g['n']}x{g['n']} tf.matmul; median {g['gflops']['median']:.1f}).")
    if "all_cpu_busy_fraction" in load:
        server = (f", the local server {load['server_cpu_fraction'] * 100:.0f}%"
                  if load.get("server_pids") else "")
        avg = (f" (load average {load['loadavg_start'][0]:.1f} -> {load['loadavg_end'][0]:.1f})"
               if load.get("loadavg_start") and load.get("loadavg_end") else "")
        lines.append(
            f"Machine load during the run: CPUs {load['all_cpu_busy_fraction'] * 100:.0f}% busy, "
            f"of which this benchmark {load['this_process_cpu_fraction'] * 100:.0f}%{server} and "
            f"other processes {load['other_cpu_fraction'] * 100:.0f}%{avg}.")
    return lines


def _table_lines(doc: dict[str, Any]) -> list[str]:
    """How each number was taken, then one row per candidate and batch size."""
    s = doc["settings"]
    if s["seconds"]:
        each = f"{s['seconds']:g} s each" + (f" (at most {s['runs']} runs)" if s["runs"] else "")
    else:
        each = f"{s['runs']} timed runs each"
    lines = [
        f"Each candidate and batch size: {s['warmup']} warm-up run{'s' if s['warmup'] != 1 else ''},"
        f" then {s['repeats']} repeat{'s' if s['repeats'] != 1 else ''} of {each}, candidates "
        f"interleaved round-robin; inputs {s['samples']}.",
        "",
        "| candidate | batch | p50 ms | p90 ms | p99 ms | items/s median (min-max) | speedup "
        "| max abs diff | min cosine | % of GEMM peak |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in doc["results"]:
        lm, tp, acc = row["latency_ms"], row["throughput"], row["accuracy"]
        frac = row.get("gemm_fraction")
        lines.append(
            f"| {row['candidate']} | {row['batch_size']} | {_fmt(lm['p50'])} | {_fmt(lm['p90'])} | "
            f"{_fmt(lm['p99'])} | {_fmt(tp['median'])} ({_fmt(tp['min'])}-{_fmt(tp['max'])}) | "
            f"{_fmt(row['speedup'], '.3f')}x | {_fmt_diff(acc['max_abs_diff'])} | "
            f"{_fmt(acc['min_cosine'], '.6f')} | "
            f"{'-' if frac is None else format(frac * 100, '.2g') + '%'} |")
    return lines


def _notes_lines(doc: dict[str, Any]) -> list[str]:
    """What the numbers are relative to, the accuracy extremes, FLOPs, candidates, command."""
    lines = [
        "",
        f"Speedup and accuracy are relative to the first candidate ({doc['reference']}), on the "
        "same input batch. Latency percentiles cover all timed runs; items/s is the "
        "median (min-max) over repeats.",
    ]
    others = [r for r in doc["results"] if r["candidate"] != doc["reference"]]
    if others:
        worst = max(others, key=lambda r: r["accuracy"]["max_abs_diff"])
        least = min(others, key=lambda r: r["accuracy"]["min_cosine"])
        lines.append(
            f"Accuracy: the largest difference from {doc['reference']} over every candidate and "
            f"batch is max abs diff {_fmt_diff(worst['accuracy']['max_abs_diff'])} "
            f"({worst['candidate']}), min cosine {least['accuracy']['min_cosine']:.6f} "
            f"({least['candidate']}).")
    flops = [c for c in doc["candidates"] if c.get("flops_per_item")]
    if flops:
        lines.append("Model FLOPs (TensorFlow profiler, per item): " + ", ".join(
            f"{c['label']} {flops_text(c['flops_per_item'])}" for c in flops) + ".")
    lines += ["", "Candidates:", ""]
    for c in doc["candidates"]:
        extra = f", model {c['model_name']}" if c.get("model_name") else ""
        conc = f", {c['concurrency']} client thread(s)" if c["kind"] in SERVER_KINDS else ""
        lines.append(f"- `{c['label']}`: {c['kind']} `{c['target']}`{extra}{conc}; "
                     f"{c.get('runs_as', '')}")
    lines += ["", f"Command: `{doc['command']}`"]
    return lines


def plot_png(doc: dict[str, Any], path: Path) -> None:
    """Latency (p50, bars to p90) and throughput (median, bars min-max) vs batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    labels = list(dict.fromkeys(r["candidate"] for r in doc["results"]))
    for label in labels:
        rows = sorted((r for r in doc["results"] if r["candidate"] == label),
                      key=lambda r: r["batch_size"])
        x = [r["batch_size"] for r in rows]
        p50 = np.array([r["latency_ms"]["p50"] for r in rows])
        p90 = np.array([r["latency_ms"]["p90"] for r in rows])
        ax1.errorbar(x, p50, yerr=[np.zeros_like(p50), np.maximum(p90 - p50, 0)], marker="o",
                     capsize=3, label=label)
        med = np.array([r["throughput"]["median"] for r in rows])
        lo = np.array([r["throughput"]["min"] for r in rows])
        hi = np.array([r["throughput"]["max"] for r in rows])
        ax2.errorbar(x, med, yerr=[np.maximum(med - lo, 0), np.maximum(hi - med, 0)], marker="o",
                     capsize=3, label=label)
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xlabel("batch size")
        ax.set_xticks(doc["settings"]["batch_sizes"])
        ax.set_xticklabels([str(b) for b in doc["settings"]["batch_sizes"]])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
    ax1.set_yscale("log")
    ax1.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax1.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax1.yaxis.set_minor_locator(NullLocator())
    ax2.set_ylim(bottom=0)
    ax1.set_ylabel("latency per request, ms (p50, bar to p90)")
    ax2.set_ylabel("throughput, items/s (median, bar min-max)")
    ax2.legend(fontsize=8)
    m = doc["machine"]
    fig.suptitle(f"{cpu_description(m)}, {m['cpus_usable'] or m['cpu_count']} cores, "
                 f"TF {m['tensorflow']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def output_names(basename: str | None) -> tuple[str, str, str]:
    if basename:
        return f"{basename}.json", f"{basename}.md", f"{basename}.png"
    return "results.json", "results.md", "latency_throughput.png"


def write_outputs(doc: dict[str, Any], out_dir: str | os.PathLike, basename: str | None = None
                  ) -> list[Path]:
    """results.json, results.md and latency_throughput.png (or BASENAME.*), each written to a
    temporary name and renamed, so a reader never sees a half-written file."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jname, mname, pname = output_names(basename)
    tag = f".tmp-{os.getpid()}"
    tmp = {n: out / f".{n}{tag}" for n in (jname, mname, pname)}
    try:
        tmp[jname].write_text(json.dumps(jsonable(doc), indent=2, allow_nan=False) + "\n")
        tmp[mname].write_text(render_markdown(doc, pname))
        plot_png(doc, tmp[pname])
        for n, t in tmp.items():
            os.replace(t, out / n)
    finally:
        for t in tmp.values():
            if t.exists():
                t.unlink()
    return [out / jname, out / mname, out / pname]


def jsonable(v: Any) -> Any:
    """NaN/inf are not JSON: they become null."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return None if math.isnan(f) or math.isinf(f) else f
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return jsonable(dataclasses.asdict(v))
    return v

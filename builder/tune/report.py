"""What ``tune`` writes: batching_parameters.txt (with a header saying what was measured, where,
and how to reproduce it), the JSON report, and the plot.

Why a header: a tuned file is only true for one model version on one CPU. The comment block
travels with the file into images and ConfigMaps, so whoever finds it later knows what it was
tuned for and can re-run the command.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from builder.serve.batching import BatchingOptions
from builder.tune.plan import Candidate

BATCHING_FILE = "batching_parameters.txt"
REPORT_FILE = "tune_report.json"
PLOT_FILE = "tune_plot.png"


def options_text(opts: BatchingOptions) -> str:
    """The BatchingParameters text proto for ``opts`` (every field explicit)."""
    lines = [
        f"max_batch_size {{ value: {opts.max_batch_size} }}",
        f"batch_timeout_micros {{ value: {opts.batch_timeout_micros} }}",
        f"max_enqueued_batches {{ value: {opts.max_enqueued_batches} }}",
        f"num_batch_threads {{ value: {opts.num_batch_threads} }}",
        f'thread_pool_name {{ value: "{opts.thread_pool_name}" }}',
    ]
    lines += [f"allowed_batch_sizes: {b}" for b in opts.allowed_batch_sizes]
    lines.append(f"pad_variable_length_inputs: {'true' if opts.pad_variable_length_inputs else 'false'}")
    if opts.enable_large_batch_splitting:
        lines.append("enable_large_batch_splitting { value: true }")
        lines.append(f"max_execution_batch_size {{ value: {opts.execution_limit} }}")
    return "\n".join(lines) + "\n"


def _fmt(r: Any) -> str:
    if r is None:
        return "not measured"
    return f"{r.rps:g} requests/s at {r.concurrency} clients, p50 {r.p50_ms:g} ms, p99 {r.p99_ms:g} ms"


def header(report: dict, chosen: Candidate, baseline: Candidate, met_budget: bool) -> list[str]:
    """The comment lines at the top of the tuned batching_parameters.txt."""
    m, mach, budget = report["model"], report["machine"], report["budget"]
    level = report.get("target_concurrency")
    best = chosen.at(level) if level else None
    same = baseline.at(level) if level else None
    sizes = ",".join(str(p["batch_size"]) for p in report["in_process"])
    lines = [
        f"Tuned by tfs-builder `tune` on {report['created']} for model {m['name']} version {m['version']}.",
        f"CPU: {mach['cpu_summary']}; load average {mach['load_avg_start'][0]} at start, "
        f"{mach['load_avg_end'][0]} at end; TensorFlow {mach['tensorflow']}.",
        f"Measured: in-process latency per batch size ({sizes}), then the local server under closed-loop "
        f"gRPC clients sending one row each ({','.join(map(str, report['concurrency']))} concurrent, "
        f"{report['seconds']:g} s per level) for {len(report['candidates'])} parameter sets and without batching.",
        f"Rule: highest requests/s with p99 <= {budget['p99_ms']:g} ms and no errors, at the highest "
        f"concurrency where any set met that "
        f"({'given with --p99_ms' if budget['source'] == 'given' else 'default budget: ' + budget['rule']}).",
        f"Chosen: {chosen.label}: " + (_fmt(best) if best else "no set met the budget; closest shown")
        + (f"; without batching: {_fmt(same)}." if same else "."),
    ]
    if not met_budget:
        lines.append("WARNING: no parameter set kept p99 within the budget at any concurrency level measured.")
    cold = report.get("unwarmed_allowed_sizes") or []
    if cold:
        lines.append(f"allowed_batch_sizes {cold} are not in the version's warmup records: their first batch is "
                     "slower; export with --batch_sizes including them to warm them.")
    lines += [f"Reproduce: {report['command']}",
              "Valid for this model version on this CPU only: re-run tune after re-exporting or moving hosts."]
    return lines


def batching_file_text(header_lines: list[str], opts: BatchingOptions) -> str:
    """Header comments + the parameters; parse-checked like every batching file this project writes."""
    from builder.config.companions import parse_batching_parameters

    wrapped: list[str] = []
    for line in header_lines:
        wrapped += _wrap(line, 98)
    text = "".join(f"# {w}\n" for w in wrapped) + options_text(opts)
    BatchingOptions.from_proto(parse_batching_parameters(text, BATCHING_FILE), BATCHING_FILE)
    return text


def _wrap(line: str, width: int) -> list[str]:
    out, cur = [], ""
    for word in line.split(" "):
        if cur and len(cur) + 1 + len(word) > width:
            out.append(cur)
            cur = "  " + word
        else:
            cur = f"{cur} {word}" if cur else word
    return out + ([cur] if cur else [])


def write_plot(path: str | os.PathLike, report: dict, shown: list[Candidate], baseline: Candidate,
               chosen: Candidate) -> Path:
    """Three panels: in-process images/s per batch size; requests/s and p99 against concurrency for
    the best few sets and for no batching (budget line on the p99 panel)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    pts = report["in_process"]
    ax = axes[0]
    ax.plot([p["batch_size"] for p in pts], [p["images_per_s"] for p in pts], "o-", color="tab:gray")
    _log2_axis(ax, [p["batch_size"] for p in pts])
    ax.set(title="in-process (no server)", xlabel="batch size", ylabel="images/s")
    for c in [baseline, *shown]:
        xs = [r.concurrency for r in c.results]
        style = dict(lw=2.6) if c is chosen else dict(lw=1.2)
        ls = "--" if c.options is None else "-"
        name = ("chosen: " if c is chosen else "") + c.label
        axes[1].plot(xs, [r.rps for r in c.results], ls, marker="o", label=name, **style)
        axes[2].plot(xs, [r.p99_ms for r in c.results], ls, marker="o", label=name, **style)
    axes[2].axhline(report["budget"]["p99_ms"], color="red", lw=1, ls=":", label="p99 budget")
    for ax, title, ylabel in ((axes[1], "throughput", "requests/s"), (axes[2], "tail latency", "p99 ms")):
        _log2_axis(ax, report["concurrency"])
        ax.set(title=title, xlabel="concurrent clients (one row each)", ylabel=ylabel)
        ax.grid(alpha=0.3)
    axes[2].set_yscale("log")
    axes[2].yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    axes[1].legend(fontsize=7, loc="upper left")
    axes[0].set_ylim(bottom=0)
    axes[1].set_ylim(bottom=0)
    m, mach = report["model"], report["machine"]
    fig.suptitle(f"{m['name']} v{m['version']} on {mach['cpu_summary']}\nload average {mach['load_avg_start'][0]} "
                 f"at start, {mach['load_avg_end'][0]} at end; {report['created']}; p99 budget "
                 f"{report['budget']['p99_ms']:g} ms", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".plot-", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
    return path


def _log2_axis(ax: Any, ticks: list[int]) -> None:
    import matplotlib.ticker

    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def replot(report_path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Redraw the plot of a saved tune_report.json (e.g. into docs/benchmarks/)."""
    import json

    from builder.tune.load import LoadResult

    report = json.loads(Path(report_path).read_text(encoding="utf-8"))

    def cand(d: dict, has_options: bool) -> Candidate:
        results = [LoadResult.from_dict({k: v for k, v in r.items() if k != "batching"}) for r in d["results"]]
        return Candidate(d["label"], BatchingOptions() if has_options else None, results)

    baseline = cand(report["baseline"], False)
    cands = [cand(c, True) for c in report["candidates"]]
    chosen = next(c for c in cands if c.label == report["chosen"]["label"])
    from builder.tune import plan

    shown = [chosen] + [c for c in plan.ranked(cands, report["budget"]["p99_ms"]) if c is not chosen]
    return write_plot(out, report, shown[:3], baseline, chosen)

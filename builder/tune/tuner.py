"""``python -m builder tune``: measured batching parameters for a latency budget.

Why: TF Serving ships no tool to choose ``max_batch_size``, ``batch_timeout_micros``,
``num_batch_threads``, ``max_enqueued_batches`` and ``allowed_batch_sizes``; guessed values either
waste the CPU (no merging) or blow the tail latency (huge padded batches). ``tune`` measures:

1. the model's latency per batch size in this process (``profile``);
2. the local server, which batches with TF Serving's semantics, under closed-loop concurrent gRPC
   clients on loopback, for a handful of parameter sets derived from (1) (``plan``) and without
   batching. One server is loaded once and its scheduler reconfigured between sets (what a restart
   with another file would do, minus the reload); the clients run in a child process so they do
   not share the server's GIL;
3. picks the set with the highest throughput whose p99 stays within the budget, and writes it
   with a header, plus a JSON report and a plot, into ``REPO/.tune/NAME/`` (hidden: neither
   ``config`` nor TF Serving take it for a model), where ``config`` finds it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from builder.config.companions import TUNE_DIR
from builder.core.errors import InputError, UnavailableError

DEFAULT_CONCURRENCY = (1, 4, 16, 64)
DEFAULT_SECONDS = 3.0
MAX_PROFILE_BATCH = 64
SHOWN_CANDIDATES = 3


def grpc_max_threads(concurrency: Iterable[int]) -> int:
    """``--grpc_max_threads`` for a local server driven by ``max(concurrency)`` closed-loop clients:
    each client must reach the batcher (a request waiting for a gRPC thread is invisible to the
    scheduler, so batches would be smaller than the load allows), plus a few for status calls."""
    from builder.serve.limits import Limits

    return max(Limits.grpc_max_threads, max(concurrency) + 8)


@contextlib.contextmanager
def server_pair(models_config: Path, concurrency: Iterable[int],
                batching_parameters_file: str | Path) -> Iterator[tuple[Any, Any]]:
    """Two local servers of the same models, started side by side: (no batching, batching with
    ``batching_parameters_file``). Warmup is off - measurements start on a primed server anyway,
    and the batching server must not count warmup batches in its statistics."""
    from builder.serve.local import LocalServer

    common: dict[str, Any] = {"file_system_poll_wait_seconds": 0, "enable_model_warmup": False,
                              "grpc_max_threads": grpc_max_threads(concurrency)}
    with LocalServer(models_config, **common) as plain, \
            LocalServer(models_config, enable_batching=True, batching_parameters_file=batching_parameters_file,
                        **common) as batched:
        yield plain, batched


class Progress:
    """Timestamped progress lines on the project's log channel (stderr; stdout stays for the
    final summary)."""

    def __init__(self, quiet: bool = False) -> None:
        from builder.core import log

        self.t0 = time.monotonic()
        self.quiet = quiet
        self._log = log.get(__name__)

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            self._log.info("[%6.1fs] %s", time.monotonic() - self.t0, msg)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.t0


@dataclass
class TuneRequest:
    repo: Path
    name: str
    version: int
    version_dir: Path
    concurrency: tuple[int, ...]
    seconds: float
    p99_ms: float | None
    out_dir: Path
    signature: str
    command: str
    profile_seconds: float = 8.0  # in-process interleaved rounds


def resolve(repo: str, name: str, version: Any = None, concurrency: Any = DEFAULT_CONCURRENCY,
            seconds: Any = DEFAULT_SECONDS, p99_ms: Any = None, out: str = "",
            signature: str = "serving_default") -> TuneRequest:
    """Flags -> a checked request; every mistake is one InputError naming the flag."""
    from builder.core import artifact
    from builder.core.layout import list_versions, parse_version, version_dir
    from builder.options import as_float, as_int_list

    if not repo or not name:
        raise InputError("--repo and --name are required: the model repository and the model to tune")
    model_dir = Path(repo) / str(name)
    versions = list_versions(model_dir)
    if not versions:
        raise InputError(f"{model_dir}: no numeric version directories: export the model first")
    v = parse_version(version)
    v = versions[-1] if v is None else v
    if v not in versions:
        raise InputError(f"--version {version}: not a version of {model_dir} (has {versions})")
    vdir = version_dir(repo, str(name), v)  # TF Serving's rule: 00000123 is version 123
    info = artifact.read_build_info(vdir) or {}
    if info.get("optimizer") == "tftrt":
        raise UnavailableError(f"{vdir}: a TF-TRT artefact runs on a GPU; tune measures on this CPU: "
                               "tune on the GPU host or tune the CPU export")
    levels = tuple(as_int_list(concurrency, "--concurrency")) or DEFAULT_CONCURRENCY
    secs = as_float(seconds, "--seconds", positive=True, example=3)
    budget = None if p99_ms in (None, "") else as_float(p99_ms, "--p99_ms", positive=True, example=250)
    out_dir = Path(out) if out else Path(repo) / TUNE_DIR / str(name)
    args = [f"--repo {repo}", f"--name {name}", f"--version {v}"]
    args += [f"--p99_ms {budget:g}"] if budget is not None else []
    args += [f"--concurrency {','.join(map(str, levels))}"] if levels != DEFAULT_CONCURRENCY else []
    args += [f"--seconds {secs:g}"] if secs != DEFAULT_SECONDS else []
    args += [f"--out {out}"] if out else []
    args += [f"--signature {signature}"] if signature and signature != "serving_default" else []
    return TuneRequest(Path(repo), str(name), v, vdir, levels, secs, budget, out_dir, signature or "serving_default",
                       "python -m builder tune " + " ".join(args))


def _models_config(req: TuneRequest, workdir: Path) -> Path:
    text = ("model_config_list { config { "
            f"name: {json.dumps(req.name)} base_path: {json.dumps(str(req.version_dir.parent.resolve()))} "
            'model_platform: "tensorflow" '
            f"model_version_policy {{ specific {{ versions: {req.version} }} }} }} }}\n")
    p = workdir / "models.config"
    p.write_text(text, encoding="utf-8")
    return p


def _measure(client: Any, server: Any, cand: Any, level: int, seconds: float, say: Callable,
             cpu: Any = None) -> Any:
    """One parameter set (or no batching) at one concurrency level; scheduler statistics and the
    server's CPU seconds (``cpu``: a ``system.CpuSampler`` of this process) kept."""
    batcher = getattr(server, "batcher", None) if cand.options is not None else None
    if batcher is not None:
        batcher.take_stats()
    r = client.measure(server.grpc_target, level, seconds)
    if cpu is not None and r.window:
        r.server_cpu_s = round(cpu.between(*r.window), 3)
    stats = batcher.take_stats().as_dict() if batcher is not None else {}
    cand.batch_stats[level] = stats
    cand.add([r])
    extra = f", mean batch {stats['mean_batch_size']:g}" if stats else ""
    errs = f", {r.error_count} errors {r.errors}" if r.error_count else ""
    per_cpu = f", {r.requests_per_cpu_s:g}/CPU-s" if r.requests_per_cpu_s else ""
    say(f"  {level:3d} clients {cand.label:<34} {r.rps:7.1f} requests/s  p50 {r.p50_ms:7.1f} ms  "
        f"p99 {r.p99_ms:7.1f} ms{extra}{per_cpu}{errs}  (load {r.load_avg[0] if r.load_avg else '?'})")
    return r


def run_servers(req: TuneRequest, request: bytes, cands: list, baseline: Any, budget: float,
                say: Callable) -> None:
    """Both servers loaded side by side; for each concurrency level, no batching and then every
    parameter set still within budget (the batching server's scheduler reconfigured in place), so
    a change in machine load hits them alike. A set whose p99 exceeds the budget at a level (other
    than the lowest) is not measured at higher ones - in a closed loop more clients only add
    latency - except that the best few get their whole curve measured at the end, for the plot."""
    from builder.tune import plan, system
    from builder.tune.load import LoadClient, prime
    from builder.tune.report import BATCHING_FILE, options_text

    levels = list(req.concurrency)
    with tempfile.TemporaryDirectory(prefix="tfs-tune-") as tmp:
        work = Path(tmp)
        cfg = _models_config(req, work)
        first = work / BATCHING_FILE
        first.write_text(options_text(cands[0].options), encoding="utf-8")
        say("loading the model into a server without batching and one with batching")
        with server_pair(cfg, levels, first) as (plain, batched), LoadClient(request, work) as client:
            for s in (plain, batched):
                s.wait_until_ready(300)
                prime(s.grpc_target, request)
            cpu = system.CpuSampler()
            active = list(cands)
            for level in levels:
                _measure(client, plain, baseline, level, req.seconds, say, cpu)
                for c in list(active):
                    batched.batcher.reconfigure(c.options)
                    r = _measure(client, batched, c, level, req.seconds, say, cpu)
                    if level != levels[0] and r.p99_ms > budget:
                        active.remove(c)
                        c.stopped_at = level
            for c in plan.ranked(cands, budget)[:SHOWN_CANDIDATES]:
                for level in (lv for lv in levels if c.at(lv) is None):
                    batched.batcher.reconfigure(c.options)
                    _measure(client, batched, c, level, req.seconds, say, cpu)
            cpu.stop()


def tune(req: TuneRequest, say: Progress) -> dict:
    """Measure, choose, write. Returns the report (also written as JSON)."""
    from builder.tune import plan, profile, system
    from builder.tune.plan import Candidate

    cpu, load_start = system.cpu_info(), system.load_average()
    say(f"tune {req.name} version {req.version} on {cpu.summary()}; load average {load_start[0]}")
    model = profile.load_model(req.version_dir, req.signature)
    try:
        request = model.request(req.name)
        say(f"in-process latency per batch size (interleaved rounds, {req.profile_seconds:g} s):")
        points = profile.profile(model, min(MAX_PROFILE_BATCH, max(max(req.concurrency), 2)),
                                 req.profile_seconds, on_point=lambda p: say(
                                     f"  batch {p.batch_size:3d}: {p.p50_ms:8.1f} ms  {p.images_per_s:7.1f} "
                                     f"images/s  ({p.runs} runs, load {p.load_avg[0]})"))
    finally:
        model.close()
    if req.p99_ms is not None:
        budget, source, rule = req.p99_ms, "given", "--p99_ms"
    else:
        (budget, rule), source = plan.default_budget(points), "default"
    say(f"p99 budget {budget:g} ms ({'given' if source == 'given' else 'default: ' + rule})")
    warm = profile.warmup_batch_sizes(req.version_dir)
    cands = plan.candidates(points, warm, max(req.concurrency), cpu.cores, budget)
    for c in cands:  # by construction; a set TF Serving would fail the load with must never be written
        problem = plan.warmup_problem(c.options, warm)
        if problem:
            raise AssertionError(f"{c.label}: {problem}")
    baseline = Candidate("no batching", None)
    say(f"{len(cands)} parameter sets + no batching; {','.join(map(str, req.concurrency))} clients, "
        f"{req.seconds:g} s each; a set is dropped at the first level where its p99 exceeds the budget")
    run_servers(req, request, cands, baseline, budget, say)
    chosen, met = plan.choose(cands, budget)
    report = build_report(req, cpu, load_start, points, budget, source, rule, warm, cands, baseline, chosen, met)
    level = plan.target_level(cands, budget)
    report["target_concurrency"] = level
    base_at, chosen_at = (baseline.at(level), chosen.at(level)) if level else (None, None)
    report["no_batching_better"] = bool(base_at and base_at.p99_ms <= budget and not base_at.error_count
                                        and (not chosen_at or base_at.rps > chosen_at.rps))
    write_outputs(req, report, cands, baseline, chosen, met)
    report["duration_s"] = round(say.elapsed, 1)
    _write_json(req.out_dir / "tune_report.json", report)
    return report


def build_report(req: TuneRequest, cpu: Any, load_start: tuple, points: list, budget: float, source: str,
                 rule: str, warm: list[int], cands: list, baseline: Any, chosen: Any, met: bool) -> dict:
    import tensorflow as tf

    from builder.tune import system
    from builder.tune.profile import knee

    inproc = {p.batch_size: p.images_per_s for p in points}
    inproc_cpu = {p.batch_size: p.images_per_cpu_s for p in points}
    chosen_exec = chosen.options.execution_limit
    comparison = []
    for r in chosen.results:
        base = baseline.at(r.concurrency)
        comparison.append({
            "concurrency": r.concurrency, "batching_rps": r.rps, "no_batching_rps": base.rps if base else None,
            "speedup": round(r.rps / base.rps, 2) if base and base.rps else None,
            "batching_p99_ms": r.p99_ms, "no_batching_p99_ms": base.p99_ms if base else None,
            "fraction_of_in_process": round(r.rps / inproc[chosen_exec], 3) if chosen_exec in inproc else None,
            "batching_requests_per_cpu_s": r.requests_per_cpu_s,
            "no_batching_requests_per_cpu_s": base.requests_per_cpu_s if base else None,
            "speedup_per_cpu_s": _ratio(r.requests_per_cpu_s, base.requests_per_cpu_s if base else None),
            "fraction_of_in_process_per_cpu_s": _ratio(r.requests_per_cpu_s, inproc_cpu.get(chosen_exec)),
        })
    return {
        "tool": "tfs-builder tune", "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": req.command,
        "model": {"repo": str(req.repo.resolve()), "name": req.name, "version": req.version,
                  "path": str(req.version_dir.resolve()), "signature": req.signature},
        "machine": {"cpu": cpu.as_dict(), "cpu_summary": cpu.summary(), "tensorflow": tf.__version__,
                    "load_avg_start": list(load_start), "load_avg_end": list(system.load_average())},
        "concurrency": list(req.concurrency), "seconds": req.seconds,
        "grpc_max_threads": grpc_max_threads(req.concurrency),
        "in_process": [p.as_dict() for p in points], "knee_batch_size": knee(points).batch_size,
        "budget": {"p99_ms": budget, "source": source, "rule": rule},
        "warmup_batch_sizes": warm,
        "unwarmed_allowed_sizes": [b for b in chosen.options.allowed_batch_sizes if warm and b not in warm],
        "baseline": _cand_dict(baseline, budget),
        "candidates": [_cand_dict(c, budget) for c in cands],
        "chosen": {"label": chosen.label, "met_budget": met, "execution_batch_size": chosen_exec,
                   "in_process_images_per_s_at_execution_size": inproc.get(chosen_exec)},
        "comparison": comparison,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _cand_dict(c: Any, budget: float) -> dict:
    from builder.tune.report import options_text

    best = c.best(budget)
    return {"label": c.label, "options": options_text(c.options) if c.options else None,
            "results": [{**r.as_dict(), "batching": c.batch_stats.get(r.concurrency) or None} for r in c.results],
            "stopped_over_budget_at": c.stopped_at,
            "best_within_budget": best.as_dict() if best else None}


def write_outputs(req: TuneRequest, report: dict, cands: list, baseline: Any, chosen: Any, met: bool) -> None:
    """batching_parameters.txt, the plot (the JSON follows in ``tune``), each written atomically."""
    from builder.core.layout import atomic_write_text
    from builder.tune import plan
    from builder.tune import report as rep

    req.out_dir.mkdir(parents=True, exist_ok=True)
    text = rep.batching_file_text(rep.header(report, chosen, baseline, met), chosen.options)
    shown = [chosen] + [c for c in plan.ranked(cands, report["budget"]["p99_ms"]) if c is not chosen]
    shown = shown[:SHOWN_CANDIDATES]
    plot = rep.write_plot(req.out_dir / rep.PLOT_FILE, report, shown, baseline, chosen)
    atomic_write_text(req.out_dir / rep.BATCHING_FILE, text)
    report["files"] = {"batching_parameters": str(req.out_dir / rep.BATCHING_FILE),
                       "report": str(req.out_dir / rep.REPORT_FILE), "plot": str(plot)}


def _write_json(path: Path, data: dict) -> None:
    from builder.core.layout import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def summary_lines(report: dict) -> list[str]:
    """The table printed at the end (stdout)."""
    mach = report["machine"]
    lines = [f"{report['model']['name']} version {report['model']['version']} on {mach['cpu_summary']}; "
             f"load average {mach['load_avg_start'][0]} at start, {mach['load_avg_end'][0]} at end",
             f"p99 budget {report['budget']['p99_ms']:g} ms; chosen: {report['chosen']['label']}"
             + (f" (compared at {report['target_concurrency']} clients, the most that met the budget)"
                if report["chosen"]["met_budget"] else " (NO set met the budget)")]
    lines.append(f"{'clients':>7} {'batching req/s':>15} {'p99 ms':>8} {'no batching req/s':>18} {'p99 ms':>8} "
                 f"{'speedup':>7} {'of in-process':>13} {'speedup per CPU-s':>17}")

    def pct(v: float | None) -> str:
        return f"{v:.0%}" if v is not None else "-"

    for c in report["comparison"]:
        per_cpu = f"{c['speedup_per_cpu_s']:g}" if c.get("speedup_per_cpu_s") is not None else "-"
        lines.append(f"{c['concurrency']:>7} {c['batching_rps']:>15g} {c['batching_p99_ms']:>8g} "
                     f"{c['no_batching_rps'] or 0:>18g} {c['no_batching_p99_ms'] or 0:>8g} "
                     f"{c['speedup'] or 0:>7g} {pct(c['fraction_of_in_process']):>13} {per_cpu:>17}")
    for k, v in report["files"].items():
        lines.append(f"wrote {v}" + ("" if k != "batching_parameters" else
                                      " (`python -m builder config` uses it; or pass it to "
                                      "--batching_parameters_file with --enable_batching)"))
    if "grpc_max_threads" in report:
        lines.append(f"measured with --grpc_max_threads {report['grpc_max_threads']} (`python -m builder serve` "
                     f"needs at least one gRPC thread per concurrent client to batch them)")
    lines.append(f"tune took {report['duration_s']:g} s")
    return lines


def tune_command(repo: str = "", name: str = "", version: Any = None, p99_ms: Any = None,
                 concurrency: Any = ",".join(map(str, DEFAULT_CONCURRENCY)), seconds: float = DEFAULT_SECONDS,
                 out: str = "", signature: str = "serving_default", quiet: bool = False) -> None:
    """Measure batching parameters for a latency budget and write batching_parameters.txt.

    Measures the model's latency per batch size in-process, then the local server (which batches
    as tensorflow_model_server --enable_batching does) under closed-loop concurrent gRPC clients on
    loopback for a few parameter sets and without batching; writes the set with the highest
    requests/s whose p99 stays within the budget, with a header naming the CPU, what was measured
    and this command, plus tune_report.json and tune_plot.png. `config` then uses the file.

    Example: python -m builder tune --repo model_repo --name facenet

    Args:
      repo: Model repository (REPO/NAME/VERSION).
      name: Model to tune.
      version: Version to measure (default: the latest).
      p99_ms: p99 latency budget in milliseconds. Default: 4 x the in-process latency of the knee
        batch size (the smallest batch reaching 90% of the best images/s) - a batched request waits
        for the batch in flight and its own, with as much again for queueing variance.
      concurrency: Comma list of concurrent clients (each sends one row, closed loop).
      seconds: Measuring time per concurrency level and parameter set (after 0.5 s of warm-up).
      out: Output directory (default REPO/.tune/NAME, where `config` looks for it).
      signature: Signature to send requests to.
      quiet: No progress lines.
    """
    req = resolve(repo, name, version, concurrency, seconds, p99_ms, out, signature)
    report = tune(req, Progress(quiet))
    for line in summary_lines(report):
        print(line)
    from builder.core import log

    if not report["chosen"]["met_budget"]:
        log.get(__name__).warning("warning: no parameter set met the p99 budget; the file holds the closest "
                                  "one (raise --p99_ms or lower --concurrency)")
    if report["no_batching_better"]:
        log.get(__name__).warning("note: without batching the server served more requests/s within the budget "
                                  "than any batching set measured: for this model and load, consider leaving "
                                  "--enable_batching off")


def tuned_dir(repo: str | Path, name: str) -> Path:
    return Path(repo) / TUNE_DIR / name


def copy_plot(report: dict, dest: str | Path) -> Path:
    """Copy the plot (e.g. into docs/benchmarks/) and return the new path."""
    d = Path(dest)
    d.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(report["files"]["plot"], d)
    return d

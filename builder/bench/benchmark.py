"""``python -m builder benchmark``: the tutorial's headline table, for any model, measured honestly.

WHY: the FaceNet TF-TRT tutorial sells its result as one table (checkpoint flow vs frozen graph
vs TF-TRT, batch 100, "1.125x, no accuracy loss"). Users want that table for their own model
before they ship it, and they want it to hold up: the speedup and the "no accuracy loss" must be
measured in the same run, on the same inputs, under the same conditions.

Candidates (any number, compared side by side in one run; the first is the reference):

- source models in any input flow, run the way the tutorial ran them: a session on the restored
  checkpoint or on the imported frozen graph, a loaded SavedModel, a Keras call
  (``builder.load.loaders``; the loader flags ``--inputs/--outputs/--feed/...`` apply to them);
- exported versions ``REPO/NAME/VERSION`` (or ``REPO/NAME`` = its latest version), loaded with
  the TF1 SavedModel loader TF Serving uses, in their own ``tf.Session``;
- running servers: gRPC (official ``tensorflow.serving.PredictionService`` stubs) or REST, with
  ``--concurrency`` client threads.

Every in-process candidate runs by ``Session.run`` with a ``feed_dict`` of numpy arrays (the
tutorial's way); server requests are built once per batch size (client-side encoding is not
timed, the round trip and decoding of the answer are).

Statistics: for each batch size, every candidate gets ``--warmup`` untimed runs, then
``--repeats`` repeats of ``--runs`` timed runs (or of ``--seconds`` each). Repeats are
interleaved round-robin across candidates (with a rotating start), so background load on a
shared machine hits all candidates alike. Reported: p50/p90/p99 latency over all timed
runs, min/median/max of per-repeat throughput, speedup vs the first candidate (median throughput
ratio), the accuracy delta against the first candidate on the same inputs (max abs diff, min
cosine), and for in-process candidates the fraction of the machine's FP32 matrix-multiply
throughput reached (model FLOPs from TensorFlow's profiler, GEMM measured in the same run).

Server candidates whose signature is a classifier or regressor are called through Classify /
Regress (what their clients use), with tf.Examples synthesised from an in-process candidate's
ParseExample specs or read from ``--samples``.

``--concurrent_clients 1,4,16`` is a second mode (``concurrent``): one exported version through
local servers with and without server-side batching, under N closed-loop one-row clients.

Modules: ``candidates`` (specs and settings), ``runners`` (loaded candidates; the TF Serving
client is ``builder.serve.client``), ``measure`` (timing, statistics, the machine), ``report``
(Markdown, PNG, JSON), ``concurrent`` (the concurrent-clients mode); this one runs the benchmark
in named steps and is the ``benchmark`` command.
"""

from __future__ import annotations

import datetime as _dt
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from builder.bench.candidates import BenchOptions, parse_candidates, validate
from builder.bench.measure import (
    LoadMeter,
    accuracy,
    graph_flops,
    machine_info,
    measure_gemm,
    percentile,
    summarize,
    timed_repeat,
)
from builder.bench.report import flops_text, output_names, render_markdown, write_outputs
from builder.bench.runners import Runner, open_runner
from builder.core import log
from builder.core.errors import InputError
from builder.options import LoaderFlags, as_bool, as_float, as_int, as_int_list, as_list

_LOG = log.get(__name__)


def _say(o: BenchOptions, text: str) -> None:
    """Progress on the log channel (stderr), unless ``quiet``."""
    if not o.quiet:
        _LOG.info(text)


# --------------------------------------------------------------------------- steps


def _load_runners(o: BenchOptions, runners: list[Runner]) -> None:
    """Open every candidate into ``runners`` (the caller closes whatever got opened)."""
    for c in o.candidates:
        t = time.perf_counter()
        _say(o, f"loading {c.label} ({c.kind}: {c.target}"
                f"{f' model {c.model_name}' if c.model_name else ''}) ...")
        runners.append(open_runner(c, o))
        _say(o, f"  loaded {c.label} in {time.perf_counter() - t:.1f}s")


def _check_signatures(runners: list[Runner], samples: dict[str, np.ndarray]) -> list[str]:
    """Every candidate must take the same inputs (by alias) and share at least one output."""
    want = set(samples)
    for r in runners:
        if r.inputs is None:
            continue
        have = {t.alias for t in r.inputs}
        if have != want:
            raise InputError(
                f"candidate {r.spec.label!r} takes inputs {sorted(have)} but the benchmark feeds "
                f"{sorted(want)}: align the names with --input_alias (e.g. --input_alias "
                f"input={sorted(want)[0]}) or use --samples keyed by {sorted(have)}")
    common = [a for a in runners[0].output_aliases if all(a in r.output_aliases for r in runners)]
    if not common:
        raise InputError(
            "the candidates share no output name ("
            + "; ".join(f"{r.spec.label}: {', '.join(r.output_aliases)}" for r in runners)
            + "): align them with --output_alias")
    return common


def _make_samples(runners: list[Runner], o: BenchOptions) -> dict[str, np.ndarray]:
    """``--samples``, else inputs synthesised from a signature - from an in-process candidate's
    when one has string inputs, so serialized tf.Examples match the graph's ParseExample specs
    (a classify/regress signature gets examples its server parses)."""
    from builder.export import parity

    ref = next((r for r in runners if r.inputs), None)
    if ref is None or ref.inputs is None:
        raise InputError("no candidate tells its input signature: pass --samples FILE.npz")
    if o.samples:
        return parity.load_samples(o.samples, ref.inputs, o.signature)
    graph = next((r for r in runners if r.graph_def is not None and r.inputs
                  and any(t.dtype == "string" for t in r.inputs)), None)
    if graph is None or graph.inputs is None:
        return parity.generate_samples(ref.inputs, max(o.batch_sizes), o.seed)
    from types import SimpleNamespace

    from builder.core.model import Signature
    from builder.export import samples

    sig = Signature(o.signature, "", list(graph.inputs), [])
    where = Path(graph.spec.target) if graph.spec.kind == "export" else None
    hints = samples.graph_hints(SimpleNamespace(graph_def=graph.graph_def), {o.signature: sig}, where)
    return parity.generate_samples(graph.inputs, max(o.batch_sizes), o.seed, hints)


def _gemm(o: BenchOptions, runners: list[Runner]) -> dict[str, Any] | None:
    """The machine's FP32 GEMM throughput, when an in-process candidate needs the comparison."""
    if not (o.gemm_size and any(r.spec.in_process for r in runners)):
        return None
    _say(o, f"measuring FP32 GEMM throughput ({o.gemm_size}x{o.gemm_size} tf.matmul) ...")
    gemm = measure_gemm(o.gemm_size)
    _say(o, f"  {gemm['gflops']['max']:.1f} GFLOP/s (best)")
    return gemm


def _count_flops(o: BenchOptions, runners: list[Runner], samples: dict[str, np.ndarray]
                 ) -> dict[str, float | None]:
    flops: dict[str, float | None] = {}
    if not o.flops:
        return flops
    for r in runners:
        if r.graph_def is not None and r.flops_inputs:
            _say(o, f"counting FLOPs of {r.spec.label} (TensorFlow profiler) ...")
            f = graph_flops(r.graph_def, r.flops_inputs, samples)
            flops[r.spec.label] = f
            _say(o, f"  {flops_text(f)} per item" if f else "  not countable")
    return flops


@dataclass
class _Batch:
    """One batch size's raw measurements, per candidate label."""

    size: int
    outputs: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    latencies: dict[str, list[list[float]]] = field(default_factory=dict)
    throughputs: dict[str, list[float]] = field(default_factory=dict)


def _measure_batch(o: BenchOptions, runners: list[Runner], samples: dict[str, np.ndarray],
                   b: int) -> _Batch:
    """Warm up every candidate (keeping its first outputs for the accuracy delta), then the
    timed repeats, interleaved round-robin with a rotating start."""
    from builder.export.pipeline import batch_of

    batch = batch_of(samples, b)
    prepared = [r.prepare(batch) for r in runners]
    m = _Batch(b, latencies={r.spec.label: [] for r in runners},
               throughputs={r.spec.label: [] for r in runners})
    for r, p in zip(runners, prepared):
        _say(o, f"[batch {b}] warm-up {r.spec.label} ({max(o.warmup, 1)} run(s)) ...")
        for i in range(max(o.warmup, 1)):
            out = r.run(p)
            if i == 0:
                m.outputs[r.spec.label] = out
    n = len(runners)
    for rep in range(o.repeats):
        for k in range(n):
            i = (rep + k) % n
            r = runners[i]
            ls, tp = timed_repeat(r, prepared[i], o.timed_runs(), o.seconds, b)
            m.latencies[r.spec.label].append(ls)
            m.throughputs[r.spec.label].append(tp)
            _say(o, f"[batch {b}] repeat {rep + 1}/{o.repeats} {r.spec.label}: "
                    f"{len(ls)} runs, p50 {percentile(ls, 50) * 1e3:.1f} ms, {tp:.1f} items/s")
    return m


def _rows(o: BenchOptions, runners: list[Runner], m: _Batch, common: list[str],
          flops: dict[str, float | None], gemm: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Result rows of one batch size: statistics, accuracy, speedup and latency ratio against
    the first candidate, FLOP rate and fraction of the GEMM peak (in-process candidates)."""
    ref_label = runners[0].spec.label
    rows = []
    for r in runners:
        label = r.spec.label
        row: dict[str, Any] = {"candidate": label, "kind": r.spec.kind, "batch_size": m.size,
                               "repeats": o.repeats, "concurrency": r.concurrency}
        row.update(summarize(m.latencies[label], m.throughputs[label]))
        row["accuracy"] = accuracy(m.outputs[ref_label], m.outputs[label], common)
        rows.append(row)
    ref_row = rows[0]
    ref_flops = next((f for f in flops.values() if f), None)
    for r, row in zip(runners, rows):
        row["speedup"] = row["throughput"]["median"] / ref_row["throughput"]["median"]
        row["latency_ratio"] = row["latency_ms"]["p50"] / ref_row["latency_ms"]["p50"]
        own = flops.get(row["candidate"])
        f = own or (ref_flops if r.spec.in_process else None)
        row["flops_per_item"] = f
        row["flops_from"] = (row["candidate"] if own else
                             next((k for k, v in flops.items() if v), None) if f else None)
        if f and r.spec.in_process:
            row["gflops_per_s"] = f * row["throughput"]["median"] / 1e9
            row["gemm_fraction"] = row["gflops_per_s"] / gemm["gflops"]["max"] if gemm else None
        else:
            row["gflops_per_s"] = None
            row["gemm_fraction"] = None
    return rows


def _gemm_again(o: BenchOptions, gemm: dict[str, Any] | None,
                results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """GEMM once more after the runs; fractions use the better of the two (a busy neighbour
    during the first measurement must not inflate them)."""
    if not gemm:
        return gemm
    _say(o, "measuring FP32 GEMM throughput again (after the runs) ...")
    after = measure_gemm(o.gemm_size)
    gemm = {**gemm, "after": after["gflops"],
            "best": max(gemm["gflops"]["max"], after["gflops"]["max"])}
    for row in results:
        if row.get("gflops_per_s"):
            row["gemm_fraction"] = row["gflops_per_s"] / gemm["best"]
    return gemm


def _document(o: BenchOptions, runners: list[Runner], started: str, meter: LoadMeter,
              common: list[str], flops: dict[str, float | None], gemm: dict[str, Any] | None,
              results: list[dict[str, Any]]) -> dict[str, Any]:
    candidates = [{**r.spec.as_json(), **r.details, "flops_per_item": flops.get(r.spec.label),
                   "inputs": {t.alias: t.as_json() for t in (r.inputs or [])},
                   "outputs": r.output_aliases} for r in runners]
    return {
        "tool": "tfs-builder benchmark",
        "created": started,
        "command": _command_line(),
        "machine": machine_info(),
        "load": meter.finish(),
        "settings": {
            "batch_sizes": o.batch_sizes, "warmup": max(o.warmup, 1), "repeats": o.repeats,
            "runs": o.timed_runs(), "seconds": o.seconds, "concurrency": o.concurrency,
            "samples": o.samples or f"generated from the signature (seed {o.seed})",
            "signature": o.signature, "interleaving": "round-robin per repeat, rotating start",
            "compared_outputs": common,
        },
        "gemm": gemm,
        "reference": runners[0].spec.label,
        "candidates": candidates,
        "results": results,
    }


def run_benchmark(o: BenchOptions) -> dict[str, Any]:
    """Load every candidate, measure, and return the results document (see ``write_outputs``)."""
    validate(o)
    meter = LoadMeter(tuple(o.server_pids))
    started = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    runners: list[Runner] = []
    try:
        _load_runners(o, runners)
        samples = _make_samples(runners, o)
        common = _check_signatures(runners, samples)
        gemm = _gemm(o, runners)
        flops = _count_flops(o, runners, samples)
        results: list[dict[str, Any]] = []
        for b in o.batch_sizes:
            results += _rows(o, runners, _measure_batch(o, runners, samples, b), common, flops, gemm)
        gemm = _gemm_again(o, gemm, results)
        return _document(o, runners, started, meter, common, flops, gemm, results)
    finally:
        for r in runners:
            try:
                r.close()
            except Exception:  # noqa: BLE001 - closing must not hide the real error
                pass


def _concurrent_mode(o: BenchOptions) -> None:
    """``--concurrent_clients``: print the table, write JSON + Markdown into ``--out``."""
    from builder.bench import concurrent

    doc = concurrent.run(o, lambda text: _say(o, text), _command_line())
    print(concurrent.render_markdown(doc), end="")
    if o.out:
        for p in concurrent.write_outputs(doc, o.out, o.basename):
            print(f"wrote {p}")


def _command_line() -> str:
    argv = sys.argv
    if argv and argv[0].endswith("__main__.py"):
        return shlex.join(["python", "-m", "builder", *argv[1:]])
    return shlex.join(argv)


# --------------------------------------------------------------------------- CLI


def benchmark_command(
    *positional: str,
    candidates: Any = None,
    grpc: Any = None,
    rest: Any = None,
    model_name: str | None = None,
    model_version: int | None = None,
    concurrency: int = 1,
    batch_sizes: Any = "1,8,100",
    warmup: int = 2,
    repeats: int = 3,
    runs: int | None = None,
    seconds: float | None = None,
    samples: str | None = None,
    seed: int = 0,
    signature: str = "serving_default",
    inputs: Any = None,
    outputs: Any = None,
    feed: Any = None,
    input_alias: Any = None,
    output_alias: Any = None,
    input_shapes: Any = None,
    tags: Any = "serve",
    gemm_size: int = 2048,
    flops: bool = True,
    timeout: float = 300.0,
    out: str | None = None,
    basename: str | None = None,
    server_pids: Any = None,
    concurrent_clients: Any = None,
    batching_parameters_file: str | None = None,
) -> None:
    """Benchmark candidates side by side: latency, throughput, speedup and accuracy delta vs the
    first candidate, per batch size; writes JSON, a Markdown table and a PNG plot.

    Example: python -m builder benchmark
             --candidates checkpoint=example_model/checkpoint,export=model_repo/facenet/1
             --grpc 127.0.0.1:8500 --model_name facenet --batch_sizes 1,8,100
             --inputs input --outputs embeddings --feed phase_train=false
             --input_alias input=images --input_shapes input=?x160x160x3 --out bench_out

    Candidates are LABEL=TARGET (LABEL= optional); the first one is the reference:
      checkpoint=example_model/checkpoint   a source model in any flow, detected from the path
                                            (checkpoint dir/.meta, frozen .pb, SavedModel, .keras)
      export=model_repo/facenet/1           an exported version (REPO/NAME means its latest)
      grpc=127.0.0.1:8500/facenet           a gRPC server, HOST:PORT[/NAME[/VERSION]]
      rest=http://127.0.0.1:8501/v1/models/facenet   a REST server (or http://HOST:PORT)
      src=savedmodel:model_repo/facenet/1   KIND:TARGET forces the kind (checkpoint, frozen,
                                            savedmodel, keras, export, grpc, rest)

    Args:
      positional: Candidates as positional arguments (same syntax as --candidates).
      candidates: Comma-separated candidates (syntax above). Pass the list once (fire keeps
        only the last of repeated flags), or give candidates as positional arguments.
      grpc: Shortcut for a gRPC candidate labelled 'grpc': HOST:PORT[/NAME[/VERSION]].
      rest: Shortcut for a REST candidate labelled 'rest': http://HOST:PORT[/v1/models/NAME].
      model_name: Model name for server candidates that do not name one (default: the name in
        the first export candidate's build_info.json).
      model_version: Version for server candidates that do not name one (default: latest).
      concurrency: Client threads per server candidate (in-process candidates run one at a
        time), each sending the batch-size requests of the table. Default 1. (Many one-row
        clients against a server with and without batching: --concurrent_clients.)
      batch_sizes: Batch sizes, e.g. 1,8,100.
      warmup: Untimed runs per candidate and batch size before timing (at least 1 is always run,
        untimed, to capture outputs for the accuracy delta). Default 2.
      repeats: Repeats per candidate and batch size, interleaved round-robin. Default 3.
      runs: Timed runs per repeat (default 10 unless --seconds is given; with both, whichever
        ends first).
      seconds: Time budget per repeat in seconds (at least one run).
      samples: .npz of inputs keyed by input alias (e.g. a version's assets.extra/golden.npz);
        rows are cycled to fill each batch. Default is generated from the signature (--seed).
      seed: Seed for generated inputs. Default 0.
      signature: Signature of exported versions/servers (and SavedModel sources). Default
        serving_default.
      inputs: Source-flow candidates: input tensors/nodes (as for export), e.g. input.
      outputs: Source-flow candidates: output tensors/nodes, e.g. embeddings.
      feed: Source-flow candidates: fixed placeholder values, e.g. phase_train=false.
      input_alias: Source-flow candidates: input names as exported, e.g. input=images.
      output_alias: Source-flow candidates: output names as exported.
      input_shapes: Source-flow candidates: shapes for cut inputs, e.g. input=?x160x160x3.
      tags: SavedModel tags. Default serve.
      gemm_size: Side of the FP32 tf.matmul measured for the '% of GEMM peak' column
        (default 2048; 0 skips it).
      flops: Count model FLOPs with TensorFlow's profiler (default on; --noflops skips it).
      timeout: Seconds per server request before it counts as failed. Default 300.
      out: Directory for results.json, results.md and latency_throughput.png.
      basename: Name the outputs BASENAME.json/.md/.png instead.
      server_pids: Process ids of local servers under test (comma separated); their CPU time
        is reported as the servers', not as background load from other processes.
      concurrent_clients: The concurrent-clients mode instead of the batch-size table: comma list
        of client counts, e.g. 1,4,16. Takes one exported version (REPO/NAME[/VERSION]), serves it
        from two local servers side by side - without batching and with
        --batching_parameters_file - and drives both with that many closed-loop gRPC clients
        sending one row each; the model alone in-process at the file's batch size is the ceiling.
        --seconds (default 5) is the time per level and server, --repeats the rounds. Writes
        concurrent_clients.json/.md (or BASENAME.*) into --out.
      batching_parameters_file: With --concurrent_clients: the batching file to compare (default:
        the one `python -m builder tune` wrote, REPO/.tune/NAME/batching_parameters.txt).
    """
    specs = [*as_list(list(positional), "candidates"), *as_list(candidates, "--candidates")]
    mv = None if model_version is None else as_int(model_version, "--model_version", minimum=1)
    o = BenchOptions(
        candidates=parse_candidates(specs, as_list(grpc, "--grpc"), as_list(rest, "--rest"),
                                    str(model_name) if model_name else None, mv),
        batch_sizes=as_int_list(batch_sizes, "--batch_sizes"),
        warmup=as_int(warmup, "--warmup"),
        repeats=as_int(repeats, "--repeats"),
        runs=None if runs is None else as_int(runs, "--runs"),
        seconds=None if seconds is None else as_float(seconds, "--seconds"),
        concurrency=as_int(concurrency, "--concurrency"),
        samples=str(samples) if samples else None,
        seed=as_int(seed, "--seed"),
        signature=str(signature),
        loader=LoaderFlags.from_cli(inputs=inputs, outputs=outputs, feed=feed, input_alias=input_alias,
                                    output_alias=output_alias, input_shapes=input_shapes, tags=tags),
        gemm_size=as_int(gemm_size, "--gemm_size"),
        flops=as_bool(flops, "--flops"),
        timeout=as_float(timeout, "--timeout"),
        out=str(out) if out else None,
        basename=str(basename) if basename else None,
        server_pids=as_int_list(server_pids, "--server_pids"),
        concurrent_clients=as_int_list(concurrent_clients, "--concurrent_clients"),
        batching_parameters_file=str(batching_parameters_file) if batching_parameters_file else None,
    )
    validate(o)
    if o.concurrent_clients:
        _concurrent_mode(o)
        return
    doc = run_benchmark(o)
    _jname, _mname, pname = output_names(o.basename)
    print(render_markdown(doc, pname if o.out else None))
    if o.out:
        for p in write_outputs(doc, o.out, o.basename):
            print(f"wrote {p}")

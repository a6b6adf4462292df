"""``python -m builder export``: any input flow -> a validated, versioned, servable SavedModel.

The pipeline reads top to bottom, one named step each (``export``):

1. ``stage``: the flow writes a servable SavedModel into a staging directory (the source kept
   as it is, or rebuilt by surgery with live variables);
2. ``check_unsafe``: no file/Python ops where serving can reach them;
3. ``freeze_and_optimize``: freeze only when an optimiser needs it, ``--freeze`` asks, or the
   graph holds nothing freezing would lose (the decision goes into build_info);
4. ``plan_samples`` + ``run_source``: inputs for every kept signature, outputs of the source;
   the source is closed right after (big models need the RAM for the export's own load);
5. ``write_extras``: warmup records (the right request type per signature) and golden outputs;
6. ``check_parity``: every signature of the export, loaded as TF Serving loads it, against
   the source;
7. ``write_build_info`` + ``promote``: rename into ``REPO/NAME/VERSION``.

The staging name is non-numeric, so a TF Serving polling the repository never sees a partial
version; on any error or Ctrl-C/SIGTERM the staging directory (and any directory the export
created) is removed, and one left by a SIGKILL is swept by the next export.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import shutil
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from builder import __version__
from builder.config import compat
from builder.core import artifact, layout
from builder.core.errors import GraphError, InputError
from builder.core.model import GraphFacts, StagedModel, graph_facts, unsafe_nodes
from builder.export import parity, promote, warmup
from builder.export import samples as sample_inputs
from builder.export.request import DEFAULT_BATCH_SIZES, ExportOptions, reproduce_command, validate_options
from builder.load.detect import detect_flow
from builder.load.graphs import first_line, tf_run_errors
from builder.options import (
    LoaderFlags,
    as_bool,
    as_bool_or_auto,
    as_float,
    as_int,
    as_int_list,
    as_optional_str,
    with_loader_flags,
)

__all__ = ["DEFAULT_BATCH_SIZES", "ExportOptions", "ExportResult", "export", "export_command", "batch_of",
           "sha256_file", "validate_options", "reproduce_command"]

batch_of = sample_inputs.batch_of  # the benchmark cycles samples into batches with it


@dataclass
class ExportResult:
    path: Path
    version: int
    build_info: dict[str, Any]


class Progress:
    """Step lines on stderr, so long exports show where they are."""

    def __init__(self, total: int, quiet: bool = False):
        self.total, self.n, self.quiet = total, 0, quiet
        self.seconds: dict[str, float] = {}  # step name -> wall seconds, for build_info

    @contextmanager
    def step(self, text: str, name: str = ""):
        self.n += 1
        start = time.perf_counter()
        if not self.quiet:
            print(f"[{self.n}/{self.total}] {text} ...", file=sys.stderr, flush=True)
        yield
        took = time.perf_counter() - start
        self.seconds[name or text.split()[0]] = round(took, 3)
        if not self.quiet:
            print(f"      done in {took:.1f}s", file=sys.stderr, flush=True)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Run:
    """The state one export carries from step to step."""

    o: ExportOptions
    flow: str
    progress: Progress
    staging: promote.Staging
    t0: float = field(default_factory=time.perf_counter)
    staged: StagedModel | None = None
    facts: GraphFacts | None = None
    freeze: Any = None
    opt_info: dict[str, Any] = field(default_factory=dict)
    trt_info: dict[str, Any] | None = None
    plan: sample_inputs.SamplePlan | None = None
    expected: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    expected2: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    second_notes: dict[str, str] = field(default_factory=dict)
    reports: dict[str, parity.ParityReport] = field(default_factory=dict)
    n_warm: int = 0

    @property
    def out(self) -> Path:
        assert self.staging.dir is not None
        return self.staging.dir / "model"

    @property
    def checked(self) -> dict[str, Any]:
        """Signatures parity can run (sparse/composite entries cannot be fed by name)."""
        from builder.load.signatures import dense_only

        assert self.staged is not None
        return {k: s for k, s in self.staged.signatures.items() if dense_only(s)}


# --------------------------------------------------------------------------- the pipeline


def export(o: ExportOptions, quiet: bool = False) -> ExportResult:
    """Run the whole pipeline; raises BuilderError subclasses for user mistakes."""
    validate_options(o)
    flow = o.flow or detect_flow(o.model)
    repo = Path(o.repo)
    steps = 5 + (o.optimize == "tftrt") + (o.precision == "bf16" and not o.bake)  # bf16 hook: +1 step
    run = Run(o, flow, Progress(steps, quiet),
              promote.Staging(repo, repo / o.name))
    with _sigterm_as_interrupt():
        try:
            stage(run)
            check_unsafe(run)
            freeze_and_optimize(run)
            plan_samples(run)
            run_source(run)
            write_extras(run)
            _test_pause("before_parity")
            check_parity(run)
            info = write_build_info(run)
            _test_pause("before_promote")
            return promote_version(run, info)
        finally:
            if run.staged is not None:
                run.staged.close()
            run.staging.cleanup()


def stage(run: Run) -> None:
    from builder.load import load
    from builder.load.savedmodel import read_saved_model

    o = run.o
    req = o.load_request(run.flow)
    with run.progress.step(f"loading {run.flow} model {o.model}", "stage"):
        run.staging.open()
        with promote.mapped_os_errors(run.staging.model_dir, repo=run.staging.repo):
            run.staged = load(req, run.out)
    mg = read_saved_model(run.out).meta_graphs[0]
    run.facts = graph_facts(mg, run.out / "variables")


def check_unsafe(run: Run) -> None:
    from builder.load.savedmodel import read_saved_model

    bad = unsafe_nodes(read_saved_model(run.out).meta_graphs[0], compat.UNSAFE_OPS)
    if bad and not run.o.allow_unsafe_ops:
        listed = ", ".join(f"{n} ({op})" for n, op in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise GraphError(
            f"the exported graph still contains ops that touch files or run Python: {listed}; "
            "this usually means the input pipeline was not cut away: pass --inputs at the tensor "
            "the model consumes (e.g. --inputs input), or --allow_unsafe_ops if intended")


def freeze_and_optimize(run: Run) -> None:
    from builder.load import freeze

    o, staged = run.o, run.staged
    assert staged is not None and run.facts is not None
    wanted = True if o.bake and o.freeze is None else o.freeze  # bf16 hook (issue 12): --bake freezes
    run.freeze = freeze.decide(staged, run.facts, wanted, o.optimize)
    with run.progress.step(f"freezing: {'yes' if run.freeze.frozen else 'no'} ({run.freeze.reason}); "
                           f"optimizing ({o.optimize}, {o.precision})", "freeze_and_optimize"):
        if not run.freeze.frozen:
            run.opt_info = {"optimizer": "none", "precision": o.precision, "passes": []}
            return
        try:
            gd = freeze.frozen_graph_def(staged) if run.facts.variables else _staged_graph_def(run)
        except GraphError as e:
            if run.freeze.decided_by != "auto":
                raise
            run.freeze = freeze.FreezeDecision(False, f"freezing failed, kept unfrozen ({e})", "auto")
            run.opt_info = {"optimizer": "none", "precision": o.precision, "passes": []}
            return
        if o.optimize in ("cpu", "tftrt") or o.bake:  # bf16 hook (issue 12): --bake rewrites too
            _optimize(run, gd)
            return
        with promote.mapped_os_errors(run.out):
            freeze.write_frozen(run.out, gd, staged.signatures, staged.tags)
        run.opt_info = {"optimizer": "none", "precision": o.precision, "passes": [],
                        "nodes_after": len(gd.node)}


def _staged_graph_def(run: Run) -> Any:
    from builder.load.savedmodel import read_saved_model

    return read_saved_model(run.out).meta_graphs[0].graph_def


def _optimize(run: Run, gd: Any) -> None:
    from builder.load import freeze
    from builder.optimize import cpu as _opt

    o, staged = run.o, run.staged
    assert staged is not None
    if len(staged.signatures) != 1:
        raise InputError(f"--optimize {o.optimize} rewrites one signature and this model keeps "
                         f"{len(staged.signatures)} ({', '.join(staged.signatures)}): pass --signature KEY")
    key = next(iter(staged.signatures))
    model = freeze.normalized(staged, gd, key)
    tftrt = o.optimize == "tftrt"
    optimized, run.opt_info = _opt.optimize_graph(model, "none" if tftrt else o.optimize, o.precision,
                                                  bake=o.bake, measure_batch=max(o.batch_sizes))  # bf16 hook
    sig = staged.signatures[key]
    with promote.mapped_os_errors(run.out):
        if not tftrt:
            freeze.write_frozen(run.out, optimized.graph_def, {key: sig}, staged.tags)
            return
        plain = run.out.parent / "plain"
        freeze.write_frozen(plain, optimized.graph_def, {key: sig}, staged.tags)
    _convert_tftrt(run, plain, optimized)


def _convert_tftrt(run: Run, plain: Path, model: Any) -> None:
    from builder.optimize import tftrt as _trt

    o = run.o
    with run.progress.step("converting with TF-TRT", "tftrt"):
        converted = run.out.parent / "trt"
        opts = _trt.TrtOptions(precision=o.precision, batch_sizes=tuple(o.batch_sizes), **o.trt)
        run.trt_info = _trt.convert_saved_model(plain, converted, model.inputs, opts)
        _trt.restore_signature(converted, model.inputs, model.outputs)
        shutil.rmtree(run.out)
        os.rename(converted, run.out)
        shutil.rmtree(plain, ignore_errors=True)


def plan_samples(run: Run) -> None:
    from builder.load.savedmodel import read_saved_model

    mg = read_saved_model(run.out).meta_graphs[0]
    run.plan = sample_inputs.plan(run.checked, mg, run.o.samples, run.o.num_samples, run.o.seed, run.out)


def run_source(run: Run) -> None:
    """Outputs of the source for every sample set, then the source is released."""
    assert run.plan is not None and run.staged is not None
    with run.progress.step(f"running the source model on the parity samples ({len(run.plan.primary)} "
                           "signature(s))", "run_source"):
        for key, inputs in list(run.plan.primary.items()):
            try:
                run.expected[key] = run.staged.run_source(key, inputs)
            except tf_run_errors() as e:
                run.expected[key] = _retry_one_row(run, key, e)
        for key, inputs in run.plan.second.items():
            try:
                run.expected2[key] = run.staged.run_source(key, inputs)
            except tf_run_errors() as e:
                run.second_notes[key] = f"skipped: the source fails on it ({first_line(e)})"
        run.staged.close()


def _retry_one_row(run: Run, key: str, error: BaseException) -> dict[str, np.ndarray]:
    """Some graphs only run on one row at a time (a batch dimension that broadcasts against a
    fixed-size tensor): synthesised inputs get one more try with a single row, and warmup then
    stays at batch size 1 for that signature. Any other failure is the user's to see."""
    assert run.plan is not None and run.staged is not None
    if run.plan.origin[key] != "synthesised" or _rows(run.plan.primary[key]) <= 1:
        raise GraphError(_source_failure(run, key, error)) from None
    one = {k: v[:1] if np.ndim(v) else v for k, v in run.plan.primary[key].items()}
    try:
        expected = run.staged.run_source(key, one)
    except tf_run_errors():
        raise GraphError(_source_failure(run, key, error)) from None
    run.plan.primary[key] = one
    run.plan.second.pop(key, None)
    run.plan.max_batch[key] = 1
    run.plan.origin[key] = "synthesised, one row (the source fails on more)"
    return expected


def _source_failure(run: Run, key: str, e: BaseException) -> str:
    assert run.plan is not None
    origin = run.plan.origin[key]
    text = f"signature {key!r}: the source model fails on the parity samples ({origin}): {first_line(e)}"
    if origin.startswith("synthesised"):
        return text + f"; pass --samples FILE with {sample_inputs.FORMATS}"
    if run.o.samples and Path(run.o.samples).suffix == ".npz":
        return text + ("; note: numpy 'S' string arrays drop trailing NUL bytes (serialized protos get "
                       "corrupted): use JSON with {\"b64\": ...} or a TFRecord of PredictionLog")
    return text


def write_extras(run: Run) -> None:
    """Warmup records and golden.npz into the staged version's assets.extra/."""
    assert run.plan is not None and run.staged is not None
    o, sigs = run.o, run.checked
    with promote.mapped_tf_write_errors(run.out):
        run.n_warm = warmup.write_warmup(run.out / artifact.WARMUP_FILE, o.name, sigs, run.plan.primary,
                                         o.batch_sizes, o.warmup_records, run.plan.max_batch)
        default = "serving_default" if "serving_default" in run.expected else None
        others = {k: (run.plan.primary[k], v) for k, v in run.expected.items() if k != default}
        artifact.write_golden(run.out, run.plan.primary.get(default, {}), run.expected.get(default, {}),
                              others)


def check_parity(run: Run) -> None:
    assert run.plan is not None and run.staged is not None
    o = run.o
    with run.progress.step(f"parity check: exported SavedModel vs source model ({len(run.expected)} "
                           "signature(s))", "parity"):
        table = None
        if o.optimize == "tftrt":
            from builder.optimize import tftrt as _trt

            table = _trt.PARITY_TOLERANCES
        tol = parity.tolerances(o.precision, o.atol, o.rtol, table)
        if o.min_cosine is not None:  # bf16 hook (issue 12)
            tol.min_cosine = o.min_cosine
        from builder.optimize import bf16  # bf16 hook (issue 12): the profile's parity has the rewrite on

        second = {k: v for k, v in run.plan.second.items() if k in run.expected2}
        try:
            actual, actual2 = bf16.parity_runner(o.precision, o.bake)(run.out, run.staged.tags, run.checked,
                                                                      [run.plan.primary, second])
        except (*tf_run_errors(), GraphError) as e:
            raise GraphError(f"the exported SavedModel does not run on the parity samples ({first_line(e)}); "
                             "nothing was promoted") from None
        for key, expected in run.expected.items():
            report = parity.compare(expected, actual[key], tol, samples=_rows(run.plan.primary[key]))
            if key in actual2:
                report = parity.merge(report, parity.compare(run.expected2[key], actual2[key], tol))
            elif key in run.second_notes:
                report.second_size = run.second_notes[key]
            run.reports[key] = report
        parity.raise_if_failed(run.reports, f"{o.name} ({run.flow} -> {o.optimize}/{o.precision})")
    if o.precision == "bf16" and not o.bake:  # bf16 hook (issue 12): measure the profile on the artefact
        with run.progress.step("measuring the bf16 serving profile (FP32 vs rewrite on)", "bf16"):
            key = "serving_default" if "serving_default" in run.checked else next(iter(run.checked))
            bf16.finish_profile(run.opt_info, o.precision, o.bake, run.out, run.staged.tags, run.checked[key],
                                batch_of(run.plan.primary[key], max(o.batch_sizes)))


def _rows(inputs: dict[str, np.ndarray]) -> int:
    sizes = [v.shape[0] for v in inputs.values() if np.ndim(v)]
    return max(sizes) if sizes else 1


def write_build_info(run: Run) -> dict[str, Any]:
    o = run.o
    version = o.version if o.version is not None else layout.next_version(run.staging.model_dir)
    info = build_info(run, version)
    from builder.optimize import bf16  # bf16 hook (issue 12)

    info.update(bf16.build_info_fields(run.o.precision, run.opt_info))
    with promote.mapped_os_errors(run.out):
        artifact.write_build_info(run.out, info)
        (run.out.parent / "reproduce.sh").write_text("#!/bin/sh\n" + info["reproduce"] + "\n")
    return info


def promote_version(run: Run, info: dict[str, Any]) -> ExportResult:
    o = run.o
    model_dir = run.staging.model_dir
    with run.progress.step(f"promoting to {model_dir / str(info['version'])}"):
        with promote.mapped_os_errors(model_dir):
            final = promote.promote(run.out, model_dir, o.name, info["version"], auto=o.version is None,
                                    overwrite=o.overwrite)
    version = int(final.name)
    if version != info["version"]:  # auto version raced with another exporter
        info["version"] = version
        info["reproduce"] = reproduce_command(o, version)
        with promote.mapped_os_errors(final):
            artifact.write_build_info(final, info)
    run.staging.created.clear()  # the version lives there now
    return ExportResult(final, version, info)


# --------------------------------------------------------------------------- build_info


def build_info(run: Run, version: int) -> dict[str, Any]:
    import tensorflow as tf

    o, staged = run.o, run.staged
    assert staged is not None and run.facts is not None and run.plan is not None
    kinds = warmup.request_kinds(staged.signatures)
    sigs = {k: {**s.as_json(), "request": kinds[k], "samples": run.plan.origin.get(k, "not checked: "
                                                                                   "sparse/composite entries")}
            for k, s in staged.signatures.items()}
    main = "serving_default" if "serving_default" in sigs else next(iter(sigs))
    return {
        "builder_version": __version__,
        "name": o.name,
        "version": version,
        "flow": run.flow,
        "source": {"path": staged.source_path,
                   "files": [{"path": p, "sha256": sha256_file(p), "bytes": os.path.getsize(p)}
                             for p in staged.source_files]},
        "tensorflow_version": tf.__version__,
        "optimizer": o.optimize,
        "precision": o.precision,
        "optimization": run.opt_info,
        "tensorrt": run.trt_info,
        "kept_as_is": staged.kept_as_is,
        "surgery": staged.surgery,
        "freeze": run.freeze.as_json(),
        "graph": run.facts.as_json(),
        "signature": sigs[main],
        "signatures": sigs,
        "kept_signatures": list(sigs),
        "feeds": staged.feeds,
        "batch_sizes": list(o.batch_sizes),
        "warmup_records": run.n_warm,
        "parity": _parity_json(run.reports, main),
        "notes": staged.notes,
        "export_seconds": round(time.perf_counter() - run.t0, 3),
        "step_seconds": dict(run.progress.seconds),
        "created": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "reproduce": reproduce_command(o, version),
    }


def _parity_json(reports: dict[str, parity.ParityReport], main: str) -> dict[str, Any]:
    """The main signature's figures at the top (as readers of one-signature exports expect),
    every signature under ``signatures``."""
    per = {k: r.as_json() for k, r in reports.items()}
    top = dict(per.get(main) or next(iter(per.values()), {}))
    top["passed"] = all(r.passed for r in reports.values())
    top["signatures"] = per
    return top


# --------------------------------------------------------------------------- signals, test hooks


@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (CI cancel, ``kill``) cleans up like Ctrl-C instead of dying mid-write."""
    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _test_pause(step: str) -> None:
    """Test hook: ``TFS_BUILDER_TEST_PAUSE_AT=step`` sleeps there so tests can kill us."""
    if os.environ.get("TFS_BUILDER_TEST_PAUSE_AT") == step:
        print(f"paused at {step}", file=sys.stderr, flush=True)
        time.sleep(float(os.environ.get("TFS_BUILDER_TEST_PAUSE_SECONDS", "30")))


# --------------------------------------------------------------------------- CLI


@with_loader_flags
def export_command(
    model: str = "", name: str = "", repo: str = "", flow: str | None = None, version: str = "auto",
    overwrite: bool = False, checkpoint: str | None = None, clear_devices: bool = True,
    batch_sizes: Any = "1,8,100", warmup_records: int = 2, samples: str | None = None, num_samples: int = 8,
    seed: int = 0, atol: float | None = None, rtol: float | None = None, optimize: str = "none",
    precision: str = "fp32", freeze: Any = None, allow_unsafe_ops: bool = False,
    max_workspace_size_bytes: int = 1 << 30, minimum_segment_size: int = 3, calibration_data: str | None = None,
    calibration_preprocessing: str = "unit", calibration_batch_size: int = 8,
    dynamic_shape_profile_strategy: str = "Range+Optimal", build_engines: bool = True,
    bake: bool = False, min_cosine: float | None = None, *, loader: LoaderFlags,
) -> None:
    """Export a TensorFlow model as a validated TF Serving version REPO/NAME/VERSION.

    Example: python -m builder export --flow checkpoint --model example_model/checkpoint
             --name facenet --repo model_repo --inputs input --outputs embeddings
             --feed phase_train=false --input_alias input=images

    A SavedModel is kept as it is (every signature, variables, tables, assets, init op); other
    flows are rebuilt with live variables. See README, "What survives an export".

    Args:
      model: Path to the model: a checkpoint dir (with *.meta + 'checkpoint' state file) or a
        .meta file, a frozen graph .pb/.pbtxt, a SavedModel dir (a TF Serving model dir with
        numeric version dirs works too, the newest is taken), or a .keras/.h5 file.
      name: Model name in the repository (the TF Serving model name).
      repo: Model repository root; the version goes to REPO/NAME/VERSION.
      flow: checkpoint|frozen|savedmodel|keras; detected from --model when omitted.
      version: 'auto' (highest existing + 1) or a positive integer.
      overwrite: Allow replacing an existing explicit --version.
      checkpoint: Checkpoint prefix (checkpoint flow); default: latest in the 'checkpoint' file.
      clear_devices: Drop device placements from the MetaGraph (checkpoint flow). Default on;
        --noclear_devices keeps them.
      batch_sizes: Batch sizes to warm up (and build TF-TRT profiles for), e.g. 1,8,100.
      warmup_records: Warmup records written per batch size and signature (total capped at 1000).
      samples: Parity inputs, an .npz keyed SIGNATURE/INPUT (or INPUT for serving_default), a TF
        Serving REST JSON request, or a TFRecord of PredictionLog; synthesised when not given.
      num_samples: Number of synthesised parity samples per signature. Default 8.
      seed: Seed for synthesised samples. Default 0.
      atol: Absolute tolerance for parity (by default for fp32 1e-5 x the output's largest
        magnitude, plus cosine >= 0.99999).
      rtol: Relative tolerance for parity (default 0).
      optimize: none|cpu|tftrt (cpu and tftrt freeze the graph). Default none.
      precision: fp32|fp16|int8|bf16 (fp16/int8 need tftrt; bf16 needs a CPU with AVX512-BF16,
        AMX-BF16 or Arm BF16 and --optimize none|cpu: the artefact stays FP32 and is served with
        TF Serving's --mixed_precision=bfloat16, parity measured with that rewrite on). Default fp32.
      bake: With --precision bf16: store the bf16 graph itself (frozen; no server flag needed;
        the artefact then needs a bf16 CPU).
      min_cosine: Minimum cosine similarity per sample and output for parity (default by
        precision: fp32 0.99999, bf16/fp16 0.999, int8 0.99).
      freeze: --freeze turns variables into constants, --nofreeze never; by default decided by
        what the graph holds (README, "What survives an export").
      allow_unsafe_ops: Export even if the graph still reads/writes files or runs Python.
      max_workspace_size_bytes: TF-TRT workspace (default 1 GiB).
      minimum_segment_size: TF-TRT minimum nodes per TensorRT segment (default 3).
      calibration_data: TF-TRT INT8 calibration inputs: an .npz (arrays keyed by input alias) or
        a folder of images (resized to the input's HxW).
      calibration_preprocessing: How a folder of images is scaled for INT8 calibration (see
        docs/optimizers.md), default unit ([0, 1] floats).
      calibration_batch_size: Batch size fed to the INT8 calibrator (default 8).
      dynamic_shape_profile_strategy: TF-TRT dynamic-shape profile strategy: Range, Optimal,
        Range+Optimal (default) or ImplicitBatchModeCompatible.
      build_engines: Build TF-TRT engines at export for every batch size (default on).
      {loader_flags}
    """
    trt = dict(max_workspace_size_bytes=max_workspace_size_bytes, minimum_segment_size=minimum_segment_size,
               calibration_data=calibration_data, calibration_preprocessing=calibration_preprocessing,
               calibration_batch_size=calibration_batch_size,
               dynamic_shape_profile_strategy=dynamic_shape_profile_strategy, build_engines=build_engines)
    o = options_from_cli(model=model, name=name, repo=repo, flow=flow, version=version, overwrite=overwrite,
                         checkpoint=checkpoint, clear_devices=clear_devices, batch_sizes=batch_sizes,
                         warmup_records=warmup_records, samples=samples, num_samples=num_samples, seed=seed,
                         atol=atol, rtol=rtol, optimize=optimize, precision=precision, freeze=freeze,
                         allow_unsafe_ops=allow_unsafe_ops, loader=loader, trt=trt,
                         bake=bake, min_cosine=min_cosine)  # bf16 hook (issue 12)
    print_summary(export(o))


def options_from_cli(*, loader: LoaderFlags, trt: dict[str, Any], **raw: Any) -> ExportOptions:
    """python-fire's raw values -> ExportOptions (errors name the flag)."""
    o = ExportOptions(
        model=as_optional_str(raw["model"]) or "", name=as_optional_str(raw["name"]) or "",
        repo=as_optional_str(raw["repo"]) or "", flow=as_optional_str(raw["flow"]),
        version=layout.parse_version(raw["version"]), overwrite=as_bool(raw["overwrite"], "--overwrite"),
        inputs=loader.inputs, outputs=loader.outputs, feed=loader.feed, input_alias=loader.input_alias,
        output_alias=loader.output_alias, input_shapes=loader.input_shapes, tags=loader.tags,
        signature=loader.signatures or None, checkpoint=as_optional_str(raw["checkpoint"]),
        clear_devices=as_bool(raw["clear_devices"], "--clear_devices"),
        batch_sizes=as_int_list(raw["batch_sizes"], "--batch_sizes"),
        warmup_records=as_int(raw["warmup_records"], "--warmup_records"),
        samples=as_optional_str(raw["samples"]),
        num_samples=as_int(raw["num_samples"], "--num_samples"), seed=as_int(raw["seed"], "--seed"),
        atol=_number_or_none(raw["atol"], "--atol"), rtol=_number_or_none(raw["rtol"], "--rtol"),
        optimize=str(raw["optimize"]), precision=str(raw["precision"]),
        freeze=as_bool_or_auto(raw["freeze"], "--freeze"),
        allow_unsafe_ops=as_bool(raw["allow_unsafe_ops"], "--allow_unsafe_ops"),
        bake=as_bool(raw.get("bake", False), "--bake"),  # bf16 hook (issue 12)
        min_cosine=_number_or_none(raw.get("min_cosine"), "--min_cosine"),  # bf16 hook (issue 12)
    )
    if not o.model:
        raise InputError("--model is required: the model file or directory to export")
    if o.optimize == "tftrt":
        o.trt = {**trt, "max_workspace_size_bytes": as_int(trt["max_workspace_size_bytes"],
                                                           "--max_workspace_size_bytes"),
                 "minimum_segment_size": as_int(trt["minimum_segment_size"], "--minimum_segment_size"),
                 "calibration_data": as_optional_str(trt["calibration_data"]),
                 "calibration_preprocessing": str(trt["calibration_preprocessing"]),
                 "calibration_batch_size": as_int(trt["calibration_batch_size"], "--calibration_batch_size"),
                 "dynamic_shape_profile_strategy": str(trt["dynamic_shape_profile_strategy"]),
                 "build_engines": as_bool(trt["build_engines"], "--build_engines")}
    return o


def _number_or_none(v: Any, flag: str) -> float | None:
    return None if v is None else as_float(v, flag)


def print_summary(result: ExportResult) -> None:
    info = result.build_info
    p = info["parity"]
    print(f"exported {info['name']} version {result.version} -> {result.path}")
    print(f"  parity: passed for {len(p['signatures'])} signature(s), max_abs_diff={p['max_abs_diff']:.3g} "
          f"min_cosine={p['min_cosine']:.6f} on {p['samples']} samples")
    for key, s in p["signatures"].items():
        print(f"    {key} ({info['signatures'][key]['method_name'].rsplit('/', 1)[-1]}): passed, "
              f"max_abs_diff={s['max_abs_diff']:.3g} (atol {s['atol']:.3g}) min_cosine={s['min_cosine']:.6f} "
              f"on {s['samples']} samples ({info['signatures'][key]['samples']})")
    freeze = info["freeze"]
    print(f"  kept: {', '.join(info['kept_signatures'])}; frozen: {'yes' if freeze['frozen'] else 'no'} "
          f"({freeze['reason']}); export took {info['export_seconds']:.1f}s")
    bf = info.get("bf16") or {}  # bf16 hook (issue 12)
    m = bf.get("measured") or {}
    if m.get("speedup"):
        print(f"  bf16 ({bf['mode']}): {m['speedup']:.2f}x FP32 at batch {m['batch']}, batch-1 p50 "
              f"{m['batch1_p50_ratio']:.2f}x, on {m['cpu']}"
              + ("; serve with --mixed_precision=bfloat16" if bf["mode"] == "profile" else "; needs a bf16 CPU"))
    print(f"  reproduce: {info['reproduce']}")

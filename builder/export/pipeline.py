"""``python -m builder export``: any input flow -> a validated, versioned SavedModel.

The pipeline reads top to bottom: load (normalise) -> optimise -> write SavedModel + warmup +
golden outputs into a staging directory -> parity against the source model -> build_info ->
rename into ``REPO/NAME/VERSION``. The staging name is non-numeric, so a TF Serving polling the
repository never sees a partial version; on any error or Ctrl-C/SIGTERM the staging directory
is removed, and one left by a SIGKILL is swept by the next export.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shlex
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
from builder.core.errors import GraphError, InputError, VersionError
from builder.core.model import NormalizedModel
from builder.export import parity
from builder.load import loaders
from builder.options import as_int_list, as_list, as_mapping

DEFAULT_BATCH_SIZES = (1, 8, 100)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass
class ExportOptions:
    """Everything ``export`` takes; also what ``reproduce`` is rebuilt from."""

    model: str
    name: str
    repo: str
    flow: str | None = None
    version: int | None = None  # None = auto (highest + 1)
    overwrite: bool = False
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    feed: dict[str, str] = field(default_factory=dict)
    input_alias: dict[str, str] = field(default_factory=dict)
    output_alias: dict[str, str] = field(default_factory=dict)
    input_shapes: dict[str, str] = field(default_factory=dict)
    checkpoint: str | None = None
    tags: list[str] = field(default_factory=lambda: ["serve"])
    signature: str = "serving_default"
    clear_devices: bool = True
    batch_sizes: list[int] = field(default_factory=lambda: list(DEFAULT_BATCH_SIZES))
    warmup_records: int = 2  # per batch size
    samples: str | None = None
    num_samples: int = 8
    seed: int = 0
    atol: float | None = None
    rtol: float | None = None
    optimize: str = "none"
    precision: str = "fp32"
    allow_unsafe_ops: bool = False
    trt: dict[str, Any] = field(default_factory=dict)  # TF-TRT options (see builder.tftrt)
    bake: bool = False  # bf16 hook (issue 12): bake the bf16 rewrite instead of a serving profile
    min_cosine: float | None = None  # bf16 hook (issue 12): overrides the precision's default


@dataclass
class ExportResult:
    path: Path
    version: int
    build_info: dict[str, Any]


class Progress:
    """Step lines on stderr, so long exports show where they are."""

    def __init__(self, total: int, quiet: bool = False):
        self.total, self.n, self.quiet = total, 0, quiet
        self.t0 = time.perf_counter()

    @contextmanager
    def step(self, text: str):
        self.n += 1
        start = time.perf_counter()
        if not self.quiet:
            print(f"[{self.n}/{self.total}] {text} ...", file=sys.stderr, flush=True)
        yield
        if not self.quiet:
            print(f"      done in {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- writing


def write_saved_model(model: NormalizedModel, out_dir: Path) -> None:
    """A TF1 SavedModel (tag ``serve``) whose ``serving_default`` predict signature uses the
    aliases as keys; constants only, so ``variables/`` stays empty."""
    import tensorflow as tf

    with tf.Graph().as_default() as g:
        tf.compat.v1.import_graph_def(model.graph_def, name="")
        utils = tf.compat.v1.saved_model.utils
        sig = tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
            inputs={t.alias: utils.build_tensor_info(g.get_tensor_by_name(t.tensor)) for t in model.inputs},
            outputs={t.alias: utils.build_tensor_info(g.get_tensor_by_name(t.tensor)) for t in model.outputs},
            method_name=tf.compat.v1.saved_model.signature_constants.PREDICT_METHOD_NAME,
        )
        with tf.compat.v1.Session(graph=g) as sess:
            b = tf.compat.v1.saved_model.Builder(str(out_dir))
            b.add_meta_graph_and_variables(
                sess,
                [tf.compat.v1.saved_model.tag_constants.SERVING],
                signature_def_map={"serving_default": sig},
                strip_default_attrs=True,
                clear_devices=True,
            )
            b.save()
    (out_dir / "variables").mkdir(exist_ok=True)


def batch_of(samples: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """``size`` rows cycled from the samples (so any batch size can be warmed/benchmarked)."""
    out = {}
    for k, v in samples.items():
        n = v.shape[0]
        idx = np.arange(size) % n
        out[k] = v[idx]
    return out


def write_warmup(path: Path, name: str, samples: dict[str, np.ndarray], batch_sizes: list[int],
                 per_batch: int, signature: str = "serving_default") -> int:
    """TFRecord of PredictionLog, as TF Serving's ``--enable_model_warmup`` reads it."""
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    per_batch = max(1, min(per_batch, artifact.MAX_WARMUP_RECORDS // max(1, len(batch_sizes))))
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with tf.io.TFRecordWriter(str(path)) as w:
        for size in batch_sizes:
            batch = batch_of(samples, size)
            req = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=name, signature_name=signature)
            )
            for k, v in batch.items():
                req.inputs[k].CopyFrom(tf.make_tensor_proto(v))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=req)
            )
            data = log.SerializeToString()
            for _ in range(per_batch):
                w.write(data)
                count += 1
    return count


# --------------------------------------------------------------------------- the pipeline


def validate_options(o: ExportOptions) -> None:
    """All cheap checks, before any work, so bad flags never cost a model load."""
    if not o.name or not _NAME_RE.match(o.name):
        raise InputError(f"--name {o.name!r}: use letters, digits, '_', '-', '.' (not starting "
                         "with '.'), e.g. --name facenet")
    if not o.repo:
        raise InputError("--repo is required: the model repository directory, e.g. --repo models")
    if Path(o.repo).exists() and not Path(o.repo).is_dir():
        raise InputError(f"--repo {o.repo}: exists and is not a directory")
    if not Path(o.model).exists():
        raise InputError(f"--model {o.model}: no such file or directory")
    if o.flow is not None and o.flow not in loaders.FLOWS:
        raise InputError(f"--flow {o.flow}: unknown flow; use one of {', '.join(loaders.FLOWS)}")
    if not o.batch_sizes:
        raise InputError("--batch_sizes is empty: use e.g. --batch_sizes 1,8,100")
    if o.num_samples <= 0:
        raise InputError(f"--num_samples {o.num_samples}: must be positive")
    if o.warmup_records <= 0:
        raise InputError(f"--warmup_records {o.warmup_records}: must be positive")
    if o.samples and not Path(o.samples).is_file():
        raise InputError(f"--samples {o.samples}: no such file")
    for v, flag in ((o.atol, "--atol"), (o.rtol, "--rtol")):
        if v is not None and (not isinstance(v, (int, float)) or v < 0):
            raise InputError(f"{flag} {v!r}: must be a non-negative number")
    from builder.optimize import cpu as _opt

    _opt.check_request(o.optimize, o.precision, trt=o.trt or None, bake=o.bake)  # bf16 hook
    if o.min_cosine is not None and not -1 <= o.min_cosine <= 1:  # bf16 hook (issue 12)
        raise InputError(f"--min_cosine {o.min_cosine}: must be between -1 and 1, e.g. 0.999")
    if o.version is not None and not o.overwrite:
        existing = layout.version_dir(o.repo, o.name, o.version)
        if existing.exists():
            raise VersionError(
                f"version {o.version} of {o.name} exists ({existing}): pass --overwrite to replace "
                "it, or --version auto for the next free version"
            )


def reproduce_command(o: ExportOptions, version: int) -> str:
    """The command line that rebuilds this version (defaults left out)."""
    d = ExportOptions(model="", name="", repo="")
    parts = ["python", "-m", "builder", "export",
             "--flow", o.flow or loaders.detect_flow(o.model),
             "--model", str(Path(o.model).resolve()),
             "--name", o.name, "--repo", str(Path(o.repo).resolve()),
             "--version", str(version)]
    for key in ("inputs", "outputs", "tags", "batch_sizes"):
        v = getattr(o, key)
        if v != getattr(d, key):
            parts += [f"--{key}", ",".join(map(str, v))]
    for key in ("feed", "input_alias", "output_alias", "input_shapes"):
        v = getattr(o, key)
        if v:
            parts += [f"--{key}", ",".join(f"{k}={x}" for k, x in v.items())]
    for key in ("checkpoint", "samples", "signature", "num_samples", "seed", "atol", "rtol",
                "optimize", "precision", "warmup_records", "min_cosine"):  # bf16 hook: min_cosine
        v = getattr(o, key)
        if v != getattr(d, key):
            parts += [f"--{key}", str(Path(v).resolve()) if key in ("checkpoint", "samples") else str(v)]
    for key in ("overwrite", "allow_unsafe_ops", "bake"):  # bf16 hook: bake
        if getattr(o, key):
            parts.append(f"--{key}")
    if not o.clear_devices:
        parts.append("--noclear_devices")
    for k, v in sorted(o.trt.items()):
        parts += [f"--{k}", ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)]
    return shlex.join(parts)


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


def export(o: ExportOptions, quiet: bool = False) -> ExportResult:
    """Run the whole pipeline; raises BuilderError subclasses for user mistakes."""
    t0 = time.perf_counter()
    validate_options(o)
    flow = o.flow or loaders.detect_flow(o.model)
    model_dir = Path(o.repo) / o.name
    tftrt = o.optimize == "tftrt"
    progress = Progress(7 if tftrt else 6, quiet)

    with _sigterm_as_interrupt():
        with progress.step(f"loading {flow} model {o.model}"):
            model = loaders.load(
                o.model, flow, inputs=o.inputs, outputs=o.outputs, feeds=o.feed,
                input_alias=o.input_alias, output_alias=o.output_alias, checkpoint=o.checkpoint,
                input_shapes={k: loaders.parse_shape(v) for k, v in o.input_shapes.items()},
                tags=o.tags, signature=o.signature, clear_devices=o.clear_devices,
            )
        staging: Path | None = None
        try:
            _check_unsafe(model, o.allow_unsafe_ops)
            from builder.optimize import cpu as _opt

            with progress.step(f"optimizing ({o.optimize}, {o.precision})"):
                graph_model, opt_info = _opt.optimize_graph(
                    model, "none" if tftrt else o.optimize, o.precision,
                    bake=o.bake, measure_batch=max(o.batch_sizes))  # bf16 hook (issue 12)
            _check_unsafe(graph_model, o.allow_unsafe_ops)
            with progress.step("running the source model on the parity samples"):
                if o.samples:
                    samples = parity.load_samples(o.samples, model.inputs)
                else:
                    samples = parity.generate_samples(model.inputs, o.num_samples, o.seed)
                assert model.run_source is not None
                try:
                    expected = model.run_source(samples)
                except Exception as e:  # noqa: BLE001 - TF raises many kinds for bad inputs
                    raise GraphError(f"the source model fails on the parity samples: "
                                     f"{loaders._first_line(e)}") from None
            layout.clean_stale_staging(model_dir)
            staging = layout.new_staging_dir(model_dir, "export")
            out = staging / "model"
            trt_info = None
            with progress.step(f"writing SavedModel ({len(graph_model.graph_def.node)} nodes)"):
                if tftrt:
                    plain = staging / "plain"
                    write_saved_model(graph_model, plain)
                else:
                    write_saved_model(graph_model, out)
            if tftrt:
                with progress.step("converting with TF-TRT"):
                    from builder.optimize import tftrt as _trt

                    opts = _trt.TrtOptions(precision=o.precision, batch_sizes=tuple(o.batch_sizes),
                                           **o.trt)
                    trt_info = _trt.convert_saved_model(plain, out, graph_model.inputs, opts)
                    _trt.restore_signature(out, graph_model.inputs, graph_model.outputs)
                    shutil.rmtree(plain, ignore_errors=True)
            extra = out / "assets.extra"
            extra.mkdir(parents=True, exist_ok=True)
            n_warm = write_warmup(out / artifact.WARMUP_FILE, o.name, samples,
                                  o.batch_sizes, o.warmup_records)
            artifact.write_golden(out, samples, expected)
            _test_pause("before_parity")
            with progress.step("parity check: exported SavedModel vs source model"):
                table = None
                if tftrt:
                    from builder.optimize import tftrt as _trt

                    table = _trt.PARITY_TOLERANCES
                atol, rtol, min_cos = parity.tolerances(o.precision, o.atol, o.rtol, table)
                min_cos = min_cos if o.min_cosine is None else o.min_cosine  # bf16 hook
                from builder.optimize import bf16 as _bf16  # bf16 hook (issue 12): profile parity

                try:
                    actual = _bf16.run_for_parity(out, samples, o.precision, opt_info)
                except Exception as e:  # noqa: BLE001 - TF raises many kinds at load/run
                    raise GraphError(
                        f"the exported SavedModel does not run on the parity samples "
                        f"({loaders._first_line(e)}); the source model needs something the frozen "
                        "graph lost (e.g. lookup tables initialised by a main_op are not supported "
                        "yet); nothing was promoted"
                    ) from None
                report = parity.compare(expected, actual, atol=atol, rtol=rtol,
                                        min_cosine=min_cos, samples=len(next(iter(samples.values()))))
                report.raise_if_failed(f"{o.name} ({flow} -> {o.optimize}/{o.precision})")
            version = o.version if o.version is not None else layout.next_version(model_dir)
            info = _build_info(o, flow, model, graph_model, version, report, opt_info, trt_info,
                               n_warm, time.perf_counter() - t0)
            info.update(_bf16.build_info_fields(o.precision, opt_info))  # bf16 hook (issue 12)
            artifact.write_build_info(out, info)
            (staging / "reproduce.sh").write_text("#!/bin/sh\n" + info["reproduce"] + "\n")
            _test_pause("before_promote")
            with progress.step(f"promoting to {model_dir / str(version)}"):
                final = _promote(out, model_dir, o, version)
            info["version"] = int(final.name)
            if int(final.name) != version:  # auto version raced with another exporter
                info["reproduce"] = reproduce_command(o, int(final.name))
                layout.atomic_write_text(final / "assets.extra" / "build_info.json",
                                        json.dumps(info, indent=2) + "\n")
            return ExportResult(final, int(final.name), info)
        finally:
            model.close()
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)


def _check_unsafe(model: NormalizedModel, allow: bool) -> None:
    bad = compat.unsafe_nodes(model.graph_def)
    if bad and not allow:
        listed = ", ".join(f"{n} ({op})" for n, op in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise GraphError(
            f"the exported graph still contains ops that touch files or run Python: {listed}; "
            "this usually means the input pipeline was not cut away: pass --inputs at the tensor "
            "the model consumes (e.g. --inputs input), or --allow_unsafe_ops if intended"
        )


def _promote(out: Path, model_dir: Path, o: ExportOptions, version: int) -> Path:
    """Rename the finished version into place; never silently replaces an existing version."""
    for _ in range(100):
        target = model_dir / str(version)
        if target.exists():
            if o.version is None:  # another exporter took it: take the next one
                version = layout.next_version(model_dir)
                continue
            if not o.overwrite:
                raise VersionError(f"version {version} of {o.name} appeared during the export "
                                   f"({target}): pass --overwrite or --version auto")
            if layout.exchange_dirs(out, target):  # one atomic swap: never a missing version
                shutil.rmtree(out, ignore_errors=True)
                return target
            old = model_dir / f"{layout.STAGING_PREFIX}old-{version}-{os.getpid()}-{os.urandom(4).hex()}"
            os.rename(target, old)
            try:
                os.rename(out, target)
            except OSError:
                os.rename(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
            return target
        try:
            os.rename(out, target)
        except OSError:
            if target.exists():
                continue
            raise
        return target
    raise VersionError(f"could not claim a version directory in {model_dir} after 100 tries")


def _build_info(o: ExportOptions, flow: str, model: NormalizedModel, graph_model: NormalizedModel,
                version: int, report: parity.ParityReport, opt_info: dict, trt_info: dict | None,
                n_warm: int, seconds: float) -> dict[str, Any]:
    import tensorflow as tf

    return {
        "builder_version": __version__,
        "name": o.name,
        "version": version,
        "flow": flow,
        "source": {
            "path": model.source_path,
            "files": [{"path": p, "sha256": sha256_file(p), "bytes": os.path.getsize(p)}
                      for p in model.source_files],
        },
        "tensorflow_version": tf.__version__,
        "optimizer": o.optimize,
        "precision": o.precision,
        "optimization": opt_info,
        "tensorrt": trt_info,
        "signature": {
            "key": "serving_default",
            "method_name": "tensorflow/serving/predict",
            "inputs": {t.alias: t.as_json() for t in graph_model.inputs},
            "outputs": {t.alias: t.as_json() for t in graph_model.outputs},
        },
        "feeds": model.feeds,
        "batch_sizes": list(o.batch_sizes),
        "warmup_records": n_warm,
        "parity": report.as_json(),
        "export_seconds": round(seconds, 3),
        "created": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "reproduce": reproduce_command(o, version),
    }


# --------------------------------------------------------------------------- CLI


def export_command(
    model: str = "",
    name: str = "",
    repo: str = "",
    flow: str | None = None,
    version: str = "auto",
    overwrite: bool = False,
    inputs: Any = None,
    outputs: Any = None,
    feed: Any = None,
    input_alias: Any = None,
    output_alias: Any = None,
    input_shapes: Any = None,
    checkpoint: str | None = None,
    tags: Any = "serve",
    signature: str = "serving_default",
    clear_devices: bool = True,
    batch_sizes: Any = "1,8,100",
    warmup_records: int = 2,
    samples: str | None = None,
    num_samples: int = 8,
    seed: int = 0,
    atol: float | None = None,
    rtol: float | None = None,
    optimize: str = "none",
    precision: str = "fp32",
    allow_unsafe_ops: bool = False,
    max_workspace_size_bytes: int = 1 << 30,
    minimum_segment_size: int = 3,
    calibration_data: str | None = None,
    calibration_preprocessing: str = "unit",
    calibration_batch_size: int = 8,
    dynamic_shape_profile_strategy: str = "Range+Optimal",
    build_engines: bool = True,
    bake: bool = False,
    min_cosine: float | None = None,
) -> None:
    """Export a TensorFlow model as a validated TF Serving version REPO/NAME/VERSION.

    Example: python -m builder export --flow checkpoint --model example_model/checkpoint
             --name facenet --repo model_repo --inputs input --outputs embeddings
             --feed phase_train=false --input_alias input=images

    Args:
      model: Path to the model: a checkpoint dir (with *.meta + 'checkpoint' state file) or a
        .meta file, a frozen graph .pb/.pbtxt, a SavedModel dir, or a .keras/.h5 file.
      name: Model name in the repository (the TF Serving model name).
      repo: Model repository root; the version goes to REPO/NAME/VERSION.
      flow: checkpoint|frozen|savedmodel|keras; detected from --model when omitted.
      version: 'auto' (highest existing + 1) or a positive integer.
      overwrite: Allow replacing an existing explicit --version.
      inputs: Input tensors/nodes, comma separated (e.g. input). Any tensor may be an input:
        the graph is cut there so input pipelines fall away. Default: the SavedModel signature's
        inputs, or the only unfed placeholder.
      outputs: Output tensors/nodes, comma separated (e.g. embeddings). Default: the SavedModel
        signature's outputs.
      feed: Fixed placeholder values folded into constants, e.g. phase_train=false.
      input_alias: Signature keys for inputs, e.g. input=images.
      output_alias: Signature keys for outputs, e.g. embeddings=embeddings.
      input_shapes: Shapes for inputs whose shape the graph does not know (typical when the
        graph is cut inside a queue-fed input pipeline), e.g. input=?x160x160x3 (? = any).
      checkpoint: Checkpoint prefix (checkpoint flow); default: latest in the 'checkpoint' file.
      tags: SavedModel tags to load (savedmodel flow), comma separated. Default serve.
      signature: SavedModel signature to export (savedmodel flow). Default serving_default.
      clear_devices: Drop device placements from the MetaGraph (checkpoint flow). Default on;
        --noclear_devices keeps them.
      batch_sizes: Batch sizes to warm up (and build TF-TRT profiles for), e.g. 1,8,100.
      warmup_records: Warmup records written per batch size (total capped at 1000).
      samples: .npz of parity inputs keyed by input alias; default: generated with --seed.
      num_samples: Number of generated parity samples. Default 8.
      seed: Seed for generated samples. Default 0.
      atol: Absolute tolerance for parity (default by precision: fp32 1e-5).
      rtol: Relative tolerance for parity (default 0).
      optimize: none|cpu|tftrt. Default none.
      precision: fp32|fp16|int8|bf16 (fp16/int8 need tftrt; bf16 needs a CPU with AVX512-BF16,
        AMX-BF16 or Arm BF16 and --optimize none|cpu: the artefact stays FP32 and is served with
        TF Serving's --mixed_precision=bfloat16, parity measured with that rewrite on). Default fp32.
      bake: With --precision bf16: store the bf16 graph itself (no server flag needed; the
        artefact then needs a bf16 CPU).
      min_cosine: Minimum cosine similarity per sample and output for parity (default by
        precision: bf16/fp16 0.999, int8 0.99, fp32 none).
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
    """
    o = ExportOptions(
        model=str(model) if model else "",
        name=str(name) if name else "",
        repo=str(repo) if repo else "",
        flow=str(flow) if flow else None,
        version=layout.parse_version(version),
        overwrite=bool(overwrite),
        inputs=as_list(inputs, "--inputs"),
        outputs=as_list(outputs, "--outputs"),
        feed=as_mapping(feed, "--feed"),
        input_alias=as_mapping(input_alias, "--input_alias"),
        output_alias=as_mapping(output_alias, "--output_alias"),
        input_shapes=as_mapping(input_shapes, "--input_shapes"),
        checkpoint=str(checkpoint) if checkpoint else None,
        tags=as_list(tags, "--tags") or ["serve"],
        signature=str(signature),
        clear_devices=bool(clear_devices),
        batch_sizes=as_int_list(batch_sizes, "--batch_sizes"),
        warmup_records=_int(warmup_records, "--warmup_records"),
        samples=str(samples) if samples else None,
        num_samples=_int(num_samples, "--num_samples"),
        seed=_int(seed, "--seed"),
        atol=_float(atol, "--atol"),
        rtol=_float(rtol, "--rtol"),
        optimize=str(optimize),
        precision=str(precision),
        allow_unsafe_ops=bool(allow_unsafe_ops),
        bake=bool(bake),  # bf16 hook (issue 12)
        min_cosine=_float(min_cosine, "--min_cosine"),  # bf16 hook (issue 12)
    )
    if not o.model:
        raise InputError("--model is required: the model file or directory to export")
    if o.optimize == "tftrt":
        o.trt = {
            "max_workspace_size_bytes": _int(max_workspace_size_bytes, "--max_workspace_size_bytes"),
            "minimum_segment_size": _int(minimum_segment_size, "--minimum_segment_size"),
            "calibration_data": str(calibration_data) if calibration_data else None,
            "calibration_preprocessing": str(calibration_preprocessing),
            "calibration_batch_size": _int(calibration_batch_size, "--calibration_batch_size"),
            "dynamic_shape_profile_strategy": str(dynamic_shape_profile_strategy),
            "build_engines": bool(build_engines),
        }
    result = export(o)
    p = result.build_info["parity"]
    print(f"exported {o.name} version {result.version} -> {result.path}")
    print(f"  parity: passed, max_abs_diff={p['max_abs_diff']:.3g} min_cosine={p['min_cosine']:.6f} "
          f"on {p['samples']} samples; export took {result.build_info['export_seconds']:.1f}s")
    bf = result.build_info.get("bf16") or {}  # bf16 hook (issue 12)
    m = bf.get("measured") or {}
    if m.get("speedup"):
        print(f"  bf16 ({bf['mode']}): {m['speedup']:.2f}x FP32 at batch {m['batch']}, batch-1 p50 "
              f"{m['batch1_p50_ratio']:.2f}x, on {m['cpu']}"
              + (f"; serve with --mixed_precision={bf['serving_profile']['mixed_precision']}"
                 if bf.get("serving_profile") else "; needs a bf16 CPU"))
    print(f"  reproduce: {result.build_info['reproduce']}")


def _int(v: Any, flag: str) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        raise InputError(f"{flag} {v!r}: must be an integer") from None


def _float(v: Any, flag: str) -> float | None:
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        raise InputError(f"{flag} {v!r}: must be a number") from None

"""TF-TRT with TensorFlow 2.17's own converter (``TrtGraphConverterV2``), and everything around it.

The export writes the plain FP32 SavedModel first (every input flow is normalised to a frozen
graph before, as the seed tutorial advises: "convert the restored session's graph to a frozen
graph, then use the frozen-graph flow"); ``convert_saved_model`` converts that directory:

- dynamic-shape mode with one optimisation profile per ``--batch_sizes`` entry (the tutorial's
  "save several batch-size-optimised graphs", as profiles of ONE engine per segment); the
  default strategy ``Range+Optimal`` also covers every batch size in between;
- ``build()`` at export for every batch size (``--build_engines``, default on), so TF Serving
  never builds an engine at its first request (minutes: tensorflow/tensorrt#259);
- a segment check: a TensorFlow that cannot use TensorRT may "convert" into a slower, bigger
  graph without a single TRTEngineOp (tensorflow/tensorrt#250); that fails loudly here;
- ``save()`` keeps only the converted signature and drops ``assets.extra``:
  ``restore_signature`` / ``restore_assets_extra`` put back what the converter dropped.

Probing pitfall: in TF 2.17, ``_pywrap_py_utils.get_loaded_tensorrt_version()`` without
libnvinfer.so.8 ends the PROCESS with a C++ fatal ("getInferLibVersion symbol not found"), and
importing ``trt_convert`` may call it. ``probe_tensorrt`` therefore runs in a subprocess and
asks for the loaded version only after ``is_tensorrt_enabled()`` (which dlopens the library)
said yes; the library itself is also checked with ctypes.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from builder.core import artifact
from builder.core.errors import GraphError, InputError, UnavailableError
from builder.core.model import TensorInfo

TRT_PRECISIONS = ("fp32", "fp16", "int8")
PROFILE_STRATEGIES = ("Range", "Optimal", "Range+Optimal", "ImplicitBatchModeCompatible")
CALIBRATION_PREPROCESSING = ("unit", "symmetric", "raw", "standardize")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
REQUIRED_TRT_MAJOR = 8  # TF 2.17 is linked against TensorRT 8.6; serving 2.17-gpu ships 8.6.1

GPU_IMAGE_HINT = (
    "run the conversion in the GPU builder image: docker build -f scripts/builder-gpu.Dockerfile "
    "-t tfs-builder-gpu . && docker run --rm --gpus all -v \"$PWD:/work\" -w /work "
    "tfs-builder-gpu export ... --optimize tftrt (see README, 'TF-TRT')"
)

# Parity against the FP32 source, per TF-TRT precision: (atol, rtol, min cosine). FP32 is not
# bit-exact either: TensorRT uses TF32 tensor cores for FP32 layers on Ampere and newer GPUs.
PARITY_TOLERANCES: dict[str, tuple[float, float, float | None]] = {
    "fp32": (1e-3, 0.0, 0.9999),
    "fp16": (1e-2, 0.0, 0.999),
    "int8": (1e-1, 0.0, 0.99),
}


# --------------------------------------------------------------------------- probing

_PROBE_SCRIPT = r"""
import ctypes, json, os, sys
out = {"libnvinfer": False, "libnvinfer_version": None, "tf_built_with_tensorrt": False,
       "linked_version": None, "loaded_version": None, "tensorrt_enabled": False, "gpus": [],
       "errors": []}
def emit():
    print("PROBE " + json.dumps(out), flush=True)
try:
    lib = ctypes.CDLL("libnvinfer.so.8")
    out["libnvinfer"] = True
    try:
        f = lib.getInferLibVersion
        f.restype = ctypes.c_int32
        v = int(f())
        out["libnvinfer_version"] = [v // 1000, (v // 100) % 10, v % 100]
    except AttributeError as e:
        out["errors"].append("libnvinfer.so.8 has no getInferLibVersion: " + str(e))
except OSError as e:
    out["errors"].append("libnvinfer.so.8: " + str(e).split(":")[-1].strip())
emit()
import tensorflow as tf
info = tf.sysconfig.get_build_info()
out["tf_built_with_tensorrt"] = bool(info.get("is_tensorrt_build", False))
out["tensorflow_version"] = tf.__version__
out["cuda_build"] = bool(info.get("is_cuda_build", False))
try:
    for d in tf.config.list_physical_devices("GPU"):
        det = tf.config.experimental.get_device_details(d)
        cc = det.get("compute_capability")
        out["gpus"].append({"name": det.get("device_name", d.name),
                            "compute_capability": ".".join(map(str, cc)) if cc else None})
except Exception as e:
    out["errors"].append("GPU query: " + str(e).splitlines()[0])
emit()
if out["tf_built_with_tensorrt"]:
    from tensorflow.compiler.tf2tensorrt import _pywrap_py_utils as u
    out["linked_version"] = list(u.get_linked_tensorrt_version())
    out["tensorrt_enabled"] = bool(u.is_tensorrt_enabled())
    emit()
    if out["tensorrt_enabled"] and out["libnvinfer"]:
        out["loaded_version"] = list(u.get_loaded_tensorrt_version())
emit()
"""


@functools.lru_cache(maxsize=1)
def probe_tensorrt(timeout: float = 180.0) -> dict[str, Any]:
    """What TF-TRT needs, probed in a child process so a C++ abort cannot take us down.

    Keys: available (bool), reason (what is missing, '' when available), linked_version,
    loaded_version (lists or None), gpus [{name, compute_capability}], tf_built_with_tensorrt,
    libnvinfer (bool), tensorflow_version."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    raw: dict[str, Any] = {}
    crash = ""
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE_SCRIPT], capture_output=True,
                              text=True, timeout=timeout, env=env)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE ")]
        if lines:
            raw = json.loads(lines[-1][len("PROBE "):])
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            crash = f"the TensorRT probe process failed (exit {proc.returncode}: {tail[:200]})"
    except subprocess.TimeoutExpired:
        crash = f"the TensorRT probe did not finish in {timeout:.0f} s"
    return _summarise_probe(raw, crash)


def _summarise_probe(raw: dict[str, Any], crash: str = "") -> dict[str, Any]:
    """Turn the child's raw facts into the probe dict with one human-readable reason."""
    missing = []
    if crash:
        missing.append(crash)
    if raw and not raw.get("tf_built_with_tensorrt"):
        missing.append(f"this TensorFlow {raw.get('tensorflow_version', '')} is built without "
                       "TensorRT (TF >= 2.18 dropped it; use tensorflow==2.17.x)")
    if raw and not raw.get("gpus"):
        missing.append("no NVIDIA GPU visible to TensorFlow")
    if raw and not raw.get("libnvinfer"):
        missing.append("libnvinfer.so.8 (TensorRT 8) is not installed or not on LD_LIBRARY_PATH")
    elif raw and raw.get("tf_built_with_tensorrt") and not raw.get("tensorrt_enabled"):
        missing.append("TensorFlow could not load TensorRT (libnvinfer.so.8 / libnvinfer_plugin.so.8)")
    loaded, linked = raw.get("loaded_version"), raw.get("linked_version")
    if loaded and linked and loaded[0] != linked[0]:
        missing.append(f"TensorRT {_v(loaded)} is loaded but TensorFlow is linked against "
                       f"{_v(linked)}: the major versions must match")
    if loaded and loaded[0] != REQUIRED_TRT_MAJOR:
        missing.append(f"TensorRT {_v(loaded)} is not TensorRT {REQUIRED_TRT_MAJOR}.x")
    if not raw and not crash:
        missing.append("the TensorRT probe printed nothing")
    return {
        "available": not missing,
        "reason": "; ".join(missing),
        "linked_version": linked,
        "loaded_version": loaded,
        "gpus": raw.get("gpus", []),
        "tf_built_with_tensorrt": bool(raw.get("tf_built_with_tensorrt", False)),
        "libnvinfer": bool(raw.get("libnvinfer", False)),
        "libnvinfer_version": raw.get("libnvinfer_version"),
        "tensorflow_version": raw.get("tensorflow_version"),
    }


def require_tftrt() -> dict[str, Any]:
    """The probe dict, or ``UnavailableError`` (one line: what is missing and the way out)."""
    probe = probe_tensorrt()
    if not probe["available"]:
        raise UnavailableError(f"--optimize tftrt needs an NVIDIA GPU with TensorRT 8 and "
                               f"TensorFlow 2.17; missing here: {probe['reason']}: {GPU_IMAGE_HINT}")
    return probe


def _v(version: Any) -> str:
    return ".".join(str(x) for x in version)


# --------------------------------------------------------------------------- options


@dataclass
class TrtOptions:
    """The TF-TRT flags of ``export``, validated on construction (before any work).

    ``maximum_cached_engines`` stays 1: in dynamic-shape mode one engine per segment holds all
    profiles. ``calibration_preprocessing`` applies to a folder of images only (see
    ``load_calibration_data``)."""

    precision: str = "fp32"
    max_workspace_size_bytes: int = 1 << 30
    minimum_segment_size: int = 3
    batch_sizes: tuple[int, ...] = (1, 8, 100)
    calibration_data: str | None = None
    build_engines: bool = True
    maximum_cached_engines: int = 1
    dynamic_shape_profile_strategy: str = "Range+Optimal"
    calibration_preprocessing: str = "unit"
    calibration_limit: int = 512
    calibration_batch_size: int = 8
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.precision = str(self.precision).lower()
        if self.precision not in TRT_PRECISIONS:
            raise InputError(f"--precision {self.precision} is not a TF-TRT precision: use one of "
                             f"{', '.join(TRT_PRECISIONS)}")
        self.batch_sizes = tuple(sorted({int(b) for b in self.batch_sizes}))
        if not self.batch_sizes or self.batch_sizes[0] <= 0:
            raise InputError("--batch_sizes must list positive integers, e.g. --batch_sizes 1,8,100")
        for name, low in (("max_workspace_size_bytes", 1 << 20), ("maximum_cached_engines", 1),
                          ("calibration_limit", 1), ("calibration_batch_size", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(f"--{name} {value!r}: must be an integer >= {low}")
        if (isinstance(self.minimum_segment_size, bool) or not isinstance(self.minimum_segment_size, int)
                or (self.minimum_segment_size < 1 and self.minimum_segment_size != -1)):
            raise InputError(f"--minimum_segment_size {self.minimum_segment_size!r}: must be a "
                             "positive integer (default 3)")
        if self.dynamic_shape_profile_strategy not in PROFILE_STRATEGIES:
            raise InputError(f"--dynamic_shape_profile_strategy {self.dynamic_shape_profile_strategy}: "
                             f"use one of {', '.join(PROFILE_STRATEGIES)}")
        if self.calibration_preprocessing not in CALIBRATION_PREPROCESSING:
            raise InputError(f"--calibration_preprocessing {self.calibration_preprocessing}: use one "
                             f"of {', '.join(CALIBRATION_PREPROCESSING)}")
        self.build_engines = bool(self.build_engines)
        if self.precision == "int8":
            if not self.calibration_data:
                raise InputError("--precision int8 needs --calibration_data: an .npz of inputs "
                                 "(keys = input aliases) or a folder of images")
            if not self.build_engines:
                raise InputError("--precision int8 calibrates while the engines are built: drop "
                                 "--nobuild_engines")
        elif self.calibration_data:
            raise InputError(f"--calibration_data is only used with --precision int8 (got "
                             f"--precision {self.precision}): drop it or use --precision int8")
        if self.calibration_data and not Path(self.calibration_data).exists():
            raise InputError(f"--calibration_data {self.calibration_data}: no such file or directory")

    def as_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["batch_sizes"] = list(self.batch_sizes)
        d.pop("notes")
        return d


def converter_kwargs(src_dir: str | os.PathLike, opts: TrtOptions,
                     signature_key: str = "serving_default") -> dict[str, Any]:
    """``TrtGraphConverterV2`` keyword arguments for ``opts`` (dynamic shapes, one profile per
    batch size, calibration only for INT8; building at runtime stays allowed as a fallback for
    shapes outside every profile)."""
    return {
        "input_saved_model_dir": str(src_dir),
        "input_saved_model_tags": ["serve"],
        "input_saved_model_signature_key": signature_key,
        "use_dynamic_shape": True,
        "dynamic_shape_profile_strategy": opts.dynamic_shape_profile_strategy,
        "max_workspace_size_bytes": int(opts.max_workspace_size_bytes),
        "precision_mode": opts.precision.upper(),
        "minimum_segment_size": int(opts.minimum_segment_size),
        "maximum_cached_engines": int(opts.maximum_cached_engines),
        "use_calibration": opts.precision == "int8",
        "allow_build_at_runtime": True,
    }


# --------------------------------------------------------------------------- shapes and data


def plan_profiles(inputs: list[TensorInfo], batch_sizes: Any) -> list[dict[str, tuple[int, ...]]]:
    """One concrete shape per input for every batch size (what ``converter.build`` runs).

    TensorRT engines need every non-batch dimension known; a fixed batch dimension only allows
    that batch size."""
    sizes = sorted({int(b) for b in batch_sizes})
    if not sizes or sizes[0] <= 0:
        raise InputError("--batch_sizes must list positive integers, e.g. --batch_sizes 1,8,100")
    for t in inputs:
        if t.dtype in ("string", "object", "bytes"):
            raise GraphError(f"input '{t.alias}' ({t.tensor}) is a string tensor: TensorRT runs "
                             "numeric tensors only; decode in the client or use --optimize none")
        unknown = [i for i, d in enumerate(t.shape) if d is None and i > 0]
        if unknown:
            shown = "x".join("?" if d is None else str(d) for d in t.shape)
            raise GraphError(
                f"input '{t.alias}' ({t.tensor}) has shape {shown}: TF-TRT engines are built for "
                f"known shapes; re-export with --input_shapes {t.tensor.split(':')[0]}=?x... giving "
                "every dimension after the batch"
            )
        if t.shape and t.shape[0] is not None:
            bad = [b for b in sizes if b != t.shape[0]]
            if bad:
                raise InputError(f"--batch_sizes {','.join(map(str, sizes))}: input '{t.alias}' has "
                                 f"a fixed batch of {t.shape[0]}: use --batch_sizes {t.shape[0]}")
    plans = []
    for b in sizes:
        plans.append({t.alias: tuple([b, *[int(d) for d in t.shape[1:]]]) if t.shape else ()
                      for t in inputs})
    return plans


def profile_inputs(inputs: list[TensorInfo], plans: list[dict[str, tuple[int, ...]]],
                   seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Synthetic inputs with exactly the planned shapes (values only matter for INT8, which
    calibrates on real data instead)."""
    rng = np.random.default_rng(seed)
    out = []
    for plan in plans:
        batch = {}
        for t in inputs:
            dtype = np.dtype(t.dtype)
            shape = plan[t.alias]
            if dtype.kind == "f":
                batch[t.alias] = rng.uniform(0.0, 1.0, size=shape).astype(dtype)
            else:
                batch[t.alias] = np.zeros(shape, dtype=dtype)
        out.append(batch)
    return out


def load_calibration_data(path: str | os.PathLike, inputs: list[TensorInfo], limit: int = 512,
                          batch_size: int = 8, preprocessing: str = "unit"
                          ) -> list[dict[str, np.ndarray]]:
    """INT8 calibration batches (alias -> array), all of one shape as TF-TRT requires.

    - ``.npz``: one array per input, keyed by alias, tensor name (``input:0``) or node name
      (``input``); first axis = samples; the other axes must match the input's known dims.
    - a folder of images (jpg/png/bmp/gif, sorted by name, not recursive): only for a single
      rank-4 NHWC input with known H, W and 1 or 3 channels. Each image is decoded, resized
      (bilinear) to HxW and scaled by ``preprocessing``: ``unit`` -> [0, 1] (default),
      ``symmetric`` -> [-1, 1], ``raw`` -> [0, 255], ``standardize`` -> per-image zero mean /
      unit variance (FaceNet's ``prewhiten``). Calibration only helps if this matches what the
      model sees in production.

    At most ``limit`` samples are used, in batches of ``batch_size`` (smaller if there are fewer
    samples); a remainder that does not fill a batch is dropped."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"--calibration_data {p}: no such file or directory")
    if p.is_dir():
        samples = _calibration_images(p, inputs, limit, preprocessing)
    elif p.suffix == ".npz":
        samples = _calibration_npz(p, inputs, limit)
    else:
        raise InputError(f"--calibration_data {p}: expected an .npz file or a folder of images")
    n = len(next(iter(samples.values())))
    if n == 0:
        raise InputError(f"--calibration_data {p}: holds no samples")
    bs = min(batch_size, n)
    batches = []
    for start in range(0, n - bs + 1, bs):
        batches.append({k: v[start:start + bs] for k, v in samples.items()})
    return batches


def _calibration_npz(p: Path, inputs: list[TensorInfo], limit: int) -> dict[str, np.ndarray]:
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise InputError(f"--calibration_data {p}: not a readable .npz ({e})") from None
    out: dict[str, np.ndarray] = {}
    counts = set()
    for t in inputs:
        node = t.tensor.split(":")[0]
        key = next((k for k in (t.alias, t.tensor, node) if k in arrays), None)
        if key is None:
            raise InputError(f"--calibration_data {p}: no array for input '{t.alias}' (keys "
                             f"{', '.join(sorted(arrays)) or '-'}): name it {t.alias}")
        arr = np.asarray(arrays[key])
        if arr.ndim != len(t.shape):
            raise InputError(f"--calibration_data {p}: '{key}' has shape {list(arr.shape)}, input "
                             f"'{t.alias}' needs rank {len(t.shape)} (samples first)")
        for i, (got, want) in enumerate(zip(arr.shape, t.shape)):
            if i > 0 and want is not None and got != want:
                raise InputError(f"--calibration_data {p}: '{key}' has shape {list(arr.shape)}, "
                                 f"input '{t.alias}' needs {t.as_json()['shape']}")
        try:
            out[t.alias] = arr[:limit].astype(np.dtype(t.dtype), casting="same_kind")
        except TypeError:
            raise InputError(f"--calibration_data {p}: '{key}' is {arr.dtype}, input '{t.alias}' "
                             f"needs {t.dtype}") from None
        counts.add(len(out[t.alias]))
    if len(counts) > 1:
        raise InputError(f"--calibration_data {p}: inputs have different sample counts "
                         f"{sorted(counts)}: give every input the same number of samples")
    return out


def _calibration_images(p: Path, inputs: list[TensorInfo], limit: int, preprocessing: str
                        ) -> dict[str, np.ndarray]:
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise InputError(f"--calibration_data {p}: a folder of images only fits a model with one "
                         "NHWC image input; use an .npz keyed by input alias")
    t = inputs[0]
    _, h, w, c = t.shape
    if h is None or w is None or c not in (1, 3):
        raise InputError(f"--calibration_data {p}: input '{t.alias}' has shape "
                         f"{t.as_json()['shape']}; images need known height/width and 1 or 3 "
                         "channels: use an .npz")
    files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"--calibration_data {p}: no images ({', '.join(IMAGE_SUFFIXES)}) in the "
                         "folder")
    import tensorflow as tf

    images = []
    for f in files[:limit]:
        try:
            img = tf.io.decode_image(f.read_bytes(), channels=c, expand_animations=False)
        except (tf.errors.OpError, ValueError) as e:
            raise InputError(f"--calibration_data {f}: not a decodable image "
                             f"({str(e).splitlines()[0][:120]})") from None
        img = tf.image.resize(tf.cast(img, tf.float32), (h, w), method="bilinear").numpy()
        images.append(_preprocess(img, preprocessing))
    return {t.alias: np.stack(images).astype(np.dtype(t.dtype))}


def _preprocess(img: np.ndarray, mode: str) -> np.ndarray:
    if mode == "unit":
        return img / 255.0
    if mode == "symmetric":
        return img / 127.5 - 1.0
    if mode == "raw":
        return img
    std = max(float(img.std()), 1.0 / np.sqrt(img.size))
    return (img - img.mean()) / std


def calibration_batch(opts: TrtOptions) -> int:
    """The calibration batch: the largest planned batch size <= ``calibration_batch_size`` (the
    smallest planned one if none is), so calibration runs on a shape some profile was built for
    whatever the profile strategy."""
    fitting = [b for b in opts.batch_sizes if b <= opts.calibration_batch_size]
    return max(fitting) if fitting else min(opts.batch_sizes)


# --------------------------------------------------------------------------- graph facts


def count_segments(graph_def: Any) -> dict[str, Any]:
    """How much of the graph went to TensorRT: engines (TRTEngineOp nodes, top level and in
    library functions) and the nodes of their native segments (``<engine>_native_segment``)."""
    from builder.config import compat

    engines = [n for n in compat.iter_nodes(graph_def) if n.op == "TRTEngineOp"]
    names = {n.name.split("/")[-1] for n in engines}
    segment_nodes: dict[str, int] = {}
    for fn in graph_def.library.function:
        sig = fn.signature.name
        if sig.endswith("_native_segment"):
            engine = sig[: -len("_native_segment")]
            if engine in names or any(engine.endswith(x) for x in names):
                segment_nodes[engine] = len(fn.node_def)
    in_segments = sum(segment_nodes.values())
    outside = sum(1 for n in compat.iter_nodes(graph_def)) - sum(
        len(fn.node_def) for fn in graph_def.library.function if fn.signature.name.endswith("_native_segment"))
    outside -= len(engines)
    total = in_segments + max(outside, 0)
    return {
        "engines": len(engines),
        "nodes_in_engines": in_segments,
        "nodes_outside_engines": max(outside, 0),
        "converted_fraction": round(in_segments / total, 4) if total else 0.0,
        "per_engine": dict(sorted(segment_nodes.items())),
        "precision_modes": sorted({n.attr["precision_mode"].s.decode() for n in engines
                                   if "precision_mode" in n.attr}),
    }


def check_segments(counts: dict[str, Any], opts: TrtOptions) -> None:
    """Nothing went to TensorRT: the 'converted' model would be the TF graph plus overhead."""
    if counts["engines"] == 0:
        raise GraphError(
            "TF-TRT converted nothing (0 TRTEngineOp segments of >= "
            f"{opts.minimum_segment_size} supported nodes; tensorflow/tensorrt#250): export with "
            "--optimize none, or lower --minimum_segment_size"
        )


def saved_engine_files(saved_model_dir: str | os.PathLike) -> list[str]:
    """Serialised engines ``save()`` wrote (``assets/trt-serialized-engine.<name>``)."""
    assets = Path(saved_model_dir) / "assets"
    if not assets.is_dir():
        return []
    return sorted(f.name for f in assets.iterdir() if f.name.startswith("trt-serialized-engine."))


# --------------------------------------------------------------------------- conversion


def convert_saved_model(src_dir: str | os.PathLike, dst_dir: str | os.PathLike,
                        model_inputs: list[TensorInfo], opts: TrtOptions,
                        signature_key: str = "serving_default") -> dict[str, Any]:
    """Convert ``src_dir`` (the plain FP32 SavedModel) into ``dst_dir`` with TF-TRT; returns
    ``build_info["tensorrt"]``. ``dst_dir`` only appears when everything succeeded."""
    t0 = time.perf_counter()
    probe = require_tftrt()
    plans = plan_profiles(model_inputs, opts.batch_sizes)
    calibration = None
    if opts.precision == "int8":
        calibration = load_calibration_data(opts.calibration_data, model_inputs,
                                            limit=opts.calibration_limit,
                                            batch_size=calibration_batch(opts),
                                            preprocessing=opts.calibration_preprocessing)
    dst = Path(dst_dir)
    if dst.exists():
        raise InputError(f"{dst} exists: TF-TRT writes a new directory")

    from tensorflow.python.compiler.tensorrt import trt_convert as trt

    converter = trt.TrtGraphConverterV2(**converter_kwargs(src_dir, opts, signature_key))
    calib_fn = None
    if calibration is not None:
        def calib_fn():
            yield from calibration
    func = converter.convert(calibration_input_fn=calib_fn)
    counts = count_segments(func.graph.as_graph_def())
    check_segments(counts, opts)
    if opts.build_engines:
        shapes = profile_inputs(model_inputs, plans)

        def input_fn():
            yield from shapes

        converter.build(input_fn=input_fn)
    tmp = Path(tempfile.mkdtemp(prefix=".trt-", dir=dst.parent))
    try:
        converter.save(str(tmp / "model"))
        engines = saved_engine_files(tmp / "model")
        if opts.build_engines and not engines:
            raise GraphError("TF-TRT built no engine at export (no trt-serialized-engine.* in the "
                             "SavedModel): check the GPU memory and --max_workspace_size_bytes")
        os.rename(tmp / "model", dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    gpus = probe["gpus"]
    return {
        "linked_version": probe["linked_version"],
        "loaded_version": probe["loaded_version"],
        "gpu": gpus[0] if gpus else None,
        "gpus": gpus,
        "precision": opts.precision,
        "options": opts.as_json(),
        "converter": {k: v for k, v in converter_kwargs(src_dir, opts, signature_key).items()
                      if k != "input_saved_model_dir"},
        "profiles": [{k: list(v) for k, v in p.items()} for p in plans],
        "segments": counts,
        "engines_built": bool(opts.build_engines),
        "serialized_engines": len(engines),
        "calibration": None if calibration is None else {
            "source": str(Path(opts.calibration_data).resolve()),
            "batches": len(calibration),
            "batch_size": len(next(iter(calibration[0].values()))),
            "preprocessing": opts.calibration_preprocessing if Path(opts.calibration_data).is_dir()
            else "as stored in the .npz",
        },
        "parity_tolerance": dict(zip(("atol", "rtol", "min_cosine"), PARITY_TOLERANCES[opts.precision])),
        "seconds": round(time.perf_counter() - t0, 3),
    }


# --------------------------------------------------------------------------- restoring


def _serve_meta_graph(sm: Any, path: Path) -> Any:
    for mg in sm.meta_graphs:
        if "serve" in mg.meta_info_def.tags:
            return mg
    raise GraphError(f"{path}: no MetaGraph with tag 'serve'")


def restore_signature(dst_dir: str | os.PathLike, inputs: list[TensorInfo],
                      outputs: list[TensorInfo], signature_key: str = "serving_default",
                      src_dir: str | os.PathLike | None = None) -> list[str]:
    """Make the converted SavedModel's signature use the export's aliases again, with the
    predict method name; with ``src_dir``, also re-add the other signature keys of the source
    (``save()`` keeps only the converted one), pointing at the converted tensors. Returns what
    changed (empty if the converter kept everything)."""
    dst = Path(dst_dir)
    sm = artifact.read_saved_model(dst)
    mg = _serve_meta_graph(sm, dst)
    if signature_key not in mg.signature_def:
        raise GraphError(f"{dst}: the converted SavedModel has no signature '{signature_key}' "
                         f"(has {', '.join(mg.signature_def) or 'none'})")
    sig = mg.signature_def[signature_key]
    changes: list[str] = []
    for side, wanted, label in ((sig.inputs, inputs, "input"), (sig.outputs, outputs, "output")):
        changes += _rekey(side, wanted, label, dst)
    if sig.method_name != "tensorflow/serving/predict":
        changes.append(f"method_name {sig.method_name!r} -> 'tensorflow/serving/predict'")
        sig.method_name = "tensorflow/serving/predict"
    if src_dir is not None:
        src = Path(src_dir)
        src_mg = _serve_meta_graph(artifact.read_saved_model(src), src)
        for key, other in src_mg.signature_def.items():
            if key in mg.signature_def:
                continue
            if not (set(other.inputs) <= set(sig.inputs) and set(other.outputs) <= set(sig.outputs)):
                changes.append(f"signature '{key}' not restored: its keys are not in '{signature_key}'")
                continue
            new = mg.signature_def[key]
            new.method_name = other.method_name or sig.method_name
            for k in other.inputs:
                new.inputs[k].CopyFrom(sig.inputs[k])
            for k in other.outputs:
                new.outputs[k].CopyFrom(sig.outputs[k])
            changes.append(f"signature '{key}' restored")
    if changes:
        tmp = dst / ".saved_model.pb.tmp"
        tmp.write_bytes(sm.SerializeToString())
        os.replace(tmp, dst / "saved_model.pb")
    return changes


def _rekey(side: Any, wanted: list[TensorInfo], label: str, dst: Path) -> list[str]:
    """Rename signature entries to the wanted aliases; unmatched entries pair up by dtype and
    rank when that is unambiguous, else by sorted name."""
    import tensorflow as tf

    aliases = [t.alias for t in wanted]
    if set(side.keys()) == set(aliases):
        return []
    extra = sorted(k for k in side.keys() if k not in aliases)
    missing = [t for t in wanted if t.alias not in side]
    if len(extra) != len(missing):
        raise GraphError(f"{dst}: converted {label}s {sorted(side.keys())} do not match the "
                         f"export's {label}s {sorted(aliases)}")

    def key_of(info: Any) -> tuple[str, int]:
        rank = -1 if info.tensor_shape.unknown_rank else len(info.tensor_shape.dim)
        return tf.as_dtype(info.dtype).name, rank

    pairs: dict[str, str] = {}
    for t in missing:
        want = (np.dtype(t.dtype).name, len(t.shape))
        cands = [k for k in extra if k not in pairs.values() and key_of(side[k]) == want]
        if len(cands) == 1:
            pairs[t.alias] = cands[0]
    rest_t = [t for t in missing if t.alias not in pairs]
    rest_k = [k for k in extra if k not in pairs.values()]
    for t, k in zip(sorted(rest_t, key=lambda t: t.alias), sorted(rest_k)):
        pairs[t.alias] = k
    changes = []
    for alias, k in pairs.items():
        entry = type(side[k])()
        entry.CopyFrom(side[k])
        del side[k]
        side[alias].CopyFrom(entry)
        changes.append(f"{label} '{k}' -> '{alias}'")
    return changes


def restore_assets_extra(src_dir: str | os.PathLike, dst_dir: str | os.PathLike) -> list[str]:
    """Copy ``assets.extra`` (warmup, build_info, golden outputs) that ``save()`` left behind;
    files already present in ``dst_dir`` win. Returns the copied file names."""
    src = Path(src_dir) / "assets.extra"
    if not src.is_dir():
        return []
    dst = Path(dst_dir) / "assets.extra"
    dst.mkdir(parents=True, exist_ok=True)
    copied = []
    for f in sorted(src.iterdir()):
        if f.is_file() and not (dst / f.name).exists():
            shutil.copy2(f, dst / f.name)
            copied.append(f.name)
    return copied

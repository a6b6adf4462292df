"""Which serving builds can load an artefact, and which ops in it touch files or run Python.

TF Serving 2.18+ has no TensorRT, so graphs with TRT ops only load in
``tensorflow/serving:<=2.17.x-gpu`` built against the same TensorRT major version. In TF2 graphs
most nodes live inside ``graph_def.library`` functions, so every scan covers those too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

TRT_OPS = frozenset(
    {
        "TRTEngineOp",
        "CreateTRTResourceHandle",
        "InitializeTRTResource",
        "SerializeTRTResource",
        "GetCalibrationDataOp",
    }
)

# Ops that read/write files or run Python inside the server process. In an inference graph they
# usually mean the training input pipeline was not cut away.
UNSAFE_OPS = frozenset(
    {
        "ReadFile",
        "WriteFile",
        "MatchingFiles",
        "PyFunc",
        "PyFuncStateless",
        "EagerPyFunc",
        "ImmutableConst",
        "WholeFileReader",
        "WholeFileReaderV2",
        "TextLineReader",
        "TextLineReaderV2",
        "TFRecordReader",
        "TFRecordReaderV2",
        "FixedLengthRecordReader",
        "FixedLengthRecordReaderV2",
        "TFRecordDataset",
        "TFRecordDatasetV2",
        "TextLineDataset",
        "FixedLengthRecordDataset",
        "FixedLengthRecordDatasetV2",
        "Save",
        "SaveV2",
        "SaveSlices",
        "Restore",
        "RestoreV2",
        "RestoreSlice",
        "MergeV2Checkpoints",
        "WriteSummary",
        "CreateSummaryFileWriter",
        "DebugIdentity",
    }
)

LAST_TRT_SERVING = (2, 17)  # tensorflow/serving:2.17.x-gpu is the last image with TensorRT


def iter_nodes(graph_def: Any) -> Iterable[Any]:
    """All NodeDefs: top level and inside every library function."""
    yield from graph_def.node
    for fn in graph_def.library.function:
        yield from fn.node_def


def op_histogram(graph_def: Any) -> Counter:
    return Counter(n.op for n in iter_nodes(graph_def))


def trt_ops(graph_def: Any) -> set[str]:
    return {n.op for n in iter_nodes(graph_def)} & TRT_OPS


def unsafe_nodes(graph_def: Any, saver_nodes: Iterable[str] = ()) -> list[tuple[str, str]]:
    """(node name, op) of file/Python ops, skipping the SavedModel's own saver subgraph."""
    skip = set(saver_nodes)
    return sorted(
        (n.name, n.op)
        for n in iter_nodes(graph_def)
        if n.op in UNSAFE_OPS and n.name.split("/")[0] not in skip
    )


def parse_serving_tag(image: str) -> tuple[tuple[int, int] | None, bool]:
    """``tensorflow/serving:2.17.0-gpu`` -> ((2, 17), True). ``latest`` -> (None, gpu?)."""
    tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else "latest"
    gpu = "gpu" in tag
    head = tag.split("-", 1)[0]
    parts = head.split(".")
    try:
        return (int(parts[0]), int(parts[1])), gpu
    except (ValueError, IndexError):
        return None, gpu


def image_problem(has_trt: bool, image: str, *, missing_ops: Iterable[str] = (),
                  tensorrt_version: Iterable[int] | None = None,
                  bf16: str | None = None) -> str | None:
    """Why ``image`` cannot load an artefact (None if it can).

    ``missing_ops`` (from ``serving_missing_ops``) refuse every stock image; ``tensorrt_version``
    (the version the engines were built with, build_info["tensorrt"]["loaded_version"]) refuses
    a TensorRT-capable tag whose image ships another TensorRT major version; ``bf16``
    (``bf16_mode(build_info)``) refuses images that cannot serve a bf16 artefact."""
    missing = sorted(set(missing_ops))
    if missing:
        return (
            f"{image} (stock TF Serving) cannot run ops {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''}: they come from a custom op library or run "
            "Python; build a serving binary with that library, or re-export without those ops"
        )
    if not has_trt:
        return bf16_image_problem(bf16, image)
    version, gpu = parse_serving_tag(image)
    if not gpu:
        return (
            f"{image} is a CPU image, but the artefact contains TensorRT ops (TRTEngineOp): "
            "use tensorflow/serving:2.17.0-gpu, or export with --optimize none|cpu"
        )
    if version is None or version > LAST_TRT_SERVING:
        return (
            f"{image} cannot load TensorRT ops (TF Serving dropped TensorRT after 2.17: "
            "'Op type not registered CreateTRTResourceHandle'): use tensorflow/serving:2.17.0-gpu"
        )
    if tensorrt_version is not None:
        built = tuple(int(x) for x in tensorrt_version)
        shipped = serving_tensorrt_version(image)
        if built and shipped is not None and built[0] != shipped[0]:
            return (
                f"{image} ships TensorRT {_v(shipped)} but the engines were built with TensorRT "
                f"{_v(built)}: TF-TRT refuses another major version; use a tag with TensorRT "
                f"{built[0]}.x (tensorflow/serving:2.15-2.17 ship 8.6.1) or rebuild the engines in "
                "an image with the serving image's TensorRT"
            )
    return None


# TensorRT that the official tensorflow/serving:<tag>-gpu images install (libnvinfer in
# tensorflow_serving/tools/docker/Dockerfile.gpu at each release tag).
SERVING_GPU_TENSORRT: dict[tuple[int, int], tuple[int, int, int]] = {
    (2, 10): (7, 2, 2),
    (2, 11): (7, 2, 2),
    (2, 12): (8, 4, 3),
    (2, 13): (8, 4, 3),
    (2, 14): (8, 4, 3),
    (2, 15): (8, 6, 1),
    (2, 16): (8, 6, 1),
    (2, 17): (8, 6, 1),
}


def serving_tensorrt_version(image: str) -> tuple[int, int, int] | None:
    """The TensorRT an official ``tensorflow/serving`` GPU tag ships (None: unknown/CPU)."""
    version, gpu = parse_serving_tag(image)
    if not gpu or version is None:
        return None
    return SERVING_GPU_TENSORRT.get(version)


def image_warning(has_trt: bool, image: str, tensorrt_version: Iterable[int] | None,
                  bf16: str | None = None) -> str | None:
    """A pairing that loads but is slow: TensorRT engines are serialised for one exact TensorRT
    version; another minor/patch of the same major rebuilds them at the first request. A bf16
    artefact gets ``bf16_image_warning`` (oneDNN must be on where it runs)."""
    if bf16 is not None:
        return bf16_image_warning(bf16, image)
    if not has_trt or tensorrt_version is None or image_problem(True, image) is not None:
        return None
    built = tuple(int(x) for x in tensorrt_version)
    shipped = serving_tensorrt_version(image)
    if shipped is None or not built or built[0] != shipped[0] or built == shipped:
        return None
    return (
        f"{image} ships TensorRT {_v(shipped)}, the engines were built with {_v(built)}: they "
        "load, but TF-TRT rebuilds the engines at the first request of each shape"
    )


def _v(version: Iterable[int]) -> str:
    return ".".join(str(x) for x in version)


# Ops whose definitions TF Serving has but whose kernels live in TensorFlow's Python runtime:
# the model loads, then every request fails with "No OpKernel was registered".
SERVING_NO_KERNEL_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})


def unregistered_ops(graph_def: Any) -> set[str]:
    """Op types this TensorFlow (2.17, the same source as TF Serving 2.17) does not know, i.e.
    custom ops from extra libraries (tf-text, addons, ...). Ops that name a function in the
    graph's own library are calls, not missing ops."""
    from tensorflow.python.framework import op_def_registry

    functions = {f.signature.name for f in graph_def.library.function}
    return {
        op for op in {n.op for n in iter_nodes(graph_def)}
        if op not in functions and op_def_registry.get(op) is None
    }


def internal_ops(graph_def: Any) -> set[str]:
    """Registered but internal op types (leading underscore: ``_FusedConv2D``, ``_MklConv2D``).
    Grappler creates them at run time; saved in an artefact they tie it to one TF version."""
    functions = {f.signature.name for f in graph_def.library.function}
    return {op for op in {n.op for n in iter_nodes(graph_def)}
            if op.startswith("_") and op not in functions}


def serving_missing_ops(graph_def: Any) -> set[str]:
    """Ops stock TF Serving cannot run: unknown to its op registry, or without a kernel."""
    ops = {n.op for n in iter_nodes(graph_def)}
    return unregistered_ops(graph_def) | (ops & SERVING_NO_KERNEL_OPS)


def serving_report(graph_def: Any, tensorrt_version: Iterable[int] | None = None) -> dict[str, Any]:
    """What ``inspect``/``export`` print about which serving images can load a graph."""
    trt = sorted(trt_ops(graph_def))
    missing = sorted(serving_missing_ops(graph_def))
    bf16 = bf16_nodes(graph_def)
    if missing:
        images = "no stock tensorflow/serving image (missing ops: " + ", ".join(missing) + ")"
    elif bf16:
        images = (f"needs bf16 CPU: {bf16} nodes compute in bfloat16 (baked); any "
                  f"tensorflow/serving >= 2.17 CPU image on a CPU with AVX512-BF16/AMX (Arm: BF16) "
                  "and oneDNN on")
    else:
        images = serving_images_summary(bool(trt))
        if trt and tensorrt_version is not None:
            images += f"; engines built with TensorRT {_v(tensorrt_version)}"
    return {
        "trt_ops": trt,
        "missing_ops": missing,
        "internal_ops": sorted(internal_ops(graph_def)),
        "bf16_nodes": bf16,
        "serving_images": images,
    }


def bf16_nodes(graph_def: Any) -> int:
    """Nodes computing in bfloat16 (a baked bf16 graph; casts excluded)."""
    bf16 = DT_BFLOAT16
    return sum(1 for n in iter_nodes(graph_def)
               if n.op != "Cast" and "T" in n.attr and n.attr["T"].type == bf16)


def serving_images_summary(has_trt: bool) -> str:
    if has_trt:
        return (
            "tensorflow/serving:2.17.x-gpu (or older TensorRT-enabled GPU builds) with the same "
            "TensorRT major version the engines were built with; NOT CPU images, NOT >=2.18"
        )
    return "any tensorflow/serving image >= 2.17 (CPU or GPU)"


# --------------------------------------------------------------------------- CPU bf16 (issue 12)
#
# What the sources say (docs/optimizers.md "Which images run bf16"): TF Serving >= 2.15 has
# --mixed_precision=bfloat16 (model_servers/main.cc), which sets the session rewrite
# auto_mixed_precision_onednn_bfloat16 for every model (saved_model_bundle_factory.cc) unless
# --platform_config_file is given. The rewrite exists only where TensorFlow is built with
# INTEL_MKL and oneDNN is on at run time (grappler meta_optimizer.cc). TF's if_mkl() selects
# oneDNN for every x86-64 Linux build, with or without --config=mkl; --config=mkl adds
# ENABLE_MKL, which keeps oneDNN on regardless of the CPU. Without it (the stock
# --config=release images) oneDNN is on by default only on CPUs with AVX512_VNNI, AVX512_BF16,
# AVX_VNNI or AMX (tensorflow/core/util/port.cc), and TF_ENABLE_ONEDNN_OPTS=0 turns it off -
# then the rewrite silently does nothing.

DT_BFLOAT16 = 14  # tensorflow.DataType enum value (types.proto); no TensorFlow import needed
BF16_MIN_SERVING = (2, 15)  # first TF Serving release with --mixed_precision (main.cc, 2.15.0-rc0)
BF16_CPU_IMAGE = "tensorflow/serving:2.17.0"  # the base to name in refusals


def bf16_mode(build_info: dict[str, Any] | None) -> str | None:
    """``"profile"`` (FP32 artefact, wants ``--mixed_precision=bfloat16``), ``"baked"`` (bf16
    graph, needs a bf16 CPU) or None, from build_info (no TensorFlow needed)."""
    info = build_info or {}
    if info.get("precision") != "bf16":
        return None
    profile = info.get("serving_profile") or {}
    return "profile" if profile.get("mixed_precision") == "bfloat16" else "baked"


def _stock_serving(image: str) -> bool:
    """An official ``tensorflow/serving`` image (whose build flags the sources tell us)."""
    repo = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
    return repo in ("tensorflow/serving", "docker.io/tensorflow/serving")


def bf16_image_problem(mode: str | None, image: str) -> str | None:
    """Why ``image`` cannot serve a bf16 artefact as exported (None if it can, maybe with a
    warning from ``bf16_image_warning``)."""
    if mode is None:
        return None
    version, gpu = parse_serving_tag(image)
    stock = _stock_serving(image)
    if stock and gpu and mode == "baked":
        return (f"{image} is a GPU image, but the artefact is a baked bf16 graph for bf16 CPUs: "
                f"use {BF16_CPU_IMAGE} on a host with AVX512-BF16/AMX, or re-export without --bake "
                "(FP32 artefact + serving profile)")
    if stock and mode == "profile" and version is not None and version < BF16_MIN_SERVING:
        return (f"{image} predates TF Serving 2.15, which added --mixed_precision (the server "
                f"exits on an unknown flag): use {BF16_CPU_IMAGE}")
    return None


def bf16_image_warning(mode: str | None, image: str) -> str | None:
    """The loud warning for every bf16 pairing that loads but may not run bf16."""
    if mode is None or bf16_image_problem(mode, image):
        return None
    _, gpu = parse_serving_tag(image)
    stock = _stock_serving(image)
    if stock and gpu:
        return (f"{image} runs the model on the GPU: oneDNN's bf16 rewrite only converts CPU "
                f"nodes, so --mixed_precision=bfloat16 does nothing there; for the bf16 speed-up "
                f"use {BF16_CPU_IMAGE} on a host with AVX512-BF16/AMX")
    what = ("--mixed_precision=bfloat16 silently does nothing (FP32 speed)" if mode == "profile"
            else "the bf16 graph runs on Eigen's bf16 kernels (no faster than FP32)")
    base = ("the stock x86-64 image has oneDNN compiled in (--config=release) but switches it on "
            "only on CPUs with AVX512_VNNI/AVX512_BF16/AVX_VNNI/AMX" if stock else
            f"{image} is not a stock tensorflow/serving image: it needs a TF Serving >= 2.15 built "
            "for x86-64 Linux (oneDNN) or with --config=mkl_aarch64")
    return (f"bf16 needs oneDNN at run time: {base}; with TF_ENABLE_ONEDNN_OPTS=0 or on a CPU "
            f"without AVX512-BF16/AMX {what}; run it on such hosts (or build "
            "tools/docker/Dockerfile.mkl, --config=mkl, to keep oneDNN on everywhere)")


def shared_server_warning(models: Iterable[tuple[str, str | None]]) -> str | None:
    """``--mixed_precision`` is server-wide: every model the server loads gets the bf16
    rewrite. ``models`` = (label, ``bf16_mode``); fp32 models next to a profile are flagged,
    since their parity was never checked in bf16."""
    models = list(models)
    profile = [label for label, mode in models if mode == "profile"]
    plain = [label for label, mode in models if mode is None]
    if not (profile and plain):
        return None
    return (f"--mixed_precision=bfloat16 is server-wide: {', '.join(plain)} (exported fp32, "
            f"parity never checked in bf16) would run with the bf16 rewrite too, next to "
            f"{', '.join(profile)}; serve them from a separate server, or re-export them with "
            "--precision bf16")


def mixed_precision_advice(artifacts: Iterable[tuple[str, int, dict[str, Any] | None]],
                           image: str | None = None) -> tuple[list[str], list[str]]:
    """(server flags, lines to print) for the models one server will load (``config``): the
    flag a bf16 serving profile wants, the shared-server warning, and with ``image`` the bf16
    image warnings."""
    models = [(f"{name}/{version}", bf16_mode(info)) for name, version, info in artifacts]
    lines: list[str] = []
    for _, mode in models:
        warning = bf16_image_warning(mode, image) if image else None
        if warning and f"warning: {warning}" not in lines:
            lines.append(f"warning: {warning}")
    profile = [label for label, mode in models if mode == "profile"]
    if not profile:
        return [], lines
    flags = ["--mixed_precision=bfloat16"]
    shared = shared_server_warning(models)
    head = [f"this repository wants {flags[0]} (bf16 serving profile: {', '.join(profile)})"]
    return flags, head + ([f"warning: {shared}"] if shared else []) + lines


def bf16_summary(build_info: dict[str, Any] | None) -> str | None:
    """One line for ``inspect``: the profile flag or "needs bf16 CPU", and the measured gain."""
    mode = bf16_mode(build_info)
    if mode is None:
        return None
    info = (build_info or {}).get("bf16") or {}
    m = info.get("measured") or {}
    gain = (f"; measured {m['speedup']}x FP32 at batch {m['batch']}, batch-1 p50 "
            f"{m['batch1_p50_ratio']}x, on {m['cpu']}" if m.get("speedup") else "")
    if mode == "profile":
        return ("bf16 serving profile: FP32 artefact, serve with --mixed_precision=bfloat16 "
                f"(oneDNN's auto_mixed_precision_onednn_bfloat16){gain}")
    return f"bf16 baked: needs bf16 CPU (AVX512-BF16/AMX or Arm BF16, oneDNN on){gain}"

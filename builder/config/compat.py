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
                  tensorrt_version: Iterable[int] | None = None) -> str | None:
    """Why ``image`` cannot load an artefact (None if it can).

    ``missing_ops`` (from ``serving_missing_ops``) refuse every stock image; ``tensorrt_version``
    (the version the engines were built with, build_info["tensorrt"]["loaded_version"]) refuses
    a TensorRT-capable tag whose image ships another TensorRT major version."""
    missing = sorted(set(missing_ops))
    if missing:
        return (
            f"{image} (stock TF Serving) cannot run ops {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''}: they come from a custom op library or run "
            "Python; build a serving binary with that library, or re-export without those ops"
        )
    if not has_trt:
        return None
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


def image_warning(has_trt: bool, image: str, tensorrt_version: Iterable[int] | None) -> str | None:
    """A pairing that loads but is slow: TensorRT engines are serialised for one exact TensorRT
    version; another minor/patch of the same major rebuilds them at the first request."""
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
    if missing:
        images = "no stock tensorflow/serving image (missing ops: " + ", ".join(missing) + ")"
    else:
        images = serving_images_summary(bool(trt))
        if trt and tensorrt_version is not None:
            images += f"; engines built with TensorRT {_v(tensorrt_version)}"
    return {
        "trt_ops": trt,
        "missing_ops": missing,
        "internal_ops": sorted(internal_ops(graph_def)),
        "serving_images": images,
    }


def serving_images_summary(has_trt: bool) -> str:
    if has_trt:
        return (
            "tensorflow/serving:2.17.x-gpu (or older TensorRT-enabled GPU builds) with the same "
            "TensorRT major version the engines were built with; NOT CPU images, NOT >=2.18"
        )
    return "any tensorflow/serving image >= 2.17 (CPU or GPU)"

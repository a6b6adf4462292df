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


def image_problem(has_trt: bool, image: str) -> str | None:
    """Why ``image`` cannot load an artefact (None if it can)."""
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
    return None


def serving_images_summary(has_trt: bool) -> str:
    if has_trt:
        return (
            "tensorflow/serving:2.17.x-gpu (or older TensorRT-enabled GPU builds) with the same "
            "TensorRT major version the engines were built with; NOT CPU images, NOT >=2.18"
        )
    return "any tensorflow/serving image >= 2.17 (CPU or GPU)"

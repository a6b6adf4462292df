"""The one normalised model every input flow ends in (as tf2onnx does): a frozen GraphDef plus
named inputs/outputs, and a handle to run the *source* model for the parity check."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class TensorInfo:
    """One signature entry: the key clients use (alias) and the tensor in the graph."""

    alias: str  # signature key, e.g. "images"
    tensor: str  # tensor name in ``NormalizedModel.graph_def``, e.g. "input:0"
    dtype: str  # numpy dtype name, e.g. "float32"
    shape: list[int | None]  # None = unknown; batch dim (first) is None for dynamic batch

    def as_json(self) -> dict[str, Any]:
        return {
            "tensor": self.tensor,
            "dtype": self.dtype,
            "shape": [-1 if d is None else int(d) for d in self.shape],
        }


SourceRunner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass
class NormalizedModel:
    """Frozen, pruned GraphDef with its signature. ``run_source`` feeds the ORIGINAL model (as
    the user ran it: restored checkpoint session, imported frozen graph, loaded SavedModel,
    Keras call) with inputs keyed by alias and returns outputs keyed by alias."""

    graph_def: Any  # tf.compat.v1.GraphDef
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    flow: str
    source_path: str
    source_files: list[str]
    feeds: dict[str, Any] = field(default_factory=dict)  # fixed placeholders folded to consts
    run_source: SourceRunner | None = None
    close: Callable[[], None] = lambda: None
    notes: list[str] = field(default_factory=list)
    keepalive: Any = None  # objects the source runner needs alive (a loaded TF2 model, Keras model)

    def input(self, alias: str) -> TensorInfo:
        return next(t for t in self.inputs if t.alias == alias)

    def output(self, alias: str) -> TensorInfo:
        return next(t for t in self.outputs if t.alias == alias)

"""The pre-staging loader API, kept for callers outside the export (benchmark source
candidates, optimiser tests): ``load(path, flow, inputs=..., ...)`` -> a ``NormalizedModel`` of
one signature whose ``run_source`` runs the source model.

It stages the model in a temporary directory and freezes it when that loses nothing (tables,
assets, init ops keep the staged graph as ``graph_def`` instead); the directory goes on
``close()``. New code should use ``builder.load.load(LoadRequest, out)``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from builder.core.model import NormalizedModel, graph_facts
from builder.load.detect import FLOWS, detect_flow
from builder.load.graphs import dtype_name, first_line, parse_shape, shape_list
from builder.load.request import LoadRequest

__all__ = ["FLOWS", "detect_flow", "parse_shape", "load", "dtype_name", "first_line", "shape_list"]


def load(path: str | os.PathLike, flow: str | None = None, *, inputs: list[str] | None = None,
         outputs: list[str] | None = None, feeds: dict[str, str] | None = None,
         input_alias: dict[str, str] | None = None, output_alias: dict[str, str] | None = None,
         checkpoint: str | None = None, tags: list[str] | None = None, signature: str | None = None,
         clear_devices: bool = True, input_shapes: dict[str, list[int | None]] | None = None,
         ) -> NormalizedModel:
    """Load, stage and freeze; the caller must call ``.close()``."""
    from builder.load import freeze
    from builder.load import load as stage_model
    from builder.load.savedmodel import read_saved_model

    req = LoadRequest(path=Path(path), flow=flow or detect_flow(path), inputs=tuple(inputs or ()),
                      outputs=tuple(outputs or ()), feeds=dict(feeds or {}),
                      input_alias=dict(input_alias or {}), output_alias=dict(output_alias or {}),
                      input_shapes=dict(input_shapes or {}), tags=tuple(tags or ("serve",)),
                      signatures=(signature,) if signature else (), checkpoint=checkpoint,
                      clear_devices=clear_devices)
    tmp = Path(tempfile.mkdtemp(prefix="tfs-builder-load-"))
    staged = None
    try:
        staged = stage_model(req, tmp / "model")
        key = signature if signature in staged.signatures else (
            "serving_default" if "serving_default" in staged.signatures else next(iter(staged.signatures)))
        mg = read_saved_model(staged.path).meta_graphs[0]
        facts = graph_facts(mg, staged.path / "variables")
        freezable = facts.variables and not facts.freeze_blockers()
        gd = freeze.frozen_graph_def(staged) if freezable else mg.graph_def
        model = freeze.normalized(staged, gd, key)
    except BaseException:
        if staged is not None:
            staged.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    def close() -> None:
        staged.close()
        shutil.rmtree(tmp, ignore_errors=True)

    model.close = close
    model.keepalive = staged
    return model

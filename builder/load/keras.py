"""The keras flow: a ``.keras`` / ``.h5`` model written through Keras 3's own SavedModel export.

``keras.export.ExportArchive`` tracks the model's variables and lookup tables (StringLookup,
TextVectorization), so the result serves exactly what the Keras call computes. The one
``serving_default`` signature takes the model's inputs by their names and returns its outputs
by the model's output names. The source for parity is the Keras call (``training=False``).
With surgery flags the exported SavedModel is rewritten like any other (``savedmodel`` flow).
"""

from __future__ import annotations

import dataclasses
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from builder.core.errors import GraphError, InputError
from builder.core.model import StagedModel
from builder.load import savedmodel
from builder.load import signatures as sigs
from builder.load.detect import KERAS_SUFFIXES
from builder.load.graphs import first_line, tf_run_errors
from builder.load.request import LoadRequest


def load_model(path: Path) -> Any:
    import keras

    if path.is_dir() or path.suffix not in KERAS_SUFFIXES:
        raise InputError(f"--model {path}: --flow keras needs a .keras or .h5 file")
    try:
        return keras.models.load_model(str(path), compile=False)
    except (ValueError, OSError, TypeError, KeyError, AttributeError, zipfile.BadZipFile) as e:
        raise InputError(f"--model {path}: Keras model does not load: {first_line(e)}") from None


def serving_function(model: Any) -> tuple[Any, list[Any]]:
    """(fn, input specs): fn takes the inputs positionally and returns outputs by name."""
    import tensorflow as tf

    specs = []
    for i, t in enumerate(model.inputs):
        name = re.sub(r"[^A-Za-z0-9_]", "_", (getattr(t, "name", None) or f"input_{i}").split(":")[0])
        specs.append(tf.TensorSpec([None, *list(t.shape)[1:]], t.dtype, name=name))
    single = len(specs) == 1

    def serve(*args: Any) -> dict[str, Any]:
        out = model(args[0] if single else list(args), training=False)
        if isinstance(out, dict):
            return out
        flat = tf.nest.flatten(out)
        names = list(getattr(model, "output_names", None) or [])
        if len(names) != len(flat) or len(set(names)) != len(names):
            names = [f"output_{i}" for i in range(len(flat))] if len(flat) > 1 else ["output"]
        return dict(zip(names, flat))

    return serve, specs


def export(model: Any, out: Path) -> None:
    """Keras 3's ExportArchive with one endpoint, ``serving_default``."""
    import keras

    serve, specs = serving_function(model)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve, input_signature=specs)
    try:
        archive.write_out(str(out), verbose=False)
    except (*tf_run_errors(), NotImplementedError) as e:
        raise GraphError(f"the Keras model cannot be exported as a SavedModel: {first_line(e)}") from None


def load(req: LoadRequest, out: Path) -> StagedModel:
    model = load_model(req.path)
    if req.surgery:
        return _rewritten(req, model, out)
    export(model, out)
    sm = savedmodel.read_saved_model(out)
    mg = sm.meta_graphs[0]
    available = sigs.signatures_of(mg)
    keep = sigs.select(available, req.signatures, str(req.path))
    chosen, renamed = sigs.apply_aliases({k: available[k] for k in keep}, req.input_alias, req.output_alias)
    if any(renamed.values()):
        from builder.load import stage

        sigs.write_into(mg, chosen, renamed)
        stage.write_saved_model_pb(out, sm)
    serve, specs = serving_function(model)
    keys = [s.name for s in specs]

    def run(key: str, inputs: dict[str, Any]) -> dict[str, Any]:
        import tensorflow as tf

        back = renamed[key]
        by_old = {back.get(a, a): v for a, v in inputs.items()}
        res = serve(*[tf.constant(by_old[k]) for k in keys])
        return {t.alias: np.asarray(res[back.get(t.alias, t.alias)]) for t in chosen[key].outputs}

    return StagedModel(path=out, tags=["serve"], signatures=chosen, flow="keras",
                       source_path=str(req.path.resolve()), source_files=[str(req.path)],
                       run_source=run, keepalive=(model, serve),
                       notes=["written by keras.export.ExportArchive (variables and lookup tables tracked)"])


def _rewritten(req: LoadRequest, model: Any, out: Path) -> StagedModel:
    """Surgery on the Keras export: the export (as TF Serving loads it) is the parity source."""
    plain_dir = out.parent / (out.name + "-keras")
    export(model, plain_dir)
    sm = savedmodel.read_saved_model(plain_dir)
    source = sigs.ServingSession(plain_dir, ["serve"], f"--model {req.path} (Keras export)")
    try:
        staged = savedmodel.rewrite_saved_model(dataclasses.replace(req, tags=("serve",)), plain_dir,
                                                sm.meta_graphs[0], source, out, f"{req.path.name} (keras)")
    except BaseException:
        source.close()
        raise
    return dataclasses.replace(staged, flow="keras", source_path=str(req.path.resolve()),
                               source_files=[str(req.path)], keepalive=model)

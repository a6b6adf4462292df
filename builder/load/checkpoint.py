"""The checkpoint flow: a MetaGraph (``*.meta``) + a V2 checkpoint, as TF1 training leaves them.

The MetaGraph is cut and pruned by ``surgery`` (the training input pipeline falls away) and
staged with its saver: the checkpoint's own files become ``variables/`` unchanged, so the
MetaGraph's restore op reads them exactly as ``Saver.restore`` reads the checkpoint. The source
for parity is the checkpoint restored into a session, as the user runs it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from builder.core.errors import GraphError, InputError
from builder.core.model import TABLE_INIT_OPS, StagedModel
from builder.load import signatures as sigs
from builder.load import stage, surgery
from builder.load.graphs import first_line, source_session, tf_run_errors
from builder.load.request import LoadRequest


def find_checkpoint(path: Path, checkpoint: str | None) -> tuple[Path, str]:
    """(meta file, checkpoint prefix): ``--checkpoint`` wins, else the ``checkpoint`` state file,
    as FaceNet's ``get_model_filenames`` does. Absolute paths written on the training machine
    are retried relative to the model directory."""
    model_dir = path.parent if path.is_file() else path
    metas = [path] if path.suffix == ".meta" else sorted(model_dir.glob("*.meta"))
    prefix = _explicit_prefix(checkpoint, model_dir) if checkpoint else _state_prefix(model_dir)
    if not metas:
        raise InputError(f"--model {model_dir}: no *.meta file (MetaGraph) for the checkpoint flow")
    if len(metas) > 1:
        stem = Path(prefix).name.split(".ckpt")[0]
        matching = [m for m in metas if m.stem in (stem, Path(prefix).name)]
        if len(matching) != 1:
            raise InputError(f"--model {model_dir}: {len(metas)} .meta files and none matches checkpoint "
                             f"{Path(prefix).name}: point --model at the .meta file to use")
        metas = matching
    return metas[0], prefix


def _explicit_prefix(checkpoint: str, model_dir: Path) -> str:
    if Path(checkpoint + ".index").exists() or Path(checkpoint).exists():
        return checkpoint
    alt = model_dir / Path(checkpoint).name
    if Path(str(alt) + ".index").exists():
        return str(alt)
    raise InputError(f"--checkpoint {checkpoint}: no {checkpoint}.index; pass the prefix"
                     " (e.g. DIR/model-20180402-114759.ckpt-275)")


def _state_prefix(model_dir: Path) -> str:
    import tensorflow as tf

    state = tf.train.get_checkpoint_state(str(model_dir))
    if state is None or not state.model_checkpoint_path:
        indexes = sorted(model_dir.glob("*.index"))
        if len(indexes) == 1:
            return str(indexes[0])[: -len(".index")]
        raise InputError(f"--model {model_dir}: no 'checkpoint' state file naming the latest checkpoint"
                         f" ({len(indexes)} *.index files): pass --checkpoint PREFIX")
    prefix = state.model_checkpoint_path
    local = model_dir / Path(prefix).name
    if not os.path.isabs(prefix) or Path(str(local) + ".index").exists():
        # the copy in --model's directory wins over an absolute path from training
        prefix = str(local if os.path.isabs(prefix) else model_dir / prefix)
    if Path(prefix + ".index").exists():
        return prefix
    if Path(str(local) + ".index").exists():
        return str(local)
    raise InputError(f"{model_dir / 'checkpoint'} names {state.model_checkpoint_path}, which has "
                     "no .index file here: pass --checkpoint PREFIX")


def restore(meta: Path, prefix: str, clear_devices: bool) -> tuple[Any, Any]:
    """(session, saver): the MetaGraph imported and the checkpoint restored, as the user runs it."""
    import tensorflow as tf

    graph = tf.Graph()
    sess = source_session(graph)
    try:
        with graph.as_default():
            try:
                saver = tf.compat.v1.train.import_meta_graph(str(meta), clear_devices=clear_devices)
            except (*tf_run_errors(), OSError, KeyError) as e:  # protobuf/TF raise many kinds for bad files
                raise InputError(f"{meta}: not a readable MetaGraph: {first_line(e)}") from None
            if saver is None:
                raise InputError(f"{meta}: the MetaGraph has no variables/saver to restore")
            try:
                saver.restore(sess, prefix)
            except (tf.errors.OpError, ValueError) as e:
                raise InputError(f"checkpoint {prefix}: cannot restore it into {meta.name}: "
                                 f"{first_line(e)}") from None
            init_tables(sess)
    except BaseException:
        sess.close()
        raise
    return sess, saver


def init_tables(sess: Any) -> None:
    """Fill the graph's lookup tables, as the user's session would before running it."""
    import tensorflow as tf

    g = sess.graph
    inits = list(g.get_collection(tf.compat.v1.GraphKeys.TABLE_INITIALIZERS)) or [
        op for op in g.get_operations() if op.type in TABLE_INIT_OPS]
    if not inits:
        return
    try:
        sess.run(inits)
    except tf_run_errors() as e:
        raise GraphError(f"the graph's lookup tables cannot be filled: {first_line(e)}") from None


def load(req: LoadRequest, out: Path) -> StagedModel:
    import tensorflow as tf

    meta, prefix = find_checkpoint(req.path, req.checkpoint)
    sess, saver = restore(meta, prefix, req.clear_devices)
    try:
        if saver.saver_def.version != tf.compat.v1.train.SaverDef.V2:
            raise InputError(f"checkpoint {prefix}: a V1 checkpoint; re-save it as V2 "
                             "(tf.compat.v1.train.Saver(write_version=tf.compat.v1.train.SaverDef.V2))")
        with sess.graph.as_default():
            mg = tf.compat.v1.train.export_meta_graph(saver_def=saver.saver_def,
                                                      clear_devices=req.clear_devices)
        mg.meta_info_def.ClearField("tags")
        mg.meta_info_def.tags.extend(req.tags)
        return _stage(req, mg, meta, prefix, sess, out)
    except BaseException:
        sess.close()
        raise


def _stage(req: LoadRequest, mg: Any, meta: Path, prefix: str, sess: Any, out: Path) -> StagedModel:
    import tensorflow as tf

    label = meta.name
    plan = surgery.plan_io(req, mg.graph_def, label)
    key = req.signatures[0] if req.signatures else "serving_default"
    plain = dataclasses.replace(req, input_alias={}, output_alias={})
    result = surgery.rewrite(mg, plain, plan, label=label, source_graph=sess.graph, key=key)
    chosen, renamed = sigs.apply_aliases({key: result.signature}, req.input_alias, req.output_alias)
    sigs.write_into(result.meta_graph, chosen, renamed)
    counts = stage.stage_checkpoint(prefix, out)
    stage.stage_asset_filepaths(result.meta_graph, out)
    stage.write_saved_model_pb(out, stage.saved_model_of(result.meta_graph))
    runner = sigs.tensor_runner(sess, chosen, renamed, {key: result.source_map}, result.feeds)
    files = [meta, *(Path(p) for p in tf.io.gfile.glob(prefix + ".*"))]
    state = meta.parent / "checkpoint"
    return StagedModel(path=out, tags=list(req.tags), signatures=chosen, flow="checkpoint",
                       source_path=str(req.path.resolve()),
                       source_files=[str(p) for p in sorted(set(files + ([state] if state.exists() else [])))],
                       run_source=runner, close_source=sess.close, feeds=result.feeds,
                       surgery=result.steps,
                       notes=[f"variables: the checkpoint's {sum(counts.values())} file(s), "
                              f"{counts['hard-linked']} hard-linked, {counts['copied']} copied"])

"""Writing the staged SavedModel: the one place that puts model files into the staging directory.

Variables and assets are hard-linked from the source when it lies on the same filesystem (a
2 GB variable costs no copy and no RAM), copied otherwise. Files the export writes itself
(``saved_model.pb`` when edited, everything in ``assets.extra/``) are always fresh copies, so
writing them can never change the user's source through a shared inode.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

from builder.core.errors import GraphError, InputError

SAVED_MODEL_PB = "saved_model.pb"
# directories whose files never get written after staging: safe to share an inode with the source
_LINKABLE = ("variables", "assets")


def link_or_copy(src: Path, dst: Path) -> str:
    """Hard-link ``src`` to ``dst`` (same filesystem), else copy; returns which happened."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
        return "hard-linked"
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.ENOTSUP,
                           errno.EOPNOTSUPP):
            raise
    shutil.copyfile(src, dst)
    return "copied"


def stage_saved_model_files(src: Path, dst: Path, *, skip_pb: bool = False) -> dict[str, int]:
    """Bring every file of the source SavedModel ``src`` into ``dst``: variables and assets
    linked (or copied), the rest copied. ``skip_pb`` leaves saved_model.pb out (the caller
    writes an edited one). Returns ``{"hard-linked": n, "copied": m}`` counts."""
    counts = {"hard-linked": 0, "copied": 0}
    for f in sorted(src.rglob("*")):
        rel = f.relative_to(src)
        if f.is_dir() or (skip_pb and rel.as_posix() in (SAVED_MODEL_PB, "saved_model.pbtxt",
                                                          "fingerprint.pb")):
            continue
        target = dst / rel
        if rel.parts[0] in _LINKABLE:
            counts[link_or_copy(f, target)] += 1
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)
            counts["copied"] += 1
    (dst / "variables").mkdir(parents=True, exist_ok=True)
    return counts


def stage_checkpoint(prefix: str, dst: Path) -> dict[str, int]:
    """A V2 checkpoint (``PREFIX.index`` + ``PREFIX.data-K-of-N``) IS a SavedModel's variables
    directory under another prefix: link/copy its files as ``variables/variables.*``."""
    counts = {"hard-linked": 0, "copied": 0}
    base = Path(prefix)
    index = Path(prefix + ".index")
    if not index.is_file():
        raise InputError(f"checkpoint {prefix}: no {index.name} (only V2 checkpoints are supported: "
                         "re-save it with tf.compat.v1.train.Saver())")
    vdir = dst / "variables"
    counts[link_or_copy(index, vdir / "variables.index")] += 1
    shards = sorted(base.parent.glob(base.name + ".data-*-of-*"))
    if not shards:
        raise InputError(f"checkpoint {prefix}: no {base.name}.data-* file beside its index")
    for shard in shards:
        counts[link_or_copy(shard, vdir / ("variables" + shard.name[len(base.name):]))] += 1
    return counts


def write_saved_model_pb(dst: Path, saved_model: Any) -> None:
    """Serialise the SavedModel proto to ``dst/saved_model.pb`` (a fresh file, never a link)."""
    try:
        data = saved_model.SerializeToString()
    except ValueError as e:  # protobuf refuses messages over 2 GiB
        raise GraphError(f"the SavedModel graph is too large to write ({e}): a GraphDef must stay "
                         "under 2 GiB; keep big weights in variables (export without --freeze)") from None
    dst.mkdir(parents=True, exist_ok=True)
    path = dst / SAVED_MODEL_PB
    if path.exists():
        path.unlink()
    with open(path, "wb") as f:
        f.write(data)
    (dst / "variables").mkdir(exist_ok=True)
    fingerprint = dst / "fingerprint.pb"
    if fingerprint.exists():  # it hashes the old saved_model.pb
        fingerprint.unlink()


def saved_model_of(meta_graph: Any) -> Any:
    """A SavedModel proto holding exactly one MetaGraph."""
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel(saved_model_schema_version=1)
    sm.meta_graphs.add().CopyFrom(meta_graph)
    return sm


def stage_asset_filepaths(meta_graph: Any, out: Path) -> list[str]:
    """A TF1 graph that names files in its ``asset_filepaths`` collection (vocabularies read by
    table initialisers) gets them copied into ``assets/`` with AssetFileDefs, as
    SavedModelBuilder does: the loader then feeds the copied file's path at load."""
    import tensorflow as tf

    from builder.core.model import asset_defs, node_name, tensor_name

    col = meta_graph.collection_def.get("asset_filepaths")
    if col is None or asset_defs(meta_graph):
        return []
    nodes = {n.name: n for n in meta_graph.graph_def.node}
    staged = []
    for t in dict.fromkeys(tensor_name(v) for v in col.node_list.value):
        node = nodes.get(node_name(t))
        if node is None or node.op != "Const":
            continue
        path = Path(tf.make_ndarray(node.attr["value"].tensor).item().decode())
        if not path.is_file():
            raise InputError(f"the graph's asset {path} (tensor {t}) does not exist here: put the file "
                             "at that path (or export the model as a SavedModel with its assets)")
        if not (out / "assets" / path.name).exists():
            link_or_copy(path, out / "assets" / path.name)
        a = meta_graph.asset_file_def.add()
        a.filename, a.tensor_info.name = path.name, tensor_name(t)
        staged.append(path.name)
    return staged

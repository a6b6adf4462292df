"""The frozen flow: a GraphDef of constants in a binary ``.pb`` or text ``.pbtxt`` file.

It becomes a MetaGraph without variables, cut and pruned by ``surgery``; lookup tables in it
(their initialisers are graph nodes) get a main op that fills them at load. The source for
parity is the file imported into a session.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from builder.core.errors import GraphError, InputError
from builder.core.model import VARIABLE_OPS, StagedModel
from builder.load import signatures as sigs
from builder.load import stage, surgery
from builder.load.checkpoint import init_tables
from builder.load.graphs import imported_graph, read_graph_def, source_session
from builder.load.request import LoadRequest


def load(req: LoadRequest, out: Path) -> StagedModel:
    from tensorflow.core.protobuf import meta_graph_pb2

    path = req.path
    if path.is_dir():
        raise InputError(f"--model {path}: --flow frozen needs a .pb/.pbtxt file, not a directory")
    graph_def = read_graph_def(path)
    variables = [n.name for n in graph_def.node if n.op in VARIABLE_OPS]
    if variables:
        raise GraphError(f"--model {path}: not frozen, it has variables (e.g. {variables[0]}): use the "
                         "checkpoint flow with its .meta/checkpoint, or freeze it first")
    sess = source_session(imported_graph(graph_def, path.name))
    try:
        init_tables(sess)
        mg = meta_graph_pb2.MetaGraphDef()
        mg.graph_def.CopyFrom(graph_def)
        mg.meta_info_def.tags.extend(req.tags)
        plan = surgery.plan_io(req, graph_def, path.name)
        key = req.signatures[0] if req.signatures else "serving_default"
        plain = dataclasses.replace(req, input_alias={}, output_alias={})
        result = surgery.rewrite(mg, plain, plan, label=path.name, source_graph=sess.graph, key=key)
        chosen, renamed = sigs.apply_aliases({key: result.signature}, req.input_alias, req.output_alias)
        sigs.write_into(result.meta_graph, chosen, renamed)
        stage.write_saved_model_pb(out, stage.saved_model_of(result.meta_graph))
        runner = sigs.tensor_runner(sess, chosen, renamed, {key: result.source_map}, result.feeds)
        return StagedModel(path=out, tags=list(req.tags), signatures=chosen, flow="frozen",
                           source_path=str(path.resolve()), source_files=[str(path)],
                           run_source=runner, close_source=sess.close, feeds=result.feeds,
                           surgery=result.steps)
    except BaseException:
        sess.close()
        raise

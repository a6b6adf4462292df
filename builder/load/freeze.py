"""Freezing a staged SavedModel: variables become constants, every kept signature stays.

Freezing is never the container, only a step an optimiser needs (``--optimize cpu|tftrt``),
the user asks for (``--freeze``), or the export takes by itself when the graph holds nothing
freezing would lose (no tables, assets, init op or other resources, under 2 GiB of variables)
and the graph was rebuilt by surgery anyway: constants let the server's load-time Grappler fold
batch norms and casts into the weights, measured faster on FaceNet (README, "What survives an
export"). ``decide`` says which and why; the reason goes into build_info.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.core.errors import GraphError, InputError
from builder.core.model import (
    INIT_OP_SIGNATURE,
    GraphFacts,
    NormalizedModel,
    Signature,
    StagedModel,
    node_name,
)
from builder.load import stage
from builder.load.graphs import first_line, tf_run_errors
from builder.load.signatures import ServingSession
from builder.load.surgery import clear_devices, signature_def

OPTIMIZERS_THAT_FREEZE = ("cpu", "tftrt")


@dataclass
class FreezeDecision:
    frozen: bool
    reason: str
    decided_by: str  # "auto", "--freeze", "--nofreeze", "--optimize cpu", ...

    def as_json(self) -> dict[str, Any]:
        return {"frozen": self.frozen, "reason": self.reason, "decided_by": self.decided_by}


def decide(staged: StagedModel, facts: GraphFacts, freeze: bool | None, optimize: str) -> FreezeDecision:
    """Whether to freeze, from the flags and from what the graph holds."""
    blockers = facts.freeze_blockers()
    lost = "; ".join(blockers)
    if optimize in OPTIMIZERS_THAT_FREEZE:
        if freeze is False:
            raise InputError(f"--optimize {optimize} works on a frozen graph: drop --nofreeze, or use "
                             "--optimize none")
        if blockers:
            raise GraphError(f"--optimize {optimize} needs a frozen graph, and freezing would lose {lost}: "
                             "export with --optimize none (the default keeps them)")
        return FreezeDecision(True, f"--optimize {optimize} works on a frozen graph", f"--optimize {optimize}")
    if freeze is True:
        if blockers:
            raise GraphError(f"--freeze would lose {lost}: export without --freeze (the default keeps them)")
        return FreezeDecision(True, "asked for", "--freeze")
    if freeze is False:
        return FreezeDecision(False, "asked for", "--nofreeze")
    if not staged.surgery:
        return FreezeDecision(False, "the source SavedModel is kept as it is", "auto")
    if blockers:
        return FreezeDecision(False, f"the graph holds {lost}", "auto")
    if facts.variables == 0:
        return FreezeDecision(True, "the graph has no variables (already constants)", "auto")
    return FreezeDecision(True, f"the graph holds only variables ({facts.variable_bytes / 2**20:.1f} MiB, "
                          "no tables, assets or init op): constants let load-time Grappler fold them "
                          "(faster batch-1 latency, measured on FaceNet)", "auto")


def frozen_graph_def(staged: StagedModel) -> Any:
    """Load the staged SavedModel as TF Serving does and turn its variables into constants;
    the GraphDef keeps every signature's tensors."""
    import tensorflow as tf

    session = ServingSession(staged.path, staged.tags, f"{staged.path.name} (staged export)")
    try:
        names = sorted({node_name(t.tensor) for s in staged.signatures.values()
                        for t in [*s.inputs, *s.outputs]})
        graph_def = session.graph.as_graph_def()
        with session.graph.as_default():
            try:
                gd = tf.compat.v1.graph_util.convert_variables_to_constants(session.session, graph_def, names)
            except (*tf_run_errors(), KeyError, AssertionError) as e:
                raise GraphError(f"freezing the export failed: {first_line(e)}; export without "
                                 "--freeze/--optimize (the default keeps the variables)") from None
    finally:
        session.close()
    fix_ref_ops(gd)
    clear_devices(gd)
    return gd


def write_frozen(out: Path, graph_def: Any, signatures: dict[str, Signature], tags: list[str]) -> None:
    """Replace the staged SavedModel at ``out`` by a frozen one: no saver, no variables files."""
    import tensorflow as tf
    from tensorflow.core.protobuf import meta_graph_pb2

    mg = meta_graph_pb2.MetaGraphDef()
    mg.graph_def.CopyFrom(graph_def)
    mg.meta_info_def.tags.extend(tags)
    mg.meta_info_def.tensorflow_version = tf.__version__
    for key, sig in signatures.items():
        if key != INIT_OP_SIGNATURE:
            mg.signature_def[key].CopyFrom(signature_def(sig))
    variables = out / "variables"
    for f in variables.glob("*") if variables.is_dir() else []:
        f.unlink()
    stage.write_saved_model_pb(out, stage.saved_model_of(mg))


def normalized(staged: StagedModel, graph_def: Any, key: str) -> NormalizedModel:
    """The frozen single-signature view ``--optimize cpu|tftrt`` work on."""
    sig = staged.signatures[key]
    return NormalizedModel(graph_def=graph_def, inputs=list(sig.inputs), outputs=list(sig.outputs),
                           flow=staged.flow, source_path=staged.source_path,
                           source_files=list(staged.source_files), feeds=dict(staged.feeds),
                           run_source=lambda inputs: staged.run_source(key, inputs),
                           notes=list(staged.notes))


_REF_OP_FIXES = {"RefSwitch": "Switch", "RefMerge": "Merge", "RefIdentity": "Identity", "RefEnter": "Enter",
                 "RefExit": "Exit", "RefNextIteration": "NextIteration", "AssignSub": "Sub",
                 "AssignAdd": "AddV2"}


def fix_ref_ops(graph_def: Any) -> int:
    """Rewrite ref-typed ops left by freezing a TF1 training graph (batch-norm moving-average
    updates inside ``phase_train`` conditionals): once variables are constants, ``RefSwitch``
    and ``AssignSub`` fail at import with "expected float_ref". FaceNet's freeze_graph.py does
    the same rewrite. Returns the number of nodes changed."""
    changed = 0
    for n in graph_def.node:
        if n.op in _REF_OP_FIXES:
            n.op = _REF_OP_FIXES[n.op]
        elif n.op == "Assign":  # the assigned value flows on; the variable is a constant now
            n.op = "Identity"
            data = [i for i in n.input if not i.startswith("^")]
            ctrl = [i for i in n.input if i.startswith("^")]
            del n.input[:]
            n.input.extend([data[1], *ctrl] if len(data) > 1 else [*data, *ctrl])
        else:
            continue
        for attr in ("use_locking", "validate_shape"):
            if attr in n.attr:
                del n.attr[attr]
        changed += 1
    return changed

"""Graph surgery on a MetaGraph, in named steps: fold feeds, cut at inputs, prune, sign.

The MetaGraph keeps its variables as variables: surgery edits only the nodes between the inputs
and the outputs. Everything a server needs besides the signatures survives the pruning (the
saver's restore op, the init ops, asset tensors, table initialisers), so the variables files of
the source restore into the result unchanged and lookup tables keep working.

Steps, in order (``rewrite`` runs them; each is a function of its own):

1. ``plan_io``: the inputs/outputs to serve, from the flags or the signature being rewritten;
2. ``check_nodes``: every named node exists (errors name the flag and suggest close names);
3. ``tensor_meta``: dtype/shape of every tensor cut at, fed or served, from the source graph;
4. ``fold_feeds``: fixed placeholders (``--feed phase_train=false``) become constants;
5. ``cut_inputs``: a placeholder takes the place of whatever produced each input tensor, so
   input pipelines (queues, file readers, PyFunc) fall away;
6. ``prune``: only what the signatures, the saver and the init ops need stays;
7. ``check_fed``: a placeholder the outputs still need must be an input;
8. ``build_signature``: keys from ``--input_alias``/``--output_alias`` (node, tensor or
   signature key), shapes inferred on the result;
9. ``tidy_collections`` and ``add_table_init_op``: collections may only name surviving nodes,
   and a graph that fills tables gets a main op that does it at load (as SavedModelBuilder's
   ``main_op=tables_initializer()`` would).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from builder.core.errors import GraphError, InputError
from builder.core.model import (
    INIT_OP_SIGNATURE,
    LEGACY_INIT_OP_KEY,
    MAIN_OP_KEY,
    PREDICT,
    TABLE_INIT_OPS,
    Signature,
    TensorInfo,
    asset_defs,
    fan_in,
    node_name,
    reachable_functions,
    tensor_name,
)
from builder.load.graphs import (
    PLACEHOLDER_OPS,
    default_alias,
    dtype_name,
    imported_graph,
    no_node_error,
    placeholder_names,
    shape_list,
)
from builder.load.request import LoadRequest

_ALIAS_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-/]*$")
_VARIABLE_COLLECTIONS = ("variables", "trainable_variables", "local_variables", "model_variables",
                         "moving_average_variables", "global_step")
_NODE_COLLECTIONS = (MAIN_OP_KEY, LEGACY_INIT_OP_KEY, "table_initializer", "asset_filepaths",
                     "saved_model_assets", "init_op", "local_init_op", "ready_op", "ready_for_local_init_op")


@dataclass
class IOPlan:
    """What the rewritten signature serves: tensors in the source graph, and default keys."""

    inputs: list[str]
    outputs: list[str]
    input_keys: dict[str, str] = field(default_factory=dict)  # tensor -> key from the signature
    output_keys: dict[str, str] = field(default_factory=dict)


@dataclass
class SurgeryResult:
    meta_graph: Any
    signature: Signature
    feeds: dict[str, Any]  # node -> JSON-able value folded into the graph
    source_map: dict[str, str]  # alias -> tensor in the SOURCE graph (for parity)
    steps: list[str]


# --------------------------------------------------------------------------- the whole rewrite


def rewrite(meta_graph: Any, req: LoadRequest, plan: IOPlan, *, label: str, source_graph: Any,
            key: str = "serving_default", method_name: str = PREDICT,
            keep_signatures: dict[str, Signature] | None = None) -> SurgeryResult:
    """Apply the request's surgery to a COPY of ``meta_graph``; ``keep_signatures`` are other
    signatures that must survive unchanged (minus inputs folded by ``--feed``)."""
    mg = type(meta_graph)()
    mg.CopyFrom(meta_graph)
    gd = mg.graph_def
    steps: list[str] = []
    check_nodes(gd, plan, req.feeds, label)
    meta = tensor_meta(source_graph, [*plan.inputs, *plan.outputs, *req.feeds], label)
    feeds = fold_feeds(gd, req.feeds, meta)
    if feeds:
        steps.append(f"folded {', '.join(f'{k}={json.dumps(v)}' for k, v in feeds.items())}")
    cut = cut_inputs(gd, plan.inputs, meta, req.input_shapes)
    steps += [f"cut at {_shown(t)}" for t, new in cut.items() if t in _cut_inside(meta_graph, cut)]
    clear_devices(gd)
    others = {k: _without_fed(mg.signature_def[k], feeds) for k in (keep_signatures or {})}
    roots = [*plan.outputs, *cut.values(), *serving_roots(mg),
             *(t.name for s in others.values() for t in [*s.inputs.values(), *s.outputs.values()])]
    before = len(gd.node)
    prune(mg, roots)
    steps.append(f"pruned {before} -> {len(gd.node)} nodes")
    check_fed(gd, plan, cut, label)
    graph = imported_graph(gd, f"{label} (after surgery)")
    sig = build_signature(graph, plan, cut, req, key, method_name)
    write_signatures(mg, sig, others)
    tidy_collections(mg)
    if add_table_init_op(mg):
        steps.append("added a main op that initialises the lookup tables")
    source_map = {t.alias: src for t, src in zip(sig.inputs, plan.inputs)}
    source_map.update({t.alias: src for t, src in zip(sig.outputs, plan.outputs)})
    return SurgeryResult(mg, sig, feeds, source_map, steps)


def _cut_inside(meta_graph: Any, cut: dict[str, str]) -> set[str]:
    """Inputs that were not placeholders of the source (the graph was cut there)."""
    ops = {n.name: n.op for n in meta_graph.graph_def.node}
    return {t for t in cut if ops.get(node_name(t)) not in PLACEHOLDER_OPS}


def _without_fed(sig_def: Any, feeds: dict[str, Any]) -> Any:
    out = type(sig_def)()
    out.CopyFrom(sig_def)
    for k in [k for k, v in out.inputs.items() if node_name(v.name) in feeds]:
        del out.inputs[k]
    return out


# --------------------------------------------------------------------------- 1. plan


def plan_io(req: LoadRequest, graph_def: Any, label: str, base: Signature | None = None) -> IOPlan:
    """Inputs/outputs to serve. With a base signature (SavedModel flows) its entries are the
    defaults and ``--inputs``/``--outputs`` may name its keys; without one, ``--outputs`` is
    required and the only unfed placeholder is the default input."""
    fed = {node_name(f) for f in req.feeds}
    keys_in = {t.alias: tensor_name(t.tensor) for t in (base.inputs if base else [])}
    keys_out = {t.alias: tensor_name(t.tensor) for t in (base.outputs if base else [])}
    if req.inputs:
        inputs = [tensor_name(keys_in.get(i, i)) for i in req.inputs]
    elif base is not None:
        inputs = [t for k, t in sorted(keys_in.items()) if node_name(t) not in fed]
    else:
        inputs = [tensor_name(p) for p in _default_input(graph_def, fed, label)]
    if req.outputs:
        outputs = [tensor_name(keys_out.get(o, o)) for o in req.outputs]
    elif base is not None:
        outputs = [t for _, t in sorted(keys_out.items())]
    else:
        raise InputError(f"--outputs is required for {label}: name the output node(s), e.g. "
                         "--outputs embeddings")
    return IOPlan(inputs, outputs, {t: k for k, t in keys_in.items()}, {t: k for k, t in keys_out.items()})


def _default_input(graph_def: Any, fed: set[str], label: str) -> list[str]:
    phs = [p for p in placeholder_names(graph_def) if p not in fed]
    if len(phs) == 1:
        return phs
    raise InputError(
        f"--inputs is required for {label}: {'no' if not phs else len(phs)} unfed placeholders "
        f"({', '.join(phs) or '-'}); name the input tensor(s), e.g. --inputs input"
    )


# --------------------------------------------------------------------------- 2./3. check, meta


def check_nodes(graph_def: Any, plan: IOPlan, feeds: dict[str, str], label: str) -> None:
    nodes = {n.name for n in graph_def.node}
    for flag, items in (("--inputs", plan.inputs), ("--outputs", plan.outputs), ("--feed", list(feeds))):
        for t in items:
            if node_name(t) not in nodes:
                raise no_node_error(flag, t if flag == "--feed" else _shown(t), label, graph_def)


def _shown(t: str) -> str:
    return t[:-2] if t.endswith(":0") else t


def tensor_meta(graph: Any, tensors: list[str], label: str) -> dict[str, tuple[Any, list[int | None] | None]]:
    """(tf.DType, shape) of each tensor in the source graph."""
    meta = {}
    for t in tensors:
        try:
            ten = graph.get_tensor_by_name(tensor_name(t))
        except (KeyError, ValueError):
            raise GraphError(f"{t}: node {node_name(t)!r} has no output "
                             f"{tensor_name(t).rsplit(':', 1)[1]} in {label}") from None
        meta[tensor_name(t)] = (ten.dtype, shape_list(ten.shape))
    return meta


# --------------------------------------------------------------------------- 4. feeds


def fold_feeds(graph_def: Any, feeds: dict[str, str], meta: dict[str, Any]) -> dict[str, Any]:
    """``--feed NAME=VALUE``: the placeholder becomes a constant; returns node -> value."""
    import tensorflow as tf

    nodes = {n.name: n for n in graph_def.node}
    values: dict[str, Any] = {}
    for f, raw in feeds.items():
        node = nodes[node_name(f)]
        if node.op not in (*PLACEHOLDER_OPS, "PlaceholderWithDefault"):
            raise GraphError(f"--feed {f}: node {node.name!r} is a {node.op}, not a placeholder; "
                             "--feed only folds placeholders (use --inputs to cut the graph there)")
        dtype = meta[tensor_name(f)][0]
        if dtype in (tf.resource, tf.variant):
            raise GraphError(f"--feed {f}: {node.name!r} is a {dtype.name} handle, not a value: it "
                             "cannot be fed; export without --feed/--inputs to keep the model as it is")
        value = parse_feed_value(f, raw, dtype)
        values[node.name] = value.item() if value.ndim == 0 else value.tolist()
        if isinstance(values[node.name], bytes):
            values[node.name] = values[node.name].decode("utf-8", "replace")
        const = tf.compat.v1.NodeDef(name=node.name, op="Const")
        const.attr["dtype"].type = dtype.as_datatype_enum
        const.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value, dtype=dtype))
        node.Clear()
        node.CopyFrom(const)
    return values


def parse_feed_value(name: str, raw: str, dtype: Any) -> np.ndarray:
    """``--feed phase_train=false`` -> numpy value of the placeholder's dtype."""
    import tensorflow as tf

    text = raw.strip()
    try:
        value = json.loads(text.lower() if text.lower() in ("true", "false") else text)
    except json.JSONDecodeError:
        value = text
    try:
        if dtype == tf.bool:
            if isinstance(value, str):
                raise ValueError
            return np.array(value, dtype=bool)
        if dtype == tf.string:
            return np.array(str(value).encode())
        return np.array(value, dtype=dtype.as_numpy_dtype)
    except (ValueError, TypeError):
        raise InputError(f"--feed {name}={raw}: not a valid {dtype.name} value (e.g. --feed {name}="
                         f"{'false' if dtype == tf.bool else '0'})") from None


# --------------------------------------------------------------------------- 5. cut


def cut_inputs(graph_def: Any, inputs: list[str], meta: dict[str, Any],
               shapes: dict[str, list[int | None]]) -> dict[str, str]:
    """Make every input tensor a placeholder; returns original tensor -> placeholder tensor."""
    wanted = {tensor_name(t) for t in inputs}
    for key in shapes:
        if tensor_name(key) not in wanted:
            raise InputError(f"--input_shapes {key}: not one of the inputs "
                             f"({', '.join(_shown(t) for t in inputs) or 'none'})")
    nodes = {n.name: n for n in graph_def.node}
    used = _used_outputs(graph_def)
    cut: dict[str, str] = {}
    for t in inputs:
        tn = tensor_name(t)
        dtype, shape = meta[tn]
        node = nodes[node_name(tn)]
        given = next((v for k, v in shapes.items() if tensor_name(k) == tn), None)
        if node.op in PLACEHOLDER_OPS and tn.endswith(":0"):
            if given is not None or shape is None or None in shape[1:]:
                _set_placeholder(node, dtype, _input_shape(nodes, tn, shape, given))
            cut[tn] = tn
            continue
        shape = _batch_first(_input_shape(nodes, tn, shape, given))
        if tn.endswith(":0") and not used.get(node.name, set()) - {tn}:
            node.Clear()
            node.name, node.op = node_name(tn), "Placeholder"
            _set_placeholder(node, dtype, shape)
            cut[tn] = tn
            continue
        cut[tn] = _add_placeholder_for(graph_def, nodes, tn, dtype, shape)
    return cut


def _used_outputs(graph_def: Any) -> dict[str, set[str]]:
    used: dict[str, set[str]] = {}
    for n in graph_def.node:
        for i in n.input:
            if not i.startswith("^"):
                used.setdefault(node_name(i), set()).add(tensor_name(i))
    return used


def _input_shape(nodes: dict[str, Any], tn: str, shape: list[int | None] | None,
                 given: list[int | None] | None) -> list[int | None] | None:
    """The graph's shape, completed from a queue pipeline, overridden by ``--input_shapes``."""
    if shape is None or None in shape[1:]:
        shape = shape_from_pipeline(nodes, tn) or shape
    if given is not None:
        if shape is not None and len(shape) != len(given):
            raise InputError(f"--input_shapes {_shown(tn)}: rank {len(given)} but the graph says "
                             f"{['?' if d is None else d for d in shape]}")
        shape = [g if g is not None else (shape[i] if shape else None) for i, g in enumerate(given)]
    return shape


def _batch_first(shape: list[int | None] | None) -> list[int | None] | None:
    """A new placeholder gets a free batch dimension: batching is the server's business."""
    return [None, *shape[1:]] if shape else shape


def _add_placeholder_for(graph_def: Any, nodes: dict[str, Any], tn: str, dtype: Any,
                         shape: list[int | None] | None) -> str:
    """A new placeholder for output ``tn`` of a node whose other outputs are still used."""
    base = f"{node_name(tn)}_{tn.rsplit(':', 1)[1]}_input"
    name, k = base, 1
    while name in nodes:
        k += 1
        name = f"{base}_{k}"
    ph = graph_def.node.add()
    ph.name, ph.op = name, "Placeholder"
    _set_placeholder(ph, dtype, shape)
    nodes[name] = ph
    for n in graph_def.node:
        for k, i in enumerate(n.input):
            if not i.startswith("^") and tensor_name(i) == tn:
                n.input[k] = name
    return f"{name}:0"


def _set_placeholder(node: Any, dtype: Any, shape: list[int | None] | None) -> None:
    import tensorflow as tf

    node.attr["dtype"].type = dtype.as_datatype_enum
    node.attr["shape"].shape.CopyFrom(tf.TensorShape(shape).as_proto())


_PASS_THROUGH = ("Identity", "StopGradient", "Snapshot", "IdentityN")
_DEQUEUE_OPS = ("QueueDequeueUpToV2", "QueueDequeueManyV2", "QueueDequeueUpTo", "QueueDequeueMany",
                "QueueDequeueV2", "QueueDequeue")


def shape_from_pipeline(nodes: dict[str, Any], tensor: str) -> list[int | None] | None:
    """Shape of a tensor fed by a TF1 queue pipeline (FaceNet's ``batch_join`` ->
    ``dequeue_up_to`` -> Identity 'input'): the GraphDef loses the static shape, but the queue
    node's ``shapes`` attr still has each component's shape. Also honours ``_output_shapes``."""
    name, idx = node_name(tensor), int(tensor_name(tensor).rsplit(":", 1)[1])
    for _ in range(50):
        node = nodes.get(name)
        if node is None:
            return None
        if "_output_shapes" in node.attr and len(node.attr["_output_shapes"].list.shape) > idx:
            found = shape_list(node.attr["_output_shapes"].list.shape[idx])
            if found is not None:
                return found
        data = [i for i in node.input if not i.startswith("^")]
        if node.op in _PASS_THROUGH and data:
            src = data[idx] if node.op == "IdentityN" else data[0]
            name, idx = node_name(src), int(tensor_name(src).rsplit(":", 1)[1])
            continue
        if node.op in _DEQUEUE_OPS and data:
            return _dequeue_shape(nodes.get(node_name(data[0])), node.op, idx)
        return None
    return None


def _dequeue_shape(queue: Any, op: str, idx: int) -> list[int | None] | None:
    if queue is None or "shapes" not in queue.attr:
        return None
    comps = queue.attr["shapes"].list.shape
    if len(comps) <= idx or comps[idx].unknown_rank:
        return None
    dims = shape_list(comps[idx]) or []
    return dims if op in ("QueueDequeueV2", "QueueDequeue") else [None, *dims]


def clear_devices(graph_def: Any) -> None:
    """The artefact must run wherever the server puts it: no device pins from training."""
    for n in graph_def.node:
        n.device = ""
    for fn in graph_def.library.function:
        for n in fn.node_def:
            n.device = ""


# --------------------------------------------------------------------------- 6. prune


def serving_roots(meta_graph: Any) -> list[str]:
    """Nodes a server needs besides the signatures: saver, init ops, assets, table initialisers,
    and what the variable collections name (so the collections still load)."""
    sd = meta_graph.saver_def
    roots = [t for t in (sd.filename_tensor_name, sd.save_tensor_name, sd.restore_op_name) if t]
    init = meta_graph.signature_def.get(INIT_OP_SIGNATURE)
    if init is not None:
        roots += [t.name for t in init.outputs.values()]
    for key in _NODE_COLLECTIONS:
        col = meta_graph.collection_def.get(key)
        if col is not None:
            roots += list(col.node_list.value)
    roots += [a.tensor_info.name for a in asset_defs(meta_graph)]
    roots += [n.name for n in meta_graph.graph_def.node if n.op in TABLE_INIT_OPS]  # sinks: no output needs them
    for var in _variable_defs(meta_graph):
        roots += [n for n in (var.variable_name, var.initializer_name, var.snapshot_name) if n]
    return roots


def _variable_defs(meta_graph: Any) -> list[Any]:
    from tensorflow.core.framework import variable_pb2

    out = []
    for key in _VARIABLE_COLLECTIONS:
        col = meta_graph.collection_def.get(key)
        for raw in col.bytes_list.value if col is not None else []:
            v = variable_pb2.VariableDef()
            v.ParseFromString(raw)
            out.append(v)
    return out


def prune(meta_graph: Any, roots: list[str]) -> None:
    """Keep the roots' fan-in (graph order preserved) and the library functions it calls."""
    gd = meta_graph.graph_def
    keep = fan_in(gd, roots)
    # TF2 graphs read every variable once at top level ("v/Read/ReadVariableOp"); freezing finds
    # variable values through those reads, so they stay with their variable
    keep |= {n.name for n in gd.node if n.op == "ReadVariableOp" and n.input and node_name(n.input[0]) in keep
             and all(node_name(i) in keep for i in n.input)}
    kept = [n for n in gd.node if n.name in keep]
    del gd.node[:]
    gd.node.extend(kept)
    used = reachable_functions(gd, gd.node)
    fns = [f for f in gd.library.function if f.signature.name in used]
    del gd.library.function[:]
    gd.library.function.extend(fns)
    grads = [g for g in gd.library.gradient if g.function_name in used]
    del gd.library.gradient[:]
    gd.library.gradient.extend(grads)
    meta_graph.ClearField("object_graph_def")  # TF2 object graph: loaders fall back to the signatures


def check_fed(graph_def: Any, plan: IOPlan, cut: dict[str, str], label: str) -> None:
    """Every placeholder the outputs need is an input; every input is needed by the outputs."""
    needed = fan_in(graph_def, plan.outputs)
    nodes = {n.name: n for n in graph_def.node}
    input_nodes = {node_name(v) for v in cut.values()}
    for name in sorted(needed):
        n = nodes[name]
        if n.op in PLACEHOLDER_OPS and name not in input_nodes:
            raise _unfed_error(n, plan.outputs)
    unused = [_shown(t) for t in plan.inputs if node_name(cut[tensor_name(t)]) not in needed]
    if unused:
        raise GraphError(f"--inputs {','.join(unused)}: not needed by --outputs "
                         f"{','.join(_shown(o) for o in plan.outputs)}; remove it from --inputs (or "
                         "check the output names)")


def _unfed_error(node: Any, outputs: list[str]) -> GraphError:
    import tensorflow as tf

    dtype = tf.as_dtype(node.attr["dtype"].type)
    outs = ",".join(_shown(o) for o in outputs)
    if dtype in (tf.resource, tf.variant):
        return GraphError(f"placeholder {node.name!r} is a {dtype.name} handle the graph captures (a "
                          f"table or variable) and --outputs {outs} needs it: it cannot be fed; "
                          "export without --inputs/--outputs/--feed to keep the model as it is")
    return GraphError(f"placeholder {node.name!r} ({dtype.name}) is needed by --outputs {outs} but not "
                      f"fed: pass --feed {node.name}=VALUE to fix it, or --inputs ...,{node.name} to "
                      "keep it as an input")


# --------------------------------------------------------------------------- 8. signature


def build_signature(graph: Any, plan: IOPlan, cut: dict[str, str], req: LoadRequest, key: str,
                    method_name: str) -> Signature:
    in_keys = resolve_aliases(req.input_alias, plan.inputs, plan.input_keys, "--input_alias")
    out_keys = resolve_aliases(req.output_alias, plan.outputs, plan.output_keys, "--output_alias")
    ins, outs = [], []
    for t in plan.inputs:
        ten = graph.get_tensor_by_name(cut[tensor_name(t)])
        ins.append(TensorInfo(in_keys[tensor_name(t)], ten.name, dtype_name(ten.dtype), shape_list(ten.shape)))
    for t in plan.outputs:
        ten = graph.get_tensor_by_name(tensor_name(t))
        shape = shape_list(ten.shape)
        shape = [None, *shape[1:]] if shape else shape
        outs.append(TensorInfo(out_keys[tensor_name(t)], ten.name, dtype_name(ten.dtype), shape))
    return Signature(key, method_name, ins, outs)


def resolve_aliases(aliases: dict[str, str], tensors: list[str], keys: dict[str, str],
                    flag: str) -> dict[str, str]:
    """tensor -> signature key. An alias names its tensor by node, tensor or current key; one
    that matches nothing is an error, never ignored."""
    tensors = [tensor_name(t) for t in tensors]
    out: dict[str, str] = {}
    for src, alias in aliases.items():
        t = match_entry(src, [(t, keys.get(t, default_alias(t))) for t in tensors])
        if t is None:
            shown = ", ".join(_shown(t) for t in tensors)
            raise InputError(f"{flag} {src}={alias}: {src!r} is not one of {shown}; alias a tensor "
                             "you pass in --inputs/--outputs (node, tensor or signature key)")
        check_key(alias, f"{flag} {src}={alias}")
        out[t] = alias
    for t in tensors:
        out.setdefault(t, keys.get(t, default_alias(t)))
    values = list(out.values())
    dup = sorted({v for v in values if values.count(v) > 1})
    if dup:
        raise InputError(f"{flag}: signature key {dup[0]!r} used twice: give unique aliases")
    return out


def match_entry(name: str, entries: list[tuple[str, str]]) -> str | None:
    """The tensor among (tensor, key) entries that ``name`` means: its key, its tensor name, or
    its node name (output 0)."""
    for t, key in entries:
        if name == key:
            return t
    for t, _ in entries:
        if tensor_name(name) == tensor_name(t) and (":" in name or t.endswith(":0")):
            return t
    return None


def check_key(alias: str, what: str) -> None:
    if not _ALIAS_RE.match(alias):
        raise InputError(f"{what}: use letters, digits and _ in signature keys")


def write_signatures(meta_graph: Any, sig: Signature, others: dict[str, Any]) -> None:
    """Replace the served SignatureDefs: the rewritten one, the others (protos, already without
    their folded inputs) and the TF2 init-op signature, which always stays."""
    init = meta_graph.signature_def.get(INIT_OP_SIGNATURE)
    saved_init = None
    if init is not None:
        saved_init = type(init)()
        saved_init.CopyFrom(init)
    meta_graph.ClearField("signature_def")
    if saved_init is not None:
        meta_graph.signature_def[INIT_OP_SIGNATURE].CopyFrom(saved_init)
    for key, proto in others.items():
        meta_graph.signature_def[key].CopyFrom(proto)
    meta_graph.signature_def[sig.key].CopyFrom(signature_def(sig))


def signature_def(sig: Signature) -> Any:
    """The SignatureDef proto of a Signature (dtype and shape from the TensorInfo)."""
    import tensorflow as tf
    from tensorflow.core.protobuf import meta_graph_pb2

    out = meta_graph_pb2.SignatureDef(method_name=sig.method_name)
    for side, infos in ((out.inputs, sig.inputs), (out.outputs, sig.outputs)):
        for t in infos:
            entry = side[t.alias]
            entry.name = t.tensor
            entry.dtype = (tf.string if t.dtype == "string" else tf.as_dtype(t.dtype)).as_datatype_enum
            entry.tensor_shape.CopyFrom(tf.TensorShape(t.shape).as_proto())
    return out


# --------------------------------------------------------------------------- 9. collections, init


def tidy_collections(meta_graph: Any) -> None:
    """Collections may only name nodes that survived: node lists are filtered, variable lists
    keep entries whose nodes all exist, other proto lists (queue runners, control-flow
    contexts, savers, summaries) are dropped - the loader would fail on a missing node."""
    names = {n.name for n in meta_graph.graph_def.node}
    for key in list(meta_graph.collection_def):
        col = meta_graph.collection_def[key]
        kind = col.WhichOneof("kind")
        if kind == "node_list":
            keep = [v for v in col.node_list.value if node_name(v) in names]
            del col.node_list.value[:]
            col.node_list.value.extend(keep)
            if not keep:
                del meta_graph.collection_def[key]
        elif kind == "bytes_list" and key in _VARIABLE_COLLECTIONS:
            _tidy_variables(col, names)
        elif kind == "bytes_list":
            del meta_graph.collection_def[key]


def _tidy_variables(col: Any, names: set[str]) -> None:
    from tensorflow.core.framework import variable_pb2

    keep = []
    for raw in col.bytes_list.value:
        v = variable_pb2.VariableDef()
        v.ParseFromString(raw)
        refs = [r for r in (v.variable_name, v.initializer_name, v.snapshot_name) if r]
        if all(node_name(r) in names for r in refs):
            keep.append(raw)
    del col.bytes_list.value[:]
    col.bytes_list.value.extend(keep)


def add_table_init_op(meta_graph: Any) -> bool:
    """A graph that fills lookup tables but has no init op (a checkpoint or frozen graph) gets
    one that runs every table initialiser at load, as TF Serving runs a SavedModel's main op."""
    from builder.core.model import init_op

    if init_op(meta_graph) is not None or INIT_OP_SIGNATURE in meta_graph.signature_def:
        return False
    inits = [n.name for n in meta_graph.graph_def.node if n.op in TABLE_INIT_OPS]
    if not inits:
        return False
    names = {n.name for n in meta_graph.graph_def.node}
    name, k = "tfs_builder_main_op", 1
    while name in names:
        k += 1
        name = f"tfs_builder_main_op_{k}"
    node = meta_graph.graph_def.node.add()
    node.name, node.op = name, "NoOp"
    node.input.extend(f"^{i}" for i in sorted(inits))
    col = meta_graph.collection_def[MAIN_OP_KEY]
    del col.node_list.value[:]
    col.node_list.value.append(name)
    return True

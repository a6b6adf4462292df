"""Every input flow ends in the same thing: a frozen, pruned GraphDef plus named inputs/outputs.

Flows (detected from the path the way FaceNet's ``load_model`` does, or forced with ``--flow``):

- ``checkpoint``: a MetaGraph (``*.meta``) + checkpoint, restored in a session and frozen;
- ``frozen``: a GraphDef in a binary ``.pb`` or text ``.pbtxt``;
- ``savedmodel``: TF1 (session loader, like TF Serving) or TF2 (object graph) SavedModels;
- ``keras``: ``.keras`` / ``.h5`` files, traced and frozen.

After freezing, the same surgery runs for every flow: fixed feeds become constants, the graph is
cut at the requested input tensors (a new placeholder replaces whatever produced them, so input
pipelines such as queues and file readers fall away), and it is pruned to what the outputs need.
The source model stays open so the parity check can run it exactly as the user would.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from builder.core.errors import GraphError, InputError
from builder.core.model import NormalizedModel, TensorInfo

FLOWS = ("checkpoint", "frozen", "savedmodel", "keras")
_ALIAS_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-/]*$")
_PLACEHOLDER_OPS = ("Placeholder", "PlaceholderV2")


# --------------------------------------------------------------------------- flow detection


def detect_flow(path: str | os.PathLike) -> str:
    """Guess the flow from what is at ``path``; the error says which ``--flow`` to pass."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"--model {p}: no such file or directory")
    if p.is_file():
        if p.suffix in (".keras", ".h5", ".hdf5"):
            return "keras"
        if p.suffix == ".meta":
            return "checkpoint"
        return "frozen"
    if (p / "saved_model.pb").exists() or (p / "saved_model.pbtxt").exists():
        return "savedmodel"
    if list(p.glob("*.meta")):
        return "checkpoint"
    raise InputError(
        f"--model {p}: cannot tell the flow (no saved_model.pb, no *.meta file): "
        f"pass --flow {'|'.join(FLOWS)} or point --model at the model file"
    )


# --------------------------------------------------------------------------- small helpers


def tensor_name(name: str) -> str:
    """``embeddings`` -> ``embeddings:0``; ``^x`` and ``x:1`` handled."""
    name = name.strip().lstrip("^")
    return name if re.search(r":\d+$", name) else f"{name}:0"


def node_name(name: str) -> str:
    return re.sub(r":\d+$", "", name.strip().lstrip("^"))


def _default_alias(tensor: str) -> str:
    node, idx = tensor.rsplit(":", 1)
    alias = node.replace("/", "_")
    return alias if idx == "0" else f"{alias}_{idx}"


def _file_sha_list(paths: list[Path]) -> list[str]:
    return [str(p) for p in sorted(set(paths)) if p.is_file()]


def _shape_list(shape: Any) -> list[int | None]:
    if shape.rank is None:
        return []
    return [None if d is None else int(d) for d in shape.as_list()]


def _dynamic_batch(shape: list[int | None]) -> list[int | None]:
    return [None, *shape[1:]] if shape else shape


def _dtype_name(dtype: Any) -> str:
    import tensorflow as tf

    dtype = tf.as_dtype(dtype)
    return "string" if dtype == tf.string else dtype.as_numpy_dtype.__name__


def parse_shape(text: str, flag: str = "--input_shapes") -> list[int | None]:
    """``?x160x160x3`` / ``-1x160x160x3`` -> [None, 160, 160, 3]."""
    dims: list[int | None] = []
    for part in str(text).lower().replace("[", "").replace("]", "").split("x"):
        part = part.strip()
        if part in ("?", "-1", "none", ""):
            dims.append(None)
            continue
        try:
            dims.append(int(part))
        except ValueError:
            raise InputError(f"{flag} {text!r}: not a shape; write e.g. ?x160x160x3") from None
    return dims


def _parse_feed_value(name: str, raw: str, dtype: Any) -> Any:
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
        raise InputError(
            f"--feed {name}={raw}: not a valid {dtype.name} value (e.g. --feed {name}="
            f"{'false' if dtype == tf.bool else '0'})"
        ) from None


def _placeholders(graph_def: Any) -> dict[str, Any]:
    return {n.name: n for n in graph_def.node if n.op in _PLACEHOLDER_OPS}


def _hint_inputs(graph_def: Any) -> str:
    names = sorted(_placeholders(graph_def))
    return ", ".join(names[:8]) + (" ..." if len(names) > 8 else "") if names else "(none)"


def _closest(names: list[str], wanted: str) -> str:
    import difflib

    close = difflib.get_close_matches(wanted, names, n=3)
    return f"; did you mean {', '.join(close)}?" if close else ""


# --------------------------------------------------------------------------- graph surgery


def normalize_graph(
    graph_def: Any,
    *,
    inputs: list[str],
    outputs: list[str],
    feeds: dict[str, str],
    input_alias: dict[str, str],
    output_alias: dict[str, str],
    source_label: str,
    input_shapes: dict[str, list[int | None]] | None = None,
    known_nodes: Any = None,
    source_graph: Any = None,
) -> tuple[Any, list[TensorInfo], list[TensorInfo], dict[str, Any], dict[str, str]]:
    """Fold feeds, cut at inputs, prune to outputs; returns the graph, signature entries, the
    folded feed values and a map alias -> tensor name in the ORIGINAL graph (for parity)."""
    import tensorflow as tf

    graph_def = _copy_graph_def(graph_def)
    fix_ref_ops(graph_def)
    for n in graph_def.node:  # the artefact must run wherever the server puts it
        n.device = ""
    nodes = {n.name: n for n in graph_def.node}
    all_names = list(nodes)

    known = set(known_nodes or ()) | set(nodes)
    pruned_before = [t for t in inputs if node_name(t) not in nodes and node_name(t) in known]
    if pruned_before:
        raise GraphError(
            f"--inputs {','.join(pruned_before)}: not needed by --outputs {','.join(outputs)}; "
            "remove it from --inputs (or check the output names)"
        )
    feeds = {f: v for f, v in feeds.items() if node_name(f) in nodes or node_name(f) not in known}
    for t in [*inputs, *outputs]:
        if node_name(t) not in nodes:
            flag = "--inputs" if t in inputs else "--outputs"
            raise GraphError(
                f"{flag} {t}: no node {node_name(t)!r} in {source_label}"
                f"{_closest(all_names, node_name(t))} (placeholders: {_hint_inputs(graph_def)})"
            )
    input_shapes = dict(input_shapes or {})
    for key in input_shapes:
        if tensor_name(key) not in {tensor_name(t) for t in inputs}:
            raise InputError(f"--input_shapes {key}: not one of --inputs {','.join(inputs)}")
    for f in feeds:
        if node_name(f) not in nodes:
            raise GraphError(
                f"--feed {f}: no node {node_name(f)!r} in {source_label}"
                f"{_closest(all_names, node_name(f))} (placeholders: {_hint_inputs(graph_def)})"
            )

    # dtype/shape of every tensor we cut at or feed, from the original graph (the source
    # session's graph when there is one: importing a 100 MB frozen graph costs seconds)
    meta: dict[str, tuple[Any, list[int | None]]] = {}
    g = source_graph if source_graph is not None else imported_graph(graph_def, source_label)
    for t in [*inputs, *outputs, *feeds]:
        try:
            ten = g.get_tensor_by_name(tensor_name(t))
        except (KeyError, ValueError):
            raise GraphError(
                f"{t}: node {node_name(t)!r} has no output {tensor_name(t).rsplit(':', 1)[1]} "
                f"in {source_label}"
            ) from None
        meta[tensor_name(t)] = (ten.dtype, _shape_list(ten.shape))

    # fixed feeds -> constants
    feed_values: dict[str, Any] = {}
    for f, raw in feeds.items():
        node = nodes[node_name(f)]
        if node.op not in (*_PLACEHOLDER_OPS, "PlaceholderWithDefault"):
            raise GraphError(
                f"--feed {f}: node {node.name!r} is a {node.op}, not a placeholder; "
                "--feed only folds placeholders (use --inputs to cut the graph there)"
            )
        dtype = meta[tensor_name(f)][0]
        value = _parse_feed_value(f, raw, dtype)
        feed_values[node.name] = value.item() if value.ndim == 0 else value.tolist()
        const = tf.compat.v1.NodeDef(name=node.name, op="Const")
        const.attr["dtype"].type = dtype.as_datatype_enum
        const.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value, dtype=dtype))
        node.Clear()
        node.CopyFrom(const)

    # cut at inputs: a placeholder takes the place of whatever produced each input tensor
    cut_names: dict[str, str] = {}  # original tensor -> placeholder tensor in the new graph
    consumers_of: dict[str, set[str]] = {}
    for n in graph_def.node:
        for i in n.input:
            if not i.startswith("^"):
                consumers_of.setdefault(node_name(i), set()).add(tensor_name(i))
    for t in inputs:
        tn = tensor_name(t)
        node = nodes[node_name(tn)]
        dtype, shape = meta[tn]
        if not shape or shape[1:].count(None):
            shape = _shape_from_pipeline(nodes, tn) or shape
        given = next((v for k, v in input_shapes.items() if tensor_name(k) == tn), None)
        if given is not None:
            if shape and len(shape) != len(given):
                raise InputError(f"--input_shapes {node_name(tn)}: rank {len(given)} but the graph "
                                 f"says {['?' if d is None else d for d in shape]}")
            shape = [g if g is not None else (shape[i] if shape else None) for i, g in enumerate(given)]
        shape = _dynamic_batch(shape)
        if node.op in _PLACEHOLDER_OPS and tn.endswith(":0"):
            _set_placeholder(node, dtype, shape)
            cut_names[tn] = tn
            continue
        other_outputs_used = consumers_of.get(node.name, set()) - {tn}
        if tn.endswith(":0") and not other_outputs_used:
            new = tf.compat.v1.NodeDef(name=node.name, op="Placeholder")
            node.Clear()
            node.CopyFrom(new)
            _set_placeholder(node, dtype, shape)
            cut_names[tn] = tn
            continue
        new_name = _unique_name(f"{node.name}_{tn.rsplit(':', 1)[1]}_input", nodes)
        ph = graph_def.node.add()
        ph.name, ph.op = new_name, "Placeholder"
        _set_placeholder(ph, dtype, shape)
        nodes[new_name] = ph
        for n in graph_def.node:
            for k, i in enumerate(n.input):
                if not i.startswith("^") and tensor_name(i) == tn:
                    n.input[k] = new_name
        cut_names[tn] = f"{new_name}:0"

    # prune to the outputs
    out_nodes = sorted({node_name(o) for o in outputs})
    graph_def = tf.compat.v1.graph_util.extract_sub_graph(graph_def, out_nodes)
    kept = {n.name: n for n in graph_def.node}
    input_nodes = {node_name(v) for v in cut_names.values()}
    for name, n in kept.items():
        if n.op in _PLACEHOLDER_OPS and name not in input_nodes:
            dtype = tf.as_dtype(n.attr["dtype"].type).name
            raise GraphError(
                f"placeholder {name!r} ({dtype}) is needed by --outputs {','.join(outputs)} but "
                f"not fed: pass --feed {name}=VALUE to fix it, or --inputs ...,{name} to keep it "
                "as an input"
            )
    unused = [t for t in inputs if node_name(cut_names[tensor_name(t)]) not in kept]
    if unused:
        raise GraphError(
            f"--inputs {','.join(unused)}: not needed by --outputs {','.join(outputs)}; "
            "remove it from --inputs (or check the output names)"
        )

    # signature entries, with shapes inferred on the final graph
    in_alias = _resolve_aliases(input_alias, [tensor_name(t) for t in inputs], "--input_alias")
    out_alias = _resolve_aliases(output_alias, [tensor_name(t) for t in outputs], "--output_alias")
    sig_in, sig_out, source_map = [], [], {}
    g = imported_graph(graph_def, f"{source_label} (cut at --inputs)")
    for t in inputs:
        tn = tensor_name(t)
        ten = g.get_tensor_by_name(cut_names[tn])
        alias = in_alias[tn]
        sig_in.append(TensorInfo(alias, ten.name, _dtype_name(ten.dtype), _shape_list(ten.shape)))
        source_map[alias] = tn
    for t in outputs:
        tn = tensor_name(t)
        ten = g.get_tensor_by_name(tn)
        alias = out_alias[tn]
        shape = _dynamic_batch(_shape_list(ten.shape))
        sig_out.append(TensorInfo(alias, ten.name, _dtype_name(ten.dtype), shape))
        source_map[alias] = tn
    return graph_def, sig_in, sig_out, feed_values, source_map


_REF_OP_FIXES = {"RefSwitch": "Switch", "RefMerge": "Merge", "RefIdentity": "Identity", "RefEnter": "Enter",
                 "RefExit": "Exit", "RefNextIteration": "NextIteration", "AssignSub": "Sub", "AssignAdd": "AddV2"}


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


_PASS_THROUGH = ("Identity", "StopGradient", "Snapshot", "IdentityN")
_DEQUEUE_OPS = ("QueueDequeueUpToV2", "QueueDequeueManyV2", "QueueDequeueUpTo", "QueueDequeueMany",
                "QueueDequeueV2", "QueueDequeue")


def _shape_from_pipeline(nodes: dict[str, Any], tensor: str) -> list[int | None] | None:
    """Shape of a tensor fed by a TF1 queue pipeline (FaceNet's ``batch_join`` ->
    ``dequeue_up_to`` -> Identity 'input'): the GraphDef loses the static shape, but the queue
    node's ``shapes`` attr still has each component's shape. Also honours ``_output_shapes``."""
    name, idx = node_name(tensor), int(tensor.rsplit(":", 1)[1])
    for _ in range(50):
        node = nodes.get(name)
        if node is None:
            return None
        if "_output_shapes" in node.attr and len(node.attr["_output_shapes"].list.shape) > idx:
            proto = node.attr["_output_shapes"].list.shape[idx]
            if not proto.unknown_rank:
                return [None if d.size < 0 else int(d.size) for d in proto.dim]
        if node.op in _PASS_THROUGH and node.input:
            data = [i for i in node.input if not i.startswith("^")]
            if not data:
                return None
            src = data[idx] if node.op == "IdentityN" else data[0]
            name, idx = node_name(src), int(tensor_name(src).rsplit(":", 1)[1])
            continue
        if node.op in _DEQUEUE_OPS and node.input:
            queue = nodes.get(node_name(node.input[0]))
            if queue is None or "shapes" not in queue.attr:
                return None
            comps = queue.attr["shapes"].list.shape
            if len(comps) <= idx or comps[idx].unknown_rank:
                return None
            dims = [None if d.size < 0 else int(d.size) for d in comps[idx].dim]
            return dims if node.op in ("QueueDequeueV2", "QueueDequeue") else [None, *dims]
        return None
    return None


def _first_line(e: BaseException) -> str:
    """The informative line of a (often many-line) TensorFlow error."""
    text = getattr(e, "message", None) or str(e)
    noise = ("Graph execution error", "Detected at node", "Traceback", "File ", "[[", "Original stack",
             "Node:", "Op:")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(noise)]
    line = (useful or lines or [type(e).__name__])[0]
    return line if len(line) <= 240 else line[:237] + "..."


def _copy_graph_def(graph_def: Any) -> Any:
    import tensorflow as tf

    out = tf.compat.v1.GraphDef()
    out.CopyFrom(graph_def)
    return out


def _set_placeholder(node: Any, dtype: Any, shape: list[int | None]) -> None:
    import tensorflow as tf

    node.attr["dtype"].type = dtype.as_datatype_enum
    if shape or "shape" in node.attr:
        proto = tf.TensorShape(shape if shape else None).as_proto()
        node.attr["shape"].shape.CopyFrom(proto)


def _unique_name(base: str, taken: dict[str, Any]) -> str:
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    return name


def _resolve_aliases(aliases: dict[str, str], tensors: list[str], flag: str) -> dict[str, str]:
    """Map each tensor to its signature key: explicit alias (by node or tensor name) or default."""
    out: dict[str, str] = {}
    by_node = {node_name(t): t for t in tensors if t.endswith(":0")}
    for key, alias in aliases.items():
        t = tensor_name(key) if tensor_name(key) in tensors else by_node.get(key)
        if t is None:
            raise InputError(
                f"{flag} {key}={alias}: {key!r} is not one of {', '.join(tensors)}; alias a tensor "
                "you pass in --inputs/--outputs"
            )
        if not _ALIAS_RE.match(alias):
            raise InputError(f"{flag} {key}={alias}: use letters, digits and _ in signature keys")
        out[t] = alias
    for t in tensors:
        out.setdefault(t, _default_alias(t))
    values = list(out.values())
    dup = {v for v in values if values.count(v) > 1}
    if dup:
        raise InputError(f"{flag}: signature key {sorted(dup)[0]!r} used twice: give unique aliases")
    return out


# --------------------------------------------------------------------------- source runners


def _session_runner(sess: Any, source_map: dict[str, str], feed_values: dict[str, Any]):
    """Run the ORIGINAL graph in its session: inputs keyed by alias, fixed feeds applied."""
    g = sess.graph
    fixed = {g.get_tensor_by_name(tensor_name(k)): v for k, v in feed_values.items()}

    def run(inputs: dict[str, np.ndarray], output_aliases: list[str]) -> dict[str, np.ndarray]:
        feed = dict(fixed)
        for alias, value in inputs.items():
            feed[g.get_tensor_by_name(source_map[alias])] = value
        fetches = {a: g.get_tensor_by_name(source_map[a]) for a in output_aliases}
        return sess.run(fetches, feed_dict=feed)

    return run


def imported_graph(graph_def: Any, label: str) -> Any:
    """A new tf.Graph holding ``graph_def``; a graph that does not import is a user's GraphError."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        try:
            tf.compat.v1.import_graph_def(graph_def, name="")
        except (ValueError, tf.errors.OpError) as e:
            raise GraphError(f"{label}: the graph does not import: {_first_line(e)}") from None
    return graph


def source_session(graph: Any) -> Any:
    """A session for the source model. Soft placement, because graphs from training machines
    carry device pins (``/device:GPU:0``) that a CPU-only machine cannot honour."""
    import tensorflow as tf

    return tf.compat.v1.Session(graph=graph, config=tf.compat.v1.ConfigProto(allow_soft_placement=True))


def _bind_outputs(run: Any, outputs: list[TensorInfo]):
    aliases = [o.alias for o in outputs]
    return lambda inputs: run(inputs, aliases)


# --------------------------------------------------------------------------- flows


def load(
    path: str | os.PathLike,
    flow: str | None = None,
    *,
    inputs: list[str] | None = None,
    outputs: list[str] | None = None,
    feeds: dict[str, str] | None = None,
    input_alias: dict[str, str] | None = None,
    output_alias: dict[str, str] | None = None,
    checkpoint: str | None = None,
    tags: list[str] | None = None,
    signature: str = "serving_default",
    clear_devices: bool = True,
    input_shapes: dict[str, list[int | None]] | None = None,
) -> NormalizedModel:
    """Load any supported model into a ``NormalizedModel`` (caller must call ``.close()``)."""
    path = Path(path)
    flow = flow or detect_flow(path)
    if flow not in FLOWS:
        raise InputError(f"--flow {flow}: unknown flow; use one of {', '.join(FLOWS)}")
    if not path.exists():
        raise InputError(f"--model {path}: no such file or directory")
    kwargs = dict(
        input_shapes=dict(input_shapes or {}),
        inputs=list(inputs or []),
        outputs=list(outputs or []),
        feeds=dict(feeds or {}),
        input_alias=dict(input_alias or {}),
        output_alias=dict(output_alias or {}),
    )
    if flow == "checkpoint":
        return _load_checkpoint(path, checkpoint, clear_devices, **kwargs)
    if flow == "frozen":
        return _load_frozen(path, **kwargs)
    if flow == "savedmodel":
        return _load_savedmodel(path, tags or ["serve"], signature, **kwargs)
    return _load_keras(path, **kwargs)


def _require_io(kw: dict, source_label: str, graph_def: Any) -> None:
    if not kw["outputs"]:
        raise InputError(
            f"--outputs is required for {source_label}: name the output node(s), e.g. "
            "--outputs embeddings"
        )
    if not kw["inputs"]:
        phs = [n for n in _placeholders(graph_def) if n not in {node_name(f) for f in kw["feeds"]}]
        if len(phs) == 1:
            kw["inputs"] = [phs[0]]
        else:
            raise InputError(
                f"--inputs is required for {source_label}: "
                f"{'no' if not phs else len(phs)} unfed placeholders ({', '.join(phs) or '-'}); "
                "name the input tensor(s), e.g. --inputs input"
            )


def _finish(
    frozen: Any,
    kw: dict,
    *,
    known_nodes: Any = None,
    flow: str,
    path: Path,
    files: list[Path],
    source_label: str,
    session: Any = None,
    runner: Any = None,
    close: Any = None,
) -> NormalizedModel:
    graph_def, sig_in, sig_out, feed_values, source_map = normalize_graph(
        frozen, source_label=source_label, known_nodes=known_nodes,
        source_graph=session.graph if session is not None else None, **kw
    )
    if runner is None:
        runner = _session_runner(session, source_map, feed_values)
    return _model(graph_def, sig_in, sig_out, feed_values, flow=flow, path=path, files=files, runner=runner,
                  close=close or (session.close if session is not None else (lambda: None)))


def _model(graph_def: Any, sig_in: list[TensorInfo], sig_out: list[TensorInfo], feed_values: dict, *,
           flow: str, path: Path, files: list[Path], runner: Any, close: Any,
           keepalive: Any = None) -> NormalizedModel:
    return NormalizedModel(
        graph_def=graph_def,
        inputs=sig_in,
        outputs=sig_out,
        flow=flow,
        source_path=str(path.resolve()),
        source_files=_file_sha_list(files),
        feeds=feed_values,
        run_source=_bind_outputs(runner, sig_out),
        close=close,
        keepalive=keepalive,
    )


def find_checkpoint(path: Path, checkpoint: str | None) -> tuple[Path, str]:
    """(meta file, checkpoint prefix): ``--checkpoint`` wins, else the ``checkpoint`` state file,
    as FaceNet's ``get_model_filenames`` does. Absolute paths written on the training machine
    are retried relative to the model directory."""
    import tensorflow as tf

    model_dir = path.parent if path.is_file() else path
    metas = [path] if path.suffix == ".meta" else sorted(model_dir.glob("*.meta"))
    if checkpoint:
        prefix = checkpoint
        if not (Path(prefix + ".index").exists() or Path(prefix).exists()):
            alt = model_dir / Path(prefix).name
            if Path(str(alt) + ".index").exists():
                prefix = str(alt)
            else:
                raise InputError(f"--checkpoint {checkpoint}: no {checkpoint}.index; pass the prefix"
                                 " (e.g. DIR/model-20180402-114759.ckpt-275)")
    else:
        state = tf.train.get_checkpoint_state(str(model_dir))
        if state is None or not state.model_checkpoint_path:
            indexes = sorted(model_dir.glob("*.index"))
            if len(indexes) == 1:
                prefix = str(indexes[0])[: -len(".index")]
            else:
                raise InputError(
                    f"--model {model_dir}: no 'checkpoint' state file naming the latest checkpoint"
                    f" ({len(indexes)} *.index files): pass --checkpoint PREFIX"
                )
        else:
            prefix = state.model_checkpoint_path
            local = model_dir / Path(prefix).name
            if not os.path.isabs(prefix) or Path(str(local) + ".index").exists():
                # the copy in --model's directory wins over an absolute path from training
                prefix = str(local if os.path.isabs(prefix) else model_dir / prefix)
            if not Path(prefix + ".index").exists():
                alt = model_dir / Path(prefix).name
                if not Path(str(alt) + ".index").exists():
                    raise InputError(
                        f"{model_dir / 'checkpoint'} names {state.model_checkpoint_path}, which has "
                        "no .index file here: pass --checkpoint PREFIX"
                    )
                prefix = str(alt)
    if not metas:
        raise InputError(f"--model {model_dir}: no *.meta file (MetaGraph) for the checkpoint flow")
    if len(metas) > 1:
        stem = Path(prefix).name.split(".ckpt")[0]
        matching = [m for m in metas if m.stem == stem or m.stem == Path(prefix).name]
        if len(matching) != 1:
            raise InputError(
                f"--model {model_dir}: {len(metas)} .meta files and none matches checkpoint "
                f"{Path(prefix).name}: point --model at the .meta file to use"
            )
        metas = matching
    return metas[0], prefix


def _load_checkpoint(path: Path, checkpoint: str | None, clear_devices: bool, **kw) -> NormalizedModel:
    import tensorflow as tf

    meta, prefix = find_checkpoint(path, checkpoint)
    label = meta.name
    graph = tf.Graph()
    sess = source_session(graph)
    ok = False
    try:
        with graph.as_default():
            try:
                saver = tf.compat.v1.train.import_meta_graph(str(meta), clear_devices=clear_devices)
            except Exception as e:  # noqa: BLE001 - protobuf/TF raise many types for bad files
                raise InputError(f"{meta}: not a readable MetaGraph: {_first_line(e)}") from None
            if saver is None:
                raise InputError(f"{meta}: the MetaGraph has no variables/saver to restore")
            try:
                saver.restore(sess, prefix)
            except (tf.errors.OpError, ValueError) as e:
                raise InputError(
                    f"checkpoint {prefix}: cannot restore it into {meta.name}: {_first_line(e)}"
                ) from None
        graph_def = graph.as_graph_def()
        _require_io(kw, label, graph_def)
        frozen = _freeze_session(sess, graph_def, kw["outputs"], label)
        ckpt_files = [Path(p) for p in tf.io.gfile.glob(prefix + ".*")]
        state = meta.parent / "checkpoint"
        files = [meta, *ckpt_files, *([state] if state.exists() else [])]
        model = _finish(frozen, kw, flow="checkpoint", path=path, files=files, source_label=label,
                        session=sess, known_nodes=[n.name for n in graph_def.node])
        ok = True
        return model
    finally:
        if not ok:
            sess.close()


def _freeze_session(sess: Any, graph_def: Any, outputs: list[str], label: str) -> Any:
    import tensorflow as tf

    names = sorted({node_name(o) for o in outputs})
    nodes = {n.name for n in graph_def.node}
    for o in outputs:
        if node_name(o) not in nodes:
            raise GraphError(f"--outputs {o}: no node {node_name(o)!r} in {label}"
                             f"{_closest(sorted(nodes), node_name(o))}")
    with sess.graph.as_default():
        return tf.compat.v1.graph_util.convert_variables_to_constants(sess, graph_def, names)


def read_graph_def(path: Path) -> Any:
    import tensorflow as tf
    from google.protobuf import text_format

    gd = tf.compat.v1.GraphDef()
    data = path.read_bytes()
    try:
        if path.suffix == ".pbtxt":
            text_format.Parse(data.decode("utf-8"), gd)
        else:
            gd.ParseFromString(data)
    except Exception as e:  # noqa: BLE001 - DecodeError, ParseError, UnicodeDecodeError
        kind = "text" if path.suffix == ".pbtxt" else "binary"
        raise InputError(
            f"--model {path}: not a {kind} GraphDef ({_first_line(e)}); a frozen graph is a "
            ".pb/.pbtxt file (use --flow for other formats)"
        ) from None
    if not gd.node:
        raise InputError(f"--model {path}: the GraphDef has no nodes (empty or wrong file)")
    return gd


def _load_frozen(path: Path, **kw) -> NormalizedModel:

    if path.is_dir():
        raise InputError(f"--model {path}: --flow frozen needs a .pb/.pbtxt file, not a directory")
    original = read_graph_def(path)
    _require_io(kw, path.name, original)
    variables = [n.name for n in original.node if n.op in ("VariableV2", "VarHandleOp", "Variable")]
    if variables:
        raise GraphError(
            f"--model {path}: not frozen, it has variables (e.g. {variables[0]}): use the "
            "checkpoint flow with its .meta/checkpoint, or freeze it first"
        )
    sess = source_session(imported_graph(original, path.name))
    try:
        return _finish(original, kw, flow="frozen", path=path, files=[path],
                       source_label=path.name, session=sess)
    except BaseException:
        sess.close()
        raise


def _is_tf2_saved_model(path: Path) -> bool:
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    pb = path / "saved_model.pb"
    if not pb.exists():
        return False
    try:
        sm.ParseFromString(pb.read_bytes())
    except Exception:  # noqa: BLE001
        raise InputError(f"--model {pb}: not a SavedModel protobuf (corrupt or wrong file)") from None
    return any(len(mg.object_graph_def.nodes) > 0 for mg in sm.meta_graphs)


def _load_savedmodel(path: Path, tags: list[str], signature: str, **kw) -> NormalizedModel:
    if path.is_file():
        raise InputError(f"--model {path}: --flow savedmodel needs the SavedModel directory")
    files = [p for p in path.rglob("*") if p.is_file()]
    if _is_tf2_saved_model(path):
        return _load_savedmodel_tf2(path, tags, signature, files, **kw)
    return _load_savedmodel_tf1(path, tags, signature, files, **kw)


def _signature_io(sig: Any, kw: dict, label: str) -> None:
    """Default --inputs/--outputs (and their aliases) from a SavedModel signature."""
    fed = {node_name(f) for f in kw["feeds"]}
    if not kw["inputs"]:
        for key, info in sorted(sig.inputs.items()):
            if node_name(info.name) in fed:
                continue
            kw["inputs"].append(info.name)
            kw["input_alias"].setdefault(info.name, key)
    else:
        by_key = {k: v.name for k, v in sig.inputs.items()}
        kw["inputs"] = [by_key.get(i, i) for i in kw["inputs"]]
    if not kw["outputs"]:
        for key, info in sorted(sig.outputs.items()):
            kw["outputs"].append(info.name)
            kw["output_alias"].setdefault(info.name, key)
    else:
        by_key = {k: v.name for k, v in sig.outputs.items()}
        kw["outputs"] = [by_key.get(o, o) for o in kw["outputs"]]


def _load_savedmodel_tf1(path: Path, tags: list[str], signature: str, files: list[Path], **kw):
    import tensorflow as tf

    graph = tf.Graph()
    sess = source_session(graph)
    label = f"{path.name} (SavedModel)"
    try:
        with graph.as_default():
            try:
                mg = tf.compat.v1.saved_model.loader.load(sess, tags, str(path))
            except RuntimeError as e:
                raise InputError(f"--tags {','.join(tags)}: {path}: {_first_line(e)}") from None
            except (tf.errors.OpError, OSError, ValueError) as e:
                raise InputError(f"--model {path}: SavedModel does not load: {_first_line(e)}") from None
        if signature not in mg.signature_def:
            if not (kw["inputs"] and kw["outputs"]):
                raise InputError(
                    f"--signature {signature}: not in {path} (has: "
                    f"{', '.join(sorted(mg.signature_def)) or 'none'}); pass --signature KEY or "
                    "--inputs/--outputs"
                )
        else:
            _signature_io(mg.signature_def[signature], kw, label)
        graph_def = graph.as_graph_def()
        _require_io(kw, label, graph_def)
        frozen = _freeze_session(sess, graph_def, kw["outputs"], label)
        return _finish(frozen, kw, flow="savedmodel", path=path, files=files,
                       source_label=label, session=sess, known_nodes=[n.name for n in graph_def.node])
    except BaseException:
        sess.close()
        raise


def _load_savedmodel_tf2(path: Path, tags: list[str], signature: str, files: list[Path], **kw):
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(path), tags=tags)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"--model {path}: SavedModel does not load: {_first_line(e)}") from None
    if signature not in loaded.signatures:
        raise InputError(
            f"--signature {signature}: not in {path} (has: "
            f"{', '.join(sorted(loaded.signatures)) or 'none'}); pass --signature KEY"
        )
    fn = loaded.signatures[signature]
    return _freeze_function(fn, fn.structured_input_signature[1], kw, flow="savedmodel",
                            path=path, files=files, call=lambda x: fn(**x), keepalive=loaded)


def _freeze_function(fn: Any, kwargs_spec: dict[str, Any], kw: dict, *, flow: str, path: Path,
                     files: list[Path], call: Any, keepalive: Any) -> NormalizedModel:
    """TF2 concrete function -> frozen GraphDef; aliases from its structured signature."""
    import tensorflow as tf
    from tensorflow.python.framework import convert_to_constants

    label = f"{path.name} ({flow})"
    frozen_fn = convert_to_constants.convert_variables_to_constants_v2(fn)
    graph_def = frozen_fn.graph.as_graph_def()
    # input keys: the structured signature names the placeholders by key
    placeholders = [t for t in frozen_fn.inputs if t.dtype != tf.resource]
    key_by_tensor: dict[str, str] = {}
    for key, spec in sorted(kwargs_spec.items()):
        match = [t for t in placeholders if node_name(t.name) in (spec.name, key)]
        if match:
            key_by_tensor[match[0].name] = key
    if len(key_by_tensor) != len(placeholders):
        for t, (key, _spec) in zip(placeholders, sorted(kwargs_spec.items())):
            key_by_tensor.setdefault(t.name, key)
    # output keys: the original structure's keys, in nest.flatten order (sorted dict keys)
    structure = fn.structured_outputs
    flat_out = list(frozen_fn.outputs)
    if isinstance(structure, dict) and len(structure) == len(flat_out):
        keys = sorted(structure)
    elif len(flat_out) == 1:
        keys = ["output"]
    else:
        keys = [f"output_{i}" for i in range(len(flat_out))]
    out_by_tensor = {t.name: k for k, t in zip(keys, flat_out)}
    tensor_by_key = {**{v: k for k, v in key_by_tensor.items()}, **{v: k for k, v in out_by_tensor.items()}}
    fed = {node_name(f) for f in kw["feeds"]}
    if not kw["inputs"]:
        kw["inputs"] = [t for t in key_by_tensor if node_name(t) not in fed]
    else:
        kw["inputs"] = [tensor_by_key.get(i, i) for i in kw["inputs"]]
    if not kw["outputs"]:
        kw["outputs"] = list(out_by_tensor)
    else:
        kw["outputs"] = [tensor_by_key.get(o, o) for o in kw["outputs"]]
    for t, k in key_by_tensor.items():
        kw["input_alias"].setdefault(t, k)
    for t, k in out_by_tensor.items():
        kw["output_alias"].setdefault(t, k)

    graph_def_n, sig_in, sig_out, feed_values, source_map = normalize_graph(
        graph_def, source_label=label, **kw
    )
    if feed_values or any(source_map[i.alias] not in key_by_tensor for i in sig_in):
        # the original function cannot take the cut/fed form: run the frozen original graph
        sess = source_session(imported_graph(graph_def, label))
        runner = _session_runner(sess, source_map, feed_values)
        close = sess.close
    else:
        alias_to_key = {i.alias: key_by_tensor[source_map[i.alias]] for i in sig_in}
        alias_to_out = {o.alias: out_by_tensor.get(source_map[o.alias]) for o in sig_out}

        def runner(inputs: dict[str, np.ndarray], output_aliases: list[str]) -> dict[str, np.ndarray]:
            res = call({alias_to_key[a]: tf.constant(v) for a, v in inputs.items()})
            if not isinstance(res, dict):
                flat = tf.nest.flatten(res)
                res = {f"output_{i}": t for i, t in enumerate(flat)} if len(flat) > 1 else {"output": flat[0]}
            return {a: np.asarray(res[alias_to_out[a]]) for a in output_aliases}

        close = lambda: None  # noqa: E731
    return _model(graph_def_n, sig_in, sig_out, feed_values, flow=flow, path=path, files=files,
                  runner=runner, close=close, keepalive=keepalive)


def _load_keras(path: Path, **kw) -> NormalizedModel:
    import keras
    import tensorflow as tf

    if path.is_dir() or path.suffix not in (".keras", ".h5", ".hdf5"):
        raise InputError(f"--model {path}: --flow keras needs a .keras or .h5 file")
    try:
        model = keras.models.load_model(str(path), compile=False)
    except Exception as e:  # noqa: BLE001 - keras raises many types for bad files
        raise InputError(f"--model {path}: Keras model does not load: {_first_line(e)}") from None
    specs = []
    for i, t in enumerate(model.inputs):
        name = getattr(t, "name", None) or f"input_{i}"
        name = re.sub(r"[^A-Za-z0-9_]", "_", name.split(":")[0])
        shape = [None, *list(t.shape)[1:]]
        specs.append(tf.TensorSpec(shape, t.dtype, name=name))

    single = len(specs) == 1

    @tf.function(input_signature=specs)
    def serve(*args):
        out = model(args[0] if single else list(args), training=False)
        if isinstance(out, dict):
            return out
        flat = tf.nest.flatten(out)
        names = list(getattr(model, "output_names", []) or [])
        if len(names) != len(flat):
            names = [f"output_{i}" for i in range(len(flat))] if len(flat) > 1 else ["output"]
        return dict(zip(names, flat))

    concrete = serve.get_concrete_function()
    # the Keras call is the source of truth for parity
    keys = [s.name for s in specs]

    def call(x: dict[str, Any]) -> Any:
        return serve(*[x[k] for k in keys])

    return _freeze_function(concrete, {s.name: s for s in specs}, kw, flow="keras", path=path,
                            files=[path], call=call, keepalive=(model, serve))

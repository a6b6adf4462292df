"""What a model is while it is being exported, and what a SavedModel holds.

Every input flow ends in a ``StagedModel``: a servable SavedModel written into the staging
directory (MetaGraph + ``variables/`` + ``assets/`` + init op + every kept signature with its key
and ``method_name``), plus a handle to run the *source* model for the parity check. Freezing is
an optional later step (``NormalizedModel`` is the frozen single-graph view the optimisers work
on), never the container: it cannot carry tables, init ops, assets or more than 2 GB.

``graph_facts`` reads a MetaGraphDef (no session, no TensorFlow runtime) and says what it holds:
tables, init op, assets, the saver's own subgraph, variables. ``export`` decides whether it may
freeze from these facts; ``inspect`` prints them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PREDICT = "tensorflow/serving/predict"
CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"
INIT_OP_SIGNATURE = "__saved_model_init_op"  # TF2's init op, stored as a signature
MAIN_OP_KEY = "saved_model_main_op"
LEGACY_INIT_OP_KEY = "legacy_init_op"
ASSETS_COLLECTION = "saved_model_assets"
FREEZE_LIMIT_BYTES = 2**31 - 2**26  # a GraphDef is a protobuf: < 2 GiB, with room for the graph

TABLE_OPS = frozenset({
    "HashTable", "HashTableV2", "MutableHashTable", "MutableHashTableV2",
    "MutableHashTableOfTensors", "MutableHashTableOfTensorsV2", "MutableDenseHashTable",
    "MutableDenseHashTableV2", "AnonymousHashTable", "AnonymousMutableHashTable",
    "AnonymousMutableHashTableOfTensors", "AnonymousMutableDenseHashTable",
})
TABLE_INIT_OPS = frozenset({
    "InitializeTable", "InitializeTableV2", "InitializeTableFromTextFile",
    "InitializeTableFromTextFileV2", "LookupTableImportV2", "LookupTableImport",
    "InitializeTableFromDataset",
})
VARIABLE_OPS = frozenset({"VariableV2", "Variable", "VarHandleOp", "_VarHandlesOp"})
# stateful resources freezing cannot turn into constants (besides tables)
OTHER_RESOURCE_OPS = frozenset({
    "FIFOQueueV2", "PaddingFIFOQueueV2", "RandomShuffleQueueV2", "PriorityQueueV2", "MutexV2",
    "IteratorV2", "AnonymousIteratorV2", "AnonymousIteratorV3",
    "RngReadAndSkip", "StatefulUniform", "StatefulStandardNormalV2",
})
CALL_OPS = frozenset({"PartitionedCall", "StatefulPartitionedCall"})


@dataclass
class TensorInfo:
    """One signature entry: the key clients use (alias) and the tensor in the graph."""

    alias: str  # signature key, e.g. "images"
    tensor: str  # tensor name in the graph, e.g. "input:0"
    dtype: str  # numpy dtype name ("float32"), "string" for tf.string
    shape: list[int | None] | None  # None = unknown rank; None dims are unknown

    def as_json(self) -> dict[str, Any]:
        return {
            "tensor": self.tensor,
            "dtype": self.dtype,
            "shape": None if self.shape is None else [-1 if d is None else int(d) for d in self.shape],
        }

    @property
    def batched(self) -> bool:
        """A leading dimension of unknown size is the batch (TF Serving batches along it)."""
        return bool(self.shape) and self.shape[0] is None


@dataclass
class Signature:
    """A SignatureDef as the export keeps it: key, method name, inputs and outputs by alias."""

    key: str
    method_name: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "method_name": self.method_name,
            "inputs": {t.alias: t.as_json() for t in self.inputs},
            "outputs": {t.alias: t.as_json() for t in self.outputs},
        }


# --------------------------------------------------------------------------- the staged model


SourceRunner = Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass
class StagedModel:
    """A servable SavedModel at ``path`` (inside the staging directory) and its source.

    ``run_source(signature_key, inputs)`` feeds the ORIGINAL model as the user ran it (restored
    checkpoint session, imported frozen graph, the source SavedModel loaded the way TF Serving
    loads it, the Keras call) with inputs keyed by alias and returns every output by alias."""

    path: Path
    tags: list[str]
    signatures: dict[str, Signature]
    flow: str
    source_path: str
    source_files: list[str]
    run_source: SourceRunner
    close_source: Callable[[], None] = lambda: None
    feeds: dict[str, Any] = field(default_factory=dict)  # placeholders folded to constants
    kept_as_is: bool = False  # the source SavedModel's files, unchanged (only assets.extra added)
    surgery: list[str] = field(default_factory=list)  # the graph edits applied, in order
    notes: list[str] = field(default_factory=list)
    keepalive: Any = None  # objects the source runner needs alive (a Keras model)

    def close(self) -> None:
        """Release the source model (sessions hold its variables: big models need the RAM)."""
        close, self.close_source = self.close_source, (lambda: None)
        self.run_source = _closed
        close()


def _closed(signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    raise RuntimeError(f"the source model was closed before running signature {signature!r}")


@dataclass
class NormalizedModel:
    """The frozen single-graph view the optimisers (``--optimize cpu|tftrt``) work on: one
    GraphDef of constants plus one signature. ``run_source`` takes inputs by alias."""

    graph_def: Any  # tf.compat.v1.GraphDef
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    flow: str
    source_path: str
    source_files: list[str]
    feeds: dict[str, Any] = field(default_factory=dict)
    run_source: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None
    close: Callable[[], None] = lambda: None
    notes: list[str] = field(default_factory=list)
    keepalive: Any = None

    def input(self, alias: str) -> TensorInfo:
        return next(t for t in self.inputs if t.alias == alias)

    def output(self, alias: str) -> TensorInfo:
        return next(t for t in self.outputs if t.alias == alias)


# --------------------------------------------------------------------------- names


def node_name(name: str) -> str:
    """``x:0`` / ``^x`` / ``x`` -> ``x``; function-body refs ``n:output:0`` -> ``n``."""
    name = name.strip().lstrip("^")
    return name.split(":", 1)[0]


def tensor_name(name: str) -> str:
    """``embeddings`` -> ``embeddings:0``; ``x:1`` stays."""
    name = name.strip().lstrip("^")
    return name if ":" in name else f"{name}:0"


# --------------------------------------------------------------------------- graph index


class GraphIndex:
    """Nodes of a GraphDef and of every library function, with the calls between them, so a
    question like "which constant feeds this table's keys" can be answered across the
    ``StatefulPartitionedCall`` boundaries TF2 SavedModels are made of. Scope ``""`` is the
    top-level graph; any other scope is a function name."""

    def __init__(self, graph_def: Any):
        self.nodes: dict[str, dict[str, Any]] = {"": {n.name: n for n in graph_def.node}}
        self.args: dict[str, list[str]] = {"": []}
        self.callers: dict[str, list[tuple[str, Any]]] = {}
        for fn in graph_def.library.function:
            name = fn.signature.name
            self.nodes[name] = {n.name: n for n in fn.node_def}
            self.args[name] = [a.name for a in fn.signature.input_arg]
        for scope, nodes in self.nodes.items():
            for n in nodes.values():
                for callee in called_functions(n):
                    self.callers.setdefault(callee, []).append((scope, n))

    def iter_nodes(self) -> Iterator[tuple[str, Any]]:
        for scope, nodes in self.nodes.items():
            for n in nodes.values():
                yield scope, n

    def producer(self, scope: str, ref: str) -> tuple[str, Any] | None:
        """The node producing ``ref`` in ``scope``, looking through Identity and through a
        function argument to the caller's input (first call site that resolves)."""
        for _ in range(64):
            name = node_name(ref)
            node = self.nodes.get(scope, {}).get(name)
            if node is None and name in self.args.get(scope, ()):
                idx = self.args[scope].index(name)
                for caller_scope, call in self.callers.get(scope, []):
                    data = [i for i in call.input if not i.startswith("^")]
                    if idx < len(data):
                        found = self.producer(caller_scope, data[idx])
                        if found is not None:
                            return found
                return None
            if node is None:
                return None
            if node.op in ("Identity", "Snapshot") and node.input:
                ref = node.input[0]
                continue
            return scope, node
        return None

    def const_value(self, scope: str, ref: str) -> np.ndarray | None:
        found = self.producer(scope, ref)
        if found is None or found[1].op != "Const":
            return None
        import tensorflow as tf

        return tf.make_ndarray(found[1].attr["value"].tensor)

    def consumers(self, scope: str, ref: str) -> Iterator[tuple[str, Any, int]]:
        """(scope, node, input index) of every data consumer of ``ref``, through Identity nodes
        and into the functions it is passed to (as that function's argument)."""
        seen: set[tuple[str, str]] = set()
        todo = [(scope, ref)]
        while todo:
            sc, r = todo.pop()
            if (sc, r) in seen:
                continue
            seen.add((sc, r))
            for n in self.nodes.get(sc, {}).values():
                data = [i for i in n.input if not i.startswith("^")]
                for k, i in enumerate(data):
                    if not _same_ref(sc, i, r):
                        continue
                    if n.op in ("Identity", "Snapshot"):
                        todo.append((sc, f"{n.name}:output:0" if sc else f"{n.name}:0"))
                    elif n.op in CALL_OPS:
                        args = self.args.get(n.attr["f"].func.name, [])
                        if k < len(args):
                            todo.append((n.attr["f"].func.name, args[k]))
                    else:
                        yield sc, n, k


def _same_ref(scope: str, a: str, b: str) -> bool:
    """Top-level refs are ``node:index`` (``node`` means ``node:0``); function-body refs are
    compared as written (``arg`` or ``node:output:0``)."""
    return tensor_name(a) == tensor_name(b) if not scope else a == b


def called_functions(node: Any) -> list[str]:
    """Names of the functions a node calls (``f`` of PartitionedCall, If/While branches, ...)."""
    out = []
    for key, attr in node.attr.items():
        if attr.HasField("func"):
            out.append(attr.func.name)
        elif key in ("branches",):
            out.extend(f.name for f in attr.list.func)
    return out


def reachable_functions(graph_def: Any, nodes: Iterable[Any]) -> set[str]:
    """Every library function called (transitively) from ``nodes``."""
    fns = {f.signature.name: f for f in graph_def.library.function}
    todo = [name for n in nodes for name in called_functions(n)]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or name not in fns:
            continue
        seen.add(name)
        todo.extend(c for n in fns[name].node_def for c in called_functions(n))
    return seen


def fan_in(graph_def: Any, targets: Iterable[str]) -> set[str]:
    """Top-level node names the targets depend on (data and control inputs), targets included."""
    nodes = {n.name: n for n in graph_def.node}
    todo = [node_name(t) for t in targets]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or name not in nodes:
            continue
        seen.add(name)
        todo.extend(node_name(i) for i in nodes[name].input)
    return seen


# --------------------------------------------------------------------------- what a graph holds


@dataclass
class GraphFacts:
    """What a MetaGraph holds that matters for serving it faithfully."""

    tables: list[str] = field(default_factory=list)  # node names (function/node in TF2 graphs)
    init_op: dict[str, str] | None = None  # {"kind": main_op|legacy_init_op|__saved_model_init_op, "name": ...}
    assets: list[str] = field(default_factory=list)  # asset file names
    other_resources: list[str] = field(default_factory=list)
    variables: int = 0
    variable_bytes: int = 0

    def freeze_blockers(self) -> list[str]:
        """Why freezing would lose something (empty: it may freeze)."""
        out = []
        if self.tables:
            out.append(f"{len(self.tables)} lookup table(s) ({', '.join(self.tables[:3])})")
        if self.assets:
            out.append(f"asset file(s) {', '.join(self.assets[:3])}")
        if self.init_op:
            out.append(f"an init op ({self.init_op['kind']})")
        if self.other_resources:
            out.append(f"stateful resources ({', '.join(self.other_resources[:3])})")
        if self.variable_bytes >= FREEZE_LIMIT_BYTES:
            out.append(f"{self.variable_bytes / 2**30:.2f} GiB of variables (a frozen GraphDef "
                       "must stay under the 2 GiB protobuf limit)")
        return out

    def as_json(self) -> dict[str, Any]:
        return {"tables": self.tables, "init_op": self.init_op, "assets": self.assets,
                "other_resources": self.other_resources, "variables": self.variables,
                "variable_bytes": self.variable_bytes}


def graph_facts(meta_graph: Any, variables_dir: str | Path | None = None) -> GraphFacts:
    """Tables, init op, assets, saver subgraph and variables of one MetaGraphDef."""
    gd = meta_graph.graph_def
    facts = GraphFacts()
    _, saver_functions = saver_subgraph(meta_graph)
    facts.init_op = init_op(meta_graph)
    facts.assets = sorted({a.filename for a in asset_defs(meta_graph)})
    index = GraphIndex(gd)
    for scope, n in index.iter_nodes():
        label = n.name if not scope else f"{scope}/{n.name}"
        if n.op in TABLE_OPS:
            facts.tables.append(label)
        elif n.op in OTHER_RESOURCE_OPS and scope not in saver_functions:
            facts.other_resources.append(f"{label} ({n.op})")
        elif n.op in VARIABLE_OPS and not scope:
            facts.variables += 1
    facts.tables.sort()
    if variables_dir is not None:
        vdir = Path(variables_dir)
        if vdir.is_dir():
            facts.variable_bytes = sum(p.stat().st_size for p in vdir.glob("variables.data-*"))
    return facts


def init_op(meta_graph: Any) -> dict[str, str] | None:
    """The init op TF Serving runs after restoring variables, if it does anything: the TF2
    ``__saved_model_init_op`` signature, else the ``saved_model_main_op`` collection, else the
    ``legacy_init_op`` collection (the order of TF's loader). A bare NoOp is no init op."""
    nodes = {n.name: n for n in meta_graph.graph_def.node}
    candidates = []
    sig = meta_graph.signature_def.get(INIT_OP_SIGNATURE)
    if sig is not None and INIT_OP_SIGNATURE in sig.outputs:
        candidates.append((INIT_OP_SIGNATURE, node_name(sig.outputs[INIT_OP_SIGNATURE].name)))
    for key in (MAIN_OP_KEY, LEGACY_INIT_OP_KEY):
        col = meta_graph.collection_def.get(key)
        if col is not None and col.node_list.value:
            candidates.append((key.replace("saved_model_", ""), node_name(col.node_list.value[0])))
    for kind, name in candidates:
        node = nodes.get(name)
        if node is not None and (node.op != "NoOp" or node.input):
            return {"kind": kind, "name": name}
        if node is not None:
            return None  # the loader runs only the first one it finds
    return None


def serving_reach(meta_graph: Any) -> tuple[set[str], set[str]]:
    """Top-level nodes and library functions that can run when the model serves: the fan-in
    of every signature's tensors, of the init op and of the asset tensors. The saver's
    SaveV2/RestoreV2/MergeV2Checkpoints (every SavedModel has them) are not in it."""
    gd = meta_graph.graph_def
    targets = [t.name for sig in meta_graph.signature_def.values()
               for t in [*sig.inputs.values(), *sig.outputs.values()] if t.name]
    for key in (MAIN_OP_KEY, LEGACY_INIT_OP_KEY):
        col = meta_graph.collection_def.get(key)
        if col is not None:
            targets += list(col.node_list.value)
    targets += [a.tensor_info.name for a in asset_defs(meta_graph)]
    nodes = fan_in(gd, targets)
    by_name = {n.name: n for n in gd.node}
    return nodes, reachable_functions(gd, [by_name[n] for n in nodes])


SAVER_OPS = frozenset({"Save", "SaveV2", "SaveSlices", "Restore", "RestoreV2", "RestoreSlice",
                       "MergeV2Checkpoints"})


def unsafe_nodes(meta_graph: Any, unsafe_ops: Iterable[str]) -> list[tuple[str, str]]:
    """(node, op) of file/Python ops in the graph. Checkpoint save/restore ops count only where
    serving can reach them: every SavedModel has them for its variables (TF2 inside library
    functions, TF1 under ``save/``, sometimes twice), and they only run when fetched. Other
    file/Python ops count anywhere - TF Serving has no PyFunc kernel and fails the whole load."""
    ops = set(unsafe_ops)
    nodes, fns = serving_reach(meta_graph)
    out = [(n.name, n.op) for n in meta_graph.graph_def.node
           if n.op in ops and (n.op not in SAVER_OPS or n.name in nodes)]
    for fn in meta_graph.graph_def.library.function:
        reached = fn.signature.name in fns
        out += [(f"{fn.signature.name}/{n.name}", n.op) for n in fn.node_def
                if n.op in ops and (n.op not in SAVER_OPS or reached)]
    return sorted(out)


def saver_subgraph(meta_graph: Any) -> tuple[set[str], set[str]]:
    """Top-level nodes (variables excluded) and library functions only the saver reaches."""
    sd = meta_graph.saver_def
    targets = [t for t in (sd.save_tensor_name, sd.restore_op_name, sd.filename_tensor_name) if t]
    if not targets:
        return set(), set()
    gd = meta_graph.graph_def
    by_name = {n.name: n for n in gd.node}
    nodes = {n for n in fan_in(gd, targets) if by_name[n].op not in VARIABLE_OPS}
    serving_nodes, serving_fns = serving_reach(meta_graph)
    fns = reachable_functions(gd, [by_name[n] for n in nodes]) - serving_fns
    return nodes - serving_nodes, fns


def asset_defs(meta_graph: Any) -> list[Any]:
    """The AssetFileDefs TF's loader uses: ``asset_file_def`` (TF2 and SavedModelBuilder's
    newer form), else the ``saved_model_assets`` collection (TF1 SavedModelBuilder)."""
    if meta_graph.asset_file_def:
        return list(meta_graph.asset_file_def)
    col = meta_graph.collection_def.get(ASSETS_COLLECTION)
    if col is None:
        return []
    from tensorflow.core.protobuf import meta_graph_pb2

    out = []
    for item in col.any_list.value:
        a = meta_graph_pb2.AssetFileDef()
        item.Unpack(a)
        out.append(a)
    return out

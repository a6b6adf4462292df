"""Graph optimisers between loading and writing: ``none``, ``cpu`` and ``tftrt``.

``cpu`` rewrites the frozen GraphDef offline so TF Serving loads a smaller graph that needs no
runtime surgery:

1. fixed feeds (``phase_train=false``) become constants (the loaders do this already; repeated
   here so a hand-made NormalizedModel gets the same result);
2. Grappler runs offline (function inlining, constant folding, shape/arithmetic/dependency/loop
   optimisers, common subexpressions, pruning). With the feeds constant, the loop optimiser's
   dead-branch removal deletes the training half of every ``tf.cond`` (v1 Switch/Merge or
   functional If, which the function optimiser lowers);
3. batch norm is folded into the weights of the preceding Conv2D / DepthwiseConv2dNative /
   MatMul with numpy (FusedBatchNorm* in inference mode, and the Mul/Add form, including the
   ``scale * (conv + bias)`` of residual branches), in float64 then rounded to float32;
4. Grappler runs once more to clean up, devices are cleared, and the result is checked: it must
   import into a fresh graph and contain only public, registered ops.

Why Grappler's ``remapper`` is NOT run offline: it produces ``_FusedConv2D``/``_FusedMatMul``,
ops whose leading underscore marks them internal. TF Serving 2.17 is built from the same source
and would load them, but their attrs are not a stable interface across versions, and nothing is
gained: the server's own Grappler pass fuses Conv2D+BiasAdd+Relu at load time anyway (the
benchmark in docs/bench_cpu_optimize.md measures exactly that). So artefacts stay portable
across serving versions and between CPU and GPU images.

Reduced precision on CPU: ``bf16`` is offered where the CPU has bf16 units (``builder/optimize/
bf16.py``: by default a measured serving profile - the artefact stays FP32 and TF Serving's
``--mixed_precision=bfloat16`` turns on oneDNN's rewrite - or ``--bake`` for a bf16 graph).
``int8`` stays refused: see ``CPU_INT8_NOTE`` for the measurement that decided it.

What ``cpu`` buys, measured (docs/bench_cpu_optimize.md): the same steady-state throughput as
``none`` (TF's load-time Grappler reaches the same fused kernels from the frozen graph), ~9x
fewer nodes, about half the load time, and no training-only branches in the artefact.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from typing import Any

import numpy as np

from builder.core.errors import GraphError, InputError
from builder.core.model import NormalizedModel, TensorInfo

OPTIMIZERS = ("none", "cpu", "tftrt")
PRECISIONS = ("fp32", "fp16", "int8", "bf16")

# precision -> optimizers that can produce it
_SUPPORTED = {
    "none": ("fp32", "bf16"),
    "cpu": ("fp32", "bf16"),
    "tftrt": ("fp32", "fp16", "int8"),
}

# Grappler passes for the offline CPU pipeline, in order. "remap" is deliberately absent (see
# the module docstring); "layout" is a GPU (NCHW) pass; "memory"/"autoparallel" are training.
GRAPPLER_PASSES = (
    "function",
    "debug_stripper",
    "constfold",
    "shape",
    "arithmetic",
    "dependency",
    "loop",
    "common_subgraph_elimination",
    "constfold",
    "pruning",
)

# Why --precision int8 is refused on CPU (measured, docs/optimizers.md "int8 on CPU").
CPU_INT8_NOTE = (
    "int8 on CPU is not offered: TF 2.17's own quantizer (static-range int8) made FaceNet 0.32x "
    "as fast as the FP32 export (XLA op set: 0.04x) at min cosine 0.984, measured on AMD EPYC "
    "Zen 4 (avx512_vnni), while bf16 gives 1.9x at 0.99996 (docs/benchmarks/bf16_cpu.md)"
)


_CONV_OPS = ("Conv2D", "DepthwiseConv2dNative")
_LINEAR_OPS = (*_CONV_OPS, "MatMul")
_BN_OPS = ("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3")


# --------------------------------------------------------------------------- request checks


def check_request(optimizer: str, precision: str, trt: dict[str, Any] | None = None,
                  bake: bool = False) -> None:
    """Validate ``--optimize``/``--precision`` BEFORE any work, so a bad combination never costs
    a model load. For ``tftrt`` this probes TensorRT (in a subprocess) and raises
    ``UnavailableError`` with the way out (the GPU builder image) when it cannot run here; when
    ``trt`` (the TF-TRT flags) is given, those are validated too. ``bf16`` checks this CPU
    (``bf16.check_request``): refused with the missing feature where it has no bf16 units."""
    if optimizer not in OPTIMIZERS:
        raise InputError(f"--optimize {optimizer!r} is unknown: use one of {', '.join(OPTIMIZERS)}")
    if precision not in PRECISIONS:
        raise InputError(f"--precision {precision!r} is unknown: use one of {', '.join(PRECISIONS)}")
    if bake and precision != "bf16":
        raise InputError(f"--bake bakes oneDNN's bf16 rewrite into the graph: it needs "
                         f"--precision bf16, not {precision}")
    if precision == "bf16":
        from builder.optimize import bf16

        bf16.check_request(optimizer)
        return
    if precision not in _SUPPORTED[optimizer]:
        if optimizer == "tftrt":
            raise InputError(f"--precision {precision} is not a TF-TRT precision: use fp32, fp16 or int8")
        if precision == "int8":
            raise InputError(f"--precision int8 needs --optimize tftrt (TensorRT on a GPU); "
                             f"{CPU_INT8_NOTE}: use --precision bf16 or fp32")
        raise InputError(
            f"--precision {precision} needs --optimize tftrt (TensorRT on a GPU); "
            f"--optimize {optimizer} runs in fp32 or bf16: use --precision fp32"
        )
    if optimizer == "tftrt":
        from builder.optimize import tftrt

        if trt is not None:
            tftrt.TrtOptions(precision=precision, **trt)  # validates flag values
        tftrt.require_tftrt()


# --------------------------------------------------------------------------- entry point


def optimize_graph(model: NormalizedModel, optimizer: str, precision: str = "fp32", *,
                   bake: bool = False, measure_batch: int | None = None
                   ) -> tuple[NormalizedModel, dict[str, Any]]:
    """A NEW NormalizedModel with the optimised graph (same inputs/outputs/aliases/run_source)
    and the info dict that goes to ``build_info["optimization"]``.

    ``none`` is the identity (also used before TF-TRT, which converts the plain SavedModel);
    ``cpu`` runs the pipeline in the module docstring. ``precision="bf16"`` then hands the FP32
    graph to ``bf16.optimize``: baked with ``bake``, otherwise kept FP32 for the serving
    profile; with ``measure_batch`` the bf16 speed-up is measured and recorded."""
    t0 = time.perf_counter()
    before = _histogram(model.graph_def)
    if optimizer in ("none", "tftrt"):
        gd = _copy(model.graph_def)
        passes: list[dict[str, Any]] = []
    elif optimizer == "cpu":
        gd, passes = optimize_for_cpu(model.graph_def, model.inputs, model.outputs, model.feeds)
    else:
        raise InputError(f"--optimize {optimizer!r} is unknown: use one of {', '.join(OPTIMIZERS)}")
    bf16_info = None
    if precision == "bf16":
        from builder.optimize import bf16

        bf16.check_request(optimizer)
        gd, bf16_info, more = bf16.optimize(gd, model.inputs, model.outputs, bake, measure_batch)
        passes += more
    elif precision != "fp32" and optimizer != "tftrt":
        why = CPU_INT8_NOTE if precision == "int8" else f"--optimize {optimizer} runs fp32 or bf16"
        raise InputError(f"--precision {precision}: {why}; use --precision fp32")
    after = _histogram(gd)
    info = {
        "optimizer": optimizer,
        "precision": precision,
        "passes": passes,
        "nodes_before": sum(before.values()),
        "nodes_after": sum(after.values()),
        "op_delta": op_delta(before, after),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if bf16_info is not None:
        info["bf16"] = bf16_info
    notes = list(model.notes)
    if optimizer == "cpu":
        notes.append(f"optimizer cpu: {info['nodes_before']} -> {info['nodes_after']} nodes")
    new = dataclasses.replace(
        model,
        graph_def=gd,
        inputs=[dataclasses.replace(t) for t in model.inputs],
        outputs=[dataclasses.replace(t) for t in model.outputs],
        notes=notes,
    )
    return new, info


def optimize_for_cpu(graph_def: Any, inputs: list[TensorInfo], outputs: list[TensorInfo],
                     feeds: dict[str, Any] | None = None) -> tuple[Any, list[dict[str, Any]]]:
    """The ``cpu`` pipeline on a bare GraphDef; returns the new GraphDef and one record per
    pass (what ran and what it changed)."""
    passes: list[dict[str, Any]] = []
    gd = _copy(graph_def)
    for n in gd.node:
        n.device = ""
    for fn in gd.library.function:
        for n in fn.node_def:
            n.device = ""

    gd, folded = fold_feeds(gd, feeds or {})
    passes.append({"name": "fold_feeds", "folded": folded})

    n0 = _count(gd)
    gd = run_grappler(gd, inputs, outputs, GRAPPLER_PASSES)
    passes.append({"name": "grappler", "optimizers": list(GRAPPLER_PASSES),
                   "nodes_before": n0, "nodes_after": _count(gd)})

    gd, stats = fold_batch_norms(gd, keep=[_node(t.tensor) for t in [*outputs, *inputs]],
                                 protected={_node(t.tensor) for t in outputs})
    passes.append({"name": "fold_batch_norm", **stats})

    n0 = _count(gd)
    cleanup = ("constfold", "arithmetic", "dependency", "pruning")
    gd = run_grappler(gd, inputs, outputs, cleanup)
    for n in gd.node:
        n.device = ""
    passes.append({"name": "grappler", "optimizers": list(cleanup),
                   "nodes_before": n0, "nodes_after": _count(gd)})

    check_standard_graph(gd, inputs, outputs)
    passes.append({"name": "check_standard_ops", "passed": True})
    return gd, passes


# --------------------------------------------------------------------------- passes


def fold_feeds(graph_def: Any, feeds: dict[str, Any]) -> tuple[Any, list[str]]:
    """Turn the placeholders named in ``feeds`` into constants (idempotent: nodes the loader
    already folded are left alone). Returns the new graph and the node names folded."""
    import tensorflow as tf

    gd = _copy(graph_def)
    by_name = {n.name: n for n in gd.node}
    folded = []
    for key, value in feeds.items():
        name = _node(key)
        node = by_name.get(name)
        if node is None or node.op not in ("Placeholder", "PlaceholderV2", "PlaceholderWithDefault"):
            continue
        dtype = tf.as_dtype(node.attr["dtype"].type)
        arr = np.asarray(value, dtype=dtype.as_numpy_dtype)
        node.op = "Const"
        del node.input[:]
        node.ClearField("attr")
        node.attr["dtype"].type = dtype.as_datatype_enum
        node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(arr, dtype=dtype))
        folded.append(name)
    return gd, folded


def run_grappler(graph_def: Any, inputs: list[TensorInfo], outputs: list[TensorInfo],
                 optimizers: tuple[str, ...] | list[str]) -> Any:
    """Grappler offline on a MetaGraphDef whose signature names the feeds and fetches, so
    pruning keeps exactly the serving inputs/outputs.

    Every signature entry gets its dtype: Grappler aborts the PROCESS (C++ CHECK "Type not set")
    on a TensorInfo without one."""
    import tensorflow as tf
    from tensorflow.core.protobuf import config_pb2, meta_graph_pb2, rewriter_config_pb2
    from tensorflow.python.grappler import tf_optimizer

    mg = meta_graph_pb2.MetaGraphDef()
    mg.graph_def.CopyFrom(graph_def)
    sig = mg.signature_def["serving_default"]
    sig.method_name = "tensorflow/serving/predict"
    for side, infos in ((sig.inputs, inputs), (sig.outputs, outputs)):
        for t in infos:
            entry = side[t.alias]
            entry.name = t.tensor
            entry.dtype = tf.as_dtype(t.dtype).as_datatype_enum
            for d in t.shape:
                entry.tensor_shape.dim.add().size = -1 if d is None else int(d)
    fetch = mg.collection_def["train_op"].node_list.value
    for t in outputs:
        if _node(t.tensor) not in fetch:
            fetch.append(_node(t.tensor))

    cfg = config_pb2.ConfigProto()
    rc = cfg.graph_options.rewrite_options
    rc.optimizers.extend(optimizers)
    rc.meta_optimizer_iterations = rewriter_config_pb2.RewriterConfig.TWO
    rc.min_graph_nodes = -1  # optimise small graphs too (tests, tiny models)
    out = tf_optimizer.OptimizeGraph(cfg, mg, verbose=False)
    out.versions.CopyFrom(graph_def.versions)
    return out


def fold_batch_norms(graph_def: Any, keep: list[str], protected: set[str] = frozenset()
                     ) -> tuple[Any, dict[str, int]]:
    """Fold constant per-channel scale/shift ops into the preceding linear op's weights.

    Patterns (``L`` = Conv2D | DepthwiseConv2dNative | MatMul with a constant weight whose
    output feeds only the pattern; ``c`` = a constant that broadcasts along the channel axis):

    - ``FusedBatchNorm*(L, gamma, beta, mean, var)`` in inference mode -> ``BiasAdd(L', b)``
    - ``FusedBatchNorm*(BiasAdd(L, b0), ...)`` -> ``BiasAdd(L', b0*s + b)``
    - ``Mul(L, c)`` -> ``L'`` (an Identity keeps the node name)
    - ``Mul(BiasAdd(L, b), c)`` -> ``BiasAdd(L', b*c)``
    - ``Add|AddV2|BiasAdd(L, c)`` -> ``BiasAdd(L, c)``;  ``Sub(L, c)`` -> ``BiasAdd(L, -c)``
    - ``Add|AddV2|BiasAdd|Sub(BiasAdd(L, b), c)`` -> ``BiasAdd(L, b ± c)``

    The node that ends a pattern keeps its name, so consumers and signature tensors still
    resolve. Nodes in ``protected`` (the outputs) are never consumed by a fold. Runs to a fixed
    point, then prunes to the ancestors of ``keep`` (outputs and inputs) so the replaced weight
    constants fall away; returns the graph and counts per pattern.
    """
    import tensorflow as tf

    gd = _copy(graph_def)
    stats: Counter = Counter()
    taken = {n.name for n in gd.node}
    while True:
        # One sweep applies every fold whose nodes no earlier fold of the sweep touched; the
        # rest wait for the next sweep and its fresh index.
        g = _GraphIndex(gd)
        edit = _Edit(gd.node, taken)
        for node in list(gd.node):
            if node.name not in edit.dirty:
                kind = _try_fold(node, g, edit, protected, tf)
                if kind:
                    stats[kind] += 1
        if not edit.applied:
            break
        if edit.drops:
            kept = [n for n in gd.node if n.name not in edit.drops]
            del gd.node[:]
            gd.node.extend(kept)
    gd = tf.compat.v1.graph_util.extract_sub_graph(gd, list(dict.fromkeys(keep)))
    return gd, {"batch_norm": stats["batch_norm"], "mul": stats["mul"], "add": stats["add"],
                "total": sum(stats.values())}


# --------------------------------------------------------------------------- checks


def check_standard_graph(graph_def: Any, inputs: list[TensorInfo] = (), outputs: list[TensorInfo] = ()
                         ) -> None:
    """The optimised graph must import in a fresh graph and use only public registered ops
    (what stock TF Serving loads); internal ``_Op`` types would tie it to one TF version."""
    g = import_standard_graph(graph_def, producer="the cpu optimiser", label="the cpu-optimised graph",
                              bug_fallback="export with --optimize none",
                              fallback="export with --optimize none")
    for t in [*inputs, *outputs]:
        try:
            g.get_tensor_by_name(t.tensor)
        except (KeyError, ValueError):
            raise GraphError(f"the cpu optimiser lost signature tensor {t.tensor} "
                             f"({t.alias}): export with --optimize none") from None


def import_standard_graph(graph_def: Any, *, producer: str, label: str, bug_fallback: str,
                          fallback: str) -> Any:
    """A rewritten GraphDef (cpu optimiser, bf16 bake) imported into a fresh ``tf.Graph``, after
    checking it holds only public registered ops. Non-standard ops are our bug (the message says
    so and names ``bug_fallback``); a graph that does not import names ``fallback``."""
    import tensorflow as tf

    from builder.config import compat

    bad = compat.unregistered_ops(graph_def) | compat.internal_ops(graph_def)
    if bad:
        raise GraphError(f"{producer} produced non-standard ops {sorted(bad)}: this is a bug in "
                         f"tfs-builder; {bug_fallback} meanwhile")
    with tf.Graph().as_default() as g:
        try:
            tf.graph_util.import_graph_def(graph_def, name="")
        except (ValueError, tf.errors.OpError) as e:
            raise GraphError(f"{label} does not import ({str(e).splitlines()[0]}): {fallback}") from None
    return g


def op_delta(before: Counter, after: Counter) -> dict[str, int]:
    """Op-type histogram change, non-zero entries only, biggest change first."""
    keys = set(before) | set(after)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in keys}
    return dict(sorted(((k, v) for k, v in delta.items() if v), key=lambda kv: (-abs(kv[1]), kv[0])))


# --------------------------------------------------------------------------- internals


def _copy(graph_def: Any) -> Any:
    out = type(graph_def)()
    out.CopyFrom(graph_def)
    return out


def _node(tensor: str) -> str:
    name = tensor.lstrip("^")
    head, _, tail = name.rpartition(":")
    return head if head and tail.isdigit() else name


def _histogram(graph_def: Any) -> Counter:
    from builder.config import compat

    return compat.op_histogram(graph_def)


def _count(graph_def: Any) -> int:
    return len(graph_def.node) + sum(len(f.node_def) for f in graph_def.library.function)


class _GraphIndex:
    """Name -> node, and how many consumers each tensor / node has (control edges count)."""

    def __init__(self, gd: Any):
        self.nodes = {n.name: n for n in gd.node}
        self._consts: dict[str, np.ndarray | None] = {}
        self.tensor_uses: Counter = Counter()
        self.node_uses: Counter = Counter()
        for n in gd.node:
            for i in n.input:
                if i.startswith("^"):
                    self.node_uses[i[1:]] += 1
                    self.tensor_uses[i] += 1
                else:
                    name = i if ":" in i else f"{i}:0"
                    self.tensor_uses[name] += 1
                    self.node_uses[_node(i)] += 1

    def const(self, tensor: str) -> np.ndarray | None:
        """Value of a constant input, seen through Identity chains (memoised per index)."""
        key = _node(tensor)
        if key not in self._consts:
            self._consts[key] = self._const(key)
        return self._consts[key]

    def _const(self, name: str) -> np.ndarray | None:
        import tensorflow as tf

        for _ in range(16):
            n = self.nodes.get(name)
            if n is None:
                return None
            if n.op == "Const":
                return tf.make_ndarray(n.attr["value"].tensor)
            if n.op != "Identity" or not n.input:
                return None
            name = _node(n.input[0])
        return None

    def producer(self, tensor: str) -> Any | None:
        if tensor.startswith("^"):
            return None
        head, _, tail = tensor.rpartition(":")
        if head and tail.isdigit() and tail != "0":
            return None  # a secondary output (e.g. FusedBatchNorm's mean) is not foldable
        return self.nodes.get(_node(tensor))

    def sole_use(self, node: Any) -> bool:
        return self.node_uses[node.name] == 1


def _channels(node: Any, g: _GraphIndex) -> tuple[np.ndarray, int] | None:
    """(weights, output-channel count) of a foldable linear node, else None."""
    if node.op not in _LINEAR_OPS or len(node.input) < 2:
        return None
    if node.op in _CONV_OPS and node.attr["data_format"].s not in (b"", b"NHWC"):
        return None
    w = g.const(node.input[1])
    if w is None or w.dtype not in (np.float32, np.float64):
        return None
    if node.op == "Conv2D":
        return w, w.shape[-1]
    if node.op == "DepthwiseConv2dNative":
        return w, w.shape[2] * w.shape[3]
    if node.attr["transpose_a"].b:
        return None
    return w, (w.shape[0] if node.attr["transpose_b"].b else w.shape[1])


def _scaled_weights(node: Any, w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    w64 = w.astype(np.float64)
    if node.op == "Conv2D":
        out = w64 * scale
    elif node.op == "DepthwiseConv2dNative":
        out = w64 * scale.reshape(w.shape[2], w.shape[3])
    elif node.attr["transpose_b"].b:
        out = w64 * scale[:, None]
    else:
        out = w64 * scale[None, :]
    return out.astype(w.dtype)


def _per_channel(c: np.ndarray | None, channels: int) -> np.ndarray | None:
    """A constant that broadcasts along the last (channel) axis only -> its [C] vector."""
    if c is None or c.dtype not in (np.float32, np.float64):
        return None
    if c.ndim == 0:
        return np.full(channels, float(c), dtype=np.float64)
    if any(d != 1 for d in c.shape[:-1]) or c.shape[-1] not in (1, channels):
        return None
    v = c.reshape(-1).astype(np.float64)
    return np.full(channels, v[0]) if v.size == 1 else v


def _const_node(name: str, value: np.ndarray, tf: Any) -> Any:
    n = tf.compat.v1.NodeDef(name=name, op="Const")
    n.attr["dtype"].type = tf.as_dtype(value.dtype).as_datatype_enum
    n.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
    return n


class _Edit:
    """The rewrites of one sweep: new constants appended, nodes to drop at the end of the sweep
    (deleting from a repeated field mid-iteration would invalidate the index), and the nodes
    touched so far (a later fold in the same sweep must not build on stale index entries)."""

    def __init__(self, node_list: Any, taken: set[str]):
        self.node_list = node_list
        self.taken = taken
        self.dirty: set[str] = set()
        self.drops: set[str] = set()
        self.applied = 0

    def claim(self, *nodes: Any) -> bool:
        names = {n.name for n in nodes if n is not None}
        if names & self.dirty:
            return False
        self.dirty |= names
        self.applied += 1
        return True

    def unique(self, base: str) -> str:
        name, i = base, 1
        while name in self.taken:
            name, i = f"{base}_{i}", i + 1
        self.taken.add(name)
        return name

    def add_const(self, base: str, value: np.ndarray, tf: Any) -> Any:
        n = _const_node(self.unique(base), value, tf)
        self.node_list.append(n)
        return n

    def set_weights(self, linear: Any, w: np.ndarray, tf: Any) -> None:
        linear.input[1] = self.add_const(f"{linear.name}/folded_weights", w, tf).name

    def as_bias_add(self, node: Any, feed: Any, bias: np.ndarray, dtype_attr: Any, tf: Any) -> None:
        """Rewrite ``node`` in place into ``BiasAdd(feed:0, bias)`` keeping its name."""
        bias_node = self.add_const(f"{node.name}/folded_bias", bias, tf)
        control = [i for i in node.input if i.startswith("^")]
        node.op = "BiasAdd"
        del node.input[:]
        node.input.extend([feed.name, bias_node.name, *control])
        node.ClearField("attr")
        node.attr["T"].CopyFrom(dtype_attr)
        node.attr["data_format"].s = b"NHWC"


def _as_identity(node: Any, feed: Any, dtype_attr: Any) -> None:
    control = [i for i in node.input if i.startswith("^")]
    node.op = "Identity"
    del node.input[:]
    node.input.extend([feed.name, *control])
    node.ClearField("attr")
    node.attr["T"].CopyFrom(dtype_attr)


@dataclasses.dataclass
class _Chain:
    """What feeds a scale/shift: ``[Reshape] <- [BiasAdd(., b)] <- L``, every link used once.

    ``feed`` is the node the rewritten op consumes afterwards (L, or the Reshape rewired onto L);
    ``bias_add`` is dropped by a fold because its bias moves into the new BiasAdd."""

    linear: Any
    weights: np.ndarray
    channels: int
    bias: np.ndarray | None
    bias_add: Any | None
    reshape: Any | None

    @property
    def feed(self) -> Any:
        return self.reshape if self.reshape is not None else self.linear

    def claim(self, node: Any, edit: _Edit) -> bool:
        return edit.claim(node, self.linear, self.bias_add, self.reshape)

    def detach_bias(self, edit: _Edit) -> None:
        if self.bias_add is None:
            return
        if self.reshape is not None:
            self.reshape.input[0] = self.linear.name
        edit.drops.add(self.bias_add.name)


def _usable(node: Any | None, g: _GraphIndex, protected: set[str]) -> bool:
    return node is not None and node.name not in protected and g.sole_use(node)


def _linear_below(tensor: str, g: _GraphIndex, protected: set[str]) -> _Chain | None:
    """The foldable chain that produces ``tensor`` (see ``_Chain``), or None."""
    node = g.producer(tensor)
    if not _usable(node, g, protected):
        return None
    reshape = None
    if node.op == "Reshape":
        shape = g.const(node.input[1])
        if shape is None or shape.ndim != 1 or shape.size == 0:
            return None
        reshape, node = node, g.producer(node.input[0])
        if not _usable(node, g, protected):
            return None
    bias_add, bias = None, None
    if node.op == "BiasAdd":
        if node.attr["data_format"].s not in (b"", b"NHWC"):
            return None
        bias_add, bias = node, g.const(node.input[1])
        node = g.producer(node.input[0])
        if bias is None or not _usable(node, g, protected):
            return None
    ch = _channels(node, g)
    if ch is None:
        return None
    w, channels = ch
    if reshape is not None and int(g.const(reshape.input[1])[-1]) != channels:
        return None  # the reshape moves the channel axis: the scale would hit other elements
    if bias is not None:
        bias = _per_channel(bias, channels)
        if bias is None:
            return None
    return _Chain(node, w, channels, bias, bias_add, reshape)


def _dtype_attr(node: Any) -> Any:
    attr = type(node.attr["T"])()
    attr.CopyFrom(node.attr["T"])
    return attr


def _try_fold(node: Any, g: _GraphIndex, edit: _Edit, protected: set[str], tf: Any) -> str | None:
    """Apply the first pattern that ends at ``node`` (see ``fold_batch_norms``); its name."""
    if node.op in _BN_OPS:
        return _fold_batch_norm(node, g, edit, protected, tf)
    return _fold_arithmetic(node, g, edit, protected, tf)


def _fold_batch_norm(node: Any, g: _GraphIndex, edit: _Edit, protected: set[str], tf: Any) -> str | None:
    """An inference FusedBatchNorm below a linear op: scale the weights, keep one BiasAdd."""
    if node.attr["is_training"].b or node.attr["data_format"].s not in (b"", b"NHWC"):
        return None
    if any(g.tensor_uses[f"{node.name}:{k}"] for k in range(1, 6)):
        return None
    chain = _linear_below(node.input[0], g, protected)
    if chain is None:
        return None
    params = [g.const(i) for i in node.input[1:5]]
    if any(p is None or p.shape != (chain.channels,) for p in params):
        return None
    if not chain.claim(node, edit):
        return None
    gamma, beta, mean, var = (p.astype(np.float64) for p in params)
    eps = node.attr["epsilon"].f if "epsilon" in node.attr else 1e-3
    scale = gamma / np.sqrt(var + eps)
    bias = beta - mean * scale + (0.0 if chain.bias is None else chain.bias * scale)
    dtype = _dtype_attr(node)
    edit.set_weights(chain.linear, _scaled_weights(chain.linear, chain.weights, scale), tf)
    chain.detach_bias(edit)
    edit.as_bias_add(node, chain.feed, bias.astype(chain.weights.dtype), dtype, tf)
    return "batch_norm"


def _fold_arithmetic(node: Any, g: _GraphIndex, edit: _Edit, protected: set[str], tf: Any) -> str | None:
    """A per-channel Mul / Add / Sub / BiasAdd by a constant below a linear op."""
    if node.op not in ("Mul", "Add", "AddV2", "BiasAdd", "Sub") or len(node.input) < 2:
        return None
    if node.op == "BiasAdd" and node.attr["data_format"].s not in (b"", b"NHWC"):
        return None
    sides = [(0, 1)] if node.op in ("BiasAdd", "Sub") else [(0, 1), (1, 0)]
    for xi, ci in sides:
        if node.input[xi].startswith("^") or node.input[ci].startswith("^"):
            continue
        chain = _linear_below(node.input[xi], g, protected)
        if chain is None:
            continue
        c = _per_channel(g.const(node.input[ci]), chain.channels)
        if c is None:
            continue
        if node.op == "BiasAdd" and chain.bias is None:
            return None  # already the target form
        if not chain.claim(node, edit):
            return None
        dtype = _dtype_attr(node)
        wdt = chain.weights.dtype
        if node.op == "Mul":
            edit.set_weights(chain.linear, _scaled_weights(chain.linear, chain.weights, c), tf)
            if chain.bias is None:
                _as_identity(node, chain.feed, dtype)
            else:
                chain.detach_bias(edit)
                edit.as_bias_add(node, chain.feed, (chain.bias * c).astype(wdt), dtype, tf)
            return "mul"
        shift = (-c if node.op == "Sub" else c) + (0.0 if chain.bias is None else chain.bias)
        chain.detach_bias(edit)
        edit.as_bias_add(node, chain.feed, shift.astype(wdt), dtype, tf)
        return "add"
    return None

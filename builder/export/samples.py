"""Parity inputs for every kept signature: synthesised where the graph says enough, else read
from ``--samples`` (npz, TF Serving REST JSON, or a TFRecord of PredictionLog).

Synthesis rules (documented in the README, "Samples"):

- numbers: normal floats / integers in 0..9 / random booleans, ``--num_samples`` rows on a free
  batch dimension; every other unknown dimension gets ``DEFAULT_DIM``. A second set (3 rows,
  unknown dimensions ``SECOND_DIM``) runs through parity too, so a size fixed by mistake fails;
- scalars stay scalars (a ``tf.int32`` loop count gets 0..9);
- a string input that feeds ``ParseExample``/``ParseExampleV2``/``ParseSingleExample`` gets
  serialized ``tf.Example`` protos built from the parser's spec in the graph (dense and sparse
  keys, dtypes, shapes); other strings are keys of the graph's lookup tables (from the
  initialisers' constants) plus one unknown key, or short words when the graph has no table.

An input that can be neither synthesised nor found in ``--samples`` is an InputError naming the
signature, the input and the three sample formats.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from builder.core import artifact
from builder.core.errors import InputError
from builder.core.model import GraphIndex, Signature, TensorInfo, node_name, tensor_name

DEFAULT_DIM = 32
SECOND_DIM = 48
SECOND_ROWS = 3
UNKNOWN_KEY = b"tfs-builder-unknown-key"
WORDS = [b"alpha", b"beta", b"gamma", b"delta", b"epsilon"]
FORMATS = ("an .npz keyed SIGNATURE/INPUT (or INPUT for serving_default), a TF Serving REST JSON "
           "request ({\"signature_name\", \"instances\"|\"inputs\"|\"examples\"}), or a TFRecord of "
           "PredictionLog (TF Serving's warmup format)")
_PARSE_OPS = ("ParseExample", "ParseExampleV2", "ParseSingleExample")


class Unsynthesisable(Exception):
    """An input the graph does not describe well enough to invent values for."""


@dataclass
class ExampleSpec:
    """What a ParseExample node in the graph reads from each tf.Example."""

    dense: dict[str, tuple[str, list[int]]] = field(default_factory=dict)  # key -> (dtype, shape)
    sparse: dict[str, str] = field(default_factory=dict)  # key -> dtype
    single: bool = False  # ParseSingleExample: one example, not a batch


@dataclass
class GraphHints:
    """What the staged graph says about its string inputs."""

    examples: dict[str, ExampleSpec] = field(default_factory=dict)  # input tensor -> spec
    shapes: dict[str, list[int | None]] = field(default_factory=dict)  # graph shapes of rank-less entries
    table_keys: list[bytes] = field(default_factory=list)
    table_int_keys: list[int] = field(default_factory=list)


@dataclass
class SamplePlan:
    """Inputs per signature key: ``primary`` (golden, warmup, parity) and ``second`` (parity
    only); ``origin`` says where each signature's inputs came from."""

    primary: dict[str, dict[str, np.ndarray]]
    second: dict[str, dict[str, np.ndarray]]
    origin: dict[str, str]
    max_batch: dict[str, int] = field(default_factory=dict)  # signatures that only run this many rows


# --------------------------------------------------------------------------- graph hints


def graph_hints(meta_graph: Any, signatures: dict[str, Signature], saved_model_dir: Path | None = None
                ) -> GraphHints:
    """tf.Example specs of string inputs and lookup-table keys, read from the graph (and from
    the vocabulary files in ``assets/`` that text-file tables are filled from)."""
    index = GraphIndex(meta_graph.graph_def)
    hints = GraphHints()
    unknown = [t.tensor for s in signatures.values() for t in s.inputs if t.shape is None and t.tensor]
    hints.shapes = _graph_shapes(meta_graph.graph_def, unknown) if unknown else {}
    for sig in signatures.values():
        for t in sig.inputs:
            if t.dtype == "string" and t.tensor:
                spec = _example_spec(index, t.tensor)
                if spec is not None:
                    hints.examples[tensor_name(t.tensor)] = spec
    keys: list[Any] = []
    for scope, node in index.iter_nodes():
        if node.op in ("InitializeTable", "InitializeTableV2", "LookupTableImportV2", "LookupTableImport"):
            data = [i for i in node.input if not i.startswith("^")]
            value = index.const_value(scope, data[1]) if len(data) > 1 else None
            if value is not None:
                keys.extend(value.reshape(-1).tolist())
        elif node.op in ("InitializeTableFromTextFileV2", "InitializeTableFromTextFile") and saved_model_dir:
            keys.extend(_text_file_keys(index, scope, node, saved_model_dir))
    hints.table_keys = sorted({k for k in keys if isinstance(k, bytes)})
    hints.table_int_keys = sorted({int(k) for k in keys if isinstance(k, (int, np.integer))})
    return hints


def _text_file_keys(index: GraphIndex, scope: str, node: Any, saved_model_dir: Path, limit: int = 10000
                    ) -> list[Any]:
    """Keys of a table filled from a vocabulary file: whole lines, a column, or line numbers."""
    data = [i for i in node.input if not i.startswith("^")]
    value = index.const_value(scope, data[1]) if len(data) > 1 else None
    if value is None:
        return []
    name = Path(value.reshape(-1)[0].decode("utf-8", "replace"))
    path = next((p for p in (saved_model_dir / "assets" / name.name, name) if p.is_file()), None)
    if path is None:
        return []
    key_index = node.attr["key_index"].i
    delim = node.attr["delimiter"].s.decode() or "\t"
    lines = path.read_bytes().splitlines()[:limit]
    if key_index == -1:  # line numbers
        return list(range(len(lines)))
    if key_index == -2:  # whole lines
        return lines
    return [ln.split(delim.encode())[key_index] for ln in lines if len(ln.split(delim.encode())) > key_index]


def _graph_shapes(graph_def: Any, tensors: list[str]) -> dict[str, list[int | None]]:
    """Old SignatureDefs often carry no shape: TensorFlow's shape inference on the graph may
    know it (a placeholder's declared shape, a parser's dense shape)."""
    import tensorflow as tf

    from builder.load.graphs import shape_list

    graph = tf.Graph()
    with graph.as_default():
        try:
            tf.compat.v1.import_graph_def(graph_def, name="")
        except (ValueError, tf.errors.OpError):
            return {}
    out = {}
    for t in tensors:
        try:
            ten = graph.get_tensor_by_name(tensor_name(t))
        except (KeyError, ValueError):
            continue
        shape = shape_list(ten.shape)
        if shape is None:
            shape = _parsed_dense_shape(ten)
        if shape is not None:
            out[tensor_name(t)] = shape
    return out


def _parsed_dense_shape(ten: Any) -> list[int | None] | None:
    """A dense output of ParseExample(V2) (through Identity) is [batch, *dense_shape]."""
    op = ten.op
    while op.type == "Identity":
        ten = op.inputs[0]
        op = ten.op
    if op.type not in ("ParseExampleV2", "ParseExample"):
        return None
    dense_shapes = op.get_attr("dense_shapes")
    num_sparse = op.get_attr("num_sparse" if op.type == "ParseExampleV2" else "Nsparse")
    k = ten.value_index - 3 * num_sparse  # outputs: sparse indices, values, shapes, then dense
    if not 0 <= k < len(dense_shapes):
        return None
    proto = dense_shapes[k]
    dims = [d.size for d in proto.dim] if hasattr(proto, "dim") else proto.as_list()
    return [None, *(None if d is None or int(d) < 0 else int(d) for d in dims)]


def _example_spec(index: GraphIndex, tensor: str) -> ExampleSpec | None:
    for scope, node, k in index.consumers("", tensor):
        if node.op in _PARSE_OPS and k == 0:
            return _spec_of(index, scope, node)
    return None


def _spec_of(index: GraphIndex, scope: str, node: Any) -> ExampleSpec | None:
    import tensorflow as tf

    data = [i for i in node.input if not i.startswith("^")]
    tdense = [tf.as_dtype(t).name for t in node.attr["Tdense"].list.type]
    shapes = [[max(d.size, 1) for d in s.dim] for s in node.attr["dense_shapes"].list.shape]
    sparse_types = [tf.as_dtype(t).name for t in node.attr["sparse_types"].list.type]
    if node.op == "ParseSingleExample":
        dense = [k.decode() for k in node.attr["dense_keys"].list.s]
        sparse = [k.decode() for k in node.attr["sparse_keys"].list.s]
    elif node.op == "ParseExampleV2":
        dense = _keys(index, scope, data[3])
        sparse = _keys(index, scope, data[2])
    else:  # ParseExample: serialized, names, sparse_keys x Nsparse, dense_keys x Ndense, defaults
        ns, nd = node.attr["Nsparse"].i, node.attr["Ndense"].i
        sparse = [k for ref in data[2:2 + ns] for k in _keys(index, scope, ref)]
        dense = [k for ref in data[2 + ns:2 + ns + nd] for k in _keys(index, scope, ref)]
    if dense is None or sparse is None or len(dense) != len(tdense) or len(sparse) != len(sparse_types):
        return None
    return ExampleSpec(dense={k: (t, s) for k, t, s in zip(dense, tdense, shapes)},
                       sparse=dict(zip(sparse, sparse_types)), single=node.op == "ParseSingleExample")


def _keys(index: GraphIndex, scope: str, ref: str) -> list[str] | None:
    value = index.const_value(scope, ref)
    if value is None:
        return None
    return [k.decode() if isinstance(k, bytes) else str(k) for k in value.reshape(-1).tolist()]


# --------------------------------------------------------------------------- synthesis


def synthesise(sig: Signature, hints: GraphHints, rows: int, dim: int, seed: int) -> dict[str, np.ndarray]:
    """Inputs for one signature; raises Unsynthesisable naming what is missing."""
    rng = np.random.default_rng(seed)
    return {t.alias: _one(t, hints, rows, dim, rng) for t in sig.inputs}


def _one(t: TensorInfo, hints: GraphHints, rows: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    if not t.tensor:
        raise Unsynthesisable("it is a sparse/composite tensor")
    dims = t.shape if t.shape is not None else hints.shapes.get(tensor_name(t.tensor))
    if dims is None and tensor_name(t.tensor) in hints.examples:
        dims = [None]  # a batch of serialized tf.Examples
    if dims is None:
        raise Unsynthesisable("its rank is unknown")
    shape = tuple(rows if i == 0 and d is None else (dim if d is None else d) for i, d in enumerate(dims))
    if t.dtype == "string":
        return _strings(t, hints, shape, rng)
    try:
        dt = np.dtype(t.dtype)
    except TypeError:
        raise Unsynthesisable(f"its dtype {t.dtype} has no numpy equivalent") from None
    if dt.kind == "f":
        return rng.standard_normal(shape).astype(dt)
    if dt.kind in "iu":
        pool = hints.table_int_keys
        if pool:
            return rng.choice(np.array([*pool, max(pool) + 1]), size=shape).astype(dt)
        return rng.integers(0, 10, size=shape).astype(dt)
    if dt.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    if dt.kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dt)
    raise Unsynthesisable(f"its dtype {t.dtype} cannot be synthesised")


def _strings(t: TensorInfo, hints: GraphHints, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    spec = hints.examples.get(tensor_name(t.tensor))
    out = np.empty(shape, dtype=object)
    flat = out.reshape(-1)
    if spec is not None:
        for i in range(flat.size):
            flat[i] = example(spec, hints, rng).SerializeToString()
        return out
    pool = [*hints.table_keys, UNKNOWN_KEY] if hints.table_keys else WORDS
    for i in range(flat.size):
        flat[i] = pool[int(rng.integers(0, len(pool)))]
    return out


def example(spec: ExampleSpec, hints: GraphHints, rng: np.random.Generator) -> Any:
    """One tf.Example with every dense feature (values of its dtype and shape) and one to three
    values of every sparse feature."""
    import tensorflow as tf

    feats = {}
    for key, (dtype, shape) in spec.dense.items():
        feats[key] = _feature(dtype, int(np.prod(shape)) if shape else 1, hints, rng, tf)
    for key, dtype in spec.sparse.items():
        feats[key] = _feature(dtype, int(rng.integers(1, 4)), hints, rng, tf)
    return tf.train.Example(features=tf.train.Features(feature=feats))


def _feature(dtype: str, n: int, hints: GraphHints, rng: np.random.Generator, tf: Any) -> Any:
    if dtype == "string":
        pool = [*hints.table_keys, UNKNOWN_KEY] if hints.table_keys else WORDS
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[pool[int(rng.integers(0, len(pool)))]
                                                                     for _ in range(n)]))
    if dtype.startswith("int"):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=rng.integers(0, 10, n).tolist()))
    return tf.train.Feature(float_list=tf.train.FloatList(value=rng.standard_normal(n).astype(np.float32).tolist()))


# --------------------------------------------------------------------------- the plan


def plan(signatures: dict[str, Signature], meta_graph: Any, samples_path: str | None, rows: int,
         seed: int, saved_model_dir: Path | None = None) -> SamplePlan:
    """Samples for every signature: from the file where it has them, else synthesised."""
    given = read_samples(samples_path, signatures) if samples_path else {}
    hints = graph_hints(meta_graph, signatures, saved_model_dir)
    primary, second, origin = {}, {}, {}
    lossy = s_string_keys(samples_path) if samples_path and Path(samples_path).suffix == ".npz" else set()
    for key, sig in signatures.items():
        if key in given:
            primary[key], origin[key] = given[key], f"--samples {samples_path}"
            if any(k.split("/")[-1] in given[key] for k in lossy):
                origin[key] += " (numpy 'S' strings: trailing NUL bytes were lost)"
            continue
        try:
            primary[key] = synthesise(sig, hints, rows, DEFAULT_DIM, seed)
        except Unsynthesisable as e:
            bad = next(t for t in sig.inputs if fails(t, hints))
            raise InputError(
                f"signature {key!r} input {bad.alias!r} ({bad.dtype}, shape {_shape(bad.shape)}) cannot "
                f"be synthesised ({e}): pass --samples FILE with {FORMATS}") from None
        origin[key] = "synthesised"
        if any(d is None for t in sig.inputs for d in (t.shape or [])):
            second[key] = synthesise(sig, hints, SECOND_ROWS, SECOND_DIM, seed + 1)
    return SamplePlan(primary, second, origin)


def fails(t: TensorInfo, hints: GraphHints) -> bool:
    try:
        _one(t, hints, 1, 1, np.random.default_rng(0))
    except Unsynthesisable:
        return True
    return False


def _shape(shape: list[int | None] | None) -> str:
    return "unknown" if shape is None else "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


def batch_of(inputs: dict[str, np.ndarray], size: int, batched: set[str] | None = None) -> dict[str, np.ndarray]:
    """``size`` rows cycled from the samples; inputs not in ``batched`` (scalars, fixed-size
    inputs) are passed as they are. ``batched=None`` treats every input with a dim as batched."""
    out = {}
    for k, v in inputs.items():
        if v.ndim == 0 or (batched is not None and k not in batched):
            out[k] = v
            continue
        out[k] = v[np.arange(size) % v.shape[0]]
    return out


# --------------------------------------------------------------------------- --samples readers


def read_samples(path: str | os.PathLike, signatures: dict[str, Signature]) -> dict[str, dict[str, np.ndarray]]:
    """``--samples``: npz, TF Serving REST JSON or TFRecord of PredictionLog, by content."""
    p = Path(path)
    try:
        head = p.open("rb").read(64)
    except OSError as e:
        raise InputError(f"--samples {p}: cannot read it ({e.strerror or e})") from None
    if head.startswith(b"PK"):
        raw = _read_npz(p, signatures)
    elif head.lstrip()[:1] in (b"{", b"["):
        raw = _read_json(p, signatures)
    else:
        raw = _read_prediction_logs(p, signatures)
    return {key: _check_set(p, signatures[key], arrays) for key, arrays in raw.items()}


def _default_key(signatures: dict[str, Signature]) -> str | None:
    if "serving_default" in signatures:
        return "serving_default"
    return next(iter(signatures)) if len(signatures) == 1 else None


def s_string_keys(path: str | os.PathLike) -> set[str]:
    """Keys of an .npz stored as numpy 'S' arrays: their trailing NUL bytes are lost."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k for k in z.files if z[k].dtype.kind == "S"}
    except (OSError, ValueError):
        return set()


def _read_npz(p: Path, signatures: dict[str, Signature]) -> dict[str, dict[str, np.ndarray]]:
    try:
        arrays = artifact.read_npz(p)
    except ValueError as e:
        if "allow_pickle" in str(e) or "Object arrays" in str(e):
            raise InputError(f"--samples {p}: holds object (pickled) arrays, which are not loaded for "
                             "safety: save strings as numpy bytes/unicode arrays, as JSON with "
                             '{"b64": ...}, or as a TFRecord of PredictionLog') from None
        raise InputError(f"--samples {p}: not a readable .npz file ({e})") from None
    except OSError as e:
        raise InputError(f"--samples {p}: not a readable .npz file ({e})") from None
    out: dict[str, dict[str, np.ndarray]] = {}
    default = _default_key(signatures)
    for name, arr in arrays.items():
        key, alias = _npz_key(name, signatures, default)
        if key is not None:
            out.setdefault(key, {})[alias] = arr
    if not out:
        have = ", ".join(sorted(arrays)) or "none"
        if default is not None and signatures[default].inputs:
            first = signatures[default].inputs[0].alias
            raise InputError(f"--samples {p}: no array for input {first!r} (has: {have}); save it under "
                             f"the key {first!r} (SIGNATURE/INPUT for other signatures)")
        wanted = ", ".join(f"{k}/{t.alias}" for k, s in signatures.items() for t in s.inputs)
        raise InputError(f"--samples {p}: no array for any signature input (has: {have}); save them "
                         f"under SIGNATURE/INPUT keys ({wanted})")
    return out


def _npz_key(name: str, signatures: dict[str, Signature], default: str | None) -> tuple[str | None, str]:
    """``SIG/INPUT`` -> (SIG, INPUT); ``INPUT``, ``in/INPUT`` (golden.npz) -> default signature;
    a tensor or node name of a default-signature input -> its alias."""
    if name.startswith("in/"):
        name = name[3:]
    if "/" in name:
        key, alias = name.split("/", 1)
        if key in signatures:
            return key, alias
    if default is None:
        return None, name
    for t in signatures[default].inputs:
        if name in (t.alias, t.tensor, node_name(t.tensor)):
            return default, t.alias
    return None, name


def _read_json(p: Path, signatures: dict[str, Signature]) -> dict[str, dict[str, np.ndarray]]:
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"--samples {p}: not valid JSON ({e})") from None
    requests = doc if isinstance(doc, list) else doc.get("requests", [doc]) if isinstance(doc, dict) else None
    if not isinstance(requests, list) or not all(isinstance(r, dict) for r in requests):
        raise InputError(f"--samples {p}: expected a TF Serving REST request object (or a list of them)")
    out: dict[str, list[dict[str, np.ndarray]]] = {}
    for r in requests:
        key = str(r.get("signature_name") or "serving_default")
        if key not in signatures:
            raise InputError(f"--samples {p}: signature_name {key!r} is not a kept signature "
                             f"({', '.join(signatures)})")
        out.setdefault(key, []).append(_json_request(p, r, signatures[key]))
    return {k: _concat(p, k, parts) for k, parts in out.items()}


def _json_request(p: Path, r: dict[str, Any], sig: Signature) -> dict[str, np.ndarray]:
    names = [t.alias for t in sig.inputs]
    if "examples" in r:
        return {_example_input(p, sig): _examples_from_json(p, r["examples"], r.get("context"))}
    if "instances" in r:
        rows = r["instances"]
        if not isinstance(rows, list) or not rows:
            raise InputError(f"--samples {p}: \"instances\" must be a non-empty list")
        if all(isinstance(x, dict) and not _is_b64(x) for x in rows):
            cols = {n: [row.get(n) for row in rows] for n in names}
        elif len(names) == 1:
            cols = {names[0]: rows}
        else:
            raise InputError(f"--samples {p}: signature {sig.key!r} has inputs {names}: write each "
                             "instance as an object keyed by input name")
    elif "inputs" in r:
        value = r["inputs"]
        if isinstance(value, dict) and not _is_b64(value) and set(value) <= set(names):
            cols = value
        elif len(names) == 1:
            cols = {names[0]: value}
        else:
            raise InputError(f"--samples {p}: signature {sig.key!r} has inputs {names}: write "
                             "\"inputs\" as an object keyed by input name")
    else:
        raise InputError(f"--samples {p}: a request needs \"instances\", \"inputs\" or \"examples\"")
    return {n: _json_array(p, sig, n, v) for n, v in cols.items()}


def _is_b64(x: Any) -> bool:
    return isinstance(x, dict) and set(x) == {"b64"}


def _decode_b64(x: Any) -> Any:
    if _is_b64(x):
        return base64.b64decode(x["b64"])
    if isinstance(x, list):
        return [_decode_b64(v) for v in x]
    if isinstance(x, str):
        return x.encode("utf-8")
    return x


def _json_array(p: Path, sig: Signature, name: str, value: Any) -> np.ndarray:
    t = next((t for t in sig.inputs if t.alias == name), None)
    if t is None:
        raise InputError(f"--samples {p}: signature {sig.key!r} has no input {name!r}")
    if value is None:
        raise InputError(f"--samples {p}: no value for input {name!r} of signature {sig.key!r}")
    if t.dtype == "string":
        return np.array(_decode_b64(value), dtype=object)  # object arrays keep every byte
    try:
        return np.asarray(value, dtype=np.dtype(t.dtype))
    except (TypeError, ValueError) as e:
        raise InputError(f"--samples {p}: input {name!r} is not {t.dtype} ({e})") from None


def _examples_from_json(p: Path, examples: Any, context: Any) -> np.ndarray:
    """REST ``examples`` (feature -> value | list | {"b64"}) as serialized tf.Example, the way
    TF Serving builds them: integers int64, other numbers float, strings bytes."""
    import tensorflow as tf

    if not isinstance(examples, list) or not all(isinstance(e, dict) for e in examples):
        raise InputError(f"--samples {p}: \"examples\" must be a list of objects")
    out = np.empty(len(examples), dtype=object)
    for i, ex in enumerate(examples):
        feats = {k: _json_feature(p, k, v, tf) for k, v in {**(context or {}), **ex}.items()}
        out[i] = tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()
    return out


def _json_feature(p: Path, key: str, value: Any, tf: Any) -> Any:
    values = value if isinstance(value, list) else [value]
    values = [_decode_b64(v) if _is_b64(v) or isinstance(v, str) else v for v in values]
    if all(isinstance(v, bytes) for v in values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))
    raise InputError(f"--samples {p}: feature {key!r} mixes types; use numbers, strings or "
                     '{"b64": ...} values')


def _example_input(p: Path, sig: Signature) -> str:
    strings = [t.alias for t in sig.inputs if t.dtype == "string"]
    if len(sig.inputs) == 1 and len(strings) == 1:
        return strings[0]
    raise InputError(f"--samples {p}: \"examples\" need a signature with one string input; "
                     f"{sig.key!r} has {[t.alias for t in sig.inputs]}")


def _concat(p: Path, key: str, parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    try:
        return {k: np.concatenate([np.atleast_1d(x[k]) for x in parts]) for k in parts[0]}
    except (KeyError, ValueError) as e:
        raise InputError(f"--samples {p}: requests for {key!r} do not stack into one batch ({e})") from None


def _read_prediction_logs(p: Path, signatures: dict[str, Signature]) -> dict[str, dict[str, np.ndarray]]:
    import tensorflow as tf
    from google.protobuf.message import DecodeError
    from tensorflow_serving.apis import prediction_log_pb2

    out: dict[str, list[dict[str, np.ndarray]]] = {}
    try:
        records = list(artifact.iter_tfrecords(p))
    except tf.errors.OpError as e:
        raise InputError(f"--samples {p}: neither .npz, JSON nor a TFRecord file ({e.message.splitlines()[0]})"
                         ) from None
    for i, raw in enumerate(records):
        try:
            log = prediction_log_pb2.PredictionLog.FromString(raw)
        except DecodeError:
            raise InputError(f"--samples {p}: record {i} is not a PredictionLog") from None
        key, arrays = _log_inputs(p, i, log, signatures)
        out.setdefault(key, []).append(arrays)
    if not out:
        raise InputError(f"--samples {p}: the TFRecord file holds no PredictionLog")
    return {k: _concat(p, k, parts) for k, parts in out.items()}


def _log_inputs(p: Path, i: int, log: Any, signatures: dict[str, Signature]) -> tuple[str, dict[str, np.ndarray]]:
    import tensorflow as tf

    kind = log.WhichOneof("log_type")
    if kind == "predict_log":
        req = log.predict_log.request
        key = req.model_spec.signature_name or "serving_default"
        arrays = {k: _tensor(v, tf) for k, v in req.inputs.items()}
    elif kind in ("classify_log", "regress_log"):
        req = getattr(log, kind).request
        key = req.model_spec.signature_name or "serving_default"
        if key not in signatures:
            raise InputError(f"--samples {p}: record {i} is for signature {key!r}, not a kept signature")
        arrays = {_example_input(p, signatures[key]): _serialized_examples(req.input)}
    else:
        raise InputError(f"--samples {p}: record {i} is a {kind}; use predict, classify or regress logs")
    if key not in signatures:
        raise InputError(f"--samples {p}: record {i} is for signature {key!r}, not a kept signature "
                         f"({', '.join(signatures)})")
    return key, arrays


def _tensor(proto: Any, tf: Any) -> np.ndarray:
    arr = tf.make_ndarray(proto)
    return arr.astype(object) if arr.dtype.kind == "S" else arr


def _serialized_examples(inp: Any) -> np.ndarray:
    """TF Serving's Input: example_list, or example_list_with_context (context bytes first, as
    the server concatenates them, which protobuf parses as a merge)."""
    if inp.WhichOneof("kind") == "example_list_with_context":
        ctx = inp.example_list_with_context.context.SerializeToString()
        items = [ctx + e.SerializeToString() for e in inp.example_list_with_context.examples]
    else:
        items = [e.SerializeToString() for e in inp.example_list.examples]
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def _check_set(p: Path, sig: Signature, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    missing = [t.alias for t in sig.inputs if t.alias not in arrays]
    if missing:
        raise InputError(f"--samples {p}: no array for input {missing[0]!r} of signature {sig.key!r} "
                         f"(has: {', '.join(arrays) or 'none'}); save it under the key "
                         f"{sig.key}/{missing[0]} (or {missing[0]!r} for serving_default)")
    out = {t.alias: _coerce(p, sig, t, arrays[t.alias]) for t in sig.inputs}
    batch = {v.shape[0] for t, v in zip(sig.inputs, out.values()) if t.batched and v.ndim}
    if len(batch) > 1:
        raise InputError(f"--samples {p}: inputs of {sig.key!r} have different batch sizes {sorted(batch)}")
    return out


def _coerce(p: Path, sig: Signature, t: TensorInfo, arr: np.ndarray) -> np.ndarray:
    what = f"--samples {p}: {sig.key}/{t.alias}"
    if t.dtype == "string":
        if arr.dtype.kind == "U":
            return np.vectorize(lambda s: s.encode("utf-8"), otypes=[object])(arr) if arr.size else arr.astype(object)
        if arr.dtype.kind in "SO":
            return arr.astype(object)
        raise InputError(f"{what} is {arr.dtype}, the model wants strings")
    want = np.dtype(t.dtype)
    if arr.dtype != want:
        if not np.can_cast(arr.dtype, want, casting="same_kind"):
            raise InputError(f"{what} is {arr.dtype}, the model wants {want}")
        arr = arr.astype(want)
    if t.shape is not None and (arr.ndim != len(t.shape) or any(
            need is not None and got != need for got, need in zip(arr.shape, t.shape))):
        raise InputError(f"{what} has shape {list(arr.shape)}, the model wants {_shape(t.shape)}")
    return arr

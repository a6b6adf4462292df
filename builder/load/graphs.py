"""Small helpers every flow shares: names, shapes, dtypes, TF error lines, sessions, GraphDef I/O.

TensorFlow is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from builder.core.errors import GraphError, InputError, first_line
from builder.core.model import node_name, tensor_name

__all__ = ["node_name", "tensor_name", "first_line", "dtype_name", "shape_list", "parse_shape",
           "closest", "imported_graph", "source_session", "read_graph_def", "default_alias",
           "tf_run_errors"]

PLACEHOLDER_OPS = ("Placeholder", "PlaceholderV2")


def tf_run_errors() -> tuple[type[BaseException], ...]:
    """What TensorFlow raises when a user's graph cannot run or import: its own ``OpError``
    family, ``ValueError`` (graph import, feeds of the wrong shape) and ``TypeError`` (feeds of the
    wrong dtype). Anything else escaping a run is our bug and keeps its traceback."""
    import tensorflow as tf

    return (tf.errors.OpError, ValueError, TypeError)


def dtype_name(dtype: Any) -> str:
    """numpy-style dtype name ("float32", "bool", "string" for tf.string): artifact's one definition."""
    from builder.core.artifact import dtype_name as name

    return name(dtype)


def shape_list(shape: Any) -> list[int | None] | None:
    """tf.TensorShape / TensorShapeProto -> list with None for unknown dims; None = unknown rank."""
    if hasattr(shape, "unknown_rank"):  # TensorShapeProto
        if shape.unknown_rank:
            return None
        return [None if d.size < 0 else int(d.size) for d in shape.dim]
    if shape.rank is None:
        return None
    return [None if d is None else int(d) for d in shape.as_list()]


def parse_shape(text: str, flag: str = "--input_shapes") -> list[int | None]:
    """``?x160x160x3`` / ``-1x160x160x3`` -> [None, 160, 160, 3]; ``scalar`` or ``[]`` -> []."""
    text = str(text).strip().lower()
    if text in ("scalar", "[]", "()"):
        return []
    dims: list[int | None] = []
    for part in text.replace("[", "").replace("]", "").split("x"):
        part = part.strip()
        if part in ("?", "-1", "none", ""):
            dims.append(None)
            continue
        try:
            dims.append(int(part))
        except ValueError:
            raise InputError(f"{flag} {text!r}: not a shape; write e.g. ?x160x160x3") from None
    return dims


def default_alias(tensor: str) -> str:
    """Signature key for a tensor nobody named: ``scope/out:1`` -> ``scope_out_1``."""
    node, idx = tensor_name(tensor).rsplit(":", 1)
    alias = re.sub(r"[^A-Za-z0-9_]", "_", node)
    return alias if idx == "0" else f"{alias}_{idx}"


def closest(names: list[str], wanted: str) -> str:
    close = difflib.get_close_matches(wanted, names, n=3)
    return f"; did you mean {', '.join(close)}?" if close else ""


def imported_graph(graph_def: Any, label: str) -> Any:
    """A new tf.Graph holding ``graph_def``; a graph that does not import is a user's GraphError."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        try:
            tf.compat.v1.import_graph_def(graph_def, name="")
        except (ValueError, tf.errors.OpError) as e:
            raise GraphError(f"{label}: the graph does not import: {first_line(e)}") from None
    return graph


def source_session(graph: Any) -> Any:
    """A session for a source model. Soft placement, because graphs from training machines
    carry device pins (``/device:GPU:0``) that a CPU-only machine cannot honour."""
    import tensorflow as tf

    return tf.compat.v1.Session(graph=graph, config=tf.compat.v1.ConfigProto(allow_soft_placement=True))


def read_graph_def(path: Path) -> Any:
    """A binary ``.pb`` or text ``.pbtxt`` GraphDef; a wrong file is the user's InputError."""
    import tensorflow as tf
    from google.protobuf import message, text_format

    gd = tf.compat.v1.GraphDef()
    try:
        data = path.read_bytes()
        if path.suffix == ".pbtxt":
            text_format.Parse(data.decode("utf-8"), gd)
        else:
            gd.ParseFromString(data)
    except (message.DecodeError, text_format.ParseError, UnicodeDecodeError, RuntimeWarning) as e:
        kind = "text" if path.suffix == ".pbtxt" else "binary"
        raise InputError(
            f"--model {path}: not a {kind} GraphDef ({first_line(e)}); a frozen graph is a "
            ".pb/.pbtxt file (use --flow for other formats)"
        ) from None
    except OSError as e:
        raise InputError(f"--model {path}: cannot read it ({e.strerror or e})") from None
    if not gd.node:
        raise InputError(f"--model {path}: the GraphDef has no nodes (empty or wrong file)")
    return gd


def placeholder_names(graph_def: Any) -> list[str]:
    return sorted(n.name for n in graph_def.node if n.op in PLACEHOLDER_OPS)


def hint_inputs(graph_def: Any) -> str:
    names = placeholder_names(graph_def)
    return ", ".join(names[:8]) + (" ..." if len(names) > 8 else "") if names else "(none)"


def node_names(graph_def: Any) -> list[str]:
    return [n.name for n in graph_def.node]


def no_node_error(flag: str, item: str, label: str, graph_def: Any) -> GraphError:
    """``--outputs embedding: no node 'embedding' in model.meta; did you mean embeddings?``"""
    name = node_name(item)
    return GraphError(f"{flag} {item}: no node {name!r} in {label}{closest(node_names(graph_def), name)}"
                      f" (placeholders: {hint_inputs(graph_def)})")

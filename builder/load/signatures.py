"""SignatureDefs as the export keeps them: read, select (``--signature``), rename (aliases), and
run (a session that loads a SavedModel exactly as TF Serving does)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from builder.core.errors import GraphError, InputError
from builder.core.model import INIT_OP_SIGNATURE, Signature, SourceRunner, TensorInfo, tensor_name
from builder.load.graphs import dtype_name, first_line, shape_list, tf_run_errors
from builder.load.surgery import check_key, match_entry


def signatures_of(meta_graph: Any) -> dict[str, Signature]:
    """Every served signature of a MetaGraphDef (the TF2 init op is not one)."""
    out = {}
    for key, sig in sorted(meta_graph.signature_def.items()):
        if key == INIT_OP_SIGNATURE:
            continue
        out[key] = Signature(key, sig.method_name, _entries(sig.inputs), _entries(sig.outputs))
    return out


def _entries(side: Any) -> list[TensorInfo]:
    out = []
    for k, v in sorted(side.items()):
        name = v.name if v.WhichOneof("encoding") == "name" else ""
        out.append(TensorInfo(k, name, dtype_name(v.dtype) if v.dtype else "invalid",
                              shape_list(v.tensor_shape) if v.HasField("tensor_shape") else None))
    return out


def dense_only(sig: Signature) -> bool:
    """True when every entry is a plain tensor (sparse/composite entries cannot be fed by name)."""
    return all(t.tensor for t in [*sig.inputs, *sig.outputs])


def select(signatures: dict[str, Signature], wanted: tuple[str, ...] | list[str], where: str) -> list[str]:
    """Keys to keep: all of them, or the ``--signature`` subset (each must exist)."""
    if not wanted:
        if not signatures:
            raise InputError(f"--model {where}: the SavedModel has no signature to serve (TF Serving "
                             "needs one): re-export it with a serving signature")
        return list(signatures)
    missing = [k for k in wanted if k not in signatures]
    if missing:
        raise InputError(f"--signature {missing[0]}: not in {where} (has: "
                         f"{', '.join(sorted(signatures)) or 'none'}); pass --signature KEY[,KEY]")
    return [k for k in signatures if k in wanted]


def rewritten_key(signatures: dict[str, Signature], wanted: tuple[str, ...], where: str) -> str:
    """The one signature ``--inputs``/``--outputs`` rewrite: ``--signature`` or serving_default."""
    if len(wanted) > 1:
        raise InputError(f"--signature {','.join(wanted)}: --inputs/--outputs/--input_shapes rewrite "
                         "one signature: pass one --signature KEY")
    if wanted:
        return select(signatures, wanted, where)[0]
    if "serving_default" in signatures:
        return "serving_default"
    if len(signatures) == 1:
        return next(iter(signatures))
    raise InputError(f"--inputs/--outputs: {where} has signatures {', '.join(sorted(signatures))} and "
                     "none is serving_default: pass --signature KEY to say which one to rewrite")


def apply_aliases(signatures: dict[str, Signature], input_alias: dict[str, str],
                  output_alias: dict[str, str]) -> tuple[dict[str, Signature], dict[str, dict[str, str]]]:
    """Rename signature keys. The left side of ``--input_alias a=b`` may be a signature key, a
    tensor name or a node name, and applies to every kept signature that has it; one that
    matches nothing is an error. Returns the new signatures and, per signature, new key -> old
    key."""
    renamed: dict[str, dict[str, str]] = {k: {} for k in signatures}
    out = {}
    hits = {("in", a): 0 for a in input_alias} | {("out", a): 0 for a in output_alias}
    for key, sig in signatures.items():
        ins = _rename(sig.inputs, input_alias, "in", hits, renamed[key])
        outs = _rename(sig.outputs, output_alias, "out", hits, renamed[key])
        for side, flag in ((ins, "--input_alias"), (outs, "--output_alias")):
            keys = [t.alias for t in side]
            dup = sorted({k for k in keys if keys.count(k) > 1})
            if dup:
                raise InputError(f"{flag}: signature key {dup[0]!r} used twice in signature {key!r}: "
                                 "give unique aliases")
        out[key] = dataclasses.replace(sig, inputs=ins, outputs=outs)
    for (side, name), n in hits.items():
        if not n:
            flag, pool = ("--input_alias", "inputs") if side == "in" else ("--output_alias", "outputs")
            have = sorted({t.alias for s in signatures.values() for t in getattr(s, pool)})
            raise InputError(f"{flag} {name}={(input_alias if side == 'in' else output_alias)[name]}: "
                             f"{name!r} matches no signature {pool[:-1]} (node, tensor or key; "
                             f"{pool}: {', '.join(have) or 'none'})")
    return out, renamed


def _rename(entries: list[TensorInfo], aliases: dict[str, str], side: str, hits: dict,
            renamed: dict[str, str]) -> list[TensorInfo]:
    out = list(entries)
    for src, new in aliases.items():
        t = match_entry(src, [(e.tensor, e.alias) for e in entries if e.tensor])
        if t is None:
            continue
        check_key(new, f"--{'input' if side == 'in' else 'output'}_alias {src}={new}")
        hits[(side, src)] += 1
        for i, e in enumerate(out):
            if tensor_name(e.tensor) == tensor_name(t):
                renamed[new] = renamed.pop(e.alias, e.alias)
                out[i] = dataclasses.replace(e, alias=new)
    return out


def write_into(meta_graph: Any, signatures: dict[str, Signature], renamed: dict[str, dict[str, str]]) -> None:
    """Keep only ``signatures`` in the MetaGraph (plus the init op), keys renamed as given."""
    old = {k: type(v)() for k, v in meta_graph.signature_def.items()}
    for k, v in meta_graph.signature_def.items():
        old[k].CopyFrom(v)
    meta_graph.ClearField("signature_def")
    if INIT_OP_SIGNATURE in old:
        meta_graph.signature_def[INIT_OP_SIGNATURE].CopyFrom(old[INIT_OP_SIGNATURE])
    for key, sig in signatures.items():
        new = meta_graph.signature_def[key]
        src = old[key]
        new.method_name = src.method_name
        back = renamed.get(key, {})
        for side, entries, src_side in ((new.inputs, sig.inputs, src.inputs),
                                        (new.outputs, sig.outputs, src.outputs)):
            for t in entries:
                side[t.alias].CopyFrom(src_side[back.get(t.alias, t.alias)])


# --------------------------------------------------------------------------- running signatures


class ServingSession:
    """A SavedModel loaded the way TF Serving loads it (TF1 ``loader.load``: restore op, then
    the init op), in a graph of its own; ``run(key, inputs)`` feeds a signature by key."""

    def __init__(self, path: str | Path, tags: list[str] | tuple[str, ...], label: str):
        import tensorflow as tf

        self.path, self.label = Path(path), label
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(
            graph=self.graph, config=tf.compat.v1.ConfigProto(allow_soft_placement=True))
        try:
            with self.graph.as_default():
                self.meta_graph = tf.compat.v1.saved_model.loader.load(self.session, list(tags), str(path))
        except RuntimeError as e:  # the loader's "MetaGraphDef associated with tags ... not found"
            self.close()
            raise InputError(f"--tags {','.join(tags)}: {label}: {first_line(e)}") from None
        except (*tf_run_errors(), OSError) as e:
            self.close()
            raise GraphError(f"{label}: does not load as TF Serving loads it: {first_line(e)}") from None

    def run(self, signature: Signature, inputs: dict[str, np.ndarray],
            fixed: dict[str, Any] | None = None, renamed: dict[str, str] | None = None) -> dict[str, np.ndarray]:
        """Outputs by (new) key. ``renamed`` maps new keys to the keys in this SavedModel."""
        sig = self.meta_graph.signature_def[signature.key]
        back = renamed or {}
        feed = {self.graph.get_tensor_by_name(k): v for k, v in (fixed or {}).items()}
        for alias, value in inputs.items():
            feed[self.graph.get_tensor_by_name(sig.inputs[back.get(alias, alias)].name)] = value
        fetch = {t.alias: sig.outputs[back.get(t.alias, t.alias)].name for t in signature.outputs}
        return self.session.run(fetch, feed_dict=feed)

    def close(self) -> None:
        self.session.close()


def tensor_runner(sess: Any, chosen: dict[str, Signature], renamed: dict[str, dict[str, str]],
                  source_maps: dict[str, dict[str, str]], feeds: dict[str, Any]) -> SourceRunner:
    """Run a signature on the ORIGINAL graph in ``sess``: inputs by final key, mapped through
    ``renamed`` (final -> pre-rename key) and ``source_maps`` (pre-rename key -> source tensor),
    with the folded feeds fed as they were at export."""
    g = sess.graph
    fixed = {g.get_tensor_by_name(tensor_name(k)): v for k, v in feeds.items()}

    def run(key: str, inputs: dict[str, Any]) -> dict[str, Any]:
        back, mapping = renamed[key], source_maps[key]
        feed = dict(fixed)
        feed.update({g.get_tensor_by_name(mapping[back.get(a, a)]): v for a, v in inputs.items()})
        fetch = {t.alias: g.get_tensor_by_name(mapping[back.get(t.alias, t.alias)])
                 for t in chosen[key].outputs}
        return sess.run(fetch, feed_dict=feed)

    return run

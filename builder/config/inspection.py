"""``python -m builder inspect``: what is in a SavedModel / version / model dir / repository.

Reads ``saved_model.pb`` directly as a protobuf (no session, no TensorFlow runtime), so it is
cheap and safe on artefacts that could not even load here (e.g. TF-TRT engines without a GPU).
"""

from __future__ import annotations

import json as _json
from pathlib import Path
from typing import Any

from builder.config import compat
from builder.core import artifact, layout
from builder.core.errors import InputError
from builder.core.model import INIT_OP_SIGNATURE, graph_facts, unsafe_nodes


def _shape(proto: Any) -> list[int] | None:
    if proto.unknown_rank:
        return None
    return [int(d.size) for d in proto.dim]


def _entry(v: Any) -> dict[str, Any]:
    kind = v.WhichOneof("encoding")
    name = v.name if kind == "name" else f"({kind})"
    return {"tensor": name, "dtype": artifact.dtype_name(v.dtype),
            "shape": _shape(v.tensor_shape) if v.HasField("tensor_shape") else None}


def _signatures(mg: Any) -> dict[str, Any]:
    """Every served signature with its method name (the TF2 init op is not one)."""
    return {
        key: {"method_name": sig.method_name,
              "inputs": {k: _entry(v) for k, v in sorted(sig.inputs.items())},
              "outputs": {k: _entry(v) for k, v in sorted(sig.outputs.items())}}
        for key, sig in sorted(mg.signature_def.items()) if key != INIT_OP_SIGNATURE
    }


def inspect_saved_model(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    sm = artifact.read_saved_model(path)
    out: dict[str, Any] = {"path": str(path), "meta_graphs": []}
    info = artifact.read_build_info(path)
    trt_version = ((info or {}).get("tensorrt") or {}).get("loaded_version")
    has_trt = False
    images: list[str] = []
    for mg in sm.meta_graphs:
        hist = compat.op_histogram(mg.graph_def)
        trt = sorted(compat.trt_ops(mg.graph_def))
        has_trt = has_trt or bool(trt)
        report = compat.serving_report(mg.graph_def, trt_version)
        images.append(report["serving_images"])
        facts = graph_facts(mg)
        out["meta_graphs"].append({
            "tags": list(mg.meta_info_def.tags),
            "tensorflow_version": mg.meta_info_def.tensorflow_version,
            "signatures": _signatures(mg),
            "init_op": facts.init_op,
            "assets": facts.assets,
            "tables": facts.tables,
            "nodes": sum(hist.values()),
            "functions": len(mg.graph_def.library.function),
            "op_histogram": dict(hist.most_common()),
            "trt_ops": trt,
            "missing_ops": report["missing_ops"],
            "unsafe_ops": [{"node": n, "op": op} for n, op in unsafe_nodes(mg, compat.UNSAFE_OPS)],
        })
    var_dir = path / "variables"
    out["variables_bytes"] = sum(p.stat().st_size for p in var_dir.rglob("*") if p.is_file()) \
        if var_dir.is_dir() else 0
    out["saved_model_bytes"] = (path / "saved_model.pb").stat().st_size
    warm = path / artifact.WARMUP_FILE
    out["warmup_records"] = artifact.count_tfrecords(warm) if warm.exists() else 0
    out["build_info"] = info
    out["serving_images"] = "; ".join(dict.fromkeys(images)) or compat.serving_images_summary(has_trt)
    out["has_trt_ops"] = has_trt
    return out


def inspect_path(path: str | Path) -> dict[str, Any]:
    """Resolve a SavedModel, version dir, model dir or repository and inspect every version."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or directory")
    if (p / "saved_model.pb").exists():
        return {"kind": "savedmodel", "versions": [inspect_saved_model(p)]}
    if p.is_dir() and layout.list_versions(p):
        return {"kind": "model", "name": p.name,
                "versions": [inspect_saved_model(d) for d in layout.version_paths(p).values()]}
    models = [m for m in layout.list_models(p) if layout.list_versions(p / m)] if p.is_dir() else []
    if models:
        return {"kind": "repo", "models": {m: [inspect_saved_model(d)
                                               for d in layout.version_paths(p / m).values()] for m in models}}
    raise InputError(f"{p}: not a SavedModel, model directory (numeric versions) or repository")


def _print_version(v: dict[str, Any], indent: str = "") -> None:
    info = v.get("build_info") or {}
    print(f"{indent}{v['path']}")
    print(f"{indent}  saved_model.pb {v['saved_model_bytes']:,} B, variables {v['variables_bytes']:,} B,"
          f" warmup records {v['warmup_records']}")
    if info:
        p = info.get("parity", {})
        print(f"{indent}  built by tfs-builder {info.get('builder_version')}: flow={info.get('flow')} "
              f"optimizer={info.get('optimizer')} precision={info.get('precision')} "
              f"parity={'passed' if p.get('passed') else 'FAILED'} "
              f"(max_abs_diff={p.get('max_abs_diff')}, min_cosine={p.get('min_cosine')})")
        bf16_line = compat.bf16_summary(info)  # bf16 hook (issue 12)
        if bf16_line:
            print(f"{indent}  {bf16_line}")
    for mg in v["meta_graphs"]:
        print(f"{indent}  tags {','.join(mg['tags'])}: {mg['nodes']} nodes, {mg['functions']} functions")
        init = mg["init_op"]
        init_text = f"{init['kind']} ({init['name']})" if init else "none"
        print(f"{indent}    init op: {init_text}; assets: {', '.join(mg['assets']) or 'none'}; "
              f"tables: {', '.join(mg['tables']) or 'none'}")
        for key, sig in mg["signatures"].items():
            print(f"{indent}    signature {key!r} ({sig['method_name']})")
            for kind in ("inputs", "outputs"):
                for k, t in sig[kind].items():
                    shape = "?" if t["shape"] is None else "x".join("?" if d < 0 else str(d) for d in t["shape"])
                    print(f"{indent}      {kind[:-1]:6} {k}: {t['tensor']} {t['dtype']} [{shape}]")
        top = ", ".join(f"{op} {n}" for op, n in list(mg["op_histogram"].items())[:12])
        print(f"{indent}    ops: {top}{' ...' if len(mg['op_histogram']) > 12 else ''}")
        if mg["trt_ops"]:
            print(f"{indent}    TensorRT ops: {', '.join(mg['trt_ops'])}")
        if mg["missing_ops"]:
            print(f"{indent}    ops stock TF Serving cannot run: {', '.join(mg['missing_ops'])}")
        if mg["unsafe_ops"]:
            listed = ", ".join(f"{u['node']} ({u['op']})" for u in mg["unsafe_ops"][:6])
            print(f"{indent}    WARNING file/Python ops: {listed}")
    print(f"{indent}  loads in: {v['serving_images']}")


def inspect_command(path: str = "", json: bool = False) -> None:  # noqa: A002 - the flag is --json
    """Show signatures, ops, sizes, warmup, build_info and serving compatibility of a model.

    Args:
      path: A SavedModel dir, a version dir (REPO/NAME/VERSION), a model dir (REPO/NAME) or a
        repository (REPO).
      json: Print machine-readable JSON instead of text.
    """
    if not path:
        raise InputError("inspect needs a PATH: python -m builder inspect REPO/NAME/VERSION")
    result = inspect_path(path)
    if json:
        print(_json.dumps(result, indent=2, default=str))
        return
    if result["kind"] == "repo":
        for name, versions in result["models"].items():
            print(f"model {name}: versions {', '.join(Path(v['path']).name for v in versions)}")
            for v in versions:
                _print_version(v, "  ")
        return
    for v in result["versions"]:
        _print_version(v)

"""The savedmodel flow: a TF1 or TF2 SavedModel, kept as it is unless surgery is asked for.

By default the export IS the source: every file linked or copied, every signature with its key
and method name, variables, assets and the init op (``main_op`` / ``legacy_init_op`` /
``__saved_model_init_op``); only ``assets.extra/`` is added. ``--signature`` keeps a subset and
the aliases rename keys (a SignatureDef edit). ``--feed``/``--inputs``/``--outputs``/
``--input_shapes`` rewrite the MetaGraph with ``surgery`` and keep the variables files as they
are. The source is run for parity the way TF Serving would serve a copy of it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from builder.core.errors import InputError
from builder.core.model import StagedModel
from builder.load import signatures as sigs
from builder.load import stage, surgery
from builder.load.detect import resolve_model_path
from builder.load.request import LoadRequest


def read_saved_model(src: Path) -> Any:
    """The SavedModel proto of a source directory (binary or text), errors naming the file."""
    from google.protobuf import message, text_format
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    pb, txt = src / "saved_model.pb", src / "saved_model.pbtxt"
    try:
        if pb.is_file():
            sm.ParseFromString(pb.read_bytes())
        else:
            text_format.Parse(txt.read_text(encoding="utf-8"), sm)
    except (message.DecodeError, text_format.ParseError, UnicodeDecodeError, RuntimeWarning, ValueError):
        raise InputError(f"--model {pb if pb.is_file() else txt}: not a SavedModel protobuf (corrupt or "
                         "wrong file)") from None
    except OSError as e:
        raise InputError(f"--model {src}: cannot read the SavedModel ({e.strerror or e})") from None
    return sm


def meta_graph_index(sm: Any, tags: tuple[str, ...], src: Path) -> int:
    """Index of the MetaGraph whose tag set is exactly ``tags`` (as the loader matches)."""
    for i, mg in enumerate(sm.meta_graphs):
        if set(mg.meta_info_def.tags) == set(tags):
            return i
    have = "; ".join(",".join(mg.meta_info_def.tags) for mg in sm.meta_graphs) or "none"
    raise InputError(f"--tags {','.join(tags)}: {src} has no MetaGraph with these tags (has: {have}); "
                     "pass --tags")


def load(req: LoadRequest, out: Path) -> StagedModel:
    src = resolve_model_path(req.path)
    if src.is_file() or not src.is_dir():
        raise InputError(f"--model {src}: --flow savedmodel needs the SavedModel directory")
    sm = read_saved_model(src)
    idx = meta_graph_index(sm, req.tags, src)
    label = f"{src.name} (SavedModel)"
    source = sigs.ServingSession(src, req.tags, f"--model {src}")
    try:
        if req.surgery:
            return rewrite_saved_model(req, src, sm.meta_graphs[idx], source, out, label)
        return _kept(req, src, sm, idx, source, out)
    except BaseException:
        source.close()
        raise


def _files(src: Path) -> list[Path]:
    return [p for p in sorted(src.rglob("*")) if p.is_file()]


def _kept(req: LoadRequest, src: Path, sm: Any, idx: int, source: sigs.ServingSession,
          out: Path) -> StagedModel:
    """The source as it is; a SignatureDef edit when signatures are dropped or renamed."""
    mg = sm.meta_graphs[idx]
    available = sigs.signatures_of(mg)
    keep = sigs.select(available, req.signatures, str(src))
    chosen, renamed = sigs.apply_aliases({k: available[k] for k in keep}, req.input_alias,
                                         req.output_alias)
    edited = len(keep) != len(available) or any(renamed.values()) or not (src / "saved_model.pb").is_file()
    counts = stage.stage_saved_model_files(src, out, skip_pb=edited)
    notes = [f"variables/assets: {counts['hard-linked']} file(s) hard-linked, {counts['copied']} copied"]
    if edited:
        sigs.write_into(sm.meta_graphs[idx], chosen, renamed)
        stage.write_saved_model_pb(out, sm)
        notes.append("SignatureDefs edited: " + _describe_edit(available, chosen, renamed))

    def run(key: str, inputs: dict[str, Any]) -> dict[str, Any]:
        return source.run(chosen[key], inputs, renamed=renamed[key])

    return StagedModel(path=out, tags=list(req.tags), signatures=chosen, flow="savedmodel",
                       source_path=str(src.resolve()), source_files=[str(p) for p in _files(src)],
                       run_source=run, close_source=source.close, kept_as_is=not edited,
                       notes=notes)


def _describe_edit(available: dict, chosen: dict, renamed: dict[str, dict[str, str]]) -> str:
    parts = []
    dropped = sorted(set(available) - set(chosen))
    if dropped:
        parts.append(f"dropped {', '.join(dropped)}")
    for key, m in renamed.items():
        parts += [f"{key}: {old} -> {new}" for new, old in m.items() if new != old]
    return "; ".join(parts) or "converted saved_model.pbtxt to saved_model.pb"


def rewrite_saved_model(req: LoadRequest, src: Path, mg: Any, source: sigs.ServingSession, out: Path,
                        label: str) -> StagedModel:
    """Surgery on the MetaGraph; variables and assets files stay as the source has them."""
    available = sigs.signatures_of(mg)
    if req.inputs or req.outputs or req.input_shapes:
        base_key = sigs.rewritten_key(available, req.signatures, str(src))
        keep = [base_key]
    else:  # --feed only: every kept signature loses the folded inputs
        keep = sigs.select(available, req.signatures, str(src))
        base_key = "serving_default" if "serving_default" in keep else keep[0]
    base = available[base_key]
    plan = surgery.plan_io(req, mg.graph_def, label, base)
    plain = dataclasses.replace(req, input_alias={}, output_alias={})
    others = {k: available[k] for k in keep if k != base_key}
    result = surgery.rewrite(mg, plain, plan, label=label, source_graph=source.graph, key=base_key,
                             method_name=base.method_name, keep_signatures=others)
    new = {k: s for k, s in sigs.signatures_of(result.meta_graph).items() if k in keep}
    chosen, renamed = sigs.apply_aliases(new, req.input_alias, req.output_alias)
    sigs.write_into(result.meta_graph, chosen, renamed)
    counts = stage.stage_saved_model_files(src, out, skip_pb=True)
    stage.write_saved_model_pb(out, stage.saved_model_of(result.meta_graph))
    maps = {k: ({t.alias: t.tensor for t in [*available[k].inputs, *available[k].outputs]}
                if k != base_key else result.source_map) for k in chosen}
    run = sigs.tensor_runner(source.session, chosen, renamed, maps, result.feeds)
    return StagedModel(path=out, tags=list(req.tags), signatures=chosen, flow="savedmodel",
                       source_path=str(src.resolve()), source_files=[str(p) for p in _files(src)],
                       run_source=run, close_source=source.close, feeds=result.feeds,
                       surgery=result.steps,
                       notes=[f"variables/assets: {counts['hard-linked']} file(s) hard-linked, "
                              f"{counts['copied']} copied"])

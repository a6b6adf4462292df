"""CPU bf16: oneDNN's auto-mixed-precision rewrite as a measured serving profile, or baked.

Why a *profile* by default: TF Serving >= 2.15 has ``--mixed_precision=bfloat16``
(model_servers/main.cc -> SessionBundleConfig.mixed_precision -> saved_model_bundle_factory.cc),
which switches on the Grappler rewrite ``auto_mixed_precision_onednn_bfloat16`` in the session of
every model that server loads. The artefact stays FP32 - portable to any CPU or GPU image - and
the export proves (parity WITH the rewrite on, and a measured speed-up) that the profile is safe
and worth it. ``--bake`` runs the same pass offline instead, so no server flag is needed, at the
price of an artefact that only pays off on bf16 hardware.

Why the capability check: oneDNN converts to bf16 on any AVX-512 CPU, but only CPUs with bf16
dot-product units (x86 ``avx512_bf16`` or ``amx_bf16``, Arm ``bf16``) run it faster; elsewhere it
is emulated (measured on AMD EPYC Zen 1: 1.00x). And the rewrite needs oneDNN switched on in
TensorFlow: with ``TF_ENABLE_ONEDNN_OPTS=0`` it silently does nothing.

Why the bake runs the AMP pass ALONE, on nodes given a CPU device: the pass only converts nodes
placed on a CPU; and with Grappler's remapper in the same run the result holds ``_FusedConv2D``
typed bfloat16, an internal op that graph import rejects. Afterwards a constant-folding pass
turns the weight casts into bf16 constants (the artefact shrinks by ~40%), devices are cleared
and the graph must import and hold only public registered ops.

TensorFlow is imported inside functions: the CLI's ``--help`` must stay fast.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from builder.core.errors import GraphError, InputError, UnavailableError

REWRITE = "auto_mixed_precision_onednn_bfloat16"  # RewriterConfig field / Grappler pass name
MIXED_PRECISION = "bfloat16"  # the value TF Serving's --mixed_precision accepts
X86_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo "flags"
ARM_FLAGS = ("bf16",)  # /proc/cpuinfo "Features" (Armv8.6 BF16: Graviton 3/4, Neoverse V1/V2)
NEEDS = "bf16 CPU"  # what build_info and inspect say a baked artefact needs
PROFILE = {"mixed_precision": MIXED_PRECISION}

# Measured numbers quoted in refusals (docs/benchmarks/bf16_cpu.md has the full table).
MEASURED_GAIN = ("FaceNet, measured on AMD EPYC Zen 4 (family 25 model 17, avx512_bf16): 1.9x the "
                 "FP32 export and 2.0x the checkpoint flow at batch 100, batch-1 p50 0.52x, min "
                 "cosine 0.99996 (docs/benchmarks/bf16_cpu.md)")
MEASURED_NO_UNITS = "1.00x measured on AMD EPYC Zen 1 (no bf16 units)"
_RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile",
                   "amx_bf16", "amx_int8", "asimd", "bf16", "i8mm", "sve", "sve2")


# --------------------------------------------------------------------------- CPU detection


@dataclass(frozen=True)
class CpuInfo:
    """What /proc/cpuinfo says about the first processor (all cores of a host are alike)."""

    model: str = "unknown CPU"
    vendor: str = ""
    family: int | None = None
    model_id: int | None = None
    flags: frozenset[str] = field(default_factory=frozenset)
    arm: bool = False

    @property
    def label(self) -> str:
        """The CPU named the way benchmarks must name it (model, family/model ids, key flags)."""
        ids = f"family {self.family} model {self.model_id}" if self.family is not None else ""
        gen = _amd_generation(self.family, self.model_id) if "AMD" in self.vendor + self.model else ""
        detail = "; ".join(x for x in (ids + (f" = {gen}" if gen else ""),
                                       ", ".join(self.relevant_flags)) if x)
        return f"{self.model} ({detail})" if detail else self.model

    @property
    def relevant_flags(self) -> list[str]:
        return [f for f in _RELEVANT_FLAGS if f in self.flags]


def _amd_generation(family: int | None, model: int | None) -> str:
    """AMD's marketing generation from the CPUID family/model (model names in VMs often read
    just "AMD EPYC", so the ids are the only way to tell Zen 1 from Zen 4)."""
    if family == 23:
        return "Zen/Zen+/Zen 2"
    if family == 25 and model is not None:
        return "Zen 4" if (0x10 <= model <= 0x1F or 0x60 <= model <= 0x7F or 0xA0 <= model <= 0xAF) \
            else "Zen 3"
    if family == 26:
        return "Zen 5"
    return ""


def read_cpuinfo(text: str | None = None) -> CpuInfo:
    """Parse /proc/cpuinfo (or ``text``, e.g. a fixture from another CPU) into a ``CpuInfo``.
    A host without /proc/cpuinfo gives an empty one, which detection treats as "no bf16"."""
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return CpuInfo()
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor block is enough
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    arm = "features" in fields and "flags" not in fields
    flags = frozenset((fields.get("flags") or fields.get("features") or "").split())
    model = fields.get("model name") or fields.get("hardware") or fields.get("processor") or ""
    if arm and not fields.get("model name"):
        part = fields.get("cpu part", "?")
        model = f"Arm CPU (implementer {fields.get('cpu implementer', '?')}, part {part})"
    return CpuInfo(model=model or "unknown CPU", vendor=fields.get("vendor_id", ""),
                   family=_int(fields.get("cpu family")), model_id=_int(fields.get("model")),
                   flags=flags, arm=arm)


def _int(v: str | None) -> int | None:
    try:
        return int(v, 0) if v is not None else None
    except ValueError:
        return None


def hardware_bf16(cpu: CpuInfo) -> tuple[bool, str]:
    """(has bf16 units, why) from the CPU flags alone."""
    wanted = ARM_FLAGS if cpu.arm else X86_FLAGS
    have = [f for f in wanted if f in cpu.flags]
    if have:
        return True, f"{cpu.label} has {' and '.join(have)}"
    return False, (f"this CPU ({cpu.label}) has no {' or '.join(wanted)} flag in /proc/cpuinfo, so "
                   "oneDNN has no bf16 units to use")


def onednn_enabled() -> bool:
    """Whether this TensorFlow runs oneDNN (``IsMklEnabled``): built in on x86-64 Linux, on by
    default on CPUs with AVX512_VNNI/AVX512_BF16/AVX_VNNI/AMX, off with TF_ENABLE_ONEDNN_OPTS=0."""
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


def bf16_capability(cpu: CpuInfo | None = None, onednn: bool | None = None) -> tuple[bool, str]:
    """(ok, reason): can THIS host run and measure oneDNN bf16 for real?"""
    cpu = cpu or read_cpuinfo()
    ok, why = hardware_bf16(cpu)
    if not ok:
        return False, why
    if onednn is None:
        onednn = onednn_enabled()
    if not onednn:
        env = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
        return False, (f"{why}, but oneDNN is off in this TensorFlow"
                       f"{f' (TF_ENABLE_ONEDNN_OPTS={env})' if env is not None else ''}, so the "
                       "bf16 rewrite would do nothing: unset TF_ENABLE_ONEDNN_OPTS or set it to 1")
    return True, why


def refusal(reason: str) -> str:
    """The one-line refusal for ``--precision bf16`` on a host that cannot run it."""
    return (f"--precision bf16: {reason} ({MEASURED_NO_UNITS}); on CPUs with AVX512-BF16 or AMX "
            f"(Xeon Sapphire/Emerald Rapids, EPYC Zen 4/5) or Arm BF16 (Graviton 3/4) it gives "
            f"{MEASURED_GAIN}: export on such a host, or use --precision fp32")


def check_request(optimizer: str, cpu: CpuInfo | None = None, onednn: bool | None = None) -> None:
    """``--precision bf16`` (baked or not) with ``--optimize none|cpu``: refuse (exit 2) where
    this host cannot run - and so cannot measure - oneDNN bf16."""
    if optimizer not in ("none", "cpu"):
        raise InputError(f"--precision bf16 is a CPU precision: use --optimize none or cpu "
                         f"(--optimize {optimizer} takes fp32, fp16 or int8)")
    ok, reason = bf16_capability(cpu, onednn)
    if not ok:
        raise UnavailableError(refusal(reason))


# --------------------------------------------------------------------------- session configs


def session_config(mixed_precision: str | None = MIXED_PRECISION) -> Any:
    """A ``ConfigProto`` with the rewrite TF Serving's ``--mixed_precision=bfloat16`` sets
    (``rewrite_options.auto_mixed_precision_onednn_bfloat16 = ON``); ``None`` for FP32."""
    if not mixed_precision:
        return None
    if mixed_precision != MIXED_PRECISION:
        raise InputError(f"--mixed_precision {mixed_precision!r}: TF Serving accepts only "
                         f"--mixed_precision={MIXED_PRECISION} (any other value is ignored with a "
                         "warning there, and the model would silently run FP32)")
    from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2

    cfg = config_pb2.ConfigProto()
    setattr(cfg.graph_options.rewrite_options, REWRITE, rewriter_config_pb2.RewriterConfig.ON)
    return cfg


def server_session_config(mixed_precision: str | None, log: Any = None) -> Any:
    """For the local server's ``--mixed_precision``: the config, plus a warning in the server
    log where the rewrite cannot pay off (TF Serving would apply it silently)."""
    cfg = session_config(mixed_precision)
    if cfg is not None and log is not None:
        ok, reason = bf16_capability()
        if not ok:
            log.warning("--mixed_precision=%s: %s; models run without a bf16 speed-up",
                        MIXED_PRECISION, reason)
        else:
            log.info("--mixed_precision=%s: %s is ON for every model", MIXED_PRECISION, REWRITE)
    return cfg


# --------------------------------------------------------------------------- bake


def bake_graph(graph_def: Any, inputs: list[Any], outputs: list[Any]
               ) -> tuple[Any, list[dict[str, Any]]]:
    """The bf16 graph: the AMP pass alone on CPU-placed nodes, then constant folding (weight
    casts become bf16 constants), devices cleared, and the standard-ops check."""
    from builder.optimize import cpu as _cpu

    gd = _cpu._copy(graph_def)
    for n in _all_nodes(gd):
        n.device = "/device:CPU:0"
    before = _cpu._count(gd)
    gd = _cpu.run_grappler(gd, inputs, outputs, (REWRITE,))
    converted = sum(1 for n in _all_nodes(gd) if _is_bf16(n))
    if converted == 0:
        raise GraphError(
            f"--bake: the {REWRITE} pass converted no node to bfloat16 (the graph has no "
            "Conv2D/MatMul it can convert, or oneDNN is off): export without --bake")
    casts = sum(1 for n in _all_nodes(gd) if n.op == "Cast")
    gd = _cpu.run_grappler(gd, inputs, outputs, ("constfold",))
    for n in _all_nodes(gd):
        n.device = ""
    check_baked_graph(gd, inputs, outputs)
    passes = [
        {"name": REWRITE, "nodes_before": before, "nodes_bf16": converted, "casts": casts},
        {"name": "grappler", "optimizers": ["constfold"], "nodes_after": _cpu._count(gd),
         "casts_after": sum(1 for n in _all_nodes(gd) if n.op == "Cast")},
        {"name": "check_standard_ops", "passed": True},
    ]
    return gd, passes


def check_baked_graph(graph_def: Any, inputs: list[Any] = (), outputs: list[Any] = ()) -> None:
    """Only public registered ops; imports in a fresh graph; the signature keeps its dtypes
    (FP32 in, FP32 out: the casts stay inside the graph, so clients see no change)."""
    from builder.optimize import cpu as _cpu

    g = _cpu.import_standard_graph(graph_def, producer="--bake", label="the baked bf16 graph",
                                   bug_fallback="export without --bake (the serving profile)",
                                   fallback="export without --bake")
    for t in [*inputs, *outputs]:
        got = g.get_tensor_by_name(t.tensor).dtype.name
        if got != t.dtype:
            raise GraphError(f"--bake changed {t.alias} ({t.tensor}) from {t.dtype} to {got}:"
                             " export without --bake")


def _all_nodes(gd: Any) -> list[Any]:
    return [*gd.node, *(n for f in gd.library.function for n in f.node_def)]


def _is_bf16(node: Any) -> bool:
    from tensorflow.core.framework import types_pb2

    return node.op != "Cast" and any(
        node.attr[k].type == types_pb2.DT_BFLOAT16 for k in ("T", "dtype") if k in node.attr)


# --------------------------------------------------------------------------- measurement


def measure_speedup(fp32_graph: Any, bf16_graph: Any | None, inputs: list[Any],
                    outputs: list[Any], batch: int, seed: int = 0, repeats: int = 3
                    ) -> dict[str, Any]:
    """FP32 vs bf16 of one graph, interleaved in this process: items/s at ``batch`` and batch-1
    p50. ``bf16_graph`` None = the profile (FP32 graph, rewrite on); else the baked graph.
    Returns ``{"skipped": reason}`` when inputs cannot be synthesised from the signature (the
    export itself does not depend on this number)."""
    from builder.export import parity

    try:
        big = parity.generate_samples(inputs, batch, seed)
    except InputError as e:
        return {"skipped": str(e)}
    return _measure({
        "fp32": lambda: _GraphRunner(fp32_graph, inputs, outputs, None),
        "bf16": lambda: _GraphRunner(bf16_graph if bf16_graph is not None else fp32_graph, inputs,
                                     outputs, None if bf16_graph is not None else session_config()),
    }, big, batch, repeats)


def measure_saved_model(path: str | os.PathLike, tags: list[str], signature: Any,
                        inputs: dict[str, np.ndarray], repeats: int = 3) -> dict[str, Any]:
    """The serving profile on the written artefact: the same SavedModel loaded as TF Serving
    loads it, once plain and once with the rewrite ``--mixed_precision=bfloat16`` sets."""
    batch = next(iter(inputs.values())).shape[0]
    return _measure({
        "fp32": lambda: _SavedModelRunner(path, tags, signature, None),
        "bf16": lambda: _SavedModelRunner(path, tags, signature, session_config()),
    }, inputs, batch, repeats)


def _measure(factories: dict[str, Any], big: dict[str, np.ndarray], batch: int,
             repeats: int) -> dict[str, Any]:
    """Warm up, then ``repeats`` interleaved rounds (alternating who goes first) of one
    ``batch`` run and five batch-1 runs each; medians. Recorded with the CPU and load average,
    since the ratio only holds on a CPU like this one and other jobs may share it."""
    one = {k: v[:1] for k, v in big.items()}
    load_before = os.getloadavg()[0]
    runners: dict[str, Any] = {}
    try:
        for name, make in factories.items():
            runners[name] = make()
        for r in runners.values():  # warm-up: first runs pay for Grappler and oneDNN primitives
            r.run(big)
            r.run(one)
        rates: dict[str, list[float]] = {k: [] for k in runners}
        lat: dict[str, list[float]] = {k: [] for k in runners}
        for i in range(repeats):
            order = list(runners.items())
            for name, r in order[i % 2:] + order[:i % 2]:
                rates[name].append(batch / r.timed(big))
                lat[name].extend(1000 * r.timed(one) for _ in range(5))
    finally:
        for r in runners.values():
            r.close()
    fp32, bf16 = (statistics.median(rates[k]) for k in ("fp32", "bf16"))
    p50 = {k: statistics.median(v) for k, v in lat.items()}
    cpu = read_cpuinfo()
    return {
        "batch": batch, "repeats": repeats,
        "fp32_items_per_s": round(fp32, 2), "bf16_items_per_s": round(bf16, 2),
        "speedup": round(bf16 / fp32, 3),
        "batch1_p50_ms": {k: round(v, 3) for k, v in p50.items()},
        "batch1_p50_ratio": round(p50["bf16"] / p50["fp32"], 3),
        "cpu": cpu.label, "cpu_flags": cpu.relevant_flags, "cores": os.cpu_count(),
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


class _Runner:
    """A session fed numpy arrays by input alias, as a server feeds tensors."""

    session: Any
    feeds: dict[str, str]
    fetches: list[str]

    def run(self, batch: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self.fetches, {self.feeds[k]: v for k, v in batch.items()})

    def timed(self, batch: dict[str, np.ndarray]) -> float:
        t0 = time.perf_counter()
        self.run(batch)
        return time.perf_counter() - t0

    def close(self) -> None:
        self.session.close()


class _GraphRunner(_Runner):
    def __init__(self, graph_def: Any, inputs: list[Any], outputs: list[Any], config: Any):
        import tensorflow as tf

        graph = tf.Graph()
        with graph.as_default():
            tf.graph_util.import_graph_def(graph_def, name="")
        self.session = tf.compat.v1.Session(graph=graph, config=config)
        self.feeds = {t.alias: t.tensor for t in inputs}
        self.fetches = [t.tensor for t in outputs]


class _SavedModelRunner(_Runner):
    """TF Serving's loader (TF1 ``loader.load``: restore, then the init op) with ``config``."""

    def __init__(self, path: str | os.PathLike, tags: list[str], signature: Any, config: Any):
        import tensorflow as tf

        cfg = config if config is not None else tf.compat.v1.ConfigProto()
        cfg.allow_soft_placement = True  # as builder.load.signatures.ServingSession
        graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=graph, config=cfg)
        try:
            with graph.as_default():
                mg = tf.compat.v1.saved_model.loader.load(self.session, list(tags), str(path))
        except BaseException:
            self.session.close()
            raise
        sig = mg.signature_def[signature.key]
        self.feeds = {t.alias: sig.inputs[t.alias].name for t in signature.inputs}
        self.fetches = [sig.outputs[t.alias].name for t in signature.outputs]
        self.aliases = [t.alias for t in signature.outputs]

    def outputs(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.aliases, self.run(batch)))


# --------------------------------------------------------------------------- export hooks


def optimize(gd: Any, inputs: list[Any], outputs: list[Any], bake: bool,
             measure_batch: int | None) -> tuple[Any, dict[str, Any], list[dict[str, Any]]]:
    """The bf16 step of ``cpu.optimize_graph`` after the FP32 optimiser ran. ``bake``: the bf16
    graph, measured against the FP32 one (``measure_batch``). Otherwise the FP32 graph goes out
    unchanged and the profile is measured on the written artefact (``finish_profile``).
    Returns (graph to write, ``optimization["bf16"]``, extra passes)."""
    if not bake:
        return gd, profile_info(), []
    baked, passes = bake_graph(gd, inputs, outputs)
    info: dict[str, Any] = {"mode": "baked", "rewrite": REWRITE, "needs": NEEDS}
    if measure_batch:
        info["measured"] = measure_speedup(gd, baked, inputs, outputs, measure_batch)
    return baked, info, passes


def profile_info() -> dict[str, Any]:
    return {"mode": "profile", "rewrite": REWRITE, "serving_profile": dict(PROFILE)}


def parity_runner(precision: str, bake: bool) -> Any:
    """What the export's parity step runs the artefact with: ``parity.run_export`` (TF
    Serving's loader), or for the bf16 serving profile the same WITH the rewrite on - the
    numbers a server started with ``--mixed_precision=bfloat16`` returns."""
    from builder.export import parity

    return run_export_profile if precision == "bf16" and not bake else parity.run_export


def run_export_profile(path: str | os.PathLike, tags: list[str], signatures: dict[str, Any],
                       sample_sets: list[dict[str, dict[str, np.ndarray]]]
                       ) -> list[dict[str, dict[str, np.ndarray]]]:
    """``parity.run_export`` with the bf16 rewrite on: every signature on every sample set."""
    runners: dict[str, _SavedModelRunner] = {}
    try:
        out = []
        for s in sample_sets:
            res = {}
            for key, inputs in s.items():
                if key not in runners:  # one load per signature (the loader is TF Serving's)
                    runners[key] = _SavedModelRunner(path, tags, signatures[key], session_config())
                res[key] = runners[key].outputs(inputs)
            out.append(res)
        return out
    finally:
        for r in runners.values():
            r.close()


def finish_profile(optimization: dict[str, Any], precision: str, bake: bool, path: str | os.PathLike,
                   tags: list[str], signature: Any, inputs: dict[str, np.ndarray]) -> None:
    """After parity passed, for the serving profile: record it in ``optimization["bf16"]`` with
    the speed-up measured on the written artefact (``inputs`` at the batch to measure)."""
    if precision != "bf16" or bake:
        return
    info = optimization.setdefault("bf16", profile_info())
    info["measured"] = measure_saved_model(path, tags, signature, inputs)


def build_info_fields(precision: str, optimization: dict[str, Any] | None) -> dict[str, Any]:
    """Top-level build_info keys for a bf16 export: ``serving_profile`` (what the server must
    be started with), ``needs`` (what a baked artefact needs), ``bf16`` (mode + measured
    speed-up and the CPU it was measured on). Empty for every other precision."""
    info = (optimization or {}).get("bf16")
    if precision != "bf16" or not info:
        return {}
    out: dict[str, Any] = {"bf16": info}
    if info["mode"] == "profile":
        out["serving_profile"] = dict(PROFILE)
    else:
        out["needs"] = NEEDS
    return out

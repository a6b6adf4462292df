"""``python -m builder preflight``: what the real ``tensorflow_model_server`` will do with a repository.

A builder runs before the deployment, so it is the one place that can see, per model and
version, the failures users meet in production (tensorflow/serving issues): ops or op
attributes the *target* server does not know, TensorRT ops bound for a CPU image, XLA nodes,
labels that abort start-up, a failing new version, warmup files that fail the load, signatures
REST cannot carry, graphs that break under server-side batching, silent signature changes and
pods killed by hot reload's double memory. Each check names the TF Serving 2.17.0 source whose
behaviour it predicts (README "Preflight"). Static checks read ``saved_model.pb``; the runtime
half (load, warmup replay, batching, peak RSS) runs each version in a fresh subprocess, as
``python -m builder.config.preflight --probe VERSION_DIR``, so one model's memory does not
inflate the next one's footprint.
"""

from __future__ import annotations

import gzip
import json as _json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from builder.config import compat, lifecycle
from builder.core import artifact, layout
from builder.core.errors import BuilderError, InputError

OPDEFS_DIR = Path(__file__).resolve().parent / "opdefs"
DEFAULT_IMAGE = "tensorflow/serving:2.17.0-gpu"  # builder.deploy.image.DEFAULT_SERVING_TAG
# util/json_tensor.cc AddValueToTensor / AddSingleValueAndAdvance: every other dtype is refused
# ("Conversion of JSON Value ... to type: half" in, "Failed to write JSON value for tensor type").
REST_DTYPES = frozenset({"float32", "float64", "int32", "int16", "int8", "uint8", "string", "int64",
                         "bool", "uint32", "uint64"})
XLA_OPS = frozenset({"XlaLaunch", "_XlaCompile", "_XlaRun", "XlaCallModule"})
XLA_ATTRS = ("_XlaMustCompile", "_XlaCompile")


class PreflightFailed(BuilderError):
    """At least one check predicts a failure in the real server (the table says which)."""


@dataclass
class Row:
    model: str
    version: int | None
    check: str
    status: str  # ok | warn | FAIL
    detail: str


@dataclass
class Report:
    image: str
    serving: str
    rows: list[Row] = field(default_factory=list)

    def add(self, model: str, version: int | None, check: str, status: str, detail: str) -> None:
        self.rows.append(Row(model, version, check, status, detail))

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if r.status == "FAIL"]


# --------------------------------------------------------------------------- op snapshots


def snapshot_versions() -> list[tuple[int, int]]:
    """Serving minor versions with a shipped op-definition snapshot (scripts/gen_opdefs)."""
    out = []
    for p in OPDEFS_DIR.glob("serving-*.json.gz"):
        major, minor = p.name[len("serving-"):-len(".json.gz")].split(".")
        out.append((int(major), int(minor)))
    return sorted(out)


@cache
def load_opdefs(serving: tuple[int, int]) -> dict[str, Any]:
    """{"tensorflow": ..., "ops": {op: [attrs with default, required attrs, #in, #out]}}."""
    path = OPDEFS_DIR / f"serving-{serving[0]}.{serving[1]}.json.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return _json.load(f)


def resolve_target(image: str) -> tuple[tuple[int, int], str | None]:
    """The snapshot to check ``image`` against, and a note when it is not an exact match."""
    have = snapshot_versions()
    version, _ = compat.parse_serving_tag(image)
    if version is None:
        return have[-1], f"{image}: tag without a version: ops checked against TF Serving {_v(have[-1])}"
    if version in have:
        return version, None
    if version > have[-1]:
        return have[-1], (f"{image}: no op snapshot for {_v(version)}; checked against {_v(have[-1])} "
                          "(TensorFlow keeps old ops and attributes)")
    raise InputError(f"--image {image}: preflight has op snapshots for TF Serving "
                     f"{_v(have[0])}..{_v(have[-1])} only: use one of those tags")


def _v(t: tuple[int, int]) -> str:
    return f"{t[0]}.{t[1]}"


def _first_with(op: str) -> str | None:
    for ver in snapshot_versions():
        if op in load_opdefs(ver)["ops"]:
            return _v(ver)
    return None


def op_problems(graph_def: Any, target: tuple[int, int]) -> list[str]:
    """Nodes the target server refuses at load: unknown op types ("Op type not registered"),
    attributes the op does not have there ("NodeDef mentions attr 'x' not in Op<...>"), required
    attributes the node lacks ("NodeDef missing attr"), and ops whose argument counts differ
    from the exporting TensorFlow's (tensorflow/core/framework/node_def_util.cc ValidateNodeDef;
    attributes starting with ``_`` are exempt there and here)."""
    from tensorflow.python.framework import op_def_registry

    ops = load_opdefs(target)["ops"]
    functions = {f.signature.name for f in graph_def.library.function}
    problems: list[str] = []
    seen: set[tuple[str, str]] = set()
    for node in compat.iter_nodes(graph_def):
        if node.op in functions:
            continue
        spec = ops.get(node.op)
        if spec is None:
            if ("op", node.op) not in seen:
                seen.add(("op", node.op))
                since = _first_with(node.op)
                problems.append(f"Op type not registered '{node.op}' (node {node.name})"
                                + (f": added in TF {since}" if since else ": a custom op"))
            continue
        known = set(spec[0]) | set(spec[1])
        for attr in sorted(a for a in node.attr if not a.startswith("_") and a not in known):
            if (node.op, attr) not in seen:
                seen.add((node.op, attr))
                problems.append(f"NodeDef mentions attr '{attr}' not in Op<name={node.op}> "
                                f"(node {node.name}): TF Serving {_v(target)} predates it")
        for attr in sorted(a for a in spec[1] if a not in node.attr):
            if (node.op, "-" + attr) not in seen:
                seen.add((node.op, "-" + attr))
                problems.append(f"NodeDef missing attr '{attr}' from Op<name={node.op}> (node {node.name})")
        local = op_def_registry.get(node.op)
        if local is not None and [len(local.input_arg), len(local.output_arg)] != spec[2:]:
            if (node.op, "#") not in seen:
                seen.add((node.op, "#"))
                problems.append(f"Op {node.op} has {len(local.input_arg)} inputs/{len(local.output_arg)} "
                                f"outputs here but {spec[2]}/{spec[3]} in TF Serving {_v(target)}")
    return problems


def xla_nodes(graph_def: Any) -> list[str]:
    """jit_compile functions and compiled-cluster ops. main.cc disables XLA:CPU JIT unless
    --xla_cpu_compilation_enabled: such a model errs at its first compilation (warmup or the
    first request)."""
    out = [f"function {f.signature.name} (jit_compile)" for f in graph_def.library.function
           if any(f.attr[a].b for a in XLA_ATTRS if a in f.attr)]
    for n in compat.iter_nodes(graph_def):
        if n.op in XLA_OPS or any(n.attr[a].b for a in XLA_ATTRS if a in n.attr):
            out.append(f"node {n.name} ({n.op})")
    return sorted(set(out))


def unsafe_nodes(meta_graph: Any) -> list[str]:
    """File/Python ops (compat.UNSAFE_OPS) outside the SavedModel's own checkpoint saver: the
    TF1 ``save/`` scope and TF2's ``*_traced_save_*``/``*_traced_restore_*`` functions run only
    when the server restores variables, never on a request."""
    saver_scope = meta_graph.saver_def.filename_tensor_name.split("/")[0] if "/" in \
        meta_graph.saver_def.filename_tensor_name else "save"
    gd = meta_graph.graph_def
    out = [f"{n.name} ({n.op})" for n in gd.node
           if n.op in compat.UNSAFE_OPS and n.name.split("/")[0] != saver_scope]
    for fn in gd.library.function:
        if "_traced_save" in fn.signature.name or "_traced_restore" in fn.signature.name:
            continue
        out += [f"{fn.signature.name}/{n.name} ({n.op})" for n in fn.node_def if n.op in compat.UNSAFE_OPS]
    return sorted(out)


# --------------------------------------------------------------------------- signatures


def signatures(sm: Any) -> dict[str, Any]:
    """SignatureDefs of the ``serve`` meta graph (init-op signatures left out)."""
    for mg in sm.meta_graphs:
        if "serve" in mg.meta_info_def.tags:
            return {k: v for k, v in mg.signature_def.items() if not k.startswith("__")}
    return {}


def _shape(info: Any) -> list[int] | None:
    return None if info.tensor_shape.unknown_rank else [int(d.size) for d in info.tensor_shape.dim]


def rest_problems(sigs: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(failures, notes): dtypes REST's JSON cannot carry (util/json_tensor.cc), and DT_STRING
    outputs without the ``_bytes`` suffix, which REST returns as JSON strings instead of
    ``{"b64": ...}`` (``IsNamedTensorBytes``), mangling binary data."""
    fails, notes = [], []
    for key, sig in sorted(sigs.items()):
        for kind, tensors in (("input", sig.inputs), ("output", sig.outputs)):
            for alias, info in sorted(tensors.items()):
                dt = artifact.dtype_name(info.dtype)
                if dt not in REST_DTYPES:
                    fails.append(f"signature {key!r} {kind} {alias!r} is {dt}: REST JSON cannot carry "
                                 f"it (gRPC can); cast to float32 in the graph")
                elif dt == "string" and kind == "output" and not alias.endswith("_bytes"):
                    notes.append(f"signature {key!r} output {alias!r} is a string without the _bytes "
                                 "suffix: REST returns it as text, not b64")
    return fails, notes


def static_batching_problems(sigs: dict[str, Any]) -> list[str]:
    """Inputs ``BatchingSession`` refuses or mis-batches (batching/batching_util.h
    ComputeTensorBatchSize: "Batching Run() input tensors must have at least one dimension")."""
    out = []
    for key, sig in sorted(sigs.items()):
        for alias, info in sorted(sig.inputs.items()):
            shape = _shape(info)
            if shape == []:
                out.append(f"signature {key!r} input {alias!r} is a scalar: 'Batching Run() input "
                           "tensors must have at least one dimension'")
            elif shape and shape[0] >= 0:
                out.append(f"signature {key!r} input {alias!r} has a fixed batch dimension "
                           f"{shape[0]}: batches of other sizes fail")
    return out


def contract_diff(old: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(breaking, compatible) differences a client of ``old`` sees when ``new`` serves."""
    breaking, compatible = [], []
    for key in sorted(set(old) | set(new)):
        if key not in new:
            breaking.append(f"signature {key!r} removed")
            continue
        if key not in old:
            compatible.append(f"signature {key!r} added")
            continue
        o, n = old[key], new[key]
        if o.method_name != n.method_name:
            breaking.append(f"signature {key!r} method {o.method_name} -> {n.method_name}")
        for kind, ot, nt in (("input", o.inputs, n.inputs), ("output", o.outputs, n.outputs)):
            for alias in sorted(set(ot) | set(nt)):
                if alias not in nt:
                    (breaking if kind == "output" else compatible).append(
                        f"signature {key!r} {kind} {alias!r} removed")
                elif alias not in ot:
                    (breaking if kind == "input" else compatible).append(
                        f"signature {key!r} {kind} {alias!r} added")
                else:
                    _diff_tensor(f"signature {key!r} {kind} {alias!r}", ot[alias], nt[alias],
                                 breaking, compatible)
    return breaking, compatible


def _diff_tensor(what: str, o: Any, n: Any, breaking: list[str], compatible: list[str]) -> None:
    od, nd = artifact.dtype_name(o.dtype), artifact.dtype_name(n.dtype)
    if od != nd:
        breaking.append(f"{what} dtype {od} -> {nd}")
    os_, ns = _shape(o), _shape(n)
    if os_ == ns or ns is None:
        return
    if os_ is None or len(os_) != len(ns):
        breaking.append(f"{what} shape {os_} -> {ns}")
        return
    if all(b < 0 or a == b for a, b in zip(os_, ns)):
        compatible.append(f"{what} shape {os_} -> {ns} (relaxed)")
    else:
        breaking.append(f"{what} shape {os_} -> {ns}")


# --------------------------------------------------------------------------- runtime probe


def run_probe(version_dir: Path, batching: bool, timeout: float = 900) -> dict[str, Any]:
    """Load, warm and batch-test one version in a fresh Python (peak RSS is per process)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    argv = [sys.executable, "-m", "builder.config.preflight", "--probe", str(version_dir)]
    if batching:
        argv.append("--batching")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    lines = [s for s in proc.stdout.splitlines() if s.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"load_error": f"probe exited {proc.returncode}: {tail}"}
    return _json.loads(lines[-1])


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _probe(version_dir: str, batching: bool) -> dict[str, Any]:
    """Child side: load with the TF1 loader TF Serving's bundle uses, replay every warmup
    record, record peak RSS, then (with batching) compare merged vs separate requests."""
    import tensorflow as tf

    out: dict[str, Any] = {"runtime_rss_bytes": _rss_bytes()}
    graph = tf.Graph()
    sess = tf.compat.v1.Session(graph=graph)
    try:
        with graph.as_default():
            mg = tf.compat.v1.saved_model.loader.load(sess, ["serve"], version_dir)
    except Exception as e:  # noqa: BLE001 - any load error is the finding
        out["load_error"] = _one_line(e)
        return out
    sigs = {k: v for k, v in mg.signature_def.items() if not k.startswith("__")}
    runner = _Runner(sess, sigs)
    out["warmup_records"], err = _replay_warmup(Path(version_dir), runner)
    if err:
        out["warmup_error"] = err
    out["peak_rss_bytes"] = _peak_rss_bytes()
    out["model_bytes"] = max(0, out["peak_rss_bytes"] - out["runtime_rss_bytes"])
    samples = _samples(Path(version_dir), sigs)
    out["batching"] = {k: _batch_check(runner, k, sig, samples.get(k)) for k, sig in sigs.items()} if batching else {}
    out["non_utf8_outputs"] = runner.non_utf8
    return out


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:400]


class _Runner:
    """Runs a signature through a callable made from CallableOptions: like TF Serving, it
    checks fed dtypes but not static shapes (Session.run would refuse [3] for [-1, 1])."""

    def __init__(self, sess: Any, sigs: dict[str, Any]) -> None:
        self.sess, self.sigs = sess, sigs
        self.non_utf8: list[str] = []

    def run(self, key: str, inputs: dict[str, Any]) -> dict[str, Any]:
        import numpy as np
        from tensorflow.core.protobuf import config_pb2

        sig = self.sigs[key]
        if set(inputs) != set(sig.inputs):
            raise ValueError(f"inputs {sorted(inputs)} do not match signature {key!r} inputs {sorted(sig.inputs)}")
        feeds = sorted(inputs)
        fetch = sorted(sig.outputs)
        opts = config_pb2.CallableOptions(feed=[sig.inputs[a].name for a in feeds],
                                          fetch=[sig.outputs[a].name for a in fetch])
        fn = self.sess._make_callable_from_options(opts)  # noqa: SLF001 - the shape-agnostic path
        values = fn(*[np.asarray(inputs[a]) for a in feeds])
        result = dict(zip(fetch, values))
        for alias, arr in result.items():
            a = np.asarray(arr)
            if a.dtype == object and not alias.endswith("_bytes") and alias not in self.non_utf8:
                try:
                    [x.decode("utf-8") for x in a.reshape(-1) if isinstance(x, bytes)]
                except UnicodeDecodeError:
                    self.non_utf8.append(alias)
        return result


def _replay_warmup(version_dir: Path, runner: _Runner) -> tuple[int, str | None]:
    """Every PredictionLog record of assets.extra/tf_serving_warmup_requests, as RunPredict."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = version_dir / artifact.WARMUP_FILE
    if not path.is_file():
        return 0, None
    n = 0
    for raw in artifact.iter_tfrecords(path):
        log = prediction_log_pb2.PredictionLog.FromString(raw)
        if log.WhichOneof("log_type") != "predict_log":
            continue  # classify/regress/multi_inference: checked statically only
        req = log.predict_log.request
        key = req.model_spec.signature_name or "serving_default"
        try:
            if key not in runner.sigs:
                raise ValueError(f"signature {key!r} not found")
            runner.run(key, {k: tf.make_ndarray(v) for k, v in req.inputs.items()})
        except Exception as e:  # noqa: BLE001 - TF Serving fails the load on any record error
            return n, f"warmup record {n} ({key}): {_one_line(e)}"
        n += 1
    return n, None


def _samples(version_dir: Path, sigs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Real inputs per signature: golden.npz (export's parity samples) for serving_default,
    else the first warmup record of that signature; synthetic ones are made later."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    out: dict[str, dict[str, Any]] = {}
    gold = artifact.read_golden(version_dir)
    if gold and "serving_default" in sigs and set(gold.inputs) == set(sigs["serving_default"].inputs):
        out["serving_default"] = gold.inputs
    path = version_dir / artifact.WARMUP_FILE
    if path.is_file():
        for raw in artifact.iter_tfrecords(path):
            log = prediction_log_pb2.PredictionLog.FromString(raw)
            req = log.predict_log.request
            key = req.model_spec.signature_name or "serving_default"
            if log.WhichOneof("log_type") == "predict_log" and key in sigs and key not in out:
                out[key] = {k: tf.make_ndarray(v) for k, v in req.inputs.items()}
    return out


def _synthetic(sig: Any, rows: int) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(0)
    out = {}
    for alias, info in sig.inputs.items():
        shape = [rows] + [d if d >= 0 else 2 for d in (_shape(info) or [rows, 2])[1:]]
        dt = artifact.dtype_name(info.dtype)
        if dt == "string":
            out[alias] = np.full(shape, b"a", dtype=object)
        elif dt == "bool":
            out[alias] = np.zeros(shape, dtype=bool)
        elif dt.startswith(("int", "uint")):
            out[alias] = rng.integers(0, 3, size=shape).astype(dt)
        else:
            out[alias] = rng.standard_normal(shape).astype(dt)
    return out


def _batch_check(runner: _Runner, key: str, sig: Any, sample: dict[str, Any] | None) -> list[str]:
    """Two requests (1 and 2 rows) run separately and merged into one batch of 3, as
    BatchingSession concatenates and splits along dim 0 (batching/batching_session.cc)."""
    import numpy as np

    if static_batching_problems({key: sig}):
        return []  # reported statically; concatenating scalars/fixed batches is meaningless
    try:
        if sample is None or any(np.ndim(v) == 0 for v in sample.values()):
            sample = _synthetic(sig, 3)
        rows = {k: np.concatenate([np.asarray(v)] * 3)[:3] for k, v in sample.items()}
        a = runner.run(key, {k: v[:1] for k, v in rows.items()})
        b = runner.run(key, {k: v[1:3] for k, v in rows.items()})
        merged = runner.run(key, rows)
    except Exception as e:  # noqa: BLE001 - a graph that cannot run a batch of 3 is the finding
        return [f"signature {key!r}: a merged batch of 3 rows fails: {_one_line(e)}"]
    problems = []
    for alias, m in sorted(merged.items()):
        m = np.asarray(m)
        if m.ndim == 0:
            problems.append(f"signature {key!r} output {alias!r} is a scalar: 'Batched output tensor "
                            "has 0 dimensions'")
        elif m.shape[0] != 3:
            problems.append(f"signature {key!r} output {alias!r} has dim 0 = {m.shape[0]} for a batch "
                            "of 3: 'Batched output tensor's 0th dimension does not equal the sum of "
                            "the 0th dimension sizes of the input tensors'")
        elif not (_same(m[:1], a[alias]) and _same(m[1:], b[alias])):
            problems.append(f"signature {key!r} output {alias!r}: rows differ when requests share a "
                            "batch (each row's result depends on the other rows)")
    return problems


def _same(x: Any, y: Any) -> bool:
    import numpy as np

    x, y = np.asarray(x), np.asarray(y)
    if x.shape != y.shape:
        return False
    if x.dtype == object or y.dtype == object:
        return bool((x == y).all())
    return bool(np.allclose(x, y, rtol=1e-4, atol=1e-5))


# --------------------------------------------------------------------------- the checks


@dataclass
class _Version:
    model: str
    version: int
    path: Path
    sigs: dict[str, Any] = field(default_factory=dict)
    load_error: str | None = None
    probe: dict[str, Any] = field(default_factory=dict)


def check_version(rep: Report, v: _Version, image: str, target: tuple[int, int], batching: bool,
                  rest: bool, probe: bool) -> None:
    """Every per-version check: ops, TensorRT, XLA, unsafe ops, warmup, REST, batching."""
    try:
        sm = artifact.read_saved_model(v.path)
    except BuilderError as e:
        v.load_error = str(e)
        rep.add(v.model, v.version, "load", "FAIL", str(e))
        return
    v.sigs = signatures(sm)
    graphs = [mg.graph_def for mg in sm.meta_graphs]
    info = artifact.read_build_info(v.path) or {}
    fatal: list[str] = []
    ops = sorted({p for gd in graphs for p in op_problems(gd, target)})
    _row(rep, v, "ops", ops, f"every op and attribute exists in TF Serving {_v(target)}", fatal)
    trt = any(compat.trt_ops(gd) for gd in graphs)
    no_kernel = sorted({n.op for gd in graphs for n in compat.iter_nodes(gd)} & compat.SERVING_NO_KERNEL_OPS)
    problem = compat.image_problem(trt, image, missing_ops=no_kernel,
                                   tensorrt_version=(info.get("tensorrt") or {}).get("loaded_version"))
    _row(rep, v, "image", [problem] if problem else [], f"loads in {image}", fatal)
    xla = sorted({x for gd in graphs for x in xla_nodes(gd)})
    _row(rep, v, "xla", [f"XLA:CPU JIT is off in tensorflow_model_server (main.cc "
                         f"--xla_cpu_compilation_enabled=false): {', '.join(xla[:4])} fail at the first "
                         "compilation; re-export without jit_compile"] if xla else [], "no XLA nodes", fatal)
    unsafe = sorted({x for mg in sm.meta_graphs for x in unsafe_nodes(mg)})
    rep.add(v.model, v.version, "unsafe ops", "warn" if unsafe else "ok",
            f"file/Python ops: {', '.join(unsafe[:5])}" if unsafe else "no file or Python ops")
    warm = lifecycle.check_warmup(v.path, {k: list(s.inputs) for k, s in v.sigs.items()})
    _row(rep, v, "warmup", warm, "warmup file valid", fatal)
    if rest:
        fails, notes = rest_problems(v.sigs)
        rep.add(v.model, v.version, "rest", "FAIL" if fails else ("warn" if notes else "ok"),
                "; ".join(fails + notes) or "every signature is REST-able")
    if batching:
        static = static_batching_problems(v.sigs)
        _row(rep, v, "batching", static, "", None, only_if_failed=True)
    if probe and not fatal:
        _probe_rows(rep, v, batching, rest)
    if fatal:
        v.load_error = fatal[0]


def _row(rep: Report, v: _Version, check: str, problems: list[str], ok_text: str,
         fatal: list[str] | None, only_if_failed: bool = False) -> None:
    """One table row; problems that make the real server's load fail also go to ``fatal``."""
    if problems:
        rep.add(v.model, v.version, check, "FAIL", "; ".join(problems))
        if fatal is not None:
            fatal.extend(problems)
    elif not only_if_failed:
        rep.add(v.model, v.version, check, "ok", ok_text)


def _probe_rows(rep: Report, v: _Version, batching: bool, rest: bool) -> None:
    v.probe = p = run_probe(v.path, batching)
    if p.get("load_error"):
        v.load_error = p["load_error"]
        rep.add(v.model, v.version, "load", "FAIL", p["load_error"])
        return
    if p.get("warmup_error"):
        v.load_error = p["warmup_error"]
        rep.add(v.model, v.version, "warmup replay", "FAIL", p["warmup_error"] + " (fails the whole load)")
    else:
        rep.add(v.model, v.version, "warmup replay", "ok", f"{p.get('warmup_records', 0)} record(s) ran")
    if batching:
        problems = [x for k in sorted(p.get("batching", {})) for x in p["batching"][k]]
        if problems or not static_batching_problems(v.sigs):
            rep.add(v.model, v.version, "batching", "FAIL" if problems else "ok",
                    "; ".join(problems) or "merged batch of 3 = the two requests run separately")
    if rest and p.get("non_utf8_outputs"):
        rep.add(v.model, v.version, "rest", "FAIL", "string outputs "
                + ", ".join(repr(a) for a in p["non_utf8_outputs"])
                + " hold binary data but lack the _bytes suffix: REST mangles them (rename to <alias>_bytes)")
    mib = 1024 * 1024
    rep.add(v.model, v.version, "footprint", "ok",
            f"load+warmup peak {p['model_bytes'] / mib:.0f} MiB over a {p['runtime_rss_bytes'] / mib:.0f} MiB "
            f"runtime; hot reload needs {2 * p['model_bytes'] / mib:.0f} MiB")


def footprint_record(probe: dict[str, Any]) -> dict[str, Any]:
    """The build_info["footprint"] entry deploy sizes memory from: hot reload holds the old and
    the new version at once (availability preserving), so it needs twice the model's memory."""
    import platform

    import tensorflow as tf

    model = int(probe["model_bytes"])
    runtime = int(probe["runtime_rss_bytes"])
    return {"model_bytes": model, "runtime_bytes": runtime, "hot_reload_bytes": 2 * model,
            "recommended_memory_bytes": runtime + 2 * model, "peak_rss_bytes": int(probe["peak_rss_bytes"]),
            "measured_with": f"tensorflow {tf.__version__} (Python process), {platform.machine()}",
            "note": "peak RSS while loading and warming in a fresh process, minus the runtime; "
                    "recommended = runtime + 2 x model (hot reload)"}


def write_footprints(versions: list[_Version]) -> list[Path]:
    written = []
    for v in versions:
        if v.probe.get("model_bytes") is None:
            continue
        info = artifact.read_build_info(v.path) or {"name": v.model, "version": v.version}
        info["footprint"] = footprint_record(v.probe)
        written.append(artifact.write_build_info(v.path, info))
    return written


# --------------------------------------------------------------------------- repository level


def _project_flags(allow_unavailable_labels: bool, batching: bool) -> lifecycle.ServerFlags:
    """The flags the project's image and manifests pass (builder.deploy.image.server_flags)."""
    from builder.deploy import image as simage

    flags = lifecycle.ServerFlags.from_args(simage.server_flags())
    return lifecycle.ServerFlags(**{**asdict(flags), "enable_batching": batching,
                                    "allow_version_labels_for_unavailable_models": allow_unavailable_labels})


def _load_config(repo: Path, model_config_file: str | None) -> tuple[Any, str]:
    from builder.config import models_config

    path = Path(model_config_file) if model_config_file else repo / "models.config"
    if path.is_file():
        return models_config.read_models_config(path), str(path)
    if model_config_file:
        raise InputError(f"--model_config_file {path}: no such file")
    cfg = models_config.build_config(repo, warn=lambda msg: None)
    return cfg, "(none: the config `python -m builder config` would write)"


def _local_config(cfg: Any, repo: Path, rep: Report) -> Any:
    """base_path as the server sees it (e.g. /models/NAME in a container) -> REPO/NAME here."""
    local = type(cfg)()
    local.CopyFrom(cfg)
    for c in local.model_config_list.config:
        if not Path(c.base_path).exists() and (repo / c.name).is_dir():
            rep.add(c.name, None, "base path", "ok", f"{c.base_path} checked as {repo / c.name}")
            c.base_path = str((repo / c.name).resolve())
    return local


def lifecycle_rows(rep: Report, cfg: Any, flags: lifecycle.ServerFlags,
                   versions: dict[tuple[str, int], _Version]) -> None:
    """Start-up, labels, duplicates and the roll-out of the newest version, simulated with the
    life-cycle rules on the real files and the load results of the checks above."""
    errors = {k: v.load_error for k, v in versions.items() if v.load_error}
    plan = lifecycle.startup_plan(cfg, flags, errors)
    for w in plan.warnings:
        rep.add("*", None, "discovery", "warn", w)
    if plan.starts:
        loaded = [f"{ld.model}/{ld.version}" for ld in plan.loads if ld.ok]
        rep.add("*", None, "start-up", "ok", f"tensorflow_model_server starts; AVAILABLE: {', '.join(loaded)}")
    else:
        rep.add("*", None, "start-up", "FAIL", ("exits: " if plan.would_exit else "hangs: ") + "; ".join(plan.reasons))
    ok = {(ld.model, ld.version) for ld in plan.loads if ld.ok}
    for c in cfg.model_config_list.config:
        for label, v in sorted(c.version_labels.items()):
            if (c.name, v) not in ok:
                rep.add(c.name, v, "label", "FAIL", f"label {label!r} -> version {v}, which will not be "
                        "AVAILABLE: requests to the label fail and later label moves are refused")
        _rollout_row(rep, c, flags, errors)


def _rollout_row(rep: Report, c: Any, flags: lifecycle.ServerFlags, errors: dict) -> None:
    """A running server that served the previous aspired set when the newest version appeared."""
    policy = lifecycle.VersionPolicy.from_proto(c)
    chosen, _ = lifecycle.aspired(policy, lifecycle.discover_versions(c.base_path, policy, c.name), c.name)
    versions = sorted({d.version for d in chosen})
    if len(versions) < 1 or not any((c.name, v) in errors for v in versions):
        return
    newest = versions[-1]
    older = lifecycle.discover_versions(c.base_path, policy, c.name)
    older.candidates = [d for d in older.candidates if d.version != newest]
    before = sorted({d.version for d in lifecycle.aspired(policy, older, c.name)[0]})
    before = [v for v in before if (c.name, v) not in errors]
    t = lifecycle.transition(before, versions, lambda v: errors.get((c.name, v)), flags)
    rep.add(c.name, newest, "hot reload", "warn" if t.serving else "FAIL",
            f"serving {before or 'nothing'} -> {t.serving or 'nothing'}; " + "; ".join(t.events))


def contract_rows(rep: Report, repo: Path, cfg: Any, against: Any, allow_breaking: bool) -> None:
    """Newest aspired version of each model vs ``--against`` (default: the version before it)."""
    wanted = _against_map(against, [c.name for c in cfg.model_config_list.config])
    for c in cfg.model_config_list.config:
        on_disk = layout.list_versions(Path(c.base_path))
        if not on_disk:
            continue
        new = on_disk[-1]
        old = wanted.get(c.name, wanted.get("*"))
        if old is None:
            older = [v for v in on_disk if v < new]
            if not older:
                continue
            old = older[-1]
        if old not in on_disk:
            rep.add(c.name, new, "contract", "FAIL", f"--against {old}: no version {old} of {c.name} "
                    f"(versions: {', '.join(map(str, on_disk))})")
            continue
        breaking, compatible = contract_diff(signatures(artifact.read_saved_model(Path(c.base_path) / str(old))),
                                             signatures(artifact.read_saved_model(Path(c.base_path) / str(new))))
        status = ("warn" if allow_breaking else "FAIL") if breaking else "ok"
        rep.add(c.name, new, "contract", status, f"vs version {old}: " + ("; ".join(breaking + compatible)
                or "same signatures") + (" (--allow_breaking)" if breaking and allow_breaking else ""))


def _against_map(against: Any, models: list[str]) -> dict[str, int]:
    if against in (None, ""):
        return {}
    from builder.options import as_list

    out: dict[str, int] = {}
    for item in as_list(against, "--against"):
        name, _, ver = item.rpartition("=")
        try:
            out[name or "*"] = int(ver)
        except ValueError:
            raise InputError(f"--against {item!r}: pass a version number (e.g. 3) or NAME=3") from None
    return out


def preflight(repo: str | Path, model_config_file: str | None = None, image: str = DEFAULT_IMAGE,
              against: Any = None, allow_breaking: bool = False, batching: bool = True, rest: bool = True,
              allow_unavailable_labels: bool = True, probe: bool = True,
              write_footprint: bool = True) -> Report:
    """Every check on every version the config serves; see ``preflight_command``."""
    repo = Path(repo)
    if not repo.is_dir():
        raise InputError(f"--repo {repo}: no such directory")
    target, note = resolve_target(image)
    rep = Report(image=image, serving=_v(target))
    if note:
        rep.add("*", None, "target", "warn", note)
    cfg, source = _load_config(repo, model_config_file)
    cfg = _local_config(cfg, repo, rep)
    flags = _project_flags(allow_unavailable_labels, batching)
    versions: dict[tuple[str, int], _Version] = {}
    for c in cfg.model_config_list.config:
        policy = lifecycle.VersionPolicy.from_proto(c)
        chosen, _ = lifecycle.aspired(policy, lifecycle.discover_versions(c.base_path, policy, c.name), c.name)
        for d in chosen:
            v = versions.setdefault((c.name, d.version), _Version(c.name, d.version, d.path))
            check_version(rep, v, image, target, batching, rest, probe)
    lifecycle_rows(rep, cfg, flags, versions)
    contract_rows(rep, repo, cfg, against, allow_breaking)
    if write_footprint:
        write_footprints(list(versions.values()))
    rep.rows.insert(0, Row("*", None, "config", "ok", f"{source}; {len(versions)} version(s); flags: "
                           f"batching={'on' if batching else 'off'}, labels for unavailable models "
                           f"{'allowed' if allow_unavailable_labels else 'refused'}"))
    return rep


def table(rep: Report, width: int = 110) -> str:
    head = ("model", "version", "check", "status", "detail")
    rows = [(r.model, "" if r.version is None else str(r.version), r.check, r.status,
             r.detail if len(r.detail) <= width else r.detail[:width - 3] + "...") for r in rep.rows]
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(4)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head[:4], widths)) + "  " + head[4]]
    lines.append("-" * (sum(widths) + 8 + len(head[4])))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]
    return "\n".join(lines)


def preflight_command(repo: str = "", model_config_file: str = "", image: str = DEFAULT_IMAGE,
                      against: Any = None, allow_breaking: bool = False, json: bool = False,  # noqa: A002
                      batching: bool = True, rest: bool = True, allow_unavailable_labels: bool = True,
                      probe: bool = True, write_footprint: bool = True) -> None:
    """Predict what tensorflow_model_server will do with a repository; exit 2 if anything fails.

    Example: python -m builder preflight --repo model_repo --image tensorflow/serving:2.15.1
             --against 3

    Args:
      repo: Model repository (REPO/NAME/VERSION).
      model_config_file: models.config to simulate (default REPO/models.config, else the one
        `config` would write).
      image: Target tensorflow/serving image; its version picks the op snapshot (2.11-2.17).
      against: Version to diff the newest version's signatures against (N or NAME=N); default
        the version before the newest.
      allow_breaking: Report breaking signature changes as warnings instead of failures.
      json: Print the report as JSON.
      batching: Simulate --enable_batching (the project's image and manifests pass it).
      rest: Check that every signature is REST-able (turn off for gRPC-only clients).
      allow_unavailable_labels: Simulate --allow_version_labels_for_unavailable_models (the
        project's image and manifests pass it).
      probe: Load, warm up and batch-test each version in a subprocess (also measures footprint).
      write_footprint: Write the measured footprint into each version's build_info.json.
    """
    if not repo:
        raise InputError("--repo is required: the model repository directory")
    rep = preflight(repo, model_config_file or None, str(image), against, _bool(allow_breaking),
                    _bool(batching), _bool(rest), _bool(allow_unavailable_labels), _bool(probe),
                    _bool(write_footprint))
    if json:
        print(_json.dumps({"image": rep.image, "serving": rep.serving, "passed": not rep.failed,
                           "rows": [asdict(r) for r in rep.rows]}, indent=2))
    else:
        print(f"preflight for {rep.image} (TF Serving {rep.serving} op set)")
        print(table(rep))
    if rep.failed:
        raise PreflightFailed(f"preflight: {len(rep.failed)} check(s) predict a failure in "
                              f"{rep.image} ({', '.join(sorted({r.check for r in rep.failed}))}): "
                              "see the table above")
    if not json:
        print(f"preflight passed: {len(rep.rows)} check(s)")


def _bool(value: Any) -> bool:
    """fire passes ``--flag false`` as the string 'false'."""
    if isinstance(value, str):
        return value.strip().lower() not in ("", "0", "false", "no", "off")
    return bool(value)


def _main(argv: list[str]) -> int:
    """``python -m builder.config.preflight --probe VERSION_DIR [--batching]`` (the subprocess)."""
    if len(argv) >= 2 and argv[0] == "--probe":
        print(_json.dumps(_probe(argv[1], "--batching" in argv[2:])), flush=True)
        return 0
    print("usage: python -m builder preflight --repo REPO (this module's own entry is internal)",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

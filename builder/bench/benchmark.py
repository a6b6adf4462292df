"""``python -m builder benchmark``: the tutorial's headline table, for any model, measured honestly.

WHY: the FaceNet TF-TRT tutorial sells its result as one table (checkpoint flow vs frozen graph
vs TF-TRT, batch 100, "1.125x, no accuracy loss"). Users want that table for their own model
before they ship it, and they want it to hold up: the speedup and the "no accuracy loss" must be
measured in the same run, on the same inputs, under the same conditions.

Candidates (any number, compared side by side in one run; the first is the reference):

- source models in any input flow, run the way the tutorial ran them: a session on the restored
  checkpoint or on the imported frozen graph, a loaded SavedModel, a Keras call
  (``builder.loaders``; the loader flags ``--inputs/--outputs/--feed/...`` apply to them);
- exported versions ``REPO/NAME/VERSION`` (or ``REPO/NAME`` = its latest version), loaded with
  the TF1 SavedModel loader TF Serving uses, in their own ``tf.Session``;
- running servers: gRPC (official ``tensorflow.serving.PredictionService`` stubs) or REST, with
  ``--concurrency`` client threads.

Every in-process candidate runs by ``Session.run`` with a ``feed_dict`` of numpy arrays (the
tutorial's way); server requests are built once per batch size (client-side encoding is not
timed, the round trip and decoding of the answer are).

Statistics: for each batch size, every candidate gets ``--warmup`` untimed runs, then
``--repeats`` repeats of ``--runs`` timed runs (or of ``--seconds`` each). Repeats are
interleaved round-robin across candidates (with a rotating start), so background load - the
2 cores here are shared - hits all candidates alike. Reported: p50/p90/p99 latency over all timed
runs, min/median/max of per-repeat throughput, speedup vs the first candidate (median throughput
ratio), the accuracy delta against the first candidate on the same inputs (max abs diff, min
cosine), and for in-process candidates the fraction of the machine's FP32 matrix-multiply
throughput reached (model FLOPs from TensorFlow's profiler, GEMM measured in the same run).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import re
import shlex
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from builder.core.errors import BuilderError, InputError, ServingError
from builder.core.model import TensorInfo
from builder.options import as_int_list, as_list, as_mapping

SOURCE_KINDS = ("checkpoint", "frozen", "savedmodel", "keras")
KINDS = (*SOURCE_KINDS, "export", "grpc", "rest")
IN_PROCESS_KINDS = (*SOURCE_KINDS, "export")
SERVER_KINDS = ("grpc", "rest")
_LABEL_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_HOSTPORT_RE = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.\-]+):(\d{1,5})(/.*)?$")
_REST_MODEL_RE = re.compile(r"^(.*?)/v1/models/([^/:]+)(?:/versions/(\d+))?/?$")
GRPC_MAX_MESSAGE_BYTES = 2**31 - 1
SPEC_HELP = ("LABEL=TARGET where TARGET is a model path (checkpoint dir/.meta, frozen .pb, "
             "SavedModel dir, .keras), an exported REPO/NAME[/VERSION], HOST:PORT[/NAME[/VERSION]] "
             "for gRPC or http://HOST:PORT[/v1/models/NAME] for REST; force the kind with "
             f"KIND:TARGET ({'|'.join(KINDS)})")


# --------------------------------------------------------------------------- candidate specs


@dataclass
class CandidateSpec:
    """One parsed candidate: what to run and how to reach it (nothing is loaded yet)."""

    label: str
    kind: str  # one of KINDS
    target: str  # path, HOST:PORT, or base URL
    model_name: str | None = None  # servers only
    model_version: int | None = None  # servers only
    spec: str = ""  # the text the user wrote, for error messages

    @property
    def in_process(self) -> bool:
        return self.kind in IN_PROCESS_KINDS

    def as_json(self) -> dict[str, Any]:
        return {"label": self.label, "kind": self.kind, "target": self.target,
                **({"model_name": self.model_name} if self.model_name else {}),
                **({"model_version": self.model_version} if self.model_version else {})}


def parse_candidates(specs: list[str], grpc: list[str] | None = None,
                     rest: list[str] | None = None, model_name: str | None = None,
                     model_version: int | None = None) -> list[CandidateSpec]:
    """Parse ``LABEL=TARGET`` specs (plus ``--grpc``/``--rest`` shortcuts) and check them
    cheaply (paths exist, addresses are well formed, labels unique) before anything loads."""
    out: list[CandidateSpec] = []
    for text in specs:
        out.append(_parse_one(text))
    for i, t in enumerate(grpc or []):
        out.append(_parse_one(f"{'grpc' if len(grpc or []) == 1 else f'grpc{i + 1}'}=grpc:{t}",
                              flag="--grpc", raw=t))
    for i, t in enumerate(rest or []):
        out.append(_parse_one(f"{'rest' if len(rest or []) == 1 else f'rest{i + 1}'}=rest:{t}",
                              flag="--rest", raw=t))
    if not out:
        raise InputError("no candidates: pass e.g. --candidates checkpoint=example_model/checkpoint,"
                         "export=model_repo/facenet/1 (or them as positional arguments)")
    seen: dict[str, str] = {}
    for c in out:
        if c.label in seen:
            raise InputError(f"candidate label {c.label!r} is used twice ({seen[c.label]!r} and "
                             f"{c.spec!r}): give each candidate its own LABEL=")
        seen[c.label] = c.spec
    servers = [c for c in out if c.kind in SERVER_KINDS]
    if servers:
        default_name = model_name or _default_model_name(out)
        for c in servers:
            if c.model_name is None:
                if not default_name:
                    raise InputError(
                        f"candidate {c.spec!r}: which model should the server run? pass "
                        "--model_name NAME or write the target as HOST:PORT/NAME"
                    )
                c.model_name = default_name
            if c.model_version is None:
                c.model_version = model_version
    return out


def _parse_one(text: str, flag: str = "--candidates", raw: str | None = None) -> CandidateSpec:
    shown = raw if raw is not None else text
    text = str(text).strip()
    if not text:
        raise InputError(f"{flag}: an empty candidate; write {SPEC_HELP}")
    label, target = (text.split("=", 1) if "=" in text else ("", text))
    label, target = label.strip(), target.strip()
    if "=" in text and not label:
        raise InputError(f"{flag} {shown!r}: empty label before '='; write {SPEC_HELP}")
    if not target:
        raise InputError(f"{flag} {shown!r}: nothing after '='; write {SPEC_HELP}")
    kind = None
    m = re.match(r"^([a-z]+):(?!//)(.*)$", target)
    if m and m.group(1) in KINDS:
        kind, target = m.group(1), m.group(2).strip()
    elif m and m.group(1) not in ("http", "https") and not Path(target).exists() \
            and not _HOSTPORT_RE.match(target):
        raise InputError(f"{flag} {shown!r}: unknown kind {m.group(1)!r}; use one of "
                         f"{', '.join(KINDS)} (e.g. export:model_repo/facenet/1)")
    if label and not _LABEL_RE.match(label):
        raise InputError(f"{flag} {shown!r}: label {label!r} must use letters, digits, '_', '.', "
                         "'-' (e.g. checkpoint=...)")
    spec = CandidateSpec(label=label, kind="", target=target, spec=shown)
    if kind in SERVER_KINDS or (kind is None and _looks_like_server(target)):
        _parse_server(spec, kind, flag, shown)
    else:
        _parse_path(spec, kind, flag, shown)
    if not spec.label:
        spec.label = _default_label(spec)
    return spec


def _looks_like_server(target: str) -> bool:
    if target.startswith(("http://", "https://")):
        return True
    return bool(_HOSTPORT_RE.match(target)) and not Path(target).exists()


def _parse_server(spec: CandidateSpec, kind: str | None, flag: str, shown: str) -> None:
    target = spec.target
    if target.startswith(("http://", "https://")) or kind == "rest":
        if not target.startswith(("http://", "https://")):
            target = "http://" + target
        spec.kind = "rest"
        m = _REST_MODEL_RE.match(target)
        if m:
            target, spec.model_name = m.group(1), m.group(2)
            spec.model_version = int(m.group(3)) if m.group(3) else None
        base = target.rstrip("/")
        hp = re.match(r"^https?://([^/]+)$", base)
        if not hp or not _HOSTPORT_RE.match(hp.group(1)):
            raise InputError(f"{flag} {shown!r}: not a REST address; write http://HOST:PORT or "
                             "http://HOST:PORT/v1/models/NAME")
        _check_port(hp.group(1), flag, shown)
        spec.target = base
        return
    spec.kind = "grpc"
    m = _HOSTPORT_RE.match(target)
    if not m:
        raise InputError(f"{flag} {shown!r}: not a gRPC address; write HOST:PORT or "
                         "HOST:PORT/NAME[/VERSION] (e.g. 127.0.0.1:8500/facenet)")
    _check_port(f"{m.group(1)}:{m.group(2)}", flag, shown)
    rest = (m.group(3) or "").strip("/")
    spec.target = f"{m.group(1)}:{m.group(2)}"
    if rest:
        parts = rest.split("/")
        if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()) or not parts[0]:
            raise InputError(f"{flag} {shown!r}: after HOST:PORT write /NAME or /NAME/VERSION "
                             "(VERSION a number)")
        spec.model_name = parts[0]
        spec.model_version = int(parts[1]) if len(parts) == 2 else None


def _check_port(hostport: str, flag: str, shown: str) -> None:
    port = int(hostport.rsplit(":", 1)[1])
    if not 0 < port < 65536:
        raise InputError(f"{flag} {shown!r}: port {port} is out of range 1..65535")


def _parse_path(spec: CandidateSpec, kind: str | None, flag: str, shown: str) -> None:
    from builder.core import layout
    from builder.load import loaders

    p = Path(spec.target).expanduser()
    if not p.exists():
        raise InputError(f"{flag} {shown!r}: {p} does not exist: fix the path (LABEL=PATH, "
                         "or HOST:PORT/NAME for a gRPC server)")
    if kind == "export" or (kind is None and _is_version_dir(p)):
        spec.kind = "export"
        if not (p / "saved_model.pb").exists():
            versions = layout.list_versions(p)
            if not versions:
                raise InputError(f"{flag} {shown!r}: {p} is neither a version directory "
                                 "(REPO/NAME/VERSION with saved_model.pb) nor a model with versions")
            p = p / str(versions[-1])
            if not (p / "saved_model.pb").exists():
                raise InputError(f"{flag} {shown!r}: {p} has no saved_model.pb")
        spec.target = str(p)
        return
    if kind is None and p.is_dir() and layout.list_versions(p) and not (p / "saved_model.pb").exists():
        versions = layout.list_versions(p)
        spec.kind, spec.target = "export", str(p / str(versions[-1]))
        return
    try:
        spec.kind = kind or loaders.detect_flow(p)
    except InputError:
        raise InputError(f"{flag} {shown!r}: cannot tell what {p} is (no saved_model.pb, no *.meta"
                         f", no numeric versions); write KIND:PATH with KIND one of "
                         f"{', '.join(KINDS)}") from None
    spec.target = str(p)


def _is_version_dir(p: Path) -> bool:
    from builder.core import layout

    return p.is_dir() and layout.is_version_name(p.name) and (p / "saved_model.pb").exists()


def _default_label(spec: CandidateSpec) -> str:
    """``NAME-VERSION`` for exports, the kind for everything else (labels must be unique)."""
    if spec.kind == "export":
        p = Path(spec.target)
        return f"{p.parent.name}-{p.name}"
    return spec.kind


def _default_model_name(specs: list[CandidateSpec]) -> str | None:
    """A server candidate without a model name serves what the first export candidate is."""
    for c in specs:
        if c.kind == "export":
            info = Path(c.target) / "assets.extra" / "build_info.json"
            try:
                return str(json.loads(info.read_text())["name"])
            except (OSError, ValueError, KeyError):
                return Path(c.target).parent.name
    return None


# --------------------------------------------------------------------------- options


@dataclass
class BenchOptions:
    """Everything ``benchmark`` takes (validated by ``validate``)."""

    candidates: list[CandidateSpec]
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 100])
    warmup: int = 2
    repeats: int = 3
    runs: int | None = None  # timed runs per repeat (None + seconds=None -> 10)
    seconds: float | None = None  # time budget per repeat
    concurrency: int = 1
    samples: str | None = None
    seed: int = 0
    signature: str = "serving_default"
    # loader flags for source-flow candidates
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    feed: dict[str, str] = field(default_factory=dict)
    input_alias: dict[str, str] = field(default_factory=dict)
    output_alias: dict[str, str] = field(default_factory=dict)
    input_shapes: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=lambda: ["serve"])
    gemm_size: int = 2048  # 0 = skip the GEMM measurement
    flops: bool = True
    timeout: float = 300.0  # per server request
    out: str | None = None
    basename: str | None = None
    quiet: bool = False
    server_pids: list[int] = field(default_factory=list)  # their CPU is not "background load"

    def timed_runs(self) -> int | None:
        if self.runs is None and self.seconds is None:
            return 10
        return self.runs


def validate(o: BenchOptions) -> None:
    """All cheap checks, before any model loads, so a typo never costs minutes."""
    if not o.batch_sizes:
        raise InputError("--batch_sizes is empty: use e.g. --batch_sizes 1,8,100")
    for value, flag, low in ((o.warmup, "--warmup", 0), (o.repeats, "--repeats", 1),
                             (o.concurrency, "--concurrency", 1), (o.gemm_size, "--gemm_size", 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise InputError(f"{flag} {value!r}: must be an integer >= {low}")
    if o.runs is not None and (not isinstance(o.runs, int) or isinstance(o.runs, bool) or o.runs < 1):
        raise InputError(f"--runs {o.runs!r}: must be an integer >= 1 (timed runs per repeat)")
    if o.seconds is not None and not (isinstance(o.seconds, (int, float)) and o.seconds > 0):
        raise InputError(f"--seconds {o.seconds!r}: must be a positive number (time per repeat)")
    if not (isinstance(o.timeout, (int, float)) and o.timeout > 0):
        raise InputError(f"--timeout {o.timeout!r}: must be a positive number of seconds")
    if o.samples and not Path(o.samples).is_file():
        raise InputError(f"--samples {o.samples}: no such file (an .npz keyed by input alias)")
    if o.out and Path(o.out).exists() and not Path(o.out).is_dir():
        raise InputError(f"--out {o.out}: exists and is not a directory")
    if o.basename is not None and not _LABEL_RE.match(o.basename):
        raise InputError(f"--basename {o.basename!r}: use letters, digits, '_', '.', '-'")
    from builder.load import loaders

    for k, v in o.input_shapes.items():
        loaders.parse_shape(v, f"--input_shapes {k}")


# --------------------------------------------------------------------------- runners


class Runner:
    """A loaded candidate: ``run`` takes a prepared batch, returns outputs keyed by alias."""

    spec: CandidateSpec
    inputs: list[TensorInfo] | None = None  # signature, when known
    output_aliases: list[str]
    concurrency: int = 1
    graph_def: Any = None  # for the FLOP count (in-process only)
    flops_inputs: dict[str, str] | None = None  # alias -> tensor name in graph_def
    details: dict[str, Any]

    def prepare(self, batch: dict[str, np.ndarray]) -> Any:
        return batch

    def run(self, prepared: Any) -> dict[str, np.ndarray]:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:
        pass


class SourceRunner(Runner):
    """The ORIGINAL model, as the user ran it (``NormalizedModel.run_source``)."""

    def __init__(self, spec: CandidateSpec, o: BenchOptions) -> None:
        from builder.load import loaders

        self.spec = spec
        self.model = loaders.load(
            spec.target, spec.kind, inputs=o.inputs, outputs=o.outputs, feeds=o.feed,
            input_alias=o.input_alias, output_alias=o.output_alias,
            input_shapes={k: loaders.parse_shape(v) for k, v in o.input_shapes.items()},
            tags=o.tags, signature=o.signature,
        )
        self.inputs = list(self.model.inputs)
        self.output_aliases = [t.alias for t in self.model.outputs]
        self.graph_def = self.model.graph_def
        self.flops_inputs = {t.alias: t.tensor for t in self.model.inputs}
        self.details = {"flow": self.model.flow, "feeds": self.model.feeds,
                        "runs_as": "Session.run(feed_dict) on the source graph"}

    def run(self, prepared: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self.model.run_source is not None
        return self.model.run_source(prepared)

    def close(self) -> None:
        self.model.close()


class SavedModelRunner(Runner):
    """An exported version, loaded with the TF1 loader TF Serving uses, in its own session."""

    def __init__(self, spec: CandidateSpec, o: BenchOptions) -> None:
        import tensorflow as tf

        from builder.load.loaders import _dtype_name, _first_line, _shape_list

        self.spec = spec
        self.graph = tf.Graph()
        self.sess = tf.compat.v1.Session(graph=self.graph)
        try:
            with self.graph.as_default():
                try:
                    mg = tf.compat.v1.saved_model.loader.load(self.sess, o.tags, spec.target)
                except (RuntimeError, tf.errors.OpError, OSError, ValueError) as e:
                    raise InputError(f"candidate {spec.spec!r}: {spec.target} does not load as a "
                                     f"SavedModel: {_first_line(e)}") from None
            if o.signature not in mg.signature_def:
                raise InputError(f"candidate {spec.spec!r}: no signature {o.signature!r} in "
                                 f"{spec.target} (has: {', '.join(sorted(mg.signature_def))}); "
                                 "pass --signature KEY")
            sig = mg.signature_def[o.signature]
        except BaseException:
            self.sess.close()
            raise
        g = self.graph
        self.feeds = {k: g.get_tensor_by_name(v.name) for k, v in sig.inputs.items()}
        self.fetches = {k: g.get_tensor_by_name(v.name) for k, v in sig.outputs.items()}
        self.inputs = [TensorInfo(k, t.name, _dtype_name(t.dtype), _shape_list(t.shape))
                       for k, t in sorted(self.feeds.items())]
        self.output_aliases = sorted(self.fetches)
        self.graph_def = mg.graph_def
        self.flops_inputs = {k: v.name for k, v in sig.inputs.items()}
        info = Path(spec.target) / "assets.extra" / "build_info.json"
        build: dict[str, Any] = {}
        if info.exists():
            try:
                b = json.loads(info.read_text())
                build = {k: b.get(k) for k in ("name", "version", "flow", "optimizer", "precision")}
            except ValueError:
                pass
        self.details = {"build_info": build,
                        "runs_as": "Session.run(feed_dict) on the TF1-loaded SavedModel"}

    def run(self, prepared: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {self.feeds[k]: v for k, v in prepared.items()}
        return self.sess.run(self.fetches, feed_dict=feed)

    def close(self) -> None:
        self.sess.close()


def _signature_inputs(sig: Any) -> list[TensorInfo]:
    import tensorflow as tf

    out = []
    for k, v in sorted(sig.inputs.items()):
        dt = tf.as_dtype(v.dtype)
        shape = [] if v.tensor_shape.unknown_rank else \
            [None if d.size < 0 else int(d.size) for d in v.tensor_shape.dim]
        out.append(TensorInfo(k, v.name, "string" if dt == tf.string else dt.as_numpy_dtype.__name__,
                              shape))
    return out


class GrpcRunner(Runner):
    """A running TF Serving (or ``python -m builder serve``) over gRPC, official stubs."""

    def __init__(self, spec: CandidateSpec, o: BenchOptions) -> None:
        import grpc
        from tensorflow_serving.apis import (
            get_model_metadata_pb2,
            model_pb2,
            prediction_service_pb2_grpc,
        )

        self.spec, self.concurrency, self.timeout = spec, o.concurrency, o.timeout
        self.signature = o.signature
        self.channel = grpc.insecure_channel(spec.target, options=[
            ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", GRPC_MAX_MESSAGE_BYTES),
        ])
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_spec = model_pb2.ModelSpec(name=spec.model_name or "", signature_name=o.signature)
        if spec.model_version:
            self.model_spec.version.value = spec.model_version
        req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        req.model_spec.CopyFrom(self.model_spec)
        try:
            resp = self.stub.GetModelMetadata(req, timeout=min(30.0, o.timeout))
        except grpc.RpcError as e:
            self.channel.close()
            raise ServingError(f"candidate {spec.spec!r}: gRPC {spec.target} model "
                               f"{spec.model_name!r}: {e.code().name} {e.details() or ''}".rstrip()
                               + ": start the server (python -m builder serve) or fix the address/"
                               "--model_name") from None
        sdm = get_model_metadata_pb2.SignatureDefMap()
        resp.metadata["signature_def"].Unpack(sdm)
        if o.signature not in sdm.signature_def:
            self.channel.close()
            raise InputError(f"candidate {spec.spec!r}: model {spec.model_name!r} has no signature "
                             f"{o.signature!r} (has: {', '.join(sorted(sdm.signature_def))})")
        sig = sdm.signature_def[o.signature]
        self.inputs = _signature_inputs(sig)
        self.output_aliases = sorted(sig.outputs)
        self.details = {"model_name": spec.model_name, "served_version": int(resp.model_spec.version.value),
                        "concurrency": self.concurrency,
                        "runs_as": "PredictionService.Predict, request built once per batch size"}

    def prepare(self, batch: dict[str, np.ndarray]) -> Any:
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        req = predict_pb2.PredictRequest()
        req.model_spec.CopyFrom(self.model_spec)
        for k, v in batch.items():
            req.inputs[k].CopyFrom(tf.make_tensor_proto(v))
        return req

    def run(self, prepared: Any) -> dict[str, np.ndarray]:
        import grpc
        import tensorflow as tf

        try:
            resp = self.stub.Predict(prepared, timeout=self.timeout)
        except grpc.RpcError as e:
            raise ServingError(f"candidate {self.spec.spec!r}: Predict failed: {e.code().name} "
                               f"{(e.details() or '').splitlines()[0] if e.details() else ''}") from None
        return {k: tf.make_ndarray(v) for k, v in resp.outputs.items()}

    def close(self) -> None:
        self.channel.close()


class RestRunner(Runner):
    """A running server's REST API (``POST /v1/models/NAME:predict``, columnar ``inputs``)."""

    def __init__(self, spec: CandidateSpec, o: BenchOptions) -> None:
        import requests
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2

        self.spec, self.concurrency, self.timeout = spec, o.concurrency, o.timeout
        self.signature = o.signature
        path = f"/v1/models/{spec.model_name}"
        if spec.model_version:
            path += f"/versions/{spec.model_version}"
        self.url = spec.target + path + ":predict"
        self.local = threading.local()
        try:
            r = requests.get(spec.target + path + "/metadata", timeout=min(30.0, o.timeout))
        except requests.RequestException as e:
            raise ServingError(f"candidate {spec.spec!r}: REST {spec.target}: cannot connect "
                               f"({type(e).__name__}): start the server or fix the URL") from None
        if r.status_code != 200:
            raise ServingError(f"candidate {spec.spec!r}: REST {spec.target + path}/metadata answered "
                               f"{r.status_code} {r.text[:200].strip()}: check --model_name")
        try:
            sdm_json = r.json()["metadata"]["signature_def"]
            sdm = get_model_metadata_pb2.SignatureDefMap()
            json_format.ParseDict(sdm_json, sdm, ignore_unknown_fields=True)
        except (ValueError, KeyError, json_format.ParseError):
            raise ServingError(f"candidate {spec.spec!r}: {spec.target + path}/metadata is not "
                               "TF Serving model metadata") from None
        if o.signature not in sdm.signature_def:
            raise InputError(f"candidate {spec.spec!r}: model {spec.model_name!r} has no signature "
                             f"{o.signature!r} (has: {', '.join(sorted(sdm.signature_def))})")
        sig = sdm.signature_def[o.signature]
        self.inputs = _signature_inputs(sig)
        self.output_aliases = sorted(sig.outputs)
        self.details = {"model_name": spec.model_name, "concurrency": self.concurrency,
                        "runs_as": "POST :predict with a JSON body encoded once per batch size"}

    def _session(self) -> Any:
        import requests

        s = getattr(self.local, "session", None)
        if s is None:
            s = self.local.session = requests.Session()
        return s

    def prepare(self, batch: dict[str, np.ndarray]) -> bytes:
        doc = {"signature_name": self.signature,
               "inputs": {k: v.tolist() for k, v in batch.items()}}
        return json.dumps(doc).encode()

    def run(self, prepared: bytes) -> dict[str, np.ndarray]:
        import requests

        try:
            r = self._session().post(self.url, data=prepared, timeout=self.timeout,
                                     headers={"Content-Type": "application/json"})
        except requests.RequestException as e:
            raise ServingError(f"candidate {self.spec.spec!r}: POST {self.url} failed "
                               f"({type(e).__name__})") from None
        if r.status_code != 200:
            raise ServingError(f"candidate {self.spec.spec!r}: POST {self.url} answered "
                               f"{r.status_code} {r.text[:200].strip()}")
        outs = r.json()["outputs"]
        if not isinstance(outs, dict):
            outs = {self.output_aliases[0]: outs}
        return {k: np.asarray(v, dtype=np.float32) if _is_float_list(v) else np.asarray(v)
                for k, v in outs.items()}


def _is_float_list(v: Any) -> bool:
    while isinstance(v, list) and v:
        v = v[0]
    return isinstance(v, float)


def open_runner(spec: CandidateSpec, o: BenchOptions) -> Runner:
    if spec.kind in SOURCE_KINDS:
        return SourceRunner(spec, o)
    if spec.kind == "export":
        return SavedModelRunner(spec, o)
    if spec.kind == "grpc":
        return GrpcRunner(spec, o)
    return RestRunner(spec, o)


# --------------------------------------------------------------------------- measurements


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), NaN for no values."""
    return float(np.percentile(values, q)) if values else float("nan")


def summarize(latencies: list[list[float]], throughputs: list[float]) -> dict[str, Any]:
    """Latency percentiles over all timed runs (seconds in, milliseconds out) and min/median/max
    of the per-repeat throughputs and per-repeat p50s."""
    flat = [x for rep in latencies for x in rep]
    p50s = [percentile(rep, 50) * 1e3 for rep in latencies if rep]
    return {
        "runs": len(flat),
        "latency_ms": {
            "p50": percentile(flat, 50) * 1e3, "p90": percentile(flat, 90) * 1e3,
            "p99": percentile(flat, 99) * 1e3, "min": min(flat) * 1e3 if flat else float("nan"),
            "max": max(flat) * 1e3 if flat else float("nan"),
            "mean": float(np.mean(flat)) * 1e3 if flat else float("nan"),
        },
        "p50_per_repeat_ms": _mmm(p50s),
        "throughput": _mmm(throughputs),
    }


def _mmm(values: list[float]) -> dict[str, float]:
    if not values:
        return {"min": float("nan"), "median": float("nan"), "max": float("nan")}
    return {"min": float(min(values)), "median": float(np.median(values)), "max": float(max(values))}


def measure_gemm(n: int = 2048, runs: int = 5, repeats: int = 3) -> dict[str, Any]:
    """FP32 GEMM throughput of this machine in a TF session (the same threading the in-process
    candidates get): best, median and worst of ``repeats`` x ``runs`` n x n x n matmuls."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    with tf.Graph().as_default() as g, tf.compat.v1.Session(graph=g) as sess:
        va = tf.compat.v1.Variable(a)
        vb = tf.compat.v1.Variable(b)
        c = tf.matmul(va, vb)
        s = tf.reduce_sum(c)  # fetch a scalar: the 16 MB product stays inside TF
        sess.run(tf.compat.v1.global_variables_initializer())
        sess.run(s)
        rates = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(runs):
                sess.run(s)
            dt = time.perf_counter() - t0
            rates.append(2.0 * n ** 3 * runs / dt / 1e9)
    return {"n": n, "runs": runs, "repeats": repeats, "gflops": _mmm(rates)}


_FLOPS_CACHE: dict[str, float | None] = {}


def graph_flops(graph_def: Any, input_tensors: dict[str, str], sample: dict[str, np.ndarray]
                ) -> float | None:
    """FLOPs per item from ``tf.compat.v1.profiler`` (float_operation) on the graph imported
    with a fixed batch of 1, so every Conv2D/MatMul has the static shape the profiler needs.
    None when nothing is countable (e.g. TensorRT engine ops hide their FLOPs)."""
    import tensorflow as tf

    key = hashlib.sha256(graph_def.SerializeToString(deterministic=True)).hexdigest()
    key += json.dumps(sorted(input_tensors.items()))
    if key in _FLOPS_CACHE:
        return _FLOPS_CACHE[key]
    result: float | None = None
    with tf.Graph().as_default() as g:
        input_map = {}
        for alias, tensor in input_tensors.items():
            arr = sample[alias]
            input_map[tensor] = tf.compat.v1.placeholder(
                tf.as_dtype(arr.dtype) if arr.dtype != object else tf.string,
                [1, *arr.shape[1:]], name=f"bench_input_{len(input_map)}")
        try:
            tf.compat.v1.import_graph_def(graph_def, input_map=input_map, name="m")
            builder = tf.compat.v1.profiler.ProfileOptionBuilder
            opts = builder(builder.float_operation()).with_empty_output().build()
            prof = tf.compat.v1.profiler.profile(g, options=opts)
            result = float(prof.total_float_ops) or None
        except (ValueError, tf.errors.OpError, KeyError):
            result = None
    _FLOPS_CACHE[key] = result
    return result


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: CPU/GPU model, cores, memory, software versions."""
    import tensorflow as tf

    info: dict[str, Any] = {
        "hostname_hash": hashlib.sha256(platform.node().encode()).hexdigest()[:12],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        **_cpu_details(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gb": _mem_total_gb(),
        "tensorflow": tf.__version__,
        "tensorflow_serving_api": _dist_version("tensorflow-serving-api"),
        "numpy": np.__version__,
    }
    try:
        build = dict(tf.sysconfig.get_build_info())
    except Exception:  # noqa: BLE001 - build info is best effort
        build = {}
    info["tf_built_with_cuda"] = bool(build.get("is_cuda_build"))
    info["cuda_version"] = build.get("cuda_version")
    info["cudnn_version"] = build.get("cudnn_version")
    gpus = []
    try:
        for d in tf.config.list_physical_devices("GPU"):
            details = tf.config.experimental.get_device_details(d)
            gpus.append({"name": details.get("device_name", d.name),
                         "compute_capability": details.get("compute_capability")})
    except Exception:  # noqa: BLE001
        pass
    info["gpus"] = gpus
    info["tensorrt_linked"], info["tensorrt_loaded"] = _tensorrt_versions()
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


_SIMD_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def _cpu_details() -> dict[str, Any]:
    """Family/model and the SIMD extensions that decide TF's kernels: VMs often hide the exact
    CPU name ("AMD EPYC"), these still tell a Zen 1 from a Zen 4."""
    out: dict[str, Any] = {"cpu_family": None, "cpu_model_number": None, "cpu_simd": []}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = (x.strip() for x in line.partition(":"))
        if key == "cpu family" and out["cpu_family"] is None:
            out["cpu_family"] = int(value)
        elif key == "model" and out["cpu_model_number"] is None and value.isdigit():
            out["cpu_model_number"] = int(value)
        elif key == "flags" and not out["cpu_simd"]:
            flags = set(value.split())
            out["cpu_simd"] = [f for f in _SIMD_FLAGS if f in flags]
    return out


def cpu_description(m: dict[str, Any]) -> str:
    """'AMD EPYC (family 23 model 1; avx2, fma)' from a ``machine_info`` dict."""
    extra = []
    if m.get("cpu_family") is not None:
        extra.append(f"family {m['cpu_family']} model {m.get('cpu_model_number')}")
    simd = [f for f in m.get("cpu_simd") or [] if f != "avx"]
    if simd:
        extra.append(", ".join(simd))
    return f"{m['cpu_model']} ({'; '.join(extra)})" if extra else m["cpu_model"]


def _mem_total_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError):
        pass
    return None


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _tensorrt_versions() -> tuple[str | None, str | None]:
    """(TensorRT version TF was built against, version actually loadable here). The loaded
    version is only asked for when TF says TensorRT is usable: without libnvinfer TF's stub
    aborts the whole process on that call."""
    try:
        from tensorflow.python.compiler.tensorrt import utils as trt_utils

        py = trt_utils._pywrap_py_utils
        linked = ".".join(map(str, py.get_linked_tensorrt_version()))
        enabled = bool(py.is_tensorrt_enabled())
    except Exception:  # noqa: BLE001 - TF without TensorRT
        return None, None
    loaded = None
    if enabled:
        try:
            loaded = ".".join(map(str, py.get_loaded_tensorrt_version()))
        except Exception:  # noqa: BLE001
            loaded = None
    return (None if linked in ("0.0.0", "") else linked), (None if loaded in ("0.0.0", "") else loaded)


class LoadMeter:
    """How busy the machine was while we measured: all CPUs (from /proc/stat) vs this process
    (plus ``pids``, e.g. a local server under test), so a reader can tell a quiet run from one
    taken under other people's load."""

    def __init__(self, pids: tuple[int, ...] = ()) -> None:
        self.pids = tuple(pids)
        self.t0 = time.monotonic()
        self.stat0 = _proc_stat()
        self.self0 = _own_cpu_seconds()
        self.pids0 = {p: _pid_cpu_seconds(p) for p in self.pids}
        self.load0 = os.getloadavg() if hasattr(os, "getloadavg") else None

    def finish(self) -> dict[str, Any]:
        wall = time.monotonic() - self.t0
        stat1 = _proc_stat()
        own = _own_cpu_seconds() - self.self0
        servers = 0.0
        for p, c0 in self.pids0.items():
            c1 = _pid_cpu_seconds(p)
            if c0 is not None and c1 is not None:
                servers += c1 - c0
        out: dict[str, Any] = {
            "wall_seconds": round(wall, 2),
            "loadavg_start": list(self.load0) if self.load0 else None,
            "loadavg_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "this_process_cpu_seconds": round(own, 2),
            "server_pids": list(self.pids),
            "server_cpu_seconds": round(servers, 2),
        }
        if self.stat0 and stat1 and wall > 0:
            busy = (stat1[0] - self.stat0[0]) / os.sysconf("SC_CLK_TCK")
            ncpu = os.cpu_count() or 1
            out["all_cpu_busy_fraction"] = round(min(1.0, busy / (wall * ncpu)), 3)
            out["this_process_cpu_fraction"] = round(own / (wall * ncpu), 3)
            out["server_cpu_fraction"] = round(servers / (wall * ncpu), 3)
            out["other_cpu_fraction"] = round(min(1.0, max(0.0, busy - own - servers) / (wall * ncpu)), 3)
        return out


def _pid_cpu_seconds(pid: int) -> float | None:
    """utime + stime of another process (Linux /proc), None if it is gone or unreadable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        fields = text[text.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _proc_stat() -> tuple[int, int] | None:
    try:
        parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        vals = [int(x) for x in parts]
    except (OSError, ValueError, IndexError):
        return None
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    total = sum(vals[:8])
    return total - idle, total


def _own_cpu_seconds() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# --------------------------------------------------------------------------- the benchmark


def _log(o: BenchOptions, text: str) -> None:
    if not o.quiet:
        print(text, file=sys.stderr, flush=True)


def _timed_repeat(runner: Runner, prepared: Any, runs: int | None, seconds: float | None,
                  items: int) -> tuple[list[float], float]:
    """One repeat: latencies of each run, and items/s over the repeat's wall time."""
    latencies: list[float] = []
    deadline = None if seconds is None else time.perf_counter() + seconds
    if runner.concurrency <= 1:
        t0 = time.perf_counter()
        while True:
            s = time.perf_counter()
            runner.run(prepared)
            latencies.append(time.perf_counter() - s)
            if runs is not None and len(latencies) >= runs:
                break
            if deadline is not None and time.perf_counter() >= deadline:
                break
        wall = time.perf_counter() - t0
        return latencies, items * len(latencies) / wall
    lock = threading.Lock()
    issued = [0]
    errors: list[BaseException] = []

    def worker() -> None:
        while True:
            with lock:
                if errors or (runs is not None and issued[0] >= runs) or \
                        (deadline is not None and issued[0] > 0 and time.perf_counter() >= deadline):
                    return
                issued[0] += 1
            s = time.perf_counter()
            try:
                runner.run(prepared)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                errors.append(e)
                return
            latencies.append(time.perf_counter() - s)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(runner.concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return latencies, items * len(latencies) / wall


def _accuracy(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], aliases: list[str]
              ) -> dict[str, Any]:
    from builder.export import parity

    report = parity.compare({a: ref[a] for a in aliases}, {a: got[a] for a in aliases if a in got},
                            atol=0.0, rtol=0.0)
    j = report.as_json()
    return {"max_abs_diff": j["max_abs_diff"], "min_cosine": j["min_cosine"],
            "outputs": {k: {"max_abs_diff": v["max_abs_diff"], "min_cosine": v["min_cosine"]}
                        for k, v in j["outputs"].items()}}


def _check_signatures(runners: list[Runner], samples: dict[str, np.ndarray]) -> list[str]:
    """Every candidate must take the same inputs (by alias) and share at least one output."""
    want = set(samples)
    for r in runners:
        if r.inputs is None:
            continue
        have = {t.alias for t in r.inputs}
        if have != want:
            raise InputError(
                f"candidate {r.spec.label!r} takes inputs {sorted(have)} but the benchmark feeds "
                f"{sorted(want)}: align the names with --input_alias (e.g. --input_alias "
                f"input={sorted(want)[0]}) or use --samples keyed by {sorted(have)}")
    common = [a for a in runners[0].output_aliases if all(a in r.output_aliases for r in runners)]
    if not common:
        raise InputError(
            "the candidates share no output name ("
            + "; ".join(f"{r.spec.label}: {', '.join(r.output_aliases)}" for r in runners)
            + "): align them with --output_alias")
    return common


def _make_samples(runners: list[Runner], o: BenchOptions) -> dict[str, np.ndarray]:
    from builder.export import parity

    ref = next((r for r in runners if r.inputs), None)
    if ref is None or ref.inputs is None:
        raise InputError("no candidate tells its input signature: pass --samples FILE.npz")
    if o.samples:
        return parity.load_samples(o.samples, ref.inputs)
    return parity.generate_samples(ref.inputs, max(o.batch_sizes), o.seed)


def run_benchmark(o: BenchOptions) -> dict[str, Any]:
    """Load every candidate, measure, and return the results document (see ``write_outputs``)."""
    from builder.export.pipeline import batch_of

    validate(o)
    meter = LoadMeter(tuple(o.server_pids))
    started = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    runners: list[Runner] = []
    try:
        for c in o.candidates:
            t = time.perf_counter()
            _log(o, f"loading {c.label} ({c.kind}: {c.target}"
                    f"{f' model {c.model_name}' if c.model_name else ''}) ...")
            try:
                runners.append(open_runner(c, o))
            except BuilderError as e:
                if str(e).startswith("candidate "):
                    raise
                raise type(e)(f"candidate {c.label!r}: {e}") from None
            _log(o, f"  loaded {c.label} in {time.perf_counter() - t:.1f}s")
        samples = _make_samples(runners, o)
        common = _check_signatures(runners, samples)
        gemm = None
        if o.gemm_size and any(r.spec.in_process for r in runners):
            _log(o, f"measuring FP32 GEMM throughput ({o.gemm_size}x{o.gemm_size} tf.matmul) ...")
            gemm = measure_gemm(o.gemm_size)
            _log(o, f"  {gemm['gflops']['max']:.1f} GFLOP/s (best)")
        flops: dict[str, float | None] = {}
        if o.flops:
            for r in runners:
                if r.graph_def is not None and r.flops_inputs:
                    _log(o, f"counting FLOPs of {r.spec.label} (TensorFlow profiler) ...")
                    f = graph_flops(r.graph_def, r.flops_inputs, samples)
                    flops[r.spec.label] = f
                    _log(o, f"  {_flops_text(f)} per item" if f else "  not countable")
        ref_flops = next((f for f in flops.values() if f), None)

        results: list[dict[str, Any]] = []
        runs, seconds = o.timed_runs(), o.seconds
        for b in o.batch_sizes:
            batch = batch_of(samples, b)
            prepared = [r.prepare(batch) for r in runners]
            outputs: dict[str, dict[str, np.ndarray]] = {}
            for r, p in zip(runners, prepared):
                _log(o, f"[batch {b}] warm-up {r.spec.label} ({max(o.warmup, 1)} run(s)) ...")
                for i in range(max(o.warmup, 1)):
                    out = r.run(p)
                    if i == 0:
                        outputs[r.spec.label] = out
            lat: dict[str, list[list[float]]] = {r.spec.label: [] for r in runners}
            tps: dict[str, list[float]] = {r.spec.label: [] for r in runners}
            n = len(runners)
            for rep in range(o.repeats):
                order = [runners[(rep + k) % n] for k in range(n)]
                for r in order:
                    i = runners.index(r)
                    ls, tp = _timed_repeat(r, prepared[i], runs, seconds, b)
                    lat[r.spec.label].append(ls)
                    tps[r.spec.label].append(tp)
                    _log(o, f"[batch {b}] repeat {rep + 1}/{o.repeats} {r.spec.label}: "
                            f"{len(ls)} runs, p50 {percentile(ls, 50) * 1e3:.1f} ms, "
                            f"{tp:.1f} items/s")
            ref_label = runners[0].spec.label
            for r in runners:
                label = r.spec.label
                row: dict[str, Any] = {"candidate": label, "kind": r.spec.kind, "batch_size": b,
                                       "repeats": o.repeats, "concurrency": r.concurrency}
                row.update(summarize(lat[label], tps[label]))
                row["accuracy"] = _accuracy(outputs[ref_label], outputs[label], common)
                results.append(row)
            ref_row = next(x for x in results if x["batch_size"] == b and x["candidate"] == ref_label)
            for row in results:
                if row["batch_size"] != b:
                    continue
                row["speedup"] = row["throughput"]["median"] / ref_row["throughput"]["median"]
                row["latency_ratio"] = row["latency_ms"]["p50"] / ref_row["latency_ms"]["p50"]
                r = runners[[x.spec.label for x in runners].index(row["candidate"])]
                own = flops.get(row["candidate"])
                f = own or (ref_flops if r.spec.in_process else None)
                row["flops_per_item"] = f
                row["flops_from"] = (row["candidate"] if own else
                                     next((k for k, v in flops.items() if v), None) if f else None)
                if f and r.spec.in_process:
                    row["gflops_per_s"] = f * row["throughput"]["median"] / 1e9
                    row["gemm_fraction"] = (row["gflops_per_s"] / gemm["gflops"]["max"]
                                            if gemm else None)
                else:
                    row["gflops_per_s"] = None
                    row["gemm_fraction"] = None
        if gemm and any(r.spec.in_process for r in runners):
            _log(o, "measuring FP32 GEMM throughput again (after the runs) ...")
            after = measure_gemm(o.gemm_size)
            gemm = {**gemm, "after": after["gflops"],
                    "best": max(gemm["gflops"]["max"], after["gflops"]["max"])}
            for row in results:
                if row.get("gflops_per_s"):
                    row["gemm_fraction"] = row["gflops_per_s"] / gemm["best"]
        candidates = []
        for r in runners:
            candidates.append({**r.spec.as_json(), **r.details,
                               "flops_per_item": flops.get(r.spec.label),
                               "inputs": {t.alias: t.as_json() for t in (r.inputs or [])},
                               "outputs": r.output_aliases})
        return {
            "tool": "tfs-builder benchmark",
            "created": started,
            "command": _command_line(),
            "machine": machine_info(),
            "load": meter.finish(),
            "settings": {
                "batch_sizes": o.batch_sizes, "warmup": max(o.warmup, 1), "repeats": o.repeats,
                "runs": runs, "seconds": seconds, "concurrency": o.concurrency,
                "samples": o.samples or f"generated from the signature (seed {o.seed})",
                "signature": o.signature, "interleaving": "round-robin per repeat, rotating start",
                "compared_outputs": common,
            },
            "gemm": gemm,
            "reference": runners[0].spec.label,
            "candidates": candidates,
            "results": results,
        }
    finally:
        for r in runners:
            try:
                r.close()
            except Exception:  # noqa: BLE001 - closing must not hide the real error
                pass


def _command_line() -> str:
    argv = sys.argv
    if argv and argv[0].endswith("__main__.py"):
        return shlex.join(["python", "-m", "builder", *argv[1:]])
    return shlex.join(argv)


# --------------------------------------------------------------------------- outputs


def _flops_text(f: float) -> str:
    for unit, scale in (("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
        if f >= scale:
            return f"{f / scale:.3f} {unit}"
    return f"{f:.0f} FLOP"


def _fmt(v: Any, spec: str = ".1f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def _fmt_diff(v: float | None) -> str:
    if v is None:
        return "-"
    return "0" if v == 0 else f"{v:.2g}"


def render_markdown(doc: dict[str, Any], png_name: str | None = None) -> str:
    """The results as a Markdown section: machine, settings, one table, how it was measured."""
    m, s, load = doc["machine"], doc["settings"], doc["load"]
    gpu = ", ".join(g["name"] for g in m.get("gpus", [])) or "none"
    lines = [
        f"Measured {doc['created']} on {cpu_description(m)}, {m['cpus_usable'] or m['cpu_count']} "
        f"cores, {m['memory_gb']} GB RAM, GPU: {gpu}; TensorFlow {m['tensorflow']}, "
        f"TensorRT {m.get('tensorrt_loaded') or 'not loadable'} (TF built against "
        f"{m.get('tensorrt_linked') or 'none'}).",
        "",
    ]
    if doc.get("gemm"):
        g = doc["gemm"]
        best = g.get("best", g["gflops"]["max"])
        lines.append(f"FP32 GEMM throughput of this machine: {best:.1f} GFLOP/s (best "
                     f"{g['n']}x{g['n']} tf.matmul; median {g['gflops']['median']:.1f}).")
    if "all_cpu_busy_fraction" in load:
        server = (f", the local server {load['server_cpu_fraction'] * 100:.0f}%"
                  if load.get("server_pids") else "")
        avg = (f" (load average {load['loadavg_start'][0]:.1f} -> {load['loadavg_end'][0]:.1f})"
               if load.get("loadavg_start") and load.get("loadavg_end") else "")
        lines.append(
            f"Machine load during the run: CPUs {load['all_cpu_busy_fraction'] * 100:.0f}% busy, "
            f"of which this benchmark {load['this_process_cpu_fraction'] * 100:.0f}%{server} and "
            f"other processes {load['other_cpu_fraction'] * 100:.0f}%{avg}.")
    if s["seconds"]:
        each = f"{s['seconds']:g} s each" + (f" (at most {s['runs']} runs)" if s["runs"] else "")
    else:
        each = f"{s['runs']} timed runs each"
    lines += [
        f"Each candidate and batch size: {s['warmup']} warm-up run{'s' if s['warmup'] != 1 else ''},"
        f" then {s['repeats']} repeat{'s' if s['repeats'] != 1 else ''} of {each}, candidates "
        f"interleaved round-robin; inputs {s['samples']}.",
        "",
        "| candidate | batch | p50 ms | p90 ms | p99 ms | items/s median (min-max) | speedup "
        "| max abs diff | min cosine | % of GEMM peak |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in doc["results"]:
        lm, tp, acc = row["latency_ms"], row["throughput"], row["accuracy"]
        frac = row.get("gemm_fraction")
        lines.append(
            f"| {row['candidate']} | {row['batch_size']} | {_fmt(lm['p50'])} | {_fmt(lm['p90'])} | "
            f"{_fmt(lm['p99'])} | {_fmt(tp['median'])} ({_fmt(tp['min'])}-{_fmt(tp['max'])}) | "
            f"{_fmt(row['speedup'], '.3f')}x | {_fmt_diff(acc['max_abs_diff'])} | "
            f"{_fmt(acc['min_cosine'], '.6f')} | "
            f"{'-' if frac is None else format(frac * 100, '.2g') + '%'} |")
    lines += [
        "",
        f"Speedup and accuracy are relative to the first candidate ({doc['reference']}), on the "
        "same input batch. Latency percentiles cover all timed runs; items/s is the "
        "median (min-max) over repeats.",
    ]
    others = [r for r in doc["results"] if r["candidate"] != doc["reference"]]
    if others:
        worst = max(others, key=lambda r: r["accuracy"]["max_abs_diff"])
        least = min(others, key=lambda r: r["accuracy"]["min_cosine"])
        lines.append(
            f"Accuracy: the largest difference from {doc['reference']} over every candidate and "
            f"batch is max abs diff {_fmt_diff(worst['accuracy']['max_abs_diff'])} "
            f"({worst['candidate']}), min cosine {least['accuracy']['min_cosine']:.6f} "
            f"({least['candidate']}).")
    flops = [c for c in doc["candidates"] if c.get("flops_per_item")]
    if flops:
        lines.append("Model FLOPs (TensorFlow profiler, per item): " + ", ".join(
            f"{c['label']} {_flops_text(c['flops_per_item'])}" for c in flops) + ".")
    lines += ["", "Candidates:", ""]
    for c in doc["candidates"]:
        extra = f", model {c['model_name']}" if c.get("model_name") else ""
        conc = f", {c['concurrency']} client thread(s)" if c["kind"] in SERVER_KINDS else ""
        lines.append(f"- `{c['label']}`: {c['kind']} `{c['target']}`{extra}{conc}; "
                     f"{c.get('runs_as', '')}")
    lines += ["", f"Command: `{doc['command']}`"]
    if png_name:
        lines += ["", f"![latency and throughput vs batch size]({png_name})"]
    return "\n".join(lines) + "\n"


def plot_png(doc: dict[str, Any], path: Path) -> None:
    """Latency (p50, bars to p90) and throughput (median, bars min-max) vs batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    labels = list(dict.fromkeys(r["candidate"] for r in doc["results"]))
    for label in labels:
        rows = sorted((r for r in doc["results"] if r["candidate"] == label),
                      key=lambda r: r["batch_size"])
        x = [r["batch_size"] for r in rows]
        p50 = np.array([r["latency_ms"]["p50"] for r in rows])
        p90 = np.array([r["latency_ms"]["p90"] for r in rows])
        ax1.errorbar(x, p50, yerr=[np.zeros_like(p50), np.maximum(p90 - p50, 0)], marker="o",
                     capsize=3, label=label)
        med = np.array([r["throughput"]["median"] for r in rows])
        lo = np.array([r["throughput"]["min"] for r in rows])
        hi = np.array([r["throughput"]["max"] for r in rows])
        ax2.errorbar(x, med, yerr=[np.maximum(med - lo, 0), np.maximum(hi - med, 0)], marker="o",
                     capsize=3, label=label)
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xlabel("batch size")
        ax.set_xticks(doc["settings"]["batch_sizes"])
        ax.set_xticklabels([str(b) for b in doc["settings"]["batch_sizes"]])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
    ax1.set_yscale("log")
    ax1.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax1.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax1.yaxis.set_minor_locator(NullLocator())
    ax2.set_ylim(bottom=0)
    ax1.set_ylabel("latency per request, ms (p50, bar to p90)")
    ax2.set_ylabel("throughput, items/s (median, bar min-max)")
    ax2.legend(fontsize=8)
    m = doc["machine"]
    fig.suptitle(f"{cpu_description(m)}, {m['cpus_usable'] or m['cpu_count']} cores, "
                 f"TF {m['tensorflow']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def output_names(basename: str | None) -> tuple[str, str, str]:
    if basename:
        return f"{basename}.json", f"{basename}.md", f"{basename}.png"
    return "results.json", "results.md", "latency_throughput.png"


def write_outputs(doc: dict[str, Any], out_dir: str | os.PathLike, basename: str | None = None
                  ) -> list[Path]:
    """results.json, results.md and latency_throughput.png (or BASENAME.*), each written to a
    temporary name and renamed, so a reader never sees a half-written file."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jname, mname, pname = output_names(basename)
    tag = f".tmp-{os.getpid()}"
    tmp = {n: out / f".{n}{tag}" for n in (jname, mname, pname)}
    try:
        tmp[jname].write_text(json.dumps(_jsonable(doc), indent=2, allow_nan=False) + "\n")
        tmp[mname].write_text(render_markdown(doc, pname))
        plot_png(doc, tmp[pname])
        for n, t in tmp.items():
            os.replace(t, out / n)
    finally:
        for t in tmp.values():
            if t.exists():
                t.unlink()
    return [out / jname, out / mname, out / pname]


def _jsonable(v: Any) -> Any:
    """NaN/inf are not JSON: they become null."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return None if math.isnan(f) or math.isinf(f) else f
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return _jsonable(dataclasses.asdict(v))
    return v


# --------------------------------------------------------------------------- CLI


def benchmark_command(
    *positional: str,
    candidates: Any = None,
    grpc: Any = None,
    rest: Any = None,
    model_name: str | None = None,
    model_version: int | None = None,
    concurrency: int = 1,
    batch_sizes: Any = "1,8,100",
    warmup: int = 2,
    repeats: int = 3,
    runs: int | None = None,
    seconds: float | None = None,
    samples: str | None = None,
    seed: int = 0,
    signature: str = "serving_default",
    inputs: Any = None,
    outputs: Any = None,
    feed: Any = None,
    input_alias: Any = None,
    output_alias: Any = None,
    input_shapes: Any = None,
    tags: Any = "serve",
    gemm_size: int = 2048,
    flops: bool = True,
    timeout: float = 300.0,
    out: str | None = None,
    basename: str | None = None,
    server_pids: Any = None,
) -> None:
    """Benchmark candidates side by side: latency, throughput, speedup and accuracy delta vs the
    first candidate, per batch size; writes JSON, a Markdown table and a PNG plot.

    Example: python -m builder benchmark
             --candidates checkpoint=example_model/checkpoint,export=model_repo/facenet/1
             --grpc 127.0.0.1:8500 --model_name facenet --batch_sizes 1,8,100
             --inputs input --outputs embeddings --feed phase_train=false
             --input_alias input=images --input_shapes input=?x160x160x3 --out bench_out

    Candidates are LABEL=TARGET (LABEL= optional); the first one is the reference:
      checkpoint=example_model/checkpoint   a source model in any flow, detected from the path
                                            (checkpoint dir/.meta, frozen .pb, SavedModel, .keras)
      export=model_repo/facenet/1           an exported version (REPO/NAME means its latest)
      grpc=127.0.0.1:8500/facenet           a gRPC server, HOST:PORT[/NAME[/VERSION]]
      rest=http://127.0.0.1:8501/v1/models/facenet   a REST server (or http://HOST:PORT)
      src=savedmodel:model_repo/facenet/1   KIND:TARGET forces the kind (checkpoint, frozen,
                                            savedmodel, keras, export, grpc, rest)

    Args:
      positional: Candidates as positional arguments (same syntax as --candidates).
      candidates: Comma-separated candidates (syntax above). Pass the list once (fire keeps
        only the last of repeated flags), or give candidates as positional arguments.
      grpc: Shortcut for a gRPC candidate labelled 'grpc': HOST:PORT[/NAME[/VERSION]].
      rest: Shortcut for a REST candidate labelled 'rest': http://HOST:PORT[/v1/models/NAME].
      model_name: Model name for server candidates that do not name one (default: the name in
        the first export candidate's build_info.json).
      model_version: Version for server candidates that do not name one (default: latest).
      concurrency: Client threads per server candidate (in-process candidates run one at a
        time). Default 1.
      batch_sizes: Batch sizes, e.g. 1,8,100.
      warmup: Untimed runs per candidate and batch size before timing (at least 1 is always run,
        untimed, to capture outputs for the accuracy delta). Default 2.
      repeats: Repeats per candidate and batch size, interleaved round-robin. Default 3.
      runs: Timed runs per repeat (default 10 unless --seconds is given; with both, whichever
        ends first).
      seconds: Time budget per repeat in seconds (at least one run).
      samples: .npz of inputs keyed by input alias (e.g. a version's assets.extra/golden.npz);
        rows are cycled to fill each batch. Default is generated from the signature (--seed).
      seed: Seed for generated inputs. Default 0.
      signature: Signature of exported versions/servers (and SavedModel sources). Default
        serving_default.
      inputs: Source-flow candidates: input tensors/nodes (as for export), e.g. input.
      outputs: Source-flow candidates: output tensors/nodes, e.g. embeddings.
      feed: Source-flow candidates: fixed placeholder values, e.g. phase_train=false.
      input_alias: Source-flow candidates: input names as exported, e.g. input=images.
      output_alias: Source-flow candidates: output names as exported.
      input_shapes: Source-flow candidates: shapes for cut inputs, e.g. input=?x160x160x3.
      tags: SavedModel tags. Default serve.
      gemm_size: Side of the FP32 tf.matmul measured for the '% of GEMM peak' column
        (default 2048; 0 skips it).
      flops: Count model FLOPs with TensorFlow's profiler (default on; --noflops skips it).
      timeout: Seconds per server request before it counts as failed. Default 300.
      out: Directory for results.json, results.md and latency_throughput.png.
      basename: Name the outputs BASENAME.json/.md/.png instead.
      server_pids: Process ids of local servers under test (comma separated); their CPU time
        is reported as the servers', not as background load from other processes.
    """
    specs = [*as_list(list(positional), "candidates"), *as_list(candidates, "--candidates")]
    mv = None
    if model_version is not None:
        try:
            mv = int(model_version)
        except (TypeError, ValueError):
            raise InputError(f"--model_version {model_version!r}: must be a version number") from None
    o = BenchOptions(
        candidates=parse_candidates(specs, as_list(grpc, "--grpc"), as_list(rest, "--rest"),
                                    str(model_name) if model_name else None, mv),
        batch_sizes=as_int_list(batch_sizes, "--batch_sizes"),
        warmup=_int(warmup, "--warmup"),
        repeats=_int(repeats, "--repeats"),
        runs=None if runs is None else _int(runs, "--runs"),
        seconds=None if seconds is None else _num(seconds, "--seconds"),
        concurrency=_int(concurrency, "--concurrency"),
        samples=str(samples) if samples else None,
        seed=_int(seed, "--seed"),
        signature=str(signature),
        inputs=as_list(inputs, "--inputs"),
        outputs=as_list(outputs, "--outputs"),
        feed=as_mapping(feed, "--feed"),
        input_alias=as_mapping(input_alias, "--input_alias"),
        output_alias=as_mapping(output_alias, "--output_alias"),
        input_shapes=as_mapping(input_shapes, "--input_shapes"),
        tags=as_list(tags, "--tags") or ["serve"],
        gemm_size=_int(gemm_size, "--gemm_size"),
        flops=_bool(flops, "--flops"),
        timeout=_num(timeout, "--timeout"),
        out=str(out) if out else None,
        basename=str(basename) if basename else None,
        server_pids=[int(p) for p in as_int_list(server_pids, "--server_pids")],
    )
    validate(o)
    doc = run_benchmark(o)
    jname, mname, pname = output_names(o.basename)
    print(render_markdown(doc, pname if o.out else None))
    if o.out:
        for p in write_outputs(doc, o.out, o.basename):
            print(f"wrote {p}")


def _int(v: Any, flag: str) -> int:
    if isinstance(v, bool):
        raise InputError(f"{flag} {v!r}: must be an integer")
    try:
        return int(v)
    except (TypeError, ValueError):
        raise InputError(f"{flag} {v!r}: must be an integer") from None


def _num(v: Any, flag: str) -> float:
    if isinstance(v, bool):
        raise InputError(f"{flag} {v!r}: must be a number")
    try:
        return float(v)
    except (TypeError, ValueError):
        raise InputError(f"{flag} {v!r}: must be a number") from None


def _bool(v: Any, flag: str) -> bool:
    if isinstance(v, bool):
        return v
    raise InputError(f"{flag} {v!r}: it is a switch, use {flag} or --no{flag[2:]}")


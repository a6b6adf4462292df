"""Loaded candidates: a ``Runner`` takes a prepared batch and returns outputs keyed by alias.

- ``SourceRunner``: the ORIGINAL model as the user ran it (``NormalizedModel.run_source``);
- ``SavedModelRunner``: an exported version, loaded with the TF1 loader TF Serving uses;
- ``ServerRunner``: a running TF Serving (or ``python -m builder serve``) over gRPC or REST.

All TF Serving protocol code sits behind :func:`serving_client` (one switch point), so the bench
can move to the shared client in ``builder.serve.client`` without touching the runners.

Errors that already name their candidate are typed (``CandidateInputError``,
``CandidateServingError``); :func:`open_runner` prefixes every other user error with the
candidate's label, so each message names the candidate exactly once.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np

from builder.bench.candidates import SOURCE_KINDS, BenchOptions, CandidateSpec
from builder.core import artifact
from builder.core.errors import BuilderError, InputError, ServingError, first_line
from builder.core.model import TensorInfo

GRPC_MAX_MESSAGE_BYTES = 2**31 - 1


class CandidateInputError(InputError):
    """An InputError whose message already starts with ``candidate '<spec>':``."""


class CandidateServingError(ServingError):
    """A ServingError whose message already starts with ``candidate '<spec>':``."""


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


def signature_inputs(sig: Any) -> list[TensorInfo]:
    """The inputs of a ``SignatureDef`` proto as ``TensorInfo`` (unknown dims -> None)."""
    out = []
    for k, v in sorted(sig.inputs.items()):
        shape = [] if v.tensor_shape.unknown_rank else \
            [None if d.size < 0 else int(d.size) for d in v.tensor_shape.dim]
        out.append(TensorInfo(k, v.name, artifact.dtype_name(v.dtype), shape))
    return out


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

        self.spec = spec
        self.graph = tf.Graph()
        self.sess = tf.compat.v1.Session(graph=self.graph)
        try:
            with self.graph.as_default():
                try:
                    mg = tf.compat.v1.saved_model.loader.load(self.sess, o.tags, spec.target)
                except (RuntimeError, tf.errors.OpError, OSError, ValueError) as e:
                    raise CandidateInputError(f"candidate {spec.spec!r}: {spec.target} does not "
                                              f"load as a SavedModel: {first_line(e)}") from None
            if o.signature not in mg.signature_def:
                raise CandidateInputError(
                    f"candidate {spec.spec!r}: no signature {o.signature!r} in {spec.target} "
                    f"(has: {', '.join(sorted(mg.signature_def))}); pass --signature KEY")
            sig = mg.signature_def[o.signature]
        except BaseException:
            self.sess.close()
            raise
        g = self.graph
        self.feeds = {k: g.get_tensor_by_name(v.name) for k, v in sig.inputs.items()}
        self.fetches = {k: g.get_tensor_by_name(v.name) for k, v in sig.outputs.items()}
        self.inputs = signature_inputs(sig)
        self.output_aliases = sorted(self.fetches)
        self.graph_def = mg.graph_def
        self.flops_inputs = {k: v.name for k, v in sig.inputs.items()}
        try:
            b = artifact.read_build_info(spec.target) or {}
        except InputError:
            b = {}
        build = {k: b.get(k) for k in ("name", "version", "flow", "optimizer", "precision")} if b else {}
        self.details = {"build_info": build,
                        "runs_as": "Session.run(feed_dict) on the TF1-loaded SavedModel"}

    def run(self, prepared: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {self.feeds[k]: v for k, v in prepared.items()}
        return self.sess.run(self.fetches, feed_dict=feed)

    def close(self) -> None:
        self.sess.close()


# --------------------------------------------------------------------------- TF Serving clients


class _GrpcClient:
    """PredictionService over gRPC with the official stubs; request protos built per batch."""

    protocol = "gRPC"
    runs_as = "PredictionService.Predict, request built once per batch size"

    def __init__(self, spec: CandidateSpec, o: BenchOptions) -> None:
        import grpc
        from tensorflow_serving.apis import model_pb2, prediction_service_pb2_grpc

        self.spec, self.timeout = spec, o.timeout
        self.channel = grpc.insecure_channel(spec.target, options=[
            ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", GRPC_MAX_MESSAGE_BYTES),
        ])
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_spec = model_pb2.ModelSpec(name=spec.model_name or "", signature_name=o.signature)
        if spec.model_version:
            self.model_spec.version.value = spec.model_version

    def metadata(self) -> tuple[Any, dict[str, Any]]:
        """(SignatureDefMap, extra details such as the served version)."""
        import grpc
        from tensorflow_serving.apis import get_model_metadata_pb2

        spec = self.spec
        req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        req.model_spec.CopyFrom(self.model_spec)
        try:
            resp = self.stub.GetModelMetadata(req, timeout=min(30.0, self.timeout))
        except grpc.RpcError as e:
            raise CandidateServingError(
                f"candidate {spec.spec!r}: gRPC {spec.target} model {spec.model_name!r}: "
                f"{e.code().name} {e.details() or ''}".rstrip()
                + ": start the server (python -m builder serve) or fix the address/--model_name"
            ) from None
        sdm = get_model_metadata_pb2.SignatureDefMap()
        resp.metadata["signature_def"].Unpack(sdm)
        return sdm, {"served_version": int(resp.model_spec.version.value)}

    def encode(self, batch: dict[str, np.ndarray]) -> Any:
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        req = predict_pb2.PredictRequest()
        req.model_spec.CopyFrom(self.model_spec)
        for k, v in batch.items():
            req.inputs[k].CopyFrom(tf.make_tensor_proto(v))
        return req

    def predict(self, prepared: Any, output_aliases: list[str]) -> dict[str, np.ndarray]:
        import grpc
        import tensorflow as tf

        try:
            resp = self.stub.Predict(prepared, timeout=self.timeout)
        except grpc.RpcError as e:
            details = (e.details() or "").splitlines()[0] if e.details() else ""
            raise CandidateServingError(f"candidate {self.spec.spec!r}: Predict failed: "
                                        f"{e.code().name} {details}") from None
        return {k: tf.make_ndarray(v) for k, v in resp.outputs.items()}

    def close(self) -> None:
        self.channel.close()


class _RestClient:
    """``POST /v1/models/NAME[/versions/V]:predict`` with a columnar JSON body encoded per batch;
    one keep-alive session per client thread."""

    protocol = "REST"
    runs_as = "POST :predict with a JSON body encoded once per batch size"

    def __init__(self, spec: CandidateSpec, o: BenchOptions) -> None:
        self.spec, self.timeout, self.signature = spec, o.timeout, o.signature
        self.path = f"/v1/models/{spec.model_name}"
        if spec.model_version:
            self.path += f"/versions/{spec.model_version}"
        self.url = spec.target + self.path + ":predict"
        self.local = threading.local()

    def metadata(self) -> tuple[Any, dict[str, Any]]:
        import requests
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2

        spec, where = self.spec, self.spec.target + self.path
        try:
            r = requests.get(where + "/metadata", timeout=min(30.0, self.timeout))
        except requests.RequestException as e:
            raise CandidateServingError(f"candidate {spec.spec!r}: REST {spec.target}: cannot "
                                        f"connect ({type(e).__name__}): start the server or fix "
                                        "the URL") from None
        if r.status_code != 200:
            raise CandidateServingError(f"candidate {spec.spec!r}: REST {where}/metadata answered "
                                        f"{r.status_code} {r.text[:200].strip()}: check --model_name")
        try:
            sdm = get_model_metadata_pb2.SignatureDefMap()
            json_format.ParseDict(r.json()["metadata"]["signature_def"], sdm,
                                  ignore_unknown_fields=True)
        except (ValueError, KeyError, json_format.ParseError):
            raise CandidateServingError(f"candidate {spec.spec!r}: {where}/metadata is not TF "
                                        "Serving model metadata") from None
        return sdm, {}

    def _session(self) -> Any:
        import requests

        s = getattr(self.local, "session", None)
        if s is None:
            s = self.local.session = requests.Session()
        return s

    def encode(self, batch: dict[str, np.ndarray]) -> bytes:
        doc = {"signature_name": self.signature,
               "inputs": {k: v.tolist() for k, v in batch.items()}}
        return json.dumps(doc).encode()

    def predict(self, prepared: bytes, output_aliases: list[str]) -> dict[str, np.ndarray]:
        import requests

        try:
            r = self._session().post(self.url, data=prepared, timeout=self.timeout,
                                     headers={"Content-Type": "application/json"})
        except requests.RequestException as e:
            raise CandidateServingError(f"candidate {self.spec.spec!r}: POST {self.url} failed "
                                        f"({type(e).__name__})") from None
        if r.status_code != 200:
            raise CandidateServingError(f"candidate {self.spec.spec!r}: POST {self.url} answered "
                                        f"{r.status_code} {r.text[:200].strip()}")
        outs = r.json()["outputs"]
        if not isinstance(outs, dict):
            outs = {output_aliases[0]: outs}
        return {k: np.asarray(v, dtype=np.float32) if _is_float_list(v) else np.asarray(v)
                for k, v in outs.items()}

    def close(self) -> None:
        pass


def _is_float_list(v: Any) -> bool:
    while isinstance(v, list) and v:
        v = v[0]
    return isinstance(v, float)


def serving_client(spec: CandidateSpec, o: BenchOptions) -> _GrpcClient | _RestClient:
    """The TF Serving client for a server candidate: the one place to switch to
    ``builder.serve.client`` (metadata, encode a batch once, predict, close)."""
    return _GrpcClient(spec, o) if spec.kind == "grpc" else _RestClient(spec, o)


class ServerRunner(Runner):
    """A running TF Serving (or ``python -m builder serve``), over gRPC or REST, with
    ``--concurrency`` client threads."""

    def __init__(self, spec: CandidateSpec, o: BenchOptions) -> None:
        self.spec, self.concurrency = spec, o.concurrency
        self.client = serving_client(spec, o)
        try:
            sdm, extra = self.client.metadata()
            if o.signature not in sdm.signature_def:
                raise CandidateInputError(
                    f"candidate {spec.spec!r}: model {spec.model_name!r} has no signature "
                    f"{o.signature!r} (has: {', '.join(sorted(sdm.signature_def))})")
        except BaseException:
            self.client.close()
            raise
        sig = sdm.signature_def[o.signature]
        self.inputs = signature_inputs(sig)
        self.output_aliases = sorted(sig.outputs)
        self.details = {"model_name": spec.model_name, **extra, "concurrency": self.concurrency,
                        "runs_as": self.client.runs_as}

    def prepare(self, batch: dict[str, np.ndarray]) -> Any:
        return self.client.encode(batch)

    def run(self, prepared: Any) -> dict[str, np.ndarray]:
        return self.client.predict(prepared, self.output_aliases)

    def close(self) -> None:
        self.client.close()


def open_runner(spec: CandidateSpec, o: BenchOptions) -> Runner:
    """Load one candidate. A user error that does not name its candidate yet (e.g. from the
    loaders) is re-raised, same class, prefixed with the label."""
    try:
        if spec.kind in SOURCE_KINDS:
            return SourceRunner(spec, o)
        if spec.kind == "export":
            return SavedModelRunner(spec, o)
        return ServerRunner(spec, o)
    except (CandidateInputError, CandidateServingError):
        raise
    except BuilderError as e:
        raise type(e)(f"candidate {spec.label!r}: {e}") from None

"""Loaded candidates: a ``Runner`` takes a prepared batch and returns outputs keyed by alias.

- ``SourceRunner``: the ORIGINAL model as the user ran it (``NormalizedModel.run_source``);
- ``SavedModelRunner``: an exported version, loaded with the TF1 loader TF Serving uses;
- ``ServerRunner``: a running TF Serving (or ``python -m builder serve``) over gRPC or REST,
  through Predict, or Classify / Regress where the signature's method is classify / regress.

The protocol code is ``builder.serve.client`` (the project's one TF Serving client);
:func:`serving_client` only adapts it to a candidate (encode once, timed call, errors naming the
candidate).

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
            spec.target, spec.kind, inputs=o.loader.inputs, outputs=o.loader.outputs, feeds=o.loader.feed,
            input_alias=o.loader.input_alias, output_alias=o.loader.output_alias,
            input_shapes={k: loaders.parse_shape(v) for k, v in o.loader.input_shapes.items()},
            tags=o.loader.tags, signature=o.signature,
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
                    mg = tf.compat.v1.saved_model.loader.load(self.sess, o.loader.tags, spec.target)
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


def _api(sig: Any) -> str:
    """The PredictionService method a signature is served by: Classify / Regress for classify /
    regress signatures (what their clients call), Predict for everything else."""
    from builder.serve.client import CLASSIFY, REGRESS

    return {CLASSIFY: "classify", REGRESS: "regress"}.get(sig.method_name, "predict")


class _Protocol:
    """What a server candidate needs from a TF Serving client: the signature map, a batch encoded
    once (encoding is not timed), a timed call that decodes the answer to arrays by alias."""

    protocol = ""
    spec: CandidateSpec
    timeout: float
    api = "predict"
    sig: Any = None

    def use(self, sig: Any) -> None:
        """Serve requests for ``sig`` (Predict, or Classify/Regress by its method name)."""
        self.sig, self.api = sig, _api(sig)

    @property
    def runs_as(self) -> str:
        method = {"predict": "Predict", "classify": "Classify", "regress": "Regress"}[self.api]
        return f"{self.protocol} {method}, request encoded once per batch size"

    def examples(self, batch: dict[str, np.ndarray]) -> list[Any]:
        """The batch's serialized tf.Examples (the one string input of a classify/regress
        signature) as protos, for the Classify/Regress request."""
        from tensorflow.core.example import example_pb2

        (arr,) = batch.values()
        try:
            return [example_pb2.Example.FromString(bytes(b)) for b in np.asarray(arr).reshape(-1)]
        except Exception:  # noqa: BLE001 - protobuf raises DecodeError subclasses
            raise CandidateInputError(
                f"candidate {self.spec.spec!r}: a {self.api} signature takes serialized tf.Examples; "
                "the benchmark inputs are not: pass --samples (e.g. VERSION/assets.extra/golden.npz) or "
                "add an export candidate so they are synthesised from its ParseExample specs") from None

    def decode_inference(self, rows: list) -> dict[str, np.ndarray]:
        """Classify rows ``[[(label, score), ...], ...]`` or Regress values -> arrays shaped as the
        signature's outputs (what Session.run returns in-process, so accuracy compares them)."""
        if self.api == "regress":
            values = np.asarray(rows, dtype=np.float32)
            dims = self.sig.outputs["outputs"].tensor_shape.dim
            return {"outputs": values.reshape(-1, 1) if len(dims) == 2 else values}
        out = {}
        if "classes" in self.sig.outputs:
            labels = [[(lab.encode() if isinstance(lab, str) else lab) for lab, _ in row] for row in rows]
            out["classes"] = np.array(labels, dtype=object)
        if "scores" in self.sig.outputs:
            out["scores"] = np.array([[score for _, score in row] for row in rows], dtype=np.float32)
        return out

    def fail(self, what: str) -> CandidateServingError:
        return CandidateServingError(f"candidate {self.spec.spec!r}: {what}")


class _Grpc(_Protocol):
    """``PredictionService`` over gRPC (``builder.serve.client.GrpcClient``, official stubs)."""

    protocol = "gRPC"

    def __init__(self, spec: CandidateSpec, o: BenchOptions) -> None:
        from builder.serve.client import GRPC_MAX_MESSAGE_BYTES, GrpcClient

        self.spec, self.timeout, self.signature = spec, o.timeout, o.signature
        self.client = GrpcClient(spec.target, max_message_bytes=GRPC_MAX_MESSAGE_BYTES, timeout=o.timeout)

    def metadata(self) -> tuple[Any, dict[str, Any]]:
        """(SignatureDefMap, extra details such as the served version)."""
        import grpc
        from tensorflow_serving.apis import get_model_metadata_pb2

        spec = self.spec
        try:
            resp = self.client.metadata(spec.model_name or "", spec.model_version, timeout=min(30.0, self.timeout))
        except grpc.RpcError as e:
            raise self.fail(f"gRPC {spec.target} model {spec.model_name!r}: {e.code().name} "
                            f"{e.details() or ''}".rstrip()
                            + ": start the server (python -m builder serve) or fix the address/--model_name") from None
        sdm = get_model_metadata_pb2.SignatureDefMap()
        resp.metadata["signature_def"].Unpack(sdm)
        return sdm, {"served_version": int(resp.model_spec.version.value)}

    def encode(self, batch: dict[str, np.ndarray]) -> Any:
        from builder.serve import client

        kw = {"version": self.spec.model_version, "signature": self.signature}
        name = self.spec.model_name or ""
        if self.api == "classify":
            return client.classify_request(name, self.examples(batch), **kw)
        if self.api == "regress":
            return client.regress_request(name, self.examples(batch), **kw)
        return client.predict_request(name, batch, **kw)

    def call(self, prepared: Any) -> dict[str, np.ndarray]:
        import grpc

        from builder.serve.client import classifications, outputs

        try:
            resp = self.client.send(prepared, timeout=self.timeout)
        except grpc.RpcError as e:
            details = (e.details() or "").splitlines()[0] if e.details() else ""
            raise self.fail(f"{self.api.capitalize()} failed: {e.code().name} {details}") from None
        if self.api == "classify":
            return self.decode_inference(classifications(resp.result))
        if self.api == "regress":
            return self.decode_inference([r.value for r in resp.result.regressions])
        return outputs(resp)

    def close(self) -> None:
        self.client.close()


class _Rest(_Protocol):
    """TF Serving's REST API (``builder.serve.client.RestClient``): ``:predict`` with a columnar
    JSON body, ``:classify`` / ``:regress`` with ``examples``; one keep-alive connection per client
    thread."""

    protocol = "REST"

    def __init__(self, spec: CandidateSpec, o: BenchOptions) -> None:
        from builder.serve.client import model_path

        self.spec, self.timeout, self.signature = spec, o.timeout, o.signature
        self.path = model_path(spec.model_name or "", spec.model_version)
        self.local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()

    def _client(self) -> Any:
        from builder.serve.client import RestClient

        c = getattr(self.local, "client", None)
        if c is None:
            c = self.local.client = RestClient(self.spec.target, timeout=self.timeout)
            with self._lock:
                self._clients.append(c)
        return c

    def _request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        try:
            return self._client().request(method, path, body)
        except (OSError, ValueError) as e:  # refused, reset, timed out; a body that is not JSON
            raise self.fail(f"REST {self.spec.target}{path}: {type(e).__name__}: {first_line(e) or 'no answer'}: "
                            "start the server or fix the URL") from None

    def metadata(self) -> tuple[Any, dict[str, Any]]:
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2

        where = self.path + "/metadata"
        status, got = self._request("GET", where)
        if status != 200:
            raise self.fail(f"REST {self.spec.target}{where} answered {status} {str(got)[:200].strip()}: "
                            "check --model_name")
        try:
            sdm = get_model_metadata_pb2.SignatureDefMap()
            json_format.ParseDict(got["metadata"]["signature_def"], sdm, ignore_unknown_fields=True)
        except (TypeError, KeyError, json_format.ParseError):
            raise self.fail(f"{self.spec.target}{where} is not TF Serving model metadata") from None
        return sdm, {}

    def encode(self, batch: dict[str, np.ndarray]) -> bytes:
        from builder.serve.client import example_to_json

        doc: dict[str, Any] = {"signature_name": self.signature}
        if self.api == "predict":
            doc["inputs"] = {k: v.tolist() for k, v in batch.items()}
        else:
            doc["examples"] = [example_to_json(e) for e in self.examples(batch)]
        return json.dumps(doc).encode()

    def call(self, prepared: bytes) -> dict[str, np.ndarray]:
        path = f"{self.path}:{self.api}"
        status, got = self._request("POST", path, prepared)
        if status != 200:
            raise self.fail(f"POST {self.spec.target}{path} answered {status} {str(got)[:200].strip()}")
        if self.api != "predict":
            return self.decode_inference(got["result"])
        outs = got["outputs"]
        if not isinstance(outs, dict):
            outs = {sorted(self.sig.outputs)[0]: outs}
        return {k: np.asarray(v, dtype=np.float32) if _is_float_list(v) else np.asarray(v)
                for k, v in outs.items()}

    def close(self) -> None:
        with self._lock:
            for c in self._clients:
                c.close()
            self._clients.clear()


def _is_float_list(v: Any) -> bool:
    while isinstance(v, list) and v:
        v = v[0]
    return isinstance(v, float)


def serving_client(spec: CandidateSpec, o: BenchOptions) -> _Grpc | _Rest:
    """The TF Serving client of a server candidate, on ``builder.serve.client``."""
    return _Grpc(spec, o) if spec.kind == "grpc" else _Rest(spec, o)


class ServerRunner(Runner):
    """A running TF Serving (or ``python -m builder serve``), over gRPC or REST, with
    ``--concurrency`` client threads; classify/regress signatures through Classify/Regress."""

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
        self.client.use(sig)
        self.inputs = signature_inputs(sig)
        self.output_aliases = sorted(sig.outputs)
        self.details = {"model_name": spec.model_name, **extra, "concurrency": self.concurrency,
                        "api": self.client.api, "runs_as": self.client.runs_as}

    def prepare(self, batch: dict[str, np.ndarray]) -> Any:
        return self.client.encode(batch)

    def run(self, prepared: Any) -> dict[str, np.ndarray]:
        return self.client.call(prepared)

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

"""The request logic both front ends share: resolve the servable, convert, run, answer.

Why one place: REST and gRPC must resolve versions and labels, admit bytes against the in-flight
budget, count metrics and fail the same way; the front ends (``rest``, ``grpc_api``) only parse
their wire format and render results. The order of steps follows TF Serving (a REST body is
parsed before the servable is looked up, so a syntax error wins over an unknown model).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

from builder.serve import inference
from builder.serve.codec import (
    array_to_proto,
    encode_predict_response,
    may_have_bools,
    parse_json_object,
    predict_inputs_from_doc,
    tensor_proto_to_array,
)
from builder.serve.examples import examples_from_doc, examples_from_input, serialized_tensor
from builder.serve.jsonstream import STREAM_MIN_CHARS
from builder.serve.limits import InflightBytes
from builder.serve.manager import ModelManager
from builder.serve.metrics import Metrics
from builder.serve.status import RpcStatus


def _spec_version(spec: Any) -> int | None:
    return spec.version.value if spec.HasField("version") else None


def _float_text(x: float) -> str:
    """WriteDecimal for a float: shortest text that round-trips in float32, NaN/Infinity."""
    import math

    import numpy as np

    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return str(np.float32(x))


def classification_json(result: inference.Classifications) -> bytes:
    """MakeJsonFromClassificationResult: {"result": [[[label, score], ...], ...]}."""
    rows = []
    for row in result.rows:
        cells = [f"[{json.dumps((label or b'').decode('utf-8', 'replace'))},{_float_text(score or 0.0)}]"
                 for label, score in row]
        rows.append("[" + ",".join(cells) + "]")
    return ('{"result":[' + ",".join(rows) + "]}").encode()


def regression_json(result: inference.Regressions) -> bytes:
    return ('{"result":[' + ",".join(_float_text(v) for v in result.values) + "]}").encode()


class ServingCore:
    """The request logic both front ends share."""

    def __init__(self, manager: ModelManager, metrics: Metrics, budget: InflightBytes | None = None) -> None:
        self.manager = manager
        self.metrics = metrics
        self.budget = budget or InflightBytes(2**62)

    # -- gRPC ------------------------------------------------------------------------------------
    def predict_proto(self, request: Any) -> Any:
        from tensorflow_serving.apis import predict_pb2

        spec = request.model_spec
        with self._recorded(spec.name, "Predict", "GRPC"), self.budget.hold(request.ByteSize()):
            if not request.HasField("model_spec"):
                raise RpcStatus("INVALID_ARGUMENT", "Missing ModelSpec")
            with self._servable(spec.name, _spec_version(spec), spec.version_label or None) as s:
                inputs = {k: tensor_proto_to_array(v) for k, v in request.inputs.items()}
                outputs = s.run(spec.signature_name, inputs, list(request.output_filter), api="grpc")
                resp = predict_pb2.PredictResponse()
                _fill_spec(resp.model_spec, s, spec.signature_name)
                for alias, arr in outputs.items():
                    resp.outputs[alias].CopyFrom(array_to_proto(arr))
                return resp

    def classify_proto(self, request: Any) -> Any:
        from tensorflow_serving.apis import classification_pb2

        spec = request.model_spec
        with self._recorded(spec.name, "Classify", "GRPC"), self.budget.hold(request.ByteSize()):
            if not request.HasField("model_spec"):
                raise RpcStatus("INVALID_ARGUMENT", "Missing ModelSpec")
            with self._servable(spec.name, _spec_version(spec), spec.version_label or None) as s:
                result = s.classify(spec.signature_name, serialized_tensor(*examples_from_input(request.input)))
                resp = classification_pb2.ClassificationResponse()
                _fill_spec(resp.model_spec, s, spec.signature_name)
                _classification_proto(resp.result, result)
                return resp

    def regress_proto(self, request: Any) -> Any:
        from tensorflow_serving.apis import regression_pb2

        spec = request.model_spec
        with self._recorded(spec.name, "Regress", "GRPC"), self.budget.hold(request.ByteSize()):
            if not request.HasField("model_spec"):
                raise RpcStatus("INVALID_ARGUMENT", "Missing ModelSpec")
            with self._servable(spec.name, _spec_version(spec), spec.version_label or None) as s:
                result = s.regress(spec.signature_name, serialized_tensor(*examples_from_input(request.input)))
                resp = regression_pb2.RegressionResponse()
                _fill_spec(resp.model_spec, s, spec.signature_name)
                resp.result.regressions.extend(regression_pb2.Regression(value=v) for v in result.values)
                return resp

    def multi_inference_proto(self, request: Any) -> Any:
        from tensorflow_serving.apis import inference_pb2

        first = request.tasks[0].model_spec if request.tasks else None
        name = first.name if first is not None else ""
        with self.budget.hold(request.ByteSize()):
            with self._servable(name, _spec_version(first) if first is not None else None,
                                (first.version_label or None) if first is not None else None) as s:
                tasks = [inference.Task(t.model_spec.name, t.model_spec.signature_name, t.method_name)
                         for t in request.tasks]
                results = s.multi_inference(tasks, serialized_tensor(*examples_from_input(request.input)))
                resp = inference_pb2.MultiInferenceResponse()
                for task, result in zip(request.tasks, results, strict=True):
                    out = resp.results.add()
                    _fill_spec(out.model_spec, s, task.model_spec.signature_name, name=task.model_spec.name)
                    if isinstance(result, inference.Classifications):
                        _classification_proto(out.classification_result, result)
                    else:
                        for v in result.values:
                            out.regression_result.regressions.add(value=v)
                return resp

    # -- REST ------------------------------------------------------------------------------------
    def predict_rest(self, name: str, version: int | None, label: str | None, body: Any) -> list[bytes]:
        """``:predict``; ``body`` is bytes, or a holder whose ``take()`` hands the bytes over
        (so a big body can be freed as soon as it is parsed)."""
        with self._recorded(name, "predict", "REST"):
            raw = body.take() if hasattr(body, "take") else body
            bools = len(raw) < STREAM_MIN_CHARS and may_have_bools(raw)
            doc = parse_json_object(raw)  # TF Serving parses before resolving the servable
            del raw
            sig_name = doc.get("signature_name", "") or ""
            with self._servable(name, version, label) as s:
                inputs, fmt = predict_inputs_from_doc(doc, s.input_dtypes(sig_name), bools)
                del doc
                return encode_predict_response(s.run(sig_name, inputs, [], api="rest"), fmt)

    def classify_rest(self, name: str, version: int | None, label: str | None, body: Any, method: str) -> bytes:
        """``:classify`` / ``:regress`` (``method``) with TF Serving's JSON examples."""
        with self._recorded(name, method, "REST"):
            raw = body.take() if hasattr(body, "take") else body
            doc = parse_json_object(raw)
            del raw
            serialized = serialized_tensor(*examples_from_doc(doc))
            sig_name = doc.get("signature_name", "") or ""
            with self._servable(name, version, label) as s:
                if method == "classify":
                    return classification_json(s.classify(sig_name, serialized))
                return regression_json(s.regress(sig_name, serialized))

    # -- shared ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _servable(self, name: str, version: int | None, label: str | None) -> Iterator[Any]:
        s = self.manager.acquire(name, version, label)
        try:
            yield s
        finally:
            s.release()

    @contextlib.contextmanager
    def _recorded(self, model: str, api: str, entrypoint: str) -> Iterator[None]:
        """Count and time one request for the Prometheus metrics, with its status code."""
        t0 = time.perf_counter()
        code = "OK"
        try:
            yield
        except RpcStatus as e:
            code = e.code
            raise
        finally:
            known = self.manager.has_model(model)
            self.metrics.record(model if known else None, api, entrypoint, code, time.perf_counter() - t0)

    def status_proto(self, name: str, version: int | None, label: str | None) -> Any:
        from tensorflow.core.protobuf import error_codes_pb2
        from tensorflow_serving.apis import get_model_status_pb2

        if not name:
            raise RpcStatus("INVALID_ARGUMENT", "Missing model name in request.")
        resp = get_model_status_pb2.GetModelStatusResponse()
        for v, st in self.manager.status(name, version, label):
            mvs = resp.model_version_status.add(version=v)
            mvs.state = get_model_status_pb2.ModelVersionStatus.State.Value(st.state)
            mvs.status.SetInParent()
            mvs.status.error_code = error_codes_pb2.Code.Value(st.error_code)
            mvs.status.error_message = st.error_message
        return resp

    def metadata_parts(self, name: str, version: int | None, label: str | None) -> tuple[str, int, Any]:
        from tensorflow_serving.apis import get_model_metadata_pb2

        if not name:
            raise RpcStatus("INVALID_ARGUMENT", "Missing model name in request.")
        with self._servable(name, version, label) as s:
            sdm = get_model_metadata_pb2.SignatureDefMap()
            for k, sig in s.signatures.items():
                sdm.signature_def[k].CopyFrom(sig)
            return s.name, s.version, sdm


def _fill_spec(spec: Any, s: Any, signature_name: str, name: str | None = None) -> None:
    """MakeModelSpec: name, the signature actually used, the version that answered."""
    spec.name = s.name if name is None else name
    spec.version.value = s.version
    spec.signature_name = signature_name or inference.DEFAULT_SIGNATURE


def _classification_proto(result_proto: Any, result: inference.Classifications) -> None:
    for row in result.rows:
        item = result_proto.classifications.add()
        for label, score in row:
            cls = item.classes.add()
            if label is not None:
                cls.label = label.decode("utf-8", "replace")
            if score is not None:
                cls.score = score

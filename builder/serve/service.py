"""The request logic both front ends share: resolve the servable, convert, run, answer.

Why one place: REST and gRPC must resolve versions and labels, count metrics and fail the same
way; the front ends (``rest``, ``grpc_api``) only parse their wire format and render results.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from builder.serve.codec import (
    array_to_proto,
    parse_json_object,
    predict_inputs_from_doc,
    predict_response_json,
    tensor_proto_to_array,
)
from builder.serve.manager import ModelManager
from builder.serve.metrics import Metrics
from builder.serve.status import RpcStatus


class ServingCore:
    """The request logic both front ends share."""

    def __init__(self, manager: ModelManager, metrics: Metrics) -> None:
        self.manager = manager
        self.metrics = metrics

    def predict_proto(self, request: Any) -> Any:
        from tensorflow_serving.apis import predict_pb2

        spec = request.model_spec
        with self._recorded(spec.name):
            version = spec.version.value if spec.HasField("version") else None
            s = self.manager.acquire(spec.name, version, spec.version_label or None)
            try:
                inputs = {k: tensor_proto_to_array(v) for k, v in request.inputs.items()}
                outputs = s.run(spec.signature_name, inputs, list(request.output_filter), api="grpc")
                resp = predict_pb2.PredictResponse()
                resp.model_spec.name = s.name
                resp.model_spec.version.value = s.version
                resp.model_spec.signature_name = spec.signature_name or "serving_default"
                for alias, arr in outputs.items():
                    resp.outputs[alias].CopyFrom(array_to_proto(arr))
                return resp
            finally:
                s.release()

    def predict_rest(self, name: str, version: int | None, label: str | None, body: bytes) -> dict:
        with self._recorded(name):
            doc = parse_json_object(body)  # TF Serving parses before resolving the servable
            sig_name = doc.get("signature_name", "") or ""
            s = self.manager.acquire(name, version, label)
            try:
                dtypes = s.input_dtypes(sig_name)
                inputs, fmt = predict_inputs_from_doc(doc, dtypes, b"true" in body or b"false" in body)
                outputs = s.run(sig_name, inputs, [], api="rest")
                return predict_response_json(outputs, fmt)
            finally:
                s.release()

    @contextlib.contextmanager
    def _recorded(self, model: str) -> Iterator[None]:
        """Count and time one predict for the Prometheus metrics, with its status code."""
        t0 = time.perf_counter()
        code = "OK"
        try:
            yield
        except RpcStatus as e:
            code = e.code
            raise
        finally:
            self.metrics.record(model, "predict", code, time.perf_counter() - t0)

    def status_proto(self, name: str, version: int | None, label: str | None) -> Any:
        from tensorflow_serving.apis import get_model_status_pb2

        if not name:
            raise RpcStatus("INVALID_ARGUMENT", "Missing model name in request.")
        resp = get_model_status_pb2.GetModelStatusResponse()
        for v, st in self.manager.status(name, version, label):
            mvs = resp.model_version_status.add(version=v)
            mvs.state = get_model_status_pb2.ModelVersionStatus.State.Value(st.state)
            mvs.status.SetInParent()
            from tensorflow.core.protobuf import error_codes_pb2

            mvs.status.error_code = error_codes_pb2.Code.Value(st.error_code)
            mvs.status.error_message = st.error_message
        return resp

    def metadata_parts(self, name: str, version: int | None, label: str | None) -> tuple[str, int, Any]:
        from tensorflow_serving.apis import get_model_metadata_pb2

        if not name:
            raise RpcStatus("INVALID_ARGUMENT", "Missing model name in request.")
        s = self.manager.acquire(name, version, label)
        try:
            sdm = get_model_metadata_pb2.SignatureDefMap()
            for k, sig in s.signatures.items():
                sdm.signature_def[k].CopyFrom(sig)
            return s.name, s.version, sdm
        finally:
            s.release()

"""Thin clients used by the integration tests: REST over http.client (keep-alive, one
connection per thread) and gRPC through the official tensorflow_serving.apis stubs."""

from __future__ import annotations

import http.client
import json
from typing import Any

import grpc
import numpy as np

from builder.serve.server import ServerHandle


class Rest:
    """One keep-alive HTTP/1.1 connection to a server's REST port."""

    def __init__(self, server: ServerHandle, timeout: float = 30) -> None:
        self.host, self.port, self.timeout = server.host, server.rest_port, timeout
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(self, method: str, path: str, body: bytes | str | dict | None = None,
                headers: dict | None = None) -> tuple[int, Any]:
        if isinstance(body, dict):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode("utf-8")
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        for attempt in (0, 1):  # a server may close an idle keep-alive connection
            try:
                self.conn.request(method, path, body=body, headers=hdrs)
                resp = self.conn.getresponse()
                data = resp.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                if attempt:
                    raise
        if resp.getheader("Connection", "").lower() == "close":
            self.conn.close()
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        ctype = resp.getheader("Content-Type", "")
        return resp.status, (json.loads(data) if "json" in ctype and data else data.decode("utf-8", "replace"))

    def get(self, path: str) -> tuple[int, Any]:
        return self.request("GET", path)

    def post(self, path: str, body: bytes | str | dict | None) -> tuple[int, Any]:
        return self.request("POST", path, body)

    def close(self) -> None:
        self.conn.close()


class Grpc:
    """PredictionService + ModelService stubs on one channel."""

    def __init__(self, server: ServerHandle, max_message: int = 64 * 1024 * 1024) -> None:
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self.channel = grpc.insecure_channel(server.grpc_target, options=[
            ("grpc.max_send_message_length", max_message),
            ("grpc.max_receive_message_length", max_message)])
        self.predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_stub = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def predict(self, name: str, inputs: dict[str, Any], version: int | None = None,
                label: str | None = None, signature: str = "", output_filter: tuple = (),
                timeout: float = 30) -> Any:
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        req = predict_pb2.PredictRequest()
        req.model_spec.name = name
        if version is not None:
            req.model_spec.version.value = version
        if label:
            req.model_spec.version_label = label
        if signature:
            req.model_spec.signature_name = signature
        for k, v in inputs.items():
            req.inputs[k].CopyFrom(v if not isinstance(v, np.ndarray) else tf.make_tensor_proto(v))
        req.output_filter.extend(output_filter)
        return self.predict_stub.Predict(req, timeout=timeout)

    def status(self, name: str, version: int | None = None, label: str | None = None) -> Any:
        from tensorflow_serving.apis import get_model_status_pb2

        req = get_model_status_pb2.GetModelStatusRequest()
        req.model_spec.name = name
        if version is not None:
            req.model_spec.version.value = version
        if label:
            req.model_spec.version_label = label
        return self.model_stub.GetModelStatus(req, timeout=10)

    def metadata(self, name: str, version: int | None = None) -> Any:
        from tensorflow_serving.apis import get_model_metadata_pb2

        req = get_model_metadata_pb2.GetModelMetadataRequest()
        req.model_spec.name = name
        if version is not None:
            req.model_spec.version.value = version
        req.metadata_field.append("signature_def")
        return self.predict_stub.GetModelMetadata(req, timeout=10)

    def close(self) -> None:
        self.channel.close()


def outputs(resp: Any) -> dict[str, np.ndarray]:
    import tensorflow as tf

    return {k: tf.make_ndarray(v) for k, v in resp.outputs.items()}


def rows_to_arrays(predictions: list) -> dict[str, np.ndarray]:
    """REST row-format predictions (list of {name: value}) -> {name: stacked array}."""
    keys = predictions[0].keys()
    return {k: np.asarray([p[k] for p in predictions]) for k in keys}

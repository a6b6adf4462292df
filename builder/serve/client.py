"""THE TF Serving client of this project: REST and gRPC, used by ``scripts/serve_check``,
``scripts/ci_pipeline``, the integration suite (and meant for the benchmark).

Why one client: four hand-written ones had drifted (message-size limits, keep-alive handling,
how a version or label goes into the request). This one builds requests with the official
``tensorflow_serving.apis`` protos / TF Serving's documented JSON, and works against
``tensorflow_model_server`` and the local server alike.

- ``RestClient``: one keep-alive HTTP/1.1 connection (``http.client``; use one per thread).
  ``request``/``get``/``post`` return ``(status, body)``; ``predict``/``classify``/``regress``/
  ``status``/``metadata`` return the JSON answer or raise ``RestError``.
- ``GrpcClient``: ``PredictionService`` + ``ModelService`` stubs on one channel, with TF Serving's
  own message-size limit (2 GiB - 1) on both sides unless told otherwise - the default 4 MiB
  receive limit of a gRPC client is the usual "Received message larger than max" failure.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

GRPC_MAX_MESSAGE_BYTES = 2**31 - 1  # tensorflow_model_server sets kint32max for both directions
CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"


class RestError(Exception):
    """A non-200 REST answer: the HTTP status and TF Serving's ``error`` text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def model_path(model: str, version: int | None = None, label: str | None = None) -> str:
    """``/v1/models/NAME[/versions/V|/labels/L]`` with the name and label URL-escaped."""
    path = f"/v1/models/{quote(model, safe='')}"
    if version is not None:
        path += f"/versions/{int(version)}"
    elif label:
        path += f"/labels/{quote(label, safe='')}"
    return path


class RestClient:
    """TF Serving's REST API over one keep-alive connection."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"not a REST address: {url!r} (write http://HOST:PORT)")
        self.host, self.port, self.timeout = parts.hostname, parts.port or 80, timeout
        self.conn = self._connect()

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def request(self, method: str, path: str, body: bytes | str | Mapping | None = None,
                headers: Mapping[str, str] | None = None) -> tuple[int, Any]:
        """Send one request; returns (HTTP status, parsed JSON or text). A keep-alive connection
        the server closed while idle is reopened once."""
        if isinstance(body, Mapping):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode("utf-8")
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        for attempt in (0, 1):
            try:
                self.conn.request(method, path, body=body, headers=hdrs)
                resp = self.conn.getresponse()
                data = resp.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                self.conn = self._connect()
                if attempt:
                    raise
        if resp.getheader("Connection", "").lower() == "close":
            self.conn.close()
            self.conn = self._connect()
        ctype = resp.getheader("Content-Type", "")
        if "json" in ctype and data:
            return resp.status, json.loads(data)
        return resp.status, data.decode("utf-8", "replace")

    def get(self, path: str) -> tuple[int, Any]:
        return self.request("GET", path)

    def post(self, path: str, body: bytes | str | Mapping | None) -> tuple[int, Any]:
        return self.request("POST", path, body)

    def _json(self, method: str, path: str, body: Mapping | None = None) -> Any:
        status, got = self.request(method, path, body)
        if status != 200:
            message = got.get("error", json.dumps(got)) if isinstance(got, dict) else str(got)
            raise RestError(status, message)
        return got

    def predict(self, model: str, *, instances: Any = None, inputs: Any = None, version: int | None = None,
                label: str | None = None, signature: str | None = None) -> dict:
        """``:predict`` in row (``instances``) or columnar (``inputs``) format."""
        body: dict[str, Any] = {}
        if signature:
            body["signature_name"] = signature
        if instances is not None:
            body["instances"] = instances
        if inputs is not None:
            body["inputs"] = inputs
        return self._json("POST", model_path(model, version, label) + ":predict", body)

    def classify(self, model: str, examples: list[Mapping], *, context: Mapping | None = None,
                 version: int | None = None, label: str | None = None, signature: str | None = None) -> dict:
        """``:classify`` -> ``{"result": [[[label, score], ...], ...]}``."""
        return self._json("POST", model_path(model, version, label) + ":classify",
                          _examples_body(examples, context, signature))

    def regress(self, model: str, examples: list[Mapping], *, context: Mapping | None = None,
                version: int | None = None, label: str | None = None, signature: str | None = None) -> dict:
        """``:regress`` -> ``{"result": [value, ...]}``."""
        return self._json("POST", model_path(model, version, label) + ":regress",
                          _examples_body(examples, context, signature))

    def status(self, model: str, version: int | None = None, label: str | None = None) -> dict:
        return self._json("GET", model_path(model, version, label))

    def metadata(self, model: str, version: int | None = None, label: str | None = None) -> dict:
        return self._json("GET", model_path(model, version, label) + "/metadata")

    def metrics(self, path: str = "/monitoring/prometheus/metrics") -> str:
        status, text = self.request("GET", path)
        if status != 200:
            raise RestError(status, str(text))
        return str(text)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> RestClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _examples_body(examples: list[Mapping], context: Mapping | None, signature: str | None) -> dict:
    body: dict[str, Any] = {"examples": list(examples)}
    if context is not None:
        body["context"] = dict(context)
    if signature:
        body["signature_name"] = signature
    return body


def make_example(features: Mapping[str, Any]) -> Any:
    """``{"x": [1.0], "k": 3, "s": b"a"}`` -> ``tf.train.Example``: floats become a float_list,
    ints (and bools) an int64_list, str/bytes a bytes_list - the mapping TF Serving's REST
    ``examples`` use."""
    from tensorflow.core.example import example_pb2

    ex = example_pb2.Example()
    for name, value in features.items():
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        feat = ex.features.feature[name]
        if all(isinstance(v, (bytes, str)) for v in values) and values:
            feat.bytes_list.value.extend(v.encode("utf-8") if isinstance(v, str) else v for v in values)
        elif all(isinstance(v, (bool, int)) for v in values) and values:
            feat.int64_list.value.extend(int(v) for v in values)
        else:
            feat.float_list.value.extend(float(v) for v in values)
    return ex


def example_to_json(example: Any) -> dict[str, list]:
    """``tf.train.Example`` -> TF Serving's REST example object (the inverse of make_example):
    float_list -> numbers, int64_list -> integers, bytes_list -> ``{"b64": ...}``."""
    import base64

    out: dict[str, list] = {}
    for name, feat in example.features.feature.items():
        kind = feat.WhichOneof("kind")
        if kind == "bytes_list":
            out[name] = [{"b64": base64.b64encode(v).decode("ascii")} for v in feat.bytes_list.value]
        elif kind == "int64_list":
            out[name] = list(feat.int64_list.value)
        elif kind == "float_list":
            out[name] = [float(v) for v in feat.float_list.value]
        else:
            out[name] = []
    return out


def _spec(spec: Any, model: str, version: int | None, label: str | None, signature: str = "") -> None:
    spec.name = model
    if version is not None:
        spec.version.value = int(version)
    elif label:
        spec.version_label = label
    if signature:
        spec.signature_name = signature


def _fill_input(inp: Any, examples: Iterable[Any], context: Any = None) -> None:
    """ClassificationRequest/RegressionRequest ``input``: an ExampleList, or with a context an
    ExampleListWithContext (TF Serving merges the context into every example)."""
    examples = [e if hasattr(e, "SerializeToString") else make_example(e) for e in examples]
    if context is None:
        inp.example_list.examples.extend(examples)
        return
    ctx = context if hasattr(context, "SerializeToString") else make_example(context)
    inp.example_list_with_context.context.CopyFrom(ctx)
    inp.example_list_with_context.examples.extend(examples)


class GrpcClient:
    """``PredictionService`` and ``ModelService`` on one channel (official stubs)."""

    def __init__(self, target: str, max_message_bytes: int = GRPC_MAX_MESSAGE_BYTES,
                 timeout: float = 30.0) -> None:
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self.timeout = timeout
        self.channel = grpc.insecure_channel(target, options=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes)])
        self.prediction = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def predict(self, model: str, inputs: Mapping[str, Any], *, version: int | None = None,
                label: str | None = None, signature: str = "", output_filter: Iterable[str] = (),
                timeout: float | None = None) -> Any:
        """``inputs`` maps alias -> numpy array (or TensorProto)."""
        from tensorflow_serving.apis import predict_pb2

        req = predict_pb2.PredictRequest()
        _spec(req.model_spec, model, version, label, signature)
        for k, v in inputs.items():
            req.inputs[k].CopyFrom(v if hasattr(v, "SerializeToString") else to_tensor_proto(v))
        req.output_filter.extend(output_filter)
        return self.prediction.Predict(req, timeout=timeout or self.timeout)

    def classify(self, model: str, examples: Iterable[Any], *, context: Any = None, version: int | None = None,
                 label: str | None = None, signature: str = "", timeout: float | None = None) -> Any:
        """``examples``: tf.train.Example protos or feature dicts (see ``make_example``)."""
        from tensorflow_serving.apis import classification_pb2

        req = classification_pb2.ClassificationRequest()
        _spec(req.model_spec, model, version, label, signature)
        _fill_input(req.input, examples, context)
        return self.prediction.Classify(req, timeout=timeout or self.timeout)

    def regress(self, model: str, examples: Iterable[Any], *, context: Any = None, version: int | None = None,
                label: str | None = None, signature: str = "", timeout: float | None = None) -> Any:
        from tensorflow_serving.apis import regression_pb2

        req = regression_pb2.RegressionRequest()
        _spec(req.model_spec, model, version, label, signature)
        _fill_input(req.input, examples, context)
        return self.prediction.Regress(req, timeout=timeout or self.timeout)

    def multi_inference(self, model: str, examples: Iterable[Any], tasks: Iterable[tuple[str, str]], *,
                        context: Any = None, version: int | None = None, label: str | None = None,
                        timeout: float | None = None) -> Any:
        """``tasks``: (signature name, method name) pairs; method names are this module's
        ``CLASSIFY`` / ``REGRESS`` (TF Serving's method-name strings)."""
        from tensorflow_serving.apis import inference_pb2

        req = inference_pb2.MultiInferenceRequest()
        for signature, method in tasks:
            task = req.tasks.add(method_name=method)
            _spec(task.model_spec, model, version, label, signature)
        _fill_input(req.input, examples, context)
        return self.prediction.MultiInference(req, timeout=timeout or self.timeout)

    def metadata(self, model: str, version: int | None = None, label: str | None = None,
                 timeout: float | None = None) -> Any:
        from tensorflow_serving.apis import get_model_metadata_pb2

        req = get_model_metadata_pb2.GetModelMetadataRequest()
        _spec(req.model_spec, model, version, label)
        req.metadata_field.append("signature_def")
        return self.prediction.GetModelMetadata(req, timeout=timeout or self.timeout)

    def signature_defs(self, model: str, version: int | None = None, label: str | None = None) -> Any:
        """The ``SignatureDefMap`` unpacked from GetModelMetadata."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        sdm = get_model_metadata_pb2.SignatureDefMap()
        self.metadata(model, version, label).metadata["signature_def"].Unpack(sdm)
        return sdm

    def status(self, model: str, version: int | None = None, label: str | None = None,
               timeout: float | None = None) -> Any:
        from tensorflow_serving.apis import get_model_status_pb2

        req = get_model_status_pb2.GetModelStatusRequest()
        _spec(req.model_spec, model, version, label)
        return self.models.GetModelStatus(req, timeout=timeout or self.timeout)

    def reload_config(self, config: Any, timeout: float | None = None) -> Any:
        """HandleReloadConfigRequest with a ModelServerConfig proto or its text."""
        from google.protobuf import text_format
        from tensorflow_serving.apis import model_management_pb2
        from tensorflow_serving.config import model_server_config_pb2

        req = model_management_pb2.ReloadConfigRequest()
        if isinstance(config, str):
            config = text_format.Parse(config, model_server_config_pb2.ModelServerConfig())
        req.config.CopyFrom(config)
        return self.models.HandleReloadConfigRequest(req, timeout=timeout or self.timeout)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> GrpcClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def to_tensor_proto(array: Any) -> Any:
    import tensorflow as tf

    return tf.make_tensor_proto(array)


def outputs(resp: Any) -> dict[str, Any]:
    """PredictResponse -> {alias: numpy array}."""
    import tensorflow as tf

    return {k: tf.make_ndarray(v) for k, v in resp.outputs.items()}


def rows_to_arrays(predictions: list) -> dict[str, Any]:
    """REST row-format predictions (a list of {alias: value}) -> {alias: stacked array}."""
    import numpy as np

    keys = predictions[0].keys()
    return {k: np.asarray([p[k] for p in predictions]) for k in keys}


def classifications(result: Any) -> list[list[tuple[str, float]]]:
    """ClassificationResult proto -> [[(label, score), ...] per example], the REST shape."""
    return [[(c.label, c.score) for c in item.classes] for item in result.classifications]

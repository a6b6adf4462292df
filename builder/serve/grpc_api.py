"""The gRPC front end: ``tensorflow.serving.PredictionService`` (Predict, Classify, Regress,
MultiInference, GetModelMetadata) and ``ModelService`` (GetModelStatus,
HandleReloadConfigRequest) with the official generated stubs, so any TF Serving gRPC client talks
to the local server unchanged. Message sizes are capped by ``--grpc_max_message_bytes`` (gRPC
answers RESOURCE_EXHAUSTED "Received message larger than max" past it).

Imported only when a server starts (it pulls in grpc and the TF Serving protos).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from builder.config.models_config import ModelEntry, entries_from_proto
from builder.core.errors import ConfigError
from builder.serve.service import ServingCore
from builder.serve.status import RpcStatus


def _spec_version(spec: Any) -> int | None:
    return spec.version.value if spec.HasField("version") else None


def _answer(context: Any, fn: Callable[[], Any]) -> Any:
    """Run one request; an RpcStatus becomes the call's status code and details."""
    try:
        return fn()
    except RpcStatus as e:
        context.abort(grpc.StatusCode[e.code], e.message)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, core: ServingCore) -> None:
        self.core = core

    def Predict(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC method name
        return _answer(context, lambda: self.core.predict_proto(request))

    def GetModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        return _answer(context, lambda: self._metadata(request))

    def _metadata(self, request: Any) -> Any:
        if not request.HasField("model_spec"):
            raise RpcStatus("INVALID_ARGUMENT", "Missing ModelSpec")
        if not request.metadata_field:
            raise RpcStatus("INVALID_ARGUMENT", "GetModelMetadataRequest must specify at least one metadata_field")
        for f in request.metadata_field:
            if f != "signature_def":
                raise RpcStatus("INVALID_ARGUMENT", f"Metadata field {f} is not supported")
        spec = request.model_spec
        name, v, sdm = self.core.metadata_parts(spec.name, _spec_version(spec), spec.version_label or None)
        resp = get_model_metadata_pb2.GetModelMetadataResponse()
        resp.model_spec.name = name
        resp.model_spec.version.value = v
        resp.metadata["signature_def"].Pack(sdm)
        return resp

    def Classify(self, request: Any, context: Any) -> Any:  # noqa: N802
        return _answer(context, lambda: self.core.classify_proto(request))

    def Regress(self, request: Any, context: Any) -> Any:  # noqa: N802
        return _answer(context, lambda: self.core.regress_proto(request))

    def MultiInference(self, request: Any, context: Any) -> Any:  # noqa: N802
        return _answer(context, lambda: self.core.multi_inference_proto(request))


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, core: ServingCore, reload_config: Callable[[list[ModelEntry]], list[str]]) -> None:
        self.core = core
        self.reload_config = reload_config

    def GetModelStatus(self, request: Any, context: Any) -> Any:  # noqa: N802
        def status() -> Any:
            if not request.HasField("model_spec"):
                raise RpcStatus("INVALID_ARGUMENT", "Missing ModelSpec")
            spec = request.model_spec
            return self.core.status_proto(spec.name, _spec_version(spec), spec.version_label or None)

        return _answer(context, status)

    def HandleReloadConfigRequest(self, request: Any, context: Any) -> Any:  # noqa: N802
        from tensorflow.core.protobuf import error_codes_pb2

        resp = model_management_pb2.ReloadConfigResponse()
        try:
            try:
                entries = entries_from_proto(request.config, "ReloadConfigRequest.config")
            except ConfigError as e:
                raise RpcStatus("INVALID_ARGUMENT", str(e)) from None
            errors = self.reload_config(entries)
            if errors:
                raise RpcStatus("UNKNOWN", "; ".join(errors))
            resp.status.error_code = error_codes_pb2.OK
            return resp
        except RpcStatus as e:
            resp.status.error_code = error_codes_pb2.Code.Value(e.code)
            resp.status.error_message = e.message
            context.set_code(grpc.StatusCode[e.code])
            context.set_details(e.message)
            return resp


def start_grpc_server(core: ServingCore, reload_config: Callable[[list[ModelEntry]], list[str]],
                      host: str, port: int, max_message_bytes: int, max_threads: int) -> tuple[Any, int]:
    """Start the gRPC server; returns (server, bound port). A port that cannot be bound raises
    RuntimeError so the caller can word the error for its flag."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="tfs-grpc"),
        options=[("grpc.max_receive_message_length", max_message_bytes),
                 ("grpc.max_send_message_length", max_message_bytes),
                 ("grpc.so_reuseport", 0)],
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(core), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(core, reload_config), server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:
        bound = 0
    if not bound:
        raise RuntimeError(f"cannot bind {host}:{port}")
    server.start()
    return server, bound

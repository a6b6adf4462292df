"""Compatibility names for code written before ``builder/serve`` was split into modules.

New code imports from the module that defines a name: ``local`` (LocalServer, serve_command),
``handles`` (ServerHandle, ProcessServer, ContainerServer, probes), ``client`` (the TF Serving
client), ``codec``, ``servable``, ``manager``, ``metrics``, ``status``, and
``builder.config.models_config`` (ModelEntry and the models.config parser). Nothing is defined
here; remove this module once the benchmark and the scripts that still use it have moved.
"""

from __future__ import annotations

from builder.config.models_config import (  # noqa: F401 - re-exported
    ModelEntry,
    entries_from_proto,
    model_server_config_text,
    parse_model_server_config,
    read_model_server_config,
)
from builder.serve.client import GRPC_MAX_MESSAGE_BYTES  # noqa: F401
from builder.serve.handles import (  # noqa: F401
    LOG_BEGIN,
    LOG_END,
    ContainerServer,
    ProcessServer,
    ServerHandle,
    docker_unavailable_reason,
    gpu_unavailable_reason,
)
from builder.serve.local import DEFAULT_REST_MAX_BODY_BYTES, LocalServer, serve_command  # noqa: F401
from builder.serve.status import HTTP_STATUS, RpcStatus  # noqa: F401

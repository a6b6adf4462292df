"""The REST front end: TF Serving's ``/v1/models/...`` API over HTTP/1.1.

Paths follow ``http_rest_api_util.cc`` (two regular expressions, case-insensitive); answers are
JSON, errors ``{"error": message}`` with the HTTP status of the gRPC code.
"""

from __future__ import annotations

import json
import re
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from builder.serve.service import ServingCore
from builder.serve.status import RpcStatus

# The two path patterns of tensorflow_serving/model_servers/http_rest_api_util.cc.
PREDICT_RE = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE,
)
STATUS_RE = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE,
)


def route(core: ServingCore, method: str, path: str, body: bytes) -> Any:
    """One REST API request -> the JSON document to answer with (RpcStatus on failure)."""
    from google.protobuf import json_format

    if not path.lower().startswith("/v1/"):
        raise RpcStatus("NOT_FOUND", f"no handler for {method} {path}: the REST API lives under /v1/")
    m = (PREDICT_RE if method == "POST" else STATUS_RE).fullmatch(path)
    if m is None or method not in ("GET", "POST"):
        raise RpcStatus("INVALID_ARGUMENT", f"Malformed request: {method} {path}")
    name = unquote(m.group(1) or "")
    version = int(m.group(2)) if m.group(2) else None
    label = unquote(m.group(3)) if m.group(3) else None
    if method == "POST":
        if m.group(4).lower() != "predict":
            raise RpcStatus("UNIMPLEMENTED",
                            f"{m.group(4)} is not implemented by the local tfs-builder server; use "
                            "tensorflow/serving for it")
        return core.predict_rest(name, version, label, body)
    if (m.group(4) or "").lower() == "metadata":
        name, v, sdm = core.metadata_parts(name, version, label)
        sig = json_format.MessageToDict(sdm, preserving_proto_field_name=True,
                                        including_default_value_fields=True)
        return {"model_spec": {"name": name, "signature_name": "", "version": str(v)},
                "metadata": {"signature_def": sig}}
    resp = core.status_proto(name, version, label)
    return json_format.MessageToDict(resp, including_default_value_fields=True)


class RestHandler(BaseHTTPRequestHandler):
    """http.server handler; ``make_handler`` binds the core and limits."""

    protocol_version = "HTTP/1.1"
    server_version = "tfs-builder-local"
    core: ServingCore
    max_body: int
    metrics_path: str | None

    def setup(self) -> None:
        super().setup()
        # Headers and body go out as two writes; without NODELAY, Nagle + the client's
        # delayed ACK add ~40 ms to every keep-alive response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # per-request access logs would drown the load/unload log

    def _send(self, status: int, payload: Any, content_type: str = "application/json") -> None:
        data = payload if isinstance(payload, bytes) else (json.dumps(payload, indent=None) + "\n").encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise RpcStatus("INVALID_ARGUMENT", "Content-Length is not an integer") from None
        if n > self.max_body:
            # Drain (bounded) so the client reads our answer instead of a reset connection.
            left = n if n <= 4 * self.max_body else 0
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 20))
                if not chunk:
                    break
                left -= len(chunk)
            self.close_connection = True
            raise RpcStatus("RESOURCE_EXHAUSTED",
                            f"Request body of {n} bytes exceeds the limit of {self.max_body} bytes "
                            "(--rest_api_max_body_bytes)")
        return self.rfile.read(n) if n > 0 else b""

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        try:
            body = self._body()  # always drain it, or keep-alive would read it as a request
            if self.metrics_path and method == "GET" and path == self.metrics_path:
                self._send(200, self.core.metrics.text().encode(), "text/plain; version=0.0.4")
                return
            self._send(200, route(self.core, method, path, body))
        except RpcStatus as e:
            self._send(e.http_status, {"error": e.message})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # noqa: BLE001 - a bug must still answer 500, not hang the client
            self.core.manager.log.exception("internal error serving %s %s", method, path)
            self._send(500, {"error": f"internal error: {type(e).__name__}: {e}"})

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")


def make_handler(core: ServingCore, max_body: int, metrics_path: str | None) -> type:
    return type("Handler", (RestHandler,), {"core": core, "max_body": max_body, "metrics_path": metrics_path})


class QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # client disconnects are not server errors

"""The REST front end: TF Serving's ``/v1/models/...`` API over HTTP/1.1, on aiohttp.

Why aiohttp (measured, see docs/DESIGN.md "serve"): ``http.server`` gave one thread per
connection (600 idle sockets -> 617 threads), no chunked request bodies, no timeouts, and every
protocol attack needed its own patch. aiohttp's C parser (llhttp) handles chunked bodies and
rejects malformed or ambiguous framing (duplicate or invalid Content-Length, Content-Length
with Transfer-Encoding); idle connections cost a few KB and close after
``--rest_api_idle_timeout_seconds``. Work that holds the GIL or runs TensorFlow (parse, run,
encode) goes to a thread pool, so the event loop keeps accepting and reading while a big request
is being converted.

Paths follow ``http_rest_api_util.cc`` (two regular expressions, case-insensitive); every answer
- errors included, for any method and any malformed request - is JSON ``{"error": message}``
with the HTTP status of the gRPC code (``status.HTTP_STATUS``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from builder.serve.limits import Limits
from builder.serve.service import ServingCore
from builder.serve.status import RpcStatus, invalid

# The two path patterns of tensorflow_serving/model_servers/http_rest_api_util.cc.
PREDICT_RE = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE,
)
STATUS_RE = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE,
)
_INT64_MAX = 2**63 - 1


_TRIM_BYTES = 8 << 20  # after a body this big, hand freed heap memory back to the OS


def _release_free_memory() -> None:
    """glibc keeps freed big buffers in the heap (its mmap threshold grows with use), so one
    200 MB request would leave the process hundreds of MB bigger for good; malloc_trim returns
    the free pages. Best effort: a no-op where libc has no malloc_trim."""
    import ctypes

    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


class Body:
    """A request body handed to a worker thread, which takes it (and so frees it once parsed)."""

    def __init__(self, data: bytes | bytearray) -> None:
        self._data: bytes | bytearray | None = data
        self.size = len(data)

    def take(self) -> bytes | bytearray:
        data, self._data = self._data or b"", None
        return data


def _model_info(path: str, m: re.Match) -> tuple[str, int | None, str | None]:
    """ParseModelInfo: URL-decoded name and label, the version as an int64."""
    name = unquote(m.group(1) or "", errors="replace")
    version = None
    if m.group(2):
        version = int(m.group(2))
        if version > _INT64_MAX:
            raise invalid(f"Failed to convert version: {m.group(2)} to numeric.")
    label = unquote(m.group(3), errors="replace") if m.group(3) else None
    if version is not None and label is not None:  # the regex cannot produce both; kept for parity
        raise invalid(f"Both model version ({version}) and model version label ({label}) cannot be supplied.")
    return name, version, label


def route(core: ServingCore, method: str, path: str, body: Any) -> list[bytes] | bytes | dict:
    """One REST API request -> the answer (bytes of JSON, or a JSON-able dict); RpcStatus on
    failure. Runs in a worker thread."""
    from google.protobuf import json_format

    if not path.lower().startswith("/v1/"):
        raise RpcStatus("NOT_FOUND", f"no handler for {method} {path}: the REST API lives under /v1/")
    m = (PREDICT_RE if method == "POST" else STATUS_RE if method == "GET" else None)
    m = m.fullmatch(path) if m is not None else None
    if m is None:
        raise invalid(f"Malformed request: {method} {path}")
    name, version, label = _model_info(path, m)
    if method == "POST":
        api = m.group(4).lower()
        if api == "predict":
            return core.predict_rest(name, version, label, body)
        return core.classify_rest(name, version, label, body, api)
    if (m.group(4) or "").lower() == "metadata":
        name, v, sdm = core.metadata_parts(name, version, label)
        sig = json_format.MessageToDict(sdm, preserving_proto_field_name=True,
                                        including_default_value_fields=True)
        return {"model_spec": {"name": name, "signature_name": "", "version": str(v)},
                "metadata": {"signature_def": sig}}
    resp = core.status_proto(name, version, label)
    return json_format.MessageToDict(resp, including_default_value_fields=True)


def _json_response(status: int, payload: bytes | dict, close: bool = False) -> Any:
    from aiohttp import web

    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    resp = web.Response(status=status, body=data, content_type="application/json")
    if close:
        resp.force_close()
    return resp


async def _stream(request: Any, status: int, parts: list[bytes]) -> Any:
    """A big JSON answer written piece by piece (never joined into one bytes object)."""
    from aiohttp import web

    size = sum(len(p) for p in parts)
    if size <= 1 << 20:
        return _json_response(status, b"".join(parts))
    resp = web.StreamResponse(status=status, headers={"Content-Type": "application/json"})
    resp.content_length = size
    await resp.prepare(request)
    for i, part in enumerate(parts):
        parts[i] = b""  # freed once written
        await resp.write(part)
    await resp.write_eof()
    return resp


def _error(e: RpcStatus, close: bool = False) -> Any:
    return _json_response(e.http_status, {"error": e.message}, close)


class RestServer:
    """aiohttp's low-level server on its own event loop thread, handlers in a thread pool."""

    def __init__(self, core: ServingCore, limits: Limits, metrics_path: str | None, log: logging.Logger) -> None:
        self.core, self.limits, self.metrics_path, self.log = core, limits, metrics_path, log
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=limits.rest_api_num_threads, thread_name_prefix="tfs-rest")
        self._server: Any = None
        self._runner: Any = None

    # -- life cycle ------------------------------------------------------------------------------
    def start(self, host: str, port: int) -> int:
        """Bind and serve; returns the bound port. An OSError (port in use) propagates."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._listen(host, port))
            except BaseException as e:  # noqa: BLE001 - handed to the starting thread
                failure.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._close())
            loop.close()

        self._thread = threading.Thread(target=run, name="tfs-rest-loop", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self.port

    async def _listen(self, host: str, port: int) -> None:
        from aiohttp import web, web_protocol

        limits = self.limits
        log = self.log

        class Protocol(web_protocol.RequestHandler):
            def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                             message: str | None = None) -> Any:
                """Malformed HTTP (framing, header sizes, bad method token): JSON, then close."""
                text = message or (str(exc) if exc else "") or HTTPStatus(status).phrase
                text = (text.strip().splitlines() or [HTTPStatus(status).phrase])[0].rstrip(": ")
                if status >= 500:
                    log.error("REST front end failed: %s", text)
                    return _json_response(status, {"error": f"internal error: {text}"}, close=True)
                return _json_response(status, {"error": f"Malformed request: {text}"}, close=True)

        class Server(web.Server):
            def __call__(self) -> Any:
                return Protocol(self, loop=self._loop, **self._kwargs)

        self._server = Server(self._handle, keepalive_timeout=limits.rest_idle_timeout_seconds,
                              lingering_time=2.0, access_log=None, auto_decompress=True,
                              handler_cancellation=False, logger=log)
        loop = asyncio.get_running_loop()
        self._runner = await loop.create_server(self._server, host, port, backlog=256, reuse_address=True)
        self.port = self._runner.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._runner is not None:
            self._runner.close()
            await self._runner.wait_closed()
        if self._server is not None:
            await self._server.shutdown(2.0)

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- requests --------------------------------------------------------------------------------
    async def _handle(self, request: Any) -> Any:
        method = request.method
        path = request.raw_path.split("?", 1)[0]
        try:
            if len(request.headers.getall("Content-Length", [])) > 1:
                raise RpcStatus("INVALID_ARGUMENT", "Malformed request: more than one Content-Length header")
            if method == "OPTIONS":
                return self._preflight(request)
            if self.metrics_path and method == "GET" and path == self.metrics_path:
                return self._metrics()
            status, payload = await self._api(request, method, path)
            if isinstance(payload, list):
                return await _stream(request, status, payload)
            return _json_response(status, payload)
        except RpcStatus as e:
            # The body may be unread (refused before reading): answer, then close the connection.
            return _error(e, close=True)
        except ConnectionError:  # the client went away mid-body: nobody to answer
            return _json_response(499, {"error": "client closed the connection"}, close=True)

    def _preflight(self, request: Any) -> Any:
        """CORS preflight as http_server.cc answers it (an Origin header is required)."""
        origin = request.headers.get("Origin", "")
        if not re.search(r"https?://", origin):
            raise RpcStatus("FAILED_PRECONDITION", "Origin header is missing in CORS preflight")
        return _json_response(200, b"")

    def _metrics(self) -> Any:
        from aiohttp import web

        return web.Response(status=200, body=self.core.metrics.text().encode(),
                            headers={"Content-Type": "text/plain; version=0.0.4"})

    async def _api(self, request: Any, method: str, path: str) -> tuple[int, list[bytes] | bytes | dict]:
        declared = request.content_length
        limit = self.limits.rest_max_body_bytes
        if declared is not None and declared > limit:
            raise _too_large(declared, limit)
        held = self.core.budget.reservation()
        try:
            held.add(declared or 0)
            # No local name keeps the body: the worker takes it from Body and frees it once parsed.
            body = Body(await self._read_body(request, declared, held))
            return await asyncio.get_running_loop().run_in_executor(self._pool, self._work, method, path, body)
        finally:
            held.release()

    async def _read_body(self, request: Any, declared: int | None, held: Any) -> bytearray:
        """Read the body with a timeout between reads; a chunked body is admitted against the
        limit and the in-flight budget as it arrives."""
        buf = bytearray()
        limit, timeout = self.limits.rest_max_body_bytes, self.limits.rest_read_timeout_seconds
        while True:
            try:
                chunk = await asyncio.wait_for(request.content.readany(), timeout)
            except TimeoutError:
                raise RpcStatus("DEADLINE_EXCEEDED",
                                f"request body not received within {timeout:g} s (got {len(buf)} of "
                                f"{declared if declared is not None else 'chunked'} bytes; "
                                "--rest_api_read_timeout_seconds)", http=408) from None
            if not chunk:
                return buf
            buf += chunk
            if declared is None:
                if len(buf) > limit:
                    raise _too_large(len(buf), limit, chunked=True)
                held.add(len(chunk))

    def _work(self, method: str, path: str, body: Body) -> tuple[int, list[bytes] | bytes | dict]:
        """In a worker thread: route; the outcome as (HTTP status, JSON payload)."""
        big = body.size >= _TRIM_BYTES
        try:
            return 200, route(self.core, method, path, body)
        except RpcStatus as e:
            return e.http_status, {"error": e.message}
        except Exception as e:  # noqa: BLE001 - a bug must still answer, with its traceback logged
            self.log.exception("internal error serving %s %s", method, path)
            return 500, {"error": f"internal error: {type(e).__name__}: {e}"}
        finally:
            if big:
                _release_free_memory()


def _too_large(n: int, limit: int, chunked: bool = False) -> RpcStatus:
    what = f"more than {limit}" if chunked else str(n)
    return RpcStatus("RESOURCE_EXHAUSTED",
                     f"Request body of {what} bytes exceeds the limit of {limit} bytes (--rest_api_max_body_bytes)")

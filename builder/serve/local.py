"""The local TF-Serving-compatible server (``LocalServer``) and ``python -m builder serve``.

Why it exists: the builder promises that a repository it wrote *serves* with the right answers.
The real proof is ``tensorflow/serving`` in a container, but many machines (this project's CI
included) have no Docker engine. ``LocalServer`` speaks the same protocols from the same protos,
takes ``tensorflow_model_server``'s flags and follows its rules (version directories, version
policies, labels, warmup records run at load, base path and config polling, error codes), so one
integration suite runs against either backend with the official client. Its life-cycle is TF
Serving 2.17's (``builder/config/lifecycle.py``, applied by ``manager.ModelManager``): labels are
checked before models are added, a failed new version leaves the old one serving, failed loads
are retried on --max_num_load_retries / --load_retry_interval_micros, and start-up waits for the
latest version of every model and fails (exit 1, TF Serving's message) when one cannot load.
Without ``--enable_batching`` a request runs as it comes, at the batch size the client sent; with
it, concurrent requests are merged by ``builder.serve.batching`` as TF Serving's BatchingSession does.

This module imports nothing heavy at import time (``python -m builder --help`` imports it).
"""

from __future__ import annotations

import collections
import logging
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from builder.config import lifecycle
from builder.config.models_config import ModelEntry, parse_model_server_config, read_model_server_config
from builder.core.errors import ConfigError, InputError, ServerStartError, ServingError
from builder.serve import batching
from builder.serve.client import GRPC_MAX_MESSAGE_BYTES
from builder.serve.handles import ServerHandle
from builder.serve.limits import InflightBytes, Limits
from builder.serve.manager import ModelManager
from builder.serve.metrics import Metrics
from builder.serve.service import ServingCore
from builder.serve.status import RpcStatus

DEFAULT_REST_MAX_BODY_BYTES = 256 * 1024 * 1024


class _LogBuffer(logging.Handler):
    def __init__(self, echo: bool) -> None:
        super().__init__()
        self.lines: collections.deque[str] = collections.deque(maxlen=20000)
        self.echo = echo
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        self.lines.append(line)
        if self.echo:
            print(line, file=sys.stderr, flush=True)


def _initial_entries(model_config_file: str, model_name: str,
                     model_base_path: str | os.PathLike) -> tuple[list[ModelEntry], str]:
    """The models to serve from --model_config_file, or from --model_name/--model_base_path."""
    if model_config_file and (model_name or model_base_path):
        raise InputError("pass either --model_config_file or --model_name/--model_base_path, not both")
    if model_config_file:
        entries = read_model_server_config(model_config_file)
        return entries, Path(model_config_file).read_text(encoding="utf-8")
    if model_name and model_base_path:
        base = os.path.abspath(os.fspath(model_base_path))
        if not os.path.isdir(base):
            raise InputError(f"--model_base_path {base} is not a directory: pass the model's "
                             "directory (the one holding numeric version folders)")
        return [ModelEntry(str(model_name), base)], ""
    raise InputError("no models to serve: pass --model_config_file models.config, or "
                     "--model_name NAME --model_base_path /abs/path/NAME")


class LocalServer(ServerHandle):
    """The TF-Serving-compatible server in this process (REST + gRPC threads, poll thread)."""

    kind = "local"

    def __init__(
        self,
        model_config_file: str | os.PathLike = "",
        model_name: str = "",
        model_base_path: str | os.PathLike = "",
        port: int = 0,
        rest_api_port: int = 0,
        host: str = "127.0.0.1",
        model_config_file_poll_wait_seconds: float = 0,
        file_system_poll_wait_seconds: float = 1,
        enable_model_warmup: bool = True,
        rest_api_max_body_bytes: int = DEFAULT_REST_MAX_BODY_BYTES,
        grpc_max_message_bytes: int = GRPC_MAX_MESSAGE_BYTES,
        monitoring_config_file: str | os.PathLike = "",
        batching_parameters_file: str | os.PathLike = "",
        grpc_max_threads: int = 16,
        echo_log: bool = False,
        limits: Limits | None = None,
        enable_signature_method_name_check: bool = False,
        allow_version_labels_for_unavailable_models: bool = False,
        max_num_load_retries: int = lifecycle.DEFAULT_MAX_NUM_LOAD_RETRIES,
        load_retry_interval_micros: int = lifecycle.DEFAULT_LOAD_RETRY_INTERVAL_MICROS,
        enable_batching: bool = False,
        mixed_precision: str = "",
    ) -> None:
        """Flags as ``python -m builder serve`` documents them; ``limits`` (if given) sets every
        size/time/thread limit at once, else they come from the individual arguments. The
        life-cycle flags default to tensorflow_model_server's (labels only on AVAILABLE
        versions, 5 retries 60 s apart)."""
        super().__init__()
        self.model_config_file = str(model_config_file or "")
        self.host = host
        self._want_ports = (int(port), int(rest_api_port))
        self.config_poll = float(model_config_file_poll_wait_seconds)
        self.fs_poll = float(file_system_poll_wait_seconds)
        self.limits = limits or Limits(rest_max_body_bytes=int(rest_api_max_body_bytes),
                                       grpc_max_message_bytes=int(grpc_max_message_bytes),
                                       grpc_max_threads=int(grpc_max_threads))
        self._log_handler = _LogBuffer(echo_log)
        self.log = logging.getLogger(f"builder.serve.local.{id(self)}")
        self.log.propagate = False
        self.log.setLevel(logging.INFO)
        self.log.addHandler(self._log_handler)
        self.metrics_path = self._read_monitoring(monitoring_config_file)
        if batching_parameters_file:  # a bad file fails before anything else starts
            batching.read_options(batching_parameters_file)
        self.expected_entries, self._config_text = _initial_entries(self.model_config_file, model_name,
                                                                   model_base_path)
        self.lifecycle_flags = lifecycle.ServerFlags(
            allow_version_labels_for_unavailable_models=bool(allow_version_labels_for_unavailable_models),
            max_num_load_retries=int(max_num_load_retries),
            load_retry_interval_micros=int(load_retry_interval_micros),
            file_system_poll_wait_seconds=self.fs_poll,  # seconds; fractions are allowed here
            model_config_file_poll_wait_seconds=self.config_poll,
            enable_model_warmup=bool(enable_model_warmup))
        from builder.optimize import bf16  # bf16 hook (issue 12): TF Serving's --mixed_precision

        self.mixed_precision = str(mixed_precision or "")
        self.batcher = batching.from_flags(enable_batching, batching_parameters_file, self.log, RpcStatus)
        self.manager = ModelManager(self.log, enable_model_warmup, enable_signature_method_name_check,
                                    flags=self.lifecycle_flags, batcher=self.batcher,
                                    session_config=bf16.server_session_config(self.mixed_precision, self.log))
        self.metrics = Metrics()
        self.core = ServingCore(self.manager, self.metrics, InflightBytes(self.limits.max_inflight_request_bytes))
        self._grpc: Any = None
        self._http: Any = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    def _read_monitoring(self, path: str | os.PathLike) -> str | None:
        if not path:
            return None
        from builder.config.companions import PROMETHEUS_PATH, parse_monitoring_config

        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise InputError(f"--monitoring_config_file {path}: cannot read ({e})") from None
        msg = parse_monitoring_config(text, str(path))
        if not msg.prometheus_config.enable:
            return None
        return msg.prometheus_config.path or PROMETHEUS_PATH

    def start(self) -> LocalServer:
        """``Server::BuildAndStart``: apply the first config (labels checked before any model is
        added), wait until the latest aspired version of every model is AVAILABLE, then open the
        ports. A refused label or a latest version that fails every load attempt raises
        ServerStartError with TF Serving's message; a model with no version yet keeps start-up
        waiting (``stop()`` from another thread ends the wait)."""
        self._t_start = time.monotonic()
        try:
            self.manager.apply_config(self.expected_entries)
        except RpcStatus as e:
            self._startup_failed(f"{e.code}: {e.message}")
        failed = self.manager.wait_for_models([e.name for e in self.expected_entries], self._stop)
        if failed:
            self._startup_failed(f"UNKNOWN: {len(failed)} servable(s) did not become available: "
                                 + "{" + "".join(f"{{{d}}}, " for d in failed) + "}")
        if self._stop.is_set():
            self.manager.shutdown()
            if self.batcher is not None:
                self.batcher.stop()
            raise ServingError("local server: stopped before start-up finished")
        self._start_grpc()
        try:
            self._start_http()
        except BaseException:
            self._grpc.stop(0)
            raise
        self.log.info("gRPC listening on %s:%d", self.host, self.grpc_port)
        self.log.info("REST listening on %s:%d", self.host, self.rest_port)
        t = threading.Thread(target=self._poll_loop, name="tfs-local-poll", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def _startup_failed(self, status: str) -> None:
        self.log.error("Failed to start server. Error: %s", status)
        if self.batcher is not None:
            self.batcher.stop()
        self.manager.shutdown()
        if not self._log_handler.echo:
            self.print_log()
        raise ServerStartError(f"Failed to start server. Error: {status}")

    def _start_grpc(self) -> None:
        from builder.serve.grpc_api import start_grpc_server

        want = self._want_ports[0]
        try:
            self._grpc, self.grpc_port = start_grpc_server(self.core, self.reload_config, self.host, want,
                                                           self.limits.grpc_max_message_bytes,
                                                           self.limits.grpc_max_threads)
        except RuntimeError:
            raise ServingError(f"--port {want}: cannot listen for gRPC on {self.host}:{want} (in use?): "
                               "pick another port, or 0 for a free one") from None

    def _start_http(self) -> None:
        from builder.serve.rest import RestServer

        want = self._want_ports[1]
        server = RestServer(self.core, self.limits, self.metrics_path, self.log)
        try:
            self.rest_port = server.start(self.host, want)
        except OSError as e:
            server.stop()
            raise ServingError(f"--rest_api_port {want}: cannot listen on {self.host}:{want} ({e.strerror}): "
                               "pick another port, or 0 for a free one") from None
        self._http = server

    def reload_config(self, entries: list[ModelEntry]) -> list[str]:
        """Apply a new config now (the gRPC HandleReloadConfigRequest path). A refused config
        raises RpcStatus and changes nothing; otherwise returns why added models did not
        become available (empty: all did)."""
        self.log.info("Reloading config: %s", ", ".join(e.name for e in entries))
        added = self.manager.apply_config(entries)
        self.expected_entries = entries
        return self._wait_for_added(added)

    def _wait_for_added(self, added: list[str]) -> list[str]:
        """``WaitUntilModelsAvailable`` for the models a reload added. Two deliberate limits, so a
        reload never blocks forever where TF Serving's would: with polling off (0 or negative)
        an added model is reported at once (tensorflow_model_server never lists its base path
        and blocks the reload: serving#1519), and a model with no version yet is not waited
        for (a warning says TF Serving would wait)."""
        if not added:
            return []
        if lifecycle.poll_mode(self.fs_poll) != "periodic":
            msgs = [f"model {n}: --file_system_poll_wait_seconds={self.fs_poll:g} lists no base path after "
                    "start-up, so tensorflow_model_server never loads a model added later and this reload "
                    "would block (serving#1519): poll periodically or restart the server" for n in added]
            for m in msgs:
                self.log.error("%s", m)
            return msgs
        waiting = [n for n in added if self.manager.has_versions(n)]
        for n in sorted(set(added) - set(waiting)):
            self.log.warning("model %s has no version yet: not waiting for it (TF Serving's reload "
                             "would block until one appears)", n)
        failed = self.manager.wait_for_models(waiting, self._stop)
        if not failed:
            return []
        return [f"{len(failed)} model(s) did not become available: {{" + "".join(f"{{{d}}}, " for d in failed) + "}"]

    def _poll_loop(self) -> None:
        """File-system polls and load retries when due (``ModelManager.tick``); the config file
        every --model_config_file_poll_wait_seconds when that is > 0 (``config_poll_mode``)."""
        periodic_cfg = lifecycle.config_poll_mode(self.config_poll) == "periodic" and self.model_config_file
        next_cfg = time.monotonic() + self.config_poll if periodic_cfg else math.inf
        while not self._stop.is_set():
            now = time.monotonic()
            wake = min(next_cfg, self.manager.next_due())
            if wake > now:
                self._stop.wait(min(wake - now, 0.5))
                continue
            try:
                if now >= next_cfg:
                    next_cfg = now + self.config_poll
                    self._poll_config()
                self.manager.tick()
            except Exception:  # noqa: BLE001 - the poller must survive anything a disk does
                self.log.exception("poll failed")

    def _poll_config(self) -> None:
        """``PollFilesystemAndReloadConfig``: a file that cannot be read or parsed, or whose
        labels are refused, keeps the current config; the refused file is tried again at the
        next poll (a label may become valid once its version is AVAILABLE)."""
        try:
            text = Path(self.model_config_file).read_text(encoding="utf-8")
        except OSError as e:
            self.log.error("cannot read %s (%s): keeping the current config", self.model_config_file, e)
            return
        if text == self._config_text:
            return
        try:
            entries = parse_model_server_config(text, self.model_config_file)
            added = self.manager.apply_config(entries)
        except (ConfigError, RpcStatus) as e:
            self.manager.warn_once(f"{self.model_config_file}: {getattr(e, 'message', e)}: keeping the current "
                                   "config", logging.ERROR)
            return
        self._config_text = text
        self.expected_entries = entries
        self.log.info("config file %s changed: applied it", self.model_config_file)
        for err in self._wait_for_added(added):
            self.log.error("%s", err)

    def log_text(self) -> str:
        return "\n".join(self._log_handler.lines) + "\n"

    def stop(self) -> None:
        self._stop.set()
        if self._http is not None:
            self._http.stop()
            self._http = None
        if self._grpc is not None:
            self._grpc.stop(grace=1).wait(5)
            self._grpc = None
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()
        if self.batcher is not None:  # run what was queued, end the batch threads
            self.batcher.stop()
        self.manager.shutdown()


def serve_command(
    port: int = 8500,
    rest_api_port: int = 8501,
    model_config_file: str = "",
    model_name: str = "",
    model_base_path: str = "",
    model_config_file_poll_wait_seconds: float = 0,
    file_system_poll_wait_seconds: float = 1,
    allow_version_labels_for_unavailable_models: bool = False,
    max_num_load_retries: int = lifecycle.DEFAULT_MAX_NUM_LOAD_RETRIES,
    load_retry_interval_micros: int = lifecycle.DEFAULT_LOAD_RETRY_INTERVAL_MICROS,
    enable_model_warmup: bool = True,
    rest_api_max_body_bytes: int = DEFAULT_REST_MAX_BODY_BYTES,
    max_inflight_request_bytes: int = Limits.max_inflight_request_bytes,
    grpc_max_message_bytes: int = GRPC_MAX_MESSAGE_BYTES,
    rest_api_idle_timeout_seconds: float = Limits.rest_idle_timeout_seconds,
    rest_api_read_timeout_seconds: float = Limits.rest_read_timeout_seconds,
    rest_api_num_threads: int = Limits.rest_api_num_threads,
    grpc_max_threads: int = Limits.grpc_max_threads,
    enable_signature_method_name_check: bool = False,
    monitoring_config_file: str = "",
    batching_parameters_file: str = "",
    enable_batching: bool = False,
    host: str = "127.0.0.1",
    mixed_precision: str = "",
) -> None:
    """Serve a model repository locally, speaking TF Serving's REST and gRPC APIs.

    For machines without Docker: same flags and protocols as tensorflow_model_server (Predict,
    Classify, Regress, MultiInference, metadata, status, config reload), so clients and tests
    written for TF Serving run unchanged. Runs until Ctrl-C or SIGTERM.

    Args:
        port: gRPC port (PredictionService, ModelService); 0 picks a free port. The chosen
            port is printed as "gRPC listening on HOST PORT" (host and port joined by a colon).
        rest_api_port: REST port for /v1/models/...; 0 picks a free port, printed as "REST
            listening on ..." in the same way.
        model_config_file: models.config (ModelServerConfig text proto) listing the models,
            their base paths, version policies and labels. Base paths must be absolute.
        model_name: serve one model under this name (instead of --model_config_file).
        model_base_path: that model's directory holding version folders (any name that parses
            as an integer, e.g. 3 or 00000123).
        model_config_file_poll_wait_seconds: re-read --model_config_file this often (0 or
            negative: read once). A config that fails to parse, or whose labels are refused, is
            ignored and the old one kept (tried again at the next poll).
        file_system_poll_wait_seconds: re-scan base paths for added or removed versions this
            often (0: scan once at start-up, so versions added later never load; negative:
            never scan, so start-up waits forever - both as in TF Serving).
        allow_version_labels_for_unavailable_models: accept version_labels that point at a
            version not AVAILABLE yet (labels are checked before any model loads, so without
            it a first config with labels fails start-up); an existing label still cannot move
            to a version that is not AVAILABLE. TF Serving's flag; the project's image passes it.
        max_num_load_retries: retries of a failed load before the version is left in error
            (not loaded again while its directory stays on disk). TF Serving's default 5.
        load_retry_interval_micros: wait between load retries, in microseconds (negative: no
            wait). TF Serving's default 60000000 (1 minute). Start-up waits for the latest
            version of every model through its retries and exits 1 if it still fails.
        enable_model_warmup: run each version's assets.extra/tf_serving_warmup_requests
            (predict, classify, regress and multi_inference records) at load; a bad record
            fails that version's load, as in TF Serving.
        rest_api_max_body_bytes: REST bodies larger than this get RESOURCE_EXHAUSTED (HTTP
            429) without being parsed (chunked bodies: as soon as they pass it).
        max_inflight_request_bytes: total bytes of REST and gRPC requests being read or run at
            once; past it new requests get RESOURCE_EXHAUSTED (429) at once (a request is always
            admitted when nothing else is in flight).
        grpc_max_message_bytes: largest gRPC message accepted or sent (TF Serving: 2^31-1).
        rest_api_idle_timeout_seconds: close a REST connection idle (no complete request) this
            long.
        rest_api_read_timeout_seconds: answer 408 and close when a request body stalls this
            long between reads.
        rest_api_num_threads: threads that parse, run and encode REST requests.
        grpc_max_threads: threads that serve gRPC requests.
        enable_signature_method_name_check: Classify/Regress accept only signatures whose
            method_name is classify/regress (TF Serving's flag; off by default there too).
        monitoring_config_file: MonitoringConfig text proto; with prometheus_config.enable the
            REST port also serves request metrics at prometheus_config.path.
        batching_parameters_file: BatchingParameters text proto (max_batch_size,
            batch_timeout_micros, num_batch_threads, max_enqueued_batches, allowed_batch_sizes,
            pad_variable_length_inputs, ...); used with --enable_batching. Without it the file
            is only checked (tensorflow_model_server refuses to start then).
        enable_batching: merge concurrent requests to the same model version and signature into
            batches, as tensorflow_model_server --enable_batching does (TF Serving's defaults
            when no --batching_parameters_file is given).
        host: address to bind; 127.0.0.1 by default (0.0.0.0 listens on all interfaces).
        mixed_precision: bfloat16 turns on oneDNN's bf16 rewrite
            (auto_mixed_precision_onednn_bfloat16) for every model, as tensorflow_model_server
            --mixed_precision=bfloat16 does; what a bf16 serving-profile export wants.
    """
    _run_until_signalled(_server_from_flags(dict(locals())))


def _server_from_flags(f: dict[str, Any]) -> LocalServer:
    """serve_command's flags, checked (one-line InputError naming the flag), -> a LocalServer."""
    from builder.options import as_bool, as_float, as_int

    limits = Limits(
        rest_max_body_bytes=as_int(f["rest_api_max_body_bytes"], "--rest_api_max_body_bytes", minimum=1),
        max_inflight_request_bytes=as_int(f["max_inflight_request_bytes"], "--max_inflight_request_bytes",
                                          minimum=1),
        grpc_max_message_bytes=as_int(f["grpc_max_message_bytes"], "--grpc_max_message_bytes", minimum=1,
                                      maximum=GRPC_MAX_MESSAGE_BYTES),
        rest_idle_timeout_seconds=as_float(f["rest_api_idle_timeout_seconds"], "--rest_api_idle_timeout_seconds",
                                           positive=True),
        rest_read_timeout_seconds=as_float(f["rest_api_read_timeout_seconds"], "--rest_api_read_timeout_seconds",
                                           positive=True),
        rest_api_num_threads=as_int(f["rest_api_num_threads"], "--rest_api_num_threads", minimum=1),
        grpc_max_threads=as_int(f["grpc_max_threads"], "--grpc_max_threads", minimum=1),
    )
    return LocalServer(
        model_config_file=f["model_config_file"],
        model_name=f["model_name"],
        model_base_path=f["model_base_path"],
        port=as_int(f["port"], "--port", minimum=0, maximum=65535),
        rest_api_port=as_int(f["rest_api_port"], "--rest_api_port", minimum=0, maximum=65535),
        host=str(f["host"]),
        model_config_file_poll_wait_seconds=as_float(f["model_config_file_poll_wait_seconds"],
                                                     "--model_config_file_poll_wait_seconds"),
        file_system_poll_wait_seconds=as_float(f["file_system_poll_wait_seconds"], "--file_system_poll_wait_seconds"),
        enable_model_warmup=as_bool(f["enable_model_warmup"], "--enable_model_warmup"),
        allow_version_labels_for_unavailable_models=as_bool(f["allow_version_labels_for_unavailable_models"],
                                                            "--allow_version_labels_for_unavailable_models"),
        max_num_load_retries=as_int(f["max_num_load_retries"], "--max_num_load_retries", minimum=0,
                                    maximum=2**31 - 1),
        load_retry_interval_micros=as_int(f["load_retry_interval_micros"], "--load_retry_interval_micros",
                                          minimum=-(2**63), maximum=2**63 - 1),
        monitoring_config_file=f["monitoring_config_file"],
        batching_parameters_file=f["batching_parameters_file"],
        echo_log=True,
        limits=limits,
        enable_signature_method_name_check=as_bool(f["enable_signature_method_name_check"],
                                                   "--enable_signature_method_name_check"),
        enable_batching=as_bool(f["enable_batching"], "--enable_batching"),
        mixed_precision=str(f.get("mixed_precision") or ""),  # bf16 hook (issue 12)
    )


def _run_until_signalled(server: LocalServer) -> None:
    """Start, print the bound ports (ProcessServer and scripts parse these lines), and serve
    until SIGTERM or Ctrl-C; then stop cleanly and exit 0. A signal during start-up (which may
    wait for a model's first version) ends it cleanly too; a failed start-up raises
    ServerStartError (exit 1)."""
    stop = threading.Event()

    def on_sigterm(signum: int, frame: Any) -> None:
        stop.set()
        server._stop.set()  # ends a start-up wait as well

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        server.start()
        print(f"gRPC listening on {server.host}:{server.grpc_port}", flush=True)
        print(f"REST listening on {server.host}:{server.rest_port}", flush=True)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    except ServingError as e:
        if isinstance(e, ServerStartError) or not stop.is_set():
            raise
    finally:
        print("shutting down", flush=True)
        server.stop()
        signal.signal(signal.SIGTERM, previous)

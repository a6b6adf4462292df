"""Handles on a serving backend, one interface for all: the local server (``local``), ``python -m
builder serve`` in a child process, and ``tensorflow/serving`` in Docker; plus the probes that
say why a Docker engine or GPU cannot be used here.

Why one interface: the integration suite and CI run the same assertions against whichever
backend this machine can run, and readiness is checked the way a client would see it (gRPC
GetModelStatus), not through the server's internals.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from builder.config.models_config import ModelEntry, model_server_config_text, read_model_server_config
from builder.core.errors import ConfigError, ServingError, UnavailableError

LOG_BEGIN = "=" * 20 + " BEGIN server log ({}) " + "=" * 20
LOG_END = "=" * 20 + " END server log ({}) " + "=" * 20


class ServerHandle:
    """What the integration suite needs from any backend: start, wait until every configured
    version is AVAILABLE (checked through gRPC GetModelStatus, as a client would), addresses,
    the log, and stop. Usable as a context manager; on an exception the log is printed."""

    kind = "server"
    host = "127.0.0.1"
    grpc_port = 0
    rest_port = 0
    cold_start_seconds: float | None = None

    def __init__(self) -> None:
        self._t_start = 0.0
        self.expected_entries: list[ModelEntry] = []  # host-side view of the configuration

    @property
    def grpc_target(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.rest_port}"

    def start(self) -> ServerHandle:  # pragma: no cover - overridden
        raise NotImplementedError

    def stop(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def log_text(self) -> str:  # pragma: no cover - overridden
        return ""

    def expected_versions(self) -> dict[str, list[int]]:
        return {e.name: e.aspired(e.on_disk()) for e in self.expected_entries}

    def wait_until_ready(self, deadline: float = 60.0) -> float:
        """Block until every version the config + disk call for is AVAILABLE; returns seconds
        since start(). A version that ends in error, or the deadline, raises ServingError. A
        model with no version on disk yet is waited for (TF Serving's start-up waits too) and
        named if the deadline passes first."""
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc

        end = time.monotonic() + deadline
        pending = self.expected_versions()
        last = ""
        with grpc.insecure_channel(self.grpc_target) as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            while pending:
                self._check_alive()
                for name in list(pending):
                    if not pending[name]:  # no version on disk yet: look again
                        pending[name] = self.expected_versions().get(name, [])
                        if not pending[name]:
                            continue
                    last = self._poll_model(stub, name, pending) or last
                if pending and time.monotonic() > end:
                    missing = [n for n, vs in pending.items() if not vs]
                    if missing:
                        self._fail(f"no servable versions on disk for model(s) {', '.join(missing)} after "
                                   f"{deadline:.0f} s (the server waits for them): export a version first")
                    self._fail(f"not every version AVAILABLE after {deadline:.0f} s ({last})")
                if pending:
                    time.sleep(0.1)
        self.cold_start_seconds = time.monotonic() - self._t_start
        return self.cold_start_seconds

    def _poll_model(self, stub: Any, name: str, pending: dict[str, list[int]]) -> str:
        """One GetModelStatus for ``name``: drop it from ``pending`` once all its versions are
        AVAILABLE, fail on a version that ended in error; returns a progress line."""
        import grpc
        from tensorflow_serving.apis import get_model_status_pb2

        state_enum = get_model_status_pb2.ModelVersionStatus
        req = get_model_status_pb2.GetModelStatusRequest()
        req.model_spec.name = name
        try:
            resp = stub.GetModelStatus(req, timeout=5)
        except grpc.RpcError as e:
            return f"{name}: {e.code().name} {e.details()}"
        states = {s.version: s for s in resp.model_version_status}
        for v in pending[name]:
            s = states.get(v)
            if s is not None and s.state == state_enum.END and s.status.error_code != 0:
                self._fail(f"model {name} version {v} failed to load: {s.status.error_message}")
        if all(v in states and states[v].state == state_enum.AVAILABLE for v in pending[name]):
            del pending[name]
            return ""
        return f"{name}: " + ", ".join(
            f"{v}={state_enum.State.Name(states[v].state) if v in states else 'absent'}" for v in pending[name])

    def _check_alive(self) -> None:
        pass

    def _fail(self, message: str) -> None:
        self.print_log()
        raise ServingError(f"{self.kind} server: {message}")

    def print_log(self, file: Any = None) -> None:
        out = file or sys.stderr
        print(LOG_BEGIN.format(self.kind), file=out)
        print(self.log_text().rstrip("\n"), file=out)
        print(LOG_END.format(self.kind), file=out, flush=True)

    def __enter__(self) -> ServerHandle:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is not None and exc_type is not ServingError:
                self.print_log()
        finally:
            self.stop()


class ProcessServer(ServerHandle):
    """``python -m builder serve`` in a child process: the CLI path end to end, and a server
    that does not share the client's interpreter (so load tests measure the server)."""

    kind = "local-process"

    def __init__(self, model_config_file: str | os.PathLike, *, extra_flags: Iterable[str] = (),
                 file_system_poll_wait_seconds: float = 1, model_config_file_poll_wait_seconds: float = 0,
                 python: str = sys.executable, start_timeout: float = 120.0) -> None:
        super().__init__()
        self.model_config_file = str(model_config_file)
        self.expected_entries = read_model_server_config(self.model_config_file)
        self.flags = [
            "--port", "0", "--rest_api_port", "0",
            "--model_config_file", self.model_config_file,
            "--file_system_poll_wait_seconds", str(file_system_poll_wait_seconds),
            "--model_config_file_poll_wait_seconds", str(model_config_file_poll_wait_seconds),
            *extra_flags,
        ]
        self.python = python
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self._logfile = tempfile.NamedTemporaryFile(prefix="tfs-local-", suffix=".log", delete=False)

    def start(self) -> ProcessServer:
        root = Path(__file__).resolve().parents[2]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env["PYTHONUNBUFFERED"] = "1"
        self._t_start = time.monotonic()
        self.proc = subprocess.Popen(
            [self.python, "-m", "builder", "serve", *self.flags],
            cwd=str(root), env=env, stdout=self._logfile, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        end = time.monotonic() + self.start_timeout
        while not (self.grpc_port and self.rest_port):
            text = self.log_text()
            m = re.search(r"gRPC listening on [^:\s]+:(\d+)", text)
            r = re.search(r"REST listening on [^:\s]+:(\d+)", text)
            if m and r:
                self.grpc_port, self.rest_port = int(m.group(1)), int(r.group(1))
                break
            self._check_alive()
            if time.monotonic() > end:
                self._fail(f"no 'listening' lines within {self.start_timeout:.0f} s")
            time.sleep(0.1)
        return self

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            self._fail(f"`python -m builder serve` exited with code {self.proc.returncode}")

    def log_text(self) -> str:
        try:
            return Path(self._logfile.name).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._logfile.close()

    def __del__(self) -> None:
        try:
            os.unlink(self._logfile.name)
        except (OSError, AttributeError):
            pass


def docker_unavailable_reason() -> str | None:
    """Why a Docker engine cannot be used here (None if it can): SDK missing or ping fails."""
    try:
        import docker
    except ImportError:
        return "the docker Python SDK is not installed (pip install docker)"
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        client = docker.from_env(timeout=5)
        client.ping()
        client.close()
    except Exception as e:  # noqa: BLE001 - any failure means "no usable engine"
        cause: BaseException = e
        while cause.__cause__ is not None or cause.__context__ is not None:
            cause = cause.__cause__ or cause.__context__  # the socket error, not the SDK wrapper
        return f"no Docker engine reachable at {host} ({type(cause).__name__}: {str(cause)[:120]})"
    return None


def gpu_unavailable_reason() -> str | None:
    """Why GPU containers cannot run here (None if an NVIDIA GPU and tooling are visible)."""
    if not (os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi")):
        return "no NVIDIA GPU on this machine (/dev/nvidia0 and nvidia-smi absent)"
    return None


class ContainerServer(ServerHandle):
    """``tensorflow/serving`` in Docker, through the docker SDK: the repository mounted read-only
    at /models, the config rewritten to container paths, ports published on 127.0.0.1 only."""

    kind = "container"

    def __init__(self, repo: str | os.PathLike, model_config_file: str | os.PathLike, *,
                 image: str = "tensorflow/serving:2.17.0", gpu: bool = False,
                 batching_parameters_file: str | os.PathLike = "",
                 monitoring_config_file: str | os.PathLike = "",
                 file_system_poll_wait_seconds: float = 1,
                 model_config_file_poll_wait_seconds: float = 0,
                 enable_model_warmup: bool = True,
                 allow_version_labels_for_unavailable_models: bool = False) -> None:
        super().__init__()
        self.repo = Path(repo).resolve()
        self.image, self.gpu = image, gpu
        self.kind = f"container {image}"
        self.expected_entries = read_model_server_config(model_config_file)
        self._cfgdir = Path(tempfile.mkdtemp(prefix="tfs-container-cfg-"))
        rewritten = []
        for e in self.expected_entries:
            try:
                rel = Path(e.base_path).resolve().relative_to(self.repo)
            except ValueError:
                raise ConfigError(f"{model_config_file}: base_path {e.base_path} of model {e.name} is "
                                  f"outside the mounted repository {self.repo}: keep models under it") from None
            rewritten.append(ModelEntry(e.name, f"/models/{rel.as_posix()}", e.policy, e.num_versions,
                                        e.versions, e.labels))
        (self._cfgdir / "models.config").write_text(model_server_config_text(rewritten), encoding="utf-8")
        self.flags = [
            "--port=8500", "--rest_api_port=8501",
            "--model_config_file=/config/models.config",
            f"--file_system_poll_wait_seconds={int(file_system_poll_wait_seconds)}",
            f"--model_config_file_poll_wait_seconds={int(model_config_file_poll_wait_seconds)}",
            f"--enable_model_warmup={'true' if enable_model_warmup else 'false'}",
        ]
        if allow_version_labels_for_unavailable_models:
            self.flags.append("--allow_version_labels_for_unavailable_models=true")
        for flag, src, dst in (("--batching_parameters_file", batching_parameters_file, "batching_parameters.txt"),
                               ("--monitoring_config_file", monitoring_config_file, "monitoring.config")):
            if src:
                shutil.copyfile(src, self._cfgdir / dst)
                self.flags.append(f"{flag}=/config/{dst}")
                if dst.startswith("batching"):
                    self.flags.append("--enable_batching=true")
        self.container: Any = None
        self._client: Any = None

    def start(self) -> ContainerServer:
        import docker

        reason = docker_unavailable_reason()
        if reason:
            raise UnavailableError(f"cannot start {self.image}: {reason}")
        if self.gpu and gpu_unavailable_reason():
            raise UnavailableError(f"cannot start {self.image} with a GPU: {gpu_unavailable_reason()}")
        self._client = docker.from_env()
        try:
            self._client.images.get(self.image)
        except docker.errors.ImageNotFound:
            try:
                self._client.images.pull(self.image)
            except docker.errors.APIError as e:
                raise UnavailableError(f"image {self.image} is not present and cannot be pulled ({e})") from None
        kwargs: dict[str, Any] = {}
        if self.gpu:
            kwargs["device_requests"] = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
        self._t_start = time.monotonic()
        self.container = self._client.containers.run(
            self.image,
            entrypoint=["tensorflow_model_server"],
            command=self.flags,
            volumes={str(self.repo): {"bind": "/models", "mode": "ro"},
                     str(self._cfgdir): {"bind": "/config", "mode": "ro"}},
            ports={"8500/tcp": ("127.0.0.1", None), "8501/tcp": ("127.0.0.1", None)},
            detach=True,
            **kwargs,
        )
        end = time.monotonic() + 30
        while True:
            self.container.reload()
            ports = self.container.attrs.get("NetworkSettings", {}).get("Ports") or {}
            g, r = ports.get("8500/tcp"), ports.get("8501/tcp")
            if g and r:
                self.grpc_port, self.rest_port = int(g[0]["HostPort"]), int(r[0]["HostPort"])
                return self
            self._check_alive()
            if time.monotonic() > end:
                self._fail("published ports did not appear within 30 s")
            time.sleep(0.2)

    def _check_alive(self) -> None:
        if self.container is not None:
            self.container.reload()
            if self.container.status in ("exited", "dead"):
                self._fail(f"container exited ({self.container.attrs['State'].get('ExitCode')})")

    def log_text(self) -> str:
        if self.container is None:
            return ""
        try:
            return self.container.logs().decode("utf-8", "replace")
        except Exception as e:  # noqa: BLE001 - the log is best effort once the engine is gone
            return f"(could not read container log: {e})"

    def stop(self) -> None:
        try:
            if self.container is not None:
                try:
                    self.container.stop(timeout=10)
                finally:
                    self.container.remove(force=True)
                self.container = None
        finally:
            shutil.rmtree(self._cfgdir, ignore_errors=True)
            if self._client is not None:
                self._client.close()
                self._client = None

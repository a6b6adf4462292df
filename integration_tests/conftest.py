"""Fixtures for the serving integration suite: one repository, one server per backend.

Every test takes the ``server`` fixture, parametrised over the backends, so the same assertions
run against ``python -m builder serve`` (always) and ``tensorflow/serving`` containers (when a
Docker engine, and for the GPU image a GPU, exist; otherwise they skip with the reason).
On a failing test the server's log is attached to the report between BEGIN/END markers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from builder.serve.handles import (
    LOG_BEGIN,
    LOG_END,
    ContainerServer,
    ProcessServer,
    ServerHandle,
    docker_unavailable_reason,
    gpu_unavailable_reason,
)
from integration_tests.fixture_models import (
    build_example_model,
    build_half_plus_two,
    build_toy_version,
    read_build_info,
    read_golden,
    write_models_config,
)

PROJECT = Path(__file__).resolve().parent.parent
SERVING_CONFIGS = PROJECT / "serving_configs"
CPU_IMAGE = os.environ.get("TFS_CPU_IMAGE", "tensorflow/serving:2.17.0")
GPU_IMAGE = os.environ.get("TFS_GPU_IMAGE", "tensorflow/serving:2.17.0-gpu")
READY_DEADLINE = float(os.environ.get("TFS_READY_DEADLINE", "120"))
BATCH_SIZES = (1, 8)
LIMIT = 1024 * 1024  # local server's REST body / gRPC message limits (TF Serving has no REST limit)

BACKENDS = [
    pytest.param("local", id="local"),
    pytest.param("container-cpu", id="container-cpu", marks=pytest.mark.docker),
    pytest.param("container-gpu", id="container-gpu", marks=[pytest.mark.docker, pytest.mark.gpu]),
]


@dataclass
class Repo:
    """A built repository and what the tests need to know about it."""

    root: Path
    config: Path
    batching: Path
    monitoring: Path
    versions: dict[str, list[int]]
    golden: dict[tuple[str, int], dict[str, np.ndarray]] = field(default_factory=dict)
    info: dict[tuple[str, int], dict] = field(default_factory=dict)

    def tolerance(self, model: str, version: int) -> dict[str, float]:
        parity = self.info[(model, version)]["parity"]
        return {"atol": float(parity["atol"]), "rtol": max(float(parity["rtol"]), 1e-6)}


def build_repo(root: Path) -> Repo:
    """toy/1, toy/2 served as "toy" (policy all, labels stable->1, canary->2) and as
    "toy_latest" (default latest policy: only 2); a builder-exported facenet/1; census/1 (a
    tf.Example classifier/regressor); half_plus_two/00000123 (TF Serving's quick start);
    batching/monitoring companions beside it."""
    from builder.config.companions import batch_sizes_from_repo, write_companions

    for v in (1, 2):
        build_toy_version(root, "toy", v, batch_sizes=BATCH_SIZES)
    export_facenet_style(root)
    build_example_model(root, "census", 1)  # tf.Example model: Classify / Regress / MultiInference
    build_half_plus_two(root / "half_plus_two")  # TF Serving's quick-start model, as 00000123
    config = write_models_config(root / "models.config", [
        {"name": "toy", "base_path": root / "toy", "policy": "all",
         "labels": {"stable": 1, "canary": 2}},
        {"name": "toy_latest", "base_path": root / "toy"},
        {"name": "facenet", "base_path": root / "facenet"},
        {"name": "census", "base_path": root / "census"},
        {"name": "half_plus_two", "base_path": root / "half_plus_two"},
    ])
    companions = write_companions(root / "serving", batch_sizes_from_repo(root))
    repo = Repo(root, config, companions["batching"], companions["monitoring"],
                {"toy": [1, 2], "toy_latest": [2]})
    for v in (1, 2):
        repo.golden[("toy", v)] = read_golden(root / "toy" / str(v))
        repo.info[("toy", v)] = read_build_info(root / "toy" / str(v))
    repo.versions["facenet"] = [1]
    repo.golden[("facenet", 1)] = read_golden(root / "facenet" / "1")
    repo.info[("facenet", 1)] = read_build_info(root / "facenet" / "1")
    return repo


def export_facenet_style(root: Path) -> Path:
    """A version written by the builder itself (``builder.export``) from a FaceNet-style TF1
    training checkpoint: queue-fed ``input`` cut away, ``phase_train`` folded."""
    from builder.export import pipeline
    from tests.helpers import models  # the tiny FaceNet-interface checkpoint of the unit tests

    ckpt = models.write_tiny_checkpoint(root.parent / f"{root.name}-facenet-ckpt")
    result = pipeline.export(pipeline.ExportOptions(
        model=str(ckpt), name="facenet", repo=str(root), inputs=["input"], outputs=["embeddings"],
        feed={"phase_train": "false"}, input_alias={"input": "images"}, batch_sizes=list(BATCH_SIZES)),
        quiet=True)
    return result.path


@pytest.fixture(scope="session")
def toy_repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    return build_repo(tmp_path_factory.mktemp("repo"))


def make_server(kind: str, repo: Repo, extra_flags: tuple[str, ...] = (),
                file_system_poll_wait_seconds: float = 1) -> ServerHandle:
    """A not-yet-started handle for ``kind``, or pytest.skip with the reason it cannot run.
    Every backend gets --allow_version_labels_for_unavailable_models, as the project's serving
    image does: the repository's first config holds labels, which TF Serving checks before
    any model loads."""
    if kind == "local":
        return ProcessServer(repo.config, extra_flags=(
            "--batching_parameters_file", str(repo.batching),
            "--monitoring_config_file", str(repo.monitoring),
            "--allow_version_labels_for_unavailable_models", "true", *extra_flags),
            file_system_poll_wait_seconds=file_system_poll_wait_seconds)
    reason = docker_unavailable_reason()
    if reason:
        pytest.skip(f"{kind} backend skipped: {reason}")
    gpu = kind == "container-gpu"
    if gpu and gpu_unavailable_reason():
        pytest.skip(f"{kind} backend skipped: {gpu_unavailable_reason()}")
    return ContainerServer(repo.root, repo.config, image=GPU_IMAGE if gpu else CPU_IMAGE, gpu=gpu,
                           batching_parameters_file=repo.batching,
                           monitoring_config_file=repo.monitoring,
                           file_system_poll_wait_seconds=file_system_poll_wait_seconds,
                           allow_version_labels_for_unavailable_models=True)


def started(handle: ServerHandle):
    """Start, wait for every version, yield, stop in finally (log printed if start fails).
    ``python -m builder serve`` must also exit 0 on SIGTERM."""
    try:
        handle.start()
        handle.wait_until_ready(READY_DEADLINE)
        yield handle
    finally:
        handle.stop()
    if isinstance(handle, ProcessServer):
        assert handle.proc.returncode == 0, f"serve exited {handle.proc.returncode} on SIGTERM"
        assert "shutting down" in handle.log_text()


@pytest.fixture(scope="session", params=BACKENDS)
def server(request: pytest.FixtureRequest, toy_repo: Repo):
    """One server per backend for the whole session (a start costs a TensorFlow import)."""
    handle = make_server(request.param, toy_repo, extra_flags=(
        "--rest_api_max_body_bytes", str(LIMIT), "--grpc_max_message_bytes", str(LIMIT)))
    handle.backend = request.param
    yield from started(handle)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, ServerHandle):
                text = value.log_text().rstrip("\n")
                report.sections.append((
                    f"server log ({value.kind})",
                    f"{LOG_BEGIN.format(value.kind)}\n{text}\n{LOG_END.format(value.kind)}",
                ))


@pytest.fixture(scope="module")
def rest(server):
    """A keep-alive REST client on the backend under test."""
    from builder.serve.client import RestClient

    c = RestClient(server.rest_url)
    yield c
    c.close()


@pytest.fixture(scope="module")
def grpc_client(server):
    """A gRPC client (official tensorflow_serving.apis stubs) on the backend under test."""
    from builder.serve.client import GrpcClient

    c = GrpcClient(server.grpc_target, max_message_bytes=64 * 1024 * 1024)
    yield c
    c.close()

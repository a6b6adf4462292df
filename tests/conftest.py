"""Shared fixtures: tiny real models in every input flow, built once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import models  # noqa: E402


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_ckpt(model_dir) -> Path:
    return models.write_tiny_checkpoint(model_dir / "ckpt")


@pytest.fixture(scope="session")
def tiny_frozen(model_dir, tiny_ckpt) -> Path:
    return models.write_tiny_frozen(tiny_ckpt, model_dir / "frozen" / "tiny.pb")


@pytest.fixture(scope="session")
def tiny_frozen_txt(model_dir, tiny_ckpt) -> Path:
    return models.write_tiny_frozen(tiny_ckpt, model_dir / "frozen" / "tiny.pbtxt", text=True)


@pytest.fixture(scope="session")
def tiny_tf1_sm(model_dir, tiny_ckpt) -> Path:
    return models.write_tiny_tf1_savedmodel(tiny_ckpt, model_dir / "tf1_sm")


@pytest.fixture(scope="session")
def tiny_tf2_sm(model_dir) -> Path:
    return models.write_tiny_tf2_savedmodel(model_dir / "tf2_sm")


@pytest.fixture(scope="session")
def tiny_keras(model_dir) -> Path:
    return models.write_tiny_keras(model_dir / "tiny.keras")


# the FaceNet-style checkpoint needs these flags (input is a queue-fed Identity, not a placeholder)
# (its shape is recovered from the queue's component shapes, so no --input_shapes is needed)
CKPT_FLAGS = dict(inputs=["input"], outputs=["embeddings"], feed={"phase_train": "false"},
                  input_alias={"input": "images"})
CKPT_ARGS = ["--inputs", "input", "--outputs", "embeddings", "--feed", "phase_train=false",
             "--input_alias", "input=images"]


def run_builder(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real CLI in a fresh process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "builder", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=timeout, env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="session")
def facenet_tiny(tmp_path_factory) -> dict:
    """The built-in FaceNet example at tiny size: same interface, ops and formats."""
    from builder.example.facenet import write_example

    return write_example(tmp_path_factory.mktemp("facenet") / "example", tiny=True, log=None)


@pytest.fixture(scope="session")
def s3_server(pytestconfig):
    """One real S3 server (SeaweedFS on 127.0.0.1) for the whole session."""
    import registry_servers

    return registry_servers.seaweedfs(pytestconfig)


@pytest.fixture
def s3(s3_server, monkeypatch) -> str:
    """A fresh prefix in the bucket, with the standard AWS variables set as a CI would."""
    import uuid

    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    return f"s3://{s3_server.bucket}/t-{uuid.uuid4().hex[:10]}"

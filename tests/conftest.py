"""Shared fixtures: tiny real models in every input flow, built once per test session.

Helpers (the CLI runner, the models, the test servers) live in the ``tests.helpers`` package."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import models, registry_servers

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


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


@pytest.fixture(scope="session")
def facenet_tiny(tmp_path_factory) -> dict:
    """The built-in FaceNet example at tiny size: same interface, ops and formats."""
    from builder.example.facenet import write_example

    return write_example(tmp_path_factory.mktemp("facenet") / "example", tiny=True, log=None)


@pytest.fixture(scope="session")
def s3_server(pytestconfig):
    """One real S3 server (SeaweedFS on 127.0.0.1) for the whole session."""
    return registry_servers.seaweedfs(pytestconfig)


@pytest.fixture
def s3(s3_server, monkeypatch) -> str:
    """A fresh prefix in the bucket, with the standard AWS variables set as a CI would."""
    import uuid

    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    return f"s3://{s3_server.bucket}/t-{uuid.uuid4().hex[:10]}"

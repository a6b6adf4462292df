"""Root conftest: hooks shared by ``tests/`` and ``integration_tests/``.

Tests marked ``gpu`` / ``docker`` are skipped here, with the reason, when the machine lacks an
NVIDIA GPU (and, for in-process TF-TRT, TensorRT 8) or a Docker engine, so no test re-checks
availability itself and every skip says why.
"""

from __future__ import annotations

import pytest

from tests.helpers import hardware


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    needs_docker = item.get_closest_marker("docker") is not None
    if needs_docker:
        reason = hardware.docker_unavailable_reason()
        if reason:
            pytest.skip(f"docker test skipped: {reason}")
    if item.get_closest_marker("gpu") is not None:
        reason = hardware.gpu_unavailable_reason(needs_tensorrt=not needs_docker)
        if reason:
            pytest.skip(f"gpu test skipped: {reason}")

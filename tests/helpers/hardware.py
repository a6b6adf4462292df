"""Why a GPU or a Docker engine cannot be used here: the skip reasons of the ``gpu`` and
``docker`` markers, probed once per session (the root conftest.py's ``pytest_runtest_setup``).

Probes are self-contained (no builder import), so the hook works whatever the modules under
test look like, and cheap: ``nvidia-smi -L`` with a timeout, a ``dlopen`` of libnvinfer, one
engine ping.
"""

from __future__ import annotations

import ctypes
import functools
import shutil
import subprocess

TENSORRT_LIBRARY = "libnvinfer.so.8"  # TensorRT 8.x, what TF 2.17's TF-TRT was built against


@functools.lru_cache(maxsize=1)
def nvidia_gpu_missing() -> str | None:
    """None when ``nvidia-smi -L`` lists a GPU, else why not."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "no NVIDIA driver: nvidia-smi not found"
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"nvidia-smi -L failed ({type(e).__name__})"
    if out.returncode != 0 or "GPU" not in out.stdout:
        line = (out.stderr or out.stdout).strip().splitlines()[:1]
        return f"nvidia-smi -L lists no GPU{': ' + line[0] if line else ''}"
    return None


@functools.lru_cache(maxsize=1)
def tensorrt_missing() -> str | None:
    """None when TensorRT 8 (``libnvinfer.so.8``) loads in this process, else why not."""
    try:
        ctypes.CDLL(TENSORRT_LIBRARY)
    except OSError:
        return f"{TENSORRT_LIBRARY} cannot be loaded (TensorRT 8.x not installed)"
    return None


def gpu_unavailable_reason(needs_tensorrt: bool = True) -> str | None:
    """Why a ``gpu`` test cannot run: no GPU, or (in-process TF-TRT) no TensorRT 8.

    Tests that also need Docker run TensorRT inside the container image, so they only need the
    GPU (``needs_tensorrt=False``).
    """
    reasons = [r for r in (nvidia_gpu_missing(), tensorrt_missing() if needs_tensorrt else None) if r]
    return "; ".join(reasons) or None


@functools.lru_cache(maxsize=1)
def docker_unavailable_reason() -> str | None:
    """None when a Docker engine answers ping (DOCKER_HOST or the default socket), else why not:
    the product's own probe (``ContainerServer`` uses it), asked once per test session."""
    from builder.serve.handles import docker_unavailable_reason as probe

    return probe()

"""Test helpers shared by ``tests/`` and ``integration_tests/`` (a package: no sys.path edits).

- ``tests.helpers.models``: tiny real models in every input flow, and tiny servable versions;
- ``tests.helpers.registry_servers``: the real S3 (SeaweedFS) and OCI registry servers on
  127.0.0.1, and tiny publishable versions;
- ``tests.helpers.hardware``: why a GPU / a Docker engine is unavailable (the ``gpu`` and
  ``docker`` markers' skip reasons, used by the hook in the root conftest.py);
- here: running the real CLI and the scripts as a user does.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"

# the FaceNet-style checkpoint needs these flags (input is a queue-fed Identity, not a placeholder)
# (its shape is recovered from the queue's component shapes, so no --input_shapes is needed)
CKPT_FLAGS = dict(inputs=["input"], outputs=["embeddings"], feed={"phase_train": "false"},
                  input_alias={"input": "images"})
CKPT_ARGS = ["--inputs", "input", "--outputs", "embeddings", "--feed", "phase_train=false",
             "--input_alias", "input=images"]


def run_builder(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real CLI (``python -m builder ...``) in a fresh process, as a user or CI runs it."""
    return subprocess.run(
        [sys.executable, "-m", "builder", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=timeout, env={**os.environ, **(env or {})},
    )


def load_script(name: str) -> ModuleType:
    """Import ``scripts/NAME`` (an executable without a .py suffix) as a module, to test its
    functions and argument parser directly."""
    path = SCRIPTS / name
    loader = importlib.machinery.SourceFileLoader(f"scripts_{name}_under_test", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = mod  # dataclasses look their module up there
    loader.exec_module(mod)
    return mod

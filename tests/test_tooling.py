"""The project's own tooling: every executable is linted, the CLI stays light, the gpu/docker
markers skip with a reason through one hook, and the test suites share helpers as a package."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.helpers import ROOT, SCRIPTS, hardware

RUFF = ROOT / ".venv" / "bin" / "ruff"


def _python_scripts() -> list[str]:
    out = []
    for p in sorted(SCRIPTS.iterdir()):
        if p.is_file() and (p.suffix == ".py" or p.read_bytes().startswith(b"#!/usr/bin/env python")):
            out.append(p.name)
    return out


@pytest.mark.skipif(not RUFF.exists(), reason="ruff is not installed in .venv (scripts/setup)")
def test_ruff_lints_every_python_script_and_both_suites():
    listed = subprocess.run([str(RUFF), "check", "--show-files", "."], cwd=ROOT, capture_output=True,
                            text=True, timeout=120).stdout
    files = {os.path.relpath(line.strip(), ROOT) for line in listed.splitlines() if line.strip()}
    scripts = _python_scripts()
    assert {"ci_pipeline", "serve_check", "build_serving_image"} <= set(scripts)
    missing = [s for s in scripts if f"scripts/{s}" not in files]
    assert not missing, f"add {missing} to extend-include in pyproject.toml"
    assert {"conftest.py", "tests/conftest.py", "integration_tests/conftest.py",
            "tests/helpers/__init__.py"} <= files


def test_cli_listing_does_not_import_tensorflow():
    """``python -m builder --help`` imports every command module for its docstring; none of them
    may pull in TensorFlow at import time (that alone costs seconds)."""
    code = ("import sys; from builder import cli; cli.load_commands([]); "
            "print(sorted(m for m in ('tensorflow', 'keras', 'grpc', 'docker', 'matplotlib') "
            "if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_a_chosen_command_imports_only_its_module():
    from builder import cli

    assert list(cli.load_commands(["deploy", "--help"])) == ["deploy"]
    assert list(cli.load_commands(["--help"])) == list(cli.COMMANDS)


def test_no_sys_path_edits_in_the_test_suites():
    pattern = re.compile(r"sys\.path\.(insert|append)\(|sys\.path\s*(\+=|=)")
    offenders = []
    for base in ("tests", "integration_tests"):
        for p in (ROOT / base).rglob("*.py"):
            if p.name != "test_tooling.py" and pattern.search(p.read_text()):
                offenders.append(str(p.relative_to(ROOT)))
    offenders += ["conftest.py"] if pattern.search((ROOT / "conftest.py").read_text()) else []
    assert not offenders, f"import from tests.helpers instead: {offenders}"


def test_gpu_and_docker_markers_skip_with_the_reason(tmp_path):
    """The root conftest's hook decides, once, for every marked test (a copy of it runs on a
    throwaway suite here, so the assertion holds on machines with and without the hardware)."""
    (tmp_path / "conftest.py").write_text((ROOT / "conftest.py").read_text())
    (tmp_path / "test_marked.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.docker\ndef test_d():\n    pass\n\n"
        "@pytest.mark.gpu\ndef test_g():\n    pass\n\n"
        "@pytest.mark.docker\n@pytest.mark.gpu\ndef test_dg():\n    pass\n\n"
        "def test_plain():\n    pass\n")
    ini = tmp_path / "pytest.ini"
    ini.write_text("[pytest]\nmarkers =\n    gpu: g\n    docker: d\n")
    r = subprocess.run([sys.executable, "-m", "pytest", "-rsp", "-p", "no:cacheprovider", "-q",
                        str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stdout + r.stderr
    docker_reason = hardware.docker_unavailable_reason()
    gpu_reason = hardware.gpu_unavailable_reason(needs_tensorrt=True)
    container_gpu = hardware.gpu_unavailable_reason(needs_tensorrt=False)
    expect = {
        "test_d": f"docker test skipped: {docker_reason}" if docker_reason else None,
        "test_g": f"gpu test skipped: {gpu_reason}" if gpu_reason else None,
        "test_dg": (f"docker test skipped: {docker_reason}" if docker_reason else
                    f"gpu test skipped: {container_gpu}" if container_gpu else None),
    }
    for name, reason in expect.items():
        if reason:
            assert re.search(rf"SKIPPED \[\d+\] .*: {re.escape(reason)}", r.stdout), (name, r.stdout)
        else:
            assert f"PASSED test_marked.py::{name}" in r.stdout, (name, r.stdout)
    assert "PASSED test_marked.py::test_plain" in r.stdout

"""A SavedModel with more than 2 GiB of variables exports: variables hard-linked (or copied),
never materialised as constants, with the issue's memory bound on the export process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT

GIB = 2.1


def _run(args: list[str], cwd: Path = ROOT) -> tuple[subprocess.CompletedProcess, float, float]:
    """(result, peak RSS in bytes of THAT process, wall seconds), from wait4's rusage."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return subprocess.CompletedProcess(args, proc.returncode, out, err), usage.ru_maxrss * 1024, \
        time.perf_counter() - t0


@pytest.fixture(scope="module")
def big_model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("big") / "m"
    code = textwrap.dedent(f"""
        from tests.helpers import fidelity_models
        fidelity_models.tf2_big_variable(__import__("pathlib").Path({str(out)!r}), gib={GIB})
    """)
    p, _, _ = _run([sys.executable, "-c", code])
    assert p.returncode == 0, p.stderr[-2000:]
    return out


@pytest.mark.slow
def test_more_than_2gib_of_variables_exports_within_the_memory_bound(big_model, tmp_path):
    var_bytes = sum(f.stat().st_size for f in (big_model / "variables").glob("variables.data-*"))
    assert var_bytes > 2**31
    t0 = time.perf_counter()
    copy = tmp_path / "plain-copy"
    subprocess.run(["cp", "-r", str(big_model), str(copy)], check=True)
    copy_seconds = time.perf_counter() - t0
    subprocess.run(["rm", "-rf", str(copy)], check=True)
    repo = tmp_path / "repo"
    p, rss, wall = _run([sys.executable, "-m", "builder", "export", "--model", str(big_model), "--name", "big",
                         "--repo", str(repo), "--batch_sizes", "1,4"])
    assert p.returncode == 0, p.stderr[-3000:]
    info = json.loads((repo / "big/1/assets.extra/build_info.json").read_text())
    assert info["kept_as_is"] and info["freeze"]["frozen"] is False and info["parity"]["passed"]
    assert info["graph"]["variable_bytes"] == var_bytes
    data = next((repo / "big/1/variables").glob("variables.data-*"))
    assert data.stat().st_nlink >= 2  # hard-linked: no second copy on disk
    bound = 1.5 * var_bytes + 1.5e9
    print(f"\nexport of {var_bytes / 2**30:.2f} GiB variables: peak RSS {rss / 2**30:.2f} GiB "
          f"(bound {bound / 2**30:.2f} GiB), wall {wall:.1f}s, plain copy {copy_seconds:.1f}s, "
          f"export_seconds {info['export_seconds']}")
    assert rss <= bound
    # --freeze cannot hold it: exit 2 before any work on the graph, saying why
    p, _, _ = _run([sys.executable, "-m", "builder", "export", "--model", str(big_model), "--name", "big",
                    "--repo", str(repo), "--freeze"])
    err = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert p.returncode == 2 and len(err) == 1 and "2 GiB protobuf limit" in err[0], p.stderr[-2000:]

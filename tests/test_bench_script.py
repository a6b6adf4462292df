"""``scripts/bench_facenet`` end to end on the tiny example: the command that produces the
committed benchmark must keep working (real exports, real local server, real benchmark)."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.helpers import ROOT


@pytest.mark.slow
def test_bench_facenet_tiny_writes_every_output(tmp_path):
    work = tmp_path / "work"
    r = subprocess.run(
        [str(ROOT / "scripts" / "bench_facenet"), "--tiny", "--work", str(work), "--seconds", "0.2",
         "--runs", "3", "--repeats", "1", "--batch_sizes", "1,2"],
        cwd=ROOT, capture_output=True, text=True, timeout=1200,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    docs = work / "docs"
    for name in ("facenet_cpu.json", "facenet_cpu.md", "facenet_cpu.png", "export_cost.md",
                 "export_cost.json"):
        assert (docs / name).stat().st_size > 0, name
    res = json.loads((docs / "facenet_cpu.json").read_text())
    assert [c["label"] for c in res["candidates"]] == ["checkpoint", "frozen", "export", "cpu", "grpc"]
    assert len(res["results"]) == 5 * 2
    for row in res["results"]:
        # every candidate is the same network: "no accuracy loss" must hold for all of them
        assert row["accuracy"]["max_abs_diff"] < 1e-4 and row["accuracy"]["min_cosine"] > 0.9999
    assert res["load"]["server_pids"] and res["load"]["server_cpu_seconds"] > 0
    cost = json.loads((docs / "export_cost.json").read_text())
    assert [e["name"] for e in cost["exports"]] == ["facenet", "facenet_frozen", "facenet_savedmodel",
                                                    "facenet_cpu"]
    for e in cost["exports"]:
        assert e["exit_code"] == 0 and e["wall_seconds"] > 0 and 100 < e["peak_rss_mb"] < 8192
        assert e["parity"]["passed"]
    assert "| checkpoint flow (`facenet`) |" in (docs / "export_cost.md").read_text()
    assert "| grpc | 2 |" in r.stdout  # the table is printed at the end


@pytest.mark.slow
def test_bench_facenet_gpu_refuses_without_a_gpu(tmp_path):
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU: --gpu would run the full TF-TRT benchmark")
    r = subprocess.run([str(ROOT / "scripts" / "bench_facenet"), "--gpu", "--work", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert "--gpu needs an NVIDIA GPU" in r.stderr
    assert not (tmp_path / "repo").exists()

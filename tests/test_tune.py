"""`tune`: the planning rules (budget, candidate sets valid for TF Serving, choice under a budget),
the closed-loop load generator against a real local server, CPU identification, and the whole
command on a tiny real model: files written, TF Serving's schema, `config` using the result."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from builder.cli import main as cli_main
from builder.config import companions
from builder.serve.batching import BatchingOptions
from builder.tune import load, plan, profile, report, system, tuner
from builder.tune.load import LoadResult
from builder.tune.plan import Candidate
from builder.tune.profile import BatchPoint
from integration_tests.fixture_models import build_toy_version, write_models_config

# ---------------------------------------------------------------------------------------------
# planning (pure)


def points(lat: dict[int, float]) -> list[BatchPoint]:
    return [BatchPoint(b, 5, ms, ms, round(b / ms * 1000, 2), (0.0, 0.0, 0.0)) for b, ms in lat.items()]


FACENET_LIKE = points({1: 14.4, 2: 22.0, 4: 36.0, 8: 64.5, 16: 129.0, 32: 254.0})  # issue 14's figures


def test_default_budget_is_four_times_the_knee_latency():
    budget, why = plan.default_budget(FACENET_LIKE)
    assert profile.knee(FACENET_LIKE).batch_size == 8  # 124 images/s; 16 and 32 add < 10%
    assert budget == 260.0  # 4 x 64.5 ms, rounded up to 10 ms
    assert "batch 8" in why and "64.5 ms" in why


def test_candidate_sets_are_valid_for_tf_serving_and_admit_the_warmup():
    budget, _ = plan.default_budget(FACENET_LIKE)
    cands = plan.candidates(FACENET_LIKE, [1, 8, 100], max_concurrency=64, cores=2, budget_ms=budget)
    labels = [c.label for c in cands]
    assert len(labels) == len(set(labels)) and 3 <= len(cands) <= 6
    for c in cands:
        o = c.options
        assert o.problem() == ""
        assert o.max_batch_size == 100  # the 100-row warmup record must be accepted ...
        assert o.enable_large_batch_splitting and o.execution_limit in (8, 16, 32)  # ... and split
        assert o.allowed_batch_sizes[-1] == 100 and o.execution_limit in o.allowed_batch_sizes
        assert o.max_enqueued_batches * o.execution_limit >= 100  # room for the warmup request
        assert plan.warmup_problem(o, [1, 8, 100]) == ""
        text = report.options_text(o)
        assert BatchingOptions.from_proto(companions.parse_batching_parameters(text)) == o  # round trip
    assert {c.options.execution_limit for c in cands} >= {8, 16}  # the knee and twice the knee
    assert {c.options.num_batch_threads for c in cands} == {1, 2}


def test_warmup_problem_matches_what_the_server_refuses():
    assert "larger than max_batch_size 8" in plan.warmup_problem(BatchingOptions(max_batch_size=8), [100])
    split = BatchingOptions(max_batch_size=100, enable_large_batch_splitting=True, max_execution_batch_size=8,
                            max_enqueued_batches=12)
    assert "exceeds the queue capacity 12 x 8" in plan.warmup_problem(split, [100])
    assert plan.warmup_problem(split, [1, 96]) == ""


def test_candidates_never_batch_more_than_the_clients_can_send():
    cands = plan.candidates(FACENET_LIKE, [], max_concurrency=4, cores=1, budget_ms=500)
    assert {c.options.execution_limit for c in cands} == {4}
    assert all(not c.options.enable_large_batch_splitting for c in cands)
    assert all(c.options.allowed_batch_sizes == (1, 2, 4) for c in cands)


def result(c: int, rps: float, p99: float, errors: int = 0) -> LoadResult:
    return LoadResult(c, 3.0, int(rps * 3), {"UNAVAILABLE": errors} if errors else {}, rps, p99 / 2, p99, p99, p99)


def test_choice_is_the_highest_throughput_within_budget_at_the_highest_feasible_level():
    a = Candidate("a", None, [result(1, 20, 50), result(16, 60, 400)])
    b = Candidate("b", None, [result(1, 20, 40), result(16, 90, 900)])  # faster, but over budget at 16
    c = Candidate("c", None, [result(1, 25, 60), result(16, 80, 450, errors=3)])  # refused requests
    d = Candidate("d", None, [result(1, 45, 30), result(16, 55, 300)])  # best at one client: no batching
    assert plan.target_level([a, b, c, d], 500) == 16
    chosen, met = plan.choose([a, b, c, d], budget_ms=500)
    assert (chosen.label, met) == ("a", True)  # 60 > 55 at 16 clients; d's 45 at 1 client does not count
    assert [x.label for x in plan.ranked([a, b, c, d], 500)] == ["a", "d", "c", "b"]
    assert plan.target_level([a, b, c, d], 30) == 1 and plan.target_level([a, b, c, d], 29) is None
    chosen, met = plan.choose([a, b, c, d], budget_ms=29)  # nothing fits: the closest, flagged
    assert (chosen.label, met) == ("d", False)


# ---------------------------------------------------------------------------------------------
# machine and load


def test_cpu_info_names_the_core_from_cpuid(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
                 "model name\t: AMD EPYC\nstepping\t: 1\nflags\t\t: fpu sse4_2 avx avx2 avx512f avx512_bf16\n\n"
                 "processor\t: 1\nmodel name\t: other\n")
    info = system.cpu_info(f)
    assert (info.model_name, info.family, info.model, info.microarchitecture) == ("AMD EPYC", 25, 17, "Zen 4")
    assert info.flags == ("sse4_2", "avx", "avx2", "avx512f", "avx512_bf16")
    assert info.summary().startswith("AMD EPYC (Zen 4, family 25 model 17), ")
    f.write_text("vendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\nmodel name\t: Xeon\nflags\t: avx2\n")
    assert system.cpu_info(f).microarchitecture == ""


def test_cpu_sampler_measures_this_processes_cpu_between_instants():
    import time

    sampler = system.CpuSampler(interval=0.01)
    try:
        t0, c0 = time.monotonic(), time.process_time()
        while time.process_time() - c0 < 0.2:  # burn 0.2 CPU-seconds, however long the host takes
            pass
        t1, c1 = time.monotonic(), time.process_time()
        time.sleep(0.2)
        t2, c2 = time.monotonic(), time.process_time()
        busy, idle = sampler.between(t0, t1), sampler.between(t1, t2)
    finally:
        sampler.stop()
    assert busy == pytest.approx(c1 - c0, abs=0.05)
    assert idle == pytest.approx(c2 - c1, abs=0.05) and idle < 0.1


def test_percentile_is_nearest_rank():
    v = [float(i) for i in range(1, 101)]
    assert (load.percentile(v, 50), load.percentile(v, 99), load.percentile(v, 100)) == (50.0, 99.0, 100.0)
    assert load.percentile([], 99) == 0.0


@pytest.fixture(scope="module")
def toy_repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tune-repo")
    build_toy_version(root, "toy", 1)
    return root


def test_closed_loop_clients_in_a_child_process_measure_a_real_server(toy_repo, tmp_path):
    from builder.serve.local import LocalServer

    cfg = write_models_config(tmp_path / "models.config", [{"name": "toy", "base_path": toy_repo / "toy"}])
    model = profile.load_model(toy_repo / "toy" / "1")
    try:
        request = model.request("toy")
    finally:
        model.close()
    seen = []
    with LocalServer(cfg, file_system_poll_wait_seconds=0) as server:
        server.wait_until_ready(60)
        load.prime(server.grpc_target, request)
        results = load.run_levels_in_child(server.grpc_target, request, [1, 3], 0.4, warmup_seconds=0.1,
                                           workdir=tmp_path, before_level=seen.append)
        assert not list(tmp_path.glob("request-*"))  # the child's files are cleaned up
        bad = load.closed_loop(server.grpc_target, b"\x0a\x03not a proto", 1, 0.2, warmup_seconds=0.05)
    assert seen == [1, 3]
    assert [r.concurrency for r in results] == [1, 3]
    for r in results:
        assert r.requests > 0 and r.error_count == 0
        assert 0 < r.p50_ms <= r.p99_ms <= r.max_ms
        assert math.isclose(r.rps, r.requests / r.seconds, rel_tol=0.01)
        assert r.load_avg is not None
        assert r.window[1] - r.window[0] == pytest.approx(r.seconds, abs=0.01) and r.client_cpu_s > 0
    assert bad.requests == 0 and bad.error_count > 0  # failures are counted, not timed


# ---------------------------------------------------------------------------------------------
# the command


def test_profile_measures_batch_sizes_on_the_real_model(toy_repo):
    model = profile.load_model(toy_repo / "toy" / "1")
    try:
        pts = profile.profile(model, 4, seconds=0.3)
        feed = model.feed(3)
    finally:
        model.close()
    assert [p.batch_size for p in pts] == [1, 2, 4]
    assert all(p.runs >= 3 and p.p50_ms > 0 and p.images_per_s > 0 for p in pts)
    (x,) = feed.values()
    assert x.shape == (3, 4)  # rows cycled from the version's golden inputs
    assert profile.warmup_batch_sizes(toy_repo / "toy" / "1") == [1, 4]


def test_tune_writes_a_tuned_file_that_config_uses(toy_repo, tmp_path, capsys):
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(toy_repo, repo)
    req = tuner.resolve(str(repo), "toy", concurrency="1,2", seconds=0.3)
    req.profile_seconds = 0.3
    rep = tuner.tune(req, tuner.Progress(quiet=True))
    out = repo / ".tune" / "toy"
    text = (out / "batching_parameters.txt").read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert header[0].startswith("# Tuned by tfs-builder `tune` on ") and "for model toy version 1" in header[0]
    joined = " ".join(h[1:].strip() for h in header)
    assert "CPU: " in joined and "load average" in joined and "TensorFlow" in joined
    assert f"Reproduce: python -m builder tune --repo {repo} --name toy --version 1 --concurrency 1,2" in joined
    opts = BatchingOptions.from_proto(companions.parse_batching_parameters(text))  # TF Serving's schema
    assert opts.max_batch_size >= 4  # the toy's warmup has a 4-row record
    data = json.loads((out / "tune_report.json").read_text())
    assert data["model"]["version"] == 1 and data["chosen"]["label"] == rep["chosen"]["label"]
    assert [r["concurrency"] for r in data["baseline"]["results"]] == [1, 2]
    assert data["machine"]["cpu"]["cores"] >= 1 and len(data["machine"]["load_avg_start"]) == 3
    assert (out / "tune_plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    chosen = next(c for c in data["candidates"] if c["label"] == data["chosen"]["label"])
    assert chosen["options"] == report.options_text(opts)
    inproc = {p["batch_size"]: p["images_per_s"] for p in data["in_process"]}
    for row in data["comparison"]:  # server requests/s against the model alone at the batch size run
        want = row["batching_rps"] / inproc[data["chosen"]["execution_batch_size"]]
        assert np.isclose(row["fraction_of_in_process"], want, atol=1e-3)
        assert row["no_batching_rps"] > 0

    assert cli_main(["config", "--repo", str(repo)]) == 0
    printed = capsys.readouterr().out
    assert "batching_parameters.txt: using the parameters `tune` measured for toy version 1" in printed
    assert (repo / "batching_parameters.txt").read_text() == text

    build_toy_version(repo, "toy", 2)  # a newer version: the tuned file is now stale
    assert cli_main(["config", "--repo", str(repo)]) == 0
    assert "the latest version is 2, re-run" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "fragment"), [
    (["--repo", "/nonexistent", "--name", "m"], "no numeric version directories"),
    (["--name", "m"], "--repo and --name are required"),
    (["--concurrency", "0"], "--concurrency 0 must be positive"),
    (["--version", "7"], "--version 7: not a version of"),
    (["--seconds", "0"], "--seconds 0 must be a positive number"),
    (["--p99_ms", "fast"], "--p99_ms 'fast' is not a number"),
])
def test_tune_user_errors_exit_2_with_one_line(toy_repo, capsys, args, fragment):
    base = ["tune", "--repo", str(toy_repo), "--name", "toy"]
    argv = base + args if args[0] not in ("--repo", "--name") else ["tune", *args]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and "\n" not in err


def test_tune_refuses_a_tftrt_artefact(toy_repo, tmp_path, capsys):
    import shutil

    repo = tmp_path / "trt"
    shutil.copytree(toy_repo / "toy" / "1", repo / "toy" / "1")
    info_path = repo / "toy" / "1" / "assets.extra" / "build_info.json"
    info = json.loads(info_path.read_text())
    info["optimizer"] = "tftrt"
    info_path.write_text(json.dumps(info))
    assert cli_main(["tune", "--repo", str(repo), "--name", "toy"]) == 2
    assert "TF-TRT artefact runs on a GPU" in capsys.readouterr().err


def test_tuned_file_that_no_longer_parses_is_an_error_naming_it(tmp_path):
    from builder.core.errors import ConfigError

    bad = tmp_path / ".tune" / "m" / "batching_parameters.txt"
    bad.parent.mkdir(parents=True)
    bad.write_text("max_batch_size: 8\n")
    with pytest.raises(ConfigError, match=str(bad)):
        companions.find_tuned(tmp_path, ["m"])
    assert companions.find_tuned(tmp_path, ["other"]) is None


def test_concurrent_clients_compares_batching_with_no_batching_and_in_process(toy_repo, tmp_path):
    """The benchmark's concurrent-clients mode: interleaved rounds, ratios within a round."""
    from builder.tune import compare

    params = tmp_path / "batching_parameters.txt"
    params.write_text(companions.batching_parameters_text([2, 4], batch_timeout_micros=2000, num_batch_threads=1))
    res = compare.concurrent_clients(str(toy_repo), "toy", str(params), concurrency=(1, 4), seconds=0.3, rounds=2,
                                     say=tuner.Progress(quiet=True))
    assert res["execution_batch_size"] == 4 and res["rounds"] == 2
    assert [lv["concurrency"] for lv in res["levels"]] == [1, 4]
    for lv in res["levels"]:
        for side in ("no_batching", "batching"):
            assert lv[side]["rps"] > 0 and lv[side]["errors"] == 0 and len(lv[side]["rounds"]) == 2
            assert lv[side]["requests_per_cpu_s"] > 0
        assert lv["speedup"] > 0 and lv["fraction_of_in_process"] > 0
    assert res["in_process_images_per_s"] > 0 and res["in_process_images_per_cpu_s"] > 0

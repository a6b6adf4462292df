"""``python -m builder benchmark`` on real tiny models: a checkpoint, its frozen graph, its export,
a differently seeded checkpoint, and the export served by the real local server over gRPC and
REST. Every number asserted comes from an actual run."""

from __future__ import annotations

import dataclasses
import json
import math
import struct

import numpy as np
import pytest

from builder.bench import benchmark, candidates, measure, report, runners
from builder.core.errors import GraphError, InputError, ServingError
from builder.export import pipeline
from builder.options import LoaderFlags
from builder.serve.local import LocalServer
from tests.helpers import CKPT_FLAGS, models, run_builder

LOADER_FLAGS = dict(loader=LoaderFlags(inputs=["input"], outputs=["embeddings"], feed={"phase_train": "false"},
                                        input_alias={"input": "images"}, input_shapes={"input": "?x8x8x3"}))
BATCHES = [1, 4]


@pytest.fixture(scope="module")
def repo(tiny_ckpt, tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_repo")
    pipeline.export(pipeline.ExportOptions(model=str(tiny_ckpt), name="toy", repo=str(root),
                                       flow="checkpoint", batch_sizes=BATCHES, **CKPT_FLAGS),
                  quiet=True)
    return root


@pytest.fixture(scope="module")
def other_ckpt(tmp_path_factory):
    """Same graph, different weights: the deliberately different candidate."""
    return models.write_tiny_checkpoint(tmp_path_factory.mktemp("other") / "ckpt", seed=1)


def _options(specs, **kw):
    base = dict(batch_sizes=BATCHES, warmup=1, repeats=2, runs=3, gemm_size=128, quiet=True,
                **LOADER_FLAGS)
    base.update(kw)
    return candidates.BenchOptions(candidates=candidates.parse_candidates(specs), **base)


@pytest.fixture(scope="module")
def doc(tiny_ckpt, tiny_frozen, repo, other_ckpt):
    specs = [f"ckpt={tiny_ckpt}", f"frozen={tiny_frozen}", f"export={repo / 'toy' / '1'}",
             f"other={other_ckpt}"]
    return benchmark.run_benchmark(_options(specs))


def _row(doc, label, batch):
    return next(r for r in doc["results"] if r["candidate"] == label and r["batch_size"] == batch)


# --------------------------------------------------------------------------- candidate specs


def test_candidate_kinds_targets_and_labels(tiny_ckpt, tiny_frozen, tiny_tf1_sm, repo):
    version = repo / "toy" / "1"
    specs = candidates.parse_candidates(
        [str(tiny_ckpt), f"fz={tiny_frozen}", f"ex={version}", f"latest={repo / 'toy'}",
         f"sm=savedmodel:{version}", f"src={tiny_tf1_sm}", "g2=127.0.0.1:8500/toy/1",
         "r2=http://127.0.0.1:8501/v1/models/toy/versions/1"],
        grpc=["localhost:8500"], rest=["http://127.0.0.1:8501"])
    got = {s.label: (s.kind, s.target, s.model_name, s.model_version) for s in specs}
    assert got["checkpoint"] == ("checkpoint", str(tiny_ckpt), None, None)
    assert got["fz"] == ("frozen", str(tiny_frozen), None, None)
    assert got["ex"] == ("export", str(version), None, None)
    assert got["latest"] == ("export", str(version), None, None)  # REPO/NAME -> newest version
    assert got["sm"] == ("savedmodel", str(version), None, None)  # KIND: forces the source loader
    assert got["src"][0] == "savedmodel"
    assert got["g2"] == ("grpc", "127.0.0.1:8500", "toy", 1)
    assert got["r2"] == ("rest", "http://127.0.0.1:8501", "toy", 1)
    # the shortcuts take the model name from the first export's build_info.json
    assert got["grpc"] == ("grpc", "localhost:8500", "toy", None)
    assert got["rest"] == ("rest", "http://127.0.0.1:8501", "toy", None)
    assert [s.label for s in specs][0] == "checkpoint"


def test_cli_accepts_positional_and_comma_list_candidates(tiny_ckpt, repo, tmp_path):
    # --runs 0 fails validation after parsing: proves both syntaxes parse, with no TF work
    r = run_builder("benchmark", f"a={tiny_ckpt}", "--candidates", f"b={repo / 'toy'},a=127.0.0.1:1/x",
                    "--runs", "0")
    assert r.returncode == 2
    assert "label 'a' is used twice" in r.stderr


@pytest.mark.parametrize("spec, message", [
    ("nope=/does/not/exist", "does not exist"),
    ("x=foo:{ckpt}", "unknown kind 'foo'"),
    ("g=127.0.0.1:99999/toy", "port 99999 is out of range"),
    ("g=127.0.0.1:8500/toy/latest", "after HOST:PORT write /NAME or /NAME/VERSION"),
    ("g=127.0.0.1:8500", "pass --model_name NAME"),
    ("bad+label={ckpt}", "label 'bad+label' must use"),
    ("={ckpt}", "empty label"),
    ("x=", "nothing after '='"),
    ("r=rest:http://host/v1/models/", "not a REST address"),
    ("r=https://host:8501/v1/models/toy", "https is not supported"),
    ("e=export:{ckpt}", "neither a version directory"),
])
def test_bad_specs_are_one_line_input_errors(spec, message, tiny_ckpt):
    with pytest.raises(InputError) as e:
        candidates.parse_candidates([spec.format(ckpt=tiny_ckpt)])
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_spec_on_the_cli_exits_2_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    r = run_builder("benchmark", "nope=/does/not/exist", "--out", str(out))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --candidates 'nope=/does/not/exist'")
    assert "Traceback" not in r.stderr
    assert not out.exists()


def test_bad_options_fail_before_loading(tiny_ckpt):
    for kw, message in [(dict(runs=0), "--runs"), (dict(seconds=-1.0), "--seconds"),
                        (dict(repeats=0), "--repeats"), (dict(batch_sizes=[]), "--batch_sizes"),
                        (dict(samples="/nope.npz"), "--samples"), (dict(concurrency=0), "--concurrency")]:
        with pytest.raises(InputError, match=message.replace("-", r"\-")):
            candidates.validate(_options([str(tiny_ckpt)], **kw))


def test_unreachable_server_is_a_serving_error(repo):
    o = _options([f"export={repo / 'toy' / '1'}", "g=127.0.0.1:1/toy"])
    with pytest.raises(ServingError, match=r"candidate 'g=127.0.0.1:1/toy': gRPC 127.0.0.1:1.*UNAVAILABLE"):
        benchmark.run_benchmark(o)


def test_each_error_names_its_candidate_once(tiny_ckpt, repo, tmp_path):
    """Loader errors get the candidate's label added; a runner's own errors (typed, already
    naming the candidate) are not prefixed a second time. Same error classes either way."""
    o = _options([f"ckpt={tiny_ckpt}"], loader=dataclasses.replace(LOADER_FLAGS["loader"], outputs=["no_such_node"]))
    with pytest.raises(GraphError) as e:
        benchmark.run_benchmark(o)
    assert str(e.value).startswith("candidate 'ckpt': ") and str(e.value).count("candidate ") == 1
    assert "no_such_node" in str(e.value)
    broken = tmp_path / "toy" / "1"
    broken.mkdir(parents=True)
    (broken / "saved_model.pb").write_bytes(b"not a protobuf")
    o = _options([f"x=export:{broken}"])
    with pytest.raises(runners.CandidateInputError) as e:
        benchmark.run_benchmark(o)
    assert str(e.value).startswith(f"candidate 'x=export:{broken}': ") and \
        str(e.value).count("candidate ") == 1


def test_mismatched_input_names_are_reported(tiny_ckpt, repo):
    flags = {"loader": dataclasses.replace(LOADER_FLAGS["loader"], input_alias={})}  # input is then "input"
    o = _options([f"export={repo / 'toy' / '1'}", f"ckpt={tiny_ckpt}"], **flags)
    with pytest.raises(InputError, match=r"candidate 'ckpt' takes inputs \['input'\].*--input_alias"):
        benchmark.run_benchmark(o)


# --------------------------------------------------------------------------- statistics


def test_summarize_percentiles_and_repeat_spread():
    s = measure.summarize([[0.001, 0.002, 0.003, 0.004], [0.010]], [100.0, 300.0, 200.0])
    assert s["runs"] == 5
    assert s["latency_ms"]["p50"] == pytest.approx(3.0)
    assert s["latency_ms"]["min"] == pytest.approx(1.0) and s["latency_ms"]["max"] == pytest.approx(10.0)
    assert s["latency_ms"]["p99"] == pytest.approx(np.percentile([1, 2, 3, 4, 10], 99))
    assert s["throughput"] == {"min": 100.0, "median": 200.0, "max": 300.0}
    assert s["p50_per_repeat_ms"]["min"] == pytest.approx(2.5)
    assert s["p50_per_repeat_ms"]["max"] == pytest.approx(10.0)


def test_real_runs_give_ordered_statistics(doc):
    assert len(doc["results"]) == 4 * len(BATCHES)
    for row in doc["results"]:
        lm, tp = row["latency_ms"], row["throughput"]
        assert row["runs"] == 2 * 3  # repeats x runs
        assert 0 < lm["min"] <= lm["p50"] <= lm["p90"] <= lm["p99"] <= lm["max"]
        assert 0 < tp["min"] <= tp["median"] <= tp["max"]
        # items/s can never exceed batch / fastest run
        assert tp["max"] <= row["batch_size"] / (lm["min"] / 1e3) * 1.0001
        assert row["p50_per_repeat_ms"]["min"] <= row["p50_per_repeat_ms"]["max"]


def test_ratios_are_relative_to_the_first_candidate(doc):
    for b in BATCHES:
        ref = _row(doc, "ckpt", b)
        assert ref["speedup"] == 1.0 and ref["latency_ratio"] == 1.0
        for label in ("frozen", "export", "other"):
            row = _row(doc, label, b)
            assert row["speedup"] == pytest.approx(row["throughput"]["median"] / ref["throughput"]["median"])
            assert row["latency_ratio"] == pytest.approx(row["latency_ms"]["p50"] / ref["latency_ms"]["p50"])
    assert doc["reference"] == "ckpt"


def test_accuracy_delta_is_zero_for_the_same_model_and_large_for_another(doc):
    for b in BATCHES:
        assert _row(doc, "ckpt", b)["accuracy"]["max_abs_diff"] == 0.0
        assert _row(doc, "ckpt", b)["accuracy"]["min_cosine"] == pytest.approx(1.0)
        # the frozen graph is the same graph with variables as constants: bit-identical
        assert _row(doc, "frozen", b)["accuracy"]["max_abs_diff"] == 0.0
        # the export is the folded/pruned graph: identical up to float rounding
        assert _row(doc, "export", b)["accuracy"]["max_abs_diff"] <= 1e-5
        other = _row(doc, "other", b)["accuracy"]
        assert other["max_abs_diff"] > 0.05
        assert other["min_cosine"] < 0.99
        assert set(other["outputs"]) == {"embeddings"}


def test_flops_and_fraction_of_gemm(doc):
    gemm = doc["gemm"]
    assert gemm["n"] == 128 and gemm["best"] >= gemm["gflops"]["max"] > 0
    flops = {c["label"]: c["flops_per_item"] for c in doc["candidates"]}
    # tiny model: a 3x3x3->4 conv on 8x8 (13,824 FLOP) plus a 4x6 matmul (48) and elementwise ops
    assert 13_824 + 48 <= flops["ckpt"] < 20_000
    assert flops["ckpt"] == flops["frozen"] == flops["export"]
    for row in doc["results"]:
        assert row["gflops_per_s"] == pytest.approx(row["flops_per_item"] * row["throughput"]["median"] / 1e9)
        assert row["gemm_fraction"] == pytest.approx(row["gflops_per_s"] / gemm["best"])
        assert 0 < row["gemm_fraction"] < 1


def test_machine_and_load_are_recorded(doc):
    import tensorflow as tf

    m = doc["machine"]
    assert m["tensorflow"] == tf.__version__
    assert m["cpu_count"] >= 1 and m["cpu_model"]
    assert isinstance(m["gpus"], list)
    assert doc["load"]["wall_seconds"] > 0
    assert 0 <= doc["load"]["this_process_cpu_fraction"] <= 1.01
    assert doc["settings"]["interleaving"].startswith("round-robin")


def test_time_budget_runs_until_the_budget(tiny_frozen):
    o = _options([f"fz={tiny_frozen}"], runs=None, seconds=0.3, repeats=1, batch_sizes=[1],
                 gemm_size=0, flops=False)
    d = benchmark.run_benchmark(o)
    row = d["results"][0]
    assert row["runs"] > 3  # each run is ~1 ms: the budget, not a count, ended the repeat
    total = row["latency_ms"]["mean"] * row["runs"] / 1e3
    assert total >= 0.25
    assert d["gemm"] is None and row["gemm_fraction"] is None


# --------------------------------------------------------------------------- outputs


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_outputs_json_markdown_png(doc, tmp_path):
    files = report.write_outputs(doc, tmp_path / "out")
    assert [f.name for f in files] == ["results.json", "results.md", "latency_throughput.png"]
    data = json.loads(files[0].read_text())
    for key in ("tool", "created", "command", "machine", "load", "settings", "gemm", "reference",
                "candidates", "results"):
        assert key in data
    row = data["results"][0]
    for key in ("candidate", "batch_size", "runs", "latency_ms", "throughput", "speedup",
                "accuracy", "flops_per_item", "gemm_fraction"):
        assert key in row
    md = files[1].read_text()
    table = [ln for ln in md.splitlines() if ln.startswith("| ") and not ln.startswith("| candidate")]
    assert len(table) == len(doc["results"])
    assert "| other | 4 |" in md and "![latency and throughput vs batch size](latency_throughput.png)" in md
    w, h = _png_size(files[2].read_bytes())
    assert w >= 600 and h >= 300 and files[2].stat().st_size > 10_000
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f.name for f in files)


def test_basename_names_the_outputs(doc, tmp_path):
    files = report.write_outputs(doc, tmp_path, "facenet_cpu")
    assert [f.name for f in files] == ["facenet_cpu.json", "facenet_cpu.md", "facenet_cpu.png"]
    assert "(facenet_cpu.png)" in files[1].read_text()


def test_a_failed_write_leaves_nothing(doc, tmp_path):
    broken = {k: v for k, v in doc.items() if k != "machine"}
    with pytest.raises(KeyError):
        report.write_outputs(broken, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_json_has_no_nan(tmp_path, doc):
    patched = json.loads(json.dumps(report.jsonable(doc)))
    patched["results"][0]["latency_ms"]["p99"] = float("nan")
    report.write_outputs(patched, tmp_path)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["results"][0]["latency_ms"]["p99"] is None
    assert not any(isinstance(v, float) and math.isnan(v) for v in data["results"][0]["latency_ms"].values()
                   if v is not None)


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def server(repo):
    s = LocalServer(model_name="toy", model_base_path=repo / "toy", port=0, rest_api_port=0,
                    file_system_poll_wait_seconds=0)
    with s:
        s.wait_until_ready(60)
        yield s


def test_grpc_and_rest_candidates_against_the_local_server(repo, server):
    # no model name given: the servers are asked for the model the export candidate is
    o = _options([f"export={repo / 'toy' / '1'}", f"grpc=grpc:{server.grpc_target}",
                  f"rest={server.rest_url}"], concurrency=2, runs=4, repeats=1, gemm_size=0)
    d = benchmark.run_benchmark(o)
    for b in BATCHES:
        g, r = _row(d, "grpc", b), _row(d, "rest", b)
        for row in (g, r):
            assert row["runs"] == 4 and row["concurrency"] == 2
            assert row["latency_ms"]["p50"] <= row["latency_ms"]["p99"]
            assert row["gemm_fraction"] is None  # only in-process candidates get one
        # the server runs the same SavedModel with the same TensorFlow
        assert g["accuracy"]["max_abs_diff"] == 0.0
        assert r["accuracy"]["max_abs_diff"] <= 1e-6
    cands = {c["label"]: c for c in d["candidates"]}
    assert cands["grpc"]["served_version"] == 1
    assert cands["grpc"]["inputs"]["images"]["shape"] == [-1, 8, 8, 3]
    assert cands["rest"]["outputs"] == ["embeddings"]


def test_unknown_model_on_a_real_server(server):
    o = _options([f"g={server.grpc_target}/nosuchmodel"], gemm_size=0)
    with pytest.raises(ServingError, match="NOT_FOUND"):
        benchmark.run_benchmark(o)


# --------------------------------------------------------------------------- CLI end to end


@pytest.mark.slow
def test_cli_benchmark_writes_the_table(tiny_ckpt, repo, tmp_path):
    out = tmp_path / "out"
    r = run_builder("benchmark", f"checkpoint={tiny_ckpt}", f"export={repo / 'toy'}",
                    "--batch_sizes", "1,2", "--runs", "2", "--repeats", "1", "--gemm_size", "64",
                    "--inputs", "input", "--outputs", "embeddings", "--feed", "phase_train=false",
                    "--input_alias", "input=images", "--input_shapes", "input=?x8x8x3",
                    "--out", str(out), "--basename", "t")
    assert r.returncode == 0, r.stderr
    assert "| checkpoint | 1 |" in r.stdout and "| export | 2 |" in r.stdout
    assert "[batch 2] repeat 1/1 export" in r.stderr  # progress on stderr
    data = json.loads((out / "t.json").read_text())
    assert [c["label"] for c in data["candidates"]] == ["checkpoint", "export"]
    assert data["command"].startswith("python -m builder benchmark")
    _png_size((out / "t.png").read_bytes())


# --------------------------------------------------------------------------- Classify / Regress


@pytest.fixture(scope="module")
def example_server(tmp_path_factory):
    """census/1: a tf.Example model with classify (serving_default) and regress signatures."""
    from integration_tests.fixture_models import build_example_model

    root = tmp_path_factory.mktemp("bench_examples")
    build_example_model(root, "census", 1, warmup=False)
    with LocalServer(model_name="census", model_base_path=root / "census", file_system_poll_wait_seconds=0) as s:
        s.wait_until_ready(60)
        yield root, s


@pytest.mark.parametrize(("signature", "api", "outputs"), [
    ("serving_default", "classify", ["classes", "scores"]),
    ("regress", "regress", ["outputs"]),
])
def test_classify_and_regress_signatures_are_benchmarked_through_their_apis(example_server, signature, api,
                                                                            outputs):
    """A server candidate whose signature is a classifier/regressor is called with Classify /
    Regress (gRPC and REST); the inputs are tf.Examples synthesised from the export's ParseExample
    specs, and the answers equal the in-process run of the same signature."""
    root, server = example_server
    o = candidates.BenchOptions(
        candidates=candidates.parse_candidates([f"export={root / 'census' / '1'}", f"grpc=grpc:{server.grpc_target}",
                                                f"rest={server.rest_url}"]),
        batch_sizes=[1, 3], warmup=1, repeats=1, runs=2, gemm_size=0, flops=False, quiet=True, signature=signature)
    d = benchmark.run_benchmark(o)
    cands = {c["label"]: c for c in d["candidates"]}
    for label in ("grpc", "rest"):
        assert cands[label]["api"] == api
        assert f" {api.capitalize()}, request encoded once" in cands[label]["runs_as"]
        for b in (1, 3):
            row = _row(d, label, b)
            assert row["runs"] == 2
            assert row["accuracy"]["max_abs_diff"] == 0.0, row["accuracy"]
            assert sorted(row["accuracy"]["outputs"]) == outputs
    assert d["settings"]["compared_outputs"] == outputs


def test_classify_signature_without_examples_names_the_fix(example_server, tmp_path):
    """Server candidates alone cannot invent tf.Examples: the error says to pass --samples."""
    root, server = example_server
    o = _options([f"grpc=grpc:{server.grpc_target}/census"], signature="serving_default", gemm_size=0,
                 batch_sizes=[1], repeats=1, runs=1)
    with pytest.raises(InputError, match="takes serialized tf.Examples.*--samples"):
        benchmark.run_benchmark(o)


# --------------------------------------------------------------------------- concurrent clients


def test_concurrent_clients_mode_compares_batching_on_a_tiny_model(repo, tmp_path):
    """--concurrent_clients: the exported toy through two real local servers (no batching, a
    batching file), closed-loop clients in a child process, the model alone in-process; every
    level has both servers' numbers and ratios, and the outputs are written."""
    from builder.bench import concurrent
    from builder.config import companions

    params = tmp_path / "batching_parameters.txt"
    params.write_text(companions.batching_parameters_text([2, 4], batch_timeout_micros=2000, num_batch_threads=1))
    o = candidates.BenchOptions(candidates=candidates.parse_candidates([str(repo / "toy")]), concurrent_clients=[1, 3],
                                batching_parameters_file=str(params), seconds=0.4, repeats=1, quiet=True)
    candidates.validate(o)
    said: list[str] = []
    doc = concurrent.run(o, said.append, "python -m builder benchmark --concurrent_clients 1,3 ...")
    assert [lv["concurrency"] for lv in doc["levels"]] == [1, 3]
    for lv in doc["levels"]:
        for k in ("no_batching", "batching"):
            assert lv[k]["rps"] > 0 and lv[k]["errors"] == 0
            assert lv[k]["p50_ms"] <= lv[k]["p99_ms"]
        assert lv["speedup"] == pytest.approx(lv["batching"]["rps"] / lv["no_batching"]["rps"], rel=1e-2)
    assert doc["execution_batch_size"] == 4 and doc["in_process_images_per_s"] > 0
    assert doc["batching_parameters_origin"] == "--batching_parameters_file"
    assert "max_batch_size=4" in doc["batching"]
    assert any("round 1/1 batching" in line for line in said)  # progress per round
    md = concurrent.render_markdown(doc)
    assert "| 3 |" in md and "batching req/s" in md and doc["cpu_summary"] in md
    written = concurrent.write_outputs(doc, tmp_path / "out", "cc")
    assert [p.name for p in written] == ["cc.json", "cc.md"]
    assert json.loads(written[0].read_text())["levels"][1]["concurrency"] == 3


@pytest.mark.parametrize(("specs", "clients", "params", "message"), [
    (["{ckpt}"], "4", None, "pass exactly one REPO/NAME"),
    (["{repo}/toy", "{repo}/toy/1"], "4", None, "pass exactly one REPO/NAME"),
    (["{repo}/toy"], "4", "/no/such/file", "no such file"),
    (["{repo}/toy"], "0", None, "--concurrent_clients 0 must be positive"),
    (["{repo}/toy"], "4", None, "no tuned batching file for toy.*python -m builder tune"),
])
def test_concurrent_clients_mode_refuses_what_it_cannot_measure(specs, clients, params, message, repo, tiny_ckpt,
                                                                 tmp_path):
    specs = [f"c{i}={s.format(ckpt=tiny_ckpt, repo=repo)}" for i, s in enumerate(specs)]
    with pytest.raises(InputError, match=message):
        benchmark.benchmark_command(*specs, concurrent_clients=clients, batching_parameters_file=params,
                                    out=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_concurrent_clients_mode_end_to_end(repo, tmp_path):
    from builder.config import companions

    params = tmp_path / "batching_parameters.txt"
    params.write_text(companions.batching_parameters_text([2, 4], batch_timeout_micros=2000, num_batch_threads=1))
    out = tmp_path / "out"
    r = run_builder("benchmark", str(repo / "toy"), "--concurrent_clients", "2", "--batching_parameters_file",
                    str(params), "--seconds", "0.3", "--repeats", "1", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "| 2 |" in r.stdout and f"wrote {out / 'concurrent_clients.md'}" in r.stdout
    assert "round 1/1 no_batching" in r.stderr  # progress on stderr
    data = json.loads((out / "concurrent_clients.json").read_text())
    assert data["command"].startswith("python -m builder benchmark") and "--concurrent_clients" in data["command"]

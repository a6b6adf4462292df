"""``python -m builder preflight`` on tiny real SavedModels built here, one per failure TF Serving
users meet (tensorflow/serving issues), plus the label rules of ``config`` checked with the
life-cycle module."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from builder.config import lifecycle, models_config, preflight
from builder.core import artifact
from builder.core.errors import ConfigError
from tests.helpers import run_builder


def _save(path: Path, kind: str = "good") -> Path:
    """A TF2 SavedModel whose serving_default shows one behaviour."""
    import tensorflow as tf

    w = tf.constant(np.arange(12, dtype=np.float32).reshape(4, 3) / 10)

    class M(tf.Module):
        if kind == "scalar":
            @tf.function(input_signature=[tf.TensorSpec([], tf.float32, name="x")])
            def serve(self, x):
                return {"y": x * 2.0}
        elif kind == "unbatchable":
            @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
            def serve(self, x):
                return {"y": tf.matmul(x, w), "colsum": tf.reduce_sum(x, axis=0)}
        elif kind == "renamed":
            @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float64, name="features")])
            def serve(self, features):
                return {"y": tf.matmul(tf.cast(features, tf.float32), w)}
        elif kind == "half":
            @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.half, name="x")])
            def serve(self, x):
                return {"y": x * tf.constant(2.0, tf.half)}
        else:
            @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
            def serve(self, x):
                return {"y": tf.matmul(x, w)}

    m = M()
    tf.saved_model.save(m, str(path), signatures={"serving_default": m.serve})
    artifact.write_build_info(path, {"name": path.parent.name, "version": int(path.name), "optimizer": "none"})
    return path


def _warmup(vdir: Path, x: np.ndarray, n: int = 1) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    log = prediction_log_pb2.PredictionLog()
    log.predict_log.request.model_spec.signature_name = "serving_default"
    log.predict_log.request.inputs["x"].CopyFrom(tf.make_tensor_proto(x.astype(np.float32)))
    artifact.write_tfrecords(vdir / artifact.WARMUP_FILE, [log.SerializeToString()] * n)


def _rows(rep, check: str, model: str | None = None) -> list:
    return [r for r in rep.rows if r.check == check and (model is None or r.model == model)]


def _status(rep, check: str, version: int | None = None) -> str:
    rows = [r for r in _rows(rep, check) if version is None or r.version == version]
    assert rows, f"no {check} row in {rep.rows}"
    return "FAIL" if any(r.status == "FAIL" for r in rows) else rows[0].status


def _config(repo: Path, labels: dict | None = None, policy: str | None = None) -> Path:
    cfg = models_config.build_config(repo, policies={"m": policy} if policy else None,
                                     labels={"m": labels} if labels else None, warn=lambda m: None)
    return models_config.write_models_config(cfg, repo / "models.config")


# --------------------------------------------------------------------------- static checks


def test_op_attribute_newer_than_the_target_fails_for_that_target_only(tmp_path):
    """MatMul gained grad_a/grad_b after TF 2.11: a graph that carries them (TF1 builders do not
    strip default attributes) fails to load in tensorflow/serving:2.11 with
    "NodeDef mentions attr 'grad_a' not in Op<name=MatMul>"."""
    from tensorflow.core.protobuf import saved_model_pb2

    v = _save(tmp_path / "repo" / "m" / "1")
    sm = saved_model_pb2.SavedModel.FromString((v / "saved_model.pb").read_bytes())
    n = 0
    for fn in sm.meta_graphs[0].graph_def.library.function:
        for node in fn.node_def:
            if node.op == "MatMul":
                node.attr["grad_a"].b = True
                n += 1
    assert n >= 1
    (v / "saved_model.pb").write_bytes(sm.SerializeToString())
    old = preflight.preflight(tmp_path / "repo", image="tensorflow/serving:2.11.0", probe=False)
    row = _rows(old, "ops")[0]
    assert row.status == "FAIL" and "NodeDef mentions attr 'grad_a' not in Op<name=MatMul>" in row.detail
    assert _status(old, "start-up") == "FAIL"  # the only version fails to load: the server exits
    new = preflight.preflight(tmp_path / "repo", image="tensorflow/serving:2.17.0", probe=False)
    assert _status(new, "ops") == "ok" and _status(new, "start-up") == "ok"


def test_op_unknown_to_the_target_names_the_release_that_added_it(tmp_path):
    from tensorflow.core.protobuf import saved_model_pb2

    v = _save(tmp_path / "repo" / "m" / "1")
    sm = saved_model_pb2.SavedModel.FromString((v / "saved_model.pb").read_bytes())
    node = sm.meta_graphs[0].graph_def.node.add()
    node.name, node.op = "fft", "FFTND"  # registered from TF 2.15 on
    node2 = sm.meta_graphs[0].graph_def.node.add()
    node2.name, node2.op = "custom", "MyCustomOp"
    (v / "saved_model.pb").write_bytes(sm.SerializeToString())
    rep = preflight.preflight(tmp_path / "repo", image="tensorflow/serving:2.14.0", probe=False)
    detail = _rows(rep, "ops")[0].detail
    assert "Op type not registered 'FFTND' (node fft): added in TF 2.15" in detail
    assert "Op type not registered 'MyCustomOp' (node custom): a custom op" in detail


def test_snapshots_cover_serving_2_11_to_2_17_and_newer_tags_fall_back():
    assert preflight.snapshot_versions() == [(2, v) for v in range(11, 18)]
    ops = preflight.load_opdefs((2, 17))["ops"]
    assert "grad_a" in ops["MatMul"][0]  # an attribute with a default (false)
    assert "grad_a" not in sum(preflight.load_opdefs((2, 11))["ops"]["MatMul"][:2], [])
    assert ops["MatMul"][2:] == [2, 1]
    target, note = preflight.resolve_target("tensorflow/serving:2.19.0")
    assert target == (2, 17) and "no op snapshot for 2.19" in note
    with pytest.raises(Exception, match="op snapshots for TF Serving 2.11..2.17"):
        preflight.resolve_target("tensorflow/serving:2.8.0")


def test_trt_ops_need_a_gpu_image_and_xla_nodes_fail(tmp_path):
    from tensorflow.core.protobuf import saved_model_pb2

    v = _save(tmp_path / "repo" / "m" / "1")
    sm = saved_model_pb2.SavedModel.FromString((v / "saved_model.pb").read_bytes())
    fn = sm.meta_graphs[0].graph_def.library.function[0]
    fn.attr["_XlaMustCompile"].b = True  # what tf.function(jit_compile=True) leaves
    trt = fn.node_def.add()
    trt.name, trt.op = "TRTEngineOp_000_000", "TRTEngineOp"
    (v / "saved_model.pb").write_bytes(sm.SerializeToString())
    rep = preflight.preflight(tmp_path / "repo", image="tensorflow/serving:2.17.0", probe=False)
    assert "CPU image" in _rows(rep, "image")[0].detail and _status(rep, "image") == "FAIL"
    assert "xla_cpu_compilation_enabled" in _rows(rep, "xla")[0].detail and _status(rep, "xla") == "FAIL"
    gpu = preflight.preflight(tmp_path / "repo", image="tensorflow/serving:2.17.0-gpu", probe=False)
    assert _status(gpu, "image") == "ok"


def test_rest_cannot_carry_half_and_string_outputs_need_bytes_suffix(tmp_path):
    _save(tmp_path / "repo" / "m" / "1", "half")
    rep = preflight.preflight(tmp_path / "repo", probe=False)
    row = _rows(rep, "rest")[0]
    assert row.status == "FAIL" and "input 'x' is float16" in row.detail and "output 'y' is float16" in row.detail
    grpc_only = preflight.preflight(tmp_path / "repo", probe=False, rest=False)
    assert _rows(grpc_only, "rest") == [] and grpc_only.failed == []


def test_breaking_signature_change_fails_unless_allowed(tmp_path):
    repo = tmp_path / "repo"
    _save(repo / "m" / "1")
    _save(repo / "m" / "2", "renamed")
    rep = preflight.preflight(repo, probe=False)
    row = _rows(rep, "contract")[0]
    assert row.status == "FAIL" and row.version == 2
    assert "input 'x' removed" in row.detail and "input 'features' added" in row.detail
    rep = preflight.preflight(repo, probe=False, allow_breaking=True)
    assert _rows(rep, "contract")[0].status == "warn"
    rep = preflight.preflight(repo, probe=False, against="m=2")
    assert _rows(rep, "contract")[0].detail == "vs version 2: same signatures"


def test_contract_diff_rules():
    import tensorflow as tf

    def sig(shape, dtype=tf.float32, method="tensorflow/serving/predict", outputs=("y",)):
        s = tf.compat.v1.saved_model.build_signature_def(
            {"x": tf.compat.v1.saved_model.utils.build_tensor_info(tf.compat.v1.placeholder(dtype, shape))},
            {o: tf.compat.v1.saved_model.utils.build_tensor_info(tf.compat.v1.placeholder(tf.float32, [None]))
             for o in outputs}, method)
        return {"serving_default": s}

    with tf.Graph().as_default():
        base = sig([None, 4])
        assert preflight.contract_diff(base, sig([None, None]))[0] == []  # relaxed: compatible
        assert preflight.contract_diff(base, sig([None, 5]))[0]
        assert preflight.contract_diff(base, sig([None, 4], tf.int32))[0]
        assert preflight.contract_diff(base, sig([None, 4], method="tensorflow/serving/classify"))[0]
        assert preflight.contract_diff(base, sig([None, 4], outputs=("y", "z"))) == \
            ([], ["signature 'serving_default' output 'z' added"])
        assert preflight.contract_diff(base, {}) == (["signature 'serving_default' removed"], [])


# --------------------------------------------------------------------------- life-cycle on real files


def test_label_in_first_config_fails_startup_without_the_flag(tmp_path):
    repo = tmp_path / "repo"
    _save(repo / "m" / "1")
    _config(repo, labels={"stable": 1})
    stock = preflight.preflight(repo, probe=False, allow_unavailable_labels=False)
    row = _rows(stock, "start-up")[0]
    assert row.status == "FAIL" and "Request to assign label to version 1 of model m" in row.detail
    project = preflight.preflight(repo, probe=False)  # the project's flags: the image passes it
    assert _status(project, "start-up") == "ok"


@pytest.mark.slow
def test_failing_v2_beside_good_v1_keeps_v1_serving_but_fails_startup(tmp_path):
    """v2's warmup record does not fit its graph: the load fails (warmup replay), so a fresh
    server exits, and a running one keeps v1 (availability preserving) after 6 attempts."""
    repo = tmp_path / "repo"
    _save(repo / "m" / "1")
    _warmup(repo / "m" / "1", np.ones((2, 4)))
    _save(repo / "m" / "2")
    _warmup(repo / "m" / "2", np.ones((2, 5)))  # matmul [2,5] x [4,3] fails
    rep = preflight.preflight(repo, write_footprint=False)
    replay = [r for r in _rows(rep, "warmup replay") if r.version == 2][0]
    assert replay.status == "FAIL" and "warmup record 0" in replay.detail
    start = _rows(rep, "start-up")[0]
    assert start.status == "FAIL" and "model m version 2 did not become available" in start.detail
    hot = _rows(rep, "hot reload")[0]
    assert hot.status == "warn" and "serving [1] -> [1]" in hot.detail and "not retried while on disk" in hot.detail


def test_duplicate_version_names_are_reported(tmp_path):
    repo = tmp_path / "repo"
    _save(repo / "m" / "1")
    (repo / "m" / "01").mkdir()
    rep = preflight.preflight(repo, probe=False)
    assert any("Version 1 will be loaded from 1, 01 will be ignored" in r.detail for r in _rows(rep, "discovery"))


# --------------------------------------------------------------------------- runtime probe


@pytest.mark.slow
def test_scalar_input_with_batching_fails_and_passes_without_batching(tmp_path):
    repo = tmp_path / "repo"
    _save(repo / "m" / "1", "scalar")
    rep = preflight.preflight(repo, write_footprint=False)
    row = _rows(rep, "batching")[0]
    assert row.status == "FAIL" and "input 'x' is a scalar" in row.detail
    assert _rows(preflight.preflight(repo, batching=False, probe=False), "batching") == []


@pytest.mark.slow
def test_unbatchable_output_is_found_by_running_merged_and_separate_requests(tmp_path):
    repo = tmp_path / "repo"
    _save(repo / "m" / "1", "unbatchable")
    rep = preflight.preflight(repo, write_footprint=False)
    row = _rows(rep, "batching")[0]
    assert row.status == "FAIL"
    assert "output 'colsum' has dim 0 = 4 for a batch of 3" in row.detail and "'y'" not in row.detail


@pytest.mark.slow
def test_footprint_goes_to_build_info_and_deploy_sizes_memory_from_it(tmp_path):
    from builder.deploy.plan import DeployOptions, plan

    repo = tmp_path / "repo"
    _save(repo / "m" / "1")
    _warmup(repo / "m" / "1", np.ones((3, 4)), n=2)
    rep = preflight.preflight(repo)
    assert rep.failed == [], rep.rows
    assert _rows(rep, "warmup replay")[0].detail == "2 record(s) ran"
    assert _status(rep, "batching") == "ok"
    fp = artifact.read_build_info(repo / "m" / "1")["footprint"]
    assert fp["model_bytes"] > 0 and fp["hot_reload_bytes"] == 2 * fp["model_bytes"]
    assert fp["recommended_memory_bytes"] == fp["runtime_bytes"] + 2 * fp["model_bytes"]
    p = plan(DeployOptions(name="m", base_path="gs://b/m", image="tensorflow/serving:2.17.0", repo=str(repo)))
    assert p.memory == f"{-(-fp['recommended_memory_bytes'] // 2**20)}Mi"
    assert plan(DeployOptions(name="m", base_path="gs://b/m", image="tensorflow/serving:2.17.0",
                              repo=str(repo), memory="3Gi")).memory == "3Gi"


@pytest.mark.slow
def test_cli_exits_2_with_a_table_and_json(tmp_path):
    repo = tmp_path / "repo"
    _save(repo / "m" / "1", "scalar")
    r = run_builder("preflight", "--repo", str(repo), "--nowrite_footprint")
    assert r.returncode == 2, r.stderr
    assert "check" in r.stdout and "batching" in r.stdout and "FAIL" in r.stdout
    assert r.stderr.strip().splitlines()[-1].startswith("error: preflight: 1 check(s) predict a failure")
    r = run_builder("preflight", "--repo", str(repo), "--batching", "false", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["passed"] is True and {row["check"] for row in doc["rows"]} >= {"ops", "start-up", "footprint"}


# --------------------------------------------------------------------------- labels that deploy


def test_config_labels_always_pass_startup_with_the_projects_flags(tmp_path):
    repo = tmp_path / "repo"
    for v in (1, 2):
        (repo / "m" / str(v)).mkdir(parents=True)
    path = _config(repo, labels={"stable": 1, "canary": 2}, policy="specific:1,2")
    cfg = models_config.read_models_config(path)
    project = lifecycle.ServerFlags(allow_version_labels_for_unavailable_models=True)
    assert lifecycle.startup_plan(cfg, project).starts
    assert lifecycle.startup_plan(cfg).would_exit  # what the image did before it passed the flag
    with pytest.raises(ConfigError, match="version 3 does not exist"):
        _config(repo, labels={"stable": 3})


def test_label_move_to_a_version_not_yet_loaded_is_two_steps(tmp_path):
    repo = tmp_path / "repo"
    for v in (1, 2):
        (repo / "m" / str(v)).mkdir(parents=True)
    path = repo / "models.config"
    models_config.config_command(repo=str(repo), policy="m=specific:1", label="m:stable=1", companions=False)
    before = path.read_text()
    # one step: version 2 enters the policy and the label moves in the same file -> refused
    with pytest.raises(ConfigError, match="Roll out in two steps"):
        models_config.config_command(repo=str(repo), policy="m=specific:1,2", label="m:stable=2",
                                     companions=False)
    assert path.read_text() == before  # nothing written
    # TF Serving would refuse that file on reload, even with the flag
    assert lifecycle.check_labels({"stable": 2}, [1], True, {"stable": 1}, "m")
    # step 1: load version 2, label unchanged; the server accepts it
    models_config.config_command(repo=str(repo), policy="m=specific:1,2", companions=False)
    step1 = models_config.read_models_config(path).model_config_list.config[0]
    assert dict(step1.version_labels) == {"stable": 1}
    assert lifecycle.check_labels(dict(step1.version_labels), [1], True, {"stable": 1}, "m") == []
    # step 2 (version 2 AVAILABLE): the move is written and accepted
    models_config.config_command(repo=str(repo), label="m:stable=2", companions=False)
    step2 = models_config.read_models_config(path).model_config_list.config[0]
    assert dict(step2.version_labels) == {"stable": 2}
    assert lifecycle.check_labels(dict(step2.version_labels), [1, 2], True, {"stable": 1}, "m") == []
    # a brand-new label may name a version that is still loading (the flag allows it)
    models_config.config_command(repo=str(repo), label="m:canary=2", companions=False)


# --------------------------------------------------------------------------- op snapshots


def test_gen_opdefs_reads_an_ops_pbtxt_into_the_compact_snapshot(tmp_path):
    """The --pbtxt source (TensorFlow's ops.pbtxt at a release tag) gives the same compact form."""
    import gzip
    import subprocess
    import sys

    pbtxt = tmp_path / "ops.pbtxt"
    pbtxt.write_text('op { name: "MatMul" input_arg { name: "a" type_attr: "T" } input_arg { name: "b" '
                     'type_attr: "T" } output_arg { name: "product" type_attr: "T" } attr { name: '
                     '"transpose_a" type: "bool" default_value { b: false } } attr { name: "T" type: "type" } }\n')
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "scripts" / "gen_opdefs"), "--only", "2.17", "--pbtxt",
                        str(pbtxt), "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    doc = json.loads(gzip.decompress((tmp_path / "out" / "serving-2.17.json.gz").read_bytes()))
    assert doc["ops"] == {"MatMul": [["transpose_a"], ["T"], 2, 1]}
    assert doc["source"] == "tensorflow/core/ops/ops.pbtxt at v2.17.0"


def test_shipped_2_17_snapshot_matches_this_tensorflow_2_17_registry():
    """The local TensorFlow is 2.17.1: every op it registers has the 2.17 snapshot's attributes."""
    from tensorflow.python.framework import op_def_registry

    ops = preflight.load_opdefs((2, 17))["ops"]
    assert preflight.load_opdefs((2, 17))["tensorflow"] == "2.17.0"
    for name in ("MatMul", "Conv2D", "VarHandleOp", "FusedBatchNormV3", "StatefulPartitionedCall"):
        local = op_def_registry.get(name)
        assert sorted(a.name for a in local.attr) == sorted(ops[name][0] + ops[name][1]), name
        assert [len(local.input_arg), len(local.output_arg)] == ops[name][2:]

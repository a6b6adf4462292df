"""The ``cpu`` optimiser on real TF graphs: folded feeds, dead branches gone, batch norm folded
into weights, only standard ops, same answers (FP32 max abs diff <= 1e-5)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from builder.core.errors import BuilderError, InputError, UnavailableError
from builder.core.model import NormalizedModel, TensorInfo
from builder.optimize import cpu

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------- graph builders


def _v1_cond(v2: bool):
    from tensorflow.python.ops import control_flow_util

    class _Flag:
        def __enter__(self):
            self.old = control_flow_util.ENABLE_CONTROL_FLOW_V2
            control_flow_util.ENABLE_CONTROL_FLOW_V2 = v2

        def __exit__(self, *exc):
            control_flow_util.ENABLE_CONTROL_FLOW_V2 = self.old

    return _Flag()


def conv_bn_graph(v2_control_flow: bool = False, depthwise: bool = False, seed: int = 0):
    """FaceNet's pattern in small: conv -> fused batch norm picked by tf.cond(phase_train) ->
    ReLU, twice; then mean-pool, a bottleneck MatMul with batch norm through a [-1,1,1,C]
    reshape (slim's 2-D batch norm), L2 normalisation. Frozen; returns (graph_def, run) where
    run(x, phase_train) runs the ORIGINAL graph."""
    import tensorflow as tf

    v1 = tf.compat.v1
    rng = np.random.default_rng(seed)
    g = tf.Graph()
    with _v1_cond(v2_control_flow), g.as_default():
        x = v1.placeholder(tf.float32, [None, 12, 12, 3], name="input")
        pt = v1.placeholder(tf.bool, [], name="phase_train")

        def bn(h, c, name):
            mm = tf.constant(rng.normal(0, 0.5, c).astype(np.float32), name=f"{name}/mean")
            mv = tf.constant(rng.uniform(0.5, 2, c).astype(np.float32), name=f"{name}/var")
            beta = tf.constant(rng.normal(0, 0.1, c).astype(np.float32), name=f"{name}/beta")
            gamma = tf.constant(rng.uniform(0.5, 1.5, c).astype(np.float32), name=f"{name}/gamma")

            def train():
                return v1.nn.fused_batch_norm(h, gamma, beta, epsilon=1e-3, is_training=True)[0]

            def infer():
                return v1.nn.fused_batch_norm(h, gamma, beta, mean=mm, variance=mv, epsilon=1e-3,
                                              is_training=False)[0]

            return v1.cond(pt, train, infer)

        h = x
        for i, c in enumerate([8, 16]):
            if depthwise and i == 1:
                w = tf.constant(rng.normal(0, 0.3, (3, 3, 8, 2)).astype(np.float32))
                h = tf.nn.depthwise_conv2d(h, w, [1, 1, 1, 1], "SAME")
            else:
                w = tf.constant(rng.normal(0, 0.3, (3, 3, int(h.shape[-1]), c)).astype(np.float32))
                h = tf.nn.conv2d(h, w, 1, "SAME")
            h = tf.nn.relu(bn(h, c, f"bn{i}"))
        h = tf.reduce_mean(h, [1, 2])
        w = tf.constant(rng.normal(0, 0.3, (16, 6)).astype(np.float32))
        h = tf.matmul(h, w)
        h = tf.reshape(bn(tf.reshape(h, [-1, 1, 1, 6]), 6, "bn_fc"), [-1, 6])
        tf.nn.l2_normalize(h, 1, 1e-10, name="embeddings")
    gd = g.as_graph_def()
    sess = v1.Session(graph=g)

    def run(xs, phase_train=False):
        return sess.run("embeddings:0", {"input:0": xs, "phase_train:0": phase_train})

    return gd, run


def model_of(gd, run, size=12, feeds=None, out_dim=6) -> NormalizedModel:
    return NormalizedModel(
        graph_def=gd,
        inputs=[TensorInfo("images", "input:0", "float32", [None, size, size, 3])],
        outputs=[TensorInfo("embeddings", "embeddings:0", "float32", [None, out_dim])],
        flow="frozen", source_path="/nowhere", source_files=[],
        feeds={"phase_train": False} if feeds is None else feeds,
        run_source=lambda d: {"embeddings": run(d["images"])},
    )


def run_graph(gd, feeds: dict, fetch: str = "embeddings:0"):
    import tensorflow as tf

    with tf.Graph().as_default() as g:
        tf.graph_util.import_graph_def(gd, name="")
        with tf.compat.v1.Session(graph=g) as s:
            return s.run(fetch, feeds)


def ops_of(gd) -> Counter:
    from builder.config.compat import op_histogram

    return op_histogram(gd)


# --------------------------------------------------------------------------- request checks


@pytest.mark.parametrize("opt,prec", [("none", "fp32"), ("cpu", "fp32")])
def test_check_request_accepts_cpu_side_combinations(opt, prec):
    cpu.check_request(opt, prec)  # no exception, no probe needed


@pytest.mark.parametrize("opt,prec,words", [
    ("gpu", "fp32", ["--optimize 'gpu'", "none, cpu, tftrt"]),
    ("cpu", "fp64", ["--precision 'fp64'", "fp32"]),
    ("none", "fp16", ["--precision fp16", "--optimize tftrt"]),
    ("cpu", "int8", ["--precision int8", "--optimize tftrt", "int8 on CPU is not offered"]),
    ("tftrt", "bf16", ["--precision bf16", "CPU precision"]),
])
def test_check_request_rejects_bad_combinations_in_one_line(opt, prec, words):
    with pytest.raises(InputError) as e:
        cpu.check_request(opt, prec)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_check_request_tftrt_fails_here_before_any_work():
    from builder.optimize import tftrt

    if tftrt.probe_tensorrt()["available"]:
        pytest.skip("TensorRT is available here: the unavailable path cannot be shown")
    with pytest.raises(UnavailableError) as e:
        cpu.check_request("tftrt", "fp16")
    msg = str(e.value)
    assert "\n" not in msg and "--optimize tftrt" in msg
    assert "scripts/builder-gpu.Dockerfile" in msg and "libnvinfer.so.8" in msg


# --------------------------------------------------------------------------- whole pipeline


@pytest.mark.parametrize("v2", [False, True], ids=["switch-merge", "functional-if"])
def test_cpu_optimizer_removes_conditionals_and_folds_batch_norm(v2):
    gd, run = conv_bn_graph(v2_control_flow=v2)
    model = model_of(gd, run)
    before = type(gd)()
    before.CopyFrom(gd)
    new, info = cpu.optimize_graph(model, "cpu")

    assert model.graph_def == before  # the input model is untouched
    assert new is not model and new.graph_def is not model.graph_def
    assert [t.alias for t in new.inputs] == ["images"] and new.outputs[0].tensor == "embeddings:0"
    assert new.run_source is model.run_source and new.feeds == model.feeds

    ops = ops_of(new.graph_def)
    assert not set(ops) & {"Switch", "Merge", "If", "StatelessIf", "FusedBatchNormV3", "FusedBatchNorm"}
    assert ops["Placeholder"] == 1  # phase_train became a constant and was folded away
    assert ops["BiasAdd"] == 3  # two convs + the bottleneck MatMul carry the folded batch norms
    assert not new.graph_def.library.function
    assert info["nodes_after"] < info["nodes_before"]
    assert info["op_delta"].get("FusedBatchNormV3", 0) < 0
    folds = next(p for p in info["passes"] if p["name"] == "fold_batch_norm")
    assert folds["batch_norm"] == 3

    x = RNG.normal(size=(5, 12, 12, 3)).astype(np.float32)
    ref = run(x, False)
    got = run_graph(new.graph_def, {"input:0": x})
    assert np.abs(got - ref).max() <= 1e-5
    # phase_train=True gives different answers, so the comparison above is not trivially true
    assert np.abs(run(x, True) - ref).max() > 1e-2


def test_cpu_optimizer_folds_feeds_that_are_still_placeholders():
    gd, run = conv_bn_graph()
    new, info = cpu.optimize_graph(model_of(gd, run), "cpu")
    assert info["passes"][0] == {"name": "fold_feeds", "folded": ["phase_train"]}
    x = RNG.normal(size=(2, 12, 12, 3)).astype(np.float32)
    assert np.abs(run_graph(new.graph_def, {"input:0": x}) - run(x)).max() <= 1e-5


def test_depthwise_conv_batch_norm_is_folded():
    gd, run = conv_bn_graph(depthwise=True)
    new, _ = cpu.optimize_graph(model_of(gd, run), "cpu")
    ops = ops_of(new.graph_def)
    assert ops["DepthwiseConv2dNative"] == 1 and "FusedBatchNormV3" not in ops
    x = RNG.normal(size=(3, 12, 12, 3)).astype(np.float32)
    assert np.abs(run_graph(new.graph_def, {"input:0": x}) - run(x)).max() <= 1e-5


def test_none_is_an_identity_copy():
    gd, run = conv_bn_graph()
    model = model_of(gd, run)
    new, info = cpu.optimize_graph(model, "none")
    assert new.graph_def is not model.graph_def
    assert new.graph_def == model.graph_def  # message equality (map order is not stable in bytes)
    assert info["passes"] == [] and info["op_delta"] == {}
    assert info["nodes_before"] == info["nodes_after"] == len(gd.node)


def test_optimized_graph_reimports_and_uses_only_public_registered_ops():
    import tensorflow as tf
    from tensorflow.python.framework import op_def_registry

    gd, run = conv_bn_graph()
    new, _ = cpu.optimize_graph(model_of(gd, run), "cpu")
    for op in ops_of(new.graph_def):
        assert op_def_registry.get(op) is not None and not op.startswith("_"), op
    with tf.Graph().as_default() as g:
        tf.graph_util.import_graph_def(new.graph_def, name="")
        assert g.get_tensor_by_name("embeddings:0").shape.as_list() == [None, 6]
    assert all(n.device == "" for n in new.graph_def.node)


def test_check_standard_graph_rejects_internal_fused_ops():
    """What the remapper would produce (``_FusedConv2D``) is refused by the final check."""
    import tensorflow as tf
    from tensorflow.core.protobuf import config_pb2, meta_graph_pb2
    from tensorflow.python.grappler import tf_optimizer

    gd, run = conv_bn_graph()
    new, _ = cpu.optimize_graph(model_of(gd, run), "cpu")
    mg = meta_graph_pb2.MetaGraphDef()
    mg.graph_def.CopyFrom(new.graph_def)
    for n in mg.graph_def.node:
        n.device = "/device:CPU:0"  # the remapper only fuses placed nodes
    mg.collection_def["train_op"].node_list.value.append("embeddings")
    cfg = config_pb2.ConfigProto()
    cfg.graph_options.rewrite_options.optimizers.append("remap")
    cfg.graph_options.rewrite_options.min_graph_nodes = -1
    fused = tf_optimizer.OptimizeGraph(cfg, mg, verbose=False)
    assert any(n.op.startswith("_Fused") for n in fused.node)
    with pytest.raises(BuilderError, match="non-standard ops.*_Fused"):
        cpu.check_standard_graph(fused)
    assert tf.__version__.startswith("2.17")


def test_optimize_graph_refuses_cpu_int8_and_checks_bf16_hardware():
    """int8 is refused with the measured reason; bf16 goes through the CPU check (accepted
    only where this CPU has bf16 units: tests/test_bf16.py covers both sides)."""
    from builder.core.errors import UnavailableError
    from builder.optimize import bf16

    gd, run = conv_bn_graph()
    with pytest.raises(InputError, match="--precision int8: int8 on CPU is not offered"):
        cpu.optimize_graph(model_of(gd, run), "cpu", "int8")
    if not bf16.bf16_capability()[0]:
        with pytest.raises(UnavailableError, match="--precision bf16"):
            cpu.optimize_graph(model_of(gd, run), "cpu", "bf16")
    else:
        _, info = cpu.optimize_graph(model_of(gd, run), "cpu", "bf16")
        assert info["precision"] == "bf16" and info["bf16"]["mode"] == "profile"
        assert "measured" not in info["bf16"]  # only with measure_batch (the export passes it)


# --------------------------------------------------------------------------- fold patterns


def _frozen(build):
    """Build a graph with input placeholder 'input' [None,6,6,4] and output 'out'."""
    import tensorflow as tf

    v1 = tf.compat.v1
    g = tf.Graph()
    with g.as_default():
        x = v1.placeholder(tf.float32, [None, 6, 6, 4], name="input")
        tf.identity(build(tf, x), name="out")
    return g.as_graph_def()


def _fold_and_compare(gd, out_rank=4):
    inputs = [TensorInfo("x", "input:0", "float32", [None, 6, 6, 4])]
    outputs = [TensorInfo("y", "out:0", "float32", [None] * out_rank)]
    folded, stats = cpu.fold_batch_norms(gd, keep=["out", "input"], protected={"out"})
    x = RNG.normal(size=(3, 6, 6, 4)).astype(np.float32)
    ref = run_graph(gd, {"input:0": x}, "out:0")
    got = run_graph(folded, {"input:0": x}, "out:0")
    assert np.abs(got - ref).max() <= 1e-5 * max(1.0, float(np.abs(ref).max()))
    cpu.check_standard_graph(folded, inputs, outputs)
    return folded, stats


W = RNG.normal(0, 0.5, (3, 3, 4, 5)).astype(np.float32)
C = RNG.uniform(0.5, 2.0, 5).astype(np.float32)
B = RNG.normal(0, 1.0, 5).astype(np.float32)


def test_fold_mul_by_per_channel_constant_into_conv():
    gd = _frozen(lambda tf, x: tf.nn.relu(tf.nn.conv2d(x, W, 1, "SAME") * C))
    folded, stats = _fold_and_compare(gd)
    assert stats["mul"] == 1 and "Mul" not in ops_of(folded)


def test_fold_scale_of_biased_conv_like_a_residual_branch():
    gd = _frozen(lambda tf, x: 0.17 * tf.nn.bias_add(tf.nn.conv2d(x, W, 1, "SAME"), B) + x[..., :1])
    folded, stats = _fold_and_compare(gd)
    ops = ops_of(folded)
    assert stats["mul"] == 1 and ops["BiasAdd"] == 1 and "Mul" not in ops


def test_fold_add_and_sub_of_constants_into_one_bias():
    gd = _frozen(lambda tf, x: tf.nn.relu(
        (tf.nn.conv2d(x, W, 1, "SAME") + B.reshape(1, 1, 1, 5)) - C))
    folded, stats = _fold_and_compare(gd)
    ops = ops_of(folded)
    assert stats["add"] == 2 and ops["BiasAdd"] == 1 and not set(ops) & {"Add", "AddV2", "Sub"}


def test_no_fold_when_the_conv_output_has_another_consumer():
    gd = _frozen(lambda tf, x: (lambda y: y * C + y)(tf.nn.conv2d(x, W, 1, "SAME")))
    folded, stats = _fold_and_compare(gd)
    assert stats["total"] == 0


def test_no_fold_of_a_constant_that_is_not_per_channel():
    spatial = RNG.uniform(0.5, 2.0, (1, 6, 1, 1)).astype(np.float32)
    gd = _frozen(lambda tf, x: tf.nn.conv2d(x, W, 1, "SAME") * spatial)
    _, stats = _fold_and_compare(gd)
    assert stats["total"] == 0


def test_no_fold_of_training_mode_batch_norm():
    def build(tf, x):
        y = tf.nn.conv2d(x, W, 1, "SAME")
        return tf.compat.v1.nn.fused_batch_norm(y, C, B, epsilon=1e-3, is_training=True)[0]

    gd = _frozen(build)
    _, stats = _fold_and_compare(gd)
    assert stats["total"] == 0


def test_no_fold_through_a_reshape_that_moves_the_channel_axis():
    m = RNG.normal(0, 0.5, (4, 6)).astype(np.float32)
    scale = RNG.uniform(0.5, 2.0, 3).astype(np.float32)

    def build(tf, x):
        y = tf.matmul(tf.reduce_mean(x, [1, 2]), m)  # [N, 6]
        return tf.reshape(y, [-1, 2, 3]) * scale  # the scale hits a different axis than MatMul's

    gd = _frozen(build)
    _, stats = _fold_and_compare(gd, out_rank=3)
    assert stats["total"] == 0


def test_fold_never_consumes_a_signature_output():
    import tensorflow as tf

    v1 = tf.compat.v1
    with tf.Graph().as_default() as g:
        x = v1.placeholder(tf.float32, [None, 6, 6, 4], name="input")
        y = tf.nn.conv2d(x, W, 1, "SAME", name="features")
        tf.identity(y * C, name="out")
    gd = g.as_graph_def()
    folded, stats = cpu.fold_batch_norms(gd, keep=["out", "features", "input"],
                                              protected={"out", "features"})
    assert stats["total"] == 0
    assert {n.name for n in folded.node} >= {"features", "out"}


# --------------------------------------------------------------------------- FaceNet example


def test_cpu_optimizer_on_the_tiny_facenet_example(facenet_tiny):
    from builder.load import loaders

    size = facenet_tiny["image_size"]
    model = loaders.load(facenet_tiny["frozen"], "frozen", inputs=["input"], outputs=["embeddings"],
                         feeds={"phase_train": "false"}, input_alias={"input": "images"},
                         input_shapes={"input": [None, size, size, 3]})
    try:
        new, info = cpu.optimize_graph(model, "cpu")
        ops = ops_of(new.graph_def)
        assert not set(ops) & {"Switch", "Merge", "FusedBatchNormV3", "RandomUniform"}
        assert ops["Conv2D"] == ops_of(model.graph_def)["Conv2D"]
        assert info["nodes_after"] < info["nodes_before"] / 4
        x = np.random.default_rng(1).normal(size=(4, size, size, 3)).astype(np.float32)
        ref = model.run_source({"images": x})["embeddings"]
        got = run_graph(new.graph_def, {new.inputs[0].tensor: x}, new.outputs[0].tensor)
        assert np.abs(got - ref).max() <= 1e-5
    finally:
        model.close()


@pytest.fixture(scope="module")
def facenet_full(tmp_path_factory):
    from builder.example.facenet import write_example

    return write_example(tmp_path_factory.mktemp("facenet_full") / "example", tiny=False, log=None)


@pytest.mark.slow
def test_cpu_export_of_full_facenet_keeps_fp32_parity_and_loads_like_tf_serving(facenet_full, tmp_path):
    """The real export (checkpoint flow, the seed's) with --optimize cpu: parity <= 1e-5 on the
    golden inputs against the checkpoint session, standard ops only, loadable with the TF1
    SavedModel loader TF Serving uses."""
    import tensorflow as tf
    from tensorflow.python.framework import op_def_registry

    from builder.export import parity, pipeline

    r = pipeline.export(pipeline.ExportOptions(
        model=str(facenet_full["checkpoint_dir"]), flow="checkpoint", name="facenet",
        repo=str(tmp_path), inputs=["input"], outputs=["embeddings"], feed={"phase_train": "false"},
        input_alias={"input": "images"}, input_shapes={"input": "?x160x160x3"}, optimize="cpu",
        batch_sizes=[1, 8]), quiet=True)
    info = r.build_info
    assert info["optimizer"] == "cpu" and info["parity"]["passed"]
    assert info["parity"]["max_abs_diff"] <= 1e-5
    opt = info["optimization"]
    folds = next(p for p in opt["passes"] if p["name"] == "fold_batch_norm")
    assert folds["batch_norm"] >= 100  # every conv + the bottleneck
    gold = np.load(r.path / "assets.extra/golden.npz")
    with tf.Graph().as_default() as g, tf.compat.v1.Session(graph=g) as s:
        mg = tf.compat.v1.saved_model.loader.load(s, ["serve"], str(r.path))
        ops = {n.op for n in mg.graph_def.node}
        sig = mg.signature_def["serving_default"]
        out = s.run(sig.outputs["embeddings"].name, {sig.inputs["images"].name: gold["in/images"]})
    assert all(op_def_registry.get(op) is not None and not op.startswith("_") for op in ops)
    assert not ops & {"Switch", "Merge", "FusedBatchNormV3"}
    assert np.abs(out - gold["out/embeddings"]).max() <= 1e-5
    rerun = parity.run_saved_model(r.path, {"images": gold["in/images"]})["embeddings"]
    np.testing.assert_allclose(rerun, out, atol=1e-6)


def test_export_cli_with_optimize_cpu(facenet_tiny, tmp_path):
    """The real CLI: exit 0, build_info records the passes, the served graph lost the
    conditionals and batch norms, and TF Serving's loader answers like the golden outputs."""
    import json

    import tensorflow as tf

    from tests.helpers import run_builder

    size = facenet_tiny["image_size"]
    repo = tmp_path / "repo"
    p = run_builder("export", "--model", str(facenet_tiny["frozen"]), "--name", "facenet",
                    "--repo", str(repo), "--inputs", "input", "--outputs", "embeddings",
                    "--feed", "phase_train=false", "--input_alias", "input=images",
                    "--input_shapes", f"input=?x{size}x{size}x3", "--optimize", "cpu",
                    "--batch_sizes", "1,4")
    assert p.returncode == 0, p.stderr
    vdir = repo / "facenet" / "1"
    info = json.loads((vdir / "assets.extra" / "build_info.json").read_text())
    assert info["optimizer"] == "cpu" and info["precision"] == "fp32"
    assert info["parity"]["passed"] and info["parity"]["max_abs_diff"] <= 1e-5
    names = [p["name"] for p in info["optimization"]["passes"]]
    assert names == ["fold_feeds", "grappler", "fold_batch_norm", "grappler", "check_standard_ops"]
    assert "--optimize cpu" in info["reproduce"]
    gold = np.load(vdir / "assets.extra" / "golden.npz")
    with tf.Graph().as_default() as g, tf.compat.v1.Session(graph=g) as s:
        mg = tf.compat.v1.saved_model.loader.load(s, ["serve"], str(vdir))
        assert not {n.op for n in mg.graph_def.node} & {"Switch", "Merge", "FusedBatchNormV3"}
        sig = mg.signature_def["serving_default"]
        out = s.run(sig.outputs["embeddings"].name, {sig.inputs["images"].name: gold["in/images"]})
    assert np.abs(out - gold["out/embeddings"]).max() <= 1e-5

"""Input flows -> NormalizedModel, on real tiny TF graphs in every format."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from builder.core.errors import GraphError, InputError
from builder.load import loaders
from tests.helpers import CKPT_FLAGS, models


def _load(path, **kw):
    flags = {**CKPT_FLAGS, **kw}
    shapes = {k: loaders.parse_shape(v) for k, v in flags.get("input_shapes", {}).items()}
    return loaders.load(path, inputs=flags["inputs"], outputs=flags["outputs"], feeds=flags["feed"],
                        input_alias=flags["input_alias"], input_shapes=shapes)


def _ops(gd):
    return {n.op for n in gd.node}


def test_detect_flow(tiny_ckpt, tiny_frozen, tiny_tf1_sm, tiny_tf2_sm, tiny_keras, tmp_path):
    assert loaders.detect_flow(tiny_ckpt) == "checkpoint"
    assert loaders.detect_flow(next(tiny_ckpt.glob("*.meta"))) == "checkpoint"
    assert loaders.detect_flow(tiny_frozen) == "frozen"
    assert loaders.detect_flow(tiny_tf1_sm) == "savedmodel"
    assert loaders.detect_flow(tiny_tf2_sm) == "savedmodel"
    assert loaders.detect_flow(tiny_keras) == "keras"
    with pytest.raises(InputError, match="--flow"):
        loaders.detect_flow(tmp_path)
    with pytest.raises(InputError, match="no such file"):
        loaders.detect_flow(tmp_path / "missing")


def test_checkpoint_flow_cuts_input_pipeline_and_matches_session(tiny_ckpt):
    m = _load(tiny_ckpt)
    try:
        ops = _ops(m.graph_def)
        # queue, file reader and py_func of the training pipeline are gone; 'input' is now a placeholder
        assert not ops & {"PyFunc", "ReadFile", "QueueDequeueUpToV2", "QueueDequeueManyV2", "FIFOQueueV2"}
        assert {n.name: n.op for n in m.graph_def.node}["input"] == "Placeholder"
        assert "phase_train" not in {n.name for n in m.graph_def.node if n.op == "Placeholder"}
        assert [(t.alias, t.tensor, t.dtype, t.shape) for t in m.inputs] == [("images", "input:0", "float32",
                                                                              [None, 8, 8, 3])]
        assert [(t.alias, t.shape) for t in m.outputs] == [("embeddings", [None, 6])]
        assert m.feeds == {"phase_train": False}
        x = np.random.default_rng(1).standard_normal((5, 8, 8, 3)).astype(np.float32)
        got = m.run_source({"images": x})["embeddings"]
        want = models.run_checkpoint(tiny_ckpt, x, phase_train=False)
        np.testing.assert_array_equal(got, want)
        # phase_train matters: training-mode batch norm gives different embeddings
        assert np.abs(models.run_checkpoint(tiny_ckpt, x, phase_train=True) - want).max() > 1e-3
        assert sorted(p.rsplit("/", 1)[1] for p in m.source_files) == [
            "checkpoint", "model-20180402-114759.ckpt-7.data-00000-of-00001",
            "model-20180402-114759.ckpt-7.index", "model-20180402-114759.meta"]
    finally:
        m.close()


def test_unfed_placeholder_names_it_and_the_flag(tiny_ckpt):
    with pytest.raises(GraphError) as e:
        _load(tiny_ckpt, feed={})
    msg = str(e.value)
    assert "'phase_train'" in msg and "--feed phase_train=" in msg and "\n" not in msg


def test_unknown_nodes_are_named_with_suggestions(tiny_ckpt):
    with pytest.raises(GraphError, match=r"--outputs embedding: no node 'embedding'.*did you mean embeddings"):
        _load(tiny_ckpt, outputs=["embedding"])
    with pytest.raises(GraphError, match=r"--inputs inptu: no node"):
        _load(tiny_ckpt, inputs=["inptu"], input_alias={}, input_shapes={})
    with pytest.raises(GraphError, match=r"--feed phase: no node"):
        _load(tiny_ckpt, feed={"phase": "false"})
    with pytest.raises(InputError, match=r"--feed phase_train=maybe: not a valid bool"):
        _load(tiny_ckpt, feed={"phase_train": "maybe"})


def test_feed_must_be_a_placeholder(tiny_ckpt):
    with pytest.raises(GraphError, match="not a placeholder"):
        _load(tiny_ckpt, feed={"phase_train": "false", "prelogits": "1"})


def test_explicit_checkpoint_and_foreign_absolute_state_path(tiny_ckpt, tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, d)
    # a state file written on the training machine, with absolute paths that don't exist here
    (d / "checkpoint").write_text('model_checkpoint_path: "/home/trainer/run1/model-20180402-114759.ckpt-7"\n')
    m = _load(d)
    m.close()
    m = loaders.load(d, checkpoint=str(d / "model-20180402-114759.ckpt-7"), **_kw())
    m.close()
    with pytest.raises(InputError, match="--checkpoint .*nope"):
        loaders.load(d, checkpoint=str(d / "nope"), **_kw())
    (d / "checkpoint").unlink()
    m = _load(d)  # a single *.index is unambiguous
    m.close()


def _kw():
    return dict(inputs=["input"], outputs=["embeddings"], feeds={"phase_train": "false"},
                input_shapes={"input": [None, 8, 8, 3]})


def test_corrupt_checkpoint_data_is_a_user_error(tiny_ckpt, tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, d)
    data = next(d.glob("*.data-*"))
    data.write_bytes(b"\0" * 10)
    with pytest.raises(InputError, match="checkpoint .*cannot restore"):
        loaders.load(d, **_kw())


@pytest.mark.parametrize("fixture", ["tiny_frozen", "tiny_frozen_txt"])
def test_frozen_flow_binary_and_text(fixture, request, tiny_ckpt):
    path = request.getfixturevalue(fixture)
    m = _load(path)
    try:
        x = np.random.default_rng(2).standard_normal((3, 8, 8, 3)).astype(np.float32)
        np.testing.assert_allclose(m.run_source({"images": x})["embeddings"],
                                   models.run_checkpoint(tiny_ckpt, x), atol=1e-6)
    finally:
        m.close()


def test_corrupt_frozen_graph(tmp_path):
    bad = tmp_path / "bad.pb"
    bad.write_bytes(b"\x08\x96\x01garbage" * 3)
    with pytest.raises(InputError, match=r"--model .*bad.pb: not a binary GraphDef"):
        loaders.load(bad, outputs=["embeddings"])
    empty = tmp_path / "empty.pb"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="no nodes"):
        loaders.load(empty, outputs=["embeddings"])


def test_tf1_savedmodel_signature_defaults_and_feed(tiny_tf1_sm, tiny_ckpt):
    m = loaders.load(tiny_tf1_sm, feeds={"phase_train": "false"}, input_shapes={"input:0": [None, 8, 8, 3]})
    try:
        assert [t.alias for t in m.inputs] == ["images"]
        assert [t.alias for t in m.outputs] == ["embeddings"]
        x = np.random.default_rng(3).standard_normal((2, 8, 8, 3)).astype(np.float32)
        np.testing.assert_allclose(m.run_source({"images": x})["embeddings"],
                                   models.run_checkpoint(tiny_ckpt, x), atol=1e-6)
    finally:
        m.close()
    with pytest.raises(InputError, match="--signature nope: not in"):
        loaders.load(tiny_tf1_sm, signature="nope")
    with pytest.raises(InputError, match="--tags gpu"):
        loaders.load(tiny_tf1_sm, tags=["gpu"])


def test_tf2_savedmodel(tiny_tf2_sm):
    import tensorflow as tf

    m = loaders.load(tiny_tf2_sm)
    try:
        assert [t.alias for t in m.inputs] == ["x"]
        assert sorted(t.alias for t in m.outputs) == ["logits", "scores"]
        assert {t.alias: t.shape for t in m.outputs} == {"logits": [None, 3], "scores": [None, 3]}
        x = np.random.default_rng(4).standard_normal((4, 4)).astype(np.float32)
        got = m.run_source({"x": x})
        want = tf.saved_model.load(str(tiny_tf2_sm)).signatures["serving_default"](x=tf.constant(x))
        np.testing.assert_allclose(got["logits"], want["logits"].numpy(), atol=1e-6)
        assert not {n.op for n in m.graph_def.node} & {"VarHandleOp", "ReadVariableOp"}
    finally:
        m.close()


def test_keras_flow(tiny_keras):
    import keras

    m = loaders.load(tiny_keras)
    try:
        assert [(t.alias, t.shape) for t in m.inputs] == [("features", [None, 6])]
        x = np.random.default_rng(5).standard_normal((3, 6)).astype(np.float32)
        got = list(m.run_source({"features": x}).values())[0]
        want = keras.models.load_model(str(tiny_keras))(x, training=False)
        np.testing.assert_allclose(got, np.asarray(want), atol=1e-6)
    finally:
        m.close()
    bad = tiny_keras.parent / "broken.keras"
    bad.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="Keras model does not load"):
        loaders.load(bad)


def test_alias_errors(tiny_ckpt):
    with pytest.raises(InputError, match="--input_alias foo=images"):
        _load(tiny_ckpt, input_alias={"foo": "images"})
    with pytest.raises(InputError, match="--input_alias input=bad key"):
        _load(tiny_ckpt, input_alias={"input": "bad key"})


def test_input_needed_by_outputs(tiny_ckpt):
    with pytest.raises(GraphError, match="not needed by --outputs"):
        loaders.load(tiny_ckpt, inputs=["input", "image_paths"], outputs=["embeddings"],
                     feeds={"phase_train": "false"}, input_shapes={"input": [None, 8, 8, 3]})


def test_input_shapes_for_tensors_of_unknown_shape(tmp_path):
    import tensorflow as tf

    with tf.Graph().as_default() as g:
        x = tf.compat.v1.placeholder(tf.float32, None, name="x")  # unknown rank, as in many old graphs
        tf.reduce_sum(tf.reshape(x, [-1, 4]) * 2.0, axis=1, name="y")
    pb = tmp_path / "g.pb"
    pb.write_bytes(g.as_graph_def().SerializeToString())
    m = loaders.load(pb, outputs=["y"])
    assert m.inputs[0].shape is None  # unknown rank (a scalar would be [])
    m.close()
    from builder.export.parity import generate_samples

    with pytest.raises(InputError, match=r"rank is unknown.*--input_shapes x=\?x"):
        generate_samples(m.inputs, 2)
    m = loaders.load(pb, outputs=["y"], input_shapes={"x": loaders.parse_shape("?x4")})
    assert m.inputs[0].shape == [None, 4]
    m.close()
    with pytest.raises(InputError, match="not a shape"):
        loaders.parse_shape("abc")


def test_loader_flag_group_is_defined_once():
    import inspect

    from builder.export.pipeline import export_command
    from builder.options import LOADER_FLAGS, LoaderFlags

    params = inspect.signature(export_command).parameters
    assert set(LOADER_FLAGS) <= set(params) and "loader" not in params
    for name in LOADER_FLAGS:  # documented in --help, from the one definition
        assert f"      {name}:" in export_command.__doc__
    flags = LoaderFlags.from_cli(inputs="a,b", feed="phase_train=false", input_alias=("x=images",),
                                 tags=None, signature="serving_default,classify")
    assert flags.inputs == ["a", "b"] and flags.feed == {"phase_train": "false"}
    assert flags.input_alias == {"x": "images"} and flags.tags == ["serve"]
    assert flags.signatures == ["serving_default", "classify"]
    with pytest.raises(InputError, match="--feed 'phase_train' is not KEY=VALUE"):
        LoaderFlags.from_cli(feed="phase_train")


def test_load_request_tells_surgery_from_signature_edits(tmp_path):
    from builder.load.request import LoadRequest
    from builder.options import LoaderFlags

    edit = LoadRequest.from_flags(tmp_path, "savedmodel", LoaderFlags(input_alias={"x": "y"}, signatures=["a"]))
    assert not edit.surgery
    cut = LoadRequest.from_flags(tmp_path, "savedmodel", LoaderFlags(input_shapes={"x": "?x4"}))
    assert cut.surgery and cut.input_shapes == {"x": [None, 4]}

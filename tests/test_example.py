"""The built-in FaceNet example (builder/example.py), checked on real TF graphs and files.

The tiny variant keeps FaceNet's full op structure and interface, so these tests load it exactly
the way FaceNet users load the real release (import_meta_graph + restore, import_graph_def of
the frozen graph, the TF1 SavedModel loader) and compare the numbers that come out.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2

from builder.cli import main as cli_main
from builder.core.errors import InputError
from builder.example import facenet

v1 = tf.compat.v1
ATOL = 1e-5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("example") / "facenet"
    return facenet.write_example(out, tiny=True, seed=0, log=None)


@pytest.fixture(scope="module")
def probe(tiny: dict) -> np.ndarray:
    return facenet.probe_images(6, tiny["image_size"], seed=42)


def run_checkpoint(info: dict, x: np.ndarray, phase_train: bool = False) -> np.ndarray:
    """FaceNet's own loading recipe (facenet.load_model + compare.py feeds)."""
    with tf.Graph().as_default() as g, v1.Session(graph=g) as sess:
        saver = v1.train.import_meta_graph(str(info["meta"]))
        saver.restore(sess, v1.train.latest_checkpoint(str(info["checkpoint_dir"])))
        return sess.run("embeddings:0", {"input:0": x, "phase_train:0": phase_train})


def run_frozen(path: Path, x: np.ndarray) -> np.ndarray:
    gd = v1.GraphDef.FromString(path.read_bytes())
    with tf.Graph().as_default() as g, v1.Session(graph=g) as sess:
        tf.import_graph_def(gd, name="")
        return sess.run("embeddings:0", {"input:0": x, "phase_train:0": False})


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def read_meta(path: Path) -> meta_graph_pb2.MetaGraphDef:
    return meta_graph_pb2.MetaGraphDef.FromString(path.read_bytes())


# -- files ------------------------------------------------------------------------------------


def test_writes_facenet_release_layout(tiny: dict) -> None:
    out = tiny["checkpoint_dir"].parent
    assert sorted(os.listdir(out)) == ["checkpoint", "frozen", "savedmodel"]
    assert sorted(os.listdir(tiny["checkpoint_dir"])) == [
        "checkpoint",
        "model-20180402-114759.ckpt-275.data-00000-of-00001",
        "model-20180402-114759.ckpt-275.index",
        "model-20180402-114759.meta",
    ]
    assert tiny["meta"].name == "model-20180402-114759.meta"
    assert tiny["checkpoint_prefix"].name == "model-20180402-114759.ckpt-275"
    # The state file is relative (the directory can move) and resolves to the written prefix.
    state = (tiny["checkpoint_dir"] / "checkpoint").read_text()
    assert 'model_checkpoint_path: "model-20180402-114759.ckpt-275"' in state
    assert "timestamp" not in state
    assert v1.train.latest_checkpoint(str(tiny["checkpoint_dir"])) == str(
        tiny["checkpoint_prefix"])
    assert tiny["frozen"] == out / "frozen" / "facenet.pb" and tiny["frozen"].stat().st_size > 0
    sm = tiny["savedmodel"]
    assert (sm / "saved_model.pb").is_file() and (sm / "variables" / "variables.index").is_file()
    assert (tiny["image_size"], tiny["embedding_size"]) == (80, 16)
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name]


# -- behaviour through the checkpoint ----------------------------------------------------------


def test_checkpoint_restores_and_gives_l2_normalised_embeddings(tiny: dict,
                                                                 probe: np.ndarray) -> None:
    emb = run_checkpoint(tiny, probe)
    assert emb.shape == (6, 16) and emb.dtype == np.float32
    assert np.all(np.isfinite(emb))
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # Unrelated inputs give unrelated embeddings (the model did not collapse to one point).
    gram = emb @ emb.T
    assert gram[~np.eye(6, dtype=bool)].max() < 0.95


def test_phase_train_true_gives_clearly_different_embeddings(tiny: dict,
                                                             probe: np.ndarray) -> None:
    inference = run_checkpoint(tiny, probe, phase_train=False)
    training = run_checkpoint(tiny, probe, phase_train=True)
    assert cosines(inference, training).max() < 0.99


def test_meta_graph_is_a_facenet_training_graph(tiny: dict) -> None:
    meta = read_meta(tiny["meta"])
    nodes = {n.name: n for n in meta.graph_def.node}
    ops = {n.op for n in meta.graph_def.node}
    # The input pipeline (PyFunc rotation, ReadFile, queues) and TF1 control-flow batch norm.
    assert {"PyFunc", "ReadFile", "DecodePng", "FIFOQueueV2", "QueueDequeueUpToV2",
            "Switch", "RefSwitch", "Merge", "AssignSub", "FusedBatchNormV3",
            "VariableV2"} <= ops
    assert not ops & {"If", "StatelessIf", "VarHandleOp"}
    # The interface FaceNet's compare.py relies on: input is an Identity, not a placeholder.
    assert nodes["input"].op == "Identity" and list(nodes["input"].input) == ["image_batch"]
    assert nodes["image_batch"].op == "Identity"
    assert nodes["phase_train"].op == "Placeholder"
    assert nodes["phase_train"].attr["dtype"].type == tf.bool.as_datatype_enum
    assert nodes["batch_size"].op == "Placeholder"
    assert nodes["batch_size"].attr["dtype"].type == tf.int32.as_datatype_enum
    dequeue = next(n for n in meta.graph_def.node if n.op == "QueueDequeueUpToV2")
    assert dequeue.input[1] == "batch_size"
    # FaceNet's Saver covers the trainable collection, which holds the moving statistics too.
    saved = dict(tf.train.list_variables(str(tiny["checkpoint_prefix"])))
    assert "InceptionResnetV1/Conv2d_1a_3x3/BatchNorm/moving_mean" in saved
    assert "InceptionResnetV1/Bottleneck/weights" in saved
    assert saved["InceptionResnetV1/Bottleneck/weights"][1] == 16
    assert "global_step" not in saved


def test_moving_statistics_are_not_trivial(tiny: dict) -> None:
    reader = tf.train.load_checkpoint(str(tiny["checkpoint_prefix"]))
    names = [n for n in reader.get_variable_to_shape_map() if n.endswith("moving_variance")]
    assert len(names) == 36  # every batch norm of the tiny net
    for name in names:
        var = reader.get_tensor(name)
        mean = reader.get_tensor(name.replace("moving_variance", "moving_mean"))
        assert not np.allclose(var, 1.0) and not np.allclose(mean, 0.0), name
        assert np.all(var > 0), name


# -- the other two formats give the same numbers -------------------------------------------------


def test_frozen_graph_matches_checkpoint(tiny: dict, probe: np.ndarray) -> None:
    gd = v1.GraphDef.FromString(tiny["frozen"].read_bytes())
    ops = {n.op for n in gd.node}
    assert not ops & {"VariableV2", "RefSwitch", "AssignSub", "PyFunc", "ReadFile"}
    # As FaceNet's freeze_graph.py leaves it: phase_train still a placeholder and the batching
    # queue still in front of `input` (the released 20180402-114759.pb has them too).
    nodes = {n.name: n for n in gd.node}
    assert nodes["phase_train"].op == "Placeholder" and nodes["input"].op == "Identity"
    assert {"FIFOQueueV2", "QueueDequeueUpToV2"} <= ops
    expected = run_checkpoint(tiny, probe)
    got = run_frozen(tiny["frozen"], probe)
    assert np.abs(got - expected).max() <= ATOL


def test_savedmodel_matches_checkpoint(tiny: dict, probe: np.ndarray) -> None:
    expected = run_checkpoint(tiny, probe)
    with tf.Graph().as_default() as g, v1.Session(graph=g) as sess:
        mg = v1.saved_model.loader.load(sess, ["serve"], str(tiny["savedmodel"]))
        sig = mg.signature_def["serving_default"]
        assert sig.method_name == "tensorflow/serving/predict"
        assert sorted(sig.inputs) == ["images", "phase_train"]
        assert sig.inputs["images"].name == "input:0"
        assert [d.size for d in sig.inputs["images"].tensor_shape.dim] == [-1, 80, 80, 3]
        assert sig.outputs["embeddings"].name == "embeddings:0"
        got = sess.run(sig.outputs["embeddings"].name,
                       {sig.inputs["images"].name: probe, sig.inputs["phase_train"].name: False})
    assert np.abs(got - expected).max() <= ATOL


# -- determinism, via the CLI ------------------------------------------------------------------


def test_cli_same_seed_writes_same_weights(tiny: dict, probe: np.ndarray, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "again"
    assert cli_main(["example", "--out", str(out), "--tiny", "--seed", "0",
                     "--formats", "checkpoint"]) == 0
    printed = capsys.readouterr().out
    assert "88,136 parameters" in printed and "embeddings:0 [-1,16]" in printed
    assert f"--flow checkpoint --model {out / 'checkpoint'}" in printed
    assert sorted(os.listdir(out)) == ["checkpoint"]
    first = tf.train.load_checkpoint(str(tiny["checkpoint_prefix"]))
    again_prefix = v1.train.latest_checkpoint(str(out / "checkpoint"))
    second = tf.train.load_checkpoint(again_prefix)
    names = sorted(first.get_variable_to_shape_map())
    assert names == sorted(second.get_variable_to_shape_map())
    for name in names:
        np.testing.assert_array_equal(first.get_tensor(name), second.get_tensor(name), name)
    again = {"meta": next((out / "checkpoint").glob("*.meta")), "checkpoint_dir": out / "checkpoint"}
    np.testing.assert_array_equal(run_checkpoint(again, probe), run_checkpoint(tiny, probe))


def test_other_seed_differs_and_formats_subset(tiny: dict, probe: np.ndarray,
                                               tmp_path: Path) -> None:
    info = facenet.write_example(tmp_path / "m", tiny=True, seed=1, formats=("frozen",),
                                 log=None)
    assert sorted(os.listdir(tmp_path / "m")) == ["frozen"]
    assert "checkpoint_dir" not in info and "savedmodel" not in info
    other = run_frozen(info["frozen"], probe)
    np.testing.assert_allclose(np.linalg.norm(other, axis=1), 1.0, atol=1e-5)
    assert np.abs(other - run_frozen(tiny["frozen"], probe)).max() > 0.1


# -- the training input pipeline really works (PyFunc and ReadFile included) --------------------


def test_input_pipeline_reads_rotates_and_batches(tmp_path: Path) -> None:
    size = facenet.TINY.image_size
    rng = np.random.RandomState(3)
    sources, paths = [], []
    for i in range(3):
        img = rng.randint(0, 256, (size, size, 3), dtype=np.uint8)
        p = tmp_path / f"face{i}.png"
        p.write_bytes(tf.io.encode_png(img).numpy())
        sources.append(img)
        paths.append(str(p))
    assert v1.control_flow_v2_enabled()
    graph = tf.Graph()
    roles = facenet.build_facenet_graph(graph, tiny=True, seed=0)
    # TF1 Switch/Merge were used for this graph only: the process-wide TF2 default is back.
    assert v1.control_flow_v2_enabled()
    control = facenet.RANDOM_ROTATE | facenet.FIXED_STANDARDIZATION
    with graph.as_default(), v1.Session(graph=graph) as sess:
        facenet.initialize_facenet(sess, roles, seed=0)
        sess.run(roles["enqueue_op"], {
            roles["image_paths"]: np.array(paths).reshape(-1, 1),
            roles["labels"]: np.arange(3, dtype=np.int32).reshape(-1, 1),
            roles["control"]: np.full((3, 1), control, dtype=np.int32)})
        coord = v1.train.Coordinator()
        threads = v1.train.start_queue_runners(sess=sess, coord=coord)
        try:
            images, labels, emb = sess.run(
                [roles["image_batch"], roles["label_batch"], roles["embeddings"]],
                {roles["batch_size"]: 3, roles["phase_train"]: False})
        finally:
            coord.request_stop()
            sess.run(roles["input_queue"].close(cancel_pending_enqueues=True))
            coord.join(threads, stop_grace_period_secs=10)
    assert images.shape == (3, size, size, 3) and sorted(labels) == [0, 1, 2]
    for image, label in zip(images, labels, strict=True):
        standardised = (sources[label].astype(np.float32) - 127.5) / 128.0
        assert any(np.array_equal(image, np.rot90(standardised, k)) for k in range(4))
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


# -- sizes ---------------------------------------------------------------------------------------


def test_full_size_graph_has_facenet_dimensions() -> None:
    graph = tf.Graph()
    roles = facenet.build_facenet_graph(graph)
    assert 20_000_000 <= roles["parameters"] <= 30_000_000
    assert roles["input"].shape.as_list() == [None, 160, 160, 3]
    assert roles["embeddings"].shape.as_list() == [None, 512]
    assert len(roles["batch_norms"]) == 112


@pytest.mark.parametrize("size, ok", [(74, False), (75, True), (160, True)])
def test_min_image_size(size: int, ok: bool) -> None:
    assert facenet.min_image_size() == 75
    if ok:
        assert facenet.architecture(tiny=True, image_size=size).image_size == size
    else:
        with pytest.raises(InputError, match="image_size 74 .* >= 75"):
            facenet.architecture(tiny=True, image_size=size)


# -- bad input: one-line errors, nothing half-written ------------------------------------------


def test_refuses_non_empty_out_dir(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="already exists and is not an empty directory"):
        facenet.write_example(out, tiny=True, log=None)
    assert cli_main(["example", "--out", str(out), "--tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --out {out} already exists") and "\n" not in err
    assert sorted(os.listdir(out)) == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["taken"]


@pytest.mark.parametrize("kwargs, message", [
    ({"formats": ("frozen", "onnx")}, r"formats \['onnx'\] not understood"),
    ({"formats": ()}, "not understood: choose from checkpoint, frozen, savedmodel"),
    ({"seed": -1}, "seed -1 is not an integer"),
    ({"embedding_size": 1}, "embedding_size 1 is not a usable width"),
])
def test_bad_arguments_write_nothing(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        facenet.write_example(tmp_path / "m", tiny=True, log=None, **kwargs)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("argv, message", [
    (["--seed", "x1"], "error: --seed 'x1' is not an integer"),
    (["--formats", "frozen,pt"], "error: --formats 'pt' not understood"),
])
def test_cli_rejects_bad_flags(tmp_path: Path, capsys: pytest.CaptureFixture, argv: list,
                               message: str) -> None:
    assert cli_main(["example", "--out", str(tmp_path / "m"), "--tiny", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err
    assert os.listdir(tmp_path) == []


def test_failure_midway_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "m"
    out.mkdir()  # an empty target is allowed, and must survive a failed write unchanged
    seen: list[str] = []

    def disk_full_after_the_checkpoint(msg: str) -> None:
        """The progress callback (public API) fails the write once the checkpoint is on disk,
        i.e. half-way, as a full disk would while writing the frozen graph."""
        seen.append(msg)
        if "restored the checkpoint" in msg:
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        facenet.write_example(out, tiny=True, log=disk_full_after_the_checkpoint)
    assert any("wrote checkpoint/" in m for m in seen)  # it really failed midway
    assert sorted(os.listdir(tmp_path)) == ["m"] and os.listdir(out) == []


# -- the full-size model, end to end -------------------------------------------------------------


@pytest.mark.slow
def test_full_model_write_and_parity(tmp_path: Path) -> None:
    info = facenet.write_example(tmp_path / "full", seed=0, formats=("checkpoint", "frozen"),
                                 log=None)
    assert (info["image_size"], info["embedding_size"]) == (160, 512)
    assert 20_000_000 <= info["parameters"] <= 30_000_000
    x = facenet.probe_images(4, 160, seed=1)
    emb = run_checkpoint(info, x)
    assert emb.shape == (4, 512)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert cosines(emb, run_checkpoint(info, x, phase_train=True)).max() < 0.99
    assert np.abs(run_frozen(info["frozen"], x) - emb).max() <= ATOL

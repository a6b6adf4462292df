"""Tiny real models for the unit tests, one per input flow. Each builds in well under a second."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def tiny_tf1_graph(seed: int = 0):
    """FaceNet's interface in miniature: a queue-fed ``input`` Identity, ``phase_train`` driving
    batch norm through tf.cond, ``batch_size`` for the dequeue, output ``embeddings``."""
    import tensorflow as tf
    from tensorflow.python.ops import control_flow_util

    g = tf.Graph()
    old = control_flow_util.ENABLE_CONTROL_FLOW_V2
    control_flow_util.ENABLE_CONTROL_FLOW_V2 = False  # TF1 graphs have Switch/Merge conditionals
    try:
        _build_tiny(g, seed)
    finally:
        control_flow_util.ENABLE_CONTROL_FLOW_V2 = old
    return g


def _build_tiny(g, seed: int) -> None:
    import tensorflow as tf

    v1 = tf.compat.v1
    with g.as_default():
        v1.set_random_seed(seed)
        phase_train = v1.placeholder(tf.bool, name="phase_train")
        batch_size = v1.placeholder(tf.int32, name="batch_size")
        files = v1.placeholder(tf.string, [None], name="image_paths")
        queue = tf.queue.FIFOQueue(100, [tf.string], shapes=[[]])
        queue.enqueue_many([files], name="enqueue_op")
        fname = queue.dequeue()
        raw = tf.io.read_file(fname)
        img = tf.reshape(tf.cast(tf.io.decode_raw(raw, tf.uint8)[: 8 * 8 * 3], tf.float32), [8, 8, 3])
        batch = v1.train.batch([img], batch_size=batch_size, capacity=10, dynamic_pad=False)
        image_batch = tf.identity(batch, "image_batch")
        x = tf.identity(image_batch, "input")
        w = v1.get_variable("conv/w", [3, 3, 3, 4], initializer=v1.random_normal_initializer(seed=seed))
        y = tf.nn.conv2d(x, w, [1, 1, 1, 1], "SAME")
        mean_var = v1.get_variable("bn/moving_mean", [4], trainable=False,
                                   initializer=v1.random_normal_initializer(seed=seed + 1))
        var_var = v1.get_variable("bn/moving_variance", [4], trainable=False,
                                  initializer=v1.random_uniform_initializer(0.5, 2.0, seed=seed + 2))
        beta = v1.get_variable("bn/beta", [4], initializer=v1.random_normal_initializer(seed=seed + 3))
        bmean, bvar = tf.nn.moments(y, [0, 1, 2])
        mean, var = tf.cond(phase_train, lambda: (bmean, bvar), lambda: (tf.identity(mean_var), tf.identity(var_var)))
        y = tf.nn.relu(tf.nn.batch_normalization(y, mean, var, beta, None, 1e-3))
        y = tf.reduce_mean(y, [1, 2])
        wd = v1.get_variable("fc/w", [4, 6], initializer=v1.random_normal_initializer(seed=seed + 4))
        pre = tf.matmul(y, wd, name="prelogits")
        tf.nn.l2_normalize(pre, 1, 1e-10, name="embeddings")
        v1.py_func(lambda a: a, [fname], tf.string, name="py_rotate")


def write_tiny_checkpoint(out: Path, seed: int = 0) -> Path:
    """MetaGraph + checkpoint + 'checkpoint' state file, FaceNet-style names."""
    import tensorflow as tf

    out.mkdir(parents=True, exist_ok=True)
    g = tiny_tf1_graph(seed)
    with g.as_default(), tf.compat.v1.Session(graph=g) as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        saver = tf.compat.v1.train.Saver()
        saver.save(sess, str(out / "model-20180402-114759.ckpt"), global_step=7, write_meta_graph=False)
        saver.export_meta_graph(str(out / "model-20180402-114759.meta"))
    return out


def run_checkpoint(ckpt_dir: Path, x: np.ndarray, phase_train: bool = False) -> np.ndarray:
    import tensorflow as tf

    with tf.Graph().as_default() as g, tf.compat.v1.Session(graph=g) as sess:
        meta = next(ckpt_dir.glob("*.meta"))
        saver = tf.compat.v1.train.import_meta_graph(str(meta))
        saver.restore(sess, tf.train.latest_checkpoint(str(ckpt_dir)))
        return sess.run("embeddings:0", {"input:0": x, "phase_train:0": phase_train})


def write_tiny_frozen(ckpt_dir: Path, out: Path, text: bool = False) -> Path:
    """Frozen at inference: input placeholder + phase_train folded as FaceNet's freeze does not."""
    import tensorflow as tf

    with tf.Graph().as_default() as g, tf.compat.v1.Session(graph=g) as sess:
        meta = next(ckpt_dir.glob("*.meta"))
        saver = tf.compat.v1.train.import_meta_graph(str(meta))
        saver.restore(sess, tf.train.latest_checkpoint(str(ckpt_dir)))
        gd = tf.compat.v1.graph_util.convert_variables_to_constants(sess, g.as_graph_def(), ["embeddings"])
    out.parent.mkdir(parents=True, exist_ok=True)
    if text:
        out.write_text(str(gd))
    else:
        out.write_bytes(gd.SerializeToString())
    return out


def write_tiny_tf1_savedmodel(ckpt_dir: Path, out: Path) -> Path:
    import tensorflow as tf

    v1 = tf.compat.v1
    with tf.Graph().as_default() as g, v1.Session(graph=g) as sess:
        meta = next(ckpt_dir.glob("*.meta"))
        saver = v1.train.import_meta_graph(str(meta))
        saver.restore(sess, tf.train.latest_checkpoint(str(ckpt_dir)))
        sig = v1.saved_model.signature_def_utils.predict_signature_def(
            inputs={"images": g.get_tensor_by_name("input:0"), "phase_train": g.get_tensor_by_name("phase_train:0")},
            outputs={"embeddings": g.get_tensor_by_name("embeddings:0")},
        )
        b = v1.saved_model.Builder(str(out))
        b.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={"serving_default": sig})
        b.save()
    return out


def write_tiny_tf2_savedmodel(out: Path) -> Path:
    import tensorflow as tf

    class M(tf.Module):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.w = tf.Variable(rng.standard_normal((4, 3)).astype(np.float32))
            self.b = tf.Variable(rng.standard_normal((3,)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x):
            y = tf.matmul(x, self.w) + self.b
            return {"scores": tf.nn.softmax(y), "logits": y}

    m = M()
    tf.saved_model.save(m, str(out), signatures={"serving_default": m.serve})
    return out


def write_tiny_keras(out: Path) -> Path:
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((6,), name="features")
    h = keras.layers.Dense(5, activation="relu")(inp)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Dropout(0.5)(h)
    outp = keras.layers.Dense(2, name="score")(h)
    model = keras.Model(inp, outp)
    # non-trivial moving statistics so training=True/False differ
    bn = model.layers[2]
    bn.moving_mean.assign(np.linspace(-1, 1, 5).astype(np.float32))
    bn.moving_variance.assign(np.linspace(0.5, 2, 5).astype(np.float32))
    model.save(str(out))
    return out


def write_tiny_servable(path: Path, optimizer: str = "none", trt: bool = False) -> None:
    """A real TF2 SavedModel (y = 2x) as REPO/NAME/VERSION with build_info.json; ``trt`` adds a
    TRTEngineOp node inside a library function, as TF-TRT conversions leave them."""
    import json

    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    class Tiny(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x):
            return {"y": x * 2.0}

    m = Tiny()
    tf.saved_model.save(m, str(path), signatures={"serving_default": m.serve})
    if trt:
        sm = saved_model_pb2.SavedModel()
        sm.ParseFromString((path / "saved_model.pb").read_bytes())
        node = sm.meta_graphs[0].graph_def.library.function[0].node_def.add()
        node.name, node.op = "TRTEngineOp_000_000", "TRTEngineOp"
        (path / "saved_model.pb").write_bytes(sm.SerializeToString())
    extra = path / "assets.extra"
    extra.mkdir(exist_ok=True)
    (extra / "build_info.json").write_text(json.dumps({
        "name": path.parent.name, "version": int(path.name), "optimizer": optimizer, "batch_sizes": [1, 4]}))

"""Tiny but real model repositories for the serving tests.

Why not builder.export: these tests must prove the *serving* half on their own (and run before the
export pipeline exists). Each version here is what the export contract in docs/DESIGN.md
describes: a TF1 SavedModel (tag "serve", predict signatures with named keys, real variables),
``assets.extra/tf_serving_warmup_requests`` (PredictionLog TFRecord, one record per batch size),
``assets.extra/build_info.json`` and ``assets.extra/golden.npz`` (inputs and expected outputs).
Swap ``build_toy_version`` for ``builder.export`` once it exists; the tests only read the files.

The toy model, per version v (weights differ per version, so answers identify the version):
  serving_default: x[-1,4] float32 -> y = x @ W + b  [-1,3],  z = sum(y*y, axis=1, keepdims) [-1,1]
  pair:            a[-1,4], b[-1,4] float32 -> sum = a + b  [-1,4]
  strings:         text[-1] string -> length int32 [-1],  echo_bytes string [-1]
Goldens are computed with numpy from W and b, independently of TensorFlow.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

import numpy as np

GOLDEN_FILE = Path("assets.extra") / "golden.npz"
ATOL = 1e-5


def toy_weights(version: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1000 + int(version))
    w = rng.normal(size=(4, 3)).astype(np.float32)
    b = rng.normal(size=(3,)).astype(np.float32)
    return w, b


def toy_reference(x: np.ndarray, version: int) -> dict[str, np.ndarray]:
    """The expected serving_default outputs, computed in numpy (float64 then cast)."""
    w, b = toy_weights(version)
    y = x.astype(np.float64) @ w.astype(np.float64) + b.astype(np.float64)
    z = np.sum(y * y, axis=1, keepdims=True)
    return {"y": y.astype(np.float32), "z": z.astype(np.float32)}


def sample_inputs(n: int, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, size=(n, 4)).astype(np.float32)


def build_toy_version(
    repo: str | os.PathLike,
    name: str,
    version: int,
    batch_sizes: tuple[int, ...] = (1, 4),
    golden_samples: int = 8,
) -> Path:
    """Write REPO/NAME/VERSION atomically (staged under a non-numeric name, then renamed, as the
    builder does) and return its path."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    model_dir = Path(repo) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    final = model_dir / str(int(version))
    if final.exists():
        raise FileExistsError(final)
    staging = model_dir / f".staging-fixture-{os.getpid()}-{secrets.token_hex(4)}"
    w_val, b_val = toy_weights(version)
    try:
        graph = tf.Graph()
        with graph.as_default():
            x = tf.compat.v1.placeholder(tf.float32, [None, 4], name="x")
            w = tf.compat.v1.get_variable("W", initializer=tf.constant(w_val))
            b = tf.compat.v1.get_variable("b", initializer=tf.constant(b_val))
            y = tf.identity(tf.matmul(x, w) + b, name="y")
            z = tf.reduce_sum(y * y, axis=1, keepdims=True, name="z")
            pa = tf.compat.v1.placeholder(tf.float32, [None, 4], name="a")
            pb = tf.compat.v1.placeholder(tf.float32, [None, 4], name="b_in")
            total = tf.add(pa, pb, name="sum")
            text = tf.compat.v1.placeholder(tf.string, [None], name="text")
            length = tf.strings.length(text, name="length")
            echo = tf.identity(text, name="echo")
            info = tf.compat.v1.saved_model.utils.build_tensor_info
            sig = tf.compat.v1.saved_model.signature_def_utils.build_signature_def
            predict = tf.compat.v1.saved_model.signature_constants.PREDICT_METHOD_NAME
            signatures = {
                "serving_default": sig({"x": info(x)}, {"y": info(y), "z": info(z)}, predict),
                "pair": sig({"a": info(pa), "b": info(pb)}, {"sum": info(total)}, predict),
                "strings": sig({"text": info(text)},
                               {"length": info(length), "echo_bytes": info(echo)}, predict),
            }
            with tf.compat.v1.Session(graph=graph) as sess:
                sess.run(tf.compat.v1.global_variables_initializer())
                saver = tf.compat.v1.saved_model.Builder(str(staging))
                saver.add_meta_graph_and_variables(sess, ["serve"], signature_def_map=signatures)
                saver.save()
                gx = sample_inputs(golden_samples, seed=version)
                gy, gz = sess.run([y, z], {x: gx})
        expected = toy_reference(gx, version)
        for k, got in (("y", gy), ("z", gz)):
            np.testing.assert_allclose(got, expected[k], atol=1e-4, rtol=1e-5)

        extra = staging / "assets.extra"
        extra.mkdir()
        with tf.io.TFRecordWriter(str(extra / "tf_serving_warmup_requests")) as writer:
            for bs in batch_sizes:
                req = predict_pb2.PredictRequest()
                req.model_spec.name = name
                req.model_spec.signature_name = "serving_default"
                req.inputs["x"].CopyFrom(tf.make_tensor_proto(sample_inputs(bs, seed=bs)))
                log = prediction_log_pb2.PredictionLog(
                    predict_log=prediction_log_pb2.PredictLog(request=req))
                writer.write(log.SerializeToString())
        np.savez(extra / "golden.npz", **{"in/x": gx, "out/y": gy, "out/z": gz})
        build_info = {
            "builder_version": "0.1.0",
            "name": name,
            "version": int(version),
            "flow": "frozen",
            "source": {"path": "integration_tests/fixture_models.py", "files": []},
            "tensorflow_version": tf.__version__,
            "optimizer": "none",
            "precision": "fp32",
            "signature": {
                "key": "serving_default",
                "method_name": predict,
                "inputs": {"x": {"tensor": "x:0", "dtype": "float32", "shape": [-1, 4]}},
                "outputs": {"y": {"tensor": "y:0", "dtype": "float32", "shape": [-1, 3]},
                            "z": {"tensor": "z:0", "dtype": "float32", "shape": [-1, 1]}},
            },
            "feeds": {},
            "batch_sizes": sorted(batch_sizes),
            "warmup_records": len(batch_sizes),
            "parity": {"max_abs_diff": 0.0, "max_rel_diff": 0.0, "min_cosine": 1.0,
                       "samples": golden_samples, "atol": ATOL, "rtol": 0.0, "passed": True,
                       "outputs": {}},
            "tensorrt": None,
            "export_seconds": 0.0,
            "created": "1970-01-01T00:00:00Z",
            "reproduce": "integration_tests/fixture_models.py build_toy_version",
        }
        (extra / "build_info.json").write_text(json.dumps(build_info, indent=2), encoding="utf-8")
        os.rename(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return final


def read_golden(version_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    with np.load(Path(version_dir) / GOLDEN_FILE) as data:
        return {k: data[k] for k in data.files}


def read_build_info(version_dir: str | os.PathLike) -> dict:
    return json.loads((Path(version_dir) / "assets.extra" / "build_info.json").read_text("utf-8"))


def write_models_config(path: str | os.PathLike, models: list[dict]) -> Path:
    """models.config from dicts {name, base_path, policy?: latest|all|specific, versions?,
    num_versions?, labels?}; rendered with the official ModelServerConfig proto."""
    from builder.config.models_config import ModelEntry, model_server_config_text
    from builder.core.layout import atomic_write_text

    entries = [
        ModelEntry(
            m["name"], str(m["base_path"]), m.get("policy", "latest"), int(m.get("num_versions", 1)),
            tuple(m.get("versions", ())), tuple(sorted(m.get("labels", {}).items())),
        )
        for m in models
    ]
    atomic_write_text(path, model_server_config_text(entries))
    return Path(path)


# ---------------------------------------------------------------------------------------------
# tf.Example models (Classify / Regress / MultiInference)


def build_half_plus_two(base_path: str | os.PathLike, version_dir: str = "00000123") -> Path:
    """TF Serving's ``saved_model_half_plus_two_cpu`` testdata, rebuilt TF1-style (from reading
    tensorflow_serving/servables/tensorflow/testdata/saved_model_half_plus_two.py): serialized
    tf.Examples (features x, x2) parsed by ParseExample; y = 0.5 x + 2, y2 = 0.5 x + 3,
    y3 = 0.5 x2 + 3. Signatures: serving_default (predict x[-1,1] -> y), classify_x_to_y,
    regress_x_to_y, regress_x_to_y2, regress_x2_to_y3. Written as BASE/``version_dir``."""
    import tensorflow as tf

    v1 = tf.compat.v1
    final = Path(base_path) / version_dir
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as sess:
        a = v1.Variable(0.5, name="a")
        b = v1.Variable(2.0, name="b")
        c = v1.Variable(3.0, name="c")
        a2 = v1.Variable(0.5, name="a2")
        c2 = v1.Variable(3.0, name="c2")
        serialized = v1.placeholder(tf.string, name="tf_example", shape=[None])
        parsed = v1.parse_example(serialized, {
            "x": v1.FixedLenFeature([1], dtype=tf.float32),
            "x2": v1.FixedLenFeature([1], dtype=tf.float32, default_value=[0.0])})
        x = tf.identity(parsed["x"], name="x")
        y = tf.identity(a * x + b, name="y")
        y2 = tf.identity(a * x + c, name="y2")
        x2 = tf.identity(parsed["x2"], name="x2")
        y3 = tf.identity(a2 * x2 + c2, name="y3")
        sess.run(v1.global_variables_initializer())
        signatures = {
            "regress_x_to_y": _signature({"inputs": serialized}, {"outputs": y}, "regress"),
            "regress_x_to_y2": _signature({"inputs": serialized}, {"outputs": y2}, "regress"),
            "regress_x2_to_y3": _signature({"inputs": x2}, {"outputs": y3}, "regress"),
            "classify_x_to_y": _signature({"inputs": serialized}, {"scores": y}, "classify"),
            "serving_default": _signature({"x": x}, {"y": y}, "predict"),
        }
        _save(sess, final, signatures)
    return final


EXAMPLE_CLASSES = (b"negative", b"neutral", b"positive")


def example_model_reference(features: list[dict]) -> dict[str, np.ndarray]:
    """numpy reference of ``build_example_model``: per example dict with x (2 floats), k (int,
    default 0): logits = x @ W + 0.25 k; scores = softmax(logits); value = 0.5 (x0 + x1) + k."""
    w = np.array([[1.0, -1.0, 0.5], [0.25, 2.0, -1.5]], dtype=np.float64)
    x = np.array([f["x"] for f in features], dtype=np.float64)
    k = np.array([f.get("k", 0) for f in features], dtype=np.float64)[:, None]
    logits = x @ w + 0.25 * k
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return {"scores": (e / e.sum(axis=1, keepdims=True)).astype(np.float32),
            "value": (0.5 * x.sum(axis=1, keepdims=True) + k).astype(np.float32)}


def build_example_model(repo: str | os.PathLike, name: str, version: int, warmup: bool = True) -> Path:
    """An Estimator-style tf.Example model (TF1): one serialized-Example input parsed by
    ParseExample (x: 2 floats, k: int64 default 0, tag: string default ""); signatures
    serving_default (classify: classes + scores), scores_only (classify: scores), regress
    (regress: outputs [-1,1]), predict (predict: examples -> scores, classes, value). With
    ``warmup``, assets.extra holds one classify, regress, multi_inference and predict record."""
    import tensorflow as tf

    v1 = tf.compat.v1
    final = Path(repo) / name / str(int(version))
    w_val = np.array([[1.0, -1.0, 0.5], [0.25, 2.0, -1.5]], dtype=np.float32)
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as sess:
        serialized = v1.placeholder(tf.string, name="input_example_tensor", shape=[None])
        parsed = v1.parse_example(serialized, {
            "x": v1.FixedLenFeature([2], dtype=tf.float32),
            "k": v1.FixedLenFeature([1], dtype=tf.int64, default_value=[0]),
            "tag": v1.FixedLenFeature([1], dtype=tf.string, default_value=[""])})
        w = v1.Variable(w_val, name="W")
        k = tf.cast(parsed["k"], tf.float32)
        logits = tf.matmul(parsed["x"], w) + 0.25 * k
        scores = tf.nn.softmax(logits, name="scores")
        classes = tf.tile(tf.constant([list(EXAMPLE_CLASSES)]), [tf.shape(scores)[0], 1], name="classes")
        value = tf.identity(0.5 * tf.reduce_sum(parsed["x"], axis=1, keepdims=True) + k, name="value")
        sess.run(v1.global_variables_initializer())
        signatures = {
            "serving_default": _signature({"inputs": serialized}, {"classes": classes, "scores": scores}, "classify"),
            "scores_only": _signature({"inputs": serialized}, {"scores": scores}, "classify"),
            "regress": _signature({"inputs": serialized}, {"outputs": value}, "regress"),
            "predict": _signature({"examples": serialized}, {"scores": scores, "classes": classes,
                                                             "value": value}, "predict"),
        }
        _save(sess, final, signatures, _example_warmup(name) if warmup else None)
    return final


def _signature(inputs: dict, outputs: dict, kind: str) -> object:
    import tensorflow as tf

    v1 = tf.compat.v1
    info = v1.saved_model.utils.build_tensor_info
    method = {"predict": v1.saved_model.signature_constants.PREDICT_METHOD_NAME,
              "classify": v1.saved_model.signature_constants.CLASSIFY_METHOD_NAME,
              "regress": v1.saved_model.signature_constants.REGRESS_METHOD_NAME}[kind]
    return v1.saved_model.signature_def_utils.build_signature_def(
        {k: info(t) for k, t in inputs.items()}, {k: info(t) for k, t in outputs.items()}, method)


def _save(sess: object, final: Path, signatures: dict, warmup: list[bytes] | None = None) -> None:
    """SavedModel staged beside ``final`` under a non-numeric name, then renamed into place."""
    import tensorflow as tf

    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".staging-fixture-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        builder = tf.compat.v1.saved_model.Builder(str(staging))
        builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map=signatures)
        builder.save()
        if warmup:
            (staging / "assets.extra").mkdir()
            with tf.io.TFRecordWriter(str(staging / "assets.extra" / "tf_serving_warmup_requests")) as w:
                for record in warmup:
                    w.write(record)
        os.rename(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def _example_warmup(name: str) -> list[bytes]:
    """One PredictionLog of each kind a tf.Example model answers."""
    from tensorflow_serving.apis import (
        classification_pb2,
        inference_pb2,
        predict_pb2,
        prediction_log_pb2,
        regression_pb2,
    )

    from builder.serve.client import CLASSIFY, REGRESS, make_example, to_tensor_proto

    examples = [make_example({"x": [0.5, -1.0], "k": 1}), make_example({"x": [2.0, 0.25]})]
    cls = classification_pb2.ClassificationRequest()
    cls.model_spec.name = name
    cls.input.example_list.examples.extend(examples)
    reg = regression_pb2.RegressionRequest()
    reg.model_spec.name, reg.model_spec.signature_name = name, "regress"
    reg.input.example_list_with_context.context.CopyFrom(make_example({"k": 2}))
    reg.input.example_list_with_context.examples.extend(examples)
    multi = inference_pb2.MultiInferenceRequest()
    multi.tasks.add(method_name=CLASSIFY).model_spec.name = name
    task = multi.tasks.add(method_name=REGRESS)
    task.model_spec.name, task.model_spec.signature_name = name, "regress"
    multi.input.example_list.examples.extend(examples)
    pred = predict_pb2.PredictRequest()
    pred.model_spec.name, pred.model_spec.signature_name = name, "predict"
    pred.inputs["examples"].CopyFrom(to_tensor_proto(np.array([e.SerializeToString() for e in examples],
                                                              dtype=object)))
    log = prediction_log_pb2
    return [log.PredictionLog(classify_log=log.ClassifyLog(request=cls)).SerializeToString(),
            log.PredictionLog(regress_log=log.RegressLog(request=reg)).SerializeToString(),
            log.PredictionLog(multi_inference_log=log.MultiInferenceLog(request=multi)).SerializeToString(),
            log.PredictionLog(predict_log=log.PredictLog(request=pred)).SerializeToString()]

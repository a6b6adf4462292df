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

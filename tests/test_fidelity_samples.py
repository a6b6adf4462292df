"""--samples in every format (npz with SIGNATURE/INPUT keys, TF Serving REST JSON, TFRecord of
PredictionLog), strings kept byte-exact, tolerances that scale with the output, and the second
sample size that catches a length fixed by mistake."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

from builder.core import artifact
from builder.core.errors import GraphError, InputError, ParityError
from builder.export import parity, pipeline
from tests.helpers import fidelity_models as fm
from tests.helpers import run_builder


@pytest.fixture(scope="module")
def examples_model(tmp_path_factory) -> Path:
    return fm.tf1_example_model(tmp_path_factory.mktemp("ex") / "m")


def _example(x: float, kind: str | None = None, tail: float = 0.0) -> bytes:
    """A serialized tf.Example. Without ``kind`` every feature ends in float bytes, and with
    ``x`` and ``tail`` 0.0 the serialized bytes end in NULs whatever the map order: exactly
    what numpy 'S' arrays drop."""
    import tensorflow as tf

    feats = {"x": tf.train.Feature(float_list=tf.train.FloatList(value=[x])),
             "x2": tf.train.Feature(float_list=tf.train.FloatList(value=[tail]))}
    if kind is not None:
        feats["kind"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[kind.encode()]))
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def _export(model: Path, repo: Path, samples: Path, **kw):
    return pipeline.export(pipeline.ExportOptions(model=str(model), name="m", repo=str(repo), batch_sizes=[1, 2],
                                                  samples=str(samples), **kw), quiet=True)


def test_npz_with_signature_keys_keeps_strings_byte_exact(examples_model, tmp_path):
    ex = np.array([_example(0.0), _example(0.0, tail=0.0)], dtype=object)
    assert all(e.endswith(b"\0") for e in ex)
    artifact.write_npz(tmp_path / "s.npz", {"classify_x_to_y/inputs": ex, "regress_x_to_y/inputs": ex,
                                            "x": np.array([[1.0], [2.0], [3.0]], np.float32)})
    r = _export(examples_model, tmp_path / "repo", tmp_path / "s.npz")
    origin = {k: v["samples"] for k, v in r.build_info["signatures"].items()}
    assert all(v.startswith("--samples") for v in origin.values()), origin
    gold = artifact.read_npz(r.path / artifact.GOLDEN_FILE)
    assert list(gold["sig/classify_x_to_y/in/inputs"]) == list(ex)  # not one byte lost
    assert r.build_info["parity"]["signatures"]["serving_default"]["samples"] == 3


def test_npz_of_numpy_S_strings_loses_nul_bytes_and_the_error_says_so(examples_model, tmp_path):
    ex = np.array([_example(0.0), _example(0.0)], dtype="S")  # trailing NULs dropped
    np.savez(tmp_path / "s.npz", **{"regress_x_to_y/inputs": ex})
    with pytest.raises(GraphError, match=r"signature 'regress_x_to_y'.*'S' string arrays drop trailing NUL"):
        _export(examples_model, tmp_path / "repo", tmp_path / "s.npz", signature="regress_x_to_y")
    assert not (tmp_path / "repo").exists()  # nothing left behind, not even REPO/NAME


def test_rest_json_instances_inputs_examples_and_b64(examples_model, tmp_path):
    doc = [
        {"signature_name": "classify_x_to_y", "examples": [{"x": 1.5, "kind": "dog"}, {"x": -1.0}],
         "context": {"x2": 0.25}},
        {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0, "kind": {"b64": base64.b64encode(b"fish")
                                                                                  .decode()}}]},
        {"instances": [[1.0], [2.0]]},
    ]
    (tmp_path / "s.json").write_text(json.dumps(doc))
    r = _export(examples_model, tmp_path / "repo", tmp_path / "s.json")
    gold = artifact.read_npz(r.path / artifact.GOLDEN_FILE)
    import tensorflow as tf

    first = tf.train.Example.FromString(gold["sig/classify_x_to_y/in/inputs"][0]).features.feature
    assert first["kind"].bytes_list.value == [b"dog"] and first["x2"].float_list.value == [0.25]
    regress = tf.train.Example.FromString(gold["sig/regress_x_to_y/in/inputs"][0]).features.feature
    assert regress["kind"].bytes_list.value == [b"fish"]
    np.testing.assert_allclose(gold["out/y"], [[2.5], [3.0]])  # half plus two
    # "inputs" (columnar) for a string input, with b64
    table = fm.tf1_table_model(tmp_path / "table", use_main_op=True)
    (tmp_path / "t.json").write_text(json.dumps({"inputs": {"words": [{"b64": base64.b64encode(b"dog").decode()},
                                                                      "cat"]}}))
    r = _export(table, tmp_path / "repo2", tmp_path / "t.json")
    assert list(artifact.read_golden(r.path).outputs["ids"]) == [5, 3]


def test_tfrecord_of_prediction_logs(examples_model, tmp_path):
    import tensorflow as tf
    from tensorflow_serving.apis import (
        classification_pb2,
        input_pb2,
        model_pb2,
        predict_pb2,
        prediction_log_pb2,
    )

    pred = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="m"))
    pred.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[4.0]], np.float32)))
    ctx = tf.train.Example.FromString(_example(0.0, "bird"))
    inp = input_pb2.Input(example_list_with_context=input_pb2.ExampleListWithContext(
        examples=[tf.train.Example.FromString(_example(3.0, "dog"))], context=ctx))
    cls = classification_pb2.ClassificationRequest(
        model_spec=model_pb2.ModelSpec(name="m", signature_name="classify_x_to_y"), input=inp)
    logs = [prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=pred)),
            prediction_log_pb2.PredictionLog(classify_log=prediction_log_pb2.ClassifyLog(request=cls))]
    artifact.write_tfrecords(tmp_path / "warm.tfrecord", [x.SerializeToString() for x in logs])
    r = _export(examples_model, tmp_path / "repo", tmp_path / "warm.tfrecord",
                signature="serving_default,classify_x_to_y")
    assert r.build_info["kept_signatures"] == ["classify_x_to_y", "serving_default"]
    gold = artifact.read_npz(r.path / artifact.GOLDEN_FILE)
    merged = tf.train.Example.FromString(gold["sig/classify_x_to_y/in/inputs"][0]).features.feature
    assert merged["kind"].bytes_list.value == [b"dog"] and merged["x"].float_list.value == [3.0]
    np.testing.assert_allclose(gold["out/y"], [[4.0]])


def test_object_npz_and_unsynthesisable_inputs_are_one_line_errors(tmp_path):
    import tensorflow as tf

    np.save(tmp_path / "obj.npy", np.array([b"a"], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "obj.npz", words=np.array([b"a", None], dtype=object))
    table = fm.tf1_table_model(tmp_path / "table", use_main_op=True)
    p = run_builder("export", "--model", str(table), "--name", "t", "--repo", str(tmp_path / "repo"),
                    "--samples", str(tmp_path / "obj.npz"))
    err = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert p.returncode == 2 and len(err) == 1 and "object (pickled) arrays" in err[0], p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "repo").exists()
    # an input of unknown rank that the graph says nothing more about
    with tf.Graph().as_default() as g:
        delta = tf.compat.v1.placeholder(tf.float32, name="delta")
        tf.identity(delta * 2.0, name="twice")
    (tmp_path / "g.pb").write_bytes(g.as_graph_def().SerializeToString())
    p = run_builder("export", "--model", str(tmp_path / "g.pb"), "--name", "g", "--repo", str(tmp_path / "repo"),
                    "--outputs", "twice")
    err = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert p.returncode == 2 and len(err) == 1, p.stderr
    assert "signature 'serving_default' input 'delta'" in err[0] and ".npz" in err[0] and "JSON" in err[0] \
        and "PredictionLog" in err[0]
    assert not (tmp_path / "repo").exists()


def test_tolerance_scales_with_the_output():
    tol = parity.tolerances("fp32", None, None)
    ref = np.full((4, 10), 3e-11, np.float32)
    off = ref * 1.1  # 10% wrong: an absolute 1e-5 would never notice
    assert parity.compare({"y": ref}, {"y": off}, parity.Tolerance(1e-5, 0.0, None)).passed
    report = parity.compare({"y": ref}, {"y": off}, tol)
    assert not report.passed and report.outputs[0].atol == pytest.approx(3e-16, rel=1e-3)
    # a softmax over 1000 classes (~1e-3) with one class mis-ranked is caught by the cosine too
    rng = np.random.default_rng(0)
    soft = rng.dirichlet(np.ones(1000), size=4).astype(np.float32)
    bad = soft.copy()
    bad[:, :10] = bad[:, :10][:, ::-1]
    assert not parity.compare({"p": soft}, {"p": bad}, tol).passed
    assert parity.compare({"p": soft}, {"p": soft + np.float32(1e-9)}, tol).passed
    explicit = parity.tolerances("fp32", 1e-3, None)
    assert explicit.scaled is False and explicit.atol == 1e-3


def test_second_sample_size_catches_a_length_fixed_by_mistake(tmp_path, monkeypatch):
    """The export's graph is made to accept only length 32 (the default size) while its signature
    still says [-1, -1]: the first sample set passes, the second (length 48) must not."""
    import tensorflow as tf

    from builder.load import stage

    with tf.Graph().as_default() as g:
        x = tf.compat.v1.placeholder(tf.float32, [None, None], name="x")
        tf.reduce_sum(x * 2.0, axis=1, name="y")
    (tmp_path / "g.pb").write_bytes(g.as_graph_def().SerializeToString())
    real = pipeline.freeze_and_optimize

    def fix_length(run):
        real(run)
        sm = artifact.read_saved_model(run.out)
        gd = sm.meta_graphs[0].graph_def
        with tf.Graph().as_default() as fixed:
            xi = tf.compat.v1.placeholder(tf.float32, [None, None], name="x")
            tf.reduce_sum(tf.reshape(xi, [-1, 32]) * 2.0, axis=1, name="y")
        gd.CopyFrom(fixed.as_graph_def())
        stage.write_saved_model_pb(run.out, sm)

    monkeypatch.setattr(pipeline, "freeze_and_optimize", fix_length)
    with pytest.raises((ParityError, GraphError), match="nothing was promoted"):
        pipeline.export(pipeline.ExportOptions(model=str(tmp_path / "g.pb"), name="g", repo=str(tmp_path / "r"),
                                               outputs=["y"], batch_sizes=[1]), quiet=True)
    monkeypatch.setattr(pipeline, "freeze_and_optimize", real)
    r = pipeline.export(pipeline.ExportOptions(model=str(tmp_path / "g.pb"), name="g", repo=str(tmp_path / "r"),
                                               outputs=["y"], batch_sizes=[1]), quiet=True)
    assert r.build_info["parity"]["signatures"]["serving_default"]["second_size"] == "passed"
    assert r.build_info["signature"]["inputs"]["x"]["shape"] == [-1, -1]


def test_samples_for_an_unknown_signature_are_refused(examples_model, tmp_path):
    (tmp_path / "s.json").write_text(json.dumps({"signature_name": "nope", "instances": [[1.0]]}))
    with pytest.raises(InputError, match="signature_name 'nope' is not a kept signature"):
        _export(examples_model, tmp_path / "repo", tmp_path / "s.json")

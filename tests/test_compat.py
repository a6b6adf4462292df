"""The compatibility gate on hand-built GraphDefs: TRT ops (also inside library functions), ops
stock TF Serving lacks, internal ops, and which serving images may load what."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from builder.config import compat
from builder.core.errors import CompatibilityError

ROOT = Path(__file__).resolve().parents[1]


def graph(ops: list[str] = (), library_ops: list[str] = (), functions_called: list[str] = ()):
    import tensorflow as tf

    gd = tf.compat.v1.GraphDef()
    x = gd.node.add(name="x", op="Placeholder")
    x.attr["dtype"].type = tf.float32.as_datatype_enum
    for i, op in enumerate(ops):
        gd.node.add(name=f"n{i}", op=op).input.append("x")
    if library_ops:
        fn = gd.library.function.add()
        fn.signature.name = "__inference_signature_wrapper_42"
        for i, op in enumerate(library_ops):
            fn.node_def.add(name=f"f{i}", op=op)
    for name in functions_called:
        fn = gd.library.function.add()
        fn.signature.name = name
        gd.node.add(name=f"call_{name}", op=name)
    return gd


@pytest.mark.parametrize("where", ["top", "library"])
def test_trt_ops_found_at_top_level_and_inside_functions(where):
    ops = ["TRTEngineOp", "CreateTRTResourceHandle", "InitializeTRTResource", "Relu"]
    gd = graph(ops=ops) if where == "top" else graph(ops=["Identity"], library_ops=ops)
    assert compat.trt_ops(gd) == {"TRTEngineOp", "CreateTRTResourceHandle", "InitializeTRTResource"}
    report = compat.serving_report(gd)
    assert report["trt_ops"] == ["CreateTRTResourceHandle", "InitializeTRTResource", "TRTEngineOp"]
    assert "2.17.x-gpu" in report["serving_images"] and "NOT >=2.18" in report["serving_images"]
    assert report["missing_ops"] == []  # TF 2.17 (and so TF Serving 2.17) registers the TRT ops


def test_plain_graph_loads_everywhere():
    gd = graph(ops=["Conv2D", "BiasAdd", "Relu"])
    assert not compat.trt_ops(gd)
    assert compat.serving_report(gd)["serving_images"].startswith("any tensorflow/serving image")
    for image in ("tensorflow/serving:2.17.0", "tensorflow/serving:2.19.1-gpu", "tensorflow/serving"):
        assert compat.image_problem(False, image) is None


@pytest.mark.parametrize("image,ok,words", [
    ("tensorflow/serving:2.17.0-gpu", True, []),
    ("tensorflow/serving:2.17.1-gpu", True, []),
    ("tensorflow/serving:2.16.1-gpu", True, []),
    ("tensorflow/serving:2.17.0", False, ["CPU image", "2.17.0-gpu"]),
    ("tensorflow/serving:latest", False, ["CPU image"]),
    ("tensorflow/serving:2.18.0-gpu", False, ["dropped TensorRT after 2.17", "CreateTRTResourceHandle"]),
    ("tensorflow/serving:latest-gpu", False, ["dropped TensorRT after 2.17"]),
    ("registry.local:5000/serving:2.19.0-gpu", False, ["dropped TensorRT"]),
])
def test_image_problem_for_trt_artefacts(image, ok, words):
    problem = compat.image_problem(True, image)
    assert (problem is None) is ok
    for w in words:
        assert w in problem
    if problem:
        assert "\n" not in problem


def test_tensorrt_major_mismatch_is_refused_and_minor_mismatch_warned():
    assert compat.serving_tensorrt_version("tensorflow/serving:2.17.1-gpu") == (8, 6, 1)
    assert compat.serving_tensorrt_version("tensorflow/serving:2.11.0-gpu") == (7, 2, 2)
    assert compat.serving_tensorrt_version("tensorflow/serving:2.17.1") is None
    problem = compat.image_problem(True, "tensorflow/serving:2.11.0-gpu", tensorrt_version=[8, 6, 1])
    assert "TensorRT 7.2.2" in problem and "8.6.1" in problem
    assert compat.image_problem(True, "tensorflow/serving:2.17.0-gpu", tensorrt_version=[8, 6, 1]) is None
    warn = compat.image_warning(True, "tensorflow/serving:2.13.0-gpu", [8, 6, 1])
    assert "8.4.3" in warn and "first request" in warn
    assert compat.image_warning(True, "tensorflow/serving:2.17.0-gpu", [8, 6, 1]) is None
    assert compat.image_warning(False, "tensorflow/serving:2.13.0-gpu", [8, 6, 1]) is None


def test_ops_stock_serving_lacks_are_reported_and_refused_everywhere():
    gd = graph(ops=["Conv2D", "SentencepieceOp", "PyFunc"], library_ops=["Addons>GeluGrad"])
    assert compat.unregistered_ops(gd) == {"SentencepieceOp", "Addons>GeluGrad"}
    assert compat.serving_missing_ops(gd) == {"SentencepieceOp", "Addons>GeluGrad", "PyFunc"}
    report = compat.serving_report(gd)
    assert report["missing_ops"] == ["Addons>GeluGrad", "PyFunc", "SentencepieceOp"]
    assert report["serving_images"].startswith("no stock tensorflow/serving image")
    for image in ("tensorflow/serving:2.17.0", "tensorflow/serving:2.17.0-gpu"):
        problem = compat.image_problem(False, image, missing_ops=report["missing_ops"])
        assert "PyFunc" in problem and "custom op library" in problem


def test_function_calls_are_not_missing_ops_and_internal_ops_are_flagged():
    gd = graph(ops=["_FusedConv2D", "Conv2D"], functions_called=["my_block_fn"])
    assert compat.unregistered_ops(gd) == set()
    assert compat.internal_ops(gd) == {"_FusedConv2D"}
    assert compat.serving_report(gd)["internal_ops"] == ["_FusedConv2D"]


# --------------------------------------------------------------------------- through the CLI


def write_trt_version(repo: Path, name: str = "facenet", version: int = 1) -> Path:
    """A version directory whose SavedModel graph holds TRT ops inside a library function, as
    TF-TRT writes them (the bytes need not run: the gate only reads them)."""
    from tensorflow.core.protobuf import saved_model_pb2

    vdir = repo / name / str(version)
    (vdir / "variables").mkdir(parents=True)
    (vdir / "assets.extra").mkdir()
    sm = saved_model_pb2.SavedModel(saved_model_schema_version=1)
    mg = sm.meta_graphs.add()
    mg.meta_info_def.tags.append("serve")
    mg.graph_def.CopyFrom(graph(ops=["Identity"], library_ops=["TRTEngineOp", "CreateTRTResourceHandle"]))
    sig = mg.signature_def["serving_default"]
    sig.method_name = "tensorflow/serving/predict"
    sig.inputs["images"].name = "x:0"
    sig.outputs["embeddings"].name = "n0:0"
    (vdir / "saved_model.pb").write_bytes(sm.SerializeToString())
    (vdir / "assets.extra" / "build_info.json").write_text(json.dumps({"optimizer": "none"}))
    return vdir


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "builder", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("image,code", [("tensorflow/serving:2.17.0", 2),
                                        ("tensorflow/serving:2.18.0-gpu", 2),
                                        ("tensorflow/serving:2.17.0-gpu", 0)])
def test_config_step_gates_a_trt_artefact(tmp_path, image, code):
    """build_info says "none", but the graph holds TRT ops: the scan of the graph decides."""
    repo = tmp_path / "repo"
    write_trt_version(repo)
    p = run_cli("config", "--repo", str(repo), "--image", image, "--nocompanions")
    assert p.returncode == code, p.stderr
    if code:
        err = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
        assert len(err) == 1 and "facenet version 1" in err[0] and "TensorRT" in err[0]
        assert not (repo / "models.config").exists()
    else:
        assert (repo / "models.config").exists()


def test_image_step_gates_a_trt_artefact(tmp_path):
    from builder.deploy import image

    repo = tmp_path / "repo"
    write_trt_version(repo)
    artefacts = image.scan_repo(repo)
    assert any(a.has_trt for a in artefacts)
    with pytest.raises(CompatibilityError, match="CPU image"):
        image.gate(artefacts, "tensorflow/serving:2.17.0")
    with pytest.raises(CompatibilityError, match="dropped TensorRT"):
        image.gate(artefacts, "tensorflow/serving:2.18.0-gpu")
    image.gate(artefacts, "tensorflow/serving:2.17.0-gpu")

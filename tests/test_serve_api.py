"""The local server accepts what tensorflow_model_server accepts: TF Serving's version-directory
rule (``00000123``), its quick start on a half_plus_two model (no static-shape check), and the
Classify / Regress / MultiInference APIs over REST and gRPC on tf.Example models, with warmup
replaying every record kind. Each attack on these paths is followed by a request that must still
answer. Real SavedModels, real servers on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

from builder.config import inspection, models_config
from builder.core import layout
from builder.core.errors import ServingError
from builder.publish import manifest
from builder.serve.client import (
    CLASSIFY,
    REGRESS,
    GrpcClient,
    RestClient,
    RestError,
    classifications,
    make_example,
    outputs,
)
from builder.serve.local import LocalServer
from integration_tests.fixture_models import (
    EXAMPLE_CLASSES,
    build_example_model,
    build_half_plus_two,
    build_toy_version,
    example_model_reference,
    write_models_config,
)

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """half_plus_two/00000123 and census/1 (the Estimator-style tf.Example model)."""
    root = tmp_path_factory.mktemp("models")
    build_half_plus_two(root / "half_plus_two")
    build_example_model(root, "census", 1)
    return root


@pytest.fixture(scope="module")
def server(models):
    cfg = write_models_config(models / "models.config", [
        {"name": "half_plus_two", "base_path": models / "half_plus_two"},
        {"name": "census", "base_path": models / "census"}])
    with LocalServer(cfg, file_system_poll_wait_seconds=0) as s:
        s.wait_until_ready(60)
        yield s


@pytest.fixture
def rest(server):
    with RestClient(server.rest_url) as c:
        yield c


@pytest.fixture
def grpc_client(server):
    with GrpcClient(server.grpc_target) as c:
        yield c


def still_answers(rest: RestClient) -> None:
    assert rest.predict("half_plus_two", instances=[1.0, 2.0, 5.0]) == {"predictions": [2.5, 3.0, 4.5]}


# ---------------------------------------------------------------------------------------------
# 1. version directories as TF Serving names them


def test_version_names_follow_tf_serving_int64_rule(tmp_path):
    names = ("123", "00000123", " 5 ", "\t6\n", "0", "-0")
    assert [layout.parse_version_name(n) for n in names] == [123, 123, 5, 6, 0, 0]
    assert layout.parse_version_name("9223372036854775807") == 2**63 - 1
    # "+7": 2.17's safe_strto64 takes no sign ('+' parses only from 2.19's absl::SimpleAtoi);
    # "-1": TF Serving loads a negative version, the builder ignores it (layout docstring)
    for name in ("+7", "-1", "1.0", "", "12a", ".staging-1", "9223372036854775808", "٣", "１"):
        assert layout.parse_version_name(name) is None, name
    for name in ("00000123", "7", "007", "99999999999999999999", "tmp"):
        (tmp_path / name).mkdir()
    (tmp_path / "4").write_text("a file is not a version")
    warnings: list[str] = []
    paths = layout.version_paths(tmp_path, warnings.append)
    assert paths == {7: tmp_path / "7", 123: tmp_path / "00000123"}  # canonical "7" wins over "007"
    assert warnings == [f"Duplicate version directories detected. Version 7 will be loaded from {tmp_path / '7'}, "
                        "007 will be ignored."]
    assert layout.version_dir(tmp_path.parent, tmp_path.name, 123) == tmp_path / "00000123"
    assert layout.version_dir(tmp_path.parent, tmp_path.name, 8) == tmp_path / "8"  # new: canonical name
    assert layout.next_version(tmp_path) == 124


def test_config_inspect_and_publish_use_the_real_version_directory(tmp_path):
    build_toy_version(tmp_path / "repo", "toy", 3)
    os.rename(tmp_path / "repo" / "toy" / "3", tmp_path / "repo" / "toy" / "0003")
    cfg = models_config.build_config(tmp_path / "repo", warn=lambda m: None)
    assert [c.name for c in cfg.model_config_list.config] == ["toy"]
    assert models_config.repo_artifacts(tmp_path / "repo", cfg)[0][:2] == ("toy", 3)
    assert models_config.repo_artifacts(tmp_path / "repo", cfg)[0][2]["name"] == "toy"  # build_info found
    report = inspection.inspect_path(tmp_path / "repo" / "toy")
    assert report["kind"] == "model" and len(report["versions"]) == 1
    chosen = manifest.select_version(str(tmp_path / "repo"), "toy", "latest")
    assert chosen.version == 3 and chosen.path == tmp_path / "repo" / "toy" / "0003"


def test_tf_serving_quick_start_verbatim_on_a_00000123_version(models):
    """g3doc/docker.md: MODEL_NAME=half_plus_two, curl -d '{"instances": [1.0, 2.0, 5.0]}' ->
    { "predictions": [2.5, 3.0, 4.5] }, through ``python -m builder serve`` (the CLI)."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "builder", "serve", "--port", "0", "--rest_api_port", "0",
         "--model_name", "half_plus_two", "--model_base_path", str(models / "half_plus_two")],
        cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = None
        deadline = time.monotonic() + 120
        while port is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, f"serve exited early ({proc.poll()})"
            m = re.match(r"REST listening on [^:]+:(\d+)", line)
            port = int(m.group(1)) if m else None
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models/half_plus_two:predict",
                                     data=b'{"instances": [1.0, 2.0, 5.0]}', method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            assert json.loads(r.read()) == {"predictions": [2.5, 3.0, 4.5]}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models/half_plus_two", timeout=30) as r:
            assert json.loads(r.read()) == {"model_version_status": [
                {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


def test_shapes_are_left_to_the_graph_dtypes_are_checked(rest, grpc_client):
    # attack: a version number that does not fit int64, a rank the graph rejects, a wrong dtype
    status, body = rest.post("/v1/models/half_plus_two/versions/99999999999999999999999:predict",
                             {"instances": [1.0]})
    assert status == 400 and body == {"error": "Failed to convert version: 99999999999999999999999 to numeric."}
    status, body = rest.post("/v1/models/census:predict", {"signature_name": "predict", "inputs": [["a", "b"]]})
    assert status == 400 and "vector" in body["error"]  # ParseExample's own shape error
    status, body = rest.post("/v1/models/half_plus_two:predict", {"instances": ["a"]})
    assert status == 400 and "is not of expected type: float" in body["error"]
    with pytest.raises(grpc.RpcError) as err:
        grpc_client.predict("half_plus_two", {"x": np.array([[1, 2]], np.int32)})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Expects arg[0] to be float but int32 is provided" in err.value.details()
    # and what TF Serving answers, answers here: [3] into [-1, 1], over both protocols
    still_answers(rest)
    assert rest.predict("half_plus_two", inputs=[[[1.0]]]) == {"outputs": [[[2.5]]]}  # any shape the graph takes
    resp = grpc_client.predict("half_plus_two", {"x": np.array([1.0, 2.0, 5.0], np.float32)})
    assert outputs(resp)["y"].tolist() == [2.5, 3.0, 4.5] and resp.model_spec.version.value == 123


# ---------------------------------------------------------------------------------------------
# 2. Classify, Regress, MultiInference


EXAMPLES = [{"x": [0.5, -1.0], "k": 1, "tag": "a"}, {"x": [2.0, 0.25]}, {"x": [-0.5, 3.0], "k": True}]


def _reference(examples: list[dict], context: dict | None = None) -> dict[str, np.ndarray]:
    merged = [{**(context or {}), **e} for e in examples]
    return example_model_reference([{"x": m["x"], "k": int(m.get("k", 0))} for m in merged])


def test_rest_classify_and_regress_like_api_rest_md(rest):
    ref = _reference(EXAMPLES)
    got = rest.classify("census", EXAMPLES)
    assert list(got) == ["result"] and len(got["result"]) == 3
    for row, scores in zip(got["result"], ref["scores"], strict=True):
        assert [label for label, _ in row] == [c.decode() for c in EXAMPLE_CLASSES]
        np.testing.assert_allclose([score for _, score in row], scores, rtol=1e-6)
    got = rest.classify("census", EXAMPLES, signature="scores_only")
    assert [label for label, _ in got["result"][0]] == ["", "", ""]  # no classes output: empty labels
    # context merged into every example (an example's own feature wins)
    ctx = {"k": 2}
    got = rest.regress("census", [{"x": [1.0, 1.0]}, {"x": [0.0, 0.0], "k": 5}], context=ctx, signature="regress")
    np.testing.assert_allclose(got["result"], _reference([{"x": [1.0, 1.0]}, {"x": [0.0, 0.0], "k": 5}], ctx)
                               ["value"].ravel(), rtol=1e-6)
    # TF Serving's half_plus_two testdata signatures; b64 binary features parse too
    got = rest.regress("half_plus_two", [{"x": 1.0}, {"x": [2.0]}], signature="regress_x_to_y")
    assert got == {"result": [2.5, 3.0]}
    got = rest.classify("half_plus_two", [{"x": 1.0, "x2": 4.0}], signature="classify_x_to_y")
    assert got == {"result": [[["", 2.5]]]}
    b64 = {"x": [0.5, -1.0], "tag": {"b64": base64.b64encode(b"\x00\xff").decode()}}
    assert rest.regress("census", [b64], signature="regress")["result"] == pytest.approx([-0.25])


def test_grpc_classify_regress_multi_inference(grpc_client):
    ref = _reference(EXAMPLES)
    resp = grpc_client.classify("census", EXAMPLES)
    assert resp.model_spec.name == "census" and resp.model_spec.version.value == 1
    assert resp.model_spec.signature_name == "serving_default"
    got = classifications(resp.result)
    assert [[label for label, _ in row] for row in got] == [[c.decode() for c in EXAMPLE_CLASSES]] * 3
    np.testing.assert_allclose([[s for _, s in row] for row in got], ref["scores"], rtol=1e-6)
    resp = grpc_client.regress("census", EXAMPLES, signature="regress", context={"k": 9})
    want = _reference(EXAMPLES, {"k": 9})["value"].ravel()
    np.testing.assert_allclose([r.value for r in resp.result.regressions], want, rtol=1e-6)
    resp = grpc_client.multi_inference("census", EXAMPLES, [("", CLASSIFY), ("regress", REGRESS)])
    assert [r.model_spec.signature_name for r in resp.results] == ["serving_default", "regress"]
    np.testing.assert_allclose([[c.score for c in item.classes] for item in resp.results[0].classification_result
                                .classifications], ref["scores"], rtol=1e-6)
    np.testing.assert_allclose([r.value for r in resp.results[1].regression_result.regressions],
                               ref["value"].ravel(), rtol=1e-6)


@pytest.mark.parametrize(("body", "pattern"), [
    ({"signature_name": "regress"}, r"When method is classify, key 'examples' is expected and was not found$"),
    ({"examples": {"x": [1.0]}}, r"Expecting 'examples' value to be an list/array$"),
    ({"examples": []}, r"'examples' value is an empty array$"),
    ({"examples": [[1.0]]}, r"^Example must be JSON object but got JSON Array$"),
    ({"examples": [{"x": None}]}, r"^Feature: x has element with unexpected JSON type: Null$"),
    ({"examples": [{"x": [[1.0]]}]}, r"^Feature: x has element with unexpected JSON type: Array$"),
    ({"examples": [{"x": [1.0, "a"]}]}, r"^Unexpected element type in feature: x expecting type: float$"),
    ({"examples": [{"x": 18446744073709551615}]}, r"^Feature: x has uint64_t element. Only int64_t is supported.$"),
    ({"examples": [{"x": {"b64": "%%%"}}]}, r"^Unable to base64 decode$"),
    ({"examples": [{"x": {"b64": 1}}]}, r"^Feature: x has element with unexpected JSON type: Object$"),
    ({"context": [1], "examples": [{}]}, r"^Example must be JSON object but got JSON Array$"),
    ({"signature_name": "nope", "examples": [{}]}, r"^No signature was found with the name: nope$"),
    ({"signature_name": "predict", "examples": [{}]}, r"^Expected one output Tensor.$"),
    ({"examples": [{"x": [1.0]}]}, r"^Expected one output Tensor.$"),  # serving_default is a classifier
    ({"signature_name": "regress", "examples": [{"x": [1.0]}]}, r"Key: x, Index: 0.  Number of float values"),
    ({"signature_name": "regress", "examples": [{"k": [1.0]}]}, r"Key: k, Index: 0.  Data types don.t match"),
    ({"signature_name": "regress", "examples": [{"k": 1}]}, r"Feature: x \(data type: float\) is required"),
])
def test_rest_regress_errors_are_tf_servings(rest, body, pattern):
    status, got = rest.post("/v1/models/census:regress", body)
    assert status == 400, got
    assert re.search(pattern, got["error"]), got["error"]
    still_answers(rest)
    assert rest.regress("census", [{"x": [1.0, 1.0]}], signature="regress") == {"result": [1.0]}


def test_regress_on_a_predict_signature_names_the_signature(rest):
    status, got = rest.post("/v1/models/half_plus_two:regress", {"examples": [{"x": 1.0}]})
    assert status == 400
    assert got["error"].startswith('No regression inputs found in SignatureDef: inputs {\n  key: "x"\n')
    assert 'method_name: "tensorflow/serving/predict"' in got["error"]
    still_answers(rest)


def test_grpc_inference_errors(grpc_client, rest):
    from tensorflow_serving.apis import classification_pb2, inference_pb2

    cases = [
        (lambda: grpc_client.classify("census", [], signature="serving_default"), "Input is empty."),
        (lambda: grpc_client.classify("census", EXAMPLES, signature="regress"),
         "Expected classification signature outputs to contain at least one of"),
        (lambda: grpc_client.prediction.Classify(classification_pb2.ClassificationRequest(), timeout=10),
         "Missing ModelSpec"),
        (lambda: grpc_client.multi_inference("census", EXAMPLES, [("regress", REGRESS), ("regress", REGRESS)]),
         "Duplicate evaluation of signature: regress"),
        (lambda: grpc_client.multi_inference("census", EXAMPLES, [("nope", REGRESS)]),
         "Requested signature not found in model graph: nope"),
        (lambda: grpc_client.prediction.MultiInference(_two_models(inference_pb2), timeout=10),
         "All ModelSpecs in a MultiInferenceRequest must access the same model name."),
    ]
    for call, message in cases:
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert message in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        grpc_client.multi_inference("census", EXAMPLES, [("predict", "tensorflow/serving/predict")])
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert err.value.details() == "Unsupported signature method_name: tensorflow/serving/predict"
    still_answers(rest)


def _two_models(inference_pb2) -> object:
    req = inference_pb2.MultiInferenceRequest()
    req.tasks.add(method_name=CLASSIFY).model_spec.name = "census"
    req.tasks.add(method_name=REGRESS).model_spec.name = "half_plus_two"
    req.input.example_list.examples.add()
    return req


def test_method_name_check_flag(models):
    cfg = write_models_config(models / "strict.config", [{"name": "census", "base_path": models / "census"}])
    with LocalServer(cfg, file_system_poll_wait_seconds=0, enable_signature_method_name_check=True,
                     enable_model_warmup=False) as s:
        s.wait_until_ready(60)
        with RestClient(s.rest_url) as rest:
            status, got = rest.post("/v1/models/census:classify", {"signature_name": "regress", "examples": [{}]})
            assert status == 400 and got["error"] == ("Expected classification signature method_name to be "
                                                      "tensorflow/serving/classify. Was: tensorflow/serving/regress")
            assert len(rest.classify("census", EXAMPLES)["result"]) == 3


def test_warmup_replays_classify_regress_multi_inference_and_predict(server, tmp_path):
    assert "Number of warmup records read: 4." in server.log_text()
    # attack: a classify record on a signature that cannot classify fails the load
    from tensorflow_serving.apis import classification_pb2, prediction_log_pb2

    repo = tmp_path / "repo"
    build_example_model(repo, "census", 1, warmup=False)
    req = classification_pb2.ClassificationRequest()
    req.model_spec.name, req.model_spec.signature_name = "census", "regress"
    req.input.example_list.examples.add().CopyFrom(make_example({"x": [1.0, 2.0]}))
    record = prediction_log_pb2.PredictionLog(classify_log=prediction_log_pb2.ClassifyLog(request=req))
    extra = repo / "census" / "1" / "assets.extra"
    extra.mkdir()
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(extra / "tf_serving_warmup_requests")) as w:
        w.write(record.SerializeToString())
    cfg = write_models_config(repo / "models.config", [{"name": "census", "base_path": repo / "census"}])
    with pytest.raises(ServingError, match="warmup failed for census version 1: Expected classification signature "
                                           "outputs to contain at least one of"):
        LocalServer(cfg, max_num_load_retries=0).start()
    shutil.rmtree(extra)
    with LocalServer(cfg, file_system_poll_wait_seconds=0) as s:  # the same model without it serves
        s.wait_until_ready(60)
        with RestClient(s.rest_url) as rest:
            assert rest.regress("census", [{"x": [1.0, 1.0]}], signature="regress") == {"result": [1.0]}


def test_clients_errors_are_typed(rest):
    with pytest.raises(RestError) as err:
        rest.classify("nope", [{}])
    assert err.value.status == 404 and err.value.message == "Servable not found for request: Latest(nope)"

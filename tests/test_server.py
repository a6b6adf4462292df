"""The local TF-Serving-compatible server: config rules, JSON codec, version lifecycle (warmup,
polling, reload, unload), errors, CLI. Real SavedModels, real HTTP and gRPC on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from builder.cli import main as cli_main
from builder.config import models_config as mc
from builder.config.models_config import ModelEntry
from builder.core import layout
from builder.core.errors import ConfigError, InputError, ServerStartError, ServingError
from builder.serve import codec
from builder.serve.handles import LOG_BEGIN, LOG_END, ContainerServer, docker_unavailable_reason
from builder.serve.local import LocalServer
from builder.serve.servable import Servable
from builder.serve.status import RpcStatus
from integration_tests.fixture_models import build_toy_version, sample_inputs, toy_reference, write_models_config
from integration_tests.log_checks import trt_engine_builds

# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """Pristine toy/1 and toy/2, copied per test (tests mutate their repositories)."""
    root = tmp_path_factory.mktemp("built")
    for v in (1, 2):
        build_toy_version(root, "toy", v)
    return root


@pytest.fixture
def repo(built, tmp_path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(built, root)
    return root


def config(repo: Path, **model) -> Path:
    m = {"name": "toy", "base_path": repo / "toy", **model}
    return write_models_config(repo / "models.config", [m])


def rest_call(server: LocalServer, method: str, path: str, body: bytes | dict | None = None):
    conn = http.client.HTTPConnection(server.host, server.rest_port, timeout=30)
    try:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        conn.request(method, path, body=data)
        resp = conn.getresponse()
        raw = resp.read()
        ctype = resp.getheader("Content-Type", "")
        return resp.status, (json.loads(raw) if "json" in ctype else raw.decode())
    finally:
        conn.close()


def grpc_predict(server: LocalServer, name: str, x: np.ndarray, **spec):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    req = predict_pb2.PredictRequest()
    req.model_spec.name = name
    if "version" in spec:
        req.model_spec.version.value = spec["version"]
    req.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
    with grpc.insecure_channel(server.grpc_target) as ch:
        return prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict(req, timeout=10)


def states(server: LocalServer, name: str = "toy") -> dict[int, str]:
    try:
        return {v: s.state for v, s in server.manager.status(name)}
    except RpcStatus:
        return {}


def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# ---------------------------------------------------------------------------------------------
# models.config


def test_config_parses_policies_and_labels(tmp_path):
    text = """
    model_config_list {
      config { name: "a" base_path: "/m/a" model_platform: "tensorflow" }
      config { name: "b" base_path: "/m/b" model_platform: "tensorflow"
               model_version_policy { specific { versions: 3 versions: 1 } }
               version_labels { key: "stable" value: 1 } version_labels { key: "canary" value: 3 } }
      config { name: "c" base_path: "/m/c" model_platform: "tensorflow"
               model_version_policy { all {} } }
      config { name: "d" base_path: "/m/d" model_platform: "tensorflow"
               model_version_policy { latest { num_versions: 2 } } }
    }"""
    a, b, c, d = mc.parse_model_server_config(text, "x.config")
    assert (a.policy, a.num_versions) == ("latest", 1)
    assert (b.policy, b.versions, dict(b.labels)) == ("specific", (1, 3), {"stable": 1, "canary": 3})
    assert c.policy == "all"
    assert (d.policy, d.num_versions) == ("latest", 2)
    # and back to text through the official proto
    again = mc.parse_model_server_config(mc.model_server_config_text([a, b, c, d]))
    assert again == [a, b, c, d]


@pytest.mark.parametrize(("text", "fragment"), [
    ("model_config_list { config { name: 'a' base_path: 'rel/a' model_platform: 'tensorflow' } }",
     "expected model a to have an absolute path"),
    ("model_config_list { config { name: 'a' base_path: '/a' model_platform: 'tensorflow' } "
     "config { name: 'a' base_path: '/b' model_platform: 'tensorflow' } }", "illegal to list model a multiple times"),
    ("model_config_list { config { name: 'a' base_path: '/a' } }", "set model_platform: \"tensorflow\""),
    ("model_config_list { config { base_path: '/a' model_platform: 'tensorflow' } }", "has no name"),
    ("model_config_list { config { name: 'a' base_path: '/a' model_platform: 'tensorflow' "
     "version_labels { key: 'bad-label' value: 1 } } }", "must match [a-zA-Z0-9_]+"),
    ("model_config_list { config { name: 'a' base_path: '/a' model_platform: 'tensorflow' "
     "model_version_policy { specific { } } } }", "specific version policy with no versions"),
    ("custom_model_config { }", "only model_config_list is supported"),
    ("model_config_list { config { name: 'a' ", "not a ModelServerConfig text proto"),
])
def test_config_errors_name_the_file(text, fragment):
    with pytest.raises(ConfigError) as err:
        mc.parse_model_server_config(text, "/etc/models.config")
    assert str(err.value).startswith("/etc/models.config: ")
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_version_policies_and_version_dirs(tmp_path):
    for name in ("1", "2", "10", "007", ".staging-5", "tmp", "3x"):
        (tmp_path / name).mkdir()
    (tmp_path / "4").write_text("a file, not a version")
    assert layout.list_versions(tmp_path) == [1, 2, 7, 10]
    assert layout.list_versions(tmp_path / "missing") == []
    disk = [1, 2, 7, 10]
    assert ModelEntry("m", "/p").aspired(disk) == [10]
    assert ModelEntry("m", "/p", num_versions=3).aspired(disk) == [2, 7, 10]
    assert ModelEntry("m", "/p", policy="all").aspired(disk) == disk
    assert ModelEntry("m", "/p", policy="specific", versions=(2, 99)).aspired(disk) == [2]
    assert ModelEntry("m", "/p").aspired([]) == []


# ---------------------------------------------------------------------------------------------
# JSON codec (json_tensor.cc behaviour)


def test_json_to_array_types_and_shapes():
    f32 = np.float32
    a = codec.json_to_array([[1, 2.5], [3, 4]], f32)
    assert a.dtype == f32 and a.shape == (2, 2) and a[0, 1] == 2.5
    assert codec.json_to_array([1, 2], np.int64, may_have_bools=False).dtype == np.int64
    assert codec.json_to_array([True, False], np.bool_).tolist() == [True, False]
    s = codec.json_to_array(["hé", {"b64": "AP8="}], np.object_)
    assert s.tolist() == ["hé".encode(), b"\x00\xff"]
    assert codec.json_to_array(3.0, f32).shape == ()


@pytest.mark.parametrize(("value", "dtype", "message"), [
    ([[1, 2], [3]], np.float32, "Encountered list at unexpected size: 1 at level: 1 expected size: 2"),
    ([[1, 2], 3], np.float32, "JSON Value: 3 found at incorrect level: 2 in the JSON DOM. Expected at level: 2"),
    ([1, [2]], np.float32, "Encountered list at unexpected level: 1 expected < 1"),
    (["a"], np.float32, 'JSON Value: "a" Type: String is not of expected type: float'),
    ([True], np.float32, "JSON Value: true Type: True is not of expected type: float"),
    ([1.5], np.int32, "JSON Value: 1.5 Type: Number is not of expected type: int32"),
    ([2**40], np.int32, "is not of expected type: int32"),
    ([1], np.object_, "JSON Value: 1 Type: Number is not of expected type: string"),
    ([{"b64": "%%%"}], np.object_, "Unable to base64 decode"),
    ([None], np.float64, "JSON Value: null Type: Null is not of expected type: double"),
])
def test_json_to_array_errors(value, dtype, message):
    with pytest.raises(RpcStatus) as err:
        codec.json_to_array(value, dtype)
    assert err.value.code == "INVALID_ARGUMENT"
    assert message in err.value.message


def test_json_types_tf_serving_cannot_convert_are_unimplemented():
    with pytest.raises(RpcStatus) as err:
        codec.json_to_array([1.0, 2.0], np.float16, may_have_bools=False)
    assert err.value.code == "UNIMPLEMENTED" and err.value.http_status == 501
    assert err.value.message == "Conversion of JSON Value: [1.0,2.0] to type: half"


def test_vectorised_path_agrees_with_checked_path():
    rows = sample_inputs(5).tolist()
    fast = codec.json_to_array(rows, np.float32, may_have_bools=False)
    slow = codec.json_to_array(rows, np.float32, may_have_bools=True)
    assert fast.dtype == slow.dtype and np.array_equal(fast, slow)
    with pytest.raises(RpcStatus):  # floats for an int tensor fall through to the checks
        codec.json_to_array([[1.5, 2]], np.int32, may_have_bools=False)


def test_predict_response_shapes():
    y = np.arange(6, dtype=np.float32).reshape(2, 3)
    z = np.array([[1.0], [2.0]], np.float32)
    assert codec.predict_response_json({"y": y}, "row") == {"predictions": y.tolist()}
    assert codec.predict_response_json({"y": y, "z": z}, "row") == {
        "predictions": [{"y": [0, 1, 2], "z": [1.0]}, {"y": [3, 4, 5], "z": [2.0]}]}
    assert codec.predict_response_json({"y": y}, "columnar") == {"outputs": y.tolist()}
    assert codec.predict_response_json({"y": y, "z": z}, "columnar") == {"outputs": {"y": y.tolist(), "z": z.tolist()}}
    strings = np.array([b"\x00a", b"b"], dtype=object)
    out = codec.predict_response_json({"echo_bytes": strings, "text": strings}, "columnar")["outputs"]
    assert out["echo_bytes"] == [{"b64": "AGE="}, {"b64": "Yg=="}] and out["text"] == ["\x00a", "b"]
    with pytest.raises(RpcStatus, match="inconsistent batch size: 1 expecting: 2"):
        codec.predict_response_json({"y": y, "z": z[:1]}, "row")


def test_parse_predict_json_formats():
    dt = {"a": np.float32, "b": np.float32}
    inputs, fmt = codec.parse_predict_json(b'{"instances": [{"a": [1], "b": [2]}, {"a": [3], "b": [4]}]}', dt)
    assert fmt == "row" and inputs["a"].tolist() == [[1], [3]] and inputs["b"].tolist() == [[2], [4]]
    inputs, fmt = codec.parse_predict_json(b'{"inputs": {"a": [[1]], "b": [[2]]}}', dt)
    assert fmt == "columnar" and inputs["b"].tolist() == [[2]]
    with pytest.raises(RpcStatus, match="instances is a plain list, but expecting list of objects"):
        codec.parse_predict_json(b'{"instances": [[1]]}', dt)
    with pytest.raises(RpcStatus, match="keys must be equal to: a,b"):
        codec.parse_predict_json(b'{"instances": [{"a": [1]}]}', dt)
    with pytest.raises(RpcStatus, match="'signature_name' key must be a string value"):
        codec.parse_predict_json(b'{"signature_name": 3, "instances": [[1]]}', {"a": np.float32})
    with pytest.raises(RpcStatus, match=r"^JSON Parse error: Invalid encoding in string. at offset: 1$"):
        codec.parse_predict_json(b'"\xff"', dt)


def test_http_status_follows_tf_serving_mapping():
    expected = {"INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "OUT_OF_RANGE": 400, "NOT_FOUND": 404,
                "RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504,
                "UNIMPLEMENTED": 501, "INTERNAL": 500, "UNKNOWN": 500}
    assert {c: RpcStatus(c, "").http_status for c in expected} == expected


def test_trt_engine_build_lines_are_found():
    log = (
        "2024-01-01 I tensorflow/core/.../saved_model_warmup_util.cc:] Finished reading warmup data\n"
        "2024-01-01 I tensorflow/compiler/tf2tensorrt/kernels/trt_engine_op.cc:733] Building a new TensorRT "
        "engine for TRTEngineOp_000_000 with input shapes: [[8,160,160,3]]\n"
        "2024-01-01 I tensorflow/compiler/tf2tensorrt/... Loaded TensorRT 8.6.1\n")
    found = trt_engine_builds(log)
    assert len(found) == 1 and "[[8,160,160,3]]" in found[0]
    assert trt_engine_builds("Loaded TensorRT 8.6.1\n") == []


# ---------------------------------------------------------------------------------------------
# loading, warmup, unloading


def test_warmup_runs_at_load_and_can_be_disabled(repo):
    with LocalServer(config(repo)) as s:
        s.wait_until_ready(30)
        assert "Number of warmup records read: 2." in s.log_text()
        assert warmup_records(s) == 2
    with LocalServer(config(repo), enable_model_warmup=False) as s:
        s.wait_until_ready(30)
        assert "warmup data" not in s.log_text()
        assert warmup_records(s) == 0


def warmup_records(s: LocalServer) -> int:
    servable = s.manager.acquire("toy")
    try:
        return servable.warmup_records
    finally:
        servable.release()


def _write_warmup(path: Path, records: list[bytes]) -> None:
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as w:
        for r in records:
            w.write(r)


def test_bad_warmup_record_fails_the_load(repo):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    req = predict_pb2.PredictRequest()
    req.inputs["not_an_input"].CopyFrom(tf.make_tensor_proto(sample_inputs(1)))
    log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=req))
    _write_warmup(repo / "toy" / "2" / "assets.extra" / "tf_serving_warmup_requests", [log.SerializeToString()])
    s = LocalServer(config(repo), max_num_load_retries=0)
    with pytest.raises(ServerStartError) as err:
        s.start()
    assert str(err.value) == (
        "Failed to start server. Error: UNKNOWN: 1 servable(s) did not become available: {{{name: toy version: 2} "
        "due to error: INVALID_ARGUMENT: warmup failed for toy version 2: "
        f"{repo / 'toy' / '2' / 'assets.extra' / 'tf_serving_warmup_requests'}: record 0: inputs ['not_an_input'] "
        "do not match signature 'serving_default' inputs ['x']}, }")
    assert s._grpc is None and s._http is None  # nothing left listening


def test_too_many_warmup_records_fail_the_load(repo):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    req = predict_pb2.PredictRequest()
    req.inputs["x"].CopyFrom(tf.make_tensor_proto(sample_inputs(1)))
    rec = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=req)).SerializeToString()
    _write_warmup(repo / "toy" / "2" / "assets.extra" / "tf_serving_warmup_requests", [rec] * 1001)
    with pytest.raises(ServerStartError, match=r"Number of warmup records exceeds the maximum \(1000\)"):
        LocalServer(config(repo), max_num_load_retries=0).start()


def test_corrupt_saved_model_fails_startup_with_the_reason(repo):
    (repo / "toy" / "2" / "saved_model.pb").write_bytes(b"not a protobuf")
    with pytest.raises(ServerStartError, match=r"^Failed to start server. Error: UNKNOWN: 1 servable\(s\) did not "
                       r"become available: \{\{\{name: toy version: 2\} due to error: [A-Z_]+: Failed to "
                       r"load SavedModel"):
        LocalServer(config(repo), max_num_load_retries=0).start()


def test_unload_waits_for_in_flight_requests(repo):
    import logging

    s = Servable("toy", 1, str(repo / "toy" / "1"), logging.getLogger("t"))
    s.load(enable_warmup=False)
    assert s.acquire()
    closer = threading.Thread(target=s.close)
    closer.start()
    time.sleep(0.3)
    assert closer.is_alive() and s.session is not None  # still held by the "request"
    out = s.run("", {"x": sample_inputs(2)}, [])  # the in-flight request completes normally
    np.testing.assert_allclose(out["y"], toy_reference(sample_inputs(2), 1)["y"], atol=1e-5)
    s.release()
    closer.join(5)
    assert not closer.is_alive() and s.session is None
    assert s.acquire() is False  # no new requests on a closed version


# ---------------------------------------------------------------------------------------------
# polling and reload


def test_file_system_poll_adds_and_removes_versions_ignoring_other_names(repo):
    with LocalServer(config(repo, policy="all"), file_system_poll_wait_seconds=0.2) as s:
        s.wait_until_ready(30)
        assert states(s) == {2: "AVAILABLE", 1: "AVAILABLE"}
        shutil.copytree(repo / "toy" / "1", repo / "toy" / "incoming")  # not numeric: ignored
        time.sleep(0.8)
        assert set(states(s)) == {1, 2}
        os.rename(repo / "toy" / "incoming", repo / "toy" / "3")
        wait_for(lambda: states(s).get(3) == "AVAILABLE", what="version 3 to load")
        resp = grpc_predict(s, "toy", sample_inputs(2))
        assert resp.model_spec.version.value == 3
        shutil.rmtree(repo / "toy" / "1")
        wait_for(lambda: states(s).get(1) == "END", what="version 1 to unload")
        status, body = rest_call(s, "POST", "/v1/models/toy/versions/1:predict", {"instances": [[1, 2, 3, 4]]})
        assert status == 404 and body == {"error": "Servable not found for request: Specific(toy, 1)"}
        status, body = rest_call(s, "GET", "/v1/models/toy/versions/1")
        assert body["model_version_status"][0]["state"] == "END"


def test_config_poll_applies_changes_and_keeps_old_config_on_parse_error(repo):
    cfg = config(repo, policy="all")
    with LocalServer(cfg, model_config_file_poll_wait_seconds=0.2, file_system_poll_wait_seconds=60) as s:
        s.wait_until_ready(30)
        status, _ = rest_call(s, "POST", "/v1/models/toy/labels/stable:predict", {"instances": [[1, 2, 3, 4]]})
        assert status == 400
        write_models_config(cfg, [{"name": "toy", "base_path": repo / "toy", "policy": "all",
                                   "labels": {"stable": 1}}])
        wait_for(lambda: rest_call(s, "POST", "/v1/models/toy/labels/stable:predict",
                                   {"instances": [[1, 2, 3, 4]]})[0] == 200, what="label to appear")
        x = sample_inputs(2)
        status, body = rest_call(s, "POST", "/v1/models/toy/labels/stable:predict", {"instances": x.tolist()})
        np.testing.assert_allclose([p["y"] for p in body["predictions"]], toy_reference(x, 1)["y"], atol=1e-5)
        cfg.write_text("model_config_list { config { name: ")  # broken: must be ignored
        wait_for(lambda: "keeping the current config" in s.log_text(), what="the parse error to be logged")
        assert states(s) == {2: "AVAILABLE", 1: "AVAILABLE"}
        assert rest_call(s, "POST", "/v1/models/toy/labels/stable:predict", {"instances": x.tolist()})[0] == 200
        write_models_config(cfg, [{"name": "toy", "base_path": repo / "toy"}])  # latest: only 2
        wait_for(lambda: states(s).get(1) == "END", what="version 1 to unload")
        status, body = rest_call(s, "POST", "/v1/models/toy/labels/stable:predict", {"instances": x.tolist()})
        assert status == 400 and body["error"] == "Unrecognized servable version label: stable"


def _reload(s: LocalServer, entries_text: str):
    from google.protobuf import text_format
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc
    from tensorflow_serving.config import model_server_config_pb2

    req = model_management_pb2.ReloadConfigRequest()
    req.config.CopyFrom(text_format.Parse(entries_text, model_server_config_pb2.ModelServerConfig()))
    with grpc.insecure_channel(s.grpc_target) as ch:
        return model_service_pb2_grpc.ModelServiceStub(ch).HandleReloadConfigRequest(req, timeout=30)


def test_handle_reload_config_request(repo):
    base = repo / "toy"
    # periodic polling: a reload's policy change and new models are listed at once (the poll TF
    # Serving runs next); with 0 they never are (test_poll_interval_0_lists_base_paths_once)
    with LocalServer(config(repo, policy="all"), file_system_poll_wait_seconds=60) as s:
        s.wait_until_ready(30)
        resp = _reload(s, f'model_config_list {{ config {{ name: "toy" base_path: "{base}" '
                          'model_platform: "tensorflow" model_version_policy { specific { versions: 1 } } '
                          'version_labels { key: "stable" value: 1 } } }')
        assert resp.status.error_code == 0
        assert states(s) == {2: "END", 1: "AVAILABLE"}
        assert grpc_predict(s, "toy", sample_inputs(1)).model_spec.version.value == 1

        with pytest.raises(grpc.RpcError) as err:  # label on a version that is not loaded
            _reload(s, f'model_config_list {{ config {{ name: "toy" base_path: "{base}" '
                       'model_platform: "tensorflow" model_version_policy { specific { versions: 1 } } '
                       'version_labels { key: "canary" value: 2 } } }')
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "Request to assign label to version 2 of model toy" in err.value.details()

        with pytest.raises(grpc.RpcError) as err:
            _reload(s, 'model_config_list { config { name: "toy" base_path: "relative" '
                       'model_platform: "tensorflow" } }')
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        resp = _reload(s, f'model_config_list {{ config {{ name: "other" base_path: "{base}" '
                          'model_platform: "tensorflow" } }')
        assert resp.status.error_code == 0
        assert states(s, "toy") == {2: "END", 1: "END"}  # removed from the config: unloaded
        with pytest.raises(grpc.RpcError) as err:
            grpc_predict(s, "toy", sample_inputs(1))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert grpc_predict(s, "other", sample_inputs(1)).model_spec.version.value == 2


# ---------------------------------------------------------------------------------------------
# front ends


def test_single_model_flags_and_classify_on_a_predict_signature(repo):
    """Classify/Regress on a predict signature fail as TF Serving's classifier.cc/regressor.cc
    say (structure checked, method name not, by default); the server keeps answering."""
    from tensorflow_serving.apis import classification_pb2, prediction_service_pb2_grpc

    with LocalServer(model_name="toy", model_base_path=repo / "toy") as s:
        s.wait_until_ready(30)
        assert grpc_predict(s, "toy", sample_inputs(1)).model_spec.version.value == 2
        status, body = rest_call(s, "POST", "/v1/models/toy:classify", {"examples": []})
        assert status == 400 and body["error"].endswith("'examples' value is an empty array")
        status, body = rest_call(s, "POST", "/v1/models/toy:regress", {"examples": [{"x": [1.0]}]})
        assert status == 400 and body["error"].startswith("Expected one output Tensor.")
        status, body = rest_call(s, "POST", "/v1/models/toy:classify",
                                 {"signature_name": "strings", "examples": [{"x": [1.0]}]})
        assert status == 400 and body["error"].startswith("No classification inputs found in SignatureDef: ")
        req = classification_pb2.ClassificationRequest()
        req.model_spec.name = "toy"
        req.input.example_list.examples.add()
        with grpc.insecure_channel(s.grpc_target) as ch:
            with pytest.raises(grpc.RpcError) as err:
                prediction_service_pb2_grpc.PredictionServiceStub(ch).Classify(req, timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("No classification inputs found in SignatureDef: inputs {")
        status, body = rest_call(s, "GET", "/monitoring/prometheus/metrics")
        assert status == 404  # no monitoring config: no metrics endpoint
        status, body = rest_call(s, "GET", "/v1/models")
        assert status == 400 and body == {"error": "Missing model name in request."}
        assert grpc_predict(s, "toy", sample_inputs(1)).model_spec.version.value == 2


def test_monitoring_config_serves_prometheus_metrics(repo, tmp_path):
    from builder.config.companions import monitoring_config_text

    mon = tmp_path / "monitoring.config"
    mon.write_text(monitoring_config_text("/metrics"))
    with LocalServer(config(repo), monitoring_config_file=mon) as s:
        s.wait_until_ready(30)
        grpc_predict(s, "toy", sample_inputs(1))
        rest_call(s, "POST", "/v1/models/toy/versions/9:predict", {"instances": [[1, 2, 3, 4]]})
        status, text = rest_call(s, "GET", "/metrics")
        assert status == 200
        assert ':tensorflow:serving:request_count{model_name="toy",status="OK"} 1' in text
        assert ':tensorflow:serving:request_count{model_name="toy",status="NOT_FOUND"} 1' in text


def test_port_in_use_is_a_clear_error(repo):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ServingError, match=rf"--rest_api_port {port}: cannot listen on 127.0.0.1:{port}"):
            with LocalServer(config(repo), rest_api_port=port):
                pass
        with pytest.raises(ServingError, match=rf"--port {port}: cannot listen for gRPC"):
            with LocalServer(config(repo), port=port):
                pass


def test_context_manager_prints_the_log_between_markers_on_failure(repo, capsys):
    with pytest.raises(RuntimeError, match="boom"):
        with LocalServer(config(repo)) as s:
            s.wait_until_ready(30)
            raise RuntimeError("boom")
    err = capsys.readouterr().err
    begin, end = LOG_BEGIN.format("local"), LOG_END.format("local")
    assert begin in err and end in err
    logged = err.split(begin, 1)[1].split(end, 1)[0]
    assert "Successfully loaded servable version {name: toy version: 2}" in logged
    assert s._grpc is None and s._http is None  # stopped in finally


def test_constructor_errors(repo, tmp_path):
    with pytest.raises(InputError, match="no models to serve"):
        LocalServer()
    with pytest.raises(InputError, match="either --model_config_file or --model_name"):
        LocalServer(config(repo), model_name="toy", model_base_path=repo / "toy")
    with pytest.raises(InputError, match="--model_base_path .* is not a directory"):
        LocalServer(model_name="toy", model_base_path=tmp_path / "nope")
    with pytest.raises(InputError, match="--model_config_file .* does not exist"):
        LocalServer(tmp_path / "missing.config")
    bad = tmp_path / "batching.txt"
    bad.write_text("allowed_batch_sizes: 8\nallowed_batch_sizes: 1\n")
    with pytest.raises(ConfigError, match="strictly increasing"):
        LocalServer(config(repo), batching_parameters_file=bad)


def test_cli_serve_user_errors_exit_2(repo, tmp_path, capsys):
    assert cli_main(["serve", "--model_config_file", str(tmp_path / "missing.config")]) == 2
    assert "does not exist" in capsys.readouterr().err
    rel = tmp_path / "rel.config"
    rel.write_text('model_config_list { config { name: "toy" base_path: "toy" model_platform: "tensorflow" } }')
    assert cli_main(["serve", "--model_config_file", str(rel)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "absolute path" in err and err.count("\n") == 1
    assert cli_main(["serve", "--model_config_file", str(config(repo)), "--enable_model_warmup", "maybe"]) == 2


def test_container_server_rewrites_paths_without_an_engine(repo, tmp_path):
    cfg = config(repo, policy="all", labels={"stable": 1})
    mon = tmp_path / "monitoring.config"
    mon.write_text("prometheus_config { enable: true }\n")
    c = ContainerServer(repo, cfg, monitoring_config_file=mon)
    try:
        text = (c._cfgdir / "models.config").read_text()
        (entry,) = mc.parse_model_server_config(text)
        assert entry.base_path == "/models/toy" and entry.policy == "all" and dict(entry.labels) == {"stable": 1}
        assert "--model_config_file=/config/models.config" in c.flags
        assert "--enable_model_warmup=true" in c.flags
        assert "--monitoring_config_file=/config/monitoring.config" in c.flags
        assert (c._cfgdir / "monitoring.config").read_text() == mon.read_text()
    finally:
        c.stop()
    assert not c._cfgdir.exists()
    outside = write_models_config(tmp_path / "o.config", [{"name": "x", "base_path": tmp_path / "elsewhere"}])
    with pytest.raises(ConfigError, match="outside the mounted repository"):
        ContainerServer(repo, outside)


@pytest.mark.docker
def test_container_server_needs_an_engine(repo):
    reason = docker_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with ContainerServer(repo, config(repo)) as c:
        assert c.wait_until_ready(120) > 0
        assert grpc_predict(c, "toy", sample_inputs(1)).model_spec.version.value == 2

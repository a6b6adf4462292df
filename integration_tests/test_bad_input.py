"""Bad requests get TF Serving's status and a clear message, and the server keeps answering.

Expected texts are the ones tensorflow_model_server produces (json_tensor.cc, server_core.cc,
basic_manager.cc, get_model_status_impl.cc, predict_util.cc); where TF Serving leaves the check
to the TensorFlow runtime (shape, batch mismatch) the runtime's words differ, so the pattern
accepts either wording.
"""

from __future__ import annotations

import json
import re

import grpc
import numpy as np
import pytest

from builder.serve.client import GrpcClient, RestClient, outputs, rows_to_arrays
from integration_tests.conftest import LIMIT
from integration_tests.fixture_models import sample_inputs


def assert_still_serving(rest: RestClient, grpc_client: GrpcClient, toy_repo) -> None:
    x = toy_repo.golden[("toy", 1)]["in/x"]
    want = toy_repo.golden[("toy", 1)]["out/y"]
    status, body = rest.post("/v1/models/toy/versions/1:predict", {"instances": x.tolist()})
    assert status == 200, body
    np.testing.assert_allclose(rows_to_arrays(body["predictions"])["y"], want, atol=1e-5)
    np.testing.assert_allclose(outputs(grpc_client.predict("toy", {"x": x}, version=1))["y"], want, atol=1e-5)


X = [[0.1, 0.2, 0.3, 0.4]]
PREDICT = "/v1/models/toy/versions/1:predict"
REST_CASES = [
    # id, method, path, body, HTTP status, pattern the error must match
    ("empty-body", "POST", PREDICT, b"", 400, r"^JSON Parse error: The document is empty$"),
    ("malformed-json", "POST", PREDICT, b'{"instances": [1, 2', 400, r"^JSON Parse error: "),
    ("not-an-object", "POST", PREDICT, b"[1, 2]", 400, r"Is not object"),
    ("no-inputs-key", "POST", PREDICT, {"rows": X}, 400, r"Missing 'inputs' or 'instances' key"),
    ("both-keys", "POST", PREDICT, {"instances": X, "inputs": X}, 400, r"expecting only one of"),
    ("wrong-dtype", "POST", PREDICT, {"instances": [["a", "b", "c", "d"]]}, 400,
     r'JSON Value: "a" Type: String is not of expected type: float'),
    ("bool-for-float", "POST", PREDICT, {"instances": [[True, 0.2, 0.3, 0.4]]}, 400,
     r"JSON Value: true Type: True is not of expected type: float"),
    ("wrong-shape", "POST", PREDICT, {"instances": [[0.1, 0.2, 0.3]]}, 400,
     r"(?i)shape|size-incompatible|incompatible"),
    ("inconsistent-rows", "POST", PREDICT, {"instances": [[1, 2, 3, 4], [1, 2, 3]]}, 400,
     r"Failed to process element: 1 of 'instances' list.*Expecting tensor size: 4 but got: 3"),
    ("inconsistent-batch", "POST", PREDICT,
     {"signature_name": "pair", "inputs": {"a": [[1, 2, 3, 4]] * 2, "b": [[1, 2, 3, 4]] * 3}}, 400,
     r"(?i)batch|incompatible shapes"),
    ("missing-named-input", "POST", PREDICT, {"signature_name": "pair", "inputs": {"a": X}}, 400,
     r"Missing named input: b in 'inputs' object\."),
    ("unknown-model", "POST", "/v1/models/nope:predict", {"instances": X}, 404,
     r"^Servable not found for request: Latest\(nope\)$"),
    ("unknown-version", "POST", "/v1/models/toy/versions/99:predict", {"instances": X}, 404,
     r"^Servable not found for request: Specific\(toy, 99\)$"),
    ("unknown-label", "POST", "/v1/models/toy/labels/nope:predict", {"instances": X}, 400,
     r"^Unrecognized servable version label: nope$"),
    ("unknown-signature", "POST", PREDICT, {"signature_name": "nope", "instances": X}, 400,
     r'Serving signature name: "nope" not found in signature def'),
    ("status-unknown-model", "GET", "/v1/models/nope", None, 404,
     r"^Could not find any versions of model nope$"),
    ("status-unknown-version", "GET", "/v1/models/toy/versions/99", None, 404,
     r"^Could not find version 99 of model toy$"),
    ("metadata-unknown-model", "GET", "/v1/models/nope/metadata", None, 404,
     r"Servable not found for request: Latest\(nope\)"),
    ("malformed-path", "POST", "/v1/models/toy:explode", {"instances": X}, 400, r"Malformed request"),
]


@pytest.mark.parametrize(("case", "method", "path", "body", "status", "pattern"), REST_CASES,
                         ids=[c[0] for c in REST_CASES])
def test_rest_bad_request(server, rest, grpc_client, toy_repo, case, method, path, body, status, pattern):
    got_status, got = rest.request(method, path, body)
    assert got_status == status, got
    assert isinstance(got, dict) and set(got) == {"error"}, got
    assert re.search(pattern, got["error"]), got["error"]
    assert_still_serving(rest, grpc_client, toy_repo)


def test_rest_body_over_size_limit(server, rest, grpc_client, toy_repo):
    if server.backend != "local":
        pytest.skip("tensorflow_model_server has no REST body size limit to exceed")
    rows = sample_inputs(LIMIT // 40 + 1000).tolist()
    body = json.dumps({"instances": rows}).encode()
    assert len(body) > LIMIT
    status, got = rest.post("/v1/models/toy/versions/1:predict", body)
    assert status == 429, got
    assert re.search(rf"exceeds the limit of {LIMIT} bytes \(--rest_api_max_body_bytes\)", got["error"])
    assert_still_serving(rest, grpc_client, toy_repo)


GRPC_CASES = [
    ("unknown-model", dict(model="nope", inputs={"x": X}), grpc.StatusCode.NOT_FOUND,
     r"Servable not found for request: Latest\(nope\)"),
    ("unknown-version", dict(model="toy", inputs={"x": X}, version=99), grpc.StatusCode.NOT_FOUND,
     r"Servable not found for request: Specific\(toy, 99\)"),
    ("unknown-label", dict(model="toy", inputs={"x": X}, label="nope"), grpc.StatusCode.INVALID_ARGUMENT,
     r"Unrecognized servable version label: nope"),
    ("unknown-signature", dict(model="toy", inputs={"x": X}, version=1, signature="nope"),
     grpc.StatusCode.FAILED_PRECONDITION, r'Serving signature key "nope" not found'),
    ("missing-input", dict(model="toy", inputs={"a": X}, version=1, signature="pair"),
     grpc.StatusCode.INVALID_ARGUMENT, r"input size does not match signature: 1!=2"),
    ("extra-input", dict(model="toy", inputs={"x": X, "q": X}, version=1),
     grpc.StatusCode.INVALID_ARGUMENT, r"Sent extra: \{q\}"),
    ("wrong-dtype", dict(model="toy", inputs={"x": np.array([[b"a"] * 4], dtype=object)}, version=1),
     grpc.StatusCode.INVALID_ARGUMENT, r"Expects arg\[0\] to be float but string is provided"),
    ("wrong-shape", dict(model="toy", inputs={"x": np.zeros((2, 3), np.float32)}, version=1),
     grpc.StatusCode.INVALID_ARGUMENT, r"(?i)shape|size-incompatible"),
    ("bad-output-filter", dict(model="toy", inputs={"x": X}, version=1, output_filter=("w",)),
     grpc.StatusCode.INVALID_ARGUMENT, r"output tensor alias not found in signature: w"),
]


@pytest.mark.parametrize(("case", "kwargs", "code", "pattern"), GRPC_CASES, ids=[c[0] for c in GRPC_CASES])
def test_grpc_bad_request(server, rest, grpc_client, toy_repo, case, kwargs, code, pattern):
    kwargs = dict(kwargs)
    kwargs["inputs"] = {k: np.asarray(v, dtype=np.float32) if isinstance(v, list) else v
                        for k, v in kwargs["inputs"].items()}
    with pytest.raises(grpc.RpcError) as err:
        grpc_client.predict(**kwargs)
    assert err.value.code() == code, err.value.details()
    assert re.search(pattern, err.value.details()), err.value.details()
    assert_still_serving(rest, grpc_client, toy_repo)


def test_grpc_status_of_unknown_model(server, grpc_client):
    with pytest.raises(grpc.RpcError) as err:
        grpc_client.status("nope")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "Could not find any versions of model nope"


def test_grpc_message_over_size_limit(server, rest, grpc_client, toy_repo):
    if server.backend != "local":
        pytest.skip("tensorflow_model_server accepts gRPC messages up to 2 GiB")
    big = np.zeros((LIMIT // 16 + 100, 4), np.float32)
    with pytest.raises(grpc.RpcError) as err:
        grpc_client.predict("toy", {"x": big}, version=1)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in err.value.details()
    assert_still_serving(rest, grpc_client, toy_repo)

"""The local server against hostile clients (issue 11, item 3). Every test attacks, then checks
that a good request still answers: Prometheus label injection and unbounded series, the in-flight
byte budget, chunked bodies, idle and read timeouts, HTTP framing (duplicate / invalid
Content-Length), every method, client errors that used to be 500s, gRPC ModelSpec and size
limits, and the streaming JSON parser agreeing with the small-body parser. Real servers on
127.0.0.1; memory and latency goals are measured by scripts/serve_hardening_bench, not here."""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from builder.serve import codec, jsonstream
from builder.serve.client import GrpcClient, RestClient, outputs
from builder.serve.limits import Limits
from builder.serve.local import LocalServer
from builder.serve.status import RpcStatus
from integration_tests.fixture_models import build_toy_version, sample_inputs, toy_reference, write_models_config

LIMITS = Limits(rest_max_body_bytes=4 << 20, max_inflight_request_bytes=9 << 19, grpc_max_message_bytes=1 << 20,
                rest_idle_timeout_seconds=1.0, rest_read_timeout_seconds=1.0)
PREDICT = "/v1/models/toy/versions/1:predict"


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hardening")
    build_toy_version(root, "toy", 1)
    return root


@pytest.fixture(scope="module")
def server(repo):
    from builder.config.companions import monitoring_config_text

    (repo / "monitoring.config").write_text(monitoring_config_text("/metrics"))
    cfg = write_models_config(repo / "models.config", [{"name": "toy", "base_path": repo / "toy"}])
    with LocalServer(cfg, file_system_poll_wait_seconds=0, monitoring_config_file=repo / "monitoring.config",
                     limits=LIMITS) as s:
        s.wait_until_ready(60)
        yield s


def good(server) -> None:
    """A correct request over both protocols still gets the right answer."""
    x = sample_inputs(2)
    with RestClient(server.rest_url) as rest:
        body = rest.predict("toy", version=1, instances=x.tolist())
    np.testing.assert_allclose([p["y"] for p in body["predictions"]], toy_reference(x, 1)["y"], atol=1e-5)
    with GrpcClient(server.grpc_target) as g:
        np.testing.assert_allclose(outputs(g.predict("toy", {"x": x}, version=1))["y"], toy_reference(x, 1)["y"],
                                   atol=1e-5)


def raw(server, data: bytes, wait: float = 5.0) -> tuple[int, dict | str, bytes]:
    """Send raw bytes on a fresh connection; (status, JSON body or text, raw response)."""
    with socket.create_connection((server.host, server.rest_port)) as c:
        c.settimeout(wait)
        c.sendall(data)
        out = b""
        try:
            while chunk := c.recv(65536):
                out += chunk
        except TimeoutError:
            pass
    head, _, body = out.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    try:
        return status, json.loads(body), out
    except ValueError:
        return status, body.decode(errors="replace"), out


def wait_until(predicate, what: str, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------------
# metrics


EXPOSITION_LINE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*\} \S+$')


def test_metrics_labels_are_escaped_and_unknown_models_share_one_series(server):
    injection = "/v1/models/x%22%7D%201e9%0Afake_metric%7Bjob%3D%22a%22%7D%2042%0A%23:predict"
    status, body, _ = raw(server, f"POST {injection} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                                  "Connection: close\r\n\r\n{}".encode())
    assert status == 404 and body["error"].startswith('Servable not found for request: Latest(x"} 1e9\nfake_metric')
    with RestClient(server.rest_url) as rest:
        for i in range(300):
            assert rest.post(f"/v1/models/nope{i}:predict", {"instances": [[1, 2, 3, 4]]})[0] == 404
        text = rest.metrics("/metrics")
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert all(EXPOSITION_LINE.match(line) for line in lines), [ln for ln in lines if not EXPOSITION_LINE.match(ln)]
    assert not any(line.startswith("fake_metric") for line in text.splitlines())
    counts = [line for line in lines if line.startswith(":tensorflow:serving:request_count{")]
    assert ':tensorflow:serving:request_count{model_name="(unknown)",status="NOT_FOUND"} 301' in counts
    assert len(counts) <= 4  # toy OK / errors and the one (unknown) bucket per status
    good(server)
    text = RestClient(server.rest_url).metrics("/metrics")
    assert re.search(r':tensorflow:serving:request_count\{model_name="toy",status="OK"\} \d+', text)
    assert re.search(r':tensorflow:serving:request_latency_bucket\{model_name="toy",API="Predict",'
                     r'entrypoint="GRPC",le="\+Inf"\} \d+', text)


# ---------------------------------------------------------------------------------------------
# memory: body limit, in-flight budget, big bodies streamed


def test_in_flight_budget_answers_429_then_serves(server):
    # a client announces 4 MB and sends 1 KB: its bytes are held while the server waits
    hog = socket.create_connection((server.host, server.rest_port))
    hog.sendall(f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Length: {4 << 20}\r\n\r\n".encode() + b" " * 1024)
    wait_until(lambda: server.core.budget.used >= 4 << 20, "the hog's bytes to be admitted")
    try:
        body = json.dumps({"instances": sample_inputs(40000).tolist()}).encode()
        assert 2 << 20 < len(body) < 4 << 20
        status, got = RestClient(server.rest_url).post(PREDICT, body)
        assert status == 429 and got["error"].startswith("server busy: ")
        assert "--max_inflight_request_bytes" in got["error"]
        with GrpcClient(server.grpc_target) as g, pytest.raises(grpc.RpcError) as err:
            g.predict("toy", {"x": sample_inputs(60000)}, version=1)  # 960 KB, under the gRPC message limit
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "server busy" in err.value.details()
        good(server)  # small requests still fit the budget
    finally:
        hog.close()
    wait_until(lambda: server.core.budget.used == 0, "the hog's bytes to be released")
    status, got = RestClient(server.rest_url).post(PREDICT, body)  # admitted once the hog is gone
    assert status == 200 and len(got["predictions"]) == 40000


def test_body_over_the_limit_is_refused_before_parsing(server):
    status, got, _ = raw(server, f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Length: {8 << 20}\r\n\r\n".encode()
                         + b"[" * 1000)
    assert status == 429 and "exceeds the limit of 4194304 bytes (--rest_api_max_body_bytes)" in got["error"]
    good(server)


def test_a_big_body_is_streamed_into_numpy_with_the_same_answer(server):
    x = sample_inputs(30000, seed=3)
    body = json.dumps({"instances": x.tolist()})
    assert len(body) > jsonstream.STREAM_MIN_CHARS  # takes the streaming path
    with RestClient(server.rest_url) as rest:
        got = rest.post(PREDICT, body)[1]["predictions"]
        np.testing.assert_allclose(np.array([p["y"] for p in got]), toy_reference(x, 1)["y"], atol=1e-4)
        bad = json.dumps({"instances": x.tolist()[:20000] + [[1, 2, 3]] + x.tolist()[20000:]})
        status, err = rest.post(PREDICT, bad)
        assert status == 400 and err["error"] == ("Failed to process element: 20000 of 'instances' list. Error: "
                                                  "INVALID_ARGUMENT: Expecting tensor size: 4 but got: 3")
    good(server)


# ---------------------------------------------------------------------------------------------
# HTTP


def test_chunked_request_bodies(server):
    x = sample_inputs(3)
    payload = json.dumps({"instances": x.tolist()}).encode()
    conn = http.client.HTTPConnection(server.host, server.rest_port, timeout=10)
    conn.request("POST", PREDICT, body=iter([payload[:10], payload[10:]]), encode_chunked=True,
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    got = json.loads(resp.read())
    assert resp.status == 200
    np.testing.assert_allclose([p["y"] for p in got["predictions"]], toy_reference(x, 1)["y"], atol=1e-5)
    conn.request("GET", "/v1/models/toy")  # the chunk bytes were not taken for a second request
    assert conn.getresponse().status == 200
    conn.close()
    chunk = b" " * 65536
    big = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(80)) + b"0\r\n\r\n"
    status, got, _ = raw(server, f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
                         + big)
    assert status == 429 and "Request body of more than 4194304 bytes" in got["error"]
    good(server)


def test_idle_and_read_timeouts_and_no_thread_per_connection(server):
    threads = threading.active_count()
    idle = [socket.create_connection((server.host, server.rest_port)) for _ in range(200)]
    time.sleep(0.3)
    assert threading.active_count() <= threads + 2  # connections cost no thread
    good(server)
    time.sleep(1.5)  # --rest_api_idle_timeout_seconds 1
    for c in idle:
        c.settimeout(2)
        assert c.recv(1) == b""  # closed by the server
        c.close()
    t0 = time.monotonic()
    status, got, _ = raw(server, f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n".encode()
                         + b'{"instances":')
    assert status == 408 and "request body not received within 1 s (got 13 of 100 bytes" in got["error"]
    assert time.monotonic() - t0 < 4
    good(server)


FRAMING = [
    ("duplicate-content-length", b"Content-Length: 2\r\nContent-Length: 2\r\n", "Duplicate Content-Length"),
    ("invalid-content-length", b"Content-Length: abc\r\n", "Invalid character in Content-Length"),
    ("negative-content-length", b"Content-Length: -1\r\n", "Invalid character in Content-Length"),
    ("content-length-and-chunked", b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n",
     "can't be present with"),
    ("header-too-long", b"X-Big: " + b"a" * 9000 + b"\r\nContent-Length: 2\r\n", "Got more than 8190 bytes"),
]


@pytest.mark.parametrize(("case", "headers", "message"), FRAMING, ids=[c[0] for c in FRAMING])
def test_malformed_framing_is_a_json_400(server, case, headers, message):
    status, got, _ = raw(server, f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\n".encode() + headers + b"\r\n{}")
    assert status == 400, got
    assert got["error"].startswith("Malformed request: ") and message in got["error"] and "\n" not in got["error"]
    good(server)


@pytest.mark.parametrize("method", ["PATCH", "PUT", "DELETE", "TRACE", "OPTIONS", "HEAD", "CONNECT", "BREW"])
def test_every_method_gets_a_json_error(server, method):
    status, got, out = raw(server, f"{method} /v1/models/toy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                                   .encode())
    assert 400 <= status < 500, out[:200]
    assert b"Content-Type: application/json" in out
    if method != "HEAD":  # HEAD answers carry no body
        assert set(got) == {"error"}
    good(server)


def test_cors_preflight_like_tf_serving(server):
    status, got, _ = raw(server, b"OPTIONS /v1/models/toy:predict HTTP/1.1\r\nHost: x\r\nOrigin: https://a.b\r\n"
                                 b"Connection: close\r\n\r\n")
    assert status == 200
    status, got, _ = raw(server, b"OPTIONS /v1/models/toy:predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 400 and got == {"error": "Origin header is missing in CORS preflight"}


# ---------------------------------------------------------------------------------------------
# client errors are 4xx with TF Serving's words, never 500


CLIENT_ERRORS = [
    ("100k-nested-lists", '{"instances": ' + "[" * 100000 + "]" * 100000 + "}", "nests arrays or objects too deeply"),
    ("rank-40", '{"instances": ' + "[" * 40 + "1" + "]" * 40 + "}", "nested deeper than 32 levels"),
    ("5000-digit-integer", '{"instances": [[' + "9" * 5000 + ",1,2,3]]}", "Number too big"),
    ("400-digit-integer", '{"instances": [[' + "9" * 400 + ",1,2,3]]}", "Number too big to be stored in double"),
    ("invalid-utf8", b'{"instances": ["\xff"]}', "Invalid encoding in string. at offset: 16"),
    ("bad-b64", '{"signature_name": "strings", "instances": [{"b64": "%%%"}]}', "Unable to base64 decode"),
    ("b64-not-a-string", '{"signature_name": "strings", "instances": [{"b64": 1}]}',
     "not formatted correctly for base64 data"),
    ("whitespace-body", "   ", "The document is empty. at offset: 3"),
]


@pytest.mark.parametrize(("case", "body", "message"), CLIENT_ERRORS, ids=[c[0] for c in CLIENT_ERRORS])
def test_client_errors_are_400(server, case, body, message):
    status, got = RestClient(server.rest_url).post(PREDICT, body)
    assert status == 400, got
    assert message in got["error"], got["error"]
    good(server)


def test_text_after_the_document_is_ignored_as_tf_serving_does(server):
    """rapidjson's kParseStopWhenDoneFlag: TF Serving stops at the end of the root object."""
    for tail in (" x", "}", ' {"instances": []}'):
        status, got = RestClient(server.rest_url).post(PREDICT, '{"instances": [[1,2,3,4]]}' + tail)
        assert status == 200 and len(got["predictions"]) == 1, got
    good(server)


def test_version_that_does_not_fit_int64_is_a_400(server):
    status, got = RestClient(server.rest_url).post("/v1/models/toy/versions/99999999999999999999999:predict", {})
    assert status == 400 and got == {"error": "Failed to convert version: 99999999999999999999999 to numeric."}
    good(server)


def test_grpc_missing_model_spec_and_message_limit(server):
    from tensorflow_serving.apis import predict_pb2

    with GrpcClient(server.grpc_target) as g:
        with pytest.raises(grpc.RpcError) as err:
            g.prediction.Predict(predict_pb2.PredictRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details() == "Missing ModelSpec"
        with pytest.raises(grpc.RpcError) as err:
            g.predict("toy", {"x": sample_inputs(70000)}, version=1)  # 1.1 MB > --grpc_max_message_bytes 1 MiB
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in err.value.details()
    good(server)


# ---------------------------------------------------------------------------------------------
# the streaming parser gives the small-body parser's answers (no server)

DT = {"x": np.float32}
BODIES = [
    ('{"instances": ' + json.dumps(sample_inputs(50).tolist()) + "}", DT),
    ('{"inputs": ' + json.dumps(sample_inputs(7).tolist()) + "}", DT),
    ('{"inputs": {"a": ' + json.dumps(sample_inputs(3).tolist()) + ', "b": [[1, 2, 3, 4]]}}',
     {"a": np.float32, "b": np.float32}),
    ('{"instances": [{"a": [1, 2], "b": "s"}, {"a": [3, 4], "b": {"b64": "AP8="}}]}', {"a": np.int64, "b": np.object_}),
    ('{"instances": [1.5, 2, 3e2, -0.0]}', DT),
    ('{"instances": [[1, 2], [3, true]]}', {"x": np.int32}),
    ('{"instances": [[1, 2], [3, 4]]}', {"x": np.bool_}),
    ('{"instances": [[1, 2], [3]]}', DT),
    ('{"instances": [[1, 2], 3]}', DT),
    ('{"instances": [[1, [2]], [3, 4]]}', DT),
    ('{"inputs": [[1, 2], [3, 4, 5]]}', DT),
    ('{"inputs": [[1, 2], [3, "a"]]}', DT),
    ('{"inputs": [[1.5, 2]]}', {"x": np.int32}),
    ('{"instances": []}', DT),
    ('{"instances": [NaN, Infinity, -Infinity]}', DT),
    ('{"signature_name": "s", "junk": [1, {"a": [2]}], "instances": [[1, 2]]}', DT),
    ('{"instances": [[1, 2],,[3, 4]]}', DT),
    ('{"instances": [[1, 2]], "inputs": [[1]]}', DT),
    ('[[1, 2]]', DT),
    ('{"instances": [[1, 2]]', DT),
]


def _outcome(body: str, dtypes: dict) -> object:
    try:
        inputs, fmt = codec.parse_predict_json(body.encode(), dtypes)
    except RpcStatus as e:
        return ("error", e.code, re.sub(r" at offset: \d+", "", e.message))
    return ("ok", fmt, {k: (v.dtype.str, v.shape, repr(v.tolist())) for k, v in inputs.items()})


@pytest.mark.parametrize(("body", "dtypes"), BODIES, ids=[str(i) for i in range(len(BODIES))])
def test_streaming_parse_matches_the_small_body_parse(monkeypatch, body, dtypes):
    small = _outcome(body, dtypes)
    monkeypatch.setattr(jsonstream, "STREAM_MIN_CHARS", 0)
    monkeypatch.setattr(jsonstream, "GROUP_CHARS", 8)  # many groups even for short arrays
    streamed = _outcome(body, dtypes)
    if small[0] == "error" and small[2].startswith("JSON Parse error"):
        assert streamed[0] == "error" and streamed[2].startswith("JSON Parse error"), streamed
    else:
        assert streamed == small


def test_big_body_fast_path_equals_json_loads():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, 3, 2)).astype(np.float32)
    text = json.dumps({"inputs": x.tolist()}, indent=1)  # whitespace and newlines everywhere
    doc = jsonstream.parse_document(text)
    assert isinstance(doc["inputs"], jsonstream.LazyArray) and doc["inputs"].numeric
    got = codec.json_to_array(doc["inputs"], np.float32)
    assert got.dtype == np.float32 and np.array_equal(got, x)

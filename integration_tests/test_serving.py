"""A repository the builder wrote serves, with the right answers, through the real protocols.

Runs against every backend of the ``server`` fixture (local always; containers when possible).
"""

from __future__ import annotations

import base64
import json
import time

import numpy as np
import pytest

from builder.config.companions import load_latency_budget
from builder.serve.client import outputs, rows_to_arrays
from integration_tests.conftest import BATCH_SIZES, SERVING_CONFIGS, Repo
from integration_tests.fixture_models import sample_inputs, toy_reference
from integration_tests.log_checks import trt_engine_builds


def assert_golden(got: dict[str, np.ndarray], repo: Repo, model: str, version: int) -> None:
    golden = repo.golden[(model, version)]
    tol = repo.tolerance(model, version)
    for alias in sorted(k[4:] for k in golden if k.startswith("out/")):
        np.testing.assert_allclose(np.asarray(got[alias], dtype=np.float32), golden[f"out/{alias}"],
                                   err_msg=f"{model} v{version} output {alias}", **tol)


def test_every_configured_version_is_available(server, grpc_client, rest):
    from tensorflow_serving.apis import get_model_status_pb2

    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    resp = grpc_client.status("toy")
    assert {s.version: s.state for s in resp.model_version_status} == {1: available, 2: available}
    assert all(s.status.error_code == 0 for s in resp.model_version_status)
    resp = grpc_client.status("toy_latest")
    assert [(s.version, s.state) for s in resp.model_version_status] == [(2, available)]

    status, body = rest.get("/v1/models/toy/versions/1")
    assert status == 200
    assert body == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    status, body = rest.get("/v1/models/toy/labels/canary")
    assert status == 200 and [s["version"] for s in body["model_version_status"]] == ["2"]


def test_metadata_over_rest_and_grpc(server, rest, grpc_client):
    from tensorflow_serving.apis import get_model_metadata_pb2

    status, body = rest.get("/v1/models/toy/versions/2/metadata")
    assert status == 200, body
    assert body["model_spec"]["name"] == "toy" and body["model_spec"]["version"] == "2"
    sigs = body["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "pair", "strings"} <= set(sigs)
    x = sigs["serving_default"]["inputs"]["x"]
    assert x["dtype"] == "DT_FLOAT"
    assert [int(d["size"]) for d in x["tensor_shape"]["dim"]] == [-1, 4]
    assert sigs["serving_default"]["method_name"] == "tensorflow/serving/predict"

    resp = grpc_client.metadata("toy_latest")
    assert resp.model_spec.version.value == 2
    sdm = get_model_metadata_pb2.SignatureDefMap()
    assert resp.metadata["signature_def"].Unpack(sdm)
    assert set(sdm.signature_def["serving_default"].outputs) == {"y", "z"}


@pytest.mark.parametrize("version", [1, 2])
def test_rest_row_and_columnar_predict_match_golden(server, rest, toy_repo, version):
    x = toy_repo.golden[("toy", version)]["in/x"]
    status, body = rest.post(f"/v1/models/toy/versions/{version}:predict", {"instances": x.tolist()})
    assert status == 200, body
    assert len(body["predictions"]) == len(x)
    assert_golden(rows_to_arrays(body["predictions"]), toy_repo, "toy", version)

    status, body = rest.post(f"/v1/models/toy/versions/{version}:predict",
                             {"signature_name": "serving_default", "inputs": {"x": x.tolist()}})
    assert status == 200, body
    assert_golden(body["outputs"], toy_repo, "toy", version)


@pytest.mark.parametrize("version", [1, 2])
def test_grpc_predict_matches_golden(server, grpc_client, toy_repo, version):
    x = toy_repo.golden[("toy", version)]["in/x"]
    resp = grpc_client.predict("toy", {"x": x}, version=version)
    assert resp.model_spec.name == "toy" and resp.model_spec.version.value == version
    assert_golden(outputs(resp), toy_repo, "toy", version)
    only_z = outputs(grpc_client.predict("toy", {"x": x}, version=version, output_filter=("z",)))
    assert set(only_z) == {"z"}


def test_builder_exported_version_serves_golden(server, rest, grpc_client, toy_repo):
    """A version written by ``builder.export`` answers with the source model's outputs."""
    gold = toy_repo.golden[("facenet", 1)]
    x = gold["in/images"]
    status, body = rest.post("/v1/models/facenet:predict", {"instances": x.tolist()})
    assert status == 200, body
    assert_golden({"embeddings": np.asarray(body["predictions"], dtype=np.float32)}, toy_repo, "facenet", 1)
    resp = grpc_client.predict("facenet", {"images": x})
    assert resp.model_spec.version.value == 1
    assert_golden(outputs(resp), toy_repo, "facenet", 1)
    status, body = rest.get("/v1/models/facenet/metadata")
    assert status == 200
    sig = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["inputs"]["images"]["tensor_shape"]["dim"][0]["size"] == "-1"


def test_latest_policy_serves_newest(server, grpc_client, rest, toy_repo):
    x = toy_repo.golden[("toy", 2)]["in/x"]
    resp = grpc_client.predict("toy_latest", {"x": x})
    assert resp.model_spec.version.value == 2
    assert_golden(outputs(resp), toy_repo, "toy", 2)
    status, body = rest.post("/v1/models/toy_latest:predict", {"instances": x.tolist()})
    assert status == 200
    assert_golden(rows_to_arrays(body["predictions"]), toy_repo, "toy", 2)


@pytest.mark.parametrize(("label", "version"), [("stable", 1), ("canary", 2)])
def test_label_routing(server, grpc_client, rest, toy_repo, label, version):
    x = toy_repo.golden[("toy", version)]["in/x"]
    resp = grpc_client.predict("toy", {"x": x}, label=label)
    assert resp.model_spec.version.value == version
    assert_golden(outputs(resp), toy_repo, "toy", version)
    status, body = rest.post(f"/v1/models/toy/labels/{label}:predict", {"inputs": x.tolist()})
    assert status == 200, body
    assert_golden(body["outputs"], toy_repo, "toy", version)
    other = toy_repo.golden[("toy", 3 - version)]["out/y"]
    assert not np.allclose(np.asarray(body["outputs"]["y"]), other, atol=1e-3), "label hit the wrong version"


def test_signature_name_with_two_named_inputs(server, rest, grpc_client):
    a = sample_inputs(3, seed=11)
    b = sample_inputs(3, seed=12)
    status, body = rest.post("/v1/models/toy/versions/1:predict", {
        "signature_name": "pair",
        "instances": [{"a": ra.tolist(), "b": rb.tolist()} for ra, rb in zip(a, b, strict=True)]})
    assert status == 200, body
    np.testing.assert_allclose(np.asarray(body["predictions"], dtype=np.float32), a + b, atol=1e-6)
    status, body = rest.post("/v1/models/toy/versions/1:predict", {
        "signature_name": "pair", "inputs": {"a": a.tolist(), "b": b.tolist()}})
    assert status == 200, body
    np.testing.assert_allclose(np.asarray(body["outputs"], dtype=np.float32), a + b, atol=1e-6)
    resp = grpc_client.predict("toy", {"a": a, "b": b}, version=1, signature="pair")
    np.testing.assert_allclose(outputs(resp)["sum"], a + b, atol=1e-6)


def test_strings_and_b64(server, rest, grpc_client):
    raw = [b"\x00\xffbinary", "héllo".encode()]
    status, body = rest.post("/v1/models/toy/versions/2:predict", {
        "signature_name": "strings",
        "instances": [{"b64": base64.b64encode(raw[0]).decode()}, "héllo"]})
    assert status == 200, body
    got = body["predictions"]
    assert [p["length"] for p in got] == [len(r) for r in raw]
    # outputs whose alias ends in _bytes come back base64-encoded
    assert [base64.b64decode(p["echo_bytes"]["b64"]) for p in got] == raw
    resp = grpc_client.predict("toy", {"text": np.array(raw, dtype=object)}, version=2, signature="strings")
    out = outputs(resp)
    assert out["length"].tolist() == [len(r) for r in raw]
    assert out["echo_bytes"].tolist() == raw


def _percentiles(samples: list[float]) -> tuple[float, float]:
    a = np.asarray(samples) * 1000.0
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def test_cold_start_and_warm_latency_within_budget(server, rest, grpc_client, record_property):
    budget = load_latency_budget(SERVING_CONFIGS / "latency_budget.json")
    backend = server.backend
    assert server.cold_start_seconds is not None
    cold_budget = budget.cold_start_seconds(backend)
    print(f"\nLATENCY {backend} cold start {server.cold_start_seconds:.2f} s (budget {cold_budget} s)")
    assert server.cold_start_seconds <= cold_budget
    record_property("cold_start_seconds", round(server.cold_start_seconds, 3))
    rounds = 40
    failures = []
    for bs in BATCH_SIZES:
        x = sample_inputs(bs, seed=100 + bs)
        want = toy_reference(x, 2)
        body = json.dumps({"instances": x.tolist()})
        timings: dict[str, list[float]] = {"grpc": [], "rest": []}
        for i in range(rounds + 3):
            t0 = time.perf_counter()
            resp = grpc_client.predict("toy_latest", {"x": x})
            t1 = time.perf_counter()
            status, rbody = rest.post("/v1/models/toy_latest:predict", body)
            t2 = time.perf_counter()
            assert status == 200
            if i >= 3:  # the first few warm connections, not the model
                timings["grpc"].append(t1 - t0)
                timings["rest"].append(t2 - t1)
        np.testing.assert_allclose(outputs(resp)["y"], want["y"], atol=1e-5)
        np.testing.assert_allclose(rows_to_arrays(rbody["predictions"])["y"], want["y"], atol=1e-5)
        b = budget.warm(backend, "toy", bs)
        assert b is not None, f"latency_budget.json has no {backend}/toy/{bs} entry"
        for api, samples in timings.items():
            p50, p99 = _percentiles(samples)
            record_property(f"{api}_b{bs}_p50_ms", round(p50, 3))
            record_property(f"{api}_b{bs}_p99_ms", round(p99, 3))
            print(f"LATENCY {backend} {api} batch {bs}: p50 {p50:.2f} ms p99 {p99:.2f} ms "
                  f"(budget {b.p50_ms}/{b.p99_ms})")
            if p50 > b.p50_ms or p99 > b.p99_ms:
                failures.append(f"{api} batch {bs}: p50 {p50:.1f} ms / p99 {p99:.1f} ms over "
                                f"budget {b.p50_ms}/{b.p99_ms} ms")
    assert not failures, "; ".join(failures)


def test_no_tensorrt_engine_built_while_serving(server, rest, toy_repo):
    """TF-TRT artefacts must have their engines pre-built for every batch size: a build in the
    log after the server was ready means a request paid for it."""
    trt = [k for k, info in toy_repo.info.items() if info.get("optimizer") == "tftrt"]
    if not trt:
        pytest.skip("no TF-TRT artefacts in this repository (optimizer none): nothing can build an engine")
    before = len(server.log_text().splitlines())
    for (model, version) in trt:
        for bs in BATCH_SIZES:
            status, _ = rest.post(f"/v1/models/{model}/versions/{version}:predict",
                                  {"instances": sample_inputs(bs).tolist()})
            assert status == 200
    after = "\n".join(server.log_text().splitlines()[before:])
    assert trt_engine_builds(after) == []


def test_prometheus_metrics_endpoint(server, rest, grpc_client, toy_repo):
    grpc_client.predict("toy", {"x": sample_inputs(1)}, version=1)
    status, text = rest.get("/monitoring/prometheus/metrics")
    assert status == 200
    assert ":tensorflow:serving:request_count" in text
    assert 'model_name="toy"' in text


def test_tf_serving_quick_start_on_a_00000123_version(server, rest):
    """g3doc/docker.md verbatim: the version directory 00000123 is version 123, and [3] feeds
    the [-1, 1] input (shapes are the graph's business)."""
    status, body = rest.post("/v1/models/half_plus_two:predict", '{"instances": [1.0, 2.0, 5.0]}')
    assert status == 200 and body == {"predictions": [2.5, 3.0, 4.5]}
    status, body = rest.get("/v1/models/half_plus_two")
    assert status == 200 and [s["version"] for s in body["model_version_status"]] == ["123"]


def test_classify_and_regress_over_rest_and_grpc(server, rest, grpc_client):
    from builder.serve.client import CLASSIFY, REGRESS, classifications
    from integration_tests.fixture_models import EXAMPLE_CLASSES, example_model_reference

    examples = [{"x": [0.5, -1.0], "k": 1}, {"x": [2.0, 0.25]}]
    ref = example_model_reference(examples)
    status, body = rest.post("/v1/models/census:classify", {"examples": examples})
    assert status == 200, body
    assert [[label for label, _ in row] for row in body["result"]] == [[c.decode() for c in EXAMPLE_CLASSES]] * 2
    np.testing.assert_allclose([[s for _, s in row] for row in body["result"]], ref["scores"], rtol=1e-5)
    status, body = rest.post("/v1/models/census:regress", {"signature_name": "regress", "context": {"k": 1},
                                                           "examples": [{"x": [1.0, 1.0]}, {"x": [0.0, 2.0], "k": 3}]})
    assert status == 200 and body["result"] == pytest.approx([2.0, 4.0])
    status, body = rest.post("/v1/models/half_plus_two:regress",
                             {"signature_name": "regress_x_to_y", "examples": [{"x": 1.0}, {"x": 2.0}]})
    assert status == 200 and body == {"result": [2.5, 3.0]}
    resp = grpc_client.classify("census", examples)
    np.testing.assert_allclose([[s for _, s in row] for row in classifications(resp.result)], ref["scores"], rtol=1e-5)
    resp = grpc_client.regress("census", examples, signature="regress")
    np.testing.assert_allclose([r.value for r in resp.result.regressions], ref["value"].ravel(), rtol=1e-5)
    resp = grpc_client.multi_inference("census", examples, [("", CLASSIFY), ("regress", REGRESS)])
    assert [r.model_spec.signature_name for r in resp.results] == ["serving_default", "regress"]
    # a signature of the wrong kind: TF Serving's structural check (method names unchecked by default)
    status, body = rest.post("/v1/models/toy/versions/1:classify", {"examples": [{"x": [1.0]}]})
    assert status == 400 and body["error"].startswith("No classification inputs found in SignatureDef")

"""deploy: Kubernetes / KServe manifests, validated against real schemas.

Kubernetes kinds are checked with kubernetes-validate's bundled OpenAPI schemas (strict), the
InferenceService with builder/deploy/kserve_inferenceservice.schema.json, written from the KServe
v1beta1 CRD. The
artefacts are real SavedModels (one with a TRTEngineOp node) so GPU detection and the gate run on
what TF-TRT really writes.
"""

from __future__ import annotations

import copy
import json
import shutil
import socket
from pathlib import Path

import pytest
import yaml
from kubernetes_validate import utils as kv

from builder.cli import main
from builder.config import companions
from builder.core import layout
from builder.core.errors import ConfigError
from builder.deploy import command, image, kserve, plan
from tests.helpers import ROOT, models

K8S = "1.30"


_save_tiny = models.write_tiny_servable



@pytest.fixture(scope="module")
def repos(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("deploy-repos")
    _save_tiny(base / "plain" / "tiny" / "1")
    shutil.copytree(base / "plain" / "tiny" / "1", base / "plain" / "tiny" / "2")
    info = base / "plain" / "tiny" / "2" / "assets.extra" / "build_info.json"
    info.write_text(info.read_text().replace('"version": 1', '"version": 2'))
    _save_tiny(base / "trt" / "tiny" / "1", optimizer="tftrt", trt=True)
    return {"plain": base / "plain", "trt": base / "trt"}


def _deploy(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["deploy", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _by_kind(docs: list[dict]) -> dict[str, dict]:
    return {d["kind"]: d for d in docs}


def test_kubernetes_manifests_valid_and_wired(repos, tmp_path, capsys):
    rc, out, err = _deploy(capsys, "--target", "kubernetes", "--name", "tiny", "--repo",
                           str(repos["plain"]), "--base_path", "gs://bucket/models/tiny",
                           "--out", str(tmp_path / "deploy"))
    assert rc == 0, err
    path = tmp_path / "deploy" / "tiny-kubernetes.yaml"
    assert f"wrote {path}" in out and "kubectl apply -f" in out
    docs = _docs(path)
    assert [d["kind"] for d in docs] == ["ConfigMap", "Deployment", "Service",
                                         "HorizontalPodAutoscaler"]
    for d in docs:  # independent of the module's own check
        assert kv.validate(d, K8S, strict=True) == K8S
    k = _by_kind(docs)
    dep, svc, hpa, cm = k["Deployment"], k["Service"], k["HorizontalPodAutoscaler"], k["ConfigMap"]

    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "tensorflow/serving:2.17.0-gpu"
    assert c["command"] == [image.SERVER_BINARY]
    assert c["args"] == image.server_flags()  # the same flags as Dockerfile.serving
    probe = c["readinessProbe"]["httpGet"]
    assert probe == {"path": "/v1/models/tiny/metadata", "port": "http"}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"grpc": 8500, "http": 8501}
    # a plain (non TF-TRT) artefact asks for no GPU, and says so
    assert "nvidia.com/gpu" not in json.dumps(dep)
    assert "no GPU requested" in out
    assert c["resources"] == {"requests": {"cpu": "2", "memory": "4Gi"},
                              "limits": {"memory": "4Gi"}}
    # every flag file is in the ConfigMap mounted at /config
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/config"]
    (vol,) = [v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    assert vol["configMap"]["name"] == cm["metadata"]["name"]
    for flag in c["args"]:
        value = flag.split("=", 1)[1]
        if value.startswith("/config/"):
            assert value[len("/config/"):] in cm["data"], flag

    # models.config pins the published (newest) version at the published base path
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    cfg = text_format.Parse(cm["data"]["models.config"], model_server_config_pb2.ModelServerConfig())
    (entry,) = cfg.model_config_list.config
    assert (entry.name, entry.base_path, entry.model_platform) == (
        "tiny", "gs://bucket/models/tiny", "tensorflow")
    assert list(entry.model_version_policy.specific.versions) == [2]
    params = companions.parse_batching_parameters(cm["data"]["batching_parameters.txt"])
    assert list(params.allowed_batch_sizes) == [1, 4]  # from build_info batch_sizes
    companions.parse_monitoring_config(cm["data"]["monitoring.config"])

    # Service and HPA point at the Deployment's pods
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels[k] == v for k, v in svc["spec"]["selector"].items())
    assert dep["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
    assert pod_labels["app.kubernetes.io/version"] == "2"
    assert {p["name"]: p["targetPort"] for p in svc["spec"]["ports"]} == {"grpc": "grpc",
                                                                         "http": "http"}
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": dep["metadata"]["name"]}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 4)
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 70
    assert "replicas" not in dep["spec"], "an HPA owns the replica count"
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_trt_artefact_gets_gpu_and_gate(repos, tmp_path, capsys):
    out_dir = tmp_path / "d"
    rc, out, err = _deploy(capsys, "--name", "tiny", "--repo", str(repos["trt"]),
                           "--base_path", "gs://b/models/tiny", "--out", str(out_dir),
                           "--gpus", "2")
    assert rc == 0, err
    k = _by_kind(_docs(out_dir / "tiny-kubernetes.yaml"))
    spec = k["Deployment"]["spec"]["template"]["spec"]
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert spec["tolerations"][0]["key"] == "nvidia.com/gpu"
    kv.validate(k["Deployment"], K8S, strict=True)

    for flags, msg in (
        (["--image", "tensorflow/serving:2.17.0"], "CPU image"),
        (["--image", "tensorflow/serving:2.18.0-gpu"], "cannot load TensorRT ops"),
        (["--gpu", "false"], "need an NVIDIA GPU"),
    ):
        rc, out, err = _deploy(capsys, "--name", "tiny", "--repo", str(repos["trt"]),
                               "--base_path", "gs://b/models/tiny", "--out",
                               str(tmp_path / "refused"), *flags)
        assert rc == 2 and msg in err, (flags, err)
        assert len(err.strip().splitlines()) == 1
        assert not (tmp_path / "refused").exists()


def test_kserve_inference_service(repos, tmp_path, capsys):
    rc, out, err = _deploy(capsys, "--target", "kserve", "--name", "tiny", "--repo",
                           str(repos["trt"]), "--base_path", "s3://bucket/models/tiny/",
                           "--out", str(tmp_path), "--namespace", "ml")
    assert rc == 0, err
    docs = _docs(tmp_path / "tiny-kserve.yaml")
    cm, isvc = docs
    kv.validate(cm, K8S, strict=True)
    kserve.validate_inference_service(isvc, K8S)
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["metadata"]["namespace"] == "ml" == cm["metadata"]["namespace"]
    tf = isvc["spec"]["predictor"]["tensorflow"]
    assert tf["storageUri"] == "s3://bucket/models/tiny"
    assert tf["runtimeVersion"] == "2.17.0-gpu"
    assert tf["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert f"--batching_parameters_file=/config/{image.BATCHING_FILE}" in tf["args"]
    assert set(cm["data"]) == {"batching_parameters.txt", "monitoring.config"}
    pred = isvc["spec"]["predictor"]
    assert (pred["minReplicas"], pred["maxReplicas"], pred["scaleMetric"]) == (1, 4, "cpu")

    # a plain artefact with the default -gpu image: CPU runtime (KServe rejects -gpu w/o a GPU)
    rc, out, err = _deploy(capsys, "--target", "kserve", "--name", "tiny", "--repo",
                           str(repos["plain"]), "--base_path", "gs://b/tiny", "--out",
                           str(tmp_path / "cpu"), "--min_replicas", "0")
    assert rc == 0, err
    isvc = _docs(tmp_path / "cpu" / "tiny-kserve.yaml")[1]
    assert isvc["spec"]["predictor"]["tensorflow"]["runtimeVersion"] == "2.17.0"
    assert isvc["spec"]["predictor"]["minReplicas"] == 0
    assert "nvidia.com/gpu" not in json.dumps(isvc)


def test_kserve_schema_rejects_what_kserve_rejects(repos, tmp_path, capsys):
    rc, _, err = _deploy(capsys, "--target", "kserve", "--name", "tiny", "--repo",
                         str(repos["trt"]), "--base_path", "s3://b/tiny", "--out", str(tmp_path))
    assert rc == 0, err
    good = _docs(tmp_path / "tiny-kserve.yaml")[1]
    command.validate_manifests([good], K8S)

    def broken(mutate):
        doc = copy.deepcopy(good)
        mutate(doc)
        return doc

    tf = lambda d: d["spec"]["predictor"]["tensorflow"]  # noqa: E731
    cases = {
        "GPU with a CPU runtimeVersion": lambda d: tf(d).update(runtimeVersion="2.17.0"),
        "-gpu runtime without a GPU": lambda d: tf(d)["resources"]["limits"].pop("nvidia.com/gpu"),
        "misspelt field": lambda d: tf(d).update(storageURI=tf(d).pop("storageUri")),
        "bad name": lambda d: d["metadata"].update(name="Tiny_Model"),
        "local storage path": lambda d: tf(d).update(storageUri="/models/tiny"),
        "bad quantity": lambda d: tf(d)["resources"]["requests"].update(memory="4 GB"),
        "bad volume": lambda d: d["spec"]["predictor"]["volumes"][0].update(configMapp={}),
    }
    for what, mutate in cases.items():
        with pytest.raises(ConfigError, match="InferenceService/") as e:
            command.validate_manifests([broken(mutate)], K8S)
        assert "\n" not in str(e.value), what


def test_kserve_schema_is_package_data_and_uses_the_quantity_rule():
    """The schema ships as a data file (setup.py package_data) and its resources pattern is the
    same resource.Quantity rule the --cpu/--memory flags are checked with."""
    import ast

    schema = kserve.inference_service_schema()
    tf_props = schema["properties"]["spec"]["properties"]["predictor"]["properties"]["tensorflow"]
    quantities = tf_props["properties"]["resources"]["allOf"][1]["properties"]
    for key in ("requests", "limits"):
        assert quantities[key]["additionalProperties"]["anyOf"][1]["pattern"] == \
            "^" + plan.QUANTITY.pattern + "$"
    setup = ast.parse((ROOT / "setup.py").read_text())
    call = next(n for n in ast.walk(setup) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    package_data = ast.literal_eval(next(k.value for k in call.keywords if k.arg == "package_data"))
    assert kserve.SCHEMA_FILE in package_data["builder.deploy"]
    assert (Path(kserve.__file__).parent / kserve.SCHEMA_FILE).is_file()


@pytest.mark.parametrize("name", [".hidden", "-x", "a/b", ""])
def test_model_name_rule_is_the_one_export_uses(repos, tmp_path, capsys, name):
    with pytest.raises(Exception) as want:
        layout.validate_model_name(name, "--name")
    rc, _, err = _deploy(capsys, f"--name={name}", "--repo", str(repos["plain"]), "--base_path",
                         "gs://b/tiny", "--out", str(tmp_path / "o"))
    assert rc == 2 and err.strip() == f"error: {want.value}"
    assert not (tmp_path / "o").exists()


def test_kubernetes_schema_rejects_typos(repos, tmp_path, capsys):
    rc, _, err = _deploy(capsys, "--name", "tiny", "--repo", str(repos["plain"]), "--base_path",
                         "gs://b/tiny", "--out", str(tmp_path))
    assert rc == 0, err
    dep = _by_kind(_docs(tmp_path / "tiny-kubernetes.yaml"))["Deployment"]
    bad = copy.deepcopy(dep)
    bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(ConfigError, match=r"Deployment/tiny: spec\.template\.spec\.containers\.0"):
        command.validate_manifests([bad], K8S)
    bad = copy.deepcopy(dep)
    bad["spec"]["selector"] = "tiny"
    with pytest.raises(ConfigError, match="Deployment/tiny"):
        command.validate_manifests([bad], K8S)


def test_validation_is_offline(repos, monkeypatch):
    p = plan.plan(plan.DeployOptions(target="kubernetes", name="tiny", base_path="gs://b/tiny",
                                   repo=str(repos["plain"])))
    docs = command.manifests(p)
    p2 = plan.plan(plan.DeployOptions(target="kserve", name="tiny", base_path="s3://b/tiny",
                                   repo=str(repos["plain"])))

    def no_network(*a, **k):
        raise AssertionError("schema validation tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    command.validate_manifests(docs + command.manifests(p2), K8S)


def test_fixed_replicas_volume_claim_and_names(repos, tmp_path, capsys):
    rc, out, err = _deploy(capsys, "--name", "tiny", "--repo", str(repos["plain"]), "--version",
                           "1", "--base_path", "/models/tiny", "--volume_claim", "model-repo",
                           "--replicas", "3", "--app", "tiny-serving", "--cpu", "1500m",
                           "--memory", "2Gi", "--out", str(tmp_path))
    assert rc == 0, err
    docs = _docs(tmp_path / "tiny-serving-kubernetes.yaml")
    assert [d["kind"] for d in docs] == ["ConfigMap", "Deployment", "Service"]
    for d in docs:
        kv.validate(d, K8S, strict=True)
    dep = docs[1]
    assert dep["spec"]["replicas"] == 3
    spec = dep["spec"]["template"]["spec"]
    (claim,) = [v for v in spec["volumes"] if "persistentVolumeClaim" in v]
    assert claim["persistentVolumeClaim"] == {"claimName": "model-repo", "readOnly": True}
    assert {"name": claim["name"], "mountPath": "/models", "readOnly": True} in \
        spec["containers"][0]["volumeMounts"]
    assert spec["containers"][0]["resources"]["requests"] == {"cpu": "1500m", "memory": "2Gi"}
    assert "versions: 1" in docs[0]["data"]["models.config"]
    # the probe keeps the model name, the resources get a Kubernetes name
    assert plan.app_name("Face_Net.v2") == "face-net-v2"


@pytest.mark.parametrize("flags, message", [
    (["--base_path", "s3://b/tiny"], "serving#1963"),
    (["--base_path", "/models/tiny"], "holds no models"),
    (["--base_path", "gs://b/tiny", "--memory", "4 GB"], "--memory '4 GB' is not a Kubernetes quantity"),
    (["--base_path", "gs://b/tiny", "--replicas", "2", "--max_replicas", "5"], "one or the other"),
    (["--base_path", "gs://b/tiny", "--min_replicas", "5", "--max_replicas", "2"], "below"),
    (["--base_path", "gs://b/tiny", "--version", "7"], "--version 7: not in"),
    (["--base_path", "gs://b/tiny", "--target", "nomad"], "--target 'nomad'"),
    (["--base_path", "/models/tiny", "--target", "kserve"], "storage URI"),
    (["--base_path", "gs://b/tiny", "--target", "kserve", "--image", "me/custom:1"],
     "tensorflow/serving:TAG"),
    (["--base_path", "gs://b/tiny", "--batching", "/nonexistent/b.txt"], "--batching"),
    ([], "--base_path is required"),
])
def test_bad_flags_exit_2_and_write_nothing(repos, tmp_path, capsys, flags, message):
    rc, out, err = _deploy(capsys, "--name", "tiny", "--repo", str(repos["plain"]), "--out",
                           str(tmp_path / "out"), *flags)
    assert rc == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_bad_batching_file_refused(repos, tmp_path, capsys):
    bad = tmp_path / "b.txt"
    bad.write_text("max_batch_size { value: 8 }\nallowed_batch_sizes: 4\n")
    rc, _, err = _deploy(capsys, "--name", "tiny", "--repo", str(repos["plain"]), "--base_path",
                         "gs://b/tiny", "--batching", str(bad), "--out", str(tmp_path / "o"))
    assert rc == 2 and "must equal max_batch_size" in err
    assert not (tmp_path / "o").exists()


def test_tensorrt_version_and_custom_ops_gate(repos, tmp_path, capsys):
    trt = tmp_path / "trt"
    shutil.copytree(repos["trt"], trt)
    info = trt / "tiny" / "1" / "assets.extra" / "build_info.json"
    data = json.loads(info.read_text())
    data["tensorrt"] = {"loaded_version": [10, 3, 0]}
    info.write_text(json.dumps(data))
    rc, _, err = _deploy(capsys, "--name", "tiny", "--repo", str(trt), "--base_path",
                         "gs://b/tiny", "--out", str(tmp_path / "o"))
    assert rc == 2 and "engines were built with TensorRT 10.3.0" in err
    data["tensorrt"] = {"loaded_version": [8, 5, 3]}
    info.write_text(json.dumps(data))
    rc, out, err = _deploy(capsys, "--name", "tiny", "--repo", str(trt), "--base_path",
                           "gs://b/tiny", "--out", str(tmp_path / "o"))
    assert rc == 0, err
    assert "note:" in out and "rebuilds the engines" in out


def test_custom_serving_image_gate_uses_its_base_tag(repos, tmp_path, capsys):
    """An image from scripts/build_serving_image: the gate judges the tag it was built FROM."""
    common = ["--name", "tiny", "--repo", str(repos["trt"]), "--base_path", "/models/tiny",
              "--image", "registry.example.com/ml/tiny-serving:7"]
    rc, out, err = _deploy(capsys, *common, "--out", str(tmp_path / "ok"))
    assert rc == 0, err
    assert "assuming registry.example.com/ml/tiny-serving:7 was built FROM " \
           "tensorflow/serving:2.17.0-gpu" in out
    dep = _by_kind(_docs(tmp_path / "ok" / "tiny-kubernetes.yaml"))["Deployment"]
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "registry.example.com/ml/tiny-serving:7"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    for tag, msg in (("2.17.0", "--serving_tag tensorflow/serving:2.17.0 is a CPU image"),
                     ("2.18.0-gpu", "cannot load TensorRT ops")):
        rc, _, err = _deploy(capsys, *common, "--serving_tag", tag, "--out", str(tmp_path / tag))
        assert rc == 2 and msg in err, err
        assert not (tmp_path / tag).exists()
    # KServe: an explicit CPU tag for a TF-TRT artefact is refused, not silently changed
    rc, _, err = _deploy(capsys, "--target", "kserve", "--name", "tiny", "--repo",
                         str(repos["trt"]), "--base_path", "s3://b/tiny", "--image",
                         "tensorflow/serving:2.17.0", "--out", str(tmp_path / "k"))
    assert rc == 2 and "is a CPU image but a GPU is requested" in err


def test_probe_and_metrics_paths_answer_on_a_serving_server(repos, tmp_path):
    """Serve the ConfigMap's own files (base path swapped for the local copy) with the local
    TF-Serving-compatible server and hit the Deployment's readiness probe and scrape paths."""
    import urllib.error
    import urllib.request

    from builder.serve.server import LocalServer

    p = plan.plan(plan.DeployOptions(target="kubernetes", name="tiny", base_path="gs://bucket/models/tiny",
                                   repo=str(repos["plain"])))
    k = _by_kind(command.manifests(p))
    data = k["ConfigMap"]["data"]
    files = {}
    for key, text in data.items():
        if key == "models.config":
            text = text.replace("gs://bucket/models/tiny", str(repos["plain"] / "tiny"))
        files[key] = tmp_path / key
        files[key].write_text(text)
    pod = k["Deployment"]["spec"]["template"]
    probe = pod["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"]
    scrape = pod["metadata"]["annotations"]["prometheus.io/path"]

    def get(url: str) -> int:
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    with LocalServer(model_config_file=files["models.config"],
                     monitoring_config_file=files["monitoring.config"],
                     batching_parameters_file=files["batching_parameters.txt"]) as server:
        server.wait_until_ready(120)
        assert get(server.rest_url + probe) == 200
        assert get(server.rest_url + scrape) == 200
        # the pinned policy serves version 2 only: version 1's metadata is "not ready" (404)
        assert get(server.rest_url + "/v1/models/tiny/versions/1/metadata") == 404
        assert get(server.rest_url + "/v1/models/other/metadata") == 404

"""CPU bf16 (issue 12) on the serving side: the image gate, ``config``'s server-wide
``--mixed_precision`` advice, the serving image / Kubernetes flags, and the local server's
``--mixed_precision=bfloat16`` (which must apply the same rewrite as TF Serving)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dockerfile
import numpy as np
import pytest

from builder.config import compat
from builder.core.errors import CompatibilityError, InputError
from builder.deploy import docker, image, kserve
from builder.optimize import bf16
from tests.helpers import CKPT_FLAGS, models, run_builder

ROOT = Path(__file__).resolve().parents[1]
PROFILE_INFO = {"precision": "bf16", "serving_profile": {"mixed_precision": "bfloat16"}}
BAKED_INFO = {"precision": "bf16", "needs": "bf16 CPU"}
K8S = "1.30"  # the Kubernetes schema version tests/test_deploy.py validates against


def _servable(path: Path, extra: dict | None = None) -> Path:
    """A real tiny SavedModel version whose build_info says what ``extra`` says."""
    models.write_tiny_servable(path)
    info_path = path / "assets.extra" / "build_info.json"
    info = json.loads(info_path.read_text())
    info.update(extra or {"precision": "fp32"})
    info_path.write_text(json.dumps(info))
    return path


@pytest.fixture(scope="module")
def repos(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("bf16-repos")
    _servable(base / "profile" / "fn" / "1", PROFILE_INFO)
    _servable(base / "baked" / "fn" / "1", BAKED_INFO)
    _servable(base / "mixed" / "fn" / "1", PROFILE_INFO)
    _servable(base / "mixed" / "plain" / "1")
    return {k: base / k for k in ("profile", "baked", "mixed")}


# --------------------------------------------------------------------------- the gate


def test_bf16_mode_from_build_info():
    assert compat.bf16_mode(PROFILE_INFO) == "profile"
    assert compat.bf16_mode(BAKED_INFO) == "baked"
    assert compat.bf16_mode({"precision": "fp32"}) is None and compat.bf16_mode(None) is None


@pytest.mark.parametrize("mode,image_ref,problem", [
    ("profile", "tensorflow/serving:2.17.0", None),
    ("profile", "tensorflow/serving:2.15.1", None),
    ("profile", "tensorflow/serving:2.14.1", "predates TF Serving 2.15"),
    ("profile", "tensorflow/serving:2.17.0-gpu", None),
    ("baked", "tensorflow/serving:2.17.0-gpu", "is a GPU image"),
    ("baked", "tensorflow/serving:2.14.1", None),  # no flag needed: the graph itself is bf16
    ("profile", "registry.example.com/team/serving:1", None),  # custom: warned, not refused
    (None, "tensorflow/serving:2.10.0", None),
])
def test_image_problem_for_bf16(mode, image_ref, problem):
    got = compat.image_problem(False, image_ref, bf16=mode)
    if problem is None:
        assert got is None
    else:
        assert problem in got and "tensorflow/serving:2.17.0" in got and "\n" not in got


@pytest.mark.parametrize("mode,image_ref,words", [
    ("profile", "tensorflow/serving:2.17.0", ["oneDNN compiled in", "AVX512_VNNI/AVX512_BF16",
                                             "TF_ENABLE_ONEDNN_OPTS=0", "silently does nothing",
                                             "Dockerfile.mkl"]),
    ("baked", "tensorflow/serving:2.17.0", ["Eigen's bf16 kernels"]),
    ("profile", "tensorflow/serving:2.17.0-gpu", ["on the GPU", "only converts CPU nodes",
                                                 "use tensorflow/serving:2.17.0"]),
    ("profile", "registry.example.com/team/serving:1", ["not a stock tensorflow/serving image",
                                                       ">= 2.15"]),
])
def test_image_warning_for_bf16_is_loud(mode, image_ref, words):
    got = compat.image_warning(False, image_ref, None, bf16=mode)
    for w in words:
        assert w in got
    assert compat.image_warning(False, image_ref, None, bf16=None) is None


def test_config_image_gate_refuses_baked_bf16_in_gpu_image(repos, tmp_path):
    r = run_builder("config", "--repo", str(repos["baked"]), "--out", str(tmp_path / "m.config"),
                    "--image", "tensorflow/serving:2.17.0-gpu")
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert "fn version 1" in line and "is a GPU image" in line and "tensorflow/serving:2.17.0" in line
    assert not (tmp_path / "m.config").exists()


# --------------------------------------------------------------------------- config advice


def test_config_reports_the_flag_and_warns_when_fp32_models_share_the_server(repos, tmp_path):
    r = run_builder("config", "--repo", str(repos["profile"]), "--out", str(tmp_path / "a.config"),
                    "--image", "tensorflow/serving:2.17.0")
    assert r.returncode == 0, r.stderr
    assert "this repository wants --mixed_precision=bfloat16 (bf16 serving profile: fn/1)" in r.stdout
    serve_hint = [x for x in r.stdout.splitlines() if x.startswith("serve it:")][0]
    assert serve_hint.endswith("--mixed_precision=bfloat16")
    assert "warning: bf16 needs oneDNN at run time" in r.stdout
    assert "server-wide" not in r.stdout

    r = run_builder("config", "--repo", str(repos["mixed"]), "--out", str(tmp_path / "b.config"))
    assert r.returncode == 0, r.stderr
    (warn,) = [x for x in r.stdout.splitlines() if "server-wide" in x]
    assert warn.startswith("warning: --mixed_precision=bfloat16 is server-wide: plain/1")
    assert "next to fn/1" in warn and "separate server" in warn


def test_no_bf16_no_advice(tmp_path):
    flags, lines = compat.mixed_precision_advice([("m", 1, {"precision": "fp32"})],
                                                 "tensorflow/serving:2.17.0")
    assert flags == [] and lines == []
    flags, lines = compat.mixed_precision_advice([("m", 1, BAKED_INFO)])
    assert flags == [] and lines == []  # a baked graph needs no flag


# --------------------------------------------------------------------------- image and deploy


def test_dockerfile_bf16_stage_is_server_flags_plus_mixed_precision():
    cmds = list(dockerfile.parse_file(str(ROOT / "Dockerfile.serving")))
    stages, entries = [], {}
    for c in cmds:
        if c.cmd == "FROM":
            stages.append(c.value[-1])
        elif c.cmd == "ENTRYPOINT":
            entries[stages[-1]] = list(c.value)
    assert stages[-1] == "serving"  # the default target stays fp32
    assert set(image.DOCKER_TARGETS.values()) <= set(stages)
    argv = entries["serving-bf16"]
    assert argv[0] == image.SERVER_BINARY
    assert argv[1:] == image.server_flags(mixed_precision="bfloat16")
    assert argv[-1] == "--mixed_precision=bfloat16"
    assert {a[2:].split("=", 1)[0] for a in argv[1:]} <= image.TF_SERVING_2_17_FLAGS
    assert entries["base"][1:] == image.server_flags()


def _configs(tmp_path: Path) -> dict:
    from builder.config import companions

    (tmp_path / "b.txt").write_text(companions.batching_parameters_text([1, 4]))
    (tmp_path / "m.txt").write_text(companions.monitoring_config_text())
    return {"batching": tmp_path / "b.txt", "monitoring": tmp_path / "m.txt"}


def test_image_context_for_a_profile_builds_the_bf16_target(repos, tmp_path):
    ctx = image.prepare(repos["profile"], tmp_path / "ctx", "2.17.0", **_configs(tmp_path))
    assert ctx.mixed_precision == "bfloat16" and ctx.target == "serving-bf16"
    meta = json.loads((tmp_path / "ctx" / "build.json").read_text())
    assert meta["target"] == "serving-bf16"
    assert meta["server_flags"][-1] == "--mixed_precision=bfloat16"
    assert "--target serving-bf16" in " ".join(docker.build_command(ctx.path, "r/i:1", "2.17.0",
                                                                  ctx.target))
    assert any("bf16 needs oneDNN" in w for w in ctx.warnings)


def test_image_context_gate_and_shared_server_warning(repos, tmp_path):
    with pytest.raises(CompatibilityError, match="fn/1 .* is a GPU image"):
        image.prepare(repos["baked"], tmp_path / "ctx", "2.17.0-gpu", **_configs(tmp_path))
    assert not (tmp_path / "ctx").exists()
    ctx = image.prepare(repos["mixed"], tmp_path / "ctx2", "2.17.0", **_configs(tmp_path))
    assert any("server-wide: plain/1" in w for w in ctx.warnings)
    ctx = image.prepare(repos["baked"], tmp_path / "ctx3", "2.17.0", **_configs(tmp_path))
    assert ctx.target == "serving"  # the baked graph needs no server flag


def test_kubernetes_args_carry_the_profile(repos, tmp_path, capsys):
    from builder.cli import main

    rc = main(["deploy", "--target", "kubernetes", "--name", "fn", "--repo", str(repos["profile"]),
               "--base_path", "gs://bucket/models/fn", "--image", "tensorflow/serving:2.17.0",
               "--out", str(tmp_path / "d")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    import yaml

    docs = [d for d in yaml.safe_load_all((tmp_path / "d" / "fn-kubernetes.yaml").read_text()) if d]
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["args"] == image.server_flags(mixed_precision="bfloat16")
    assert "bf16 needs oneDNN" in out + err

    rc = main(["deploy", "--target", "kserve", "--name", "fn", "--repo", str(repos["profile"]),
               "--base_path", "gs://bucket/models/fn", "--image", "tensorflow/serving:2.17.0",
               "--out", str(tmp_path / "k")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    docs = [d for d in yaml.safe_load_all((tmp_path / "k" / "fn-kserve.yaml").read_text()) if d]
    isvc = docs[-1]
    kserve.validate_inference_service(isvc, K8S)
    assert isvc["spec"]["predictor"]["tensorflow"]["args"][-1] == "--mixed_precision=bfloat16"


# --------------------------------------------------------------------------- local server


def test_local_server_refuses_other_mixed_precision_values(repos):
    from builder.serve.local import LocalServer

    with pytest.raises(InputError, match="--mixed_precision 'bf16'"):
        LocalServer(model_name="fn", model_base_path=repos["profile"] / "fn", mixed_precision="bf16")


def test_local_server_without_flag_uses_default_sessions(repos):
    from builder.serve.local import LocalServer

    s = LocalServer(model_name="fn", model_base_path=repos["profile"] / "fn")
    assert s.manager.session_config is None


@pytest.mark.skipif(not bf16.bf16_capability()[0],
                    reason=f"no bf16 here: {bf16.bf16_capability()[1]}")
def test_local_server_applies_the_rewrite_to_a_profile_export(tiny_ckpt, tmp_path):
    """Export the tiny model as a bf16 profile, serve it with and without the flag: without it
    the answers are the FP32 golden ones, with it they are the bf16 ones parity accepted."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from builder.core import artifact
    from builder.export import pipeline
    from builder.serve.local import LocalServer

    o = pipeline.ExportOptions(model=str(tiny_ckpt), name="fn", repo=str(tmp_path / "repo"),
                               optimize="cpu", precision="bf16", batch_sizes=[1, 8], **CKPT_FLAGS)
    path = pipeline.export(o, quiet=True).path
    golden = artifact.read_golden(path)
    x = golden.inputs["images"]
    want = golden.outputs["embeddings"]

    def predict(mixed: str) -> np.ndarray:
        with LocalServer(model_name="fn", model_base_path=path.parent, mixed_precision=mixed,
                         enable_model_warmup=False) as s:
            s.wait_until_ready(60)
            log = s.log_text()
            with grpc.insecure_channel(s.grpc_target) as ch:
                req = predict_pb2.PredictRequest()
                req.model_spec.name = "fn"
                req.inputs["images"].CopyFrom(tf.make_tensor_proto(x))
                resp = prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict(req, timeout=60)
        assert ("auto_mixed_precision_onednn_bfloat16 is ON" in log) == bool(mixed)
        return tf.make_ndarray(resp.outputs["embeddings"])

    fp32, bf = predict(""), predict("bfloat16")
    np.testing.assert_allclose(fp32, want, atol=1e-5)
    assert np.abs(bf - want).max() > 1e-4  # the rewrite really ran
    cos = (bf * want).sum(1) / np.linalg.norm(bf, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.999
    shutil.rmtree(tmp_path / "repo")

"""Serving image: Dockerfile.serving contents, build context, TensorRT gate, build script.

The artefacts are real SavedModels written by TensorFlow; the "TF-TRT" one is a real SavedModel
whose function library gains a TRTEngineOp node, which is exactly what makes a non-TensorRT
server refuse it. The only fake is the Docker engine client in test_build_and_push_sdk_calls;
test_real_docker_build_and_serve is the same path against a real engine (marked docker).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dockerfile
import pytest

from builder.core.errors import CompatibilityError, ConfigError, InputError, PublishError
from builder.deploy import docker, image
from tests.helpers import ROOT, SCRIPTS, models

SCRIPT = SCRIPTS / "build_serving_image"

MODELS_CONFIG = """model_config_list {
  config {
    name: "tiny"
    base_path: "/models/tiny"
    model_platform: "tensorflow"
    model_version_policy { latest { num_versions: 2 } }
  }
}
"""
BATCHING = """max_batch_size { value: 100 }
batch_timeout_micros { value: 2000 }
num_batch_threads { value: 2 }
max_enqueued_batches { value: 100 }
allowed_batch_sizes: 1
allowed_batch_sizes: 8
allowed_batch_sizes: 100
"""
MONITORING = """prometheus_config {
  enable: true
  path: "/monitoring/prometheus/metrics"
}
"""


_save_tiny = models.write_tiny_servable



@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> dict[str, Path]:
    """Built once: a plain repo (tiny/1, tiny/2 and a leftover staging dir) and a TRT repo."""
    base = tmp_path_factory.mktemp("image-templates")
    plain = base / "plain"
    _save_tiny(plain / "tiny" / "1")
    _save_tiny(plain / "tiny" / "2")
    staging = plain / "tiny" / ".staging-99-deadbeef"
    staging.mkdir()
    (staging / "half-written").write_text("x")
    trt = base / "trt"
    _save_tiny(trt / "tiny" / "1", optimizer="tftrt", trt=True)
    return {"plain": plain, "trt": trt}


@pytest.fixture
def repo(templates, tmp_path) -> Path:
    dst = tmp_path / "repo"
    shutil.copytree(templates["plain"], dst)
    return dst


@pytest.fixture
def trt_repo(templates, tmp_path) -> Path:
    dst = tmp_path / "trt-repo"
    shutil.copytree(templates["trt"], dst)
    return dst


@pytest.fixture
def configs(tmp_path) -> dict[str, Path]:
    out = {}
    for key, text in (("models_config", MODELS_CONFIG), ("batching", BATCHING),
                      ("monitoring", MONITORING)):
        p = tmp_path / f"{key}.txt"
        p.write_text(text)
        out[key] = p
    return out


def _commands(path: Path) -> list:
    return list(dockerfile.parse_file(str(path)))


# ------------------------------------------------------------------------------------------
# Dockerfile.serving
# ------------------------------------------------------------------------------------------


def test_dockerfile_arg_default_and_base_image():
    cmds = _commands(ROOT / "Dockerfile.serving")
    assert cmds[0].cmd == "ARG" and cmds[0].value == ("SERVING_TAG=2.17.0-gpu",)
    froms = [c for c in cmds if c.cmd == "FROM"]
    # bf16 hook (issue 12): stage "serving-bf16" adds --mixed_precision; "serving" stays last
    assert [c.value for c in froms] == [("tensorflow/serving:${SERVING_TAG}", "AS", "base"),
                                        ("base", "AS", "serving-bf16"), ("base", "AS", "serving")]
    assert image.DEFAULT_SERVING_TAG == "2.17.0-gpu"


def test_dockerfile_entrypoint_is_server_flags_and_all_flags_exist_in_2_17():
    cmds = _commands(ROOT / "Dockerfile.serving")
    entry, _bf16 = [c for c in cmds if c.cmd == "ENTRYPOINT"]  # bf16 hook: tests/test_bf16_serving.py
    assert entry.json, "exec form, so the flags reach the server without a shell"
    argv = list(entry.value)
    assert argv[0] == image.SERVER_BINARY
    assert argv[1:] == image.server_flags()
    flags = dict(a[2:].split("=", 1) for a in argv[1:])
    assert set(flags) <= image.TF_SERVING_2_17_FLAGS
    assert flags["model_config_file"] == "/config/models.config"
    assert int(flags["model_config_file_poll_wait_seconds"]) > 0  # 0 would mean "read once"
    assert flags["enable_batching"] == "true"
    assert flags["batching_parameters_file"] == "/config/batching_parameters.txt"
    assert flags["monitoring_config_file"] == "/config/monitoring.config"
    assert flags["enable_model_warmup"] == "true"
    assert (flags["port"], flags["rest_api_port"]) == ("8500", "8501")
    exposed = {c.value[0] for c in cmds if c.cmd == "EXPOSE"}
    assert exposed == {"8500", "8501"}


def test_server_flags_follow_ports_and_config_dir():
    flags = image.server_flags(config_dir="/etc/tfs", port=9000, rest_api_port=8080,
                               poll_seconds=30)
    assert "--port=9000" in flags and "--rest_api_port=8080" in flags
    assert "--model_config_file=/etc/tfs/models.config" in flags
    assert "--model_config_file_poll_wait_seconds=30" in flags


# ------------------------------------------------------------------------------------------
# Build context
# ------------------------------------------------------------------------------------------


def test_prepare_writes_the_build_context(repo, configs, tmp_path):
    out = tmp_path / "ctx"
    ctx = image.prepare(repo, out, "2.17.0", **configs).path
    assert ctx == out
    assert (out / "Dockerfile").read_bytes() == (ROOT / "Dockerfile.serving").read_bytes()
    for v in (1, 2):
        src, dst = repo / "tiny" / str(v), out / "models" / "tiny" / str(v)
        for f in src.rglob("*"):
            if f.is_file():
                assert (dst / f.relative_to(src)).read_bytes() == f.read_bytes()
    assert not list((out / "models" / "tiny").glob(".staging-*")), "staging dirs never ship"
    assert (out / "config" / "models.config").read_text() == MODELS_CONFIG
    assert (out / "config" / "batching_parameters.txt").read_text() == BATCHING
    assert (out / "config" / "monitoring.config").read_text() == MONITORING
    # every COPY source of the Dockerfile exists in the context
    for c in _commands(out / "Dockerfile"):
        if c.cmd == "COPY":
            assert (out / c.value[0]).is_dir(), c.original
    meta = json.loads((out / "build.json").read_text())
    assert meta["base_image"] == "tensorflow/serving:2.17.0"
    assert meta["models"] == {"tiny": [1, 2]}
    assert meta["tensorrt"] is False
    # the server flag paths resolve to files in the context (/config -> config/)
    for flag in image.server_flags():
        value = flag.split("=", 1)[1]
        if value.startswith("/config/"):
            assert (out / value.lstrip("/")).is_file(), flag
    assert not list(tmp_path.glob(".ctx.tmp-*"))


def test_context_model_filter(repo, configs, tmp_path):
    shutil.copytree(repo / "tiny", repo / "other")
    ctx = image.prepare(repo, tmp_path / "ctx", "2.17.0", models=["tiny"], **configs)
    assert ctx.models == {"tiny": [1, 2]}
    assert not (tmp_path / "ctx" / "models" / "other").exists()
    with pytest.raises(InputError, match="--models nope"):
        image.prepare(repo, tmp_path / "ctx2", "2.17.0", models=["nope"], **configs)


def test_trt_artefact_refused_for_cpu_image(trt_repo, configs, tmp_path):
    out = tmp_path / "ctx"
    with pytest.raises(CompatibilityError, match="CPU image") as e:
        image.prepare(trt_repo, out, "2.17.0", **configs)
    assert "tiny/1" in str(e.value) and "\n" not in str(e.value)
    assert not out.exists()
    assert not list(tmp_path.glob(".ctx*"))


def test_trt_artefact_refused_for_2_18_gpu(trt_repo, configs, tmp_path):
    out = tmp_path / "ctx"
    with pytest.raises(CompatibilityError, match="2.18.0-gpu cannot load TensorRT"):
        image.prepare(trt_repo, out, "2.18.0-gpu", **configs)
    assert not out.exists()


def test_trt_artefact_accepted_for_2_17_gpu(trt_repo, configs, tmp_path):
    ctx = image.prepare(trt_repo, tmp_path / "ctx", "2.17.0-gpu", **configs)
    assert ctx.has_trt
    assert json.loads((ctx.path / "build.json").read_text())["tensorrt"] is True


def test_trt_ops_found_in_saved_model_even_without_build_info(trt_repo):
    v = trt_repo / "tiny" / "1"
    (v / "assets.extra" / "build_info.json").unlink()
    info = image.scan_version("tiny", 1, v)
    assert info.trt_ops == {"TRTEngineOp"} and info.optimizer is None and info.has_trt
    with pytest.raises(CompatibilityError):
        image.gate([info], "tensorflow/serving:2.17.0")


def test_build_info_tftrt_alone_is_enough_for_the_gate(repo):
    v = repo / "tiny" / "2"
    (v / "assets.extra" / "build_info.json").write_text(json.dumps({"optimizer": "tftrt"}))
    info = image.scan_version("tiny", 2, v)
    assert info.trt_ops == set() and info.has_trt


def test_plain_artefact_has_no_trt(repo):
    info = image.scan_version("tiny", 1, repo / "tiny" / "1")
    assert info.trt_ops == set() and not info.has_trt
    image.gate([info], "tensorflow/serving:2.19.0")  # no TRT: any image


def test_models_config_with_host_base_path_refused(repo, configs, tmp_path):
    configs["models_config"].write_text(MODELS_CONFIG.replace("/models/tiny", str(repo / "tiny")))
    out = tmp_path / "ctx"
    with pytest.raises(ConfigError, match="base_path /models") as e:
        image.prepare(repo, out, "2.17.0", **configs)
    assert str(configs["models_config"]) in str(e.value)
    assert not out.exists() and not list(tmp_path.glob(".ctx*"))


def test_models_config_for_missing_model_refused(repo, configs, tmp_path):
    configs["models_config"].write_text(MODELS_CONFIG.replace('"tiny"', '"ghost"')
                                        .replace("/models/tiny", "/models/ghost"))
    with pytest.raises(ConfigError, match="'ghost' is not in the image"):
        image.prepare(repo, tmp_path / "ctx", "2.17.0", **configs)


def test_models_config_syntax_error_refused(repo, configs, tmp_path):
    configs["models_config"].write_text("model_config_list { config { nme: 1 } }")
    with pytest.raises(ConfigError, match="not a ModelServerConfig"):
        image.prepare(repo, tmp_path / "ctx", "2.17.0", **configs)
    assert not (tmp_path / "ctx").exists()


def test_existing_context_needs_overwrite(repo, configs, tmp_path):
    out = tmp_path / "ctx"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="--overwrite"):
        image.prepare(repo, out, "2.17.0", **configs)
    assert (out / "keep.txt").read_text() == "mine"
    image.prepare(repo, out, "2.17.0", overwrite=True, **configs)
    assert not (out / "keep.txt").exists() and (out / "Dockerfile").is_file()
    assert not list(tmp_path.glob(".ctx.old-*"))


def test_bad_inputs_are_one_line_errors(repo, configs, tmp_path):
    with pytest.raises(InputError, match="--repo"):
        image.prepare(tmp_path / "nope", tmp_path / "c", "2.17.0", **configs)
    with pytest.raises(InputError, match="--serving_tag"):
        image.prepare(repo, tmp_path / "c", "tensorflow/serving:2.17.0", **configs)
    with pytest.raises(InputError, match="--batching"):
        image.prepare(repo, tmp_path / "c", "2.17.0",
                                    models_config=configs["models_config"],
                                    batching=tmp_path / "missing.txt")
    assert not (tmp_path / "c").exists()


def test_default_configs_are_generated(repo, tmp_path):
    """Without config files the context gets the project's generated models.config/batching/
    monitoring (builder.serving_config and builder.batching)."""
    out = tmp_path / "ctx"
    image.prepare(repo, out, "2.17.0")
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    cfg = text_format.Parse((out / "config" / "models.config").read_text(),
                            model_server_config_pb2.ModelServerConfig())
    assert [(c.name, c.base_path) for c in cfg.model_config_list.config] == [
        ("tiny", "/models/tiny")]
    batching = (out / "config" / "batching_parameters.txt").read_text()
    # allowed sizes = the sizes the versions were exported/warmed for (build_info batch_sizes)
    assert "allowed_batch_sizes: 1\nallowed_batch_sizes: 4\n" in batching
    assert "max_batch_size { value: 4 }" in batching
    assert 'path: "/monitoring/prometheus/metrics"' in (out / "config" / "monitoring.config"
                                                         ).read_text()
    assert sorted(p.name for p in (out / "config").iterdir()) == [
        "batching_parameters.txt", "models.config", "monitoring.config"]


def test_bad_batching_file_refused_before_copying(repo, configs, tmp_path):
    configs["batching"].write_text(BATCHING.replace("value: 100 }", "value: 64 }", 1))
    with pytest.raises(ConfigError, match="--batching .*must equal max_batch_size"):
        image.prepare(repo, tmp_path / "ctx", "2.17.0", **configs)
    assert not (tmp_path / "ctx").exists() and not list(tmp_path.glob(".ctx*"))


# ------------------------------------------------------------------------------------------
# docker command / SDK
# ------------------------------------------------------------------------------------------


def test_build_and_push_commands(tmp_path):
    argv = docker.build_command(tmp_path, "registry.example.com:5000/team/facenet:3", "2.17.0")
    assert argv == ["docker", "build", "--build-arg", "SERVING_TAG=2.17.0",
                    "--target", "serving", "--tag",  # bf16 hook (issue 12)
                    "registry.example.com:5000/team/facenet:3", "--file",
                    str(tmp_path / "Dockerfile"), str(tmp_path)]
    assert docker.push_command("a/b:1") == ["docker", "push", "a/b:1"]
    assert image.split_image("registry.example.com:5000/team/facenet:3") == (
        "registry.example.com:5000/team/facenet", "3")
    assert image.split_image("localhost:5000/facenet") == ("localhost:5000/facenet", "latest")


class _FakeImages:
    """Stands in for a Docker engine (none runs here); records what the SDK was asked."""

    def __init__(self, push_error: str | None = None):
        self.calls: list = []
        self.push_error = push_error

    def build(self, **kw):
        self.calls.append(("build", kw))
        return type("Img", (), {"id": "sha256:abc"})(), [{"stream": "Step 1/9 : ARG\n"}]

    def push(self, repository, tag=None, stream=False, decode=False):
        self.calls.append(("push", repository, tag, stream, decode))
        if self.push_error:
            return iter([{"status": "Preparing"}, {"error": self.push_error}])
        return iter([{"status": "Pushed"}])


def test_build_and_push_sdk_calls(tmp_path, caplog):
    images = _FakeImages()
    client = type("Client", (), {"images": images})()
    logged: list[str] = []
    got = docker.build_and_push(tmp_path, "localhost:5000/team/facenet:3", "2.17.0-gpu",
                               client=client, log=logged.append)
    assert got == "sha256:abc"
    (_, kw), push = images.calls
    assert kw == {"path": str(tmp_path), "dockerfile": "Dockerfile",
                  "buildargs": {"SERVING_TAG": "2.17.0-gpu"},
                  "tag": "localhost:5000/team/facenet:3", "rm": True,
                  "target": "serving"}  # bf16 hook (issue 12)
    assert push == ("push", "localhost:5000/team/facenet", "3", True, True)
    assert "Step 1/9 : ARG" in logged

    bad = type("Client", (), {"images": _FakeImages("denied: requested access")})()
    with pytest.raises(PublishError, match="docker push .* denied"):
        docker.build_and_push(tmp_path, "a/b:1", client=bad, log=lambda s: None)
    with pytest.raises(InputError, match="--image"):
        docker.build_and_push(tmp_path, "Not A Ref", client=client)
    # without a callback the engine's output goes to the one log channel (stderr), not stdout
    with caplog.at_level("INFO", logger="builder"):
        docker.build_and_push(tmp_path, "a/b:1", client=client, push=False)
    assert [r.getMessage() for r in caplog.records if r.name == "builder.deploy.docker"] == \
        ["Step 1/9 : ARG"]


def _run_script(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["DOCKER_HOST"] = "unix:///nonexistent/tfs-builder-test/docker.sock"
    env.update(env_extra or {})
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.mark.slow  # runs the script in fresh interpreters (TensorFlow import each)
def test_script_without_engine_prints_context_and_command(repo, configs, tmp_path):
    out = tmp_path / "ctx"
    r = _run_script("--repo", str(repo), "--image", "localhost:5000/tiny-serving:2",
                    "--serving_tag", "2.17.0", "--context", str(out),
                    "--models_config", str(configs["models_config"]),
                    "--batching", str(configs["batching"]),
                    "--monitoring", str(configs["monitoring"]))
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no Docker engine: "), r.stderr
    assert (f"docker build --build-arg SERVING_TAG=2.17.0 --target serving --tag localhost:5000/tiny-serving:2 "
            f"--file {out}/Dockerfile {out}") in r.stdout
    assert "docker push localhost:5000/tiny-serving:2" in r.stdout
    assert "tiny versions 1, 2" in r.stdout
    assert (out / "models" / "tiny" / "2" / "saved_model.pb").is_file()


@pytest.mark.slow  # runs the script in fresh interpreters (TensorFlow import each)
def test_script_context_only_and_gate(repo, trt_repo, configs, tmp_path):
    flags = ["--models_config", str(configs["models_config"]), "--batching",
             str(configs["batching"]), "--monitoring", str(configs["monitoring"])]
    r = _run_script("--repo", str(repo), "--context", str(tmp_path / "a"), "--context_only",
                    *flags)
    assert r.returncode == 0, r.stderr
    assert "docker build --build-arg SERVING_TAG=2.17.0-gpu --target serving --tag IMAGE" in r.stdout
    r = _run_script("--repo", str(trt_repo), "--context", str(tmp_path / "b"), "--image",
                    "x/y:1", "--serving_tag", "2.18.0-gpu", *flags)
    assert r.returncode == 2
    assert r.stderr.startswith("error: tiny/1") and "2.17.0-gpu" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()
    r = _run_script("--repo", str(repo), "--context", str(tmp_path / "c"))
    assert r.returncode == 2 and "--image is required" in r.stderr
    assert not (tmp_path / "c").exists()


# ------------------------------------------------------------------------------------------
# Real engine
# ------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.docker
def test_real_docker_build_and_serve(repo, configs, tmp_path):
    """docker build the context FROM tensorflow/serving:2.17.0, run it, and predict over REST.
    (The docker marker's hook in conftest.py skips it, with the reason, without an engine.)"""
    client = docker.docker_client()
    ctx = image.prepare(repo, tmp_path / "ctx", "2.17.0", **configs)
    tag = f"tfs-builder-test/tiny:{os.getpid()}"
    docker.build_and_push(ctx, tag, "2.17.0", push=False, client=client)
    port = _free_port()
    container = client.containers.run(tag, detach=True, ports={"8501/tcp": ("127.0.0.1", port)})
    try:
        base = f"http://127.0.0.1:{port}/v1/models/tiny"
        deadline = time.monotonic() + 120
        states: dict = {}
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(base, timeout=5) as r:
                    status = json.load(r)
                states = {s["version"]: s["state"] for s in status["model_version_status"]}
                if states == {"1": "AVAILABLE", "2": "AVAILABLE"}:  # policy latest 2
                    break
            except OSError:
                pass
            time.sleep(1)
        assert states == {"1": "AVAILABLE", "2": "AVAILABLE"}, container.logs()[-2000:]
        req = urllib.request.Request(base + ":predict",
                                     data=json.dumps({"instances": [[1, 2, 3, 4]]}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert json.load(r)["predictions"] == [[2.0, 4.0, 6.0, 8.0]]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{image.PROMETHEUS_PATH}",
                                    timeout=5) as r:
            assert b":tensorflow:serving:request_count" in r.read()
    finally:
        container.remove(force=True)
        client.images.remove(tag, force=True)


def _set_build_info(version_path: Path, **fields) -> None:
    p = version_path / "assets.extra" / "build_info.json"
    info = json.loads(p.read_text())
    info.update(fields)
    p.write_text(json.dumps(info))


def test_tensorrt_major_mismatch_refused_minor_mismatch_warned(trt_repo, configs, tmp_path):
    v = trt_repo / "tiny" / "1"
    _set_build_info(v, tensorrt={"loaded_version": [10, 3, 0]})
    with pytest.raises(CompatibilityError, match="ships TensorRT 8.6.1 but the engines were built "
                                                 "with TensorRT 10.3.0"):
        image.prepare(trt_repo, tmp_path / "a", "2.17.0-gpu", **configs)
    assert not (tmp_path / "a").exists()
    _set_build_info(v, tensorrt={"loaded_version": [8, 5, 3]})
    ctx = image.prepare(trt_repo, tmp_path / "b", "2.17.0-gpu", **configs)
    (w,) = ctx.warnings
    assert w.startswith("tiny/1: ") and "rebuilds the engines" in w


def test_custom_op_refused_for_every_stock_image(repo, configs, tmp_path):
    """An op TF Serving's registry lacks (a custom op library) fails to load in any image."""
    from tensorflow.core.protobuf import saved_model_pb2

    pb = repo / "tiny" / "2" / "saved_model.pb"
    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString(pb.read_bytes())
    node = sm.meta_graphs[0].graph_def.library.function[0].node_def.add()
    node.name, node.op = "custom", "Addons>MyCustomOp"
    pb.write_bytes(sm.SerializeToString())
    assert image.scan_version("tiny", 2, pb.parent).missing_ops == {"Addons>MyCustomOp"}
    for tag in ("2.17.0", "2.17.0-gpu"):
        with pytest.raises(CompatibilityError, match="cannot run ops Addons>MyCustomOp"):
            image.prepare(repo, tmp_path / tag, tag, **configs)

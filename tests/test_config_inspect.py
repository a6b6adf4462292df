"""models.config generation and ``inspect``, on real exported versions and hand-built graphs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from google.protobuf import text_format

from builder.config import inspection, models_config
from builder.core.errors import CompatibilityError, ConfigError
from builder.export import pipeline
from tests.helpers import CKPT_FLAGS, run_builder


@pytest.fixture(scope="module")
def repo(tiny_ckpt, tmp_path_factory) -> Path:
    """Two models; 'tiny' has versions 1..3."""
    r = tmp_path_factory.mktemp("cfgrepo")
    for _ in range(3):
        pipeline.export(pipeline.ExportOptions(model=str(tiny_ckpt), name="tiny", repo=str(r), batch_sizes=[1, 4],
                                           **CKPT_FLAGS), quiet=True)
    pipeline.export(pipeline.ExportOptions(model=str(tiny_ckpt), name="other", repo=str(r), batch_sizes=[2],
                                       **CKPT_FLAGS), quiet=True)
    return r


def _parse(path: Path):
    from tensorflow_serving.config import model_server_config_pb2

    cfg = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(path.read_text(), cfg)
    return {c.name: c for c in cfg.model_config_list.config}


def _copy(repo: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "repo"
    shutil.copytree(repo, dst)
    return dst


def test_config_covers_every_model_with_policies_and_labels(repo, tmp_path):
    r = _copy(repo, tmp_path)
    (r / "tiny" / "latest").mkdir()  # non-numeric: ignored with a warning
    warnings: list[str] = []
    cfg = models_config.build_config(r, base_path="/models", policies={"tiny": "specific:2,3"},
                                      labels={"tiny": {"stable": 2, "canary": 3}}, warn=warnings.append)
    models_config.write_models_config(cfg, r / "models.config")
    entries = _parse(r / "models.config")
    assert set(entries) == {"tiny", "other"}
    assert entries["tiny"].base_path == "/models/tiny" and entries["tiny"].model_platform == "tensorflow"
    assert list(entries["tiny"].model_version_policy.specific.versions) == [2, 3]
    assert dict(entries["tiny"].version_labels) == {"stable": 2, "canary": 3}
    assert any("latest" in w and "not a numeric version" in w for w in warnings)


def test_config_merges_with_existing_entries(repo, tmp_path):
    r = _copy(repo, tmp_path)
    out = r / "models.config"
    out.write_text('model_config_list { config { name: "elsewhere" base_path: "/data/elsewhere" '
                   'model_platform: "tensorflow" model_version_policy { all {} } } }\n')
    p = run_builder("config", "--repo", str(r), "--policy", "tiny=all", "--label", "tiny:stable=1")
    assert p.returncode == 0, p.stderr
    entries = _parse(out)
    assert set(entries) == {"elsewhere", "tiny", "other"}
    assert entries["elsewhere"].base_path == "/data/elsewhere"
    assert entries["elsewhere"].model_version_policy.HasField("all")
    assert entries["tiny"].base_path == str((r / "tiny").resolve())
    assert dict(entries["tiny"].version_labels) == {"stable": 1}
    # re-running keeps the label (merge), and no temp files are left beside the config
    assert run_builder("config", "--repo", str(r), "--policy", "tiny=all").returncode == 0
    assert dict(_parse(out)["tiny"].version_labels) == {"stable": 1}
    assert sorted(p.name for p in r.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("kw, text", [
    (dict(labels={"tiny": {"stable": 9}}), "version 9 does not exist"),
    (dict(labels={"tiny": {"stable": 1}}), "not loaded by the version policy"),
    (dict(policies={"tiny": "newest:2"}), "latest:N, all, or specific"),
    (dict(policies={"tiny": "specific:5"}), "version 5 does not exist"),
    (dict(policies={"ghost": "all"}), "no model 'ghost'"),
    (dict(base_path="models"), "absolute"),
])
def test_config_errors(repo, kw, text):
    with pytest.raises(ConfigError, match=text):
        models_config.build_config(repo, **kw)


def test_bad_label_name_and_broken_existing_config_are_not_overwritten(repo, tmp_path):
    r = _copy(repo, tmp_path)
    p = run_builder("config", "--repo", str(r), "--label", "tiny:bad-label=1")
    assert p.returncode == 2 and "[a-zA-Z0-9_]+" in p.stderr
    assert not (r / "models.config").exists()
    (r / "models.config").write_text("model_config_list { config { name: ")
    p = run_builder("config", "--repo", str(r))
    assert p.returncode == 2 and "not a ModelServerConfig" in p.stderr and "Traceback" not in p.stderr
    assert (r / "models.config").read_text() == "model_config_list { config { name: "


def _trt_version(dst: Path) -> Path:
    """A version whose graph holds TRT ops inside a library function, as TF2 graphs do."""
    from tensorflow.core.framework import function_pb2
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    mg = sm.meta_graphs.add()
    mg.meta_info_def.tags.append("serve")
    mg.graph_def.node.add(name="x", op="Placeholder")
    fn = function_pb2.FunctionDef()
    fn.signature.name = "TRTEngineOp_000_000_native_segment"
    fn.node_def.add(name="engine", op="TRTEngineOp")
    fn.node_def.add(name="handle", op="CreateTRTResourceHandle")
    mg.graph_def.library.function.append(fn)
    dst.mkdir(parents=True)
    (dst / "saved_model.pb").write_bytes(sm.SerializeToString())
    return dst


def test_image_gate_refuses_trt_artefacts_in_cpu_or_new_images(repo, tmp_path):
    r = _copy(repo, tmp_path)
    _trt_version(r / "trt" / "1")
    cfg = models_config.build_config(r)
    for image in ("tensorflow/serving:2.17.0", "tensorflow/serving:2.18.0-gpu", "tensorflow/serving:latest-gpu"):
        with pytest.raises(CompatibilityError, match="trt version 1"):
            models_config.check_image(r, cfg, image)
    models_config.check_image(r, cfg, "tensorflow/serving:2.17.0-gpu")
    p = run_builder("config", "--repo", str(r), "--image", "tensorflow/serving:2.19.0-gpu")
    assert p.returncode == 2 and "TensorRT" in p.stderr
    assert not (r / "models.config").exists()


def test_inspect_version_model_and_repo(repo, tmp_path):
    v = inspection.inspect_path(repo / "tiny" / "2")["versions"][0]
    mg = v["meta_graphs"][0]
    assert mg["tags"] == ["serve"]
    sig = mg["signatures"]["serving_default"]
    assert sig["inputs"]["images"] == {"tensor": "input:0", "dtype": "float32", "shape": [-1, 8, 8, 3]}
    assert mg["op_histogram"]["Conv2D"] == 1 and mg["trt_ops"] == [] and mg["unsafe_ops"] == []
    assert v["warmup_records"] == 4 and v["build_info"]["version"] == 2
    assert "any tensorflow/serving" in v["serving_images"]
    assert [Path(x["path"]).name for x in inspection.inspect_path(repo / "tiny")["versions"]] == ["1", "2", "3"]
    assert set(inspection.inspect_path(repo)["models"]) == {"tiny", "other"}
    t = inspection.inspect_path(_trt_version(tmp_path / "trt" / "1"))["versions"][0]
    assert t["has_trt_ops"] and t["meta_graphs"][0]["trt_ops"] == ["CreateTRTResourceHandle", "TRTEngineOp"]
    assert "2.17" in t["serving_images"] and "NOT CPU" in t["serving_images"]


def test_inspect_cli_json_and_unsafe_ops(tiny_tf1_sm, tmp_path):
    # FaceNet-style SavedModel straight from training: still has the queue/file/py_func pipeline
    p = run_builder("inspect", str(tiny_tf1_sm), "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    unsafe = {u["op"] for u in data["versions"][0]["meta_graphs"][0]["unsafe_ops"]}
    assert {"ReadFile", "PyFunc"} <= unsafe
    assert not {"SaveV2", "RestoreV2"} & unsafe  # the SavedModel's own saver is not flagged
    p = run_builder("inspect", str(tmp_path))
    assert p.returncode == 2 and "not a SavedModel" in p.stderr

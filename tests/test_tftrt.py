"""Everything around TF-TRT's converter that runs without a GPU (probing, flag mapping, profile
planning, calibration readers, segment checks, signature/asset restoration, error paths), plus
GPU tests that run the real conversion wherever TensorRT exists."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from builder.core.errors import GraphError, InputError, UnavailableError
from builder.core.model import TensorInfo
from builder.optimize import tftrt

IMAGES = TensorInfo("images", "input:0", "float32", [None, 16, 16, 3])


@pytest.fixture(scope="module")
def probe() -> dict:
    return tftrt.probe_tensorrt()


def needs_gpu(probe: dict) -> None:
    if not probe["available"]:
        pytest.skip(f"TF-TRT cannot run here: {probe['reason']}")


# --------------------------------------------------------------------------- probing


def test_probe_reports_facts_without_crashing(probe):
    import tensorflow as tf

    assert set(probe) >= {"available", "reason", "linked_version", "loaded_version", "gpus",
                          "tf_built_with_tensorrt"}
    assert probe["tensorflow_version"] == tf.__version__
    assert probe["tf_built_with_tensorrt"] == tf.sysconfig.get_build_info()["is_tensorrt_build"]
    if probe["tf_built_with_tensorrt"]:
        assert probe["linked_version"][0] == 8  # TF 2.17 links TensorRT 8.6
    if not probe["available"]:
        assert probe["reason"] and "\n" not in probe["reason"]
        assert probe["loaded_version"] is None or not probe["gpus"]


def test_probe_matches_what_ctypes_sees(probe):
    import ctypes

    try:
        ctypes.CDLL("libnvinfer.so.8")
        present = True
    except OSError:
        present = False
    assert probe["libnvinfer"] is present
    if not present:
        assert "libnvinfer.so.8" in probe["reason"] and not probe["available"]


def test_the_in_process_query_the_probe_avoids_really_aborts(probe):
    """Why the probe is a subprocess: without libnvinfer, TF 2.17's loaded-version query ends
    the process with a C++ fatal instead of raising."""
    if probe["libnvinfer"]:
        pytest.skip("libnvinfer.so.8 is present: the query does not abort here")
    code = ("from tensorflow.compiler.tf2tensorrt import _pywrap_py_utils as u\n"
            "u.get_loaded_tensorrt_version()\nprint('survived')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"})
    assert p.returncode != 0 and "survived" not in p.stdout
    assert "getInferLibVersion" in p.stderr


@pytest.mark.parametrize("raw,words", [
    ({"tf_built_with_tensorrt": False, "tensorflow_version": "2.18.0", "gpus": [{"name": "T4"}],
      "libnvinfer": True}, ["built without TensorRT", "2.17"]),
    ({"tf_built_with_tensorrt": True, "gpus": [], "libnvinfer": True, "tensorrt_enabled": True,
      "linked_version": [8, 6, 1], "loaded_version": [8, 6, 1]}, ["no NVIDIA GPU"]),
    ({"tf_built_with_tensorrt": True, "gpus": [{"name": "A10"}], "libnvinfer": True,
      "tensorrt_enabled": True, "linked_version": [8, 6, 1], "loaded_version": [10, 0, 1]},
     ["major versions must match"]),
    ({"tf_built_with_tensorrt": True, "gpus": [{"name": "A10"}], "libnvinfer": True,
      "tensorrt_enabled": False, "linked_version": [8, 6, 1]}, ["could not load TensorRT"]),
])
def test_probe_summary_names_what_is_missing(raw, words):
    out = tftrt._summarise_probe(raw)
    assert out["available"] is False
    for w in words:
        assert w in out["reason"]


def test_probe_summary_available_when_everything_is_there():
    out = tftrt._summarise_probe({
        "tf_built_with_tensorrt": True, "gpus": [{"name": "NVIDIA A10G", "compute_capability": "8.6"}],
        "libnvinfer": True, "tensorrt_enabled": True, "linked_version": [8, 6, 1],
        "loaded_version": [8, 6, 1]})
    assert out["available"] and out["reason"] == "" and out["gpus"][0]["compute_capability"] == "8.6"


def test_probe_summary_reports_a_crashed_probe():
    out = tftrt._summarise_probe({}, "the TensorRT probe process failed (exit -6: boom)")
    assert not out["available"] and "exit -6" in out["reason"]


def test_require_tftrt_is_one_line_with_the_way_out(probe):
    if probe["available"]:
        assert tftrt.require_tftrt() is not None
        return
    with pytest.raises(UnavailableError) as e:
        tftrt.require_tftrt()
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("--optimize tftrt needs")
    assert "docker run --rm --gpus all" in msg and "README" in msg


def test_export_with_tftrt_fails_before_any_work_here(probe, tiny_frozen, tmp_path):
    """Through the real CLI: exit 2, one line on stderr, nothing written to the repository."""
    if probe["available"]:
        pytest.skip("TensorRT is available here")
    from tests.helpers import run_builder

    repo = tmp_path / "repo"
    p = run_builder("export", "--model", str(tiny_frozen), "--name", "tiny", "--repo", str(repo),
                    "--outputs", "embeddings", "--inputs", "input", "--optimize", "tftrt",
                    "--precision", "fp16")
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "--optimize tftrt needs" in lines[0]
    assert "builder-gpu.Dockerfile" in lines[0]
    assert not repo.exists() or not any(repo.rglob("*"))


def test_convert_saved_model_refuses_before_writing_anything(probe, tmp_path):
    if probe["available"]:
        pytest.skip("TensorRT is available here")
    _tf2_saved_model(tmp_path / "plain", in_name="images")
    with pytest.raises(UnavailableError):
        tftrt.convert_saved_model(tmp_path / "plain", tmp_path / "out", [IMAGES],
                                  tftrt.TrtOptions(precision="fp16"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain"]


# --------------------------------------------------------------------------- options


def test_trt_options_defaults_are_realistic():
    o = tftrt.TrtOptions(precision="FP16")
    assert o.precision == "fp16"
    assert o.max_workspace_size_bytes == 1 << 30  # 1 GiB, not the tutorial's 2<<10
    assert o.minimum_segment_size == 3 and o.batch_sizes == (1, 8, 100)
    assert o.build_engines is True and o.dynamic_shape_profile_strategy == "Range+Optimal"


@pytest.mark.parametrize("kw,flag", [
    (dict(precision="bf16"), "--precision bf16"),
    (dict(precision="int8"), "--calibration_data"),
    (dict(precision="fp16", calibration_data="x.npz"), "--calibration_data is only used"),
    (dict(precision="fp32", max_workspace_size_bytes=2 << 10), "--max_workspace_size_bytes"),
    (dict(precision="fp32", minimum_segment_size=0), "--minimum_segment_size"),
    (dict(precision="fp32", batch_sizes=()), "--batch_sizes"),
    (dict(precision="fp32", batch_sizes=(0, 8)), "--batch_sizes"),
    (dict(precision="fp32", dynamic_shape_profile_strategy="Fast"), "--dynamic_shape_profile_strategy"),
    (dict(precision="fp32", calibration_preprocessing="imagenet"), "--calibration_preprocessing"),
])
def test_trt_options_reject_bad_flags(kw, flag):
    with pytest.raises(InputError) as e:
        tftrt.TrtOptions(**kw)
    assert flag in str(e.value) and "\n" not in str(e.value)


def test_int8_needs_existing_data_and_engine_build(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        tftrt.TrtOptions(precision="int8", calibration_data=str(tmp_path / "missing.npz"))
    data = tmp_path / "c.npz"
    np.savez(data, images=np.zeros((8, 16, 16, 3), np.float32))
    with pytest.raises(InputError, match="nobuild_engines"):
        tftrt.TrtOptions(precision="int8", calibration_data=str(data), build_engines=False)
    assert tftrt.TrtOptions(precision="int8", calibration_data=str(data)).precision == "int8"


def test_converter_kwargs_match_the_real_tf217_converter():
    """The mapping binds to TrtGraphConverterV2's real signature and uses values its own
    validators accept; constructing it here fails only for the missing TensorRT."""
    from tensorflow.python.compiler.tensorrt import trt_convert as trt

    opts = tftrt.TrtOptions(precision="fp16", minimum_segment_size=5, batch_sizes=(1, 4))
    kw = tftrt.converter_kwargs("/models/plain", opts)
    inspect.signature(trt.TrtGraphConverterV2.__init__).bind(None, **kw)
    assert kw["precision_mode"] in trt.TrtPrecisionMode.supported_precision_modes()
    assert kw["dynamic_shape_profile_strategy"] in trt.supported_profile_strategies()
    assert kw["use_dynamic_shape"] and kw["max_workspace_size_bytes"] == 1 << 30
    assert kw["minimum_segment_size"] == 5 and kw["use_calibration"] is False
    assert tftrt.converter_kwargs("d", tftrt.TrtOptions(
        precision="int8", calibration_data=__file__))["use_calibration"] is True
    params = trt.TrtConversionParams(
        max_workspace_size_bytes=kw["max_workspace_size_bytes"], precision_mode=kw["precision_mode"],
        minimum_segment_size=kw["minimum_segment_size"],
        maximum_cached_engines=kw["maximum_cached_engines"], use_calibration=kw["use_calibration"],
        allow_build_at_runtime=kw["allow_build_at_runtime"])
    trt._check_conversion_params(params, is_v2=True)
    if not tftrt.probe_tensorrt()["available"]:
        with pytest.raises(RuntimeError, match="TensorRT"):
            trt.TrtGraphConverterV2(**kw)


# --------------------------------------------------------------------------- profiles


def test_plan_profiles_one_shape_set_per_batch_size():
    mask = TensorInfo("mask", "mask:0", "int32", [None, 16])
    plans = tftrt.plan_profiles([IMAGES, mask], "100,1,8".split(","))
    assert plans == [{"images": (1, 16, 16, 3), "mask": (1, 16)},
                     {"images": (8, 16, 16, 3), "mask": (8, 16)},
                     {"images": (100, 16, 16, 3), "mask": (100, 16)}]
    arrays = tftrt.profile_inputs([IMAGES, mask], plans)
    assert [a["images"].shape for a in arrays] == [(1, 16, 16, 3), (8, 16, 16, 3), (100, 16, 16, 3)]
    assert arrays[0]["images"].dtype == np.float32 and arrays[2]["mask"].dtype == np.int32


def test_plan_profiles_refuses_unknown_non_batch_dims():
    t = TensorInfo("images", "input:0", "float32", [None, None, None, 3])
    with pytest.raises(GraphError) as e:
        tftrt.plan_profiles([t], [1, 8])
    assert "--input_shapes input=" in str(e.value) and "?x?x?x3" in str(e.value)


def test_plan_profiles_respects_a_fixed_batch():
    t = TensorInfo("images", "input:0", "float32", [4, 16, 16, 3])
    assert tftrt.plan_profiles([t], [4]) == [{"images": (4, 16, 16, 3)}]
    with pytest.raises(InputError, match="--batch_sizes 4"):
        tftrt.plan_profiles([t], [1, 4])


def test_plan_profiles_refuses_strings_and_empty_sizes():
    with pytest.raises(GraphError, match="string"):
        tftrt.plan_profiles([TensorInfo("s", "s:0", "string", [None])], [1])
    with pytest.raises(InputError, match="--batch_sizes"):
        tftrt.plan_profiles([IMAGES], [])


# --------------------------------------------------------------------------- calibration data


@pytest.mark.parametrize("key", ["images", "input:0", "input"])
def test_calibration_npz_by_alias_tensor_or_node_name(tmp_path, key):
    data = np.random.default_rng(0).uniform(size=(21, 16, 16, 3)).astype(np.float64)
    np.savez(tmp_path / "c.npz", **{key: data})
    batches = tftrt.load_calibration_data(tmp_path / "c.npz", [IMAGES], limit=20, batch_size=8)
    assert [b["images"].shape for b in batches] == [(8, 16, 16, 3), (8, 16, 16, 3)]  # 20 -> 2x8
    assert batches[0]["images"].dtype == np.float32
    np.testing.assert_allclose(batches[1]["images"], data[8:16], rtol=1e-6)


def test_calibration_npz_fewer_samples_than_a_batch(tmp_path):
    np.savez(tmp_path / "c.npz", images=np.zeros((3, 16, 16, 3), np.float32))
    batches = tftrt.load_calibration_data(tmp_path / "c.npz", [IMAGES], batch_size=8)
    assert len(batches) == 1 and batches[0]["images"].shape[0] == 3


@pytest.mark.parametrize("arrays,words", [
    ({"pixels": np.zeros((4, 16, 16, 3))}, ["no array for input 'images'", "pixels"]),
    ({"images": np.zeros((4, 16, 16))}, ["needs rank 4"]),
    ({"images": np.zeros((4, 8, 8, 3))}, ["[-1, 16, 16, 3]"]),
    ({"images": np.zeros((4, 16, 16, 3), np.complex64)}, ["complex64"]),
])
def test_calibration_npz_errors_name_the_file_and_fix(tmp_path, arrays, words):
    np.savez(tmp_path / "c.npz", **arrays)
    with pytest.raises(InputError) as e:
        tftrt.load_calibration_data(tmp_path / "c.npz", [IMAGES])
    assert str(tmp_path / "c.npz") in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_calibration_npz_inputs_must_agree_on_sample_count(tmp_path):
    mask = TensorInfo("mask", "mask:0", "int32", [None, 16])
    np.savez(tmp_path / "c.npz", images=np.zeros((4, 16, 16, 3)), mask=np.zeros((5, 16), np.int32))
    with pytest.raises(InputError, match="different sample counts"):
        tftrt.load_calibration_data(tmp_path / "c.npz", [IMAGES, mask])


def test_calibration_not_npz_and_corrupt_npz(tmp_path):
    (tmp_path / "c.csv").write_text("1,2,3\n")
    with pytest.raises(InputError, match="expected an .npz"):
        tftrt.load_calibration_data(tmp_path / "c.csv", [IMAGES])
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a readable .npz"):
        tftrt.load_calibration_data(tmp_path / "bad.npz", [IMAGES])


def _write_images(folder: Path) -> list[np.ndarray]:
    import tensorflow as tf

    folder.mkdir()
    rng = np.random.default_rng(0)
    imgs = []
    for i, (h, w) in enumerate([(20, 24), (16, 16), (40, 30), (16, 32), (25, 25)]):
        img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        png = i < 3  # img0-2 PNG (lossless), img3-4 JPEG
        enc = tf.io.encode_png(img) if png else tf.io.encode_jpeg(img, quality=95)
        (folder / f"img{i}.{'png' if png else 'jpg'}").write_bytes(enc.numpy())
        imgs.append(img)
    (folder / "notes.txt").write_text("not an image, ignored by suffix")
    return imgs


@pytest.mark.parametrize("mode,low,high", [("unit", 0.0, 1.0), ("symmetric", -1.0, 1.0),
                                           ("raw", 0.0, 255.0)])
def test_calibration_images_resized_and_scaled(tmp_path, mode, low, high):
    imgs = _write_images(tmp_path / "imgs")
    batches = tftrt.load_calibration_data(tmp_path / "imgs", [IMAGES], batch_size=2,
                                          preprocessing=mode)
    assert [b["images"].shape for b in batches] == [(2, 16, 16, 3), (2, 16, 16, 3)]  # 5 -> 2x2
    x = np.concatenate([b["images"] for b in batches])
    assert x.dtype == np.float32 and x.min() >= low - 1e-6 and x.max() <= high + 1e-6
    assert x.max() - x.min() > (high - low) * 0.5  # really spread over the range
    # img1 is a 16x16 PNG: not resized, so it comes back exactly, only scaled
    scale = {"unit": 1 / 255.0, "symmetric": 1 / 127.5, "raw": 1.0}[mode]
    offset = -1.0 if mode == "symmetric" else 0.0
    np.testing.assert_allclose(x[1], imgs[1] * scale + offset, atol=1e-4 * max(1.0, high))


def test_calibration_images_standardized_like_facenet_prewhiten(tmp_path):
    _write_images(tmp_path / "imgs")
    b = tftrt.load_calibration_data(tmp_path / "imgs", [IMAGES], batch_size=1,
                                    preprocessing="standardize")
    for batch in b:
        img = batch["images"][0]
        assert abs(img.mean()) < 1e-4 and abs(img.std() - 1.0) < 1e-3


def test_calibration_images_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        tftrt.load_calibration_data(tmp_path / "empty", [IMAGES])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(InputError) as e:
        tftrt.load_calibration_data(tmp_path / "broken", [IMAGES])
    assert "a.png" in str(e.value) and "not a decodable image" in str(e.value)
    _write_images(tmp_path / "imgs")
    two = [IMAGES, TensorInfo("mask", "mask:0", "int32", [None, 16])]
    with pytest.raises(InputError, match="one NHWC image input"):
        tftrt.load_calibration_data(tmp_path / "imgs", two)
    unknown = TensorInfo("images", "input:0", "float32", [None, None, None, 3])
    with pytest.raises(InputError, match="known height/width"):
        tftrt.load_calibration_data(tmp_path / "imgs", [unknown])
    with pytest.raises(InputError, match="no such file"):
        tftrt.load_calibration_data(tmp_path / "nope", [IMAGES])


# --------------------------------------------------------------------------- segments


def _trt_graph(engines: int, nodes_per_engine: int = 4, in_library: bool = False):
    """A hand-built GraphDef shaped like TF-TRT's output: TRTEngineOp nodes plus their
    ``<name>_native_segment`` functions (nodes inside library functions in TF2 graphs)."""
    import tensorflow as tf

    gd = tf.compat.v1.GraphDef()
    gd.node.add(name="x", op="Placeholder").attr["dtype"].type = 1
    host = gd.node if not in_library else gd.library.function.add().node_def
    if in_library:
        gd.library.function[0].signature.name = "__inference_pruned_123"
    for i in range(engines):
        name = f"TRTEngineOp_000_{i:03d}"
        n = host.add(name=f"StatefulPartitionedCall/{name}" if in_library else name, op="TRTEngineOp")
        n.input.append("x")
        n.attr["precision_mode"].s = b"FP16"
        fn = gd.library.function.add()
        fn.signature.name = f"{name}_native_segment"
        for j in range(nodes_per_engine):
            fn.node_def.add(name=f"conv{j}", op="Conv2D")
    host.add(name="post", op="Identity").input.append("x")
    return gd


@pytest.mark.parametrize("in_library", [False, True])
def test_count_segments_top_level_and_in_functions(in_library):
    c = tftrt.count_segments(_trt_graph(2, 5, in_library))
    assert c["engines"] == 2 and c["nodes_in_engines"] == 10
    assert c["per_engine"] == {"TRTEngineOp_000_000": 5, "TRTEngineOp_000_001": 5}
    assert c["precision_modes"] == ["FP16"]
    assert 0.5 < c["converted_fraction"] < 1.0
    tftrt.check_segments(c, tftrt.TrtOptions())


def test_nothing_converted_fails_loudly():
    c = tftrt.count_segments(_trt_graph(0))
    assert c["engines"] == 0 and c["converted_fraction"] == 0.0
    with pytest.raises(GraphError) as e:
        tftrt.check_segments(c, tftrt.TrtOptions(minimum_segment_size=7))
    assert "tensorflow/tensorrt#250" in str(e.value) and ">= 7" in str(e.value)
    assert "--optimize none" in str(e.value)


def test_saved_engine_files(tmp_path):
    assert tftrt.saved_engine_files(tmp_path) == []
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "trt-serialized-engine.TRTEngineOp_000_000").write_bytes(b"x")
    (tmp_path / "assets" / "vocab.txt").write_text("a")
    assert tftrt.saved_engine_files(tmp_path) == ["trt-serialized-engine.TRTEngineOp_000_000"]


# --------------------------------------------------------------------------- restoration


def _tf2_saved_model(path: Path, in_name: str = "x", extra_signature: bool = False) -> None:
    """A TF2 SavedModel like the converter writes: a signature whose keys are the function's
    argument name and ``output_0``."""
    import tensorflow as tf

    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name=in_name)])
        def serve(self, x):
            return tf.nn.l2_normalize(x * 2.0 + 1.0, axis=1)

    m = M()
    sigs = {"serving_default": m.serve.get_concrete_function()}
    if extra_signature:
        sigs["predict"] = sigs["serving_default"]
    tf.saved_model.save(m, str(path), signatures=sigs)


def _tf1_signature(path: Path, key: str = "serving_default"):
    import tensorflow as tf

    with tf.Graph().as_default() as g, tf.compat.v1.Session(graph=g) as s:
        mg = tf.compat.v1.saved_model.loader.load(s, ["serve"], str(path))
        sig = mg.signature_def[key]
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        out = {k: s.run(v.name, {sig.inputs[next(iter(sig.inputs))].name: x}) for k, v in sig.outputs.items()}
        return sig, out


def test_restore_signature_renames_converter_keys_to_aliases(tmp_path):
    _tf2_saved_model(tmp_path / "m")
    sig, _ = _tf1_signature(tmp_path / "m")
    assert set(sig.inputs) == {"x"} and set(sig.outputs) == {"output_0"}
    changes = tftrt.restore_signature(
        tmp_path / "m", [TensorInfo("images", "x:0", "float32", [None, 4])],
        [TensorInfo("embeddings", "e:0", "float32", [None, 4])])
    assert "input 'x' -> 'images'" in changes and "output 'output_0' -> 'embeddings'" in changes
    sig, out = _tf1_signature(tmp_path / "m")  # loads like TF Serving, answers under the aliases
    assert set(sig.inputs) == {"images"} and set(out) == {"embeddings"}
    assert sig.method_name == "tensorflow/serving/predict"
    np.testing.assert_allclose(np.linalg.norm(out["embeddings"], axis=1), 1.0, rtol=1e-5)
    assert tftrt.restore_signature(tmp_path / "m", [TensorInfo("images", "x:0", "float32", [None, 4])],
                                   [TensorInfo("embeddings", "e:0", "float32", [None, 4])]) == []
    assert not list((tmp_path / "m").glob(".saved_model*"))


def test_restore_signature_readds_source_signature_keys(tmp_path):
    _tf2_saved_model(tmp_path / "src", in_name="images", extra_signature=True)
    _tf2_saved_model(tmp_path / "dst", in_name="images")
    ins = [TensorInfo("images", "images:0", "float32", [None, 4])]
    outs = [TensorInfo("output_0", "o:0", "float32", [None, 4])]
    changes = tftrt.restore_signature(tmp_path / "dst", ins, outs, src_dir=tmp_path / "src")
    assert changes == ["signature 'predict' restored"]
    sig, out = _tf1_signature(tmp_path / "dst", "predict")
    assert set(sig.inputs) == {"images"} and out["output_0"].shape == (2, 4)


def test_restore_signature_mismatch_is_an_error(tmp_path):
    _tf2_saved_model(tmp_path / "m")
    two = [TensorInfo("a", "a:0", "float32", [None, 4]), TensorInfo("b", "b:0", "float32", [None, 4])]
    with pytest.raises(GraphError, match="do not match"):
        tftrt.restore_signature(tmp_path / "m", two, [TensorInfo("o", "o:0", "float32", [None, 4])])
    with pytest.raises(GraphError, match="no signature 'classify'"):
        tftrt.restore_signature(tmp_path / "m", two[:1], two[1:], signature_key="classify")


def test_restore_assets_extra_copies_what_save_dropped(tmp_path):
    (tmp_path / "src" / "assets.extra").mkdir(parents=True)
    (tmp_path / "src" / "assets.extra" / "tf_serving_warmup_requests").write_bytes(b"warm")
    (tmp_path / "src" / "assets.extra" / "build_info.json").write_text("{}")
    (tmp_path / "dst" / "assets.extra").mkdir(parents=True)
    (tmp_path / "dst" / "assets.extra" / "build_info.json").write_text('{"new": 1}')
    assert tftrt.restore_assets_extra(tmp_path / "src", tmp_path / "dst") == ["tf_serving_warmup_requests"]
    assert (tmp_path / "dst" / "assets.extra" / "build_info.json").read_text() == '{"new": 1}'
    assert tftrt.restore_assets_extra(tmp_path / "nothing", tmp_path / "dst") == []


# --------------------------------------------------------------------------- real GPU runs


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_gpu_tftrt_export_of_the_tiny_model(probe, tiny_frozen, tmp_path, precision):
    needs_gpu(probe)
    from builder.export import pipeline

    r = pipeline.export(pipeline.ExportOptions(
        model=str(tiny_frozen), name="tiny", repo=str(tmp_path), inputs=["input"],
        outputs=["embeddings"], optimize="tftrt", precision=precision, batch_sizes=[1, 8],
        trt={"minimum_segment_size": 2}), quiet=True)
    info = r.build_info
    assert info["parity"]["passed"]
    trt = info["tensorrt"]
    assert trt["segments"]["engines"] >= 1 and trt["serialized_engines"] >= 1
    assert trt["loaded_version"][0] == 8 and trt["gpu"]["compute_capability"]
    assert tftrt.saved_engine_files(r.path)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_gpu_tftrt_export_of_the_facenet_example(probe, facenet_tiny, tmp_path, precision):
    needs_gpu(probe)
    from builder.config import compat
    from builder.core.artifact import graph_defs as saved_model_graph_defs
    from builder.export import pipeline

    size = facenet_tiny["image_size"]
    trt: dict = {}
    if precision == "int8":
        calib = tmp_path / "calib.npz"
        np.savez(calib, images=np.random.default_rng(0).normal(size=(32, size, size, 3)).astype(np.float32))
        trt["calibration_data"] = str(calib)
    r = pipeline.export(pipeline.ExportOptions(
        model=str(facenet_tiny["checkpoint_dir"]), flow="checkpoint", name="facenet",
        repo=str(tmp_path / "repo"), inputs=["input"], outputs=["embeddings"],
        feed={"phase_train": "false"}, input_alias={"input": "images"},
        input_shapes={"input": f"?x{size}x{size}x3"}, optimize="tftrt", precision=precision,
        batch_sizes=[1, 8, 100], trt=trt), quiet=True)
    info = r.build_info
    assert info["parity"]["passed"] and info["tensorrt"]["segments"]["engines"] >= 1
    if precision == "int8":
        assert info["parity"]["min_cosine"] >= 0.99
    assert compat.trt_ops(saved_model_graph_defs(r.path)[0])
    assert compat.image_problem(True, "tensorflow/serving:2.17.1-gpu") is None
    assert compat.image_problem(True, "tensorflow/serving:2.17.1") is not None


# --------------------------------------------------------------------------- GPU builder image

DOCKERFILE = Path(__file__).resolve().parents[1] / "scripts" / "builder-gpu.Dockerfile"


def _dockerfile() -> list:
    import dockerfile

    return list(dockerfile.parse_file(str(DOCKERFILE)))


def test_gpu_builder_image_pins_what_serving_2_17_gpu_ships():
    import tensorflow as tf

    from builder.config import compat

    cmds = _dockerfile()
    args = dict(c.value[0].split("=", 1) for c in cmds if c.cmd == "ARG" and "=" in c.value[0])
    assert args["TENSORFLOW_VERSION"] == tf.__version__ == "2.17.1"
    trt = tuple(int(x) for x in args["TENSORRT_DEB_VERSION"].split("-")[0].split(".")[:3])
    assert trt == compat.SERVING_GPU_TENSORRT[(2, 17)]  # engines built here load in 2.17-gpu
    run = " ".join(" ".join(c.value) for c in cmds if c.cmd == "RUN")
    assert "libnvinfer8=${TENSORRT_DEB_VERSION}" in run and "apt-mark hold libnvinfer8" in run
    assert '"tensorflow[and-cuda]==${TENSORFLOW_VERSION}"' in run
    entry = next(c for c in cmds if c.cmd == "ENTRYPOINT")
    assert list(entry.value) == ["python", "-m", "builder"]
    root = DOCKERFILE.parents[1]
    for c in cmds:
        if c.cmd == "COPY":
            for src in c.value[:-1]:
                assert (root / src).exists(), f"COPY source {src} missing"
    # the command the UnavailableError hands out is the one documented in the Dockerfile
    text = DOCKERFILE.read_text()
    assert "docker build -f scripts/builder-gpu.Dockerfile -t tfs-builder-gpu ." in text
    assert "docker build -f scripts/builder-gpu.Dockerfile -t tfs-builder-gpu ." in tftrt.GPU_IMAGE_HINT


@pytest.mark.docker
@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_builder_image_builds_and_sees_tensorrt():
    """Build the image for real and run the probe inside with the host's GPUs (the markers'
    hook in conftest.py skips it, with the reason, without an engine or a GPU)."""
    import docker

    client = docker.from_env()
    client.images.build(path=str(DOCKERFILE.parents[1]), dockerfile=str(DOCKERFILE), tag="tfs-builder-gpu:test")
    out = client.containers.run(
        "tfs-builder-gpu:test", entrypoint="python", remove=True,
        command=["-c", "import json; from builder import tftrt; print(json.dumps(tftrt.probe_tensorrt()))"],
        device_requests=[docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])])
    import json

    probe = json.loads(out.decode().strip().splitlines()[-1])
    assert probe["available"], probe["reason"]
    assert probe["loaded_version"][:2] == [8, 6]


@pytest.mark.parametrize("sizes,wanted,expected", [((1, 8, 100), 8, 8), ((1, 4, 100), 8, 4),
                                                   ((16, 32), 8, 16), ((1, 8, 100), 64, 8)])
def test_calibration_batch_is_a_planned_batch_size(sizes, wanted, expected):
    opts = tftrt.TrtOptions(batch_sizes=sizes, calibration_batch_size=wanted)
    assert tftrt.calibration_batch(opts) == expected

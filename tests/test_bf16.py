"""CPU bf16 (issue 12): capability detection from /proc/cpuinfo text, the refusal, the flag
plumbing into export, the bake (only standard ops) and the serving profile's parity on a tiny
conv model. The last two need a CPU with bf16 units and oneDNN on; elsewhere they skip naming
the missing flag (the refusal path is tested everywhere, also end to end)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from builder.core.errors import GraphError, InputError, UnavailableError
from builder.export import pipeline
from builder.optimize import bf16, cpu
from tests.helpers import CKPT_ARGS, CKPT_FLAGS, run_builder

# First processor blocks of real /proc/cpuinfo files (trimmed flag lists).
ZEN1 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 23
model\t\t: 1
model name\t: AMD EPYC 7551 32-Core Processor
flags\t\t: fpu vme sse sse2 avx fma avx2 sha_ni

processor\t: 1
flags\t\t: avx512_bf16
"""
ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
flags\t\t: fpu sse avx2 fma avx512f avx512bw avx512_bf16 avx512_vnni
"""
SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8488C
flags\t\t: avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
"""
GRAVITON3 = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics sve bf16 i8mm
CPU implementer\t: 0x41
CPU part\t: 0xd40
"""
GRAVITON2 = """processor\t: 0
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics
CPU implementer\t: 0x41
CPU part\t: 0xd0c
"""


def host_bf16() -> tuple[bool, str]:
    return bf16.bf16_capability()


needs_bf16 = pytest.mark.skipif(not host_bf16()[0], reason=f"no bf16 here: {host_bf16()[1]}")


# --------------------------------------------------------------------------- detection


@pytest.mark.parametrize("text,ok,flag", [
    (ZEN1, False, "avx512_bf16 or amx_bf16"),
    (ZEN4, True, "avx512_bf16"),
    (SAPPHIRE_RAPIDS, True, "avx512_bf16 and amx_bf16"),
    (GRAVITON3, True, "bf16"),
    (GRAVITON2, False, "no bf16 flag"),
    ("", False, "avx512_bf16 or amx_bf16"),
])
def test_hardware_detection_from_cpuinfo_text(text, ok, flag):
    info = bf16.read_cpuinfo(text)
    got, reason = bf16.hardware_bf16(info)
    assert got is ok
    assert flag in reason


def test_only_the_first_processor_block_counts_and_labels_name_the_cpu():
    zen1 = bf16.read_cpuinfo(ZEN1)
    assert "avx512_bf16" not in zen1.flags  # the second block's flags are not the first CPU's
    assert zen1.label == "AMD EPYC 7551 32-Core Processor (family 23 model 1 = Zen/Zen+/Zen 2; avx2, fma)"
    assert bf16.read_cpuinfo(ZEN4).label.startswith("AMD EPYC (family 25 model 17 = Zen 4;")
    arm = bf16.read_cpuinfo(GRAVITON3)
    assert arm.arm and "part 0xd40" in arm.label and arm.relevant_flags == ["asimd", "bf16", "i8mm", "sve"]
    assert bf16.read_cpuinfo(SAPPHIRE_RAPIDS).relevant_flags[-3:] == ["amx_tile", "amx_bf16", "amx_int8"]


def test_capability_needs_onednn_on_too():
    zen4 = bf16.read_cpuinfo(ZEN4)
    assert bf16.bf16_capability(zen4, onednn=True) == (True, bf16.hardware_bf16(zen4)[1])
    ok, reason = bf16.bf16_capability(zen4, onednn=False)
    assert not ok and "oneDNN is off" in reason and "TF_ENABLE_ONEDNN_OPTS" in reason
    ok, reason = bf16.bf16_capability(bf16.read_cpuinfo(ZEN1), onednn=True)
    assert not ok and "avx512_bf16 or amx_bf16" in reason


# --------------------------------------------------------------------------- refusal


def test_refusal_is_one_line_naming_the_missing_feature_and_the_gain():
    with pytest.raises(UnavailableError) as e:
        bf16.check_request("cpu", cpu=bf16.read_cpuinfo(ZEN1), onednn=True)
    msg = str(e.value)
    assert "\n" not in msg and e.value.exit_code == 2
    for words in ("--precision bf16", "AMD EPYC 7551", "avx512_bf16 or amx_bf16", "1.00x",
                  "2.0x the checkpoint flow", "Graviton", "--precision fp32"):
        assert words in msg


def test_host_decides_whether_cpu_bf16_is_accepted():
    ok, reason = host_bf16()
    if ok:
        cpu.check_request("cpu", "bf16")
        cpu.check_request("none", "bf16", bake=True)
    else:
        with pytest.raises(UnavailableError, match="--precision bf16"):
            cpu.check_request("cpu", "bf16")


@pytest.mark.parametrize("opt,prec,bake,words", [
    ("tftrt", "bf16", False, ["CPU precision", "--optimize none or cpu"]),
    ("cpu", "fp32", True, ["--bake", "--precision bf16"]),
    ("cpu", "int8", False, ["int8 on CPU is not offered", "0.32x", "min cosine 0.984",
                            "--precision bf16 or fp32"]),
    ("none", "fp16", False, ["--optimize tftrt", "fp32 or bf16"]),
])
def test_other_precision_requests_refused_in_one_line(opt, prec, bake, words):
    with pytest.raises(InputError) as e:
        cpu.check_request(opt, prec, bake=bake)
    assert "\n" not in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_cli_refuses_bf16_with_exit_2_before_any_work(tiny_ckpt, tmp_path):
    """TF_ENABLE_ONEDNN_OPTS=0 switches the rewrite off on every host, so this path runs
    everywhere: a CPU without bf16 units is refused for that, a bf16 CPU for oneDNN off."""
    r = run_builder("export", "--model", str(tiny_ckpt), "--name", "t", "--repo", str(tmp_path / "r"),
                    *CKPT_ARGS, "--precision", "bf16", env={"TF_ENABLE_ONEDNN_OPTS": "0"})
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith("error: --precision bf16:") and "--precision fp32" in err
    assert ("TF_ENABLE_ONEDNN_OPTS=0" in err) or ("avx512_bf16" in err) or ("bf16 flag" in err)
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- flag plumbing


def test_export_flags_reach_options_and_reproduce(tmp_path):
    o = pipeline.ExportOptions(model="m", name="n", repo=str(tmp_path), optimize="cpu", flow="frozen",
                               precision="bf16", bake=True, min_cosine=0.9995)
    cmd = pipeline.reproduce_command(o, 3)
    assert "--precision bf16" in cmd and "--bake" in cmd and "--min_cosine 0.9995" in cmd
    assert "--bake" not in pipeline.reproduce_command(
        pipeline.ExportOptions(model="m", name="n", repo=str(tmp_path), flow="frozen"), 1)


def test_min_cosine_out_of_range_is_a_user_error(tiny_ckpt, tmp_path):
    o = pipeline.ExportOptions(model=str(tiny_ckpt), name="n", repo=str(tmp_path), min_cosine=1.5,
                               **CKPT_FLAGS)
    with pytest.raises(InputError, match="--min_cosine 1.5"):
        pipeline.validate_options(o)


def test_min_cosine_reaches_parity_for_any_precision(tiny_ckpt, tmp_path):
    """--min_cosine is a parity flag for every precision (fp32 has no cosine gate by default)."""
    o = pipeline.ExportOptions(model=str(tiny_ckpt), name="n", repo=str(tmp_path),
                               min_cosine=0.5, batch_sizes=[1], **CKPT_FLAGS)
    info = pipeline.export(o, quiet=True).build_info
    assert info["parity"]["min_cosine_required"] == 0.5
    assert "--min_cosine 0.5" in info["reproduce"] and "bf16" not in info


def test_session_config_is_the_rewrite_tf_serving_sets():
    from tensorflow.core.protobuf import rewriter_config_pb2

    assert bf16.session_config("") is None
    cfg = bf16.session_config("bfloat16")
    assert cfg.graph_options.rewrite_options.auto_mixed_precision_onednn_bfloat16 == \
        rewriter_config_pb2.RewriterConfig.ON
    with pytest.raises(InputError, match="--mixed_precision 'bf16'.*only --mixed_precision=bfloat16"):
        bf16.session_config("bf16")


def test_build_info_fields_only_for_bf16():
    assert bf16.build_info_fields("fp32", {"bf16": {"mode": "profile"}}) == {}
    prof = bf16.build_info_fields("bf16", {"bf16": {"mode": "profile"}})
    assert prof["serving_profile"] == {"mixed_precision": "bfloat16"} and "needs" not in prof
    baked = bf16.build_info_fields("bf16", {"bf16": {"mode": "baked"}})
    assert baked["needs"] == "bf16 CPU" and "serving_profile" not in baked


# --------------------------------------------------------------------------- bake and profile


def _tiny_conv(seed: int = 0):
    """Conv2D x2 + BiasAdd/ReLU + MatMul + L2 norm, frozen: what the AMP pass converts."""
    import tensorflow as tf

    from builder.core.model import TensorInfo

    rng = np.random.default_rng(seed)
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 16, 16, 3], name="input")
        h = x
        for c in (8, 16):
            w = tf.constant(rng.normal(0, 0.3, (3, 3, int(h.shape[-1]), c)).astype(np.float32))
            h = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(h, w, 1, "SAME"),
                                          rng.normal(0, 0.1, c).astype(np.float32)))
        h = tf.reduce_mean(h, [1, 2])
        h = tf.matmul(h, rng.normal(0, 0.3, (16, 8)).astype(np.float32))
        tf.nn.l2_normalize(h, 1, 1e-10, name="embeddings")
    ins = [TensorInfo("images", "input:0", "float32", [None, 16, 16, 3])]
    outs = [TensorInfo("embeddings", "embeddings:0", "float32", [None, 8])]
    return g.as_graph_def(), ins, outs


def _run(gd, x, config=None):
    import tensorflow as tf

    with tf.Graph().as_default() as g:
        tf.graph_util.import_graph_def(gd, name="")
        with tf.compat.v1.Session(graph=g, config=config) as s:
            return s.run("embeddings:0", {"input:0": x})


def _min_cos(a, b):
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


@needs_bf16
def test_bake_holds_only_standard_ops_and_keeps_the_signature_fp32():
    from builder.config import compat

    gd, ins, outs = _tiny_conv()
    baked, passes = bf16.bake_graph(gd, ins, outs)
    ops = compat.op_histogram(baked)
    assert not compat.internal_ops(baked) and not compat.unregistered_ops(baked)
    assert not any(op.startswith("_") for op in ops)  # no _FusedConv2D (the remapper trap)
    assert compat.bf16_nodes(baked) >= 3  # both convolutions and the MatMul compute in bf16
    assert all(n.device == "" for n in baked.node)
    amp, fold, check = passes
    assert amp["name"] == bf16.REWRITE and amp["nodes_bf16"] > 0
    assert fold["casts_after"] < amp["casts"]  # weight casts folded into bf16 constants
    x = np.random.default_rng(1).standard_normal((16, 16, 16, 3)).astype(np.float32)
    want, got = _run(gd, x), _run(baked, x)
    assert got.dtype == np.float32 and np.abs(got - want).max() > 0  # really bf16
    assert _min_cos(want, got) >= 0.999


def test_baked_graph_check_refuses_internal_ops_and_changed_dtypes():
    import tensorflow as tf

    from builder.core.model import TensorInfo

    gd, ins, outs = _tiny_conv()
    fused = tf.compat.v1.GraphDef()
    fused.CopyFrom(gd)
    fused.node[-1].op = "_FusedConv2D"
    with pytest.raises(GraphError, match="non-standard ops.*_FusedConv2D"):
        bf16.check_baked_graph(fused, ins, outs)
    with pytest.raises(GraphError, match="changed embeddings .* from bfloat16 to float32"):
        bf16.check_baked_graph(gd, ins, [TensorInfo("embeddings", "embeddings:0", "bfloat16", [])])


@needs_bf16
def test_profile_rewrite_matches_bake_and_differs_from_fp32():
    gd, ins, outs = _tiny_conv()
    x = np.random.default_rng(2).standard_normal((8, 16, 16, 3)).astype(np.float32)
    fp32 = _run(gd, x)
    profile = _run(gd, x, bf16.session_config())
    baked = _run(bf16.bake_graph(gd, ins, outs)[0], x)
    assert np.abs(profile - fp32).max() > 0 and _min_cos(fp32, profile) >= 0.999
    np.testing.assert_allclose(profile, baked, atol=1e-2)


@needs_bf16
@pytest.mark.parametrize("optimize,bake", [("cpu", False), ("cpu", True), ("none", True)])
def test_export_bf16_parity_build_info_and_inspect(tiny_ckpt, tmp_path, optimize, bake):
    from builder.config import compat, inspection
    from builder.core import artifact

    o = pipeline.ExportOptions(model=str(tiny_ckpt), name="t", repo=str(tmp_path), optimize=optimize,
                               precision="bf16", bake=bake, batch_sizes=[1, 4], **CKPT_FLAGS)
    result = pipeline.export(o, quiet=True)
    info = result.build_info
    assert info["precision"] == "bf16"
    p = info["parity"]
    assert p["passed"] and p["min_cosine_required"] == 0.999 and p["min_cosine"] >= 0.999
    assert p["max_abs_diff"] > 0  # parity ran WITH bf16 (an FP32 run would match to ~1e-7)
    m = info["bf16"]["measured"]
    assert m["batch"] == 4 and m["speedup"] > 0 and m["cpu"] == bf16.read_cpuinfo().label
    assert "avx512_bf16" in m["cpu_flags"] or "amx_bf16" in m["cpu_flags"] or "bf16" in m["cpu_flags"]
    on_disk = artifact.read_build_info(result.path)
    assert json.dumps(on_disk["bf16"]) == json.dumps(info["bf16"])
    gd = artifact.graph_defs(result.path)[0]
    if bake:
        assert info["needs"] == "bf16 CPU" and "serving_profile" not in info
        assert compat.bf16_nodes(gd) > 0 and not compat.internal_ops(gd)
        assert compat.bf16_mode(info) == "baked"
        assert inspection.inspect_path(result.path)["versions"][0]["serving_images"].startswith(
            "needs bf16 CPU")
        assert "--bake" in info["reproduce"]
    else:
        assert info["serving_profile"] == {"mixed_precision": "bfloat16"} and "needs" not in info
        assert compat.bf16_nodes(gd) == 0  # the artefact itself stays FP32
        assert compat.bf16_mode(info) == "profile"
    assert compat.bf16_summary(info).startswith("bf16 baked: needs bf16 CPU" if bake else
                                                "bf16 serving profile")

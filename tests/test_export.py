"""The export pipeline end to end on tiny real models: files, versions, parity, crash safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from builder.core import layout
from builder.core.errors import GraphError, InputError, ParityError, VersionError
from builder.export import pipeline
from tests.helpers import CKPT_ARGS, CKPT_FLAGS, ROOT, run_builder

REQUIRED_KEYS = {"flow", "source", "tensorflow_version", "optimizer", "precision", "signature", "parity",
                 "export_seconds", "reproduce"}


def _opts(model, repo, **kw):
    flags = dict(CKPT_FLAGS)
    flags.update(kw)
    return pipeline.ExportOptions(model=str(model), name=kw.pop("name", "tiny"), repo=str(repo),
                                **{k: v for k, v in flags.items() if k != "name"})


def _numeric_and_staging(model_dir: Path):
    names = [p.name for p in model_dir.iterdir()] if model_dir.exists() else []
    return ([n for n in names if layout.is_version_name(n)],
            [n for n in names if n.startswith(layout.STAGING_PREFIX)])


@pytest.fixture(scope="module")
def exported(tiny_ckpt, tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    result = pipeline.export(_opts(tiny_ckpt, repo, batch_sizes=[1, 4]), quiet=True)
    return repo, result


def test_version_layout_and_build_info(exported, tiny_ckpt):
    repo, result = exported
    v = repo / "tiny" / "1"
    assert result.path == v and result.version == 1
    assert (v / "saved_model.pb").is_file() and (v / "variables").is_dir()
    info = json.loads((v / "assets.extra" / "build_info.json").read_text())
    assert REQUIRED_KEYS <= set(info)
    assert info["flow"] == "checkpoint" and info["optimizer"] == "none" and info["precision"] == "fp32"
    assert info["signature"]["inputs"] == {"images": {"tensor": "input:0", "dtype": "float32",
                                                      "shape": [-1, 8, 8, 3]}}
    assert info["signature"]["outputs"]["embeddings"]["shape"] == [-1, 6]
    assert info["parity"]["passed"] is True and info["parity"]["max_abs_diff"] <= 1e-5
    assert info["parity"]["samples"] == 8 and info["parity"]["min_cosine"] > 0.99999
    srcs = {Path(f["path"]).name: f for f in info["source"]["files"]}
    meta = next(tiny_ckpt.glob("*.meta"))
    assert srcs[meta.name]["sha256"] == pipeline.sha256_file(meta)
    assert info["reproduce"].startswith("python -m builder export --flow checkpoint")
    assert "--feed phase_train=false" in info["reproduce"] and "--version 1" in info["reproduce"]
    assert info["feeds"] == {"phase_train": False}
    assert _numeric_and_staging(repo / "tiny") == (["1"], [])


def test_warmup_records_are_valid_prediction_logs(exported):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    repo, _ = exported
    records = list(tf.data.TFRecordDataset(str(repo / "tiny/1/assets.extra/tf_serving_warmup_requests")))
    assert len(records) == 4  # 2 per batch size, batch sizes 1 and 4
    batches = []
    for r in records:
        log = prediction_log_pb2.PredictionLog.FromString(r.numpy())
        req = log.predict_log.request
        assert req.model_spec.name == "tiny" and req.model_spec.signature_name == "serving_default"
        assert list(req.inputs) == ["images"]
        batches.append(tf.make_ndarray(req.inputs["images"]).shape)
    assert sorted(batches) == [(1, 8, 8, 3)] * 2 + [(4, 8, 8, 3)] * 2


def test_export_loads_in_fresh_process_with_serving_loader(exported):
    """The same loader TF Serving uses, in a process that never saw the source model."""
    repo, _ = exported
    code = textwrap.dedent(f"""
        import numpy as np, tensorflow as tf
        v = "{repo}/tiny/1"
        gold = np.load(v + "/assets.extra/golden.npz")
        with tf.compat.v1.Session(graph=tf.Graph()) as s:
            mg = tf.compat.v1.saved_model.loader.load(s, ["serve"], v)
            sig = mg.signature_def["serving_default"]
            out = s.run(sig.outputs["embeddings"].name, {{sig.inputs["images"].name: gold["in/images"]}})
        print(float(np.abs(out - gold["out/embeddings"]).max()))
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert p.returncode == 0, p.stderr
    assert float(p.stdout.strip().splitlines()[-1]) <= 1e-5


def test_auto_versions_explicit_versions_and_overwrite(tiny_ckpt, tmp_path):
    pipeline.export(_opts(tiny_ckpt, tmp_path, batch_sizes=[1]), quiet=True)
    r2 = pipeline.export(_opts(tiny_ckpt, tmp_path, batch_sizes=[1]), quiet=True)
    assert r2.version == 2
    r7 = pipeline.export(_opts(tiny_ckpt, tmp_path, batch_sizes=[1], version=7), quiet=True)
    assert r7.version == 7
    assert pipeline.export(_opts(tiny_ckpt, tmp_path, batch_sizes=[1]), quiet=True).version == 8
    before = (tmp_path / "tiny/7/assets.extra/build_info.json").read_text()
    with pytest.raises(VersionError, match=r"version 7 of tiny exists .*--overwrite"):
        pipeline.export(_opts(tiny_ckpt, tmp_path, batch_sizes=[1], version=7), quiet=True)
    assert (tmp_path / "tiny/7/assets.extra/build_info.json").read_text() == before
    r = pipeline.export(_opts(tiny_ckpt, tmp_path, batch_sizes=[1], version=7, overwrite=True), quiet=True)
    assert r.version == 7
    assert (tmp_path / "tiny/7/assets.extra/build_info.json").read_text() != before
    assert _numeric_and_staging(tmp_path / "tiny")[1] == []
    assert sorted(layout.list_versions(tmp_path / "tiny")) == [1, 2, 7, 8]


@pytest.mark.parametrize("flow_fixture, kw", [
    ("tiny_frozen", dict(CKPT_FLAGS)),
    ("tiny_frozen_txt", dict(CKPT_FLAGS)),
    ("tiny_tf1_sm", dict(feed={"phase_train": "false"}, input_shapes={"input:0": "?x8x8x3"}, inputs=[],
                         outputs=[], input_alias={})),
    ("tiny_tf2_sm", dict(inputs=[], outputs=[], feed={}, input_alias={}, input_shapes={})),
    ("tiny_keras", dict(inputs=[], outputs=[], feed={}, input_alias={}, input_shapes={})),
])
def test_every_flow_exports_with_parity(flow_fixture, kw, request, tmp_path):
    model = request.getfixturevalue(flow_fixture)
    o = pipeline.ExportOptions(model=str(model), name="m", repo=str(tmp_path), batch_sizes=[1, 2], **kw)
    r = pipeline.export(o, quiet=True)
    info = r.build_info
    assert info["parity"]["passed"] and info["parity"]["max_abs_diff"] <= 1e-5
    assert info["flow"] == {"tiny_frozen": "frozen", "tiny_frozen_txt": "frozen", "tiny_keras": "keras"}.get(
        flow_fixture, "savedmodel")
    from builder.export.parity import run_saved_model

    gold = np.load(r.path / "assets.extra/golden.npz")
    ins = {k[3:]: gold[k] for k in gold.files if k.startswith("in/")}
    outs = run_saved_model(r.path, ins)
    for k in outs:
        np.testing.assert_allclose(outs[k], gold[f"out/{k}"], atol=1e-5)


def test_samples_file_is_used(tiny_ckpt, tmp_path):
    x = np.random.default_rng(9).standard_normal((3, 8, 8, 3)).astype(np.float32)
    np.savez(tmp_path / "s.npz", images=x)
    r = pipeline.export(_opts(tiny_ckpt, tmp_path / "repo", samples=str(tmp_path / "s.npz"), batch_sizes=[1]),
                      quiet=True)
    assert r.build_info["parity"]["samples"] == 3
    np.testing.assert_array_equal(np.load(r.path / "assets.extra/golden.npz")["in/images"], x)
    np.savez(tmp_path / "bad.npz", other=x)
    with pytest.raises(InputError, match=r"--samples .*no array for input 'images'"):
        pipeline.export(_opts(tiny_ckpt, tmp_path / "repo2", samples=str(tmp_path / "bad.npz")), quiet=True)
    assert not (tmp_path / "repo2" / "tiny").exists() or _numeric_and_staging(tmp_path / "repo2/tiny") == ([], [])


def _random_graph(path: Path) -> Path:
    """A graph whose output is random: the export cannot match the source run."""
    import tensorflow as tf

    with tf.Graph().as_default() as g:
        x = tf.compat.v1.placeholder(tf.float32, [None, 3], name="x")
        noise = tf.random.uniform(tf.shape(x), name="noise")
        tf.identity(x + noise, name="y")
        tf.identity(x * 2.0, name="z")
    path.write_bytes(g.as_graph_def().SerializeToString())
    return path


def test_parity_failure_reports_every_output_and_promotes_nothing(tmp_path):
    model = _random_graph(tmp_path / "random.pb")
    o = pipeline.ExportOptions(model=str(model), name="rnd", repo=str(tmp_path / "repo"), outputs=["y", "z"],
                             batch_sizes=[1])
    with pytest.raises(ParityError) as e:
        pipeline.export(o, quiet=True)
    msg = str(e.value)
    assert "1 of 2 outputs differ" in msg and "nothing was promoted" in msg
    table = msg.splitlines()[1:]
    assert table[0].split() == ["output", "max_abs_diff", "atol", "max_rel_diff", "min_cosine", "status"]
    assert any(row.startswith("y ") and "FAIL" in row for row in table)
    assert any(row.startswith("z ") and row.rstrip().endswith("ok") for row in table)
    assert _numeric_and_staging(tmp_path / "repo" / "rnd") == ([], [])


def test_unsafe_ops_refused_unless_allowed(tmp_path):
    import tensorflow as tf

    with tf.Graph().as_default() as g:
        path = tf.compat.v1.placeholder(tf.string, [], name="path")
        data = tf.io.read_file(path, name="reader")
        tf.identity(tf.strings.length(data), name="n")
    model = tmp_path / "reader.pb"
    model.write_bytes(g.as_graph_def().SerializeToString())
    np.savez(tmp_path / "s.npz", path=np.array(str(model).encode()))
    o = pipeline.ExportOptions(model=str(model), name="r", repo=str(tmp_path / "repo"), outputs=["n"],
                             batch_sizes=[1], samples=str(tmp_path / "s.npz"))
    with pytest.raises(GraphError, match=r"reader \(ReadFile\).*--allow_unsafe_ops"):
        pipeline.export(o, quiet=True)
    assert not (tmp_path / "repo" / "r").exists() or _numeric_and_staging(tmp_path / "repo/r") == ([], [])


def test_bad_options_fail_before_any_work(tiny_ckpt, tmp_path):
    cases = [
        (dict(name="bad/name"), InputError, "--name"),
        (dict(name=".hidden"), InputError, "--name"),
        (dict(flow="onnx"), InputError, "--flow onnx"),
        (dict(batch_sizes=[]), InputError, "--batch_sizes"),
        (dict(optimize="gpu"), InputError, "--optimize"),
        (dict(samples=str(tmp_path / "none.npz")), InputError, "--samples"),
    ]
    for kw, exc, text in cases:
        name = kw.pop("name", "tiny")
        o = pipeline.ExportOptions(model=str(tiny_ckpt), name=name, repo=str(tmp_path / "r"), **kw)
        with pytest.raises(exc, match=text):
            pipeline.export(o, quiet=True)
    assert not (tmp_path / "r").exists()
    with pytest.raises(VersionError, match="--version"):
        layout.parse_version("latest")
    with pytest.raises(VersionError, match="out of range"):
        layout.parse_version("0")


# ------------------------------------------------------------------ CLI and crash safety


def test_cli_export_and_user_errors(tiny_ckpt, tmp_path):
    repo = tmp_path / "repo"
    p = run_builder("export", "--model", str(tiny_ckpt), "--name", "tiny", "--repo", str(repo),
                    "--batch_sizes", "1,2", *CKPT_ARGS)
    assert p.returncode == 0, p.stderr
    assert "exported tiny version 1" in p.stdout and "parity: passed" in p.stdout
    info = json.loads((repo / "tiny/1/assets.extra/build_info.json").read_text())
    assert info["batch_sizes"] == [1, 2]
    # the reproduce line is itself a working command
    p2 = subprocess.run(info["reproduce"].replace("python", sys.executable, 1) + " --overwrite", shell=True,
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p2.returncode == 0, p2.stderr
    # user errors: exit 2, one line, no traceback, nothing written
    for args, text in [
        (["--model", str(tmp_path / "nope")], "--model"),
        (["--model", str(tiny_ckpt), "--version", "1"], "exists"),
        (["--model", str(tiny_ckpt), "--outputs", "embedding"], "did you mean embeddings"),
    ]:
        base = ["export", "--name", "tiny", "--repo", str(repo)]
        extra = [a for a in CKPT_ARGS if True]
        if "--outputs" in args:
            i = extra.index("--outputs")
            del extra[i:i + 2]
        p = run_builder(*base, *extra, *args)
        assert p.returncode == 2, (args, p.stderr)
        err = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
        assert len(err) == 1 and text in err[0], p.stderr
        assert "Traceback" not in p.stderr
    assert layout.list_versions(repo / "tiny") == [1]


def test_cli_help_lists_flags():
    p = run_builder("export", "--help", env={"PAGER": "cat"})
    assert p.returncode == 0
    for flag in ("--model", "--flow", "--feed", "--input_alias", "--batch_sizes", "--optimize", "--version"):
        assert flag in p.stdout + p.stderr, flag


def _spawn_export(tiny_ckpt, repo, pause_at):
    env = {**os.environ, "TFS_BUILDER_TEST_PAUSE_AT": pause_at, "TFS_BUILDER_TEST_PAUSE_SECONDS": "60",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen(
        [sys.executable, "-m", "builder", "export", "--model", str(tiny_ckpt), "--name", "tiny", "--repo",
         str(repo), "--batch_sizes", "1", *CKPT_ARGS], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)


def _wait_paused(proc, pause_at):
    for line in proc.stderr:
        if f"paused at {pause_at}" in line:
            return
    raise AssertionError(f"export never reached {pause_at} (exit {proc.wait()})")


@pytest.mark.parametrize("pause_at", ["before_parity", "before_promote"])
def test_sigkill_mid_export_leaves_no_version_and_next_run_cleans(tiny_ckpt, tmp_path, pause_at):
    repo = tmp_path / "repo"
    proc = _spawn_export(tiny_ckpt, repo, pause_at)
    try:
        _wait_paused(proc, pause_at)
        numeric, staging = _numeric_and_staging(repo / "tiny")
        assert numeric == [] and len(staging) == 1  # work in progress is invisible to TF Serving
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _numeric_and_staging(repo / "tiny")[0] == []
    r = pipeline.export(_opts(tiny_ckpt, repo, batch_sizes=[1]), quiet=True)
    assert r.version == 1
    assert _numeric_and_staging(repo / "tiny") == (["1"], [])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_mid_export_cleans_up(tiny_ckpt, tmp_path, sig):
    repo = tmp_path / "repo"
    proc = _spawn_export(tiny_ckpt, repo, "before_promote")
    try:
        _wait_paused(proc, "before_promote")
        time.sleep(0.2)
        os.kill(proc.pid, sig)
        rc = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 130
    assert _numeric_and_staging(repo / "tiny") == ([], [])


def test_frozen_graph_pinned_to_a_gpu_exports_on_cpu(tmp_path):
    """Graphs from training machines carry device pins; the export must not."""
    import tensorflow as tf

    with tf.Graph().as_default() as g:
        with tf.device("/device:GPU:0"):
            x = tf.compat.v1.placeholder(tf.float32, [None, 3], name="x")
            tf.identity(tf.nn.relu(x) * 3.0, name="y")
    gd = g.as_graph_def()
    assert any(n.device for n in gd.node)
    model = tmp_path / "pinned.pb"
    model.write_bytes(gd.SerializeToString())
    r = pipeline.export(pipeline.ExportOptions(model=str(model), name="p", repo=str(tmp_path / "repo"), outputs=["y"],
                                           batch_sizes=[1]), quiet=True)
    assert r.build_info["parity"]["passed"]
    from builder.core.artifact import graph_defs as saved_model_graph_defs

    assert not any(n.device for n in saved_model_graph_defs(r.path)[0].node)


def test_checkpoint_with_resource_variables(tmp_path):
    """TF1 graphs built with use_resource=True (ReadVariableOp instead of ref variables)."""
    import tensorflow as tf

    v1 = tf.compat.v1
    ckpt = tmp_path / "ckpt"
    with tf.Graph().as_default() as g, v1.Session(graph=g) as sess:
        x = v1.placeholder(tf.float32, [None, 4], name="features")
        w = v1.get_variable("w", [4, 2], use_resource=True, initializer=v1.random_normal_initializer(seed=1))
        tf.nn.softmax(tf.matmul(x, w), name="probs")
        sess.run(v1.global_variables_initializer())
        v1.train.Saver().save(sess, str(ckpt / "model.ckpt"), global_step=3)
    r = pipeline.export(pipeline.ExportOptions(model=str(ckpt), name="res", repo=str(tmp_path / "repo"),
                                           outputs=["probs"], batch_sizes=[1]), quiet=True)
    assert r.build_info["flow"] == "checkpoint" and r.build_info["parity"]["passed"]
    assert r.build_info["signature"]["inputs"]["features"]["shape"] == [-1, 4]
    from builder.core.artifact import graph_defs as saved_model_graph_defs

    ops = {n.op for n in saved_model_graph_defs(r.path)[0].node}
    assert not ops & {"VarHandleOp", "ReadVariableOp", "VariableV2"}


def test_savedmodel_with_tables_filled_by_its_main_op_exports_as_is(tmp_path):
    """A TF1 SavedModel whose lookup table is filled by its main_op (freezing cannot keep that):
    the export keeps the table, its init op and the variables, and serves the source's answers."""
    import tensorflow as tf

    v1 = tf.compat.v1
    sm = tmp_path / "table_sm"
    with tf.Graph().as_default() as g, v1.Session(graph=g) as sess:
        words = v1.placeholder(tf.string, [None], name="words")
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(["a", "b"]), tf.constant([1, 2], tf.int64)), -1)
        ids = tf.identity(table.lookup(words), name="ids")
        sess.run(v1.tables_initializer())
        b = v1.saved_model.Builder(str(sm))
        b.add_meta_graph_and_variables(
            sess, ["serve"], main_op=v1.tables_initializer(),
            signature_def_map={"serving_default": v1.saved_model.predict_signature_def({"words": words},
                                                                                      {"ids": ids})})
        b.save()
    np.savez(tmp_path / "s.npz", words=np.array([b"a", b"b", b"z"]))
    o = pipeline.ExportOptions(model=str(sm), name="t", repo=str(tmp_path / "repo"), batch_sizes=[1],
                               samples=str(tmp_path / "s.npz"))
    r = pipeline.export(o, quiet=True)
    info = r.build_info
    assert info["kept_as_is"] and info["freeze"]["frozen"] is False
    assert info["graph"]["init_op"]["kind"] == "main_op" and info["graph"]["tables"]
    from builder.export.parity import run_saved_model

    out = run_saved_model(r.path, {"words": np.array([b"a", b"b", b"z"], dtype=object)})
    np.testing.assert_array_equal(out["ids"], [1, 2, -1])
    assert _numeric_and_staging(tmp_path / "repo" / "t") == (["1"], [])


def test_exchange_dirs_swaps_atomically(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "f").write_text("new")
    (b / "f").write_text("old")
    assert layout.exchange_dirs(a, b)  # Linux with glibc >= 2.28, as everywhere this runs
    assert (b / "f").read_text() == "new" and (a / "f").read_text() == "old"
    assert not layout.exchange_dirs(tmp_path / "missing", b)

"""Bad input never gives a traceback: OS errors while writing, flow mismatches, aliases that match
nothing, freezing that would lose something. Exit 2, one line naming the path/flag and the fix,
nothing left behind (no staging directory, no empty REPO/NAME/). Also: surgery keeps variables
and tables working in the checkpoint, frozen and savedmodel flows."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from builder.core import artifact
from builder.core.errors import InputError
from builder.export import parity, pipeline
from tests.helpers import ROOT, models, run_builder
from tests.helpers import fidelity_models as fm


def _one_error_line(p: subprocess.CompletedProcess, *fragments: str) -> str:
    err = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert p.returncode == 2, p.stderr[-3000:]
    assert len(err) == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    for f in fragments:
        assert f in err[0], err[0]
    return err[0]


@pytest.fixture(scope="module")
def table_model(tmp_path_factory) -> Path:
    return fm.tf1_table_model(tmp_path_factory.mktemp("table") / "m", use_main_op=True)


@pytest.fixture(scope="module")
def mib_model(tmp_path_factory) -> Path:
    """A TF2 SavedModel with 1 MiB of variables (bigger than the tiny filesystems below)."""
    import tensorflow as tf

    class M(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.ones([2**18], tf.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x):
            return {"y": x * self.w[:4]}

    out = tmp_path_factory.mktemp("mib") / "m"
    m = M()
    tf.saved_model.save(m, str(out), signatures={"serving_default": m.serve})
    return out


# --------------------------------------------------------------------------- OS errors while writing


def test_repo_under_a_file(table_model, tmp_path):
    (tmp_path / "file").write_text("x")
    p = run_builder("export", "--model", str(table_model), "--name", "t", "--repo", str(tmp_path / "file" / "repo"))
    _one_error_line(p, "cannot write", str(tmp_path / "file"), "not a directory")
    assert (tmp_path / "file").read_text() == "x"


@pytest.fixture
def tiny_fs(tmp_path):
    """A 512 KiB tmpfs (root with mount rights), unmounted afterwards."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({p.stderr.strip() or p.returncode}): "
                    "test_disk_full_by_file_size_limit covers a full disk")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_on_a_tiny_filesystem(mib_model, tiny_fs):
    repo = tiny_fs / "repo"
    p = run_builder("export", "--model", str(mib_model), "--name", "m", "--repo", str(repo))
    _one_error_line(p, "cannot write", "No space left on device", "free space")
    assert not repo.exists()  # not even an empty REPO/ or REPO/NAME/
    assert list(tiny_fs.iterdir()) == []


def test_disk_full_by_file_size_limit(tmp_path):
    """Without mount rights a full disk is simulated by RLIMIT_FSIZE (writes fail with EFBIG):
    a 1 MiB frozen graph makes a 1 MiB saved_model.pb, over a 256 KiB limit."""
    import tensorflow as tf

    with tf.Graph().as_default() as g:
        x = tf.compat.v1.placeholder(tf.float32, [None, 4], name="x")
        w = tf.constant(np.ones((2**16, 4), np.float32), name="w")
        tf.matmul(x, w, transpose_b=True, name="y")
    (tmp_path / "g.pb").write_bytes(g.as_graph_def().SerializeToString())

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, 256 << 10))

    repo = tmp_path / "repo"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    p = subprocess.run([sys.executable, "-m", "builder", "export", "--model", str(tmp_path / "g.pb"), "--name", "m",
                        "--repo", str(repo), "--outputs", "y"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env=env, preexec_fn=limit)
    _one_error_line(p, "cannot write", "File too large")
    assert not repo.exists()


def test_read_only_filesystem(table_model, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)], capture_output=True)
        if p.returncode != 0:
            pytest.skip("running as root without mount rights: permissions cannot make a directory read-only")
    else:
        ro.chmod(0o555)
    try:
        p = run_builder("export", "--model", str(table_model), "--name", "t", "--repo", str(ro / "repo"))
        _one_error_line(p, "cannot write", str(ro / "repo"))
        assert "Read-only file system" in p.stderr or "Permission denied" in p.stderr
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(ro)], check=False)
        else:
            ro.chmod(0o755)


def test_failed_export_leaves_no_empty_model_dir(tmp_path):
    model = models.write_tiny_keras(tmp_path / "k.keras")
    p = run_builder("export", "--model", str(model), "--name", "k", "--repo", str(tmp_path / "repo"),
                    "--outputs", "nope")
    _one_error_line(p, "--outputs nope")
    assert not (tmp_path / "repo").exists()
    (tmp_path / "repo2" / "other").mkdir(parents=True)  # an existing repo stays, only our NAME/ goes
    p = run_builder("export", "--model", str(model), "--name", "k", "--repo", str(tmp_path / "repo2"),
                    "--input_alias", "nope=x")
    _one_error_line(p, "--input_alias nope=x", "matches no signature input")
    assert sorted(os.listdir(tmp_path / "repo2")) == ["other"]


def test_flow_mismatch(table_model, tmp_path):
    p = run_builder("export", "--model", str(table_model), "--name", "t", "--repo", str(tmp_path / "r"),
                    "--flow", "keras")
    _one_error_line(p, "--flow keras needs a .keras/.h5 file", "it looks like --flow savedmodel")
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- aliases


@pytest.mark.parametrize("alias", ["features", "serving_default_features:0", "serving_default_features"])
def test_input_alias_by_key_tensor_or_node_in_the_keras_flow(alias, tmp_path):
    model = models.write_tiny_keras(tmp_path / "k.keras")
    r = pipeline.export(pipeline.ExportOptions(model=str(model), name="k", repo=str(tmp_path / "r"),
                                               batch_sizes=[1], input_alias={alias: "rows"},
                                               output_alias={"score": "logits"}), quiet=True)
    sig = r.build_info["signatures"]["serving_default"]
    assert set(sig["inputs"]) == {"rows"} and set(sig["outputs"]) == {"logits"}
    x = np.ones((2, 6), np.float32)
    assert parity.run_saved_model(r.path, {"rows": x})["logits"].shape == (2, 2)


def test_input_alias_in_the_savedmodel_flow_and_unknown_alias(tiny_tf2_sm, tmp_path):
    r = pipeline.export(pipeline.ExportOptions(model=str(tiny_tf2_sm), name="t", repo=str(tmp_path / "r"),
                                               batch_sizes=[1], input_alias={"x": "features"}), quiet=True)
    assert set(r.build_info["signatures"]["serving_default"]["inputs"]) == {"features"}
    assert r.build_info["kept_as_is"] is False  # a SignatureDef edit, variables untouched
    with pytest.raises(InputError, match=r"--output_alias probs=p: 'probs' matches no signature output"):
        pipeline.export(pipeline.ExportOptions(model=str(tiny_tf2_sm), name="t", repo=str(tmp_path / "r"),
                                               output_alias={"probs": "p"}), quiet=True)


# --------------------------------------------------------------------------- freezing decisions


def test_freezing_that_would_lose_a_table_is_refused(table_model, tmp_path):
    for flags, text in ((["--freeze"], "--freeze would lose 1 lookup table"),
                        (["--optimize", "cpu"], "--optimize cpu needs a frozen graph, and freezing would lose")):
        p = run_builder("export", "--model", str(table_model), "--name", "t", "--repo", str(tmp_path / "r"), *flags)
        _one_error_line(p, text, "the default keeps them")
    assert not (tmp_path / "r").exists()


def test_optimize_cpu_needs_one_signature(tmp_path):
    import tensorflow as tf

    class Two(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
        def double(self, x):
            return {"y": x * 2.0}

        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
        def half(self, x):
            return {"y": x / 2.0}

    m = Two()
    tf.saved_model.save(m, str(tmp_path / "m"), signatures={"serving_default": m.double, "half": m.half})
    with pytest.raises(InputError, match=r"--optimize cpu rewrites one signature .*half, serving_default.*--signature"):
        pipeline.export(pipeline.ExportOptions(model=str(tmp_path / "m"), name="m", repo=str(tmp_path / "r"),
                                               optimize="cpu"), quiet=True)
    assert not (tmp_path / "r").exists()


def test_explicit_freeze_keeps_every_signature(tiny_tf2_sm, tmp_path):
    r = pipeline.export(pipeline.ExportOptions(model=str(tiny_tf2_sm), name="t", repo=str(tmp_path / "r"),
                                               batch_sizes=[1], freeze=True), quiet=True)
    assert r.build_info["freeze"] == {"frozen": True, "reason": "asked for", "decided_by": "--freeze"}
    mg = artifact.read_saved_model(r.path).meta_graphs[0]
    assert not {n.op for n in mg.graph_def.node} & {"VarHandleOp", "VariableV2"}
    assert list(mg.signature_def) == ["serving_default"] and not list((r.path / "variables").iterdir())


# --------------------------------------------------------------------------- surgery keeps state working


def _tf1_table_checkpoint(out: Path, asset: bool) -> Path:
    """A TF1 training directory (MetaGraph + checkpoint) whose graph has a lookup table, filled
    from constants or from a vocabulary file in the asset_filepaths collection."""
    import tensorflow as tf

    v1 = tf.compat.v1
    out.mkdir(parents=True)
    with tf.Graph().as_default() as g, v1.Session(graph=g) as sess:
        words = v1.placeholder(tf.string, [None], name="words")
        if asset:
            (out / "vocab.txt").write_text("\n".join(fm.VOCAB) + "\n")
            path = tf.constant(str(out / "vocab.txt"), name="vocab_path")
            v1.add_to_collection(v1.GraphKeys.ASSET_FILEPATHS, path)
            init = tf.lookup.TextFileInitializer(path, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE, tf.int64,
                                                 tf.lookup.TextFileIndex.LINE_NUMBER)
        else:
            init = tf.lookup.KeyValueTensorInitializer(tf.constant(fm.VOCAB), tf.constant([0, 1, 2, 3], tf.int64))
        ids = tf.lookup.StaticHashTable(init, -1).lookup(words)
        w = v1.get_variable("w", [5], initializer=v1.constant_initializer([1.0, 2.0, 3.0, 4.0, 0.0]))
        tf.gather(w, tf.where(ids < 0, tf.fill(tf.shape(ids), tf.constant(4, tf.int64)), ids), name="score")
        sess.run([v1.global_variables_initializer(), v1.tables_initializer()])
        saver = v1.train.Saver()
        saver.save(sess, str(out / "model.ckpt"), global_step=1)
    return out


@pytest.mark.parametrize("asset", [False, True])
def test_checkpoint_flow_keeps_tables_with_a_main_op(tmp_path, asset):
    ckpt = _tf1_table_checkpoint(tmp_path / "ckpt", asset)
    r = pipeline.export(pipeline.ExportOptions(model=str(ckpt), name="c", repo=str(tmp_path / "r"), outputs=["score"],
                                               batch_sizes=[1, 3]), quiet=True)
    info = r.build_info
    assert info["freeze"]["frozen"] is False and "lookup table" in info["freeze"]["reason"]
    assert info["graph"]["init_op"]["kind"] == "main_op" and info["graph"]["variables"] == 1
    assert any("main op" in s for s in info["surgery"])
    if asset:
        assert (r.path / "assets" / "vocab.txt").read_text().split() == fm.VOCAB
        shutil.rmtree(ckpt)  # the export must not need the training directory any more
    out = parity.run_saved_model(r.path, {"words": np.array([b"fish", b"zzz", b"cat"], dtype=object)})
    np.testing.assert_array_equal(out["score"], [4.0, 0.0, 1.0])


def test_frozen_flow_with_a_table_gets_a_main_op(tmp_path):
    import tensorflow as tf

    v1 = tf.compat.v1
    with tf.Graph().as_default() as g:
        words = v1.placeholder(tf.string, [None], name="words")
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(fm.VOCAB), tf.constant([7, 8, 9, 10], tf.int64)), 0)
        tf.identity(table.lookup(words), name="ids")
    (tmp_path / "t.pb").write_bytes(g.as_graph_def().SerializeToString())
    r = pipeline.export(pipeline.ExportOptions(model=str(tmp_path / "t.pb"), name="f", repo=str(tmp_path / "r"),
                                               outputs=["ids"], batch_sizes=[1]), quiet=True)
    assert r.build_info["graph"]["init_op"]["kind"] == "main_op"
    out = parity.run_saved_model(r.path, {"words": np.array([b"dog", b"?"], dtype=object)})
    np.testing.assert_array_equal(out["ids"], [8, 0])


def test_savedmodel_surgery_prunes_outputs_and_keeps_variables(tiny_tf2_sm, tmp_path):
    r = pipeline.export(pipeline.ExportOptions(model=str(tiny_tf2_sm), name="t", repo=str(tmp_path / "r"),
                                               outputs=["logits"], batch_sizes=[1], freeze=False), quiet=True)
    sig = r.build_info["signatures"]["serving_default"]
    assert set(sig["outputs"]) == {"logits"} and set(sig["inputs"]) == {"x"}
    assert r.build_info["freeze"]["decided_by"] == "--nofreeze" and list((r.path / "variables").iterdir())
    import tensorflow as tf

    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    want = tf.saved_model.load(str(tiny_tf2_sm)).signatures["serving_default"](x=tf.constant(x))["logits"]
    np.testing.assert_allclose(parity.run_saved_model(r.path, {"x": x})["logits"], want.numpy(), atol=1e-6)


def test_keras_surgery_rewrites_the_keras_export(tiny_keras, tmp_path):
    """Surgery flags on a Keras model rewrite Keras' own export; the source for parity is that
    export as TF Serving loads it."""
    r = pipeline.export(pipeline.ExportOptions(model=str(tiny_keras), name="k", repo=str(tmp_path / "r"),
                                               outputs=["score"], batch_sizes=[1]), quiet=True)
    info = r.build_info
    assert info["flow"] == "keras" and info["surgery"] and info["parity"]["passed"]
    assert set(info["signatures"]["serving_default"]["outputs"]) == {"score"}


def test_automatic_freeze_that_fails_keeps_the_variables(tiny_ckpt, monkeypatch, tmp_path):
    from builder.core.errors import GraphError
    from builder.load import freeze
    from tests.helpers import CKPT_FLAGS

    def broken(staged):
        raise GraphError("freezing the export failed: simulated")

    monkeypatch.setattr(freeze, "frozen_graph_def", broken)
    r = pipeline.export(pipeline.ExportOptions(model=str(tiny_ckpt), name="c", repo=str(tmp_path / "r"),
                                               batch_sizes=[1], **CKPT_FLAGS), quiet=True)
    assert r.build_info["freeze"]["frozen"] is False and "simulated" in r.build_info["freeze"]["reason"]
    assert r.build_info["parity"]["passed"] and list((r.path / "variables").iterdir())
    with pytest.raises(GraphError, match="simulated"):  # asked for explicitly: the error stands
        pipeline.export(pipeline.ExportOptions(model=str(tiny_ckpt), name="c", repo=str(tmp_path / "r"),
                                               batch_sizes=[1], freeze=True, **CKPT_FLAGS), quiet=True)

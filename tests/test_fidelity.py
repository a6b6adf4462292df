"""Issue 10: serving models built outside the builder export with default flags, keep every
signature with its method name, tables, assets and init op, and answer like the source when
loaded the way TF Serving loads them (TF1 ``loader.load``, in a fresh process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from builder.core import artifact
from builder.export import parity, pipeline
from tests.helpers import fidelity_models as fm
from tests.helpers import run_builder


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("fidelity")
    return {
        "keras_lookup": fm.keras_string_lookup(d / "lookup.keras"),
        "keras_lstm": fm.keras_lstm(d / "lstm.keras"),
        "tf1_examples": fm.tf1_example_model(d / "examples" / "00000123").parent,  # a TF Serving model dir
        "tf1_examples_legacy": fm.tf1_example_model(d / "examples_legacy" / "00000123", use_main_op=False),
        "tf1_table_main_op": fm.tf1_table_model(d / "table_main", use_main_op=True),
        "tf1_table_legacy": fm.tf1_table_model(d / "table_legacy", use_main_op=False),
        "tf2_table_loop": fm.tf2_table_and_loop(d / "tf2"),
    }


@pytest.fixture(scope="module")
def exported(built, tmp_path_factory) -> dict[str, pipeline.ExportResult]:
    repo = tmp_path_factory.mktemp("repo")
    return {name: pipeline.export(pipeline.ExportOptions(model=str(path), name=name, repo=str(repo),
                                                         batch_sizes=[1, 4]), quiet=True)
            for name, path in built.items()}


EXPECTED_SIGNATURES = {
    "keras_lookup": {"serving_default": "tensorflow/serving/predict"},
    "keras_lstm": {"serving_default": "tensorflow/serving/predict"},
    "tf1_examples": {"serving_default": "tensorflow/serving/predict",
                     "regress_x_to_y": "tensorflow/serving/regress",
                     "classify_x_to_y": "tensorflow/serving/classify"},
    "tf1_table_main_op": {"serving_default": "tensorflow/serving/predict"},
    "tf1_table_legacy": {"serving_default": "tensorflow/serving/predict"},
    "tf2_table_loop": {"serving_default": "tensorflow/serving/predict", "count": "tensorflow/serving/predict"},
}
EXPECTED_SIGNATURES["tf1_examples_legacy"] = EXPECTED_SIGNATURES["tf1_examples"]


@pytest.mark.parametrize("name", sorted(EXPECTED_SIGNATURES))
def test_every_signature_is_kept_with_its_method_name(exported, name):
    r = exported[name]
    sm = artifact.read_saved_model(r.path)
    sigs = {k: s.method_name for k, s in sm.meta_graphs[0].signature_def.items() if k != "__saved_model_init_op"}
    assert sigs == EXPECTED_SIGNATURES[name]
    info = r.build_info
    assert sorted(info["kept_signatures"]) == sorted(EXPECTED_SIGNATURES[name])
    assert set(info["parity"]["signatures"]) == set(EXPECTED_SIGNATURES[name])
    assert all(p["passed"] for p in info["parity"]["signatures"].values())
    assert info["freeze"]["frozen"] is False  # kept as the source has it


def test_tables_init_ops_and_assets_survive(exported):
    facts = {n: exported[n].build_info["graph"] for n in exported}
    assert facts["tf1_table_main_op"]["init_op"]["kind"] == "main_op" and facts["tf1_table_main_op"]["tables"]
    assert facts["tf1_table_legacy"]["init_op"]["kind"] == "legacy_init_op"
    assert facts["tf1_examples"]["assets"] and facts["tf1_examples_legacy"]["init_op"]["kind"] == "legacy_init_op"
    assert facts["tf2_table_loop"]["init_op"]["kind"] == "__saved_model_init_op"
    assert facts["keras_lookup"]["tables"]  # StringLookup's table, tracked by Keras' own export
    vocab = exported["tf1_examples"].path / "assets"
    assert [p.read_text().split() for p in vocab.iterdir()] == [fm.VOCAB]


def _tf1_run_in_fresh_process(jobs: list[tuple[Path, str, dict[str, np.ndarray]]]) -> list[dict[str, np.ndarray]]:
    """Load each (version, signature) with tf.compat.v1.saved_model.loader.load, in ONE process
    that never saw a source model, and run it on the given inputs."""
    work = Path(jobs[0][0]).parent.parent / ".fresh"
    work.mkdir(exist_ok=True)
    for i, (_, _, inputs) in enumerate(jobs):
        artifact.write_npz(work / f"{i}.in.npz", inputs)
    spec = [(str(path), sig) for path, sig, _ in jobs]
    code = textwrap.dedent(f"""
        import tensorflow as tf
        from builder.core import artifact
        for i, (path, signature) in enumerate({spec!r}):
            x = artifact.read_npz(f"{work}/{{i}}.in.npz")
            with tf.compat.v1.Session(graph=tf.Graph()) as s:
                mg = tf.compat.v1.saved_model.loader.load(s, ["serve"], path)
                sig = mg.signature_def[signature]
                out = s.run({{k: v.name for k, v in sig.outputs.items()}},
                            {{sig.inputs[k].name: v for k, v in x.items()}})
            artifact.write_npz(f"{work}/{{i}}.out.npz", out)
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, cwd=Path(__file__).resolve().parents[1])
    assert p.returncode == 0, p.stderr[-2000:]
    return [artifact.read_npz(work / f"{i}.out.npz") for i in range(len(jobs))]


def _assert_same(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for k in want:
        w = np.asarray(want[k])
        if w.dtype.kind in "OSU":
            np.testing.assert_array_equal(np.asarray(got[k]).astype(object), w.astype(object))
        else:
            np.testing.assert_allclose(got[k], w, rtol=1e-6, atol=1e-7)


def _example(x: float, kind: str) -> bytes:
    import tensorflow as tf

    f = {"x": tf.train.Feature(float_list=tf.train.FloatList(value=[x])),
         "kind": tf.train.Feature(bytes_list=tf.train.BytesList(value=[kind.encode()]))}
    return tf.train.Example(features=tf.train.Features(feature=f)).SerializeToString()


def _savedmodel_cases() -> dict[str, list[tuple[str, dict[str, np.ndarray]]]]:
    examples = np.array([_example(1.0, "dog"), _example(-2.0, "unknown"), _example(0.5, "fish")], dtype=object)
    words = {"words": np.array([b"dog", b"nope", b"cat"], dtype=object)}
    cases = {
        "tf1_examples": [("classify_x_to_y", {"inputs": examples}), ("regress_x_to_y", {"inputs": examples}),
                         ("serving_default", {"x": np.array([[1.0], [3.0]], np.float32)})],
        "tf1_table_main_op": [("serving_default", words)],
        "tf2_table_loop": [("serving_default", {"words": np.array([b"bird", b"x"], dtype=object)}),
                           ("count", {"n": np.array(5, np.int32)})],
    }
    cases["tf1_examples_legacy"] = cases["tf1_examples"]
    cases["tf1_table_legacy"] = cases["tf1_table_main_op"]
    return cases


@pytest.fixture(scope="module")
def served(built, exported) -> dict[tuple[str, str, int], dict[str, np.ndarray]]:
    """Outputs of the exports, loaded as TF Serving loads them, in a fresh process."""
    keys, jobs = [], []
    for name, cases in _savedmodel_cases().items():
        for signature, inputs in cases:
            keys.append((name, signature, 0))
            jobs.append((exported[name].path, signature, inputs))
    keys.append(("keras_lookup", "serving_default", 0))
    jobs.append((exported["keras_lookup"].path, "serving_default",
                 {"words": np.array([[b"cat", b"zebra"], [b"fish", b"dog"]], dtype=object)}))
    for length in (3, 20):
        keys.append(("keras_lstm", "serving_default", length))
        jobs.append((exported["keras_lstm"].path, "serving_default", {"seq": _seq(length)}))
    return dict(zip(keys, _tf1_run_in_fresh_process(jobs)))


def _seq(length: int) -> np.ndarray:
    return np.random.default_rng(length).standard_normal((2, length, 8)).astype(np.float32)


def test_keras_models_answer_like_keras(built, exported, served):
    import keras
    import tensorflow as tf

    lookup = keras.models.load_model(str(built["keras_lookup"]))
    want = lookup(tf.constant([["cat", "zebra"], ["fish", "dog"]])).numpy()
    np.testing.assert_allclose(served[("keras_lookup", "serving_default", 0)]["score"], want, atol=1e-6)
    lstm = keras.models.load_model(str(built["keras_lstm"]))
    sig = exported["keras_lstm"].build_info["signatures"]["serving_default"]
    assert sig["inputs"]["seq"]["shape"] == [-1, -1, 8]  # variable length kept
    for length in (3, 20):
        got = served[("keras_lstm", "serving_default", length)]["logits"]
        np.testing.assert_allclose(got, lstm(_seq(length)).numpy(), atol=1e-5)


@pytest.mark.parametrize("name", ["tf1_examples", "tf1_examples_legacy", "tf1_table_main_op", "tf1_table_legacy",
                                  "tf2_table_loop"])
def test_savedmodels_answer_like_their_source(built, served, name):
    src = built[name] if name != "tf1_examples" else built[name] / "00000123"
    for signature, inputs in _savedmodel_cases()[name]:
        want = fm.source_outputs_tf1(src, signature, inputs)
        _assert_same(served[(name, signature, 0)], want)
    if name == "tf2_table_loop":
        total = served[(name, "count", 0)]["total"]
        assert float(total) == pytest.approx(0.25 * (0 + 1 + 2 + 3 + 4))  # the loop ran n times
    if name.startswith("tf1_table"):
        np.testing.assert_array_equal(served[(name, "serving_default", 0)]["ids"], [5, -1, 3])  # the table


def test_warmup_uses_the_request_type_of_each_signature(exported):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    r = exported["tf1_examples"]
    kinds: dict[str, set[str]] = {}
    for raw in artifact.iter_tfrecords(r.path / artifact.WARMUP_FILE):
        log = prediction_log_pb2.PredictionLog.FromString(raw)
        kind = log.WhichOneof("log_type")
        req = getattr(log, kind).request
        kinds.setdefault(req.model_spec.signature_name, set()).add(kind)
        if kind in ("classify_log", "regress_log"):
            ex = req.input.example_list.examples[0]
            assert set(ex.features.feature) >= {"x", "x2", "kind"}  # from the graph's ParseExample spec
        else:
            assert tf.make_ndarray(req.inputs["x"]).shape[1:] == (1,)
    assert kinds == {"classify_x_to_y": {"classify_log"}, "regress_x_to_y": {"regress_log"},
                     "serving_default": {"predict_log"}}
    # the scalar signature gets one record set (no batch to vary), the batched one per batch size
    tf2 = exported["tf2_table_loop"]
    per_sig: dict[str, int] = {}
    for raw in artifact.iter_tfrecords(tf2.path / artifact.WARMUP_FILE):
        log = prediction_log_pb2.PredictionLog.FromString(raw)
        per_sig[log.predict_log.request.model_spec.signature_name] = per_sig.get(
            log.predict_log.request.model_spec.signature_name, 0) + 1
    assert per_sig == {"count": 2, "serving_default": 4}


def test_synthesised_inputs_use_table_keys_and_example_specs(exported):
    import tensorflow as tf

    gold = artifact.read_npz(exported["tf1_examples"].path / artifact.GOLDEN_FILE)
    kinds = {tf.train.Example.FromString(b).features.feature["kind"].bytes_list.value[0]
             for b in gold["sig/classify_x_to_y/in/inputs"]}
    assert kinds & {w.encode() for w in fm.VOCAB}  # keys read from the vocabulary asset
    words = artifact.read_golden(exported["keras_lookup"].path).inputs["words"]
    assert {w for w in words.reshape(-1)} & {w.encode() for w in fm.VOCAB}
    count = exported["tf2_table_loop"].build_info["signatures"]["count"]
    assert count["inputs"]["n"]["shape"] == []  # a scalar stays a scalar


def test_build_info_records_kept_signatures_and_per_signature_parity(exported):
    info = exported["tf1_examples"].build_info
    assert info["kept_as_is"] is True and info["flow"] == "savedmodel"
    assert info["source"]["path"].endswith("00000123")  # newest version of a TF Serving model dir
    for key, p in info["parity"]["signatures"].items():
        assert p["passed"] and p["samples"] == 8 and p["tolerance"]["atol_scaled_to_output"], key
    assert info["signatures"]["classify_x_to_y"]["request"] == "classify"
    assert info["parity"]["passed"] is True and "atol" in info["parity"]


def test_variable_length_parity_runs_a_second_size(exported):
    p = exported["keras_lstm"].build_info["parity"]["signatures"]["serving_default"]
    assert p["second_size"] == "passed"


def test_inspect_shows_signatures_init_op_assets_tables(exported):
    r = exported["tf1_examples"]
    p = run_builder("inspect", str(r.path))
    assert p.returncode == 0, p.stderr
    assert "signature 'classify_x_to_y' (tensorflow/serving/classify)" in p.stdout
    assert "signature 'regress_x_to_y' (tensorflow/serving/regress)" in p.stdout
    assert "init op: main_op" in p.stdout and "assets: .00000123-vocab.txt" in p.stdout
    assert "tables: hash_table" in p.stdout
    tf2 = run_builder("inspect", str(exported["tf2_table_loop"].path), "--json")
    doc = json.loads(tf2.stdout)["versions"][0]["meta_graphs"][0]
    assert set(doc["signatures"]) == {"serving_default", "count"}  # not __saved_model_init_op
    assert doc["init_op"]["kind"] == "__saved_model_init_op" and doc["tables"]
    assert doc["unsafe_ops"] == []  # SaveV2/RestoreV2/MergeV2Checkpoints are the saver's own
    assert {"SaveV2", "RestoreV2"} <= {n.op for f in artifact.read_saved_model(exported["tf2_table_loop"].path)
                                       .meta_graphs[0].graph_def.library.function for n in f.node_def}


def test_tf_serving_style_model_dirs_export_with_default_flags(tmp_path):
    """TF Serving's own test models (our replica of saved_model_half_plus_two_tf2_cpu) under
    NAME/00000123: the newest numeric version is taken, as TF Serving takes it."""
    src = fm.tf2_half_plus_two(tmp_path / "saved_model_half_plus_two_tf2_cpu" / "00000123")
    r = pipeline.export(pipeline.ExportOptions(model=str(src.parent), name="hp2", repo=str(tmp_path / "repo"),
                                               batch_sizes=[1, 3]), quiet=True)
    info = r.build_info
    assert sorted(info["kept_signatures"]) == ["classify_x_to_y", "regress_x_to_y2", "serving_default"]
    assert info["graph"]["assets"] == [".foo.txt"] and (r.path / "assets" / ".foo.txt").is_file()
    assert info["signatures"]["serving_default"]["inputs"]["x"]["shape"] == [1]  # fixed size kept
    got = parity.run_saved_model(r.path, {"x": np.array([4.0], np.float32)})
    assert got["y"].tolist() == [4.0]


@pytest.mark.skipif(not os.environ.get("TFS_SERVING_TESTDATA"),
                    reason="set TFS_SERVING_TESTDATA to tensorflow_serving/servables/tensorflow/testdata of a "
                           "TF Serving checkout to run on its own SavedModels")
@pytest.mark.parametrize("name", ["saved_model_half_plus_two_cpu", "saved_model_half_plus_two_tf2_cpu",
                                  "saved_model_half_plus_two_2_versions", "saved_model_half_plus_two_mlmd"])
def test_tf_serving_testdata_exports(name, tmp_path):
    src = Path(os.environ["TFS_SERVING_TESTDATA"]) / name
    r = pipeline.export(pipeline.ExportOptions(model=str(src), name="hp2", repo=str(tmp_path)), quiet=True)
    assert r.build_info["parity"]["passed"] and "serving_default" in r.build_info["kept_signatures"]

"""Serving models built outside the builder, one per class that freezing cannot carry (issue 10).

Each writer builds a real model the way its users build it (Keras 3, TF1 SavedModelBuilder,
TF2 tf.saved_model.save) in well under a second, except the > 2 GiB one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

VOCAB = ["cat", "dog", "bird", "fish"]


def keras_string_lookup(out: Path) -> Path:
    """Keras 3: StringLookup (a lookup table) -> Embedding -> Dense, string input ``words``."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((2,), dtype="string", name="words")
    ids = keras.layers.StringLookup(vocabulary=VOCAB)(inp)
    x = keras.layers.Embedding(len(VOCAB) + 1, 3)(ids)
    x = keras.layers.Flatten()(x)
    outp = keras.layers.Dense(2, name="score")(x)
    model = keras.Model(inp, outp)
    model.save(str(out))
    return out


def keras_lstm(out: Path) -> Path:
    """Keras 3: an LSTM over variable-length sequences (batch, None, 8)."""
    import keras

    keras.utils.set_random_seed(1)
    inp = keras.Input((None, 8), name="seq")
    h = keras.layers.LSTM(5)(inp)
    model = keras.Model(inp, keras.layers.Dense(3, name="logits")(h))
    model.save(str(out))
    return out


def _feature_spec(tf):
    return {"x": tf.io.FixedLenFeature([1], tf.float32),
            "x2": tf.io.FixedLenFeature([1], tf.float32, default_value=[0.0]),
            "kind": tf.io.FixedLenFeature([], tf.string, default_value="")}


def tf1_example_model(out: Path, *, use_main_op: bool = True) -> Path:
    """TF1 Estimator-style SavedModel: input is serialized tf.Example; signatures
    ``classify_x_to_y`` (classify), ``regress_x_to_y`` (regress) - both add the id of the
    ``kind`` feature in a vocabulary table - and ``serving_default`` (predict on the parsed
    ``x``, as TF Serving's half_plus_two), plus an asset file and an init op that reads a vocabulary asset into a
    table (``main_op`` or ``legacy_init_op``). ``out`` may be a TF Serving-style
    ``NAME/00000123`` directory."""
    import tensorflow as tf

    v1 = tf.compat.v1
    asset_src = out.parent / f".{out.name}-vocab.txt"
    asset_src.parent.mkdir(parents=True, exist_ok=True)
    asset_src.write_text("\n".join(VOCAB) + "\n")
    with tf.Graph().as_default() as g, v1.Session(graph=g) as sess:
        a, b = v1.Variable(0.5, name="a"), v1.Variable(2.0, name="b")
        serialized = v1.placeholder(tf.string, [None], name="tf_example")
        parsed = v1.io.parse_example(serialized, _feature_spec(tf))
        x = tf.identity(parsed["x"], name="x")
        asset = tf.constant(str(asset_src), name="vocab_path")
        v1.add_to_collection(v1.GraphKeys.ASSET_FILEPATHS, asset)
        table = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(asset, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE, tf.int64,
                                          tf.lookup.TextFileIndex.LINE_NUMBER), -1)
        kind_id = tf.cast(table.lookup(parsed["kind"]), tf.float32)
        y0 = tf.identity(a * x + b, name="y0")
        y = tf.identity(y0 + tf.expand_dims(kind_id, 1), name="y")
        scores = tf.identity(tf.concat([y, -y], axis=1), name="scores")
        classes = tf.identity(tf.tile(tf.constant([["pos", "neg"]]), [tf.shape(y)[0], 1]), name="classes")
        info = v1.saved_model.utils.build_tensor_info
        sig = v1.saved_model.signature_def_utils.build_signature_def
        sigs = {
            "serving_default": sig({"x": info(x)}, {"y": info(y0)}, v1.saved_model.PREDICT_METHOD_NAME),
            "regress_x_to_y": sig({"inputs": info(serialized)}, {"outputs": info(y)},
                                  v1.saved_model.REGRESS_METHOD_NAME),
            "classify_x_to_y": sig({"inputs": info(serialized)}, {"scores": info(scores), "classes": info(classes)},
                                   v1.saved_model.CLASSIFY_METHOD_NAME),
        }
        sess.run(v1.global_variables_initializer())
        init = v1.tables_initializer()
        builder = v1.saved_model.Builder(str(out))
        builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map=sigs,
                                             assets_collection=v1.get_collection(v1.GraphKeys.ASSET_FILEPATHS),
                                             main_op=init)
        builder.save()
    asset_src.unlink()
    if not use_main_op:
        as_legacy_init_op(out)
    return out


def as_legacy_init_op(path: Path) -> None:
    """TF 2.x's SavedModelBuilder stores ``legacy_init_op`` as the main op; SavedModels written by
    TF 1.x keep it in the ``legacy_init_op`` collection, which loaders still honour. Rewrite the
    collection key so the model is what TF 1.x wrote."""
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString((path / "saved_model.pb").read_bytes())
    cols = sm.meta_graphs[0].collection_def
    cols["legacy_init_op"].CopyFrom(cols["saved_model_main_op"])
    del cols["saved_model_main_op"]
    (path / "saved_model.pb").write_bytes(sm.SerializeToString())


def tf1_table_model(out: Path, *, use_main_op: bool) -> Path:
    """TF1 SavedModel whose only state is a lookup table filled by its init op (``main_op`` or
    ``legacy_init_op``): words -> ids, plus a variable-scaled score."""
    import tensorflow as tf

    v1 = tf.compat.v1
    with tf.Graph().as_default() as g, v1.Session(graph=g) as sess:
        words = v1.placeholder(tf.string, [None], name="words")
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(VOCAB), tf.constant([3, 5, 7, 11], tf.int64)), -1)
        ids = tf.identity(table.lookup(words), name="ids")
        w = v1.Variable(1.5, name="w")
        score = tf.identity(tf.cast(ids, tf.float32) * w, name="score")
        sess.run([v1.global_variables_initializer(), v1.tables_initializer()])
        sig = v1.saved_model.predict_signature_def({"words": words}, {"ids": ids, "score": score})
        builder = v1.saved_model.Builder(str(out))
        builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={"serving_default": sig},
                                             main_op=v1.tables_initializer())
        builder.save()
    if not use_main_op:
        as_legacy_init_op(out)
    return out


def tf2_table_and_loop(out: Path) -> Path:
    """TF2 tf.Module: ``serving_default`` looks words up in a StaticHashTable; ``count`` takes a
    scalar tf.int32 ``n`` that drives a tf.while_loop."""
    import tensorflow as tf

    class M(tf.Module):
        def __init__(self):
            super().__init__()
            self.table = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(tf.constant(VOCAB), tf.constant([1, 2, 3, 4], tf.int64)), 0)
            self.scale = tf.Variable(0.25)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="words")])
        def lookup(self, words):
            ids = self.table.lookup(words)
            return {"ids": ids, "weight": tf.cast(ids, tf.float32) * self.scale}

        @tf.function(input_signature=[tf.TensorSpec([], tf.int32, name="n")])
        def count(self, n):
            i, acc = tf.constant(0), tf.constant(0.0)
            _, acc = tf.while_loop(lambda i, a: i < n, lambda i, a: (i + 1, a + self.scale * tf.cast(i, tf.float32)),
                                   [i, acc])
            return {"total": acc}

    m = M()
    tf.saved_model.save(m, str(out), signatures={"serving_default": m.lookup, "count": m.count})
    return out


def tf2_big_variable(out: Path, gib: float = 2.1) -> Path:
    """TF2 tf.Module holding one float32 variable of ``gib`` GiB (built from tf.zeros, no numpy
    constant) with a few non-zero entries at both ends; ``serving_default`` gathers from it."""
    import tensorflow as tf

    n = int(gib * 2**30 / 4)

    class Big(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.zeros([n], tf.float32), name="w")
            self.w.scatter_nd_update([[0], [1], [n - 2], [n - 1]], [1.0, 2.0, 3.0, 4.0])

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x):
            picked = tf.gather(self.w, [0, 1, n - 2, n - 1])
            return {"y": x * picked}

    m = Big()
    tf.saved_model.save(m, str(out), signatures={"serving_default": m.serve})
    return out


def source_outputs_tf1(path: Path, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A SavedModel's signature run with TF1's loader, as TF Serving loads a copy of it."""
    import tensorflow as tf

    with tf.Graph().as_default() as g, tf.compat.v1.Session(graph=g) as s:
        mg = tf.compat.v1.saved_model.loader.load(s, ["serve"], str(path))
        sig = mg.signature_def[signature]
        return s.run({k: v.name for k, v in sig.outputs.items()},
                     {sig.inputs[k].name: v for k, v in inputs.items()})


def tf2_half_plus_two(out: Path) -> Path:
    """TF Serving's TF2 test model in our own words (``saved_model_half_plus_two_tf2_cpu``): y = a*x
    + b with an asset, a fixed-size [1] predict input, and classify/regress signatures that
    parse tf.Examples - all written with method name predict, as tf.saved_model.save does."""
    import tensorflow as tf

    asset_file = out.parent / ".foo.txt"
    asset_file.parent.mkdir(parents=True, exist_ok=True)
    asset_file.write_text("asset-file-contents")
    spec = {"x": tf.io.FixedLenFeature([1], tf.float32),
            "x2": tf.io.FixedLenFeature([1], tf.float32, default_value=[0.0])}

    class HalfPlusTwo(tf.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = tf.Variable(0.5), tf.Variable(2.0), tf.Variable(3.0)
            self.asset = tf.saved_model.Asset(str(asset_file))

        @tf.function(input_signature=[tf.TensorSpec([1], tf.float32)])
        def predict(self, x):
            return {"y": self.a * x + self.b}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def regress(self, serialized):
            x = tf.io.parse_example(serialized, spec)["x"]
            return {"outputs": self.a * x + self.c}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def classify(self, serialized):
            x = tf.io.parse_example(serialized, spec)["x"]
            return {"scores": self.a * x + self.b}

    m = HalfPlusTwo()
    tf.saved_model.save(m, str(out), signatures={"serving_default": m.predict, "regress_x_to_y2": m.regress,
                                                 "classify_x_to_y": m.classify})
    asset_file.unlink()
    return out

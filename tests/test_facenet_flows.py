"""The built-in FaceNet example (tiny size) through every input flow of the seed tutorial.

Its training graph has what real FaceNet checkpoints have: a queue/ReadFile/PyFunc input pipeline
ending in an Identity named ``input``, and batch-norm moving-average updates (RefSwitch,
AssignSub) inside ``phase_train`` conditionals, which a naive freeze cannot import.
"""

from __future__ import annotations

import numpy as np
import pytest

from builder.export import parity, pipeline

FLAGS = dict(inputs=["input"], outputs=["embeddings"], feed={"phase_train": "false"},
             input_alias={"input": "images"})


@pytest.mark.parametrize("flow", ["checkpoint", "frozen", "savedmodel"])
def test_facenet_example_exports_in_every_flow(facenet_tiny, flow, tmp_path):
    model = {"checkpoint": facenet_tiny["checkpoint_dir"], "frozen": facenet_tiny["frozen"],
             "savedmodel": facenet_tiny["savedmodel"]}[flow]
    flags = dict(FLAGS)
    if flow == "savedmodel":  # inputs/outputs and their keys come from the signature
        flags = dict(feed={"phase_train": "false"})
    r = pipeline.export(pipeline.ExportOptions(model=str(model), name="facenet", repo=str(tmp_path), flow=flow,
                                           batch_sizes=[1, 3], **flags), quiet=True)
    info = r.build_info
    size, dim = facenet_tiny["image_size"], facenet_tiny["embedding_size"]
    assert info["signature"]["inputs"]["images"]["shape"] == [-1, size, size, 3]
    assert info["signature"]["outputs"]["embeddings"]["shape"] == [-1, dim]
    assert info["parity"]["passed"] and info["parity"]["max_abs_diff"] <= 1e-5
    gold = np.load(r.path / "assets.extra/golden.npz")
    out = parity.run_saved_model(r.path, {"images": gold["in/images"]})["embeddings"]
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)  # L2-normalised
    ops = {n.op for n in export_graph_ops(r.path)}
    assert not ops & {"PyFunc", "ReadFile", "RefSwitch", "AssignSub", "VariableV2", "QueueDequeueUpToV2"}


def export_graph_ops(path):
    from builder.core.artifact import graph_defs as saved_model_graph_defs

    return list(saved_model_graph_defs(path)[0].node)


def test_wrong_phase_train_is_visible_in_embeddings(facenet_tiny, tmp_path):
    """A user who folds phase_train=true gets a model whose answers differ clearly."""
    kw = dict(model=str(facenet_tiny["checkpoint_dir"]), name="f", repo=str(tmp_path), batch_sizes=[1])
    ok = pipeline.export(pipeline.ExportOptions(**kw, **FLAGS), quiet=True)
    x = np.load(ok.path / "assets.extra/golden.npz")["in/images"]
    # training mode updates the moving averages each run (a stateful source): only a loose
    # explicit tolerance lets it through, which is the point of this test
    bad = pipeline.export(pipeline.ExportOptions(**kw, **{**FLAGS, "feed": {"phase_train": "true"}}, atol=1.0),
                          quiet=True)
    a = parity.run_saved_model(ok.path, {"images": x})["embeddings"]
    b = parity.run_saved_model(bad.path, {"images": x})["embeddings"]
    cos = (a * b).sum(axis=1)
    assert cos.min() < 0.99

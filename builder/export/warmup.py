"""Warmup records for every kept signature, with the request type TF Serving will receive.

``assets.extra/tf_serving_warmup_requests`` is a TFRecord of ``PredictionLog``; TF Serving
replays it at load (``--enable_model_warmup``) and fails the whole load on one bad record, so a
record is only written in the form the server accepts for that signature:

- ``tensorflow/serving/classify`` with one string input ``inputs`` and outputs among
  ``classes``/``scores`` (rank 2): a ``ClassificationRequest`` of tf.Examples;
- ``tensorflow/serving/regress`` with one string input ``inputs`` and output ``outputs``: a
  ``RegressionRequest``;
- anything else (TF Serving's Predict accepts all three method names): a ``PredictRequest``.

Batched signatures get records for every ``--batch_sizes`` entry; others (scalar or fixed-size
inputs) one record set. The total stays within TF Serving's 1000-record limit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from builder.core import artifact
from builder.core.model import CLASSIFY, REGRESS, Signature
from builder.export.samples import batch_of


def request_kind(sig: Signature) -> str:
    """``classify``, ``regress`` or ``predict``: which API TF Serving can run on ``sig``."""
    ins = {t.alias: t for t in sig.inputs}
    outs = {t.alias: t for t in sig.outputs}
    examples_in = set(ins) == {"inputs"} and ins["inputs"].dtype == "string"
    if sig.method_name == CLASSIFY and examples_in and outs and set(outs) <= {"classes", "scores"}:
        if all(t.shape is None or len(t.shape) == 2 for t in outs.values()):
            return "classify"
    if sig.method_name == REGRESS and examples_in and set(outs) == {"outputs"}:
        shape = outs["outputs"].shape
        if shape is None or len(shape) == 1 or (len(shape) == 2 and shape[1] in (None, 1)):
            return "regress"
    return "predict"


def batched_inputs(sig: Signature) -> set[str]:
    return {t.alias for t in sig.inputs if t.batched}


def records(name: str, sig: Signature, inputs: dict[str, np.ndarray], batch_sizes: list[int],
            per_batch: int) -> list[bytes]:
    """Serialized PredictionLogs for one signature (batch size 0: the inputs as they are)."""
    batched = batched_inputs(sig)
    sizes = batch_sizes if batched else [0]
    out = []
    for size in sizes:
        batch = batch_of(inputs, size, batched) if size else inputs
        out += [_log(name, sig, batch).SerializeToString()] * per_batch
    return out


def _log(name: str, sig: Signature, batch: dict[str, np.ndarray]) -> Any:
    import tensorflow as tf
    from tensorflow_serving.apis import (
        classification_pb2,
        input_pb2,
        model_pb2,
        predict_pb2,
        prediction_log_pb2,
        regression_pb2,
    )

    spec = model_pb2.ModelSpec(name=name, signature_name=sig.key)
    kind = request_kind(sig)
    if kind == "predict":
        req = predict_pb2.PredictRequest(model_spec=spec)
        for k, v in batch.items():
            req.inputs[k].CopyFrom(tf.make_tensor_proto(v))
        return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=req))
    examples = [tf.train.Example.FromString(bytes(b)) for b in np.asarray(batch["inputs"]).reshape(-1)]
    inp = input_pb2.Input(example_list=input_pb2.ExampleList(examples=examples))
    if kind == "classify":
        creq = classification_pb2.ClassificationRequest(model_spec=spec, input=inp)
        return prediction_log_pb2.PredictionLog(classify_log=prediction_log_pb2.ClassifyLog(request=creq))
    rreq = regression_pb2.RegressionRequest(model_spec=spec, input=inp)
    return prediction_log_pb2.PredictionLog(regress_log=prediction_log_pb2.RegressLog(request=rreq))


def write_warmup(path: Path, name: str, signatures: dict[str, Signature],
                 samples: dict[str, dict[str, np.ndarray]], batch_sizes: list[int], per_batch: int,
                 max_batch: dict[str, int] | None = None) -> int:
    """Write the warmup file for every signature that has samples; returns the record count.
    ``max_batch`` caps the batch sizes of signatures that only run that many rows."""
    keys = [k for k in signatures if k in samples]
    sizes = {k: sorted({min(b, (max_batch or {}).get(k, b)) for b in batch_sizes}) for k in keys}
    slots = sum(len(sizes[k]) if batched_inputs(signatures[k]) else 1 for k in keys) or 1
    per_batch = max(1, min(per_batch, artifact.MAX_WARMUP_RECORDS // slots))
    recs: list[bytes] = []
    for key in keys:
        recs += records(name, signatures[key], samples[key], sizes[key], per_batch)
    return artifact.write_tfrecords(path, recs[: artifact.MAX_WARMUP_RECORDS])


def request_kinds(signatures: dict[str, Signature]) -> dict[str, str]:
    return {k: request_kind(s) for k, s in signatures.items()}

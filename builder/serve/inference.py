"""Classify, Regress and MultiInference on one servable, as TF Serving's classifier.cc,
regressor.cc and multi_inference.cc do them (same checks, same order, same error text).

Why not reuse predict: these APIs feed one DT_STRING tensor of serialized ``tf.Example``s to the
signature's ``inputs`` and interpret fixed output keys (``classes`` / ``scores``, ``outputs``),
with checks of their own on the outputs' shapes and types. With TF Serving's default
``--enable_signature_method_name_check=false`` a signature of the wrong kind is judged by its
structure (input/output keys), not its ``method_name``; with the flag on, by the method name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from builder.serve.status import RpcStatus, invalid

CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"
PREDICT = "tensorflow/serving/predict"
DEFAULT_SIGNATURE = "serving_default"

RunFn = Callable[[dict[str, Any], list[str]], list[Any]]  # feeds {tensor: array}, fetches -> values


@dataclass
class Classifications:
    """Per example: (label bytes or None, score or None) per class."""

    rows: list[list[tuple[bytes | None, float | None]]]


@dataclass
class Regressions:
    values: list[float]


def _debug(sig: Any) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(sig)


def find_signature(signatures: dict[str, Any], name: str, missing: str) -> Any:
    key = name or DEFAULT_SIGNATURE
    if key not in signatures:
        raise invalid(f"{missing}{key}")
    return signatures[key]


def classification_tensors(sig: Any, method_check: bool) -> tuple[str, list[str]]:
    """PreProcessClassification -> (input tensor, [classes tensor?, scores tensor?])."""
    if method_check and sig.method_name != CLASSIFY:
        raise invalid(f"Expected classification signature method_name to be {CLASSIFY}. Was: {sig.method_name}")
    if len(sig.inputs) != 1:
        raise invalid("Expected one input Tensor.")
    if len(sig.outputs) not in (1, 2):
        raise invalid(f"Expected one or two output Tensors, found {len(sig.outputs)}")
    if "inputs" not in sig.inputs:
        raise invalid(f"No classification inputs found in SignatureDef: {_debug(sig)}")
    if "classes" not in sig.outputs and "scores" not in sig.outputs:
        raise invalid('Expected classification signature outputs to contain at least one of "classes" or '
                      f'"scores". Signature was: {_debug(sig)}')
    return sig.inputs["inputs"].name, [sig.outputs[k].name for k in ("classes", "scores") if k in sig.outputs]


def regression_tensors(sig: Any, method_check: bool) -> tuple[str, list[str]]:
    """PreProcessRegression -> (input tensor, [outputs tensor])."""
    if method_check and sig.method_name != REGRESS:
        raise invalid(f"Expected regression signature method_name to be {REGRESS}. Was: {sig.method_name}")
    if len(sig.inputs) != 1:
        raise invalid("Expected one input Tensor.")
    if len(sig.outputs) != 1:
        raise invalid("Expected one output Tensor.")
    if "inputs" not in sig.inputs:
        raise invalid(f"No regression inputs found in SignatureDef: {_debug(sig)}")
    if "outputs" not in sig.outputs:
        raise invalid(f"No regression outputs found in SignatureDef: {_debug(sig)}")
    return sig.inputs["inputs"].name, [sig.outputs["outputs"].name]


def _shape(arr: Any) -> str:
    return "[" + ",".join(str(d) for d in arr.shape) + "]"


def _dtype_enum(arr: Any) -> str:
    """DataType_Name of an output array (DT_FLOAT, DT_DOUBLE, DT_STRING, ...)."""
    import tensorflow as tf
    from tensorflow.core.framework import types_pb2

    dt = tf.string if arr.dtype.kind in "OSU" else tf.dtypes.as_dtype(arr.dtype)
    return types_pb2.DataType.Name(dt.as_datatype_enum)


def _check_classes(classes: Any, n: int) -> None:
    if classes.ndim != 2:
        raise invalid(f"Expected Tensor shape: [batch_size num_classes] but got {_shape(classes)}")
    if classes.dtype.kind not in "OSU":
        raise invalid(f"Expected classes Tensor of DT_STRING. Got: {_dtype_enum(classes)}")
    if classes.shape[0] != n:
        raise invalid(f"Expected classes output batch size of {n}. Got: {classes.shape[0]}")


def _check_scores(scores: Any, n: int) -> None:
    if scores.ndim != 2:
        raise invalid(f"Expected Tensor shape: [batch_size num_classes] but got {_shape(scores)}")
    if scores.dtype.name != "float32":
        raise invalid(f"Expected scores Tensor of DT_FLOAT. Got: {_dtype_enum(scores)}")
    if scores.shape[0] != n:
        raise invalid(f"Expected scores output batch size of {n}. Got: {scores.shape[0]}")


def classification_result(sig: Any, n: int, fetched: dict[str, Any]) -> Classifications:
    """PostProcessClassificationResult."""
    classes = fetched.get(sig.outputs["classes"].name) if "classes" in sig.outputs else None
    scores = fetched.get(sig.outputs["scores"].name) if "scores" in sig.outputs else None
    if classes is not None:
        _check_classes(classes, n)
    if scores is not None:
        _check_scores(scores, n)
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise invalid(f"Tensors class and score should match in dim_size(1). Got {classes.shape[1]} vs. "
                      f"{scores.shape[1]}")
    width = (classes if classes is not None else scores).shape[1]
    rows = []
    for i in range(n):
        rows.append([(bytes(classes[i, c]) if classes is not None else None,
                      float(scores[i, c]) if scores is not None else None) for c in range(width)])
    return Classifications(rows)


def regression_result(sig: Any, n: int, fetched: dict[str, Any]) -> Regressions:
    """PostProcessRegressionResult."""
    out = fetched.get(sig.outputs["outputs"].name)
    if out is None:
        raise invalid(f"Could not find output tensor '{sig.outputs['outputs'].name}'")
    if not (out.ndim == 1 or (out.ndim == 2 and out.shape[1] == 1)):
        raise invalid("Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
                      f"{_shape(out)}")
    if out.shape[0] != n:
        raise invalid(f"Input batch size did not match output batch size: {n} vs. {out.shape[0]}")
    if out.dtype.name != "float32":
        raise invalid(f"Expected output Tensor of DT_FLOAT.  Got: {_dtype_enum(out)}")
    if out.size != n:
        raise invalid(f"Expected output batch size to be {n}.  Got: {out.size}")
    return Regressions([float(v) for v in out.reshape(-1)])


def _run(run: RunFn, inputs: list[str], serialized: Any, fetches: list[str]) -> dict[str, Any]:
    names = sorted(set(fetches))
    return dict(zip(names, run({name: serialized for name in inputs}, names), strict=True))


def classify(signatures: dict[str, Any], run: RunFn, signature_name: str, serialized: Any,
             method_check: bool = False) -> Classifications:
    """RunClassify on one servable."""
    sig = find_signature(signatures, signature_name, "No signature was found with the name: ")
    input_name, fetches = classification_tensors(sig, method_check)
    return classification_result(sig, len(serialized), _run(run, [input_name], serialized, fetches))


def regress(signatures: dict[str, Any], run: RunFn, signature_name: str, serialized: Any,
            method_check: bool = False) -> Regressions:
    """RunRegress on one servable."""
    sig = find_signature(signatures, signature_name, "No signature was found with the name: ")
    input_name, fetches = regression_tensors(sig, method_check)
    return regression_result(sig, len(serialized), _run(run, [input_name], serialized, fetches))


@dataclass
class Task:
    model: str
    signature_name: str
    method_name: str


def check_tasks(tasks: list[Task]) -> None:
    """The model-name rules of TensorFlowMultiInferenceRunner::Infer."""
    model = ""
    for t in tasks:
        if not t.model:
            raise invalid("Found ModelSpec with an empty model name.")
        if model and t.model != model:
            raise invalid("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
        model = t.model


def multi_inference(signatures: dict[str, Any], run: RunFn, tasks: list[Task], serialized: Any,
                    method_check: bool = False) -> list[Classifications | Regressions]:
    """One session run feeding every task's input tensor, then each task's post-processing."""
    check_tasks(tasks)
    seen: set[str] = set()
    inputs: set[str] = set()
    fetches: set[str] = set()
    for t in tasks:
        key = t.signature_name or DEFAULT_SIGNATURE
        if key in seen:
            raise invalid(f"Duplicate evaluation of signature: {key}")
        seen.add(key)
        sig = find_signature(signatures, key, "Requested signature not found in model graph: ")
        if t.method_name == CLASSIFY:
            name, outs = classification_tensors(sig, method_check)
        elif t.method_name == REGRESS:
            name, outs = regression_tensors(sig, method_check)
        else:
            raise RpcStatus("UNIMPLEMENTED", f"Unsupported signature method_name: {t.method_name}")
        inputs.add(name)
        fetches.update(outs)
    fetched = _run(run, sorted(inputs), serialized, sorted(fetches))
    results: list[Classifications | Regressions] = []
    for t in tasks:
        sig = signatures[t.signature_name or DEFAULT_SIGNATURE]
        post = classification_result if t.method_name == CLASSIFY else regression_result
        results.append(post(sig, len(serialized), fetched))
    return results

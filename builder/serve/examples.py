"""``tf.Example`` input for Classify / Regress / MultiInference, built as TF Serving builds it.

REST side (json_tensor.cc ``FillClassifyRegressRequestFromJson``): ``{"signature_name",
"context": {...}, "examples": [{feature: value | [values] | {"b64": ...}}, ...]}``; a JSON
string is a bytes feature, a number with a fraction or exponent a float feature, an integer (or
true/false) an int64 feature. gRPC side: the request's ``Input`` (``example_list`` or
``example_list_with_context``). Both end as one string tensor of serialized examples, the
context's bytes prepended to every example's (util.cc ``InputToSerializedExampleTensor``) -
protobuf merging, so an example's own feature wins over a context feature of the same name.
"""

from __future__ import annotations

from typing import Any

from builder.serve.codec import _is_b64, _json_str, _json_type, b64decode
from builder.serve.jsonstream import LazyArray
from builder.serve.status import invalid

_KIND_NAMES = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64", None: "UNKNOWN"}


def _incompatible(name: str, feature: Any) -> Exception:
    return invalid(f"Unexpected element type in feature: {name} expecting type: "
                   f"{_KIND_NAMES[feature.WhichOneof('kind')]}")


def _add_value(v: Any, name: str, feature: Any) -> None:
    """AddValueToFeature: one JSON value appended to a Feature of a compatible kind."""
    kind = feature.WhichOneof("kind")
    if isinstance(v, bool) or (isinstance(v, int) and -(2**63) <= v < 2**63):
        if kind not in (None, "int64_list"):
            raise _incompatible(name, feature)
        feature.int64_list.value.append(int(v))
    elif isinstance(v, int) and 0 <= v < 2**64:
        raise invalid(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
    elif isinstance(v, (int, float)):
        if kind not in (None, "float_list"):
            raise _incompatible(name, feature)
        try:
            feature.float_list.value.append(float(v))
        except OverflowError:
            raise invalid("JSON Parse error: Number too big to be stored in double.") from None
    elif isinstance(v, str) or (_is_b64(v) and isinstance(v["b64"], str)):
        if kind not in (None, "bytes_list"):
            raise _incompatible(name, feature)
        feature.bytes_list.value.append(v.encode("utf-8") if isinstance(v, str) else b64decode(v["b64"]))
    else:
        raise invalid(f"Feature: {name} has element with unexpected JSON type: {_json_type(v)}")


def example_from_json(value: Any) -> bytes:
    """MakeExampleFromJsonObject -> the serialized ``tf.Example``."""
    from tensorflow.core.example import example_pb2, feature_pb2

    if not isinstance(value, dict):
        raise invalid(f"Example must be JSON object but got JSON {_json_type(value)}")
    ex = example_pb2.Example()
    for name, content in value.items():
        feature = feature_pb2.Feature()
        for v in content if isinstance(content, list) else [content]:
            _add_value(v, name, feature)
        ex.features.feature[name].CopyFrom(feature)
    return ex.SerializeToString()


def examples_from_doc(doc: dict) -> tuple[bytes, list[bytes]]:
    """A parsed ``:classify`` / ``:regress`` body -> (context bytes, serialized examples)."""
    context = example_from_json(doc["context"]) if "context" in doc else b""
    examples = doc.get("examples")
    if "examples" not in doc:
        # TF Serving says "classify" for :regress too (one template serves both).
        raise invalid(f"JSON Value: {_json_str(doc)} When method is classify, key 'examples' is expected and "
                      "was not found")
    if not isinstance(examples, (list, LazyArray)):
        raise invalid(f"JSON Value: {_json_str(doc)} Expecting 'examples' value to be an list/array")
    if isinstance(examples, LazyArray):
        if examples.empty():
            raise invalid(f"JSON Value: {_json_str(doc)} 'examples' value is an empty array")
        return context, [example_from_json(e) for _, group, _ in examples.groups() for e in group]
    if not examples:
        raise invalid(f"JSON Value: {_json_str(doc)} 'examples' value is an empty array")
    return context, [example_from_json(e) for e in examples]


def examples_from_input(inp: Any) -> tuple[bytes, list[bytes]]:
    """A gRPC ``tensorflow.serving.Input`` -> (context bytes, serialized examples)."""
    kind = inp.WhichOneof("kind")
    if kind == "example_list":
        return b"", [e.SerializeToString() for e in inp.example_list.examples]
    if kind == "example_list_with_context":
        ctx = inp.example_list_with_context
        return ctx.context.SerializeToString(), [e.SerializeToString() for e in ctx.examples]
    return b"", []


def serialized_tensor(context: bytes, examples: list[bytes]) -> Any:
    """The DT_STRING [num_examples] tensor TF Serving feeds ("Input is empty." if none)."""
    import numpy as np

    if not examples:
        raise invalid("Input is empty.")
    out = np.empty(len(examples), dtype=object)
    out[:] = [context + e for e in examples] if context else examples
    return out

"""JSON <-> tensors in TF Serving's REST formats, following ``tensorflow_serving/util/json_tensor.cc``.

Why copy json_tensor.cc's rules and wording: a client written against TF Serving must get the same
answer and the same error text here. Request side: ``{"instances": [...]}`` (row format, every
named input shares the batch dimension) or ``{"inputs": ...}`` (columnar), ``{"b64": ...}`` for
binary strings, dense shapes checked level by level. Response side: ``{"predictions": ...}`` /
``{"outputs": ...}``; string outputs whose alias ends in ``_bytes`` go out as ``{"b64": ...}``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from typing import Any

from builder.serve.status import RpcStatus


def _json_str(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"))[:200]


def _json_type(v: Any) -> str:
    if v is None:
        return "Null"
    if v is True:
        return "True"
    if v is False:
        return "False"
    if isinstance(v, str):
        return "String"
    if isinstance(v, (int, float)):
        return "Number"
    if isinstance(v, list):
        return "Array"
    return "Object"


def _is_b64(v: Any) -> bool:
    return isinstance(v, dict) and len(v) == 1 and "b64" in v


def _dense_shape(v: Any) -> list[int]:
    shape = []
    while isinstance(v, list):
        shape.append(len(v))
        if not v:
            break
        v = v[0]
    return shape


def _leaf(v: Any, dtype: Any) -> Any:
    """One JSON leaf -> a Python value of the tensor dtype, or TF Serving's TypeError text."""
    import numpy as np

    def type_error() -> RpcStatus:
        return RpcStatus(
            "INVALID_ARGUMENT",
            f"JSON Value: {_json_str(v)} Type: {_json_type(v)} is not of expected type: "
            f"{tf_dtype_name(dtype)}",
        )

    if dtype == np.object_:
        if isinstance(v, str):
            return v.encode("utf-8")
        if _is_b64(v):
            if not isinstance(v["b64"], str):
                raise RpcStatus("INVALID_ARGUMENT",
                                f"JSON Value: {_json_str(v)} not formatted correctly for base64 data")
            try:
                return base64.b64decode(v["b64"], validate=True)
            except (binascii.Error, ValueError):
                raise RpcStatus("INVALID_ARGUMENT", "Unable to base64 decode") from None
        raise type_error()
    _check_json_dtype(v, dtype)
    kind = np.dtype(dtype).kind
    if kind == "b":
        if isinstance(v, bool):
            return v
        raise type_error()
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise type_error()
    if kind in "iu":
        if not isinstance(v, int):
            raise type_error()
        info = np.iinfo(dtype)
        if not info.min <= v <= info.max:
            raise type_error()
    return v


# The tensor types json_tensor.cc converts from JSON; anything else is UNIMPLEMENTED there.
_JSON_DTYPES = frozenset({"float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint32",
                          "uint64", "bool", "object"})


def _check_json_dtype(v: Any, dtype: Any) -> None:
    import numpy as np

    name = "object" if dtype == np.object_ else np.dtype(dtype).name
    if name not in _JSON_DTYPES:
        raise RpcStatus("UNIMPLEMENTED",
                        f"Conversion of JSON Value: {_json_str(v)} to type: {tf_dtype_name(dtype)}")


def _fill(v: Any, level: int, shape: list[int], dtype: Any, out: list) -> None:
    rank = len(shape)
    if not isinstance(v, list):
        if level != rank:
            raise RpcStatus(
                "INVALID_ARGUMENT",
                f"JSON Value: {_json_str(v)} found at incorrect level: {level + 1} in the JSON "
                f"DOM. Expected at level: {rank}",
            )
        out.append(_leaf(v, dtype))
        return
    if level >= rank:
        raise RpcStatus("INVALID_ARGUMENT",
                        f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(v) != shape[level]:
        raise RpcStatus(
            "INVALID_ARGUMENT",
            f"Encountered list at unexpected size: {len(v)} at level: {level} expected size: "
            f"{shape[level]}",
        )
    for item in v:
        _fill(item, level + 1, shape, dtype, out)


def json_to_array(value: Any, dtype: Any, may_have_bools: bool = True) -> Any:
    """A JSON value (nested lists / scalar / b64 object) -> numpy array of ``dtype``, with
    json_tensor.cc's checks (dense shape, value types). Numeric lists take a vectorised path."""
    import numpy as np

    _check_json_dtype(value, dtype)
    if dtype != np.object_ and isinstance(value, list) and not may_have_bools:
        try:
            arr = np.asarray(value)
        except (ValueError, OverflowError):
            arr = None
        if arr is not None and arr.dtype.kind in "fiu" and list(arr.shape) == _dense_shape(value):
            kind = np.dtype(dtype).kind
            if kind == "f" or (kind in "iu" and arr.dtype.kind in "iu"):
                if kind in "iu" and arr.size:
                    info = np.iinfo(dtype)
                    if arr.min() < info.min or arr.max() > info.max:
                        arr = None
                if arr is not None:
                    return arr.astype(dtype, copy=False)
    shape = _dense_shape(value)
    flat: list = []
    _fill(value, 0, shape, dtype, flat)
    if dtype == np.object_:
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        return out.reshape(shape)
    return np.array(flat, dtype=dtype).reshape(shape)


_TF_DTYPE_NAMES = {"float32": "float", "float64": "double", "float16": "half", "object": "string"}


def tf_dtype_name(dtype: Any) -> str:
    """numpy dtype -> TensorFlow's DataTypeString spelling, as TF Serving prints it."""
    import numpy as np

    name = "object" if dtype == np.object_ else np.dtype(dtype).name
    return _TF_DTYPE_NAMES.get(name, name)


def parse_predict_json(body: bytes, input_dtypes: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """REST predict body -> ({alias: array}, "row"|"columnar"). ``input_dtypes`` is the chosen
    signature's inputs (alias -> numpy dtype; object for strings)."""
    return predict_inputs_from_doc(parse_json_object(body), input_dtypes,
                                   b"true" in body or b"false" in body)


def predict_inputs_from_doc(doc: dict, input_dtypes: dict[str, Any],
                            may_have_bools: bool = True) -> tuple[dict[str, Any], str]:
    """A parsed predict body -> inputs. ``may_have_bools=False`` (the raw body holds no
    true/false token) allows the vectorised numeric path, which cannot tell 1 from true."""
    instances, inputs = doc.get("instances"), doc.get("inputs")
    if "instances" in doc and "inputs" in doc:
        raise RpcStatus("INVALID_ARGUMENT",
                        f"JSON Value: {_json_str(doc)} Not formatted correctly expecting only one "
                        "of 'inputs' or 'instances' keys to exist ")
    names = sorted(input_dtypes)
    if "instances" in doc:
        if not isinstance(instances, list):
            raise RpcStatus("INVALID_ARGUMENT",
                            f"JSON Value: {_json_str(doc)} Expecting 'instances' to be an list/array")
        if not instances:
            raise RpcStatus("INVALID_ARGUMENT",
                            f"JSON Value: {_json_str(doc)} No values in 'instances' array")
        return _rows(instances, input_dtypes, names, may_have_bools), "row"
    if "inputs" in doc:
        if not isinstance(inputs, dict) or _is_b64(inputs):
            if len(names) > 1:
                raise RpcStatus("INVALID_ARGUMENT",
                                "inputs is a plain value/list, but expecting an object as multiple "
                                "input tensors required as per tensorinfo_map")
            return {names[0]: json_to_array(inputs, input_dtypes[names[0]], may_have_bools)}, "columnar"
        out = {}
        for name in names:
            if name not in inputs:
                raise RpcStatus("INVALID_ARGUMENT", f"Missing named input: {name} in 'inputs' object.")
            out[name] = json_to_array(inputs[name], input_dtypes[name], may_have_bools)
        return out, "columnar"
    raise RpcStatus("INVALID_ARGUMENT", "Missing 'inputs' or 'instances' key")


def parse_json_object(body: bytes) -> dict:
    if not body or not body.strip():
        raise RpcStatus("INVALID_ARGUMENT", "JSON Parse error: The document is empty")
    try:
        doc = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise RpcStatus("INVALID_ARGUMENT",
                        f"JSON Parse error: Invalid encoding in string. at offset: {e.start}") from None
    except json.JSONDecodeError as e:
        raise RpcStatus("INVALID_ARGUMENT",
                        f"JSON Parse error: {e.msg} at offset: {e.pos}") from None
    if not isinstance(doc, dict):
        raise RpcStatus("INVALID_ARGUMENT", f"JSON Value: {_json_str(doc)} Is not object")
    if "signature_name" in doc and not isinstance(doc["signature_name"], str):
        raise RpcStatus("INVALID_ARGUMENT",
                        f"JSON Value: {_json_str(doc)} not formatted correctly. 'signature_name' "
                        "key must be a string value.")
    return doc


def _rows(instances: list, dtypes: dict[str, Any], names: list[str], may_have_bools: bool) -> dict:
    """Row format: each element of "instances" is one batch item (a value, or an object keyed by
    input name); items are stacked into one tensor per input (FillTensorMapFromInstancesList)."""
    import numpy as np

    first = instances[0]
    objects = isinstance(first, dict) and not _is_b64(first)
    if not objects and len(names) > 1:
        raise RpcStatus("INVALID_ARGUMENT",
                        "instances is a plain list, but expecting list of objects as multiple "
                        "input tensors required as per tensorinfo_map")
    if not objects and dtypes[names[0]] != np.object_ and not may_have_bools:
        try:  # vectorised path; any irregularity falls through to the element-wise checks
            arr = json_to_array(instances, dtypes[names[0]], may_have_bools=False)
            if arr.ndim >= 1 and arr.shape[0] == len(instances):
                return {names[0]: arr}
        except RpcStatus:
            pass
    per_name: dict[str, list] = {n: [] for n in names}
    shapes: dict[str, list[int]] = {}
    for i, elem in enumerate(instances):
        is_obj = isinstance(elem, dict) and not _is_b64(elem)
        if objects and not is_obj:
            raise RpcStatus("INVALID_ARGUMENT", f"Expecting object but got list at item {i} of input list")
        if not objects and is_obj:
            raise RpcStatus("INVALID_ARGUMENT",
                            f"Expecting value/list but got object at item {i} of input list")
        items = elem.items() if objects else [(names[0], elem)]
        for name, value in items:
            per_name[name].append(_instance_item(i, name if objects else None, value, dtypes, shapes,
                                                 may_have_bools))
        if objects and set(elem) != set(names):
            raise RpcStatus(
                "INVALID_ARGUMENT",
                f"Failed to process element: {i} of 'instances' list. JSON object: "
                f"{_json_str(elem)} keys must be equal to: {','.join(names)}",
            )
    return {n: np.stack(v) for n, v in per_name.items()}


def _instance_item(i: int, key: str | None, value: Any, dtypes: dict[str, Any],
                   shapes: dict[str, list[int]], may_have_bools: bool) -> Any:
    """One named value of one instance -> array, checked against the first instance's shape
    (AddInstanceItem); errors carry the element index as TF Serving words them."""
    import numpy as np

    name = key if key is not None else next(iter(sorted(dtypes)))
    try:
        if name not in dtypes:
            raise RpcStatus("INVALID_ARGUMENT", f"JSON object: does not have named input: {name}")
        arr = json_to_array(value, dtypes[name], may_have_bools)
        want = shapes.setdefault(name, list(arr.shape))
        if int(np.prod(want)) != arr.size:
            raise RpcStatus("INVALID_ARGUMENT", f"Expecting tensor size: {int(np.prod(want))} but got: {arr.size}")
        if want != list(arr.shape):
            raise RpcStatus("INVALID_ARGUMENT",
                            f"Expecting shape {shape_str(want)} but got: {shape_str(arr.shape)}")
        return arr
    except RpcStatus as e:
        where = f" key: {key}" if key is not None else ""
        raise RpcStatus(
            "INVALID_ARGUMENT",
            f"Failed to process element: {i}{where} of 'instances' list. Error: INVALID_ARGUMENT: {e.message}",
        ) from None


def shape_str(shape: Iterable[int]) -> str:
    return "[" + ",".join(str(int(d)) for d in shape) + "]"


def _jsonable(arr: Any, alias: str) -> Any:
    """numpy -> JSON value; string tensors whose alias ends in _bytes go out as {"b64": ...}
    (json_tensor.cc IsNamedTensorBytes), other strings as UTF-8 text."""
    import numpy as np

    if arr.dtype == np.object_ or arr.dtype.kind == "S":
        as_b64 = alias.endswith("_bytes")
        flat = [
            {"b64": base64.b64encode(bytes(x)).decode("ascii")} if as_b64
            else (x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x))
            for x in arr.reshape(-1)
        ]
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        return out.reshape(arr.shape).tolist()
    if arr.dtype.kind == "f" and arr.dtype.itemsize < 4:
        arr = arr.astype(np.float32)
    return arr.tolist()


def predict_response_json(outputs: dict[str, Any], fmt: str) -> dict:
    """Outputs -> TF Serving's {"predictions": ...} (row) or {"outputs": ...} (columnar)."""
    if fmt == "columnar":
        if len(outputs) == 1:
            (alias, arr), = outputs.items()
            return {"outputs": _jsonable(arr, alias)}
        return {"outputs": {a: _jsonable(v, a) for a, v in outputs.items()}}
    batch = None
    for alias, arr in outputs.items():
        if arr.ndim == 0:
            raise RpcStatus("INVALID_ARGUMENT", f"Tensor name: {alias} has no shape information ")
        if batch is not None and arr.shape[0] != batch:
            raise RpcStatus("INVALID_ARGUMENT",
                            f"Tensor name: {alias} has inconsistent batch size: {arr.shape[0]} "
                            f"expecting: {batch}")
        batch = arr.shape[0]
    lists = {a: _jsonable(v, a) for a, v in outputs.items()}
    if len(lists) == 1:
        return {"predictions": next(iter(lists.values()))}
    return {"predictions": [{a: lists[a][i] for a in lists} for i in range(batch or 0)]}


def tf_type_name(dt: Any) -> str:
    """tf.DType -> DataTypeString spelling ("float", "double", "string", "int32", ...)."""
    import numpy as np

    return "string" if dt.name == "string" else tf_dtype_name(np.dtype(dt.as_numpy_dtype))


def tensor_proto_to_array(proto: Any) -> Any:
    """TensorProto -> numpy; a malformed proto is the client's INVALID_ARGUMENT, not a crash."""
    import tensorflow as tf

    try:
        return tf.make_ndarray(proto)
    except Exception as e:  # noqa: BLE001 - any malformed TensorProto is the client's error
        raise RpcStatus("INVALID_ARGUMENT", f"Could not parse input TensorProto: {e}") from None


def array_to_proto(arr: Any) -> Any:
    import tensorflow as tf

    return tf.make_tensor_proto(arr)

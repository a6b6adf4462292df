"""JSON <-> tensors in TF Serving's REST formats, following ``tensorflow_serving/util/json_tensor.cc``.

Why copy json_tensor.cc's rules and wording: a client written against TF Serving must get the same
answer and the same error text here. Request side: ``{"instances": [...]}`` (row format, every
named input shares the batch dimension) or ``{"inputs": ...}`` (columnar), ``{"b64": ...}`` for
binary strings, dense shapes checked level by level. Response side: ``{"predictions": ...}`` /
``{"outputs": ...}``; string outputs whose alias ends in ``_bytes`` go out as ``{"b64": ...}``.

Big bodies are parsed by ``jsonstream`` (arrays stay text until converted group by group into
numpy), and big responses are written block by block, so neither direction builds one Python
object per number. Every client mistake is an ``RpcStatus`` (INVALID_ARGUMENT unless TF Serving
says otherwise), never an exception that would become a 500.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from typing import Any

from builder.serve import jsonstream
from builder.serve.jsonstream import JsonParseError, LazyArray, NotDense
from builder.serve.status import RpcStatus, invalid

_DECODER = json.JSONDecoder()
MAX_RANK = 32  # numpy's limit on dimensions (TensorFlow allows 254; TF Serving would fail later)
_RESPONSE_BLOCK = 1 << 16  # elements per response block

# Python's json messages -> rapidjson's (what TF Serving prints), where one maps to one.
_RAPIDJSON_WORDING = {
    "Expecting value": "Invalid value.",
    "Expecting property name enclosed in double quotes": "Missing a name for object member.",
    "Expecting ':' delimiter": "Missing a colon after a name of object member.",
    "Unterminated string starting at": "Missing a closing quotation mark in string.",
    "Invalid \\escape": "Invalid escape character in string.",
    "Invalid \\uXXXX escape": "Incorrect hex digit after \\u escape in string.",
}


def _json_default(o: Any) -> Any:
    if isinstance(o, LazyArray):
        return o.preview()
    return str(o)


def _json_str(v: Any) -> str:
    """JsonValueToDebugString: the value as compact JSON, truncated (TF Serving: 256 bytes)."""
    try:
        return json.dumps(v, separators=(",", ":"), default=_json_default)[:200]
    except (RecursionError, ValueError):
        return "..."


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
    if isinstance(v, (list, LazyArray)):
        return "Array"
    return "Object"


def _is_b64(v: Any) -> bool:
    return isinstance(v, dict) and len(v) == 1 and "b64" in v


def b64decode(text: str) -> bytes:
    """absl::Base64Unescape: standard alphabet, padding optional."""
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise invalid("Unable to base64 decode") from None


def _dense_shape(v: Any) -> list[int]:
    shape = []
    while isinstance(v, list):
        shape.append(len(v))
        if not v:
            break
        v = v[0]
        if len(shape) > MAX_RANK:
            break
    return shape


def _check_rank(shape: list[int]) -> None:
    if len(shape) > MAX_RANK:
        raise invalid(f"JSON lists nested deeper than {MAX_RANK} levels: tensors of rank > {MAX_RANK} "
                      "are not supported")


def _leaf(v: Any, dtype: Any) -> Any:
    """One JSON leaf -> a Python value of the tensor dtype, or TF Serving's TypeError text."""
    import numpy as np

    def type_error() -> RpcStatus:
        return invalid(f"JSON Value: {_json_str(v)} Type: {_json_type(v)} is not of expected type: "
                       f"{tf_dtype_name(dtype)}")

    if dtype == np.object_:
        if isinstance(v, str):
            return v.encode("utf-8")
        if _is_b64(v):
            if not isinstance(v["b64"], str):
                raise invalid(f"JSON Value: {_json_str(v)} not formatted correctly for base64 data")
            return b64decode(v["b64"])
        raise type_error()
    kind = np.dtype(dtype).kind
    if kind == "b":
        if isinstance(v, bool):
            return v
        raise type_error()
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise type_error()
    if kind in "iu":
        info = np.iinfo(dtype)
        if not isinstance(v, int) or not info.min <= v <= info.max:
            raise type_error()
        return v
    if isinstance(v, int) and not -(2**64) < v < 2**64:
        try:
            return float(v)  # rapidjson stores integers beyond 64 bits as doubles
        except OverflowError:
            raise invalid("JSON Parse error: Number too big to be stored in double.") from None
    return v


# The tensor types json_tensor.cc converts from JSON; anything else is UNIMPLEMENTED there.
_JSON_DTYPES = frozenset({"float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint32",
                          "uint64", "bool", "object"})


def _check_json_dtype(v: Any, dtype: Any) -> None:
    import numpy as np

    name = "object" if dtype == np.object_ else np.dtype(dtype).name
    if name not in _JSON_DTYPES:
        raise RpcStatus("UNIMPLEMENTED", f"Conversion of JSON Value: {_json_str(v)} to type: {tf_dtype_name(dtype)}")


def _fill(v: Any, level: int, shape: list[int], dtype: Any, out: list) -> None:
    rank = len(shape)
    if not isinstance(v, list):
        if level != rank:
            raise invalid(f"JSON Value: {_json_str(v)} found at incorrect level: {level + 1} in the JSON "
                          f"DOM. Expected at level: {rank}")
        out.append(_leaf(v, dtype))
        return
    if level >= rank:
        raise invalid(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(v) != shape[level]:
        raise invalid(f"Encountered list at unexpected size: {len(v)} at level: {level} expected size: "
                      f"{shape[level]}")
    for item in v:
        _fill(item, level + 1, shape, dtype, out)


def _vectorised(value: list, dtype: Any, shape: list[int]) -> Any:
    """numpy's own conversion when it provably equals json_tensor.cc's (numbers only, dense,
    in range); None to take the checked path."""
    import numpy as np

    try:
        arr = np.asarray(value)
    except (ValueError, OverflowError):
        return None
    if arr.dtype.kind not in "fiu" or list(arr.shape) != shape:
        return None
    kind = np.dtype(dtype).kind
    if kind in "iu":
        if arr.dtype.kind not in "iu":
            return None
        info = np.iinfo(dtype)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            return None
    elif kind != "f":
        return None
    return arr.astype(dtype, copy=False)


def json_to_array(value: Any, dtype: Any, may_have_bools: bool = True) -> Any:
    """A JSON value (nested lists / scalar / b64 object / LazyArray) -> numpy array of ``dtype``,
    with json_tensor.cc's checks (dense shape, value types). ``may_have_bools=False`` (the text
    holds no true/false token) allows the vectorised path, which cannot tell 1 from true."""
    import numpy as np

    _check_json_dtype(value, dtype)
    if isinstance(value, LazyArray):
        return _lazy_to_array(value, dtype)
    shape = _dense_shape(value)
    _check_rank(shape)
    if dtype != np.object_ and isinstance(value, list) and not may_have_bools:
        arr = _vectorised(value, dtype, shape)
        if arr is not None:
            return arr
    flat: list = []
    _fill(value, 0, shape, dtype, flat)
    return _from_flat(flat, dtype, shape)


def _from_flat(flat: list, dtype: Any, shape: list[int]) -> Any:
    import numpy as np

    if dtype == np.object_:
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        return out.reshape(shape)
    return np.array(flat, dtype=dtype).reshape(shape)


def _lazy_to_array(lazy: LazyArray, dtype: Any) -> Any:
    """A big array, group by group: the dense numeric fast path for float tensors, else each
    group through the same checks as a small body (same errors, bounded memory)."""
    import numpy as np

    if lazy.empty():
        return _from_flat([], dtype, [0])
    inner = _dense_shape(lazy.first())
    _check_rank([0, *inner])
    if np.dtype(dtype).kind == "f":
        try:
            return _concat([b.astype(dtype) for b in lazy.numeric_blocks(inner)])
        except NotDense:
            pass
    shape = [0, *inner]  # level 0 is the array itself: its length is never checked
    blocks = []
    for _, group, (lo, hi) in lazy.groups():
        bools = lazy.span_has("true", lo, hi) or lazy.span_has("false", lo, hi)
        arr = None
        if dtype != np.object_ and not bools:
            arr = _vectorised(group, dtype, [len(group), *inner])
        if arr is None:
            flat: list = []
            for item in group:
                _fill(item, 1, shape, dtype, flat)
            arr = _from_flat(flat, dtype, [len(group), *inner])
        blocks.append(arr)
    return _concat(blocks)


def _concat(blocks: list) -> Any:
    import numpy as np

    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)


_TF_DTYPE_NAMES = {"float32": "float", "float64": "double", "float16": "half", "object": "string"}


def tf_dtype_name(dtype: Any) -> str:
    """numpy dtype -> TensorFlow's DataTypeString spelling, as TF Serving prints it."""
    import numpy as np

    name = "object" if dtype == np.object_ else np.dtype(dtype).name
    return _TF_DTYPE_NAMES.get(name, name)


# ---------------------------------------------------------------------------------------------
# Request bodies


def parse_json_object(body: bytes | bytearray | str) -> Any:
    """A request body -> its top-level JSON object (ParseJson): TF Serving's errors for an empty
    body, a syntax error, or a non-object; big bodies keep their tensor arrays as LazyArrays."""
    if not body:
        raise invalid("JSON Parse error: The document is empty")
    text = body if isinstance(body, str) else _decode(body)
    if len(text) < jsonstream.STREAM_MIN_CHARS and text.isspace():
        raise invalid(f"JSON Parse error: The document is empty. at offset: {len(text)}")
    try:
        if len(text) >= jsonstream.STREAM_MIN_CHARS:
            doc = jsonstream.parse_document(text)
        else:  # like rapidjson's kParseStopWhenDoneFlag: what follows the root value is ignored
            doc = _DECODER.raw_decode(text, jsonstream.skip_ws(text, 0))[0]
    except JsonParseError:
        raise
    except json.JSONDecodeError as e:
        raise invalid(f"JSON Parse error: {_RAPIDJSON_WORDING.get(e.msg, e.msg)} at offset: {e.pos}") from None
    except RecursionError:
        raise invalid("JSON Parse error: the document nests arrays or objects too deeply") from None
    except ValueError as e:  # e.g. an integer literal of more than 4300 digits
        raise invalid(f"JSON Parse error: Number too big to be stored in double. ({str(e)[:80]})") from None
    if not isinstance(doc, dict):
        raise invalid(f"JSON Value: {_json_str(doc)} Is not object")
    if "signature_name" in doc and not isinstance(doc["signature_name"], str):
        raise invalid(f"JSON Value: {_json_str(doc)} not formatted correctly. 'signature_name' key must be "
                      "a string value.")
    return doc


def _decode(body: bytes | bytearray) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise invalid(f"JSON Parse error: Invalid encoding in string. at offset: {e.start}") from None


def may_have_bools(body: bytes | bytearray | str) -> bool:
    """Whether the text holds a true/false token (the vectorised path cannot tell 1 from true)."""
    if isinstance(body, str):
        return "true" in body or "false" in body
    return b"true" in body or b"false" in body


def parse_predict_json(body: bytes, input_dtypes: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """REST predict body -> ({alias: array}, "row"|"columnar"). ``input_dtypes`` is the chosen
    signature's inputs (alias -> numpy dtype; object for strings)."""
    return predict_inputs_from_doc(parse_json_object(body), input_dtypes, may_have_bools(body))


def predict_inputs_from_doc(doc: dict, input_dtypes: dict[str, Any],
                            may_have_bools: bool = True) -> tuple[dict[str, Any], str]:
    """A parsed predict body -> inputs (FillPredictRequestFromJson)."""
    if "instances" in doc and "inputs" in doc:
        raise invalid(f"JSON Value: {_json_str(doc)} Not formatted correctly expecting only one of 'inputs' or "
                      "'instances' keys to exist ")
    names = sorted(input_dtypes)
    if not names:
        raise invalid(f"Failed to get input map for signature: {doc.get('signature_name') or 'DEFAULT'}")
    if "instances" in doc:
        instances = doc["instances"]
        if not isinstance(instances, (list, LazyArray)):
            raise invalid(f"JSON Value: {_json_str(doc)} Expecting 'instances' to be an list/array")
        if (instances.empty() if isinstance(instances, LazyArray) else not instances):
            raise invalid(f"JSON Value: {_json_str(doc)} No values in 'instances' array")
        return _rows(instances, input_dtypes, names, may_have_bools), "row"
    if "inputs" in doc:
        return _columns(doc["inputs"], input_dtypes, names, may_have_bools), "columnar"
    raise invalid("Missing 'inputs' or 'instances' key")


def _columns(inputs: Any, dtypes: dict[str, Any], names: list[str], may_have_bools: bool) -> dict:
    """Columnar format (FillTensorMapFromInputsMap)."""
    if not isinstance(inputs, dict) or _is_b64(inputs):
        if len(names) > 1:
            raise invalid("inputs is a plain value/list, but expecting an object as multiple input tensors "
                          "required as per tensorinfo_map")
        return {names[0]: json_to_array(inputs, dtypes[names[0]], may_have_bools)}
    out = {}
    for name in names:
        if name not in inputs:
            raise invalid(f"Missing named input: {name} in 'inputs' object.")
        out[name] = json_to_array(inputs[name], dtypes[name], may_have_bools)
    return out


def _instance_groups(instances: list | LazyArray, may_have_bools: bool) -> Iterable[tuple[int, list, bool]]:
    """(index of first element, elements, may hold true/false) per group of instances."""
    if isinstance(instances, list):
        yield 0, instances, may_have_bools
        return
    for index, group, (lo, hi) in instances.groups():
        yield index, group, instances.span_has("true", lo, hi) or instances.span_has("false", lo, hi)


def _rows(instances: list | LazyArray, dtypes: dict[str, Any], names: list[str], may_have_bools: bool) -> dict:
    """Row format: each element of "instances" is one batch item (a value, or an object keyed by
    input name); items are stacked into one tensor per input (FillTensorMapFromInstancesList)."""
    import numpy as np

    first = instances.first() if isinstance(instances, LazyArray) else instances[0]
    objects = isinstance(first, dict) and not _is_b64(first)
    if not objects and len(names) > 1:
        raise invalid("instances is a plain list, but expecting list of objects as multiple input tensors "
                      "required as per tensorinfo_map")
    if not objects and dtypes[names[0]] != np.object_ and isinstance(instances, LazyArray) \
            and np.dtype(dtypes[names[0]]).kind == "f":
        try:  # dense numeric rows: numpy blocks straight from the text
            inner = _dense_shape(first)
            _check_rank([0, *inner])
            return {names[0]: _concat([b.astype(dtypes[names[0]]) for b in instances.numeric_blocks(inner)])}
        except (NotDense, RpcStatus):
            pass
    shapes: dict[str, list[int]] = {}
    blocks: dict[str, list] = {n: [] for n in names}
    for offset, group, bools in _instance_groups(instances, may_have_bools):
        for name, arr in _rows_group(group, offset, objects, dtypes, names, shapes, bools).items():
            blocks[name].append(arr)
    return {n: _concat(b) for n, b in blocks.items()}


def _rows_group(group: list, offset: int, objects: bool, dtypes: dict[str, Any], names: list[str],
                shapes: dict[str, list[int]], bools: bool) -> dict:
    """One group of instances -> one stacked block per input, checked item by item."""
    import numpy as np

    if not objects and dtypes[names[0]] != np.object_ and not bools:
        arr = _vectorised(group, dtypes[names[0]], _dense_shape(group))
        want = shapes.get(names[0])
        if arr is not None and arr.ndim >= 1 and (want is None or list(arr.shape[1:]) == want):
            shapes.setdefault(names[0], list(arr.shape[1:]))
            return {names[0]: arr}
    per_name: dict[str, list] = {n: [] for n in names}
    for i, elem in enumerate(group, start=offset):
        is_obj = isinstance(elem, dict) and not _is_b64(elem)
        if objects and not is_obj:
            raise invalid(f"Expecting object but got list at item {i} of input list")
        if not objects and is_obj:
            raise invalid(f"Expecting value/list but got object at item {i} of input list")
        items = elem.items() if objects else [(names[0], elem)]
        for name, value in items:
            per_name[name].append(_instance_item(i, name if objects else None, value, dtypes, shapes, bools))
        if objects and set(elem) != set(names):
            raise invalid(f"Failed to process element: {i} of 'instances' list. JSON object: {_json_str(elem)} "
                          f"keys must be equal to: {','.join(names)}")
    return {n: np.stack(v) for n, v in per_name.items()}


def _instance_item(i: int, key: str | None, value: Any, dtypes: dict[str, Any],
                   shapes: dict[str, list[int]], may_have_bools: bool) -> Any:
    """One named value of one instance -> array, checked against the first instance's shape
    (AddInstanceItem); errors carry the element index as TF Serving words them."""
    import numpy as np

    name = key if key is not None else next(iter(sorted(dtypes)))
    try:
        if name not in dtypes:
            raise invalid(f"JSON object: does not have named input: {name}")
        arr = json_to_array(value, dtypes[name], may_have_bools)
        want = shapes.setdefault(name, list(arr.shape))
        if int(np.prod(want)) != arr.size:
            raise invalid(f"Expecting tensor size: {int(np.prod(want))} but got: {arr.size}")
        if want != list(arr.shape):
            raise invalid(f"Expecting shape {shape_str(want)} but got: {shape_str(arr.shape)}")
        return arr
    except RpcStatus as e:
        where = f" key: {key}" if key is not None else ""
        raise invalid(f"Failed to process element: {i}{where} of 'instances' list. Error: {e.code}: "
                      f"{e.message}") from None


def shape_str(shape: Iterable[int]) -> str:
    return "[" + ",".join(str(int(d)) for d in shape) + "]"


# ---------------------------------------------------------------------------------------------
# Responses


def _scalar_json(x: Any, as_b64: bool) -> Any:
    if as_b64:
        return {"b64": base64.b64encode(bytes(x)).decode("ascii")}
    return x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)


def _jsonable_array(arr: Any, alias: str) -> Any:
    """String tensors whose alias ends in _bytes as {"b64": ...} (IsNamedTensorBytes), other
    strings as UTF-8 text; half floats widened (JSON has no 16-bit type)."""
    import numpy as np

    if arr.dtype == np.object_ or arr.dtype.kind == "S":
        as_b64 = alias.endswith("_bytes")
        flat = np.empty(arr.size, dtype=object)
        flat[:] = [_scalar_json(x, as_b64) for x in arr.reshape(-1)]
        return flat.reshape(arr.shape)
    if arr.dtype.kind == "f" and arr.dtype.itemsize < 4:
        return arr.astype(np.float32)
    return arr


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


_WIDTH = {"f": 32, "i": 24, "u": 24}


def _number_texts(block: Any) -> list[str]:
    """Flat JSON texts of a numeric block. Floats as numpy prints them - the shortest text that
    reads back to the same value of the tensor's own precision, like TF Serving's WriteDecimal
    (``0.1`` for a float32 0.1, ``3.0`` for 3) - with NaN / Infinity / -Infinity; numpy's C
    formatting, several times faster than Python's float repr."""
    import numpy as np

    if block.dtype.kind == "b":
        return ["true" if v else "false" for v in block.reshape(-1).tolist()]
    texts = block.astype(f"U{_WIDTH[block.dtype.kind]}")
    if block.dtype.kind == "f" and not np.isfinite(block).all():
        texts[np.isnan(block)] = "NaN"
        texts[np.isposinf(block)] = "Infinity"
        texts[np.isneginf(block)] = "-Infinity"
    return texts.reshape(-1).tolist()


def _nest(texts: list[str], shape: tuple[int, ...]) -> str:
    if len(shape) == 1:
        return "[" + ",".join(texts) + "]"
    step = len(texts) // shape[0] if shape[0] else 0
    return "[" + ",".join(_nest(texts[i:i + step], shape[1:]) for i in range(0, len(texts), step or 1)) + "]"


def _row_texts(block: Any) -> list[str] | None:
    """The JSON text of each row (first dimension) of a numeric block; None for strings."""
    if block.dtype.kind not in "biuf" or block.ndim == 0:
        return None
    if block.size == 0:
        return [_dumps(row).decode() for row in block.tolist()]
    texts = _number_texts(block)
    if block.ndim == 1:
        return texts
    inner = block.shape[1:]
    per = len(texts) // block.shape[0] if block.shape[0] else 0
    return [_nest(texts[i:i + per], inner) for i in range(0, len(texts), per or 1)]


def _array_parts(arr: Any, alias: str) -> Iterable[bytes]:
    """One tensor as JSON text in pieces of about ``_RESPONSE_BLOCK`` elements, so a big output
    never exists as one Python list (or one string) at once."""
    arr = _jsonable_array(arr, alias)
    if arr.ndim == 0:
        texts = _row_texts(arr.reshape(1))
        yield texts[0].encode() if texts else _dumps(arr.tolist())
        return
    step = max(1, _RESPONSE_BLOCK // max(1, arr.size // max(1, arr.shape[0])))
    yield b"["
    for i in range(0, arr.shape[0], step):
        block = arr[i:i + step]
        rows = _row_texts(block)
        text = ",".join(rows).encode() if rows is not None else _dumps(block.tolist())[1:-1]
        yield (b"," if i else b"") + text
    yield b"]"


def _row_parts(outputs: dict[str, Any], batch: int) -> Iterable[bytes]:
    """Row format with several outputs: [{alias: row, ...}, ...], block by block."""
    step = max(1, _RESPONSE_BLOCK // 8)
    keys = [json.dumps(a) + ":" for a in outputs]
    yield b"["
    for i in range(0, batch, step):
        blocks = [_jsonable_array(v[i:i + step], a) for a, v in outputs.items()]
        texts = [_row_texts(b) or [_dumps(x).decode() for x in b.tolist()] for b in blocks]
        rows = ["{" + ",".join(k + t for k, t in zip(keys, row, strict=True)) + "}" for row in zip(*texts, strict=True)]
        yield (b"," if i else b"") + ",".join(rows).encode()
    yield b"]"


def encode_predict_response(outputs: dict[str, Any], fmt: str) -> list[bytes]:
    """Outputs -> TF Serving's {"predictions": ...} (row) or {"outputs": ...} (columnar), as the
    pieces of one JSON document (the REST front end writes them without joining)."""
    if fmt == "columnar":
        if len(outputs) == 1:
            (alias, arr), = outputs.items()
            return [b'{"outputs":', *_array_parts(arr, alias), b"}"]
        parts = [b'{"outputs":{']
        for n, (alias, arr) in enumerate(outputs.items()):
            parts += [b"," if n else b"", _dumps(alias), b":", *_array_parts(arr, alias)]
        return [*parts, b"}}"]
    batch = None
    for alias, arr in outputs.items():
        if arr.ndim == 0:
            raise invalid(f"Tensor name: {alias} has no shape information ")
        if batch is not None and arr.shape[0] != batch:
            raise invalid(f"Tensor name: {alias} has inconsistent batch size: {arr.shape[0]} expecting: {batch}")
        batch = arr.shape[0]
    if len(outputs) == 1:
        (alias, arr), = outputs.items()
        return [b'{"predictions":', *_array_parts(arr, alias), b"}"]
    return [b'{"predictions":', *_row_parts(outputs, batch or 0), b"}"]


def predict_response_json(outputs: dict[str, Any], fmt: str) -> dict:
    """``encode_predict_response`` as a JSON document (for callers that want the structure)."""
    return json.loads(b"".join(encode_predict_response(outputs, fmt)))


# ---------------------------------------------------------------------------------------------
# Protos


def tf_type_name(dt: Any) -> str:
    """tf.DType -> DataTypeString spelling ("float", "double", "string", "int32", ...)."""
    import numpy as np

    return "string" if dt.name == "string" else tf_dtype_name(np.dtype(dt.as_numpy_dtype))


def tensor_proto_to_array(proto: Any) -> Any:
    """TensorProto -> numpy; a malformed proto is the client's INVALID_ARGUMENT, not a crash."""
    import tensorflow as tf

    if len(proto.tensor_shape.dim) > MAX_RANK:
        raise invalid(f"TensorProto of rank {len(proto.tensor_shape.dim)}: tensors of rank > {MAX_RANK} are "
                      "not supported")
    try:
        return tf.make_ndarray(proto)
    except Exception as e:  # noqa: BLE001 - any malformed TensorProto is the client's error
        raise invalid(f"Could not parse input TensorProto: {e}") from None


def array_to_proto(arr: Any) -> Any:
    import tensorflow as tf

    return tf.make_tensor_proto(arr)

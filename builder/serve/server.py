"""A TF-Serving-compatible local server, and handles on real ones, to prove a repository serves.

Why: the builder promises that a repository it wrote *serves* with the right answers. The real
proof is ``tensorflow/serving`` in a container (``ContainerServer``), but many machines (this
project's CI included) have no Docker engine. ``LocalServer`` speaks the same protocols from the
same protos (REST JSON shapes, ``tensorflow.serving.PredictionService`` / ``ModelService`` over
gRPC), takes ``tensorflow_model_server``'s flags and follows its rules (numeric version dirs,
version policies, labels, warmup records run at load, base path and config polling, error codes),
so one integration suite runs against either backend with the official client.

It loads each version with the TF1 SavedModel loader into its own ``tf.Graph`` + ``Session``.
It does not batch across requests: a request runs as it comes, at the batch size the client sent.
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from builder.core.artifact import MAX_WARMUP_RECORDS, WARMUP_FILE
from builder.core.errors import ConfigError, InputError, ServingError, UnavailableError
from builder.core.layout import is_version_name

DEFAULT_REST_MAX_BODY_BYTES = 256 * 1024 * 1024
GRPC_MAX_MESSAGE_BYTES = 2**31 - 1  # tensorflow_model_server sets kint32max
MAX_LOAD_RETRIES = 5  # tensorflow_model_server --max_num_load_retries default
LOG_BEGIN = "=" * 20 + " BEGIN server log ({}) " + "=" * 20
LOG_END = "=" * 20 + " END server log ({}) " + "=" * 20
TRT_ENGINE_BUILD = "Building a new TensorRT engine"

# gRPC code -> HTTP status, as tensorflow_serving/model_servers/http_server.cc maps them.
HTTP_STATUS = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}

_LABEL_RE = re.compile(r"^[a-zA-Z0-9_]+$")
# The two path patterns of tensorflow_serving/model_servers/http_rest_api_util.cc.
_PREDICT_RE = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE,
)
_STATUS_RE = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE,
)


class RpcStatus(Exception):
    """A request failure carrying a gRPC status code name and TF Serving's message text."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)


# ---------------------------------------------------------------------------------------------
# models.config


@dataclass(frozen=True)
class ModelEntry:
    """One ``model_config_list.config`` entry, reduced to what serving needs."""

    name: str
    base_path: str
    policy: str = "latest"  # latest | all | specific
    num_versions: int = 1
    versions: tuple[int, ...] = ()
    labels: tuple[tuple[str, int], ...] = ()

    def aspired(self, on_disk: Iterable[int]) -> list[int]:
        """Versions the policy wants loaded, given the numeric versions present on disk."""
        disk = sorted(set(on_disk))
        if self.policy == "all":
            return disk
        if self.policy == "specific":
            return sorted(set(self.versions) & set(disk))
        return disk[-self.num_versions:] if disk else []

    def on_disk(self) -> list[int]:
        return list_version_dirs(self.base_path)


def list_version_dirs(base_path: str | os.PathLike) -> list[int]:
    """Numeric child directories of a base path, the way TF Serving's file system source sees
    them (other names are ignored)."""
    p = Path(base_path)
    try:
        children = list(p.iterdir())
    except OSError:
        return []
    out = []
    for c in children:
        try:
            if is_version_name(c.name) and c.is_dir():
                out.append(int(c.name))
        except OSError:  # vanished while we looked
            continue
    return sorted(out)


def parse_model_server_config(text: str, source: str = "models.config") -> list[ModelEntry]:
    """Parse a ``tensorflow.serving.ModelServerConfig`` text proto with the official proto class
    and apply the checks ``tensorflow_model_server`` makes; errors name ``source``."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    msg = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as e:
        raise ConfigError(f"{source}: not a ModelServerConfig text proto ({e}): fix the syntax") from None
    return entries_from_proto(msg, source)


def entries_from_proto(msg: Any, source: str = "ModelServerConfig") -> list[ModelEntry]:
    """ModelServerConfig proto -> entries, validated like ServerCore::ValidateConfig."""
    if msg.WhichOneof("config") != "model_config_list":
        raise ConfigError(
            f"{source}: only model_config_list is supported (custom_model_config is not): "
            "list models as model_config_list { config { name: ... base_path: ... } }"
        )
    entries: list[ModelEntry] = []
    seen: set[str] = set()
    for c in msg.model_config_list.config:
        if not c.name:
            raise ConfigError(f"{source}: a config entry has no name: add name: \"...\"")
        if c.name in seen:
            raise ConfigError(f"{source}: illegal to list model {c.name} multiple times in config list")
        seen.add(c.name)
        if not c.base_path or not os.path.isabs(c.base_path):
            raise ConfigError(
                f"{source}: expected model {c.name} to have an absolute path; got "
                f"base_path={c.base_path!r}: TF Serving requires absolute paths"
            )
        if c.model_platform not in ("tensorflow",):
            raise ConfigError(
                f"{source}: model {c.name} has model_platform {c.model_platform!r}: "
                "set model_platform: \"tensorflow\""
            )
        kind = c.model_version_policy.WhichOneof("policy_choice") or "latest"
        num, versions = 1, ()
        if kind == "latest":
            num = c.model_version_policy.latest.num_versions or 1
        elif kind == "specific":
            versions = tuple(sorted(set(c.model_version_policy.specific.versions)))
            if not versions:
                raise ConfigError(
                    f"{source}: model {c.name} has a specific version policy with no versions: "
                    "list them as specific { versions: N }"
                )
        labels = []
        for label, version in sorted(c.version_labels.items()):
            if not _LABEL_RE.match(label):
                raise ConfigError(
                    f"{source}: version label {label!r} of model {c.name} must match "
                    "[a-zA-Z0-9_]+: rename it"
                )
            labels.append((label, int(version)))
        entries.append(ModelEntry(c.name, c.base_path, kind, num, versions, tuple(labels)))
    return entries


def read_model_server_config(path: str | os.PathLike) -> list[ModelEntry]:
    """Read and validate a models.config file; unreadable files are the user's to fix (exit 2)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"--model_config_file {p} does not exist: pass an existing models.config") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--model_config_file {p} cannot be read ({e}): check the file") from None
    return parse_model_server_config(text, str(p))


def model_server_config_text(entries: Iterable[ModelEntry]) -> str:
    """Entries -> ModelServerConfig text (used for the container's rewritten paths and tests)."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    msg = model_server_config_pb2.ModelServerConfig()
    for e in entries:
        c = msg.model_config_list.config.add(name=e.name, base_path=e.base_path,
                                             model_platform="tensorflow")
        if e.policy == "all":
            c.model_version_policy.all.SetInParent()
        elif e.policy == "specific":
            c.model_version_policy.specific.versions.extend(e.versions)
        elif e.num_versions != 1:
            c.model_version_policy.latest.num_versions = e.num_versions
        for label, v in e.labels:
            c.version_labels[label] = v
    return text_format.MessageToString(msg)


# ---------------------------------------------------------------------------------------------
# JSON <-> numpy, following tensorflow_serving/util/json_tensor.cc


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
            f"{_dtype_name(dtype)}",
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
                        f"Conversion of JSON Value: {_json_str(v)} to type: {_dtype_name(dtype)}")


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


def _dtype_name(dtype: Any) -> str:
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
            try:
                if name not in dtypes:
                    raise RpcStatus("INVALID_ARGUMENT", f"JSON object: does not have named input: {name}")
                arr = json_to_array(value, dtypes[name], may_have_bools)
                if name not in shapes:
                    shapes[name] = list(arr.shape)
                elif int(np.prod(shapes[name])) != arr.size:
                    raise RpcStatus("INVALID_ARGUMENT",
                                    f"Expecting tensor size: {int(np.prod(shapes[name]))} but got: {arr.size}")
                elif shapes[name] != list(arr.shape):
                    raise RpcStatus("INVALID_ARGUMENT",
                                    f"Expecting shape {_shape_str(shapes[name])} but got: {_shape_str(arr.shape)}")
            except RpcStatus as e:
                key = f" key: {name}" if objects else ""
                raise RpcStatus(
                    "INVALID_ARGUMENT",
                    f"Failed to process element: {i}{key} of 'instances' list. Error: "
                    f"INVALID_ARGUMENT: {e.message}",
                ) from None
            per_name[name].append(arr)
        if objects and set(elem) != set(names):
            raise RpcStatus(
                "INVALID_ARGUMENT",
                f"Failed to process element: {i} of 'instances' list. JSON object: "
                f"{_json_str(elem)} keys must be equal to: {','.join(names)}",
            )
    return {n: np.stack(v) for n, v in per_name.items()}


def _shape_str(shape: Iterable[int]) -> str:
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


# ---------------------------------------------------------------------------------------------
# One loaded version


class Servable:
    """One model version in its own graph and session. Request threads hold a reference while
    they run; unloading waits for them, so a version removed mid-request still answers."""

    def __init__(self, name: str, version: int, path: str, log: logging.Logger,
                 session_config: Any = None) -> None:
        self.name, self.version, self.path, self.log = name, version, path, log
        self.session_config = session_config  # bf16 hook (issue 12): --mixed_precision rewrite
        self.session: Any = None
        self.signatures: dict[str, Any] = {}
        self.warmup_records = 0
        self._refs = 0
        self._cond = threading.Condition()
        self._closed = False

    def load(self, enable_warmup: bool) -> None:
        import tensorflow as tf

        self.log.info("Reading SavedModel from: %s", self.path)
        graph = tf.Graph()
        sess = tf.compat.v1.Session(graph=graph, config=self.session_config)  # bf16 hook: config
        try:
            with graph.as_default():
                meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], self.path)
        except Exception as e:  # noqa: BLE001 - any loader failure is this version's load error
            sess.close()
            raise RpcStatus("INVALID_ARGUMENT" if isinstance(e, (ValueError, OSError)) else "UNKNOWN",
                            f"Failed to load SavedModel {self.path}: {str(e).splitlines()[0]}") from None
        self.session = sess
        self.signatures = dict(meta.signature_def)
        if enable_warmup:
            self._warmup()

    def _warmup(self) -> None:
        import tensorflow as tf
        from tensorflow_serving.apis import prediction_log_pb2

        path = os.path.join(self.path, str(WARMUP_FILE))
        if not os.path.isfile(path):
            self.log.info("No warmup data file found at %s", path)
            return
        n = 0
        try:
            for record in tf.compat.v1.io.tf_record_iterator(path):
                n += 1
                if n > MAX_WARMUP_RECORDS:
                    raise RpcStatus("INVALID_ARGUMENT",
                                    f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}")
                log = prediction_log_pb2.PredictionLog()
                try:
                    log.ParseFromString(record)
                except Exception:  # noqa: BLE001 - protobuf raises DecodeError subclasses
                    raise RpcStatus("INVALID_ARGUMENT",
                                    f"Failed to parse warmup record {n} from {path}") from None
                if log.WhichOneof("log_type") != "predict_log":
                    raise RpcStatus("UNIMPLEMENTED",
                                    f"warmup record {n} in {path} is a {log.WhichOneof('log_type')}; "
                                    "the local server runs predict_log records only")
                req = log.predict_log.request
                inputs = {k: tensor_proto_to_array(v) for k, v in req.inputs.items()}
                self.run(req.model_spec.signature_name, inputs, list(req.output_filter), api="grpc")
        except tf.errors.DataLossError as e:
            raise RpcStatus("DATA_LOSS",
                            f"{e.message}. Please verify your warmup data is in TFRecord format.") from None
        except RpcStatus as e:
            raise RpcStatus(e.code, f"warmup failed for {self.name} version {self.version}: {e.message}") from None
        self.warmup_records = n
        self.log.info("Finished reading warmup data for model at %s. Number of warmup records read: %d.",
                      path, n)

    def signature(self, key: str, api: str) -> Any:
        key = key or "serving_default"
        sig = self.signatures.get(key)
        if sig is None:
            if api == "rest":
                raise RpcStatus("INVALID_ARGUMENT", f'Serving signature name: "{key}" not found in signature def')
            raise RpcStatus("FAILED_PRECONDITION", f'Serving signature key "{key}" not found.')
        return sig

    def input_dtypes(self, key: str) -> dict[str, Any]:
        import numpy as np
        import tensorflow as tf

        sig = self.signature(key, "rest")
        out = {}
        for alias, info in sig.inputs.items():
            dt = tf.dtypes.as_dtype(info.dtype)
            out[alias] = np.object_ if dt == tf.string else dt.as_numpy_dtype
        return out

    def run(self, signature_name: str, inputs: dict[str, Any], output_filter: list[str],
            api: str = "grpc") -> dict[str, Any]:
        """Validate inputs against the signature (names, dtypes, shapes) and run the session."""
        import tensorflow as tf

        sig = self.signature(signature_name, api)
        if set(inputs) != set(sig.inputs):
            sent, want = sorted(inputs), sorted(sig.inputs)
            extra = sorted(set(sent) - set(want))
            missing = sorted(set(want) - set(sent))
            raise RpcStatus(
                "INVALID_ARGUMENT",
                f"input size does not match signature: {len(sent)}!={len(want)} len({{{','.join(sent)}}}) "
                f"!= len({{{','.join(want)}}}). Sent extra: {{{','.join(extra)}}}. Missing but required: "
                f"{{{','.join(missing)}}}.",
            )
        feed = {}
        for i, alias in enumerate(sorted(inputs)):
            info, arr = sig.inputs[alias], inputs[alias]
            want = tf.dtypes.as_dtype(info.dtype)
            got = tf.string if arr.dtype.kind in "OSU" else tf.dtypes.as_dtype(arr.dtype)
            if got != want:
                raise RpcStatus("INVALID_ARGUMENT",
                                f"Expects arg[{i}] to be {_tf_name(want)} but {_tf_name(got)} is provided "
                                f"(input '{alias}', tensor {info.name})")
            if not info.tensor_shape.unknown_rank:
                dims = [d.size for d in info.tensor_shape.dim]
                if len(dims) != arr.ndim or any(d >= 0 and d != s for d, s in zip(dims, arr.shape, strict=True)):
                    raise RpcStatus(
                        "INVALID_ARGUMENT",
                        f"Expected tensor's shape to be compatible with {_shape_str(dims)} for input "
                        f"'{alias}' (tensor {info.name}), but got {_shape_str(arr.shape)}",
                    )
            feed[info.name] = arr
        aliases = list(output_filter) or sorted(sig.outputs)
        seen: set[str] = set()
        for a in aliases:
            if a not in sig.outputs:
                raise RpcStatus("INVALID_ARGUMENT",
                                f"output tensor alias not found in signature: {a} Outputs expected to "
                                f"be in the set {{{','.join(sorted(sig.outputs))}}}.")
            if a in seen:
                raise RpcStatus("INVALID_ARGUMENT", f"duplicate output tensor alias: {a}")
            seen.add(a)
        batch_inputs = [a for a in sig.inputs
                        if not sig.inputs[a].tensor_shape.unknown_rank
                        and sig.inputs[a].tensor_shape.dim and sig.inputs[a].tensor_shape.dim[0].size < 0]
        sizes = {a: inputs[a].shape[0] for a in batch_inputs}
        if len(set(sizes.values())) > 1:
            raise RpcStatus("INVALID_ARGUMENT",
                            "inputs have inconsistent batch sizes: "
                            + ", ".join(f"{a}={n}" for a, n in sorted(sizes.items()))
                            + " (every input's first dimension must match)")
        try:
            values = self.session.run([sig.outputs[a].name for a in aliases], feed_dict=feed)
        except tf.errors.OpError as e:
            from tensorflow.core.protobuf import error_codes_pb2

            raise RpcStatus(error_codes_pb2.Code.Name(e.error_code), e.message) from None
        return dict(zip(aliases, values, strict=True))

    def acquire(self) -> bool:
        with self._cond:
            if self._closed:
                return False
            self._refs += 1
            return True

    def release(self) -> None:
        with self._cond:
            self._refs -= 1
            self._cond.notify_all()

    def close(self, timeout: float = 30.0) -> None:
        """Wait (bounded) for in-flight requests, then free the session."""
        with self._cond:
            self._closed = True
            end = time.monotonic() + timeout
            while self._refs > 0 and time.monotonic() < end:
                self._cond.wait(0.1)
        if self.session is not None:
            self.session.close()
            self.session = None


def _tf_name(dt: Any) -> str:
    """tf.DType -> DataTypeString spelling ("float", "double", "string", "int32", ...)."""
    import numpy as np

    return "string" if dt.name == "string" else _dtype_name(np.dtype(dt.as_numpy_dtype))


def tensor_proto_to_array(proto: Any) -> Any:
    """TensorProto -> numpy; a malformed proto is the client's INVALID_ARGUMENT, not a crash."""
    import tensorflow as tf

    try:
        return tf.make_ndarray(proto)
    except Exception as e:  # noqa: BLE001 - any malformed TensorProto is the client's error
        raise RpcStatus("INVALID_ARGUMENT", f"Could not parse input TensorProto: {e}") from None


# ---------------------------------------------------------------------------------------------
# Version manager


@dataclass
class VersionState:
    state: str = "START"  # START | LOADING | AVAILABLE | UNLOADING | END
    error_code: str = "OK"
    error_message: str = ""


@dataclass
class _ModelRuntime:
    entry: ModelEntry
    labels: dict[str, int] = field(default_factory=dict)
    failures: dict[int, int] = field(default_factory=dict)  # version -> failed load attempts


class ModelManager:
    """Aspired versions -> loaded servables, as TF Serving's AspiredVersionsManager with the
    availability-preserving policy: new versions load before old ones unload, so "latest"
    requests always find a version during a roll."""

    def __init__(self, log: logging.Logger, enable_warmup: bool = True,
                 session_config: Any = None) -> None:
        self.log = log
        self.enable_warmup = enable_warmup
        self.session_config = session_config  # bf16 hook (issue 12): for every model, as TF Serving
        self._lock = threading.Lock()  # guards the maps below; never held while loading
        self._reconcile = threading.RLock()  # one reconcile at a time
        self._models: dict[str, _ModelRuntime] = {}
        self._states: dict[str, dict[int, VersionState]] = {}
        self._servables: dict[str, dict[int, Servable]] = {}

    # -- requests --------------------------------------------------------------------------------
    def acquire(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """A servable for a request (call ``release`` on it). Errors as ServerCore reports them."""
        with self._lock:
            model = self._models.get(name)
            if label:
                if model is None or label not in model.labels:
                    raise RpcStatus("INVALID_ARGUMENT", f"Unrecognized servable version label: {label}")
                version = model.labels[label]
            loaded = self._servables.get(name, {})
            if version is None:
                s = loaded[max(loaded)] if loaded else None
                what = f"Latest({name})"
            else:
                s = loaded.get(version)
                what = f"Specific({name}, {version})"
            if s is None or not s.acquire():
                raise RpcStatus("NOT_FOUND", f"Servable not found for request: {what}")
            return s

    def status(self, name: str, version: int | None = None, label: str | None = None) -> list[tuple[int, VersionState]]:
        with self._lock:
            if label:
                model = self._models.get(name)
                if model is None or label not in model.labels:
                    raise RpcStatus("INVALID_ARGUMENT", f"Unrecognized servable version label: {label}")
                version = model.labels[label]
            states = self._states.get(name, {})
            if version is not None:
                if version not in states:
                    raise RpcStatus("NOT_FOUND", f"Could not find version {version} of model {name}")
                return [(version, VersionState(**vars(states[version])))]
            if not states:
                raise RpcStatus("NOT_FOUND", f"Could not find any versions of model {name}")
            return [(v, VersionState(**vars(s))) for v, s in sorted(states.items(), reverse=True)]

    def entries(self) -> list[ModelEntry]:
        with self._lock:
            return [m.entry for m in self._models.values()]

    # -- changes ---------------------------------------------------------------------------------
    def apply_config(self, entries: list[ModelEntry], strict: bool = False) -> list[str]:
        """Make ``entries`` the served set: add/update models, unload removed ones. Returns error
        messages (load failures, bad labels); with ``strict`` a label error raises instead."""
        with self._reconcile:
            new = {e.name: e for e in entries}
            errors: list[str] = []
            with self._lock:
                removed = [n for n in self._models if n not in new]
                for name, e in new.items():
                    if name in self._models:
                        self._models[name].entry = e
                    else:
                        self._models[name] = _ModelRuntime(e)
                        self._states.setdefault(name, {})
                        self._servables.setdefault(name, {})
            for name in removed:
                self.log.info("Model %s is no longer in the config: unloading all its versions", name)
                self._unload(name, list(self._servables.get(name, {})))
                with self._lock:
                    del self._models[name]
            for name in new:
                errors += self._reconcile_model(name)
            for name, e in new.items():
                err = self._apply_labels(name, e)
                if err:
                    if strict:
                        raise RpcStatus("FAILED_PRECONDITION", err)
                    errors.append(err)
            return errors

    def poll(self) -> list[str]:
        """Re-scan every base path (the file system poll)."""
        with self._reconcile:
            errors = []
            for name in list(self._models):
                errors += self._reconcile_model(name)
            return errors

    def _reconcile_model(self, name: str) -> list[str]:
        with self._lock:
            model = self._models.get(name)
            if model is None:
                return []
            entry = model.entry
            loaded = set(self._servables[name])
        disk = entry.on_disk()
        if not disk:
            self.log.warning("No versions of servable %s found under base path %s", name, entry.base_path)
        aspired = set(entry.aspired(disk))
        if entry.policy == "specific" and set(entry.versions) - set(disk):
            self.log.warning("versions %s of model %s are in the config but not on disk",
                             sorted(set(entry.versions) - set(disk)), name)
        for v in list(model.failures):
            if v not in disk:
                del model.failures[v]  # a version dir that reappears gets fresh attempts
        errors = []
        for v in sorted(aspired - loaded, reverse=True):
            if model.failures.get(v, 0) > MAX_LOAD_RETRIES:
                continue
            err = self._load(name, v, os.path.join(entry.base_path, str(v)))
            if err:
                model.failures[v] = model.failures.get(v, 0) + 1
                errors.append(err)
        self._unload(name, sorted(loaded - aspired))
        return errors

    def _set_state(self, name: str, version: int, state: str, code: str = "OK", msg: str = "") -> None:
        with self._lock:
            self._states.setdefault(name, {})[version] = VersionState(state, code, msg)

    def _load(self, name: str, version: int, path: str) -> str:
        self._set_state(name, version, "LOADING")
        self.log.info("Loading servable version {name: %s version: %d}", name, version)
        t0 = time.monotonic()
        s = Servable(name, version, path, self.log, self.session_config)  # bf16 hook
        try:
            s.load(self.enable_warmup)
        except RpcStatus as e:
            if s.session is not None:
                s.close(0)
            self._set_state(name, version, "END", e.code, e.message)
            self.log.error("Loading servable {name: %s version: %d} failed: %s", name, version, e.message)
            return f"{name} version {version}: {e.message}"
        with self._lock:
            if name not in self._models:  # model removed from the config while loading
                s.close(0)
                self._states[name][version] = VersionState("END")
                return ""
            self._servables[name][version] = s
            self._states[name][version] = VersionState("AVAILABLE")
        self.log.info("Successfully loaded servable version {name: %s version: %d} in %.2f s "
                      "(%d warmup records)", name, version, time.monotonic() - t0, s.warmup_records)
        return ""

    def _unload(self, name: str, versions: list[int]) -> None:
        gone = []
        with self._lock:
            for v in versions:
                s = self._servables.get(name, {}).pop(v, None)
                if s is not None:
                    self._states[name][v] = VersionState("UNLOADING")
                    gone.append(s)
        for s in gone:
            s.close()
            self._set_state(name, s.version, "END")
            self.log.info("Unloaded servable version {name: %s version: %d}", name, s.version)

    def _apply_labels(self, name: str, entry: ModelEntry) -> str:
        with self._lock:
            loaded = self._servables.get(name, {})
            for _label, v in entry.labels:
                if v not in loaded:
                    return (f"Request to assign label to version {v} of model {name}, which is not "
                            "currently available for inference")
            self._models[name].labels = dict(entry.labels)
        return ""

    def shutdown(self) -> None:
        with self._reconcile:
            for name in list(self._servables):
                self._unload(name, list(self._servables[name]))


# ---------------------------------------------------------------------------------------------
# Protocol front ends


class _Metrics:
    """The two TF Serving metrics clients most often scrape, in Prometheus text format."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count: collections.Counter = collections.Counter()
        self.latency: dict[tuple[str, str], list[float]] = collections.defaultdict(lambda: [0.0, 0])

    def record(self, model: str, api: str, code: str, seconds: float) -> None:
        with self._lock:
            self.count[(model, "OK" if code == "OK" else code)] += 1
            cell = self.latency[(model, api)]
            cell[0] += seconds * 1e6
            cell[1] += 1

    def text(self) -> str:
        with self._lock:
            lines = ["# TYPE :tensorflow:serving:request_count counter"]
            for (m, st), n in sorted(self.count.items()):
                lines.append(f':tensorflow:serving:request_count{{model_name="{m}",status="{st}"}} {n}')
            lines.append("# TYPE :tensorflow:serving:request_latency histogram")
            for (m, api), (s, n) in sorted(self.latency.items()):
                lab = f'model_name="{m}",API="{api}",entrypoint="REST_or_GRPC"'
                lines.append(f":tensorflow:serving:request_latency_sum{{{lab}}} {s:.1f}")
                lines.append(f":tensorflow:serving:request_latency_count{{{lab}}} {n}")
        return "\n".join(lines) + "\n"


class ServingCore:
    """The request logic both front ends share."""

    def __init__(self, manager: ModelManager, metrics: _Metrics) -> None:
        self.manager = manager
        self.metrics = metrics

    def predict_proto(self, request: Any) -> Any:
        from tensorflow_serving.apis import predict_pb2

        spec = request.model_spec
        with self._recorded(spec.name):
            version = spec.version.value if spec.HasField("version") else None
            s = self.manager.acquire(spec.name, version, spec.version_label or None)
            try:
                inputs = {k: tensor_proto_to_array(v) for k, v in request.inputs.items()}
                outputs = s.run(spec.signature_name, inputs, list(request.output_filter), api="grpc")
                resp = predict_pb2.PredictResponse()
                resp.model_spec.name = s.name
                resp.model_spec.version.value = s.version
                resp.model_spec.signature_name = spec.signature_name or "serving_default"
                for alias, arr in outputs.items():
                    resp.outputs[alias].CopyFrom(_array_to_proto(arr))
                return resp
            finally:
                s.release()

    def predict_rest(self, name: str, version: int | None, label: str | None, body: bytes) -> dict:
        with self._recorded(name):
            doc = parse_json_object(body)  # TF Serving parses before resolving the servable
            sig_name = doc.get("signature_name", "") or ""
            s = self.manager.acquire(name, version, label)
            try:
                dtypes = s.input_dtypes(sig_name)
                inputs, fmt = predict_inputs_from_doc(doc, dtypes, b"true" in body or b"false" in body)
                outputs = s.run(sig_name, inputs, [], api="rest")
                return predict_response_json(outputs, fmt)
            finally:
                s.release()

    @contextlib.contextmanager
    def _recorded(self, model: str) -> Iterator[None]:
        """Count and time one predict for the Prometheus metrics, with its status code."""
        t0 = time.perf_counter()
        code = "OK"
        try:
            yield
        except RpcStatus as e:
            code = e.code
            raise
        finally:
            self.metrics.record(model, "predict", code, time.perf_counter() - t0)

    def status_proto(self, name: str, version: int | None, label: str | None) -> Any:
        from tensorflow_serving.apis import get_model_status_pb2

        if not name:
            raise RpcStatus("INVALID_ARGUMENT", "Missing model name in request.")
        resp = get_model_status_pb2.GetModelStatusResponse()
        for v, st in self.manager.status(name, version, label):
            mvs = resp.model_version_status.add(version=v)
            mvs.state = get_model_status_pb2.ModelVersionStatus.State.Value(st.state)
            mvs.status.SetInParent()
            from tensorflow.core.protobuf import error_codes_pb2

            mvs.status.error_code = error_codes_pb2.Code.Value(st.error_code)
            mvs.status.error_message = st.error_message
        return resp

    def metadata_parts(self, name: str, version: int | None, label: str | None) -> tuple[str, int, Any]:
        from tensorflow_serving.apis import get_model_metadata_pb2

        if not name:
            raise RpcStatus("INVALID_ARGUMENT", "Missing model name in request.")
        s = self.manager.acquire(name, version, label)
        try:
            sdm = get_model_metadata_pb2.SignatureDefMap()
            for k, sig in s.signatures.items():
                sdm.signature_def[k].CopyFrom(sig)
            return s.name, s.version, sdm
        finally:
            s.release()


def _array_to_proto(arr: Any) -> Any:
    import tensorflow as tf

    return tf.make_tensor_proto(arr)


def _grpc_servicers(core: ServingCore, server: LocalServer) -> tuple[Any, Any]:
    import grpc
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        model_management_pb2,
        model_service_pb2_grpc,
        prediction_service_pb2_grpc,
    )

    def abort(context: Any, e: RpcStatus) -> None:
        context.abort(grpc.StatusCode[e.code], e.message)

    class Prediction(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC method name
            try:
                return core.predict_proto(request)
            except RpcStatus as e:
                abort(context, e)

        def GetModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
            try:
                if not request.HasField("model_spec"):
                    raise RpcStatus("INVALID_ARGUMENT", "Missing ModelSpec")
                if not request.metadata_field:
                    raise RpcStatus("INVALID_ARGUMENT",
                                    "GetModelMetadataRequest must specify at least one metadata_field")
                for f in request.metadata_field:
                    if f != "signature_def":
                        raise RpcStatus("INVALID_ARGUMENT", f"Metadata field {f} is not supported")
                spec = request.model_spec
                version = spec.version.value if spec.HasField("version") else None
                name, v, sdm = core.metadata_parts(spec.name, version, spec.version_label or None)
                resp = get_model_metadata_pb2.GetModelMetadataResponse()
                resp.model_spec.name = name
                resp.model_spec.version.value = v
                resp.metadata["signature_def"].Pack(sdm)
                return resp
            except RpcStatus as e:
                abort(context, e)

        def _unimplemented(self, request: Any, context: Any) -> Any:
            abort(context, RpcStatus("UNIMPLEMENTED",
                                     "the local tfs-builder server implements Predict and "
                                     "GetModelMetadata only; use tensorflow/serving for this API"))

        Classify = Regress = MultiInference = _unimplemented  # noqa: N815

    class Models(model_service_pb2_grpc.ModelServiceServicer):
        def GetModelStatus(self, request: Any, context: Any) -> Any:  # noqa: N802
            try:
                if not request.HasField("model_spec"):
                    raise RpcStatus("INVALID_ARGUMENT", "Missing ModelSpec")
                spec = request.model_spec
                version = spec.version.value if spec.HasField("version") else None
                return core.status_proto(spec.name, version, spec.version_label or None)
            except RpcStatus as e:
                abort(context, e)

        def HandleReloadConfigRequest(self, request: Any, context: Any) -> Any:  # noqa: N802
            from tensorflow.core.protobuf import error_codes_pb2

            resp = model_management_pb2.ReloadConfigResponse()
            try:
                try:
                    entries = entries_from_proto(request.config, "ReloadConfigRequest.config")
                except ConfigError as e:
                    raise RpcStatus("INVALID_ARGUMENT", str(e)) from None
                errors = server.reload_config(entries)
                if errors:
                    raise RpcStatus("UNKNOWN", "; ".join(errors))
                resp.status.error_code = error_codes_pb2.OK
                return resp
            except RpcStatus as e:
                resp.status.error_code = error_codes_pb2.Code.Value(e.code)
                resp.status.error_message = e.message
                context.set_code(grpc.StatusCode[e.code])
                context.set_details(e.message)
                return resp

    return Prediction(), Models()


def _make_http_handler(core: ServingCore, max_body: int, metrics_path: str | None) -> type:
    from google.protobuf import json_format

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "tfs-builder-local"

        def setup(self) -> None:
            super().setup()
            # Headers and body go out as two writes; without NODELAY, Nagle + the client's
            # delayed ACK add ~40 ms to every keep-alive response.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            pass  # per-request access logs would drown the load/unload log

        def _send(self, status: int, payload: Any, content_type: str = "application/json") -> None:
            data = payload if isinstance(payload, bytes) else (
                json.dumps(payload, indent=None) + "\n").encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        def _error(self, e: RpcStatus) -> None:
            self._send(e.http_status, {"error": e.message})

        def _body(self) -> bytes:
            try:
                n = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                raise RpcStatus("INVALID_ARGUMENT", "Content-Length is not an integer") from None
            if n > max_body:
                # Drain (bounded) so the client reads our answer instead of a reset connection.
                left = n if n <= 4 * max_body else 0
                while left > 0:
                    chunk = self.rfile.read(min(left, 1 << 20))
                    if not chunk:
                        break
                    left -= len(chunk)
                self.close_connection = True
                raise RpcStatus("RESOURCE_EXHAUSTED",
                                f"Request body of {n} bytes exceeds the limit of {max_body} bytes "
                                "(--rest_api_max_body_bytes)")
            return self.rfile.read(n) if n > 0 else b""

        def _dispatch(self, method: str) -> None:
            path = self.path.split("?", 1)[0]
            try:
                body = self._body()  # always drain it, or keep-alive would read it as a request
                if metrics_path and method == "GET" and path == metrics_path:
                    self._send(200, core.metrics.text().encode(), "text/plain; version=0.0.4")
                    return
                if not path.lower().startswith("/v1/"):
                    raise RpcStatus("NOT_FOUND", f"no handler for {method} {path}: the REST API lives under /v1/")
                m = (_PREDICT_RE if method == "POST" else _STATUS_RE).fullmatch(path)
                if m is None or method not in ("GET", "POST"):
                    raise RpcStatus("INVALID_ARGUMENT", f"Malformed request: {method} {path}")
                from urllib.parse import unquote

                name = unquote(m.group(1) or "")
                version = int(m.group(2)) if m.group(2) else None
                label = unquote(m.group(3)) if m.group(3) else None
                if method == "POST":
                    if m.group(4).lower() != "predict":
                        raise RpcStatus("UNIMPLEMENTED",
                                        f"{m.group(4)} is not implemented by the local tfs-builder "
                                        "server; use tensorflow/serving for it")
                    self._send(200, core.predict_rest(name, version, label, body))
                elif (m.group(4) or "").lower() == "metadata":
                    name, v, sdm = core.metadata_parts(name, version, label)
                    sig = json_format.MessageToDict(sdm, preserving_proto_field_name=True,
                                                    including_default_value_fields=True)
                    self._send(200, {"model_spec": {"name": name, "signature_name": "", "version": str(v)},
                                     "metadata": {"signature_def": sig}})
                else:
                    resp = core.status_proto(name, version, label)
                    self._send(200, json_format.MessageToDict(resp, including_default_value_fields=True))
            except RpcStatus as e:
                self._error(e)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
            except Exception as e:  # noqa: BLE001 - a bug must still answer 500, not hang the client
                core.manager.log.exception("internal error serving %s %s", method, path)
                self._error(RpcStatus("INTERNAL", f"internal error: {type(e).__name__}: {e}"))

        def do_GET(self) -> None:  # noqa: N802 - stdlib naming
            self._dispatch("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._dispatch("POST")

        def do_PUT(self) -> None:  # noqa: N802
            self._dispatch("PUT")

        def do_DELETE(self) -> None:  # noqa: N802
            self._dispatch("DELETE")

    return Handler


class _QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # client disconnects are not server errors


# ---------------------------------------------------------------------------------------------
# Server handles: one interface for the local server, a subprocess, and a container


class _LogBuffer(logging.Handler):
    def __init__(self, echo: bool) -> None:
        super().__init__()
        self.lines: collections.deque[str] = collections.deque(maxlen=20000)
        self.echo = echo
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        self.lines.append(line)
        if self.echo:
            print(line, file=sys.stderr, flush=True)


class ServerHandle:
    """What the integration suite needs from any backend: start, wait until every configured
    version is AVAILABLE (checked through gRPC GetModelStatus, as a client would), addresses,
    the log, and stop. Usable as a context manager; on an exception the log is printed."""

    kind = "server"
    host = "127.0.0.1"
    grpc_port = 0
    rest_port = 0
    cold_start_seconds: float | None = None

    def __init__(self) -> None:
        self._t_start = 0.0
        self.expected_entries: list[ModelEntry] = []  # host-side view of the configuration

    @property
    def grpc_target(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.rest_port}"

    def start(self) -> ServerHandle:  # pragma: no cover - overridden
        raise NotImplementedError

    def stop(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def log_text(self) -> str:  # pragma: no cover - overridden
        return ""

    def expected_versions(self) -> dict[str, list[int]]:
        return {e.name: e.aspired(e.on_disk()) for e in self.expected_entries}

    def wait_until_ready(self, deadline: float = 60.0) -> float:
        """Block until every version the config + disk call for is AVAILABLE; returns seconds
        since start(). A version that ends in error, or the deadline, raises ServingError."""
        import grpc
        from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

        end = time.monotonic() + deadline
        want = self.expected_versions()
        missing_models = [n for n, vs in want.items() if not vs]
        if missing_models:
            self._fail(f"no servable versions on disk for model(s) {', '.join(missing_models)}: "
                       "export a version first")
        pending = dict(want)
        last = ""
        with grpc.insecure_channel(self.grpc_target) as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            while pending:
                self._check_alive()
                for name in list(pending):
                    req = get_model_status_pb2.GetModelStatusRequest()
                    req.model_spec.name = name
                    try:
                        resp = stub.GetModelStatus(req, timeout=5)
                    except grpc.RpcError as e:
                        last = f"{name}: {e.code().name} {e.details()}"
                        continue
                    states = {s.version: s for s in resp.model_version_status}
                    for v in pending[name]:
                        s = states.get(v)
                        if s is not None and s.state == get_model_status_pb2.ModelVersionStatus.END \
                                and s.status.error_code != 0:
                            self._fail(f"model {name} version {v} failed to load: {s.status.error_message}")
                    if all(v in states and states[v].state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
                           for v in pending[name]):
                        del pending[name]
                    else:
                        state_name = get_model_status_pb2.ModelVersionStatus.State.Name
                        last = f"{name}: " + ", ".join(
                            f"{v}={state_name(states[v].state) if v in states else 'absent'}"
                            for v in pending[name])
                if pending and time.monotonic() > end:
                    self._fail(f"not every version AVAILABLE after {deadline:.0f} s ({last})")
                if pending:
                    time.sleep(0.1)
        self.cold_start_seconds = time.monotonic() - self._t_start
        return self.cold_start_seconds

    def _check_alive(self) -> None:
        pass

    def _fail(self, message: str) -> None:
        self.print_log()
        raise ServingError(f"{self.kind} server: {message}")

    def print_log(self, file: Any = None) -> None:
        out = file or sys.stderr
        print(LOG_BEGIN.format(self.kind), file=out)
        print(self.log_text().rstrip("\n"), file=out)
        print(LOG_END.format(self.kind), file=out, flush=True)

    def __enter__(self) -> ServerHandle:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is not None and exc_type is not ServingError:
                self.print_log()
        finally:
            self.stop()


class LocalServer(ServerHandle):
    """The TF-Serving-compatible server in this process (REST + gRPC threads, poll thread)."""

    kind = "local"

    def __init__(
        self,
        model_config_file: str | os.PathLike = "",
        model_name: str = "",
        model_base_path: str | os.PathLike = "",
        port: int = 0,
        rest_api_port: int = 0,
        host: str = "127.0.0.1",
        model_config_file_poll_wait_seconds: float = 0,
        file_system_poll_wait_seconds: float = 1,
        enable_model_warmup: bool = True,
        rest_api_max_body_bytes: int = DEFAULT_REST_MAX_BODY_BYTES,
        grpc_max_message_bytes: int = GRPC_MAX_MESSAGE_BYTES,
        monitoring_config_file: str | os.PathLike = "",
        batching_parameters_file: str | os.PathLike = "",
        grpc_max_threads: int = 16,
        echo_log: bool = False,
        mixed_precision: str = "",
    ) -> None:
        super().__init__()
        self.model_config_file = str(model_config_file or "")
        self.host = host
        self._want_ports = (int(port), int(rest_api_port))
        self.config_poll = float(model_config_file_poll_wait_seconds)
        self.fs_poll = float(file_system_poll_wait_seconds)
        self.max_body = int(rest_api_max_body_bytes)
        self.grpc_max = int(grpc_max_message_bytes)
        self.grpc_max_threads = int(grpc_max_threads)
        self._log_handler = _LogBuffer(echo_log)
        self.log = logging.getLogger(f"builder.serve.server.{id(self)}")
        self.log.propagate = False
        self.log.setLevel(logging.INFO)
        self.log.addHandler(self._log_handler)
        self.metrics_path = self._read_monitoring(monitoring_config_file)
        if batching_parameters_file:
            from builder.config.companions import parse_batching_parameters

            try:
                text = Path(batching_parameters_file).read_text(encoding="utf-8")
            except OSError as e:
                raise InputError(f"--batching_parameters_file {batching_parameters_file}: cannot read ({e})") from None
            parse_batching_parameters(text, str(batching_parameters_file))
            self.log.info("batching parameters in %s parsed; the local server runs each request "
                          "at the batch size sent (no cross-request batching)", batching_parameters_file)
        if self.model_config_file and (model_name or model_base_path):
            raise InputError("pass either --model_config_file or --model_name/--model_base_path, not both")
        if self.model_config_file:
            self.expected_entries = read_model_server_config(self.model_config_file)
            self._config_text = Path(self.model_config_file).read_text(encoding="utf-8")
        elif model_name and model_base_path:
            base = os.path.abspath(os.fspath(model_base_path))
            if not os.path.isdir(base):
                raise InputError(f"--model_base_path {base} is not a directory: pass the model's "
                                 "directory (the one holding numeric version folders)")
            self.expected_entries = [ModelEntry(str(model_name), base)]
            self._config_text = ""
        else:
            raise InputError("no models to serve: pass --model_config_file models.config, or "
                             "--model_name NAME --model_base_path /abs/path/NAME")
        from builder.optimize import bf16  # bf16 hook (issue 12): TF Serving's --mixed_precision

        self.mixed_precision = str(mixed_precision or "")
        self.manager = ModelManager(self.log, enable_model_warmup,
                                    bf16.server_session_config(self.mixed_precision, self.log))
        self.metrics = _Metrics()
        self.core = ServingCore(self.manager, self.metrics)
        self._grpc: Any = None
        self._http: Any = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    def _read_monitoring(self, path: str | os.PathLike) -> str | None:
        if not path:
            return None
        from builder.config.companions import PROMETHEUS_PATH, parse_monitoring_config

        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise InputError(f"--monitoring_config_file {path}: cannot read ({e})") from None
        msg = parse_monitoring_config(text, str(path))
        if not msg.prometheus_config.enable:
            return None
        return msg.prometheus_config.path or PROMETHEUS_PATH

    def start(self) -> LocalServer:
        self._t_start = time.monotonic()
        errors = self.manager.apply_config(self.expected_entries)
        if errors:
            self.manager.shutdown()
            if not self._log_handler.echo:
                self.print_log()
            raise ServingError("models failed to load at startup: " + "; ".join(errors))
        self._start_grpc()
        try:
            self._start_http()
        except BaseException:
            self._grpc.stop(0)
            raise
        self.log.info("gRPC listening on %s:%d", self.host, self.grpc_port)
        self.log.info("REST listening on %s:%d", self.host, self.rest_port)
        if self.fs_poll > 0 or (self.config_poll > 0 and self.model_config_file):
            t = threading.Thread(target=self._poll_loop, name="tfs-local-poll", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _start_grpc(self) -> None:
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.grpc_max_threads, thread_name_prefix="tfs-grpc"),
            options=[("grpc.max_receive_message_length", self.grpc_max),
                     ("grpc.max_send_message_length", self.grpc_max),
                     ("grpc.so_reuseport", 0)],
        )
        pred, models = _grpc_servicers(self.core, self)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(pred, server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(models, server)
        want = self._want_ports[0]
        try:
            port = server.add_insecure_port(f"{self.host}:{want}")
        except RuntimeError:
            port = 0
        if not port:
            raise ServingError(f"--port {want}: cannot listen for gRPC on {self.host}:{want} (in use?): "
                               "pick another port, or 0 for a free one")
        server.start()
        self._grpc, self.grpc_port = server, port

    def _start_http(self) -> None:
        handler = _make_http_handler(self.core, self.max_body, self.metrics_path)
        want = self._want_ports[1]
        try:
            httpd = _QuietHTTPServer((self.host, want), handler)
        except OSError as e:
            raise ServingError(f"--rest_api_port {want}: cannot listen on {self.host}:{want} ({e.strerror}): "
                               "pick another port, or 0 for a free one") from None
        self._http, self.rest_port = httpd, httpd.server_address[1]
        t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2},
                             name="tfs-rest", daemon=True)
        t.start()
        self._threads.append(t)

    def reload_config(self, entries: list[ModelEntry]) -> list[str]:
        """Apply a new config now (the gRPC HandleReloadConfigRequest path)."""
        self.log.info("Reloading config: %s", ", ".join(e.name for e in entries))
        return self.manager.apply_config(entries, strict=True)

    def _poll_loop(self) -> None:
        next_fs = time.monotonic() + self.fs_poll if self.fs_poll > 0 else math.inf
        next_cfg = time.monotonic() + self.config_poll if self.config_poll > 0 and self.model_config_file else math.inf
        while not self._stop.is_set():
            now = time.monotonic()
            wake = min(next_fs, next_cfg)
            if wake > now:
                self._stop.wait(min(wake - now, 0.5))
                continue
            try:
                if now >= next_cfg:
                    next_cfg = now + self.config_poll
                    self._poll_config()
                if now >= next_fs:
                    next_fs = now + self.fs_poll
                    self.manager.poll()
            except Exception:  # noqa: BLE001 - the poller must survive anything a disk does
                self.log.exception("poll failed")

    def _poll_config(self) -> None:
        try:
            text = Path(self.model_config_file).read_text(encoding="utf-8")
        except OSError as e:
            self.log.error("cannot read %s (%s): keeping the current config", self.model_config_file, e)
            return
        if text == self._config_text:
            return
        try:
            entries = parse_model_server_config(text, self.model_config_file)
        except ConfigError as e:
            self.log.error("%s: keeping the current config", e)
            return
        self._config_text = text
        self.expected_entries = entries
        self.log.info("config file %s changed: applying it", self.model_config_file)
        for err in self.manager.apply_config(entries):
            self.log.error("%s", err)

    def log_text(self) -> str:
        return "\n".join(self._log_handler.lines) + "\n"

    def stop(self) -> None:
        self._stop.set()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._grpc is not None:
            self._grpc.stop(grace=1).wait(5)
            self._grpc = None
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()
        self.manager.shutdown()


class ProcessServer(ServerHandle):
    """``python -m builder serve`` in a child process: the CLI path end to end, and a server
    that does not share the client's interpreter (so load tests measure the server)."""

    kind = "local-process"

    def __init__(self, model_config_file: str | os.PathLike, *, extra_flags: Iterable[str] = (),
                 file_system_poll_wait_seconds: float = 1, model_config_file_poll_wait_seconds: float = 0,
                 python: str = sys.executable, start_timeout: float = 120.0) -> None:
        super().__init__()
        self.model_config_file = str(model_config_file)
        self.expected_entries = read_model_server_config(self.model_config_file)
        self.flags = [
            "--port", "0", "--rest_api_port", "0",
            "--model_config_file", self.model_config_file,
            "--file_system_poll_wait_seconds", str(file_system_poll_wait_seconds),
            "--model_config_file_poll_wait_seconds", str(model_config_file_poll_wait_seconds),
            *extra_flags,
        ]
        self.python = python
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self._logfile = tempfile.NamedTemporaryFile(prefix="tfs-local-", suffix=".log", delete=False)

    def start(self) -> ProcessServer:
        root = Path(__file__).resolve().parents[2]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env["PYTHONUNBUFFERED"] = "1"
        self._t_start = time.monotonic()
        self.proc = subprocess.Popen(
            [self.python, "-m", "builder", "serve", *self.flags],
            cwd=str(root), env=env, stdout=self._logfile, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        end = time.monotonic() + self.start_timeout
        while not (self.grpc_port and self.rest_port):
            text = self.log_text()
            m = re.search(r"gRPC listening on [^:\s]+:(\d+)", text)
            r = re.search(r"REST listening on [^:\s]+:(\d+)", text)
            if m and r:
                self.grpc_port, self.rest_port = int(m.group(1)), int(r.group(1))
                break
            self._check_alive()
            if time.monotonic() > end:
                self._fail(f"no 'listening' lines within {self.start_timeout:.0f} s")
            time.sleep(0.1)
        return self

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            self._fail(f"`python -m builder serve` exited with code {self.proc.returncode}")

    def log_text(self) -> str:
        try:
            return Path(self._logfile.name).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._logfile.close()

    def __del__(self) -> None:
        try:
            os.unlink(self._logfile.name)
        except (OSError, AttributeError):
            pass


def docker_unavailable_reason() -> str | None:
    """Why a Docker engine cannot be used here (None if it can): SDK missing or ping fails."""
    try:
        import docker
    except ImportError:
        return "the docker Python SDK is not installed (pip install docker)"
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        client = docker.from_env(timeout=5)
        client.ping()
        client.close()
    except Exception as e:  # noqa: BLE001 - any failure means "no usable engine"
        cause: BaseException = e
        while cause.__cause__ is not None or cause.__context__ is not None:
            cause = cause.__cause__ or cause.__context__  # the socket error, not the SDK wrapper
        return f"no Docker engine reachable at {host} ({type(cause).__name__}: {str(cause)[:120]})"
    return None


def gpu_unavailable_reason() -> str | None:
    """Why GPU containers cannot run here (None if an NVIDIA GPU and tooling are visible)."""
    if not (os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi")):
        return "no NVIDIA GPU on this machine (/dev/nvidia0 and nvidia-smi absent)"
    return None


class ContainerServer(ServerHandle):
    """``tensorflow/serving`` in Docker, through the docker SDK: the repository mounted read-only
    at /models, the config rewritten to container paths, ports published on 127.0.0.1 only."""

    kind = "container"

    def __init__(self, repo: str | os.PathLike, model_config_file: str | os.PathLike, *,
                 image: str = "tensorflow/serving:2.17.0", gpu: bool = False,
                 batching_parameters_file: str | os.PathLike = "",
                 monitoring_config_file: str | os.PathLike = "",
                 file_system_poll_wait_seconds: float = 1,
                 model_config_file_poll_wait_seconds: float = 0,
                 enable_model_warmup: bool = True) -> None:
        super().__init__()
        self.repo = Path(repo).resolve()
        self.image, self.gpu = image, gpu
        self.kind = f"container {image}"
        self.expected_entries = read_model_server_config(model_config_file)
        self._cfgdir = Path(tempfile.mkdtemp(prefix="tfs-container-cfg-"))
        rewritten = []
        for e in self.expected_entries:
            try:
                rel = Path(e.base_path).resolve().relative_to(self.repo)
            except ValueError:
                raise ConfigError(f"{model_config_file}: base_path {e.base_path} of model {e.name} is "
                                  f"outside the mounted repository {self.repo}: keep models under it") from None
            rewritten.append(ModelEntry(e.name, f"/models/{rel.as_posix()}", e.policy, e.num_versions,
                                        e.versions, e.labels))
        (self._cfgdir / "models.config").write_text(model_server_config_text(rewritten), encoding="utf-8")
        self.flags = [
            "--port=8500", "--rest_api_port=8501",
            "--model_config_file=/config/models.config",
            f"--file_system_poll_wait_seconds={int(file_system_poll_wait_seconds)}",
            f"--model_config_file_poll_wait_seconds={int(model_config_file_poll_wait_seconds)}",
            f"--enable_model_warmup={'true' if enable_model_warmup else 'false'}",
        ]
        for flag, src, dst in (("--batching_parameters_file", batching_parameters_file, "batching_parameters.txt"),
                               ("--monitoring_config_file", monitoring_config_file, "monitoring.config")):
            if src:
                shutil.copyfile(src, self._cfgdir / dst)
                self.flags.append(f"{flag}=/config/{dst}")
                if dst.startswith("batching"):
                    self.flags.append("--enable_batching=true")
        self.container: Any = None
        self._client: Any = None

    def start(self) -> ContainerServer:
        import docker

        reason = docker_unavailable_reason()
        if reason:
            raise UnavailableError(f"cannot start {self.image}: {reason}")
        if self.gpu and gpu_unavailable_reason():
            raise UnavailableError(f"cannot start {self.image} with a GPU: {gpu_unavailable_reason()}")
        self._client = docker.from_env()
        try:
            self._client.images.get(self.image)
        except docker.errors.ImageNotFound:
            try:
                self._client.images.pull(self.image)
            except docker.errors.APIError as e:
                raise UnavailableError(f"image {self.image} is not present and cannot be pulled ({e})") from None
        kwargs: dict[str, Any] = {}
        if self.gpu:
            kwargs["device_requests"] = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
        self._t_start = time.monotonic()
        self.container = self._client.containers.run(
            self.image,
            entrypoint=["tensorflow_model_server"],
            command=self.flags,
            volumes={str(self.repo): {"bind": "/models", "mode": "ro"},
                     str(self._cfgdir): {"bind": "/config", "mode": "ro"}},
            ports={"8500/tcp": ("127.0.0.1", None), "8501/tcp": ("127.0.0.1", None)},
            detach=True,
            **kwargs,
        )
        end = time.monotonic() + 30
        while True:
            self.container.reload()
            ports = self.container.attrs.get("NetworkSettings", {}).get("Ports") or {}
            g, r = ports.get("8500/tcp"), ports.get("8501/tcp")
            if g and r:
                self.grpc_port, self.rest_port = int(g[0]["HostPort"]), int(r[0]["HostPort"])
                return self
            self._check_alive()
            if time.monotonic() > end:
                self._fail("published ports did not appear within 30 s")
            time.sleep(0.2)

    def _check_alive(self) -> None:
        if self.container is not None:
            self.container.reload()
            if self.container.status in ("exited", "dead"):
                self._fail(f"container exited ({self.container.attrs['State'].get('ExitCode')})")

    def log_text(self) -> str:
        if self.container is None:
            return ""
        try:
            return self.container.logs().decode("utf-8", "replace")
        except Exception as e:  # noqa: BLE001 - the log is best effort once the engine is gone
            return f"(could not read container log: {e})"

    def stop(self) -> None:
        try:
            if self.container is not None:
                try:
                    self.container.stop(timeout=10)
                finally:
                    self.container.remove(force=True)
                self.container = None
        finally:
            shutil.rmtree(self._cfgdir, ignore_errors=True)
            if self._client is not None:
                self._client.close()
                self._client = None


def trt_engine_builds(log_text: str) -> list[str]:
    """Log lines where TF-TRT built an engine (TRTEngineOp at request time: the artefact was not
    pre-built for that shape, so the request paid seconds to minutes of build time)."""
    return [line for line in log_text.splitlines() if TRT_ENGINE_BUILD in line]


# ---------------------------------------------------------------------------------------------
# CLI


def serve_command(
    port: int = 8500,
    rest_api_port: int = 8501,
    model_config_file: str = "",
    model_name: str = "",
    model_base_path: str = "",
    model_config_file_poll_wait_seconds: float = 0,
    file_system_poll_wait_seconds: float = 1,
    enable_model_warmup: bool = True,
    rest_api_max_body_bytes: int = DEFAULT_REST_MAX_BODY_BYTES,
    grpc_max_message_bytes: int = GRPC_MAX_MESSAGE_BYTES,
    monitoring_config_file: str = "",
    batching_parameters_file: str = "",
    enable_batching: bool = False,
    host: str = "127.0.0.1",
    mixed_precision: str = "",
) -> None:
    """Serve a model repository locally, speaking TF Serving's REST and gRPC APIs.

    For machines without Docker: same flags and protocols as tensorflow_model_server, so clients
    and tests written for TF Serving run unchanged. Runs until Ctrl-C or SIGTERM.

    Args:
        port: gRPC port (PredictionService, ModelService); 0 picks a free port. The chosen
            port is printed as "gRPC listening on HOST PORT" (host and port joined by a colon).
        rest_api_port: REST port for /v1/models/...; 0 picks a free port, printed as "REST
            listening on ..." in the same way.
        model_config_file: models.config (ModelServerConfig text proto) listing the models,
            their base paths, version policies and labels. Base paths must be absolute.
        model_name: serve one model under this name (instead of --model_config_file).
        model_base_path: that model's directory holding numeric version folders.
        model_config_file_poll_wait_seconds: re-read --model_config_file this often (0 means
            read once). A config that fails to parse is ignored and the old one kept.
        file_system_poll_wait_seconds: re-scan base paths for added or removed numeric
            versions this often (0 means scan once at startup).
        enable_model_warmup: run each version's assets.extra/tf_serving_warmup_requests at
            load; a bad record fails that version's load, as in TF Serving.
        rest_api_max_body_bytes: REST bodies larger than this get RESOURCE_EXHAUSTED (HTTP
            429) without being parsed.
        grpc_max_message_bytes: largest gRPC message accepted (TF Serving uses 2^31-1).
        monitoring_config_file: MonitoringConfig text proto; with prometheus_config.enable the
            REST port also serves request metrics at prometheus_config.path.
        batching_parameters_file: BatchingParameters text proto; parsed and checked as TF
            Serving would, but the local server does not batch across requests.
        enable_batching: accepted for flag compatibility with tensorflow_model_server.
        host: address to bind; 127.0.0.1 by default (0.0.0.0 listens on all interfaces).
        mixed_precision: bfloat16 turns on oneDNN's bf16 rewrite
            (auto_mixed_precision_onednn_bfloat16) for every model, as tensorflow_model_server
            --mixed_precision=bfloat16 does; what a bf16 serving-profile export wants.
    """
    server = LocalServer(
        model_config_file=model_config_file,
        model_name=model_name,
        model_base_path=model_base_path,
        port=int(port),
        rest_api_port=int(rest_api_port),
        host=str(host),
        model_config_file_poll_wait_seconds=float(model_config_file_poll_wait_seconds),
        file_system_poll_wait_seconds=float(file_system_poll_wait_seconds),
        enable_model_warmup=_as_bool(enable_model_warmup, "--enable_model_warmup"),
        rest_api_max_body_bytes=int(rest_api_max_body_bytes),
        grpc_max_message_bytes=int(grpc_max_message_bytes),
        monitoring_config_file=monitoring_config_file,
        batching_parameters_file=batching_parameters_file,
        echo_log=True,
        mixed_precision=str(mixed_precision or ""),  # bf16 hook (issue 12)
    )
    del enable_batching
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_signal)
    server.start()
    try:
        print(f"gRPC listening on {server.host}:{server.grpc_port}", flush=True)
        print(f"REST listening on {server.host}:{server.rest_port}", flush=True)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        print("shutting down", flush=True)
        server.stop()
        signal.signal(signal.SIGTERM, previous)


def _as_bool(value: object, flag: str) -> bool:
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise InputError(f"{flag} {value!r} is not a boolean: use true or false")

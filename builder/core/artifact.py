"""The one reader/writer of what a version directory holds besides the graph's own variables.

``REPO/NAME/VERSION/`` is read by many stages (config, inspect, the image gate, publish, serve,
bench, serve_check, ci_pipeline). Each used to parse ``saved_model.pb``, ``build_info.json``,
``golden.npz`` and the warmup TFRecord by itself, with different error wording and different
bugs (numpy ``S`` arrays drop trailing NUL bytes, so serialized ``tf.Example`` goldens were
corrupted). Everything that reads or writes these files goes through here, so a fix lands once.

TensorFlow and protobuf are imported inside the functions: ``python -m builder --help`` and the
stages that only read JSON must not pay for TensorFlow's import.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from builder.core.errors import InputError
from builder.core.layout import atomic_write_text

SAVED_MODEL_FILE = "saved_model.pb"
EXTRA_DIR = Path("assets.extra")
WARMUP_FILE = EXTRA_DIR / "tf_serving_warmup_requests"
BUILD_INFO_FILE = EXTRA_DIR / "build_info.json"
GOLDEN_FILE = EXTRA_DIR / "golden.npz"
MANIFEST_FILE = EXTRA_DIR / "manifest.json"
MAX_WARMUP_RECORDS = 1000  # TF Serving's WarmupConsts::kMaxNumRecords: more fails the load

# golden.npz keeps string tensors as (flat bytes, lengths, shape) so no byte is lost; numpy's
# fixed-width ``S`` dtype strips trailing NULs and object arrays would need pickle to load.
_STR_BYTES, _STR_LENGTHS, _STR_SHAPE = "#bytes", "#lengths", "#shape"


# --------------------------------------------------------------------------- saved_model.pb


def read_saved_model(version_path: str | os.PathLike) -> Any:
    """The ``SavedModel`` proto of a version directory (InputError naming the file otherwise)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    pb = Path(version_path) / SAVED_MODEL_FILE
    if not pb.is_file():
        raise InputError(f"{pb}: missing: {Path(version_path)} is not a SavedModel directory "
                         "(re-export it, or remove it from the repository)")
    sm = saved_model_pb2.SavedModel()
    try:
        sm.ParseFromString(pb.read_bytes())
    except (DecodeError, RuntimeWarning, ValueError):
        raise InputError(f"{pb}: not a SavedModel protobuf (corrupt or truncated): re-export it") from None
    return sm


def graph_defs(version_path: str | os.PathLike) -> list[Any]:
    """The GraphDef of every meta graph in ``saved_model.pb``."""
    return [mg.graph_def for mg in read_saved_model(version_path).meta_graphs]


def dtype_name(dtype: Any) -> str:
    """numpy-style dtype name ("float32", "string") of a TF DataType enum, tf.DType or numpy dtype."""
    import tensorflow as tf

    try:
        return tf.as_dtype(dtype).name
    except TypeError:
        return str(dtype)


# --------------------------------------------------------------------------- build_info.json


def read_build_info(version_path: str | os.PathLike) -> dict[str, Any] | None:
    """build_info.json of a version, None when absent; a corrupt file is the user's to fix."""
    p = Path(version_path) / BUILD_INFO_FILE
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"{p}: unreadable build_info.json ({e}): re-export this version") from None
    if not isinstance(data, dict):
        raise InputError(f"{p}: build_info.json is not a JSON object: re-export this version")
    return data


def write_build_info(version_path: str | os.PathLike, info: dict[str, Any]) -> Path:
    """Write build_info.json atomically (a reader sees the old or the new file, never half)."""
    p = Path(version_path) / BUILD_INFO_FILE
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(p, json.dumps(info, indent=2) + "\n")
    return p


# --------------------------------------------------------------------------- golden.npz


@dataclass
class Golden:
    """The parity sample inputs and the source model's outputs, keyed by signature alias."""

    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]


def _pack(prefix: str, arr: Any, out: dict[str, np.ndarray]) -> None:
    a = np.asarray(arr)
    if a.dtype.kind in ("O", "S", "U"):
        items = [x if isinstance(x, bytes) else str(x).encode() for x in a.reshape(-1).tolist()]
        out[prefix + _STR_BYTES] = np.frombuffer(b"".join(items), dtype=np.uint8)
        out[prefix + _STR_LENGTHS] = np.array([len(x) for x in items], dtype=np.int64)
        out[prefix + _STR_SHAPE] = np.array(a.shape, dtype=np.int64)
    else:
        out[prefix] = a


def _unpack(z: Any) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for key in z.files:
        if key.endswith(_STR_BYTES):
            base = key[: -len(_STR_BYTES)]
            flat, lengths = z[key].tobytes(), z[base + _STR_LENGTHS]
            ends = np.cumsum(lengths)
            items = [flat[e - n:e] for e, n in zip(ends.tolist(), lengths.tolist())]
            arr = np.empty(len(items), dtype=object)
            arr[:] = items
            arrays[base] = arr.reshape(tuple(z[base + _STR_SHAPE].tolist()))
        elif not key.endswith((_STR_LENGTHS, _STR_SHAPE)):
            arr = z[key]
            arrays[key] = arr.astype(object) if arr.dtype.kind == "S" else arr
    return arrays


def write_npz(path: str | os.PathLike, arrays: dict[str, Any]) -> Path:
    """An .npz whose string arrays are packed byte-exact (``KEY#bytes``/``#lengths``/``#shape``);
    ``read_npz`` gives them back as object arrays of bytes."""
    packed: dict[str, np.ndarray] = {}
    for k, v in arrays.items():
        _pack(k, v, packed)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "wb") as f:
        np.savez(f, **packed)
    return p


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Arrays of an .npz (no pickle), packed strings unpacked; ``S`` arrays become object arrays
    of bytes. ValueError for object (pickled) arrays, OSError for unreadable files."""
    with np.load(path, allow_pickle=False) as z:
        return _unpack(z)


def write_golden(version_path: str | os.PathLike, inputs: dict[str, Any], outputs: dict[str, Any],
                 signatures: dict[str, tuple[dict[str, Any], dict[str, Any]]] | None = None) -> Path:
    """golden.npz: ``in/<alias>`` and ``out/<alias>`` (the serving_default signature), and
    ``sig/<KEY>/in|out/<alias>`` for every other signature; strings kept byte-exact."""
    arrays: dict[str, Any] = {f"in/{k}": v for k, v in inputs.items()}
    arrays.update({f"out/{k}": v for k, v in outputs.items()})
    for key, (ins, outs) in (signatures or {}).items():
        arrays.update({f"sig/{key}/in/{k}": v for k, v in ins.items()})
        arrays.update({f"sig/{key}/out/{k}": v for k, v in outs.items()})
    return write_npz(Path(version_path) / GOLDEN_FILE, arrays)


def read_golden(version_path: str | os.PathLike) -> Golden | None:
    """The golden inputs/outputs of a version (None when it has none). Strings come back as
    object arrays of ``bytes``, exactly as written."""
    p = Path(version_path) / GOLDEN_FILE
    if not p.is_file():
        return None
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = _unpack(z)
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{p}: unreadable golden.npz ({e}): re-export this version") from None
    return Golden(
        inputs={k[3:]: v for k, v in arrays.items() if k.startswith("in/")},
        outputs={k[4:]: v for k, v in arrays.items() if k.startswith("out/")},
    )


# --------------------------------------------------------------------------- warmup records


def count_tfrecords(path: str | os.PathLike) -> int:
    """Count records by walking TFRecord framing (u64 length, u32 crc, data, u32 crc), no TF."""
    n = 0
    with open(path, "rb") as f:
        while True:
            head = f.read(8)
            if not head:
                return n
            if len(head) < 8:
                raise InputError(f"{path}: truncated TFRecord file")
            (length,) = struct.unpack("<Q", head)
            f.seek(4 + length + 4, 1)
            n += 1


def iter_tfrecords(path: str | os.PathLike) -> Iterator[bytes]:
    """Raw records of a TFRecord file (TensorFlow's reader: it checks the CRCs)."""
    import tensorflow as tf

    yield from tf.compat.v1.io.tf_record_iterator(str(path))


def write_tfrecords(path: str | os.PathLike, records: list[bytes]) -> int:
    """Write serialized records as a TFRecord file; returns how many were written."""
    import tensorflow as tf

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as w:
        for r in records:
            w.write(r)
    return len(records)

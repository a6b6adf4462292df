"""One loaded model version: its graph, session, signatures and warmup.

Why the TF1 loader and one ``tf.Graph`` + ``Session`` per version: that is what
``tensorflow_model_server`` does (``SavedModelBundle``), so TF1 exports, signatures that feed
non-placeholder tensors and ``main_op`` / ``legacy_init_op`` table initialisers all behave as
they do there. Request threads hold a reference while they run; unloading waits for them, so a
version removed mid-request still answers.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from builder.core.artifact import MAX_WARMUP_RECORDS, WARMUP_FILE
from builder.serve.codec import shape_str, tensor_proto_to_array, tf_type_name
from builder.serve.status import RpcStatus


class Servable:
    """One model version in its own graph and session."""

    def __init__(self, name: str, version: int, path: str, log: logging.Logger) -> None:
        self.name, self.version, self.path, self.log = name, version, path, log
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
        sess = tf.compat.v1.Session(graph=graph)
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

    # -- warmup ----------------------------------------------------------------------------------
    def _warmup(self) -> None:
        import tensorflow as tf

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
                self._replay(record, n, path)
        except tf.errors.DataLossError as e:
            raise RpcStatus("DATA_LOSS",
                            f"{e.message}. Please verify your warmup data is in TFRecord format.") from None
        except RpcStatus as e:
            raise RpcStatus(e.code, f"warmup failed for {self.name} version {self.version}: {e.message}") from None
        self.warmup_records = n
        self.log.info("Finished reading warmup data for model at %s. Number of warmup records read: %d.",
                      path, n)

    def _replay(self, record: bytes, n: int, path: str) -> None:
        """Run one PredictionLog record, as saved_model_warmup.cc's RunWarmupRequest does."""
        from tensorflow_serving.apis import prediction_log_pb2

        log = prediction_log_pb2.PredictionLog()
        try:
            log.ParseFromString(record)
        except Exception:  # noqa: BLE001 - protobuf raises DecodeError subclasses
            raise RpcStatus("INVALID_ARGUMENT", f"Failed to parse warmup record {n} from {path}") from None
        kind = log.WhichOneof("log_type")
        if kind != "predict_log":
            raise RpcStatus("UNIMPLEMENTED",
                            f"warmup record {n} in {path} is a {kind}; "
                            "the local server runs predict_log records only")
        req = log.predict_log.request
        inputs = {k: tensor_proto_to_array(v) for k, v in req.inputs.items()}
        self.run(req.model_spec.signature_name, inputs, list(req.output_filter), api="grpc")

    # -- requests --------------------------------------------------------------------------------
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
        _check_input_names(sig, inputs)
        feed = {sig.inputs[alias].name: _checked_input(i, alias, sig.inputs[alias], inputs[alias])
                for i, alias in enumerate(sorted(inputs))}
        aliases = _output_aliases(sig, output_filter)
        _check_batch_sizes(sig, inputs)
        try:
            values = self.session.run([sig.outputs[a].name for a in aliases], feed_dict=feed)
        except tf.errors.OpError as e:
            from tensorflow.core.protobuf import error_codes_pb2

            raise RpcStatus(error_codes_pb2.Code.Name(e.error_code), e.message) from None
        return dict(zip(aliases, values, strict=True))

    # -- life cycle ------------------------------------------------------------------------------
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


def _check_input_names(sig: Any, inputs: dict[str, Any]) -> None:
    if set(inputs) == set(sig.inputs):
        return
    sent, want = sorted(inputs), sorted(sig.inputs)
    extra = sorted(set(sent) - set(want))
    missing = sorted(set(want) - set(sent))
    raise RpcStatus(
        "INVALID_ARGUMENT",
        f"input size does not match signature: {len(sent)}!={len(want)} len({{{','.join(sent)}}}) "
        f"!= len({{{','.join(want)}}}). Sent extra: {{{','.join(extra)}}}. Missing but required: "
        f"{{{','.join(missing)}}}.",
    )


def _checked_input(i: int, alias: str, info: Any, arr: Any) -> Any:
    import tensorflow as tf

    want = tf.dtypes.as_dtype(info.dtype)
    got = tf.string if arr.dtype.kind in "OSU" else tf.dtypes.as_dtype(arr.dtype)
    if got != want:
        raise RpcStatus("INVALID_ARGUMENT",
                        f"Expects arg[{i}] to be {tf_type_name(want)} but {tf_type_name(got)} is provided "
                        f"(input '{alias}', tensor {info.name})")
    if not info.tensor_shape.unknown_rank:
        dims = [d.size for d in info.tensor_shape.dim]
        if len(dims) != arr.ndim or any(d >= 0 and d != s for d, s in zip(dims, arr.shape, strict=True)):
            raise RpcStatus(
                "INVALID_ARGUMENT",
                f"Expected tensor's shape to be compatible with {shape_str(dims)} for input "
                f"'{alias}' (tensor {info.name}), but got {shape_str(arr.shape)}",
            )
    return arr


def _output_aliases(sig: Any, output_filter: list[str]) -> list[str]:
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
    return aliases


def _check_batch_sizes(sig: Any, inputs: dict[str, Any]) -> None:
    batch_inputs = [a for a in sig.inputs
                    if not sig.inputs[a].tensor_shape.unknown_rank
                    and sig.inputs[a].tensor_shape.dim and sig.inputs[a].tensor_shape.dim[0].size < 0]
    sizes = {a: inputs[a].shape[0] for a in batch_inputs}
    if len(set(sizes.values())) > 1:
        raise RpcStatus("INVALID_ARGUMENT",
                        "inputs have inconsistent batch sizes: "
                        + ", ".join(f"{a}={n}" for a, n in sorted(sizes.items()))
                        + " (every input's first dimension must match)")

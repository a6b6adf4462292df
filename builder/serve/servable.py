"""One loaded model version: its graph, session, signatures and warmup.

Why the TF1 loader and one ``tf.Graph`` + ``Session`` per version: that is what
``tensorflow_model_server`` does (``SavedModelBundle``), so TF1 exports, signatures that feed
non-placeholder tensors and ``main_op`` / ``legacy_init_op`` table initialisers all behave as
they do there. Request threads hold a reference while they run; unloading waits for them, so a
version removed mid-request still answers.

Tensors are fed through callables made from ``CallableOptions`` (cached per feed/fetch set): like
TF Serving's C++ ``Session::Run``, they check dtypes but not a placeholder's static shape, so
TF Serving's own quick start (``[1.0, 2.0, 5.0]`` into a ``[-1, 1]`` input) answers here too;
shapes are left to the graph, whose errors come back as INVALID_ARGUMENT.

With ``--enable_batching`` every run (predict, classify, regress, multi-inference and the warmup
records) goes through the server's batch scheduler (``builder.serve.batching``), as TF Serving
wraps the whole session in a ``BatchingSession``.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
import weakref
from typing import Any

from builder.core.artifact import MAX_WARMUP_RECORDS, WARMUP_FILE
from builder.serve import inference
from builder.serve.codec import tensor_proto_to_array, tf_type_name
from builder.serve.examples import examples_from_input, serialized_tensor
from builder.serve.status import RpcStatus

MAX_CALLABLES = 64  # per version; output_filter subsets are client-chosen, so the cache is bounded


class Servable:
    """One model version in its own graph and session."""

    def __init__(self, name: str, version: int, path: str, log: logging.Logger,
                 method_check: bool = False, session_config: Any = None) -> None:
        self.name, self.version, self.path, self.log = name, version, path, log
        self.session_config = session_config  # bf16 hook (issue 12): the --mixed_precision rewrite
        self.method_check = method_check  # --enable_signature_method_name_check
        self.session: Any = None
        self._callables: collections.OrderedDict[tuple, Any] = collections.OrderedDict()
        self._callables_lock = threading.Lock()
        self.signatures: dict[str, Any] = {}
        self.warmup_records = 0
        self._refs = 0
        self._cond = threading.Condition()
        self._closed = False
        self.batcher: Any = None  # builder.serve.batching scheduler (set before load, so warmup batches)
        self._batch_run = _weak_runner(self)

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

    # -- warmup ----------------------------------------------------------------------------------
    def _warmup(self) -> None:
        import tensorflow as tf

        path = os.path.join(self.path, str(WARMUP_FILE))
        if not os.path.isfile(path):
            self.log.info("No warmup data file found at %s", path)
            return
        self._check_warmup_file()
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

    def _check_warmup_file(self) -> None:
        """TF Serving's checks before any record runs (lifecycle.check_warmup): framing, more
        than 1000 records, records that are not PredictionLogs, SessionRun/PredictStreamed logs,
        predict records naming a signature or inputs the model lacks. One problem fails the
        load, as in saved_model_warmup_util.cc."""
        from builder.config.lifecycle import check_warmup

        problems = check_warmup(self.path, {k: list(sig.inputs) for k, sig in self.signatures.items()})
        if problems:
            code = "DATA_LOSS" if "TFRecord format" in problems[0] else "INVALID_ARGUMENT"
            raise RpcStatus(code, f"warmup failed for {self.name} version {self.version}: {problems[0]}")

    def _replay(self, record: bytes, n: int, path: str) -> None:
        """Run one PredictionLog record, as saved_model_warmup.cc's RunWarmupRequest does."""
        from tensorflow_serving.apis import prediction_log_pb2

        log = prediction_log_pb2.PredictionLog()
        try:
            log.ParseFromString(record)
        except Exception:  # noqa: BLE001 - protobuf raises DecodeError subclasses
            raise RpcStatus("INVALID_ARGUMENT", f"Failed to parse warmup record {n} from {path}") from None
        kind = log.WhichOneof("log_type")
        if kind == "predict_log":
            req = log.predict_log.request
            inputs = {k: tensor_proto_to_array(v) for k, v in req.inputs.items()}
            self.run(req.model_spec.signature_name, inputs, list(req.output_filter), api="grpc")
        elif kind == "classify_log":
            req = log.classify_log.request
            self.classify(req.model_spec.signature_name, serialized_tensor(*examples_from_input(req.input)))
        elif kind == "regress_log":
            req = log.regress_log.request
            self.regress(req.model_spec.signature_name, serialized_tensor(*examples_from_input(req.input)))
        elif kind == "multi_inference_log":
            req = log.multi_inference_log.request
            tasks = [inference.Task(t.model_spec.name, t.model_spec.signature_name, t.method_name)
                     for t in req.tasks]
            self.multi_inference(tasks, serialized_tensor(*examples_from_input(req.input)))
        elif kind is not None:
            number = log.DESCRIPTOR.fields_by_name[kind].number
            raise RpcStatus("UNIMPLEMENTED", f"Unsupported log_type for warmup: {number} ({kind}, record {n})")

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
        """Predict: check input names and dtypes against the signature, run, return by alias."""
        sig = self.signature(signature_name, api)
        _check_input_names(sig, inputs)
        feeds = {sig.inputs[alias].name: _checked_input(i, alias, sig.inputs[alias], inputs[alias])
                 for i, alias in enumerate(sorted(inputs))}
        aliases = _output_aliases(sig, output_filter)
        values = self.run_tensors(feeds, [sig.outputs[a].name for a in aliases])
        return dict(zip(aliases, values, strict=True))

    def classify(self, signature_name: str, serialized: Any) -> inference.Classifications:
        return inference.classify(self.signatures, self.run_tensors, signature_name, serialized, self.method_check)

    def regress(self, signature_name: str, serialized: Any) -> inference.Regressions:
        return inference.regress(self.signatures, self.run_tensors, signature_name, serialized, self.method_check)

    def multi_inference(self, tasks: list[inference.Task], serialized: Any) -> list[Any]:
        return inference.multi_inference(self.signatures, self.run_tensors, tasks, serialized, self.method_check)

    def run_tensors(self, feeds: dict[str, Any], fetches: list[str]) -> list[Any]:
        """Feed tensors by name, fetch tensors by name (the C++ Session::Run contract: dtypes are
        checked by the runtime, static shapes are not); merged with concurrent requests when the
        server batches."""
        if self.batcher is not None:
            return self.batcher.run(self, feeds, fetches, self._batch_run)
        return self.run_unbatched(feeds, fetches)

    def run_unbatched(self, feeds: dict[str, Any], fetches: list[str]) -> list[Any]:
        """One Session::Run of exactly these tensors (what a batch thread calls with a merged batch)."""
        import tensorflow as tf

        names = sorted(feeds)
        fn = self._callable(tuple(names), tuple(fetches))
        try:
            return list(fn(*[feeds[n] for n in names]))
        except tf.errors.OpError as e:
            from tensorflow.core.protobuf import error_codes_pb2

            raise RpcStatus(error_codes_pb2.Code.Name(e.error_code), e.message) from None

    def _callable(self, feeds: tuple[str, ...], fetches: tuple[str, ...]) -> Any:
        import tensorflow as tf
        from tensorflow.core.protobuf import config_pb2

        key = (feeds, fetches)
        with self._callables_lock:
            fn = self._callables.get(key)
            if fn is not None:
                self._callables.move_to_end(key)
                return fn
        options = config_pb2.CallableOptions(feed=list(feeds), fetch=list(fetches))
        try:
            fn = self.session._make_callable_from_options(options)
        except (tf.errors.OpError, ValueError, KeyError) as e:
            raise RpcStatus("INVALID_ARGUMENT", f"cannot run {list(fetches)} from {list(feeds)}: "
                            f"{str(e).splitlines()[0]}") from None
        with self._callables_lock:
            self._callables[key] = fn
            while len(self._callables) > MAX_CALLABLES:
                self._callables.popitem(last=False)
        return fn

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
        with self._callables_lock:
            self._callables.clear()
        if self.session is not None:
            self.session.close()
            self.session = None


def _weak_runner(servable: Servable) -> Any:
    """``run_fn(fetches, feed)`` for the batch scheduler. It holds the servable weakly: the
    scheduler keys its queues by servable in a WeakKeyDictionary, so a strong reference from a
    queue would keep every unloaded version (and its session) alive."""
    ref = weakref.ref(servable)

    def run(fetches: list[str], feed: dict[str, Any]) -> list[Any]:
        s = ref()
        if s is None:
            raise RpcStatus("UNAVAILABLE", "the servable was unloaded while its batch waited")
        return s.run_unbatched(feed, fetches)

    return run


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
    """The dtype check Session::Run makes (worded as TF Serving reports it); no static-shape
    check - TF Serving leaves shapes to the graph."""
    import tensorflow as tf

    want = tf.dtypes.as_dtype(info.dtype)
    got = tf.string if arr.dtype.kind in "OSU" else tf.dtypes.as_dtype(arr.dtype)
    if got != want:
        raise RpcStatus("INVALID_ARGUMENT",
                        f"Expects arg[{i}] to be {tf_type_name(want)} but {tf_type_name(got)} is provided "
                        f"(input '{alias}', tensor {info.name})")
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

"""The model's own speed per batch size, measured in this process (no server, no RPC).

Why: batching trades latency for throughput along the curve images/s = b / latency(b). That
curve, measured on the serving CPU, says which batch sizes are worth trying (past the knee a
bigger batch only adds latency) and bounds what any server can reach: the server's requests/s at
its batch size is judged against it. The model is loaded exactly as the local server loads it (TF1
SavedModel loader, own graph and session), so the figures are the server's compute cost.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from builder.core.errors import InputError

LADDER = (1, 2, 4, 8, 16, 32, 64)
KNEE_FRACTION = 0.9  # the knee: the smallest batch reaching 90% of the best images/s
MIN_PROFILE_BATCH = 8  # always measured (if the clients can fill it), however slow the model


@dataclass
class BatchPoint:
    batch_size: int
    runs: int
    p50_ms: float
    min_ms: float
    images_per_s: float  # batch_size / median latency
    load_avg: tuple[float, float, float]
    images_per_cpu_s: float | None = None  # images per CPU-second of this process (all threads)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["load_avg"] = list(self.load_avg)
        return d


@dataclass
class LoadedModel:
    """A version loaded as the server loads it, plus one realistic single-row request."""

    session: Any
    signature_key: str
    signature: Any
    sample: dict[str, np.ndarray]  # alias -> rows (golden inputs when the version has them)

    def feed(self, batch_size: int) -> dict[str, np.ndarray]:
        """``batch_size`` rows, cycling through the sample rows."""
        out = {}
        for alias, rows in self.sample.items():
            idx = np.arange(batch_size) % rows.shape[0]
            out[self.signature.inputs[alias].name] = rows[idx]
        return out

    def fetches(self) -> list[str]:
        return [self.signature.outputs[a].name for a in sorted(self.signature.outputs)]

    def request(self, model_name: str) -> bytes:
        """A serialized one-row ``PredictRequest`` for this model and signature."""
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        req = predict_pb2.PredictRequest()
        req.model_spec.name = model_name
        req.model_spec.signature_name = self.signature_key
        for alias, rows in self.sample.items():
            req.inputs[alias].CopyFrom(tf.make_tensor_proto(rows[:1]))
        return req.SerializeToString()

    def close(self) -> None:
        self.session.close()


def load_model(version_dir: str | os.PathLike, signature_key: str = "serving_default") -> LoadedModel:
    """Load ``version_dir`` and pick sample inputs: golden.npz rows, else zeros of the declared
    shapes (InputError naming the input when a non-batch dimension is unknown)."""
    import tensorflow as tf

    from builder.core import artifact

    artifact.read_saved_model(version_dir)  # a clear error for a directory that is not a SavedModel
    graph = tf.Graph()
    sess = tf.compat.v1.Session(graph=graph)
    with graph.as_default():
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(version_dir))
    sig = meta.signature_def.get(signature_key)
    if sig is None:
        sess.close()
        raise InputError(f"{version_dir}: no signature {signature_key!r} (has {sorted(meta.signature_def)}): "
                         "pass --signature")
    golden = artifact.read_golden(version_dir)
    sample = {}
    for alias, info in sig.inputs.items():
        if golden is not None and alias in golden.inputs and golden.inputs[alias].ndim >= 1:
            sample[alias] = golden.inputs[alias]
            continue
        dims = [d.size for d in info.tensor_shape.dim]
        if info.tensor_shape.unknown_rank or any(d < 0 for d in dims[1:]):
            sess.close()
            raise InputError(f"{version_dir}: input {alias!r} has unknown dimensions {dims} and the "
                             "version has no golden.npz: export it with the builder (it writes samples)")
        dtype = tf.dtypes.as_dtype(info.dtype).as_numpy_dtype
        sample[alias] = np.zeros([1, *dims[1:]], dtype=dtype)
    return LoadedModel(sess, signature_key, sig, sample)


def _timed(model: LoadedModel, feed: dict, fetches: list[str], cpu: dict | None = None, key: int = 0) -> float:
    c0, t0 = time.process_time(), time.perf_counter()
    model.session.run(fetches, feed_dict=feed)
    elapsed = time.perf_counter() - t0
    if cpu is not None:
        cpu[key] = cpu.get(key, 0.0) + time.process_time() - c0
    return elapsed


def _median(values: list[float]) -> float:
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def profile(model: LoadedModel, max_batch: int, seconds: float = 8.0,
            on_point: Callable[[BatchPoint], None] | None = None, sizes: Iterable[int] = LADDER,
            min_rounds: int = 3) -> list[BatchPoint]:
    """Median latency per batch size up the ladder to ``max_batch``, sizes interleaved.

    Each size first runs once untimed (a new input shape) and once timed. Then rounds run every
    size once, until ``seconds`` have passed and at least ``min_rounds`` rounds were done: on a
    shared CPU a burst of load hits every size alike instead of whichever was being measured.
    Sizes above ``MIN_PROFILE_BATCH`` are dropped from the top while one round would take longer
    than ``seconds / min_rounds`` (the model is too slow there for bigger batches to matter)."""
    fetches = model.fetches()
    feeds: dict[int, dict] = {}
    once: dict[int, float] = {}  # one timed run per size, after the untimed first
    for b in (b for b in sizes if b <= max_batch):
        feeds[b] = model.feed(b)
        _timed(model, feeds[b], fetches)
        once[b] = _timed(model, feeds[b], fetches)
        if sum(once.values()) > seconds / min_rounds and b >= MIN_PROFILE_BATCH:
            break
    while max(once) > MIN_PROFILE_BATCH and sum(once.values()) > seconds / min_rounds:
        once.pop(max(once))
    times: dict[int, list[float]] = {b: [t] for b, t in sorted(once.items())}
    cpu: dict[int, float] = {}
    end = time.monotonic() + seconds
    rounds = 0
    while rounds < min_rounds or time.monotonic() < end:
        for b in times:
            times[b].append(_timed(model, feeds[b], fetches, cpu, b))
        rounds += 1
    load = tuple(round(v, 2) for v in os.getloadavg())
    points = []
    for b, ts in times.items():
        med = _median(ts)
        per_cpu = round(b * (len(ts) - 1) / cpu[b], 3) if cpu.get(b) else None
        p = BatchPoint(b, len(ts), round(med * 1000, 2), round(min(ts) * 1000, 2), round(b / med, 2), load,
                       per_cpu)
        points.append(p)
        if on_point:
            on_point(p)
    return points


def knee(points: list[BatchPoint], fraction: float = KNEE_FRACTION) -> BatchPoint:
    """The smallest batch size whose images/s reaches ``fraction`` of the best measured."""
    best = max(p.images_per_s for p in points)
    return next(p for p in points if p.images_per_s >= fraction * best)


def warmup_batch_sizes(version_dir: str | os.PathLike) -> list[int]:
    """Batch sizes of the version's warmup records (the server runs them through the batcher at
    load, so ``max_batch_size`` must admit the largest or TF Serving fails the load)."""
    from tensorflow_serving.apis import prediction_log_pb2

    from builder.core import artifact

    path = Path(version_dir) / artifact.WARMUP_FILE
    if not path.is_file():
        return []
    sizes = set()
    for record in artifact.iter_tfrecords(path):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record)
        if log.WhichOneof("log_type") != "predict_log":
            continue
        dims = [t.tensor_shape.dim[0].size for t in log.predict_log.request.inputs.values() if t.tensor_shape.dim]
        if dims:
            sizes.add(max(dims))
    return sorted(sizes)
